//! The deploy files and the image: what compose, Prometheus, Grafana, the Dockerfile and the
//! service must say to agree with each other, and what can be checked of the image without a
//! Docker engine. Each file's own tool (promtool check config, promtool test rules,
//! docker-compose config) is run by `scripts/check-files.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::*;

/// Debian's Python, which has PyYAML when python3-yaml is installed (docker-compose depends on
/// it). The `python3` first in PATH may be another interpreter without it.
fn python_with_yaml() -> PathBuf {
    let python = PathBuf::from("/usr/bin/python3");
    let works = Command::new(&python)
        .args(["-c", "import yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "/usr/bin/python3 cannot import yaml: install the Debian package python3-yaml \
         (scripts/ensure-test-tools.sh does)"
    );
    python
}

/// docker-compose.yml as docker-compose resolves it (`${VAR:-default}` filled in), as JSON.
fn compose_config() -> serde_json::Value {
    let compose = tool("docker-compose", "docker-compose");
    let resolved = run(
        Command::new(&compose)
            .args(["--file", "docker-compose.yml", "config"])
            .current_dir(repo_path(".")),
        b"",
    );
    assert!(
        resolved.status.success(),
        "docker-compose config:\n{}",
        printed(&resolved)
    );
    let python = python_with_yaml();
    let json = run(
        Command::new(python).args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ]),
        &resolved.stdout,
    );
    assert!(json.status.success(), "yaml to json:\n{}", printed(&json));
    serde_json::from_slice(&json.stdout).expect("compose config as JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_files_agree_with_each_other() {
    // Each file's own tool (promtool check config, promtool test rules, docker-compose config)
    // is run by scripts/check-files.sh; here: what they must say to agree.
    assert_every_alert_has_its_test();
    let config = compose_config();
    let services = config["services"].as_object().expect("services");
    assert_the_services_start_in_order(services);
    let service = &services["campaign-notifier"];
    assert_docker_waits_longer_than_the_stop(service);
    assert_the_environment_names_real_config_keys(service);
    assert_compose_runs_the_image_as_built(service);
    assert_every_mount_is_in_the_repository(services);
    assert_prometheus_grafana_and_the_dashboard_are_wired();
}

fn assert_every_alert_has_its_test() {
    let rules = read_repo_file("deploy/alerts.yml");
    for alert in [
        "CampaignNotifierDown",
        "CampaignNotifierNotReady",
        "CampaignNotifierSinkStalled",
        "CampaignNotifierSinkRefusingEveryWrite",
        "CampaignNotifierDeadLettersRising",
        "CampaignNotifierSnapshotStale",
        "CampaignNotifierConsumerLagGrowing",
        "CampaignNotifierRestartLoop",
        "CampaignNotifierReplicationSlotRetainingWal",
        "CampaignNotifierReplicationSlotAtRisk",
        "CampaignNotifierSubscriberChangesLagging",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "{alert} missing"
        );
        let tests = read_repo_file("deploy/alerts.test.yml");
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in deploy/alerts.test.yml"
        );
    }
}

/// Every service of the stack is there, and the service starts once the topics are made and
/// Postgres is healthy.
fn assert_the_services_start_in_order(services: &serde_json::Map<String, serde_json::Value>) {
    for name in [
        "kafka",
        "kafka-init",
        "postgres",
        "campaign-notifier",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let service = &services["campaign-notifier"];
    assert_eq!(
        service["depends_on"]["kafka-init"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        service["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
}

/// Docker waits longer for the stop than the service's stop can take.
fn assert_docker_waits_longer_than_the_stop(service: &serde_json::Value) {
    let stop = service["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let stop_secs: u64 = stop
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("stop_grace_period {stop:?}: write it in seconds"));
    let shipped = campaign_actors::Config::load(&repo_path("config.toml")).expect("config.toml");
    assert!(
        stop_secs > shipped.shutdown.grace_period_secs.as_secs(),
        "stop_grace_period {stop} is not longer than shutdown.grace_period_secs"
    );
}

/// The environment overrides name real config keys: the binary accepts them on the
/// repository's config.toml.
fn assert_the_environment_names_real_config_keys(service: &serde_json::Value) {
    let environment = service["environment"].as_object().expect("environment");
    let checked = run(
        Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
            .args(["check-config", "--config"])
            .arg(repo_path("config.toml"))
            .envs(
                environment
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default())),
            ),
        b"",
    );
    let report = printed(&checked);
    assert!(checked.status.success(), "check-config:\n{report}");
    assert!(report.contains("brokers=kafka:9092"), "{report}");
    assert!(
        report.contains("listen=0.0.0.0:9898"),
        "the port compose publishes and the health check uses: {report}"
    );
}

/// The image's health check and compose's are the same command (compose writes `$` as `$$`),
/// and compose mounts the config where the image's command reads it.
fn assert_compose_runs_the_image_as_built(service: &serde_json::Value) {
    let compose_check: Vec<String> = service["healthcheck"]["test"]
        .as_array()
        .expect("healthcheck test")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().replace("$$", "$"))
        .collect();
    assert_eq!(compose_check[0], "CMD");
    assert_eq!(compose_check[1..], dockerfile_healthcheck()[..]);
    let dockerfile = read_repo_file("Dockerfile");
    assert!(dockerfile.contains(r#"CMD ["run", "--config", "/etc/campaign-notifier/config.toml"]"#));
    assert!(service["volumes"]
        .to_string()
        .contains("/etc/campaign-notifier/config.toml"));
}

/// Every file compose mounts is in the repository.
fn assert_every_mount_is_in_the_repository(services: &serde_json::Map<String, serde_json::Value>) {
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().unwrap_or_default();
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                assert!(Path::new(source).exists(), "{name} mounts missing {source}");
            }
        }
    }
}

/// Prometheus scrapes the compose service, Grafana reads that Prometheus as its default data
/// source, and the dashboard's data source variable (whose default is the default source)
/// is all its panels use.
fn assert_prometheus_grafana_and_the_dashboard_are_wired() {
    let prometheus = read_repo_file("deploy/prometheus.yml");
    assert!(prometheus.contains("job_name: campaign-notifier"));
    assert!(prometheus.contains("\"campaign-notifier:9898\""));
    let datasource = read_repo_file("grafana/provisioning/datasources/prometheus.yml");
    assert!(datasource.contains("url: http://prometheus:9090"));
    assert!(datasource.contains("uid: prometheus"));
    assert!(datasource.contains("isDefault: true"));
    let dashboard = read_repo_file(DASHBOARD);
    let uids: BTreeSet<_> = dashboard
        .match_indices("\"uid\": \"")
        .map(|(at, m)| {
            let rest = &dashboard[at + m.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect();
    assert_eq!(
        uids,
        BTreeSet::from(["campaign-notifier", "${datasource}"]),
        "the dashboard's own uid and the data source variable"
    );
}

/// What can be checked of the image without a Docker engine: the build stage copies the whole
/// workspace before it builds (so no member can be missed), and `.dockerignore` leaves out no
/// member and nothing cargo needs; the build is `--locked` with BuildKit cache mounts; the
/// runtime image runs as a non-root user, with labels that agree with Cargo.toml.
#[test]
fn the_image_builds_from_the_whole_workspace() {
    let dockerfile = read_repo_file("Dockerfile").replace("\\\n", " ");
    assert!(
        dockerfile.starts_with("# syntax=docker/dockerfile:1\n"),
        "cache mounts need BuildKit's syntax line first"
    );
    let (builder, runtime) = dockerfile
        .split_once("\nFROM debian:bookworm-slim")
        .expect("a runtime stage");
    assert_the_build_stage_copies_everything_and_builds_locked(builder);
    assert_dockerignore_leaves_out_nothing_the_workspace_needs();
    assert_the_runtime_image_is_non_root_and_labelled(runtime);
}

fn assert_the_build_stage_copies_everything_and_builds_locked(builder: &str) {
    let build_at = builder.find("cargo build").expect("a cargo build");
    let copies: Vec<&str> = builder[..build_at]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("COPY "))
        .collect();
    assert_eq!(
        copies,
        ["COPY . ."],
        "the build stage must copy the whole workspace"
    );
    for needed in [
        "--mount=type=cache,target=/usr/local/cargo/registry",
        "--mount=type=cache,target=/src/target",
        "cargo build --release --locked",
    ] {
        assert!(
            builder.contains(needed),
            "{needed} missing from the build stage"
        );
    }
}

/// Nothing the workspace needs is ignored: every member's directory, Cargo.toml, Cargo.lock.
fn assert_dockerignore_leaves_out_nothing_the_workspace_needs() {
    let ignored: Vec<String> = read_repo_file(".dockerignore")
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string()
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let needed = files_the_workspace_needs();
    assert!(needed.len() >= 5, "{needed:?}");
    for path in &needed {
        for pattern in &ignored {
            let hit = path == pattern || path.starts_with(&format!("{pattern}/")) || pattern == "*";
            assert!(!hit, ".dockerignore's {pattern:?} leaves out {path}");
        }
    }
}

/// Cargo.toml, Cargo.lock and every member's manifest, relative to the workspace root (from
/// `cargo metadata`).
fn files_the_workspace_needs() -> Vec<String> {
    let metadata = run(
        Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .current_dir(repo_path(".")),
        b"",
    );
    assert!(metadata.status.success(), "{}", printed(&metadata));
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).expect("cargo metadata JSON");
    let root = metadata["workspace_root"].as_str().expect("workspace_root");
    let mut needed = vec!["Cargo.toml".to_string(), "Cargo.lock".to_string()];
    for package in metadata["packages"].as_array().expect("packages") {
        let manifest = package["manifest_path"].as_str().expect("manifest_path");
        let relative = manifest
            .strip_prefix(root)
            .unwrap_or(manifest)
            .trim_start_matches('/');
        needed.push(relative.to_string());
    }
    needed
}

/// The runtime image: non-root, and labels that say what it is.
fn assert_the_runtime_image_is_non_root_and_labelled(runtime: &str) {
    assert!(
        runtime.contains("\nUSER campaign-notifier:campaign-notifier"),
        "runs as root"
    );
    let cargo = read_repo_file("Cargo.toml");
    let field = |name: &str| {
        cargo
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{name} in Cargo.toml"))
            .to_string()
    };
    for (label, value) in [
        ("org.opencontainers.image.version", field("version")),
        ("org.opencontainers.image.licenses", field("license")),
        (
            "org.opencontainers.image.title",
            "campaign-notifier".to_string(),
        ),
    ] {
        assert!(
            runtime.contains(&format!("{label}=\"{value}\"")),
            "LABEL {label}=\"{value}\" missing"
        );
    }
}
