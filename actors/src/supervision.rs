//! One restart policy for every supervised actor: backoff with jitter, and a limit of restarts
//! within a window past which the service stops.
//!
//! actix's `Supervisor` restarts an actor that stopped itself, keeping its address, its queued
//! messages and (through the `restarting` hook) its state; it has no delay and no limit. An actor
//! that fails calls [`Restarts::failed`] and stops; its `restarting` hook calls
//! [`Restarts::restarting`]; its `started` waits [`Restarts::delay`] before connecting again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::events::{ActorRestarting, Event};
use crate::fatal::FatalReason;
use crate::metrics::ActorKind;
use crate::shared::Shared;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// More restarts than this within `window` stop the service; `None`: never.
    pub limit: Option<u32>,
    pub window: Duration,
}

impl RestartPolicy {
    /// The longest delay before attempt number `failures + 1`: doubling from `backoff_initial`,
    /// capped at `backoff_max`.
    pub fn backoff_ceiling(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    /// The delay to wait: between half the ceiling and the ceiling, at random, so that instances
    /// that failed together (a database restart) do not reconnect in lockstep.
    pub fn backoff(&self, failures: u32) -> Duration {
        let ceiling = self.backoff_ceiling(failures);
        ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0)
    }
}

/// The restart history of one actor.
#[derive(Debug)]
pub struct Restarts {
    actor: ActorKind,
    policy: RestartPolicy,
    /// Failures since the last success: drives the backoff.
    failures: u32,
    /// When the recent restarts happened: drives the limit.
    at: VecDeque<Instant>,
    /// Since when the actor has failed without a success: slow failures (attempts that time
    /// out) are few per window, so their duration counts too.
    failing_since: Option<Instant>,
    delay: Duration,
}

impl Restarts {
    pub fn new(actor: ActorKind, policy: RestartPolicy) -> Restarts {
        Restarts {
            actor,
            policy,
            failures: 0,
            at: VecDeque::new(),
            failing_since: None,
            delay: Duration::ZERO,
        }
    }

    /// The actor failed (it is about to stop itself).
    pub fn failed(&mut self) {
        self.failed_at(Instant::now());
    }

    fn failed_at(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.failing_since.get_or_insert(now);
    }

    /// The actor did its work: the backoff starts over.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.failing_since = None;
    }

    /// The actor's connection is up again; its backoff goes on until it also does its work.
    pub fn connected(&mut self) {
        self.failing_since = None;
    }

    /// Whether the last attempt failed (to tell "connected" from "connected again").
    pub fn after_failure(&self) -> bool {
        self.failures > 0
    }

    /// How long `started` waits before trying again.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// From the actor's `restarting` hook: counts and logs the restart, picks the delay, and
    /// raises the fatal reason when the restarts within the window exceed the limit. The actor
    /// keeps trying (with its longest backoff) while the service stops.
    pub fn restarting(&mut self, shared: &Shared) {
        self.restarting_at(Instant::now(), shared);
    }

    fn restarting_at(&mut self, now: Instant, shared: &Shared) {
        self.delay = self.policy.backoff(self.failures);
        ActorRestarting {
            actor: self.actor,
            delay: self.delay,
        }
        .emit(&shared.metrics);
        let window = self.policy.window;
        while self
            .at
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            self.at.pop_front();
        }
        self.at.push_back(now);
        let Some(limit) = self.policy.limit else {
            return;
        };
        if self.at.len() > limit as usize {
            shared.fatal.raise(FatalReason::RestartLimit {
                actor: self.actor,
                limit,
                window,
            });
        } else if self
            .failing_since
            .is_some_and(|since| now.duration_since(since) > window)
        {
            shared.fatal.raise(FatalReason::FailingTooLong {
                actor: self.actor,
                window,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::metrics::Metrics;

    fn policy(limit: Option<u32>) -> RestartPolicy {
        RestartPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            limit,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_within_its_ceiling() {
        let p = policy(None);
        assert_eq!(p.backoff_ceiling(0), Duration::ZERO);
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(4), Duration::from_millis(800));
        assert_eq!(p.backoff_ceiling(10), Duration::from_secs(5));
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_secs(5));
        assert_eq!(p.backoff(0), Duration::ZERO);
        let delays: Vec<Duration> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(200) && *d <= Duration::from_millis(400)));
        let first = delays[0];
        assert!(delays.iter().any(|d| *d != first), "jittered");
    }

    #[test]
    fn restarts_beyond_the_limit_in_the_window_are_fatal() {
        let (shared, failed) = Shared::new(Metrics::new(), Clock::system());
        let mut r = Restarts::new(ActorKind::Ledger, policy(Some(3)));
        let t0 = Instant::now();
        for s in 0..3 {
            r.restarting_at(t0 + Duration::from_secs(s), &shared);
        }
        assert!(failed.borrow().is_none());
        r.restarting_at(t0 + Duration::from_secs(3), &shared);
        assert!(
            matches!(
                *failed.borrow(),
                Some(FatalReason::RestartLimit {
                    actor: ActorKind::Ledger,
                    limit: 3,
                    ..
                })
            ),
            "the 4th in 10s"
        );
        let restarts = shared
            .metrics
            .actor_restarts
            .with_label_values(&["ledger"])
            .get();
        assert_eq!(restarts, 4);
    }

    #[test]
    fn failing_longer_than_the_window_without_a_success_is_fatal_however_few_the_restarts() {
        let (shared, failed) = Shared::new(Metrics::new(), Clock::system());
        let mut r = Restarts::new(ActorKind::PostgresWriter, policy(Some(3)));
        let t0 = Instant::now();
        // Attempts that each time out after 4 s: never more than 3 restarts in 10 s.
        for i in 0..3 {
            r.failed_at(t0 + Duration::from_secs(4 * i));
            r.restarting_at(t0 + Duration::from_secs(4 * i), &shared);
        }
        assert!(failed.borrow().is_none(), "8 s of failing");
        r.failed_at(t0 + Duration::from_secs(12));
        r.restarting_at(t0 + Duration::from_secs(12), &shared);
        assert!(
            matches!(
                *failed.borrow(),
                Some(FatalReason::FailingTooLong {
                    actor: ActorKind::PostgresWriter,
                    ..
                })
            ),
            "12 s of failing: {:?}",
            *failed.borrow()
        );
        // A connection made again starts the count over.
        let (shared, failed) = Shared::new(Metrics::new(), Clock::system());
        let mut r = Restarts::new(ActorKind::PostgresWriter, policy(Some(3)));
        for i in 0..10 {
            r.failed_at(t0 + Duration::from_secs(4 * i));
            r.restarting_at(t0 + Duration::from_secs(4 * i), &shared);
            r.connected();
        }
        assert!(failed.borrow().is_none());
    }

    #[test]
    fn old_restarts_leave_the_window_and_no_limit_means_never() {
        let (shared, failed) = Shared::new(Metrics::new(), Clock::system());
        let t0 = Instant::now();
        let mut r = Restarts::new(ActorKind::Ledger, policy(Some(3)));
        for i in 0..10 {
            r.restarting_at(t0 + Duration::from_secs(6 * i), &shared);
        }
        let mut unlimited = Restarts::new(ActorKind::SubscriberCache, policy(None));
        for _ in 0..100 {
            unlimited.restarting_at(t0, &shared);
        }
        assert!(failed.borrow().is_none());
    }

    #[test]
    fn the_delay_grows_with_failures_and_starts_over_after_a_success() {
        let (shared, _failed) = Shared::new(Metrics::new(), Clock::system());
        let mut r = Restarts::new(ActorKind::Ledger, policy(None));
        for _ in 0..4 {
            r.failed();
        }
        r.restarting(&shared);
        assert!(r.delay() >= Duration::from_millis(400), "{:?}", r.delay());
        r.succeeded();
        r.failed();
        r.restarting(&shared);
        assert!(r.delay() <= Duration::from_millis(100), "{:?}", r.delay());
    }
}
