//! The scheduler: claims the campaigns that are due, fires them, and settles their state.
//!
//! Every `poll_interval` the lifecycle claims what is due (and what a fenced or dead instance was
//! firing) as far as the notifications of what it fires already leave room for in the budget
//! (`writers.max_notifications_in_flight`): the claim counts each campaign's audience in Postgres
//! and takes campaigns while the audiences before stay below the room, so a burst is spread over
//! the instances. Each claimed campaign's subscribers are read fresh at that moment (who
//! unsubscribed since the cache's last reload is not notified): the small ones together, in one
//! statement; one whose audience is larger than a slice (the budget) a slice at a time, each slice
//! fired and confirmed before the next is read, so that a campaign of millions holds one slice of
//! subscribers, not all. A campaign's state is settled from its outcome: `active` once fired,
//! `expired`, `refused`, or back to `scheduled` when it was not confirmed (claimed again).
//!
//! [`Scheduler`] is the bookkeeping alone, no I/O; [`read_together`] and [`fire_in_slices`] read
//! the audiences. Memory: the subscribers of what is being fired, within about twice the budget
//! (the campaigns read together stay below it, plus one slice).

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::Recipient;
use tokio_postgres::Client;

use super::rules::{State, Window};
use super::store::{self, key_of, Arrival, Claimed, Key};
use super::Fire;
use crate::cache::snapshot::Snapshot;
use crate::events::{Event, FireAudienceRead};
use crate::messages::CampaignOutcome;
use crate::metrics::Metrics;

/// A claimed campaign to fire.
#[derive(Debug)]
pub struct ToFire {
    pub arrival: Arrival,
    pub key: Key,
    /// Its subscribers as counted by the claim.
    pub audience: usize,
}

/// What a claim makes of the campaigns it took.
#[derive(Debug, Default)]
pub struct Plan {
    /// Fired with their subscribers read together.
    pub together: Vec<ToFire>,
    /// Fired a slice of subscribers at a time.
    pub sliced: Vec<ToFire>,
    /// Over already: settled as expired, fired for nobody.
    pub expired: Vec<Arrival>,
}

/// The scheduler's bookkeeping.
#[derive(Debug)]
pub struct Scheduler {
    /// Notifications of the campaigns it fires, at most (one campaign may take it over).
    budget: usize,
    /// Notifications of the campaigns claimed and not yet confirmed.
    firing: usize,
    claiming: bool,
    to_settle: Vec<(Key, State)>,
    settling: bool,
    closing: bool,
}

impl Scheduler {
    pub fn new(budget: usize) -> Scheduler {
        Scheduler {
            budget: budget.max(1),
            firing: 0,
            claiming: false,
            to_settle: Vec::new(),
            settling: false,
            closing: false,
        }
    }

    /// The subscribers read and fired at once, at most, for one campaign.
    pub fn slice(&self) -> usize {
        self.budget
    }

    /// Notifications of the campaigns claimed and not yet confirmed.
    #[cfg(test)]
    fn firing(&self) -> usize {
        self.firing
    }

    pub fn closing(&self) -> bool {
        self.closing
    }

    /// The room a claim may fill now, if one is worth making: claims go in batches, once a
    /// quarter of the budget is free (or nothing is being fired), not each time one campaign is
    /// confirmed; none while one is under way, once closing, or without a valid lease.
    pub fn claim(&mut self, lease_valid: bool) -> Option<usize> {
        let room = self.budget.saturating_sub(self.firing);
        let worth_it = self.firing == 0 || room >= self.budget / 4;
        if self.claiming || self.closing || !lease_valid || !worth_it {
            return None;
        }
        self.claiming = true;
        Some(room)
    }

    pub fn claim_failed(&mut self) {
        self.claiming = false;
    }

    /// The campaigns a claim took, at `now`: those over are settled as expired, the rest are
    /// being fired from now on.
    pub fn claimed(&mut self, claimed: Vec<Claimed>, now: i64, window: &Window) -> Plan {
        self.claiming = false;
        let mut plan = Plan::default();
        for Claimed {
            arrival, audience, ..
        } in claimed
        {
            let key = key_of(&arrival.campaign);
            if now > window.deadline(&arrival.campaign) {
                self.to_settle.push((key, State::Expired));
                plan.expired.push(arrival);
                continue;
            }
            self.firing += audience;
            let fire = ToFire {
                arrival,
                key,
                audience,
            };
            match audience > self.slice() {
                true => plan.sliced.push(fire),
                false => plan.together.push(fire),
            }
        }
        plan
    }

    /// A fired campaign's outcome: its notifications leave the budget and its state is to be
    /// settled; returns the state.
    pub fn fired(&mut self, key: Key, audience: usize, outcome: &CampaignOutcome) -> State {
        self.firing = self.firing.saturating_sub(audience);
        let state = state_after(outcome);
        self.to_settle.push((key, state));
        state
    }

    /// The states to write now, by state, unless a write is under way.
    pub fn next_settle(&mut self) -> Option<Vec<(State, Vec<Key>)>> {
        if self.settling || self.to_settle.is_empty() {
            return None;
        }
        self.settling = true;
        let settled = std::mem::take(&mut self.to_settle);
        let groups = [
            State::Active,
            State::Expired,
            State::Refused,
            State::Scheduled,
        ]
        .into_iter()
        .filter_map(|state| {
            let keys: Vec<Key> = settled
                .iter()
                .filter(|(_, s)| *s == state)
                .map(|(k, _)| k.clone())
                .collect();
            (!keys.is_empty()).then_some((state, keys))
        })
        .collect();
        Some(groups)
    }

    /// The write of `groups` finished; if it failed they are written again after the restart.
    pub fn settled(&mut self, failed: Option<Vec<(State, Vec<Key>)>>) {
        self.settling = false;
        for (state, keys) in failed.into_iter().flatten() {
            self.to_settle.extend(keys.into_iter().map(|k| (k, state)));
        }
    }

    /// Claims nothing more; what is being fired finishes.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// The actor restarts: the fires went with the old context's futures (what they claimed is
    /// claimed again); returns the notifications that were being fired. What waits to be settled
    /// is kept.
    pub fn restart(&mut self) -> usize {
        self.claiming = false;
        self.settling = false;
        std::mem::take(&mut self.firing)
    }
}

/// What a fire's outcome makes of the campaign.
pub fn state_after(outcome: &CampaignOutcome) -> State {
    match outcome {
        CampaignOutcome::Delivered { .. }
        | CampaignOutcome::AlreadyNotified
        | CampaignOutcome::NoSubscribers => State::Active,
        CampaignOutcome::Ended => State::Expired,
        CampaignOutcome::SinkFailed { .. } | CampaignOutcome::Rejected(_) => State::Refused,
        // Not confirmed (the service is stopping): claimed again, by whoever comes next.
        _ => State::Scheduled,
    }
}

/// The subscribers of the restaurants of `campaigns`, as they are now, in one statement.
pub async fn read_together(
    client: &Client,
    campaigns: &[ToFire],
) -> Result<Arc<Snapshot>, tokio_postgres::Error> {
    let restaurants: BTreeSet<&str> = campaigns
        .iter()
        .map(|f| f.arrival.campaign.restaurant_id.as_str())
        .collect();
    let restaurants: Vec<&str> = restaurants.into_iter().collect();
    if restaurants.is_empty() {
        return Ok(Arc::default());
    }
    Ok(Arc::new(store::subscribers_of(client, &restaurants).await?))
}

/// Fires `arrival` for its restaurant's subscribers as they are now, `slice` at a time: each
/// slice is read, fired and confirmed before the next is read. Stops at the first slice that is
/// not delivered (refused, over, unconfirmed) with its outcome; otherwise answers for all of them.
pub async fn fire_in_slices(
    client: Arc<Client>,
    fire: Recipient<Fire>,
    arrival: Arrival,
    slice: usize,
    metrics: Metrics,
) -> Result<CampaignOutcome, tokio_postgres::Error> {
    let restaurant = arrival.campaign.restaurant_id.clone();
    let (mut after, mut notified, mut read) = (i64::MIN, 0, 0);
    loop {
        let (subscribers, last) =
            store::subscribers_slice(&client, &restaurant, after, slice as i64).await?;
        let Some(last) = last else { break };
        read += 1;
        FireAudienceRead {
            subscribers: subscribers.pairs(),
        }
        .emit(&metrics);
        let sent = fire.send(Fire {
            arrival: arrival.clone(),
            subscribers: Arc::new(subscribers),
        });
        match sent.await {
            Ok(CampaignOutcome::Delivered { notifications }) => notified += notifications,
            Ok(CampaignOutcome::AlreadyNotified | CampaignOutcome::NoSubscribers) => {}
            Ok(other) => return Ok(other),
            Err(e) => {
                return Ok(CampaignOutcome::Unconfirmed {
                    sink: "enricher",
                    reason: e.to_string(),
                })
            }
        }
        after = last;
    }
    Ok(match (notified, read) {
        (0, 0) => CampaignOutcome::NoSubscribers,
        (0, _) => CampaignOutcome::AlreadyNotified,
        (notifications, _) => CampaignOutcome::Delivered { notifications },
    })
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

    fn claimed(id: &str, end: i64, audience: usize) -> Claimed {
        Claimed {
            arrival: Arrival {
                campaign: Campaign {
                    restaurant_id: format!("r-{id}"),
                    adv_campaign_id: id.into(),
                    adv_campaign_content: "x".into(),
                    adv_campaign_owner: "o".into(),
                    adv_campaign_owner_contact: "o@r".into(),
                    adv_campaign_datetime_start: NOW - 1,
                    adv_campaign_datetime_end: end,
                    datetime_created: 1,
                },
                source: SourceRef {
                    topic: "in".into(),
                    partition: 0,
                    offset: 0,
                    timestamp_ms: None,
                },
                key: None,
                payload: Vec::new(),
            },
            taken_over: false,
            audience,
        }
    }

    fn key(id: &str) -> Key {
        (format!("r-{id}"), id.to_string())
    }

    #[test]
    fn a_claim_is_made_once_a_quarter_of_the_budget_is_free_and_one_at_a_time() {
        let mut s = Scheduler::new(1_000);
        assert_eq!(s.claim(false), None, "no claim without a valid lease");
        assert_eq!(
            s.claim(true),
            Some(1_000),
            "nothing firing: the whole budget"
        );
        assert_eq!(s.claim(true), None, "one claim at a time");
        s.claimed(vec![claimed("a", NOW + 60, 800)], NOW, &W);
        assert_eq!(s.firing(), 800);
        assert_eq!(s.claim(true), None, "a fifth free is not worth a claim");
        s.fired(key("a"), 800, &CampaignOutcome::AlreadyNotified);
        assert_eq!(s.claim(true), Some(1_000));
        s.claim_failed();
        s.close();
        assert_eq!(s.claim(true), None, "closing claims nothing");
    }

    #[test]
    fn a_campaign_larger_than_a_slice_is_fired_in_slices_and_one_over_is_expired() {
        let mut s = Scheduler::new(1_000);
        s.claim(true);
        let plan = s.claimed(
            vec![
                claimed("small", NOW + 60, 10),
                claimed("budget", NOW + 60, 1_000),
                claimed("large", NOW + 60, 1_001),
                claimed("over", NOW - 10, 5_000),
            ],
            NOW,
            &W,
        );
        let ids = |f: &[ToFire]| -> Vec<String> {
            f.iter()
                .map(|f| f.arrival.campaign.adv_campaign_id.clone())
                .collect()
        };
        assert_eq!(ids(&plan.together), ["small", "budget"]);
        assert_eq!(ids(&plan.sliced), ["large"]);
        assert_eq!(plan.expired.len(), 1);
        assert_eq!(s.firing(), 2_011, "the expired one holds nothing");
        let settle = s.next_settle().expect("the expired one is settled");
        assert_eq!(settle, vec![(State::Expired, vec![key("over")])]);
    }

    #[test]
    fn outcomes_settle_as_fired_expired_refused_or_claimed_again() {
        let delivered = CampaignOutcome::Delivered { notifications: 3 };
        let unconfirmed = CampaignOutcome::Unconfirmed {
            sink: "kafka",
            reason: "stopping".into(),
        };
        let refused = CampaignOutcome::SinkFailed {
            sink: "postgres",
            reason: "no".into(),
        };
        assert_eq!(state_after(&delivered), State::Active);
        assert_eq!(state_after(&CampaignOutcome::NoSubscribers), State::Active);
        assert_eq!(state_after(&CampaignOutcome::Ended), State::Expired);
        assert_eq!(state_after(&refused), State::Refused);
        assert_eq!(state_after(&unconfirmed), State::Scheduled);
    }

    #[test]
    fn states_are_written_one_statement_per_state_and_again_after_a_failure() {
        let mut s = Scheduler::new(100);
        s.claim(true);
        s.claimed(
            vec![
                claimed("a", NOW + 60, 1),
                claimed("b", NOW + 60, 1),
                claimed("c", NOW + 60, 1),
            ],
            NOW,
            &W,
        );
        s.fired(key("a"), 1, &CampaignOutcome::NoSubscribers);
        s.fired(key("b"), 1, &CampaignOutcome::Ended);
        s.fired(key("c"), 1, &CampaignOutcome::AlreadyNotified);
        let groups = s.next_settle().unwrap();
        assert_eq!(
            groups,
            vec![
                (State::Active, vec![key("a"), key("c")]),
                (State::Expired, vec![key("b")]),
            ]
        );
        assert!(s.next_settle().is_none(), "one write at a time");
        s.settled(Some(groups));
        let again = s.next_settle().expect("written again");
        assert_eq!(again.len(), 2);
        s.settled(None);
        assert!(s.next_settle().is_none());
    }

    #[test]
    fn a_restart_forgets_the_fires_but_keeps_what_is_to_be_settled() {
        let mut s = Scheduler::new(100);
        s.claim(true);
        s.claimed(vec![claimed("a", NOW + 60, 40)], NOW, &W);
        s.fired(key("a"), 0, &CampaignOutcome::NoSubscribers);
        assert!(s.next_settle().is_some());
        s.settled(Some(vec![(State::Active, vec![key("a")])]));
        assert_eq!(s.restart(), 40, "the notifications that were being fired");
        assert_eq!(s.firing(), 0);
        assert_eq!(s.claim(true), Some(100), "claims again at once");
        assert!(s.next_settle().is_some(), "the settle is kept");
    }
}
