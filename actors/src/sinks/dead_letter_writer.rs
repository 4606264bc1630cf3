//! `DeadLetterWriter`: every campaign message the service cannot use goes to the dead-letter
//! topic, key and bytes untouched, with headers saying why and where it came from.
//!
//! The reader stores the offset of a rejected message only after this writer confirmed it, so a
//! rejected message is never just dropped. It is the same supervised batching writer as the two
//! sinks.

use std::sync::Arc;

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use super::kafka_writer::KafkaSinkSettings;
use super::writer::{LocalFuture, Rows, Sink, SinkError, Writer};
use crate::kafka::Producer;
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
            let producer = Producer::create(&settings.producer, &extra)?;
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
            let mut deliveries = Vec::with_capacity(letters.len());
            for letter in &letters {
                deliveries.push(enqueue(&producer, &topic, letter).await?);
            }
            Producer::confirm(deliveries).await?;
            Ok(vec![(); letters.len()])
        })
    }

    fn close(&self) -> LocalFuture<()> {
        let producer = self.producer.clone();
        Box::pin(async move { producer.close("dead-letter writer").await })
    }
}

/// Hands one letter to the producer; a payload too large for it is left out, and the headers
/// still say where the message is.
async fn enqueue(
    producer: &Producer,
    topic: &str,
    letter: &DeadLetter,
) -> Result<rdkafka::producer::DeliveryFuture, SinkError> {
    let record = |omitted: bool| {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers(letter, omitted));
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let (Some(payload), false) = (&letter.payload, omitted) {
            record = record.payload(payload.as_slice());
        }
        record
    };
    match producer.enqueue(record(false)).await {
        Err(e) if e.code == Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            Ok(producer.enqueue(record(true)).await?)
        }
        other => Ok(other?),
    }
}
