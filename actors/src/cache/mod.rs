//! The subscriber cache: the restaurant -> subscribers mapping, in memory and fresh.
//!
//! [`snapshot`] is the compact immutable mapping; [`subscriber_cache`] loads it from
//! `subscribers_restaurants` with one binary `COPY`, reloads it on an interval, and (where the
//! table's changes are followed, see [`crate::changes`]) applies them as they come, as
//! [`overlay::Subscribers`]: the snapshot with the restaurants changed since.
//!
//! Must not touch: anything but `subscribers_restaurants`, which it only reads, and
//! `campaign_notifier_pair_changes`, which it only reads. (It is not that table's only reader:
//! the lifecycle reads it fresh for the audience of a fire and follows its new rows; the
//! snapshot is what the join of arriving campaigns uses.)

pub mod follow;
pub mod overlay;
pub mod snapshot;
pub mod subscriber_cache;

pub use overlay::Subscribers;

use std::sync::Arc;

use tokio::sync::watch;

/// The subscribers the join uses now, shared: the cache publishes each new value, delivery looks
/// at it before each slice of a campaign under way, whoever starts the service may look too.
#[derive(Clone)]
pub struct CurrentSubscribers(Arc<watch::Sender<Option<Subscribers>>>);

impl Default for CurrentSubscribers {
    fn default() -> Self {
        CurrentSubscribers(Arc::new(watch::channel(None).0))
    }
}

impl CurrentSubscribers {
    pub fn publish(&self, subscribers: Subscribers) {
        self.0.send_replace(Some(subscribers));
    }

    /// The value now (`None` before the first load).
    pub fn get(&self) -> Option<Subscribers> {
        self.0.borrow().clone()
    }
}
pub use subscriber_cache::{
    load, CacheIntervals, CacheWiring, RefreshCache, SnapshotInfo, SnapshotLoaded, SubscriberCache,
    SubscribersChanged,
};
