//! What every component is handed at construction: the metrics, the channel that stops the
//! service ([`crate::fatal`]), the clock, this process's lease, the heartbeats of its loops, the
//! campaigns recalled and the quiet hours.

use tokio::sync::watch;

use crate::clock::Clock;
use crate::fatal::{Fatal, FatalReason};
use crate::lease::Lease;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::quiet::QuietHours;
use crate::recalls::Recalls;

#[derive(Clone)]
pub struct Shared {
    pub metrics: Metrics,
    pub fatal: Fatal,
    pub clock: Clock,
    /// Whether this process may write; every write asks.
    pub lease: Lease,
    pub liveness: Liveness,
    /// The campaigns recalled: nothing more of them is written.
    pub recalls: Recalls,
    /// Inside them nothing new goes out (off unless `[limits] quiet_hours` is set).
    pub quiet: QuietHours,
}

impl Shared {
    /// The context of components that run without owners (unit tests): a lease that is always
    /// valid. The service's pipeline uses [`Shared::with_lease`].
    pub fn new(metrics: Metrics, clock: Clock) -> (Shared, watch::Receiver<Option<FatalReason>>) {
        let (fatal, failed) = Fatal::channel();
        (
            Shared {
                metrics,
                fatal,
                clock,
                lease: Lease::unbounded(),
                liveness: Liveness::default(),
                recalls: Recalls::default(),
                quiet: QuietHours::off(),
            },
            failed,
        )
    }

    /// The context of a running service: its lease is not valid until acquired and renewed, and
    /// a fence stops the service.
    pub fn with_lease(
        metrics: Metrics,
        clock: Clock,
    ) -> (Shared, watch::Receiver<Option<FatalReason>>) {
        let (mut shared, failed) = Shared::new(metrics, clock);
        shared.lease = Lease::pending(shared.fatal.clone());
        (shared, failed)
    }
}
