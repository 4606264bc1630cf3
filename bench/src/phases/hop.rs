//! The latency floor of the input hop: campaigns produced at the latency phase's rate to a topic of
//! their own and read by a consumer set up as the service's reader is.

use std::cell::Cell;
use std::time::{Duration, Instant};

use campaign_actors::Metrics;
use futures::{pin_mut, StreamExt};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::producer::campaign_producer;
use super::{progress, Bench};
use crate::setup::{err, BenchResult};
use crate::workload::{campaign, campaign_json, LATENCY_RESTAURANT};

/// How many campaigns the hop sends and how fast, and how many its reader has read so far: the
/// writer waits until the reader has read the warm-up campaigns.
struct HopPlan {
    /// Untimed campaigns first, until the consumer has read them: its first fetches (metadata,
    /// connections) are not the hop's latency.
    warm_up: usize,
    /// Timed campaigns, after the warm-up.
    total: usize,
    rate: u32,
    read: Cell<usize>,
}

impl Bench<'_> {
    /// The input hop alone: campaigns produced at the latency phase's rate to a topic of their
    /// own and read by a consumer set up as the service's reader is; seconds from each campaign's
    /// Kafka timestamp to its arrival. The pipeline's latency starts at that timestamp, the
    /// sinks' floor only once the campaign is at hand: the two floors add up.
    pub(super) async fn input_hop(&self, rate: u32) -> BenchResult<Vec<f64>> {
        progress("latency floor of the input hop");
        let (args, topic) = (self.args, self.topic("hop"));
        let consumer = self.hop_consumer(&topic)?;
        let producer = campaign_producer(&args.brokers)?;
        let plan = HopPlan {
            warm_up: 20,
            total: (rate * args.latency_secs) as usize,
            rate,
            read: Cell::new(0),
        };
        let send = |i: usize| send_campaign(&producer, &topic, self.now, i);
        let deadline = Duration::from_secs(u64::from(args.latency_secs) + 60);
        let both = futures::future::join(read_hop(&consumer, &plan), write_hop(send, &plan));
        let (secs, written) = actix_rt::time::timeout(deadline, both)
            .await
            .map_err(|_| "the input hop's campaigns did not all arrive".to_string())?;
        written?;
        secs
    }

    /// A consumer of every partition of `topic` from the beginning.
    fn hop_consumer(
        &self,
        topic: &str,
    ) -> BenchResult<StreamConsumer<impl ConsumerContext + 'static>> {
        // The service's own consumer, from the service's config: the same fetch settings. It
        // stores no offset, so it commits none.
        let mut reader = self.config()?.settings().reader;
        reader.group_id = format!("cn-bench-{}-hop", self.run_id);
        let consumer = reader
            .create_consumer(Metrics::new(), campaign_actors::lease::Lease::unbounded())
            .map_err(err("hop consumer"))?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..self.args.partitions {
            partitions
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(err("hop partitions"))?;
        }
        consumer.assign(&partitions).map_err(err("hop assign"))?;
        Ok(consumer)
    }
}

/// Reads until every timed campaign has arrived; seconds from each one's Kafka timestamp to its
/// arrival.
async fn read_hop<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    plan: &HopPlan,
) -> BenchResult<Vec<f64>> {
    let mut secs = Vec::with_capacity(plan.total);
    let stream = consumer.stream();
    pin_mut!(stream);
    while secs.len() < plan.total {
        let message = stream
            .next()
            .await
            .ok_or("the hop consumer stopped")?
            .map_err(err("hop consume"))?;
        let sent_ms = message.timestamp().to_millis().unwrap_or_default();
        let now_ms = campaign_actors::clock::unix_ms();
        plan.read.set(plan.read.get() + 1);
        if plan.read.get() > plan.warm_up {
            secs.push((now_ms - sent_ms) as f64 / 1000.0);
        }
    }
    Ok(secs)
}

/// Sends the warm-up campaigns, waits until they are read, then sends the timed ones at the
/// plan's rate.
async fn write_hop(send: impl Fn(usize) -> BenchResult<()>, plan: &HopPlan) -> BenchResult<()> {
    for i in 0..plan.warm_up {
        send(5_500_000 + i)?;
    }
    while plan.read.get() < plan.warm_up {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let tick = Duration::from_secs_f64(1.0 / f64::from(plan.rate));
    let mut next = Instant::now();
    for i in 0..plan.total {
        send(5_000_000 + i)?;
        next += tick;
        actix_rt::time::sleep_until(next.into()).await;
    }
    Ok(())
}

/// Hands campaign `i` of the latency restaurant to the producer, not waiting for its delivery.
fn send_campaign(producer: &FutureProducer, topic: &str, now: i64, i: usize) -> BenchResult<()> {
    let c = campaign(i, LATENCY_RESTAURANT, now);
    let json = campaign_json(&c);
    let record = FutureRecord::to(topic)
        .payload(&json)
        .key(&c.adv_campaign_id);
    producer
        .send_result(record)
        .map(|_| ())
        .map_err(|(e, _)| format!("produce campaign: {e}"))
}
