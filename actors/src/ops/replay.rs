//! `replay-dead-letters`: the original messages of the dead-letter topic, published again to the
//! input topic once the cause is fixed, each once (see "Campaign controls" in docs/design.md).
//!
//! The dead-letter topic is read from its start (or from `--since`) to its end as it is when the
//! replay starts. A letter is replayed when its `dlq.reason.code` is the one asked for (any, by
//! default), it still has its payload, and it is not recorded in `campaign_notifier_replayed`;
//! it is recorded there once the broker acknowledged it, so a second run skips it. A crash between
//! the two sends it again on the next run, which notifies nobody twice: the service reads a
//! campaign twice as it reads a redelivery.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::{connect, kafka, pg, read_outcome, OpsError};
use crate::config::Settings;
use crate::kafka::{scan, Chunk, KafkaFailure, Producer};
use crate::sinks::dead_letter_writer::{HEADER_PAYLOAD_OMITTED, HEADER_REASON_CODE};

/// The table of replayed letters; created by the replay when it is missing.
const REPLAYED_TABLE: &str = include_str!("replayed.sql");
/// Header on each replayed message: the dead letter it came from (`topic/partition/offset`).
pub const HEADER_REPLAYED_FROM: &str = "dlq.replayed.from";
/// Letters handed over and recorded together.
const CHUNK: usize = 500;
/// A read of the dead-letter topic that receives nothing this long fails.
const STALL: Duration = Duration::from_secs(30);

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// Only letters with this `dlq.reason.code`; all when `None`.
    pub reason: Option<String>,
    /// Only letters written at or after this time (unix seconds).
    pub since_secs: Option<i64>,
    /// Count what would be replayed, send nothing, record nothing.
    pub dry_run: bool,
}

/// What a replay did, printed as one JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub dead_letter_topic: String,
    pub input_topic: String,
    pub dry_run: bool,
    /// Letters read from the dead-letter topic.
    pub read: u64,
    /// Replayed (with `dry_run`: to be replayed), per reason code.
    pub replayed: BTreeMap<String, u64>,
    /// Recorded as replayed by an earlier run: skipped.
    pub already_replayed: u64,
    /// Letters whose payload was too large for the dead-letter topic: nothing to replay.
    pub payload_omitted: u64,
    /// Letters of another reason than the one asked for.
    pub other_reasons: u64,
    /// The broker refused them for good (per reason code); not recorded, so a later run tries
    /// them again.
    pub refused: BTreeMap<String, u64>,
}

/// One letter as read: where it is, why it is there, and the original message.
#[derive(Debug)]
struct Letter {
    partition: i32,
    offset: i64,
    reason: String,
    omitted: bool,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl Letter {
    fn of(message: &BorrowedMessage<'_>) -> Letter {
        let header = |name: &str| {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|header| header.key == name)
                    .and_then(|header| header.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        Letter {
            partition: message.partition(),
            offset: message.offset(),
            reason: header(HEADER_REASON_CODE).unwrap_or_else(|| "unknown".into()),
            omitted: header(HEADER_PAYLOAD_OMITTED).as_deref() == Some("true"),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Replays the dead letters `request` asks for (see the module's docs).
pub async fn replay(
    settings: &Settings,
    request: &ReplayRequest,
) -> Result<ReplayReport, OpsError> {
    let topic = settings.dead_letter_topic.clone().ok_or(OpsError::Refused(
        "kafka.dead_letter_topic is empty: there is no dead-letter topic to replay",
    ))?;
    let client = connect(&settings.postgres, "replay").await?;
    client
        .batch_execute(REPLAYED_TABLE)
        .await
        .map_err(pg("creating campaign_notifier_replayed"))?;
    let producer = match request.dry_run {
        true => None,
        false => Some(Producer::create(&settings.producer, &[]).map_err(kafka("the producer"))?),
    };
    let mut replay = Replay {
        client,
        producer,
        request,
        report: ReplayReport {
            dead_letter_topic: topic.clone(),
            input_topic: settings.reader.topic.clone(),
            dry_run: request.dry_run,
            ..ReplayReport::default()
        },
    };
    let (letters, reader) = read_letters(settings, &topic, request.since_secs);
    replay.all(letters).await?;
    replay.report.read = read_outcome(&topic, reader.await)?;
    if let Some(producer) = &replay.producer {
        producer.close("replay").await;
    }
    Ok(replay.report)
}

type ReadResult = Result<u64, scan::ScanError>;

/// Reads the dead-letter topic on a blocking thread, handing each letter over as it comes.
fn read_letters(
    settings: &Settings,
    topic: &str,
    since_secs: Option<i64>,
) -> (mpsc::Receiver<Letter>, tokio::task::JoinHandle<ReadResult>) {
    let (tx, rx) = mpsc::channel(2 * CHUNK);
    let (producer, topic) = (settings.producer.clone(), topic.to_string());
    let from_ms = since_secs.map_or(0, |s| s.saturating_mul(1000));
    let reader = tokio::task::spawn_blocking(move || {
        scan::read_topic(&producer, &topic, from_ms, STALL, |message| {
            // A replay that stopped reading (it failed) lets the read run out.
            let _ = tx.blocking_send(Letter::of(message));
        })
    });
    (rx, reader)
}

/// A replay under way.
struct Replay<'a> {
    client: Client,
    /// `None` for a dry run.
    producer: Option<Producer>,
    request: &'a ReplayRequest,
    report: ReplayReport,
}

impl Replay<'_> {
    async fn all(&mut self, mut letters: mpsc::Receiver<Letter>) -> Result<(), OpsError> {
        let mut chunk = Vec::with_capacity(CHUNK);
        while letters.recv_many(&mut chunk, CHUNK).await > 0 {
            let wanted = self.wanted(std::mem::take(&mut chunk)).await?;
            self.send(wanted).await?;
        }
        Ok(())
    }

    /// The letters of `chunk` to replay: of the reason asked for, with their payload, and not
    /// replayed before; the others are counted.
    async fn wanted(&mut self, chunk: Vec<Letter>) -> Result<Vec<Letter>, OpsError> {
        let report = &mut self.report;
        let mut wanted = Vec::with_capacity(chunk.len());
        for letter in chunk {
            if self
                .request
                .reason
                .as_ref()
                .is_some_and(|r| *r != letter.reason)
            {
                report.other_reasons += 1;
            } else if letter.omitted || letter.payload.is_none() {
                report.payload_omitted += 1;
            } else {
                wanted.push(letter);
            }
        }
        let done = self.recorded(&wanted).await?;
        let before = wanted.len();
        wanted.retain(|l| !done.contains(&(l.partition, l.offset)));
        self.report.already_replayed += (before - wanted.len()) as u64;
        Ok(wanted)
    }

    /// Which of `letters` an earlier run recorded as replayed.
    async fn recorded(
        &self,
        letters: &[Letter],
    ) -> Result<std::collections::HashSet<(i32, i64)>, OpsError> {
        let (partitions, offsets): (Vec<i32>, Vec<i64>) =
            letters.iter().map(|l| (l.partition, l.offset)).unzip();
        let rows = self
            .client
            .query(
                "SELECT partition, \"offset\" FROM public.campaign_notifier_replayed \
                 WHERE topic = $1 AND (partition, \"offset\") IN \
                 (SELECT * FROM unnest($2::int4[], $3::int8[]))",
                &[&self.report.dead_letter_topic, &partitions, &offsets],
            )
            .await
            .map_err(pg("reading campaign_notifier_replayed"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(pg("reading campaign_notifier_replayed"))
    }

    /// Sends `letters` to the input topic (counts them, for a dry run) and records those the
    /// broker acknowledged.
    async fn send(&mut self, letters: Vec<Letter>) -> Result<(), OpsError> {
        let Some(producer) = &self.producer else {
            for letter in letters {
                *self.report.replayed.entry(letter.reason).or_default() += 1;
            }
            return Ok(());
        };
        let (mut sent, mut refused) = (Vec::with_capacity(letters.len()), Vec::new());
        for letter in letters {
            match self.hand_over(producer, &letter).await {
                Ok(()) => sent.push(letter),
                Err(e) => refused.push((letter, e)),
            }
        }
        for (letter, e) in refused {
            self.refused(&letter, &e);
        }
        self.record(&sent).await?;
        for letter in sent {
            *self.report.replayed.entry(letter.reason).or_default() += 1;
        }
        Ok(())
    }

    /// One letter to the input topic, its acknowledgement awaited.
    async fn hand_over(&self, producer: &Producer, letter: &Letter) -> Result<(), KafkaFailure> {
        let from = format!(
            "{}/{}/{}",
            self.report.dead_letter_topic, letter.partition, letter.offset
        );
        let headers = OwnedHeaders::new().insert(Header {
            key: HEADER_REPLAYED_FROM,
            value: Some(&from),
        });
        let mut chunk = Chunk::new();
        let mut record = chunk
            .record::<[u8], [u8]>(&self.report.input_topic)
            .headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        producer.hand_over(&mut chunk, record).await?;
        chunk.confirmed().await
    }

    fn refused(&mut self, letter: &Letter, e: &KafkaFailure) {
        log::error!(
            "replay: the letter at {}/{}/{} ({}) was not replayed: {}",
            self.report.dead_letter_topic,
            letter.partition,
            letter.offset,
            letter.reason,
            crate::error_chain::Chain(e)
        );
        *self
            .report
            .refused
            .entry(letter.reason.clone())
            .or_default() += 1;
    }

    async fn record(&self, sent: &[Letter]) -> Result<(), OpsError> {
        if sent.is_empty() {
            return Ok(());
        }
        let (partitions, offsets): (Vec<i32>, Vec<i64>) =
            sent.iter().map(|l| (l.partition, l.offset)).unzip();
        let reasons: Vec<&str> = sent.iter().map(|l| l.reason.as_str()).collect();
        self.client
            .execute(
                "INSERT INTO public.campaign_notifier_replayed (topic, partition, \"offset\", reason) \
                 SELECT $1, p, o, r FROM unnest($2::int4[], $3::int8[], $4::text[]) AS u(p, o, r) \
                 ON CONFLICT DO NOTHING",
                &[&self.report.dead_letter_topic, &partitions, &offsets, &reasons],
            )
            .await
            .map_err(pg("recording the replayed letters"))?;
        Ok(())
    }
}
