//! `[postgres]`: the connection string and the time limits every session is given.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationSeconds};

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

// `[postgres]` has a required key, so its other keys take their defaults one by one, from these.
fn default_true() -> bool {
    true
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
