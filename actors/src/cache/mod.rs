//! The subscriber cache: the restaurant -> subscribers mapping, in memory and fresh.
//!
//! [`snapshot`] is the compact immutable mapping; [`subscriber_cache`] loads it from
//! `subscribers_restaurants` with one binary `COPY` and reloads it on an interval.
//!
//! Must not touch: anything but `subscribers_restaurants`, which it only reads. (It is not that
//! table's only reader: the lifecycle reads it fresh for the audience of a fire and follows its
//! new rows; the snapshot is what the join of arriving campaigns uses.)

pub mod snapshot;
pub mod subscriber_cache;

pub use subscriber_cache::{load, RefreshCache, SnapshotInfo, SnapshotLoaded, SubscriberCache};
