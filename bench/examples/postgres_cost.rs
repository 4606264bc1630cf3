//! What each of the service's Postgres statements costs the server per campaign, at fan-out 1.
//!
//! A campaign delivered on arrival costs Postgres: the lifecycle's read of the kept versions and
//! its store of the new version (the row, with the original message), the Postgres writer's
//! transaction (the fence, the insert of the notification with its outbox mark, the commit), and
//! the ledger's clearing of the mark once Kafka has the notification. This runs each of them
//! alone, with the service's own code and statements, over `--campaigns` new campaigns of one
//! subscriber each, in groups of each size of `--groups`, and reads the CPU of the backend that
//! ran it (from /proc) and of all of Postgres' processes (WAL writer and checkpointer included)
//! meanwhile. Beside them: the store without the message, and a plain text `COPY` of the same
//! rows into a table without the unique key, as a script would write them.
//!
//!   scripts/bench.sh --example postgres_cost
//!
//! Prints one JSON line per group size: microseconds of Postgres CPU per campaign for each step
//! (`backend` and `all`), and wall microseconds.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use campaign_actors::lifecycle::rules::State;
use campaign_actors::lifecycle::store::{self, Prepared};
use campaign_actors::lifecycle::Arrival;
use campaign_actors::notification::{NotificationBatch, SourceRef};
use campaign_actors::postgres::{PostgresSettings, TriggerColumn};
use campaign_actors::sinks::pg_writer::{PgJob, PgSink, PgSinkConfig};
use campaign_actors::sinks::Sink;
use campaign_bench::measure::{others_cpu_seconds, pid_cpu_seconds};
use campaign_bench::setup::{connect, database_url, err, BenchResult};
use campaign_bench::workload::{campaign, campaign_json};
use clap::Parser;
use futures::{pin_mut, SinkExt};
use tokio_postgres::Client;

#[derive(Parser, Debug)]
#[command(about = "Postgres CPU per campaign of each of the service's statements")]
struct Args {
    /// Unused (scripts/bench.sh passes its broker to every example).
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// New campaigns per group size, one subscriber each (CPU is read in 10 ms ticks: 100 000
    /// campaigns resolve 0.1 microseconds a campaign).
    #[arg(long, default_value_t = 100_000)]
    campaigns: usize,
    /// Campaigns per statement (per group), one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,500")]
    groups: Vec<usize>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let system = actix_rt::System::new();
    match system.block_on(run(&args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postgres_cost failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> BenchResult<()> {
    let admin = connect(&args.postgres_url).await?;
    for (k, group) in args.groups.iter().enumerate() {
        let database = format!("cn_bench_cost_{}_{k}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .map_err(err("create database"))?;
        let url = database_url(&args.postgres_url, &database);
        let result = measure(&url, args.campaigns, (*group).max(1)).await;
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await;
        println!("{}", result?);
    }
    Ok(())
}

/// A connection and the pid of the backend serving it.
async fn backend(url: &str) -> BenchResult<(Client, u32)> {
    let client = connect(url).await?;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(err("backend pid"))?
        .get(0);
    Ok((client, pid as u32))
}

/// CPU seconds of one backend and of all of Postgres, and wall seconds, around a step.
struct Meter {
    pid: u32,
    backend: f64,
    all: f64,
    started: Instant,
}

impl Meter {
    fn start(pid: u32) -> Meter {
        Meter {
            pid,
            backend: pid_cpu_seconds(pid),
            all: others_cpu_seconds().1,
            started: Instant::now(),
        }
    }

    /// Microseconds per campaign: backend CPU, all of Postgres' CPU, wall.
    fn per_campaign(&self, campaigns: usize) -> serde_json::Value {
        let n = campaigns as f64 / 1e6;
        let round = |x: f64| (x / n * 10.0).round() / 10.0;
        serde_json::json!({
            "backend": round(pid_cpu_seconds(self.pid) - self.backend),
            "all": round(others_cpu_seconds().1 - self.all),
            "wall": round(self.started.elapsed().as_secs_f64()),
        })
    }
}

async fn measure(url: &str, campaigns: usize, group: usize) -> BenchResult<serde_json::Value> {
    let now = campaign_actors::clock::unix_secs();
    let mut db = connect(url).await?;
    campaign_actors::postgres::ensure_schema(&mut db)
        .await
        .map_err(err("schema"))?;
    // One subscriber per restaurant, and the owner row the writer's fence reads.
    db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT '10000000-0000-4000-8000-' || lpad(g::text, 12, '0'),
                '20000000-0000-4000-8000-' || lpad(g::text, 12, '0')
         FROM generate_series(0::int8, $1::int8 - 1) g",
        &[&(campaigns as i64)],
    )
    .await
    .map_err(err("subscribers"))?;
    db.batch_execute(
        "INSERT INTO campaign_notifier_owners (owner, host, pid, input_topic, expires_at, settle_ms)
         VALUES (1, 'bench', 0, 'bench-in', now() + interval '1 day', 0)",
    )
    .await
    .map_err(err("owner"))?;
    for statement in ["VACUUM ANALYZE subscribers_restaurants", "CHECKPOINT"] {
        db.batch_execute(statement).await.map_err(err("settle"))?;
    }
    let snapshot = Arc::new(
        campaign_actors::cache::load(PostgresSettings::for_url(url))
            .await
            .map_err(err("snapshot"))?,
    );
    let arrivals: Vec<Arrival> = (0..campaigns)
        .map(|i| {
            let c = campaign(i, &format!("10000000-0000-4000-8000-{i:012}"), now);
            Arrival {
                payload: campaign_json(&c).into_bytes(),
                key: None,
                source: SourceRef {
                    topic: "bench-in".into(),
                    partition: (i % 4) as i32,
                    offset: (i / 4) as i64,
                    timestamp_ms: Some(now * 1000),
                },
                campaign: c,
            }
        })
        .collect();
    let groups = || arrivals.chunks(group);
    let mut steps = serde_json::Map::new();

    // The lifecycle: the read of the kept versions (none yet), then the store.
    let (reads, reads_pid) = backend(url).await?;
    let (writes, writes_pid) = backend(url).await?;
    let prepared = Prepared::new(&reads, &writes)
        .await
        .map_err(err("prepare"))?;
    let meter = Meter::start(reads_pid);
    for g in groups() {
        let keys: Vec<_> = g
            .iter()
            .map(|a| {
                (
                    a.campaign.restaurant_id.clone(),
                    a.campaign.adv_campaign_id.clone(),
                )
            })
            .collect();
        store::kept(&reads, &prepared, &keys)
            .await
            .map_err(err("kept"))?;
    }
    steps.insert("lifecycle_read_kept".into(), meter.per_campaign(campaigns));
    let meter = Meter::start(writes_pid);
    for g in groups() {
        let rows: Vec<(&Arrival, State)> = g.iter().map(|a| (a, State::Active)).collect();
        store::store(&writes, &prepared, &rows)
            .await
            .map_err(err("store"))?;
    }
    steps.insert(
        "lifecycle_store_with_message".into(),
        meter.per_campaign(campaigns),
    );
    // The same store again into an empty table, without the message bytes.
    writes
        .batch_execute("TRUNCATE campaign_notifier_campaigns")
        .await
        .map_err(err("truncate"))?;
    writes.batch_execute("CHECKPOINT").await.ok();
    let bare: Vec<Arrival> = arrivals
        .iter()
        .map(|a| Arrival {
            campaign: a.campaign.clone(),
            source: a.source.clone(),
            key: None,
            payload: Vec::new(),
        })
        .collect();
    let meter = Meter::start(writes_pid);
    for g in bare.chunks(group) {
        let rows: Vec<(&Arrival, State)> = g.iter().map(|a| (a, State::Active)).collect();
        store::store(&writes, &prepared, &rows)
            .await
            .map_err(err("store"))?;
    }
    steps.insert(
        "lifecycle_store_without_message".into(),
        meter.per_campaign(campaigns),
    );
    writes.batch_execute("CHECKPOINT").await.ok();

    // The Postgres writer's transaction: the notification and its outbox mark.
    let sink = PgSink::connect(PgSinkConfig {
        postgres: PostgresSettings::for_url(url),
        owner: 1,
        lease: campaign_actors::lease::Lease::unbounded(),
        trigger_column: TriggerColumn::Int4,
    })
    .await
    .map_err(err("postgres sink"))?;
    let sink_pid = sink_backend_pid(&db).await?;
    let mut tokens = campaign_actors::ledger::Tokens::new(1);
    let mut outbox_ids = Vec::with_capacity(campaigns);
    let meter = Meter::start(sink_pid);
    for g in groups() {
        let jobs: Vec<Arc<PgJob>> = g
            .iter()
            .map(|a| {
                let entry = snapshot
                    .lookup(&a.campaign.restaurant_id)
                    .expect("every restaurant has its subscriber");
                let batch = NotificationBatch::new(
                    a.campaign.clone(),
                    now,
                    a.source.clone(),
                    snapshot.clone(),
                    entry,
                );
                Arc::new(PgJob::new(Arc::new(batch), &mut tokens))
            })
            .collect();
        for inserted in sink.write(jobs).await.map_err(err("insert"))? {
            outbox_ids.extend(inserted.outbox_ids);
        }
    }
    steps.insert(
        "writer_insert_and_mark_unfenced".into(),
        meter.per_campaign(campaigns),
    );

    // The fence the writer runs first in each transaction (with a lease that fences).
    let (fence, fence_pid) = backend(url).await?;
    let fence_statement = fence
        .prepare(campaign_actors::sinks::pg_writer::FENCE)
        .await
        .map_err(err("prepare fence"))?;
    let meter = Meter::start(fence_pid);
    for _ in groups() {
        fence.batch_execute("BEGIN").await.map_err(err("begin"))?;
        fence
            .query_opt(&fence_statement, &[&1i32])
            .await
            .map_err(err("fence"))?;
        fence.batch_execute("COMMIT").await.map_err(err("commit"))?;
    }
    steps.insert("writer_fence".into(), meter.per_campaign(campaigns));

    // The ledger clears the marks once Kafka has the notifications.
    let (ledger, ledger_pid) = backend(url).await?;
    let meter = Meter::start(ledger_pid);
    for ids in outbox_ids.chunks(group) {
        campaign_actors::ledger::outbox::clear_marks(&ledger, ids)
            .await
            .map_err(err("clear"))?;
    }
    steps.insert("ledger_clear_marks".into(), meter.per_campaign(campaigns));

    // What a script writes: a text COPY into the brief's table, no unique key, no outbox.
    let (script, script_pid) = backend(url).await?;
    campaign_bench::baseline::create_table(&script, "script_feedback").await?;
    let meter = Meter::start(script_pid);
    for g in groups() {
        let sink = script
            .copy_in::<_, Bytes>(
                "COPY script_feedback (restaurant_id, adv_campaign_id, adv_campaign_content, \
                 adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
                 adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created) \
                 FROM STDIN",
            )
            .await
            .map_err(err("copy"))?;
        pin_mut!(sink);
        let mut text = String::new();
        for (i, a) in g.iter().enumerate() {
            let c = &a.campaign;
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t20000000-0000-4000-8000-{:012}\t{now}\n",
                c.restaurant_id,
                c.adv_campaign_id,
                c.adv_campaign_content,
                c.adv_campaign_owner,
                c.adv_campaign_owner_contact,
                c.adv_campaign_datetime_start,
                c.adv_campaign_datetime_end,
                c.datetime_created,
                i
            ));
        }
        sink.send(Bytes::from(text)).await.map_err(err("copy"))?;
        sink.finish().await.map_err(err("copy finish"))?;
    }
    steps.insert("script_copy".into(), meter.per_campaign(campaigns));

    Ok(serde_json::json!({
        "campaigns": campaigns,
        "group": group,
        "microseconds_per_campaign": steps,
    }))
}

/// The backend of the sink's connection: the one session named by the service's application
/// name for its writer, other than ours.
async fn sink_backend_pid(db: &Client) -> BenchResult<u32> {
    let rows = db
        .query(
            "SELECT pid, application_name FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
             ORDER BY backend_start DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(err("sink backend"))?;
    let pid: i32 = rows.first().ok_or("no sink backend")?.get(0);
    Ok(pid as u32)
}
