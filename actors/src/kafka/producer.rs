//! The one producer path: hand records to librdkafka with backpressure on a full queue, await the
//! broker's acknowledgements, classify what fails, flush without blocking an arbiter.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use super::{classify, partition_ids, KafkaFailure, ProducerSettings};
use crate::ledger::Lease;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing producer waits for what it still holds to be acknowledged.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a full librdkafka queue is given to drain before a record is offered again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(1);

/// A producer of the service. Cheap to clone (librdkafka's handle is shared).
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
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
        let inner: FutureProducer = cc
            .create()
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
        call: impl FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
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

    /// Hands one record to librdkafka, waiting while its queue is full, unless the lease it is
    /// fenced by is not valid (checked right before each hand-over, so that a process thawed after
    /// its lease ended sends nothing more). The returned future resolves once the broker
    /// acknowledged or refused the record; see [`Producer::confirm`].
    pub async fn enqueue<K, P>(
        &self,
        mut record: FutureRecord<'_, K, P>,
    ) -> Result<DeliveryFuture, KafkaFailure>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        loop {
            if let Some(lease) = &self.fence {
                lease.check().map_err(KafkaFailure::lapsed)?;
            }
            match self.inner.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    actix_rt::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((e, _)) => return Err(classify(&e)),
            }
        }
    }

    /// Waits for every acknowledgement; the first refusal is the answer. Every one is awaited
    /// even after a refusal: a writer that reads the topic back after a failure must find there
    /// everything that was going to land.
    pub async fn confirm(
        deliveries: impl IntoIterator<Item = DeliveryFuture>,
    ) -> Result<(), KafkaFailure> {
        let mut first = None;
        for delivery in deliveries {
            let failure = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => classify(&e),
                Err(_) => KafkaFailure::retriable("producer was dropped"),
            };
            first.get_or_insert(failure);
        }
        first.map_or(Ok(()), Err)
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
