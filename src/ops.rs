//! The operator's commands beside the service: `campaign status`, `campaigns`, `reconcile` and
//! `replay-dead-letters` (the work is `campaign_actors::ops`; this is the printing and the exit
//! codes).

use std::io::Write;
use std::process::ExitCode;

use campaign_actors::error_chain::Chain;
use campaign_actors::ops::reconcile::{self, Progress, ReconcileRequest};
use campaign_actors::ops::replay::{self, ReplayRequest};
use campaign_actors::ops::status::{self, State};
use campaign_actors::postgres;
use campaign_actors::Config;

/// The command could not do its work (Postgres or the brokers unreachable, a letter refused).
const EXIT_FAILED: u8 = 2;
/// `campaign status`: no campaign has that id; `reconcile`: the sinks disagree.
const EXIT_NOT_FOUND: u8 = 1;
const EXIT_DISAGREE: u8 = 1;

/// Prints each campaign on record of id `id` (or every one), whose state is `state`, as one JSON
/// line. With an id, no campaign of it is exit code 1.
pub fn status(config: &Config, id: Option<&str>, state: Option<State>) -> ExitCode {
    let settings = config.settings();
    let window = settings.lifecycle.window;
    let system = actix_rt::System::new();
    let shown = system.block_on(async {
        let client = postgres::connect(&settings.postgres, "status").await?;
        let mut out = std::io::stdout().lock();
        let quiet = &settings.quiet;
        let shown = status::for_each(&client, window, quiet, id, state, |campaign| {
            // A closed stdout (piped into `head`) ends the listing, not the command's success.
            let _ = serde_json::to_writer(&mut out, &campaign).map(|()| writeln!(out));
        })
        .await?;
        Ok::<_, Box<dyn std::error::Error>>(shown)
    });
    match (shown, id) {
        (Err(e), _) => failed("cannot read the campaigns", e.as_ref()),
        (Ok(0), Some(id)) => {
            eprintln!(
                "no campaign {id:?} on record (never read, or forgotten lifecycle.retain_days \
                 after it last changed)"
            );
            ExitCode::from(EXIT_NOT_FOUND)
        }
        (Ok(_), _) => ExitCode::SUCCESS,
    }
}

/// Replays dead letters and prints what it did as one JSON object; exit code 2 when any letter
/// could not be replayed, or nothing could be read.
pub fn replay_dead_letters(config: &Config, request: ReplayRequest) -> ExitCode {
    let settings = config.settings();
    let system = actix_rt::System::new();
    match system.block_on(async move { replay::replay(&settings, &request).await }) {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => return failed("cannot print the report", &e),
            }
            match report.refused.is_empty() {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(EXIT_FAILED),
            }
        }
        Err(e) => failed("replay failed", &e),
    }
}

/// Compares (and mends) the chosen campaigns, one JSON line each; a progress bar on a terminal
/// while the output topic is read. Exit 0 when every campaign's sinks agreed, 1 when not.
pub fn reconcile(config: &Config, request: ReconcileRequest) -> ExitCode {
    let settings = config.settings();
    let bar = indicatif::ProgressBar::hidden();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "reading the output topic {bar:40} {pos}/{len} messages, {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |p: Progress| match p {
        Progress::Total(n) => bar.set_length(n),
        Progress::Read(n) => bar.set_position(n),
    };
    let system = actix_rt::System::new();
    let reports =
        system.block_on(async { reconcile::reconcile(&settings, &request, &progress).await });
    bar.finish_and_clear();
    let reports = match reports {
        Ok(r) => r,
        Err(e) => return failed("reconcile failed", &e),
    };
    if reports.is_empty() {
        eprintln!("no campaign on record matches");
        return match request.campaign {
            Some(_) => ExitCode::from(EXIT_NOT_FOUND),
            None => ExitCode::SUCCESS,
        };
    }
    for report in &reports {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => return failed("cannot print the report", &e),
        }
    }
    match reports.iter().all(|r| r.agree) {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(EXIT_DISAGREE),
    }
}

fn failed(what: &str, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("error: {what}: {}", Chain(e));
    ExitCode::from(EXIT_FAILED)
}
