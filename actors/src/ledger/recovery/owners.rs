//! The owners' rows and what recovery does with them: fencing an owner whose lease expired,
//! claiming a settled one to recover, ending its sessions, forgetting it once done; and the owners
//! of a version before leases, judged by their advisory lock ([`Takeover`]) and given a fenced row.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::ledger::outbox;

/// Owners of a version before leases (marks, no row), seen with their advisory lock free, and
/// since when: one is given a fenced row only once its lock has been free at every look for
/// `settle`, as those versions judged each other. Kept by the ledger actor across its restarts.
#[derive(Debug)]
pub struct Takeover {
    settle: Duration,
    free_since: HashMap<i32, Instant>,
}

impl Takeover {
    pub fn new(settle: Duration) -> Takeover {
        Takeover {
            settle,
            free_since: HashMap::new(),
        }
    }

    /// Records one look at `owner`'s lock at `now`; true when the owner is due for takeover.
    pub fn due(&mut self, owner: i32, lock_free: bool, now: Instant) -> bool {
        if !lock_free {
            self.free_since.remove(&owner);
            return false;
        }
        let settle = self.settle;
        let since = *self.free_since.entry(owner).or_insert_with(|| {
            log::info!(
                "ledger: owner {owner} (a version before leases) left marks and holds no lock; \
                 taking them over once it has been gone for {settle:?}"
            );
            now
        });
        now.duration_since(since) >= settle
    }

    /// Records a sweep's looks (owner, lock free) and returns the owners now due. Owners not
    /// seen are forgotten.
    pub fn observe(&mut self, looks: &[(i32, bool)], now: Instant) -> Vec<i32> {
        let seen: Vec<i32> = looks.iter().map(|(o, _)| *o).collect();
        self.free_since.retain(|o, _| seen.contains(o));
        looks
            .iter()
            .filter(|&&(owner, free)| self.due(owner, free, now))
            .map(|&(owner, _)| owner)
            .collect()
    }

    pub fn taken_over(&mut self, owner: i32) {
        self.free_since.remove(&owner);
    }
}

/// An owner whose lease had expired, as this process fenced it.
#[derive(Debug, Clone)]
pub struct Fenced {
    pub owner: i32,
    pub host: String,
    pub pid: i32,
    /// How long ago its lease expired.
    pub expired_secs: f64,
}

/// Fences every owner other than `me` whose lease has expired: from now on none of its writes
/// goes through (see `sinks::pg_writer::FENCE`).
pub async fn fence_expired(client: &Client, me: i32) -> Result<Vec<Fenced>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE public.campaign_notifier_owners
             SET fenced_at = now(), fenced_by = $1
             WHERE fenced_at IS NULL AND expires_at < now() AND owner <> $1
             RETURNING owner, host, pid, extract(epoch FROM now() - expires_at)::float8",
            &[&me],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Fenced {
                owner: r.try_get(0)?,
                host: r.try_get(1)?,
                pid: r.try_get(2)?,
                expired_secs: r.try_get(3)?,
            })
        })
        .collect()
}

/// Owners with marks and no row (a version before leases), and whether their advisory lock is
/// free now.
pub async fn legacy_owners(client: &Client) -> Result<Vec<(i32, bool)>, tokio_postgres::Error> {
    let owners: Vec<i32> = client
        .query(
            "SELECT DISTINCT m.owner FROM public.campaign_notifier_outbox m
             WHERE NOT EXISTS (SELECT 1 FROM public.campaign_notifier_owners o
                               WHERE o.owner = m.owner)",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut looks = Vec::with_capacity(owners.len());
    for owner in owners {
        let free = outbox::try_owner_lock(client, owner).await?;
        if free {
            outbox::release_owner_lock(client, owner).await?;
        }
        looks.push((owner, free));
    }
    Ok(looks)
}

/// Gives a legacy owner whose lock is still free a fenced row (its settle time already waited),
/// so that it is recovered like any other. False when its lock is held again.
pub async fn fence_legacy(
    client: &Client,
    owner: i32,
    me: i32,
) -> Result<bool, tokio_postgres::Error> {
    if !outbox::try_owner_lock(client, owner).await? {
        return Ok(false);
    }
    let inserted = client
        .execute(
            "INSERT INTO public.campaign_notifier_owners
                 (owner, host, pid, input_topic, expires_at, settle_ms, fenced_at, fenced_by)
             VALUES ($1, '(a version before leases)', 0, '', now(), 0, now(), $2)
             ON CONFLICT (owner) DO NOTHING",
            &[&owner, &me],
        )
        .await;
    outbox::release_owner_lock(client, owner).await?;
    Ok(inserted? == 1)
}

/// An owner this process has claimed to recover.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
    pub owner: i32,
    /// Postgres' clock minus the owner's, in milliseconds, as it last reported.
    pub clock_offset_ms: i64,
}

/// Settled: fenced, and its settle time passed since. SQL over the owners row `o`.
const SETTLED: &str =
    "(o.fenced_at IS NOT NULL AND o.fenced_at + o.settle_ms * interval '1 millisecond' <= now())";

/// Claims one settled owner other than `me` whose recovery nobody else is doing (nobody, this
/// process already, or an owner that is itself settled), oldest fence first.
pub async fn claim(client: &Client, me: i32) -> Result<Option<Claimed>, tokio_postgres::Error> {
    let recoverer_settled = SETTLED.replace("o.", "r.");
    let row = client
        .query_opt(
            &format!(
                "UPDATE public.campaign_notifier_owners c SET recovered_by = $1
                 WHERE c.owner = (
                     SELECT o.owner FROM public.campaign_notifier_owners o
                     WHERE {SETTLED} AND o.owner <> $1
                       AND (o.recovered_by IS NULL OR o.recovered_by = $1 OR NOT EXISTS (
                            SELECT 1 FROM public.campaign_notifier_owners r
                            WHERE r.owner = o.recovered_by AND NOT {recoverer_settled}))
                     ORDER BY o.fenced_at LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING c.owner, c.clock_offset_ms"
            ),
            &[&me],
        )
        .await?;
    row.map(|r| {
        Ok(Claimed {
            owner: r.try_get(0)?,
            clock_offset_ms: r.try_get(1)?,
        })
    })
    .transpose()
}

/// Ends the sessions a fenced owner still has (a frozen process keeps them open: its kernel
/// answers the server's keepalives), which ends its open transactions and frees its locks at
/// once instead of after `idle_in_transaction_timeout_secs`. Returns how many there were.
pub async fn end_sessions(client: &Client, owner: i32) -> Result<usize, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database()
               AND application_name LIKE 'campaign-notifier %(owner ' || $1::int4 || ',%'",
            &[&owner],
        )
        .await?;
    Ok(rows.len())
}

/// Done with an owner: its marks are gone, and so is its row.
pub async fn forget(client: &Client, owner: i32, me: i32) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM public.campaign_notifier_owners o
             WHERE owner = $1 AND recovered_by = $2
               AND NOT EXISTS (SELECT 1 FROM public.campaign_notifier_outbox WHERE owner = $1)",
            &[&owner, &me],
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_due_only_once_its_lock_has_been_free_at_every_look_for_the_settle_time() {
        let settle = Duration::from_secs(30);
        let mut t = Takeover::new(settle);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!t.due(7, true, at(0)), "first seen free");
        assert!(!t.due(7, true, at(29)));
        // It came back (a live instance that reconnected): the wait starts over.
        assert!(!t.due(7, false, at(31)));
        assert!(!t.due(7, true, at(35)));
        assert!(!t.due(7, true, at(64)));
        assert!(t.due(7, true, at(65)));
        // Another owner has its own clock.
        assert!(!t.due(8, true, at(65)));
        t.taken_over(7);
        assert!(!t.due(7, true, at(100)), "a new loss is a new wait");
        assert_eq!(t.observe(&[(8, true)], at(70)), Vec::<i32>::new());
        assert_eq!(t.observe(&[(8, true)], at(100)), vec![8]);
        assert!(t.observe(&[], at(150)).is_empty());
        assert!(!t.due(8, true, at(200)), "forgotten owners start over");
    }
}
