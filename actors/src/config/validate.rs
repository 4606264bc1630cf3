//! The checks serde cannot express: keys that must not be empty, values in range, keys that must
//! agree with each other, librdkafka properties the service sets itself, and librdkafka's own
//! check of the properties the clients get. Each group is its own function; they run in the
//! order of the file, and the first broken rule is the error.

use std::net::SocketAddr;
use std::time::Duration;

use super::kafka_security::SECURITY_PROPERTIES;
use super::{Config, ConfigError};
use crate::quiet::{QuietHours, QuietHoursError};

/// A replication slot's or a publication's name as the server takes it unquoted.
fn is_identifier(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A range rule: whether it is broken, the key it names, and what the key must be.
type Rule = (bool, &'static str, &'static str);

impl Config {
    /// Cross-field and range checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_required()?;
        self.validate_kafka()?;
        self.validate_postgres()?;
        self.validate_ranges()?;
        self.validate_limits()?;
        self.validate_librdkafka()
    }

    /// The keys without a default that an empty value would leave unset all the same.
    fn validate_required(&self) -> Result<(), ConfigError> {
        let non_empty = [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.input_topic", &self.kafka.input_topic),
            ("kafka.output_topic", &self.kafka.output_topic),
            ("kafka.group_id", &self.kafka.group_id),
            ("postgres.url", &self.postgres.url),
        ];
        match non_empty
            .into_iter()
            .find(|(_, value)| value.trim().is_empty())
        {
            Some((key, _)) => Err(ConfigError::key(key, "must not be empty")),
            None => Ok(()),
        }
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        if self
            .settings()
            .producer
            .effective_message_timeout()
            .is_some_and(|t| t.is_zero())
        {
            return Err(ConfigError::key(
                "kafka.producer.\"message.timeout.ms\"",
                "0 (no limit) would let a stopped instance's sends arrive at any time, so no \
                 other instance could ever take its work over safely",
            ));
        }
        if self.kafka.input_topic == self.kafka.output_topic {
            return Err(ConfigError::key(
                "kafka.output_topic",
                "must differ from kafka.input_topic, or every notification would be read back as a campaign",
            ));
        }
        if !matches!(self.kafka.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(ConfigError::key(
                "kafka.auto_offset_reset",
                "must be \"earliest\" or \"latest\"",
            ));
        }
        self.validate_client_overrides()
    }

    /// `kafka.consumer` and `kafka.producer` may not set what the service or `[kafka.security]`
    /// sets.
    fn validate_client_overrides(&self) -> Result<(), ConfigError> {
        // These carry the delivery guarantee; an override would silently break it.
        for key in [
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
            "bootstrap.servers",
        ] {
            if self.kafka.consumer.contains_key(key) {
                return Err(ConfigError::key(
                    &format!("kafka.consumer.\"{key}\""),
                    "is set by the service (use the kafka section's own keys) and cannot be overridden",
                ));
            }
        }
        for (section, map) in [
            ("consumer", &self.kafka.consumer),
            ("producer", &self.kafka.producer),
        ] {
            if let Some(key) = SECURITY_PROPERTIES.iter().find(|k| map.contains_key(**k)) {
                return Err(ConfigError::key(
                    &format!("kafka.{section}.\"{key}\""),
                    "is set by [kafka.security], for every client at once",
                ));
            }
        }
        for key in [
            "enable.idempotence",
            "acks",
            "bootstrap.servers",
            "transactional.id",
        ] {
            if self.kafka.producer.contains_key(key) {
                return Err(ConfigError::key(
                    &format!("kafka.producer.\"{key}\""),
                    "is set by the service and cannot be overridden",
                ));
            }
        }
        Ok(())
    }

    fn validate_postgres(&self) -> Result<(), ConfigError> {
        let p = &self.postgres;
        let (url, tls) = crate::postgres::tls::split(&p.url)
            .map_err(|reason| ConfigError::key("postgres.url", reason))?;
        if url.parse::<tokio_postgres::Config>().is_err() {
            return Err(ConfigError::key(
                "postgres.url",
                "is not a valid Postgres connection string",
            ));
        }
        if let Some(file) = &tls.root_cert {
            if let Err(e) = std::fs::metadata(file) {
                return Err(ConfigError::key(
                    "postgres.url",
                    format!("sslrootcert {file}: {e}"),
                ));
            }
        }
        // 0 would mean "no limit" to Postgres: a stopped peer could block a writer forever.
        let limits = [
            (p.connect_timeout_secs, "postgres.connect_timeout_secs"),
            (p.lock_timeout_secs, "postgres.lock_timeout_secs"),
            (p.statement_timeout_secs, "postgres.statement_timeout_secs"),
            (
                p.idle_in_transaction_timeout_secs,
                "postgres.idle_in_transaction_timeout_secs",
            ),
            (p.keepalive_idle_secs, "postgres.keepalive_idle_secs"),
        ];
        match limits.into_iter().find(|(timeout, _)| timeout.is_zero()) {
            Some((_, key)) => Err(ConfigError::key(key, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// Ranges and cross-field rules, in the order of the file: the first broken one is reported.
    fn validate_ranges(&self) -> Result<(), ConfigError> {
        let mut rules = (self.intake_rules().into_iter())
            .chain(self.writers_rules())
            .chain(self.lease_and_lifecycle_rules())
            .chain(self.limits_rules())
            .chain(self.http_and_log_rules());
        match rules.find(|(broken, _, _)| *broken) {
            Some((_, key, message)) => Err(ConfigError::key(key, message)),
            None => Ok(()),
        }
    }

    /// What the reader holds and the enricher takes.
    fn intake_rules(&self) -> [Rule; 8] {
        let c = &self.cache;
        [
            (
                self.kafka.max_in_flight_campaigns == 0,
                "kafka.max_in_flight_campaigns",
                "must be at least 1",
            ),
            (
                self.cache.refresh_interval_secs.is_zero(),
                "cache.refresh_interval_secs",
                "must be at least 1",
            ),
            (
                c.changes_reload_interval_secs.is_zero(),
                "cache.changes_reload_interval_secs",
                "must be at least 1",
            ),
            (
                c.changes_poll_interval_ms < Duration::from_millis(10),
                "cache.changes_poll_interval_ms",
                "must be at least 10",
            ),
            (
                c.changes_keep_secs < Duration::from_secs(60),
                "cache.changes_keep_secs",
                "must be at least 60",
            ),
            (
                !is_identifier(&c.slot),
                "cache.slot",
                "must be 1 to 63 lowercase letters, digits or underscores",
            ),
            (
                !is_identifier(&c.publication),
                "cache.publication",
                "must be 1 to 63 lowercase letters, digits or underscores",
            ),
            (
                self.enricher.max_campaign_bytes < 256,
                "enricher.max_campaign_bytes",
                "must be at least 256",
            ),
        ]
    }

    fn writers_rules(&self) -> [Rule; 5] {
        let w = &self.writers;
        [
            (
                w.batch_max_rows == 0,
                "writers.batch_max_rows",
                "must be at least 1",
            ),
            (
                w.stall_secs.is_zero(),
                "writers.stall_secs",
                "must be at least 1",
            ),
            (
                w.max_notifications_in_flight < 1_000,
                "writers.max_notifications_in_flight",
                "must be at least 1000",
            ),
            (
                w.restart_backoff_initial_ms.is_zero()
                    || w.restart_backoff_initial_ms > w.restart_backoff_max_ms,
                "writers.restart_backoff_initial_ms",
                "must be at least 1 and not above writers.restart_backoff_max_ms",
            ),
            (
                w.restart_limit == 0 || w.restart_window_secs.is_zero(),
                "writers.restart_limit",
                "writers.restart_limit and writers.restart_window_secs must be at least 1",
            ),
        ]
    }

    fn lease_and_lifecycle_rules(&self) -> [Rule; 5] {
        let lifecycle = &self.lifecycle;
        [
            (
                !(3..=300).contains(&self.ledger.lease_ttl_secs.as_secs()),
                "ledger.lease_ttl_secs",
                "must be between 3 and 300",
            ),
            (
                lifecycle.clock_skew_secs > Duration::from_secs(3_600),
                "lifecycle.clock_skew_secs",
                "must be at most 3600",
            ),
            (
                lifecycle.end_grace_secs > Duration::from_secs(86_400),
                "lifecycle.end_grace_secs",
                "must be at most 86400",
            ),
            (
                !(10..=10_000).contains(&lifecycle.poll_interval_ms.as_millis()),
                "lifecycle.poll_interval_ms",
                "must be between 10 and 10000",
            ),
            (
                !(1..=3_650).contains(&lifecycle.retain_days),
                "lifecycle.retain_days",
                "must be between 1 and 3650",
            ),
        ]
    }

    fn limits_rules(&self) -> [Rule; 2] {
        let l = &self.limits;
        [
            (
                l.per_client_max > 10_000,
                "limits.per_client_max",
                "must be at most 10000 (0: no cap)",
            ),
            (
                l.per_client_max > 0 && l.per_client_window_secs.is_zero(),
                "limits.per_client_window_secs",
                "must be at least 1 when limits.per_client_max is set",
            ),
        ]
    }

    fn http_and_log_rules(&self) -> [Rule; 3] {
        [
            (
                self.http.listen.parse::<SocketAddr>().is_err(),
                "http.listen",
                "must be an address such as 0.0.0.0:9898",
            ),
            (
                self.http.liveness_timeout_secs
                    < self.postgres.connect_timeout_secs
                        + self.writers.restart_backoff_max_ms
                        + Duration::from_secs(10),
                "http.liveness_timeout_secs",
                "must be at least postgres.connect_timeout_secs plus writers.restart_backoff_max_ms \
                 plus 10 s: a loop that is reconnecting does not turn for that long",
            ),
            (
                !matches!(
                    self.log.level.as_str(),
                    "error" | "warn" | "info" | "debug" | "trace" | "off"
                ),
                "log.level",
                "must be one of error, warn, info, debug, trace, off",
            ),
        ]
    }

    /// `[limits]`: the quiet hours' window and zone.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        match QuietHours::parse(&l.quiet_hours, &l.time_zone) {
            Ok(_) => Ok(()),
            Err(e @ QuietHoursError::Zone { .. }) => {
                Err(ConfigError::key("limits.time_zone", e.to_string()))
            }
            Err(e) => Err(ConfigError::key("limits.quiet_hours", e.to_string())),
        }
    }

    /// librdkafka's own check of every property the clients are given (an unknown name, a value
    /// it refuses, a codec it was built without), made without connecting: such a config is an
    /// error here, not a writer that retries it for ever.
    fn validate_librdkafka(&self) -> Result<(), ConfigError> {
        let settings = self.settings();
        let clients = [
            ("kafka.consumer", settings.reader.client_config()),
            ("kafka.producer", settings.producer.client_config()),
        ];
        for (key, cc) in clients {
            if let Err(e) = cc.create_native_config() {
                return Err(ConfigError::key(key, format!("librdkafka refuses it: {e}")));
            }
        }
        Ok(())
    }
}
