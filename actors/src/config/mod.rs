//! Typed configuration: what `config.toml` may say, the defaults for what it does not, the
//! environment overrides, and the cross-field checks made before anything starts.
//!
//! Every section rejects unknown keys, so a typo is an error at start-up instead of a silently
//! ignored setting. Errors name the key (`kafka.brokers: missing field`), because the operator
//! reading them has the file open, not this code. A duration is a `Duration` from the file on
//! (its key still says the unit: `_secs`, `_ms`); each default is written once, in the section's
//! `Default` (or, for the two sections with required keys, its field's `default_*`), and a test
//! holds `config.toml` and docs/configuration.md to them.
//!
//! Here: [`Config`], the file's root, and loading it. Its parts:
//! - `kafka`, `postgres`: the two sections with required keys;
//! - `kafka_security`: `[kafka.security]`, and the librdkafka properties it gives every client;
//! - `sections`: the sections whose every key has a default (`[cache]` to `[shutdown]`, `[limits]`
//!   among them);
//! - `env`: the `CAMPAIGN_NOTIFIER__*` environment overrides, applied over the file;
//! - `validate`: the checks serde cannot express, one function per group of rules;
//! - `settings`: the one translation into what the components take, [`Settings`].

use std::path::Path;

use serde::{Deserialize, Serialize};

mod env;
mod kafka;
mod kafka_security;
mod postgres;
mod sections;
mod settings;
#[cfg(test)]
mod tests;
mod validate;

pub use env::ENV_PREFIX;
pub use kafka::KafkaConfig;
pub use kafka_security::{KafkaSecurityConfig, SaslMechanism, Secret, SecurityProtocol};
pub use postgres::PostgresConfig;
pub use sections::{
    CacheConfig, EnricherConfig, HttpConfig, LedgerConfig, LifecycleConfig, LimitsConfig,
    LogConfig, LogFormat, ShutdownConfig, WritersConfig,
};
pub use settings::Settings;

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
    pub limits: LimitsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
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
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_string(),
                    message: e.message().to_string(),
                })?;
        let mut config = env::read(table, env)?;
        let password_given = !config.kafka.security.password.is_empty();
        config.kafka.security.validate(password_given)?;
        config.kafka.security.read_password_file()?;
        config.validate()?;
        Ok(config)
    }
}
