//! (d): the real pipeline, delivery guarantees on, timed until every notification of the
//! workload is confirmed in both sinks; and the running service the phases after it feed.

use std::time::{Duration, Instant};

use campaign_actors::campaign::Campaign;
use campaign_actors::{Metrics, Pipeline};
use rdkafka::producer::FutureProducer;

use super::producer::{campaign_producer, produce_campaigns};
use super::{progress, settle, Bench};
use crate::measure::{cpu_seconds, others_cpu_seconds, processed};
use crate::setup::{err, BenchResult};
use crate::workload::Workload;

/// (d): seconds, and CPU seconds of the service (this process), the broker and Postgres; and
/// the notifications the per-client cap kept from both sinks.
pub(super) struct PipelineRun {
    pub(super) secs: f64,
    pub(super) cpu: f64,
    pub(super) others: (f64, f64),
    pub(super) capped: u64,
}

/// The running service, and what the phases from (d) on feed it through.
pub(super) struct Service {
    pipeline: Pipeline,
    pub(super) metrics: Metrics,
    pub(super) producer: FutureProducer,
    pub(super) input: String,
    /// Campaigns produced to it so far: each phase waits until all of them are processed.
    pub(super) want: u64,
}

impl Bench<'_> {
    /// (d): the pipeline, guarantees on; returns the running service for the phases after it.
    pub(super) async fn pipeline(&self, w: &Workload) -> BenchResult<(Service, PipelineRun)> {
        progress("(d) pipeline");
        let mut service = self.start_service().await?;
        let others_before = others_cpu_seconds();
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let mut producer = self.produce_in_child(&service.input)?;
        service.want += w.campaigns.len() as u64;
        let produced = wait_processed(&service.metrics, service.want, "(d)", || {
            match producer.try_wait().map_err(err("campaign producer"))? {
                Some(status) if !status.success() => {
                    Err(format!("the campaign producer exited with {status}"))
                }
                _ => Ok(()),
            }
        })
        .await;
        let d = started.elapsed().as_secs_f64();
        let _ = producer.kill();
        let _ = producer.wait();
        produced?;
        let cpu = cpu_seconds() - cpu_before;
        let capped = service.metrics.notifications_capped.get();
        let d_others = others_cpu_seconds();
        let d_others = (d_others.0 - others_before.0, d_others.1 - others_before.1);
        // (d) left a million new rows and as many cleared outbox marks behind: vacuum and
        // checkpoint now rather than during the latency phase.
        settle(&self.db, "subscribers_feedback").await;
        settle(&self.db, "campaign_notifier_outbox").await;
        Ok((
            service,
            PipelineRun {
                secs: d,
                cpu,
                others: d_others,
                capped,
            },
        ))
    }

    /// The service on this run's topics and database, and a producer of campaigns for it.
    async fn start_service(&self) -> BenchResult<Service> {
        let brokers = &self.args.brokers;
        let pipeline = Pipeline::start(self.config()?, Metrics::new())
            .await
            .map_err(err("pipeline"))?;
        let metrics = pipeline.metrics.clone();
        // The upstream producer of campaigns sends each at once: its own batching delay is not
        // the service's latency.
        let producer = campaign_producer(brokers)?;
        Ok(Service {
            pipeline,
            metrics,
            producer,
            input: self.topic("in"),
            want: 0,
        })
    }
}

impl Service {
    /// Produces `campaigns` at once and waits until the service has processed them and all
    /// produced before; `tick` runs at each check.
    pub(super) async fn run(
        &mut self,
        campaigns: &[Campaign],
        phase: &str,
        mut tick: impl FnMut(&Pipeline),
    ) -> BenchResult<()> {
        self.want += campaigns.len() as u64;
        produce_campaigns(&self.producer, &self.input, campaigns).await?;
        let pipeline = &self.pipeline;
        wait_processed(&self.metrics, self.want, phase, || {
            tick(pipeline);
            Ok(())
        })
        .await
    }

    /// Shuts the service down; an error unless it wrote `expected` notifications to each sink,
    /// less those the per-client cap kept from both.
    pub(super) async fn finish(self, expected: usize) -> BenchResult<()> {
        let Service {
            pipeline, metrics, ..
        } = self;
        let text = metrics.render();
        let written_kafka = metric(
            &text,
            "campaign_notifier_notifications_written_total{sink=\"kafka\"}",
        );
        let written_pg = metric(
            &text,
            "campaign_notifier_notifications_written_total{sink=\"postgres\"}",
        );
        let capped = metrics.notifications_capped.get() as usize;
        pipeline.shutdown().await;
        let sent = expected - capped.min(expected);
        if written_kafka as usize != sent || written_pg as usize != sent {
            return Err(format!(
                "pipeline wrote {written_kafka} to Kafka and {written_pg} to Postgres, expected \
                 {sent} ({expected} less {capped} capped)"
            ));
        }
        Ok(())
    }
}

/// Waits until `want` campaigns are processed in all, calling `tick` every 20 ms meanwhile (an
/// error from it ends the wait).
pub(super) async fn wait_processed(
    metrics: &Metrics,
    want: u64,
    phase: &str,
    mut tick: impl FnMut() -> BenchResult<()>,
) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done = processed(metrics);
        if done >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{phase}: {done} of {want} campaigns processed after 30 minutes"
            ));
        }
        tick()?;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sum of every series of the exposition `text` whose line starts with `series`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
