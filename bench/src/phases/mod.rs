//! One run of `campaign-bench` (one shape of the matrix), in a database and on topics of its own:
//! [`run`] runs the phases in turn, each in a file of its own, and returns the report.
//!
//! - `cache`: the subscribers seeded, the extra pairs of the cache, a full load of the cache;
//! - `ceilings`: (a) the raw producer, (b) the raw binary `COPY`, (c) both at once;
//! - `floor`: the latency floor of the two sinks, with no pipeline in between;
//! - `hop`: the latency floor of the input hop;
//! - `baseline`: the plain Python pipeline on the workload of (d), with `--baseline-python`;
//! - `pipeline`: (d) the service itself, and the running service the later phases feed;
//! - `latency`: the latency phase and the backlogs;
//! - `reloads`: (e) the workload of (d) again while the cache reloads;
//! - `producer`: the upstream producer of campaigns, and the child process that produces (d)'s;
//! - `report`: the JSON line of every figure.
//!
//! This file holds what every phase shares: [`Bench`], with this run's names, topics and tables.

use std::sync::Arc;

use campaign_actors::kafka::ProducerSettings;
use campaign_actors::sinks::kafka_writer::KafkaSinkSettings;
use tokio_postgres::Client;

use crate::args::Args;
use crate::setup::{connect, create_topics, err, in_own_database, service_config, BenchResult};
use crate::workload::{workload, Workload};

mod baseline;
mod cache;
mod ceilings;
mod floor;
mod hop;
mod latency;
mod pipeline;
mod producer;
mod reloads;
mod report;

pub use producer::produce_workload;

use cache::CacheLoad;
use ceilings::Ceilings;
use floor::FloorTimes;
use latency::Latency;
use pipeline::{PipelineRun, Service};
use reloads::Reloads;
use report::report;

/// One run (of one shape), in a database and on topics of its own; `k` tells the runs of one
/// process apart.
pub async fn run(args: Args, k: usize) -> BenchResult<serde_json::Value> {
    let now = campaign_actors::clock::unix_secs();
    let run_id = format!("{}_{k}", std::process::id());
    let database = format!("cn_bench_{run_id}");
    let args = &args;
    in_own_database(&args.postgres_url, &database, |url: String| async move {
        run_in(args, &url, now, &run_id).await
    })
    .await
}

/// Progress on stderr, one line per step.
pub fn progress(what: &str) {
    eprintln!("campaign-bench: {what}");
}

/// What every phase shares: the arguments, the benchmark's own database and this run's names.
struct Bench<'a> {
    args: &'a Args,
    db: Client,
    db_url: &'a str,
    now: i64,
    run_id: &'a str,
}

/// Every phase's figures, for the report.
struct Figures {
    sizes: Vec<usize>,
    pairs: usize,
    cache: CacheLoad,
    w: Arc<Workload>,
    ceilings: Ceilings,
    floor: Vec<FloorTimes>,
    /// Seconds each campaign of the input hop's floor took from its Kafka timestamp to a reader.
    hop: Vec<f64>,
    /// The plain Python pipeline on the same workload, with `--baseline-python`.
    baseline: Option<crate::baseline::BaselineRun>,
    d: PipelineRun,
    latency: Latency,
    /// The backlog and reload phases, unless the run is `pipeline_only`.
    rest: Option<Rest>,
}

/// The figures of the phases a shape of the matrix skips.
struct Rest {
    /// Resident bytes at the start, their peak and notifications per second, of each backlog.
    backlog_peaks: Vec<(u64, u64, f64)>,
    e: Reloads,
}

/// Every phase in turn, in the benchmark's own database at `db_url`.
async fn run_in(
    args: &Args,
    db_url: &str,
    now: i64,
    run_id: &str,
) -> BenchResult<serde_json::Value> {
    let bench = Bench::open(args, db_url, now, run_id).await?;
    let sizes = bench.seed_subscribers().await?;
    bench.seed_cache_pairs().await?;
    let pairs = sizes.iter().sum::<usize>() + args.cache_pairs;
    let cache = bench.load_cache(pairs).await?;
    let w = Arc::new(workload(cache.snapshot.clone(), args, now));
    bench.create_sinks().await?;
    let ceilings = bench.ceilings(&w).await?;
    let rate = latency_rate(args, &ceilings, w.notifications);
    let floor = bench.floor(&cache.snapshot, rate).await?;
    let hop = bench.input_hop(rate).await?;
    let baseline = match &args.baseline_python {
        Some(python) => Some(bench.baseline(python, &w).await?),
        None => None,
    };
    let (mut service, d) = bench.pipeline(&w).await?;
    let latency = bench.latency(&mut service, rate).await?;
    let rest = bench.rest(&mut service).await?;
    let expected = expected_notifications(args, &w, &latency, rest.is_some());
    service.finish(expected).await?;
    let figures = Figures {
        sizes,
        pairs,
        cache,
        w,
        ceilings,
        floor,
        hop,
        baseline,
        d,
        latency,
        rest,
    };
    Ok(report(args, &figures))
}

/// Campaigns per second in the latency phases: `--latency-rate`, or less where that many
/// campaigns of the latency fan-out would ask for more than half the dual-sink ceiling (at
/// fan-out 1 000, 100 campaigns a second are more than the broker takes, and the phase would
/// measure a growing queue, not a latency).
fn latency_rate(args: &Args, ceilings: &Ceilings, notifications: usize) -> u32 {
    let ceiling_per_s = notifications as f64 / ceilings.c;
    let affordable = (0.5 * ceiling_per_s / args.latency_fanout.max(1) as f64).floor();
    args.latency_rate.min(affordable as u32).max(1)
}

/// Notifications the service must have written to each sink by the end: those of (d) and of the
/// latency phase, and with the backlog and reload phases those of the two backlogs (one, then ten
/// times `--backlog-campaigns`) and of (e).
fn expected_notifications(args: &Args, w: &Workload, latency: &Latency, rest: bool) -> usize {
    let mut expected = w.notifications + latency.total_latency * args.latency_fanout;
    if rest {
        expected += w.notifications + args.backlog_campaigns * 11 * args.latency_fanout;
    }
    expected
}

impl<'a> Bench<'a> {
    /// The benchmark's own database at `db_url`, with the service's schema.
    async fn open(
        args: &'a Args,
        db_url: &'a str,
        now: i64,
        run_id: &'a str,
    ) -> BenchResult<Bench<'a>> {
        let mut db = connect(db_url).await?;
        campaign_actors::postgres::ensure_schema(&mut db)
            .await
            .map_err(err("schema"))?;
        Ok(Bench {
            args,
            db,
            db_url,
            now,
            run_id,
        })
    }
}

impl Bench<'_> {
    /// The name of this run's topic `what`.
    fn topic(&self, what: &str) -> String {
        format!("cn-bench-{}-{what}", self.run_id)
    }

    /// The service's Kafka sink settings, writing to this run's topic `what`.
    fn kafka(&self, what: &str) -> KafkaSinkSettings {
        KafkaSinkSettings {
            producer: ProducerSettings {
                brokers: self.args.brokers.clone(),
                message_timeout_ms: 60_000,
                overrides: self.args.producer_properties.clone(),
            },
            topic: self.topic(what),
            lease: campaign_actors::lease::Lease::unbounded(),
            transactional_id: None,
            recalls: Default::default(),
            max_per_sec: 0,
        }
    }

    /// The service's config in this run: its topics and database.
    fn config(&self) -> BenchResult<campaign_actors::Config> {
        let prefix = format!("cn-bench-{}", self.run_id);
        let args = self.args;
        let (producer, consumer) = (&args.producer_properties, &args.consumer_properties);
        let cap = args.per_client_max;
        service_config(&args.brokers, &prefix, self.db_url, producer, consumer, cap)
    }

    /// This run's topics, and the ceilings' tables shaped like `subscribers_feedback`.
    async fn create_sinks(&self) -> BenchResult<()> {
        let args = self.args;
        let topic = |what: &str| self.topic(what);
        create_topics(
            &args.brokers,
            &[
                (&topic("raw"), args.partitions),
                (&topic("dual"), args.partitions),
                (&topic("floor"), args.partitions),
                (&topic("hop"), args.partitions),
                (&topic("in"), args.partitions),
                (&topic("out"), args.partitions),
                (&topic("dlq"), 1),
                (&topic("py-in"), args.partitions),
                (&topic("py-out"), args.partitions),
            ],
        )
        .await?;
        for t in ["bench_copy", "bench_dual"] {
            self.db
                .batch_execute(&format!(
                    "CREATE TABLE {t} (LIKE subscribers_feedback INCLUDING ALL)"
                ))
                .await
                .map_err(err("ceiling table"))?;
        }
        Ok(())
    }

    /// The backlog and reload phases, unless the run is `pipeline_only`.
    async fn rest(&self, service: &mut Service) -> BenchResult<Option<Rest>> {
        if self.args.pipeline_only {
            return Ok(None);
        }
        let backlog_peaks = self.backlog(service).await?;
        let e = self.reloads(service).await?;
        Ok(Some(Rest { backlog_peaks, e }))
    }
}

/// Vacuums a table just written and checkpoints, so that neither autovacuum nor the writing out
/// of a checkpoint runs during a later phase (a checkpoint needs a superuser or pg_checkpoint; it
/// is skipped with a warning otherwise).
async fn settle(db: &Client, table: &str) {
    for statement in [format!("VACUUM ANALYZE {table}"), "CHECKPOINT".to_string()] {
        if let Err(e) = db.batch_execute(&statement).await {
            log::warn!("{statement} failed: {e}");
        }
    }
}
