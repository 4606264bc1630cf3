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
//!
//! The phases live in the library: `campaign_bench::phases`, one file each.

use std::process::ExitCode;

use campaign_bench::args::Args;
use campaign_bench::phases::{produce_workload, progress, run};
use clap::Parser;

/// The service's allocator (see src/main.rs), so that the pipeline measured here allocates as
/// the service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
