//! `[kafka]`: the brokers, the topics, the consumer group, and the extra librdkafka properties of
//! the consumer and the producer. How the clients connect is `[kafka.security]`, in
//! `kafka_security`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_with::{serde_as, DurationSeconds};

use super::KafkaSecurityConfig;

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

// `[kafka]` has required keys, so its other keys take their defaults one by one, from these.
fn default_max_in_flight_campaigns() -> usize {
    2048
}
fn default_orphaned_partition_secs() -> Duration {
    Duration::from_secs(60)
}
fn default_auto_offset_reset() -> String {
    "earliest".into()
}
