//! `campaign-bench`: the service's throughput next to the ceilings of its two sinks, measured in
//! one run on the same machine, plus its CPU cost and the subscriber cache's memory.
//!
//! Phases, each on fresh topics and tables:
//! - (a) a raw producer sends the same notification bytes, with the service's producer settings;
//! - (b) a raw binary `COPY` writes the same rows into a table shaped like `subscribers_feedback`
//!   (its indexes included, so the unique key costs the same);
//! - (c) (a) and (b) at once: the dual-sink ceiling;
//! - (d) the real pipeline, delivery guarantees on: campaigns produced to the input topic, timed
//!   until every notification is confirmed in both sinks; the process's CPU seconds during it;
//! - the subscriber cache: a full load's time and resident memory per pair.
//!
//! Prints one JSON line with every figure. Run it with `scripts/bench.sh`, which starts a broker.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use campaign_actors::campaign::Campaign;
use campaign_actors::kafka_writer::KafkaSinkConfig;
use campaign_actors::notification::{NotificationBatch, SourceRef};
use campaign_actors::snapshot::Snapshot;
use campaign_actors::{Config, Metrics, Pipeline};
use clap::Parser;
use futures::pin_mut;
use prometheus::core::Collector;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
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
    #[arg(long, default_value_t = 300_000)]
    pairs: usize,
    /// Campaigns, one per restaurant in turn: with campaigns = restaurants every pair gets one
    /// notification.
    #[arg(long, default_value_t = 2_000)]
    campaigns: usize,
    /// Zipf exponent of restaurant popularity: restaurant r has a share proportional to
    /// 1 / (r + 1)^skew.
    #[arg(long, default_value_t = 1.0)]
    skew: f64,
    /// Input partitions for the pipeline phase.
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
    /// Extra librdkafka producer property KEY=VALUE, for the ceilings and the pipeline alike
    /// (repeatable).
    #[arg(long = "producer-property", value_parser = parse_property)]
    producer_properties: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let system = actix_rt::System::new();
    match system.block_on(run(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}

type BenchResult<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
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

fn campaign(i: usize, restaurant: &str, now: i64) -> Campaign {
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

fn campaign_json(c: &Campaign) -> String {
    serde_json::json!({
        "restaurant_id": c.restaurant_id,
        "adv_campaign_id": c.adv_campaign_id,
        "adv_campaign_content": c.adv_campaign_content,
        "adv_campaign_owner": c.adv_campaign_owner,
        "adv_campaign_owner_contact": c.adv_campaign_owner_contact,
        "adv_campaign_datetime_start": c.adv_campaign_datetime_start,
        "adv_campaign_datetime_end": c.adv_campaign_datetime_end,
        "datetime_created": c.datetime_created,
    })
    .to_string()
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

async fn connect(url: &str) -> BenchResult<Client> {
    campaign_actors::schema::connect(url, "bench")
        .await
        .map_err(|e| campaign_actors::schema::describe(&e))
}

fn database_url(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) if url.contains("://") => format!("{server}/{database}"),
        _ => format!("{url} dbname={database}"),
    }
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> BenchResult<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(err("admin client"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(err("create topics"))?
    {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// The notifications of every campaign: the same batches the pipeline builds.
struct Workload {
    campaigns: Vec<Campaign>,
    batches: Vec<Arc<NotificationBatch>>,
    notifications: usize,
}

fn workload(snapshot: Arc<Snapshot>, args: &Args, now: i64) -> Workload {
    let mut campaigns = Vec::new();
    let mut batches = Vec::new();
    for i in 0..args.campaigns {
        let c = campaign(i, &restaurant_id(i % args.restaurants), now);
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
        campaigns.push(c);
    }
    let notifications = batches.iter().map(|b| b.len()).sum();
    Workload {
        campaigns,
        batches,
        notifications,
    }
}

/// (a): every notification to `topic` with the service's producer settings; returns seconds.
async fn raw_produce(kafka: &KafkaSinkConfig, topic: &str, w: &Workload) -> BenchResult<f64> {
    let producer: FutureProducer = kafka.client_config().create().map_err(err("producer"))?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(100_000);
    let mut payload = Vec::with_capacity(512);
    for batch in &w.batches {
        for i in 0..batch.len() {
            payload.clear();
            batch.write_json(i, &mut payload);
            let key = batch.client_id(i).to_string();
            let mut record = FutureRecord::to(topic).payload(&payload).key(&key);
            loop {
                match producer.send_result(record) {
                    Ok(d) => break deliveries.push(d),
                    Err((_, r)) => {
                        record = r;
                        actix_rt::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            if deliveries.len() == deliveries.capacity() {
                for d in deliveries.drain(..) {
                    d.await
                        .map_err(err("delivery"))?
                        .map_err(|(e, _)| format!("delivery: {e}"))?;
                }
            }
        }
    }
    for d in deliveries {
        d.await
            .map_err(err("delivery"))?
            .map_err(|(e, _)| format!("delivery: {e}"))?;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn produce_on_thread(kafka: KafkaSinkConfig, w: Arc<Workload>) -> BenchResult<f64> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err("runtime"))
            .and_then(|rt| rt.block_on(raw_produce(&kafka, &kafka.topic, &w)));
        let _ = tx.send(result);
    });
    rx.await.map_err(err("producer thread"))?
}

/// (b): every row by binary COPY into `table`; returns seconds.
async fn raw_copy(client: &Client, table: &str, w: &Workload) -> BenchResult<f64> {
    let started = Instant::now();
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            "COPY {table} (restaurant_id, adv_campaign_id, adv_campaign_content, \
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created) \
             FROM STDIN (FORMAT binary)"
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
        Type::INT8,
        Type::TEXT,
        Type::INT4,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for batch in &w.batches {
        let c = &batch.campaign;
        let trigger = batch.trigger_datetime_created as i32;
        for i in 0..batch.len() {
            let client = batch.client_id(i).to_string();
            let row: [&(dyn ToSql + Sync); 10] = [
                &c.restaurant_id,
                &c.adv_campaign_id,
                &c.adv_campaign_content,
                &c.adv_campaign_owner,
                &c.adv_campaign_owner_contact,
                &c.adv_campaign_datetime_start,
                &c.adv_campaign_datetime_end,
                &c.datetime_created,
                &client,
                &trigger,
            ];
            writer.as_mut().write(&row).await.map_err(err("copy row"))?;
        }
    }
    writer.finish().await.map_err(err("copy finish"))?;
    Ok(started.elapsed().as_secs_f64())
}

/// Campaigns completed so far, read from the counters directly: rendering the whole exposition
/// this often would show up in the CPU figure.
fn processed(metrics: &Metrics) -> u64 {
    metrics
        .campaigns_processed
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// (upper bound, cumulative count) of the end-to-end latency histogram; +Inf last.
fn latency_buckets(metrics: &Metrics) -> Vec<(f64, u64)> {
    let h = metrics.end_to_end_latency.collect();
    let Some(m) = h.first().and_then(|f| f.get_metric().first()) else {
        return Vec::new();
    };
    let hist = m.get_histogram();
    let mut out: Vec<(f64, u64)> = hist
        .get_bucket()
        .iter()
        .map(|b| (b.upper_bound(), b.cumulative_count()))
        .collect();
    out.push((f64::INFINITY, hist.get_sample_count()));
    out
}

/// The q-quantile of a cumulative histogram, interpolated linearly within its bucket as
/// Prometheus' histogram_quantile does.
fn quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    if total == 0 {
        return f64::NAN;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let in_bucket = (count - lower.1) as f64;
            let into = if in_bucket > 0.0 {
                (rank - lower.1 as f64) / in_bucket
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * into;
        }
        lower = (bound, count);
    }
    lower.0
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

async fn run(args: Args) -> BenchResult<serde_json::Value> {
    let now = campaign_actors::enricher::unix_now();
    let run_id = std::process::id();
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
        run_id,
    )
    .await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    result
}

async fn run_in(
    args: &Args,
    db_url: &str,
    now: i64,
    run_id: u32,
) -> BenchResult<serde_json::Value> {
    let mut db = connect(db_url).await?;
    campaign_actors::schema::ensure_schema(&mut db)
        .await
        .map_err(err("schema"))?;

    // Subscribers, skewed, written with COPY.
    let sizes = popularity(args.restaurants, args.pairs, args.skew);
    let pairs: usize = sizes.iter().sum();
    {
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
    }

    // The cache: a full load as the service does it, and what it costs in memory.
    let rss_before = resident_bytes();
    let load_started = Instant::now();
    let snapshot = Arc::new(campaign_actors::subscriber_cache::load(db_url.to_string()).await?);
    let load_secs = load_started.elapsed().as_secs_f64();
    let rss_after = resident_bytes();
    let cache_bytes_per_pair = rss_after.saturating_sub(rss_before) as f64 / pairs.max(1) as f64;

    let w = Arc::new(workload(snapshot.clone(), args, now));
    let brokers = &args.brokers;
    let topic = |what: &str| format!("cn-bench-{run_id}-{what}");
    create_topics(
        brokers,
        &[
            (&topic("raw"), 1),
            (&topic("dual"), 1),
            (&topic("in"), args.partitions),
            (&topic("out"), args.partitions),
            (&topic("dlq"), 1),
        ],
    )
    .await?;
    let mut kafka = KafkaSinkConfig {
        brokers: brokers.clone(),
        topic: String::new(),
        message_timeout_ms: 60_000,
        overrides: args.producer_properties.clone(),
    };
    for t in ["bench_copy", "bench_dual"] {
        db.batch_execute(&format!(
            "CREATE TABLE {t} (LIKE subscribers_feedback INCLUDING ALL)"
        ))
        .await
        .map_err(err("ceiling table"))?;
    }

    // (a), (b), (c). The producer runs on a thread of its own, as the service's Kafka writer
    // does, so that in (c) neither sink waits for the other's CPU work.
    kafka.topic = topic("raw");
    let a = produce_on_thread(kafka.clone(), w.clone()).await?;
    let b = raw_copy(&db, "bench_copy", &w).await?;
    kafka.topic = topic("dual");
    let (ca, cb) = futures::join!(
        produce_on_thread(kafka.clone(), w.clone()),
        raw_copy(&db, "bench_dual", &w)
    );
    let c = ca?.max(cb?);

    // (d): the pipeline, guarantees on.
    let config_text = format!(
        r#"
[kafka]
brokers = "{brokers}"
input_topic = "{input}"
output_topic = "{output}"
dead_letter_topic = "{dlq}"
group_id = "cn-bench-{run_id}"
[kafka.consumer]
"fetch.wait.max.ms" = "10"
[kafka.producer]
{producer_properties}
[postgres]
url = "{db_url}"
[cache]
refresh_interval_secs = 3600
[http]
listen = "127.0.0.1:0"
[log]
level = "warn"
"#,
        input = topic("in"),
        output = topic("out"),
        dlq = topic("dlq"),
        producer_properties = args
            .producer_properties
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}\n"))
            .collect::<String>(),
    );
    let config = Config::from_toml_with_env(&config_text, "bench", std::iter::empty())
        .map_err(err("config"))?;
    let pipeline = Pipeline::start(config, Metrics::new())
        .await
        .map_err(err("pipeline"))?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .map_err(err("campaign producer"))?;
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let input = topic("in");
    let mut sends = Vec::new();
    for (i, c) in w.campaigns.iter().enumerate() {
        let json = campaign_json(c);
        let key = i.to_string();
        let send = producer
            .send_result(FutureRecord::to(&input).payload(&json).key(&key))
            .map_err(|(e, _)| format!("produce campaign: {e}"))?;
        sends.push(send);
    }
    for s in futures::future::join_all(sends).await {
        s.map_err(err("produce campaign"))?
            .map_err(|(e, _)| format!("produce campaign: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let processed = processed(&pipeline.metrics);
        if processed >= w.campaigns.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "pipeline processed {processed} campaigns in 30 minutes"
            ));
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let d = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let text = pipeline.metrics.render();
    let written_kafka = metric(
        &text,
        "campaign_notifier_notifications_written_total{sink=\"kafka\"}",
    );
    let written_pg = metric(
        &text,
        "campaign_notifier_notifications_written_total{sink=\"postgres\"}",
    );

    // Latency at a steady rate well below saturation, from the service's own histogram of the
    // time between a campaign's Kafka timestamp and both sinks confirmed (only this phase's
    // observations: the counts before it are subtracted).
    let before = latency_buckets(&pipeline.metrics);
    let rate = args.latency_rate.max(1);
    let total_latency = (rate * args.latency_secs) as usize;
    let tick = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut next = Instant::now();
    let mut sends = Vec::with_capacity(total_latency);
    for i in 0..total_latency {
        let c = campaign(args.campaigns + i, LATENCY_RESTAURANT, now);
        let json = campaign_json(&c);
        let key = format!("latency-{i}");
        sends.push(
            producer
                .send_result(FutureRecord::to(&input).payload(&json).key(&key))
                .map_err(|(e, _)| format!("produce campaign: {e}"))?,
        );
        next += tick;
        actix_rt::time::sleep_until(next.into()).await;
    }
    for s in futures::future::join_all(sends).await {
        s.map_err(err("produce campaign"))?
            .map_err(|(e, _)| format!("produce campaign: {e}"))?;
    }
    let want = (w.campaigns.len() + total_latency) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while processed(&pipeline.metrics) < want {
        if Instant::now() > deadline {
            return Err("latency phase did not finish in 10 minutes".into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let after = latency_buckets(&pipeline.metrics);
    let phase: Vec<(f64, u64)> = after
        .iter()
        .zip(&before)
        .map(|((bound, a), (_, b))| (*bound, a - b))
        .collect();
    pipeline.shutdown().await;
    if written_kafka as usize != w.notifications || written_pg as usize != w.notifications {
        return Err(format!(
            "pipeline wrote {written_kafka} to Kafka and {written_pg} to Postgres, expected {}",
            w.notifications
        ));
    }

    let n = w.notifications as f64;
    let per_s = |secs: f64| (n / secs).round();
    Ok(serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "restaurants": args.restaurants,
        "pairs": pairs,
        "largest_restaurant": sizes.first().copied().unwrap_or(0),
        "campaigns": w.campaigns.len(),
        "notifications": w.notifications,
        "a_raw_kafka_per_s": per_s(a),
        "b_raw_copy_per_s": per_s(b),
        "c_dual_ceiling_per_s": per_s(c),
        "d_pipeline_per_s": per_s(d),
        "d_over_c": ((c / d) * 1000.0).round() / 1000.0,
        "d_seconds": (d * 1000.0).round() / 1000.0,
        "service_cpu_seconds_per_million": ((cpu / n * 1e6) * 100.0).round() / 100.0,
        "latency_campaigns": total_latency,
        "latency_fanout": args.latency_fanout,
        "latency_rate_per_s": rate,
        "latency_p50_seconds": (quantile(&phase, 0.5) * 10000.0).round() / 10000.0,
        "latency_p99_seconds": (quantile(&phase, 0.99) * 10000.0).round() / 10000.0,
        "latency_max_bucket_le_seconds": max_bound(&phase),
        "cache_pairs": snapshot.pairs(),
        "cache_load_seconds": (load_secs * 1000.0).round() / 1000.0,
        "cache_resident_bytes_per_pair": cache_bytes_per_pair.round(),
    }))
}
