//! The deploy and observe artifacts checked against the real service and the real tools:
//! promtool lints `/metrics` after a run, a real Prometheus scrapes the service with the
//! deploy config and sees exactly what both sinks wrote, every metric the Grafana dashboard
//! queries exists, `/readyz` follows Postgres, and the compose, Prometheus and Dockerfile
//! settings agree with each other (each file's own tool checks it in `scripts/check-files.sh`).
//!
//! - [`readiness`]: HTTP up first, and `/readyz`, the `ready` series and the image's health check
//!   through start-up and a lost Postgres.
//! - [`metrics`]: `/metrics` after a real run, linted by promtool and scraped by Prometheus.
//! - [`dashboard`]: the Grafana dashboard against what the service exports.
//! - [`deploy`]: the compose, Prometheus, Grafana and Dockerfile settings, and the image.
//!
//! Run with `./scripts/test.sh`. Besides the broker and Postgres these tests run promtool,
//! prometheus, docker-compose and PyYAML; `scripts/ensure-test-tools.sh` installs them. A missing
//! tool fails the test with the name of the Debian package that provides it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

mod dashboard;
mod deploy;
mod metrics;
mod readiness;

const CLIENTS: [&str; 3] = [
    "023e4567-e89b-12d3-a456-426614174000",
    "023e4567-e89b-12d3-a456-426614174001",
    "023e4567-e89b-12d3-a456-426614174002",
];

/// A restaurant nobody has in favourites.
const LONELY_RESTAURANT: &str = "923e4567-e89b-12d3-a456-426614174000";

const DASHBOARD: &str = "grafana/dashboards/campaign-notifier.json";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read_repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// The path of an external tool, or a failure that names the Debian package providing it.
fn tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: install the Debian package {package} \
                 (scripts/ensure-test-tools.sh does)"
            )
        })
}

/// Runs `command` with `input` on its standard input and collects its output.
fn run(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // Written from another thread so that a tool printing a lot before reading everything
    // cannot block on a full pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {command:?}: {e}"));
    let _ = writer.join();
    output
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Replaces the one occurrence of `from`; a file that no longer has exactly one is a test to
/// update, not something to paper over.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// Every kind of campaign the enricher tells apart, on a fixture whose `SAMPLE_RESTAURANT` has
/// the three `CLIENTS`; returns how many were produced.
async fn produce_varied_campaigns(f: &Fixture) -> u64 {
    let now = unix_now();
    let campaigns = [
        active_campaign(SAMPLE_RESTAURANT, "a0000000-0000-4000-8000-000000000001"),
        active_campaign(SAMPLE_RESTAURANT, "a0000000-0000-4000-8000-000000000002"),
        // The brief's sample, in its `key:json` form, active until 2054.
        SAMPLE.to_string(),
        campaign(
            SAMPLE_RESTAURANT,
            "a0000000-0000-4000-8000-000000000003",
            now - 7200,
            now - 3600,
        ),
        campaign(
            SAMPLE_RESTAURANT,
            "a0000000-0000-4000-8000-000000000004",
            now + 3600,
            now + 7200,
        ),
        active_campaign(LONELY_RESTAURANT, "a0000000-0000-4000-8000-000000000005"),
        "this is not a campaign".to_string(),
    ];
    for (n, value) in campaigns.iter().enumerate() {
        f.produce(&n.to_string(), value.as_bytes()).await;
    }
    campaigns.len() as u64
}

fn assert_varied_outcomes(service: &Service) {
    let metric = "campaign_notifier_campaigns_processed_total";
    for (outcome, expected) in [
        ("delivered", 3.0),
        ("ended", 1.0),
        ("scheduled", 1.0),
        ("no_subscribers", 1.0),
        ("rejected", 1.0),
    ] {
        assert_eq!(
            service.metric_with(metric, &format!("outcome=\"{outcome}\"")),
            expected,
            "{metric}{{outcome={outcome}}}:\n{}",
            service.metrics()
        );
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The image's HEALTHCHECK command, from the Dockerfile.
fn dockerfile_healthcheck() -> Vec<String> {
    let dockerfile = read_repo_file("Dockerfile").replace("\\\n", " ");
    let instruction = dockerfile
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK in the Dockerfile");
    let json = &instruction[instruction
        .find("CMD [")
        .expect("HEALTHCHECK ... CMD [...]")
        + 4..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("HEALTHCHECK CMD {json}: {e}"))
}
