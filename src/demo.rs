//! `campaign-notifier demo`: the real supervised pipeline on embedded defaults.
//!
//! It needs nothing but a Postgres server: the Kafka side is librdkafka's in-process mock cluster,
//! and the Postgres side is a database created for this run and dropped at its end, so no real
//! table is touched.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use campaign_actors::contract::{
    BRIEF_SAMPLE as SAMPLE, BRIEF_SAMPLE_RESTAURANT as SAMPLE_RESTAURANT,
};
use campaign_actors::postgres::PostgresSettings;
use campaign_actors::{Config, Metrics, Pipeline};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const OTHER_RESTAURANT: &str = "223e4567-e89b-12d3-a456-426614174000";
const LONELY_RESTAURANT: &str = "323e4567-e89b-12d3-a456-426614174000";

/// The scheduled campaign starts this many seconds after it is published (once the reader
/// consumes): later than the clock skew allowance (3 s), so that it arrives before its start.
const SCHEDULED_IN: i64 = 8;

/// Notifications both sinks must hold at the end: 3 for the brief's sample, 2 for the other
/// active campaign, 2 for the scheduled one, and 2 for the client who subscribes to the other
/// restaurant while both of its campaigns are active.
const EXPECTED: usize = 9;

/// The client who subscribes while the demo runs.
const LATE_CLIENT: &str = "023e4567-e89b-12d3-a456-426614174005";

pub fn run(postgres_url: String) -> ExitCode {
    let system = actix_rt::System::new();
    match system.block_on(demo(postgres_url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn campaign(restaurant: &str, id: u32, content: &str, start: i64, end: i64) -> String {
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": format!("00000000-0000-4000-8000-{id:012}"),
        "adv_campaign_content": content,
        "adv_campaign_owner": "Petrova Anna",
        "adv_campaign_owner_contact": "apetrova@restaurant.ru",
        "adv_campaign_datetime_start": start,
        "adv_campaign_datetime_end": end,
        "datetime_created": start - 60,
    })
    .to_string()
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (rest, String::new()),
        };
        let authority = before_query.split('/').next().unwrap_or(before_query);
        format!("postgres://{authority}/{database}{query}")
    } else {
        format!("{url} dbname={database}")
    }
}

async fn demo(postgres_url: String) -> anyhow::Result<()> {
    let now = campaign_actors::clock::unix_secs();
    let database = format!("campaign_notifier_demo_{}", std::process::id());
    let admin =
        campaign_actors::postgres::connect(&PostgresSettings::for_url(&postgres_url), "demo")
            .await
            .with_context(|| {
                "cannot connect to Postgres (set --postgres-url or DEMO_POSTGRES_URL)"
            })?;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .context("cannot create the demo database")?;
    println!("== created database {database} for this run");
    let result = demo_in(&postgres_url, &database, now).await;
    // The database is the demo's own: dropped whatever happened.
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
    {
        eprintln!("could not drop {database}: {e}");
    } else {
        println!("== dropped database {database}");
    }
    result
}

async fn demo_in(postgres_url: &str, database: &str, now: i64) -> anyhow::Result<()> {
    let db_url = with_database(postgres_url, database);
    let db = seed(&db_url).await?;
    let cluster = MockCluster::new(1).context("cannot start the embedded broker")?;
    let brokers = cluster.bootstrap_servers();
    for topic in ["campaigns", "notifications"] {
        cluster
            .create_topic(topic, 1, 1)
            .with_context(|| format!("cannot create topic {topic}"))?;
    }
    println!("== embedded Kafka-protocol broker at {brokers}");

    let pipeline = Pipeline::start(demo_config(&brokers, &db_url)?, Metrics::new()).await?;
    println!(
        "== pipeline started; metrics on http://{}/metrics",
        pipeline.http_addr
    );
    // Whatever the steps end in, the pipeline is stopped before the database goes.
    let steps = run_steps(&brokers, &db, &pipeline, now).await;
    let outcome_lines: Vec<String> = pipeline
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("campaign_notifier_campaigns_processed_total{"))
        .map(str::to_string)
        .collect();
    let report = pipeline.shutdown().await;
    steps?;
    println!(
        "== pipeline drained (unfinished: {}, offsets committed: {})",
        report.abandoned, report.committed
    );
    println!("== outcomes");
    for line in outcome_lines {
        println!("   {line}");
    }

    let in_kafka = print_output_topic(&brokers)?;
    let in_postgres = print_feedback_rows(&db).await?;
    if in_kafka != EXPECTED || in_postgres != EXPECTED {
        bail!(
            "expected {EXPECTED} notifications in each sink, got {in_kafka} in Kafka and {in_postgres} in Postgres"
        );
    }
    println!("== ok: {EXPECTED} notifications (3 for the brief's sample, 2 for the other active campaign, 2 for the one that fired at its start, 2 for the client who subscribed while both were active) in both sinks; the expired, tomorrow's, subscriber-less and malformed campaigns gave none");
    drop(cluster);
    Ok(())
}

/// Publishes the campaigns, and waits for each step's effect: the arrivals processed, the
/// scheduled campaign fired at its start, the late subscriber notified.
async fn run_steps(
    brokers: &str,
    db: &tokio_postgres::Client,
    pipeline: &Pipeline,
    now: i64,
) -> anyhow::Result<()> {
    let arrivals = inputs(now);
    publish(brokers, &arrivals, 0).await?;
    wait_processed(pipeline, arrivals.len()).await?;
    // Published once the reader consumes, so that however long it took to join its group, the
    // campaign arrives well before its start (more than the clock skew allowance before it).
    let start = campaign_actors::clock::unix_secs() + SCHEDULED_IN;
    publish(brokers, &[scheduled(start)], arrivals.len()).await?;
    wait_processed(pipeline, arrivals.len() + 1).await?;
    wait_fired(pipeline, start).await?;
    subscribe_late(db, pipeline).await
}

/// Creates the tables in the demo's database and subscribes five clients.
async fn seed(db_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut db =
        campaign_actors::postgres::connect(&PostgresSettings::for_url(db_url), "demo").await?;
    campaign_actors::postgres::ensure_schema(&mut db).await?;
    let subscribers = [
        (SAMPLE_RESTAURANT, "023e4567-e89b-12d3-a456-426614174000"),
        (SAMPLE_RESTAURANT, "023e4567-e89b-12d3-a456-426614174001"),
        (SAMPLE_RESTAURANT, "023e4567-e89b-12d3-a456-426614174002"),
        (OTHER_RESTAURANT, "023e4567-e89b-12d3-a456-426614174001"),
        (OTHER_RESTAURANT, "023e4567-e89b-12d3-a456-426614174009"),
    ];
    for (restaurant, client) in subscribers {
        db.execute(
            "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, $2)",
            &[&restaurant, &client],
        )
        .await?;
    }
    println!("== seeded {} subscriptions", subscribers.len());
    Ok(db)
}

fn demo_config(brokers: &str, db_url: &str) -> anyhow::Result<Config> {
    let config_text = format!(
        r#"
        [kafka]
        brokers = "{brokers}"
        input_topic = "campaigns"
        output_topic = "notifications"
        group_id = "campaign-notifier-demo"
        [postgres]
        url = "{db_url}"
        [http]
        listen = "127.0.0.1:0"
        [shutdown]
        grace_period_secs = 10
        "#
    );
    Ok(Config::from_toml_with_env(
        &config_text,
        "demo",
        std::iter::empty(),
    )?)
}

/// The brief's sample and five others: what each is, and its message.
fn inputs(now: i64) -> Vec<(&'static str, String)> {
    let hour = 3600;
    vec![
        (
            "brief sample, active until 2054, 3 subscribers",
            SAMPLE.to_string(),
        ),
        (
            "active, 2 subscribers",
            campaign(
                OTHER_RESTAURANT,
                2,
                "Новое блюдо: скидка 70% до 14:00!",
                now - hour,
                now + hour,
            ),
        ),
        (
            "expired an hour ago",
            campaign(
                OTHER_RESTAURANT,
                3,
                "yesterday's lunch",
                now - 3 * hour,
                now - hour,
            ),
        ),
        (
            "starts tomorrow",
            campaign(
                OTHER_RESTAURANT,
                4,
                "tomorrow's lunch",
                now + 24 * hour,
                now + 25 * hour,
            ),
        ),
        (
            "restaurant with no subscribers",
            campaign(
                LONELY_RESTAURANT,
                5,
                "nobody is listening",
                now - hour,
                now + hour,
            ),
        ),
        ("malformed", r#"{"restaurant_id": 42, "oops""#.to_string()),
    ]
}

/// The campaign published before its `start`, for 2 subscribers.
fn scheduled(start: i64) -> (&'static str, String) {
    (
        "published now, starts in 8 s, 2 subscribers",
        campaign(
            OTHER_RESTAURANT,
            6,
            "happy hour: two for one",
            start,
            start + 3600,
        ),
    )
}

/// Publishes `inputs`, numbered (and keyed) from `before + 1`.
async fn publish(brokers: &str, inputs: &[(&str, String)], before: usize) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    for (i, (what, value)) in inputs.iter().enumerate() {
        let n = before + i + 1;
        let key = n.to_string();
        producer
            .send(
                FutureRecord::to("campaigns").key(&key).payload(value),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        println!("   published campaign {n}: {what}");
    }
    Ok(())
}

async fn wait_processed(pipeline: &Pipeline, expected: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = pipeline.metrics.render();
        let done: u64 = text
            .lines()
            .filter(|l| l.starts_with("campaign_notifier_campaigns_processed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if done >= expected as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {expected} campaigns were processed in 30s");
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Subscribes a client to the restaurant whose two campaigns are active, and waits until both
/// sinks confirmed its two notifications.
async fn subscribe_late(db: &tokio_postgres::Client, pipeline: &Pipeline) -> anyhow::Result<()> {
    println!("== client {LATE_CLIENT} subscribes to restaurant {OTHER_RESTAURANT}, whose two campaigns are active");
    db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, $2)",
        &[&OTHER_RESTAURANT, &LATE_CLIENT],
    )
    .await?;
    let subscribed = Instant::now();
    let deadline = subscribed + Duration::from_secs(30);
    loop {
        if pipeline.metrics.late_subscriber_notifications.get() >= 2 {
            println!(
                "   notified of both, in both sinks, {} ms after subscribing",
                subscribed.elapsed().as_millis()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the client who subscribed late was not notified within 30 s");
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the scheduled campaign to fire at `start` and says when it did.
async fn wait_fired(pipeline: &Pipeline, start: i64) -> anyhow::Result<()> {
    println!("== waiting for the campaign scheduled at {start} to fire");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fired = pipeline
            .metrics
            .lifecycle_events
            .with_label_values(&["fired"])
            .get();
        if fired >= 1 {
            let late = campaign_actors::clock::unix_ms() - start * 1000;
            println!("   fired; both sinks confirmed it {late} ms after its start");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the scheduled campaign did not fire within 30 s");
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn print_output_topic(brokers: &str) -> anyhow::Result<usize> {
    let output = read_topic(brokers, "notifications", EXPECTED)?;
    println!("== {} notifications in the output topic", output.len());
    for (key, value) in &output {
        println!("   key={key} {value}");
    }
    Ok(output.len())
}

async fn print_feedback_rows(db: &tokio_postgres::Client) -> anyhow::Result<usize> {
    let rows = db
        .query(
            "SELECT id, restaurant_id, adv_campaign_id, client_id, trigger_datetime_created, feedback \
             FROM subscribers_feedback ORDER BY id",
            &[],
        )
        .await?;
    println!("== {} rows in subscribers_feedback", rows.len());
    for r in &rows {
        let feedback: Option<String> = r.get(5);
        println!(
            "   id={} restaurant_id={} adv_campaign_id={} client_id={} trigger_datetime_created={} feedback={}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, i32>(4),
            feedback.as_deref().unwrap_or("NULL"),
        );
    }
    Ok(rows.len())
}

fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "campaign-notifier-demo-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                out.push((key, value));
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None if out.len() >= expected => break,
            None => {}
        }
    }
    Ok(out)
}
