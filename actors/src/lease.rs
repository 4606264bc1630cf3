//! This process's lease: the proof, renewed by its own code, that it is a live owner and may
//! write; and the rows of `campaign_notifier_owners` every owner keeps (see "One owner at a time"
//! in docs/design.md).
//!
//! [`Lease`] is what every writer asks before it hands anything to Postgres or to librdkafka: it
//! is valid until the end its last renewal earned, on this process's monotonic clock, which keeps
//! running while the process is frozen. The `LeaseKeeper` actor (`lease_keeper.rs`) renews it; a
//! fence, found by a renewal or by a writer's transaction, ends it for good and stops the service.
//!
//! Must not touch: the outbox marks (the ledger's) or the data path's order of writes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::Client;

use crate::clock::follow_postgres;
use crate::fatal::{Fatal, FatalReason};

/// First key of every advisory lock the service takes ("cn"): the owners' locks of versions
/// before leases, and the lifecycle's claims of a dead owner's fires.
pub const LOCK_CLASS: i32 = 0x636e;

/// Taken off the end of every renewal: covers the drift of this clock against Postgres' over one
/// lease, and the instant between a writer's check and librdkafka taking the record.
pub const MARGIN: Duration = Duration::from_secs(1);

/// Added to a producer's message timeout: a request librdkafka gave up on may still be appended
/// by a slow broker for a moment.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(5);

/// The lease of this process, shared by every component (cheap to clone).
#[derive(Clone)]
pub struct Lease(Arc<Inner>);

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("owner", &self.owner())
            .field("valid", &self.is_valid())
            .field("fenced", &self.is_fenced())
            .finish()
    }
}

struct Inner {
    /// Valid whatever happens: a process without owners (a unit test, a tool).
    unbounded: bool,
    base: Instant,
    owner: AtomicI32,
    /// Nanoseconds since `base` until which the lease is valid; 0: not valid.
    valid_until: AtomicU64,
    /// Nanoseconds since `base` since when it has been valid without a gap.
    valid_since: AtomicU64,
    fenced: AtomicBool,
    changed: Notify,
    fatal: Option<Fatal>,
    /// The input partitions this process holds, as the reader's rebalances say.
    partitions: Mutex<BTreeSet<i32>>,
    /// The partitions live peers list in their rows, and when that was read.
    held_by_peers: Mutex<Option<(Instant, BTreeSet<i32>)>>,
}

/// Why a write may not go ahead now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lapsed {
    #[error("this instance's lease is not valid (not renewed in time); holding its writes")]
    Expired,
    #[error("this instance's lease was fenced; it writes nothing more")]
    Fenced,
}

impl Lease {
    /// A lease that is always valid, for code that runs without owners.
    pub fn unbounded() -> Lease {
        Lease::new(true, None)
    }

    /// The lease of a service process: not valid until acquired; a fence raises the fatal reason.
    pub fn pending(fatal: Fatal) -> Lease {
        Lease::new(false, Some(fatal))
    }

    fn new(unbounded: bool, fatal: Option<Fatal>) -> Lease {
        Lease(Arc::new(Inner {
            unbounded,
            base: Instant::now(),
            owner: AtomicI32::new(0),
            valid_until: AtomicU64::new(0),
            valid_since: AtomicU64::new(0),
            fenced: AtomicBool::new(false),
            changed: Notify::new(),
            fatal,
            partitions: Mutex::new(BTreeSet::new()),
            held_by_peers: Mutex::new(None),
        }))
    }

    /// This process's owner id (0 before it is acquired).
    pub fn owner(&self) -> i32 {
        self.0.owner.load(Ordering::Relaxed)
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0.base).as_nanos() as u64
    }

    /// Whether this process may write now.
    pub fn is_valid(&self) -> bool {
        self.is_valid_at(Instant::now())
    }

    fn is_valid_at(&self, now: Instant) -> bool {
        self.0.unbounded
            || (!self.0.fenced.load(Ordering::Acquire)
                && self.nanos(now) < self.0.valid_until.load(Ordering::Acquire))
    }

    /// `Ok` when this process may write now.
    pub fn check(&self) -> Result<(), Lapsed> {
        if self.is_valid() {
            Ok(())
        } else if self.is_fenced() {
            Err(Lapsed::Fenced)
        } else {
            Err(Lapsed::Expired)
        }
    }

    /// Whether writes are fenced by this lease in Postgres (not for a lease without owners).
    pub fn fences(&self) -> bool {
        !self.0.unbounded
    }

    pub fn is_fenced(&self) -> bool {
        !self.0.unbounded && self.0.fenced.load(Ordering::Acquire)
    }

    /// How long the lease has been valid without a gap (zero when it is not valid).
    pub fn valid_for(&self) -> Duration {
        let now = Instant::now();
        if !self.is_valid_at(now) {
            return Duration::ZERO;
        }
        if self.0.unbounded {
            return now.saturating_duration_since(self.0.base);
        }
        let since = self.0.valid_since.load(Ordering::Acquire);
        Duration::from_nanos(self.nanos(now).saturating_sub(since))
    }

    /// Resolves once the lease is valid; never, once it is fenced (the service is stopping).
    pub async fn wait_valid(&self) {
        loop {
            let changed = self.0.changed.notified();
            if self.is_valid() {
                return;
            }
            // A lapse ends with a renewal, which notifies; the timeout is a safety net only.
            let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
        }
    }

    /// The owner id is `owner`; the lease is not valid until its first renewal.
    pub fn acquired(&self, owner: i32) {
        self.0.owner.store(owner, Ordering::Relaxed);
    }

    /// A renewal sent at `sent_at` succeeded: valid until `sent_at + ttl - MARGIN`.
    pub fn renewed(&self, sent_at: Instant, ttl: Duration) {
        if self.is_fenced() {
            return;
        }
        let now = Instant::now();
        let was_valid = self.is_valid_at(now);
        let until = self.nanos(sent_at + ttl.saturating_sub(MARGIN));
        self.0.valid_until.fetch_max(until, Ordering::AcqRel);
        if !was_valid {
            self.0.valid_since.store(self.nanos(now), Ordering::Release);
            if self.owner() != 0 {
                log::info!("lease: owner {} may write", self.owner());
            }
        }
        self.0.changed.notify_waiters();
    }

    /// The lease was fenced (by owner `by`, when known): nothing more is written, and the
    /// service stops.
    pub fn fenced(&self, by: Option<i32>) {
        if self.0.unbounded || self.0.fenced.swap(true, Ordering::AcqRel) {
            return;
        }
        log::error!(
            "lease: owner {} was fenced by {}: it was frozen or cut off from Postgres for longer \
             than its lease, and another instance takes its work over; writing nothing more",
            self.owner(),
            by.map_or("another instance".to_string(), |o| format!("owner {o}"))
        );
        if let Some(fatal) = &self.0.fatal {
            fatal.raise(FatalReason::LeaseFenced { by });
        }
        self.0.changed.notify_waiters();
    }

    /// The input partitions the reader was assigned (or was left with after a revocation).
    pub fn set_partitions(&self, partitions: BTreeSet<i32>) {
        if let Ok(mut p) = self.0.partitions.lock() {
            *p = partitions;
        }
    }

    pub fn partitions(&self) -> Vec<i32> {
        self.0
            .partitions
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn set_held_by_peers(&self, partitions: BTreeSet<i32>) {
        if let Ok(mut h) = self.0.held_by_peers.lock() {
            *h = Some((Instant::now(), partitions));
        }
    }

    /// The partitions live peers hold, if that was read within `max_age`.
    pub fn held_by_peers(&self, max_age: Duration) -> Option<BTreeSet<i32>> {
        let held = self.0.held_by_peers.lock().ok()?;
        match &*held {
            Some((at, partitions)) if at.elapsed() <= max_age => Some(partitions.clone()),
            _ => None,
        }
    }
}

/// What this owner tells its peers about itself.
#[derive(Debug, Clone)]
pub struct OwnerRow {
    pub host: String,
    pub pid: i32,
    pub input_topic: String,
    pub ttl: Duration,
    /// How long after this owner is fenced its last sends have surely landed or failed.
    pub settle: Duration,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The clock offset an owner reports: Postgres' clock minus its own, in milliseconds. Each
/// acquisition and renewal hands it to the service's clock as well, which so follows Postgres'
/// (see [`crate::clock`]).
const OFFSET: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::int8 - $3::int8";

/// Inserts this process's row with a fresh owner id, never one with marks in the outbox (an
/// older version's random ids share the space); returns the id.
pub async fn acquire(client: &Client, row: &OwnerRow) -> Result<i32, tokio_postgres::Error> {
    let statement = format!(
        "INSERT INTO public.campaign_notifier_owners
             (owner, host, pid, input_topic, expires_at, clock_offset_ms, settle_ms)
         SELECT n.id, $1, $2, $4, now() + make_interval(secs => $5), {OFFSET}, $6
         FROM (SELECT nextval('public.campaign_notifier_owner_seq')::int4 AS id) n
         WHERE NOT EXISTS (SELECT 1 FROM public.campaign_notifier_outbox WHERE owner = n.id)
         RETURNING owner, clock_offset_ms"
    );
    loop {
        let rows = client
            .query(
                &statement,
                &[
                    &row.host,
                    &row.pid,
                    &crate::clock::unix_ms(),
                    &row.input_topic,
                    &secs(row.ttl),
                    &(row.settle.as_millis() as i64),
                ],
            )
            .await?;
        if let Some(r) = rows.first() {
            follow_postgres(r.try_get(1)?);
            return r.try_get(0);
        }
    }
}

/// What a renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The row was fenced (by that owner), or is gone.
    Fenced(Option<i32>),
}

/// Renews `owner`'s row for `ttl` unless it was fenced, with the partitions it holds and its
/// clock's offset.
pub async fn renew(
    client: &Client,
    owner: i32,
    ttl: Duration,
    partitions: &[i32],
) -> Result<Renewal, tokio_postgres::Error> {
    let renewed = client
        .query_opt(
            &format!(
                "UPDATE public.campaign_notifier_owners
                 SET renewed_at = now(), expires_at = now() + make_interval(secs => $2),
                     clock_offset_ms = {OFFSET}, partitions = $4
                 WHERE owner = $1 AND fenced_at IS NULL
                 RETURNING clock_offset_ms"
            ),
            &[&owner, &secs(ttl), &crate::clock::unix_ms(), &partitions],
        )
        .await?;
    if let Some(row) = renewed {
        follow_postgres(row.try_get(0)?);
        return Ok(Renewal::Renewed);
    }
    fenced_by(client, owner).await.map(Renewal::Fenced)
}

/// Who fenced `owner` (`None`: unknown, or the row is gone).
pub async fn fenced_by(client: &Client, owner: i32) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT fenced_by FROM public.campaign_notifier_owners WHERE owner = $1",
            &[&owner],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Whether `owner` has been fenced (or its row is gone): the probe a writer whose session still
/// works runs while the lease keeper cannot renew.
pub async fn is_fenced(client: &Client, owner: i32) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT fenced_at IS NOT NULL FROM public.campaign_notifier_owners WHERE owner = $1",
            &[&owner],
        )
        .await?;
    Ok(row.is_none_or(|r| r.get(0)))
}

/// A stop that finished: the row is fenced by its own owner; `flushed` (nothing of it can still
/// be on its way to the broker) lets a peer take over what it left without waiting.
pub async fn release(
    client: &Client,
    owner: i32,
    flushed: bool,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE public.campaign_notifier_owners
             SET fenced_at = now(), fenced_by = owner, expires_at = least(expires_at, now()),
                 settle_ms = CASE WHEN $2 THEN 0 ELSE settle_ms END
             WHERE owner = $1 AND fenced_at IS NULL",
            &[&owner, &flushed],
        )
        .await
        .map(|_| ())
}

/// The input partitions of `topic` that live owners other than `me` list.
pub async fn partitions_of_peers(
    client: &Client,
    me: i32,
    topic: &str,
) -> Result<BTreeSet<i32>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT unnest(partitions) FROM public.campaign_notifier_owners
             WHERE owner <> $1 AND input_topic = $2 AND fenced_at IS NULL AND expires_at > now()",
            &[&me, &topic],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Holds `owner`'s advisory lock on this session, which versions before leases took as the sign
/// that an owner lives. False when another session holds it.
pub async fn hold_legacy_lock(client: &Client, owner: i32) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&LOCK_CLASS, &owner],
        )
        .await?
        .try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_valid_until_its_renewal_earned_and_a_fence_ends_it_for_good() {
        let (fatal, failed) = Fatal::channel();
        let lease = Lease::pending(fatal);
        assert_eq!(
            lease.check(),
            Err(Lapsed::Expired),
            "not valid before its renewal"
        );
        lease.acquired(7);
        let ttl = Duration::from_secs(10);
        lease.renewed(Instant::now(), ttl);
        assert!(lease.is_valid());
        let now = Instant::now();
        assert!(lease.is_valid_at(now + ttl - MARGIN - Duration::from_millis(50)));
        assert!(
            !lease.is_valid_at(now + ttl - MARGIN + Duration::from_millis(50)),
            "the end is counted from when the renewal was sent, less the margin"
        );
        // A renewal sent long ago (it took its time) earns only what is left of it.
        let old = Lease::pending(Fatal::channel().0);
        old.renewed(Instant::now() - ttl, ttl);
        assert!(
            !old.is_valid(),
            "a renewal older than the lease earns nothing"
        );

        lease.fenced(Some(9));
        assert_eq!(lease.check(), Err(Lapsed::Fenced));
        assert_eq!(
            *failed.borrow(),
            Some(FatalReason::LeaseFenced { by: Some(9) })
        );
        lease.renewed(Instant::now(), ttl);
        assert!(!lease.is_valid(), "a fenced lease is never valid again");
        assert!(Lease::unbounded().is_valid());
    }

    #[test]
    fn what_peers_hold_is_known_only_while_it_is_fresh() {
        let lease = Lease::unbounded();
        assert_eq!(lease.held_by_peers(Duration::from_secs(60)), None);
        lease.set_held_by_peers(BTreeSet::from([1, 3]));
        assert_eq!(
            lease.held_by_peers(Duration::from_secs(60)),
            Some(BTreeSet::from([1, 3]))
        );
        assert_eq!(lease.held_by_peers(Duration::ZERO), None);
    }
}
