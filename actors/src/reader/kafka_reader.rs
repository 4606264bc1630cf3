//! `KafkaReader`: the consumer of the input topic and the keeper of its offsets.
//!
//! Offsets are committed by librdkafka's auto-commit, but only offsets the reader *stored*, and it
//! stores a campaign's offset only after the enricher answered that both sinks confirmed it (or
//! that there was nothing to write). Campaigns complete out of order, so per partition the stored
//! offset is the lowest one still in flight: a stop at any moment re-reads what was not finished
//! and never skips it.
//!
//! At most `max_in_flight_campaigns` campaigns are in flight; at the limit the reader stops
//! pulling, so a slow or reconnecting sink bounds memory instead of growing a queue.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use super::consumer::{ReaderConsumer, ReaderSettings};
use super::offsets::OffsetTracker;
use crate::events::{CampaignFinished, Event};
use crate::liveness::Loop;
use crate::messages::{CampaignOutcome, CampaignRecord, Drain, DrainReport, ProcessCampaign};
use crate::notification::SourceRef;
use crate::shared::{FatalReason, Shared};

pub struct KafkaReader {
    config: ReaderSettings,
    /// Where each campaign goes; it answers once the campaign is finished.
    processor: Recipient<ProcessCampaign>,
    shared: Shared,
    stop: watch::Sender<Option<Duration>>,
    report: Option<oneshot::Receiver<DrainReport>>,
}

impl KafkaReader {
    /// When the reader cannot go on, it raises the fatal reason in `shared`: the service must
    /// stop.
    pub fn new(
        config: ReaderSettings,
        processor: Recipient<ProcessCampaign>,
        shared: Shared,
    ) -> KafkaReader {
        KafkaReader {
            config,
            processor,
            shared,
            stop: watch::channel(None).0,
            report: None,
        }
    }
}

impl Actor for KafkaReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let consumer = match self
            .config
            .create_consumer(self.shared.metrics.clone(), self.shared.lease.clone())
        {
            Ok(c) => Arc::new(c),
            Err(e) => {
                let reason = FatalReason::ConsumerCreation(e.to_string());
                self.shared.fatal.raise(reason);
                ctx.stop();
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[&self.config.topic]) {
            self.shared.fatal.raise(FatalReason::Subscription {
                topic: self.config.topic.clone(),
                error: e.to_string(),
            });
            ctx.stop();
            return;
        }
        log::info!(
            "kafka reader: consuming {} as group {}",
            self.config.topic,
            self.config.group_id
        );
        if let Some(stall) = self.config.orphan_stall {
            actix_rt::spawn(super::orphan_watch::run(
                consumer.clone(),
                self.config.topic.clone(),
                stall,
                self.shared.lease.clone(),
                self.stop.subscribe(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.report = Some(rx);
        let run = read_loop(
            ReadLoop {
                consumer,
                topic: self.config.topic.clone().into(),
                processor: self.processor.clone(),
                shared: self.shared.clone(),
                tracker: OffsetTracker::default(),
                in_flight: FuturesUnordered::new(),
            },
            self.config.max_in_flight,
            self.stop.subscribe(),
        );
        actix_rt::spawn(async move {
            let report = run.await;
            let _ = tx.send(report);
        });
    }
}

impl Handler<Drain> for KafkaReader {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, msg: Drain, _: &mut Context<Self>) -> Self::Result {
        self.stop.send_replace(Some(msg.grace));
        let report = self.report.take();
        Box::pin(async move {
            match report {
                Some(rx) => rx.await.unwrap_or_default(),
                None => DrainReport::default(),
            }
        })
    }
}

type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = (SourceRef, CampaignOutcome)>>>;

/// What the read loop works on: the consumer, the campaigns in flight and their offsets.
struct ReadLoop {
    consumer: Arc<ReaderConsumer>,
    topic: Arc<str>,
    processor: Recipient<ProcessCampaign>,
    shared: Shared,
    tracker: OffsetTracker,
    in_flight: FuturesUnordered<InFlight>,
}

async fn read_loop(
    mut state: ReadLoop,
    max_in_flight: usize,
    mut stop: watch::Receiver<Option<Duration>>,
) -> DrainReport {
    let broken = !state.read_until_stopped(max_in_flight, &mut stop).await;
    let abandoned = if broken {
        state.in_flight.len()
    } else {
        let grace = stop.borrow().unwrap_or_default();
        state.drain(grace).await
    };
    state
        .shared
        .metrics
        .campaigns_in_flight
        .set(abandoned as i64);
    if abandoned > 0 {
        log::warn!(
            "kafka reader: {abandoned} campaigns were not finished; they will be read again at the next start"
        );
        state
            .shared
            .metrics
            .drain_abandoned_campaigns
            .inc_by(abandoned as u64);
    }
    let ReadLoop {
        consumer,
        topic,
        tracker,
        in_flight,
        shared,
        ..
    } = state;
    drop(in_flight);
    let committed = commit_final(consumer, &topic, &tracker).await;
    if broken {
        shared.fatal.raise(FatalReason::CampaignUnconfirmed);
    }
    DrainReport {
        abandoned,
        committed,
    }
}

impl ReadLoop {
    /// Reads and hands out campaigns until `stop` is set. Returns false when an outcome showed
    /// the pipeline is broken.
    async fn read_until_stopped(
        &mut self,
        max_in_flight: usize,
        stop: &mut watch::Receiver<Option<Duration>>,
    ) -> bool {
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return true,
                _ = heartbeat.tick() => self.shared.liveness.beat(Loop::Reader),
                Some((source, outcome)) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    if !self.complete(source, outcome) {
                        return false;
                    }
                    self.shared.metrics.campaigns_in_flight.set(self.in_flight.len() as i64);
                }
                message = self.consumer.recv(), if self.in_flight.len() < max_in_flight => {
                    match message {
                        Ok(m) => {
                            let record = self.record(&m);
                            drop(m);
                            self.start(record);
                        }
                        Err(e) => {
                            log::warn!("kafka reader: receive failed: {e}");
                            actix_rt::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
    }

    /// The message, owned, as the processor takes it.
    fn record(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> CampaignRecord {
        CampaignRecord {
            source: SourceRef {
                topic: self.topic.clone(),
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis(),
            },
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }

    fn start(&mut self, record: CampaignRecord) {
        let source = record.source.clone();
        self.shared.metrics.campaigns_received.inc();
        self.tracker.started(source.partition, source.offset);
        let request = self.processor.send(ProcessCampaign(record));
        self.in_flight.push(Box::pin(async move {
            let outcome = request
                .await
                .unwrap_or_else(|e| CampaignOutcome::Unconfirmed {
                    sink: "enricher",
                    reason: e.to_string(),
                });
            (source, outcome)
        }));
        self.shared
            .metrics
            .campaigns_in_flight
            .set(self.in_flight.len() as i64);
    }

    /// Waits up to `grace` for the campaigns in flight; returns how many did not finish.
    async fn drain(&mut self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        if !self.in_flight.is_empty() {
            log::info!(
                "kafka reader: stopped reading; waiting up to {grace:?} for {} campaigns in flight",
                self.in_flight.len()
            );
        }
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.in_flight.next()).await {
                Ok(Some((source, outcome))) => {
                    if !self.complete(source, outcome) {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.in_flight.len()
    }

    /// Records an outcome and stores the offset it frees. Returns false when the outcome means
    /// the pipeline is broken and reading must stop.
    fn complete(&mut self, source: SourceRef, outcome: CampaignOutcome) -> bool {
        CampaignFinished {
            source: &source,
            outcome: &outcome,
            now_ms: self.shared.clock.now_ms(),
        }
        .emit(&self.shared.metrics);
        if matches!(outcome, CampaignOutcome::Unconfirmed { .. }) {
            return false;
        }
        if let Some(next) = self.tracker.finished(source.partition, source.offset) {
            // `store_offset` (librdkafka's legacy rd_kafka_offset_store) would store `next + 1`;
            // `store_offsets` stores exactly the next offset to read.
            let mut tpl = TopicPartitionList::with_capacity(1);
            let stored = tpl
                .add_partition_offset(&self.topic, source.partition, Offset::Offset(next))
                .and_then(|()| self.consumer.store_offsets(&tpl));
            match stored {
                Ok(()) => self.shared.metrics.offsets_stored.inc(),
                // The partition was revoked meanwhile; its new owner reads from the last commit.
                Err(e) => log::debug!("kafka reader: cannot store offset {next} of {source}: {e}"),
            }
        }
        true
    }
}

/// Commits what was stored, closes the consumer; both off the arbiter since they block. Only
/// partitions this instance still owns, and only forward: a partition taken over by another
/// instance, or given back, may be further along than what this one remembers of it.
async fn commit_final(consumer: Arc<ReaderConsumer>, topic: &str, tracker: &OffsetTracker) -> bool {
    let stored: Vec<(i32, i64)> = tracker.stored().collect();
    let topic_name = topic.to_string();
    let result = tokio::task::spawn_blocking(move || {
        let result = forward_commits(&consumer, &topic_name, &stored).and_then(|commits| {
            if !commits.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for &(partition, offset) in &commits {
                    tpl.add_partition_offset(&topic_name, partition, Offset::Offset(offset))?;
                }
                consumer.commit(&tpl, CommitMode::Sync)?;
            }
            Ok(commits)
        });
        consumer.unsubscribe();
        drop(consumer);
        result
    })
    .await;
    match result {
        Ok(Ok(commits)) => {
            let summary = commits
                .iter()
                .map(|(p, o)| format!("{topic}/{p}={o}"))
                .collect::<Vec<_>>()
                .join(", ");
            log::info!("kafka reader: offsets committed: {summary}");
            true
        }
        Ok(Err(e)) => {
            log::warn!(
                "kafka reader: final commit failed, the last campaigns will be read again: {e}"
            );
            false
        }
        Err(e) => {
            log::warn!("kafka reader: commit task failed: {e}");
            false
        }
    }
}

/// The stored offsets worth committing: of partitions still assigned, ahead of the group's
/// committed offset. Blocking.
fn forward_commits(
    consumer: &ReaderConsumer,
    topic: &str,
    stored: &[(i32, i64)],
) -> rdkafka::error::KafkaResult<Vec<(i32, i64)>> {
    let owned: BTreeSet<i32> = consumer
        .assignment()?
        .elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &owned {
        tpl.add_partition(topic, p);
    }
    let committed: HashMap<i32, i64> = consumer
        .committed_offsets(tpl, COMMIT_TIMEOUT)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    Ok(ahead(stored, &owned, &committed))
}

const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// `stored`, kept where the partition is owned and the offset is past what is committed.
fn ahead(
    stored: &[(i32, i64)],
    owned: &BTreeSet<i32>,
    committed: &HashMap<i32, i64>,
) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = stored
        .iter()
        .copied()
        .filter(|(p, o)| owned.contains(p) && committed.get(p).is_none_or(|c| o > c))
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_commit_never_moves_an_offset_back_nor_touches_another_owners_partition() {
        let stored = [(0, 12), (1, 18), (2, 30), (3, 7)];
        let owned = BTreeSet::from([0, 1, 3]);
        // 0: another instance went further while it owned it; 2: not ours any more; 3: never
        // committed.
        let committed = HashMap::from([(0, 22), (1, 10), (2, 5)]);
        assert_eq!(ahead(&stored, &owned, &committed), vec![(1, 18), (3, 7)]);
    }
}
