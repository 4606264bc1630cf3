//! The change feed of subscriptions: a client who subscribes while a campaign is active is
//! notified within seconds (or once the service is back, if it was down), one who unsubscribed
//! is not; what the feed misses is caught at the next reload; subscriptions committed out of id
//! order and a truncated and refilled table are followed.

use std::time::Duration;

use super::*;

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
    produce_one_active_and_one_over(&f, open, quiet).await;
    service.wait_processed(2, Duration::from_secs(30));
    wait_campaign(&f, "c-open", 2, Duration::from_secs(20), || {
        service.log_text()
    })
    .await;

    // Subscribed while it is active: notified, within seconds, once.
    let mut everyone = early.clone();
    let delays = subscribe_five_one_at_a_time(&f, open, &mut everyone, &service).await;
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

/// `c-open` of restaurant `open`, active for the next hour, and `c-over` of `quiet`, over.
async fn produce_one_active_and_one_over(f: &Fixture, open: &str, quiet: &str) {
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
}

/// Subscribes five clients to `restaurant` one after the other, each once the one before was
/// notified of `c-open` (within 10 s); adds them to `everyone`; returns each one's delay (s).
async fn subscribe_five_one_at_a_time(
    f: &Fixture,
    restaurant: &str,
    everyone: &mut Vec<String>,
    service: &Service,
) -> Vec<f64> {
    let mut delays = Vec::new();
    for i in 0..5 {
        let late = format!("late-client-{i}");
        subscribe_all(f, restaurant, std::slice::from_ref(&late)).await;
        everyone.push(late);
        let took = wait_campaign(
            f,
            "c-open",
            everyone.len(),
            Duration::from_secs(10),
            || service.log_text(),
        )
        .await;
        delays.push(took.as_secs_f64());
    }
    delays
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
    assert_eq!(f.feedback_count().await, 1, "the feed does not see it");
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

