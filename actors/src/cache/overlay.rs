//! The subscribers the join uses: the last loaded [`Snapshot`] with the changes read since.
//!
//! The snapshot stays the compact, immutable base. What changed since it was loaded is kept
//! beside it as a delta per restaurant (the clients added, the clients removed), so a change
//! costs memory in proportion to the changes, not to its restaurant's clients. The join of a
//! campaign at a restaurant with a delta makes that restaurant's list anew, as a snapshot of one
//! restaurant ([`Subscribers::lookup`]): a cost of the order of the notifications it is about to
//! write. When the deltas hold more than a tenth of the base's pairs, the cache reloads, which
//! folds them into a new base ([`Subscribers::wants_reload`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::cache::snapshot::{canonical_uuid, ClientId, Entry, Snapshot, SnapshotBuilder};
use crate::campaign::MAX_ID_BYTES;
use crate::changes::table::{Op, StoredChange};

/// A client id that owns its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    Uuid(u128),
    Text(Box<str>),
}

impl Client {
    fn parse(s: &str) -> Client {
        match canonical_uuid(s) {
            Some(v) => Client::Uuid(v),
            None => Client::Text(s.into()),
        }
    }

    fn id(&self) -> ClientId<'_> {
        match self {
            Client::Uuid(v) => ClientId::Uuid(*v),
            Client::Text(s) => ClientId::Text(s),
        }
    }
}

/// One restaurant's changes since the base: never a client both added and removed, never one
/// added that the base has or removed that it lacks.
#[derive(Debug, Clone, Default)]
struct Delta {
    added: HashSet<Client>,
    removed: HashSet<Client>,
}

impl Delta {
    fn len(&self) -> usize {
        self.added.len() + self.removed.len()
    }
}

/// The base snapshot and the restaurants changed since it was loaded.
#[derive(Debug, Clone)]
pub struct Subscribers {
    base: Arc<Snapshot>,
    deltas: Arc<HashMap<Arc<str>, Arc<Delta>>>,
    /// Clients in all deltas.
    changed: usize,
    pairs: usize,
    /// Pairs that may be held through more than one row: the base's doubled pairs, and those
    /// added again while present. A removal of one of them is checked against the table first.
    doubled: Arc<Doubled>,
}

/// By restaurant, the clients that may be held through more than one row.
type Doubled = HashMap<Arc<str>, HashSet<Client>>;

impl Subscribers {
    pub fn new(base: Arc<Snapshot>) -> Subscribers {
        let mut doubled = Doubled::new();
        for (restaurant, client) in base.doubled() {
            doubled
                .entry(restaurant.into())
                .or_default()
                .insert(owned(client));
        }
        Subscribers {
            pairs: base.pairs(),
            base,
            deltas: Arc::default(),
            changed: 0,
            doubled: Arc::new(doubled),
        }
    }

    /// Whether the table may hold `client_id` at `restaurant_id` through more than one row.
    pub fn may_be_doubled(&self, restaurant_id: &str, client_id: &str) -> bool {
        (self.doubled.get(restaurant_id)).is_some_and(|d| d.contains(&Client::parse(client_id)))
    }

    pub fn base(&self) -> &Arc<Snapshot> {
        &self.base
    }

    /// The snapshot holding `restaurant_id`'s clients now, and where they are in it: the base,
    /// or for a restaurant changed since, a snapshot of that restaurant alone made now.
    pub fn lookup(&self, restaurant_id: &str) -> Option<(Arc<Snapshot>, Entry)> {
        let Some(delta) = self.deltas.get(restaurant_id) else {
            return (self.base.lookup(restaurant_id)).map(|e| (self.base.clone(), e));
        };
        let mut builder = SnapshotBuilder::new();
        if let Some(entry) = self.base.lookup(restaurant_id) {
            for i in 0..entry.len() {
                let client = self.base.client(&entry, i);
                if delta.removed.is_empty() || !delta.removed.contains(&owned(client)) {
                    builder.push_id(restaurant_id, client);
                }
            }
        }
        for client in &delta.added {
            builder.push_id(restaurant_id, client.id());
        }
        let snapshot = Arc::new(builder.build());
        let entry = snapshot.lookup(restaurant_id)?;
        Some((snapshot, entry))
    }

    /// Whether `client_id` follows `restaurant_id` now.
    pub fn contains(&self, restaurant_id: &str, client_id: &str) -> bool {
        self.holds(restaurant_id, Client::parse(client_id))
    }

    /// The same for a client id borrowed from a snapshot.
    pub fn contains_id(&self, restaurant_id: &str, client_id: ClientId<'_>) -> bool {
        self.holds(restaurant_id, owned(client_id))
    }

    /// Whether `restaurant_id`'s clients may differ from those of `joined`, the snapshot a
    /// join used: false only when that was this base and the restaurant has not changed since.
    pub fn may_differ_from(&self, joined: &Arc<Snapshot>, restaurant_id: &str) -> bool {
        !Arc::ptr_eq(joined, &self.base) || self.deltas.contains_key(restaurant_id)
    }

    fn holds(&self, restaurant_id: &str, client: Client) -> bool {
        if let Some(delta) = self.deltas.get(restaurant_id) {
            if delta.added.contains(&client) {
                return true;
            }
            if delta.removed.contains(&client) {
                return false;
            }
        }
        self.in_base(restaurant_id, &client)
    }

    fn in_base(&self, restaurant_id: &str, client: &Client) -> bool {
        (self.base.lookup(restaurant_id)).is_some_and(|e| self.base.holds(&e, client.id()))
    }

    /// Distinct pairs now.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Clients added or removed since the base was loaded (each counted once).
    pub fn changed(&self) -> usize {
        self.changed
    }

    /// Whether the deltas have grown past a tenth of the base: a reload folds them in.
    pub fn wants_reload(&self) -> bool {
        self.changed > (self.base.pairs() / 10).max(100_000)
    }

    /// These subscribers with `changes` applied in their order (`reload` rows are not pairs'
    /// changes and are left to the caller; a pair with an id over the limit is never held).
    pub fn applied(&self, changes: &[StoredChange]) -> Subscribers {
        let mut by_restaurant: BTreeMap<&str, Vec<&StoredChange>> = BTreeMap::new();
        for c in changes {
            let fits = c.restaurant_id.len() <= MAX_ID_BYTES && c.client_id.len() <= MAX_ID_BYTES;
            if c.op != Op::Reload && fits {
                by_restaurant.entry(&c.restaurant_id).or_default().push(c);
            }
        }
        let mut next = self.clone();
        if by_restaurant.is_empty() {
            return next;
        }
        let deltas = Arc::make_mut(&mut next.deltas);
        for (restaurant, changes) in by_restaurant {
            let key: Arc<str> = restaurant.into();
            let mut delta = deltas.get(&key).map(|d| (**d).clone()).unwrap_or_default();
            let before = delta.len();
            for c in changes {
                let client = Client::parse(&c.client_id);
                let in_base = self.in_base(restaurant, &client);
                let was =
                    delta.added.contains(&client) || (in_base && !delta.removed.contains(&client));
                let now = c.op == Op::Add;
                note_doubled(&mut next.doubled, &key, &client, was, now);
                if was == now {
                    continue;
                }
                match (now, in_base) {
                    (true, true) => drop(delta.removed.remove(&client)),
                    (true, false) => drop(delta.added.insert(client)),
                    (false, true) => drop(delta.removed.insert(client)),
                    (false, false) => drop(delta.added.remove(&client)),
                }
                if now {
                    next.pairs += 1;
                } else {
                    next.pairs -= 1;
                }
            }
            next.changed = next.changed - before + delta.len();
            if delta.len() == 0 {
                deltas.remove(&key);
            } else {
                deltas.insert(key, Arc::new(delta));
            }
        }
        next
    }
}

/// Notes in `doubled` what a change of `client` at `key` says of its rows (`was`: held before
/// it, `now`: an addition): added again while held, it may be held through two rows; removed,
/// it no longer is.
fn note_doubled(doubled: &mut Arc<Doubled>, key: &Arc<str>, client: &Client, was: bool, now: bool) {
    match (was, now) {
        (true, true) => {
            let all = Arc::make_mut(doubled);
            all.entry(key.clone()).or_default().insert(client.clone());
        }
        (true, false) if doubled.get(key).is_some_and(|d| d.contains(client)) => {
            let all = Arc::make_mut(doubled);
            if let Some(d) = all.get_mut(key) {
                d.remove(client);
                if d.is_empty() {
                    all.remove(key);
                }
            }
        }
        _ => {}
    }
}

fn owned(id: ClientId<'_>) -> Client {
    match id {
        ClientId::Uuid(v) => Client::Uuid(v),
        ClientId::Text(s) => Client::Text(s.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64, op: Op, restaurant: &str, client: &str) -> StoredChange {
        StoredChange {
            seq,
            op,
            restaurant_id: restaurant.into(),
            client_id: client.into(),
            committed_at_micros: 0,
        }
    }

    fn clients(s: &Subscribers, restaurant: &str) -> Vec<String> {
        let mut out: Vec<String> = match s.lookup(restaurant) {
            Some((snapshot, entry)) => (0..entry.len())
                .map(|i| snapshot.client(&entry, i).to_string())
                .collect(),
            None => Vec::new(),
        };
        out.sort();
        out
    }

    const U1: &str = "0c000000-0000-4000-8000-000000000001";

    fn base() -> Subscribers {
        let mut b = SnapshotBuilder::new();
        b.push("r1", "a");
        b.push("r1", U1);
        b.push("r2", "b");
        Subscribers::new(Arc::new(b.build()))
    }

    #[test]
    fn additions_removals_and_moves_are_seen_by_the_join_and_the_older_view_is_untouched() {
        let s = base();
        let next = s.applied(&[
            change(1, Op::Remove, "r1", "a"),
            change(2, Op::Add, "r3", "c"),
            // A move of b from r2 to r1.
            change(3, Op::Remove, "r2", "b"),
            change(4, Op::Add, "r1", "b"),
        ]);
        assert_eq!(clients(&next, "r1"), vec![U1, "b"]);
        assert!(next.lookup("r2").is_none(), "no client left at r2");
        assert_eq!(clients(&next, "r3"), vec!["c"]);
        assert_eq!(next.pairs(), 3);
        assert!(next.contains("r1", "b") && !next.contains("r1", "a"));
        assert!(next.contains("r1", U1) && !next.contains("r2", "b"));
        assert_eq!(
            clients(&s, "r1"),
            vec![U1, "a"],
            "the older view is unchanged"
        );
        assert!(s.contains("r2", "b"));
    }

    #[test]
    fn replaying_changes_already_in_the_base_ends_in_the_same_state() {
        let s = base();
        let pair = [
            change(1, Op::Remove, "r1", "a"),
            change(2, Op::Add, "r1", "a"),
        ];
        let twice = s.applied(&pair).applied(&pair);
        assert_eq!(clients(&twice, "r1"), clients(&s, "r1"));
        assert_eq!(twice.pairs(), s.pairs());
        assert_eq!(twice.changed(), 0, "back to the base: no delta is kept");
        let gone = twice.applied(&[
            change(3, Op::Add, "r2", "b"),
            change(4, Op::Remove, "r2", "b"),
            change(5, Op::Remove, "r2", "b"),
        ]);
        assert!(gone.lookup("r2").is_none());
        assert_eq!(gone.pairs(), 2);
        assert_eq!(gone.changed(), 1);
    }

    #[test]
    fn deltas_grow_with_the_changes_not_with_the_restaurants_clients() {
        let mut b = SnapshotBuilder::new();
        for i in 0..1_000 {
            b.push("big", &format!("c{i}"));
        }
        let s = Subscribers::new(Arc::new(b.build()));
        let next = s.applied(&[
            change(1, Op::Remove, "big", "c7"),
            change(2, Op::Add, "big", "new"),
        ]);
        assert_eq!(next.changed(), 2);
        assert_eq!(next.pairs(), 1_000);
        assert_eq!(clients(&next, "big").len(), 1_000);
        assert!(!next.wants_reload());
    }

    #[test]
    fn reload_rows_and_ids_over_the_limit_change_nothing() {
        let s = base();
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let next = s.applied(&[
            change(1, Op::Reload, "", "why"),
            change(2, Op::Add, "r1", &long),
        ]);
        assert_eq!(next.changed(), 0);
        assert_eq!(next.pairs(), s.pairs());
    }

    #[test]
    fn a_pair_held_twice_may_be_doubled_until_it_is_removed_and_one_added_again_becomes_so() {
        let mut b = SnapshotBuilder::new();
        b.push("r1", "twice");
        b.push("r1", U1);
        b.push("r1", "twice");
        b.push("r1", U1);
        b.push("r2", "once");
        let s = Subscribers::new(Arc::new(b.build()));
        assert!(s.may_be_doubled("r1", "twice") && s.may_be_doubled("r1", U1));
        assert!(!s.may_be_doubled("r2", "once") && !s.may_be_doubled("r1", "nobody"));
        let next = s.applied(&[
            change(1, Op::Remove, "r1", "twice"),
            change(2, Op::Add, "r2", "once"),
        ]);
        assert!(!next.may_be_doubled("r1", "twice") && !next.contains("r1", "twice"));
        assert!(next.may_be_doubled("r2", "once") && next.contains("r2", "once"));
        assert!(next.may_be_doubled("r1", U1), "untouched");
        assert!(
            s.may_be_doubled("r1", "twice"),
            "the older view is unchanged"
        );
        assert!(
            !s.may_be_doubled("r2", "once"),
            "the older view is unchanged"
        );
    }
}
