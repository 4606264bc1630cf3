//! The one producer path: hand records to librdkafka a chunk at a time with backpressure on a
//! full queue, await the broker's acknowledgements of a chunk together, classify what fails, flush
//! without blocking an arbiter.
//!
//! A record's acknowledgement is counted, not awaited: every record of a [`Chunk`] carries the
//! chunk's shared counter as its delivery opaque, librdkafka's polling thread counts it down as
//! the acknowledgements arrive and wakes the one task that waits for the chunk when it reaches
//! zero, keeping only the refusals. Nothing is allocated per record and only one future is polled
//! per chunk (a future per record, as rdkafka's `FutureProducer` has it, cost an allocation, a
//! channel and a wake-up for every notification).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, ToBytes};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use super::{classify, partition_ids, KafkaFailure, ProducerSettings};
use crate::lease::Lease;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing producer waits for what it still holds to be acknowledged.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a full librdkafka queue is given to drain before a record is offered again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(1);

/// The acknowledgements a chunk still waits for, and the refusals among those that came.
#[derive(Debug, Default)]
pub struct Acks {
    pending: AtomicUsize,
    refusals: Mutex<Vec<Refusal>>,
    settled: tokio::sync::Notify,
}

/// A record the broker (or librdkafka, once its message timeout passed) refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The record's key, so that the sender can tell which of its records it was.
    pub key: Option<Vec<u8>>,
    pub failure: KafkaFailure,
}

/// A record of a chunk, its acknowledgement counted by the chunk.
pub type Record<'a, K, P> = BaseRecord<'a, K, P, Arc<Acks>>;

/// Records handed over together, whose acknowledgements are awaited together.
#[derive(Debug, Default)]
pub struct Chunk {
    acks: Arc<Acks>,
    len: usize,
}

impl Chunk {
    pub fn new() -> Chunk {
        Chunk::default()
    }

    /// A record to `topic` that counts as one of this chunk's once handed over.
    pub fn record<'a, K, P>(&self, topic: &'a str) -> Record<'a, K, P>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        BaseRecord::with_opaque_to(topic, self.acks.clone())
    }

    /// How many records were handed over in it.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waits until every record handed over in it was acknowledged or refused, and returns the
    /// refusals, in the order they came.
    pub async fn settled(self) -> Vec<Refusal> {
        while self.acks.pending.load(Ordering::Acquire) > 0 {
            // A count that reached zero before this wait left a permit: no wake-up is lost.
            self.acks.settled.notified().await;
        }
        std::mem::take(&mut *lock(&self.acks.refusals))
    }

    /// Waits for every acknowledgement; the first refusal is the answer. Every one is awaited even
    /// after a refusal: a writer that reads the topic back after a failure must find there
    /// everything that was going to land.
    pub async fn confirmed(self) -> Result<(), KafkaFailure> {
        match self.settled().await.into_iter().next() {
            Some(refusal) => Err(refusal.failure),
            None => Ok(()),
        }
    }
}

/// The refusals, whatever a panic elsewhere left them as (they are only ever pushed and taken).
fn lock(refusals: &Mutex<Vec<Refusal>>) -> std::sync::MutexGuard<'_, Vec<Refusal>> {
    refusals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts each acknowledgement down on the chunk of its record (on librdkafka's polling thread).
#[derive(Debug, Default)]
pub struct Counting;

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        if let Err((e, message)) = result {
            let refusal = Refusal {
                key: message.key().map(<[u8]>::to_vec),
                failure: classify(e),
            };
            lock(&acks.refusals).push(refusal);
        }
        if acks.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            acks.settled.notify_one();
        }
    }
}

type Inner = ThreadedProducer<Counting>;

/// A producer of the service. Cheap to clone (librdkafka's handle is shared).
#[derive(Clone)]
pub struct Producer {
    inner: Inner,
    /// Asked before every record is handed over: a process that lost its lease sends nothing.
    fence: Option<Lease>,
}

impl Producer {
    /// Creates the producer; `extra` properties are set after the settings' own. Creating does not
    /// connect: [`Producer::partitions`] does.
    pub fn create(
        settings: &ProducerSettings,
        extra: &[(&str, String)],
    ) -> Result<Producer, KafkaFailure> {
        let mut cc = settings.client_config();
        for (k, v) in extra {
            cc.set(*k, v);
        }
        let inner: Inner = cc
            .create_with_context(Counting)
            .map_err(|e| KafkaFailure::configuration(format!("invalid producer config: {e}")))?;
        Ok(Producer { inner, fence: None })
    }

    /// A producer that writes in transactions as `id`, its transactions initialised: the broker
    /// fences any earlier producer with the same id and ends the transaction it had open (its
    /// records are never read committed). Blocks a thread, not the arbiter, while it waits.
    pub async fn transactional(
        settings: &ProducerSettings,
        id: &str,
        timeout: Duration,
    ) -> Result<Producer, KafkaFailure> {
        let producer = Producer::create(settings, &[("transactional.id", id.to_string())])?;
        producer
            .blocking("init transactions", move |p| p.init_transactions(timeout))
            .await?;
        Ok(producer)
    }

    /// Starts a transaction (of a [`Producer::transactional`]).
    pub fn begin(&self) -> Result<(), KafkaFailure> {
        self.inner.begin_transaction().map_err(|e| classify(&e))
    }

    /// Commits the transaction under way: every record handed over since [`Producer::begin`] is
    /// then read committed, or (on an error) none is.
    pub async fn commit(&self, timeout: Duration) -> Result<(), KafkaFailure> {
        self.blocking("commit", move |p| p.commit_transaction(timeout))
            .await
    }

    /// Aborts the transaction under way; its records are never read committed.
    pub async fn abort(&self, timeout: Duration) -> Result<(), KafkaFailure> {
        self.blocking("abort", move |p| p.abort_transaction(timeout))
            .await
    }

    /// Runs one of librdkafka's blocking calls on a blocking thread, never on an arbiter.
    async fn blocking(
        &self,
        what: &str,
        call: impl FnOnce(&Inner) -> rdkafka::error::KafkaResult<()> + Send + 'static,
    ) -> Result<(), KafkaFailure> {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|e| KafkaFailure::retriable(format!("{what} task failed: {e}")))?
            .map_err(|e| classify(&e))
    }

    /// The same producer, handing nothing to librdkafka while `lease` is not valid.
    pub fn fenced_by(self, lease: Lease) -> Producer {
        Producer {
            fence: Some(lease),
            ..self
        }
    }

    /// The partition count of `topic`, asked of the brokers: the first contact, which tells an
    /// operator at once when the brokers are unreachable or the topic is missing.
    pub async fn partitions(&self, topic: &str) -> Result<i32, KafkaFailure> {
        let producer = self.inner.clone();
        let name = topic.to_string();
        let ids = tokio::task::spawn_blocking(move || {
            partition_ids(producer.client(), &name, METADATA_TIMEOUT)
        })
        .await
        .map_err(|e| KafkaFailure::retriable(format!("metadata task failed: {e}")))??;
        if ids.is_empty() {
            // Not a configuration failure yet: a topic being created shows up a moment later.
            return Err(KafkaFailure::retriable(format!(
                "topic {topic} does not exist"
            )));
        }
        Ok(ids.len() as i32)
    }

    /// Hands one record of `chunk` to librdkafka, waiting while its queue is full, unless the
    /// lease it is fenced by is not valid (checked right before each hand-over, so that a process
    /// thawed after its lease ended sends nothing more). Its acknowledgement is awaited with the
    /// chunk's ([`Chunk::settled`]).
    pub async fn hand_over<K, P>(
        &self,
        chunk: &mut Chunk,
        mut record: Record<'_, K, P>,
    ) -> Result<(), KafkaFailure>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        debug_assert!(Arc::ptr_eq(&record.delivery_opaque, &chunk.acks));
        loop {
            if let Some(lease) = &self.fence {
                lease.check().map_err(KafkaFailure::lapsed)?;
            }
            // Counted before the hand-over: the acknowledgement may come before `send` returns.
            chunk.acks.pending.fetch_add(1, Ordering::AcqRel);
            match self.inner.send(record) {
                Ok(()) => {
                    chunk.len += 1;
                    return Ok(());
                }
                Err((e, r)) => {
                    chunk.acks.pending.fetch_sub(1, Ordering::AcqRel);
                    if !matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        return Err(classify(&e));
                    }
                    record = r;
                    actix_rt::time::sleep(QUEUE_FULL_PAUSE).await;
                }
            }
        }
    }

    /// Waits up to `timeout` for everything queued to be acknowledged. librdkafka's flush blocks,
    /// so it runs on a blocking thread and never holds up an arbiter.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaFailure> {
        self.blocking("flush", move |p| p.flush(timeout)).await
    }

    /// Flushes before the producer is dropped (dropping purges what librdkafka still holds);
    /// `who` names the owner in the warning logged when the flush fails.
    pub async fn close(&self, who: &str) {
        if let Err(e) = self.flush(CLOSE_TIMEOUT).await {
            log::warn!("{who}: flush at close failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::ClientConfig;

    fn producer(brokers: &str) -> Producer {
        let settings = super::super::ProducerSettings {
            brokers: brokers.into(),
            message_timeout_ms: 5_000,
            overrides: vec![("linger.ms".into(), "50".into())],
        };
        Producer::create(&settings, &[]).unwrap()
    }

    fn landed(brokers: &str, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .unwrap();
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(5))
            .unwrap();
        high - low
    }

    #[actix_rt::test]
    async fn a_chunk_is_settled_once_every_record_is_acknowledged_and_names_the_refused_by_key() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("out", 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer = producer(&brokers);
        assert!(
            Chunk::new().settled().await.is_empty(),
            "nothing to wait for"
        );

        let mut chunk = Chunk::new();
        for i in 0..1_000 {
            let key = format!("client-{i}");
            let record = chunk.record("out").key(key.as_bytes()).payload("{}");
            producer.hand_over(&mut chunk, record).await.unwrap();
        }
        assert_eq!(chunk.len(), 1_000);
        assert!(chunk.settled().await.is_empty());
        // Settled means acknowledged: every record is in the topic.
        assert_eq!(landed(&brokers, "out"), 1_000);

        // The broker refuses the next produce request for good: its records come back by key,
        // the rest of the chunk lands.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
        );
        let mut chunk = Chunk::new();
        for i in 0..100 {
            let key = format!("again-{i}");
            let record = chunk.record("out").key(key.as_bytes()).payload("{}");
            producer.hand_over(&mut chunk, record).await.unwrap();
        }
        let refusals = chunk.settled().await;
        assert!(!refusals.is_empty(), "the refused request's records");
        for refusal in &refusals {
            assert_eq!(refusal.failure.class, super::super::FailureClass::Permanent);
            let key = String::from_utf8(refusal.key.clone().unwrap()).unwrap();
            assert!(key.starts_with("again-"), "{key}");
        }
        assert_eq!(landed(&brokers, "out"), 1_000 + 100 - refusals.len() as i64);
    }
}
