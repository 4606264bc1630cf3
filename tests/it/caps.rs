//! The per-client cap (`[limits] per_client_max`) against the run's broker and Postgres: two
//! instances sending two restaurants' campaigns to the same clients at once notify each client
//! once in all, the other notification capped and recorded; a crash in the middle and a campaign
//! read again decide the same, with nothing more in either sink.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// One notification per client per day.
const ONE_A_DAY: &str = "[limits]\nper_client_max = 1\nper_client_window_secs = 86400\n";

/// A (campaign, client) pair.
type Pair = (String, String);

/// The capped records: (campaign, client) and when each was capped.
async fn capped(f: &Fixture) -> BTreeMap<Pair, i64> {
    let rows =
        f.db.query(
            "SELECT adv_campaign_id, client_id, capped_at, reason FROM campaign_notifier_capped",
            &[],
        )
        .await
        .expect("read the capped records");
    rows.iter()
        .map(|r| {
            assert_eq!(r.get::<_, String>("reason"), "per_client_max");
            ((r.get(0), r.get(1)), r.get(2))
        })
        .collect()
}

/// Every client notified exactly once in all (whichever campaign), the same pairs in both sinks,
/// and the other campaign's notification of each client capped; returns how many each campaign
/// got.
async fn assert_each_client_once_and_the_rest_capped(
    f: &Fixture,
    campaigns: [&str; 2],
    clients: &[String],
) -> BTreeMap<String, usize> {
    let rows = row_pairs(f).await;
    assert_eq!(output_pairs(f), rows, "both sinks hold the same pairs");
    assert!(rows.values().all(|n| *n == 1), "a pair twice in Postgres");
    let notified: Vec<&String> = rows.keys().map(|(_, client)| client).collect();
    let distinct: BTreeSet<&String> = notified.iter().copied().collect();
    assert_eq!(notified.len(), distinct.len(), "a client notified twice");
    assert_eq!(distinct.len(), clients.len(), "a client notified never");
    let capped: BTreeSet<Pair> = capped(f).await.into_keys().collect();
    let everything: BTreeSet<Pair> = once_each(&campaigns, clients).into_keys().collect();
    let sent: BTreeSet<Pair> = rows.into_keys().collect();
    assert!(sent.is_disjoint(&capped), "a pair both sent and capped");
    assert_eq!(
        &sent | &capped,
        everything,
        "each notification sent or capped"
    );
    let mut per_campaign = BTreeMap::new();
    for (campaign, _) in &sent {
        *per_campaign.entry(campaign.clone()).or_insert(0) += 1;
    }
    per_campaign
}

/// Waits until each of `clients` has its notification in both sinks, every other one of
/// `total` is capped, and no outbox mark is left.
async fn wait_decided(f: &Fixture, clients: usize, total: usize, logs: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (rows, capped) = (f.feedback_count().await as usize, capped(f).await.len());
        let (messages, marks) = (f.output_count() as usize, f.outbox_marks().await);
        if rows + capped >= total && rows >= clients && messages >= rows && marks == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows, {capped} capped, {messages} messages of {clients} clients, {marks} \
             marks:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `campaign status ID` as an operator runs it: its one JSON object.
fn status_of(f: &Fixture, id: &str) -> Value {
    let path = f.dir.join("status.toml");
    std::fs::write(&path, f.config(free_port(), "")).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["campaign", "status", id, "--config"])
        .arg(&path)
        .output()
        .expect("campaign-notifier");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Waits until each instance holds one partition of the input topic.
fn wait_one_partition_each(a: &Service, b: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.assigned_partitions() == Some(1) && b.assigned_partitions() == Some(1)) {
        assert!(
            Instant::now() < deadline,
            "not one partition each in 60 s:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two restaurants with the same 300 subscribers send a campaign at the same moment, on two
/// partitions, so each of two instances writes one of them while the other writes the other; with
/// one notification per client a day, the client's row lock makes the first processed win: each
/// client gets one notification in all, in both sinks, and the other is recorded as capped,
/// counted, and shown by `campaign status`.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sending_to_the_same_clients_at_once_notify_each_client_once() {
    let f = Fixture::new("captwo", 2).await;
    let [r1, r2] = ["7c000000-0000-0000-0000-000000000001", "7c000000-0000-0000-0000-000000000002"];
    let audience = subscribe_clients(&f, r1, 300).await;
    subscribe_clients(&f, r2, 300).await;
    let a = Service::start_numbered(&f, ONE_A_DAY, 0);
    let b = Service::start_numbered(&f, ONE_A_DAY, 1);
    wait_one_partition_each(&a, &b);

    let (first, second) = (active_campaign(r1, "c-cap-1"), active_campaign(r2, "c-cap-2"));
    futures::join!(
        f.produce_to(0, r1, first.as_bytes()),
        f.produce_to(1, r2, second.as_bytes())
    );
    wait_decided(&f, 300, 600, &|| format!("{}\n{}", a.log_text(), b.log_text())).await;
    let campaigns = ["c-cap-1", "c-cap-2"];
    let got = assert_each_client_once_and_the_rest_capped(&f, campaigns, &audience).await;
    let counted: Vec<f64> = [&a, &b]
        .map(|s| s.metric("campaign_notifier_notifications_capped_total"))
        .into();
    println!("notifications per campaign: {got:?}; capped by each instance: {counted:?}");
    assert_eq!(counted.iter().sum::<f64>(), 300.0, "each capped one counted once");

    for id in campaigns {
        let status = status_of(&f, id);
        let written = status["notifications"]["written_to_postgres"].as_i64();
        let capped = status["capped"].as_i64();
        assert_eq!(written, Some(got.get(id).copied().unwrap_or(0) as i64), "{status}");
        assert_eq!(written.zip(capped).map(|(w, c)| w + c), Some(300), "{status}");
    }
    drop((a, b));
    f.cleanup().await;
}

/// The cap decides once: an instance killed with SIGKILL while it sends two restaurants'
/// campaigns to the same 3 000 clients, a slice at a time, is started again and finishes them
/// (each client notified once in all, the rest capped); then the group's offsets start over and
/// both campaigns are read again: nothing more reaches either sink, and the capped records stay as
/// they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_and_a_redelivery_decide_the_same_and_send_nothing_more() {
    const AUDIENCE: usize = 3_000;
    let f = Fixture::new("capagain", 1).await;
    let [r1, r2] = ["7c000000-0000-0000-0000-000000000011", "7c000000-0000-0000-0000-000000000012"];
    let audience = subscribe_clients(&f, r1, AUDIENCE).await;
    subscribe_clients(&f, r2, AUDIENCE).await;
    let config = format!(
        "{ONE_A_DAY}[writers]\nmax_notifications_in_flight = 1000\nkafka_message_timeout_ms = 10000\n"
    );
    let mut first = Service::start_numbered(&f, &config, 0);
    for (r, id) in [(r1, "c-again-1"), (r2, "c-again-2")] {
        f.produce(r, active_campaign(r, id).as_bytes()).await;
    }
    let rows_at_kill = kill_once_some_are_written(&f, &mut first).await;
    let decided_at_kill = rows_at_kill + capped(&f).await.len();
    println!("killed with {rows_at_kill} rows written, {decided_at_kill} of {} decided", 2 * AUDIENCE);

    let again = Service::start_numbered(&f, &config, 1);
    let logs = || again.log_text();
    wait_decided(&f, AUDIENCE, 2 * AUDIENCE, &logs).await;
    let campaigns = ["c-again-1", "c-again-2"];
    let got = assert_each_client_once_and_the_rest_capped(&f, campaigns, &audience).await;
    println!("after the restart, notifications per campaign: {got:?}");
    drop(again);

    let (rows, records) = (row_pairs(&f).await, capped(&f).await);
    let env = [("CAMPAIGN_NOTIFIER__KAFKA__GROUP_ID", "capagain-from-the-start")];
    let mut reread = Service::spawn_with_env(&f, &config, 2, &env);
    reread.wait_ready();
    reread.wait_processed(2, Duration::from_secs(60));
    // Whatever it might have sent would be on its way by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(row_pairs(&f).await, rows, "nothing more in Postgres");
    assert_eq!(output_pairs(&f), rows, "nothing more in Kafka");
    assert_eq!(capped(&f).await, records, "the capped records as they were");
    let counted = reread.metric("campaign_notifier_notifications_capped_total");
    assert_eq!(counted, 0.0, "nothing capped again");
    assert!(reread.terminate().success(), "{}", reread.log_text());
    f.cleanup().await;
}

/// Kills `service` with SIGKILL as soon as Postgres holds some of its notifications; returns how
/// many rows it had then.
async fn kill_once_some_are_written(f: &Fixture, service: &mut Service) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = f.feedback_count().await as usize;
        if rows > 0 {
            service.kill_hard();
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "nothing written in 60 s:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Housekeeping keeps what the cap needs and no more: a client's sent times go once the newest is
/// out of the window (and a row with none goes), a capped record `lifecycle.retain_days` (30)
/// after it was capped; a client sent something within the window, and a record capped
/// yesterday, stay.
#[tokio::test(flavor = "multi_thread")]
async fn the_caps_records_are_forgotten_once_out_of_the_window_or_the_retention() {
    let f = Fixture::new("capforget", 1).await;
    f.db.batch_execute(
        "INSERT INTO campaign_notifier_clients (client_id, sent)
         SELECT c, ARRAY[extract(epoch FROM now())::int8 - s]::int8[]
         FROM (VALUES ('out-of-the-window', 86400 + 60), ('within', 3600)) AS v(c, s);
         INSERT INTO campaign_notifier_clients (client_id, sent) VALUES ('nothing-sent', '{}');
         INSERT INTO campaign_notifier_capped
         SELECT 'r', 'c', k, 'per_client_max', extract(epoch FROM now())::int8 - d * 86400
         FROM (VALUES ('capped-31-days-ago', 31), ('capped-yesterday', 1)) AS v(k, d);",
    )
    .await
    .expect("the cap's records");
    let service = Service::start(&f, ONE_A_DAY);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let clients: Vec<String> =
            f.db.query("SELECT client_id FROM campaign_notifier_clients", &[])
                .await
                .expect("clients")
                .iter()
                .map(|r| r.get(0))
                .collect();
        let records: Vec<String> = capped(&f).await.into_keys().map(|(_, k)| k).collect();
        if clients == ["within"] && records == ["capped-yesterday"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept {clients:?} and {records:?}:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(service);
    f.cleanup().await;
}

/// The clients both restaurants of [`sink_job`] have.
const SHARED: [&str; 3] = [
    "0c000000-0000-4000-8000-00000000aaa1",
    "0c000000-0000-4000-8000-00000000aaa2",
    "client-with-a-text-id",
];

/// Campaign `campaign_id` of `restaurant` to the [`SHARED`] clients, its chunk's token
/// `first_token`.
fn sink_job(
    restaurant: &str,
    campaign_id: &str,
    first_token: i64,
) -> std::sync::Arc<campaign_actors::sinks::pg_writer::PgJob> {
    pg_job(restaurant, campaign_id, &SHARED, first_token)
}

/// The Postgres sink itself with a cap of one: in one write the earlier campaign wins every
/// client and the later one is capped whole (its chunk, left empty, still answered); written
/// again as replays after an unconfirmed commit, the first reports what its first attempt
/// inserted (the empty chunk's token finds it) and the second nothing, with nothing more
/// inserted, capped or counted.
#[actix_rt::test]
async fn the_postgres_sink_decides_once_and_a_replay_reports_what_was_inserted() {
    use campaign_actors::sinks::pg_writer::{Capping, PerClientCap, PgSink, PgSinkConfig};
    use campaign_actors::sinks::Sink;
    let f = Fixture::new("capsink", 1).await;
    let metrics = campaign_actors::Metrics::new();
    let sink = PgSink::connect(PgSinkConfig {
        postgres: campaign_actors::postgres::PostgresSettings::for_url(&f.db_url),
        owner: 7,
        lease: campaign_actors::lease::Lease::unbounded(),
        trigger_column: campaign_actors::postgres::TriggerColumn::Int4,
        cap: Some(Capping {
            cap: PerClientCap {
                max: 1,
                window_secs: 86_400,
            },
            metrics: metrics.clone(),
        }),
    })
    .await
    .expect("connect");
    let jobs = vec![
        sink_job("7c000000-0000-0000-0000-000000000021", "c-first", 1_000),
        sink_job("7c000000-0000-0000-0000-000000000022", "c-second", 2_000),
    ];
    let all: BTreeSet<String> = SHARED.iter().map(|c| c.to_string()).collect();
    let first = sink.write(jobs.clone()).await.expect("first write");
    let got = |i: usize, w: &[campaign_actors::sinks::pg_writer::Inserted]| {
        w[i].clients.iter().cloned().collect::<BTreeSet<String>>()
    };
    assert_eq!(got(0, &first), all, "the earlier campaign wins");
    assert_eq!(got(1, &first), BTreeSet::new(), "the later one is capped");
    assert_eq!((first[0].outbox_ids.len(), first[1].outbox_ids.len()), (1, 0));
    assert_eq!(metrics.notifications_capped.get(), 3);

    let replays = sink.reconcile(jobs).await.expect("reconcile");
    let again = sink.write(replays).await.expect("replayed write");
    assert_eq!(got(0, &again), all, "the first attempt's rows, by its token");
    assert_eq!(again[0].outbox_ids, first[0].outbox_ids);
    assert_eq!(got(1, &again), BTreeSet::new());
    assert_eq!(metrics.notifications_capped.get(), 3, "nothing counted again");
    assert_eq!(f.feedback_count().await, 3);
    assert_eq!(capped(&f).await.len(), 3);
    assert_eq!(f.outbox_marks().await, 1);

    let third = sink_job("7c000000-0000-0000-0000-000000000021", "c-third", 3_000);
    let later = sink.write(vec![third]).await.expect("a third campaign");
    assert!(later[0].clients.is_empty(), "every client is at the cap");
    assert_eq!(metrics.notifications_capped.get(), 6);
    f.cleanup().await;
}
