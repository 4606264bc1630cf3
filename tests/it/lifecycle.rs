//! The campaign lifecycle end to end, against the run's Tansu broker and the local Postgres:
//! campaigns published before their start fire at their start (across a `kill -9`, with two
//! instances), newer versions replace or cancel them, a changed campaign notifies nobody again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;

/// A campaign JSON with its content and `datetime_created` given.
fn version(restaurant: &str, id: &str, content: &str, window: (i64, i64), created: i64) -> String {
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": id,
        "adv_campaign_content": content,
        "adv_campaign_owner": "Ivanov Ivan Ivanovich",
        "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
        "adv_campaign_datetime_start": window.0,
        "adv_campaign_datetime_end": window.1,
        "datetime_created": created,
    })
    .to_string()
}

fn clients(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-client-{i:06}")).collect()
}

async fn subscribe_all(f: &Fixture, restaurant: &str, clients: &[String]) {
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) SELECT $1, unnest($2::text[])",
        &[&restaurant, &clients],
    )
    .await
    .expect("subscribe");
}

/// Every (campaign, client) of `campaigns` x `clients` once.
fn once_each(campaigns: &[&str], clients: &[String]) -> BTreeMap<(String, String), u32> {
    campaigns
        .iter()
        .flat_map(|c| clients.iter().map(move |s| ((c.to_string(), s.clone()), 1)))
        .collect()
}

async fn feedback_count(f: &Fixture) -> i64 {
    f.db.query_one("SELECT count(*) FROM subscribers_feedback", &[])
        .await
        .expect("count feedback")
        .get(0)
}

async fn state_of(f: &Fixture, campaign: &str) -> Option<String> {
    f.db.query_opt(
        "SELECT state FROM campaign_notifier_campaigns WHERE adv_campaign_id = $1",
        &[&campaign],
    )
    .await
    .expect("campaign state")
    .map(|row| row.get(0))
}

/// Both sinks hold exactly `total` distinct notifications, and the output topic each once.
async fn assert_each_once_in_both_sinks(f: &Fixture, total: i64) {
    let pairs = output_pairs(f);
    assert_eq!(pairs.len() as i64, total);
    assert!(
        pairs.values().all(|&n| n == 1),
        "a notification went out twice"
    );
    assert_eq!(row_pairs(f).await.len() as i64, total);
}

/// Waits until both sinks hold `n` notifications; returns when that was seen.
async fn wait_both_sinks(f: &Fixture, n: i64, timeout: Duration, log: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    loop {
        let (rows, messages) = (feedback_count(f).await, f.output_count());
        if rows >= n && messages >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows and {messages} messages of {n} after {timeout:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sleeps until the wall clock reaches unix second `at` (to the millisecond).
async fn sleep_until_unix(at: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    if at > now {
        tokio::time::sleep(Duration::from_secs_f64(at - now)).await;
    }
}

fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_published_before_its_start_fires_at_its_start_in_both_sinks() {
    let f = Fixture::new("sched", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000001";
    let subscribers = clients("sched", 3);
    subscribe_all(&f, restaurant, &subscribers).await;
    let service = Service::start(&f, "");
    let start = unix_now() + 10;
    let campaign = version(restaurant, "c-lunch", "70% off", (start, start + 3600), 1);
    f.produce("1", campaign.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));

    // Kept, its offset committed, nothing sent before the start.
    assert_eq!(
        service.metric_with(
            "campaign_notifier_campaigns_processed_total",
            "outcome=\"scheduled\""
        ),
        1.0
    );
    assert_eq!(state_of(&f, "c-lunch").await.as_deref(), Some("scheduled"));
    let committed = Instant::now() + Duration::from_secs(10);
    while f.input_commits() != [(1, 1)] {
        assert!(Instant::now() < committed, "{:?}", f.input_commits());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sleep_until_unix(start as f64 - 0.3).await;
    assert_eq!((feedback_count(&f).await, f.output_count()), (0, 0));

    wait_both_sinks(&f, 3, Duration::from_secs(20), || service.log_text()).await;
    let delay = unix_now_f64() - start as f64;
    println!("fired {delay:.3} s after its start (both sinks, seen by polling every 50 ms)");
    assert!(delay < 2.0, "fired {delay:.3} s after its start");
    assert_eq!(row_pairs(&f).await, once_each(&["c-lunch"], &subscribers));
    assert_eq!(output_pairs(&f), once_each(&["c-lunch"], &subscribers));
    for (_, message) in f.read_output() {
        assert_eq!(message["adv_campaign_content"], "70% off");
        let trigger = message["trigger_datetime_created"].as_i64().unwrap();
        assert!((start..=start + 2).contains(&trigger), "{message}");
    }
    assert_eq!(state_of(&f, "c-lunch").await.as_deref(), Some("active"));
    let fired = service.metric_with(
        "campaign_notifier_lifecycle_events_total",
        "event=\"fired\"",
    );
    assert_eq!(fired, 1.0);
    assert_eq!(
        service.metric("campaign_notifier_fire_delay_seconds_count"),
        1.0
    );
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_campaign_survives_a_kill_9_at_its_start_and_goes_out_once() {
    let f = Fixture::new("schedkill", 2).await;
    let restaurant = "5c000000-0000-0000-0000-000000000002";
    let subscribers = clients("kill", 60_000);
    subscribe_all(&f, restaurant, &subscribers).await;
    // A dead instance's sends settle after kafka_message_timeout_ms + 5 s.
    let config = "[writers]\nkafka_message_timeout_ms = 5000\n[ledger]\ntakeover_after_secs = 8\n";
    let mut first = Service::start_numbered(&f, config, 0);
    let start = unix_now() + 10;
    let campaign = version(restaurant, "c-kill", "flash sale", (start, start + 3600), 1);
    f.produce("1", campaign.as_bytes()).await;
    first.wait_processed(1, Duration::from_secs(30));

    // Killed while it fires: some rows written, not all.
    sleep_until_unix(start as f64).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = feedback_count(&f).await;
        if rows > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill_hard();
    let (rows, messages) = (feedback_count(&f).await, f.output_count());
    println!("killed with {rows} rows and {messages} messages of 60000 written");
    assert!(rows < 60_000, "the kill came after the fire finished");
    assert_eq!(state_of(&f, "c-kill").await.as_deref(), Some("firing"));

    let second = Service::start_numbered(&f, config, 1);
    wait_both_sinks(&f, 60_000, Duration::from_secs(120), || second.log_text()).await;
    // Recovery of the dead instance's marks runs in the background; let it finish.
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.outbox_marks().await > 0 {
        assert!(Instant::now() < deadline, "{}", second.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = once_each(&["c-kill"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    assert_eq!(state_of(&f, "c-kill").await.as_deref(), Some("active"));
    assert_eq!(
        second.metric_with(
            "campaign_notifier_lifecycle_events_total",
            "event=\"taken_over\""
        ),
        1.0
    );
    drop(second);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_fire_each_of_200_campaigns_due_in_the_same_second_once() {
    let f = Fixture::new("sched200", 4).await;
    let per_restaurant = 5;
    let restaurants: Vec<String> = (0..200)
        .map(|i| format!("5c000000-0000-0000-0001-{i:012}"))
        .collect();
    let mut all = Vec::new();
    for r in &restaurants {
        let subscribers = clients(r, per_restaurant);
        subscribe_all(&f, r, &subscribers).await;
        all.push(subscribers);
    }
    let a = Service::start_numbered(&f, "", 0);
    let b = Service::start_numbered(&f, "", 1);
    let start = unix_now() + 15;
    for (i, r) in restaurants.iter().enumerate() {
        let c = version(r, &format!("c-{i:03}"), "noon", (start, start + 3600), 1);
        f.produce(&i.to_string(), c.as_bytes()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scheduled = a.metric_with(
            "campaign_notifier_campaigns_processed_total",
            "outcome=\"scheduled\"",
        ) + b.metric_with(
            "campaign_notifier_campaigns_processed_total",
            "outcome=\"scheduled\"",
        );
        if scheduled >= 200.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{scheduled} scheduled:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unix_now() < start, "all were scheduled before their start");
    wait_both_sinks(&f, 1000, Duration::from_secs(30), || a.log_text()).await;
    let delay = unix_now_f64() - start as f64;
    println!("200 campaigns x 5 subscribers in both sinks {delay:.3} s after their start");
    let fired = |s: &Service| {
        s.metric_with(
            "campaign_notifier_lifecycle_events_total",
            "event=\"fired\"",
        )
    };
    println!(
        "fired by the first {}, by the second {}",
        fired(&a),
        fired(&b)
    );
    assert_eq!(fired(&a) + fired(&b), 200.0);
    let mut expected = BTreeMap::new();
    for (i, subscribers) in all.iter().enumerate() {
        expected.extend(once_each(&[&format!("c-{i:03}")], subscribers));
    }
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    drop((a, b));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn newer_versions_replace_or_cancel_a_scheduled_campaign_and_a_change_after_it_fired_notifies_nobody(
) {
    let f = Fixture::new("versions", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000003";
    let subscribers = clients("v", 2);
    subscribe_all(&f, restaurant, &subscribers).await;
    let service = Service::start(&f, "");
    let now = unix_now();
    let start = now + 10;
    let window = (start, start + 3600);
    let messages = [
        // Replaced: the newer text is the one that fires.
        version(restaurant, "c-replaced", "old text", window, 10),
        version(restaurant, "c-replaced", "new text", window, 11),
        // An older version arriving after: ignored.
        version(restaurant, "c-replaced", "stale text", window, 9),
        // Cancelled: a newer version whose end is in the past.
        version(restaurant, "c-cancelled", "soon", window, 10),
        version(restaurant, "c-cancelled", "soon", (now - 120, now - 60), 11),
        // Active now, then sent again with another text: nobody notified again.
        version(restaurant, "c-live", "live", (now - 60, now + 3600), 10),
        version(
            restaurant,
            "c-live",
            "live, edited",
            (now - 60, now + 3600),
            11,
        ),
    ];
    for (i, m) in messages.iter().enumerate() {
        f.produce(&i.to_string(), m.as_bytes()).await;
    }
    service.wait_processed(messages.len() as u64, Duration::from_secs(30));
    let outcome = |o: &str| {
        service.metric_with(
            "campaign_notifier_campaigns_processed_total",
            &format!("outcome=\"{o}\""),
        )
    };
    assert_eq!(
        outcome("scheduled"),
        3.0,
        "two versions of one, one of the other"
    );
    assert_eq!(outcome("superseded"), 1.0);
    assert_eq!(outcome("cancelled"), 1.0);
    assert_eq!(outcome("delivered"), 1.0);
    assert_eq!(outcome("changed_after_start"), 1.0);
    let event = |e: &str| {
        service.metric_with(
            "campaign_notifier_lifecycle_events_total",
            &format!("event=\"{e}\""),
        )
    };
    assert_eq!(event("replaced"), 1.0);
    assert_eq!(
        state_of(&f, "c-cancelled").await.as_deref(),
        Some("cancelled")
    );

    wait_both_sinks(&f, 4, Duration::from_secs(30), || service.log_text()).await;
    // Time for a wrongly fired cancelled campaign to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = once_each(&["c-replaced", "c-live"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    for (_, message) in f.read_output() {
        let text = message["adv_campaign_content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text == "new text" || text == "live", "{message}");
    }
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_passing_while_the_kafka_sink_is_down_sends_nothing_after_it_and_the_sinks_agree() {
    let dir = std::env::temp_dir().join(format!(
        "cn-test-own-broker-end-{}",
        std::env::var("CN_TEST_RUN_ID").unwrap_or_default()
    ));
    let mut broker = OwnBroker::start(dir.clone());
    let f = Fixture::new_on("enddown", 1, &broker.address()).await;
    let (short, long) = (
        "5c000000-0000-0000-0000-000000000004",
        "5c000000-0000-0000-0000-000000000005",
    );
    let (short_clients, long_clients) = (clients("short", 300), clients("long", 300));
    subscribe_all(&f, short, &short_clients).await;
    subscribe_all(&f, long, &long_clients).await;
    let service = Service::start(&f, "");
    let start = unix_now() + 10;
    let end = start + 4;
    let brief = version(short, "c-brief", "4 seconds only", (start, end), 1);
    let lasting = version(long, "c-lasting", "all day", (start, start + 3600), 1);
    f.produce("1", brief.as_bytes()).await;
    f.produce("2", lasting.as_bytes()).await;
    service.wait_processed(2, Duration::from_secs(30));

    // The broker goes away just before both start, and comes back after the short one ended.
    sleep_until_unix(start as f64 - 1.0).await;
    broker.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while feedback_count(&f).await < 600 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sleep_until_unix(end as f64 + 3.0).await;
    broker.resume();

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (rows, messages, marks) = (
            feedback_count(&f).await,
            f.output_count(),
            f.outbox_marks().await,
        );
        if rows == 300 && messages == 300 && marks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows, {messages} messages, {marks} marks:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let expected = once_each(&["c-lasting"], &long_clients);
    assert_eq!(row_pairs(&f).await, expected, "the ended one withdrawn");
    assert_eq!(output_pairs(&f), expected, "nothing of the ended one sent");
    assert_eq!(
        service.metric_with(
            "campaign_notifier_notifications_withdrawn_total",
            "reason=\"ended\""
        ),
        300.0
    );
    assert_eq!(state_of(&f, "c-brief").await.as_deref(), Some("expired"));
    assert_eq!(state_of(&f, "c-lasting").await.as_deref(), Some("active"));
    drop(service);
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
    f.cleanup().await;
}

/// Waits until the rows of `campaign` in both sinks number `n`; returns how long it took.
async fn wait_campaign(
    f: &Fixture,
    campaign: &str,
    n: usize,
    timeout: Duration,
    log: impl Fn() -> String,
) -> Duration {
    let began = Instant::now();
    loop {
        let rows = row_pairs(f)
            .await
            .keys()
            .filter(|(c, _)| c == campaign)
            .count();
        let messages = output_pairs(f)
            .keys()
            .filter(|(c, _)| c == campaign)
            .count();
        if rows >= n && messages >= n {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < timeout,
            "{campaign}: {rows} rows and {messages} messages of {n} after {timeout:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_who_subscribes_while_a_campaign_is_active_is_notified_once_within_seconds() {
    let f = Fixture::new("latesub", 2).await;
    let (open, quiet) = (
        "5c000000-0000-0000-0000-000000000006",
        "5c000000-0000-0000-0000-000000000007",
    );
    let early = clients("early", 2);
    subscribe_all(&f, open, &early).await;
    let mut service = Service::start(&f, "");
    let now = unix_now();
    f.produce(
        "1",
        version(open, "c-open", "all week", (now - 60, now + 3600), 1).as_bytes(),
    )
    .await;
    f.produce(
        "2",
        version(quiet, "c-over", "gone", (now - 60, now - 30), 1).as_bytes(),
    )
    .await;
    service.wait_processed(2, Duration::from_secs(30));
    wait_campaign(&f, "c-open", 2, Duration::from_secs(20), || {
        service.log_text()
    })
    .await;

    // Subscribed while it is active: notified, within seconds, once.
    let mut delays = Vec::new();
    let mut everyone = early.clone();
    for i in 0..5 {
        let late = format!("late-client-{i}");
        subscribe_all(&f, open, std::slice::from_ref(&late)).await;
        everyone.push(late);
        let took = wait_campaign(
            &f,
            "c-open",
            everyone.len(),
            Duration::from_secs(10),
            || service.log_text(),
        )
        .await;
        delays.push(took.as_secs_f64());
    }
    println!("subscribe -> both sinks, five times: {delays:.3?} s");
    assert!(delays.iter().all(|d| *d < 5.0), "{delays:?}");
    // A restaurant whose campaign is over: nothing.
    subscribe_all(&f, quiet, &["quiet-client".to_string()]).await;

    // Subscribed while the service is down: notified once it is back.
    assert!(service.terminate().success());
    subscribe_all(&f, open, &["while-down".to_string()]).await;
    everyone.push("while-down".to_string());
    let service = Service::start_numbered(&f, "", 1);
    wait_campaign(
        &f,
        "c-open",
        everyone.len(),
        Duration::from_secs(20),
        || service.log_text(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = once_each(&["c-open"], &everyone);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    assert_eq!(
        service.metric("campaign_notifier_late_subscriber_notifications_total"),
        1.0,
        "the one subscribed while it was down"
    );
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_who_unsubscribes_is_not_notified_by_a_campaign_that_fires_later() {
    let f = Fixture::new("unsub", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000008";
    let both = clients("unsub", 2);
    subscribe_all(&f, restaurant, &both).await;
    let service = Service::start(&f, "");
    assert_eq!(service.metric("campaign_notifier_cache_pairs"), 2.0);
    let start = unix_now() + 10;
    let c = version(restaurant, "c-later", "tonight", (start, start + 3600), 1);
    f.produce("1", c.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));
    // Unsubscribed a few seconds before the start; the cache still lists the client.
    f.db.execute(
        "DELETE FROM subscribers_restaurants WHERE client_id = $1",
        &[&both[1]],
    )
    .await
    .unwrap();
    assert_eq!(service.metric("campaign_notifier_cache_pairs"), 2.0);
    wait_campaign(&f, "c-later", 1, Duration::from_secs(30), || {
        service.log_text()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = once_each(&["c-later"], &both[..1]);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_the_change_feed_missed_is_notified_at_the_next_reload() {
    let f = Fixture::new("safetynet", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000009";
    let first = clients("net", 1);
    subscribe_all(&f, restaurant, &first).await;
    let service = Service::start(&f, "");
    let now = unix_now();
    let c = version(restaurant, "c-net", "all day", (now - 60, now + 3600), 1);
    f.produce("1", c.as_bytes()).await;
    wait_campaign(&f, "c-net", 1, Duration::from_secs(30), || {
        service.log_text()
    })
    .await;
    // A row whose id is below the feed's position, as a transaction that took its id early and
    // committed late would leave.
    f.db.execute(
        "INSERT INTO subscribers_restaurants (id, restaurant_id, client_id) VALUES (-1, $1, 'missed')",
        &[&restaurant],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(feedback_count(&f).await, 1, "the feed does not see it");
    service.signal("HUP");
    let mut everyone = first.clone();
    everyone.push("missed".to_string());
    wait_campaign(&f, "c-net", 2, Duration::from_secs(20), || {
        service.log_text()
    })
    .await;
    let expected = once_each(&["c-net"], &everyone);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    drop(service);
    f.cleanup().await;
}

/// The recorder's read of the kept versions is prepared once per connection and, after a few
/// executions, runs a generic plan. Made while the table was still empty (a new deployment, or
/// any benchmark), a plan that hashes the keys and scans the table would read every kept
/// campaign for each group of arrivals as the table grows (at fan-out 1 that made Postgres the
/// pipeline's bottleneck). The statement must go by the primary key whatever the table held
/// when it was planned.
#[actix_rt::test]
async fn the_kept_versions_are_read_by_key_even_by_a_plan_made_on_an_empty_table() {
    let f = Fixture::new("keptplan", 1).await;
    let statement = campaign_actors::lifecycle::store::kept_statement();
    let plan = f
        .generic_plan("kept", &statement, "ARRAY['r'], ARRAY['c']")
        .await;
    assert!(
        !plan.contains("Seq Scan on campaign_notifier_campaigns"),
        "the kept versions are read by scanning the table:\n{plan}"
    );
    assert!(
        plan.contains("campaign_notifier_campaigns_pkey"),
        "the kept versions are not read through the primary key:\n{plan}"
    );
    f.cleanup().await;
}

/// A producer that does not key by campaign and keeps `datetime_created` as the creation time
/// when it edits or cancels: v1 lands at offset 500 of partition 0, the edit and the cancellation
/// a moment later at offsets 0 and 1 of partition 1. The later message is the newer version, so
/// the cancelled campaign notifies nobody and the edited one goes out with its new text.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_and_a_cancellation_sent_to_another_partition_win_over_an_earlier_version_at_a_higher_offset(
) {
    let f = Fixture::new("xpartition", 2).await;
    let restaurant = "5c000000-0000-0000-0000-000000000021";
    let subscribers = clients("xp", 10);
    subscribe_all(&f, restaurant, &subscribers).await;
    let service = Service::start(&f, "");
    let now = unix_now();
    // Other campaigns ahead of v1 on partition 0 (of a restaurant nobody follows).
    for i in 0..500 {
        let other = version(
            "5c000000-0000-0000-0000-0000000000ff",
            &format!("c-other-{i}"),
            "x",
            (now - 60, now + 3600),
            1,
        );
        f.produce_to(0, &format!("o{i}"), other.as_bytes()).await;
    }
    let window = (now + 8, now + 3600);
    let created = 1_659_131_516;
    f.produce_to(
        0,
        "v1-cancel",
        version(restaurant, "c-cancelled", "soon", window, created).as_bytes(),
    )
    .await;
    f.produce_to(
        0,
        "v1-edit",
        version(restaurant, "c-edited", "old text", window, created).as_bytes(),
    )
    .await;
    // A moment later, the same creation time, on the other partition.
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.produce_to(
        1,
        "cancel",
        version(
            restaurant,
            "c-cancelled",
            "soon",
            (now - 120, now - 60),
            created,
        )
        .as_bytes(),
    )
    .await;
    f.produce_to(
        1,
        "edit",
        version(restaurant, "c-edited", "new text", window, created).as_bytes(),
    )
    .await;
    service.wait_processed(504, Duration::from_secs(60));
    let expected = once_each(&["c-edited"], &subscribers);
    wait_both_sinks(&f, 10, Duration::from_secs(40), || service.log_text()).await;
    // Time for a wrongly fired cancellation to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        state_of(&f, "c-cancelled").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    let texts: BTreeMap<String, usize> =
        f.read_output()
            .iter()
            .fold(BTreeMap::new(), |mut m, (_, v)| {
                *m.entry(v["adv_campaign_content"].as_str().unwrap().to_string())
                    .or_default() += 1;
                m
            });
    assert_eq!(texts, BTreeMap::from([("new text".to_string(), 10)]));
    drop(service);
    f.cleanup().await;
}

/// The store replaces a version only by a newer one, whichever instance writes, and a campaign
/// being fired or fired never goes back to scheduled: what two instances that decided on the same
/// kept version write, in either order, leaves the newer one.
#[actix_rt::test]
async fn the_store_replaces_a_version_only_by_a_newer_one_and_never_unfires_a_campaign() {
    use campaign_actors::campaign::Campaign;
    use campaign_actors::lifecycle::rules::State;
    use campaign_actors::lifecycle::store::{self, Arrival};
    use campaign_actors::notification::SourceRef;

    let f = Fixture::new("storecas", 1).await;
    let arrival = |text: &str, partition: i32, offset: i64, ts: i64| Arrival {
        campaign: Campaign {
            restaurant_id: "r".into(),
            adv_campaign_id: "c".into(),
            adv_campaign_content: text.into(),
            adv_campaign_owner: "o".into(),
            adv_campaign_owner_contact: "o@r".into(),
            adv_campaign_datetime_start: 100,
            adv_campaign_datetime_end: 200,
            datetime_created: 10,
        },
        source: SourceRef {
            topic: "in".into(),
            partition,
            offset,
            timestamp_ms: Some(ts),
        },
        key: None,
        payload: b"{}".to_vec(),
    };
    let other = connect(&f.db_url).await;
    let prepared = store::Prepared::new(&f.db, &other).await.unwrap();
    let newer = arrival("newer", 1, 3, 2_000);
    let older = arrival("older", 0, 500, 1_000);
    store::store(&other, &prepared, &[(&newer, State::Scheduled)])
        .await
        .unwrap();
    // The other instance, which decided on the empty table, writes the older version after.
    store::store(&other, &prepared, &[(&older, State::Scheduled)])
        .await
        .unwrap();
    assert_eq!(
        content_and_state(&f).await,
        ("newer".into(), "scheduled".into())
    );
    // Claimed and being fired: a still newer version stored as scheduled leaves it firing.
    f.db.execute(
        "UPDATE campaign_notifier_campaigns SET state = 'firing', owner = 7",
        &[],
    )
    .await
    .unwrap();
    let newest = arrival("newest", 0, 501, 3_000);
    store::store(&other, &prepared, &[(&newest, State::Scheduled)])
        .await
        .unwrap();
    store::store(&other, &prepared, &[(&newest, State::Cancelled)])
        .await
        .unwrap();
    assert_eq!(
        content_and_state(&f).await,
        ("newer".into(), "firing".into())
    );
    // A newer end of a fired campaign is stored.
    store::store(&other, &prepared, &[(&newest, State::Active)])
        .await
        .unwrap();
    assert_eq!(
        content_and_state(&f).await,
        ("newest".into(), "active".into())
    );
    // After a campaign ended unsent, any version is a new campaign.
    f.db.execute(
        "UPDATE campaign_notifier_campaigns SET state = 'expired'",
        &[],
    )
    .await
    .unwrap();
    store::store(&other, &prepared, &[(&older, State::Scheduled)])
        .await
        .unwrap();
    assert_eq!(
        content_and_state(&f).await,
        ("older".into(), "scheduled".into())
    );
    f.cleanup().await;
}

async fn content_and_state(f: &Fixture) -> (String, String) {
    let row =
        f.db.query_one(
            "SELECT adv_campaign_content, state FROM campaign_notifier_campaigns",
            &[],
        )
        .await
        .expect("the campaign's row");
    (row.get(0), row.get(1))
}

/// The wall-clock instant (unix seconds, on this host) at which the first notification of each of
/// `campaigns` is in Postgres, polled every 50 ms until all have one or `timeout` passes.
async fn first_seen(f: &Fixture, campaigns: &[&str], timeout: Duration) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + timeout;
    let mut seen = BTreeMap::new();
    while seen.len() < campaigns.len() && Instant::now() < deadline {
        for campaign in campaigns {
            if seen.contains_key(*campaign) {
                continue;
            }
            let rows: i64 =
                f.db.query_one(
                    "SELECT count(*) FROM subscribers_feedback WHERE adv_campaign_id = $1",
                    &[campaign],
                )
                .await
                .expect("count rows")
                .get(0);
            if rows > 0 {
                seen.insert(campaign.to_string(), unix_now_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// An instance whose host's clock runs 30 s fast: it keeps Postgres' time, so a campaign that
/// arrives 10 s before its start is not delivered on arrival, and one scheduled 40 s ahead is not
/// claimed 30 s early; each goes out at its start, and the notifications are stamped with
/// Postgres' time.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_whose_clock_runs_fast_fires_each_campaign_at_its_start_by_postgres_clock() {
    const SKEW_SECS: i64 = 30;
    let f = Fixture::new("fastclock", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000022";
    let subscribers = clients("fast", 5);
    subscribe_all(&f, restaurant, &subscribers).await;
    let mut service = Service::spawn_with_skewed_clock(&f, "", 0, SKEW_SECS);
    service.wait_ready();
    let now = unix_now();
    let soon = now + 10;
    let later = now + 40;
    f.produce(
        "soon",
        version(restaurant, "c-soon", "soon", (soon, soon + 3600), 1).as_bytes(),
    )
    .await;
    f.produce(
        "later",
        version(restaurant, "c-later", "later", (later, later + 3600), 1).as_bytes(),
    )
    .await;
    let seen = first_seen(&f, &["c-soon", "c-later"], Duration::from_secs(60)).await;
    let at = |c: &str| {
        *seen
            .get(c)
            .unwrap_or_else(|| panic!("{c} never fired:\n{}", service.log_text()))
    };
    for (campaign, start) in [("c-soon", soon), ("c-later", later)] {
        let early = start as f64 - at(campaign);
        assert!(
            early <= 0.0,
            "{campaign} went out {early:.1} s before its start:\n{}",
            service.log_text()
        );
        assert!(
            -early < 10.0,
            "{campaign} went out {:.1} s after its start",
            -early
        );
    }
    let log = service.log_text();
    assert!(
        log.contains("clock is 30.0 s ahead of Postgres'"),
        "the skew is not reported:\n{log}"
    );
    assert!((service.metric("campaign_notifier_clock_offset_seconds") + 30.0).abs() < 1.0);
    wait_both_sinks(&f, 10, Duration::from_secs(30), || service.log_text()).await;
    let expected = once_each(&["c-soon", "c-later"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    for (_, message) in f.read_output() {
        let trigger = message["trigger_datetime_created"].as_i64().unwrap();
        let start = message["adv_campaign_datetime_start"].as_i64().unwrap();
        assert!(
            (start..start + 10).contains(&trigger),
            "stamped {trigger}, started {start}: {message}"
        );
    }
    drop(service);
    f.cleanup().await;
}

/// No reload in these tests' time: what the change feed alone does.
const NO_RELOAD: &str = "[cache]\nrefresh_interval_secs = 3600\n";

/// Subscribes `clients` to `restaurant`, starts the service with no reload in the test's time,
/// and waits until `campaign`, active all day, has reached them in both sinks.
async fn start_with_an_active_campaign(
    f: &Fixture,
    restaurant: &str,
    clients: &[String],
    campaign: &str,
) -> Service {
    subscribe_all(f, restaurant, clients).await;
    let service = Service::start(f, NO_RELOAD);
    let now = unix_now();
    let c = version(restaurant, campaign, "all day", (now - 60, now + 3600), 1);
    f.produce("1", c.as_bytes()).await;
    wait_campaign(f, campaign, clients.len(), Duration::from_secs(30), || {
        service.log_text()
    })
    .await;
    service
}

/// A subscription whose id was taken by a transaction that commits after a later one was
/// followed (serial ids commit out of order) is followed too, within seconds, not at the next
/// reload.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_committed_after_a_later_one_was_followed_is_notified_within_seconds() {
    let f = Fixture::new("feedorder", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000023";
    let first = clients("order", 1);
    let service = start_with_an_active_campaign(&f, restaurant, &first, "c-order").await;
    // The slow transaction takes its id first and commits last.
    let slow = connect(&f.db_url).await;
    slow.batch_execute("BEGIN").await.unwrap();
    slow.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, 'slow')",
        &[&restaurant],
    )
    .await
    .unwrap();
    subscribe_all(&f, restaurant, &["quick".to_string()]).await;
    wait_campaign(&f, "c-order", 2, Duration::from_secs(10), || {
        service.log_text()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    slow.batch_execute("COMMIT").await.unwrap();
    let took = wait_campaign(&f, "c-order", 3, Duration::from_secs(10), || {
        service.log_text()
    })
    .await;
    println!("committed late -> both sinks: {:.3} s", took.as_secs_f64());
    let mut everyone = first.clone();
    everyone.extend(["quick".to_string(), "slow".to_string()]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = once_each(&["c-order"], &everyone);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    drop(service);
    f.cleanup().await;
}

/// `TRUNCATE ... RESTART IDENTITY` and a refill: the ids start again below the feed's position.
/// The feed sees that the table was truncated and follows it again from its first row: a new
/// client among the refilled rows is notified within seconds, those notified before are not
/// notified again, and later subscriptions are followed as before.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_table_is_truncated_and_refilled_the_feed_follows_the_new_rows() {
    let f = Fixture::new("feedtrunc", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000024";
    let before = clients("trunc", 3);
    let service = start_with_an_active_campaign(&f, restaurant, &before, "c-trunc").await;
    // Followed once, so that the feed's position is past the first rows.
    subscribe_all(&f, restaurant, &["extra".to_string()]).await;
    wait_campaign(&f, "c-trunc", 4, Duration::from_secs(10), || {
        service.log_text()
    })
    .await;
    f.db.batch_execute("TRUNCATE subscribers_restaurants RESTART IDENTITY")
        .await
        .unwrap();
    // Fewer rows than before, the new client first: every id is at or below the old position.
    let refill = [
        "refilled-new".to_string(),
        before[0].clone(),
        before[1].clone(),
    ];
    subscribe_all(&f, restaurant, &refill).await;
    let mut everyone = before.clone();
    everyone.extend(["extra".to_string(), "refilled-new".to_string()]);
    let took = wait_campaign(&f, "c-trunc", 5, Duration::from_secs(10), || {
        service.log_text()
    })
    .await;
    println!(
        "truncated and refilled -> the new client in both sinks: {:.3} s",
        took.as_secs_f64()
    );
    subscribe_all(&f, restaurant, &["after".to_string()]).await;
    everyone.push("after".to_string());
    wait_campaign(&f, "c-trunc", 6, Duration::from_secs(10), || {
        service.log_text()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = once_each(&["c-trunc"], &everyone);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    let log = service.log_text();
    assert!(log.contains("truncated"), "the reset is not logged:\n{log}");
    drop(service);
    f.cleanup().await;
}

/// What the table keeps does not grow with how far ahead campaigns end: a campaign fired long
/// ago (its end in 2054, as the brief's sample) is forgotten once `lifecycle.retain_days` passed
/// since it last changed, while one fired recently and one still scheduled stay; a cancelled
/// campaign, which never fires, keeps no message.
#[tokio::test(flavor = "multi_thread")]
async fn campaigns_nothing_needs_are_forgotten_whatever_their_end_and_cancelled_ones_keep_no_message(
) {
    let f = Fixture::new("retain", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000025";
    let far = 2_659_207_116_i64;
    for (campaign, state, age_days) in [
        ("c-fired-long-ago", "active", 31),
        ("c-fired-lately", "active", 29),
        ("c-waiting", "scheduled", 40),
    ] {
        let start = if state == "scheduled" {
            far - 10
        } else {
            1_659_203_516
        };
        f.db.execute(
            "INSERT INTO campaign_notifier_campaigns (restaurant_id, adv_campaign_id,
                 adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact,
                 adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created,
                 source_topic, source_partition, source_offset, message, state, updated_at)
             VALUES ($1, $2, 'x', 'o', 'o@r', $3, $4, 1, 'in', 0, 0, 'payload', $5,
                     now() - make_interval(days => $6))",
            &[&restaurant, &campaign, &start, &far, &state, &age_days],
        )
        .await
        .expect("a campaign on record");
    }
    let service = Service::start(&f, "");
    let now = unix_now();
    f.produce(
        "v1",
        version(
            restaurant,
            "c-cancelled",
            "soon",
            (now + 600, now + 3600),
            10,
        )
        .as_bytes(),
    )
    .await;
    f.produce(
        "cancel",
        version(restaurant, "c-cancelled", "soon", (now - 120, now - 60), 11).as_bytes(),
    )
    .await;
    service.wait_processed(2, Duration::from_secs(30));
    let kept = || async {
        let rows =
            f.db.query(
                "SELECT adv_campaign_id, state, octet_length(message)::int8
                 FROM campaign_notifier_campaigns ORDER BY adv_campaign_id",
                &[],
            )
            .await
            .expect("the campaigns on record");
        rows.iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2),
                )
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let expected = vec![
        ("c-cancelled".to_string(), "cancelled".to_string(), 0),
        ("c-fired-lately".to_string(), "active".to_string(), 7),
        ("c-waiting".to_string(), "scheduled".to_string(), 7),
    ];
    loop {
        let now_kept = kept().await;
        if now_kept == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept {now_kept:?}, expected {expected:?}:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(service);
    f.cleanup().await;
}

/// A lunchtime burst: 200 campaigns of 500 subscribers each start in the same second, with room
/// for 5 000 notifications in flight. Each instance claims only what its budget can take (ten
/// campaigns, and one beyond), so the campaigns being fired at once stay within the budget, the
/// two instances take the burst in turn, and everything goes out once.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_campaigns_starting_together_is_claimed_within_the_budget_by_both_instances() {
    const CAMPAIGNS: i32 = 200;
    const AUDIENCE: i32 = 500;
    const BUDGET: i64 = 5_000;
    let f = Fixture::new("burst", 2).await;
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'burst-' || r, 'burst-client-' || c
         FROM generate_series(1, $1) r, generate_series(1, $2) c",
        &[&CAMPAIGNS, &AUDIENCE],
    )
    .await
    .expect("subscribe");
    let config = format!("[writers]\nmax_notifications_in_flight = {BUDGET}\n");
    let a = Service::start_numbered(&f, &config, 0);
    let b = Service::start_numbered(&f, &config, 1);
    let start = unix_now() + 8;
    for r in 1..=CAMPAIGNS {
        let restaurant = format!("burst-{r}");
        let c = version(
            &restaurant,
            &format!("c-burst-{r}"),
            "lunch",
            (start, start + 3600),
            1,
        );
        f.produce(&restaurant, c.as_bytes()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let total = i64::from(CAMPAIGNS * AUDIENCE);
    let (mut most_firing, mut most_notifications) = (0, [0.0_f64; 2]);
    loop {
        let row =
            f.db.query_one(
                "SELECT count(*) FILTER (WHERE state = 'firing'),
                        count(*) FILTER (WHERE state = 'active')
                 FROM campaign_notifier_campaigns",
                &[],
            )
            .await
            .expect("count the states");
        let (firing, active): (i64, i64) = (row.get(0), row.get(1));
        most_firing = most_firing.max(firing);
        for (i, s) in [&a, &b].into_iter().enumerate() {
            most_notifications[i] =
                most_notifications[i].max(s.metric("campaign_notifier_notifications_firing"));
        }
        if active == i64::from(CAMPAIGNS) && feedback_count(&f).await >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{active} of {CAMPAIGNS} fired after 180 s:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "most campaigns being fired at once: {most_firing}; most notifications claimed by each \
         instance: {most_notifications:?}"
    );
    // Each instance fires at most the budget's worth (ten campaigns) and one beyond it; a
    // campaign confirmed stays `firing` in the table until its state is settled, a moment later,
    // hence the room for a third.
    let bound = 3 * (BUDGET / i64::from(AUDIENCE) + 1);
    assert!(
        most_firing <= bound,
        "{most_firing} campaigns were being fired at once; the budget allows {bound}"
    );
    for most in most_notifications {
        assert!(
            most > 0.0 && most <= (BUDGET + i64::from(AUDIENCE)) as f64,
            "{most}"
        );
    }
    let fired = |s: &Service| {
        s.metric_with(
            "campaign_notifier_lifecycle_events_total",
            "event=\"fired\"",
        )
    };
    let (by_a, by_b) = (fired(&a), fired(&b));
    println!("fired by the first instance: {by_a}, by the second: {by_b}");
    assert_eq!(by_a + by_b, f64::from(CAMPAIGNS));
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "one instance took the whole burst"
    );
    wait_both_sinks(&f, total, Duration::from_secs(60), || a.log_text()).await;
    assert_each_once_in_both_sinks(&f, total).await;
    drop((a, b));
    f.cleanup().await;
}

/// A scheduled campaign whose audience is larger than the budget is read from Postgres a slice
/// at a time as it fires, each slice confirmed before the next is read (today's version read all
/// 12 500 subscribers in one statement and held them until the campaign was done), and still
/// notifies each subscriber once in both sinks; small campaigns claimed with it are read together.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_audience_is_read_and_fired_a_slice_at_a_time_and_notified_once() {
    const LARGE: i32 = 12_500;
    const BUDGET: i64 = 1_000;
    let f = Fixture::new("slices", 1).await;
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT 'slices-large', 'slices-client-' || c FROM generate_series(1, $1) c",
        &[&LARGE],
    )
    .await
    .expect("subscribe");
    let small = clients("slices-small", 20);
    subscribe_all(&f, "slices-small", &small).await;
    let config = format!("[writers]\nmax_notifications_in_flight = {BUDGET}\n");
    let service = Service::start(&f, &config);
    let start = unix_now() + 6;
    for (restaurant, id) in [("slices-large", "c-large"), ("slices-small", "c-small")] {
        let c = version(restaurant, id, "lunch", (start, start + 3600), 1);
        f.produce(restaurant, c.as_bytes()).await;
    }
    let total = i64::from(LARGE) + small.len() as i64;
    wait_both_sinks(&f, total, Duration::from_secs(120), || service.log_text()).await;
    for id in ["c-large", "c-small"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while state_of(&f, id).await.as_deref() != Some("active") {
            assert!(
                Instant::now() < deadline,
                "{id}: {:?}",
                state_of(&f, id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let reads = service.metric("campaign_notifier_fire_audience_read_subscribers_count");
    let read = service.metric("campaign_notifier_fire_audience_read_subscribers_sum");
    let within = service.metric_with(
        "campaign_notifier_fire_audience_read_subscribers_bucket",
        "le=\"1000\"",
    );
    println!("{reads} reads of {read} subscribers in all, {within} of at most {BUDGET}");
    assert_eq!(read, total as f64, "every subscriber read once");
    let slices = (i64::from(LARGE) + BUDGET - 1) / BUDGET;
    assert!(
        reads >= slices as f64 + 1.0,
        "{reads} reads: the large audience was not read in slices of {BUDGET}"
    );
    assert_eq!(within, reads, "a read was larger than the budget");
    assert_each_once_in_both_sinks(&f, total).await;
    let fired = service.metric_with(
        "campaign_notifier_lifecycle_events_total",
        "event=\"fired\"",
    );
    assert_eq!(fired, 2.0);
    drop(service);
    f.cleanup().await;
}
