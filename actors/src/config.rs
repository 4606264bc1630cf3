//! Typed configuration: what `config.toml` may say, the defaults for what it does not, the
//! environment overrides, and the cross-field checks made before anything starts.
//!
//! Every section rejects unknown keys, so a typo is an error at start-up instead of a silently
//! ignored setting. Errors name the key (`kafka.brokers: missing field`), because the operator
//! reading them has the file open, not this code. A duration is a `Duration` from the file on
//! (its key still says the unit: `_secs`, `_ms`); each default is written once, in the section's
//! `Default` (or, for the two sections with required keys, its field's `default_*`), and a test
//! holds `config.toml` and docs/configuration.md to them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationMilliSeconds, DurationSeconds};

use crate::kafka::{ProducerSettings, TransactionalIds};
use crate::lifecycle::{LifecycleSettings, Window};
use crate::postgres::PostgresSettings;
use crate::reader::ReaderSettings;
use crate::sinks::WriterSettings;
use crate::supervision::RestartPolicy;

/// Prefix of the environment variables that override config keys:
/// `CAMPAIGN_NOTIFIER__KAFKA__BROKERS` sets `[kafka] brokers`.
pub const ENV_PREFIX: &str = "CAMPAIGN_NOTIFIER__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("environment variable {var} does not name a config key: {reason}")]
    Env { var: String, reason: String },
    #[error("config key {key}: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub enricher: EnricherConfig,
    #[serde(default)]
    pub writers: WritersConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    pub input_topic: String,
    pub output_topic: String,
    pub group_id: String,
    /// Messages the service cannot use (broken, invalid, already over or not yet started) are
    /// written here with the reason in headers. Empty: they are only logged and counted.
    #[serde(default)]
    pub dead_letter_topic: String,
    /// Campaigns read but not yet confirmed by both sinks. When reached, the reader stops pulling
    /// until one completes: this bounds memory while a sink is slow or down.
    #[serde(default = "default_max_in_flight_campaigns")]
    pub max_in_flight_campaigns: usize,
    /// An input partition that is not this instance's, has messages waiting and whose committed
    /// offset has not moved for this many seconds makes the instance rejoin the group, so the
    /// coordinator assigns it again (a dead member's partitions left to nobody). 0: off.
    #[serde(default = "default_orphaned_partition_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub orphaned_partition_secs: Duration,
    /// Where a new consumer group starts: `earliest` or `latest`.
    #[serde(default = "default_auto_offset_reset")]
    pub auto_offset_reset: String,
    /// Write the output topic in Kafka transactions (brokers that have them: Apache Kafka,
    /// Redpanda, the managed services). The broker then fences a stopped instance's producer
    /// when a peer takes its work over, and readers of the output with `isolation.level =
    /// read_committed` never see what it had not committed. Off: the idempotent producer, fenced
    /// by the lease alone (see docs/design.md).
    #[serde(default)]
    pub transactions: bool,
    /// Extra librdkafka properties for the consumer, applied last.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer, applied last.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// How every Kafka client of the service connects: TLS, SASL, or both.
    #[serde(default)]
    pub security: KafkaSecurityConfig,
}

/// How every Kafka client of the service (the reader, the writers, recovery's scan, the start-up
/// check) connects and authenticates, given once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurityConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with a `sasl_*` protocol.
    pub sasl_mechanism: Option<SaslMechanism>,
    pub username: String,
    /// The password itself (best set from the environment, `..._KAFKA__SECURITY__PASSWORD`)...
    pub password: Secret,
    /// ...or a file that holds it (a mounted secret; a final newline is not part of it).
    pub password_file: String,
    /// PEM file of the authorities that signed the brokers' certificates; empty: the system's.
    pub ca_file: String,
    /// PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub certificate_file: String,
    pub key_file: String,
    pub key_password: Secret,
    /// Check that a broker's certificate names the host connected to.
    pub verify_hostname: bool,
}

impl Default for KafkaSecurityConfig {
    fn default() -> Self {
        KafkaSecurityConfig {
            protocol: SecurityProtocol::default(),
            sasl_mechanism: None,
            username: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            ca_file: String::new(),
            certificate_file: String::new(),
            key_file: String::new(),
            key_password: Secret::default(),
            verify_hostname: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    #[serde(alias = "SSL")]
    Ssl,
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value never printed: `Debug` shows `***` (or nothing when it is empty).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Shown as `Debug` shows it: a written config never holds the secret.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The librdkafka properties `[kafka.security]` sets; the service's own: `kafka.consumer` and
/// `kafka.producer` may not set them.
const SECURITY_PROPERTIES: [&str; 9] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
];

impl KafkaSecurityConfig {
    /// The librdkafka properties every client is created with (none for plaintext, librdkafka's
    /// default).
    pub fn properties(&self) -> Vec<(String, String)> {
        if self.protocol == SecurityProtocol::Plaintext {
            return Vec::new();
        }
        let mut p = vec![("security.protocol", self.protocol.as_str().to_string())];
        if self.protocol.sasl() {
            if let Some(mechanism) = self.sasl_mechanism {
                p.push(("sasl.mechanism", mechanism.as_str().to_string()));
            }
            p.push(("sasl.username", self.username.clone()));
            p.push(("sasl.password", self.password.expose().to_string()));
        }
        if self.protocol.tls() {
            let files = [
                ("ssl.ca.location", &self.ca_file),
                ("ssl.certificate.location", &self.certificate_file),
                ("ssl.key.location", &self.key_file),
            ];
            for (key, file) in files {
                if !file.is_empty() {
                    p.push((key, file.clone()));
                }
            }
            if !self.key_password.is_empty() {
                p.push(("ssl.key.password", self.key_password.expose().to_string()));
            }
            let check = if self.verify_hostname {
                "https"
            } else {
                "none"
            };
            p.push(("ssl.endpoint.identification.algorithm", check.to_string()));
        }
        p.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// One line for `check-config`, the password masked.
    pub fn describe(&self) -> String {
        let mut line = format!("protocol={}", self.protocol.as_str());
        if self.protocol.sasl() {
            let mechanism = self.sasl_mechanism.map_or("?", SaslMechanism::as_str);
            let from = match self.password_file.is_empty() {
                true => String::new(),
                false => format!(" (from {})", self.password_file),
            };
            line += &format!(
                " sasl_mechanism={mechanism} username={} password=***{from}",
                self.username
            );
        }
        if self.protocol.tls() {
            let ca = match self.ca_file.is_empty() {
                true => "the system's",
                false => &self.ca_file,
            };
            line += &format!(" ca_file={ca} verify_hostname={}", self.verify_hostname);
            if !self.certificate_file.is_empty() {
                line += &format!(" certificate_file={}", self.certificate_file);
            }
        }
        line
    }

    /// Reads `password_file` into the password.
    fn read_password_file(&mut self) -> Result<(), ConfigError> {
        if self.password_file.is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.password_file).map_err(|e| {
            ConfigError::key(
                "kafka.security.password_file",
                format!("cannot read {}: {e}", self.password_file),
            )
        })?;
        self.password = Secret(text.strip_suffix('\n').unwrap_or(&text).to_string());
        Ok(())
    }

    fn validate(&self, password_given: bool) -> Result<(), ConfigError> {
        let key = |k: &str| format!("kafka.security.{k}");
        if self.protocol.sasl() {
            if self.sasl_mechanism.is_none() {
                return Err(ConfigError::key(
                    &key("sasl_mechanism"),
                    "is required with a sasl_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ));
            }
            if self.username.trim().is_empty() {
                return Err(ConfigError::key(
                    &key("username"),
                    "is required with a sasl_* protocol",
                ));
            }
            // Both given, or neither.
            if password_given != self.password_file.is_empty() {
                return Err(ConfigError::key(
                    &key("password"),
                    "give exactly one of password and password_file with a sasl_* protocol",
                ));
            }
        } else if self.sasl_mechanism.is_some() || !self.username.is_empty() || password_given {
            return Err(ConfigError::key(
                &key("protocol"),
                "is not sasl_plaintext or sasl_ssl, so a SASL mechanism, username or password \
                 would be ignored",
            ));
        }
        let files = [
            ("ca_file", &self.ca_file),
            ("certificate_file", &self.certificate_file),
            ("key_file", &self.key_file),
        ];
        for (name, file) in files {
            if file.is_empty() {
                continue;
            }
            if !self.protocol.tls() {
                return Err(ConfigError::key(
                    &key(name),
                    "is only used with the ssl and sasl_ssl protocols",
                ));
            }
            if let Err(e) = std::fs::metadata(file) {
                return Err(ConfigError::key(
                    &key(name),
                    format!("cannot read {file}: {e}"),
                ));
            }
        }
        if self.certificate_file.is_empty() != self.key_file.is_empty() {
            return Err(ConfigError::key(
                &key("key_file"),
                "certificate_file and key_file go together",
            ));
        }
        Ok(())
    }
}

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`; key=value form is accepted too.
    pub url: String,
    /// Create the two tables and the index when they are missing.
    #[serde(default = "default_true")]
    pub create_schema: bool,
    /// How long a connection attempt may take (unless the URL sets `connect_timeout`).
    #[serde(default = "default_connect_timeout_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub connect_timeout_secs: Duration,
    /// A statement waiting longer than this for a lock another session holds fails and is
    /// retried, so a stopped peer cannot block the writers for longer.
    #[serde(default = "default_lock_timeout_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub lock_timeout_secs: Duration,
    #[serde(default = "default_statement_timeout_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub statement_timeout_secs: Duration,
    /// The server ends a session whose transaction stays open and idle this long (an instance
    /// stopped mid-transaction), releasing its locks.
    #[serde(default = "default_idle_in_transaction_timeout_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub idle_in_transaction_timeout_secs: Duration,
    /// TCP keepalives on both ends of every connection; a vanished peer is noticed after about
    /// three times this.
    #[serde(default = "default_keepalive_idle_secs")]
    #[serde_as(as = "DurationSeconds<u64>")]
    pub keepalive_idle_secs: Duration,
}

// The sections below take every key's default from their one `Default` impl (`#[serde(default)]`
// on the struct): a default is written once, here; config.toml and docs/configuration.md are
// checked against these by `tests::the_shipped_config_and_the_docs_say_the_defaults`.

#[serde_as]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// How often the subscriber snapshot is reloaded from `subscribers_restaurants`.
    #[serde_as(as = "DurationSeconds<u64>")]
    pub refresh_interval_secs: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            refresh_interval_secs: Duration::from_secs(60),
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

/// The most due campaigns one instance claims at once (it claims again at once when it got that
/// many and the in-flight budget has room).
const CLAIM_LIMIT: i64 = 250;

// `[kafka]` and `[postgres]` have required keys, so their other keys take their defaults one
// by one, from these.
fn default_true() -> bool {
    true
}
fn default_max_in_flight_campaigns() -> usize {
    2048
}
fn default_orphaned_partition_secs() -> Duration {
    Duration::from_secs(60)
}
fn default_auto_offset_reset() -> String {
    "earliest".into()
}
fn default_connect_timeout_secs() -> Duration {
    Duration::from_secs(10)
}
fn default_lock_timeout_secs() -> Duration {
    Duration::from_secs(10)
}
fn default_statement_timeout_secs() -> Duration {
    Duration::from_secs(120)
}
fn default_idle_in_transaction_timeout_secs() -> Duration {
    Duration::from_secs(60)
}
fn default_keepalive_idle_secs() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// Reads `path`, applies the `CAMPAIGN_NOTIFIER__*` variables from the process environment,
    /// and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    /// The same as [`Config::load`] on text already read, with the environment given explicitly
    /// so that tests do not depend on the process environment.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_string(),
                    message: e.message().to_string(),
                })?;
        let mut overrides = Vec::new();
        for (var, value) in env {
            if let Some(path) = var.strip_prefix(ENV_PREFIX) {
                overrides.push(apply_override(&mut table, &var, path, &value)?);
            }
        }
        // Each override went in as text. One whose key takes a number or a boolean is read as
        // that, once serde says so: a text key keeps `2024` or `true` as it was written.
        let config: Config = loop {
            match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
                Ok(config) => break config,
                Err(e) => {
                    let at = e.path().to_string();
                    let set_by = overrides.iter_mut().find(|o| o.key.join(".") == at);
                    if let Some(typed) = set_by.and_then(|o| o.typed.take().map(|t| (o, t))) {
                        let (o, typed) = typed;
                        set(&mut table, &o.key, typed);
                        continue;
                    }
                    return Err(key_error(e, &overrides));
                }
            }
        };
        let mut config = config;
        let password_given = !config.kafka.security.password.is_empty();
        config.kafka.security.validate(password_given)?;
        config.kafka.security.read_password_file()?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field and range checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_postgres()?;
        self.validate_ranges()?;
        self.validate_librdkafka()
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

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let non_empty = [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.input_topic", &self.kafka.input_topic),
            ("kafka.output_topic", &self.kafka.output_topic),
            ("kafka.group_id", &self.kafka.group_id),
            ("postgres.url", &self.postgres.url),
        ];
        for (key, value) in non_empty {
            if value.trim().is_empty() {
                return Err(ConfigError::key(key, "must not be empty"));
            }
        }
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

    /// Ranges and cross-field rules, in the order of the file: the first broken one is reported.
    fn validate_ranges(&self) -> Result<(), ConfigError> {
        let (w, ledger) = (&self.writers, &self.ledger);
        let rules = [
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
                self.enricher.max_campaign_bytes < 256,
                "enricher.max_campaign_bytes",
                "must be at least 256",
            ),
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
            (
                !(3..=300).contains(&ledger.lease_ttl_secs.as_secs()),
                "ledger.lease_ttl_secs",
                "must be between 3 and 300",
            ),
            (
                self.lifecycle.clock_skew_secs > Duration::from_secs(3_600),
                "lifecycle.clock_skew_secs",
                "must be at most 3600",
            ),
            (
                self.lifecycle.end_grace_secs > Duration::from_secs(86_400),
                "lifecycle.end_grace_secs",
                "must be at most 86400",
            ),
            (
                !(10..=10_000).contains(&self.lifecycle.poll_interval_ms.as_millis()),
                "lifecycle.poll_interval_ms",
                "must be between 10 and 10000",
            ),
            (
                !(1..=3_650).contains(&self.lifecycle.retain_days),
                "lifecycle.retain_days",
                "must be between 1 and 3650",
            ),
            (
                self.http.listen.parse::<SocketAddr>().is_err(),
                "http.listen",
                "must be an address such as 0.0.0.0:9898",
            ),
            (
                self.http.liveness_timeout_secs
                    < self.postgres.connect_timeout_secs
                        + w.restart_backoff_max_ms
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
        ];
        match rules.into_iter().find(|(broken, _, _)| *broken) {
            Some((_, key, message)) => Err(ConfigError::key(key, message)),
            None => Ok(()),
        }
    }

    /// What every component is given, translated from the file in this one place.
    pub fn settings(&self) -> Settings {
        let k = &self.kafka;
        let w = &self.writers;
        // Every client connects as [kafka.security] says; the section's own properties after.
        let pairs = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
            let own = m.iter().map(|(k, v)| (k.clone(), v.clone()));
            k.security.properties().into_iter().chain(own).collect()
        };
        let (backoff_initial, backoff_max) =
            (w.restart_backoff_initial_ms, w.restart_backoff_max_ms);
        let restart = RestartPolicy {
            backoff_initial,
            backoff_max,
            limit: Some(w.restart_limit),
            window: w.restart_window_secs,
        };
        let p = &self.postgres;
        Settings {
            postgres: PostgresSettings {
                url: p.url.clone(),
                connect_timeout: p.connect_timeout_secs,
                lock_timeout: p.lock_timeout_secs,
                statement_timeout: p.statement_timeout_secs,
                idle_in_transaction_timeout: p.idle_in_transaction_timeout_secs,
                keepalive_idle: p.keepalive_idle_secs,
                owner: None,
            },
            create_schema: self.postgres.create_schema,
            reader: ReaderSettings {
                brokers: k.brokers.clone(),
                topic: k.input_topic.clone(),
                group_id: k.group_id.clone(),
                auto_offset_reset: k.auto_offset_reset.clone(),
                max_in_flight: k.max_in_flight_campaigns,
                orphan_stall: (!k.orphaned_partition_secs.is_zero())
                    .then_some(k.orphaned_partition_secs),
                overrides: pairs(&k.consumer),
            },
            producer: ProducerSettings {
                brokers: k.brokers.clone(),
                message_timeout_ms: w.kafka_message_timeout_ms.as_millis() as u64,
                overrides: pairs(&k.producer),
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
            lifecycle: LifecycleSettings {
                window: Window {
                    clock_skew_secs: self.lifecycle.clock_skew_secs.as_secs() as i64,
                    end_grace_secs: self.lifecycle.end_grace_secs.as_secs() as i64,
                },
                poll_interval: self.lifecycle.poll_interval_ms,
                claim_limit: CLAIM_LIMIT,
                fire_budget: w.max_notifications_in_flight,
                retain: Duration::from_secs(self.lifecycle.retain_days * 86_400),
            },
            lifecycle_restart: restart,
            cache_refresh_interval: self.cache.refresh_interval_secs,
            // Stale beats empty: a cache that cannot reload keeps serving, and never stops the
            // service (readiness and the snapshot age tell the operator).
            cache_restart: RestartPolicy {
                backoff_initial,
                backoff_max,
                limit: None,
                window: w.restart_window_secs,
            },
            http_listen: self.http.listen.clone(),
            liveness_timeout: self.http.liveness_timeout_secs,
            grace_period: self.shutdown.grace_period_secs,
        }
    }
}

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
    pub cache_refresh_interval: Duration,
    pub cache_restart: RestartPolicy,
    pub http_listen: String,
    /// A loop that has not turned for this long makes `/healthz` fail.
    pub liveness_timeout: Duration,
    pub grace_period: Duration,
}

/// An environment override: the key it sets, and the value read as a number or a boolean for
/// when that key turns out to take one.
struct Override {
    var: String,
    key: Vec<String>,
    typed: Option<toml::Value>,
}

/// Sets `a.b.c` from `CAMPAIGN_NOTIFIER__A__B__C`, as text, so that a text key takes any value
/// without quoting (`...__KAFKA__BROKERS=host:9092`, `...__KAFKA__GROUP_ID=2024`).
fn apply_override(
    table: &mut toml::Table,
    var: &str,
    path: &str,
    value: &str,
) -> Result<Override, ConfigError> {
    let key: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    if key.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            reason: "empty key segment".into(),
        });
    }
    let (last, parents) = key.split_last().ok_or_else(|| ConfigError::Env {
        var: var.to_string(),
        reason: "no key after the prefix".into(),
    })?;
    let mut current = &mut *table;
    for section in parents {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            var: var.to_string(),
            reason: format!("{section} is a value, not a section"),
        })?;
    }
    current.insert(last.clone(), toml::Value::String(value.to_string()));
    Ok(Override {
        var: var.to_string(),
        typed: typed_value(value),
        key,
    })
}

/// Puts `value` at `key`, whose sections [`apply_override`] made.
fn set(table: &mut toml::Table, key: &[String], value: toml::Value) {
    let Some((last, parents)) = key.split_last() else {
        return;
    };
    let mut current = table;
    for section in parents {
        match current.get_mut(section).and_then(toml::Value::as_table_mut) {
            Some(inner) => current = inner,
            None => return,
        }
    }
    current.insert(last.clone(), value);
}

/// `value` as a TOML number or boolean, if it is one.
fn typed_value(value: &str) -> Option<toml::Value> {
    let mut doc = format!("v = {value}").parse::<toml::Table>().ok()?;
    match doc.remove("v")? {
        v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)) => Some(v),
        _ => None,
    }
}

/// serde's error, at the key it names; with the variable that set the key, if one did.
fn key_error(
    e: serde_path_to_error::Error<toml::de::Error>,
    overrides: &[Override],
) -> ConfigError {
    let mut key = e.path().to_string();
    let mut message = e.into_inner().message().to_string();
    // serde names a missing field in the message, not the path: put it in the key.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        key = if key == "." {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
    }
    if let Some(o) = overrides.iter().find(|o| o.key.join(".") == key) {
        message = format!("{message} (set by {})", o.var);
    }
    ConfigError::Key { key, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [kafka]
        brokers = "127.0.0.1:9092"
        input_topic = "in"
        output_topic = "out"
        group_id = "g"
        [postgres]
        url = "postgres://postgres@127.0.0.1:5432/postgres"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// Every value of `value` under its dotted key (sections flattened).
    fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (k, v) in table {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }

    /// A value as docs/configuration.md writes it in its default column.
    fn as_documented(value: &toml::Value) -> String {
        match value {
            toml::Value::String(s) if s.is_empty() => "empty".into(),
            toml::Value::String(s) => format!("`{s}`"),
            other => other.to_string(),
        }
    }

    #[test]
    fn the_shipped_config_and_the_docs_say_the_defaults() {
        // Keys whose shipped value is an example rather than a default.
        const EXAMPLES: [&str; 7] = [
            "kafka.brokers",
            "kafka.input_topic",
            "kafka.output_topic",
            "kafka.group_id",
            "kafka.dead_letter_topic",
            "kafka.consumer.fetch.wait.max.ms",
            "postgres.url",
        ];
        let defaults = toml::Value::try_from(load(MINIMAL, &[]).unwrap()).unwrap();
        let mut default_of = BTreeMap::new();
        flatten("", &defaults, &mut default_of);
        let shipped: toml::Table = include_str!("../../config.toml").parse().unwrap();
        let shipped = toml::Value::Table(shipped);
        let mut shipped_of = BTreeMap::new();
        flatten("", &shipped, &mut shipped_of);

        let mut wrong = Vec::new();
        for (key, value) in &shipped_of {
            if EXAMPLES.contains(&key.as_str()) {
                continue;
            }
            match default_of.get(key) {
                Some(default) if default == value => {}
                Some(default) => {
                    wrong.push(format!("config.toml {key} = {value}, default {default}"))
                }
                None => wrong.push(format!("config.toml {key}: no such key with a default")),
            }
        }

        let docs = include_str!("../../docs/configuration.md");
        // A row's keys (`kafka.security.username`, `.password`: the others share the first's
        // section) and its default column.
        let mut rows: BTreeMap<String, &str> = BTreeMap::new();
        for line in docs.lines() {
            let Some(row) = line.strip_prefix("| `") else {
                continue;
            };
            let mut cells = row.splitn(3, " | ");
            let (Some(keys), Some(default)) = (cells.next(), cells.next()) else {
                continue;
            };
            let keys: Vec<&str> = keys.split(", ").map(|k| k.trim_matches('`')).collect();
            let section = keys[0].rsplit_once('.').map_or("", |(s, _)| s);
            for k in &keys {
                let key = match k.strip_prefix('.') {
                    Some(last) => format!("{section}.{last}"),
                    None => k.to_string(),
                };
                // A row of several keys gives the default of none of them.
                rows.insert(key, if keys.len() > 1 { "" } else { default.trim() });
            }
        }
        for (key, default) in &default_of {
            let Some(documented) = rows.get(key) else {
                wrong.push(format!("docs/configuration.md: no row for {key}"));
                continue;
            };
            let expected = as_documented(default);
            let shown = match *documented {
                "" => continue,
                "required" if EXAMPLES.contains(&key.as_str()) => continue,
                d => d,
            };
            if shown != expected && !(expected == "empty" && shown == "the system's") {
                wrong.push(format!(
                    "docs/configuration.md {key}: {shown}, default {expected}"
                ));
            }
        }
        for (key, documented) in &rows {
            if *documented == "required" && !EXAMPLES.contains(&key.as_str()) {
                wrong.push(format!(
                    "docs/configuration.md {key}: required, but it has a default"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.cache.refresh_interval_secs, Duration::from_secs(60));
        assert_eq!(c.http.listen, "0.0.0.0:9898");
        assert_eq!(c.kafka.max_in_flight_campaigns, 2048);
    }

    #[test]
    fn missing_key_is_named() {
        let text = MINIMAL.replace("group_id = \"g\"", "");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.starts_with("config key kafka.group_id:"), "{err}");
        let err = load("[kafka]\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("config key kafka.brokers:"), "{err}");
        let err = load("", &[]).unwrap_err().to_string();
        assert!(err.starts_with("config key kafka:"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_place() {
        let text = format!("{MINIMAL}\n[cache]\nrefresh_interval = 5\n");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(
            err.contains("cache") && err.contains("refresh_interval"),
            "{err}"
        );
    }

    #[test]
    fn mistyped_value_is_named() {
        let text = format!("{MINIMAL}\n[cache]\nrefresh_interval_secs = \"soon\"\n");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("cache.refresh_interval_secs"), "{err}");
    }

    #[test]
    fn env_overrides_strings_numbers_and_new_sections() {
        let c = load(
            MINIMAL,
            &[
                (
                    "CAMPAIGN_NOTIFIER__KAFKA__BROKERS",
                    "kafka-1:9092,kafka-2:9092",
                ),
                ("CAMPAIGN_NOTIFIER__CACHE__REFRESH_INTERVAL_SECS", "5"),
                (
                    "CAMPAIGN_NOTIFIER__POSTGRES__URL",
                    "postgres://app:s3cret@db:5432/app",
                ),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "kafka-1:9092,kafka-2:9092");
        assert_eq!(c.cache.refresh_interval_secs, Duration::from_secs(5));
        assert_eq!(c.postgres.url, "postgres://app:s3cret@db:5432/app");
    }

    #[test]
    fn env_overrides_are_read_as_the_type_of_the_key_they_set() {
        let c = load(
            MINIMAL,
            &[
                ("CAMPAIGN_NOTIFIER__KAFKA__GROUP_ID", "2024"),
                ("CAMPAIGN_NOTIFIER__KAFKA__INPUT_TOPIC", "true"),
                ("CAMPAIGN_NOTIFIER__KAFKA__OUTPUT_TOPIC", "1.5"),
                ("CAMPAIGN_NOTIFIER__POSTGRES__CREATE_SCHEMA", "false"),
                ("CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.group_id, "2024");
        assert_eq!(c.kafka.input_topic, "true");
        assert_eq!(c.kafka.output_topic, "1.5");
        assert!(!c.postgres.create_schema);
        assert_eq!(c.postgres.connect_timeout_secs, Duration::from_secs(7));
    }

    #[test]
    fn env_override_of_the_wrong_type_names_the_key_and_the_variable() {
        let err = load(
            MINIMAL,
            &[("CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS", "soon")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config key postgres.connect_timeout_secs:"),
            "{err}"
        );
        assert!(
            err.ends_with("(set by CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS)"),
            "{err}"
        );
    }

    #[test]
    fn env_override_of_unknown_key_is_an_error() {
        let err = load(MINIMAL, &[("CAMPAIGN_NOTIFIER__KAFKA__BROKER", "x:1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.broker"), "{err}");
    }

    #[test]
    fn cross_field_rules() {
        let same = MINIMAL.replace("output_topic = \"out\"", "output_topic = \"in\"");
        assert!(load(&same, &[])
            .unwrap_err()
            .to_string()
            .contains("kafka.output_topic"));
        let bad_listen = format!("{MINIMAL}\n[http]\nlisten = \"nowhere\"\n");
        assert!(load(&bad_listen, &[])
            .unwrap_err()
            .to_string()
            .contains("http.listen"));
        let tiny_budget = format!("{MINIMAL}\n[writers]\nmax_notifications_in_flight = 999\n");
        assert!(load(&tiny_budget, &[])
            .unwrap_err()
            .to_string()
            .contains("writers.max_notifications_in_flight"));
        let busy_poll = format!("{MINIMAL}\n[lifecycle]\npoll_interval_ms = 1\n");
        assert!(load(&busy_poll, &[])
            .unwrap_err()
            .to_string()
            .contains("lifecycle.poll_interval_ms"));
    }

    #[test]
    fn overrides_that_would_break_the_guarantees_are_refused() {
        let text =
            format!("{MINIMAL}\n[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n");
        let text = text.replace("[postgres]", "[kafka.producer]\n[postgres]");
        let err = load(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("enable.auto.offset.store"), "{err}");
        let ok = format!("{MINIMAL}\n[kafka.consumer]\n\"fetch.wait.max.ms\" = \"10\"\n");
        load(&ok, &[]).unwrap();
    }

    #[test]
    fn settings_carry_the_config_to_every_component() {
        let text = format!(
            "{MINIMAL}\n[kafka.producer]\n\"linger.ms\" = \"1\"\n[writers]\nrestart_limit = 7\n"
        )
        .replace(
            "[postgres]",
            "dead_letter_topic = \"dlq\"\norphaned_partition_secs = 0\n[postgres]",
        );
        let s = load(&text, &[]).unwrap().settings();
        assert_eq!(s.reader.topic, "in");
        assert_eq!(s.reader.orphan_stall, None);
        assert_eq!(s.producer.overrides, vec![("linger.ms".into(), "1".into())]);
        assert_eq!(s.dead_letter_topic.as_deref(), Some("dlq"));
        assert_eq!(s.writers.restart.limit, Some(7));
        assert_eq!(s.max_notifications_in_flight, 200_000);
        assert_eq!(s.ledger_restart, s.writers.restart);
        assert_eq!(
            s.cache_restart.limit, None,
            "the cache never stops the service"
        );
        assert_eq!(s.grace_period, Duration::from_secs(30));
        let none = load(MINIMAL, &[]).unwrap().settings();
        assert_eq!(none.dead_letter_topic, None);
        assert_eq!(none.reader.orphan_stall, Some(Duration::from_secs(60)));
        assert_eq!(
            none.lifecycle.window,
            Window {
                clock_skew_secs: 3,
                end_grace_secs: 0
            }
        );
        assert_eq!(none.lifecycle.poll_interval, Duration::from_millis(250));
        let lifecycle = format!(
            "{MINIMAL}\n[lifecycle]\nclock_skew_secs = 10\nend_grace_secs = 60\npoll_interval_ms = 100\n"
        );
        let l = load(&lifecycle, &[]).unwrap().settings().lifecycle;
        assert_eq!(
            (l.window.clock_skew_secs, l.window.end_grace_secs),
            (10, 60)
        );
        assert_eq!(l.poll_interval, Duration::from_millis(100));
    }

    fn with_security(section: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load(&format!("{MINIMAL}\n[kafka.security]\n{section}"), env)
    }

    #[test]
    fn kafka_security_reaches_every_client_and_its_password_is_never_shown() {
        let ca = std::env::temp_dir().join(format!("cn-config-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "not checked here").unwrap();
        let c = with_security(
            &format!(
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
                 username = \"svc\"\nca_file = \"{}\"\n",
                ca.display()
            ),
            &[("CAMPAIGN_NOTIFIER__KAFKA__SECURITY__PASSWORD", "12345")],
        )
        .unwrap();
        let settings = c.settings();
        let expected = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("sasl.password", "12345"),
            ("ssl.ca.location", &ca.display().to_string()),
            ("ssl.endpoint.identification.algorithm", "https"),
        ];
        for overrides in [&settings.reader.overrides, &settings.producer.overrides] {
            for (key, value) in expected {
                assert!(
                    overrides.iter().any(|(k, v)| k == key && v == value),
                    "{key} missing"
                );
            }
        }
        // Recovery's scan and the start-up check take the producer's connection settings.
        let shared: Vec<_> = settings.producer.connection_overrides().collect();
        assert!(shared.contains(&("sasl.password", "12345")));
        assert!(!format!("{c:?}").contains("12345"));
        assert!(!format!("{:?}", settings.producer).contains("12345"));
        assert!(!format!("{:?}", settings.reader).contains("12345"));
        assert!(format!("{:?}", settings.reader).contains(r#"("sasl.password", "***")"#));
        assert!(!c.kafka.security.describe().contains("12345"));
        assert!(c.kafka.security.describe().contains("password=***"));
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn kafka_password_file_is_read_without_its_final_newline() {
        let file = std::env::temp_dir().join(format!("cn-config-pw-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").unwrap();
        let section = format!(
            "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"svc\"\n\
             password_file = \"{}\"\n",
            file.display()
        );
        let c = with_security(&section, &[]).unwrap();
        assert_eq!(c.kafka.security.password.expose(), "s3cret");
        assert!(c
            .kafka
            .security
            .describe()
            .contains(&format!("(from {})", file.display())));
        let _ = std::fs::remove_file(&file);
        let err = with_security(&section, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("config key kafka.security.password_file: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn kafka_security_rules() {
        let cases = [
            ("protocol = \"sasl_ssl\"\n", "kafka.security.sasl_mechanism"),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\npassword = \"p\"\n",
                "kafka.security.username",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\n",
                "kafka.security.password",
            ),
            (
                "protocol = \"sasl_ssl\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\n\
                 password = \"p\"\npassword_file = \"/p\"\n",
                "kafka.security.password",
            ),
            ("username = \"u\"\n", "kafka.security.protocol"),
            (
                "protocol = \"sasl_plaintext\"\nsasl_mechanism = \"GSSAPI\"\n",
                "kafka.security.sasl_mechanism",
            ),
            ("protocol = \"tls\"\n", "kafka.security.protocol"),
            (
                "protocol = \"ssl\"\nca_file = \"/no/such/ca.pem\"\n",
                "kafka.security.ca_file",
            ),
            ("ca_file = \"/etc/hostname\"\n", "kafka.security.ca_file"),
            (
                "protocol = \"ssl\"\ncertificate_file = \"/etc/hostname\"\n",
                "kafka.security.key_file",
            ),
        ];
        for (section, key) in cases {
            let err = with_security(section, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config key {key}")),
                "{section}: {err}"
            );
        }
        let err = load(
            &format!("{MINIMAL}\n[kafka.producer]\n\"sasl.password\" = \"p\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is set by [kafka.security]"), "{err}");
        // Upper-case names as librdkafka writes them are taken too.
        let c = with_security("protocol = \"SSL\"\nverify_hostname = false\n", &[]).unwrap();
        assert!(c.settings().producer.overrides.contains(&(
            "ssl.endpoint.identification.algorithm".into(),
            "none".into()
        )));
    }

    #[test]
    fn librdkafka_properties_librdkafka_refuses_are_config_errors() {
        let cases = [
            (
                "[kafka.producer]\n\"compression.type\" = \"bogus\"\n",
                "kafka.producer",
            ),
            (
                "[kafka.consumer]\n\"no.such.property\" = \"1\"\n",
                "kafka.consumer",
            ),
            (
                "[kafka.consumer]\n\"fetch.wait.max.ms\" = \"soon\"\n",
                "kafka.consumer",
            ),
        ];
        for (section, key) in cases {
            let err = load(&format!("{MINIMAL}\n{section}"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("config key {key}:")),
                "{section}: {err}"
            );
        }
    }

    #[test]
    fn the_settle_time_follows_the_producer_timeout_in_force_and_no_limit_is_refused() {
        let timeout_of = |producer: &str| {
            load(&format!("{MINIMAL}\n[kafka.producer]\n{producer}"), &[])
                .map(|c| c.settings().producer.effective_message_timeout())
        };
        assert_eq!(timeout_of("").unwrap(), Some(Duration::from_secs(30)));
        // librdkafka's other name of the same property counts, and the last one set wins.
        assert_eq!(
            timeout_of("\"delivery.timeout.ms\" = \"90000\"\n").unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            timeout_of("\"delivery.timeout.ms\" = \"90000\"\n\"message.timeout.ms\" = \"45000\"\n")
                .unwrap(),
            Some(Duration::from_secs(45))
        );
        let err = timeout_of("\"message.timeout.ms\" = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no limit"), "{err}");
    }

    #[test]
    fn the_lease_is_bounded_and_the_old_takeover_key_is_accepted() {
        let c = load(
            &format!("{MINIMAL}\n[ledger]\ntakeover_after_secs = 120\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.settings().lease_ttl, Duration::from_secs(10));
        assert_eq!(c.ledger.takeover_after_secs, Some(120));
        for ttl in [0, 2, 301] {
            let err = load(
                &format!("{MINIMAL}\n[ledger]\nlease_ttl_secs = {ttl}\n"),
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("config key ledger.lease_ttl_secs:"),
                "{err}"
            );
        }
        let err = load(
            &format!("{MINIMAL}\n[http]\nliveness_timeout_secs = 15\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("config key http.liveness_timeout_secs:"),
            "{err}"
        );
    }

    #[test]
    fn transactions_give_each_owner_its_own_id_which_no_override_may_set() {
        let c = load(
            MINIMAL,
            &[("CAMPAIGN_NOTIFIER__KAFKA__TRANSACTIONS", "true")],
        )
        .unwrap();
        let ids = c.settings().transactional_ids.expect("transactional");
        assert_eq!(
            ids.of(7),
            format!("campaign-notifier-{}-owner-7", c.kafka.group_id)
        );
        assert_eq!(
            load(MINIMAL, &[]).unwrap().settings().transactional_ids,
            None
        );
        let err = load(
            &format!("{MINIMAL}\n[kafka.producer]\n\"transactional.id\" = \"mine\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("set by the service"), "{err}");
    }

    #[test]
    fn shipped_config_file_is_valid() {
        let text = include_str!("../../config.toml");
        load(text, &[]).unwrap();
    }
}
