//! `campaign-bench`: the service's throughput next to the ceilings of its two sinks, measured in
//! one run on the same machine, plus its CPU cost, its latency, its memory under backlog and the
//! subscriber cache's size, load time and effect on the pipeline.
//!
//! Phases, each on fresh topics and tables:
//! - (a) the service's Kafka sink alone sends every notification (same bytes, same producer
//!   settings, same chunking per partition);
//! - (b) a raw binary `COPY` writes the same rows into a table shaped like `subscribers_feedback`
//!   (its indexes included, so the unique key costs the same);
//! - (c) (a) and (b) at once: the dual-sink ceiling;
//! - the latency floor: each campaign of the latency phase written alone by the service's own
//!   Postgres sink and then its Kafka sink, with no pipeline in between;
//! - (d) the real pipeline, delivery guarantees on: campaigns produced to the input topic, timed
//!   until every notification is confirmed in both sinks; CPU seconds of this process, the broker
//!   and Postgres during it;
//! - latency: campaigns at a steady rate, from the service's end-to-end histogram;
//! - backlog: a backlog of campaigns and one ten times larger, resident memory sampled meanwhile;
//! - (e) the workload of (d) again while the subscriber cache reloads back to back;
//! - the subscriber cache: a full load's time and resident memory per pair, at the size given by
//!   `--pairs` plus `--cache-pairs`.
//!
//! Prints one JSON line with every figure, progress on stderr. Run it with `scripts/bench.sh`,
//! which starts a broker.

use std::process::ExitCode;

/// The service's allocator (see src/main.rs), so that the pipeline measured here allocates as
/// the service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use campaign_actors::cache::snapshot::Snapshot;
use campaign_actors::campaign::Campaign;
use campaign_actors::kafka::ProducerSettings;
use campaign_actors::notification::{NotificationBatch, SourceRef};
use campaign_actors::postgres::PostgresSettings;
use campaign_actors::sinks::kafka_writer::{KafkaJob, KafkaSink, KafkaSinkSettings};
use campaign_actors::sinks::pg_writer::{campaign_params, PgJob, PgSink, PgSinkConfig};
use campaign_actors::sinks::Sink;
use campaign_actors::{Metrics, Pipeline};
use campaign_bench::baseline::{self, BaselineRun, BaselineTarget};
use campaign_bench::measure::{
    cpu_seconds, histogram_buckets, others_cpu_seconds, processed, quantile, resident_bytes,
};
use campaign_bench::setup::{
    connect, create_topics, database_url, err, service_config, BenchResult,
};
use campaign_bench::workload::{campaign, campaign_json};
use clap::Parser;
use futures::{pin_mut, StreamExt, TryStreamExt};
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

#[derive(Parser, Debug)]
#[command(about = "Throughput of campaign-notifier next to the ceilings of its sinks")]
struct Args {
    /// Kafka-protocol brokers (scripts/bench.sh starts one).
    #[arg(long)]
    brokers: String,
    /// Postgres server; the benchmark works in a database of its own, dropped at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Restaurants with subscribers.
    #[arg(long, default_value_t = 2_000)]
    restaurants: usize,
    /// (restaurant, client) pairs in total.
    #[arg(long, default_value_t = 1_000_000)]
    pairs: usize,
    /// Campaigns, one per restaurant in turn: with campaigns = restaurants every pair gets one
    /// notification.
    #[arg(long, default_value_t = 2_000)]
    campaigns: usize,
    /// Zipf exponent of restaurant popularity: restaurant r has a share proportional to
    /// 1 / (r + 1)^skew.
    #[arg(long, default_value_t = 1.0)]
    skew: f64,
    /// Partitions of every topic the benchmark creates.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Latency phase: campaigns per second, each to a restaurant with `latency_fanout`
    /// subscribers, for `latency_secs` seconds.
    #[arg(long, default_value_t = 100)]
    latency_rate: u32,
    #[arg(long, default_value_t = 100)]
    latency_fanout: usize,
    #[arg(long, default_value_t = 10)]
    latency_secs: u32,
    /// Backlog phase: campaigns (fan-out `latency_fanout`) produced at once, then ten times as
    /// many; resident memory is sampled while each drains.
    #[arg(long, default_value_t = 500)]
    backlog_campaigns: usize,
    /// Extra (restaurant, client) pairs of restaurants without campaigns, so that the cache is
    /// measured at this size and the refresh phase reloads a cache this large.
    #[arg(long, default_value_t = 10_000_000)]
    cache_pairs: usize,
    /// Extra librdkafka producer property KEY=VALUE, for the ceilings and the pipeline alike
    /// (repeatable).
    #[arg(long = "producer-property", value_parser = parse_property)]
    producer_properties: Vec<(String, String)>,
    /// Extra librdkafka consumer property KEY=VALUE for the service's reader (repeatable).
    #[arg(long = "consumer-property", value_parser = parse_property)]
    consumer_properties: Vec<(String, String)>,
    /// Every restaurant with exactly this many subscribers instead of the Zipf mix: `--pairs`
    /// rounded down to a multiple of it, one campaign per restaurant, and the latency phases at
    /// this fan-out.
    #[arg(long)]
    fanout: Option<usize>,
    /// The fan-out matrix: for each shape in turn (a fan-out, or `zipf` for the mix of
    /// `--restaurants` and `--skew`), about `--notifications` notifications on fresh topics and
    /// tables, the ceilings, the pipeline and the latency phases only; one JSON line per shape.
    /// `--matrix` alone: 1,10,100,1000,zipf.
    #[arg(long, value_delimiter = ',', value_parser = parse_shape, num_args = 0..=1,
          default_missing_value = "1,10,100,1000,zipf")]
    matrix: Vec<Shape>,
    /// Notifications per shape of `--matrix`.
    #[arg(long, default_value_t = 300_000)]
    notifications: usize,
    /// Skips the backlog, reload and cache phases (set for each shape of `--matrix`).
    #[arg(skip)]
    pipeline_only: bool,
    /// Also run the plain Python pipeline of bench/baseline/pipeline.py with this interpreter (it
    /// needs confluent-kafka and psycopg; `scripts/bench.sh --baseline` installs them in a
    /// virtual environment of its own) on the same broker, Postgres and workload as (d), and
    /// report its rate and CPU next to the service's.
    #[arg(long)]
    baseline_python: Option<String>,
    /// With `--baseline-python`: write an SVG chart of every shape's rate and CPU, service
    /// beside baseline, to this file at the end.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Internal: produce the `--campaigns` campaigns of (d), made at `--now`, to this topic and
    /// exit. (d) runs this in a child process, so that producing the input is not counted as the
    /// service's CPU.
    #[arg(long, hide = true)]
    produce_campaigns: Option<String>,
    #[arg(long, hide = true)]
    now: Option<i64>,
}

/// One shape of the fan-out matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// Every restaurant with this many subscribers.
    Fanout(usize),
    /// Restaurant popularity after Zipf.
    Zipf,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    match s {
        "zipf" => Ok(Shape::Zipf),
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Shape::Fanout(n)),
            _ => Err(format!("{s}: expected a fan-out of at least 1 or `zipf`")),
        },
    }
}

impl Args {
    /// The arguments of one shape of the matrix: `notifications` in all, nothing but the
    /// pipeline's phases.
    fn for_shape(&self, shape: Shape) -> Args {
        let n = self.notifications.max(1);
        let mut args = Args {
            matrix: Vec::new(),
            pipeline_only: true,
            cache_pairs: 0,
            pairs: n,
            producer_properties: self.producer_properties.clone(),
            consumer_properties: self.consumer_properties.clone(),
            brokers: self.brokers.clone(),
            postgres_url: self.postgres_url.clone(),
            baseline_python: self.baseline_python.clone(),
            chart: None,
            produce_campaigns: None,
            ..*self
        };
        if let Shape::Fanout(f) = shape {
            args.fanout = Some(f);
            args.latency_fanout = f;
        } else {
            args.fanout = None;
        }
        args.normalize();
        args
    }

    /// With `--fanout`: restaurants and campaigns follow from the pairs.
    fn normalize(&mut self) {
        if let Some(f) = self.fanout {
            let f = f.max(1);
            self.fanout = Some(f);
            self.restaurants = (self.pairs / f).max(1);
            self.pairs = self.restaurants * f;
            self.campaigns = self.restaurants;
        }
    }

    /// The shape's name in the report.
    fn shape(&self) -> String {
        match self.fanout {
            Some(f) => format!("fanout {f}"),
            None => format!("zipf {}", self.skew),
        }
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    args.normalize();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let system = actix_rt::System::new();
    if let Some(topic) = &args.produce_campaigns {
        return match system.block_on(produce_workload(&args, topic)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("producing the campaigns failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let chart = args.chart.clone();
    let mut reports = Vec::new();
    let runs: Vec<Args> = match args.matrix.is_empty() {
        true => vec![args],
        false => args.matrix.iter().map(|s| args.for_shape(*s)).collect(),
    };
    for (k, args) in runs.into_iter().enumerate() {
        progress(&format!("shape {}", args.shape()));
        match system.block_on(run(args, k)) {
            Ok(report) => {
                println!("{report}");
                reports.push(report);
            }
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(path) = chart {
        let Some(svg) = campaign_bench::chart::draw(&reports) else {
            eprintln!("no chart: the baseline did not run (--baseline-python)");
            return ExitCode::FAILURE;
        };
        if let Err(e) = std::fs::write(&path, svg) {
            eprintln!("cannot write the chart to {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        progress(&format!("chart written to {}", path.display()));
    }
    ExitCode::SUCCESS
}

/// Pairs per restaurant, skewed: a few restaurants with very many subscribers, most with few.
fn popularity(restaurants: usize, pairs: usize, skew: f64) -> Vec<usize> {
    let weights: Vec<f64> = (0..restaurants)
        .map(|r| 1.0 / ((r + 1) as f64).powf(skew))
        .collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| ((pairs as f64) * w / total).round().max(1.0) as usize)
        .collect()
}

const LATENCY_RESTAURANT: &str = "1aaaaaaa-0000-4000-8000-000000000000";

fn restaurant_id(r: usize) -> String {
    format!("10000000-0000-4000-8000-{r:012}")
}

fn client_id(n: usize) -> String {
    format!("20000000-0000-4000-8000-{n:012}")
}

/// The campaigns of (d): one per restaurant in turn.
fn workload_campaigns(args: &Args, now: i64) -> Vec<Campaign> {
    (0..args.campaigns)
        .map(|i| campaign(i, &restaurant_id(i % args.restaurants), now))
        .collect()
}

/// The child process of (d): produces its campaigns to `topic`.
async fn produce_workload(args: &Args, topic: &str) -> BenchResult<()> {
    let now = args
        .now
        .ok_or("--now is required with --produce-campaigns")?;
    let producer = campaign_producer(&args.brokers)?;
    produce_campaigns(&producer, topic, &workload_campaigns(args, now)).await
}

/// The upstream producer of campaigns: it sends each at once, since its own batching delay is
/// not the service's latency.
fn campaign_producer(brokers: &str) -> BenchResult<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        // At fan-out 1 the whole workload is campaigns, produced at once.
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .map_err(err("campaign producer"))
}

/// The notifications of every campaign: the same batches the pipeline builds.
struct Workload {
    campaigns: Vec<Campaign>,
    batches: Vec<Arc<NotificationBatch>>,
    /// The same notifications as the Kafka writer receives them.
    kafka_jobs: Vec<Arc<KafkaJob>>,
    notifications: usize,
}

fn workload(snapshot: Arc<Snapshot>, args: &Args, now: i64) -> Workload {
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

/// (a): every notification through the service's Kafka sink alone (its producer settings, its
/// chunking per partition), in groups as the Kafka writer forms them; returns seconds.
async fn raw_produce(kafka: &KafkaSinkSettings, w: &Workload) -> BenchResult<f64> {
    let sink = KafkaSink::connect(kafka.clone())
        .await
        .map_err(err("producer"))?;
    let started = Instant::now();
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut rows = 0;
    for job in &w.kafka_jobs {
        group.push(job.clone());
        rows += job.clients.len();
        if rows >= GROUP_ROWS {
            groups.push(std::mem::take(&mut group));
            rows = 0;
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    futures::stream::iter(groups.into_iter().map(|g| sink.write(g)))
        .buffer_unordered(KafkaSink::MAX_CONCURRENT_WRITES)
        .try_collect::<Vec<_>>()
        .await
        .map_err(err("produce"))?;
    sink.close().await;
    Ok(started.elapsed().as_secs_f64())
}

/// Rows per write, as the writers' default `batch_max_rows`.
const GROUP_ROWS: usize = 5_000;

async fn produce_on_thread(kafka: KafkaSinkSettings, w: Arc<Workload>) -> BenchResult<f64> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err("runtime"))
            .and_then(|rt| rt.block_on(raw_produce(&kafka, &w)));
        let _ = tx.send(result);
    });
    rx.await.map_err(err("producer thread"))?
}

/// (b): every row by binary COPY into `table`; returns seconds.
async fn raw_copy(client: &Client, table: &str, w: &Workload) -> BenchResult<f64> {
    let started = Instant::now();
    copy_rows(client, table, &w.batches).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// One binary `COPY` of the batches' rows into `table`.
async fn copy_rows(
    client: &Client,
    table: &str,
    batches: &[Arc<NotificationBatch>],
) -> BenchResult<()> {
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            concat!(
                "COPY {} (",
                campaign_actors::notification_columns!(),
                ") FROM STDIN (FORMAT binary)"
            ),
            table
        ))
        .await
        .map_err(err("copy in"))?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::INT4,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for batch in batches {
        let [r, c, content, owner, contact, start, end, created] = campaign_params(&batch.campaign);
        let trigger = batch.trigger_datetime_created as i32;
        for i in 0..batch.len() {
            let client = batch.client_id(i).to_string();
            let row: [&(dyn ToSql + Sync); 10] = [
                r, c, content, owner, contact, start, end, &client, created, &trigger,
            ];
            writer.as_mut().write(&row).await.map_err(err("copy row"))?;
        }
    }
    writer.finish().await.map_err(err("copy finish"))?;
    Ok(())
}

/// Upper bound of the highest bucket that holds an observation.
fn max_bound(buckets: &[(f64, u64)]) -> f64 {
    let mut previous = 0;
    let mut highest = 0.0;
    for &(bound, count) in buckets {
        if count > previous {
            highest = bound;
        }
        previous = count;
    }
    highest
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One run (of one shape), in a database and on topics of its own; `k` tells the runs of one
/// process apart.
async fn run(args: Args, k: usize) -> BenchResult<serde_json::Value> {
    let now = campaign_actors::clock::unix_secs();
    let run_id = format!("{}_{k}", std::process::id());
    let database = format!("cn_bench_{run_id}");
    let admin = connect(&args.postgres_url).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .map_err(err("create database"))?;
    let result = run_in(
        &args,
        &database_url(&args.postgres_url, &database),
        now,
        &run_id,
    )
    .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    result
}

/// What every phase shares: the arguments, the benchmark's own database and this run's names.
struct Bench<'a> {
    args: &'a Args,
    db: Client,
    db_url: &'a str,
    now: i64,
    run_id: &'a str,
}

/// A full load of the subscriber cache and what it costs in memory.
struct CacheLoad {
    snapshot: Arc<Snapshot>,
    load_secs: f64,
    cache_bytes_per_pair: f64,
}

/// (a), (b), (c): seconds each, CPU seconds of this process in (a) and (c), and of the broker
/// and Postgres in (c).
struct Ceilings {
    a: f64,
    a_cpu: f64,
    b: f64,
    c: f64,
    c_cpu: f64,
    c_others: (f64, f64),
}

/// (d): seconds, and CPU seconds of the service (this process), the broker and Postgres.
struct PipelineRun {
    secs: f64,
    cpu: f64,
    others: (f64, f64),
}

/// The latency phase: campaigns sent, their rate, and the histogram of their latencies alone.
struct Latency {
    total_latency: usize,
    rate: u32,
    phase: Vec<(f64, u64)>,
}

/// (e): seconds, and the cache reloads completed meanwhile with their seconds in all.
struct Reloads {
    secs: f64,
    reloads: u64,
    reload_secs: f64,
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
    baseline: Option<BaselineRun>,
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

/// The running service, and what the phases from (d) on feed it through.
struct Service {
    pipeline: Pipeline,
    metrics: Metrics,
    producer: FutureProducer,
    input: String,
    /// Campaigns produced to it so far: each phase waits until all of them are processed.
    want: u64,
}

/// Every phase in turn, in the benchmark's own database at `db_url`.
async fn run_in(
    args: &Args,
    db_url: &str,
    now: i64,
    run_id: &str,
) -> BenchResult<serde_json::Value> {
    let mut db = connect(db_url).await?;
    campaign_actors::postgres::ensure_schema(&mut db)
        .await
        .map_err(err("schema"))?;
    let bench = Bench {
        args,
        db,
        db_url,
        now,
        run_id,
    };

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
    let mut expected = w.notifications + latency.total_latency * args.latency_fanout;
    let rest = match args.pipeline_only {
        true => None,
        false => {
            let backlog_peaks = bench.backlog(&mut service).await?;
            let e = bench.reloads(&mut service).await?;
            expected += w.notifications + args.backlog_campaigns * 11 * args.latency_fanout;
            Some(Rest { backlog_peaks, e })
        }
    };
    service.finish(expected).await?;

    Ok(report(
        args,
        &Figures {
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
        },
    ))
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
        }
    }

    /// Subscribers, skewed, written with COPY; returns the pairs of each restaurant.
    async fn seed_subscribers(&self) -> BenchResult<Vec<usize>> {
        let (db, args) = (&self.db, self.args);
        let sizes = match args.fanout {
            Some(f) => vec![f; args.restaurants],
            None => popularity(args.restaurants, args.pairs, args.skew),
        };
        let sink = db
            .copy_in::<_, Bytes>(
                "COPY subscribers_restaurants (restaurant_id, client_id) FROM STDIN (FORMAT binary)",
            )
            .await
            .map_err(err("copy subscribers"))?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::VARCHAR, Type::VARCHAR]);
        pin_mut!(writer);
        let mut n = 0;
        for (r, size) in sizes.iter().enumerate() {
            let restaurant = restaurant_id(r);
            for _ in 0..*size {
                let client = client_id(n);
                n += 1;
                writer
                    .as_mut()
                    .write(&[&restaurant, &client])
                    .await
                    .map_err(err("copy subscriber"))?;
            }
        }
        // The latency phase's restaurant, with exactly the fan-out asked for.
        for _ in 0..args.latency_fanout {
            let client = client_id(n);
            n += 1;
            writer
                .as_mut()
                .write(&[&LATENCY_RESTAURANT, &client])
                .await
                .map_err(err("copy subscriber"))?;
        }
        writer
            .finish()
            .await
            .map_err(err("copy subscribers finish"))?;
        Ok(sizes)
    }

    /// Pairs of restaurants that get no campaign, generated by the server, so that the cache is
    /// measured (and reloaded in phase (e)) at the size asked for.
    async fn seed_cache_pairs(&self) -> BenchResult<()> {
        let (db, args) = (&self.db, self.args);
        if args.cache_pairs > 0 {
            progress(&format!("{} more pairs for the cache", args.cache_pairs));
            db.execute(
                "INSERT INTO subscribers_restaurants (restaurant_id, client_id) \
                 SELECT '40000000-0000-4000-8000-' || lpad((g / 50)::text, 12, '0'), \
                        '50000000-0000-4000-8000-' || lpad(g::text, 12, '0') \
                 FROM generate_series(0::int8, $1::int8 - 1) AS g",
                &[&(args.cache_pairs as i64)],
            )
            .await
            .map_err(err("cache pairs"))?;
        }
        settle(db, "subscribers_restaurants").await;
        Ok(())
    }

    /// The cache: a full load as the service does it, and what it costs in memory per pair of
    /// the `pairs` seeded.
    async fn load_cache(&self, pairs: usize) -> BenchResult<CacheLoad> {
        let db_url = self.db_url;
        let rss_before = resident_bytes();
        let load_started = Instant::now();
        let snapshot = Arc::new(
            campaign_actors::cache::load(PostgresSettings::for_url(db_url))
                .await
                .map_err(|e| campaign_actors::error_chain::Chain(&e).to_string())?,
        );
        let load_secs = load_started.elapsed().as_secs_f64();
        let rss_after = resident_bytes();
        let cache_bytes_per_pair =
            rss_after.saturating_sub(rss_before) as f64 / pairs.max(1) as f64;
        Ok(CacheLoad {
            snapshot,
            load_secs,
            cache_bytes_per_pair,
        })
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

    /// (a), (b), (c). The producer runs on a thread of its own, as the service's Kafka writer
    /// does, so that in (c) neither sink waits for the other's CPU work.
    async fn ceilings(&self, w: &Arc<Workload>) -> BenchResult<Ceilings> {
        let db = &self.db;
        progress("(a) raw producer");
        let kafka = self.kafka("raw");
        let cpu_before = cpu_seconds();
        let a = produce_on_thread(kafka, w.clone()).await?;
        let a_cpu = cpu_seconds() - cpu_before;
        progress("(b) raw binary COPY");
        let b = raw_copy(db, "bench_copy", w).await?;
        settle(db, "bench_copy").await;
        progress("(c) both at once");
        let kafka = self.kafka("dual");
        let others_before = others_cpu_seconds();
        let cpu_before = cpu_seconds();
        let (ca, cb) = futures::join!(
            produce_on_thread(kafka, w.clone()),
            raw_copy(db, "bench_dual", w)
        );
        let c = ca?.max(cb?);
        let c_cpu = cpu_seconds() - cpu_before;
        let c_others = others_cpu_seconds();
        let c_others = (c_others.0 - others_before.0, c_others.1 - others_before.1);
        settle(db, "bench_dual").await;
        Ok(Ceilings {
            a,
            a_cpu,
            b,
            c,
            c_cpu,
            c_others,
        })
    }

    /// The sinks' own latency for one campaign of the latency phase, written one after the other
    /// as the pipeline does (Postgres, then Kafka), at the latency phase's rate.
    async fn floor(&self, snapshot: &Arc<Snapshot>, rate: u32) -> BenchResult<Vec<FloorTimes>> {
        progress("latency floor of the two sinks");
        let kafka = self.kafka("floor");
        let (args, now) = (self.args, self.now);
        latency_floor(&self.db, self.db_url, &kafka, snapshot, args, rate, now).await
    }

    /// The input hop alone: campaigns produced at the latency phase's rate to a topic of their
    /// own and read by a consumer set up as the service's reader is; seconds from each campaign's
    /// Kafka timestamp to its arrival. The pipeline's latency starts at that timestamp, the
    /// sinks' floor only once the campaign is at hand: the two floors add up.
    async fn input_hop(&self, rate: u32) -> BenchResult<Vec<f64>> {
        progress("latency floor of the input hop");
        let (args, topic) = (self.args, self.topic("hop"));
        // The service's own consumer, from the service's config: the same fetch settings. It
        // stores no offset, so it commits none.
        let mut reader = self.config()?.settings().reader;
        reader.group_id = format!("cn-bench-{}-hop", self.run_id);
        let consumer = reader
            .create_consumer(Metrics::new(), campaign_actors::lease::Lease::unbounded())
            .map_err(err("hop consumer"))?;
        let mut partitions = TopicPartitionList::new();
        for p in 0..args.partitions {
            partitions
                .add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(err("hop partitions"))?;
        }
        consumer.assign(&partitions).map_err(err("hop assign"))?;
        let producer = campaign_producer(&args.brokers)?;
        let total = (rate * args.latency_secs) as usize;
        // Untimed campaigns first, until the consumer has read them: its first fetches (metadata,
        // connections) are not the hop's latency.
        let warm_up = 20;
        let read_so_far = std::cell::Cell::new(0);
        let read = async {
            let mut secs = Vec::with_capacity(total);
            let stream = consumer.stream();
            pin_mut!(stream);
            while secs.len() < total {
                let message = stream
                    .next()
                    .await
                    .ok_or("the hop consumer stopped")?
                    .map_err(err("hop consume"))?;
                let sent_ms = message.timestamp().to_millis().unwrap_or_default();
                let now_ms = campaign_actors::clock::unix_ms();
                read_so_far.set(read_so_far.get() + 1);
                if read_so_far.get() > warm_up {
                    secs.push((now_ms - sent_ms) as f64 / 1000.0);
                }
            }
            Ok::<_, String>(secs)
        };
        let send = |i: usize| {
            let c = campaign(i, LATENCY_RESTAURANT, self.now);
            let json = campaign_json(&c);
            let record = FutureRecord::to(&topic)
                .payload(&json)
                .key(&c.adv_campaign_id);
            producer
                .send_result(record)
                .map(|_| ())
                .map_err(|(e, _)| format!("produce campaign: {e}"))
        };
        let write = async {
            for i in 0..warm_up {
                send(5_500_000 + i)?;
            }
            while read_so_far.get() < warm_up {
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
            let tick = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut next = Instant::now();
            for i in 0..total {
                send(5_000_000 + i)?;
                next += tick;
                actix_rt::time::sleep_until(next.into()).await;
            }
            Ok::<_, String>(())
        };
        let deadline = Duration::from_secs(u64::from(args.latency_secs) + 60);
        let (secs, written) = actix_rt::time::timeout(deadline, futures::future::join(read, write))
            .await
            .map_err(|_| "the input hop's campaigns did not all arrive".to_string())?;
        written?;
        secs
    }

    /// The baseline: the plain Python pipeline over the campaigns of (d), produced the same way
    /// to a topic of its own, writing to a topic and a table of its own.
    async fn baseline(&self, python: &str, w: &Workload) -> BenchResult<BaselineRun> {
        progress("baseline: the plain Python pipeline");
        let table = "baseline_feedback";
        baseline::create_table(&self.db, table).await?;
        let (input, output) = (self.topic("py-in"), self.topic("py-out"));
        let group = format!("cn-bench-{}-py", self.run_id);
        let target = BaselineTarget {
            python,
            brokers: &self.args.brokers,
            input: &input,
            output: &output,
            group: &group,
            db_url: self.db_url,
            table,
        };
        // Blocking: nothing else of the benchmark runs meanwhile.
        let run = baseline::run(&target, w.notifications, || self.produce_in_child(&input))?;
        let rows: i64 = self
            .db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(err("baseline rows"))?
            .get(0);
        if run.written != w.notifications as u64 || rows != w.notifications as i64 {
            return Err(format!(
                "the baseline wrote {} notifications ({rows} rows), expected {}",
                run.written, w.notifications
            ));
        }
        settle(&self.db, table).await;
        Ok(run)
    }

    /// (d): the pipeline, guarantees on; returns the running service for the phases after it.
    async fn pipeline(&self, w: &Workload) -> BenchResult<(Service, PipelineRun)> {
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
            },
        ))
    }

    /// A child process that produces the campaigns of (d) to `topic` (see `--produce-campaigns`).
    fn produce_in_child(&self, topic: &str) -> BenchResult<std::process::Child> {
        let args = self.args;
        std::process::Command::new(std::env::current_exe().map_err(err("own path"))?)
            .args(["--brokers", &args.brokers, "--produce-campaigns", topic])
            .args(["--campaigns", &args.campaigns.to_string()])
            .args(["--restaurants", &args.restaurants.to_string()])
            .args(["--now", &self.now.to_string()])
            .spawn()
            .map_err(err("campaign producer"))
    }

    /// The service's config in this run: its topics and database.
    fn config(&self) -> BenchResult<campaign_actors::Config> {
        let prefix = format!("cn-bench-{}", self.run_id);
        let args = self.args;
        let (producer, consumer) = (&args.producer_properties, &args.consumer_properties);
        service_config(&args.brokers, &prefix, self.db_url, producer, consumer)
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

    /// Latency at a steady rate well below saturation, from the service's own histogram of the
    /// time between a campaign's Kafka timestamp and both sinks confirmed (only this phase's
    /// observations: the counts before it are subtracted).
    async fn latency(&self, service: &mut Service, rate: u32) -> BenchResult<Latency> {
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
    async fn backlog(&self, service: &mut Service) -> BenchResult<Vec<(u64, u64, f64)>> {
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

    /// (e): the same workload as (d) again (new campaign ids) while the cache reloads back to
    /// back.
    async fn reloads(&self, service: &mut Service) -> BenchResult<Reloads> {
        let (args, now) = (self.args, self.now);
        progress("(e) pipeline while the cache reloads");
        let again: Vec<Campaign> = (0..args.campaigns)
            .map(|i| campaign(1_000_000 + i, &restaurant_id(i % args.restaurants), now))
            .collect();
        let refreshes = &service.metrics.cache_refresh_duration;
        let (reloads_before, reload_secs_before) =
            (refreshes.get_sample_count(), refreshes.get_sample_sum());
        let started = Instant::now();
        // A request while a load runs is ignored, so asking on every tick reloads back to back.
        service
            .run(&again, "(e)", |pipeline| pipeline.refresh_cache())
            .await?;
        let e = started.elapsed().as_secs_f64();
        let metrics = &service.metrics;
        let reloads = metrics.cache_refresh_duration.get_sample_count() - reloads_before;
        let reload_secs = metrics.cache_refresh_duration.get_sample_sum() - reload_secs_before;
        Ok(Reloads {
            secs: e,
            reloads,
            reload_secs,
        })
    }
}

impl Service {
    /// Produces `campaigns` at once and waits until the service has processed them and all
    /// produced before; `tick` runs at each check.
    async fn run(
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

    /// Shuts the service down; an error unless it wrote `expected` notifications to each sink.
    async fn finish(self, expected: usize) -> BenchResult<()> {
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
        pipeline.shutdown().await;
        if written_kafka as usize != expected || written_pg as usize != expected {
            return Err(format!(
                "pipeline wrote {written_kafka} to Kafka and {written_pg} to Postgres, expected {expected}"
            ));
        }
        Ok(())
    }
}

/// The JSON line of every figure.
fn report(args: &Args, f: &Figures) -> serde_json::Value {
    let floor_total: Vec<f64> = f.floor.iter().map(|t| t.total).collect();
    let floor_max = |part: fn(&FloorTimes) -> f64| f.floor.iter().map(part).fold(0.0, f64::max);
    let n = f.w.notifications as f64;
    let per_s = |secs: f64| (n / secs).round();
    let round = |x: f64, places: i32| {
        let scale = 10f64.powi(places);
        (x * scale).round() / scale
    };
    let per_million = |secs: f64| round(secs / n * 1e6, 2);
    let mib = |bytes: u64| round(bytes as f64 / 1048576.0, 1);
    let floor_p99 = exact_quantile(&floor_total, 0.99);
    let hop_p99 = exact_quantile(&f.hop, 0.99);
    let latency_p99 = quantile(&f.latency.phase, 0.99);
    let mut report = serde_json::json!({
        "shape": args.shape(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "restaurants": args.restaurants,
        "pairs": f.pairs,
        "largest_restaurant": f.sizes.first().copied().unwrap_or(0),
        "campaigns": f.w.campaigns.len(),
        "notifications": f.w.notifications,
        "a_raw_kafka_per_s": per_s(f.ceilings.a),
        "a_raw_kafka_cpu_seconds_per_million": per_million(f.ceilings.a_cpu),
        "b_raw_copy_per_s": per_s(f.ceilings.b),
        "c_dual_ceiling_per_s": per_s(f.ceilings.c),
        "c_cpu_seconds_per_million": {
            "bench": per_million(f.ceilings.c_cpu),
            "broker": per_million(f.ceilings.c_others.0),
            "postgres": per_million(f.ceilings.c_others.1),
        },
        "d_pipeline_per_s": per_s(f.d.secs),
        "d_over_c": round(f.ceilings.c / f.d.secs, 3),
        "d_seconds": round(f.d.secs, 3),
        "d_cpu_seconds_per_million": {
            "service": per_million(f.d.cpu),
            "broker": per_million(f.d.others.0),
            "postgres": per_million(f.d.others.1),
        },
        "service_cpu_seconds_per_million": per_million(f.d.cpu),
        "service_cpu_over_raw_kafka_cpu": round(f.d.cpu / f.ceilings.a_cpu, 2),
        "latency_campaigns": f.latency.total_latency,
        "latency_fanout": args.latency_fanout,
        "latency_rate_per_s": f.latency.rate,
        "latency_p50_seconds": round(quantile(&f.latency.phase, 0.5), 4),
        "latency_p99_seconds": round(latency_p99, 4),
        "latency_max_bucket_le_seconds": max_bound(&f.latency.phase),
        "sinks_latency_floor_p50_seconds": round(exact_quantile(&floor_total, 0.5), 4),
        "sinks_latency_floor_p99_seconds": round(floor_p99, 4),
        "sinks_latency_floor_max_seconds": round(exact_quantile(&floor_total, 1.0), 4),
        "sinks_latency_floor_postgres_max_seconds": round(floor_max(|t| t.postgres), 4),
        "sinks_latency_floor_kafka_max_seconds": round(floor_max(|t| t.kafka), 4),
        "latency_p99_over_floor_p99_ms": round((latency_p99 - floor_p99) * 1000.0, 1),
        "input_hop_floor_p50_seconds": round(exact_quantile(&f.hop, 0.5), 4),
        "input_hop_floor_p99_seconds": round(hop_p99, 4),
        "input_hop_floor_max_seconds": round(exact_quantile(&f.hop, 1.0), 4),
        "latency_p99_over_both_floors_p99_ms": round((latency_p99 - floor_p99 - hop_p99) * 1000.0, 1),
    });
    if let (Some(b), Some(all)) = (&f.baseline, report.as_object_mut()) {
        let service_total = f.d.cpu + f.d.others.0 + f.d.others.1;
        let baseline_total = b.cpu + b.others.0 + b.others.1;
        let more = serde_json::json!({
            "baseline_per_s": per_s(b.secs),
            "baseline_seconds": round(b.secs, 3),
            "baseline_cpu_seconds_per_million": {
                "script": per_million(b.cpu),
                "broker": per_million(b.others.0),
                "postgres": per_million(b.others.1),
            },
            "service_rate_over_baseline": round(b.secs / f.d.secs, 2),
            "baseline_cpu_over_service_cpu": round(b.cpu / f.d.cpu, 2),
            "system_cpu_seconds_per_million": {
                "service": per_million(service_total),
                "baseline": per_million(baseline_total),
            },
            "baseline_system_cpu_over_service_system_cpu": round(baseline_total / service_total, 2),
        });
        if let serde_json::Value::Object(more) = more {
            all.extend(more);
        }
    }
    let Some(rest) = &f.rest else {
        return report;
    };
    let (rss_1x_start, rss_1x_peak, rate_1x) = rest.backlog_peaks[0];
    let (rss_10x_start, rss_10x_peak, rate_10x) = rest.backlog_peaks[1];
    let e = &rest.e;
    let more = serde_json::json!({
        "backlog_campaigns": [args.backlog_campaigns, args.backlog_campaigns * 10],
        "backlog_rss_start_mib": [mib(rss_1x_start), mib(rss_10x_start)],
        "backlog_rss_peak_mib": [mib(rss_1x_peak), mib(rss_10x_peak)],
        "backlog_notifications_per_s": [rate_1x, rate_10x],
        "e_pipeline_while_cache_reloads_per_s": per_s(e.secs),
        "e_over_d": round(f.d.secs / e.secs, 3),
        "e_cache_reloads": e.reloads,
        "e_cache_reload_seconds_mean": round(e.reload_secs / e.reloads.max(1) as f64, 3),
        "cache_pairs": f.cache.snapshot.pairs(),
        "cache_load_seconds": round(f.cache.load_secs, 3),
        "cache_resident_bytes_per_pair": f.cache.cache_bytes_per_pair.round(),
    });
    if let (Some(all), serde_json::Value::Object(more)) = (report.as_object_mut(), more) {
        all.extend(more);
    }
    report
}

fn progress(what: &str) {
    eprintln!("campaign-bench: {what}");
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

async fn produce_campaigns(
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

/// Waits until `want` campaigns are processed in all, calling `tick` every 20 ms meanwhile (an
/// error from it ends the wait).
async fn wait_processed(
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

/// Seconds from the moment each campaign is due until its rows are in Postgres and then its
/// messages acknowledged by the broker, written by the service's own two sinks (Postgres: one
/// transaction at a time, as the writer does) with no pipeline in between; campaigns overlap as
/// they would in the pipeline. The outbox marks it leaves are removed afterwards.
async fn latency_floor(
    db: &Client,
    db_url: &str,
    kafka: &KafkaSinkSettings,
    snapshot: &Arc<Snapshot>,
    args: &Args,
    rate: u32,
    now: i64,
) -> BenchResult<Vec<FloorTimes>> {
    let pg = Rc::new(futures::lock::Mutex::new(
        PgSink::connect(PgSinkConfig {
            postgres: PostgresSettings::for_url(db_url),
            owner: 0,
            lease: campaign_actors::lease::Lease::unbounded(),
            // The brief's DDL, as the benchmark's schema step creates it.
            trigger_column: campaign_actors::postgres::TriggerColumn::Int4,
        })
        .await
        .map_err(err("postgres sink"))?,
    ));
    let sink = Rc::new(
        KafkaSink::connect(kafka.clone())
            .await
            .map_err(err("producer"))?,
    );
    let entry = snapshot
        .lookup(LATENCY_RESTAURANT)
        .ok_or("the latency restaurant is not in the cache")?;
    let total = (rate * args.latency_secs) as usize;
    let tick = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tasks = Vec::with_capacity(total);
    let mut next = Instant::now();
    for i in 0..total {
        let c = campaign(2_000_000 + i, LATENCY_RESTAURANT, now);
        let source = SourceRef {
            topic: "bench".into(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
        };
        let batch = NotificationBatch::new(c, now, source, snapshot.clone(), entry);
        let job = Arc::new(PgJob {
            range: 0..batch.len(),
            batch: Arc::new(batch),
            first_token: i as i64,
            replay: false,
        });
        tasks.push(actix_rt::spawn(floor_one(
            pg.clone(),
            sink.clone(),
            job,
            now,
            Instant::now(),
        )));
        next += tick;
        actix_rt::time::sleep_until(next.into()).await;
    }
    let mut secs = Vec::with_capacity(total);
    for t in tasks {
        secs.push(t.await.map_err(err("floor task"))??);
    }
    db.batch_execute("DELETE FROM campaign_notifier_outbox")
        .await
        .map_err(err("floor marks"))?;
    Ok(secs)
}

/// Seconds a floor campaign took: in all, until its rows were in Postgres (waiting for the
/// connection included), and its Kafka write alone.
struct FloorTimes {
    total: f64,
    postgres: f64,
    kafka: f64,
}

async fn floor_one(
    pg: Rc<futures::lock::Mutex<PgSink>>,
    sink: Rc<KafkaSink>,
    job: Arc<PgJob>,
    now: i64,
    started: Instant,
) -> BenchResult<FloorTimes> {
    let batch = job.batch.clone();
    let inserted = {
        let pg = pg.lock().await;
        pg.write(vec![job]).await.map_err(err("floor insert"))?
    };
    let in_postgres = started.elapsed().as_secs_f64();
    let clients = inserted
        .into_iter()
        .next()
        .map(|i| i.clients)
        .unwrap_or_default();
    let job = Arc::new(KafkaJob {
        batch,
        clients,
        created_ms: now * 1000,
    });
    let kafka_started = Instant::now();
    sink.write(vec![job]).await.map_err(err("floor produce"))?;
    Ok(FloorTimes {
        total: started.elapsed().as_secs_f64(),
        postgres: in_postgres,
        kafka: kafka_started.elapsed().as_secs_f64(),
    })
}

/// The q-quantile of exact observations (nearest rank); q = 1 is the maximum.
fn exact_quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
