//! Where a reader of rows numbered by a serial stands, and what it still waits for: the id feed
//! of `subscribers_restaurants` (by its `id`), and every reader of
//! `campaign_notifier_pair_changes` (by its `seq`, which the trigger mode takes in the app's
//! transactions, so out of commit order too).
//!
//! The feed reads rows by their serial `id`. An id is taken when the row is inserted, but the row
//! is seen only once its transaction commits, so a row may show up after a higher id was read:
//! its id is then a *gap* below the feed's position. The [`Cursor`] remembers the gaps of what it
//! read and reads them again at every poll, until they show up or [`GAP_WAIT`] passes (a
//! rolled-back insert or a deleted row never shows up; a transaction that commits later than
//! that is found by the next reload's comparison, as before). What is recorded in Postgres is the
//! cursor's [`Cursor::mark`]: every subscription at or below it has been followed. A new follower
//! (another instance, or this one after a restart) starts from the mark and reads again what lies
//! between it and the old position; who has a notification already gets nothing new.
//!
//! The feed also keeps the table's storage id (`pg_relation_filenode`), which `TRUNCATE` (and
//! `VACUUM FULL`, `CLUSTER`) changes: ids may then start again at 1, below the position, so the
//! feed follows the table again from its first row.
//!
//! Pure logic, no I/O: the lifecycle's feed job and the cache's follower read and record, this
//! decides.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a gap is waited for.
pub const GAP_WAIT: Duration = Duration::from_secs(600);

/// The most gaps remembered: a jump of the sequence (a cache of ids lost in a crash, a range of
/// deleted rows) leaves gaps that never fill, and the feed must not hold one entry per id of it.
pub const MAX_GAPS: usize = 10_000;

/// How far the feed has read, and the ids below that it has not seen yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The highest id read.
    pub position: i64,
    /// Ids below `position` not seen yet, with when they were first missed.
    gaps: BTreeMap<i64, Instant>,
}

impl Cursor {
    /// A cursor at `position` that waits for nothing (as a new follower starts, from the mark).
    pub fn at(position: i64) -> Cursor {
        Cursor {
            position,
            gaps: BTreeMap::new(),
        }
    }

    /// The ids to read again.
    pub fn gaps(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }

    /// The cursor once the rows `read` (ids above the position, in order) and the gaps that
    /// showed up (`found`) have been followed, at `now`: the ids skipped in `read` are gaps from
    /// `now` on, and gaps older than [`GAP_WAIT`] are given up.
    pub fn advanced(&self, read: &[i64], found: &[i64], now: Instant) -> Cursor {
        let mut gaps = self.gaps.clone();
        for id in found {
            gaps.remove(id);
        }
        gaps.retain(|_, since| now.saturating_duration_since(*since) < GAP_WAIT);
        let mut next = self.position.saturating_add(1);
        for &id in read {
            while next < id && gaps.len() < MAX_GAPS {
                gaps.insert(next, now);
                next += 1;
            }
            next = next.max(id.saturating_add(1));
        }
        let position = read
            .last()
            .map_or(self.position, |&id| id.max(self.position));
        Cursor { position, gaps }
    }

    /// What to record: every id at or below it has been followed (or given up on).
    pub fn mark(&self) -> i64 {
        self.gaps.keys().next().map_or(self.position, |gap| gap - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_in_a_row_leave_no_gap_and_the_mark_is_the_position() {
        let now = Instant::now();
        let cursor = Cursor::at(10).advanced(&[11, 12, 13], &[], now);
        assert_eq!(cursor.position, 13);
        assert!(cursor.gaps().is_empty());
        assert_eq!(cursor.mark(), 13);
        assert_eq!(cursor.advanced(&[], &[], now), cursor, "nothing new");
    }

    #[test]
    fn a_skipped_id_is_waited_for_and_holds_the_mark_until_it_shows_up() {
        let now = Instant::now();
        // 11 and 13 were taken by transactions that have not committed yet.
        let cursor = Cursor::at(10).advanced(&[12, 14], &[], now);
        assert_eq!(cursor.position, 14);
        assert_eq!(cursor.gaps(), vec![11, 13]);
        assert_eq!(cursor.mark(), 10, "a new follower reads 11 and 13 too");
        let cursor = cursor.advanced(&[15], &[11], now + Duration::from_secs(1));
        assert_eq!(cursor.gaps(), vec![13]);
        assert_eq!(cursor.mark(), 12);
        let cursor = cursor.advanced(&[], &[13], now + Duration::from_secs(2));
        assert!(cursor.gaps().is_empty());
        assert_eq!(cursor.mark(), 15);
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_the_wait() {
        let now = Instant::now();
        let cursor = Cursor::at(0).advanced(&[2], &[], now);
        assert_eq!(cursor.mark(), 0);
        let later = cursor.advanced(&[], &[], now + GAP_WAIT - Duration::from_secs(1));
        assert_eq!(later.gaps(), vec![1]);
        let given_up = cursor.advanced(&[], &[], now + GAP_WAIT);
        assert!(given_up.gaps().is_empty());
        assert_eq!(given_up.mark(), 2);
    }

    #[test]
    fn a_jump_of_the_sequence_remembers_at_most_max_gaps() {
        let now = Instant::now();
        let cursor = Cursor::at(0).advanced(&[1, 1_000_000, 1_000_001], &[], now);
        assert_eq!(cursor.position, 1_000_001);
        assert_eq!(cursor.gaps().len(), MAX_GAPS);
        assert_eq!(cursor.gaps()[0], 2);
        assert_eq!(cursor.mark(), 1);
        // Full: what a later page skips is not remembered either.
        let more = cursor.advanced(&[1_000_003], &[], now);
        assert_eq!(more.gaps().len(), MAX_GAPS);
        assert_eq!(more.position, 1_000_003);
    }

    #[test]
    fn an_id_read_below_the_position_does_not_move_it_back() {
        let now = Instant::now();
        let cursor = Cursor::at(10).advanced(&[5], &[], now);
        assert_eq!(cursor.position, 10);
        assert!(cursor.gaps().is_empty());
    }
}
