//! `KafkaWriter`: produces each notification to the output topic, keyed by `client_id`.
//!
//! It sends exactly the rows the Postgres writer has just inserted and marked in the ledger.
//! librdkafka batches, retries and reconnects by itself (idempotent producer); the writer
//! restarts (new producer) only when a delivery fails after `message.timeout.ms`, and then first
//! reads back the output topic for the notifications of the jobs it held (a notification is
//! identified by its restaurant, campaign and client, as in the Postgres key), so what did land is
//! not sent twice.
//!
//! The writer picks each notification's partition itself, with librdkafka's default partitioner
//! ([`partition_for`]), and hands librdkafka one chunk per partition at a time: the next chunk of a
//! partition goes out when the previous one is acknowledged, while all partitions proceed at
//! once. librdkafka's idempotent producer keeps a single produce request in flight per partition,
//! and while it waits for the answer with more messages of that partition queued and due, its
//! broker thread polls without sleeping; against Tansu, handing over everything at once cost
//! about 16 CPU seconds per million messages, chunk by chunk about 1.6, at the same rate
//! (`scripts/bench.sh --example producer_chunking`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::lock::Mutex;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::notification::NotificationBatch;
use crate::sinks::{LocalFuture, Rows, Sink, SinkError, Writer};

/// The notifications of one campaign that Kafka still needs.
#[derive(Debug)]
pub struct KafkaJob {
    pub batch: Arc<NotificationBatch>,
    /// The clients the Postgres writer has just inserted rows for.
    pub clients: Vec<String>,
    /// When the job was made (ms since the epoch): no copy of it can be in the topic from
    /// before.
    pub created_ms: i64,
}

impl Rows for KafkaJob {
    fn rows(&self) -> usize {
        self.clients.len()
    }
}

pub type KafkaWriter = Writer<KafkaSink>;

/// A chunk handed to librdkafka for one partition holds at most this many notifications and
/// bytes, so that it fits one produce request (librdkafka's `batch.num.messages` is 10 000 here and
/// `batch.size` and `message.max.bytes` default to 1 000 000).
pub const CHUNK_MESSAGES: usize = 5_000;
pub const CHUNK_BYTES: usize = 900_000;

/// librdkafka's default partitioner (`consistent_random`) for a non-empty key: CRC-32 of the key
/// modulo the partition count.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (crc32fast::hash(key) % partitions.max(1) as u32) as i32
}

#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    pub topic: String,
    pub message_timeout_ms: u64,
    /// librdkafka properties applied after the service's own, so an operator can tune anything.
    pub overrides: Vec<(String, String)>,
}

impl KafkaSinkConfig {
    pub fn from_config(c: &crate::config::Config) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: c.kafka.brokers.clone(),
            topic: c.kafka.output_topic.clone(),
            message_timeout_ms: c.writers.kafka_message_timeout_ms,
            overrides: c
                .kafka
                .producer
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

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
}

/// Sends one partition's share of a write, a chunk at a time, each chunk acknowledged before the
/// next is handed over (see the module's documentation).
async fn send_partition(
    producer: &FutureProducer,
    topic: &str,
    gate: &Mutex<()>,
    partition: i32,
    jobs: &[Arc<KafkaJob>],
    notifications: &[(usize, usize)],
) -> Result<(), SinkError> {
    let _gate = gate.lock().await;
    let mut payload = Vec::with_capacity(512);
    let mut rest = notifications;
    while !rest.is_empty() {
        let mut deliveries = Vec::with_capacity(rest.len().min(CHUNK_MESSAGES));
        let mut bytes = 0;
        for &(j, c) in rest {
            if deliveries.len() == CHUNK_MESSAGES || bytes >= CHUNK_BYTES {
                break;
            }
            let job = &jobs[j];
            let client = &job.clients[c];
            payload.clear();
            job.batch.write_json_for(client, &mut payload);
            bytes += payload.len() + client.len();
            // librdkafka copies key and payload, so the buffer is reused.
            let mut record = FutureRecord::to(topic)
                .payload(&payload)
                .key(client.as_bytes())
                .partition(partition);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        actix_rt::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(classify(&e)),
                }
            }
        }
        rest = &rest[deliveries.len()..];
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(classify(&e)),
                Err(_) => return Err(SinkError::Retriable("producer was dropped".into())),
            }
        }
    }
    Ok(())
}

pub struct KafkaSink {
    producer: FutureProducer,
    topic: Arc<str>,
    config: KafkaSinkConfig,
    /// One per partition: held while a chunk of that partition is with librdkafka.
    gates: Rc<Vec<Mutex<()>>>,
}

/// Whether resending can help. Errors about the message itself cannot be cured by a retry.
fn classify(e: &KafkaError) -> SinkError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    );
    if permanent {
        SinkError::Permanent(e.to_string())
    } else {
        SinkError::Retriable(e.to_string())
    }
}

/// Creating a producer does not connect; asking for the topic's metadata does, and tells an
/// operator at once when the topic is missing. Returns the topic's partition count.
pub async fn check_topic(producer: &FutureProducer, topic: &str) -> Result<i32, SinkError> {
    let probe = producer.clone();
    let name = topic.to_string();
    let metadata = tokio::task::spawn_blocking(move || {
        probe
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(10))
    })
    .await
    .map_err(|e| SinkError::Retriable(format!("metadata task failed: {e}")))?
    .map_err(|e| SinkError::Retriable(format!("cannot reach the brokers: {e}")))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions > 0 {
        Ok(partitions as i32)
    } else {
        Err(SinkError::Retriable(format!(
            "topic {topic} does not exist"
        )))
    }
}

impl Sink for KafkaSink {
    const NAME: &'static str = "kafka";
    const MAX_CONCURRENT_WRITES: usize = 2;
    type Config = KafkaSinkConfig;
    type Item = KafkaJob;
    type Output = ();

    fn connect(config: KafkaSinkConfig) -> LocalFuture<Result<KafkaSink, SinkError>> {
        Box::pin(async move {
            let producer: FutureProducer = config
                .client_config()
                .create()
                .map_err(|e| SinkError::Permanent(format!("invalid producer config: {e}")))?;
            let partitions = check_topic(&producer, &config.topic).await?;
            Ok(KafkaSink {
                producer,
                topic: config.topic.clone().into(),
                config,
                gates: Rc::new((0..partitions).map(|_| Mutex::new(())).collect()),
            })
        })
    }

    fn write(&self, jobs: Vec<Arc<KafkaJob>>) -> LocalFuture<Result<Vec<()>, SinkError>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let gates = self.gates.clone();
        Box::pin(async move {
            let partitions = gates.len() as i32;
            let mut by_partition: Vec<Vec<(usize, usize)>> = vec![Vec::new(); gates.len()];
            for (j, job) in jobs.iter().enumerate() {
                for (c, client) in job.clients.iter().enumerate() {
                    by_partition[partition_for(client.as_bytes(), partitions) as usize]
                        .push((j, c));
                }
            }
            let sends = by_partition
                .iter()
                .enumerate()
                .filter(|(_, notifications)| !notifications.is_empty())
                .map(|(p, notifications)| {
                    send_partition(&producer, &topic, &gates[p], p as i32, &jobs, notifications)
                });
            futures::future::try_join_all(sends).await?;
            Ok(vec![(); jobs.len()])
        })
    }

    fn reconcile(
        &self,
        jobs: Vec<Arc<KafkaJob>>,
    ) -> LocalFuture<Result<Vec<Arc<KafkaJob>>, SinkError>> {
        let config = self.config.clone();
        Box::pin(async move {
            let since_ms = jobs.iter().map(|j| j.created_ms).min().unwrap_or_default();
            let wanted: crate::ledger::Wanted = jobs
                .iter()
                .flat_map(|j| {
                    j.clients
                        .iter()
                        .map(|client| crate::ledger::NotificationKey::of(&j.batch, client))
                })
                .collect();
            let found = tokio::task::spawn_blocking(move || {
                crate::ledger::find_sent(&config, since_ms, &wanted)
            })
            .await
            .map_err(|e| SinkError::Retriable(format!("scan task failed: {e}")))?
            .map_err(SinkError::Retriable)?;
            if !found.is_empty() {
                log::info!(
                    "kafka writer: {} notifications of the retried jobs were already in the topic; not sending them again",
                    found.len()
                );
            }
            let sent = |j: &KafkaJob, client: &str| {
                found.contains(&crate::ledger::NotificationKey::of(&j.batch, client))
            };
            Ok(jobs
                .into_iter()
                .map(|j| {
                    if j.clients.iter().any(|c| sent(&j, c)) {
                        Arc::new(KafkaJob {
                            batch: j.batch.clone(),
                            clients: j.clients.iter().filter(|c| !sent(&j, c)).cloned().collect(),
                            created_ms: j.created_ms,
                        })
                    } else {
                        j
                    }
                })
                .collect())
        })
    }

    fn close(&self) -> LocalFuture<()> {
        let producer = self.producer.clone();
        Box::pin(async move {
            // flush blocks; it must not hold up the arbiter's other work.
            let result =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("kafka writer: flush at close failed: {e}"),
                Err(e) => log::warn!("kafka writer: flush task failed: {e}"),
            }
        })
    }

    fn is_connected(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;

    /// The writer places notifications itself; a client must land where librdkafka's default
    /// partitioner puts the same key (the ledger's recovery producer relies on that partitioner).
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
}
