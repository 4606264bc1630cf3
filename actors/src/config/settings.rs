//! The one translation of the file into what each component takes: [`Settings`], made by
//! [`Config::settings`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::kafka::{ProducerSettings, TransactionalIds};
use crate::lifecycle::{LifecycleSettings, Retention, Window};
use crate::postgres::PostgresSettings;
use crate::quiet::QuietHours;
use crate::reader::ReaderSettings;
use crate::sinks::pg_writer::PerClientCap;
use crate::sinks::WriterSettings;
use crate::supervision::RestartPolicy;

use super::Config;

/// The config as the components take it (see [`Config::settings`]). Not `Debug`: the Postgres
/// URL may hold a password.
#[derive(Clone)]
pub struct Settings {
    pub postgres: PostgresSettings,
    pub create_schema: bool,
    pub reader: ReaderSettings,
    /// Every producer's settings: the Kafka writer's, the dead-letter writer's, recovery's.
    pub producer: ProducerSettings,
    pub output_topic: String,
    /// `None`: unusable messages are only logged and counted.
    pub dead_letter_topic: Option<String>,
    pub max_campaign_bytes: usize,
    /// The most notifications between the join and both sinks' confirmation.
    pub max_notifications_in_flight: usize,
    /// The Kafka, Postgres and dead-letter writers'.
    pub writers: WriterSettings,
    /// This instance's lease: how long it lasts without a renewal.
    pub lease_ttl: Duration,
    /// Set with `kafka.transactions`: the output is written in transactions, each owner's
    /// producer with its own id.
    pub transactional_ids: Option<TransactionalIds>,
    pub ledger_restart: RestartPolicy,
    pub lifecycle: LifecycleSettings,
    pub lifecycle_restart: RestartPolicy,
    /// `[limits] per_client_max` and its window; `None` while it is 0.
    pub per_client_cap: Option<PerClientCap>,
    /// `[limits] max_notifications_per_sec` (0: no limit).
    pub max_notifications_per_sec: u32,
    /// `[limits] quiet_hours` in `time_zone`: inside them nothing new goes out.
    pub quiet: QuietHours,
    /// `[cache]`: the reloads and how the table's changes are followed.
    pub cache: super::sections::CacheConfig,
    /// How they are followed, once the server was asked at start-up (`Ids` until then).
    pub changes: crate::changes::Mode,
    pub cache_restart: RestartPolicy,
    pub http_listen: String,
    /// A loop that has not turned for this long makes `/healthz` fail.
    pub liveness_timeout: Duration,
    pub grace_period: Duration,
}

/// The most due campaigns one instance claims at once (it claims again at once when it got that
/// many and the in-flight budget has room).
const CLAIM_LIMIT: i64 = 250;

impl Config {
    /// What every component is given, translated from the file in this one place.
    pub fn settings(&self) -> Settings {
        let k = &self.kafka;
        let w = &self.writers;
        let restart = self.restart_policy();
        Settings {
            postgres: self.postgres_settings(),
            create_schema: self.postgres.create_schema,
            reader: self.reader_settings(),
            producer: ProducerSettings {
                brokers: k.brokers.clone(),
                message_timeout_ms: w.kafka_message_timeout_ms.as_millis() as u64,
                overrides: self.client_properties(&k.producer),
            },
            output_topic: k.output_topic.clone(),
            dead_letter_topic: (!k.dead_letter_topic.is_empty())
                .then(|| k.dead_letter_topic.clone()),
            max_campaign_bytes: self.enricher.max_campaign_bytes,
            max_notifications_in_flight: w.max_notifications_in_flight,
            writers: WriterSettings {
                batch_max_rows: w.batch_max_rows,
                linger: w.linger_ms,
                stall_after: w.stall_secs,
                restart: restart.clone(),
            },
            lease_ttl: self.ledger.lease_ttl_secs,
            transactional_ids: k
                .transactions
                .then(|| TransactionalIds::for_group(&k.group_id)),
            ledger_restart: restart.clone(),
            lifecycle: self.lifecycle_settings(),
            lifecycle_restart: restart,
            per_client_cap: self.per_client_cap(),
            max_notifications_per_sec: self.limits.max_notifications_per_sec,
            // Checked when the file was loaded (`validate_limits`).
            quiet: QuietHours::parse(&self.limits.quiet_hours, &self.limits.time_zone)
                .unwrap_or_default(),
            cache: self.cache.clone(),
            changes: crate::changes::Mode::Ids,
            cache_restart: self.cache_restart(),
            http_listen: self.http.listen.clone(),
            liveness_timeout: self.http.liveness_timeout_secs,
            grace_period: self.shutdown.grace_period_secs,
        }
    }

    fn postgres_settings(&self) -> PostgresSettings {
        let p = &self.postgres;
        PostgresSettings {
            url: p.url.clone(),
            connect_timeout: p.connect_timeout_secs,
            lock_timeout: p.lock_timeout_secs,
            statement_timeout: p.statement_timeout_secs,
            idle_in_transaction_timeout: p.idle_in_transaction_timeout_secs,
            keepalive_idle: p.keepalive_idle_secs,
            owner: None,
        }
    }

    fn reader_settings(&self) -> ReaderSettings {
        let k = &self.kafka;
        ReaderSettings {
            brokers: k.brokers.clone(),
            topic: k.input_topic.clone(),
            group_id: k.group_id.clone(),
            auto_offset_reset: k.auto_offset_reset.clone(),
            max_in_flight: k.max_in_flight_campaigns,
            orphan_stall: (!k.orphaned_partition_secs.is_zero())
                .then_some(k.orphaned_partition_secs),
            overrides: self.client_properties(&k.consumer),
        }
    }

    /// Every client connects as [kafka.security] says; the section's own properties after.
    fn client_properties(&self, own: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let own = own.iter().map(|(k, v)| (k.clone(), v.clone()));
        self.kafka
            .security
            .properties()
            .into_iter()
            .chain(own)
            .collect()
    }

    fn lifecycle_settings(&self) -> LifecycleSettings {
        let l = &self.lifecycle;
        LifecycleSettings {
            window: Window {
                clock_skew_secs: l.clock_skew_secs.as_secs() as i64,
                end_grace_secs: l.end_grace_secs.as_secs() as i64,
            },
            poll_interval: l.poll_interval_ms,
            claim_limit: CLAIM_LIMIT,
            fire_budget: self.writers.max_notifications_in_flight,
            retain: Retention {
                days: Duration::from_secs(l.retain_days * 86_400),
                cap_window: (self.limits.per_client_max > 0)
                    .then_some(self.limits.per_client_window_secs),
            },
            changes: crate::changes::Mode::Ids,
            changes_keep: self.cache.changes_keep_secs,
        }
    }

    fn per_client_cap(&self) -> Option<PerClientCap> {
        let l = &self.limits;
        (l.per_client_max > 0).then_some(PerClientCap {
            max: l.per_client_max,
            window_secs: l.per_client_window_secs.as_secs() as i64,
        })
    }

    /// The writers', the ledger's and the lifecycle's, limited as `[writers]` says.
    fn restart_policy(&self) -> RestartPolicy {
        let w = &self.writers;
        RestartPolicy {
            backoff_initial: w.restart_backoff_initial_ms,
            backoff_max: w.restart_backoff_max_ms,
            limit: Some(w.restart_limit),
            window: w.restart_window_secs,
        }
    }

    /// Stale beats empty: a cache that cannot reload keeps serving, and never stops the service
    /// (readiness and the snapshot age tell the operator).
    fn cache_restart(&self) -> RestartPolicy {
        RestartPolicy {
            limit: None,
            ..self.restart_policy()
        }
    }
}
