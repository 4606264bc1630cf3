//! The Grafana dashboard against the service: its data source is a variable, every metric it
//! queries is exported after a real run and every exported metric is on it, and its queries are
//! valid PromQL.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use super::*;

/// The dashboard, parsed.
fn dashboard_json() -> serde_json::Value {
    serde_json::from_str(&read_repo_file(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

#[test]
fn the_dashboard_takes_its_data_source_from_a_variable() {
    let dashboard = dashboard_json();
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
    let dashboard = dashboard_json();
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

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_queries_is_exported_after_a_real_run() {
    let f = Fixture::new("obs_dashboard", 2).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    refuse_one_campaign_text_in_postgres(&f).await;
    let service = Service::start(&f, "[writers]\nrestart_backoff_max_ms = 1000\n");

    let campaigns = produce_varied_campaigns(&f).await;
    produce_the_campaign_postgres_refuses(&f).await;
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

    cut_the_writers_connection_and_wait_for_its_restart(&f, &service).await;
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

    assert_the_dashboard_shows_what_is_exported(&service.metrics());
    drop(service);
    f.cleanup().await;
}

/// A rule the app's owner could add: Postgres refuses this campaign's rows (a permanent sink
/// error, outcome sink_failed) while Kafka takes them.
async fn refuse_one_campaign_text_in_postgres(f: &Fixture) {
    f.db.batch_execute(
        "ALTER TABLE public.subscribers_feedback ADD CONSTRAINT feedback_content_accepted \
         CHECK (adv_campaign_content <> 'refused by the database')",
    )
    .await
    .expect("add check constraint");
}

/// An active campaign whose text the rule of [`refuse_one_campaign_text_in_postgres`] refuses.
async fn produce_the_campaign_postgres_refuses(f: &Fixture) {
    let mut refused: serde_json::Value = serde_json::from_str(&active_campaign(
        SAMPLE_RESTAURANT,
        "c0000000-0000-4000-8000-000000000001",
    ))
    .expect("campaign JSON");
    refused["adv_campaign_content"] = "refused by the database".into();
    f.produce("refused", refused.to_string().as_bytes()).await;
}

/// A lost connection: the Postgres writer restarts and connects again.
async fn cut_the_writers_connection_and_wait_for_its_restart(f: &Fixture, service: &Service) {
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
}

/// Every metric the dashboard queries is in `text` (a `/metrics` exposition), and the dashboard
/// shows every metric family `text` has.
fn assert_the_dashboard_shows_what_is_exported(text: &str) {
    let (samples, types) = exposition_names(text);
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

