//! `campaign status ID` and `campaigns [--state S]`: what became of a campaign, read from
//! Postgres (see "Campaign controls" in docs/design.md).
//!
//! A campaign is its row of `campaign_notifier_campaigns` (kept `lifecycle.retain_days` after it
//! last changed). What went out is read from the sinks' own records: its rows of
//! `subscribers_feedback` (found by the notification key's index), of which those an outbox mark
//! still lists are written to Postgres but not yet confirmed by Kafka; what the per-client cap
//! held back, from `campaign_notifier_capped`.

use std::fmt;

use futures::{pin_mut, TryStreamExt};
use serde::Serialize;
use tokio_postgres::{Client, Row};

use crate::lifecycle::Window;
use crate::quiet::QuietHours;

/// Every campaign on record, or those of one id, with what went out of each.
const STATUS: &str = include_str!("status.sql");

/// What an operator is told a campaign's state is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for its start.
    Scheduled,
    /// Going out, or gone out and still within its window: late subscribers are notified.
    Active,
    /// Its end (and the grace after it) has passed, or it ended before it could fire.
    Over,
    /// A newer version whose end had passed cancelled it before its start.
    Cancelled,
    /// A sink refused it for good; it is in the dead-letter topic.
    Refused,
    /// A newer version whose end had passed recalled it once it had fired: nothing more of it
    /// goes out.
    Recalled,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Scheduled,
        State::Active,
        State::Over,
        State::Cancelled,
        State::Refused,
        State::Recalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Active => "active",
            State::Over => "over",
            State::Cancelled => "cancelled",
            State::Refused => "refused",
            State::Recalled => "recalled",
        }
    }

    /// The state of a row stored as `stored`, whose end is `end`, at `now` (Postgres' clock).
    /// A recalled row (its `recalled_at` set) is `recalled`, whatever else it says.
    fn of(stored: &str, recalled: bool, end: i64, now: i64, window: Window) -> State {
        let over = now > end.saturating_add(window.end_grace_secs);
        match stored {
            _ if recalled => State::Recalled,
            "cancelled" => State::Cancelled,
            "refused" => State::Refused,
            "expired" => State::Over,
            _ if over => State::Over,
            "scheduled" => State::Scheduled,
            _ => State::Active,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}: one of {}", all.join(", "))
            })
    }
}

/// The version of a campaign the service keeps (see "Which version is newer" in
/// docs/design.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub datetime_created: i64,
    /// The Kafka timestamp of the message it came in, when it had one.
    pub kafka_timestamp_ms: Option<i64>,
    pub partition: i32,
    pub offset: i64,
}

/// Its notifications in the two sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notifications {
    pub written_to_postgres: i64,
    pub confirmed_by_kafka: i64,
    /// Written to Postgres and still listed by an outbox mark: not yet acknowledged by Kafka (on
    /// their way, or to be finished by recovery if their instance stopped), or acknowledged a
    /// moment ago and the mark not cleared yet.
    pub in_flight: i64,
}

/// One campaign as `campaign status` prints it (one JSON object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CampaignStatus {
    pub restaurant_id: String,
    pub adv_campaign_id: String,
    pub state: State,
    /// The lifecycle's own state of the row (`scheduled`, `firing`, `active`, `cancelled`,
    /// `expired`, `refused`).
    pub stored_state: String,
    /// When it was recalled (ms since the epoch, Postgres' clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recalled_at_ms: Option<i64>,
    pub version: Version,
    pub start: i64,
    pub end: i64,
    /// When a campaign that waited for its start began to go out (unix seconds); `None` for one
    /// delivered as it arrived, or not started yet.
    pub fired_at: Option<i64>,
    /// Scheduled, its start passed, inside quiet hours: when they end and it fires (unix
    /// seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<i64>,
    pub updated_at: i64,
    pub notifications: Notifications,
    /// Its notifications the per-client cap kept from both sinks (`campaign_notifier_capped`).
    pub capped: i64,
    pub first_trigger_datetime_created: Option<i64>,
    pub last_trigger_datetime_created: Option<i64>,
}

impl CampaignStatus {
    fn from_row(
        row: &Row,
        window: Window,
        quiet: &QuietHours,
    ) -> Result<CampaignStatus, tokio_postgres::Error> {
        let stored: String = row.try_get("state")?;
        let end: i64 = row.try_get("adv_campaign_datetime_end")?;
        let written: i64 = row.try_get("written")?;
        let in_flight: i64 = row.try_get("in_flight")?;
        let recalled_at_ms: Option<i64> = row.try_get("recalled_at")?;
        let now = row.try_get("now")?;
        let start: i64 = row.try_get("adv_campaign_datetime_start")?;
        let state = State::of(&stored, recalled_at_ms.is_some(), end, now, window);
        let held = state == State::Scheduled && start <= now;
        Ok(CampaignStatus {
            restaurant_id: row.try_get("restaurant_id")?,
            adv_campaign_id: row.try_get("adv_campaign_id")?,
            state,
            stored_state: stored,
            recalled_at_ms,
            version: Version {
                datetime_created: row.try_get("datetime_created")?,
                kafka_timestamp_ms: row.try_get("source_timestamp_ms")?,
                partition: row.try_get("source_partition")?,
                offset: row.try_get("source_offset")?,
            },
            start,
            end,
            fired_at: row.try_get("fired_at")?,
            held_until: quiet.next_end(now).filter(|_| held),
            updated_at: row.try_get("updated_at")?,
            notifications: Notifications {
                written_to_postgres: written,
                confirmed_by_kafka: written - in_flight,
                in_flight,
            },
            capped: row.try_get("capped")?,
            first_trigger_datetime_created: row.try_get("first_trigger")?,
            last_trigger_datetime_created: row.try_get("last_trigger")?,
        })
    }
}

/// Hands each campaign on record (those with id `id`, or all) whose state is `state` (any, when
/// `None`) to `each`, in order of start; returns how many. `quiet`: the service's quiet hours,
/// to tell until when a held campaign waits.
pub async fn for_each(
    client: &Client,
    window: Window,
    quiet: &QuietHours,
    id: Option<&str>,
    state: Option<State>,
    mut each: impl FnMut(CampaignStatus),
) -> Result<usize, tokio_postgres::Error> {
    let rows = client.query_raw(STATUS, [id]).await?;
    pin_mut!(rows);
    let mut shown = 0;
    while let Some(row) = rows.try_next().await? {
        let status = CampaignStatus::from_row(&row, window, quiet)?;
        if state.is_none_or(|s| s == status.state) {
            shown += 1;
            each(status);
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        clock_skew_secs: 3,
        end_grace_secs: 10,
    };

    #[test]
    fn the_state_shown_follows_the_stored_one_and_the_end() {
        let end = 1_000;
        let cases = [
            ("scheduled", end - 1, State::Scheduled),
            ("scheduled", end + 11, State::Over),
            ("firing", end + 10, State::Active),
            ("firing", end + 11, State::Over),
            ("active", end, State::Active),
            ("active", end + 11, State::Over),
            ("expired", end - 500, State::Over),
            ("cancelled", end + 11, State::Cancelled),
            ("refused", end - 1, State::Refused),
        ];
        for (stored, now, shown) in cases {
            assert_eq!(
                State::of(stored, false, end, now, W),
                shown,
                "{stored} at {now}"
            );
        }
        // Recalled, whether it is still being fired, fired, or over.
        for (stored, now) in [("firing", end), ("active", end - 1), ("active", end + 11)] {
            assert_eq!(State::of(stored, true, end, now, W), State::Recalled);
        }
    }

    #[test]
    fn a_state_is_read_as_it_is_printed_and_an_unknown_one_names_the_others() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>(), Ok(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap_or_default(),
                format!("\"{state}\"")
            );
        }
        let err = "gone".parse::<State>().unwrap_err();
        assert_eq!(
            err,
            "unknown state \"gone\": one of scheduled, active, over, cancelled, refused, recalled"
        );
    }
}
