//! Quiet hours: an active campaign that arrives inside them goes out once they end, in both sinks
//! and once; one whose end comes first never goes out; held campaigns survive a `kill -9`, and
//! `campaign status` says until when they are held; a client who subscribes inside them is
//! notified of an active campaign once they end; a campaign going out when they begin stops at
//! its next slice and goes on after them.
//!
//! The window is set, in UTC, to end at the start of a minute 25 to 45 seconds away (the test
//! waits for the clock to get there), so that the service starts and the campaigns arrive inside
//! it; or, for a client who subscribes inside it, to last the minute after a campaign went out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

/// The start of the next minute once it is between `at_least` and `at_least + 20` seconds away
/// (waiting for the clock when it is not so now), as a unix second.
async fn minute_in(at_least: i64) -> i64 {
    assert!((5..=39).contains(&at_least));
    loop {
        let now = unix_now();
        let minute = now - now.rem_euclid(60) + 60;
        let left = minute - now;
        if (at_least..=at_least + 20).contains(&left) {
            return minute;
        }
        let wait = match left > at_least + 20 {
            true => left - (at_least + 20),
            false => left + 60 - (at_least + 20),
        };
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
    }
}

/// The `[limits]` section of quiet hours from unix second `start` to `end`, in UTC.
fn limits(start: i64, end: i64) -> String {
    let hh_mm = |t: i64| {
        let (h, m) = (t.rem_euclid(86_400) / 3_600, t.rem_euclid(3_600) / 60);
        format!("{h:02}:{m:02}")
    };
    let (start, end) = (hh_mm(start), hh_mm(end));
    format!("[limits]\nquiet_hours = \"{start}-{end}\"\ntime_zone = \"UTC\"\n")
}

/// Quiet hours that now is inside and that end at the start of a minute between `at_least` and
/// `at_least + 20` seconds from now: their `[limits]` section and the unix second they end.
async fn quiet_hours_ending_in(at_least: i64) -> (String, i64) {
    let end = minute_in(at_least).await;
    (limits(end - 3_600, end), end)
}

/// Waits until `service` counts `n` held campaigns in `campaign_notifier_campaigns_held`.
fn wait_held_gauge(service: &Service, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while service.metric("campaign_notifier_campaigns_held") != n {
        assert!(Instant::now() < deadline, "{}", service.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nothing in either sink until just before `end`.
async fn assert_nothing_sent_before(f: &Fixture, end: i64, service: &Service) {
    sleep_until_unix(end as f64 - 0.5).await;
    assert_eq!(
        (f.feedback_count().await, f.output_count()),
        (0, 0),
        "sent inside quiet hours:\n{}",
        service.log_text()
    );
}

/// Every output message of `campaign` was created at or after `end`.
fn assert_created_after(f: &Fixture, campaign: &str, end: i64) {
    for (_, message) in f.read_output() {
        if message["adv_campaign_id"] == campaign {
            let trigger = message["trigger_datetime_created"].as_i64().unwrap();
            assert!(trigger >= end, "created at {trigger}, quiet until {end}: {message}");
        }
    }
}

/// `held_until` of `campaign status ID`, run as an operator runs it, with `limits` in its config.
fn held_until(f: &Fixture, limits: &str, id: &str) -> Option<i64> {
    let path = f.dir.join("status.toml");
    std::fs::write(&path, f.config(free_port(), limits)).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["campaign", "status", id, "--config"])
        .arg(&path)
        .output()
        .expect("campaign-notifier");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(status["state"], "scheduled", "{status}");
    status["held_until"].as_i64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_arriving_inside_quiet_hours_goes_out_once_they_end_and_one_ending_first_never() {
    let f = Fixture::new("quiet", 1).await;
    let restaurant = "9e000000-0000-0000-0000-000000000001";
    let subscribers = clients("quiet", 3);
    subscribe_all(&f, restaurant, &subscribers).await;
    let (limits, end) = quiet_hours_ending_in(25).await;
    let service = Service::start(&f, &limits);
    let now = unix_now();
    assert!(now < end - 10, "started too late in the window: {now}, ends {end}");
    let lasting = version(restaurant, "c-night", "late menu", (now - 60, now + 3_600), 1);
    let ending = version(restaurant, "c-ends", "happy hour", (now - 60, end - 5), 1);
    f.produce("1", lasting.as_bytes()).await;
    f.produce("2", ending.as_bytes()).await;
    service.wait_processed(2, Duration::from_secs(20));

    // Held: kept as scheduled, offsets committed, counted, nothing sent.
    assert_eq!(outcome(&service, "held"), 2.0, "{}", service.metrics());
    assert_eq!(state_of(&f, "c-night").await.as_deref(), Some("scheduled"));
    assert_eq!(state_of(&f, "c-ends").await.as_deref(), Some("scheduled"));
    let committed = Instant::now() + Duration::from_secs(10);
    while f.input_commits() != [(2, 2)] {
        assert!(Instant::now() < committed, "{:?}", f.input_commits());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_held_gauge(&service, 2.0);
    assert_nothing_sent_before(&f, end, &service).await;

    // Once they end: the one still active goes out once in both sinks, the other never.
    let took = wait_campaign(&f, "c-night", 3, Duration::from_secs(15), || service.log_text()).await;
    println!("held campaign in both sinks {took:?} after the end of quiet hours was polled for");
    assert_created_after(&f, "c-night", end);
    let settled = Instant::now() + Duration::from_secs(10);
    while state_of(&f, "c-ends").await.as_deref() != Some("expired") {
        assert!(Instant::now() < settled, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(row_pairs(&f).await, once_each(&["c-night"], &subscribers));
    assert_eq!(output_pairs(&f), once_each(&["c-night"], &subscribers));
    assert_eq!(state_of(&f, "c-night").await.as_deref(), Some("active"));
    wait_held_gauge(&service, 0.0);
    let log = service.log_text();
    assert!(log.contains("quiet hours") && log.contains("began"), "{log}");
    assert!(log.contains("ended: held campaigns fire now"), "{log}");
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn held_campaigns_survive_a_kill_9_inside_quiet_hours_and_go_out_once_after() {
    let f = Fixture::new("quietkill", 1).await;
    let restaurant = "9e000000-0000-0000-0000-000000000002";
    let subscribers = clients("quietkill", 50);
    subscribe_all(&f, restaurant, &subscribers).await;
    let (limits, end) = quiet_hours_ending_in(35).await;
    let mut first = Service::start_numbered(&f, &limits, 0);
    let now = unix_now();
    let campaign = version(restaurant, "c-held", "breakfast", (now - 60, now + 3_600), 1);
    f.produce("1", campaign.as_bytes()).await;
    first.wait_processed(1, Duration::from_secs(20));
    assert_eq!(outcome(&first, "held"), 1.0);
    assert_eq!(state_of(&f, "c-held").await.as_deref(), Some("scheduled"));
    assert_eq!(held_until(&f, &limits, "c-held"), Some(end));
    assert_eq!(held_until(&f, "", "c-held"), None, "no quiet hours, nothing held");
    first.kill_hard();

    let second = Service::start_numbered(&f, &limits, 1);
    let restarted = unix_now();
    assert!(
        restarted < end - 2,
        "restarted after quiet hours ended ({restarted}, ended {end}): the test proves nothing"
    );
    assert_nothing_sent_before(&f, end, &second).await;
    wait_campaign(&f, "c-held", 50, Duration::from_secs(15), || second.log_text()).await;
    assert_created_after(&f, "c-held", end);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = once_each(&["c-held"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    assert_eq!(state_of(&f, "c-held").await.as_deref(), Some("active"));
    assert_eq!(event(&second, "fired"), 1.0);
    drop(second);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_who_subscribes_inside_quiet_hours_is_notified_once_they_end() {
    let f = Fixture::new("quietfeed", 1).await;
    let restaurant = "9e000000-0000-0000-0000-000000000003";
    let early = clients("quietfeed", 2);
    subscribe_all(&f, restaurant, &early).await;
    // Quiet for the minute that starts 15 to 35 s from now.
    let start = minute_in(15).await;
    let end = start + 60;
    let service = Service::start(&f, &limits(start, end));
    let now = unix_now();
    let campaign = version(restaurant, "c-day", "all day", (now - 60, now + 3_600), 1);
    f.produce("1", campaign.as_bytes()).await;
    wait_campaign(&f, "c-day", 2, Duration::from_secs(10), || service.log_text()).await;
    assert!(unix_now() < start, "delivered after quiet hours began");

    sleep_until_unix(start as f64 + 1.0).await;
    let late = "quietfeed-late".to_string();
    subscribe_all(&f, restaurant, std::slice::from_ref(&late)).await;
    sleep_until_unix(end as f64 - 0.5).await;
    let late_sent = |pairs: &BTreeMap<(String, String), u32>| {
        pairs.contains_key(&("c-day".to_string(), late.clone()))
    };
    assert!(!late_sent(&row_pairs(&f).await), "{}", service.log_text());
    assert!(!late_sent(&output_pairs(&f)));

    wait_campaign(&f, "c-day", 3, Duration::from_secs(15), || service.log_text()).await;
    let all: Vec<String> = early.iter().cloned().chain([late.clone()]).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(row_pairs(&f).await, once_each(&["c-day"], &all));
    assert_eq!(output_pairs(&f), once_each(&["c-day"], &all));
    for (_, message) in f.read_output() {
        if message["client_id"] == late.as_str() {
            let trigger = message["trigger_datetime_created"].as_i64().unwrap();
            assert!(trigger >= end, "notified at {trigger}, quiet until {end}");
        }
    }
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_going_out_when_quiet_hours_begin_stops_at_its_next_slice_and_ends_after_them() {
    let f = Fixture::new("quietslices", 1).await;
    let restaurant = "9e000000-0000-0000-0000-000000000004";
    let subscribers = clients("quietslices", 200_000);
    subscribe_all(&f, restaurant, &subscribers).await;
    let start = minute_in(12).await;
    let end = start + 60;
    // Slices of 1 000, one at a time: the campaign takes seconds to go out.
    let config = format!(
        "{}[writers]\nmax_notifications_in_flight = 1000\n",
        limits(start, end)
    );
    let service = Service::start(&f, &config);
    sleep_until_unix(start as f64 - 2.5).await;
    let now = unix_now();
    let campaign = version(restaurant, "c-big", "evening", (now - 60, now + 3_600), 1);
    f.produce("1", campaign.as_bytes()).await;

    // Under way when the window begins; what had passed the wait finishes, then nothing more.
    sleep_until_unix(start as f64 + 2.0).await;
    let at_start = (f.feedback_count().await, f.output_count());
    println!("at the start of quiet hours: {at_start:?} of 200000");
    assert!(at_start.0 > 0, "not started before quiet hours:\n{}", service.log_text());
    assert!(at_start.0 < 200_000, "done before quiet hours began");
    assert_eq!(at_start.0, at_start.1, "a slice under way left unfinished");
    sleep_until_unix(end as f64 - 1.0).await;
    assert_eq!((f.feedback_count().await, f.output_count()), at_start);

    // After them, the rest, each once.
    wait_both_sinks(&f, 200_000, Duration::from_secs(60), || service.log_text()).await;
    service.wait_processed(1, Duration::from_secs(30));
    assert_eq!(outcome(&service, "delivered"), 1.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let expected = once_each(&["c-big"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    // What waited for the window's end was created when it went out, after it.
    let before_end: i64 = f
        .db
        .query_one(
            "SELECT count(*) FROM subscribers_feedback WHERE trigger_datetime_created < $1",
            &[&(end as i32)],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(before_end, at_start.0, "a held slice kept its time from before the window");
    let late = f
        .read_output()
        .iter()
        .filter(|(_, v)| v["trigger_datetime_created"].as_i64() >= Some(end))
        .count() as i64;
    assert_eq!(late, 200_000 - at_start.1);
    drop(service);
    f.cleanup().await;
}
