//! `SubscriberCache`: loads `subscribers_restaurants` into a [`Snapshot`], reloads it on an
//! interval and, where its changes are followed, applies them as they come.
//!
//! Each load reads the whole table with a binary `COPY` on a connection of its own, builds a new
//! snapshot beside the old one, and hands it on: to the enricher as [`SubscribersChanged`] (the
//! snapshot with the changes read since, [`Subscribers`]), to the lifecycle as
//! [`SnapshotLoaded`]. The enricher swaps one value and never waits on a load or a read. A
//! failed load keeps the previous snapshot (stale beats empty) and restarts the actor, which
//! tries again after the restart policy's backoff. The cache runs on an arbiter of its own so a
//! long load does not hold up the data path.
//!
//! With the changes followed (`Mode::Logical` or `Mode::Trigger`), a full load is the start-up
//! step and a safety net every `cache.changes_reload_interval_secs`; in between, every
//! `cache.changes_poll_interval_ms` the changes stored since are read ([`super::follow`]) and
//! applied. In the logical mode one instance streams the slot into the table
//! ([`crate::changes::stream`]); where the slot cannot be streamed from here, each instance
//! drains it with SQL calls before it reads, one at a time ([`crate::changes::drain`]). A `reload` row, deltas past a tenth of the snapshot, or reads failing for half the
//! time changes are kept, make it load again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use futures::{pin_mut, TryStreamExt};
use tokio::sync::watch;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::follow::{self, Following, Read, Start};
use super::overlay::Subscribers;
use crate::cache::snapshot::{Snapshot, SnapshotBuilder};
use crate::changes::{drain, stream, Mode};
use crate::events::{CacheLoadFailed, CacheLoaded, Event, SubscriberChangesApplied};
use crate::metrics::ActorKind;
use crate::postgres::PostgresSettings;
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

const COPY: &str = "COPY (SELECT restaurant_id, client_id FROM public.subscribers_restaurants) \
                    TO STDOUT (FORMAT binary)";

/// A new subscriber snapshot is loaded (the lifecycle compares it with the one before).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SnapshotLoaded(pub Arc<Snapshot>);

/// The subscribers changed (a load, or changes read): the enricher joins with these from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SubscribersChanged(pub Subscribers);

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

/// Who hears of the cache.
pub struct CacheWiring {
    pub snapshots: Vec<Recipient<SnapshotLoaded>>,
    pub views: Vec<Recipient<SubscribersChanged>>,
    pub published: watch::Sender<Option<SnapshotInfo>>,
    /// The subscribers in use, for delivery and whoever starts the service.
    pub current: super::CurrentSubscribers,
}

/// How often the cache loads and reads: the full reload (in the mode in use), the read of the
/// changes, and how long they are kept (an instance that could not read them for half of it
/// loads again).
#[derive(Debug, Clone, Copy)]
pub struct CacheIntervals {
    pub reload: Duration,
    pub poll: Duration,
    pub keep: Duration,
}

pub struct SubscriberCache {
    postgres: PostgresSettings,
    intervals: CacheIntervals,
    mode: Mode,
    wiring: CacheWiring,
    shared: Shared,
    loading: bool,
    restarts: Restarts,
    view: Option<Subscribers>,
    following: Option<Following>,
    follower: Option<Arc<Client>>,
    reading: bool,
    /// Loads done: a read made before the last one is not applied.
    loads: u64,
    /// The logical mode's slot cannot be streamed from here: it is read with SQL calls.
    sql_drain: Arc<AtomicBool>,
}

impl SubscriberCache {
    pub fn new(
        postgres: PostgresSettings,
        intervals: CacheIntervals,
        mode: Mode,
        restart: RestartPolicy,
        wiring: CacheWiring,
        shared: Shared,
    ) -> SubscriberCache {
        SubscriberCache {
            postgres,
            intervals,
            mode,
            wiring,
            shared,
            loading: false,
            restarts: Restarts::new(ActorKind::SubscriberCache, restart),
            view: None,
            following: None,
            follower: None,
            reading: false,
            loads: 0,
            sql_drain: Arc::default(),
        }
    }

    fn reload(&mut self, ctx: &mut Context<Self>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let (postgres, follows) = (self.postgres.clone(), self.mode.follows_changes());
        let started = Instant::now();
        ctx.spawn(
            load_from(postgres, follows)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.loading = false;
                    match result {
                        Ok((snapshot, start)) => {
                            act.restarts.succeeded();
                            act.loaded(snapshot, start, started.elapsed(), ctx);
                        }
                        Err(e) => {
                            CacheLoadFailed {
                                error: &e,
                                serving: act.wiring.published.borrow().is_some(),
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

    fn loaded(
        &mut self,
        snapshot: Snapshot,
        start: Option<Start>,
        took: Duration,
        ctx: &mut Context<Self>,
    ) {
        let skipped = snapshot.skipped();
        let info = SnapshotInfo {
            pairs: snapshot.pairs(),
            restaurants: snapshot.restaurants(),
            loaded_at_unix: self.shared.clock.now_secs(),
        };
        let first = self.wiring.published.borrow().is_none();
        let snapshot = Arc::new(snapshot);
        for s in &self.wiring.snapshots {
            s.do_send(SnapshotLoaded(snapshot.clone()));
        }
        self.loads += 1;
        self.following = start.map(|s| Following::new(&s, Instant::now()));
        self.publish(Subscribers::new(snapshot));
        CacheLoaded {
            pairs: info.pairs,
            restaurants: info.restaurants,
            loaded_at_unix: info.loaded_at_unix,
            skipped,
            took,
            first,
        }
        .emit(&self.shared.metrics);
        self.wiring.published.send_replace(Some(info));
        self.follow(ctx);
    }

    fn publish(&mut self, view: Subscribers) {
        let metrics = &self.shared.metrics;
        metrics
            .subscriber_changes_unfolded
            .set(view.changed() as i64);
        metrics.cache_pairs.set(view.pairs() as i64);
        for v in &self.wiring.views {
            v.do_send(SubscribersChanged(view.clone()));
        }
        self.wiring.current.publish(view.clone());
        self.view = Some(view);
    }

    /// Reads the changes stored since the last read, unless a read is under way.
    fn follow(&mut self, ctx: &mut Context<Self>) {
        let Some(following) = self.following.clone() else {
            return;
        };
        if self.reading {
            return;
        }
        let keep = self.intervals.keep;
        if following.read_at.elapsed() > keep / 2 {
            log::warn!(
                "subscriber cache: the changes could not be read for {}s, some may have been \
                 trimmed since: loading the whole table again",
                following.read_at.elapsed().as_secs()
            );
            self.following = None;
            return self.reload(ctx);
        }
        self.reading = true;
        let (client, postgres, loads) = (self.follower.clone(), self.postgres.clone(), self.loads);
        let view = self.view.clone();
        // In the logical mode the slot is streamed; where it cannot be, every instance drains
        // it with SQL calls, one at a time, before it reads.
        let slot = match &self.mode {
            Mode::Logical(names) if self.sql_drain.load(Ordering::Relaxed) => Some(names.clone()),
            _ => None,
        };
        let fut = async move {
            let client = match client {
                Some(c) => c,
                None => Arc::new(
                    crate::postgres::connect(&postgres, "subscriber changes")
                        .await
                        .map_err(|e| e.to_string())?,
                ),
            };
            let describe = |e: tokio_postgres::Error| crate::postgres::describe(&e);
            if let Some(names) = &slot {
                drain::drain_if_free(&client, names)
                    .await
                    .map_err(describe)?;
            }
            let doubled = |r: &str, c: &str| view.as_ref().is_some_and(|v| v.may_be_doubled(r, c));
            let mut read = (follow::read(&client, &following, &doubled).await).map_err(describe)?;
            read.loads = loads;
            Ok::<_, String>((client, read))
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.reading = false;
            match result {
                Ok((client, read)) => {
                    act.follower = Some(client);
                    act.apply(read, ctx);
                }
                Err(e) => {
                    act.follower = None;
                    log::warn!("subscriber cache: cannot read the subscription changes: {e}");
                }
            }
        }));
    }

    /// Applies what a read found, unless a load replaced the snapshot meanwhile.
    fn apply(&mut self, read: Read, ctx: &mut Context<Self>) {
        let (Some(following), Some(view)) = (self.following.as_mut(), self.view.as_ref()) else {
            return;
        };
        if following.loaded_after != read.loaded_after || read.loads != self.loads {
            // A load replaced the snapshot while this was read: its own following starts over.
            return;
        }
        following.cursor = read.cursor;
        following.read_at = Instant::now();
        let (full, loaded_after) = (read.full, following.loaded_after);
        if !read.changes.is_empty() {
            let next = view.applied(&read.changes);
            self.publish(next);
            SubscriberChangesApplied {
                changes: &read.changes,
                // Those committed before the load began were in its snapshot already.
                replayed_up_to: loaded_after,
                now: SystemTime::now(),
            }
            .emit(&self.shared.metrics);
        }
        if let Some(why) = read.reload {
            log::info!("subscriber cache: loading the whole table again: {why}");
            return self.reload(ctx);
        }
        if self.view.as_ref().is_some_and(Subscribers::wants_reload) {
            log::info!(
                "subscriber cache: the changes since the last load have grown past a tenth of \
                 the snapshot: loading the whole table again, which folds them in"
            );
            return self.reload(ctx);
        }
        if full {
            self.follow(ctx);
        }
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
    Ok(load_from(postgres, false).await?.0)
}

/// A full load; with `follows`, where following the changes starts, read before the `COPY`.
async fn load_from(
    postgres: PostgresSettings,
    follows: bool,
) -> Result<(Snapshot, Option<Start>), LoadError> {
    let client = crate::postgres::connect(&postgres, "subscriber cache")
        .await
        .map_err(LoadError::Connect)?;
    let start = match follows {
        true => Some(follow::start_of(&client).await.map_err(LoadError::Read)?),
        false => None,
    };
    let stream = client.copy_out(COPY).await.map_err(LoadError::Read)?;
    let rows = BinaryCopyOutStream::new(stream, &[Type::VARCHAR, Type::VARCHAR]);
    pin_mut!(rows);
    let mut builder = SnapshotBuilder::new();
    while let Some(row) = rows.try_next().await.map_err(LoadError::Read)? {
        let restaurant: &str = row.try_get(0).map_err(LoadError::Read)?;
        let client: &str = row.try_get(1).map_err(LoadError::Read)?;
        builder.push(restaurant, client);
    }
    Ok((builder.build(), start))
}

impl Actor for SubscriberCache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let metrics = &self.shared.metrics;
        for mode in ["logical", "trigger", "ids"] {
            let on = (mode == self.mode.name()) as i64;
            metrics
                .subscriber_changes_mode
                .with_label_values(&[mode])
                .set(on);
        }
        ctx.run_later(self.restarts.delay(), |act, ctx| act.reload(ctx));
        ctx.run_interval(self.intervals.reload, |act, ctx| act.reload(ctx));
        if self.mode.follows_changes() {
            ctx.run_interval(self.intervals.poll, |act, ctx| act.follow(ctx));
        }
        if let Mode::Logical(names) = &self.mode {
            let stream = stream::run(self.postgres.clone(), names.clone(), self.sql_drain.clone());
            ctx.spawn(stream.into_actor(self));
        }
    }
}

/// A failed load stops the actor; the supervisor starts it again after the policy's backoff,
/// without a limit: a snapshot that cannot be reloaded is served stale rather than not at all.
impl Supervised for SubscriberCache {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts.restarting(&self.shared);
        self.loading = false;
        self.reading = false;
        self.follower = None;
    }
}

impl Handler<RefreshCache> for SubscriberCache {
    type Result = ();

    fn handle(&mut self, _: RefreshCache, ctx: &mut Context<Self>) {
        self.reload(ctx);
    }
}
