//! Deletes, inserts and moves of `subscribers_restaurants` applied by the service within 2 s of
//! their commit, with the service killed and started again while changes keep coming: in the
//! trigger mode on the run's Postgres, and in the logical mode on a cluster of the test's own
//! with `wal_level = logical`.
//!
//! Each round commits changes, waits 2 s from the last commit, then sends a campaign to every
//! restaurant: each must reach exactly the clients the table holds then, plus the clients who
//! subscribe later while it is still active (notified late), in both sinks, once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::cluster::{run_dir, LogicalPostgres};
use crate::common::*;

const RESTAURANTS: [&str; 3] = [
    "6a000000-0000-0000-0000-00000000000a",
    "6a000000-0000-0000-0000-00000000000b",
    "6a000000-0000-0000-0000-00000000000c",
];

/// What the test did to the table, to tell who each campaign must reach.
#[derive(Default)]
struct Expected {
    /// Campaign -> (how many campaigns were sent up to and including it, restaurant, clients
    /// when it was sent).
    sent: BTreeMap<String, (usize, String, BTreeSet<String>)>,
    /// Every pair added, in order, with the number of campaigns sent before it.
    added: Vec<(usize, String, String)>,
}

impl Expected {
    fn pairs(&self) -> BTreeMap<(String, String), u32> {
        let mut out = BTreeMap::new();
        for (campaign, (order, restaurant, clients)) in &self.sent {
            let late = (self.added.iter())
                .filter(|(before, r, _)| before >= order && r == restaurant)
                .map(|(_, _, c)| c);
            for client in clients.iter().chain(late) {
                out.insert((campaign.clone(), client.clone()), 1);
            }
        }
        out
    }
}

async fn clients_of(f: &Fixture, restaurant: &str) -> BTreeSet<String> {
    f.db.query(
        "SELECT client_id FROM subscribers_restaurants WHERE restaurant_id = $1",
        &[&restaurant],
    )
    .await
    .expect("clients")
    .iter()
    .map(|r| r.get(0))
    .collect()
}


/// Sends round `round`'s campaign to every restaurant, recording who each must reach.
async fn send_round(f: &Fixture, round: usize, expected: &mut Expected) {
    for (n, restaurant) in RESTAURANTS.iter().enumerate() {
        let id = format!("r{round}-{n}");
        let clients = clients_of(f, restaurant).await;
        let order = expected.sent.len() + 1;
        let sent = (order, restaurant.to_string(), clients);
        expected.sent.insert(id.clone(), sent);
        f.produce(&id, active_campaign(restaurant, &id).as_bytes()).await;
    }
}

/// One change, committed on its own; returns when it committed.
async fn change(f: &Fixture, expected: &mut Expected, what: Change<'_>) -> Instant {
    let sent = expected.sent.len();
    match what {
        Change::Subscribe(r, c) => {
            f.db.execute(
                "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, $2)",
                &[&r, &c],
            )
            .await
            .expect("insert");
            expected.added.push((sent, r.into(), c.into()));
        }
        Change::Unsubscribe(r, c) => {
            f.db.execute(
                "DELETE FROM subscribers_restaurants WHERE restaurant_id = $1 AND client_id = $2",
                &[&r, &c],
            )
            .await
            .expect("delete");
        }
        Change::Move(from, to, c) => {
            let moved = f
                .db
                .execute(
                    "UPDATE subscribers_restaurants SET restaurant_id = $2
                     WHERE restaurant_id = $1 AND client_id = $3",
                    &[&from, &to, &c],
                )
                .await
                .expect("update");
            assert_eq!(moved, 1, "{c} at {from}");
            expected.added.push((sent, to.into(), c.into()));
        }
    }
    Instant::now()
}

enum Change<'a> {
    Subscribe(&'a str, &'a str),
    Unsubscribe(&'a str, &'a str),
    Move(&'a str, &'a str, &'a str),
}

async fn seed(f: &Fixture) {
    for (restaurant, tag) in RESTAURANTS.iter().zip(["a", "b", "c"]) {
        let clients: Vec<String> = (0..20).map(|i| format!("{tag}-{i:02}")).collect();
        super::subscribe(f, restaurant, &clients).await;
    }
}

/// Waits until 2 s have passed since `last`.
async fn two_seconds_after(last: Instant) {
    let until = last + Duration::from_secs(2);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
}

/// The whole scenario, on `f`, with the service configured by `extra`, which must follow the
/// changes in `mode`; returns the log of the instance started again.
pub async fn deletes_inserts_and_moves_within_two_seconds(
    f: &Fixture,
    extra: &str,
    mode: &str,
) -> String {
    let [a, b, c] = RESTAURANTS;
    seed(f).await;
    let mut expected = Expected::default();
    let service = Service::start(f, extra);
    let on = format!("mode=\"{mode}\"");
    assert_eq!(
        service.metric_with("campaign_notifier_subscriber_changes_mode", &on),
        1.0,
        "{}",
        service.log_text()
    );

    // Round 1, the service up: deletes, inserts and moves, each committed on its own.
    for i in 0..4 {
        let client = format!("a-{i:02}");
        change(f, &mut expected, Change::Unsubscribe(a, &client)).await;
    }
    for i in 0..3 {
        let client = format!("new-{i}");
        change(f, &mut expected, Change::Subscribe(a, &client)).await;
    }
    for i in 0..3 {
        let client = format!("b-{i:02}");
        change(f, &mut expected, Change::Move(b, a, &client)).await;
    }
    let last = change(f, &mut expected, Change::Move(c, b, "c-19")).await;
    two_seconds_after(last).await;
    send_round(f, 1, &mut expected).await;
    service.wait_processed(3, Duration::from_secs(30));

    // A stream of changes, one every 60 ms, while the service is killed and started again.
    let (added, last, service) = stream_across_a_restart(f, extra, service).await;
    let sent = expected.sent.len();
    expected.added.extend(added.into_iter().map(|(_, r, c)| (sent, r, c)));

    // Round 2, after the stream: every change of it is in.
    two_seconds_after(last).await;
    send_round(f, 2, &mut expected).await;
    service.wait_processed(3, Duration::from_secs(30));
    let pairs = expected.pairs();
    wait_for_pairs(f, pairs.len(), &service).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_same(&row_pairs(f).await, &pairs, "Postgres", &service);
    assert_same(&output_pairs(f), &pairs, "Kafka", &service);
    assert_change_lag_within_two_seconds(&service);
    service.log_text()
}

/// `got` is `want`; else the pairs missing and those too many, and the service's log.
fn assert_same(
    got: &BTreeMap<(String, String), u32>,
    want: &BTreeMap<(String, String), u32>,
    sink: &str,
    service: &Service,
) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.iter().filter(|(k, n)| !want.contains_key(*k) || **n != 1).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{sink}: missing {missing:?}, too many {extra:?}\n{}",
        service.log_text()
    );
}

/// 45 changes to C, one every 60 ms (a subscription, an unsubscription, a move from A, in turn),
/// while `service` is killed with SIGKILL and started again; returns the pairs added, when the
/// last change committed, and the new service.
async fn stream_across_a_restart(
    f: &Fixture,
    extra: &str,
    mut service: Service,
) -> (Vec<(usize, String, String)>, Instant, Service) {
    let [a, _, c] = RESTAURANTS;
    let stream = async {
        let mut added = Vec::new();
        let mut last = Instant::now();
        for i in 0..15 {
            let (sub, unsub, moved) = (
                format!("stream-{i}"),
                format!("c-{i:02}"),
                format!("a-{:02}", 4 + i),
            );
            for what in [
                Change::Subscribe(c, &sub),
                Change::Unsubscribe(c, &unsub),
                Change::Move(a, c, &moved),
            ] {
                let mut one = Expected::default();
                last = change(f, &mut one, what).await;
                added.extend(one.added);
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
        (added, last)
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        service.kill_hard();
        tokio::time::sleep(Duration::from_millis(500)).await;
        Service::start_numbered(f, extra, 1)
    };
    let ((added, last), restarted) = tokio::join!(stream, restart);
    (added, last, restarted)
}

async fn wait_for_pairs(f: &Fixture, n: usize, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while (f.feedback_count().await as usize) < n || f.output_count() < n as i64 {
        assert!(
            Instant::now() < deadline,
            "{} rows, {} messages of {n}:\n{}",
            f.feedback_count().await,
            f.output_count(),
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// At least 99 % of the changes this process applied were applied within 2 s of their commit.
fn assert_change_lag_within_two_seconds(service: &Service) {
    let metrics = service.metrics();
    let count = sum_metric(&metrics, "campaign_notifier_subscriber_change_lag_seconds_count");
    let within = metric_line(&metrics, "campaign_notifier_subscriber_change_lag_seconds_bucket{le=\"2\"}");
    println!("changes applied by the restarted instance: {count}, within 2 s: {within}");
    assert!(count > 0.0, "no change was applied:\n{metrics}");
    assert!(within >= 0.99 * count, "{within} of {count} within 2 s");
}

fn metric_line(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_the_trigger_mode_deletes_inserts_and_moves_are_applied_within_two_seconds_across_a_kill()
{
    let f = Fixture::new("chg_trigger", 1).await;
    let extra = "[cache]\nchanges = \"trigger\"\n";
    deletes_inserts_and_moves_within_two_seconds(&f, extra, "trigger").await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_the_logical_mode_deletes_inserts_and_moves_are_applied_within_two_seconds_across_a_kill()
{
    let server = LogicalPostgres::start(run_dir("pg-logical-following"));
    let brokers = env("CN_TEST_BROKERS");
    let f = Fixture::new_on_postgres("chg_logical", 1, &brokers, Vec::new(), &server.url()).await;
    f.db.batch_execute("ALTER TABLE subscribers_restaurants REPLICA IDENTITY FULL")
        .await
        .expect("replica identity");
    // `auto` takes the logical mode where the server allows it.
    let log = deletes_inserts_and_moves_within_two_seconds(&f, "", "logical").await;
    assert!(
        log.contains("streaming the replication slot"),
        "the slot is streamed, not read with SQL calls:\n{log}"
    );
    let slot = f
        .db
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&"campaign_notifier_subscribers"],
        )
        .await
        .expect("slots");
    assert_eq!(slot.get::<_, i64>(0), 1, "one slot for the deployment");
    // A database with a slot cannot be dropped.
    f.db.execute(
        "SELECT pg_drop_replication_slot('campaign_notifier_subscribers')",
        &[],
    )
    .await
    .expect("drop the slot");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_server_without_wal_senders_the_slot_is_read_with_sql_calls_and_nothing_is_missed() {
    let mut server = LogicalPostgres::start(run_dir("pg-logical-no-senders"));
    // Logical decoding, but no replication connection: SQL calls are the only way to the slot.
    server.set_and_restart("max_wal_senders = 0").await;
    let brokers = env("CN_TEST_BROKERS");
    let f = Fixture::new_on_postgres("chg_sql_calls", 1, &brokers, Vec::new(), &server.url()).await;
    f.db.batch_execute("ALTER TABLE subscribers_restaurants REPLICA IDENTITY FULL")
        .await
        .expect("replica identity");
    let log = deletes_inserts_and_moves_within_two_seconds(&f, "", "logical").await;
    assert!(
        log.contains("reading it with SQL calls instead"),
        "the stream that cannot be made falls back to SQL calls:\n{log}"
    );
    drop_slot_once_inactive(&f).await;
    f.cleanup().await;
}

/// Drops the service's slot, once the connection reading it (if any) has ended.
pub(super) async fn drop_slot_once_inactive(f: &Fixture) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dropped = f
            .db
            .execute(
                "SELECT pg_drop_replication_slot('campaign_notifier_subscribers')",
                &[],
            )
            .await;
        match dropped {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                println!("slot not dropped yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("drop the slot: {e}"),
        }
    }
}
