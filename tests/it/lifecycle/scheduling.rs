//! Scheduled campaigns fired at their start: once in both sinks, across a `kill -9` while they
//! fire, by two instances at once, with the broker down when one ends, and by an instance whose
//! host clock runs fast (Postgres' clock decides).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

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
    assert_eq!(outcome(&service, "scheduled"), 1.0);
    assert_eq!(state_of(&f, "c-lunch").await.as_deref(), Some("scheduled"));
    let committed = Instant::now() + Duration::from_secs(10);
    while f.input_commits() != [(1, 1)] {
        assert!(Instant::now() < committed, "{:?}", f.input_commits());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sleep_until_unix(start as f64 - 0.3).await;
    assert_eq!((f.feedback_count().await, f.output_count()), (0, 0));

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
    assert_eq!(event(&service, "fired"), 1.0);
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
        let rows = f.feedback_count().await;
        if rows > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", first.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill_hard();
    let (rows, messages) = (f.feedback_count().await, f.output_count());
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
    assert_eq!(event(&second, "taken_over"), 1.0);
    drop(second);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_fire_each_of_200_campaigns_due_in_the_same_second_once() {
    let f = Fixture::new("sched200", 4).await;
    let audiences = subscribe_five_each_to_200_restaurants(&f).await;
    let a = Service::start_numbered(&f, "", 0);
    let b = Service::start_numbered(&f, "", 1);
    let start = unix_now() + 15;
    for (i, (r, _)) in audiences.iter().enumerate() {
        let c = version(r, &format!("c-{i:03}"), "noon", (start, start + 3600), 1);
        f.produce(&i.to_string(), c.as_bytes()).await;
    }
    wait_scheduled_by_either(&a, &b, 200.0).await;
    assert!(unix_now() < start, "all were scheduled before their start");

    wait_both_sinks(&f, 1000, Duration::from_secs(30), || a.log_text()).await;
    let delay = unix_now_f64() - start as f64;
    println!("200 campaigns x 5 subscribers in both sinks {delay:.3} s after their start");
    let (by_a, by_b) = (event(&a, "fired"), event(&b, "fired"));
    println!("fired by the first {by_a}, by the second {by_b}");
    assert_eq!(by_a + by_b, 200.0);
    let mut expected = BTreeMap::new();
    for (i, (_, subscribers)) in audiences.iter().enumerate() {
        expected.extend(once_each(&[&format!("c-{i:03}")], subscribers));
    }
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    drop((a, b));
    f.cleanup().await;
}

/// 200 restaurants of five subscribers each; returns each restaurant with its subscribers.
async fn subscribe_five_each_to_200_restaurants(f: &Fixture) -> Vec<(String, Vec<String>)> {
    let mut audiences = Vec::new();
    for i in 0..200 {
        let r = format!("5c000000-0000-0000-0001-{i:012}");
        let subscribers = clients(&r, 5);
        subscribe_all(f, &r, &subscribers).await;
        audiences.push((r, subscribers));
    }
    audiences
}

/// Waits up to 60 s until the two instances together have scheduled `n` campaigns.
async fn wait_scheduled_by_either(a: &Service, b: &Service, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scheduled = outcome(a, "scheduled") + outcome(b, "scheduled");
        if scheduled >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{scheduled} scheduled:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let long_clients = clients("long", 300);
    subscribe_all(&f, short, &clients("short", 300)).await;
    subscribe_all(&f, long, &long_clients).await;
    let service = Service::start(&f, "");
    let start = unix_now() + 10;
    let end = start + 4;
    let brief = version(short, "c-brief", "4 seconds only", (start, end), 1);
    let lasting = version(long, "c-lasting", "all day", (start, start + 3600), 1);
    f.produce("1", brief.as_bytes()).await;
    f.produce("2", lasting.as_bytes()).await;
    service.wait_processed(2, Duration::from_secs(30));

    broker_away_from_before_the_start_to_after_the_end(&f, &mut broker, &service, start, end)
        .await;
    wait_settled_with(&f, 300, &service).await;
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

/// The broker goes away just before both campaigns start (Postgres gets both audiences, 600
/// rows, while it is away), and comes back after the short one ended.
async fn broker_away_from_before_the_start_to_after_the_end(
    f: &Fixture,
    broker: &mut OwnBroker,
    service: &Service,
    start: i64,
    end: i64,
) {
    sleep_until_unix(start as f64 - 1.0).await;
    broker.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while f.feedback_count().await < 600 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sleep_until_unix(end as f64 + 3.0).await;
    broker.resume();
}

/// Waits up to 120 s until both sinks hold exactly `n` notifications and no outbox mark is left.
async fn wait_settled_with(f: &Fixture, n: i64, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (rows, messages, marks) = (
            f.feedback_count().await,
            f.output_count(),
            f.outbox_marks().await,
        );
        if rows == n && messages == n && marks == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows, {messages} messages, {marks} marks:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    assert_each_went_out_at_its_start(&seen, &[("c-soon", soon), ("c-later", later)], &service);
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
            if f.rows_of(campaign).await > 0 {
                seen.insert(campaign.to_string(), unix_now_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// Each campaign of `starts` was first seen in Postgres at its start or less than 10 s after it.
fn assert_each_went_out_at_its_start(
    seen: &BTreeMap<String, f64>,
    starts: &[(&str, i64)],
    service: &Service,
) {
    let at = |c: &str| {
        *seen
            .get(c)
            .unwrap_or_else(|| panic!("{c} never fired:\n{}", service.log_text()))
    };
    for &(campaign, start) in starts {
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
}
