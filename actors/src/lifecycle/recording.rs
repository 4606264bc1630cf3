//! Recording: what arrives is decided against the version kept and stored, a group at a time.
//!
//! A group is whatever arrived while the previous group was being decided. Its kept versions are
//! read, [`decide`] runs for each arrival and is answered at once (so that delivery starts), then
//! the new versions are stored in one statement and each arrival learns that it is stored; the
//! enricher finishes a campaign only once both its delivery and its version are. The next group
//! is decided as soon as this one is, while this one is still being stored.
//!
//! [`Recording`] is the bookkeeping alone, no I/O: which arrivals wait, which group is being read
//! or stored, and the versions decided but not yet readable from the table. The lifecycle actor
//! runs the statements (`store::kept`, `store::store`) and tells it how they went. Memory: the
//! arrivals not yet stored, which the enricher's hand-off bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::channel::oneshot;

use super::rules::{decide, Decision, Kept, State, Window};
use super::store::{key_of, Arrival, Key, KeyMap};
use super::{Recorded, Stored};

/// An arrival waiting to be recorded, and who waits for its decision and for it to be stored.
struct Pending {
    arrival: Arc<Arrival>,
    /// Taken once answered (a group that fails after its decisions were answered is stored
    /// again after the restart, without answering twice): where the decision goes, with the
    /// receiving end of `stored`.
    decided: Option<(oneshot::Sender<Recorded>, Stored)>,
    stored: oneshot::Sender<()>,
}

/// A group being read or stored, with the decisions once made.
struct Group {
    pending: Vec<Pending>,
    decisions: Vec<Decision>,
    /// The decision group whose versions it stores (0 while it is being read).
    decided_as: u64,
}

/// A group whose kept versions are to be read.
#[derive(Debug)]
pub struct ToRead {
    pub id: u64,
    pub keys: Vec<Key>,
}

/// A group decided: the versions to store.
#[derive(Debug)]
pub struct ToStore {
    pub rows: Vec<(Arc<Arrival>, State)>,
}

/// The recording's bookkeeping.
#[derive(Default)]
pub struct Recording {
    pending: Vec<Pending>,
    /// Groups being read or stored, by sequence: kept here rather than in the futures, so that a
    /// restart (which drops the futures) puts them back in `pending` instead of dropping who
    /// waits for them.
    under_way: BTreeMap<u64, Group>,
    next_under_way: u64,
    /// A group's kept versions are being read and decided on.
    deciding: bool,
    /// Versions decided by this instance, by campaign, with the group that stores them and
    /// whether that store has finished: a later arrival is decided against these, not against the
    /// table. A stored one is dropped only when the next read of the table starts, since a read
    /// that started before the store finished may not see it.
    unstored: KeyMap<(u64, bool, Kept)>,
    groups: u64,
}

impl Recording {
    /// An arrival to record; `decided` is answered with its decision and, in it, with when it is
    /// stored.
    pub fn push(&mut self, arrival: Arc<Arrival>, decided: oneshot::Sender<Recorded>) {
        let (stored, is_stored) = oneshot::channel();
        self.pending.push(Pending {
            arrival,
            decided: Some((decided, Stored(is_stored))),
            stored,
        });
    }

    /// The next group to read, unless one is being decided or nothing waits.
    pub fn next_read(&mut self) -> Option<ToRead> {
        if self.deciding || self.pending.is_empty() {
            return None;
        }
        self.deciding = true;
        self.unstored.retain(|_, (_, stored, _)| !*stored);
        let pending = std::mem::take(&mut self.pending);
        let keys: BTreeSet<Key> = pending
            .iter()
            .map(|p| key_of(&p.arrival.campaign))
            .collect();
        let id = self.hold(Group {
            pending,
            decisions: Vec::new(),
            decided_as: 0,
        });
        Some(ToRead {
            id,
            keys: keys.into_iter().collect(),
        })
    }

    /// The kept versions of group `id` were read: each arrival is decided (against what this
    /// instance decided and has not seen stored, before the table) at `now`, inside quiet hours
    /// if `quiet`, and answered; returns the versions to store.
    pub fn decide(
        &mut self,
        id: u64,
        mut kept: KeyMap<Kept>,
        now: i64,
        window: &Window,
        quiet: bool,
    ) -> ToStore {
        self.deciding = false;
        self.groups += 1;
        let group = self.groups;
        let mut to_store: KeyMap<(usize, State)> = KeyMap::default();
        let Some(held) = self.under_way.get_mut(&id) else {
            return ToStore { rows: Vec::new() };
        };
        held.decided_as = group;
        for (i, pending) in held.pending.iter_mut().enumerate() {
            let arrival = &pending.arrival;
            let key = key_of(&arrival.campaign);
            if let Some((_, _, newer)) = self.unstored.get(&key) {
                kept.insert(key.clone(), newer.clone());
            }
            let version = arrival.version();
            let (decision, state) = decide(
                kept.get(&key),
                &arrival.campaign,
                version,
                now,
                window,
                quiet,
            );
            if let Some(state) = state {
                let newer = Kept {
                    campaign: arrival.campaign.clone(),
                    version,
                    state,
                };
                kept.insert(key.clone(), newer.clone());
                self.unstored.insert(key.clone(), (group, false, newer));
                to_store.insert(key, (i, state));
            }
            // Delivery starts now, while the versions are being stored.
            if let Some((decided, stored)) = pending.decided.take() {
                let _ = decided.send(Recorded { decision, stored });
            }
            held.decisions.push(decision);
        }
        let rows = to_store
            .values()
            .map(|&(i, state)| (held.pending[i].arrival.clone(), state))
            .collect();
        ToStore { rows }
    }

    /// Group `id` is stored: each of its arrivals learns it; returns them with their decisions.
    pub fn stored(&mut self, id: u64) -> Vec<(Arc<Arrival>, Decision)> {
        let Some(held) = self.under_way.remove(&id) else {
            return Vec::new();
        };
        for (g, stored, _) in self.unstored.values_mut() {
            *stored |= *g == held.decided_as;
        }
        held.pending
            .into_iter()
            .zip(held.decisions)
            .map(|(pending, decision)| {
                let _ = pending.stored.send(());
                (pending.arrival, decision)
            })
            .collect()
    }

    /// Reading or storing group `id` failed: it is recorded again first, after the restart (an
    /// arrival answered already is stored, not answered again).
    pub fn failed(&mut self, id: u64) {
        self.deciding = false;
        if let Some(held) = self.under_way.remove(&id) {
            let later = std::mem::take(&mut self.pending);
            self.pending = held.pending;
            self.pending.extend(later);
        }
    }

    /// The actor restarts: what was being read or stored went with the old context's futures and
    /// is recorded again, first, in the order it arrived.
    pub fn restart(&mut self) {
        self.deciding = false;
        self.unstored.clear();
        let under_way = std::mem::take(&mut self.under_way);
        let later = std::mem::take(&mut self.pending);
        self.pending = under_way.into_values().flat_map(|g| g.pending).collect();
        self.pending.extend(later);
    }

    /// Arrivals waiting, being decided or being stored.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
            + self
                .under_way
                .values()
                .map(|g| g.pending.len())
                .sum::<usize>()
    }

    fn hold(&mut self, group: Group) -> u64 {
        self.next_under_way += 1;
        self.under_way.insert(self.next_under_way, group);
        self.next_under_way
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::Campaign;
    use crate::notification::SourceRef;

    const W: Window = Window {
        clock_skew_secs: 3,
        end_grace_secs: 0,
    };
    const NOW: i64 = 1_000_000;

    /// Campaign `id` of restaurant `r`, starting in an hour, created at `created`, sent as
    /// message `offset`.
    fn arrival(id: &str, content: &str, created: i64, offset: i64) -> Arc<Arrival> {
        Arc::new(Arrival {
            campaign: Campaign {
                restaurant_id: "r".into(),
                adv_campaign_id: id.into(),
                adv_campaign_content: content.into(),
                adv_campaign_owner: "o".into(),
                adv_campaign_owner_contact: "o@r".into(),
                adv_campaign_datetime_start: NOW + 3_600,
                adv_campaign_datetime_end: NOW + 7_200,
                datetime_created: created,
            },
            source: SourceRef {
                topic: "in".into(),
                partition: 0,
                offset,
                timestamp_ms: Some(offset),
            },
            key: None,
            payload: content.as_bytes().to_vec(),
        })
    }

    fn push(r: &mut Recording, a: Arc<Arrival>) -> oneshot::Receiver<Recorded> {
        let (tx, rx) = oneshot::channel();
        r.push(a, tx);
        rx
    }

    fn answer(rx: &mut oneshot::Receiver<Recorded>) -> Option<Recorded> {
        rx.try_recv().expect("not canceled")
    }

    #[test]
    fn a_group_is_read_once_at_a_time_and_takes_everything_that_waited() {
        let mut r = Recording::default();
        assert!(r.next_read().is_none(), "nothing waits");
        let _a = push(&mut r, arrival("a", "x", 1, 1));
        let _b = push(&mut r, arrival("b", "x", 1, 2));
        let _a2 = push(&mut r, arrival("a", "y", 2, 3));
        let read = r.next_read().expect("a group");
        assert_eq!(read.keys.len(), 2, "one key per campaign: {:?}", read.keys);
        let _c = push(&mut r, arrival("c", "x", 1, 4));
        assert!(
            r.next_read().is_none(),
            "the next group waits for this one's decisions"
        );
        r.decide(read.id, KeyMap::default(), NOW, &W, false);
        let next = r.next_read().expect("decided: the next group is read");
        assert_eq!(next.keys, vec![("r".to_string(), "c".to_string())]);
    }

    #[test]
    fn each_arrival_is_answered_at_once_and_learns_when_it_is_stored() {
        let mut r = Recording::default();
        let mut rx = push(&mut r, arrival("a", "x", 1, 1));
        let read = r.next_read().unwrap();
        assert!(answer(&mut rx).is_none(), "not decided yet");
        let to_store = r.decide(read.id, KeyMap::default(), NOW, &W, false);
        assert_eq!(to_store.rows.len(), 1);
        assert_eq!(to_store.rows[0].1, State::Scheduled);
        let recorded = answer(&mut rx).expect("answered before it is stored");
        assert_eq!(recorded.decision, Decision::Schedule { replaced: false });
        let mut stored = recorded.stored.0;
        assert_eq!(stored.try_recv(), Ok(None), "not stored yet");
        let reported = r.stored(read.id);
        assert_eq!(reported.len(), 1);
        assert_eq!(stored.try_recv(), Ok(Some(())));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_later_version_is_decided_against_the_one_decided_before_the_table_shows_it() {
        let mut r = Recording::default();
        let _v1 = push(&mut r, arrival("a", "v1", 1, 1));
        let first = r.next_read().unwrap();
        r.decide(first.id, KeyMap::default(), NOW, &W, false);
        // v2 arrives while v1 is being stored: the table, read again, does not have v1 yet.
        let mut v2 = push(&mut r, arrival("a", "v2", 2, 2));
        let second = r.next_read().unwrap();
        r.decide(second.id, KeyMap::default(), NOW, &W, false);
        assert_eq!(
            answer(&mut v2).unwrap().decision,
            Decision::Schedule { replaced: true }
        );
        // An older copy of v1 after both: superseded, though the table still shows neither.
        r.stored(first.id);
        let mut late = push(&mut r, arrival("a", "v1", 1, 1));
        let third = r.next_read().unwrap();
        assert!(r
            .decide(third.id, KeyMap::default(), NOW, &W, false)
            .rows
            .is_empty());
        assert_eq!(answer(&mut late).unwrap().decision, Decision::Superseded);
        r.stored(second.id);
    }

    #[test]
    fn a_failed_read_is_recorded_again_before_what_arrived_since() {
        let mut r = Recording::default();
        let _a = push(&mut r, arrival("a", "x", 1, 1));
        let read = r.next_read().unwrap();
        let _b = push(&mut r, arrival("b", "x", 1, 2));
        r.failed(read.id);
        let again = r.next_read().expect("read again");
        assert_eq!(
            again.keys,
            vec![
                ("r".to_string(), "a".to_string()),
                ("r".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn a_restart_stores_again_what_was_answered_without_answering_it_twice() {
        let mut r = Recording::default();
        let mut a = push(&mut r, arrival("a", "x", 1, 1));
        let read = r.next_read().unwrap();
        r.decide(read.id, KeyMap::default(), NOW, &W, false);
        let recorded = answer(&mut a).expect("answered");
        let mut b = push(&mut r, arrival("b", "x", 1, 2));
        // The store's future went with the restart.
        r.restart();
        assert_eq!(r.len(), 2, "nothing dropped");
        let again = r.next_read().unwrap();
        assert_eq!(again.keys.len(), 2);
        let stored_again = r.decide(again.id, KeyMap::default(), NOW, &W, false);
        assert_eq!(stored_again.rows.len(), 2, "a's version is stored again");
        assert!(answer(&mut b).is_some(), "b answered once");
        r.stored(again.id);
        let mut stored = recorded.stored.0;
        assert_eq!(stored.try_recv(), Ok(Some(())), "a learns it is stored");
        // The first store, had it finished after all, finds nothing left to tell.
        assert!(r.stored(read.id).is_empty());
    }
}
