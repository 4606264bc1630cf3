//! Notices input partitions that no live member of the group is consuming, and rejoins the group
//! so the coordinator hands them out again.
//!
//! A broker is supposed to give a dead member's partitions to the survivors once its session
//! times out. Some Kafka-protocol brokers do not (Tansu 0.6.0 lets the survivor rejoin with its
//! own partitions only, until a new member joins), and then those partitions wait forever. This
//! watch sees it from the outside: a partition that is not ours, has messages after its committed
//! offset, whose committed offset has not moved for `stall`, and that no live owner lists in its
//! lease row is orphaned. Leaving and joining again makes this instance a new member, which makes
//! the coordinator assign every partition afresh. A partition a live owner holds is left alone,
//! however long it is busy (one campaign to millions of subscribers keeps its offset still for
//! minutes); an owner that is alive but stuck fails its own liveness probe instead. On Apache
//! Kafka the watch never fires.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use super::consumer::ReaderConsumer;
use crate::error_chain::Chain;
use crate::kafka::KafkaFailure;
use crate::lease::Lease;

const CHECK_INTERVAL: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the watch remembers per partition not assigned to this instance.
#[derive(Debug, Default)]
pub struct StallTracker {
    seen: HashMap<i32, (i64, Instant)>,
}

impl StallTracker {
    /// Records the committed offset and lag of a partition that is not ours; true once it has had
    /// messages waiting and the same committed offset for at least `stall`.
    pub fn observe(
        &mut self,
        partition: i32,
        committed: i64,
        lag: i64,
        now: Instant,
        stall: Duration,
    ) -> bool {
        let entry = self.seen.entry(partition).or_insert((committed, now));
        if entry.0 != committed || lag <= 0 {
            *entry = (committed, now);
            return false;
        }
        now.duration_since(entry.1) >= stall
    }

    /// Observes every partition of a check; returns those stalled.
    fn stalled(
        &mut self,
        partitions: PartitionStates,
        now: Instant,
        stall: Duration,
    ) -> BTreeSet<i32> {
        let mut stalled = BTreeSet::new();
        for (partition, state) in partitions {
            match state {
                Some((committed, lag)) => {
                    if self.observe(partition, committed, lag, now, stall) {
                        stalled.insert(partition);
                    }
                }
                None => self.forget(partition),
            }
        }
        stalled
    }

    pub fn forget(&mut self, partition: i32) {
        self.seen.remove(&partition);
    }

    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

/// How fresh what the lease keeper read of the peers' partitions must be to be trusted.
const PEERS_FRESH: Duration = Duration::from_secs(30);

/// Runs until `stop` is set.
pub async fn run(
    consumer: Arc<ReaderConsumer>,
    topic: String,
    stall: Duration,
    lease: Lease,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let mut tracker = StallTracker::default();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = actix_rt::time::sleep(CHECK_INTERVAL) => {}
        }
        let Some(partitions) = check(&consumer, &topic).await else {
            continue;
        };
        let stalled = tracker.stalled(partitions, Instant::now(), stall);
        if stalled.is_empty() {
            continue;
        }
        let stalled = not_held_by_peers(stalled, &lease, &topic, stall);
        if stalled.is_empty() {
            continue;
        }
        log::warn!(
            "kafka reader: partitions {stalled:?} of {topic} have waiting messages and no progress for {stall:?} and are not ours; rejoining the group so they are assigned again"
        );
        rejoin(&consumer, &topic).await;
        tracker.clear();
    }
}

/// The state of every partition of `topic`, read on a blocking thread; `None` if it could not be
/// read this time.
async fn check(consumer: &Arc<ReaderConsumer>, topic: &str) -> Option<PartitionStates> {
    let (c, t) = (consumer.clone(), topic.to_string());
    let checked = tokio::task::spawn_blocking(move || orphaned(&c, &t)).await;
    match checked {
        Ok(Ok(p)) => Some(p),
        Ok(Err(e)) => {
            log::debug!("orphan watch: check failed: {}", Chain(&e));
            None
        }
        Err(_) => None,
    }
}

/// The `stalled` partitions no live owner holds: none while what the peers hold is not known
/// lately.
fn not_held_by_peers(
    mut stalled: BTreeSet<i32>,
    lease: &Lease,
    topic: &str,
    stall: Duration,
) -> BTreeSet<i32> {
    // Busy is not orphaned: a partition a live owner holds stays with it.
    let Some(held) = lease.held_by_peers(PEERS_FRESH) else {
        log::debug!("orphan watch: what peers hold is not known lately; not rejoining");
        return BTreeSet::new();
    };
    let held_stalled: BTreeSet<i32> = stalled.intersection(&held).copied().collect();
    stalled.retain(|p| !held.contains(p));
    if !held_stalled.is_empty() {
        log::debug!(
            "orphan watch: partitions {held_stalled:?} of {topic} show no progress for \
             {stall:?} but are held by live owners; leaving them"
        );
    }
    stalled
}

/// Leaves the group and joins it again, as a new member: the coordinator assigns every partition
/// afresh.
async fn rejoin(consumer: &Arc<ReaderConsumer>, topic: &str) {
    let (c, t) = (consumer.clone(), topic.to_string());
    let rejoined = tokio::task::spawn_blocking(move || {
        c.unsubscribe();
        c.subscribe(&[&t])
    })
    .await;
    match rejoined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("kafka reader: cannot rejoin the group: {e}"),
        Err(e) => log::error!("kafka reader: rejoin task failed: {e}"),
    }
}

/// Per partition: `None` when it is ours, otherwise its committed offset and the messages after it.
type PartitionStates = Vec<(i32, Option<(i64, i64)>)>;

/// What a check could not read, with the client's error.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("assignment")]
    Assignment(#[source] KafkaError),
    #[error("metadata of {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: KafkaFailure,
    },
    #[error("committed offsets")]
    Committed(#[source] KafkaError),
    #[error("watermarks of partition {partition}")]
    Watermarks {
        partition: i32,
        #[source]
        source: KafkaError,
    },
}

/// The state of every partition of `topic`. Blocking.
fn orphaned(consumer: &ReaderConsumer, topic: &str) -> Result<PartitionStates, CheckError> {
    // An instance with nothing assigned is judged too: it may have joined while a killed member's
    // session was still open, and such a broker then gives it nothing, ever. A short rebalance
    // (nothing assigned for a moment) cannot look like `stall` without progress.
    let assignment = consumer.assignment().map_err(CheckError::Assignment)?;
    let ours: BTreeSet<i32> = assignment
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    let all = crate::kafka::partition_ids(consumer.client(), topic, TIMEOUT).map_err(|source| {
        CheckError::Metadata {
            topic: topic.to_string(),
            source,
        }
    })?;
    let mut tpl = TopicPartitionList::new();
    for &p in all.iter().filter(|p| !ours.contains(p)) {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .map_err(CheckError::Committed)?;
    let mut out: PartitionStates = ours.iter().map(|&p| (p, None)).collect();
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, e.partition(), TIMEOUT)
            .map_err(|source| CheckError::Watermarks {
                partition: e.partition(),
                source,
            })?;
        let committed = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        out.push((e.partition(), Some((committed, high - committed))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_stalled_only_with_waiting_messages_and_no_progress() {
        let stall = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut t = StallTracker::default();
        assert!(!t.observe(0, 5, 3, t0, stall));
        assert!(!t.observe(0, 5, 3, t0 + Duration::from_secs(9), stall));
        assert!(t.observe(0, 5, 3, t0 + Duration::from_secs(10), stall));
        // Progress resets the clock.
        assert!(!t.observe(0, 6, 2, t0 + Duration::from_secs(11), stall));
        assert!(!t.observe(0, 6, 2, t0 + Duration::from_secs(20), stall));
        // Nothing waiting is never stalled.
        assert!(!t.observe(1, 9, 0, t0, stall));
        assert!(!t.observe(1, 9, 0, t0 + Duration::from_secs(60), stall));
    }
}
