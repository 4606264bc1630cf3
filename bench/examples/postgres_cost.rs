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
use campaign_actors::cache::snapshot::Snapshot;
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
use tokio_postgres::{Client, Statement};

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

/// Every step in turn, in the database at `url`: one JSON line of microseconds per campaign.
async fn measure(url: &str, campaigns: usize, group: usize) -> BenchResult<serde_json::Value> {
    let now = campaign_actors::clock::unix_secs();
    let (db, snapshot) = seed(url, campaigns).await?;
    let mut cost = Cost {
        url,
        campaigns,
        group,
        arrivals: arrivals(campaigns, now),
        steps: serde_json::Map::new(),
    };
    // What each step opens stays open until the end: a backend that exits, or a statement
    // closed, during a later step would be counted in that step's figures.
    let _lifecycle = cost.lifecycle().await?;
    let written = cost.writer_insert(&db, &snapshot, now).await?;
    let _fence = cost.writer_fence().await?;
    let _ledger = cost.ledger_clear(&written.outbox_ids).await?;
    let _script = cost.script_copy(now).await?;
    Ok(serde_json::json!({
        "campaigns": campaigns,
        "group": group,
        "microseconds_per_campaign": cost.steps,
    }))
}

/// The schema, one subscriber per restaurant, and the owner row the writer's fence reads, in
/// the database at `url`; a connection to it and the subscriber snapshot.
async fn seed(url: &str, campaigns: usize) -> BenchResult<(Client, Arc<Snapshot>)> {
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
    Ok((db, snapshot))
}

/// `campaigns` new campaigns, one per restaurant, as the reader hands them on.
fn arrivals(campaigns: usize, now: i64) -> Vec<Arrival> {
    (0..campaigns)
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
        .collect()
}

/// One group size: its campaigns and the figures so far.
struct Cost<'a> {
    url: &'a str,
    campaigns: usize,
    group: usize,
    arrivals: Vec<Arrival>,
    steps: serde_json::Map<String, serde_json::Value>,
}

/// What the writer step leaves: its outbox marks, for the ledger's step, and the sink that wrote
/// them, kept open until the end.
struct WriterRows {
    outbox_ids: Vec<i64>,
    _sink: PgSink,
}

impl Cost<'_> {
    /// Records `meter`'s figures per campaign as `step`.
    fn record(&mut self, step: &str, meter: &Meter) {
        let figures = meter.per_campaign(self.campaigns);
        self.steps.insert(step.into(), figures);
    }

    /// The lifecycle: the read of the kept versions (none yet), then the store; then the same
    /// store again into an empty table, without the message bytes. Returns the connections and
    /// the prepared statements.
    async fn lifecycle(&mut self) -> BenchResult<(Client, Client, Prepared)> {
        let (reads, reads_pid) = backend(self.url).await?;
        let (writes, writes_pid) = backend(self.url).await?;
        let prepared = Prepared::new(&reads, &writes)
            .await
            .map_err(err("prepare"))?;
        let meter = Meter::start(reads_pid);
        read_kept(&reads, &prepared, &self.arrivals, self.group).await?;
        self.record("lifecycle_read_kept", &meter);
        let meter = Meter::start(writes_pid);
        store_all(&writes, &prepared, &self.arrivals, self.group).await?;
        self.record("lifecycle_store_with_message", &meter);
        writes
            .batch_execute("TRUNCATE campaign_notifier_campaigns")
            .await
            .map_err(err("truncate"))?;
        writes.batch_execute("CHECKPOINT").await.ok();
        let bare = without_messages(&self.arrivals);
        let meter = Meter::start(writes_pid);
        store_all(&writes, &prepared, &bare, self.group).await?;
        self.record("lifecycle_store_without_message", &meter);
        writes.batch_execute("CHECKPOINT").await.ok();
        Ok((reads, writes, prepared))
    }

    /// The Postgres writer's transaction: the notification and its outbox mark.
    async fn writer_insert(
        &mut self,
        db: &Client,
        snapshot: &Arc<Snapshot>,
        now: i64,
    ) -> BenchResult<WriterRows> {
        let sink = PgSink::connect(PgSinkConfig {
            postgres: PostgresSettings::for_url(self.url),
            owner: 1,
            lease: campaign_actors::lease::Lease::unbounded(),
            trigger_column: TriggerColumn::Int4,
            cap: None,
        })
        .await
        .map_err(err("postgres sink"))?;
        let sink_pid = sink_backend_pid(db).await?;
        let mut tokens = campaign_actors::sinks::pg_writer::Tokens::new(1);
        let mut outbox_ids = Vec::with_capacity(self.campaigns);
        let meter = Meter::start(sink_pid);
        for g in self.arrivals.chunks(self.group) {
            let jobs: Vec<Arc<PgJob>> = g
                .iter()
                .map(|a| pg_job(a, snapshot, now, &mut tokens))
                .collect();
            for inserted in sink.write(jobs).await.map_err(err("insert"))? {
                outbox_ids.extend(inserted.outbox_ids);
            }
        }
        self.record("writer_insert_and_mark_unfenced", &meter);
        Ok(WriterRows {
            outbox_ids,
            _sink: sink,
        })
    }

    /// The fence the writer runs first in each transaction (with a lease that fences). Returns
    /// the connection and the prepared statement.
    async fn writer_fence(&mut self) -> BenchResult<(Client, Statement)> {
        let (fence, fence_pid) = backend(self.url).await?;
        let fence_statement = fence
            .prepare(campaign_actors::sinks::pg_writer::FENCE)
            .await
            .map_err(err("prepare fence"))?;
        let meter = Meter::start(fence_pid);
        for _ in self.arrivals.chunks(self.group) {
            fence.batch_execute("BEGIN").await.map_err(err("begin"))?;
            fence
                .query_opt(&fence_statement, &[&1i32])
                .await
                .map_err(err("fence"))?;
            fence.batch_execute("COMMIT").await.map_err(err("commit"))?;
        }
        self.record("writer_fence", &meter);
        Ok((fence, fence_statement))
    }

    /// The ledger clears the marks once Kafka has the notifications. Returns the connection.
    async fn ledger_clear(&mut self, outbox_ids: &[i64]) -> BenchResult<Client> {
        let (ledger, ledger_pid) = backend(self.url).await?;
        let meter = Meter::start(ledger_pid);
        for ids in outbox_ids.chunks(self.group) {
            campaign_actors::ledger::outbox::clear_marks(&ledger, ids)
                .await
                .map_err(err("clear"))?;
        }
        self.record("ledger_clear_marks", &meter);
        Ok(ledger)
    }

    /// What a script writes: a text COPY into the brief's table, no unique key, no outbox.
    /// Returns the connection.
    async fn script_copy(&mut self, now: i64) -> BenchResult<Client> {
        let (script, script_pid) = backend(self.url).await?;
        campaign_bench::baseline::create_table(&script, "script_feedback").await?;
        let meter = Meter::start(script_pid);
        for g in self.arrivals.chunks(self.group) {
            copy_text(&script, g, now).await?;
        }
        self.record("script_copy", &meter);
        Ok(script)
    }
}

/// The lifecycle's read of the kept versions of each group's campaigns.
async fn read_kept(
    reads: &Client,
    prepared: &Prepared,
    arrivals: &[Arrival],
    group: usize,
) -> BenchResult<()> {
    for g in arrivals.chunks(group) {
        let keys: Vec<_> = g
            .iter()
            .map(|a| {
                (
                    a.campaign.restaurant_id.clone(),
                    a.campaign.adv_campaign_id.clone(),
                )
            })
            .collect();
        store::kept(reads, prepared, &keys)
            .await
            .map_err(err("kept"))?;
    }
    Ok(())
}

/// The lifecycle's store of each group's campaigns, as active.
async fn store_all(
    writes: &Client,
    prepared: &Prepared,
    arrivals: &[Arrival],
    group: usize,
) -> BenchResult<()> {
    for g in arrivals.chunks(group) {
        let rows: Vec<(&Arrival, State)> = g.iter().map(|a| (a, State::Active)).collect();
        store::store(writes, prepared, &rows)
            .await
            .map_err(err("store"))?;
    }
    Ok(())
}

/// The same campaigns without the original message.
fn without_messages(arrivals: &[Arrival]) -> Vec<Arrival> {
    arrivals
        .iter()
        .map(|a| Arrival {
            campaign: a.campaign.clone(),
            source: a.source.clone(),
            key: None,
            payload: Vec::new(),
        })
        .collect()
}

/// The writer's job for one campaign: its notification to its one subscriber.
fn pg_job(
    a: &Arrival,
    snapshot: &Arc<Snapshot>,
    now: i64,
    tokens: &mut campaign_actors::sinks::pg_writer::Tokens,
) -> Arc<PgJob> {
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
    Arc::new(PgJob::new(Arc::new(batch), tokens))
}

/// One text `COPY` of a group's rows, as a script writes them.
async fn copy_text(script: &Client, g: &[Arrival], now: i64) -> BenchResult<()> {
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
    Ok(())
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
