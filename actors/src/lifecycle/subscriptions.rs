//! New subscriptions: who subscribes while a campaign is active is notified of it.
//!
//! Two ways find them. The change feed: every `poll_interval` the one instance holding the
//! feed's role reads the rows of `subscribers_restaurants` added since the last it followed (how
//! the [`Cursor`] waits for ids that commit out of order and notices a truncated table is in
//! [`crate::changes::cursor`]), and fires each campaign active at their restaurants for the new subscribers
//! alone; once all are confirmed it records where it stands. And the safety net at each reload
//! of the cache: the clients the new snapshot has and the previous one did not are given the
//! same treatment ([`newly_subscribed`]). Who has a campaign's notification already gets nothing
//! new either way.
//!
//! [`Follower`] is where this instance stands with the feed, no I/O; [`read_feed`],
//! [`notify_late`] and [`newly_subscribed`] are the reads and the fires. Memory: one page of the
//! feed ([`FEED_PAGE`] rows), or at a reload what the new snapshot adds to restaurants with
//! active campaigns, with those campaigns; never the campaigns on record.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use tokio_postgres::Client;

use super::rules::Window;
use super::store::{self, Arrival, FeedKind, FeedMark};
use super::Fire;
use crate::cache::snapshot::{Snapshot, SnapshotBuilder};
use crate::changes::cursor::Cursor;
use crate::changes::table::{Op, StoredChange};
use crate::changes::{self, Mode};
use crate::messages::CampaignOutcome;

/// How often an instance looks whether the change feed's follower role is free (or, following it,
/// whether it still has it).
pub const LEAD_LOOK_INTERVAL: Duration = Duration::from_secs(2);

/// New subscriptions read from the change feed at once, at most.
pub const FEED_PAGE: i64 = 5_000;

/// Restaurants with active campaigns read at once by a reload's comparison.
const COMPARE_PAGE: i64 = 5_000;

/// Where this instance stands with the change feed.
#[derive(Debug, Default)]
pub struct Follower {
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

/// A read of the feed to make.
#[derive(Debug)]
pub struct ReadPlan {
    /// Whether to look at who follows the feed (or, not leading, try to take the role).
    pub look: bool,
    pub leading: bool,
    /// The cursor and the table's storage id it is about, once read.
    pub known: Option<(Cursor, i64)>,
}

/// Where the feed stands once a read has been followed.
#[derive(Debug)]
pub struct FeedAdvance {
    pub cursor: Cursor,
    pub filenode: i64,
    pub kind: FeedKind,
}

impl FeedAdvance {
    fn mark(&self) -> FeedMark {
        FeedMark {
            last_id: self.cursor.mark(),
            filenode: Some(self.filenode),
        }
    }
}

/// What one read of the change feed found.
pub enum FeedRead {
    NotLeading,
    /// Nothing new; the cursor as it stands now (a gap may have been given up).
    Nothing {
        next: FeedAdvance,
        reset: bool,
    },
    New {
        next: FeedAdvance,
        reset: bool,
        /// A whole page: more may wait.
        full: bool,
        active: Vec<Arrival>,
        subscribers: Arc<Snapshot>,
    },
}

impl Follower {
    /// The read to make at `now`, unless one is under way, the feed is off or `allowed` is false
    /// (closing, or no valid lease). Who follows the feed is looked at every few seconds, not at
    /// every poll: by the others, whether the role is free; by the follower, whether it still
    /// has it.
    pub fn next_read(&mut self, now: Instant, allowed: bool) -> Option<ReadPlan> {
        if self.busy || self.disabled || !allowed {
            return None;
        }
        let look = self
            .looked_at
            .is_none_or(|t| now.saturating_duration_since(t) >= LEAD_LOOK_INTERVAL);
        if !look && !self.leading {
            return None;
        }
        if look {
            self.looked_at = Some(now);
        }
        self.busy = true;
        Some(ReadPlan {
            look,
            leading: self.leading,
            known: self.cursor.clone().zip(self.filenode),
        })
    }

    pub fn leading(&self) -> bool {
        self.leading
    }

    /// A read failed (or its fires were not all confirmed): read again at the next poll.
    pub fn idle(&mut self) {
        self.busy = false;
    }

    /// The table has no `id` column: the feed is off.
    pub fn disable(&mut self) {
        self.busy = false;
        self.disabled = true;
    }

    /// Another instance follows the feed; returns whether this one did until now.
    pub fn not_leading(&mut self) -> bool {
        let was = self.leading;
        self.busy = false;
        self.leading = false;
        self.cursor = None;
        self.filenode = None;
        was
    }

    /// This instance follows the feed (from the read's `next` once its fires are confirmed).
    pub fn lead(&mut self) {
        self.leading = true;
    }

    /// Everything up to `next` has been followed; if `caught_up` (a read that started then found
    /// the end of the table), so was everything subscribed before that moment.
    pub fn followed(&mut self, next: FeedAdvance, caught_up: Option<Instant>) {
        self.busy = false;
        self.leading = true;
        self.cursor = Some(next.cursor);
        self.filenode = Some(next.filenode);
        if caught_up.is_some() {
            self.caught_up = caught_up;
        }
    }

    /// Seconds since everything subscribed was followed, as of `now` (0 when not following).
    pub fn lag(&self, now: Instant) -> f64 {
        match (self.leading, self.caught_up) {
            (true, Some(at)) => now.saturating_duration_since(at).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The actor restarts: looked at again after the reconnect.
    pub fn restart(&mut self) {
        self.leading = false;
        self.looked_at = None;
        self.busy = false;
        self.cursor = None;
        self.filenode = None;
    }
}

/// Reads the feed as `plan` says, as owner `me`: takes or checks the role, notices a truncated
/// table, reads a page of new rows and the gaps that showed up, and the campaigns active at
/// their restaurants at `now`. Where the changes are followed (`mode`), the new rows are the
/// additions among the stored changes; in the logical mode the leader also reports the slot.
pub async fn read_feed(
    client: &Client,
    plan: ReadPlan,
    me: i32,
    now: i64,
    window: &Window,
    setup: &FeedSetup,
) -> Result<FeedRead, tokio_postgres::Error> {
    let leads = match (plan.leading, plan.look) {
        (false, _) => store::try_lead_feed(client, me).await?,
        (true, true) => store::leads_feed(client, me).await?,
        (true, false) => true,
    };
    if !leads {
        return Ok(FeedRead::NotLeading);
    }
    let kind = match setup.mode.follows_changes() {
        true => FeedKind::Changes,
        false => FeedKind::Ids,
    };
    if plan.look {
        upkeep(client, &plan, kind, setup).await?;
    }
    let filenode = store::table_filenode(client, kind).await?;
    let (cursor, reset, record) = where_from(client, plan.known, kind, filenode).await?;
    if reset || record {
        let at = FeedAdvance {
            cursor,
            filenode,
            kind,
        };
        store::advance_feed(client, kind, at.mark(), me).await?;
        return Ok(FeedRead::Nothing { next: at, reset });
    }
    let (rows, found) = new_rows(client, kind, &cursor).await?;
    let next = FeedAdvance {
        cursor: cursor.advanced(&serials(&rows), &serials(&found), Instant::now()),
        filenode,
        kind,
    };
    let added: Vec<&(i64, String, String)> = (rows.iter().chain(&found))
        .filter(|r| !r.1.is_empty() || !r.2.is_empty())
        .collect();
    if added.is_empty() {
        if next.cursor.mark() != cursor.mark() {
            store::advance_feed(client, kind, next.mark(), me).await?;
        }
        return Ok(FeedRead::Nothing { next, reset });
    }
    let restaurants: BTreeSet<&str> = added.iter().map(|r| r.1.as_str()).collect();
    let restaurants: Vec<&str> = restaurants.into_iter().collect();
    let active = store::active_campaigns(client, Some(&restaurants), now, window).await?;
    Ok(FeedRead::New {
        next,
        reset,
        full: rows.len() as i64 >= FEED_PAGE,
        active,
        subscribers: Arc::new(snapshot_of(&added)),
    })
}

fn snapshot_of(added: &[&(i64, String, String)]) -> Snapshot {
    let mut subscribers = SnapshotBuilder::new();
    for (_, restaurant, client_id) in added {
        subscribers.push(restaurant, client_id);
    }
    subscribers.build()
}

/// What the change feed follows and how long stored changes are kept.
#[derive(Clone)]
pub struct FeedSetup {
    pub mode: Mode,
    pub keep: Duration,
    pub metrics: crate::metrics::Metrics,
}

/// Where the read starts: the cursor, whether the table was truncated (or rewritten) since it
/// was read, and whether its mark is to be recorded now (none recorded yet).
async fn where_from(
    client: &Client,
    known: Option<(Cursor, i64)>,
    kind: FeedKind,
    filenode: i64,
) -> Result<(Cursor, bool, bool), tokio_postgres::Error> {
    let (cursor, reset, record) = match known {
        Some((cursor, known)) => (cursor, known != filenode, false),
        None => {
            let mark = store::feed_position(client, kind).await?;
            let reset = mark.filenode.is_some_and(|f| f != filenode);
            (Cursor::at(mark.last_id), reset, mark.filenode.is_none())
        }
    };
    // Truncated (or rewritten) since it was read: its ids may have started again.
    let cursor = if reset { Cursor::at(0) } else { cursor };
    Ok((cursor, reset, record))
}

/// What the leader does every few seconds: the slot's figures (logical mode), and the stored
/// changes trimmed (in the ids mode nobody reads them, but a trigger left installed still writes
/// them).
async fn upkeep(
    client: &Client,
    plan: &ReadPlan,
    kind: FeedKind,
    setup: &FeedSetup,
) -> Result<(), tokio_postgres::Error> {
    if let Mode::Logical(names) = &setup.mode {
        watch_slot(client, names, &setup.metrics).await?;
    }
    let followed = match (kind, &plan.known) {
        (FeedKind::Changes, Some((cursor, _))) => Some(cursor.mark()),
        (FeedKind::Changes, None) => None,
        (FeedKind::Ids, _) => Some(i64::MAX),
    };
    if let Some(mark) = followed {
        changes::table::trim(client, setup.keep, mark).await?;
    }
    Ok(())
}

/// The slot's lag, retained WAL and `wal_status` as metrics (the instances drain it,
/// [`changes::drain`]; the leader reports it).
async fn watch_slot(
    client: &Client,
    names: &changes::SlotNames,
    metrics: &crate::metrics::Metrics,
) -> Result<(), tokio_postgres::Error> {
    let Some(state) = changes::slot::state(client, &names.slot).await? else {
        return Ok(());
    };
    metrics.replication_slot_lag_bytes.set(state.lag_bytes);
    metrics
        .replication_slot_retained_bytes
        .set(state.retained_bytes);
    let status = state.wal_status.as_deref().unwrap_or("");
    for s in ["reserved", "extended", "unreserved", "lost"] {
        let on = (s == status) as i64;
        metrics
            .replication_slot_wal_status
            .with_label_values(&[s])
            .set(on);
    }
    Ok(())
}

type Rows = Vec<(i64, String, String)>;

fn serials(rows: &Rows) -> Vec<i64> {
    rows.iter().map(|r| r.0).collect()
}

/// A page of rows after the cursor and the gaps that showed up: (serial, restaurant, client);
/// for stored changes, other than additions as (seq, "", "").
async fn new_rows(
    client: &Client,
    kind: FeedKind,
    cursor: &Cursor,
) -> Result<(Rows, Rows), tokio_postgres::Error> {
    if kind == FeedKind::Ids {
        let rows = store::subscriptions_after(client, cursor.position, FEED_PAGE).await?;
        let found = store::subscriptions_in(client, &cursor.gaps()).await?;
        return Ok((rows, found));
    }
    let added = |changes: Vec<StoredChange>| -> Rows {
        changes
            .into_iter()
            .map(|c| match c.op {
                Op::Add => (c.seq, c.restaurant_id, c.client_id),
                _ => (c.seq, String::new(), String::new()),
            })
            .collect()
    };
    let rows = changes::table::after(client, cursor.position, FEED_PAGE).await?;
    let found = changes::table::among(client, &cursor.gaps()).await?;
    Ok((added(rows), added(found)))
}

/// How notifying late subscribers went.
#[derive(Debug)]
pub struct Notified {
    /// Notifications both sinks confirmed.
    pub notifications: usize,
    /// Every fire was confirmed (and, for a read of the feed, its position recorded).
    pub confirmed: bool,
    /// For a read of the feed: this instance still follows it.
    pub still_leading: bool,
    /// The feed's position it was about, handed back.
    pub feed: Option<FeedAdvance>,
}

/// Fires each of `active` for `subscribers` (its restaurant's new ones); once every one is
/// confirmed, records where the feed then stands, if it is a read of the feed.
pub async fn notify_late(
    client: Arc<Client>,
    fire: Recipient<Fire>,
    active: Vec<Arrival>,
    subscribers: Arc<Snapshot>,
    feed: Option<FeedAdvance>,
    me: i32,
) -> Result<Notified, tokio_postgres::Error> {
    let fires: Vec<_> = active
        .into_iter()
        .filter(|a| subscribers.lookup(&a.campaign.restaurant_id).is_some())
        .map(|arrival| {
            fire.send(Fire {
                arrival,
                subscribers: subscribers.clone(),
            })
        })
        .collect();
    let outcomes = futures::future::join_all(fires).await;
    let (mut notifications, mut confirmed) = (0, true);
    for outcome in outcomes {
        match outcome {
            Ok(CampaignOutcome::Delivered { notifications: n }) => notifications += n,
            Ok(CampaignOutcome::Unconfirmed { .. }) | Err(_) => confirmed = false,
            Ok(_) => {}
        }
    }
    let mut still_leading = true;
    if let (true, Some(next)) = (confirmed, &feed) {
        still_leading = store::advance_feed(&client, next.kind, next.mark(), me).await?;
    }
    Ok(Notified {
        notifications,
        confirmed: confirmed && still_leading,
        still_leading,
        feed,
    })
}

/// What a reload's comparison found.
#[derive(Debug, Default)]
pub struct Newly {
    /// The active campaigns of the restaurants that gained clients.
    pub active: Vec<Arrival>,
    /// Those clients, by restaurant.
    pub subscribers: Snapshot,
    pub count: usize,
}

/// The clients `newer` has and `older` did not, of restaurants with campaigns active at `now`,
/// with those campaigns. The restaurants with active campaigns are read a page at a time,
/// without the campaigns; only the campaigns of those that gained clients are read in full. So
/// a reload costs memory in proportion to what it found new, not to the campaigns on record.
pub async fn newly_subscribed(
    client: &Client,
    older: &Snapshot,
    newer: &Snapshot,
    now: i64,
    window: &Window,
) -> Result<Newly, tokio_postgres::Error> {
    let mut added = SnapshotBuilder::new();
    let (mut count, mut gained) = (0, Vec::new());
    let mut after = String::new();
    loop {
        let page = store::active_restaurants(client, &after, COMPARE_PAGE, now, window).await?;
        for restaurant in &page {
            let mut any = false;
            for client_id in newer.added_since(older, restaurant) {
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
        active.extend(store::active_campaigns(client, Some(&restaurants), now, window).await?);
    }
    Ok(Newly {
        active,
        subscribers: added.build(),
        count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advance(position: i64) -> FeedAdvance {
        FeedAdvance {
            cursor: Cursor::at(position),
            filenode: 7,
            kind: FeedKind::Ids,
        }
    }

    #[test]
    fn an_instance_not_following_looks_at_the_role_every_few_seconds_the_follower_reads_every_poll()
    {
        let t0 = Instant::now();
        let mut f = Follower::default();
        let plan = f.next_read(t0, true).expect("first look");
        assert!(plan.look && !plan.leading && plan.known.is_none());
        assert!(f.next_read(t0, true).is_none(), "one read at a time");
        f.idle();
        assert!(
            f.next_read(t0 + Duration::from_millis(500), true).is_none(),
            "not following: looks again only after the interval"
        );
        let plan = f.next_read(t0 + LEAD_LOOK_INTERVAL, true).unwrap();
        assert!(plan.look);
        // It took the role.
        f.followed(advance(10), None);
        let poll = t0 + LEAD_LOOK_INTERVAL + Duration::from_millis(100);
        let plan = f
            .next_read(poll, true)
            .expect("the follower reads at every poll");
        assert!(!plan.look, "without looking at the role each time");
        assert_eq!(plan.known.map(|(c, n)| (c.position, n)), Some((10, 7)));
        f.idle();
        assert!(
            f.next_read(poll, false).is_none(),
            "closing or no lease: no read"
        );
    }

    #[test]
    fn losing_the_role_forgets_the_cursor_and_the_lag_reads_zero() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.next_read(t0, true);
        f.followed(advance(10), Some(t0));
        assert!(f.leading());
        assert_eq!(f.lag(t0 + Duration::from_secs(3)), 3.0);
        f.next_read(t0 + LEAD_LOOK_INTERVAL, true);
        assert!(f.not_leading(), "it did follow");
        assert_eq!(f.lag(t0 + Duration::from_secs(3)), 0.0);
        let plan = f.next_read(t0 + LEAD_LOOK_INTERVAL * 2, true).unwrap();
        assert!(
            plan.known.is_none(),
            "a new follower starts from the recorded mark"
        );
    }

    #[test]
    fn a_read_that_did_not_reach_the_end_keeps_the_last_caught_up_moment() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.followed(advance(10), Some(t0));
        f.followed(advance(20), None);
        assert_eq!(f.lag(t0 + Duration::from_secs(5)), 5.0);
    }

    #[test]
    fn a_table_without_ids_switches_the_feed_off_and_a_restart_looks_again() {
        let t0 = Instant::now();
        let mut f = Follower::default();
        f.next_read(t0, true);
        f.followed(advance(10), Some(t0));
        f.restart();
        assert!(!f.leading());
        let plan = f.next_read(t0, true).expect("looked at again at once");
        assert!(plan.look && plan.known.is_none());
        f.disable();
        assert!(f.next_read(t0 + LEAD_LOOK_INTERVAL * 5, true).is_none());
    }
}
