//! The brief's table has no unique key: a client may follow a restaurant through two rows (there
//! when the service loaded the table, or added while it runs). One of them deleted, the client
//! still follows it and is notified; both deleted, it is not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;

const RESTAURANT: &str = "6d000000-0000-0000-0000-00000000000a";

async fn delete_one_row_of(f: &Fixture, client: &str) {
    let deleted = f
        .db
        .execute(
            "DELETE FROM subscribers_restaurants WHERE id = (
                 SELECT min(id) FROM subscribers_restaurants
                 WHERE restaurant_id = $1 AND client_id = $2)",
            &[&RESTAURANT, &client],
        )
        .await
        .expect("delete a row");
    assert_eq!(deleted, 1, "{client}");
}

/// Sends campaign `id` 2 s after the last change, and waits until both sinks hold `want`.
async fn campaign_reaches(
    f: &Fixture,
    service: &Service,
    id: &str,
    processed: u64,
    want: &BTreeMap<(String, String), u32>,
) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let campaign = active_campaign(RESTAURANT, id);
    f.produce(id, campaign.as_bytes()).await;
    service.wait_processed(processed, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.output_count() < want.len() as i64 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(&row_pairs(f).await, want, "Postgres:\n{}", service.log_text());
    assert_eq!(&output_pairs(f), want, "Kafka:\n{}", service.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_following_a_restaurant_through_two_rows_is_notified_until_both_are_deleted() {
    let f = Fixture::new("chg_duplicates", 1).await;
    // "twice" through two rows, "once" through one.
    for client in ["twice", "twice", "once"] {
        f.db.execute(
            "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, $2)",
            &[&RESTAURANT, &client],
        )
        .await
        .expect("subscribe");
    }
    let service = Service::start(&f, "[cache]\nchanges = \"trigger\"\n");
    let pair = |campaign: &str, client: &str| ((campaign.to_string(), client.to_string()), 1);
    // "once" gets a second row while the service runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, 'once')",
        &[&RESTAURANT],
    )
    .await
    .expect("subscribe again");
    // Read and applied before the deletions (the changes are read every 200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;

    delete_one_row_of(&f, "twice").await;
    delete_one_row_of(&f, "once").await;
    let mut want: BTreeMap<_, _> = [pair("first", "twice"), pair("first", "once")].into();
    campaign_reaches(&f, &service, "first", 1, &want).await;

    delete_one_row_of(&f, "twice").await;
    want.insert(pair("second", "once").0, 1);
    campaign_reaches(&f, &service, "second", 2, &want).await;
    f.cleanup().await;
}
