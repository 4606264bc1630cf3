//! The one clock of the service: unix time, in seconds and in milliseconds.
//!
//! Every "now" the service uses comes from here: the active-window rule, `trigger_datetime_created`,
//! latency, the age of the subscriber snapshot. Code that must be tested at a chosen instant takes
//! a [`Clock`] (handed to it in the shared context) instead of calling [`unix_secs`].

use std::sync::Arc;
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
#[derive(Clone, Default)]
pub struct Clock {
    fixed_ms: Option<Arc<std::sync::atomic::AtomicI64>>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that stands at `ms` until [`Clock::set_ms`] moves it.
    pub fn fixed_at_ms(ms: i64) -> Clock {
        Clock {
            fixed_ms: Some(Arc::new(ms.into())),
        }
    }

    /// Moves a fixed clock (and every clone of it); no effect on the system clock.
    pub fn set_ms(&self, ms: i64) {
        if let Some(fixed) = &self.fixed_ms {
            fixed.store(ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.fixed_ms {
            Some(fixed) => fixed.load(std::sync::atomic::Ordering::Relaxed),
            None => unix_ms(),
        }
    }

    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fixed_ms {
            Some(_) => write!(f, "Clock(fixed at {} ms)", self.now_ms()),
            None => f.write_str("Clock(system)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_stands_still_until_moved_and_clones_follow() {
        let clock = Clock::fixed_at_ms(1_659_304_828_999);
        let copy = clock.clone();
        assert_eq!(clock.now_secs(), 1_659_304_828);
        clock.set_ms(1_659_304_829_000);
        assert_eq!(copy.now_secs(), 1_659_304_829);
        assert_eq!(copy.now_ms(), 1_659_304_829_000);
    }

    #[test]
    fn the_system_clock_agrees_with_itself() {
        let (ms, secs) = (unix_ms(), unix_secs());
        assert!(secs - ms / 1000 <= 1);
        assert!(Clock::system().now_secs() >= secs);
    }
}
