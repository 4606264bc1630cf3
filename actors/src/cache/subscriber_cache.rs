//! `SubscriberCache`: loads `subscribers_restaurants` into a [`Snapshot`] and reloads it on an
//! interval.
//!
//! Each load reads the whole table with a binary `COPY` on a connection of its own, builds a new
//! snapshot beside the old one, and hands it to the enricher in a [`SnapshotLoaded`] message: the
//! enricher swaps one `Arc` and never waits on a load. A failed reload keeps the previous
//! snapshot (stale beats empty) and is retried at the next tick. The cache runs on an arbiter of
//! its own so a long load does not hold up the data path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::{pin_mut, TryStreamExt};
use tokio::sync::watch;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use crate::cache::snapshot::{Snapshot, SnapshotBuilder};
use crate::messages::{RefreshCache, SnapshotLoaded};
use crate::metrics::Metrics;

const COPY: &str = "COPY (SELECT restaurant_id, client_id FROM public.subscribers_restaurants) \
                    TO STDOUT (FORMAT binary)";

/// Summary of the loaded snapshot, published for readiness and for whoever starts the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub pairs: usize,
    pub restaurants: usize,
    pub loaded_at_unix: i64,
}

pub struct SubscriberCache {
    url: String,
    refresh_interval: Duration,
    subscribers: Vec<Recipient<SnapshotLoaded>>,
    metrics: Metrics,
    published: watch::Sender<Option<SnapshotInfo>>,
    loading: bool,
}

impl SubscriberCache {
    pub fn new(
        url: String,
        refresh_interval: Duration,
        subscribers: Vec<Recipient<SnapshotLoaded>>,
        metrics: Metrics,
        published: watch::Sender<Option<SnapshotInfo>>,
    ) -> SubscriberCache {
        SubscriberCache {
            url,
            refresh_interval,
            subscribers,
            metrics,
            published,
            loading: false,
        }
    }

    fn reload(&mut self, ctx: &mut Context<Self>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let url = self.url.clone();
        let started = Instant::now();
        ctx.spawn(load(url).into_actor(self).map(move |result, act, ctx| {
            act.loading = false;
            match result {
                Ok(snapshot) => act.loaded(snapshot, started.elapsed()),
                Err(e) => {
                    act.metrics.cache_refresh_failures.inc();
                    if act.published.borrow().is_some() {
                        log::warn!(
                            "subscriber cache: reload failed, keeping the previous snapshot: {e}"
                        );
                    } else {
                        // Nothing is served before the first load: try again soon, not at the
                        // next tick.
                        log::warn!("subscriber cache: first load failed, retrying in 1s: {e}");
                        ctx.run_later(Duration::from_secs(1), |act, ctx| act.reload(ctx));
                    }
                }
            }
        }));
    }

    fn loaded(&mut self, snapshot: Snapshot, took: Duration) {
        let now = crate::clock::unix_secs();
        let info = SnapshotInfo {
            pairs: snapshot.pairs(),
            restaurants: snapshot.restaurants(),
            loaded_at_unix: now,
        };
        let first = self.published.borrow().is_none();
        let snapshot = Arc::new(snapshot);
        for s in &self.subscribers {
            s.do_send(SnapshotLoaded(snapshot.clone()));
        }
        self.metrics.cache_pairs.set(info.pairs as i64);
        self.metrics.cache_restaurants.set(info.restaurants as i64);
        self.metrics.cache_loaded_timestamp.set(now);
        self.metrics
            .cache_refresh_duration
            .observe(took.as_secs_f64());
        let level = if first {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "subscriber cache: loaded {} pairs for {} restaurants in {:.3}s",
            info.pairs,
            info.restaurants,
            took.as_secs_f64()
        );
        self.published.send_replace(Some(info));
    }
}

/// One full load of `subscribers_restaurants`, as the actor does it (also used by the benchmark).
pub async fn load(url: String) -> Result<Snapshot, String> {
    let client = crate::postgres::connect(&url, "subscriber cache")
        .await
        .map_err(|e| crate::postgres::describe(&e))?;
    let stream = client
        .copy_out(COPY)
        .await
        .map_err(|e| crate::postgres::describe(&e))?;
    let rows = BinaryCopyOutStream::new(stream, &[Type::VARCHAR, Type::VARCHAR]);
    pin_mut!(rows);
    let mut builder = SnapshotBuilder::new();
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| crate::postgres::describe(&e))?
    {
        let restaurant: &str = row.try_get(0).map_err(|e| e.to_string())?;
        let client: &str = row.try_get(1).map_err(|e| e.to_string())?;
        builder.push(restaurant, client);
    }
    Ok(builder.build())
}

impl Actor for SubscriberCache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.reload(ctx);
        ctx.run_interval(self.refresh_interval, |act, ctx| act.reload(ctx));
    }
}

impl Supervised for SubscriberCache {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.metrics
            .actor_restarts
            .with_label_values(&["subscriber_cache"])
            .inc();
        self.loading = false;
    }
}

impl Handler<RefreshCache> for SubscriberCache {
    type Result = ();

    fn handle(&mut self, _: RefreshCache, ctx: &mut Context<Self>) {
        self.reload(ctx);
    }
}
