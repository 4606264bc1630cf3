//! Recall: a newer version of a campaign with its end in the past, arriving while the campaign
//! goes out, stops it; both sinks keep the same set of what went out, across a `kill -9` too.

use super::*;

/// Subscribers of the campaign recalled: enough that it is still going out when the recall comes
/// (a budget of 1 000 in flight keeps it at a few tens of thousands a second).
const AUDIENCE: i32 = 150_000;
const CONFIG: &str = "[writers]\nmax_notifications_in_flight = 1000\nkafka_message_timeout_ms = 5000\n[ledger]\ntakeover_after_secs = 8\n";

async fn subscribe_audience(f: &Fixture, restaurant: &str) {
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT $1, 'recall-client-' || c FROM generate_series(1, $2) c",
        &[&restaurant, &AUDIENCE],
    )
    .await
    .expect("subscribe");
}

/// Waits until Postgres holds at least `n` notifications.
async fn wait_rows(f: &Fixture, n: i64, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.feedback_count().await < n {
        assert!(Instant::now() < deadline, "{}", log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the campaign's row says it is recalled.
async fn wait_recalled(f: &Fixture, campaign: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recalled = f
            .db
            .query_opt(
                "SELECT 1 FROM campaign_notifier_campaigns
                 WHERE adv_campaign_id = $1 AND recalled_at IS NOT NULL",
                &[&campaign],
            )
            .await
            .expect("recalled_at");
        if recalled.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "{}", log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no outbox mark is left (the withdrawals and recovery are done).
async fn wait_no_marks(f: &Fixture, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.outbox_marks().await > 0 {
        assert!(Instant::now() < deadline, "{}", log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From a second after the recall was read, nothing more of it reaches Kafka, and the two sinks
/// end with the same set, which is not the whole audience. Returns how many went out.
async fn assert_stopped_and_equal(f: &Fixture, log: impl Fn() -> String) -> usize {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a_second_after = f.output_count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    wait_no_marks(f, &log).await;
    let messages = output_pairs(f);
    println!(
        "{a_second_after} messages a second after the recall was read, {} at the end",
        messages.len()
    );
    assert_eq!(
        f.output_count(),
        a_second_after,
        "notifications reached Kafka more than a second after the recall was read"
    );
    assert!(
        messages.values().all(|&n| n == 1),
        "a notification went out twice"
    );
    assert_eq!(row_pairs(f).await, messages, "the sinks disagree");
    assert!(
        messages.len() < AUDIENCE as usize,
        "the whole audience was notified: the recall stopped nothing"
    );
    messages.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recall_on_another_partition_stops_a_campaign_going_out_and_both_sinks_agree() {
    let f = Fixture::new("recall", 2).await;
    let restaurant = "rc000000-0000-0000-0000-000000000001";
    subscribe_audience(&f, restaurant).await;
    let service = Service::start(&f, CONFIG);
    let now = unix_now();
    let original = version(restaurant, "c-recall", "lunch", (now - 60, now + 3600), 1);
    f.produce_to(0, "1", original.as_bytes()).await;
    wait_rows(&f, 5_000, || service.log_text()).await;

    // The recall: the same campaign, created later, its end in the past, on the other partition.
    let recall = version(restaurant, "c-recall", "lunch", (now - 60, now - 30), 2);
    f.produce_to(1, "2", recall.as_bytes()).await;
    wait_recalled(&f, "c-recall", || service.log_text()).await;
    let went_out = assert_stopped_and_equal(&f, || service.log_text()).await;

    let recalled = service.metric("campaign_notifier_notifications_recalled_total");
    println!("{went_out} went out, {recalled} counted as recalled");
    assert!(recalled > 0.0, "nothing counted as recalled");
    assert_eq!(outcome(&service, "recalled"), 1.0, "the recall's outcome");
    assert_eq!(event(&service, "recalled"), 1.0);
    // The original read again changes nothing.
    f.produce_to(0, "1", original.as_bytes()).await;
    service.wait_processed(3, Duration::from_secs(30));
    assert_eq!(outcome(&service, "superseded"), 1.0);
    assert_eq!(output_pairs(&f).len(), went_out);
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recall_read_while_the_instance_sending_the_campaign_is_dead_holds_after_the_takeover() {
    let f = Fixture::new("recallkill", 2).await;
    let restaurant = "rc000000-0000-0000-0000-000000000002";
    subscribe_audience(&f, restaurant).await;
    let mut first = Service::start_numbered(&f, CONFIG, 0);
    let now = unix_now();
    let original = version(restaurant, "c-recall", "lunch", (now - 60, now + 3600), 1);
    f.produce_to(0, "1", original.as_bytes()).await;
    wait_rows(&f, 5_000, || first.log_text()).await;
    first.kill_hard();
    let (rows, messages) = (f.feedback_count().await, f.output_count());
    println!("killed with {rows} rows and {messages} messages written");
    assert!(f.outbox_marks().await > 0, "nothing was in flight at the kill");

    // Recalled while nobody sends it; the next instance finishes the dead one's marks and reads
    // the original again (its offset was not committed).
    let recall = version(restaurant, "c-recall", "lunch", (now - 60, now - 30), 2);
    f.produce_to(1, "2", recall.as_bytes()).await;
    let second = Service::start_numbered(&f, CONFIG, 1);
    wait_recalled(&f, "c-recall", || second.log_text()).await;
    second.wait_processed(2, Duration::from_secs(60));
    let went_out = assert_stopped_and_equal(&f, || second.log_text()).await;
    println!("{went_out} went out in all");
    drop(second);
    f.cleanup().await;
}
