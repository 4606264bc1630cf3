//! The lifecycle's side of quiet hours ([`crate::quiet`]): when they begin and end on this
//! instance, and the reload comparison put off while they last.
//!
//! Inside quiet hours the lifecycle holds what arrives active (the rules), claims nothing and
//! follows no new subscriptions (the feed's mark stays where it is, so those subscriptions are
//! followed once they end). A cache reload inside them is not compared at once: the snapshot from
//! before them is kept, and once they end it is compared with the newest, so that what the
//! comparison would have found is found then. [`QuietWatch`] is that bookkeeping, no I/O.
//! Memory: at most one snapshot more than outside quiet hours (the one from before them).

use std::sync::Arc;

use crate::cache::snapshot::Snapshot;

/// What changed since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Quiet hours began (or the instance started inside them).
    Began,
    Ended,
}

/// Whether this instance was inside quiet hours at its last look, and the newest snapshot loaded
/// since they began.
#[derive(Debug, Default)]
pub struct QuietWatch {
    inside: bool,
    deferred: Option<Arc<Snapshot>>,
}

impl QuietWatch {
    /// Looks again: `inside` is whether it is quiet hours now.
    pub fn look(&mut self, inside: bool) -> Option<Turn> {
        let was = std::mem::replace(&mut self.inside, inside);
        match (was, inside) {
            (false, true) => Some(Turn::Began),
            (true, false) => Some(Turn::Ended),
            _ => None,
        }
    }

    /// A snapshot loaded inside quiet hours, to compare once they end (replacing one loaded
    /// before it: the snapshot from before quiet hours is what it is compared with).
    pub fn defer(&mut self, newer: Arc<Snapshot>) {
        self.deferred = Some(newer);
    }

    /// The snapshot put off, if any (taken: compared now, or superseded by a newer one).
    pub fn take_deferred(&mut self) -> Option<Arc<Snapshot>> {
        self.deferred.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_turn_is_told_once_and_the_newest_deferred_snapshot_is_kept() {
        let mut w = QuietWatch::default();
        assert_eq!(w.look(false), None);
        assert_eq!(w.look(true), Some(Turn::Began));
        assert_eq!(w.look(true), None);
        let (first, second) = (Arc::new(Snapshot::default()), Arc::new(Snapshot::default()));
        w.defer(first);
        w.defer(second.clone());
        assert_eq!(w.look(false), Some(Turn::Ended));
        let taken = w.take_deferred().expect("deferred");
        assert!(Arc::ptr_eq(&taken, &second), "the newest is compared");
        assert!(w.take_deferred().is_none());
        // An instance that starts inside quiet hours says so.
        assert_eq!(QuietWatch::default().look(true), Some(Turn::Began));
    }
}
