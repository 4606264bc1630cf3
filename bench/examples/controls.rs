//! The campaign controls under load, with the real pipeline in this process.
//!
//! - fairness: a campaign to `--big-audience` subscribers goes out; once it is under way,
//!   `--small-campaigns` campaigns of `--small-fanout` subscribers each are published, one every
//!   `--small-interval-ms`: p50/p99/max of each small campaign's time from its publication to its
//!   last notification in both sinks (Postgres polled, the output topic read, every 10 ms), and
//!   whether the large one was still going out when the last small one was through;
//! - cap: the benchmark's pipeline phase (d) over the Zipf mix, `--cap-notifications` in all, each
//!   client getting `--cap-per-client` of them (as many campaigns per restaurant), without a cap
//!   and then with `[limits] per_client_max = 3` a day: the rate of each and how many were capped
//!   (the shapes `zipf` and `zipf-cap3` of `campaign-bench --matrix`).
//!
//! Prints one JSON line, progress on stderr. `scripts/bench.sh --example controls` runs it
//! against a broker of its own and the local Postgres.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use campaign_actors::{Metrics, Pipeline};
use campaign_bench::args::Shape;
use campaign_bench::measure::{exact_quantile, round, written};
use campaign_bench::seen::SeenInKafka;
use campaign_bench::setup::{
    connect, create_topics, err, finish, in_own_database, produce_all, service_config_with,
    wait_for, BenchResult,
};
use clap::Parser;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio_postgres::Client;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Subscribers of the large campaign.
    #[arg(long, default_value_t = 1_000_000)]
    big_audience: usize,
    /// Small campaigns published while the large one goes out...
    #[arg(long, default_value_t = 40)]
    small_campaigns: usize,
    /// ...each to this many subscribers...
    #[arg(long, default_value_t = 10)]
    small_fanout: usize,
    /// ...one every this many milliseconds.
    #[arg(long, default_value_t = 250)]
    small_interval_ms: u64,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Notifications of each run of the cap phase...
    #[arg(long, default_value_t = 400_000)]
    cap_notifications: usize,
    /// ...each client getting this many (campaigns per restaurant).
    #[arg(long, default_value_t = 4)]
    cap_per_client: usize,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let system = actix_rt::System::new();
    // The cap phase's pipeline runs start this binary again to produce their campaigns.
    if std::env::args().any(|a| a == "--produce-campaigns") {
        let mut args = campaign_bench::args::Args::parse();
        args.normalize();
        let topic = args.produce_campaigns.clone().unwrap_or_default();
        return match system.block_on(campaign_bench::phases::produce_workload(&args, &topic)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("producing the campaigns failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    finish("controls benchmark", system.block_on(run(args)))
}

fn progress(what: &str) {
    eprintln!("controls bench: {what}");
}

async fn run(args: Args) -> BenchResult<serde_json::Value> {
    let id = std::process::id();
    let database = format!("cn_bench_controls_{id}");
    let args = &args;
    let fairness: serde_json::Value =
        in_own_database(&args.postgres_url, &database, |url: String| async move {
            fairness(args, &url, id).await
        })
        .await?;
    Ok(serde_json::json!({ "fairness": fairness, "cap": cap(args).await? }))
}

/// The cap phase (see the file's documentation), through the benchmark's own matrix runs.
async fn cap(args: &Args) -> BenchResult<serde_json::Value> {
    let restaurants = (args.cap_notifications / args.cap_per_client / 100).max(1);
    let campaigns = restaurants * args.cap_per_client;
    let mut matrix = campaign_bench::args::Args::parse_from([
        "campaign-bench".to_string(),
        format!("--brokers={}", args.brokers),
        format!("--postgres-url={}", args.postgres_url),
        format!(
            "--notifications={}",
            args.cap_notifications / args.cap_per_client
        ),
        format!("--restaurants={restaurants}"),
        format!("--campaigns={campaigns}"),
        "--latency-secs=2".to_string(),
    ]);
    matrix.normalize();
    let mut runs = Vec::new();
    for (k, shape) in [Shape::Zipf, Shape::ZipfCapped(3)].into_iter().enumerate() {
        progress(&format!("cap phase: {shape:?}"));
        let report = campaign_bench::phases::run(matrix.for_shape(shape), 10 + k).await?;
        runs.push(serde_json::json!({
            "shape": report["shape"],
            "notifications": report["notifications"],
            "pipeline_per_s": report["d_pipeline_per_s"],
            "capped": report["d_capped"],
            "service_cpu_seconds_per_million": report["service_cpu_seconds_per_million"],
        }));
    }
    Ok(serde_json::Value::Array(runs))
}

/// An active campaign of `restaurant`.
fn campaign(restaurant: &str, id: &str) -> String {
    let now = campaign_actors::clock::unix_secs();
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": id,
        "adv_campaign_content": "Новое блюдо: скидка 70% с 12:00 до 14:00!",
        "adv_campaign_owner": "Petrova Anna",
        "adv_campaign_owner_contact": "apetrova@restaurant.ru",
        "adv_campaign_datetime_start": now - 60,
        "adv_campaign_datetime_end": now + 7200,
        "datetime_created": now - 120,
    })
    .to_string()
}

/// The service in this process, on topics and a database of its own, and a producer for them.
struct Running {
    pipeline: Pipeline,
    metrics: Metrics,
    producer: FutureProducer,
    input: String,
    output: String,
}

impl Running {
    async fn start(args: &Args, db_url: &str, prefix: &str, extra: &str) -> BenchResult<Running> {
        let topic = |what: &str| format!("{prefix}-{what}");
        let (input, output, dlq) = (topic("in"), topic("out"), topic("dlq"));
        let p = args.partitions;
        create_topics(&args.brokers, &[(&input, p), (&output, p), (&dlq, 1)]).await?;
        let config = service_config_with(&args.brokers, prefix, db_url, (&[], &[]), extra)?;
        let pipeline = Pipeline::start(config, Metrics::new())
            .await
            .map_err(err("start the pipeline"))?;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .set("linger.ms", "0")
            .set("enable.idempotence", "true")
            .create()
            .map_err(err("producer"))?;
        Ok(Running {
            metrics: pipeline.metrics.clone(),
            pipeline,
            producer,
            input,
            output,
        })
    }

    async fn publish(&self, restaurant: &str, id: &str) -> BenchResult<()> {
        let message = (restaurant.to_string(), campaign(restaurant, id));
        produce_all(&self.producer, &self.input, std::iter::once(message)).await
    }
}

/// Subscribers: `big` clients of restaurant `big`, and `fanout` of each `small-K`.
async fn seed(db: &Client, big: usize, smalls: usize, fanout: usize) -> BenchResult<()> {
    db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'big', 'big-' || c FROM generate_series(1, $1::int8) c",
        &[&(big as i64)],
    )
    .await
    .map_err(err("seed the large audience"))?;
    db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'small-' || r, 'small-' || r || '-' || c
         FROM generate_series(0, $1::int8 - 1) r, generate_series(0, $2::int8 - 1) c",
        &[&(smalls as i64), &(fanout as i64)],
    )
    .await
    .map_err(err("seed the small audiences"))?;
    Ok(())
}

/// The small campaigns: when each was published, and when each was complete in each sink.
#[derive(Default)]
struct Smalls {
    published: Vec<Instant>,
    in_postgres: HashMap<usize, Instant>,
}

impl Smalls {
    /// Notes the small campaigns whose rows are all in Postgres now.
    async fn read_postgres(&mut self, db: &Client, fanout: usize) -> BenchResult<()> {
        let waiting: Vec<String> = (0..self.published.len())
            .filter(|k| !self.in_postgres.contains_key(k))
            .map(|k| format!("small-{k}"))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let rows = db
            .query(
                "SELECT restaurant_id, count(*) FROM subscribers_feedback
                 WHERE restaurant_id = ANY($1) GROUP BY 1",
                &[&waiting],
            )
            .await
            .map_err(err("read the small campaigns' rows"))?;
        let at = Instant::now();
        for row in rows {
            let (restaurant, n): (String, i64) = (row.get(0), row.get(1));
            let k = restaurant["small-".len()..]
                .parse::<usize>()
                .unwrap_or(usize::MAX);
            if n as usize >= fanout {
                self.in_postgres.entry(k).or_insert(at);
            }
        }
        Ok(())
    }

    /// Seconds from each small campaign's publication to its last notification in both sinks,
    /// once every one is in both.
    fn latencies(&self, seen: &SeenInKafka, fanout: usize) -> Option<Vec<f64>> {
        let kafka = seen.seen.lock().unwrap();
        (0..self.published.len())
            .map(|k| {
                let last_in_kafka = (0..fanout)
                    .map(|c| kafka.get(&format!("small-{k}-{c}")).copied())
                    .collect::<Option<Vec<Instant>>>()?
                    .into_iter()
                    .max()?;
                let both = last_in_kafka.max(*self.in_postgres.get(&k)?);
                Some(both.duration_since(self.published[k]).as_secs_f64())
            })
            .collect()
    }
}

/// The fairness phase (see the file's documentation).
async fn fairness(args: &Args, db_url: &str, id: u32) -> BenchResult<serde_json::Value> {
    let mut db = connect(db_url).await?;
    campaign_actors::postgres::ensure_schema(&mut db)
        .await
        .map_err(err("schema"))?;
    let (big, fanout) = (args.big_audience, args.small_fanout);
    seed(&db, big, args.small_campaigns, fanout).await?;
    let prefix = format!("cn-bench-controls-{id}-fair");
    let running = Running::start(args, db_url, &prefix, "").await?;
    let seen = SeenInKafka::start(&args.brokers, &running.output, args.partitions)?;
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    progress(&format!("a campaign to {big} subscribers"));
    let began = Instant::now();
    running.publish("big", "big-c").await?;
    let metrics = &running.metrics;
    wait_for(
        "the large campaign under way",
        Duration::from_secs(120),
        || written(metrics, "kafka") >= (big as u64 / 20).min(50_000),
    )
    .await?;
    progress(&format!(
        "{} small campaigns while it goes out",
        args.small_campaigns
    ));
    let mut smalls = Smalls::default();
    let tick = Duration::from_millis(args.small_interval_ms);
    let mut next = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    let latencies = loop {
        if smalls.published.len() < args.small_campaigns && Instant::now() >= next {
            let k = smalls.published.len();
            smalls.published.push(Instant::now());
            running
                .publish(&format!("small-{k}"), &format!("small-c-{k}"))
                .await?;
            next += tick;
        }
        smalls.read_postgres(&db, fanout).await?;
        if smalls.published.len() == args.small_campaigns {
            if let Some(latencies) = smalls.latencies(&seen, fanout) {
                break latencies;
            }
        }
        if Instant::now() > deadline {
            return Err("the small campaigns did not all reach both sinks in 10 minutes".into());
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    };
    let big_left = (big as u64).saturating_sub(written(metrics, "kafka"));
    let total = (big + args.small_campaigns * fanout) as u64;
    wait_for("the large campaign", Duration::from_secs(600), || {
        written(metrics, "kafka") >= total && written(metrics, "postgres") >= total
    })
    .await?;
    let big_secs = began.elapsed().as_secs_f64();
    drop(seen);
    running.pipeline.shutdown().await;
    Ok(report(args, latencies, big_left, big_secs))
}

fn report(args: &Args, mut latencies: Vec<f64>, big_left: u64, big_secs: f64) -> serde_json::Value {
    serde_json::json!({
        "big_audience": args.big_audience,
        "small_campaigns": args.small_campaigns,
        "small_fanout": args.small_fanout,
        "small_interval_ms": args.small_interval_ms,
        "small_to_both_sinks_p50_s": round(exact_quantile(&mut latencies, 0.5), 3),
        "small_to_both_sinks_p99_s": round(exact_quantile(&mut latencies, 0.99), 3),
        "small_to_both_sinks_max_s": round(exact_quantile(&mut latencies, 1.0), 3),
        "big_notifications_left_when_the_smalls_were_through": big_left,
        "big_secs": round(big_secs, 1),
        "big_notifications_per_s": round(args.big_audience as f64 / big_secs, 0),
    })
}
