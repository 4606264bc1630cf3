//! Heartbeats of the loops that keep the pipeline moving, for `/healthz`: a loop that has not
//! turned for `http.liveness_timeout_secs` means a wedged process (a blocked thread, an actor
//! that died without a restart), which only a restart cures.
//!
//! Each loop beats from its own timer, on its own thread, whether or not its dependency answers:
//! a Postgres or a broker that is down stops no heartbeat (a restart would not bring it back), a
//! thread that is stuck does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// The loops watched; a label enum, so it lives with the others in [`crate::metrics`].
pub use crate::metrics::Loop;

/// When each loop last turned. Cheap to clone and to beat (one atomic store).
#[derive(Clone)]
pub struct Liveness(Arc<Inner>);

struct Inner {
    base: Instant,
    /// Milliseconds since `base` of each loop's last beat, plus one; 0: it has not started.
    beats: Vec<AtomicU64>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness(Arc::new(Inner {
            base: Instant::now(),
            beats: Loop::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }))
    }
}

impl Liveness {
    /// The loop turned.
    pub fn beat(&self, which: Loop) {
        self.beat_at(which, Instant::now());
    }

    pub(crate) fn beat_at(&self, which: Loop, now: Instant) {
        let ms = now.saturating_duration_since(self.0.base).as_millis() as u64 + 1;
        self.0.beats[index(which)].fetch_max(ms, Ordering::Relaxed);
    }

    /// The loops that have started and not turned for longer than `limit`, with how long.
    pub fn stalled(&self, limit: Duration) -> Vec<(Loop, Duration)> {
        self.stalled_at(limit, Instant::now())
    }

    fn stalled_at(&self, limit: Duration, now: Instant) -> Vec<(Loop, Duration)> {
        self.ages_at(now)
            .into_iter()
            .filter(|(_, age)| *age > limit)
            .collect()
    }

    /// How long ago each started loop turned.
    fn ages_at(&self, now: Instant) -> Vec<(Loop, Duration)> {
        let since_base = now.saturating_duration_since(self.0.base).as_millis() as u64 + 1;
        Loop::ALL
            .iter()
            .filter_map(|&l| match self.0.beats[index(l)].load(Ordering::Relaxed) {
                0 => None,
                at => Some((l, Duration::from_millis(since_base.saturating_sub(at)))),
            })
            .collect()
    }

    /// Sets `loop_heartbeat_age_seconds` for every loop that has started.
    pub fn export(&self, metrics: &Metrics) {
        for (l, age) in self.ages_at(Instant::now()) {
            metrics
                .loop_heartbeat_age
                .with_label_values(&[l.as_str()])
                .set(age.as_secs_f64());
        }
    }
}

fn index(which: Loop) -> usize {
    Loop::ALL
        .iter()
        .position(|&l| l == which)
        .expect("every loop is in ALL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stalled_once_it_has_not_turned_for_the_limit_and_only_once_it_started() {
        let live = Liveness::default();
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        assert!(live
            .stalled_at(limit, t0 + Duration::from_secs(600))
            .is_empty());
        live.beat_at(Loop::Reader, t0);
        live.beat_at(Loop::Ledger, t0);
        assert!(live
            .stalled_at(limit, t0 + Duration::from_secs(59))
            .is_empty());
        live.beat_at(Loop::Ledger, t0 + Duration::from_secs(50));
        let stalled = live.stalled_at(limit, t0 + Duration::from_secs(61));
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(stalled[0].0, Loop::Reader);
        assert!(stalled[0].1 >= Duration::from_secs(60));
        // A beat from the past does not move a newer one back.
        live.beat_at(Loop::Ledger, t0);
        assert!(live
            .stalled_at(limit, t0 + Duration::from_secs(105))
            .iter()
            .all(|(l, _)| *l != Loop::Ledger));
    }
}
