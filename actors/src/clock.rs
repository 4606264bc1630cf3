//! The one clock of the service: unix time, in seconds and in milliseconds.
//!
//! Every "now" the service uses comes from here: the active-window rule, when a scheduled
//! campaign is due, `trigger_datetime_created`, latency, the age of the subscriber snapshot. Code
//! that must be tested at a chosen instant takes a [`Clock`] (handed to it in the shared context)
//! instead of calling [`unix_secs`].
//!
//! The system clock follows Postgres': at every lease renewal (every third of
//! `ledger.lease_ttl_secs`) the lease keeper measures how far Postgres' clock is from this host's
//! and hands the difference to [`follow_postgres`]. Instances whose hosts' clocks disagree then
//! agree on when a campaign starts and ends, to within the round trip of a renewal. What must be
//! this host's own clock (the timestamps its producer puts on messages, which recovery compares
//! with) reads [`unix_ms`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Postgres' clock minus this host's, in milliseconds, as last measured.
static POSTGRES_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the epoch on this host's clock (0 if the clock is before 1970).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds since the epoch on this host's clock.
pub fn unix_secs() -> i64 {
    unix_ms().div_euclid(1000)
}

/// Makes [`Clock::system`] read Postgres' clock: `offset_ms` is Postgres' clock minus
/// [`unix_ms`], as measured by one statement.
pub fn follow_postgres(offset_ms: i64) {
    let before = POSTGRES_OFFSET_MS.swap(offset_ms, Ordering::Relaxed);
    let off = |ms: i64| ms.abs() >= OFFSET_WORTH_A_WARNING_MS;
    if off(offset_ms) && !off(before) {
        log::warn!(
            "this host's clock is {:.1} s {} Postgres'; the service keeps Postgres' time for \
             campaign windows (campaign_notifier_clock_offset_seconds)",
            offset_ms.abs() as f64 / 1000.0,
            if offset_ms > 0 { "behind" } else { "ahead of" }
        );
    } else if off(before) && !off(offset_ms) {
        log::info!("this host's clock agrees with Postgres' again");
    }
}

/// An offset at least this large is logged: a host's time service is expected to keep it to
/// milliseconds.
const OFFSET_WORTH_A_WARNING_MS: i64 = 1_000;

/// Postgres' clock minus this host's, as last measured (0 before the first measurement).
pub fn postgres_offset_ms() -> i64 {
    POSTGRES_OFFSET_MS.load(Ordering::Relaxed)
}

/// A source of "now": the system clock (following Postgres'), or a fixed instant in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    fixed_ms: Option<i64>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that always says `ms`.
    pub fn fixed_at_ms(ms: i64) -> Clock {
        Clock { fixed_ms: Some(ms) }
    }

    pub fn now_ms(&self) -> i64 {
        self.fixed_ms
            .unwrap_or_else(|| unix_ms().saturating_add(postgres_offset_ms()))
    }

    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_stands_still_and_rounds_seconds_down() {
        let clock = Clock::fixed_at_ms(1_659_304_828_999);
        assert_eq!(clock.now_secs(), 1_659_304_828);
        assert_eq!(clock.now_ms(), 1_659_304_828_999);
        assert_eq!(Clock::fixed_at_ms(-1).now_secs(), -1);
    }
}
