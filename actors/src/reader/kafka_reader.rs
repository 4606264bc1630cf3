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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use crate::enricher::Enricher;
use crate::messages::{CampaignOutcome, CampaignRecord, Drain, DrainReport, ProcessCampaign};
use crate::metrics::Metrics;
use crate::notification::SourceRef;

/// Logs the group's decisions (the lines an operator looks for when partitions move) and turns
/// librdkafka's statistics into the lag gauge.
pub struct ReaderContext {
    metrics: Metrics,
}

impl ClientContext for ReaderContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = &self.metrics.consumer_lag;
        // Partitions revoked since the last report must not linger as stale series.
        lag.reset();
        for topic in statistics.topics.values() {
            for p in topic.partitions.values() {
                // -1 is librdkafka's internal partition; a negative lag means "not known yet".
                if p.partition >= 0 && p.desired && p.consumer_lag_stored >= 0 {
                    lag.with_label_values(&[&p.partition.to_string()])
                        .set(p.consumer_lag_stored);
                }
            }
        }
    }
}

impl ConsumerContext for ReaderContext {
    fn post_rebalance(
        &self,
        _base: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => log::info!("kafka reader: assigned {}", describe(tpl)),
            Rebalance::Revoke(tpl) => log::info!("kafka reader: revoked {}", describe(tpl)),
            Rebalance::Error(e) => log::warn!("kafka reader: rebalance failed: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            log::warn!("kafka reader: offset commit failed: {e}");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        "no partitions".into()
    } else {
        parts.join(", ")
    }
}

pub type ReaderConsumer = StreamConsumer<ReaderContext>;

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub auto_offset_reset: String,
    pub max_in_flight: usize,
    /// See [`crate::orphan_watch`]; `None` turns the watch off.
    pub orphan_stall: Option<Duration>,
    pub overrides: Vec<(String, String)>,
}

impl ReaderConfig {
    pub fn from_config(c: &crate::config::Config) -> ReaderConfig {
        ReaderConfig {
            brokers: c.kafka.brokers.clone(),
            topic: c.kafka.input_topic.clone(),
            group_id: c.kafka.group_id.clone(),
            auto_offset_reset: c.kafka.auto_offset_reset.clone(),
            max_in_flight: c.kafka.max_in_flight_campaigns,
            orphan_stall: (c.kafka.orphaned_partition_secs > 0)
                .then(|| Duration::from_secs(c.kafka.orphaned_partition_secs)),
            overrides: c
                .kafka
                .consumer
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn create_consumer(&self, metrics: Metrics) -> KafkaResult<ReaderConsumer> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            // Offsets are stored by hand once both sinks confirmed, never on read.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &self.auto_offset_reset)
            .set("enable.partition.eof", "false")
            // A campaign is worth hundreds of notifications: a hundred waiting per partition keep
            // the pipeline busy, and librdkafka stops fetching while it holds them instead of
            // asking the broker for more all through a backlog (librdkafka's default is 100 000).
            .set("queued.min.messages", "100")
            // ...and looks again 10 ms later, not after librdkafka's default second, which a
            // hundred small campaigns take less than to process.
            .set("fetch.queue.backoff.ms", "10")
            .set("statistics.interval.ms", "5000");
        for (k, v) in &self.overrides {
            cc.set(k, v);
        }
        cc.create_with_context(ReaderContext { metrics })
    }
}

/// Per-partition bookkeeping of which offsets may be committed.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Offsets read and not yet finished, with how many times each is in flight (a rebalance can
    /// deliver the same offset again while the first copy is still being written).
    in_flight: BTreeMap<i64, u32>,
    max_finished: Option<i64>,
    /// The last offset handed out for storing: the next offset to read.
    stored: Option<i64>,
}

impl OffsetTracker {
    pub fn started(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        // Messages of a partition arrive in order, so the first one read is where the group's
        // committed position already is: nothing below it needs storing.
        p.stored.get_or_insert(offset);
        *p.in_flight.entry(offset).or_default() += 1;
    }

    /// Marks `offset` finished; returns the offset to store (the next one to read) when it moved
    /// forward.
    pub fn finished(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        match p.in_flight.get_mut(&offset) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                p.in_flight.remove(&offset);
            }
            None => return None,
        }
        p.max_finished = Some(p.max_finished.map_or(offset, |m| m.max(offset)));
        let next = match p.in_flight.keys().next() {
            Some(&lowest) => lowest,
            None => p.max_finished? + 1,
        };
        if p.stored.is_none_or(|s| next > s) {
            p.stored = Some(next);
            Some(next)
        } else {
            None
        }
    }

    /// The offsets stored so far, per partition: what a final commit sends.
    pub fn stored(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions
            .iter()
            .filter_map(|(&p, o)| o.stored.map(|s| (p, s)))
    }

    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|p| p.in_flight.values().map(|&n| n as usize).sum::<usize>())
            .sum()
    }
}

pub struct KafkaReader {
    config: ReaderConfig,
    enricher: Addr<Enricher>,
    metrics: Metrics,
    stop: watch::Sender<Option<Duration>>,
    report: Option<oneshot::Receiver<DrainReport>>,
    fatal: watch::Sender<Option<String>>,
}

impl KafkaReader {
    /// `fatal` is set, with the reason, when the reader cannot go on: the service must stop.
    pub fn new(
        config: ReaderConfig,
        enricher: Addr<Enricher>,
        metrics: Metrics,
        fatal: watch::Sender<Option<String>>,
    ) -> KafkaReader {
        KafkaReader {
            config,
            enricher,
            metrics,
            stop: watch::channel(None).0,
            report: None,
            fatal,
        }
    }
}

impl Actor for KafkaReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let consumer = match self.config.create_consumer(self.metrics.clone()) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.fatal
                    .send_replace(Some(format!("cannot create the Kafka consumer: {e}")));
                ctx.stop();
                return;
            }
        };
        if let Err(e) = consumer.subscribe(&[&self.config.topic]) {
            self.fatal.send_replace(Some(format!(
                "cannot subscribe to {}: {e}",
                self.config.topic
            )));
            ctx.stop();
            return;
        }
        log::info!(
            "kafka reader: consuming {} as group {}",
            self.config.topic,
            self.config.group_id
        );
        if let Some(stall) = self.config.orphan_stall {
            actix_rt::spawn(crate::reader::orphan_watch::run(
                consumer.clone(),
                self.config.topic.clone(),
                stall,
                self.stop.subscribe(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.report = Some(rx);
        let run = read_loop(
            consumer,
            self.config.topic.clone().into(),
            self.config.max_in_flight,
            self.enricher.clone(),
            self.metrics.clone(),
            self.stop.subscribe(),
            self.fatal.clone(),
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

async fn read_loop(
    consumer: Arc<ReaderConsumer>,
    topic: Arc<str>,
    max_in_flight: usize,
    enricher: Addr<Enricher>,
    metrics: Metrics,
    mut stop: watch::Receiver<Option<Duration>>,
    fatal_tx: watch::Sender<Option<String>>,
) -> DrainReport {
    let mut tracker = OffsetTracker::default();
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    let mut fatal = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some((source, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                if !complete(&consumer, &topic, &mut tracker, &metrics, source, outcome) {
                    fatal = true;
                    break;
                }
                metrics.campaigns_in_flight.set(in_flight.len() as i64);
            }
            message = consumer.recv(), if in_flight.len() < max_in_flight => {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        log::warn!("kafka reader: receive failed: {e}");
                        actix_rt::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let source = SourceRef {
                    topic: topic.clone(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp_ms: message.timestamp().to_millis(),
                };
                let record = CampaignRecord {
                    source: source.clone(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                };
                drop(message);
                metrics.campaigns_received.inc();
                tracker.started(source.partition, source.offset);
                let request = enricher.send(ProcessCampaign(record));
                in_flight.push(Box::pin(async move {
                    let outcome = request.await.unwrap_or_else(|e| CampaignOutcome::Unconfirmed {
                        sink: "enricher",
                        reason: e.to_string(),
                    });
                    (source, outcome)
                }));
                metrics.campaigns_in_flight.set(in_flight.len() as i64);
            }
        }
    }
    let grace = stop.borrow().unwrap_or_default();
    let deadline = Instant::now() + grace;
    if !fatal && !in_flight.is_empty() {
        log::info!(
            "kafka reader: stopped reading; waiting up to {grace:?} for {} campaigns in flight",
            in_flight.len()
        );
    }
    while !fatal && !in_flight.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, in_flight.next()).await {
            Ok(Some((source, outcome))) => {
                if !complete(&consumer, &topic, &mut tracker, &metrics, source, outcome) {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let abandoned = in_flight.len();
    metrics.campaigns_in_flight.set(abandoned as i64);
    if abandoned > 0 {
        log::warn!(
            "kafka reader: {abandoned} campaigns were not finished; they will be read again at the next start"
        );
    }
    drop(in_flight);
    let committed = commit_final(consumer, &topic, &tracker).await;
    if fatal {
        fatal_tx.send_replace(Some(
            "a campaign could not be confirmed by the writers; its offset was not committed".into(),
        ));
    }
    DrainReport {
        abandoned,
        committed,
    }
}

/// Records an outcome and stores the offset it frees. Returns false when the outcome means the
/// pipeline is broken and reading must stop.
fn complete(
    consumer: &ReaderConsumer,
    topic: &str,
    tracker: &mut OffsetTracker,
    metrics: &Metrics,
    source: SourceRef,
    outcome: CampaignOutcome,
) -> bool {
    metrics
        .campaigns_processed
        .with_label_values(&[outcome.label()])
        .inc();
    match &outcome {
        CampaignOutcome::Delivered { .. } => {
            if let Some(ts) = source.timestamp_ms {
                let now_ms = crate::clock::unix_ms();
                metrics
                    .end_to_end_latency
                    .observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
        CampaignOutcome::SinkFailed { sink, reason } => {
            log::error!(
                "campaign at {source} was refused by the {sink} sink and skipped: {reason}"
            );
        }
        CampaignOutcome::Unconfirmed { sink, reason } => {
            log::error!(
                "campaign at {source} was not confirmed by {sink} ({reason}); stopping so it is read again"
            );
            return false;
        }
        _ => {}
    }
    if let Some(next) = tracker.finished(source.partition, source.offset) {
        // `store_offset` (librdkafka's legacy rd_kafka_offset_store) would store `next + 1`;
        // `store_offsets` stores exactly the next offset to read.
        let mut tpl = TopicPartitionList::with_capacity(1);
        let stored = tpl
            .add_partition_offset(topic, source.partition, Offset::Offset(next))
            .and_then(|()| consumer.store_offsets(&tpl));
        match stored {
            Ok(()) => metrics.offsets_stored.inc(),
            // The partition was revoked meanwhile; its new owner reads from the last commit.
            Err(e) => log::debug!("kafka reader: cannot store offset {next} of {source}: {e}"),
        }
    }
    true
}

/// Commits exactly the stored offsets (not the read position, which may be ahead of what was
/// written) and closes the consumer, both off the arbiter since they block.
async fn commit_final(consumer: Arc<ReaderConsumer>, topic: &str, tracker: &OffsetTracker) -> bool {
    let mut tpl = TopicPartitionList::new();
    let mut stored: Vec<(i32, i64)> = tracker.stored().collect();
    stored.sort_unstable();
    let summary = stored
        .iter()
        .map(|(p, o)| format!("{topic}/{p}={o}"))
        .collect::<Vec<_>>()
        .join(", ");
    for (partition, offset) in stored {
        if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(offset)) {
            log::warn!("kafka reader: cannot prepare the commit of {topic}/{partition}: {e}");
        }
    }
    let result = tokio::task::spawn_blocking(move || {
        let result = if tpl.count() == 0 {
            Ok(())
        } else {
            consumer.commit(&tpl, CommitMode::Sync)
        };
        consumer.unsubscribe();
        drop(consumer);
        result
    })
    .await;
    match result {
        Ok(Ok(())) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_past_the_lowest_unfinished_offset() {
        let mut t = OffsetTracker::default();
        for o in 10..15 {
            t.started(0, o);
        }
        assert_eq!(t.finished(0, 12), None);
        assert_eq!(t.finished(0, 11), None);
        assert_eq!(t.finished(0, 10), Some(13));
        assert_eq!(t.finished(0, 14), None);
        assert_eq!(t.finished(0, 13), Some(15));
        assert_eq!(t.in_flight(), 0);
        assert_eq!(t.stored().collect::<Vec<_>>(), vec![(0, 15)]);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        t.started(0, 5);
        t.started(1, 7);
        assert_eq!(t.finished(1, 7), Some(8));
        assert_eq!(t.in_flight(), 1);
        let mut stored: Vec<_> = t.stored().collect();
        stored.sort();
        assert_eq!(stored, vec![(0, 5), (1, 8)]);
    }

    #[test]
    fn redelivered_offset_counts_twice_and_never_moves_back() {
        let mut t = OffsetTracker::default();
        t.started(0, 1);
        assert_eq!(t.finished(0, 1), Some(2));
        t.started(0, 1);
        t.started(0, 1);
        assert_eq!(t.finished(0, 1), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.finished(0, 1), None);
        assert_eq!(
            t.finished(0, 99),
            None,
            "an offset never started is ignored"
        );
    }
}
