//! The latency phase, campaigns at a steady rate timed by the service's own histogram, and the
//! backlogs, resident memory sampled while each drains.

use std::time::{Duration, Instant};

use campaign_actors::campaign::Campaign;
use rdkafka::producer::FutureRecord;

use super::pipeline::{wait_processed, Service};
use super::{progress, Bench};
use crate::measure::{histogram_buckets, resident_bytes};
use crate::setup::{err, BenchResult};
use crate::workload::{campaign, campaign_json, LATENCY_RESTAURANT};

/// The latency phase: campaigns sent, their rate, and the histogram of their latencies alone.
pub(super) struct Latency {
    pub(super) total_latency: usize,
    pub(super) rate: u32,
    pub(super) phase: Vec<(f64, u64)>,
}

impl Bench<'_> {
    /// Latency at a steady rate well below saturation, from the service's own histogram of the
    /// time between a campaign's Kafka timestamp and both sinks confirmed (only this phase's
    /// observations: the counts before it are subtracted).
    pub(super) async fn latency(&self, service: &mut Service, rate: u32) -> BenchResult<Latency> {
        let (args, now) = (self.args, self.now);
        let Service {
            metrics,
            producer,
            input,
            want,
            ..
        } = service;
        progress("latency");
        let before = histogram_buckets(&metrics.end_to_end_latency);
        let total_latency = (rate * args.latency_secs) as usize;
        let tick = Duration::from_secs_f64(1.0 / f64::from(rate));
        let mut next = Instant::now();
        let mut sends = Vec::with_capacity(total_latency);
        for i in 0..total_latency {
            let c = campaign(3_000_000 + i, LATENCY_RESTAURANT, now);
            let json = campaign_json(&c);
            sends.push(
                producer
                    .send_result(
                        FutureRecord::to(input)
                            .payload(&json)
                            .key(&c.adv_campaign_id),
                    )
                    .map_err(|(e, _)| format!("produce campaign: {e}"))?,
            );
            next += tick;
            actix_rt::time::sleep_until(next.into()).await;
        }
        for s in futures::future::join_all(sends).await {
            s.map_err(err("produce campaign"))?
                .map_err(|(e, _)| format!("produce campaign: {e}"))?;
        }
        *want += total_latency as u64;
        wait_processed(metrics, *want, "latency", || Ok(())).await?;
        let after = histogram_buckets(&metrics.end_to_end_latency);
        let phase: Vec<(f64, u64)> = after
            .iter()
            .zip(&before)
            .map(|((bound, a), (_, b))| (*bound, a - b))
            .collect();
        Ok(Latency {
            total_latency,
            rate,
            phase,
        })
    }

    /// Memory under backlog: a backlog produced at once, then one ten times larger; resident
    /// memory sampled while each drains.
    pub(super) async fn backlog(&self, service: &mut Service) -> BenchResult<Vec<(u64, u64, f64)>> {
        let (args, now) = (self.args, self.now);
        let mut backlog_peaks = Vec::new();
        let mut first_id = 4_000_000;
        for n in [args.backlog_campaigns, args.backlog_campaigns * 10] {
            progress(&format!("backlog of {n} campaigns"));
            let campaigns: Vec<Campaign> = (0..n)
                .map(|i| campaign(first_id + i, LATENCY_RESTAURANT, now))
                .collect();
            first_id += n;
            let start_rss = resident_bytes();
            let mut peak = start_rss;
            let started = Instant::now();
            service
                .run(&campaigns, "backlog", |_| peak = peak.max(resident_bytes()))
                .await?;
            let rate = (n * args.latency_fanout) as f64 / started.elapsed().as_secs_f64();
            backlog_peaks.push((start_rss, peak, rate.round()));
        }
        Ok(backlog_peaks)
    }
}
