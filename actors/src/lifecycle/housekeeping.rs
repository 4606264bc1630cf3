//! Housekeeping: the count of scheduled campaigns for the gauge, and forgetting campaigns
//! nothing needs any more.
//!
//! A campaign that fired, was cancelled or ended unsent is deleted a day after its end (plus the
//! grace), and at the latest `lifecycle.retain_days` after it last changed, however far ahead its
//! end is; deletes go a page at a time. The per-client cap's records go at the same time: a
//! client's sent times once the newest is out of the window, a capped notification's record
//! `lifecycle.retain_days` after it was capped (one statement each). [`Housekeeping`] says when
//! each is due, no I/O.
//! Memory: nothing kept; a page of deletes is one statement.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::store;

/// How often the count of scheduled campaigns is refreshed.
pub const COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// How often campaigns nothing needs any more are deleted from the table.
pub const FORGET_INTERVAL: Duration = Duration::from_secs(600);

/// How long after their end (plus the grace) campaigns are kept at most (the retention bounds
/// it however far ahead the end is).
const RETAIN_ENDED_SECS: i64 = 86_400;

/// How long what housekeeping forgets is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `lifecycle.retain_days`: campaigns (see [`forget_all`]) and capped records.
    pub days: Duration,
    /// `limits.per_client_window_secs` while the per-client cap is on: a client's row of
    /// `campaign_notifier_clients` is deleted once its newest sent time is this old.
    pub cap_window: Option<Duration>,
}

/// A client's row whose newest sent time is out of the window (or that has none), unless a
/// write holds it (that one may be adding a time; the next run looks again).
const FORGET_CLIENTS: &str = "DELETE FROM public.campaign_notifier_clients WHERE client_id IN (
     SELECT client_id FROM public.campaign_notifier_clients
     WHERE coalesce(sent[cardinality(sent)], 0) <= extract(epoch FROM now())::int8 - $1::int8
     FOR UPDATE SKIP LOCKED)";

/// Capped records older than the retention.
const FORGET_CAPPED: &str = "DELETE FROM public.campaign_notifier_capped
     WHERE capped_at < extract(epoch FROM now())::int8 - $1::int8";

/// When housekeeping last ran.
#[derive(Debug, Default)]
pub struct Housekeeping {
    counted_at: Option<Instant>,
    forgotten_at: Option<Instant>,
}

/// What is due now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub count: bool,
    pub forget: bool,
}

impl Housekeeping {
    /// What is due at `now`, taken as done from then on.
    pub fn due(&mut self, now: Instant) -> Due {
        let take = |at: &mut Option<Instant>, every: Duration| {
            let due = at.is_none_or(|t| now.saturating_duration_since(t) >= every);
            if due {
                *at = Some(now);
            }
            due
        };
        Due {
            count: take(&mut self.counted_at, COUNT_INTERVAL),
            forget: take(&mut self.forgotten_at, FORGET_INTERVAL),
        }
    }
}

/// Deletes, a page at a time, the campaigns nothing needs at `now` (unix seconds); returns how
/// many. Then what the per-client cap no longer needs.
pub async fn forget_all(
    client: &Client,
    now: i64,
    grace_secs: i64,
    retain: Retention,
) -> Result<u64, tokio_postgres::Error> {
    let forgotten = forget_campaigns(client, now, grace_secs, retain.days).await?;
    forget_cap_records(client, retain).await?;
    Ok(forgotten)
}

/// The cap's clients out of the window (while it is on), and its capped records past the
/// retention (always: a cap turned off leaves them).
async fn forget_cap_records(
    client: &Client,
    retain: Retention,
) -> Result<(), tokio_postgres::Error> {
    let clients = match retain.cap_window {
        Some(window) => {
            let window = window.as_secs() as i64;
            client.execute(FORGET_CLIENTS, &[&window]).await?
        }
        None => 0,
    };
    let days = retain.days.as_secs() as i64;
    let capped = client.execute(FORGET_CAPPED, &[&days]).await?;
    if clients + capped > 0 {
        log::info!(
            "lifecycle: forgot the sent times of {clients} clients out of the cap's window and \
             {capped} capped records past the retention"
        );
    }
    Ok(())
}

async fn forget_campaigns(
    client: &Client,
    now: i64,
    grace_secs: i64,
    retain: Duration,
) -> Result<u64, tokio_postgres::Error> {
    let mut forgotten = 0;
    loop {
        let n = store::forget(
            client,
            now,
            grace_secs,
            RETAIN_ENDED_SECS,
            retain.as_secs_f64(),
        )
        .await?;
        forgotten += n;
        if n < store::FORGET_PAGE as u64 {
            return Ok(forgotten);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_run_at_once_then_each_at_its_own_interval() {
        let t0 = Instant::now();
        let mut h = Housekeeping::default();
        assert_eq!(
            h.due(t0),
            Due {
                count: true,
                forget: true
            }
        );
        assert_eq!(h.due(t0 + Duration::from_secs(1)), Due::default());
        assert_eq!(
            h.due(t0 + COUNT_INTERVAL),
            Due {
                count: true,
                forget: false
            }
        );
        assert_eq!(
            h.due(t0 + FORGET_INTERVAL),
            Due {
                count: true,
                forget: true
            }
        );
    }
}
