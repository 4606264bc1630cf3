//! Starts the actors in the right order and stops them in the right order.
//!
//! Start: HTTP -> schema -> the Kafka check -> this process's lease -> writers and ledger ->
//! enricher -> cache (first snapshot) -> reader, so that the reader pulls nothing before there is
//! somewhere to put it and nothing is written before the lease says this process may. What
//! stopped instances left half-sent is finished by the ledger in the background, once their
//! lease expired and their produce requests have settled (see [`crate::ledger::recovery`]);
//! until then their campaigns, read again, insert nothing new. Stop: the reader drains and
//! commits, the writers flush and close, the ledger finishes its sweep, and the lease is released.
//! Shared by `run`, `demo`, the tests and the benchmark.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use crate::cache::{
    CacheIntervals, CacheWiring, CurrentSubscribers, RefreshCache, SnapshotInfo, SubscriberCache,
    Subscribers,
};
use crate::clock::Clock;
use crate::config::{Config, Settings};
use crate::delivery::{Delivery, DeliveryTargets};
use crate::enricher::Enricher;
use crate::fatal::FatalReason;
use crate::http::Stage;
use crate::lease::{self, Lease, OwnerRow};
use crate::lease_keeper::{LeaseKeeper, Release};
use crate::ledger::{Ledger, OutputTarget, Recoverer};
use crate::lifecycle::Lifecycle;
use crate::messages::{Close, Drain, DrainReport};
use crate::metrics::Metrics;
use crate::postgres::trigger_column::{self, TriggerColumnError};
use crate::postgres::TriggerColumn;
use crate::reader::KafkaReader;
use crate::shared::Shared;
use crate::sinks::dead_letter_writer::DeadLetterWriter;
use crate::sinks::kafka_writer::{KafkaSink, KafkaSinkSettings, KafkaWriter};
use crate::sinks::pg_writer::{Capping, PgSinkConfig, PgWriter};
use crate::sinks::Writer;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to Postgres for the schema step")]
    SchemaConnect(#[source] crate::postgres::ConnectError),
    #[error("cannot prepare the Postgres schema")]
    Schema(#[source] crate::postgres::SchemaError),
    #[error(transparent)]
    TriggerColumn(#[from] TriggerColumnError),
    #[error("cannot serve HTTP on {listen}: {source}")]
    Http {
        listen: String,
        source: std::io::Error,
    },
    #[error("the subscriber cache stopped before its first load")]
    CacheGone,
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("Kafka: {what}")]
    KafkaRefused {
        what: &'static str,
        #[source]
        source: crate::kafka::KafkaFailure,
    },
    #[error("cannot connect to Postgres to take this instance's lease")]
    LeaseConnect(#[source] crate::postgres::ConnectError),
    #[error("cannot take this instance's lease")]
    Lease(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Changes(#[from] crate::changes::mode::ModeError),
}

/// How long the start-up check waits for a broker to answer before going on without one.
const KAFKA_ACCESS_WAIT: Duration = Duration::from_secs(10);

/// Credentials or certificates the brokers refuse stop the start; brokers that do not answer yet
/// do not (the clients keep trying, as they would later).
async fn check_kafka_access(settings: &Settings) -> Result<(), StartError> {
    let producer = settings.producer.clone();
    let checked = tokio::task::spawn_blocking(move || {
        crate::kafka::access::check(&producer, KAFKA_ACCESS_WAIT)
    })
    .await
    .map_err(|e| StartError::Kafka(format!("the start-up check failed: {e}")))?;
    match checked {
        Ok(crate::kafka::access::Access::Granted) => Ok(()),
        Ok(crate::kafka::access::Access::Unreachable(reason)) => {
            log::warn!("no Kafka broker answered at start-up ({reason}); the clients keep trying");
            Ok(())
        }
        Err(e) => Err(StartError::Kafka(e.message)),
    }
}

pub struct Pipeline {
    pub metrics: Metrics,
    pub http_addr: SocketAddr,
    pub snapshot: watch::Receiver<Option<SnapshotInfo>>,
    reader: Addr<KafkaReader>,
    cache: Addr<SubscriberCache>,
    subscribers: CurrentSubscribers,
    writers: Writers,
    lifecycle: Addr<Lifecycle>,
    lease_keeper: Addr<LeaseKeeper>,
    lease: Lease,
    http: actix_web::dev::ServerHandle,
    arbiters: Vec<Arbiter>,
    settings: Settings,
    failed: watch::Receiver<Option<FatalReason>>,
}

/// The supervised writers and the ledger, each on the arbiter it shares with its kind.
struct Writers {
    kafka: Addr<KafkaWriter>,
    postgres: Addr<PgWriter>,
    dead_letters: Option<Addr<DeadLetterWriter>>,
    ledger: Addr<Ledger>,
}

impl Pipeline {
    /// Starts everything and returns once the first subscriber snapshot is loaded and the reader
    /// is consuming. Must run inside an actix `System`.
    pub async fn start(config: Config, metrics: Metrics) -> Result<Pipeline, StartError> {
        Pipeline::start_with_clock(config, metrics, Clock::system()).await
    }

    /// [`Pipeline::start`] with the service's "now" taken from `clock`.
    pub async fn start_with_clock(
        config: Config,
        metrics: Metrics,
        clock: Clock,
    ) -> Result<Pipeline, StartError> {
        let mut settings = config.settings();
        let (mut shared, failed) = Shared::with_lease(metrics, clock);
        shared.quiet = settings.quiet.clone();
        // HTTP first: alive from the start, and /readyz says which step is under way.
        let (published, mut snapshot) = watch::channel(None);
        let (stage, staged) = watch::channel(Stage::Starting("preparing the Postgres schema"));
        let (http_addr, http) = start_http(&settings, &shared, &snapshot, staged)?;
        let (owner, trigger_column) = prepare_to_write(&mut settings, &shared, &stage).await?;

        let arbiters = Arbiters::new();
        let lease_keeper = start_lease_keeper(&settings, &shared, &arbiters);
        let writers = Writers::start(&settings, owner, trigger_column, &shared, &arbiters);
        stage.send_replace(Stage::Running {
            kafka_writer: writers.kafka.clone(),
            pg_writer: writers.postgres.clone(),
        });
        let subscribers = CurrentSubscribers::default();
        let (enricher, lifecycle) =
            start_enricher(&settings, &writers, owner, &subscribers, &shared, &arbiters);
        let wiring = CacheWiring {
            snapshots: vec![lifecycle.clone().recipient()],
            views: vec![enricher.clone().recipient()],
            published,
            current: subscribers.clone(),
        };
        let cache = start_cache(&settings, wiring, &shared, &arbiters);
        let reader =
            start_reader_after_first_snapshot(&settings, &mut snapshot, enricher, &shared).await?;

        Ok(Pipeline {
            metrics: shared.metrics,
            http_addr,
            snapshot,
            reader,
            cache,
            subscribers,
            writers,
            lifecycle,
            lease_keeper,
            lease: shared.lease.clone(),
            http,
            arbiters: arbiters.into_vec(),
            settings,
            failed,
        })
    }

    /// Resolves with the reason when a part of the pipeline failed in a way no restart cures;
    /// the caller should shut down and exit non-zero.
    pub async fn failed(&self) -> FatalReason {
        let mut failed = self.failed.clone();
        let reason = match failed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // Never happens while the pipeline exists; wait forever rather than report a failure.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// The subscribers the join uses now (`None` before the first load).
    pub fn subscribers(&self) -> Option<Subscribers> {
        self.subscribers.get()
    }

    /// Asks the cache to reload now.
    pub fn refresh_cache(&self) {
        self.cache.do_send(RefreshCache);
    }

    /// Stops reading, waits for campaigns in flight (up to the configured grace period), commits
    /// offsets, flushes and closes the writers.
    pub async fn shutdown(self) -> DrainReport {
        // One grace period for the whole stop: three quarters for the campaigns in flight, the
        // rest (and whatever they leave) for the commit, the writers' close and the threads.
        let grace = StopGrace::from_now(self.settings.grace_period);
        // No more campaigns are fired; those being fired finish with the drain, or are claimed
        // again by the next instance once this one is gone. Not awaited: a lifecycle that is
        // connecting answers nothing until it is connected.
        self.lifecycle.do_send(Close);
        let report = self.drain_reader(&grace).await;
        let closed = self.writers.close(&grace).await;
        // A sweep under way may be sending a dead owner's notifications: it ends first.
        let ledger_idle = matches!(
            tokio::time::timeout(grace.left(), self.writers.ledger.send(Close)).await,
            Ok(Ok(()))
        );
        // Nothing of this process can be on its way to the broker once its writers and the
        // ledger's sends are done: a peer may then take what it left over at once.
        let release = self.lease_keeper.send(Release {
            flushed: closed && ledger_idle,
        });
        let _ = tokio::time::timeout(grace.left(), release).await;
        let _ = tokio::time::timeout(grace.left(), self.http.stop(true)).await;
        join_arbiters(self.arbiters, &grace).await;
        report
    }

    /// Has the reader drain and commit, waiting for the campaigns in flight for three quarters of
    /// the grace period.
    async fn drain_reader(&self, grace: &StopGrace) -> DrainReport {
        // A fenced instance may write nothing: its campaigns in flight are not waited for.
        let drain_grace = match self.lease.is_fenced() {
            true => Duration::ZERO,
            false => grace.period.mul_f64(0.75),
        };
        let drain = self.reader.send(Drain { grace: drain_grace });
        match tokio::time::timeout_at(grace.deadline, drain).await {
            Ok(report) => report.unwrap_or_default(),
            Err(_) => {
                log::warn!(
                    "the reader did not drain and commit within {grace:?}",
                    grace = grace.period
                );
                DrainReport::default()
            }
        }
    }
}

/// The one grace period of a stop, and the moment it ends.
struct StopGrace {
    period: Duration,
    deadline: tokio::time::Instant,
}

impl StopGrace {
    fn from_now(period: Duration) -> StopGrace {
        StopGrace {
            period,
            deadline: tokio::time::Instant::now() + period,
        }
    }

    /// What is left of the grace period.
    fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// Stops the arbiters and waits for their threads. Joining drops the writers' producers and
/// connections before this returns, so nothing of the pipeline outlives it.
async fn join_arbiters(arbiters: Vec<Arbiter>, grace: &StopGrace) {
    let joined = tokio::task::spawn_blocking(move || {
        for arbiter in arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
    });
    if tokio::time::timeout(grace.left(), joined).await.is_err() {
        log::warn!(
            "actor threads did not stop within the grace period ({grace:?})",
            grace = grace.period
        );
    }
}

/// The steps before anything may be written: the schema, the Kafka check, this process's lease
/// (whose owner id every Postgres session then carries) and, with `kafka.transactions`, the
/// brokers' support for transactions. Returns the owner id and the trigger column's type.
async fn prepare_to_write(
    settings: &mut Settings,
    shared: &Shared,
    stage: &watch::Sender<Stage>,
) -> Result<(i32, TriggerColumn), StartError> {
    let trigger_column = prepare_schema(settings, shared.clock.now_secs()).await?;
    stage.send_replace(Stage::Starting(
        "asking how subscription changes can be followed",
    ));
    resolve_changes(settings).await?;
    stage.send_replace(Stage::Starting("checking the Kafka brokers"));
    check_kafka_access(settings).await?;
    stage.send_replace(Stage::Starting("taking this instance's lease"));
    let owner = acquire_lease(settings, &shared.lease).await?;
    // Every session of this process says whose it is (pg_stat_activity, and the peer that
    // ends a fenced owner's sessions).
    settings.postgres.owner = Some(owner);
    if let Some(ids) = &settings.transactional_ids {
        check_transactions(settings, &ids.of(owner)).await?;
    }
    Ok((owner, trigger_column))
}

/// Waits for the cache's first snapshot, then starts the reader: nothing is pulled before there
/// is somewhere to put it.
async fn start_reader_after_first_snapshot(
    settings: &Settings,
    snapshot: &mut watch::Receiver<Option<SnapshotInfo>>,
    enricher: Addr<Enricher>,
    shared: &Shared,
) -> Result<Addr<KafkaReader>, StartError> {
    snapshot
        .wait_for(Option::is_some)
        .await
        .map_err(|_| StartError::CacheGone)?;
    Ok(KafkaReader::new(
        settings.reader.clone(),
        enricher.recipient(),
        shared.clone(),
    )
    .start())
}

/// With `kafka.transactions`, brokers that refuse transactions stop the start (exit code 2)
/// instead of a writer retrying for ever.
async fn check_transactions(settings: &Settings, id: &str) -> Result<(), StartError> {
    crate::kafka::Producer::transactional(&settings.producer, id, KAFKA_ACCESS_WAIT)
        .await
        .map(drop)
        .map_err(|source| StartError::KafkaRefused {
            what: "the brokers do not take Kafka transactions (kafka.transactions = true)",
            source,
        })
}

/// Inserts this process's row in `campaign_notifier_owners` with a fresh owner id, valid for a
/// lease from the moment it was sent.
async fn acquire_lease(settings: &Settings, lease: &Lease) -> Result<i32, StartError> {
    let client = crate::postgres::connect(&settings.postgres, "ledger lease")
        .await
        .map_err(StartError::LeaseConnect)?;
    // With transactions the broker fences this owner's producer when a peer takes it over:
    // nothing of it needs to settle. Without, its last produce requests must have landed.
    let settle = match settings.transactional_ids {
        Some(_) => Duration::ZERO,
        None => {
            settings
                .producer
                .effective_message_timeout()
                .unwrap_or(Duration::from_millis(settings.producer.message_timeout_ms))
                + lease::SETTLE_MARGIN
        }
    };
    let row = OwnerRow {
        host: hostname(),
        pid: std::process::id() as i32,
        input_topic: settings.reader.topic.clone(),
        ttl: settings.lease_ttl,
        settle,
    };
    let sent = std::time::Instant::now();
    let owner = lease::acquire(&client, &row)
        .await
        .map_err(StartError::Lease)?;
    lease.acquired(owner);
    lease.renewed(sent, settings.lease_ttl);
    log::info!(
        "lease: this instance is owner {owner} (lease {:?}, renewed every {:?}; a peer takes its \
         work over {:?} after the lease ends)",
        settings.lease_ttl,
        settings.lease_ttl / 3,
        settle
    );
    Ok(owner)
}

/// This host's name, for the owners table (an operator's way from an owner id to a machine).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn start_lease_keeper(
    settings: &Settings,
    shared: &Shared,
    arbiters: &Arbiters,
) -> Addr<LeaseKeeper> {
    let (postgres, ttl, topic) = (
        settings.postgres.clone(),
        settings.lease_ttl,
        settings.reader.topic.clone(),
    );
    let (restart, s) = (settings.ledger_restart.clone(), shared.clone());
    Supervisor::start_in_arbiter(&arbiters.ledger.handle(), move |_| {
        LeaseKeeper::new(postgres, ttl, topic, restart, s)
    })
}

/// The schema step (unless `create_schema` is off), then the type of
/// `subscribers_feedback.trigger_datetime_created`: int4 or int8, and an int4 column refused once
/// `now_secs` is past what it holds.
async fn prepare_schema(settings: &Settings, now_secs: i64) -> Result<TriggerColumn, StartError> {
    let mut client = crate::postgres::connect(&settings.postgres, "schema")
        .await
        .map_err(StartError::SchemaConnect)?;
    if settings.create_schema {
        crate::postgres::ensure_schema(&mut client)
            .await
            .map_err(StartError::Schema)?;
    }
    Ok(trigger_column::check_at_start(&client, now_secs).await?)
}

/// Which way the changes of `subscribers_restaurants` are followed (`cache.changes`), as the
/// server allows; every part that follows them is told.
async fn resolve_changes(settings: &mut Settings) -> Result<(), StartError> {
    let mut client = crate::postgres::connect(&settings.postgres, "schema")
        .await
        .map_err(StartError::SchemaConnect)?;
    let names = settings.cache.slot_names();
    let resolved =
        crate::changes::mode::resolve(&mut client, settings.cache.changes, &names).await?;
    log::info!("subscriber changes are followed by {}", resolved.why);
    settings.lifecycle.changes = resolved.mode.clone();
    settings.changes = resolved.mode;
    Ok(())
}

fn output_target(settings: &Settings) -> OutputTarget {
    OutputTarget {
        producer: settings.producer.clone(),
        topic: settings.output_topic.clone(),
        end_grace_secs: settings.lifecycle.window.end_grace_secs,
    }
}

/// One arbiter (thread) per kind of work, so that a slow one holds up no other.
struct Arbiters {
    kafka: Arbiter,
    postgres: Arbiter,
    cache: Arbiter,
    ledger: Arbiter,
    lifecycle: Arbiter,
}

impl Arbiters {
    fn new() -> Arbiters {
        Arbiters {
            kafka: Arbiter::new(),
            postgres: Arbiter::new(),
            cache: Arbiter::new(),
            ledger: Arbiter::new(),
            lifecycle: Arbiter::new(),
        }
    }

    fn into_vec(self) -> Vec<Arbiter> {
        vec![
            self.kafka,
            self.postgres,
            self.cache,
            self.ledger,
            self.lifecycle,
        ]
    }
}

impl Writers {
    /// The Kafka and dead-letter writers share an arbiter (librdkafka does its work on threads of
    /// its own); the Postgres writer and the ledger have one each.
    fn start(
        settings: &Settings,
        owner: i32,
        trigger_column: TriggerColumn,
        shared: &Shared,
        arbiters: &Arbiters,
    ) -> Writers {
        let kafka = start_kafka_writer(settings, owner, shared, arbiters);
        let postgres = start_pg_writer(settings, owner, trigger_column, shared, arbiters);
        let dead_letters = start_dead_letter_writer(settings, shared, arbiters);
        let ledger = start_ledger(settings, dead_letters.clone(), shared, arbiters);
        Writers {
            kafka,
            postgres,
            dead_letters,
            ledger,
        }
    }

    /// Flushes and closes the Kafka, Postgres and dead-letter writers; true if all of them
    /// closed within the grace period.
    async fn close(&self, grace: &StopGrace) -> bool {
        let dead_letters = self.dead_letters.clone();
        let close = futures::future::join3(
            self.kafka.send(Close),
            self.postgres.send(Close),
            async move {
                if let Some(d) = dead_letters {
                    let _ = d.send(Close).await;
                }
            },
        );
        let closed = tokio::time::timeout(grace.left(), close).await.is_ok();
        if !closed {
            log::warn!(
                "writers did not close within the grace period ({grace:?})",
                grace = grace.period
            );
        }
        closed
    }
}

fn start_kafka_writer(
    settings: &Settings,
    owner: i32,
    shared: &Shared,
    arbiters: &Arbiters,
) -> Addr<KafkaWriter> {
    let kafka_settings = KafkaSinkSettings {
        producer: settings.producer.clone(),
        topic: settings.output_topic.clone(),
        lease: shared.lease.clone(),
        transactional_id: settings.transactional_ids.as_ref().map(|t| t.of(owner)),
        recalls: shared.recalls.clone(),
        max_per_sec: settings.max_notifications_per_sec,
    };
    let (w, s) = (settings.writers.clone(), shared.clone());
    Supervisor::start_in_arbiter(&arbiters.kafka.handle(), move |_| {
        Writer::<KafkaSink>::new(kafka_settings, w, s)
    })
}

fn start_pg_writer(
    settings: &Settings,
    owner: i32,
    trigger_column: TriggerColumn,
    shared: &Shared,
    arbiters: &Arbiters,
) -> Addr<PgWriter> {
    let pg_config = PgSinkConfig {
        postgres: settings.postgres.clone(),
        owner,
        lease: shared.lease.clone(),
        trigger_column,
        cap: settings.per_client_cap.map(|cap| Capping {
            cap,
            metrics: shared.metrics.clone(),
        }),
    };
    let (w, s) = (settings.writers.clone(), shared.clone());
    Supervisor::start_in_arbiter(&arbiters.postgres.handle(), move |_| {
        PgWriter::new(pg_config, w, s)
    })
}

/// The dead-letter writer, when a dead-letter topic is configured.
fn start_dead_letter_writer(
    settings: &Settings,
    shared: &Shared,
    arbiters: &Arbiters,
) -> Option<Addr<DeadLetterWriter>> {
    settings.dead_letter_topic.clone().map(|topic| {
        // Dead letters are not part of what "exactly once" counts: the idempotent producer.
        let dlq_settings = KafkaSinkSettings {
            producer: settings.producer.clone(),
            topic,
            lease: shared.lease.clone(),
            transactional_id: None,
            recalls: Default::default(),
            max_per_sec: 0,
        };
        let (w, s) = (settings.writers.clone(), shared.clone());
        Supervisor::start_in_arbiter(&arbiters.kafka.handle(), move |_| {
            DeadLetterWriter::new(dlq_settings, w, s)
        })
    })
}

/// The ledger, with what it needs to finish a dead owner's notifications.
fn start_ledger(
    settings: &Settings,
    dead_letters: Option<Addr<DeadLetterWriter>>,
    shared: &Shared,
    arbiters: &Arbiters,
) -> Addr<Ledger> {
    let recoverer = Recoverer {
        output: output_target(settings),
        transactional_ids: settings.transactional_ids.clone(),
        lease: shared.lease.clone(),
        dead_letters: dead_letters.map(Addr::recipient),
        metrics: shared.metrics.clone(),
    };
    // Versions before leases took an owner over once its lock had been free for the message
    // timeout and 5 s.
    let legacy_settle =
        Duration::from_millis(settings.producer.message_timeout_ms) + lease::SETTLE_MARGIN;
    let (url, ttl, restart) = (
        settings.postgres.clone(),
        settings.lease_ttl,
        settings.ledger_restart.clone(),
    );
    let s = shared.clone();
    Supervisor::start_in_arbiter(&arbiters.ledger.handle(), move |_| {
        Ledger::new(url, recoverer, ttl, legacy_settle, restart, s)
    })
}

/// Starts the enricher and the lifecycle, each knowing the other: the enricher has the
/// lifecycle record every campaign, the lifecycle hands it the campaigns that are due.
fn start_enricher(
    settings: &Settings,
    writers: &Writers,
    owner: i32,
    subscribers: &CurrentSubscribers,
    shared: &Shared,
    arbiters: &Arbiters,
) -> (Addr<Enricher>, Addr<Lifecycle>) {
    let targets = DeliveryTargets {
        postgres: writers.postgres.clone().recipient(),
        kafka: writers.kafka.clone().recipient(),
        ledger: writers.ledger.clone().recipient(),
        withdraw: writers.ledger.clone().recipient(),
        dead_letters: writers.dead_letters.clone().map(Addr::recipient),
    };
    let delivery = Delivery::new(
        targets,
        owner,
        settings.max_notifications_in_flight,
        subscribers.clone(),
        shared.clone(),
    );
    let mut lifecycle = None;
    let enricher = Enricher::create(|ctx| {
        let fire = ctx.address().recipient();
        let (postgres, s) = (settings.postgres.clone(), shared.clone());
        let (lifecycle_settings, restart) = (
            settings.lifecycle.clone(),
            settings.lifecycle_restart.clone(),
        );
        let addr = Supervisor::start_in_arbiter(&arbiters.lifecycle.handle(), move |_| {
            Lifecycle::new(postgres, owner, lifecycle_settings, fire, restart, s)
        });
        lifecycle = Some(addr.clone());
        Enricher::new(
            delivery,
            addr.recipient(),
            settings.lifecycle.window,
            settings.max_campaign_bytes,
            shared.clone(),
        )
    });
    let lifecycle = lifecycle.expect("set while the enricher was created");
    (enricher, lifecycle)
}

/// Starts the cache; `wiring` says who hears of it.
fn start_cache(
    settings: &Settings,
    wiring: CacheWiring,
    shared: &Shared,
    arbiters: &Arbiters,
) -> Addr<SubscriberCache> {
    let c = &settings.cache;
    let intervals = CacheIntervals {
        reload: match settings.changes.follows_changes() {
            true => c.changes_reload_interval_secs,
            false => c.refresh_interval_secs,
        },
        poll: c.changes_poll_interval_ms,
        keep: c.changes_keep_secs,
    };
    let cache = SubscriberCache::new(
        settings.postgres.clone(),
        intervals,
        settings.changes.clone(),
        settings.cache_restart.clone(),
        wiring,
        shared.clone(),
    );
    Supervisor::start_in_arbiter(&arbiters.cache.handle(), move |_| cache)
}

fn start_http(
    settings: &Settings,
    shared: &Shared,
    snapshot: &watch::Receiver<Option<SnapshotInfo>>,
    stage: watch::Receiver<Stage>,
) -> Result<(SocketAddr, actix_web::dev::ServerHandle), StartError> {
    let state = crate::http::HttpState {
        metrics: shared.metrics.clone(),
        snapshot: snapshot.clone(),
        stage,
        lease: shared.lease.clone(),
        liveness: shared.liveness.clone(),
        liveness_timeout: settings.liveness_timeout,
    };
    let (addr, handle) =
        crate::http::start(&settings.http_listen, state).map_err(|source| StartError::Http {
            listen: settings.http_listen.clone(),
            source,
        })?;
    log::info!("serving /metrics, /healthz and /readyz on http://{addr}");
    Ok((addr, handle))
}
