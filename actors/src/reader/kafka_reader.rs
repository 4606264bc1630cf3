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
//!
//! What one poll finds (up to [`POLL_CAMPAIGNS`], within the limit) goes to the enricher as one
//! message, each campaign still with its own answer; the offsets freed by the answers ready
//! together are stored in one call.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use super::consumer::{ReaderConsumer, ReaderSettings};
use super::offsets::OffsetTracker;
use crate::events::{CampaignFinished, CampaignReceived, DrainAbandoned, Event, OffsetsStored};
use crate::fatal::FatalReason;
use crate::hand_off::HandOff;
use crate::liveness::Loop;
use crate::messages::{CampaignOutcome, CampaignRecord, Drain, DrainReport, ProcessCampaigns};
use crate::notification::SourceRef;
use crate::shared::Shared;

pub struct KafkaReader {
    config: ReaderSettings,
    /// Where the campaigns go; it answers each once it is finished.
    processor: Recipient<ProcessCampaigns>,
    shared: Shared,
    stop: watch::Sender<Option<Duration>>,
    report: Option<oneshot::Receiver<DrainReport>>,
}

impl KafkaReader {
    /// When the reader cannot go on, it raises the fatal reason in `shared`: the service must
    /// stop.
    pub fn new(
        config: ReaderSettings,
        processor: Recipient<ProcessCampaigns>,
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
                processor: HandOff::new(self.processor.clone()),
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

/// The most campaigns one poll hands to the enricher at once.
pub const POLL_CAMPAIGNS: usize = 500;

/// What the read loop works on: the consumer, the campaigns in flight and their offsets.
struct ReadLoop {
    consumer: Arc<ReaderConsumer>,
    topic: Arc<str>,
    /// A poll's campaigns go as one message.
    processor: HandOff<CampaignRecord, CampaignOutcome>,
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
        DrainAbandoned {
            campaigns: abandoned,
        }
        .emit(&state.shared.metrics);
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
        let consumer = self.consumer.clone();
        let mut messages = consumer.stream();
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => return true,
                _ = heartbeat.tick() => self.shared.liveness.beat(Loop::Reader),
                Some(first) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    // With the answers that are ready too: their offsets are stored at once.
                    let mut finished = vec![first];
                    while let Some(Some(next)) = self.in_flight.next().now_or_never() {
                        finished.push(next);
                    }
                    if !self.complete(finished) {
                        return false;
                    }
                    self.shared.metrics.campaigns_in_flight.set(self.in_flight.len() as i64);
                }
                Some(message) = messages.next(), if self.in_flight.len() < max_in_flight => {
                    match message {
                        Ok(m) => {
                            let record = self.record(&m);
                            drop(m);
                            self.start(record);
                            // The rest of what this poll has, within the limit, goes with it.
                            let room = max_in_flight.saturating_sub(self.in_flight.len());
                            for _ in 0..room.min(POLL_CAMPAIGNS - 1) {
                                match messages.next().now_or_never() {
                                    Some(Some(Ok(m))) => {
                                        let record = self.record(&m);
                                        drop(m);
                                        self.start(record);
                                    }
                                    Some(Some(Err(e))) => {
                                        log::warn!("kafka reader: receive failed: {e}");
                                        break;
                                    }
                                    Some(None) | None => break,
                                }
                            }
                            self.shared
                                .metrics
                                .campaigns_in_flight
                                .set(self.in_flight.len() as i64);
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
        CampaignReceived.emit(&self.shared.metrics);
        self.tracker.started(source.partition, source.offset);
        let answer = self.processor.send(record);
        self.in_flight.push(Box::pin(async move {
            let outcome = answer
                .await
                .unwrap_or_else(|_| CampaignOutcome::Unconfirmed {
                    sink: "enricher",
                    reason: "the enricher stopped before answering".into(),
                });
            (source, outcome)
        }));
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
                Ok(Some(finished)) => {
                    if !self.complete(vec![finished]) {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.in_flight.len()
    }

    /// Records outcomes and stores the offsets they free, one store for them all. Returns false
    /// when an outcome means the pipeline is broken and reading must stop (nothing is stored
    /// then).
    fn complete(&mut self, finished: Vec<(SourceRef, CampaignOutcome)>) -> bool {
        let now_ms = self.shared.clock.now_ms();
        // Per partition, the furthest offset freed.
        let mut freed: Vec<(i32, i64)> = Vec::new();
        for (source, outcome) in &finished {
            CampaignFinished {
                source,
                outcome,
                now_ms,
            }
            .emit(&self.shared.metrics);
            if matches!(outcome, CampaignOutcome::Unconfirmed { .. }) {
                return false;
            }
            if let Some(next) = self.tracker.finished(source.partition, source.offset) {
                match freed.iter_mut().find(|(p, _)| *p == source.partition) {
                    Some((_, offset)) => *offset = next,
                    None => freed.push((source.partition, next)),
                }
            }
        }
        if freed.is_empty() {
            return true;
        }
        // `store_offset` (librdkafka's legacy rd_kafka_offset_store) would store `next + 1`;
        // `store_offsets` stores exactly the next offset to read.
        let mut tpl = TopicPartitionList::with_capacity(freed.len());
        let stored = freed.iter().try_for_each(|&(partition, next)| {
            tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next))
        });
        match stored.and_then(|()| self.consumer.store_offsets(&tpl)) {
            Ok(()) => OffsetsStored {
                offsets: freed.len(),
            }
            .emit(&self.shared.metrics),
            // A partition was revoked meanwhile; its new owner reads from the last commit.
            Err(e) => log::debug!("kafka reader: cannot store offsets {freed:?}: {e}"),
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
    use crate::clock::Clock;
    use crate::hand_off::Batch;
    use crate::metrics::Metrics;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::Mutex;

    /// Answers every campaign as delivered; records the size of each message it got.
    struct Processor(Arc<Mutex<Vec<usize>>>);

    impl Actor for Processor {
        type Context = Context<Self>;
    }

    impl Handler<ProcessCampaigns> for Processor {
        type Result = ();
        fn handle(&mut self, msg: ProcessCampaigns, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg.0.len());
            let Batch(requests) = msg;
            for (_, answer) in requests {
                let _ = answer.send(CampaignOutcome::Delivered { notifications: 1 });
            }
        }
    }

    #[actix_rt::test]
    async fn what_a_poll_finds_goes_to_the_enricher_as_one_message_and_every_offset_is_committed() {
        const CAMPAIGNS: usize = 300;
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("in", 2, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        produce_campaigns(&brokers, CAMPAIGNS).await;
        let batches = Arc::new(Mutex::new(Vec::new()));
        let processor = Processor(batches.clone()).start();
        let (shared, _failed) = Shared::new(Metrics::new(), Clock::system());
        let reader = KafkaReader::new(
            reader_settings(&brokers),
            processor.recipient(),
            shared.clone(),
        )
        .start();
        wait_for_campaigns(&batches, CAMPAIGNS).await;
        let report = reader
            .send(Drain {
                grace: Duration::from_secs(5),
            })
            .await
            .expect("drain");
        assert!(report.committed && report.abandoned == 0, "{report:?}");
        let sizes = batches.lock().unwrap().clone();
        // The messages were all waiting: polls find many at a time, never more than the bound.
        assert!(
            sizes.len() * 5 <= CAMPAIGNS && sizes.iter().all(|n| *n <= POLL_CAMPAIGNS),
            "{} messages for {CAMPAIGNS} campaigns: {sizes:?}",
            sizes.len()
        );
        let committed = shared.metrics.offsets_stored.get();
        assert!(committed >= 2, "offsets stored {committed} times");
        // What the group committed: every campaign of both partitions.
        assert_eq!(committed_by_readers(&brokers), CAMPAIGNS as i64);
    }

    /// `count` campaigns to topic `in`, in a few record batches, so that a fetch brings many
    /// campaigns at once.
    async fn produce_campaigns(brokers: &str, count: usize) {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "200")
            .create()
            .expect("producer");
        let keys: Vec<String> = (0..count).map(|i| format!("c{i}")).collect();
        let sends = keys.iter().map(|key| {
            producer.send(
                FutureRecord::to("in").key(key).payload("{}"),
                Duration::from_secs(5),
            )
        });
        for sent in futures::future::join_all(sends).await {
            sent.expect("produce");
        }
    }

    /// A reader of topic `in` in group `readers`, from the earliest offset.
    fn reader_settings(brokers: &str) -> ReaderSettings {
        ReaderSettings {
            brokers: brokers.to_string(),
            topic: "in".into(),
            group_id: "readers".into(),
            auto_offset_reset: "earliest".into(),
            max_in_flight: 2048,
            orphan_stall: None,
            // Every campaign fetched at once, so that what a poll finds does not depend on how
            // the fetches and the test's threads interleave.
            overrides: vec![
                ("fetch.wait.max.ms".into(), "10".into()),
                ("queued.min.messages".into(), "100000".into()),
            ],
        }
    }

    /// Waits (30 s at most) until the processor has had `count` campaigns.
    async fn wait_for_campaigns(batches: &Mutex<Vec<usize>>, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while batches.lock().unwrap().iter().sum::<usize>() < count {
            assert!(Instant::now() < deadline, "{:?}", batches.lock().unwrap());
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The offsets group `readers` committed on both partitions of `in`, added up.
    fn committed_by_readers(brokers: &str) -> i64 {
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "readers")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("in", 0);
        tpl.add_partition("in", 1);
        let offsets = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .expect("committed");
        offsets
            .elements()
            .iter()
            .map(|e| e.offset().to_raw().unwrap_or(0))
            .sum()
    }

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
