//! The deploy and observe artifacts checked against the real service and the real tools:
//! promtool lints `/metrics` after a run, a real Prometheus scrapes the service with the
//! deploy config and sees exactly what both sinks wrote, every metric the Grafana dashboard
//! queries exists, `/readyz` follows Postgres, and the compose, Prometheus and Dockerfile
//! settings agree with each other (each file's own tool checks it in `scripts/check-files.sh`).
//!
//! Run with `./scripts/test.sh`. Besides the broker and Postgres these tests run promtool,
//! prometheus, docker-compose and PyYAML; `scripts/ensure-test-tools.sh` installs them. A missing
//! tool fails the test with the name of the Debian package that provides it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::common::*;

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

/// Names of the samples in a Prometheus text exposition (with `_bucket`, `_sum`, `_count`), and
/// the type of each metric family from its `# TYPE` line.
fn exposition_names(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                types.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, types)
}

/// Every `campaign_notifier_*` identifier in a PromQL expression.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for prefix in ["campaign_notifier_", "process_"] {
        let mut rest = expr;
        while let Some(at) = rest.find(prefix) {
            let preceded_by_name = rest[..at].chars().next_back().is_some_and(is_name_char);
            let tail = &rest[at..];
            let end = tail.find(|c| !is_name_char(c)).unwrap_or(tail.len());
            if !preceded_by_name {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn the_dashboard_takes_its_data_source_from_a_variable() {
    let dashboard: serde_json::Value = serde_json::from_str(&read_repo_file(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    fn uids(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(uid) = map
                    .get("datasource")
                    .and_then(|d| d.get("uid"))
                    .and_then(|u| u.as_str())
                {
                    out.push(uid.to_string());
                }
                map.values().for_each(|v| uids(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| uids(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    uids(&dashboard["panels"], &mut found);
    uids(&dashboard["templating"], &mut found);
    assert!(found.len() > 30, "{found:?}");
    let fixed: Vec<_> = found.iter().filter(|u| *u != "${datasource}").collect();
    assert!(fixed.is_empty(), "data sources fixed by uid: {fixed:?}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no datasource variable: {variables:?}"
    );
}

/// The PromQL of the dashboard: every panel target's `expr`, and the template variables'
/// queries, which run against the same Prometheus.
fn dashboard_expressions() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read_repo_file(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    assert!(!out.is_empty(), "{DASHBOARD} has no expressions");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_after_a_real_run_pass_promtool_check_metrics() {
    let promtool = tool("promtool", "prometheus");
    let f = Fixture::new("obs_promtool", 2).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let service = Service::start(&f, "");
    let campaigns = produce_varied_campaigns(&f).await;
    service.wait_processed(campaigns, Duration::from_secs(30));
    assert_varied_outcomes(&service);

    let text = service.metrics();
    assert!(
        text.contains("campaign_notifier_campaigns_rejected_total{reason="),
        "the run labelled a rejection:\n{text}"
    );
    let output = run(
        Command::new(&promtool).args(["check", "metrics"]),
        text.as_bytes(),
    );
    // promtool prints one line per problem (lint findings such as a counter without `_total`
    // included) and nothing when the exposition is clean; no line is expected here.
    let report = printed(&output);
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}):\n{report}\n--- /metrics ---\n{text}",
        output.status
    );
    drop(service);
    f.cleanup().await;
}

/// A Prometheus server of this test's own, killed when dropped (on a panic too).
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with deploy/prometheus.yml, pointed at the service on `target_port`
    /// and scraping every second.
    fn start(binary: &Path, name: &str, target_port: u16) -> Prometheus {
        let config = read_repo_file("deploy/prometheus.yml");
        let config = replace_once(
            &config,
            "campaign-notifier:9898",
            &format!("127.0.0.1:{target_port}"),
        );
        let config = replace_once(&config, "scrape_interval: 5s", "scrape_interval: 1s");
        let dir = std::env::temp_dir().join(format!("cn-prometheus-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited with {status} at start:\n{}",
                    prometheus.log_text()
                );
            }
            if let Ok((200, _)) = http_get(prometheus.port, "/-/ready") {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30s:\n{}",
                prometheus.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; `query` must not need URL encoding.
    fn query(&self, query: &str) -> serde_json::Value {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={query}"))
            .unwrap_or_else(|e| panic!("query prometheus: {e}"));
        assert_eq!(status, 200, "prometheus query {query}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus answer {body}: {e}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scraping_with_the_deploy_config_sees_every_written_notification() {
    let binary = tool("prometheus", "prometheus");
    let f = Fixture::new("obs_prometheus", 2).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let service = Service::start(&f, "");
    let prometheus = Prometheus::start(&binary, &f.name, service.http_port);

    let campaigns = 4;
    for n in 0..campaigns {
        let id = format!("b0000000-0000-4000-8000-00000000000{n}");
        f.produce(
            &n.to_string(),
            active_campaign(SAMPLE_RESTAURANT, &id).as_bytes(),
        )
        .await;
    }
    let notifications = (campaigns * CLIENTS.len()) as f64;
    service.wait_processed(campaigns as u64, Duration::from_secs(30));

    let mut last = serde_json::Value::Null;
    let written = wait_for(
        "prometheus reports every notification written to both sinks",
        Duration::from_secs(30),
        || {
            let answer = prometheus.query("campaign_notifier_notifications_written_total");
            let mut by_sink = BTreeMap::new();
            for series in answer["data"]["result"].as_array().into_iter().flatten() {
                let sink = series["metric"]["sink"].as_str().unwrap_or_default();
                let job = series["metric"]["job"].as_str().unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok());
                if let Some(value) = value {
                    by_sink.insert((sink.to_string(), job.to_string()), value);
                }
            }
            last = answer;
            let complete = ["kafka", "postgres"].iter().all(|sink| {
                by_sink.get(&(sink.to_string(), "campaign-notifier".to_string()))
                    == Some(&notifications)
            });
            complete.then_some(by_sink)
        },
    );
    assert_eq!(written.len(), 2, "one series per sink: {last}");
    // What Prometheus stored is what the service counted, and what the sinks hold.
    for sink in ["kafka", "postgres"] {
        assert_eq!(
            service.metric_with(
                "campaign_notifier_notifications_written_total",
                &format!("sink=\"{sink}\"")
            ),
            notifications
        );
    }
    assert_eq!(f.output_count() as f64, notifications);
    assert_eq!(f.feedback_rows().await.len() as f64, notifications);

    drop(prometheus);
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_queries_is_exported_after_a_real_run() {
    let f = Fixture::new("obs_dashboard", 2).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    // A rule the app's owner could add: Postgres refuses this campaign's rows (a permanent sink
    // error, outcome sink_failed) while Kafka takes them.
    f.db.batch_execute(
        "ALTER TABLE public.subscribers_feedback ADD CONSTRAINT feedback_content_accepted \
         CHECK (adv_campaign_content <> 'refused by the database')",
    )
    .await
    .expect("add check constraint");
    let service = Service::start(&f, "[writers]\nrestart_backoff_max_ms = 1000\n");

    let campaigns = produce_varied_campaigns(&f).await;
    let mut refused: serde_json::Value = serde_json::from_str(&active_campaign(
        SAMPLE_RESTAURANT,
        "c0000000-0000-4000-8000-000000000001",
    ))
    .expect("campaign JSON");
    refused["adv_campaign_content"] = "refused by the database".into();
    f.produce("refused", refused.to_string().as_bytes()).await;
    service.wait_processed(campaigns + 1, Duration::from_secs(30));
    assert_varied_outcomes(&service);
    assert_eq!(
        service.metric_with(
            "campaign_notifier_campaigns_processed_total",
            "outcome=\"sink_failed\""
        ),
        1.0,
        "{}",
        service.metrics()
    );

    // A lost connection: the Postgres writer restarts and connects again.
    assert!(
        f.terminate_service_connections().await > 0,
        "the writer holds a connection"
    );
    wait_for(
        "the postgres writer restarted and is connected again",
        Duration::from_secs(20),
        || {
            let restarted = service.metric_with(
                "campaign_notifier_actor_restarts_total",
                "actor=\"postgres_writer\"",
            ) >= 1.0;
            let ready = matches!(http_get(service.http_port, "/readyz"), Ok((200, _)));
            (restarted && ready).then_some(())
        },
    );
    // librdkafka reports statistics every 5 s; the lag gauge appears with the first report.
    wait_for(
        "campaign_notifier_consumer_lag_messages is exported",
        Duration::from_secs(10),
        || {
            service
                .metrics()
                .contains("campaign_notifier_consumer_lag_messages{")
                .then_some(())
        },
    );

    let text = service.metrics();
    let (samples, types) = exposition_names(&text);
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for expr in dashboard_expressions() {
        for name in metric_names_in(&expr) {
            // A histogram's series are `<name>_bucket`, `<name>_sum` and `<name>_count`, and
            // only those are queried: the family itself must be a histogram.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"));
            let exported = match family {
                Some(_) => samples.contains(&name),
                None => samples.contains(&name) && types.contains_key(&name),
            };
            if !exported {
                missing.push(format!("{name} (in {expr})"));
            }
            used.insert(family.unwrap_or(&name).to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have:\n{}\n--- /metrics ---\n{text}",
        missing.join("\n")
    );
    // And the dashboard shows every metric the service exports.
    let unused: Vec<_> = types.keys().filter(|n| !used.contains(*n)).collect();
    assert!(unused.is_empty(), "not on the dashboard: {unused:?}");

    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_expressions_are_valid_promql() {
    let promtool = tool("promtool", "prometheus");
    // Grafana's variables, replaced as Grafana would: the instance regex and a range.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in dashboard_expressions().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        // `label_values(metric, label)` is Grafana's, not PromQL: its metric is checked alone.
        let expr = match expr.strip_prefix("label_values(") {
            Some(args) => args.split(',').next().unwrap_or_default().to_string(),
            None => expr,
        };
        rules.push_str(&format!(
            "      - record: dashboard:expression_{n}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let dir = std::env::temp_dir().join(format!("cn-dashboard-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("rules dir");
    let file = dir.join("dashboard.rules.yml");
    std::fs::write(&file, &rules).expect("rules file");
    let output = run(
        Command::new(&promtool).arg("check").arg("rules").arg(&file),
        b"",
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "promtool check rules on the dashboard's expressions:\n{}\n{rules}",
        printed(&output)
    );
}

/// The service binary started by the test itself, with its own environment; killed on drop.
struct OwnService {
    child: Child,
    log: PathBuf,
}

impl OwnService {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("service exited with {status}:\n{}", self.log_text());
        }
    }
}

impl Drop for OwnService {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn allow_connections(f: &Fixture, allowed: bool) {
    connect(&f.admin_url)
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}",
            f.db_name
        ))
        .await
        .expect("alter database");
}

/// Polls `/readyz` until it answers `status`; returns the JSON body.
fn wait_readyz(service: &mut OwnService, port: u16, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        service.assert_running();
        let last = match http_get(port, "/readyz") {
            Ok((s, body)) if s == status => return body,
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within {timeout:?} (last: {last:?}):\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The schema step's advisory lock (`postgres::SCHEMA_LOCK_KEY`): held by the test, it keeps the
/// service's start-up waiting in that step.
const SCHEMA_LOCK_KEY: i64 = 0x6361_6d70_6169_676e;

#[tokio::test(flavor = "multi_thread")]
async fn http_is_up_first_and_readyz_says_which_start_up_step_is_under_way() {
    let f = Fixture::new("obs_starting", 1).await;
    let mut other = connect(&f.db_url).await;
    let holder = other.transaction().await.expect("begin");
    holder
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .expect("hold the schema lock");

    let port = free_port();
    let config = f.dir.join("config-starting.toml");
    std::fs::write(&config, f.config(port, "")).expect("write config");
    let log = f.dir.join("service-starting.log");
    let child = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the service");
    let mut service = OwnService { child, log };

    // Alive and saying why it is not ready while the schema step waits for the lock.
    let body = wait_readyz(&mut service, port, 503, Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["status"], "starting", "{body}");
    assert_eq!(
        json["reason"], "starting: preparing the Postgres schema",
        "{body}"
    );
    assert_eq!(http_get(port, "/healthz").expect("GET /healthz").0, 200);
    assert!(http_get(port, "/metrics")
        .expect("GET /metrics")
        .1
        .contains("campaign_notifier_ready 0"));

    holder.commit().await.expect("release the schema lock");
    wait_readyz(&mut service, port, 200, Duration::from_secs(30));
    drop(service);
    f.cleanup().await;
}

fn not_ready_reason(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("/readyz body {body:?}: {e}"));
    json["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("/readyz 503 without a reason: {body}"))
        .to_string()
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

/// Runs the image's health check against the service on `port` (instead of 9898).
fn run_healthcheck(port: u16) -> ExitStatus {
    let command = dockerfile_healthcheck();
    let script = replace_once(
        &command[2],
        "/dev/tcp/127.0.0.1/9898",
        &format!("/dev/tcp/127.0.0.1/{port}"),
    );
    let mut child = Command::new(&command[0])
        .arg(&command[1])
        .arg(script)
        .stdout(Stdio::null())
        .spawn()
        .expect("run the health check");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the health check") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the health check took more than 10s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_with_a_reason_before_the_first_snapshot_and_while_postgres_is_unreachable() {
    let f = Fixture::new("obs_readyz", 1).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let result = AssertUnwindSafe(readyz_follows_postgres(&f))
        .catch_unwind()
        .await;
    // Always, so that a database kept after a failure can be looked at and dropped.
    allow_connections(&f, true).await;
    match result {
        Ok(()) => f.cleanup().await,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn readyz_follows_postgres(f: &Fixture) {
    // Before the first snapshot: the service serves HTTP as soon as it has started its actors,
    // then waits for the subscriber cache's first load. Postgres cannot simply be made
    // unreachable for that part, because start-up fails fast without it (exit 2). What holds the
    // first load back here is a lock the app could hold on its table (a migration, say): the
    // cache's COPY waits for it. The schema step is skipped (the tables exist) because its
    // CREATE INDEX IF NOT EXISTS would wait for the same lock before HTTP is served.
    let mut app = connect(&f.db_url).await;
    let migration = app.transaction().await.expect("begin");
    migration
        .batch_execute("LOCK TABLE public.subscribers_restaurants IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock subscribers_restaurants");

    let port = free_port();
    let config = f.dir.join("config-readyz.toml");
    std::fs::write(
        &config,
        f.config(port, "[writers]\nrestart_backoff_max_ms = 1000\n"),
    )
    .expect("write config");
    let log = f.dir.join("service-readyz.log");
    let child = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CAMPAIGN_NOTIFIER__POSTGRES__CREATE_SCHEMA", "false")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the service");
    let mut service = OwnService { child, log };

    // HTTP is up first: the start-up steps before the cache's load (the Kafka check) pass by,
    // each a "starting" reason, until the load is what waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = wait_readyz(&mut service, port, 503, Duration::from_secs(30));
        let reason = not_ready_reason(&body);
        if reason.contains("snapshot") {
            break;
        }
        assert!(reason.starts_with("starting: "), "reason: {reason}");
        assert!(Instant::now() < deadline, "still {reason:?} after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It stays so while the load waits.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        service.assert_running();
        let (status, body) = http_get(port, "/readyz").expect("GET /readyz");
        assert_eq!(status, 503, "{body}");
    }
    assert!(!run_healthcheck(port).success(), "health check while 503");
    // The same answer as a series, for alerts.
    let ready = || {
        let (_, text) = http_get(port, "/metrics").expect("GET /metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("campaign_notifier_ready "))
            .map(str::to_string)
    };
    assert_eq!(ready().as_deref(), Some("0"));

    migration.rollback().await.expect("release the lock");
    wait_readyz(&mut service, port, 200, Duration::from_secs(30));
    assert!(run_healthcheck(port).success(), "health check while 200");
    assert_eq!(ready().as_deref(), Some("1"));

    // Postgres lost while running: the writer notices within a second and reconnects.
    allow_connections(f, false).await;
    assert!(
        f.terminate_service_connections().await > 0,
        "the writer holds a connection"
    );
    let body = wait_readyz(&mut service, port, 503, Duration::from_secs(15));
    let reason = not_ready_reason(&body);
    assert!(reason.contains("postgres"), "reason: {reason}");
    assert!(!run_healthcheck(port).success(), "health check while 503");

    allow_connections(f, true).await;
    wait_readyz(&mut service, port, 200, Duration::from_secs(30));
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

    let config = compose_config();
    let services = config["services"].as_object().expect("services");
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

    // Docker waits longer for the stop than the service's stop can take.
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

    // The environment overrides name real config keys: the binary accepts them on the
    // repository's config.toml.
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

    // The image's health check and compose's are the same command (compose writes `$` as `$$`).
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

    // Every file compose mounts is in the repository.
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = volume.as_str().unwrap_or_default();
            let source = spec.split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                assert!(Path::new(source).exists(), "{name} mounts missing {source}");
            }
        }
    }

    // Prometheus scrapes the compose service, Grafana reads that Prometheus as its default data
    // source, and the dashboard's data source variable (whose default is the default source)
    // is all its panels use.
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

    // Nothing the workspace needs is ignored: every member's directory, Cargo.toml, Cargo.lock.
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
    assert!(needed.len() >= 5, "{needed:?}");
    for path in &needed {
        for pattern in &ignored {
            let hit = path == pattern || path.starts_with(&format!("{pattern}/")) || pattern == "*";
            assert!(!hit, ".dockerignore's {pattern:?} leaves out {path}");
        }
    }

    // The runtime image: non-root, and labels that say what it is.
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
