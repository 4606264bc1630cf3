//! `KafkaWriter`: produces each notification to the output topic, keyed by `client_id`.
//!
//! It sends exactly the rows the Postgres writer has just inserted and marked in the ledger.
//! librdkafka batches, retries and reconnects by itself (idempotent producer); the writer
//! restarts (new producer) only when a delivery fails after `message.timeout.ms`, and then first
//! reads back the output topic for the notifications of the jobs it held
//! ([`crate::kafka::scan`]), so what did land is not sent twice.
//!
//! The writer picks each notification's partition itself, with librdkafka's default partitioner
//! ([`partition_for`]), and hands librdkafka one chunk per partition at a time: the next chunk of a
//! partition goes out when the previous one is acknowledged, while all partitions proceed at
//! once. A partition's gate is taken a chunk at a time, and handed to the writes waiting for it
//! in turn, so a small write's chunk goes out after the chunk in flight, not after every chunk of
//! a large write that came before it. librdkafka's idempotent producer keeps a single produce request in flight per partition,
//! and while it waits for the answer with more messages of that partition queued and due, its
//! broker thread polls without sleeping; against Tansu, handing over everything at once cost
//! about 16 CPU seconds per million messages, chunk by chunk about 1.6, at the same rate
//! (`scripts/bench.sh --example producer_chunking`).
//!
//! Nothing is handed to librdkafka at or after a batch's deadline (its campaign's end plus the
//! grace): those notifications are answered as expired, and delivery withdraws their rows from
//! Postgres. A chunk still unacknowledged when the deadline of one of its notifications comes
//! (the broker is slow or unreachable) fails the write: the writer restarts, dropping the
//! producer purges what librdkafka still held, the read-back finds what landed before, and the
//! rest is answered as expired.
//!
//! Nor is anything of a campaign that is recalled ([`crate::recalls`]): the set is looked at
//! before each chunk, and the notifications of a recalled campaign are answered as recalled, for
//! delivery to withdraw as it does the expired ones.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::lock::Mutex;

use super::writer::{LocalFuture, Rows, Sink, SinkError, Writer};
use crate::error_chain::Chain;
use crate::kafka::{partition_for, scan, Chunk, Producer, ProducerSettings};
use crate::lease::Lease;
use crate::metrics::SinkKind;
use crate::notification::{NotificationBatch, Wanted};
use crate::recalls::{Recalled, Recalls};
use crate::sinks::pace::Pace;

/// What the Kafka writer answers for one job.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Clients not sent because the campaign's end (plus the grace) passed first.
    pub expired: Vec<String>,
    /// Clients not sent because the campaign was recalled first.
    pub recalled: Vec<String>,
}

/// What [`send_partition`] did not send: (job, client) pairs.
#[derive(Default)]
struct Unsent {
    expired: Vec<(usize, usize)>,
    recalled: Vec<(usize, usize)>,
}

impl Unsent {
    /// Whether notification `at` of `job` may be handed over at `now` (ms); if not (its
    /// campaign's deadline passed, or it is recalled), it is noted here.
    fn sendable(
        &mut self,
        job: &KafkaJob,
        at: (usize, usize),
        now: i64,
        recalled: &Recalled,
    ) -> bool {
        if now >= job.batch.deadline_ms {
            self.expired.push(at);
            return false;
        }
        let campaign = &job.batch.campaign;
        if recalled.contains(&campaign.restaurant_id, &campaign.adv_campaign_id) {
            self.recalled.push(at);
            return false;
        }
        true
    }
}

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

/// Where the notifications go, and the lease every record is handed over under.
#[derive(Clone)]
pub struct KafkaSinkSettings {
    pub producer: ProducerSettings,
    pub topic: String,
    pub lease: Lease,
    /// Set: every write is one Kafka transaction of the producer with this id (`kafka.transactions`).
    pub transactional_id: Option<String>,
    /// The campaigns recalled: nothing of theirs is handed to the broker (unused by the
    /// dead-letter writer).
    pub recalls: Recalls,
    /// `[limits] max_notifications_per_sec` (0: none; unused by the dead-letter writer).
    pub max_per_sec: u32,
}

/// What the partitions of one write share.
#[derive(Clone, Copy)]
struct Work<'a> {
    jobs: &'a [Arc<KafkaJob>],
    recalls: &'a Recalls,
    pace: Option<&'a Pace>,
}

/// How long a transaction's initialisation, commit or abort may take.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaSink {
    producer: Producer,
    topic: Arc<str>,
    settings: KafkaSinkSettings,
    /// One per partition: held while a chunk of that partition is with librdkafka (tokio's mutex:
    /// its waiters get it in turn, so a write that takes it chunk after chunk cannot keep others
    /// out).
    gates: Rc<Vec<tokio::sync::Mutex<()>>>,
    /// Transactional: held by the write whose transaction is open (one at a time per producer).
    transaction: Option<Rc<Mutex<()>>>,
    /// Set with `[limits] max_notifications_per_sec`: every write's chunks take their turn on it.
    pace: Option<Rc<Pace>>,
}

/// Sends one partition's share of a write, a chunk at a time, each chunk acknowledged before the
/// next is handed over (see the module's documentation). Returns the notifications not sent
/// because their deadline had passed or their campaign was recalled.
async fn send_partition(
    producer: &Producer,
    topic: &str,
    gate: &tokio::sync::Mutex<()>,
    partition: i32,
    work: Work<'_>,
    notifications: &[(usize, usize)],
) -> Result<Unsent, SinkError> {
    let (jobs, pace) = (work.jobs, work.pace);
    let most = pace.map_or(CHUNK_MESSAGES, |p| p.chunk().min(CHUNK_MESSAGES));
    let mut payload = Vec::with_capacity(512);
    let mut rest = notifications;
    let mut unsent = Unsent::default();
    while !rest.is_empty() {
        let _gate = gate.lock().await;
        if let Some(pace) = pace {
            pace.wait(most.min(rest.len())).await;
        }
        let now = crate::clock::Clock::system().now_ms();
        let recalled = work.recalls.now();
        let mut chunk = Chunk::new();
        let (mut bytes, mut taken, mut deadline) = (0, 0, i64::MAX);
        for &(j, c) in rest {
            if chunk.len() == most || bytes >= CHUNK_BYTES {
                break;
            }
            taken += 1;
            let job = &jobs[j];
            if !unsent.sendable(job, (j, c), now, &recalled) {
                continue;
            }
            deadline = deadline.min(job.batch.deadline_ms);
            let client = &job.clients[c];
            payload.clear();
            job.batch.write_json_for(client, &mut payload);
            bytes += payload.len() + client.len();
            // librdkafka copies key and payload, so the buffer is reused.
            let record = chunk
                .record(topic)
                .payload(&payload[..])
                .key(client.as_bytes())
                .partition(partition);
            if let Err(refused) = producer.hand_over(&mut chunk, record).await {
                // What this chunk handed over before must have landed or failed before the
                // writer reads the topic back to see what is there.
                chunk.settled().await;
                return Err(refused.into());
            }
        }
        rest = &rest[taken..];
        confirm_before(chunk, deadline).await?;
    }
    Ok(unsent)
}

/// Waits for a chunk's acknowledgements, but not past `deadline` (ms since the epoch).
async fn confirm_before(chunk: Chunk, deadline: i64) -> Result<(), SinkError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let confirm = chunk.confirmed();
    if deadline == i64::MAX {
        return Ok(confirm.await?);
    }
    let left =
        Duration::from_millis((deadline - crate::clock::Clock::system().now_ms()).max(0) as u64);
    tokio::select! {
        confirmed = confirm => Ok(confirmed?),
        _ = actix_rt::time::sleep(left) => Err(SinkError::Retriable(
            "a campaign's end passed while its notifications waited for the broker's \
             acknowledgement; restarting, so that nothing of it is sent after the end"
                .into(),
        )),
    }
}

impl KafkaSink {
    /// Sends every job's notifications, each partition a chunk at a time, all partitions at once.
    fn send(&self, jobs: Vec<Arc<KafkaJob>>) -> LocalFuture<Result<Vec<Sent>, SinkError>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let gates = self.gates.clone();
        let recalls = self.settings.recalls.clone();
        let pace = self.pace.clone();
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
                    let work = Work {
                        jobs: &jobs[..],
                        recalls: &recalls,
                        pace: pace.as_deref(),
                    };
                    send_partition(&producer, &topic, &gates[p], p as i32, work, notifications)
                });
            let unsent = futures::future::try_join_all(sends).await?;
            let mut sent = vec![Sent::default(); jobs.len()];
            for u in unsent {
                for (j, c) in u.expired {
                    sent[j].expired.push(jobs[j].clients[c].clone());
                }
                for (j, c) in u.recalled {
                    sent[j].recalled.push(jobs[j].clients[c].clone());
                }
            }
            Ok(sent)
        })
    }
}

impl Sink for KafkaSink {
    const KIND: SinkKind = SinkKind::Kafka;
    const MAX_CONCURRENT_WRITES: usize = 2;
    const EXPRESS_WRITE: bool = true;
    type Config = KafkaSinkSettings;
    type Item = KafkaJob;
    type Output = Sent;

    fn connect(settings: KafkaSinkSettings) -> LocalFuture<Result<KafkaSink, SinkError>> {
        Box::pin(async move {
            let producer = match &settings.transactional_id {
                // Initialising the id ends whatever an earlier producer of this owner left open.
                Some(id) => {
                    Producer::transactional(&settings.producer, id, TRANSACTION_TIMEOUT).await?
                }
                None => Producer::create(&settings.producer, &[])?,
            };
            let producer = producer.fenced_by(settings.lease.clone());
            let partitions = producer.partitions(&settings.topic).await?;
            Ok(KafkaSink {
                producer,
                topic: settings.topic.clone().into(),
                transaction: settings
                    .transactional_id
                    .as_ref()
                    .map(|_| Rc::new(Mutex::new(()))),
                pace: (settings.max_per_sec > 0).then(|| Rc::new(Pace::new(settings.max_per_sec))),
                settings,
                gates: Rc::new(
                    (0..partitions)
                        .map(|_| tokio::sync::Mutex::new(()))
                        .collect(),
                ),
            })
        })
    }

    fn write(&self, jobs: Vec<Arc<KafkaJob>>) -> LocalFuture<Result<Vec<Sent>, SinkError>> {
        let Some(transaction) = self.transaction.clone() else {
            return self.send(jobs);
        };
        let (producer, lease) = (self.producer.clone(), self.settings.lease.clone());
        let sent = self.send(jobs);
        Box::pin(async move {
            let _open = transaction.lock().await;
            let fenced = |e: crate::kafka::KafkaFailure| {
                if e.class == crate::kafka::FailureClass::Fenced {
                    lease.fenced(None);
                }
                SinkError::from(e)
            };
            producer.begin().map_err(fenced)?;
            match sent.await {
                Ok(sent) => {
                    producer.commit(TRANSACTION_TIMEOUT).await.map_err(|e| {
                        log::warn!("kafka writer: the transaction did not commit: {e}");
                        fenced(e)
                    })?;
                    Ok(sent)
                }
                Err(e) => {
                    // Nothing of it is read committed; the writer restarts and sends it again.
                    let _ = producer.abort(TRANSACTION_TIMEOUT).await;
                    Err(e)
                }
            }
        })
    }

    fn rows_written(job: &KafkaJob, sent: &Sent) -> usize {
        job.rows() - sent.expired.len() - sent.recalled.len()
    }

    fn reconcile(
        &self,
        jobs: Vec<Arc<KafkaJob>>,
    ) -> LocalFuture<Result<Vec<Arc<KafkaJob>>, SinkError>> {
        let settings = self.settings.clone();
        Box::pin(async move {
            let since_ms = jobs.iter().map(|j| j.created_ms).min().unwrap_or_default();
            let wanted: Wanted = jobs
                .iter()
                .flat_map(|j| j.clients.iter().map(|c| j.batch.fingerprint_of(c)))
                .collect();
            let found = tokio::task::spawn_blocking(move || {
                scan::find_sent(
                    &settings.producer,
                    &settings.topic,
                    since_ms,
                    &wanted,
                    scan::STALL_LIMIT,
                )
            })
            .await
            .map_err(|e| SinkError::Retriable(format!("scan task failed: {}", Chain(&e))))?
            .map_err(|e| SinkError::Retriable(Chain(&e).to_string()))?;
            if !found.is_empty() {
                log::info!(
                    "kafka writer: {} notifications of the retried jobs were already in the topic; not sending them again",
                    found.len()
                );
            }
            let sent = |j: &KafkaJob, c: &str| found.contains(&j.batch.fingerprint_of(c));
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
        Box::pin(async move { producer.close("kafka writer").await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::ClientConfig;

    fn job(content_bytes: usize, clients: usize) -> Arc<KafkaJob> {
        let content = "x".repeat(content_bytes);
        Arc::new(KafkaJob {
            batch: crate::notification::test_batch(Some(&content), clients),
            clients: (0..clients).map(|i| format!("client-{i}")).collect(),
            created_ms: 0,
        })
    }

    #[actix_rt::test]
    async fn what_a_failed_write_handed_over_before_the_refusal_has_landed_when_it_fails() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let sink = KafkaSink::connect(KafkaSinkSettings {
            producer: ProducerSettings {
                brokers: brokers.clone(),
                message_timeout_ms: 5_000,
                // The oversized notification is refused by the producer itself; the ordinary ones
                // before it linger for 200 ms before they are sent.
                overrides: vec![
                    ("message.max.bytes".into(), "20000".into()),
                    ("linger.ms".into(), "200".into()),
                ],
            },
            topic: "out".into(),
            lease: Lease::unbounded(),
            transactional_id: None,
            recalls: Recalls::default(),
            max_per_sec: 0,
        })
        .await
        .unwrap();
        let written = sink.write(vec![job(10, 3), job(30_000, 1)]).await;
        assert!(
            matches!(written, Err(SinkError::Permanent(_))),
            "{written:?}"
        );
        // At once: the writer reads the topic back next, and must find the three there.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks("out", 0, std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(high - low, 3);
    }
}
