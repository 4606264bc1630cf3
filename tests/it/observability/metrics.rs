//! `/metrics` after a real run: clean for promtool, and scraped by a real Prometheus with the
//! deploy config, which sees exactly what both sinks wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

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
        prometheus.wait_ready();
        prometheus
    }

    /// Waits up to 30 s for `/-/ready`; fails the test if Prometheus exits first.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited with {status} at start:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.port, "/-/ready") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30s:\n{}",
                self.log_text()
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
            let by_sink = written_by_sink_and_job(&answer);
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

/// The value of each series of a Prometheus instant-query answer, by its `sink` and `job` labels.
fn written_by_sink_and_job(answer: &serde_json::Value) -> BTreeMap<(String, String), f64> {
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
    by_sink
}
