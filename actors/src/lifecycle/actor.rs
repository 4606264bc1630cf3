//! The `Lifecycle` actor: records every arriving campaign in the durable table and fires
//! scheduled ones at their start.
//!
//! Arrivals are recorded a group at a time (whatever arrived while the previous group was being
//! written): the kept versions are read, [`decide`] runs for each and is answered at once (so that
//! delivery starts), then the new versions are stored in one statement and each arrival learns
//! that it is stored; the enricher finishes a campaign only once both its delivery and its
//! version are. Both statements are prepared once per connection. Every `poll_interval` the actor
//! claims the campaigns that are due (and those whose firing instance died), reads their
//! restaurants' subscribers fresh from Postgres, hands each to the enricher in a [`Fire`], and
//! settles its state from the outcome.
//!
//! It also follows new subscriptions: every `poll_interval` the instance holding the feed's lock
//! reads the rows of `subscribers_restaurants` added since the last it followed, and fires each
//! campaign active at their restaurants for the new subscribers alone (who has it already gets
//! nothing new). When the cache loads a new snapshot, the clients it has and the previous one did
//! not are given the same treatment, for every active campaign: the safety net for what the feed
//! missed.
//!
//! Supervised like the ledger: a lost connection restarts it after the restart policy's backoff,
//! and what it held (arrivals not yet answered, states not yet settled) is kept across the
//! restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::channel::oneshot;
use tokio_postgres::Client;

use super::feed::Cursor;
use super::rules::{decide, Decision, Kept, State, Window};
use super::store::{self, key_of, Arrival, Claimed, FeedMark, Key};
use super::{Fire, RecordAll, Recorded, Stored};
use crate::cache::snapshot::{Snapshot, SnapshotBuilder};
use crate::cache::SnapshotLoaded;
use crate::events::{CampaignLifecycle, Event};
use crate::messages::{CampaignOutcome, Close};
use crate::metrics::{ActorKind, LifecycleEvent};
use crate::postgres::{describe, PostgresSettings};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

/// How often the count of scheduled campaigns is refreshed.
const COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// How often campaigns nothing needs any more are deleted from the table, and how long after
/// their end (plus the grace) they are kept at most (`LifecycleSettings::retain` bounds it
/// however far ahead the end is).
const FORGET_INTERVAL: Duration = Duration::from_secs(600);
const RETAIN_ENDED_SECS: i64 = 86_400;

/// Restaurants with active campaigns read at once by a reload's comparison.
const COMPARE_PAGE: i64 = 5_000;

/// How often an instance looks whether the change feed's follower role is free (or, following it,
/// whether it still has it).
const LEAD_LOOK_INTERVAL: Duration = Duration::from_secs(2);

/// New subscriptions read from the change feed at once, at most.
const FEED_PAGE: i64 = 5_000;

/// Where this instance stands with the change feed.
#[derive(Debug, Default)]
struct Feed {
    /// It is the feed's follower (as of the last look).
    leading: bool,
    /// When it last looked at who follows the feed.
    looked_at: Option<Instant>,
    /// How far it has followed, and which ids it still waits for, once read.
    cursor: Option<Cursor>,
    /// The storage id of `subscribers_restaurants` the cursor is about.
    filenode: Option<i64>,
    busy: bool,
    /// When a read that found the end of the table started, all of whose campaigns were then
    /// confirmed: everything subscribed before that moment has been followed.
    caught_up: Option<Instant>,
    /// Off after the table turned out to have no `id` column.
    disabled: bool,
}

/// An arrival waiting to be recorded, and who waits for its decision and for it to be stored.
struct Pending {
    arrival: Arc<Arrival>,
    /// Taken once answered (a group that fails after its decisions were answered is stored
    /// again after the restart, without answering twice): where the decision goes, with the
    /// receiving end of `stored`.
    decided: Option<(oneshot::Sender<Recorded>, Stored)>,
    stored: oneshot::Sender<()>,
}

/// What one read of the change feed found.
enum FeedRead {
    NotLeading,
    /// Nothing new; the cursor as it stands now (a gap may have been given up).
    Nothing {
        next: FeedAdvance,
        reset: bool,
    },
    New {
        next: FeedAdvance,
        reset: bool,
        full: bool,
        active: Vec<Arrival>,
        subscribers: Arc<Snapshot>,
    },
}

/// Where the feed stands once a read has been followed.
struct FeedAdvance {
    cursor: Cursor,
    filenode: i64,
}

impl FeedAdvance {
    fn mark(&self) -> FeedMark {
        FeedMark {
            last_id: self.cursor.mark(),
            filenode: Some(self.filenode),
        }
    }
}

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
    /// changed (`lifecycle.retain_days`).
    pub retain: Duration,
}

pub struct Lifecycle {
    postgres: PostgresSettings,
    owner: i32,
    settings: LifecycleSettings,
    fire: Recipient<Fire>,
    /// Claims, settles and counts.
    client: Option<Arc<Client>>,
    /// Stores the versions of arrivals (the kept ones are read on `client`).
    recorder: Option<Rc<Client>>,
    prepared: Option<Rc<store::Prepared>>,
    pending: Vec<Pending>,
    /// Groups being read or stored, by sequence: kept here rather than in the futures, so that a
    /// restart (which drops the futures) puts them back in `pending` instead of dropping who
    /// waits for them.
    under_way: BTreeMap<u64, Vec<Pending>>,
    next_under_way: u64,
    /// A group's kept versions are being read and decided on.
    deciding: bool,
    /// Versions decided by this instance, by campaign, with the group that stores them and
    /// whether that store has finished: a later arrival is decided against these, not against the
    /// table. A stored one is dropped only when the next read of the table starts, since a read
    /// that started before the store finished may not see it.
    unstored: HashMap<Key, (u64, bool, Kept)>,
    groups: u64,
    to_settle: Vec<(Key, State)>,
    claiming: bool,
    /// Notifications of the campaigns claimed and not yet confirmed (their subscribers held).
    firing: usize,
    settling: bool,
    closing: bool,
    counted_at: Option<Instant>,
    forgotten_at: Option<Instant>,
    feed: Feed,
    /// The subscriber snapshot in use, to tell what a new one adds.
    snapshot: Option<Arc<Snapshot>>,
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
        Lifecycle {
            postgres,
            owner,
            settings,
            fire,
            client: None,
            recorder: None,
            prepared: None,
            pending: Vec::new(),
            under_way: BTreeMap::new(),
            next_under_way: 0,
            deciding: false,
            unstored: HashMap::new(),
            groups: 0,
            to_settle: Vec::new(),
            claiming: false,
            firing: 0,
            settling: false,
            closing: false,
            counted_at: None,
            forgotten_at: None,
            feed: Feed::default(),
            snapshot: None,
            shared,
            restarts: Restarts::new(ActorKind::Lifecycle, restart),
        }
    }

    fn failed(&mut self, what: &str, e: &tokio_postgres::Error, ctx: &mut Context<Self>) {
        log::warn!("lifecycle: cannot {what}: {}", describe(e));
        self.restarts.failed();
        ctx.stop();
    }

    /// Records what arrived: reads the kept versions, decides and answers each arrival (delivery
    /// starts), then stores the new versions and tells each arrival it is stored. The next group
    /// is decided as soon as this one is, while this one is still being stored.
    fn record(&mut self, ctx: &mut Context<Self>) {
        if self.deciding || self.pending.is_empty() {
            return;
        }
        let (Some(client), Some(prepared)) = (self.client.clone(), self.prepared.clone()) else {
            return;
        };
        self.deciding = true;
        self.unstored.retain(|_, (_, stored, _)| !*stored);
        let batch = std::mem::take(&mut self.pending);
        let keys: BTreeSet<Key> = batch.iter().map(|p| key_of(&p.arrival.campaign)).collect();
        let keys: Vec<Key> = keys.into_iter().collect();
        let id = self.hold(batch);
        let fut = async move { store::kept(&client, &prepared, &keys).await };
        ctx.spawn(fut.into_actor(self).map(move |kept, act, ctx| {
            act.deciding = false;
            let batch = act.under_way.remove(&id).unwrap_or_default();
            match kept {
                Ok(kept) => act.decide_and_store(kept, batch, ctx),
                Err(e) => {
                    act.requeue(batch);
                    act.failed("read the kept campaigns", &e, ctx);
                }
            }
        }));
    }

    /// Keeps a group while it is read or stored; returns its sequence.
    fn hold(&mut self, batch: Vec<Pending>) -> u64 {
        self.next_under_way += 1;
        self.under_way.insert(self.next_under_way, batch);
        self.next_under_way
    }

    /// Puts a group back, first, to be recorded after the restart.
    fn requeue(&mut self, batch: Vec<Pending>) {
        let later = std::mem::take(&mut self.pending);
        self.pending = batch;
        self.pending.extend(later);
    }

    fn decide_and_store(
        &mut self,
        mut kept: HashMap<Key, Kept>,
        mut batch: Vec<Pending>,
        ctx: &mut Context<Self>,
    ) {
        self.groups += 1;
        let group = self.groups;
        let (now, window) = (self.shared.clock.now_secs(), self.settings.window);
        let mut stored: HashMap<Key, (usize, State)> = HashMap::new();
        let mut decisions = Vec::with_capacity(batch.len());
        for (i, pending) in batch.iter_mut().enumerate() {
            let arrival = &pending.arrival;
            let key = key_of(&arrival.campaign);
            if let Some((_, _, newer)) = self.unstored.get(&key) {
                kept.insert(key.clone(), newer.clone());
            }
            let version = arrival.version();
            let (decision, state) =
                decide(kept.get(&key), &arrival.campaign, version, now, &window);
            if let Some(state) = state {
                let campaign = arrival.campaign.clone();
                let newer = Kept {
                    campaign,
                    version,
                    state,
                };
                kept.insert(key.clone(), newer.clone());
                self.unstored.insert(key.clone(), (group, false, newer));
                stored.insert(key, (i, state));
            }
            // Delivery starts now, while the versions are being stored.
            if let Some((decided, stored)) = pending.decided.take() {
                let _ = decided.send(Recorded { decision, stored });
            }
            decisions.push(decision);
        }
        let (Some(recorder), Some(prepared)) = (self.recorder.clone(), self.prepared.clone())
        else {
            return self.requeue(batch);
        };
        let rows: Vec<(Arc<Arrival>, State)> = stored
            .values()
            .map(|&(i, state)| (batch[i].arrival.clone(), state))
            .collect();
        let id = self.hold(batch);
        let fut = async move {
            let rows: Vec<(&Arrival, State)> = rows.iter().map(|(a, s)| (&**a, *s)).collect();
            store::store(&recorder, &prepared, &rows).await
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let batch = act.under_way.remove(&id).unwrap_or_default();
            match result {
                Ok(()) => {
                    act.restarts.succeeded();
                    for (g, stored, _) in act.unstored.values_mut() {
                        *stored |= *g == group;
                    }
                    for (pending, decision) in batch.into_iter().zip(decisions) {
                        act.report(&pending.arrival, decision);
                        let _ = pending.stored.send(());
                    }
                }
                Err(e) => {
                    // Answered, not stored: stored again after the restart.
                    act.requeue(batch);
                    act.failed("store campaigns", &e, ctx);
                }
            }
        }));
        self.record(ctx);
    }

    fn report(&self, arrival: &Arrival, decision: Decision) {
        let event = match decision {
            Decision::Schedule { replaced: false } => LifecycleEvent::Scheduled,
            Decision::Schedule { replaced: true } => LifecycleEvent::Replaced,
            Decision::Cancel => LifecycleEvent::Cancelled,
            Decision::Superseded => LifecycleEvent::Superseded,
            Decision::ChangedAfterStart => LifecycleEvent::ChangedAfterStart,
            Decision::Deliver | Decision::Ended => return,
        };
        self.emit(event, arrival);
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

    /// Claims what is due and fires it, as much as the notifications of what it fires already
    /// leave room for in the budget.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        let room = self.settings.fire_budget.saturating_sub(self.firing);
        // Claims in batches: once a quarter of the budget is free (or nothing is being fired),
        // not each time one campaign is confirmed.
        let worth_it = self.firing == 0 || room >= self.settings.fire_budget / 4;
        if self.claiming || self.closing || !self.shared.lease.is_valid() || !worth_it {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        self.claiming = true;
        let (now, me, limit) = (
            self.shared.clock.now_secs(),
            self.owner,
            self.settings.claim_limit,
        );
        let window = self.settings.window;
        let fut = async move {
            let claimed = store::claim_due(&client, now, me, limit, room as i64).await?;
            let restaurants: BTreeSet<&str> = claimed
                .iter()
                .map(|c| &c.arrival.campaign)
                .filter(|c| now <= window.deadline(c))
                .map(|c| c.restaurant_id.as_str())
                .collect();
            let restaurants: Vec<&str> = restaurants.into_iter().collect();
            let subscribers = match restaurants.is_empty() {
                true => Snapshot::default(),
                false => store::subscribers_of(&client, &restaurants).await?,
            };
            Ok::<_, tokio_postgres::Error>((claimed, Arc::new(subscribers)))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.claiming = false;
            match result {
                Ok((claimed, subscribers)) => {
                    let full = claimed.len() as i64 >= limit;
                    act.fire_all(claimed, subscribers, now, ctx);
                    if full {
                        // Claims again if the budget still has room.
                        act.claim(ctx);
                    }
                }
                Err(e) => act.failed("claim due campaigns", &e, ctx),
            }
        }));
    }

    fn fire_all(
        &mut self,
        claimed: Vec<Claimed>,
        subscribers: Arc<Snapshot>,
        now: i64,
        ctx: &mut Context<Self>,
    ) {
        for Claimed {
            arrival,
            taken_over,
        } in claimed
        {
            if taken_over {
                self.emit(LifecycleEvent::TakenOver, &arrival);
            }
            let key = key_of(&arrival.campaign);
            if now > self.settings.window.deadline(&arrival.campaign) {
                self.emit(LifecycleEvent::Expired, &arrival);
                self.to_settle.push((key, State::Expired));
                continue;
            }
            let start = arrival.campaign.adv_campaign_datetime_start;
            let audience = subscribers
                .lookup(&arrival.campaign.restaurant_id)
                .map_or(0, |entry| entry.len());
            self.firing += audience;
            self.shared
                .metrics
                .notifications_firing
                .add(audience as i64);
            let fire = Fire {
                arrival,
                subscribers: subscribers.clone(),
            };
            let sent = self.fire.send(fire);
            ctx.spawn(sent.into_actor(self).map(move |outcome, act, ctx| {
                act.firing = act.firing.saturating_sub(audience);
                act.shared.metrics.notifications_firing.sub(audience as i64);
                let outcome = outcome.unwrap_or_else(|e| CampaignOutcome::Unconfirmed {
                    sink: "enricher",
                    reason: e.to_string(),
                });
                act.fired(key, start, outcome);
                act.claim(ctx);
            }));
        }
        self.settle(ctx);
    }

    /// What a fire's outcome makes of the campaign.
    fn fired(&mut self, key: Key, start: i64, outcome: CampaignOutcome) {
        let state = match outcome {
            CampaignOutcome::Delivered { .. }
            | CampaignOutcome::AlreadyNotified
            | CampaignOutcome::NoSubscribers => {
                let metrics = &self.shared.metrics;
                metrics
                    .lifecycle_events
                    .with_label_values(&[LifecycleEvent::Fired.as_str()])
                    .inc();
                let delay_ms = self.shared.clock.now_ms() - start.saturating_mul(1000);
                metrics.fire_delay.observe(delay_ms.max(0) as f64 / 1000.0);
                State::Active
            }
            CampaignOutcome::Ended => {
                self.shared
                    .metrics
                    .lifecycle_events
                    .with_label_values(&[LifecycleEvent::Expired.as_str()])
                    .inc();
                State::Expired
            }
            CampaignOutcome::SinkFailed { .. } | CampaignOutcome::Rejected(_) => State::Refused,
            // Not confirmed (the service is stopping): claimed again, by whoever comes next.
            _ => State::Scheduled,
        };
        self.to_settle.push((key, state));
    }

    /// Writes the states of what was fired.
    fn settle(&mut self, ctx: &mut Context<Self>) {
        if self.settling || self.to_settle.is_empty() {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        self.settling = true;
        let settled = std::mem::take(&mut self.to_settle);
        let me = self.owner;
        let batch = settled.clone();
        let fut = async move {
            for state in [
                State::Active,
                State::Expired,
                State::Refused,
                State::Scheduled,
            ] {
                let keys: Vec<Key> = batch
                    .iter()
                    .filter(|(_, s)| *s == state)
                    .map(|(k, _)| k.clone())
                    .collect();
                if !keys.is_empty() {
                    store::settle(&client, &keys, state, me).await?;
                }
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.settling = false;
            if let Err(e) = result {
                act.to_settle.extend(settled);
                act.failed("settle fired campaigns", &e, ctx);
            }
        }));
    }

    /// Reads the subscriptions added since the last it followed (if this instance leads the
    /// feed) and fires the campaigns active at their restaurants for them.
    fn follow(&mut self, ctx: &mut Context<Self>) {
        if self.feed.busy || self.feed.disabled || self.closing || !self.shared.lease.is_valid() {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        // Who follows the feed is looked at every few seconds, not at every poll: by the others,
        // whether the role is free; by the follower, whether it still has it.
        if self
            .feed
            .looked_at
            .is_some_and(|t| t.elapsed() < LEAD_LOOK_INTERVAL)
            && !self.feed.leading
        {
            return;
        }
        let look = self
            .feed
            .looked_at
            .is_none_or(|t| t.elapsed() >= LEAD_LOOK_INTERVAL);
        if look {
            self.feed.looked_at = Some(Instant::now());
        }
        self.feed.busy = true;
        let leading = self.feed.leading;
        let known = self.feed.cursor.clone().zip(self.feed.filenode);
        let (now, window) = (self.shared.clock.now_secs(), self.settings.window);
        let me = self.owner;
        let read_at = Instant::now();
        let fut = async move {
            let leads = match (leading, look) {
                (false, _) => store::try_lead_feed(&client, me).await?,
                (true, true) => store::leads_feed(&client, me).await?,
                (true, false) => true,
            };
            if !leads {
                return Ok(FeedRead::NotLeading);
            }
            let filenode = store::table_filenode(&client).await?;
            let (cursor, reset, record) = match known {
                Some((cursor, known)) => (cursor, known != filenode, false),
                None => {
                    let mark = store::feed_position(&client).await?;
                    let reset = mark.filenode.is_some_and(|f| f != filenode);
                    (Cursor::at(mark.last_id), reset, mark.filenode.is_none())
                }
            };
            // Truncated (or rewritten) since it was read: its ids may have started again.
            let cursor = if reset { Cursor::at(0) } else { cursor };
            if reset || record {
                let at = FeedAdvance { cursor, filenode };
                store::advance_feed(&client, at.mark(), me).await?;
                return Ok(FeedRead::Nothing { next: at, reset });
            }
            let rows = store::subscriptions_after(&client, cursor.position, FEED_PAGE).await?;
            let found = store::subscriptions_in(&client, &cursor.gaps()).await?;
            let read: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let found_ids: Vec<i64> = found.iter().map(|r| r.0).collect();
            let next = FeedAdvance {
                cursor: cursor.advanced(&read, &found_ids, Instant::now()),
                filenode,
            };
            if rows.is_empty() && found.is_empty() {
                if next.cursor.mark() != cursor.mark() {
                    store::advance_feed(&client, next.mark(), me).await?;
                }
                return Ok(FeedRead::Nothing { next, reset });
            }
            let restaurants: BTreeSet<&str> =
                rows.iter().chain(&found).map(|r| r.1.as_str()).collect();
            let restaurants: Vec<&str> = restaurants.into_iter().collect();
            let active = store::active_campaigns(&client, Some(&restaurants), now, &window).await?;
            let mut subscribers = SnapshotBuilder::new();
            for (_, restaurant, client_id) in rows.iter().chain(&found) {
                subscribers.push(restaurant, client_id);
            }
            Ok::<_, tokio_postgres::Error>(FeedRead::New {
                next,
                reset,
                full: rows.len() as i64 >= FEED_PAGE,
                active,
                subscribers: Arc::new(subscribers.build()),
            })
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let read = match result {
                Ok(read) => read,
                Err(e) => {
                    act.feed.busy = false;
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) {
                        log::error!(
                            "lifecycle: subscribers_restaurants has no id column, so new \
                             subscriptions are found only at the cache's reloads: {}",
                            describe(&e)
                        );
                        act.feed.disabled = true;
                        return;
                    }
                    return act.failed("follow new subscriptions", &e, ctx);
                }
            };
            match read {
                FeedRead::NotLeading => {
                    if act.feed.leading {
                        log::info!("lifecycle: another instance follows new subscriptions now");
                    }
                    act.feed.leading = false;
                    act.feed.busy = false;
                }
                FeedRead::Nothing { next, reset } => {
                    if reset {
                        Self::log_reset();
                    } else if !act.feed.leading {
                        log::info!(
                            "lifecycle: this instance follows new subscriptions (from id {})",
                            next.cursor.mark()
                        );
                    }
                    act.feed.leading = true;
                    act.feed.busy = false;
                    act.feed.cursor = Some(next.cursor);
                    act.feed.filenode = Some(next.filenode);
                    if !reset {
                        act.feed.caught_up = Some(read_at);
                    }
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
                    act.feed.leading = true;
                    act.notify_late(active, subscribers, Some(next), ctx, move |act, ctx| {
                        if !full {
                            act.feed.caught_up = Some(read_at);
                        } else {
                            act.follow(ctx);
                        }
                    });
                }
            }
        }));
    }

    fn log_reset() {
        log::warn!(
            "lifecycle: subscribers_restaurants was truncated or rewritten since the change feed \
             last read it (its storage changed, so its ids may have started again): following it \
             again from its first row; who has a campaign's notification gets nothing new"
        );
    }

    /// Fires each of `active` for `subscribers` (its restaurant's new ones); once every one is
    /// confirmed, records where the feed then stands (if it is a read of the feed) and calls
    /// `then`. If one is not confirmed, the same subscriptions are read again next time.
    fn notify_late(
        &mut self,
        active: Vec<Arrival>,
        subscribers: Arc<Snapshot>,
        feed: Option<FeedAdvance>,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let me = self.owner;
        let of_feed = feed.is_some();
        let Some(client) = self.client.clone() else {
            if of_feed {
                self.feed.busy = false;
            }
            return;
        };
        let fires: Vec<_> = active
            .into_iter()
            .filter(|a| subscribers.lookup(&a.campaign.restaurant_id).is_some())
            .map(|arrival| {
                self.fire.send(Fire {
                    arrival,
                    subscribers: subscribers.clone(),
                })
            })
            .collect();
        let fut = async move {
            let outcomes = futures::future::join_all(fires).await;
            let (mut notified, mut confirmed) = (0, true);
            for outcome in outcomes {
                match outcome {
                    Ok(CampaignOutcome::Delivered { notifications }) => notified += notifications,
                    Ok(CampaignOutcome::Unconfirmed { .. }) | Err(_) => confirmed = false,
                    Ok(_) => {}
                }
            }
            let mut still_leading = true;
            if let (true, Some(next)) = (confirmed, &feed) {
                still_leading = store::advance_feed(&client, next.mark(), me).await?;
            }
            let result = (confirmed && still_leading, notified, still_leading);
            Ok::<_, tokio_postgres::Error>((result, feed))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            if of_feed {
                act.feed.busy = false;
            }
            match result {
                Ok(((confirmed, notified, still_leading), feed)) => {
                    act.shared
                        .metrics
                        .late_subscriber_notifications
                        .inc_by(notified as u64);
                    if !still_leading {
                        log::info!("lifecycle: another instance follows new subscriptions now");
                        act.feed.leading = false;
                        act.feed.cursor = None;
                        act.feed.filenode = None;
                    }
                    if confirmed {
                        if let Some(next) = feed {
                            act.feed.cursor = Some(next.cursor);
                            act.feed.filenode = Some(next.filenode);
                        }
                        then(act, ctx);
                    }
                }
                Err(e) => act.failed("record the change feed's position", &e, ctx),
            }
        }));
    }

    /// The safety net at each reload: the clients the new snapshot has and the previous one did
    /// not, notified of every active campaign of their restaurant. The restaurants with active
    /// campaigns are read a page at a time, without the campaigns; only the campaigns of those
    /// that gained clients are read in full. So a reload costs memory in proportion to what it
    /// found new, not to the campaigns on record.
    fn compare(&mut self, older: Arc<Snapshot>, newer: Arc<Snapshot>, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let (now, window) = (self.shared.clock.now_secs(), self.settings.window);
        let fut = async move {
            let mut added = SnapshotBuilder::new();
            let (mut count, mut gained) = (0, Vec::new());
            let mut after = String::new();
            loop {
                let page =
                    store::active_restaurants(&client, &after, COMPARE_PAGE, now, &window).await?;
                for restaurant in &page {
                    let mut any = false;
                    for client_id in newer.added_since(&older, restaurant) {
                        added.push(restaurant, &client_id);
                        count += 1;
                        any = true;
                    }
                    if any {
                        gained.push(restaurant.clone());
                    }
                }
                match page.last() {
                    Some(last) if page.len() as i64 >= COMPARE_PAGE => after = last.clone(),
                    _ => break,
                }
            }
            let mut active = Vec::new();
            for restaurants in gained.chunks(COMPARE_PAGE as usize) {
                let restaurants: Vec<&str> = restaurants.iter().map(String::as_str).collect();
                active.extend(
                    store::active_campaigns(&client, Some(&restaurants), now, &window).await?,
                );
            }
            Ok::<_, tokio_postgres::Error>((active, count, added.build()))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let (active, count, added) = match result {
                Ok(found) => found,
                Err(e) => return act.failed("read the active campaigns", &e, ctx),
            };
            if count == 0 {
                return;
            }
            log::debug!(
                "lifecycle: the new snapshot has {count} subscriptions to restaurants with active \
                 campaigns that the previous one lacked"
            );
            act.notify_late(active, Arc::new(added), None, ctx, |_, _| {});
        }));
    }

    /// Refreshes the count of scheduled campaigns, and forgets campaigns long over.
    fn housekeeping(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let now = Instant::now();
        if self
            .counted_at
            .is_none_or(|t| now.duration_since(t) >= COUNT_INTERVAL)
        {
            self.counted_at = Some(now);
            let gauge = self.shared.metrics.campaigns_scheduled.clone();
            let c = client.clone();
            ctx.spawn(
                async move { store::count_scheduled(&c).await }
                    .into_actor(self)
                    .map(move |count, _, _| match count {
                        Ok(n) => gauge.set(n),
                        Err(e) => log::warn!("lifecycle: cannot count campaigns: {}", describe(&e)),
                    }),
            );
        }
        if self
            .forgotten_at
            .is_none_or(|t| now.duration_since(t) >= FORGET_INTERVAL)
        {
            self.forgotten_at = Some(now);
            let (secs, grace, retain) = (
                self.shared.clock.now_secs(),
                self.settings.window.end_grace_secs,
                self.settings.retain.as_secs_f64(),
            );
            ctx.spawn(
                async move {
                    let mut forgotten = 0;
                    loop {
                        let n =
                            store::forget(&client, secs, grace, RETAIN_ENDED_SECS, retain).await?;
                        forgotten += n;
                        if n < store::FORGET_PAGE as u64 {
                            return Ok::<_, tokio_postgres::Error>(forgotten);
                        }
                    }
                }
                .into_actor(self)
                .map(|forgotten, _, _| match forgotten {
                    Ok(0) => {}
                    Ok(n) => log::info!("lifecycle: forgot {n} campaigns nothing needs any more"),
                    Err(e) => {
                        log::warn!("lifecycle: cannot forget ended campaigns: {}", describe(&e))
                    }
                }),
            );
        }
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
                    let poll = act.settings.poll_interval;
                    ctx.run_interval(poll, |act, ctx| {
                        act.shared.liveness.beat(crate::liveness::Loop::Lifecycle);
                        let closed = |c: Option<&Client>| c.is_some_and(Client::is_closed);
                        if closed(act.client.as_deref()) || closed(act.recorder.as_deref()) {
                            act.restarts.failed();
                            ctx.stop();
                            return;
                        }
                        act.record(ctx);
                        act.claim(ctx);
                        act.settle(ctx);
                        act.follow(ctx);
                        act.housekeeping(ctx);
                        let lag = match (act.feed.leading, act.feed.caught_up) {
                            (true, Some(at)) => at.elapsed().as_secs_f64(),
                            _ => 0.0,
                        };
                        act.shared.metrics.change_feed_lag.set(lag);
                    });
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
        self.deciding = false;
        self.unstored.clear();
        // What was being read or stored went with the old context's futures: recorded again,
        // first, in the order it arrived (a group answered already is not answered twice).
        let under_way = std::mem::take(&mut self.under_way);
        let later = std::mem::take(&mut self.pending);
        self.pending = under_way.into_values().flatten().collect();
        self.pending.extend(later);
        self.claiming = false;
        self.settling = false;
        // The fires went with the old context's futures; what they claimed is claimed again.
        self.shared
            .metrics
            .notifications_firing
            .sub(self.firing as i64);
        self.firing = 0;
        // Looked at again after the reconnect.
        self.feed.leading = false;
        self.feed.looked_at = None;
        self.feed.busy = false;
        self.feed.cursor = None;
        self.feed.filenode = None;
    }
}

impl Handler<SnapshotLoaded> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: SnapshotLoaded, ctx: &mut Context<Self>) {
        if let Some(older) = self.snapshot.replace(msg.0.clone()) {
            self.compare(older, msg.0, ctx);
        }
    }
}

impl Handler<RecordAll> for Lifecycle {
    type Result = ();

    fn handle(&mut self, msg: RecordAll, ctx: &mut Context<Self>) {
        for (arrival, decided) in msg.0 {
            let (stored, is_stored) = oneshot::channel();
            self.pending.push(Pending {
                arrival,
                decided: Some((decided, Stored(is_stored))),
                stored,
            });
        }
        self.record(ctx);
    }
}

impl Handler<Close> for Lifecycle {
    type Result = ();

    /// Claims nothing more; what is already being fired finishes (or is claimed again by the
    /// next instance once this one is gone).
    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        self.closing = true;
        self.settle(ctx);
    }
}
