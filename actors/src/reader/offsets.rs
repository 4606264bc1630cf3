//! Which input offsets may be committed: per partition, the lowest offset still in flight.

use std::collections::{BTreeMap, HashMap};

/// Per-partition bookkeeping of which offsets may be committed.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Offsets read and not yet finished, with how many times each is in flight (a rebalance can
    /// deliver the same offset again while the first copy is still being written).
    in_flight: BTreeMap<i64, u32>,
    max_finished: Option<i64>,
    /// The last offset handed out for storing: the next offset to read.
    stored: Option<i64>,
}

impl OffsetTracker {
    pub fn started(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        // Messages of a partition arrive in order, so the first one read is where the group's
        // committed position already is: nothing below it needs storing.
        p.stored.get_or_insert(offset);
        *p.in_flight.entry(offset).or_default() += 1;
    }

    /// Marks `offset` finished; returns the offset to store (the next one to read) when it moved
    /// forward.
    pub fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        match p.in_flight.get_mut(&offset) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                p.in_flight.remove(&offset);
            }
            None => return None,
        }
        p.max_finished = Some(p.max_finished.map_or(offset, |m| m.max(offset)));
        let next = match p.in_flight.keys().next() {
            Some(&lowest) => lowest,
            None => p.max_finished? + 1,
        };
        if p.stored.is_none_or(|s| next > s) {
            p.stored = Some(next);
            Some(next)
        } else {
            None
        }
    }

    /// The offsets stored so far, per partition: what a final commit sends.
    pub fn stored(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions
            .iter()
            .filter_map(|(&p, o)| o.stored.map(|s| (p, s)))
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.in_flight.values().map(|&n| n as usize).sum::<usize>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_past_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.started(0, o);
        }
        assert_eq!(t.finished(0, 12), None);
        assert_eq!(t.finished(0, 11), None);
        assert_eq!(t.finished(0, 10), Some(13));
        assert_eq!(t.finished(0, 14), None);
        assert_eq!(t.finished(0, 13), Some(15));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.stored().collect::<Vec<_>>(), vec![(0, 15)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.started(0, 5);
        t.started(1, 7);
        assert_eq!(t.finished(1, 7), Some(8));
        assert_eq!(t.in_flight(), 1);
        let mut stored: Vec<_> = t.stored().collect();
        stored.sort();
        assert_eq!(stored, vec![(0, 5), (1, 8)]);
    }

    #[test]
    fn redelivered_offset_counts_twice_and_never_moves_back() {
        let mut t = OffsetTracker::default();
        t.started(0, 1);
        assert_eq!(t.finished(0, 1), Some(2));
        t.started(0, 1);
        t.started(0, 1);
        assert_eq!(t.finished(0, 1), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.finished(0, 1), None);
        assert_eq!(
            t.finished(0, 99),
            None,
            "an offset never started is ignored"
        );
    }
}
