//! The campaign lifecycle under load, with the real pipeline in this process.
//!
//! - hold: `--held` campaigns published before their start (all but `--peak` of them a day
//!   ahead) are taken in and kept in Postgres: how long that takes, and the table's count;
//! - lunch-time peak: `--peak` of them start in the same second, `--fanout` subscribers each:
//!   p50/p99 of start -> last notification confirmed in both sinks (the service's
//!   `fire_delay_seconds` histogram), and start -> every notification of the peak in both sinks;
//!   the service's CPU seconds meanwhile;
//! - change feed: `--feed-rate` subscriptions a second for `--feed-secs` seconds to restaurants
//!   with an active campaign: p50/p99/max of subscribed (the INSERT committed) -> the
//!   notification seen in both sinks (Postgres polled, the output topic consumed, every 10 ms);
//! - campaigns on record: `--on-record` active campaigns of restaurants nobody follows are put in
//!   the table, and the subscriber snapshot is reloaded three times: the peak resident memory the
//!   reloads (and the comparison each makes) added.
//!
//! Resident memory is sampled every 20 ms: the peak phase reports its peak above what the process
//! held before it.
//!
//! Prints one JSON line, progress on stderr. `scripts/bench.sh --example lifecycle` runs it
//! against a broker of its own and the local Postgres.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use campaign_actors::{Metrics, Pipeline};
use campaign_bench::measure::{
    cpu_seconds, exact_quantile, histogram_buckets, processed, quantile, resident_bytes, round,
    written,
};
use campaign_bench::seen::SeenInKafka;
use campaign_bench::setup::{
    connect, create_topics, err, finish, in_own_database, produce_all, service_config, wait_for,
    BenchResult,
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
    /// Campaigns published before their start and held.
    #[arg(long, default_value_t = 100_000)]
    held: usize,
    /// Of those, how many start in the same second.
    #[arg(long, default_value_t = 1_000)]
    peak: usize,
    /// Subscribers of each restaurant of the peak.
    #[arg(long, default_value_t = 100)]
    fanout: usize,
    /// The peak starts this many seconds after its campaigns were published.
    #[arg(long, default_value_t = 10)]
    lead_secs: i64,
    /// Subscriptions a second during the change-feed phase...
    #[arg(long, default_value_t = 1_000)]
    feed_rate: usize,
    /// ...for this many seconds.
    #[arg(long, default_value_t = 10)]
    feed_secs: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Active campaigns of restaurants without subscribers put on record before the reloads.
    #[arg(long, default_value_t = 300_000)]
    on_record: usize,
}

/// The highest resident memory seen since the last [`RssPeak::take`], sampled every 20 ms.
struct RssPeak(Arc<std::sync::atomic::AtomicU64>);

impl RssPeak {
    fn start() -> RssPeak {
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(resident_bytes()));
        let p = peak.clone();
        std::thread::spawn(move || loop {
            p.fetch_max(resident_bytes(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        });
        RssPeak(peak)
    }

    /// The peak since the last take; starts the next window at what is resident now.
    fn take(&self) -> u64 {
        self.0.swap(resident_bytes(), Ordering::Relaxed)
    }
}

fn mib(bytes: u64) -> f64 {
    round(bytes as f64 / (1024.0 * 1024.0), 1)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let system = actix_rt::System::new();
    finish("lifecycle benchmark", system.block_on(run(args)))
}

fn progress(what: &str) {
    eprintln!("lifecycle bench: {what}");
}

async fn run(args: Args) -> BenchResult<serde_json::Value> {
    let id = std::process::id();
    let database = format!("cn_bench_lifecycle_{id}");
    let args = &args;
    in_own_database(&args.postgres_url, &database, |url: String| async move {
        run_in(args, &url, id).await
    })
    .await
}

fn campaign(restaurant: &str, id: &str, start: i64) -> String {
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": id,
        "adv_campaign_content": "Новое блюдо: скидка 70% с 12:00 до 14:00!",
        "adv_campaign_owner": "Petrova Anna",
        "adv_campaign_owner_contact": "apetrova@restaurant.ru",
        "adv_campaign_datetime_start": start,
        "adv_campaign_datetime_end": start + 7200,
        "datetime_created": start - 7200,
    })
    .to_string()
}

fn fired(metrics: &Metrics) -> u64 {
    metrics.lifecycle_events.with_label_values(&["fired"]).get()
}

/// `--fanout` subscribers of each of the `--peak` restaurants.
const SEED_PEAK_SUBSCRIBERS: &str = "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'peak-' || r, 'client-' || r || '-' || c
         FROM generate_series(0, $1 - 1) r, generate_series(0, $2 - 1) c";

/// Late subscribers: clients `$2` of restaurants `$1`.
const SUBSCRIBE: &str = "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
                 SELECT * FROM unnest($1::text[], $2::text[])";

/// `$1` active campaigns of restaurants nobody follows, each with a message of a few hundred
/// bytes.
const PUT_ON_RECORD: &str =
    "INSERT INTO campaign_notifier_campaigns (restaurant_id, adv_campaign_id,
             adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact,
             adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created,
             source_topic, source_partition, source_offset, message, state, fired_at)
         SELECT 'quiet-' || i, 'quiet-c-' || i, repeat('promo ', 40), 'Petrova Anna',
                'apetrova@restaurant.ru', 1659203516, 2659207116, 1659131516, 'in', 0, i,
                convert_to(repeat('{\"promo\": 1} ', 30), 'UTF8'), 'active', now()
         FROM generate_series(1, $1::int8) i";

/// The service under test, in this process, and what the phases feed it through.
struct Lifecycle<'a> {
    args: &'a Args,
    db: Client,
    pipeline: Pipeline,
    metrics: Metrics,
    rss: RssPeak,
    producer: FutureProducer,
    input: String,
    output: String,
}

/// The hold phase: campaigns published a day ahead, and the seconds until all were taken in.
struct HoldFigures {
    campaigns: usize,
    secs: f64,
}

/// The lunch-time peak.
struct PeakFigures {
    /// Campaigns the table held as scheduled before the peak's start.
    scheduled: i64,
    /// Start -> every notification of the peak in both sinks.
    secs: f64,
    cpu: f64,
    rss_before: u64,
    rss_peak: u64,
    /// The service's `fire_delay_seconds` histogram.
    delays: Vec<(f64, u64)>,
}

/// Every phase's figures, for the report.
struct Figures {
    hold: HoldFigures,
    peak: PeakFigures,
    feed: FeedFigures,
    reloads: ReloadFigures,
    /// Notifications built for subscribers who came after their campaign had started.
    late: u64,
    drained: bool,
}

async fn run_in(args: &Args, db_url: &str, id: u32) -> BenchResult<serde_json::Value> {
    let lifecycle = Lifecycle::start(args, db_url, id).await?;
    let hold = lifecycle.hold().await?;
    let peak = lifecycle.peak().await?;
    let feed = lifecycle.follow_feed().await?;
    let reloads = lifecycle.reload_with_campaigns_on_record().await?;
    let Lifecycle {
        pipeline, metrics, ..
    } = lifecycle;
    let shutdown = pipeline.shutdown().await;
    let figures = Figures {
        hold,
        peak,
        feed,
        reloads,
        late: metrics.late_subscriber_notifications.get(),
        drained: shutdown.abandoned == 0,
    };
    Ok(report(args, &figures))
}

/// The JSON line of every figure.
fn report(args: &Args, f: &Figures) -> serde_json::Value {
    let (hold, peak, feed, reloads) = (&f.hold, &f.peak, &f.feed, &f.reloads);
    serde_json::json!({
        "held": args.held,
        "held_in_seconds": round(hold.secs, 2),
        "held_per_second": round(hold.campaigns as f64 / hold.secs, 0),
        "scheduled_in_table": peak.scheduled,
        "peak_campaigns": args.peak,
        "peak_fanout": args.fanout,
        "peak_start_to_last_confirmed_p50_seconds": round(quantile(&peak.delays, 0.5), 3),
        "peak_start_to_last_confirmed_p99_seconds": round(quantile(&peak.delays, 0.99), 3),
        "peak_start_to_all_in_both_sinks_seconds": round(peak.secs, 3),
        "peak_service_cpu_seconds": round(peak.cpu, 2),
        "peak_resident_before_mib": mib(peak.rss_before),
        "peak_resident_added_mib": mib(peak.rss_peak.saturating_sub(peak.rss_before)),
        "feed_subscriptions_per_second": args.feed_rate,
        "feed_subscriptions": feed.count,
        "feed_subscribe_to_both_sinks_p50_seconds": round(feed.p50, 3),
        "feed_subscribe_to_both_sinks_p99_seconds": round(feed.p99, 3),
        "feed_subscribe_to_both_sinks_max_seconds": round(feed.max, 3),
        "late_subscriber_notifications": f.late,
        "campaigns_on_record": args.on_record,
        "reloads": 3,
        "reloads_resident_before_mib": mib(reloads.before),
        "reloads_resident_added_mib": mib(reloads.peak.saturating_sub(reloads.before)),
        "drained": f.drained,
    })
}

impl<'a> Lifecycle<'a> {
    /// The schema and the peak's subscribers in the database at `db_url`, the topics, the
    /// pipeline, and a producer of campaigns.
    async fn start(args: &'a Args, db_url: &str, id: u32) -> BenchResult<Lifecycle<'a>> {
        let mut db = connect(db_url).await?;
        campaign_actors::postgres::ensure_schema(&mut db)
            .await
            .map_err(err("schema"))?;
        db.execute(
            SEED_PEAK_SUBSCRIBERS,
            &[&(args.peak as i32), &(args.fanout as i32)],
        )
        .await
        .map_err(err("seed subscribers"))?;
        let prefix = format!("cn-bench-lifecycle-{id}");
        let topic = |what: &str| format!("{prefix}-{what}");
        let (input, output, dlq) = (topic("in"), topic("out"), topic("dlq"));
        create_topics(
            &args.brokers,
            &[
                (&input, args.partitions),
                (&output, args.partitions),
                (&dlq, 1),
            ],
        )
        .await?;
        let config = service_config(&args.brokers, &prefix, db_url, &[], &[], 0)?;
        let pipeline = Pipeline::start(config, Metrics::new())
            .await
            .map_err(err("start the pipeline"))?;
        let metrics = pipeline.metrics.clone();
        let rss = RssPeak::start();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .map_err(err("producer"))?;
        Ok(Lifecycle {
            args,
            db,
            pipeline,
            metrics,
            rss,
            producer,
            input,
            output,
        })
    }
}

impl Lifecycle<'_> {
    /// Hold: all campaigns but the peak's published a day ahead, timed until all are taken in.
    async fn hold(&self) -> BenchResult<HoldFigures> {
        let far = campaign_actors::clock::unix_secs() + 86_400;
        let later = self.args.held - self.args.peak;
        progress(&format!("publishing {later} campaigns that start tomorrow"));
        let began = Instant::now();
        produce_all(
            &self.producer,
            &self.input,
            (0..later).map(|i| {
                let r = format!("held-{i}");
                (r.clone(), campaign(&r, &format!("held-c-{i}"), far))
            }),
        )
        .await?;
        wait_for("holding", Duration::from_secs(600), || {
            processed(&self.metrics) >= later as u64
        })
        .await?;
        Ok(HoldFigures {
            campaigns: later,
            secs: began.elapsed().as_secs_f64(),
        })
    }

    /// The peak: its campaigns held until they start in the same second, then timed until
    /// every notification is in both sinks.
    async fn peak(&self) -> BenchResult<PeakFigures> {
        let start = campaign_actors::clock::unix_secs() + self.args.lead_secs;
        let scheduled = self.hold_peak(start).await?;
        let wait = start * 1000 - campaign_actors::clock::unix_ms();
        actix_rt::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
        let cpu_before = cpu_seconds();
        let rss_before = resident_bytes();
        self.rss.take();
        let notifications = (self.args.peak * self.args.fanout) as u64;
        progress("waiting for the peak's notifications");
        let metrics = &self.metrics;
        wait_for("the peak", Duration::from_secs(300), || {
            fired(metrics) >= self.args.peak as u64
                && written(metrics, "kafka") >= notifications
                && written(metrics, "postgres") >= notifications
        })
        .await?;
        Ok(PeakFigures {
            scheduled,
            secs: (campaign_actors::clock::unix_ms() - start * 1000) as f64 / 1000.0,
            cpu: cpu_seconds() - cpu_before,
            rss_before,
            rss_peak: self.rss.take(),
            delays: histogram_buckets(&metrics.fire_delay),
        })
    }

    /// Publishes the peak's campaigns, all starting at `start`, and waits until they are held;
    /// returns the campaigns the table holds as scheduled.
    async fn hold_peak(&self, start: i64) -> BenchResult<i64> {
        let args = self.args;
        progress(&format!(
            "publishing {} campaigns that start in the same second, {} s from now",
            args.peak, args.lead_secs
        ));
        produce_all(
            &self.producer,
            &self.input,
            (0..args.peak).map(|i| {
                let r = format!("peak-{i}");
                (r.clone(), campaign(&r, &format!("peak-c-{i}"), start))
            }),
        )
        .await?;
        wait_for("holding the peak", Duration::from_secs(120), || {
            processed(&self.metrics) >= args.held as u64
        })
        .await?;
        if campaign_actors::clock::unix_secs() >= start {
            return Err("the peak was not held before its start: raise --lead-secs".into());
        }
        let scheduled: i64 = self
            .db
            .query_one(
                "SELECT count(*) FROM campaign_notifier_campaigns WHERE state = 'scheduled'",
                &[],
            )
            .await
            .map_err(err("count scheduled"))?
            .get(0);
        Ok(scheduled)
    }
}

struct FeedFigures {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// The change feed so far: who subscribed when, and when each was first seen in Postgres.
struct Feed {
    total: usize,
    per_tick: usize,
    /// Clients subscribed so far.
    n: usize,
    subscribed: HashMap<String, Instant>,
    in_postgres: HashMap<String, Instant>,
    last_row: i32,
}

impl Feed {
    /// Whether the next clients are due: `per_tick` of them every `tick` since `began`.
    fn due(&self, began: Instant, tick: Duration) -> bool {
        self.n < self.total && began.elapsed() >= tick * (self.n / self.per_tick) as u32
    }

    /// Subscribes the next `per_tick` clients to the peak's restaurants.
    async fn subscribe_next(&mut self, db: &Client, peak: usize) -> BenchResult<()> {
        let (n, end) = (self.n, (self.n + self.per_tick).min(self.total));
        let clients: Vec<String> = (n..end).map(|i| format!("late-{i}")).collect();
        let restaurants: Vec<String> = (n..end).map(|i| format!("peak-{}", i % peak)).collect();
        db.execute(SUBSCRIBE, &[&restaurants, &clients])
            .await
            .map_err(err("subscribe"))?;
        let at = Instant::now();
        self.n += clients.len();
        self.subscribed.extend(clients.into_iter().map(|c| (c, at)));
        Ok(())
    }

    /// Notes the late subscribers' rows that have reached `subscribers_feedback` since last time.
    async fn read_feedback(&mut self, db: &Client) -> BenchResult<()> {
        let rows = db
            .query(
                "SELECT id, client_id FROM subscribers_feedback
                 WHERE id > $1 AND client_id LIKE 'late-%'",
                &[&self.last_row],
            )
            .await
            .map_err(err("read feedback"))?;
        let at = Instant::now();
        for row in rows {
            self.last_row = self.last_row.max(row.get(0));
            self.in_postgres.entry(row.get(1)).or_insert(at);
        }
        Ok(())
    }

    /// Every client subscribed, and each seen in both sinks.
    fn done(&self, in_kafka: &Mutex<HashMap<String, Instant>>) -> bool {
        self.n == self.total && self.in_postgres.len() >= self.total && {
            let kafka = in_kafka.lock().unwrap();
            self.subscribed.keys().all(|c| kafka.contains_key(c))
        }
    }

    /// Seconds from each subscription to its notification in both sinks.
    fn lags(&self, in_kafka: &HashMap<String, Instant>) -> Vec<f64> {
        self.subscribed
            .iter()
            .map(|(c, at)| {
                let both = self.in_postgres[c].max(in_kafka[c]);
                both.duration_since(*at).as_secs_f64()
            })
            .collect()
    }
}

impl Lifecycle<'_> {
    /// Subscribes clients at `feed_rate` a second to the peak's (active) restaurants and times
    /// each to its notification in both sinks.
    async fn follow_feed(&self) -> BenchResult<FeedFigures> {
        let (args, db, metrics) = (self.args, &self.db, &self.metrics);
        let reader = SeenInKafka::start(&args.brokers, &self.output, args.partitions)?;
        // Let the reader find the end of each partition before anything is subscribed.
        actix_rt::time::sleep(Duration::from_secs(2)).await;
        let total = args.feed_rate * args.feed_secs;
        progress(&format!(
            "subscribing {total} clients, {} a second, to restaurants with an active campaign",
            args.feed_rate
        ));
        let built_before = metrics.late_subscriber_notifications.get();
        let mut feed = Feed {
            total,
            per_tick: (args.feed_rate / 20).max(1),
            n: 0,
            subscribed: HashMap::with_capacity(total),
            in_postgres: HashMap::with_capacity(total),
            last_row: 0,
        };
        let tick = Duration::from_millis(50);
        let began = Instant::now();
        let deadline = began + Duration::from_secs(args.feed_secs as u64 + 120);
        loop {
            if feed.due(began, tick) {
                feed.subscribe_next(db, args.peak).await?;
            }
            feed.read_feedback(db).await?;
            if feed.done(&reader.seen) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "change feed: {} of {total} in Postgres, {} in Kafka after {:?}",
                    feed.in_postgres.len(),
                    reader.len(),
                    began.elapsed()
                ));
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        let mut lags = feed.lags(&reader.seen.lock().unwrap());
        drop(reader);
        let notified = metrics.late_subscriber_notifications.get() - built_before;
        if notified != total as u64 {
            return Err(format!(
                "change feed: {notified} late-subscriber notifications for {total} subscriptions"
            ));
        }
        Ok(FeedFigures {
            count: total,
            p50: exact_quantile(&mut lags, 0.5),
            p99: exact_quantile(&mut lags, 0.99),
            max: exact_quantile(&mut lags, 1.0),
        })
    }
}

struct ReloadFigures {
    before: u64,
    peak: u64,
}

impl Lifecycle<'_> {
    /// Puts `--on-record` active campaigns of restaurants nobody follows in the table (as a
    /// deployment collects them when campaigns run for years, as the brief's sample does), then
    /// reloads the subscriber snapshot three times, each reload compared with the one before.
    async fn reload_with_campaigns_on_record(&self) -> BenchResult<ReloadFigures> {
        let (args, db, metrics, rss) = (self.args, &self.db, &self.metrics, &self.rss);
        progress(&format!(
            "putting {} active campaigns on record",
            args.on_record
        ));
        db.execute(PUT_ON_RECORD, &[&(args.on_record as i64)])
            .await
            .map_err(err("campaigns on record"))?;
        // Settled first: the snapshot loaded and compared before the reloads are measured.
        actix_rt::time::sleep(Duration::from_secs(2)).await;
        let before = resident_bytes();
        rss.take();
        for n in 1..=3 {
            let loads = metrics.cache_refresh_duration.get_sample_count();
            progress(&format!("reload {n} of 3"));
            self.pipeline.refresh_cache();
            wait_for("a reload", Duration::from_secs(120), || {
                metrics.cache_refresh_duration.get_sample_count() > loads
            })
            .await?;
            // The comparison runs after the load.
            actix_rt::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(ReloadFigures {
            before,
            peak: rss.take(),
        })
    }
}
