//! `[cache]`, `[enricher]`, `[writers]`, `[ledger]`, `[lifecycle]`, `[limits]`, `[http]`, `[log]`
//! and `[shutdown]`: the sections whose every key has a default.
//!
//! Each takes every key's default from its one `Default` impl (`#[serde(default)]` on the
//! struct): a default is written once, here; config.toml and docs/configuration.md are checked
//! against these by `tests::the_shipped_config_and_the_docs_say_the_defaults`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationMilliSeconds, DurationSeconds};

use crate::changes::{ChangesSetting, SlotNames};

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How often the subscriber snapshot is reloaded from `subscribers_restaurants` when its
    /// changes are not followed (mode `ids`).
    #[serde_as(as = "DurationSeconds<u64>")]
    pub refresh_interval_secs: Duration,
    /// How the table's changes are followed: `auto`, `logical`, `trigger` or `ids`.
    pub changes: ChangesSetting,
    /// With the changes followed, the full reload is a safety net this often.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub changes_reload_interval_secs: Duration,
    /// How often every instance reads the changes stored since it last looked.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub changes_poll_interval_ms: Duration,
    /// The logical mode's replication slot (one per deployment) and publication.
    pub slot: String,
    pub publication: String,
    /// Stored changes are kept at least this long (an instance further behind reloads).
    #[serde_as(as = "DurationSeconds<u64>")]
    pub changes_keep_secs: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            refresh_interval_secs: Duration::from_secs(60),
            changes: ChangesSetting::Auto,
            changes_reload_interval_secs: Duration::from_secs(6 * 3600),
            changes_poll_interval_ms: Duration::from_millis(200),
            slot: "campaign_notifier_subscribers".into(),
            publication: "campaign_notifier_subscribers".into(),
            changes_keep_secs: Duration::from_secs(3600),
        }
    }
}

impl CacheConfig {
    pub fn slot_names(&self) -> SlotNames {
        SlotNames {
            slot: self.slot.clone(),
            publication: self.publication.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnricherConfig {
    /// A campaign message larger than this is rejected: its text is copied into every
    /// subscriber's notification, so a huge one multiplies into gigabytes downstream.
    pub max_campaign_bytes: usize,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        EnricherConfig {
            max_campaign_bytes: 64 * 1024,
        }
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WritersConfig {
    /// A writer flushes once this many notifications are waiting...
    pub batch_max_rows: usize,
    /// ...or once the oldest has waited this long.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub linger_ms: Duration,
    /// Delay before the first reconnect after a failure; doubled on each further failure.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub restart_backoff_initial_ms: Duration,
    /// Upper bound of the reconnect delay.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub restart_backoff_max_ms: Duration,
    /// How long librdkafka keeps retrying one notification before the Kafka writer restarts.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub kafka_message_timeout_ms: Duration,
    /// A writer restarting more often than this within `restart_window_secs` stops the service
    /// with exit code 3: a supervisor above (systemd, Kubernetes) can do more than a retry loop.
    pub restart_limit: u32,
    #[serde_as(as = "DurationSeconds<u64>")]
    pub restart_window_secs: Duration,
    /// A writer that has had notifications waiting and confirmed none for this long makes
    /// `/readyz` answer 503 until it moves again.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub stall_secs: Duration,
    /// Notifications between the join and both sinks' confirmation, at most: what bounds the
    /// service's memory beyond the subscriber snapshot, however large a campaign's audience.
    pub max_notifications_in_flight: usize,
}

impl Default for WritersConfig {
    fn default() -> Self {
        WritersConfig {
            batch_max_rows: 5_000,
            linger_ms: Duration::from_millis(5),
            restart_backoff_initial_ms: Duration::from_millis(100),
            restart_backoff_max_ms: Duration::from_millis(10_000),
            kafka_message_timeout_ms: Duration::from_millis(30_000),
            restart_limit: 30,
            restart_window_secs: Duration::from_secs(300),
            stall_secs: Duration::from_secs(30),
            max_notifications_in_flight: 200_000,
        }
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// How long this instance's lease lasts without a renewal (renewed every third of it). A
    /// frozen, dead or cut-off instance is fenced this long after its last renewal, and its work
    /// taken over once its producer's sends have settled.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub lease_ttl_secs: Duration,
    /// No longer used: takeover follows the lease. Accepted, with a warning, so that an older
    /// config still starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub takeover_after_secs: Option<u64>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            lease_ttl_secs: Duration::from_secs(10),
            takeover_after_secs: None,
        }
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// A campaign whose start is at most this far ahead of the service's clock when it arrives
    /// counts as started (the producer's clock may run ahead of ours).
    #[serde_as(as = "DurationSeconds<u64>")]
    pub clock_skew_secs: Duration,
    /// Nothing of a campaign is sent later than this after its end.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub end_grace_secs: Duration,
    /// How often scheduled campaigns that are due are looked for.
    #[serde_as(as = "DurationMilliSeconds<u64>")]
    pub poll_interval_ms: Duration,
    /// A campaign that has fired, was cancelled or ended unsent is forgotten this many days after
    /// it last changed, however far in the future its end is (and a day after its end, if that
    /// comes first).
    pub retain_days: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            clock_skew_secs: Duration::from_secs(3),
            end_grace_secs: Duration::ZERO,
            poll_interval_ms: Duration::from_millis(250),
            retain_days: 30,
        }
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// A client gets at most this many notifications within any `per_client_window_secs`,
    /// across every restaurant and campaign; the rest are written to neither sink and recorded
    /// as capped. 0: no cap (nothing of it runs).
    pub per_client_max: u32,
    #[serde_as(as = "DurationSeconds<u64>")]
    pub per_client_window_secs: Duration,
    /// The Kafka writer of each instance hands the broker at most this many notifications a
    /// second (the push provider's quota divided by the instances). 0: no limit.
    pub max_notifications_per_sec: u32,
    /// `HH:MM-HH:MM` in `time_zone` (across midnight when the start is later than the end):
    /// inside it nothing new goes out, and what is due waits for its end. Empty: none.
    pub quiet_hours: String,
    /// The IANA name of the zone `quiet_hours` is read in.
    pub time_zone: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_client_max: 0,
            per_client_window_secs: Duration::from_secs(86_400),
            max_notifications_per_sec: 0,
            quiet_hours: String::new(),
            time_zone: "UTC".into(),
        }
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`. Port 0 picks a free port.
    pub listen: String,
    /// `/healthz` answers 503 once one of the pipeline's loops (the reader, the lease keeper, the
    /// ledger, the lifecycle, a writer) has not turned for this long: the process is wedged and
    /// only a restart cures it. A dependency that is down stops no loop.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub liveness_timeout_secs: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:9898".into(),
            liveness_timeout_secs: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG`, when set, wins.
    pub level: String,
    /// `text` (one readable line per event) or `json` (one JSON object per line, for a log
    /// collector).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::default(),
        }
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a stop waits for in-flight campaigns to reach both sinks.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub grace_period_secs: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period_secs: Duration::from_secs(30),
        }
    }
}
