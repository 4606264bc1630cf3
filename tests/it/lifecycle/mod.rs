//! The campaign lifecycle end to end, against the run's Tansu broker and the local Postgres:
//! campaigns published before their start fire at their start (across a `kill -9`, with two
//! instances), newer versions replace or cancel them, a changed campaign notifies nobody again.
//!
//! - [`scheduling`]: scheduled campaigns fired at their start: once, across a `kill -9`, by two
//!   instances, with the broker down at their end, on a host whose clock runs fast.
//! - [`versions`]: newer versions replace or cancel a kept campaign, whatever partition or
//!   offset they come from; the store never un-fires one.
//! - [`feed`]: the change feed of subscriptions: a client who subscribes (or unsubscribes) while
//!   a campaign runs, what the feed misses, serial ids committed out of order, a truncated table.
//! - [`retention`]: what the table of campaigns forgets.
//! - [`bursts`]: many campaigns starting together, and an audience larger than the fire budget.
//! - [`recall`]: a campaign going out stopped by a newer version whose end has passed.
//! - [`quiet`]: quiet hours: what arrives inside them goes out once they end, across a `kill -9`.
//!
//! The helpers below are what these tests share: campaigns of a given version, subscribers by
//! the thousand, the campaign's state and the waits for both sinks.

use std::time::{Duration, Instant};

use crate::common::*;

mod bursts;
mod feed;
mod quiet;
mod recall;
mod retention;
mod scheduling;
mod versions;

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

async fn state_of(f: &Fixture, campaign: &str) -> Option<String> {
    f.db.query_opt(
        "SELECT state FROM campaign_notifier_campaigns WHERE adv_campaign_id = $1",
        &[&campaign],
    )
    .await
    .expect("campaign state")
    .map(|row| row.get(0))
}

/// `campaign_notifier_campaigns_processed_total` with `outcome`.
fn outcome(service: &Service, outcome: &str) -> f64 {
    service.metric_with(
        "campaign_notifier_campaigns_processed_total",
        &format!("outcome=\"{outcome}\""),
    )
}

/// `campaign_notifier_lifecycle_events_total` of `event`.
fn event(service: &Service, event: &str) -> f64 {
    service.metric_with(
        "campaign_notifier_lifecycle_events_total",
        &format!("event=\"{event}\""),
    )
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
        let (rows, messages) = (f.feedback_count().await, f.output_count());
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
