//! The upstream producer of campaigns, and the child process that produces the campaigns of (d)
//! (`--produce-campaigns`), so that producing the input is not counted as the service's CPU.

use campaign_actors::campaign::Campaign;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::Bench;
use crate::args::Args;
use crate::setup::{err, BenchResult};
use crate::workload::{campaign_json, workload_campaigns};

/// The child process of (d): produces its campaigns to `topic`.
pub async fn produce_workload(args: &Args, topic: &str) -> BenchResult<()> {
    let now = args
        .now
        .ok_or("--now is required with --produce-campaigns")?;
    let producer = campaign_producer(&args.brokers)?;
    produce_campaigns(&producer, topic, &workload_campaigns(args, now)).await
}

/// The upstream producer of campaigns: it sends each at once, since its own batching delay is
/// not the service's latency.
pub(super) fn campaign_producer(brokers: &str) -> BenchResult<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        // At fan-out 1 the whole workload is campaigns, produced at once.
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .map_err(err("campaign producer"))
}

/// Produces `campaigns` to `topic` at once and waits until the broker has every one.
pub(super) async fn produce_campaigns(
    producer: &FutureProducer,
    topic: &str,
    campaigns: &[Campaign],
) -> BenchResult<()> {
    let mut sends = Vec::with_capacity(campaigns.len());
    for c in campaigns {
        let json = campaign_json(c);
        let send = producer
            .send_result(
                FutureRecord::to(topic)
                    .payload(&json)
                    .key(&c.adv_campaign_id),
            )
            .map_err(|(e, _)| format!("produce campaign: {e}"))?;
        sends.push(send);
    }
    for s in futures::future::join_all(sends).await {
        s.map_err(err("produce campaign"))?
            .map_err(|(e, _)| format!("produce campaign: {e}"))?;
    }
    Ok(())
}

impl Bench<'_> {
    /// A child process that produces the campaigns of (d) to `topic` (see `--produce-campaigns`).
    pub(super) fn produce_in_child(&self, topic: &str) -> BenchResult<std::process::Child> {
        let args = self.args;
        std::process::Command::new(std::env::current_exe().map_err(err("own path"))?)
            .args(["--brokers", &args.brokers, "--produce-campaigns", topic])
            .args(["--campaigns", &args.campaigns.to_string()])
            .args(["--restaurants", &args.restaurants.to_string()])
            .args(["--now", &self.now.to_string()])
            .spawn()
            .map_err(err("campaign producer"))
    }
}
