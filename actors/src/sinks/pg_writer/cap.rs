//! The per-client cap's decision, pure: which notifications of a write go out and which are
//! capped, given what each client was sent within the window (see "Per-client cap" in
//! docs/design.md). The Postgres side (the locks, what is already decided, the records) is in
//! [`capping`](super::capping).

use foldhash::{HashMap, HashSet};

/// `[limits] per_client_max` notifications per client within any `per_client_window_secs`,
/// across every restaurant and campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerClientCap {
    /// At least 1 (a cap of 0 is no cap, and no [`PerClientCap`]).
    pub max: u32,
    /// At least 1.
    pub window_secs: i64,
}

/// A notification: (restaurant_id, adv_campaign_id, client_id).
pub type Key<'a> = (&'a str, &'a str, &'a str);

/// What becomes of one notification of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the cap: written, and counted in its client's sent times.
    Send,
    /// Over the cap: written to neither sink, recorded as capped.
    Capped,
    /// Decided before (its row or its capped record exists, or it came earlier in this write):
    /// decided the same again, counted nothing.
    Decided,
}

/// The verdicts of a write, in the order of its notifications, and the sent times of the clients
/// that were sent something (trimmed to the window, oldest first), to be stored.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decisions<'a> {
    pub verdicts: Vec<Verdict>,
    pub changed: Vec<(&'a str, Vec<i64>)>,
}

impl Decisions<'_> {
    /// How many were capped now.
    pub fn capped(&self) -> usize {
        self.verdicts
            .iter()
            .filter(|v| **v == Verdict::Capped)
            .count()
    }
}

/// Decides `notifications` in their order (first processed wins): one is sent while its client
/// has fewer than `cap.max` sent times within the window ending at `now` (unix seconds, Postgres'
/// clock), capped otherwise; those in `decided` (and a repeat within the write) are left as they
/// were decided. `sent` holds each client's sent times as stored (a client without an entry has
/// none).
pub fn decide<'a>(
    cap: PerClientCap,
    now: i64,
    notifications: impl IntoIterator<Item = Key<'a>>,
    decided: &HashSet<Key<'a>>,
    mut sent: HashMap<&'a str, Vec<i64>>,
) -> Decisions<'a> {
    let since = now.saturating_sub(cap.window_secs);
    for times in sent.values_mut() {
        times.retain(|t| *t > since);
    }
    let mut seen: HashSet<Key<'a>> = HashSet::default();
    let mut changed: HashSet<&'a str> = HashSet::default();
    let verdicts = notifications
        .into_iter()
        .map(|key| {
            if decided.contains(&key) || !seen.insert(key) {
                return Verdict::Decided;
            }
            let times = sent.entry(key.2).or_default();
            if times.len() >= cap.max as usize {
                return Verdict::Capped;
            }
            times.push(now);
            changed.insert(key.2);
            Verdict::Send
        })
        .collect();
    let mut changed: Vec<&'a str> = changed.into_iter().collect();
    changed.sort_unstable();
    let changed = changed
        .into_iter()
        .map(|client| {
            let mut times = sent.remove(client).unwrap_or_default();
            times.sort_unstable();
            (client, times)
        })
        .collect();
    Decisions { verdicts, changed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000_000;

    fn cap(max: u32) -> PerClientCap {
        PerClientCap {
            max,
            window_secs: DAY,
        }
    }

    fn sent<'a>(of: &[(&'a str, &[i64])]) -> HashMap<&'a str, Vec<i64>> {
        of.iter().map(|(c, t)| (*c, t.to_vec())).collect()
    }

    use Verdict::{Capped, Decided, Send};

    #[test]
    fn the_first_processed_is_sent_and_the_rest_over_the_cap_are_capped() {
        let write = [("r1", "c1", "x"), ("r1", "c1", "y"), ("r2", "c2", "x")];
        let d = decide(cap(1), NOW, write, &HashSet::default(), HashMap::default());
        assert_eq!(d.verdicts, vec![Send, Send, Capped]);
        assert_eq!(d.changed, vec![("x", vec![NOW]), ("y", vec![NOW])]);
        assert_eq!(d.capped(), 1);

        let d = decide(cap(2), NOW, write, &HashSet::default(), HashMap::default());
        assert_eq!(d.verdicts, vec![Send, Send, Send]);
        assert_eq!(d.changed, vec![("x", vec![NOW, NOW]), ("y", vec![NOW])]);
    }

    #[test]
    fn only_the_sent_times_within_the_window_count_and_the_older_ones_are_trimmed() {
        let write = [("r", "c", "x"), ("r", "c", "y")];
        let before = sent(&[
            ("x", &[NOW - DAY, NOW - DAY + 1, NOW - 10]),
            ("y", &[NOW - 5, NOW - 1]),
        ]);
        let d = decide(cap(3), NOW, write, &HashSet::default(), before);
        assert_eq!(d.verdicts, vec![Send, Send]);
        assert_eq!(
            d.changed,
            vec![
                ("x", vec![NOW - DAY + 1, NOW - 10, NOW]),
                ("y", vec![NOW - 5, NOW - 1, NOW])
            ],
            "a time a whole window old is out of it"
        );
        let full = sent(&[("x", &[NOW - 3, NOW - 2, NOW - 1])]);
        let d = decide(cap(3), NOW, [("r", "c", "x")], &HashSet::default(), full);
        assert_eq!(d.verdicts, vec![Capped]);
        assert!(
            d.changed.is_empty(),
            "a capped client's times are unchanged"
        );
    }

    #[test]
    fn what_was_decided_before_or_earlier_in_the_write_is_decided_the_same_and_counts_nothing() {
        let decided: HashSet<Key<'_>> = [("r", "sent", "x"), ("r", "capped", "x")]
            .into_iter()
            .collect();
        let write = [
            ("r", "sent", "x"),
            ("r", "capped", "x"),
            ("r", "new", "x"),
            ("r", "new", "x"),
            ("r", "other", "x"),
        ];
        let before = sent(&[("x", &[NOW - 100])]);
        let d = decide(cap(2), NOW, write, &decided, before);
        assert_eq!(d.verdicts, vec![Decided, Decided, Send, Decided, Capped]);
        assert_eq!(d.changed, vec![("x", vec![NOW - 100, NOW])]);
    }

    #[test]
    fn a_redelivered_write_decides_nothing_new() {
        let write = [("r1", "c1", "x"), ("r2", "c2", "x")];
        let first = decide(cap(1), NOW, write, &HashSet::default(), HashMap::default());
        assert_eq!(first.verdicts, vec![Send, Capped]);
        // Afterwards both are on record (a row and a capped record): the same write again.
        let decided: HashSet<Key<'_>> = write.into_iter().collect();
        let stored: HashMap<&str, Vec<i64>> = first.changed.into_iter().collect();
        let again = decide(cap(1), NOW + 60, write, &decided, stored);
        assert_eq!(again.verdicts, vec![Decided, Decided]);
        assert!(again.changed.is_empty());
        assert_eq!(again.capped(), 0);
    }
}
