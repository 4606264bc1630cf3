//! Reads the output topic back to find which notifications already landed: how the Kafka writer
//! reconciles after a restart and how recovery avoids sending a dead owner's work twice. The same
//! read of a topic to its end ([`read_topic`]) serves the replay of dead letters.
//!
//! A notification is identified in the topic by its restaurant, campaign and client (the same key
//! that is unique in Postgres), read from the message's own JSON: the output needs no header or
//! extra field.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::{partition_ids, KafkaFailure, ProducerSettings};
use crate::notification::{fingerprint, Wanted};

/// Broker timestamps are the producer's clock; allow for a little skew between hosts.
const SCAN_MARGIN_MS: i64 = 5_000;
/// A read-back that receives nothing for this long while partitions are left to read fails (and is
/// retried by its caller); one that keeps receiving runs as long as the topic needs.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a read-back failed: what it was doing, with the client's error as the source (shown by
/// [`crate::error_chain::Chain`]). Its callers retry it.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("scan consumer")]
    Consumer(#[source] KafkaError),
    #[error("metadata of {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaFailure,
    },
    #[error("start of partition {partition} of {topic}")]
    Start {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error("offsets for times")]
    OffsetsForTimes(#[source] KafkaError),
    #[error("watermarks")]
    Watermarks(#[source] KafkaError),
    #[error("assign")]
    Assign(#[source] KafkaError),
    #[error("reading back {topic}")]
    Read {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "reading back {topic}: nothing received for {stall:?} with {partitions} partition(s) \
         left ({read} messages read)"
    )]
    Stalled {
        topic: String,
        stall: Duration,
        partitions: usize,
        read: u64,
    },
}

/// The fields of an output message that say whose notification it is (the key that is unique in
/// Postgres), read from the message's own JSON.
#[derive(serde::Deserialize)]
pub(crate) struct Whose<'a> {
    #[serde(borrow)]
    pub(crate) restaurant_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) adv_campaign_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) client_id: std::borrow::Cow<'a, str>,
}

/// Reads `topic` from `since_ms` to its end (as it is when the read starts) and returns which of
/// `wanted` it holds. It fails only when it receives nothing for `stall` ([`STALL_LIMIT`] in the
/// service), so a long read of a busy topic finishes. Blocking: run it on a blocking thread.
pub fn find_sent(
    settings: &ProducerSettings,
    topic: &str,
    since_ms: i64,
    wanted: &Wanted,
    stall: Duration,
) -> Result<Wanted, ScanError> {
    if wanted.is_empty() {
        return Ok(Wanted::new());
    }
    let mut found = Wanted::new();
    read_topic(
        settings,
        topic,
        since_ms - SCAN_MARGIN_MS,
        stall,
        |message| {
            // Anything in the topic that is not one of our messages is simply not a match.
            if let Some(fields) = message
                .payload()
                .and_then(|p| serde_json::from_slice::<Whose<'_>>(p).ok())
            {
                let key = fingerprint(
                    &fields.restaurant_id,
                    &fields.adv_campaign_id,
                    &fields.client_id,
                );
                if wanted.contains(&key) {
                    found.insert(key);
                }
            }
        },
    )?;
    Ok(found)
}

/// Hands every message of `topic` from the first at or after `from_ms` (a Kafka timestamp; 0:
/// from the start) to its end as it is when the read starts to `each`, in order within each
/// partition; returns how many were read. It fails only when it receives nothing for `stall`.
/// Blocking: run it on a blocking thread.
pub fn read_topic(
    settings: &ProducerSettings,
    topic: &str,
    from_ms: i64,
    stall: Duration,
    each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, ScanError> {
    read_topic_counted(settings, topic, from_ms, stall, |_| {}, each)
}

/// [`read_topic`], telling `total` first how many messages lie between the starts and the ends
/// (for a progress bar; compacted or aborted records make the read find fewer).
pub fn read_topic_counted(
    settings: &ProducerSettings,
    topic: &str,
    from_ms: i64,
    stall: Duration,
    total: impl FnOnce(u64),
    each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, ScanError> {
    let consumer = scan_consumer(settings)?;
    let (ends, span) = assign_from(&consumer, topic, from_ms)?;
    total(span);
    read_to_ends(&consumer, topic, ends, stall, each)
}

fn scan_consumer(settings: &ProducerSettings) -> Result<BaseConsumer, ScanError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &settings.brokers)
        .set(
            "group.id",
            format!("campaign-notifier-ledger-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        // librdkafka would prefetch up to 64 MiB; a read-back keeps up with less.
        .set("queued.max.messages.kbytes", "16384");
    for (k, v) in settings.connection_overrides() {
        cc.set(k, v);
    }
    cc.create().map_err(ScanError::Consumer)
}

/// Assigns every partition of `topic` that has messages from `from_ms` on, at the first of them;
/// returns each assigned partition's end (high watermark) at this moment, and how many offsets
/// lie between the starts and the ends.
fn assign_from(
    consumer: &BaseConsumer,
    topic: &str,
    from_ms: i64,
) -> Result<(HashMap<i32, i64>, u64), ScanError> {
    let partitions =
        partition_ids(consumer.client(), topic, REQUEST_TIMEOUT).map_err(|source| {
            ScanError::Metadata {
                topic: topic.to_string(),
                source,
            }
        })?;
    let start_failed = |partition| {
        move |source| ScanError::Start {
            topic: topic.to_string(),
            partition,
            source,
        }
    };
    let mut by_time = TopicPartitionList::new();
    for p in partitions {
        by_time
            .add_partition_offset(topic, p, Offset::Offset(from_ms))
            .map_err(start_failed(p))?;
    }
    let starts = consumer
        .offsets_for_times(by_time, REQUEST_TIMEOUT)
        .map_err(ScanError::OffsetsForTimes)?;
    let mut assign = TopicPartitionList::new();
    let (mut ends, mut span) = (HashMap::new(), 0u64);
    for e in starts.elements() {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), REQUEST_TIMEOUT)
            .map_err(ScanError::Watermarks)?;
        if let Offset::Offset(start) = e.offset() {
            if start < high {
                assign
                    .add_partition_offset(topic, e.partition(), Offset::Offset(start))
                    .map_err(start_failed(e.partition()))?;
                ends.insert(e.partition(), high);
                span += (high - start) as u64;
            }
        }
    }
    if !ends.is_empty() {
        consumer.assign(&assign).map_err(ScanError::Assign)?;
    }
    Ok((ends, span))
}

fn read_to_ends(
    consumer: &BaseConsumer,
    topic: &str,
    mut ends: HashMap<i32, i64>,
    stall: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, ScanError> {
    let (started, mut last_progress, mut read) = (Instant::now(), Instant::now(), 0u64);
    let mut next_report = started + PROGRESS_EVERY;
    while !ends.is_empty() {
        if last_progress.elapsed() > stall {
            return Err(ScanError::Stalled {
                topic: topic.to_string(),
                stall,
                partitions: ends.len(),
                read,
            });
        }
        if Instant::now() > next_report {
            next_report += PROGRESS_EVERY;
            log::info!(
                "reading back {topic}: {read} messages read in {:.0?}, {} partition(s) left",
                started.elapsed(),
                ends.len()
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(|source| ScanError::Read {
            topic: topic.to_string(),
            source,
        })?;
        last_progress = Instant::now();
        read += 1;
        each(&message);
        if ends
            .get(&message.partition())
            .is_some_and(|&high| message.offset() + 1 >= high)
        {
            ends.remove(&message.partition());
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::Chain;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn a_failed_read_back_says_what_it_was_doing_and_keeps_the_clients_error() {
        let read = ScanError::Read {
            topic: "notifications".into(),
            source: KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure),
        };
        assert_eq!(
            Chain(&read).to_string(),
            "reading back notifications: Message consumption error: BrokerTransportFailure \
             (Local: Broker transport failure)"
        );
        let stalled = ScanError::Stalled {
            topic: "notifications".into(),
            stall: Duration::from_secs(30),
            partitions: 2,
            read: 7,
        };
        assert_eq!(
            Chain(&stalled).to_string(),
            "reading back notifications: nothing received for 30s with 2 partition(s) left \
             (7 messages read)"
        );
    }
}
