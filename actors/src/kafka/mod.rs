//! Kafka as the service produces to it and reads its own output back: one path for every
//! producer, one classification of errors.
//!
//! [`producer`] is the only place a record is handed to librdkafka: the notification writer, the
//! dead-letter writer and recovery all use it, so a full queue, a refused record and a flush are
//! handled the same way everywhere. [`scan`] reads the output topic back to find which
//! notifications already landed. [`access`] checks at start-up that the brokers take the
//! service's credentials and certificates. The settings of the clients they create are built here.
//!
//! Must not touch: offsets of the input topic (the reader's), Postgres, or the order of writes
//! across sinks.

pub mod access;
pub mod producer;
pub mod scan;

use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub use producer::{Chunk, Producer};

/// librdkafka properties as `Debug` shows them: every password as `***`.
pub struct ShownProperties<'a>(pub &'a [(String, String)]);

impl std::fmt::Debug for ShownProperties<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.iter().map(|(k, v)| match k.ends_with("password") {
            true => (k.as_str(), "***"),
            false => (k.as_str(), v.as_str()),
        });
        f.debug_list().entries(shown).finish()
    }
}

/// The settings every producer of the service shares.
#[derive(Clone)]
pub struct ProducerSettings {
    pub brokers: String,
    pub message_timeout_ms: u64,
    /// librdkafka properties applied after the service's own, so an operator can tune anything
    /// the config check allows.
    pub overrides: Vec<(String, String)>,
}

impl std::fmt::Debug for ProducerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerSettings")
            .field("brokers", &self.brokers)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("overrides", &ShownProperties(&self.overrides))
            .finish()
    }
}

impl ProducerSettings {
    pub fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            // Idempotence: librdkafka's own retries never duplicate or reorder a notification.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", self.message_timeout_ms.to_string());
        for (k, v) in &self.overrides {
            cc.set(k, v);
        }
        cc
    }

    /// The message timeout librdkafka will use: the service's, unless an override sets
    /// `message.timeout.ms` or its other name `delivery.timeout.ms` (set in order, the last
    /// wins). `None` when an override is not a number (librdkafka's own check refuses it). No
    /// produce request of this producer lands later than this after its record was handed over
    /// (librdkafka gives a request the deadline of its first message), which is what a peer
    /// waits for before it takes a dead owner's work over.
    pub fn effective_message_timeout(&self) -> Option<Duration> {
        let mut ms = self.message_timeout_ms;
        for (k, v) in &self.overrides {
            if k == "message.timeout.ms" || k == "delivery.timeout.ms" {
                ms = v.trim().parse().ok()?;
            }
        }
        Some(Duration::from_millis(ms))
    }

    /// The overrides that say how to reach and authenticate to the cluster, for the other clients
    /// the service creates against the same brokers (the read-back scan).
    pub fn connection_overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.overrides
            .iter()
            .filter(|(k, _)| {
                k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.")
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// What kind of failure a Kafka error is, which decides what is done about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The connection or the broker failed: the same records may pass later.
    Retriable,
    /// The record itself was refused: sending it again fails again.
    Permanent,
    /// The client, the topic or the credentials are wrong: nothing passes until an operator acts.
    Configuration,
    /// Nothing was handed to librdkafka: this process's lease is not valid (see
    /// [`crate::lease`]). The same records go once it is renewed, or never, if fenced.
    Lapsed,
    /// The broker fenced this producer: another instance took its transactional id over (it took
    /// this owner's work over). Nothing of its open transaction will ever be read committed.
    Fenced,
}

/// A Kafka error, classified, with librdkafka's code when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KafkaFailure {
    pub class: FailureClass,
    pub code: Option<RDKafkaErrorCode>,
    pub message: String,
}

impl KafkaFailure {
    pub fn retriable(message: impl Into<String>) -> KafkaFailure {
        KafkaFailure {
            class: FailureClass::Retriable,
            code: None,
            message: message.into(),
        }
    }

    pub fn lapsed(lapsed: crate::lease::Lapsed) -> KafkaFailure {
        KafkaFailure {
            class: FailureClass::Lapsed,
            code: None,
            message: lapsed.to_string(),
        }
    }

    pub fn configuration(message: impl Into<String>) -> KafkaFailure {
        KafkaFailure {
            class: FailureClass::Configuration,
            code: None,
            message: message.into(),
        }
    }
}

/// Classifies a librdkafka error: errors about the record are permanent, errors about the setup
/// are configuration, a producer fenced by the broker is fenced, anything else (connections,
/// timeouts, leaders moving, a transaction to abort) is retriable.
pub fn classify(e: &KafkaError) -> KafkaFailure {
    use RDKafkaErrorCode as C;
    let code = e.rdkafka_error_code();
    let class = match (e, code) {
        (KafkaError::ClientCreation(_), _) => FailureClass::Configuration,
        (_, Some(C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch)) => FailureClass::Fenced,
        (KafkaError::Transaction(t), _) if t.is_fatal() => FailureClass::Configuration,
        (
            _,
            Some(
                C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::InvalidTimestamp,
            ),
        ) => FailureClass::Permanent,
        (
            _,
            Some(
                C::Authentication
                | C::SaslAuthenticationFailed
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::UnknownTopic
                | C::InvalidConfig
                // A batch over the topic's limit: every large write fails the same way,
                // whatever is in it.
                | C::MessageBatchTooLarge
                | C::UnsupportedCompressionType,
            ),
        ) => FailureClass::Configuration,
        _ => FailureClass::Retriable,
    };
    KafkaFailure {
        class,
        code,
        message: e.to_string(),
    }
}

/// The transactional ids of a deployment's owners, when its output is written in transactions:
/// one per owner, so that a peer that takes an owner's work over can fence that owner's producer
/// by initialising the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionalIds {
    prefix: String,
}

impl TransactionalIds {
    /// The ids of the instances of consumer group `group_id`.
    pub fn for_group(group_id: &str) -> TransactionalIds {
        TransactionalIds {
            prefix: format!("campaign-notifier-{group_id}-owner-"),
        }
    }

    pub fn of(&self, owner: i32) -> String {
        format!("{}{owner}", self.prefix)
    }
}

/// librdkafka's default partitioner (`consistent_random`) for a non-empty key: CRC-32 of the key
/// modulo the partition count.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (crc32fast::hash(key) % partitions.max(1) as u32) as i32
}

/// The partition ids of `topic` (none when it does not exist). Blocking: call it from a blocking
/// thread.
pub fn partition_ids<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaFailure> {
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| KafkaFailure::retriable(format!("cannot reach the brokers: {e}")))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    /// The Kafka writer places notifications itself; a client must land where librdkafka's
    /// default partitioner puts the same key (recovery's sends rely on that partitioner).
    #[test]
    fn partition_for_matches_librdkafkas_default_partitioner() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("placement", 7, 1).expect("topic");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let keys: Vec<String> = (0..200)
            .map(|i| format!("20000000-0000-4000-8000-{i:012}"))
            .chain(["x".to_string(), "client with spaces".to_string()])
            .collect();
        let mut seen = std::collections::HashSet::new();
        runtime.block_on(async {
            for key in &keys {
                let record = FutureRecord::to("placement")
                    .payload("{}")
                    .key(key.as_bytes());
                let partition = producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .expect("delivered")
                    .partition;
                assert_eq!(partition, partition_for(key.as_bytes(), 7), "key {key}");
                seen.insert(partition);
            }
        });
        assert_eq!(seen.len(), 7, "the keys should cover every partition");
    }

    #[test]
    fn errors_about_the_record_are_permanent_and_about_the_setup_configuration() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageSizeTooLarge)).class,
            FailureClass::Permanent
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::TopicAuthorizationFailed)).class,
            FailureClass::Configuration
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageBatchTooLarge)).class,
            FailureClass::Configuration,
            "a limit every large write hits is not one campaign's fault"
        );
        assert_eq!(
            classify(&produce(RDKafkaErrorCode::MessageTimedOut)).class,
            FailureClass::Retriable
        );
        assert_eq!(
            classify(&KafkaError::ClientCreation("bad property".into())).class,
            FailureClass::Configuration
        );
        let refused = classify(&produce(RDKafkaErrorCode::InvalidRecord));
        assert_eq!(refused.code, Some(RDKafkaErrorCode::InvalidRecord));
    }

    #[test]
    fn only_connection_settings_are_shared_with_the_scan() {
        let settings = ProducerSettings {
            brokers: "b:9092".into(),
            message_timeout_ms: 1_000,
            overrides: vec![
                ("linger.ms".into(), "1".into()),
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("ssl.ca.location".into(), "/ca.pem".into()),
            ],
        };
        let shared: Vec<&str> = settings.connection_overrides().map(|(k, _)| k).collect();
        assert_eq!(
            shared,
            ["security.protocol", "sasl.mechanism", "ssl.ca.location"]
        );
    }
}
