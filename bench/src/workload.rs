//! The campaigns the benchmarks produce, and the workload of `campaign-bench`: who subscribes to
//! which restaurant, and the notifications its campaigns make.

use std::sync::Arc;

use campaign_actors::cache::snapshot::Snapshot;
use campaign_actors::campaign::Campaign;
use campaign_actors::notification::{NotificationBatch, SourceRef};
use campaign_actors::sinks::kafka_writer::KafkaJob;

use crate::args::Args;

/// Campaign `i` of `restaurant`, active from an hour before `now` to an hour after.
pub fn campaign(i: usize, restaurant: &str, now: i64) -> Campaign {
    Campaign {
        restaurant_id: restaurant.to_string(),
        adv_campaign_id: format!("30000000-0000-4000-8000-{i:012}"),
        adv_campaign_content: "New dish, 70% off until 14:00! Every comment on it matters to us."
            .into(),
        adv_campaign_owner: "Ivanov Ivan Ivanovich".into(),
        adv_campaign_owner_contact: "iiivanov@restaurant.ru".into(),
        adv_campaign_datetime_start: now - 3600,
        adv_campaign_datetime_end: now + 3600,
        datetime_created: now - 7200,
    }
}

/// The campaign as a producer writes it to the input topic.
pub fn campaign_json(c: &Campaign) -> String {
    c.input_json()
}

/// Pairs per restaurant, skewed: a few restaurants with very many subscribers, most with few.
pub(crate) fn popularity(restaurants: usize, pairs: usize, skew: f64) -> Vec<usize> {
    let weights: Vec<f64> = (0..restaurants)
        .map(|r| 1.0 / ((r + 1) as f64).powf(skew))
        .collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| ((pairs as f64) * w / total).round().max(1.0) as usize)
        .collect()
}

/// The restaurant of the latency phases and the backlogs, with exactly `--latency-fanout`
/// subscribers.
pub(crate) const LATENCY_RESTAURANT: &str = "1aaaaaaa-0000-4000-8000-000000000000";

/// The id of restaurant `r`.
pub(crate) fn restaurant_id(r: usize) -> String {
    format!("10000000-0000-4000-8000-{r:012}")
}

/// The id of the `n`-th client seeded.
pub(crate) fn client_id(n: usize) -> String {
    format!("20000000-0000-4000-8000-{n:012}")
}

/// The campaigns of (d): one per restaurant in turn.
pub(crate) fn workload_campaigns(args: &Args, now: i64) -> Vec<Campaign> {
    (0..args.campaigns)
        .map(|i| campaign(i, &restaurant_id(i % args.restaurants), now))
        .collect()
}

/// The notifications of every campaign: the same batches the pipeline builds.
pub(crate) struct Workload {
    pub(crate) campaigns: Vec<Campaign>,
    pub(crate) batches: Vec<Arc<NotificationBatch>>,
    /// The same notifications as the Kafka writer receives them.
    pub(crate) kafka_jobs: Vec<Arc<KafkaJob>>,
    pub(crate) notifications: usize,
}

/// The workload of (d): its campaigns and their notifications as the pipeline would build them
/// from `snapshot`.
pub(crate) fn workload(snapshot: Arc<Snapshot>, args: &Args, now: i64) -> Workload {
    let campaigns = workload_campaigns(args, now);
    let mut batches = Vec::new();
    for (i, c) in campaigns.iter().enumerate() {
        if let Some(entry) = snapshot.lookup(&c.restaurant_id) {
            let source = SourceRef {
                topic: "bench".into(),
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
            };
            batches.push(Arc::new(NotificationBatch::new(
                c.clone(),
                now,
                source,
                snapshot.clone(),
                entry,
            )));
        }
    }
    let notifications = batches.iter().map(|b| b.len()).sum();
    let kafka_jobs = batches
        .iter()
        .map(|b| {
            Arc::new(KafkaJob {
                batch: b.clone(),
                clients: (0..b.len()).map(|i| b.client_id(i).to_string()).collect(),
                created_ms: now * 1000,
            })
        })
        .collect();
    Workload {
        campaigns,
        batches,
        kafka_jobs,
        notifications,
    }
}
