//! `[limits] max_notifications_per_sec`: the Kafka writer hands the broker at most so many
//! notifications a second, per instance (the push provider's quota, divided by the instances).
//!
//! A schedule, not a bucket of tokens: each chunk reserves its notifications' time on it before it
//! is built, in the order the chunks ask, and waits until its turn; the next chunk's turn is after
//! the time of the notifications before it. Chunks are cut to a twentieth of a second's worth, so
//! the output is smooth, and the order in which chunks ask (the writer's queue, which puts a small
//! campaign ahead of a large one's slices, and each partition's gate, taken in turn) decides whose
//! notifications go first, as without a limit.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The schedule of one Kafka writer's sends.
#[derive(Debug)]
pub struct Pace {
    per_sec: u32,
    /// When the next reservation may start.
    next: Cell<Instant>,
}

impl Pace {
    pub fn new(per_sec: u32) -> Pace {
        Pace {
            per_sec: per_sec.max(1),
            next: Cell::new(Instant::now()),
        }
    }

    /// The most notifications a chunk should hold: a twentieth of a second's worth.
    pub fn chunk(&self) -> usize {
        (self.per_sec as usize / 20).max(1)
    }

    /// Reserves the time of `n` notifications from `now`: returns how long to wait before
    /// handing them over.
    pub fn reserve(&self, n: usize, now: Instant) -> Duration {
        let start = self.next.get().max(now);
        let took = Duration::from_secs_f64(n as f64 / f64::from(self.per_sec));
        self.next.set(start + took);
        start - now
    }

    /// Waits for the turn of `n` notifications.
    pub async fn wait(&self, n: usize) {
        let wait = self.reserve(n, Instant::now());
        if !wait.is_zero() {
            actix_rt::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_each_other_at_the_rate_and_an_idle_pace_starts_at_once() {
        let pace = Pace::new(1_000);
        let t0 = Instant::now();
        assert_eq!(pace.chunk(), 50);
        assert_eq!(pace.reserve(50, t0), Duration::ZERO);
        // The next 50 wait for the first 50's 50 ms, the 100 after them for 100 ms more.
        assert_eq!(pace.reserve(50, t0), Duration::from_millis(50));
        assert_eq!(pace.reserve(100, t0), Duration::from_millis(100));
        // Asked later than the schedule: the wait is what is left of it.
        let later = t0 + Duration::from_millis(120);
        assert_eq!(pace.reserve(10, later), Duration::from_millis(80));
        // Idle past the schedule: no wait, and no credit for the idle time.
        let idle = t0 + Duration::from_secs(5);
        assert_eq!(pace.reserve(1_000, idle), Duration::ZERO);
        assert_eq!(pace.reserve(1, idle), Duration::from_secs(1));
        assert_eq!(Pace::new(10).chunk(), 1);
    }
}
