//! The lifecycle rules: what a campaign arriving now does to the version the service keeps.
//!
//! Pure logic, no I/O: [`decide`] takes the stored version (if any), the arriving one, the clock
//! and whether it is quiet hours, and says what to answer and what to store. Every rule README
//! states is a test here.

use crate::campaign::Campaign;
use crate::notification::SourceRef;

/// Where a campaign is in its life, as the durable table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Arrived before its start; fires at its start.
    Scheduled,
    /// Claimed by an instance that is firing it now (the table names the instance).
    Firing,
    /// Fired, or delivered on arrival: its subscribers have been notified.
    Active,
    /// A newer version with an end in the past arrived before it fired.
    Cancelled,
    /// Its end (plus the grace) passed before it could fire.
    Expired,
    /// A sink refused it for good (it is in the dead-letter topic).
    Refused,
    /// A newer version with an end in the past arrived once it had fired: nothing more of it goes
    /// out. Kept in the table as the row's `recalled_at` beside its `firing` or `active` state.
    Recalled,
}

impl State {
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Firing => "firing",
            State::Active => "active",
            State::Cancelled => "cancelled",
            State::Expired => "expired",
            State::Refused => "refused",
            State::Recalled => "recalled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [
            State::Scheduled,
            State::Firing,
            State::Active,
            State::Cancelled,
            State::Expired,
            State::Refused,
            State::Recalled,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// Which of two versions of a campaign is newer: the later `datetime_created`; between versions
/// with the same `datetime_created` (a producer that keeps the creation time when it edits or
/// cancels), the later Kafka timestamp (the producer's send time, or the broker's append time on
/// a topic with `LogAppendTime`); then, within one partition, the later offset. Offsets are
/// ordered within a partition only, so they never decide between two partitions: versions of
/// the same millisecond on two partitions are ordered by partition number, which is arbitrary but
/// the same on every instance. A version without a timestamp (a message format older than Kafka
/// 0.10, or a row stored before versions had one) is older than any with one.
///
/// The fields are compared in this order (the derived `Ord`), and the store's compare-and-set
/// compares the same columns in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub datetime_created: i64,
    /// Milliseconds since the epoch; [`Version::NO_TIMESTAMP`] when the message had none.
    pub timestamp_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

impl Version {
    /// Stands for a missing timestamp: before every real one.
    pub const NO_TIMESTAMP: i64 = -1;

    pub fn of(campaign: &Campaign, source: &SourceRef) -> Version {
        Version {
            datetime_created: campaign.datetime_created,
            timestamp_ms: source.timestamp_ms.unwrap_or(Version::NO_TIMESTAMP),
            partition: source.partition,
            offset: source.offset,
        }
    }
}

/// The allowances around a campaign's window, from `[lifecycle]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// A start at most this many seconds ahead of the service's clock counts as started.
    pub clock_skew_secs: i64,
    /// Nothing is sent later than this many seconds after the end.
    pub end_grace_secs: i64,
}

/// Where `now` falls in a campaign's window, with the allowances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    Active,
    Over,
}

impl Window {
    pub fn phase(&self, c: &Campaign, now: i64) -> Phase {
        if now
            > c.adv_campaign_datetime_end
                .saturating_add(self.end_grace_secs)
        {
            Phase::Over
        } else if c.adv_campaign_datetime_start > now.saturating_add(self.clock_skew_secs) {
            Phase::Before
        } else {
            Phase::Active
        }
    }

    /// The last unix second at which a notification of `c` may still be sent.
    pub fn deadline(&self, c: &Campaign) -> i64 {
        c.adv_campaign_datetime_end
            .saturating_add(self.end_grace_secs)
    }
}

/// What the service answers for an arriving campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Kept, to fire at its start (`replaced`: it replaced an older scheduled version).
    Schedule { replaced: bool },
    /// Deliver it now (its subscribers who have it already get nothing new).
    Deliver,
    /// Active, but it is quiet hours: kept `scheduled` (its start has come), to fire when they
    /// end if it is still active then (docs/operations.md, "Quiet hours").
    Hold,
    /// It cancelled the scheduled version it replaced.
    Cancel,
    /// It is over and there is nothing of it to cancel: dead-lettered as `ended`.
    Ended,
    /// An older version than the one kept, which stays as it is.
    Superseded,
    /// It changes a campaign that has already fired: nobody is notified again.
    ChangedAfterStart,
    /// A newer version, over already, of a campaign that has fired: what of it has not gone out
    /// yet never does (docs/design.md, "Recall").
    Recall,
}

/// A stored version of a campaign: what [`decide`] compares an arrival with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub campaign: Campaign,
    pub version: Version,
    pub state: State,
}

/// What an arrival does: the answer, and the state to store the arriving version with (`None`:
/// the table is left as it is). `quiet`: `now` is inside quiet hours.
///
/// Inside quiet hours a campaign that would be delivered now is held: kept as `scheduled`, like
/// one before its start, so that it is a row (a restart keeps it) and the scheduler fires it once
/// they end, if it is still active then. A campaign that has fired already is not held here: the
/// table never takes it back to `scheduled`, so a repeat of it goes to delivery, whose slices not
/// yet written wait for the end of quiet hours.
pub fn decide(
    kept: Option<&Kept>,
    arriving: &Campaign,
    version: Version,
    now: i64,
    window: &Window,
    quiet: bool,
) -> (Decision, Option<State>) {
    let phase = window.phase(arriving, now);
    let active = match quiet {
        true => (Decision::Hold, Some(State::Scheduled)),
        false => (Decision::Deliver, Some(State::Active)),
    };
    let fresh = |phase| match phase {
        Phase::Before => (
            Decision::Schedule { replaced: false },
            Some(State::Scheduled),
        ),
        Phase::Active => active,
        Phase::Over => (Decision::Ended, None),
    };
    let Some(kept) = kept else {
        return fresh(phase);
    };
    match kept.state {
        // Nothing of it was sent: the arrival is a new campaign.
        State::Expired | State::Refused => fresh(phase),
        // Not fired: the newest version wins.
        State::Scheduled | State::Cancelled => {
            if version < kept.version {
                return (Decision::Superseded, None);
            }
            let replaced = kept.state == State::Scheduled && version != kept.version;
            match phase {
                Phase::Before => (Decision::Schedule { replaced }, Some(State::Scheduled)),
                Phase::Active => active,
                Phase::Over => (Decision::Cancel, Some(State::Cancelled)),
            }
        }
        State::Firing | State::Active => fired(kept, arriving, version, phase),
        // Recalled: it stays so. A newer recall is kept as the version; anything else newer
        // notifies nobody (a campaign to send again is published under a new id).
        State::Recalled => match (version > kept.version, phase) {
            (false, _) => (Decision::Superseded, None),
            (true, Phase::Over) => (Decision::Recall, Some(State::Recalled)),
            (true, _) => (Decision::ChangedAfterStart, None),
        },
    }
}

/// What an arrival does to a campaign that is being fired or has fired: a newer version that is
/// over recalls it; otherwise only its end may change, and anything else notifies nobody again.
fn fired(
    kept: &Kept,
    arriving: &Campaign,
    version: Version,
    phase: Phase,
) -> (Decision, Option<State>) {
    if version > kept.version && phase == Phase::Over {
        return (Decision::Recall, Some(State::Recalled));
    }
    if !same_content(&kept.campaign, arriving) {
        return (Decision::ChangedAfterStart, None);
    }
    let new_end = version > kept.version
        && arriving.adv_campaign_datetime_end != kept.campaign.adv_campaign_datetime_end;
    match phase {
        Phase::Active => (Decision::Deliver, new_end.then_some(State::Active)),
        // A repeat after the end (a newer version that is over recalled it above).
        Phase::Over => (Decision::Ended, None),
        // Fired, yet its start is ahead: another instance's clock ran ahead. It stays fired.
        Phase::Before => (Decision::Superseded, None),
    }
}

/// Everything but the end and `datetime_created` is the same.
fn same_content(a: &Campaign, b: &Campaign) -> bool {
    a.restaurant_id == b.restaurant_id
        && a.adv_campaign_id == b.adv_campaign_id
        && a.adv_campaign_content == b.adv_campaign_content
        && a.adv_campaign_owner == b.adv_campaign_owner
        && a.adv_campaign_owner_contact == b.adv_campaign_owner_contact
        && a.adv_campaign_datetime_start == b.adv_campaign_datetime_start
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        clock_skew_secs: 3,
        end_grace_secs: 0,
    };

    fn campaign(start: i64, end: i64, created: i64) -> Campaign {
        Campaign {
            restaurant_id: "r".into(),
            adv_campaign_id: "c".into(),
            adv_campaign_content: "70% off".into(),
            adv_campaign_owner: "o".into(),
            adv_campaign_owner_contact: "o@r".into(),
            adv_campaign_datetime_start: start,
            adv_campaign_datetime_end: end,
            datetime_created: created,
        }
    }

    fn kept(c: Campaign, sent_ms: i64, state: State) -> Kept {
        Kept {
            version: v(&c, sent_ms),
            campaign: c,
            state,
        }
    }

    /// The version of `c` sent at `sent_ms` (as the `sent_ms`-th message of partition 0).
    fn v(c: &Campaign, sent_ms: i64) -> Version {
        at(c, 0, sent_ms, Some(sent_ms))
    }

    fn at(c: &Campaign, partition: i32, offset: i64, timestamp_ms: Option<i64>) -> Version {
        let source = SourceRef {
            topic: "campaigns".into(),
            partition,
            offset,
            timestamp_ms,
        };
        Version::of(c, &source)
    }

    #[test]
    fn versions_of_the_same_creation_time_are_ordered_by_timestamp_never_by_offsets_of_two_partitions(
    ) {
        let c = campaign(100, 200, 10);
        // v1 at offset 500 of partition 0; the edit a second later at offset 3 of partition 1.
        let v1 = at(&c, 0, 500, Some(1_000));
        let edit = at(&c, 1, 3, Some(2_000));
        assert!(
            edit > v1,
            "the later timestamp is newer, whatever the offsets"
        );
        // Within a partition, the same millisecond: the later offset.
        assert!(at(&c, 0, 501, Some(1_000)) > v1);
        // The same millisecond on two partitions: decided the same way everywhere.
        assert!(at(&c, 1, 0, Some(1_000)) > v1);
        assert!(at(&c, 0, 0, Some(1_000)) < at(&c, 1, 0, Some(1_000)));
        // No timestamp: older than any with one.
        assert!(at(&c, 0, 900, None) < v1);
        // A later datetime_created is newer whatever the timestamps.
        let recreated = campaign(100, 200, 11);
        assert!(at(&recreated, 0, 1, Some(0)) > edit);
        // The scheduled v1 is cancelled by a cancellation on the other partition.
        let k = Kept {
            campaign: c.clone(),
            version: v1,
            state: State::Scheduled,
        };
        let cancel = campaign(40, 45, 10);
        assert_eq!(
            decide(
                Some(&k),
                &cancel,
                at(&cancel, 1, 3, Some(2_000)),
                50,
                &W,
                false
            ),
            (Decision::Cancel, Some(State::Cancelled))
        );
    }

    #[test]
    fn phase_allows_the_clock_skew_before_the_start_and_the_grace_after_the_end() {
        let c = campaign(100, 200, 0);
        assert_eq!(W.phase(&c, 96), Phase::Before);
        assert_eq!(
            W.phase(&c, 97),
            Phase::Active,
            "3 s ahead counts as started"
        );
        assert_eq!(W.phase(&c, 200), Phase::Active, "the end is inclusive");
        assert_eq!(W.phase(&c, 201), Phase::Over);
        let graced = Window {
            end_grace_secs: 10,
            ..W
        };
        assert_eq!(graced.phase(&c, 210), Phase::Active);
        assert_eq!(graced.phase(&c, 211), Phase::Over);
        assert_eq!(graced.deadline(&c), 210);
        let exact = Window {
            clock_skew_secs: 0,
            end_grace_secs: 0,
        };
        assert_eq!(exact.phase(&c, 99), Phase::Before);
        assert_eq!(
            exact.phase(&c, 100),
            Phase::Active,
            "the start is inclusive"
        );
        let instant = campaign(100, 100, 0);
        assert_eq!(
            exact.phase(&instant, 100),
            Phase::Active,
            "a one-second window"
        );
    }

    #[test]
    fn a_new_campaign_is_scheduled_delivered_or_ended_by_its_phase() {
        let c = campaign(100, 200, 0);
        let at = |now| decide(None, &c, v(&c, 1), now, &W, false);
        assert_eq!(
            at(50),
            (
                Decision::Schedule { replaced: false },
                Some(State::Scheduled)
            )
        );
        assert_eq!(at(150), (Decision::Deliver, Some(State::Active)));
        assert_eq!(at(250), (Decision::Ended, None));
    }

    #[test]
    fn before_its_start_the_newest_version_replaces_the_scheduled_one() {
        let old = campaign(100, 200, 10);
        let k = kept(old.clone(), 5, State::Scheduled);
        let mut newer = campaign(120, 200, 11);
        newer.adv_campaign_content = "80% off".into();
        assert_eq!(
            decide(Some(&k), &newer, v(&newer, 6), 50, &W, false),
            (
                Decision::Schedule { replaced: true },
                Some(State::Scheduled)
            )
        );
        // Same datetime_created: the later timestamp wins.
        let same_created = campaign(120, 200, 10);
        assert_eq!(
            decide(Some(&k), &same_created, v(&same_created, 9), 50, &W, false).0,
            Decision::Schedule { replaced: true }
        );
        // An older version (earlier created, or same created and an earlier timestamp) is ignored.
        let older = campaign(120, 200, 9);
        assert_eq!(
            decide(Some(&k), &older, v(&older, 99), 50, &W, false),
            (Decision::Superseded, None)
        );
        assert_eq!(
            decide(Some(&k), &same_created, v(&same_created, 4), 50, &W, false),
            (Decision::Superseded, None)
        );
        // The same message read again decides the same way, replacing nothing.
        assert_eq!(
            decide(Some(&k), &old, v(&old, 5), 50, &W, false).0,
            Decision::Schedule { replaced: false }
        );
    }

    #[test]
    fn a_newer_version_with_its_end_in_the_past_cancels_the_scheduled_one() {
        let k = kept(campaign(100, 200, 10), 5, State::Scheduled);
        let cancel = campaign(40, 45, 11);
        assert_eq!(
            decide(Some(&k), &cancel, v(&cancel, 6), 50, &W, false),
            (Decision::Cancel, Some(State::Cancelled))
        );
        // A cancelled campaign is brought back by a still newer version.
        let k = kept(cancel, 6, State::Cancelled);
        let again = campaign(100, 200, 12);
        assert_eq!(
            decide(Some(&k), &again, v(&again, 7), 50, &W, false).0,
            Decision::Schedule { replaced: false }
        );
        let older = campaign(100, 200, 10);
        assert_eq!(
            decide(Some(&k), &older, v(&older, 8), 50, &W, false).0,
            Decision::Superseded
        );
    }

    #[test]
    fn a_newer_version_arriving_after_its_start_is_delivered_at_once() {
        let k = kept(campaign(100, 200, 10), 5, State::Scheduled);
        let now_active = campaign(40, 200, 11);
        assert_eq!(
            decide(Some(&k), &now_active, v(&now_active, 6), 50, &W, false),
            (Decision::Deliver, Some(State::Active))
        );
    }

    #[test]
    fn after_it_fired_only_its_end_changes_and_changed_content_notifies_nobody() {
        let fired = campaign(100, 200, 10);
        for state in [State::Active, State::Firing] {
            let k = kept(fired.clone(), 5, state);
            // A repeat while active is delivered (who has it gets nothing new).
            assert_eq!(
                decide(Some(&k), &fired, v(&fired, 5), 150, &W, false),
                (Decision::Deliver, None)
            );
            // A later end extends it.
            let extended = campaign(100, 300, 11);
            assert_eq!(
                decide(Some(&k), &extended, v(&extended, 6), 250, &W, false),
                (Decision::Deliver, Some(State::Active))
            );
            // A repeat after its end is answered as ended and changes nothing.
            assert_eq!(
                decide(Some(&k), &fired, v(&fired, 5), 250, &W, false),
                (Decision::Ended, None)
            );
            // An older version with another end changes nothing.
            let stale = campaign(100, 300, 9);
            assert_eq!(
                decide(Some(&k), &stale, v(&stale, 6), 150, &W, false),
                (Decision::Deliver, None)
            );
            // New text, owner, contact or start: counted, nobody notified again.
            let mut text = fired.clone();
            text.adv_campaign_content = "90% off".into();
            text.datetime_created = 11;
            assert_eq!(
                decide(Some(&k), &text, v(&text, 6), 150, &W, false),
                (Decision::ChangedAfterStart, None)
            );
            let moved = campaign(110, 200, 11);
            assert_eq!(
                decide(Some(&k), &moved, v(&moved, 6), 150, &W, false).0,
                Decision::ChangedAfterStart
            );
        }
    }

    #[test]
    fn a_newer_version_over_already_recalls_a_fired_campaign_for_good() {
        let fired = campaign(100, 200, 10);
        for state in [State::Active, State::Firing] {
            let k = kept(fired.clone(), 5, state);
            // Its end moved into the past, whatever else changed with it.
            let shortened = campaign(100, 120, 11);
            assert_eq!(
                decide(Some(&k), &shortened, v(&shortened, 6), 150, &W, false),
                (Decision::Recall, Some(State::Recalled))
            );
            let mut other = campaign(40, 45, 10);
            other.adv_campaign_content = "withdrawn".into();
            assert_eq!(
                decide(Some(&k), &other, v(&other, 6), 150, &W, false),
                (Decision::Recall, Some(State::Recalled))
            );
            // An older version that is over recalls nothing.
            let stale = campaign(100, 120, 9);
            assert_eq!(
                decide(Some(&k), &stale, v(&stale, 6), 150, &W, false),
                (Decision::Ended, None)
            );
        }
        let recalled = kept(campaign(100, 120, 11), 6, State::Recalled);
        // The original read again (a redelivery, a restart) sends nothing.
        assert_eq!(
            decide(Some(&recalled), &fired, v(&fired, 5), 150, &W, false),
            (Decision::Superseded, None)
        );
        // A newer active version notifies nobody; a newer recall is kept.
        let again = campaign(100, 300, 12);
        assert_eq!(
            decide(Some(&recalled), &again, v(&again, 7), 150, &W, false),
            (Decision::ChangedAfterStart, None)
        );
        let recall_again = campaign(100, 110, 12);
        assert_eq!(
            decide(
                Some(&recalled),
                &recall_again,
                v(&recall_again, 7),
                150,
                &W,
                false
            ),
            (Decision::Recall, Some(State::Recalled))
        );
    }

    #[test]
    fn inside_quiet_hours_what_would_be_delivered_is_held_as_scheduled() {
        let c = campaign(100, 200, 10);
        let quiet =
            |kept: Option<&Kept>, c: &Campaign, now| decide(kept, c, v(c, 6), now, &W, true);
        // New and active: held; before its start or over: as outside quiet hours.
        assert_eq!(
            quiet(None, &c, 150),
            (Decision::Hold, Some(State::Scheduled))
        );
        assert_eq!(
            quiet(None, &c, 50),
            (
                Decision::Schedule { replaced: false },
                Some(State::Scheduled)
            )
        );
        assert_eq!(quiet(None, &c, 250), (Decision::Ended, None));
        // Its start came while scheduled, and it arrives again (a redelivery, a restart).
        let scheduled = kept(c.clone(), 6, State::Scheduled);
        assert_eq!(
            quiet(Some(&scheduled), &c, 150),
            (Decision::Hold, Some(State::Scheduled))
        );
        // A newer active version of a scheduled or cancelled one is held; an older one ignored.
        let newer = campaign(40, 200, 11);
        assert_eq!(
            quiet(Some(&scheduled), &newer, 150),
            (Decision::Hold, Some(State::Scheduled))
        );
        let cancelled = kept(campaign(40, 45, 11), 5, State::Cancelled);
        assert_eq!(
            quiet(Some(&cancelled), &newer, 150).0,
            Decision::Hold,
            "a still newer version brings it back"
        );
        assert_eq!(
            quiet(Some(&cancelled), &c, 150),
            (Decision::Superseded, None)
        );
        // A cancellation inside quiet hours still cancels.
        assert_eq!(
            quiet(Some(&scheduled), &campaign(40, 45, 11), 150),
            (Decision::Cancel, Some(State::Cancelled))
        );
        for state in [State::Expired, State::Refused] {
            let k = kept(c.clone(), 5, state);
            assert_eq!(
                quiet(Some(&k), &c, 150),
                (Decision::Hold, Some(State::Scheduled))
            );
        }
    }

    #[test]
    fn inside_quiet_hours_a_fired_campaign_is_not_taken_back_to_scheduled() {
        let c = campaign(100, 200, 10);
        let quiet =
            |kept: Option<&Kept>, c: &Campaign, now| decide(kept, c, v(c, 6), now, &W, true);
        // A repeat goes to delivery (whose slices wait for the end of quiet hours); a recall
        // still recalls.
        for state in [State::Active, State::Firing] {
            let k = kept(c.clone(), 6, state);
            assert_eq!(quiet(Some(&k), &c, 150), (Decision::Deliver, None));
            assert_eq!(
                quiet(Some(&k), &campaign(100, 120, 11), 150),
                (Decision::Recall, Some(State::Recalled))
            );
        }
    }

    #[test]
    fn an_expired_or_refused_campaign_sent_again_is_a_new_campaign() {
        for state in [State::Expired, State::Refused] {
            let k = kept(campaign(100, 200, 10), 5, state);
            let again = campaign(300, 400, 9);
            assert_eq!(
                decide(Some(&k), &again, v(&again, 1), 250, &W, false).0,
                Decision::Schedule { replaced: false }
            );
        }
    }

    #[test]
    fn states_round_trip_through_their_text() {
        for s in [
            State::Scheduled,
            State::Firing,
            State::Active,
            State::Cancelled,
            State::Expired,
            State::Refused,
            State::Recalled,
        ] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("x"), None);
    }
}
