//! `SubscriberCache`: loads `subscribers_restaurants` into a [`Snapshot`] and reloads it on an
//! interval.
//!
//! Each load reads the whole table with a binary `COPY` on a connection of its own, builds a new
//! snapshot beside the old one, and hands it to the enricher in a [`SnapshotLoaded`] message: the
//! enricher swaps one `Arc` and never waits on a load. A failed load keeps the previous snapshot
//! (stale beats empty) and restarts the actor, which tries again after the restart policy's
//! backoff. The cache runs on an arbiter of its own so a long load does not hold up the data path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::{pin_mut, TryStreamExt};
use tokio::sync::watch;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;

use crate::cache::snapshot::{Snapshot, SnapshotBuilder};
use crate::events::{CacheLoadFailed, CacheLoaded, Event};
use crate::metrics::ActorKind;
use crate::postgres::PostgresSettings;
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

const COPY: &str = "COPY (SELECT restaurant_id, client_id FROM public.subscribers_restaurants) \
                    TO STDOUT (FORMAT binary)";

/// A new subscriber snapshot is ready; the enricher uses it for every campaign from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotLoaded(pub Arc<Snapshot>);

/// Reload the subscriber snapshot now instead of at the next tick.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshCache;

/// Summary of the loaded snapshot, published for readiness and for whoever starts the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub pairs: usize,
    pub restaurants: usize,
    pub loaded_at_unix: i64,
}

pub struct SubscriberCache {
    postgres: PostgresSettings,
    refresh_interval: Duration,
    subscribers: Vec<Recipient<SnapshotLoaded>>,
    shared: Shared,
    published: watch::Sender<Option<SnapshotInfo>>,
    loading: bool,
    restarts: Restarts,
}

impl SubscriberCache {
    pub fn new(
        postgres: PostgresSettings,
        refresh_interval: Duration,
        restart: RestartPolicy,
        subscribers: Vec<Recipient<SnapshotLoaded>>,
        shared: Shared,
        published: watch::Sender<Option<SnapshotInfo>>,
    ) -> SubscriberCache {
        SubscriberCache {
            postgres,
            refresh_interval,
            subscribers,
            shared,
            published,
            loading: false,
            restarts: Restarts::new(ActorKind::SubscriberCache, restart),
        }
    }

    fn reload(&mut self, ctx: &mut Context<Self>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let postgres = self.postgres.clone();
        let started = Instant::now();
        ctx.spawn(
            load(postgres)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.loading = false;
                    match result {
                        Ok(snapshot) => {
                            act.restarts.succeeded();
                            act.loaded(snapshot, started.elapsed());
                        }
                        Err(e) => {
                            CacheLoadFailed {
                                error: &e,
                                serving: act.published.borrow().is_some(),
                            }
                            .emit(&act.shared.metrics);
                            // The snapshot in use stays; the restart retries with backoff.
                            act.restarts.failed();
                            ctx.stop();
                        }
                    }
                }),
        );
    }

    fn loaded(&mut self, snapshot: Snapshot, took: Duration) {
        let skipped = snapshot.skipped();
        let info = SnapshotInfo {
            pairs: snapshot.pairs(),
            restaurants: snapshot.restaurants(),
            loaded_at_unix: self.shared.clock.now_secs(),
        };
        let first = self.published.borrow().is_none();
        let snapshot = Arc::new(snapshot);
        for s in &self.subscribers {
            s.do_send(SnapshotLoaded(snapshot.clone()));
        }
        CacheLoaded {
            pairs: info.pairs,
            restaurants: info.restaurants,
            loaded_at_unix: info.loaded_at_unix,
            skipped,
            took,
            first,
        }
        .emit(&self.shared.metrics);
        self.published.send_replace(Some(info));
    }
}

/// Why a load of the snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot connect")]
    Connect(#[source] crate::postgres::ConnectError),
    #[error("cannot read subscribers_restaurants")]
    Read(#[source] tokio_postgres::Error),
}

/// One full load of `subscribers_restaurants`, as the actor does it (also used by the benchmark).
pub async fn load(postgres: PostgresSettings) -> Result<Snapshot, LoadError> {
    let client = crate::postgres::connect(&postgres, "subscriber cache")
        .await
        .map_err(LoadError::Connect)?;
    let stream = client.copy_out(COPY).await.map_err(LoadError::Read)?;
    let rows = BinaryCopyOutStream::new(stream, &[Type::VARCHAR, Type::VARCHAR]);
    pin_mut!(rows);
    let mut builder = SnapshotBuilder::new();
    while let Some(row) = rows.try_next().await.map_err(LoadError::Read)? {
        let restaurant: &str = row.try_get(0).map_err(LoadError::Read)?;
        let client: &str = row.try_get(1).map_err(LoadError::Read)?;
        builder.push(restaurant, client);
    }
    Ok(builder.build())
}

impl Actor for SubscriberCache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.restarts.delay(), |act, ctx| act.reload(ctx));
        ctx.run_interval(self.refresh_interval, |act, ctx| act.reload(ctx));
    }
}

/// A failed load stops the actor; the supervisor starts it again after the policy's backoff,
/// without a limit: a snapshot that cannot be reloaded is served stale rather than not at all.
impl Supervised for SubscriberCache {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts.restarting(&self.shared);
        self.loading = false;
    }
}

impl Handler<RefreshCache> for SubscriberCache {
    type Result = ();

    fn handle(&mut self, _: RefreshCache, ctx: &mut Context<Self>) {
        self.reload(ctx);
    }
}
