//! The `Lifecycle` actor: the one place where the lifecycle's rooms meet Postgres and the
//! enricher.
//!
//! Each room keeps its own state and decides without I/O; this actor holds the connections, runs
//! their statements and fires, and tells each room how they went:
//!
//! - [`Recording`] (arrivals recorded a group at a time, on the `recorder` connection for the
//!   stores and `client` for the reads);
//! - [`Scheduler`] (claim what is due within the budget, fire it, settle its state);
//! - [`Follower`] (the change feed of new subscriptions) and, at each cache reload, the
//!   comparison of the two snapshots;
//! - [`Housekeeping`] (the count of scheduled campaigns, forgetting what nothing needs), and
//!   the campaigns recalled, read into [`crate::recalls`] for the writers;
//! - [`QuietWatch`] (when quiet hours begin and end, and the reload comparison put off while
//!   they last).
//!
//! Every `poll_interval` it looks at the quiet hours, records, claims, settles, follows the feed,
//! reads the recalls and keeps house; inside quiet hours it holds what arrives active, and claims
//! and follows nothing.
//! Supervised like the ledger: a lost connection restarts it after the restart policy's backoff,
//! and what the rooms hold (arrivals not yet answered, states not yet settled) is kept across the
//! restart.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::Client;

use super::housekeeping::{self, Housekeeping};
use super::quiet_watch::{QuietWatch, Turn};
use super::recording::Recording;
use super::rules::{Decision, Kept, State, Window};
use super::scheduler::{self, Scheduler, ToFire};
use super::store::{self, Arrival, Key, KeyMap};
use super::subscriptions::{self, FeedAdvance, FeedRead, FeedSetup, Follower};
use super::{Fire, RecordAll};
use crate::cache::snapshot::Snapshot;
use crate::cache::SnapshotLoaded;
use crate::events::{
    CampaignLifecycle, Event, FireAudienceRead, FireSettled, LateSubscribersNotified,
};
use crate::messages::{CampaignOutcome, Close};
use crate::metrics::{ActorKind, LifecycleEvent};
use crate::postgres::{describe, PostgresSettings};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

/// The lifecycle's settings, from `[lifecycle]`.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    pub window: Window,
    /// How often due campaigns are looked for.
    pub poll_interval: Duration,
    /// The most campaigns claimed at once.
    pub claim_limit: i64,
    /// The notifications of the campaigns it fires, at most (one campaign may take it over):
    /// `writers.max_notifications_in_flight`.
    pub fire_budget: usize,
    /// A campaign that fired, was cancelled or ended unsent is forgotten this long after it last
    /// changed (`lifecycle.retain_days`); the per-client cap's records as its window says.
    pub retain: housekeeping::Retention,
    /// How the changes of `subscribers_restaurants` are followed: what the change feed's
    /// leader reads (and, in the logical mode, drains into the change table).
    pub changes: crate::changes::Mode,
    /// Stored changes are trimmed once this old and followed.
    pub changes_keep: Duration,
}

pub struct Lifecycle {
    postgres: PostgresSettings,
    owner: i32,
    settings: LifecycleSettings,
    fire: Recipient<Fire>,
    /// Reads, claims, settles, follows and counts.
    client: Option<Arc<Client>>,
    /// Stores the versions of arrivals.
    recorder: Option<Rc<Client>>,
    prepared: Option<Rc<store::Prepared>>,
    recording: Recording,
    scheduler: Scheduler,
    follower: Follower,
    feed_setup: FeedSetup,
    housekeeping: Housekeeping,
    /// A read of the recalled campaigns is under way.
    reading_recalls: bool,
    /// The subscriber snapshot in use, to tell what a new one adds.
    snapshot: Option<Arc<Snapshot>>,
    quiet: QuietWatch,
    shared: Shared,
    restarts: Restarts,
}

impl Lifecycle {
    pub fn new(
        postgres: PostgresSettings,
        owner: i32,
        settings: LifecycleSettings,
        fire: Recipient<Fire>,
        restart: RestartPolicy,
        shared: Shared,
    ) -> Lifecycle {
        let feed_setup = FeedSetup {
            mode: settings.changes.clone(),
            keep: settings.changes_keep,
            metrics: shared.metrics.clone(),
        };
        Lifecycle {
            postgres,
            owner,
            feed_setup,
            scheduler: Scheduler::new(settings.fire_budget),
            settings,
            fire,
            client: None,
            recorder: None,
            prepared: None,
            recording: Recording::default(),
            follower: Follower::default(),
            housekeeping: Housekeeping::default(),
            reading_recalls: false,
            snapshot: None,
            quiet: QuietWatch::default(),
            shared,
            restarts: Restarts::new(ActorKind::Lifecycle, restart),
        }
    }

    fn failed(&mut self, what: &str, e: &tokio_postgres::Error, ctx: &mut Context<Self>) {
        log::warn!("lifecycle: cannot {what}: {}", describe(e));
        self.restarts.failed();
        ctx.stop();
    }

    fn now_and_window(&self) -> (i64, Window) {
        (self.shared.clock.now_secs(), self.settings.window)
    }

    /// Whether it is quiet hours now.
    fn quiet_now(&self) -> bool {
        self.shared.quiet.contains(self.shared.clock.now_secs())
    }

    /// Logs quiet hours beginning or ending; once they end, makes the comparison put off.
    fn watch_quiet_hours(&mut self, ctx: &mut Context<Self>) {
        let (now, quiet) = (self.shared.clock.now_secs(), &self.shared.quiet);
        match self.quiet.look(quiet.contains(now)) {
            Some(Turn::Began) => log::info!(
                "lifecycle: quiet hours ({}) began: nothing new goes out until {}; campaigns \
                 active now are held and fire then",
                quiet.describe(),
                crate::quiet::rfc3339(quiet.next_end(now).unwrap_or(now))
            ),
            Some(Turn::Ended) => {
                log::info!(
                    "lifecycle: quiet hours ({}) ended: held campaigns fire now if still active",
                    quiet.describe()
                );
                if let Some(newer) = self.quiet.take_deferred() {
                    self.handle(SnapshotLoaded(newer), ctx);
                }
            }
            None => {}
        }
    }

    fn emit(&self, event: LifecycleEvent, arrival: &Arrival) {
        CampaignLifecycle {
            event,
            restaurant_id: &arrival.campaign.restaurant_id,
            adv_campaign_id: &arrival.campaign.adv_campaign_id,
            source: &arrival.source,
        }
        .emit(&self.shared.metrics);
    }

    // Recording.

    /// Reads the kept versions of the next group, if one waits.
    fn record(&mut self, ctx: &mut Context<Self>) {
        let (Some(client), Some(prepared)) = (self.client.clone(), self.prepared.clone()) else {
            return;
        };
        let Some(read) = self.recording.next_read() else {
            return;
        };
        let id = read.id;
        let fut = async move { store::kept(&client, &prepared, &read.keys).await };
        ctx.spawn(fut.into_actor(self).map(move |kept, act, ctx| match kept {
            Ok(kept) => act.decide_and_store(id, kept, ctx),
            Err(e) => {
                act.recording.failed(id);
                act.failed("read the kept campaigns", &e, ctx);
            }
        }));
    }

    /// Decides group `id` (each arrival is answered at once), stores its versions, and reads the
    /// next group meanwhile.
    fn decide_and_store(&mut self, id: u64, kept: KeyMap<Kept>, ctx: &mut Context<Self>) {
        let (now, window) = self.now_and_window();
        let quiet = self.shared.quiet.contains(now);
        let to_store = self.recording.decide(id, kept, now, &window, quiet);
        let (Some(recorder), Some(prepared)) = (self.recorder.clone(), self.prepared.clone())
        else {
            return self.recording.failed(id);
        };
        let fut = async move {
            let rows: Vec<_> = to_store.rows.iter().map(|(a, s)| (&**a, *s)).collect();
            store::store(&recorder, &prepared, &rows).await
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(()) => {
                        act.restarts.succeeded();
                        for (arrival, decision) in act.recording.stored(id) {
                            act.report(&arrival, decision);
                        }
                    }
                    Err(e) => {
                        // Answered, not stored: stored again after the restart.
                        act.recording.failed(id);
                        act.failed("store campaigns", &e, ctx);
                    }
                }),
        );
        self.record(ctx);
    }

    fn report(&self, arrival: &Arrival, decision: Decision) {
        let event = match decision {
            Decision::Schedule { replaced: false } => LifecycleEvent::Scheduled,
            Decision::Schedule { replaced: true } => LifecycleEvent::Replaced,
            Decision::Cancel => LifecycleEvent::Cancelled,
            Decision::Superseded => LifecycleEvent::Superseded,
            Decision::ChangedAfterStart => LifecycleEvent::ChangedAfterStart,
            Decision::Recall => {
                // At once here; every other instance reads it at its next poll.
                (self.shared.recalls).add(store::key_of(&arrival.campaign));
                LifecycleEvent::Recalled
            }
            Decision::Deliver | Decision::Hold | Decision::Ended => return,
        };
        self.emit(event, arrival);
    }

    // The scheduler.

    /// Claims what is due and fires it, as much as the budget leaves room for.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        // Inside quiet hours nothing fires: what is due waits for their end.
        if self.quiet_now() {
            return;
        }
        let Some(room) = self.scheduler.claim(self.shared.lease.is_valid()) else {
            return;
        };
        let (now, window) = self.now_and_window();
        let (me, limit) = (self.owner, self.settings.claim_limit);
        let fut = async move { store::claim_due(&client, now, me, limit, room as i64).await };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let claimed = match result {
                Ok(claimed) => claimed,
                Err(e) => {
                    act.scheduler.claim_failed();
                    return act.failed("claim due campaigns", &e, ctx);
                }
            };
            let full = claimed.len() as i64 >= limit;
            for c in claimed.iter().filter(|c| c.taken_over) {
                act.emit(LifecycleEvent::TakenOver, &c.arrival);
            }
            let plan = act.scheduler.claimed(claimed, now, &window);
            for arrival in &plan.expired {
                act.emit(LifecycleEvent::Expired, arrival);
            }
            let firing = plan.together.iter().chain(&plan.sliced);
            let audience: usize = firing.map(|f| f.audience).sum();
            act.shared.metrics.notifications_firing.add(audience as i64);
            act.fire_together(plan.together, ctx);
            for campaign in plan.sliced {
                act.fire_in_slices(campaign, ctx);
            }
            act.settle(ctx);
            if full {
                // Claims again if the budget still has room.
                act.claim(ctx);
            }
        }));
    }

    /// Reads the subscribers of `campaigns` together, then fires each.
    fn fire_together(&mut self, campaigns: Vec<ToFire>, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if campaigns.is_empty() {
            return;
        }
        let fut = async move {
            let subscribers = scheduler::read_together(&client, &campaigns).await;
            (campaigns, subscribers)
        };
        ctx.spawn(fut.into_actor(self).map(|(campaigns, read), act, ctx| {
            let subscribers = match read {
                Ok(subscribers) => subscribers,
                Err(e) => return act.failed("read the subscribers of due campaigns", &e, ctx),
            };
            FireAudienceRead {
                subscribers: subscribers.pairs(),
            }
            .emit(&act.shared.metrics);
            for ToFire {
                arrival,
                key,
                audience,
            } in campaigns
            {
                let start = arrival.campaign.adv_campaign_datetime_start;
                let sent = act.fire.send(Fire {
                    arrival,
                    subscribers: subscribers.clone(),
                });
                let fut = async move {
                    Ok(sent.await.unwrap_or_else(|e| CampaignOutcome::Unconfirmed {
                        sink: "enricher",
                        reason: e.to_string(),
                    }))
                };
                act.watch_fire(key, audience, start, fut, ctx);
            }
        }));
    }

    /// Fires one large campaign a slice of its audience at a time.
    fn fire_in_slices(&mut self, campaign: ToFire, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let ToFire {
            arrival,
            key,
            audience,
        } = campaign;
        let start = arrival.campaign.adv_campaign_datetime_start;
        let (fire, slice) = (self.fire.clone(), self.scheduler.slice());
        let metrics = self.shared.metrics.clone();
        let fut = scheduler::fire_in_slices(client, fire, arrival, slice, metrics);
        self.watch_fire(key, audience, start, fut, ctx);
    }

    /// Settles campaign `key` (of `audience` subscribers, starting at `start`) from the outcome
    /// of its fire, and claims more once it is done.
    fn watch_fire(
        &mut self,
        key: Key,
        audience: usize,
        start: i64,
        fire: impl std::future::Future<Output = Result<CampaignOutcome, tokio_postgres::Error>>
            + 'static,
        ctx: &mut Context<Self>,
    ) {
        ctx.spawn(fire.into_actor(self).map(move |outcome, act, ctx| {
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) => return act.failed("read the subscribers of a due campaign", &e, ctx),
            };
            act.shared.metrics.notifications_firing.sub(audience as i64);
            let state = act.scheduler.fired(key, audience, &outcome);
            let delay_ms = act.shared.clock.now_ms() - start.saturating_mul(1000);
            let settled = match state {
                State::Active => FireSettled {
                    event: LifecycleEvent::Fired,
                    delay_secs: Some(delay_ms as f64 / 1000.0),
                },
                State::Expired => FireSettled {
                    event: LifecycleEvent::Expired,
                    delay_secs: None,
                },
                _ => return act.claim(ctx),
            };
            settled.emit(&act.shared.metrics);
            act.claim(ctx);
        }));
    }

    /// Writes the states of what was fired.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let Some(groups) = self.scheduler.next_settle() else {
            return;
        };
        let me = self.owner;
        let fut = async move {
            for (state, keys) in &groups {
                if let Err(e) = store::settle(&client, keys, *state, me).await {
                    return (groups, Some(e));
                }
            }
            (groups, None)
        };
        ctx.spawn(fut.into_actor(self).map(|(groups, error), act, ctx| {
            let Some(e) = error else {
                return act.scheduler.settled(None);
            };
            act.scheduler.settled(Some(groups));
            act.failed("settle fired campaigns", &e, ctx);
        }));
    }

    // New subscriptions.

    /// Reads the subscriptions added since the last it followed (if this instance leads the
    /// feed) and fires the campaigns active at their restaurants for them.
    fn follow(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        // Inside quiet hours the mark stays: those subscriptions are followed once they end.
        let allowed = !self.closing() && self.shared.lease.is_valid() && !self.quiet_now();
        let read_at = Instant::now();
        let Some(plan) = self.follower.next_read(read_at, allowed) else {
            return;
        };
        let (now, window) = self.now_and_window();
        let me = self.owner;
        let setup = self.feed_setup.clone();
        let fut =
            async move { subscriptions::read_feed(&client, plan, me, now, &window, &setup).await };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(read) => act.feed_read(read, read_at, ctx),
                    Err(e) => act.feed_failed(&e, ctx),
                }),
        );
    }

    /// Acts on what a read of the change feed found, read at `read_at`.
    fn feed_read(&mut self, read: FeedRead, read_at: Instant, ctx: &mut Context<Self>) {
        match read {
            FeedRead::NotLeading => {
                if self.follower.not_leading() {
                    log::info!("lifecycle: another instance follows new subscriptions now");
                }
                // The leader reports the slot; what this one reported before is stale.
                let m = &self.shared.metrics;
                m.replication_slot_lag_bytes.set(0);
                m.replication_slot_retained_bytes.set(0);
                for status in ["reserved", "extended", "unreserved", "lost"] {
                    m.replication_slot_wal_status
                        .with_label_values(&[status])
                        .set(0);
                }
            }
            FeedRead::Nothing { next, reset } => {
                if reset {
                    Self::log_reset();
                } else if !self.follower.leading() {
                    log::info!(
                        "lifecycle: this instance follows new subscriptions (from id {})",
                        next.cursor.mark()
                    );
                }
                self.follower.followed(next, (!reset).then_some(read_at));
            }
            FeedRead::New {
                next,
                reset,
                full,
                active,
                subscribers,
            } => {
                if reset {
                    Self::log_reset();
                }
                self.follower.lead();
                self.notify_late(
                    active,
                    subscribers,
                    Some(next),
                    ctx,
                    move |act, next, ctx| {
                        if let Some(next) = next {
                            act.follower.followed(next, (!full).then_some(read_at));
                        }
                        if full {
                            act.follow(ctx);
                        }
                    },
                );
            }
        }
    }

    /// A table without the id column switches the feed off; any other error restarts the actor.
    fn feed_failed(&mut self, e: &tokio_postgres::Error, ctx: &mut Context<Self>) {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) {
            log::error!(
                "lifecycle: subscribers_restaurants has no id column, so new \
                 subscriptions are found only at the cache's reloads: {}",
                describe(e)
            );
            return self.follower.disable();
        }
        self.follower.idle();
        self.failed("follow new subscriptions", e, ctx);
    }

    fn log_reset() {
        log::warn!(
            "lifecycle: subscribers_restaurants was truncated or rewritten since the change feed \
             last read it (its storage changed, so its ids may have started again): following it \
             again from its first row; who has a campaign's notification gets nothing new"
        );
    }

    /// Fires each of `active` for `subscribers`; once every one is confirmed (and the feed's
    /// position, if any, recorded), calls `then` with that position. If one is not confirmed,
    /// the same subscriptions are read again next time.
    fn notify_late(
        &mut self,
        active: Vec<Arrival>,
        subscribers: Arc<Snapshot>,
        feed: Option<FeedAdvance>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Option<FeedAdvance>, &mut Context<Self>) + 'static,
    ) {
        let of_feed = feed.is_some();
        let Some(client) = self.client.clone() else {
            if of_feed {
                self.follower.idle();
            }
            return;
        };
        let fut = subscriptions::notify_late(
            client,
            self.fire.clone(),
            active,
            subscribers,
            feed,
            self.owner,
        );
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            if of_feed {
                act.follower.idle();
            }
            let notified = match result {
                Ok(notified) => notified,
                Err(e) => return act.failed("record the change feed's position", &e, ctx),
            };
            LateSubscribersNotified {
                notifications: notified.notifications,
            }
            .emit(&act.shared.metrics);
            if !notified.still_leading {
                log::info!("lifecycle: another instance follows new subscriptions now");
                act.follower.not_leading();
            }
            if notified.confirmed {
                then(act, notified.feed, ctx);
            }
        }));
    }

    /// The safety net at each reload: the clients the new snapshot has and the previous one did
    /// not, notified of every active campaign of their restaurant.
    fn compare(&mut self, older: Arc<Snapshot>, newer: Arc<Snapshot>, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let (now, window) = self.now_and_window();
        let fut = async move {
            subscriptions::newly_subscribed(&client, &older, &newer, now, &window).await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let newly = match result {
                Ok(newly) => newly,
                Err(e) => return act.failed("read the active campaigns", &e, ctx),
            };
            if newly.count == 0 {
                return;
            }
            log::debug!(
                "lifecycle: the new snapshot has {} subscriptions to restaurants with active \
                 campaigns that the previous one lacked",
                newly.count
            );
            let subscribers = Arc::new(newly.subscribers);
            act.notify_late(newly.active, subscribers, None, ctx, |_, _, _| {});
        }));
    }

    // Housekeeping.

    /// Refreshes the count of scheduled campaigns, and forgets campaigns long over.
    fn housekeeping(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let due = self.housekeeping.due(Instant::now());
        if due.count {
            let now = self.shared.clock.now_secs();
            let quiet = self.shared.quiet.contains(now);
            let m = &self.shared.metrics;
            let (scheduled, held) = (m.campaigns_scheduled.clone(), m.campaigns_held.clone());
            let c = client.clone();
            let fut = async move { store::count_scheduled(&c, now).await };
            ctx.spawn(fut.into_actor(self).map(move |count, _, _| match count {
                Ok((n, due)) => {
                    scheduled.set(n);
                    held.set(if quiet { due } else { 0 });
                }
                Err(e) => log::warn!("lifecycle: cannot count campaigns: {}", describe(&e)),
            }));
        }
        if due.forget {
            let (now, grace, retain) = (
                self.shared.clock.now_secs(),
                self.settings.window.end_grace_secs,
                self.settings.retain,
            );
            let fut = async move { housekeeping::forget_all(&client, now, grace, retain).await };
            ctx.spawn(fut.into_actor(self).map(|forgotten, _, _| match forgotten {
                Ok(0) => {}
                Ok(n) => log::info!("lifecycle: forgot {n} campaigns nothing needs any more"),
                Err(e) => log::warn!("lifecycle: cannot forget ended campaigns: {}", describe(&e)),
            }));
        }
    }

    /// Reads the campaigns recalled, for the writers to consult (one read at a time).
    fn read_recalls(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if std::mem::replace(&mut self.reading_recalls, true) {
            return;
        }
        let fut = async move { store::recalled(&client).await };
        ctx.spawn(fut.into_actor(self).map(|recalled, act, ctx| {
            act.reading_recalls = false;
            match recalled {
                Ok(keys) => act.shared.recalls.replace(keys),
                Err(e) => act.failed("read the recalled campaigns", &e, ctx),
            }
        }));
    }

    fn closing(&self) -> bool {
        self.scheduler.closing()
    }

    /// One poll: every room's work.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        self.shared.liveness.beat(crate::liveness::Loop::Lifecycle);
        let closed = |c: Option<&Client>| c.is_some_and(Client::is_closed);
        if closed(self.client.as_deref()) || closed(self.recorder.as_deref()) {
            self.restarts.failed();
            ctx.stop();
            return;
        }
        self.watch_quiet_hours(ctx);
        self.record(ctx);
        self.claim(ctx);
        self.settle(ctx);
        self.follow(ctx);
        self.read_recalls(ctx);
        self.housekeeping(ctx);
        let lag = self.follower.lag(Instant::now());
        self.shared.metrics.change_feed_lag.set(lag);
    }
}

impl Actor for Lifecycle {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (postgres, owner) = (self.postgres.clone(), self.owner);
        let delay = self.restarts.delay();
        ctx.wait(
            async move {
                actix_rt::time::sleep(delay).await;
                let client = crate::postgres::connect(&postgres, "lifecycle").await?;
                let recorder = crate::postgres::connect(&postgres, "lifecycle recorder").await?;
                let prepared = store::Prepared::new(&client, &recorder)
                    .await
                    .map_err(crate::postgres::ConnectError::from)?;
                // What this process claimed before a restart and did not settle is claimed again.
                store::release_own(&client, owner).await?;
                Ok::<_, crate::postgres::ConnectError>((client, (recorder, prepared)))
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((client, (recorder, prepared))) => {
                    act.restarts.connected();
                    act.client = Some(Arc::new(client));
                    act.recorder = Some(Rc::new(recorder));
                    act.prepared = Some(Rc::new(prepared));
                    act.record(ctx);
                    ctx.run_interval(act.settings.poll_interval, Self::poll);
                }
                Err(e) => {
                    log::warn!("lifecycle: cannot connect: {e}");
                    act.restarts.failed();
                    ctx.stop();
                }
            }),
        );
    }
}

impl Supervised for Lifecycle {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts.restarting(&self.shared);
        self.client = None;
        self.recorder = None;
        self.prepared = None;
        self.reading_recalls = false;
        self.recording.restart();
        let firing = self.scheduler.restart();
        self.shared.metrics.notifications_firing.sub(firing as i64);
        self.follower.restart();
    }
}

impl Handler<SnapshotLoaded> for Lifecycle {
    type Result = ();

    /// Compares the new snapshot with the one in use; inside quiet hours, keeps the one from
    /// before them and compares once they end.
    fn handle(&mut self, msg: SnapshotLoaded, ctx: &mut Context<Self>) {
        if self.quiet_now() && self.snapshot.is_some() {
            return self.quiet.defer(msg.0);
        }
        // Put off inside quiet hours and superseded by this one, which is compared instead.
        self.quiet.take_deferred();
        if let Some(older) = self.snapshot.replace(msg.0.clone()) {
            self.compare(older, msg.0, ctx);
        }
    }
}

impl Handler<RecordAll> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: RecordAll, ctx: &mut Context<Self>) {
        for (arrival, decided) in msg.0 {
            self.recording.push(arrival, decided);
        }
        self.record(ctx);
    }
}

impl Handler<Close> for Lifecycle {
    type Result = ();

    /// Claims nothing more; what is already being fired finishes (or is claimed again by the
    /// next instance once this one is gone).
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.scheduler.close();
        self.settle(ctx);
    }
}
