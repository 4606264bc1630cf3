//! `DeadLetterWriter`: every campaign message the service cannot use goes to the dead-letter
//! topic, key and bytes untouched, with headers saying why and where it came from.
//!
//! The reader stores the offset of a rejected message only after this writer confirmed it, so a
//! rejected message is never just dropped. It is the same supervised batching writer as the two
//! sinks.

use std::sync::Arc;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};

use super::kafka_writer::KafkaSinkSettings;
use super::writer::{LocalFuture, Rows, Sink, SinkError, Writer};
use crate::kafka::producer::Record;
use crate::kafka::{Chunk, FailureClass, Producer};
use crate::metrics::{DeadLetterReason, SinkKind};
use crate::notification::SourceRef;

pub type DeadLetterWriter = Writer<DeadLetterSink>;

/// The headers, as constants so that consumers of the topic can rely on them.
pub const HEADER_REASON_CODE: &str = "dlq.reason.code";
pub const HEADER_REASON: &str = "dlq.reason";
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";
/// Present (value `true`) when the payload was too large even for the dead-letter topic and was
/// left out; the source coordinates still find it.
pub const HEADER_PAYLOAD_OMITTED: &str = "dlq.payload.omitted";

/// Largest message the dead-letter producer accepts: room for oversized input.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct DeadLetter {
    pub source: SourceRef,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The metric label and the `dlq.reason.code` header.
    pub code: DeadLetterReason,
    pub reason: String,
}

impl Rows for DeadLetter {
    fn rows(&self) -> usize {
        1
    }
}

pub struct DeadLetterSink {
    producer: Producer,
    topic: Arc<str>,
}

fn headers(letter: &DeadLetter, omitted: bool) -> OwnedHeaders {
    let partition = letter.source.partition.to_string();
    let offset = letter.source.offset.to_string();
    let mut h = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: HEADER_REASON_CODE,
            value: Some(letter.code.as_str()),
        })
        .insert(Header {
            key: HEADER_REASON,
            value: Some(&letter.reason),
        })
        .insert(Header {
            key: HEADER_SOURCE_TOPIC,
            value: Some(&*letter.source.topic),
        })
        .insert(Header {
            key: HEADER_SOURCE_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: HEADER_SOURCE_OFFSET,
            value: Some(&offset),
        });
    if omitted {
        h = h.insert(Header {
            key: HEADER_PAYLOAD_OMITTED,
            value: Some("true"),
        });
    }
    h
}

impl Sink for DeadLetterSink {
    const KIND: SinkKind = SinkKind::DeadLetter;
    const MAX_CONCURRENT_WRITES: usize = 4;
    type Config = KafkaSinkSettings;
    type Item = DeadLetter;
    type Output = ();

    fn connect(settings: KafkaSinkSettings) -> LocalFuture<Result<Self, SinkError>> {
        Box::pin(async move {
            let extra = [("message.max.bytes", MAX_MESSAGE_BYTES.to_string())];
            let producer =
                Producer::create(&settings.producer, &extra)?.fenced_by(settings.lease.clone());
            producer.partitions(&settings.topic).await?;
            Ok(DeadLetterSink {
                producer,
                topic: settings.topic.into(),
            })
        })
    }

    fn write(&self, letters: Vec<Arc<DeadLetter>>) -> LocalFuture<Result<Vec<()>, SinkError>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        Box::pin(async move {
            // A chunk a letter: each one's refusal is its own.
            let mut handed = Vec::with_capacity(letters.len());
            for letter in &letters {
                handed.push(hand_over(&producer, &topic, letter).await?);
            }
            // A letter the broker refuses for good (larger than the topic takes) is sent again
            // without its payload: the headers still say where the message is.
            let mut again = Chunk::new();
            for (letter, (chunk, omitted)) in letters.iter().zip(handed) {
                match chunk.confirmed().await {
                    Err(e) if e.class == FailureClass::Permanent && !omitted => {
                        log::warn!(
                            "dead-letter writer: {} refused with its payload ({e}); writing it without",
                            letter.source
                        );
                        let record = record(&topic, letter, true, &again);
                        producer.hand_over(&mut again, record).await?;
                    }
                    result => result?,
                }
            }
            again.confirmed().await?;
            Ok(vec![(); letters.len()])
        })
    }

    fn close(&self) -> LocalFuture<()> {
        let producer = self.producer.clone();
        Box::pin(async move { producer.close("dead-letter writer").await })
    }
}

/// The record of a letter, with or without its payload, as one of `chunk`'s.
fn record<'a>(
    topic: &'a str,
    letter: &'a DeadLetter,
    omitted: bool,
    chunk: &Chunk,
) -> Record<'a, [u8], [u8]> {
    let mut record = chunk.record(topic).headers(headers(letter, omitted));
    if let Some(key) = &letter.key {
        record = record.key(key.as_slice());
    }
    if let (Some(payload), false) = (&letter.payload, omitted) {
        record = record.payload(payload.as_slice());
    }
    record
}

/// Hands one letter to the producer, as a chunk of its own; a payload too large for the producer
/// is left out at once. Returns the chunk and whether the payload was left out.
async fn hand_over(
    producer: &Producer,
    topic: &str,
    letter: &DeadLetter,
) -> Result<(Chunk, bool), SinkError> {
    let mut chunk = Chunk::new();
    let whole = record(topic, letter, false, &chunk);
    match producer.hand_over(&mut chunk, whole).await {
        Err(e) if e.code == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            let without = record(topic, letter, true, &chunk);
            producer.hand_over(&mut chunk, without).await?;
            Ok((chunk, true))
        }
        other => {
            other?;
            Ok((chunk, letter.payload.is_none()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::ProducerSettings;
    use crate::metrics::RejectCode;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{ClientConfig, Message};
    use std::time::Duration;

    fn letter() -> Arc<DeadLetter> {
        Arc::new(DeadLetter {
            source: SourceRef {
                topic: "campaigns".into(),
                partition: 0,
                offset: 41,
                timestamp_ms: None,
            },
            key: Some(b"k".to_vec()),
            payload: Some(vec![b'x'; 10_000]),
            code: DeadLetterReason::Rejected(RejectCode::NotJson),
            reason: "message is not a JSON object".into(),
        })
    }

    /// The headers of every message in partition 0 of `topic`.
    fn read_headers(brokers: &str, topic: &str) -> Vec<Vec<(String, String)>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "dead-letter-test")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.is_empty() && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let headers = m.headers().map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                });
                out.push(headers.unwrap_or_default());
            }
        }
        out
    }

    #[actix_rt::test]
    async fn a_letter_the_broker_refuses_as_too_large_lands_without_its_payload() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let sink = DeadLetterSink::connect(KafkaSinkSettings {
            producer: ProducerSettings {
                brokers: brokers.clone(),
                message_timeout_ms: 5_000,
                overrides: vec![],
            },
            topic: "dlq".into(),
            lease: crate::lease::Lease::unbounded(),
            transactional_id: None,
            recalls: Default::default(),
            max_per_sec: 0,
        })
        .await
        .unwrap();
        // The topic takes less than the producer does: the broker refuses the full letter.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let written = sink.write(vec![letter()]).await;
        assert_eq!(written, Ok(vec![()]));
        let landed = read_headers(&brokers, "dlq");
        assert_eq!(landed.len(), 1);
        let headers = &landed[0];
        let has = |k: &str, v: &str| headers.iter().any(|(hk, hv)| hk == k && hv == v);
        assert!(has(HEADER_PAYLOAD_OMITTED, "true"), "{headers:?}");
        assert!(has(HEADER_REASON_CODE, "not_json"), "{headers:?}");
        assert!(has(HEADER_SOURCE_OFFSET, "41"), "{headers:?}");
    }
}
