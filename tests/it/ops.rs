//! The operator's commands beside the service: `campaign status`, `campaigns` and
//! `replay-dead-letters`, run as an operator runs them (the binary, a config file) against the
//! run's broker and Postgres while the service runs and after it stopped.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

const CLIENTS: [&str; 3] = [
    "0e000000-0000-4000-8000-000000000001",
    "0e000000-0000-4000-8000-000000000002",
    "0e000000-0000-4000-8000-000000000003",
];

/// Runs the binary with `args` and `--config` of `f` (a config of its own, the service's keys):
/// the exit code, stdout and stderr.
fn command(f: &Fixture, args: &[&str]) -> (Option<i32>, String, String) {
    let path = f.dir.join("ops.toml");
    std::fs::write(&path, f.config(free_port(), "")).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("campaign-notifier");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Each line of a command's stdout, parsed as JSON.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `campaign status ID`: exit 0 and its one object.
fn status_of(f: &Fixture, id: &str) -> Value {
    let (code, out, err) = command(f, &["campaign", "status", id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    lines.remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn campaign_status_says_what_went_out_and_campaigns_lists_them_by_state() {
    let f = Fixture::new("opsstatus", 1).await;
    let restaurant = "7b000000-0000-0000-0000-000000000001";
    f.subscribe(restaurant, &CLIENTS).await;
    let mut service = Service::start(&f, "");
    let now = unix_now();
    f.produce("now", active_campaign(restaurant, "c-now").as_bytes())
        .await;
    let tomorrow = campaign(restaurant, "c-tomorrow", now + 86_400, now + 90_000);
    f.produce("tomorrow", tomorrow.as_bytes()).await;
    service.wait_processed(2, Duration::from_secs(30));
    wait_complete(&f, 3, Duration::from_secs(10), &|| service.log_text()).await;

    let delivered = status_of(&f, "c-now");
    assert_eq!(delivered["restaurant_id"], restaurant);
    assert_eq!(delivered["state"], "active", "{delivered}");
    assert_eq!(delivered["stored_state"], "active", "{delivered}");
    assert_eq!(delivered["version"]["partition"], 0);
    assert_eq!(delivered["version"]["offset"], 0);
    let sent = &delivered["notifications"];
    assert_eq!(sent["written_to_postgres"], 3, "{delivered}");
    assert_eq!(sent["confirmed_by_kafka"], 3, "{delivered}");
    assert_eq!(sent["in_flight"], 0, "{delivered}");
    let first = delivered["first_trigger_datetime_created"].as_i64();
    assert!(first.is_some_and(|t| (now - 5..=unix_now()).contains(&t)), "{delivered}");

    let scheduled = status_of(&f, "c-tomorrow");
    assert_eq!(scheduled["state"], "scheduled", "{scheduled}");
    assert_eq!(scheduled["start"], now + 86_400);
    assert_eq!(scheduled["fired_at"], Value::Null);
    assert_eq!(scheduled["notifications"]["written_to_postgres"], 0);
    assert_eq!(scheduled["first_trigger_datetime_created"], Value::Null);

    assert_listed_by_state(&f).await;
    service.terminate();
    assert_in_flight_seen_with_the_service_stopped(&f).await;
    f.cleanup().await;
}

/// `campaigns --state S` lists one JSON line per campaign in that state; an unknown state and an
/// unknown id are refused.
async fn assert_listed_by_state(f: &Fixture) {
    let ids = |state: &str| {
        let (code, out, err) = command(f, &["campaigns", "--state", state]);
        assert_eq!(code, Some(0), "{out}{err}");
        let lines = json_lines(&out);
        lines.iter().map(|l| l["adv_campaign_id"].to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids("scheduled"), ["\"c-tomorrow\""]);
    assert_eq!(ids("active"), ["\"c-now\""]);
    assert!(ids("over").is_empty());
    let (code, out, _) = command(f, &["campaigns"]);
    assert_eq!((code, json_lines(&out).len()), (Some(0), 2), "{out}");
    let (code, _, err) = command(f, &["campaigns", "--state", "gone"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown state \"gone\""), "{err}");
    let (code, out, err) = command(f, &["campaign", "status", "c-never"]);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("no campaign \"c-never\" on record"), "{err}");
}

/// With the service stopped, a notification an outbox mark still lists (written to Postgres, not
/// confirmed by Kafka, as a stop in the middle leaves it) shows as in flight.
async fn assert_in_flight_seen_with_the_service_stopped(f: &Fixture) {
    f.db.execute(
        "INSERT INTO campaign_notifier_outbox (token, owner, feedback_ids) \
         SELECT -1, 0, ARRAY[min(id)] FROM subscribers_feedback WHERE adv_campaign_id = 'c-now'",
        &[],
    )
    .await
    .expect("mark");
    let sent = status_of(f, "c-now")["notifications"].clone();
    assert_eq!(sent["written_to_postgres"], 3, "{sent}");
    assert_eq!(sent["confirmed_by_kafka"], 2, "{sent}");
    assert_eq!(sent["in_flight"], 1, "{sent}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_replayed_once_after_the_cause_is_fixed() {
    let f = Fixture::new("opsreplay", 1).await;
    let restaurant = "7b000000-0000-0000-0000-000000000002";
    f.subscribe(restaurant, &CLIENTS).await;
    // A rule of the app's that refuses one campaign: it is dead-lettered as sink_refused.
    f.db.batch_execute(
        "ALTER TABLE subscribers_feedback ADD CONSTRAINT no_refused_campaigns \
         CHECK (adv_campaign_id <> 'c-refused') NOT VALID",
    )
    .await
    .expect("constraint");
    let service = Service::start(&f, "");
    for (key, value) in [
        ("refused", active_campaign(restaurant, "c-refused")),
        ("garbage", "not json at all".to_string()),
        ("ok", active_campaign(restaurant, "c-ok")),
    ] {
        f.produce(key, value.as_bytes()).await;
    }
    service.wait_processed(3, Duration::from_secs(30));
    assert_eq!(f.read_topic(&f.dead_letter_topic).len(), 2, "two dead letters");

    let dry = replay(&f, &["--reason", "sink_refused", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["replayed"], serde_json::json!({"sink_refused": 1}), "{dry}");
    assert_eq!(dry["other_reasons"], 1, "{dry}");
    assert_eq!(f.read_topic(&f.input_topic).len(), 3, "a dry run sends nothing");

    f.db.batch_execute("ALTER TABLE subscribers_feedback DROP CONSTRAINT no_refused_campaigns")
        .await
        .expect("drop constraint");
    let done = replay(&f, &["--reason", "sink_refused"]);
    assert_eq!(done["replayed"], serde_json::json!({"sink_refused": 1}), "{done}");
    service.wait_processed(4, Duration::from_secs(30));
    let both = once_each(&["c-ok", "c-refused"], &CLIENTS);
    wait_complete(&f, 6, Duration::from_secs(10), &|| service.log_text()).await;

    let again = replay(&f, &[]);
    assert_eq!(again["replayed"], serde_json::json!({"not_json": 1}), "{again}");
    assert_eq!(again["already_replayed"], 1, "{again}");
    let last = replay(&f, &["--reason", "sink_refused"]);
    assert_eq!(last["replayed"], serde_json::json!({}), "{last}");
    assert_eq!(last["already_replayed"], 1, "{last}");
    assert_exactly_once(&f, &both).await;
    drop(service);
    f.cleanup().await;
}

/// `replay-dead-letters` with `args`: exit 0 and its report.
fn replay(f: &Fixture, args: &[&str]) -> Value {
    let mut all = vec!["replay-dead-letters"];
    all.extend_from_slice(args);
    let (code, out, err) = command(f, &all);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    lines.remove(0)
}

/// `reconcile` with `args`: the exit code and one report per line.
fn reconcile(f: &Fixture, args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let mut all = vec!["reconcile"];
    all.extend_from_slice(args);
    let (code, out, err) = command(f, &all);
    assert!(matches!(code, Some(0 | 1)), "{out}{err}");
    (code, json_lines(&out))
}

/// A list of a report: its count and its sample.
fn list(report: &Value, name: &str) -> (u64, Vec<String>) {
    let l = &report[name];
    let sample = l["sample"].as_array().cloned().unwrap_or_default();
    let sample = sample.iter().map(|c| c.as_str().unwrap_or("?").to_string()).collect();
    (l["count"].as_u64().unwrap_or(u64::MAX), sample)
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_finds_what_one_sink_lacks_and_repair_mends_it_without_sending_twice() {
    let f = Fixture::new("opsreconcile", 1).await;
    let restaurant = "7b000000-0000-0000-0000-000000000003";
    f.subscribe(restaurant, &CLIENTS).await;
    let service = Service::start(&f, "");
    f.produce("a", active_campaign(restaurant, "c-a").as_bytes())
        .await;
    service.wait_processed(1, Duration::from_secs(30));
    wait_complete(&f, 3, Duration::from_secs(10), &|| service.log_text()).await;
    let (code, reports) = reconcile(&f, &["--campaign", "c-a"]);
    assert_eq!((code, reports.len()), (Some(0), 1), "{reports:?}");
    assert_eq!(reports[0]["agree"], true, "{}", reports[0]);
    assert_eq!((reports[0]["postgres"].as_u64(), reports[0]["kafka"].as_u64()), (Some(3), Some(3)));

    let extra = "0e000000-0000-4000-8000-0000000000ff";
    break_both_sinks(&f, extra).await;
    let (code, reports) = reconcile(&f, &["--campaign", "c-a"]);
    assert_eq!(code, Some(1), "{reports:?}");
    let found = &reports[0];
    assert_eq!(list(found, "only_in_postgres"), (1, vec![extra.to_string()]), "{found}");
    assert_eq!(list(found, "only_in_kafka"), (1, vec![CLIENTS[0].to_string()]), "{found}");
    assert_eq!(list(found, "twice_in_kafka"), (1, vec![CLIENTS[1].to_string()]), "{found}");

    let (code, reports) = reconcile(&f, &["--campaign", "c-a", "--repair"]);
    assert_eq!(code, Some(1), "{reports:?}");
    let repaired = &reports[0]["repaired"];
    assert_eq!(repaired["sent_to_kafka"], 1, "{repaired}");
    assert_eq!(repaired["inserted_into_postgres"], 1, "{repaired}");
    assert_eq!(repaired["withdrawn_from_postgres"], 0, "{repaired}");
    assert_eq!(repaired["not_mended"].as_array().map(Vec::len), Some(1), "{repaired}");

    let (_, reports) = reconcile(&f, &["--campaign", "c-a", "--repair"]);
    let after = &reports[0];
    assert_eq!(list(after, "only_in_postgres").0, 0, "{after}");
    assert_eq!(list(after, "only_in_kafka").0, 0, "{after}");
    assert_eq!(after["repaired"]["sent_to_kafka"], 0, "sent once only: {after}");
    let mut everyone: Vec<&str> = CLIENTS.to_vec();
    everyone.push(extra);
    assert_eq!(row_pairs(&f).await, once_each(&["c-a"], &everyone), "Postgres");
    let mut kafka = once_each(&["c-a"], &everyone);
    kafka.insert(("c-a".into(), CLIENTS[1].into()), 2);
    assert_eq!(output_pairs(&f), kafka, "Kafka");
    drop(service);
    f.cleanup().await;
}

/// Takes the first client's row out of Postgres, puts a row Kafka never had in, and writes the
/// second client's message to the output topic again.
async fn break_both_sinks(f: &Fixture, extra: &str) {
    f.db.execute(
        "DELETE FROM subscribers_feedback WHERE adv_campaign_id = 'c-a' AND client_id = $1",
        &[&CLIENTS[0]],
    )
    .await
    .expect("delete a row");
    insert_a_row_kafka_never_had(f, "c-a", extra).await;
    let (key, second) = f
        .read_output()
        .into_iter()
        .find(|(_, v)| v["client_id"] == CLIENTS[1])
        .expect("the second client's message");
    let second = second.to_string();
    let again = rdkafka::producer::FutureRecord::to(&f.output_topic)
        .key(&key)
        .payload(&second);
    f.producer
        .send(again, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("a second copy");
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_withdraws_what_kafka_lacks_of_a_campaign_that_is_over_instead_of_sending_it() {
    let f = Fixture::new("opsrepairover", 1).await;
    let restaurant = "7b000000-0000-0000-0000-000000000004";
    f.subscribe(restaurant, &CLIENTS).await;
    let service = Service::start(&f, "");
    let since = unix_now();
    let now = unix_now();
    let soon_over = campaign(restaurant, "c-short", now - 60, now + 3);
    f.produce("short", soon_over.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));
    wait_complete(&f, 3, Duration::from_secs(10), &|| service.log_text()).await;
    f.db.execute(
        "DELETE FROM subscribers_feedback WHERE id = (SELECT max(id) FROM subscribers_feedback)",
        &[],
    )
    .await
    .expect("delete");
    // Postgres now lacks a notification Kafka has; next, a row Kafka never had.
    let lacking = "0e000000-0000-4000-8000-0000000000fe";
    insert_a_row_kafka_never_had(&f, "c-short", lacking).await;
    while unix_now() <= now + 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let since = since.to_string();
    let (code, reports) = reconcile(&f, &["--since", &since, "--repair"]);
    assert_eq!((code, reports.len()), (Some(1), 1), "{reports:?}");
    let repaired = &reports[0]["repaired"];
    assert_eq!(repaired["sent_to_kafka"], 0, "nothing after its end: {repaired}");
    assert_eq!(repaired["withdrawn_from_postgres"], 1, "{repaired}");
    assert_eq!(repaired["inserted_into_postgres"], 1, "{repaired}");
    assert_eq!(row_pairs(&f).await, once_each(&["c-short"], &CLIENTS), "Postgres");
    assert_eq!(output_pairs(&f), once_each(&["c-short"], &CLIENTS), "Kafka");
    drop(service);
    f.cleanup().await;
}

/// A row of `campaign` for `client`, copied from one of its rows, as if its Kafka message had been
/// lost.
async fn insert_a_row_kafka_never_had(f: &Fixture, campaign: &str, client: &str) {
    f.db.execute(
        "INSERT INTO subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content,
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start,
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created)
         SELECT restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
             adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end,
             datetime_created, $2, trigger_datetime_created
         FROM subscribers_feedback WHERE adv_campaign_id = $1 LIMIT 1",
        &[&campaign, &client],
    )
    .await
    .expect("a row Kafka never had");
}
