//! `KafkaWriter`: produces each notification to the output topic, keyed by `client_id`.
//!
//! It sends exactly the rows the Postgres writer has just inserted and marked in the ledger.
//! Every notification of a group is handed to librdkafka at once and the delivery reports are
//! awaited together, so thousands of sends are in flight and none is awaited alone. librdkafka
//! batches, retries and reconnects by itself (idempotent producer); the writer restarts (new
//! producer) only when a delivery fails after `message.timeout.ms`, and then first reads back the
//! output topic for the notifications of the jobs it held (a notification is identified by its
//! restaurant, campaign and client, as in the Postgres key), so what did land is not sent twice.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::notification::NotificationBatch;
use crate::writer::{LocalFuture, Rows, Sink, SinkError, Writer};

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

pub struct KafkaSink {
    producer: FutureProducer,
    topic: Arc<str>,
    config: KafkaSinkConfig,
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
/// operator at once when the topic is missing.
pub async fn check_topic(producer: &FutureProducer, topic: &str) -> Result<(), SinkError> {
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
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        Ok(())
    } else {
        Err(SinkError::Retriable(format!(
            "topic {topic} does not exist"
        )))
    }
}

impl Sink for KafkaSink {
    const NAME: &'static str = "kafka";
    const MAX_CONCURRENT_WRITES: usize = 8;
    type Config = KafkaSinkConfig;
    type Item = KafkaJob;
    type Output = ();

    fn connect(config: KafkaSinkConfig) -> LocalFuture<Result<KafkaSink, SinkError>> {
        Box::pin(async move {
            let producer: FutureProducer = config
                .client_config()
                .create()
                .map_err(|e| SinkError::Permanent(format!("invalid producer config: {e}")))?;
            check_topic(&producer, &config.topic).await?;
            Ok(KafkaSink {
                producer,
                topic: config.topic.clone().into(),
                config,
            })
        })
    }

    fn write(&self, jobs: Vec<Arc<KafkaJob>>) -> LocalFuture<Result<Vec<()>, SinkError>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        Box::pin(async move {
            let total: usize = jobs.iter().map(|j| j.clients.len()).sum();
            let mut deliveries = Vec::with_capacity(total);
            let mut payload = Vec::with_capacity(512);
            for job in &jobs {
                for client in &job.clients {
                    payload.clear();
                    job.batch.write_json_for(client, &mut payload);
                    // librdkafka copies key and payload, so the buffer is reused.
                    let mut record = FutureRecord::to(&topic)
                        .payload(&payload)
                        .key(client.as_bytes());
                    loop {
                        match producer.send_result(record) {
                            Ok(delivery) => {
                                deliveries.push(delivery);
                                break;
                            }
                            Err((
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                                r,
                            )) => {
                                record = r;
                                actix_rt::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err((e, _)) => return Err(classify(&e)),
                        }
                    }
                }
            }
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(classify(&e)),
                    Err(_) => return Err(SinkError::Retriable("producer was dropped".into())),
                }
            }
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
