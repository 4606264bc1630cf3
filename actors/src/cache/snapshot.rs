//! The in-memory restaurant -> subscribers mapping: an immutable, compact snapshot of
//! `subscribers_restaurants`.
//!
//! A snapshot is built once and never changed; a refresh builds a new one and the old one is freed
//! when the last batch that borrowed clients from it is written. Client ids that are canonical
//! lowercase UUIDs (the usual case) are kept as 16-byte integers in one flat array, grouped by
//! restaurant, so a pair costs 16 bytes plus a small share of its restaurant's entry. Any other id
//! is kept as text in a second array, so no id is ever altered.

use std::collections::HashMap;

use uuid::Uuid;

use crate::campaign::MAX_ID_BYTES;

/// Where one restaurant's clients are in the two flat arrays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry {
    uuid_start: u32,
    uuid_len: u32,
    text_start: u32,
    text_len: u32,
}

impl Entry {
    pub fn len(&self) -> usize {
        (self.uuid_len + self.text_len) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One client id, borrowed from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId<'a> {
    Uuid(u128),
    Text(&'a str),
}

impl ClientId<'_> {
    /// Appends the id's text, exactly as it is in the table.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            ClientId::Uuid(v) => {
                let mut buf = [0u8; 36];
                out.extend_from_slice(
                    Uuid::from_u128(*v)
                        .hyphenated()
                        .encode_lower(&mut buf)
                        .as_bytes(),
                );
            }
            ClientId::Text(s) => out.extend_from_slice(s.as_bytes()),
        }
    }

    /// The id as JSON string, quotes included.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            // A hyphenated hex UUID needs no escaping.
            ClientId::Uuid(_) => {
                out.push(b'"');
                self.write_to(out);
                out.push(b'"');
            }
            ClientId::Text(s) => {
                // Writing a str into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, s);
            }
        }
    }
}

impl std::fmt::Display for ClientId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientId::Uuid(v) => write!(f, "{}", Uuid::from_u128(*v).hyphenated()),
            ClientId::Text(s) => f.write_str(s),
        }
    }
}

/// Parses `s` as a UUID only when formatting it back gives `s` again byte for byte.
pub(crate) fn canonical_uuid(s: &str) -> Option<u128> {
    if s.len() != 36 {
        return None;
    }
    let uuid = Uuid::try_parse(s).ok()?;
    let mut buf = [0u8; 36];
    (uuid.hyphenated().encode_lower(&mut buf) == s).then(|| uuid.as_u128())
}

#[derive(Debug, Default)]
pub struct Snapshot {
    index: HashMap<Box<str>, Entry>,
    uuids: Vec<u128>,
    texts: Vec<Box<str>>,
    pairs: usize,
    skipped: usize,
    /// The pairs the table held through more than one row when it was read (the brief's table
    /// has no unique key): a deletion of one of those rows may leave the pair in place.
    doubled_uuids: Vec<(Box<str>, u128)>,
    doubled_texts: Vec<(Box<str>, Box<str>)>,
}

impl Snapshot {
    /// The pairs the rows it was built from held more than once.
    pub fn doubled(&self) -> impl Iterator<Item = (&str, ClientId<'_>)> + '_ {
        let uuids = (self.doubled_uuids.iter()).map(|(r, v)| (&**r, ClientId::Uuid(*v)));
        let texts = (self.doubled_texts.iter()).map(|(r, t)| (&**r, ClientId::Text(t)));
        uuids.chain(texts)
    }

    /// Pairs left out because an id is longer than [`MAX_ID_BYTES`]: no notification of them
    /// could be written (the notification key would be refused, and a campaign with such an id is
    /// rejected anyway).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    pub fn lookup(&self, restaurant_id: &str) -> Option<Entry> {
        self.index.get(restaurant_id).copied()
    }

    /// The `i`-th client of `entry`; `i < entry.len()`.
    pub fn client(&self, entry: &Entry, i: usize) -> ClientId<'_> {
        let uuids = entry.uuid_len as usize;
        if i < uuids {
            ClientId::Uuid(self.uuids[entry.uuid_start as usize + i])
        } else {
            ClientId::Text(&self.texts[entry.text_start as usize + i - uuids])
        }
    }

    /// Whether `client` is among `entry`'s clients (each restaurant's ids are kept sorted).
    pub fn holds(&self, entry: &Entry, client: ClientId<'_>) -> bool {
        match client {
            ClientId::Uuid(v) => {
                let start = entry.uuid_start as usize;
                self.uuids[start..start + entry.uuid_len as usize]
                    .binary_search(&v)
                    .is_ok()
            }
            ClientId::Text(s) => {
                let start = entry.text_start as usize;
                self.texts[start..start + entry.text_len as usize]
                    .binary_search_by(|t| (**t).cmp(s))
                    .is_ok()
            }
        }
    }

    /// The clients of `restaurant_id` here that `older` does not have (subscribed between the two
    /// loads), as text.
    pub fn added_since(&self, older: &Snapshot, restaurant_id: &str) -> Vec<String> {
        let Some(entry) = self.lookup(restaurant_id) else {
            return Vec::new();
        };
        let before: std::collections::HashSet<ClientId<'_>> = match older.lookup(restaurant_id) {
            Some(old) => (0..old.len()).map(|i| older.client(&old, i)).collect(),
            None => Default::default(),
        };
        (0..entry.len())
            .map(|i| self.client(&entry, i))
            .filter(|c| !before.contains(c))
            .map(|c| c.to_string())
            .collect()
    }

    /// Distinct (restaurant, client) pairs.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    pub fn restaurants(&self) -> usize {
        self.index.len()
    }

    /// Every restaurant with its clients' entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        self.index.iter().map(|(name, entry)| (&**name, *entry))
    }
}

/// Builds a [`Snapshot`] from rows in any order, dropping duplicate pairs.
///
/// Rows are first appended to flat columns (restaurant number, client), then placed by a counting
/// sort: no per-restaurant vectors, so the peak memory during a load stays a small multiple of
/// the final size.
#[derive(Default)]
pub struct SnapshotBuilder {
    restaurants: HashMap<Box<str>, u32>,
    uuid_rows: Vec<(u32, u128)>,
    text_rows: Vec<(u32, Box<str>)>,
    skipped: usize,
}

impl SnapshotBuilder {
    pub fn new() -> SnapshotBuilder {
        SnapshotBuilder::default()
    }

    /// Adds a pair; one with an id longer than [`MAX_ID_BYTES`] is counted and left out.
    pub fn push(&mut self, restaurant_id: &str, client_id: &str) {
        if restaurant_id.len() > MAX_ID_BYTES || client_id.len() > MAX_ID_BYTES {
            self.skipped += 1;
            return;
        }
        let r = self.number(restaurant_id);
        match canonical_uuid(client_id) {
            Some(v) => self.uuid_rows.push((r, v)),
            None => self.text_rows.push((r, client_id.into())),
        }
    }

    /// Adds a pair whose client id is taken from another snapshot (already checked).
    pub fn push_id(&mut self, restaurant_id: &str, client: ClientId<'_>) {
        let r = self.number(restaurant_id);
        match client {
            ClientId::Uuid(v) => self.uuid_rows.push((r, v)),
            ClientId::Text(s) => self.text_rows.push((r, s.into())),
        }
    }

    fn number(&mut self, restaurant_id: &str) -> u32 {
        let next = self.restaurants.len() as u32;
        match self.restaurants.get(restaurant_id) {
            Some(&r) => r,
            None => {
                self.restaurants.insert(restaurant_id.into(), next);
                next
            }
        }
    }

    pub fn build(self) -> Snapshot {
        let n = self.restaurants.len();
        let (uuids, uuid_ranges, doubled_uuids) = group_sorted(n, self.uuid_rows);
        let (texts, text_ranges, doubled_texts) = group_sorted(n, self.text_rows);
        let pairs = uuids.len() + texts.len();
        // The names of the restaurants of doubled pairs (usually none).
        let doubled_at: HashMap<u32, Box<str>> = match doubled_uuids.len() + doubled_texts.len() {
            0 => HashMap::new(),
            _ => {
                let wanted: std::collections::HashSet<u32> = (doubled_uuids.iter().map(|d| d.0))
                    .chain(doubled_texts.iter().map(|d| d.0))
                    .collect();
                (self.restaurants.iter())
                    .filter(|(_, r)| wanted.contains(r))
                    .map(|(name, r)| (*r, name.clone()))
                    .collect()
            }
        };
        let name = |r: u32| doubled_at.get(&r).cloned().unwrap_or_default();
        let doubled_uuids = (doubled_uuids.into_iter())
            .map(|(r, v)| (name(r), v))
            .collect();
        let doubled_texts = (doubled_texts.into_iter())
            .map(|(r, t)| (name(r), t))
            .collect();
        let mut index = HashMap::with_capacity(n);
        for (name, r) in self.restaurants {
            let (us, ul) = uuid_ranges[r as usize];
            let (ts, tl) = text_ranges[r as usize];
            if ul + tl > 0 {
                index.insert(
                    name,
                    Entry {
                        uuid_start: us,
                        uuid_len: ul,
                        text_start: ts,
                        text_len: tl,
                    },
                );
            }
        }
        Snapshot {
            index,
            uuids,
            texts,
            pairs,
            skipped: self.skipped,
            doubled_uuids,
            doubled_texts,
        }
    }
}

/// Distinct values, each restaurant's (start, len) in them, and the doubled rows.
type Grouped<T> = (Vec<T>, Vec<(u32, u32)>, Vec<(u32, T)>);

/// Groups `rows` by restaurant number into one flat array of sorted, distinct values, and returns
/// each restaurant's (start, len) in it, and the rows that were there more than once (once each).
fn group_sorted<T: Ord + Clone>(restaurants: usize, mut rows: Vec<(u32, T)>) -> Grouped<T> {
    // Sorting the pairs gives the grouping, the order within a group and the duplicates side by
    // side in one pass; unstable sort works in place.
    rows.sort_unstable();
    let mut doubled: Vec<(u32, T)> = Vec::new();
    rows.dedup_by(|later, kept| {
        let same = later == kept;
        if same && doubled.last() != Some(kept) {
            doubled.push(kept.clone());
        }
        same
    });
    let mut ranges = vec![(0u32, 0u32); restaurants];
    let mut values = Vec::with_capacity(rows.len());
    for (i, (r, v)) in rows.into_iter().enumerate() {
        let range = &mut ranges[r as usize];
        if range.1 == 0 {
            range.0 = i as u32;
        }
        range.1 += 1;
        values.push(v);
    }
    (values, ranges, doubled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_since_lists_only_the_clients_the_older_snapshot_lacks() {
        let uuid = "0c000000-0000-4000-8000-000000000001";
        let mut old = SnapshotBuilder::new();
        old.push("r", uuid);
        old.push("r", "text-a");
        old.push("other", "text-b");
        let old = old.build();
        let mut new = SnapshotBuilder::new();
        new.push("r", uuid);
        new.push("r", "text-a");
        new.push("r", "text-b");
        new.push("r", "0c000000-0000-4000-8000-000000000002");
        new.push("fresh", "text-c");
        let new = new.build();
        let mut added = new.added_since(&old, "r");
        added.sort();
        assert_eq!(added, ["0c000000-0000-4000-8000-000000000002", "text-b"]);
        assert_eq!(new.added_since(&old, "fresh"), ["text-c"]);
        assert!(new.added_since(&old, "other").is_empty(), "gone, not added");
        assert!(old.added_since(&new, "r").is_empty());
    }

    fn clients(s: &Snapshot, restaurant: &str) -> Vec<String> {
        let Some(e) = s.lookup(restaurant) else {
            return vec![];
        };
        (0..e.len()).map(|i| s.client(&e, i).to_string()).collect()
    }

    #[test]
    fn groups_by_restaurant_and_drops_duplicate_pairs() {
        let mut b = SnapshotBuilder::new();
        b.push("r1", "023e4567-e89b-12d3-a456-426614174000");
        b.push("r2", "client-x");
        b.push("r1", "client-y");
        b.push("r1", "023e4567-e89b-12d3-a456-426614174000");
        b.push("r1", "013e4567-e89b-12d3-a456-426614174000");
        let s = b.build();
        assert_eq!(s.pairs(), 4);
        assert_eq!(s.restaurants(), 2);
        assert_eq!(
            clients(&s, "r1"),
            vec![
                "013e4567-e89b-12d3-a456-426614174000",
                "023e4567-e89b-12d3-a456-426614174000",
                "client-y"
            ]
        );
        assert_eq!(clients(&s, "r2"), vec!["client-x"]);
        assert!(s.lookup("r3").is_none());
    }

    #[test]
    fn the_pairs_held_more_than_once_are_listed_once_each() {
        let uuid = "0c000000-0000-4000-8000-000000000001";
        let mut b = SnapshotBuilder::new();
        for (r, c) in [
            ("r", uuid),
            ("r", "a"),
            ("r", uuid),
            ("r", uuid),
            ("s", "a"),
            ("r", "a"),
        ] {
            b.push(r, c);
        }
        b.push("s", "b");
        let s = b.build();
        let mut doubled: Vec<String> = (s.doubled()).map(|(r, c)| format!("{r}/{c}")).collect();
        doubled.sort();
        assert_eq!(doubled, [format!("r/{uuid}"), "r/a".to_string()]);
        assert_eq!(s.pairs(), 4);
    }

    #[test]
    fn pairs_with_an_id_longer_than_the_limit_are_counted_and_left_out() {
        let mut b = SnapshotBuilder::new();
        let long = "x".repeat(MAX_ID_BYTES + 1);
        b.push("r", "kept");
        b.push("r", &long);
        b.push(&long, "c");
        b.push("r", &"y".repeat(MAX_ID_BYTES));
        let s = b.build();
        assert_eq!(s.skipped(), 2);
        assert_eq!(s.pairs(), 2);
        assert_eq!(s.restaurants(), 1);
        assert!(s.lookup(&long).is_none());
    }

    #[test]
    fn non_canonical_uuids_are_kept_verbatim() {
        let odd = [
            "023E4567-E89B-12D3-A456-426614174000",
            "{023e4567-e89b-12d3-a456-426614174000}",
            "023e4567e89b12d3a456426614174000",
            "  023e4567-e89b-12d3-a456-426614174000",
        ];
        let mut b = SnapshotBuilder::new();
        for id in odd {
            b.push("r", id);
        }
        let s = b.build();
        let mut got = clients(&s, "r");
        got.sort();
        let mut want: Vec<String> = odd.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn json_of_text_ids_is_escaped() {
        let mut out = Vec::new();
        ClientId::Text("a\"b\\c").write_json(&mut out);
        assert_eq!(out, br#""a\"b\\c""#);
        out.clear();
        ClientId::Uuid(1).write_json(&mut out);
        assert_eq!(out, br#""00000000-0000-0000-0000-000000000001""#);
    }
}
