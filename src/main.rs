//! `campaign-notifier`: wiring only. CLI -> config -> logging -> metrics -> actor system ->
//! signals. Everything the service does lives in the `campaign-actors` crate.

mod check;
mod demo;
mod logging;
mod ops;

use std::path::PathBuf;
use std::process::ExitCode;

use campaign_actors::error_chain::Chain;
use campaign_actors::messages::DrainReport;
use campaign_actors::ops::reconcile::ReconcileRequest;
use campaign_actors::ops::replay::ReplayRequest;
use campaign_actors::ops::status::State;
use campaign_actors::{Config, Metrics, Pipeline};
use clap::{Parser, Subcommand};

/// mimalloc: every campaign allocates and frees many small objects across threads (messages,
/// futures, rows); glibc's malloc was about a quarter of the service's CPU with one subscriber per
/// campaign.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Turns restaurant promo campaigns from Kafka into per-subscriber \
notification drafts in Kafka and Postgres"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service until SIGINT or SIGTERM, then drain, commit and exit 0. SIGHUP reloads the
    /// subscriber snapshot at once.
    Run {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Check a config file (with environment overrides) and print the effective settings. With
    /// --connect, also reach the brokers, the topics and Postgres and say which is not usable
    /// (exit code 2 then).
    CheckConfig {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Also check that the brokers, the topics, Postgres and its tables can be reached and
        /// used.
        #[arg(long)]
        connect: bool,
    },
    /// What became of a campaign, read from Postgres (the service may run or not).
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// Every campaign on record (kept lifecycle.retain_days after it last changed), one JSON line
    /// each, in order of start.
    Campaigns {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Only those in this state: scheduled, active, over, cancelled or refused.
        #[arg(long)]
        state: Option<State>,
    },
    /// Compare the two sinks for some campaigns: per campaign one JSON line with the clients only
    /// in Postgres, only in Kafka, and twice in Kafka. Exit 0 when they agree, 1 when not. With
    /// --repair, send what Kafka lacks (withdraw it, once the campaign is over) and insert what
    /// Postgres lacks, never a notification twice.
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Reconcile {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// The campaigns of this adv_campaign_id.
        #[arg(long, group = "which")]
        campaign: Option<String>,
        /// The campaigns whose record changed at or after this time (unix seconds).
        #[arg(long, group = "which")]
        since: Option<i64>,
        #[arg(long)]
        repair: bool,
    },
    /// Publish the original messages of the dead-letter topic to the input topic again (once the
    /// cause is fixed), each once, and print how many per reason.
    ReplayDeadLetters {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Only letters with this dlq.reason.code (sink_refused, ended, not_json, ...).
        #[arg(long)]
        reason: Option<String>,
        /// Only letters written to the dead-letter topic at or after this time (unix seconds).
        #[arg(long)]
        since: Option<i64>,
        /// Say what would be replayed; send and record nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The whole pipeline on an embedded Kafka-protocol broker and a throwaway Postgres database:
    /// seeds subscribers, publishes sample campaigns, prints what both sinks received.
    Demo {
        /// Postgres server to create the throwaway database on.
        #[arg(
            long,
            env = "DEMO_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        postgres_url: String,
    },
}

#[derive(Subcommand)]
enum CampaignCommand {
    /// One JSON object per restaurant that has a campaign of this id: its state, version,
    /// notifications written to Postgres and confirmed by Kafka, first and last trigger. Exit
    /// code 1 when none is on record.
    Status {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// The campaign's adv_campaign_id.
        id: String,
    },
}

/// Exit codes an operator's supervisor can tell apart.
const EXIT_CONFIG: u8 = 1;
const EXIT_START: u8 = 2;
const EXIT_FATAL: u8 = 3;
const EXIT_DRAIN_INCOMPLETE: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { config, connect } => check_config(&config, connect),
        Command::Campaign {
            command: CampaignCommand::Status { config, id },
        } => with_config(&config, |c| ops::status(c, Some(&id), None)),
        Command::Campaigns { config, state } => {
            with_config(&config, |c| ops::status(c, None, state))
        }
        Command::Reconcile {
            config,
            campaign,
            since,
            repair,
        } => with_config(&config, |c| {
            logging::init("warn", c.log.format);
            let request = ReconcileRequest {
                campaign,
                since_secs: since,
                repair,
            };
            ops::reconcile(c, request)
        }),
        Command::ReplayDeadLetters {
            config,
            reason,
            since,
            dry_run,
        } => with_config(&config, |c| {
            logging::init("warn", c.log.format);
            let request = ReplayRequest {
                reason,
                since_secs: since,
                dry_run,
            };
            ops::replay_dead_letters(c, request)
        }),
        Command::Demo { postgres_url } => {
            logging::init("warn", Default::default());
            demo::run(postgres_url)
        }
    }
}

/// `check-config`: the file checked and its main settings printed; with `connect`, what it names
/// reached (exit code 2 when something is not usable).
fn check_config(path: &std::path::Path, connect: bool) -> ExitCode {
    with_config(path, |c| {
        println!("{} is valid", path.display());
        println!(
            "kafka: brokers={} input_topic={} output_topic={} group_id={}",
            c.kafka.brokers, c.kafka.input_topic, c.kafka.output_topic, c.kafka.group_id
        );
        println!("kafka.security: {}", c.kafka.security.describe());
        println!(
            "cache: refresh_interval_secs={}",
            c.cache.refresh_interval_secs.as_secs()
        );
        println!("http: listen={}", c.http.listen);
        if connect {
            logging::init("error", Default::default());
            if !check::reachable(c.settings(), c.postgres.create_schema) {
                return ExitCode::from(EXIT_START);
            }
        }
        ExitCode::SUCCESS
    })
}

/// Runs `command` with the config at `path`; an invalid config is exit code 1.
fn with_config(path: &std::path::Path, command: impl FnOnce(&Config) -> ExitCode) -> ExitCode {
    match Config::load(path) {
        Ok(c) => command(&c),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(&config.log.level, config.log.format);
    if config.ledger.takeover_after_secs.is_some() {
        log::warn!(
            "config key ledger.takeover_after_secs is no longer used: a stopped instance's work is \
             taken over once its lease (ledger.lease_ttl_secs) has expired and its sends settled"
        );
    }
    log::info!(
        "campaign-notifier {} starting: {} -> {} (group {})",
        env!("CARGO_PKG_VERSION"),
        config.kafka.input_topic,
        config.kafka.output_topic,
        config.kafka.group_id
    );
    let system = actix_rt::System::new();
    system.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let pipeline = match start_unless_signalled(config, &mut signals).await {
        Ok(p) => p,
        Err(exit) => {
            actix_rt::System::current().stop();
            return exit;
        }
    };
    log::info!("ready");
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install the SIGHUP handler: {e}");
            return ExitCode::from(EXIT_START);
        }
    };
    let broke = serve_until_stopped(&pipeline, &mut signals, &mut hangup).await;
    let drained = tokio::select! {
        report = pipeline.shutdown() => Some(report),
        name = signals.next() => {
            log::warn!("second {name}: exiting without draining");
            None
        }
    };
    actix_rt::System::current().stop();
    exit_code(drained, broke)
}

/// Starts the pipeline; a start that fails, or a signal before it is done, gives the exit code.
async fn start_unless_signalled(
    config: Config,
    signals: &mut Signals,
) -> Result<Pipeline, ExitCode> {
    tokio::select! {
        started = Pipeline::start(config, Metrics::new()) => started.map_err(|e| {
            log::error!("{}", Chain(&e));
            ExitCode::from(EXIT_START)
        }),
        name = signals.next() => {
            log::info!("{name} before start-up finished; exiting");
            Err(ExitCode::SUCCESS)
        }
    }
}

/// Serves until SIGINT or SIGTERM, reloading the snapshot at each SIGHUP; true if the pipeline
/// broke instead.
async fn serve_until_stopped(
    pipeline: &Pipeline,
    signals: &mut Signals,
    hangup: &mut tokio::signal::unix::Signal,
) -> bool {
    loop {
        tokio::select! {
            name = signals.next() => {
                log::info!("{name} received: draining (a second signal exits at once)");
                return false;
            }
            _ = hangup.recv() => {
                log::info!("SIGHUP received: reloading the subscriber snapshot now");
                pipeline.refresh_cache();
            }
            reason = pipeline.failed() => {
                log::error!("fatal: {reason}; stopping");
                return true;
            }
        }
    }
}

/// The exit code of a stop: what the drain left (`None` when a second signal cut it short), and
/// whether the pipeline broke first.
fn exit_code(drained: Option<DrainReport>, broke: bool) -> ExitCode {
    let exit = match broke {
        true => ExitCode::from(EXIT_FATAL),
        false => ExitCode::SUCCESS,
    };
    match drained {
        Some(report) if report.abandoned == 0 && report.committed => {
            log::info!("stopped cleanly");
            exit
        }
        Some(report) => {
            log::warn!(
                "drain incomplete: {} campaigns unfinished at the end of the grace period{}; \
                 nothing is lost, they will be read again",
                report.abandoned,
                match report.committed {
                    true => "",
                    false => ", and the final offset commit failed",
                }
            );
            // A stop that broke down first says so; a stop by a signal says what it left.
            match broke {
                false => ExitCode::from(EXIT_DRAIN_INCOMPLETE),
                true => exit,
            }
        }
        None => ExitCode::from(130),
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
