//! Load for the fault tests: restaurants with subscribers, campaigns over them, and the checks
//! that every (campaign, client) pair is in both sinks exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

pub fn clients(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("0c000000-0000-4000-8000-{i:012}"))
        .collect()
}

/// Subscribes `n` clients to `restaurant`; returns their ids.
pub async fn subscribe_clients(f: &Fixture, restaurant: &str, n: usize) -> Vec<String> {
    let subscribers = clients(n);
    let refs: Vec<&str> = subscribers.iter().map(String::as_str).collect();
    f.subscribe(restaurant, &refs).await;
    subscribers
}

/// Every expected (campaign, client) pair exactly once in Postgres and once in the output topic.
pub async fn assert_exactly_once(f: &Fixture, expected: &BTreeMap<(String, String), u32>) {
    assert_eq!(
        &row_pairs(f).await,
        expected,
        "each pair exactly once in Postgres"
    );
    assert_eq!(
        &output_pairs(f),
        expected,
        "each pair exactly once in Kafka"
    );
}

/// Waits until both sinks hold `total` notifications and no outbox mark is left.
pub async fn wait_complete(
    f: &Fixture,
    total: usize,
    timeout: Duration,
    logs: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = f.feedback_rows().await.len();
        let messages = f.output_count() as usize;
        let marks: i64 = f.outbox_marks().await;
        if rows >= total && messages >= total && marks == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows, {messages} messages of {total}, {marks} marks left:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Subscribes `per_restaurant` clients to each of `restaurants` restaurants, then produces
/// `campaigns` campaigns over them; returns the expected (campaign, client) pairs.
pub async fn seed(
    f: &Fixture,
    tag: &str,
    restaurants: usize,
    per_restaurant: usize,
    campaigns: usize,
) -> BTreeMap<(String, String), u32> {
    subscribe_seeded(f, restaurants, per_restaurant).await;
    produce_campaigns(f, tag, restaurants, per_restaurant, campaigns).await
}

/// The subscriptions of [`seed`], alone: `per_restaurant` clients to each of `restaurants`
/// restaurants; returns the clients.
pub async fn subscribe_seeded(f: &Fixture, restaurants: usize, per_restaurant: usize) -> Vec<String> {
    let subscribers = clients(per_restaurant);
    let refs: Vec<&str> = subscribers.iter().map(String::as_str).collect();
    for r in 0..restaurants {
        f.subscribe(&seeded_restaurant(r), &refs).await;
    }
    subscribers
}

pub fn seeded_restaurant(r: usize) -> String {
    format!("74000000-0000-0000-0000-{r:012}")
}

/// The campaigns of [`seed`], alone (for a test that subscribes first and produces later).
pub async fn produce_campaigns(
    f: &Fixture,
    tag: &str,
    restaurants: usize,
    per_restaurant: usize,
    campaigns: usize,
) -> BTreeMap<(String, String), u32> {
    let subscribers = clients(per_restaurant);
    let mut expected = BTreeMap::new();
    for i in 0..campaigns {
        let id = format!("c-{tag}-{i:04}");
        f.produce(
            &i.to_string(),
            active_campaign(&seeded_restaurant(i % restaurants), &id).as_bytes(),
        )
        .await;
        for s in &subscribers {
            expected.insert((id.clone(), s.clone()), 1);
        }
    }
    expected
}

/// A Postgres sink job: campaign `campaign_id` of `restaurant`, active now, to `clients`, its
/// first chunk's token `first_token`.
pub fn pg_job(
    restaurant: &str,
    campaign_id: &str,
    clients: &[&str],
    first_token: i64,
) -> std::sync::Arc<campaign_actors::sinks::pg_writer::PgJob> {
    use campaign_actors::cache::snapshot::SnapshotBuilder;
    use campaign_actors::notification::{NotificationBatch, SourceRef};
    use std::sync::Arc;
    let mut builder = SnapshotBuilder::new();
    for client in clients {
        builder.push(restaurant, client);
    }
    let snapshot = Arc::new(builder.build());
    let entry = snapshot.lookup(restaurant).expect("restaurant in snapshot");
    let now = super::unix_now();
    let campaign = campaign_actors::campaign::Campaign {
        restaurant_id: restaurant.into(),
        adv_campaign_id: campaign_id.into(),
        adv_campaign_content: "first dish free".into(),
        adv_campaign_owner: "Ivanov Ivan Ivanovich".into(),
        adv_campaign_owner_contact: "iiivanov@restaurant.ru".into(),
        adv_campaign_datetime_start: now - 60,
        adv_campaign_datetime_end: now + 60,
        datetime_created: now - 120,
    };
    let source = SourceRef {
        topic: "in".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };
    let batch = NotificationBatch::new(campaign, now, source, snapshot, entry);
    Arc::new(campaign_actors::sinks::pg_writer::PgJob {
        range: 0..batch.len(),
        batch: Arc::new(batch),
        first_token,
        replay: false,
    })
}
