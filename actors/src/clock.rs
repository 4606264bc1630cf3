//! The one clock of the service: unix time, in seconds and in milliseconds.
//!
//! Every "now" the service uses comes from here: the active-window rule, `trigger_datetime_created`,
//! latency, the age of the subscriber snapshot. Code that must be tested at a chosen instant takes
//! a [`Clock`] (handed to it in the shared context) instead of calling [`unix_secs`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch on the system clock (0 if the clock is before 1970).
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds since the epoch on the system clock.
pub fn unix_secs() -> i64 {
    unix_ms().div_euclid(1000)
}

/// A source of "now": the system clock, or a fixed instant in tests.
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
        self.fixed_ms.unwrap_or_else(unix_ms)
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
