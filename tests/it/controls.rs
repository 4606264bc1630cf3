//! Campaign controls on the data path: a small campaign does not wait behind a large one.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::common::*;

/// Reads the output topic from its end as it is when made, counting the messages of a restaurant
/// and noting the first and last timestamp of the others'.
struct Watch {
    consumer: BaseConsumer,
    restaurant: String,
    seen: usize,
    others: usize,
    others_span_ms: Option<(i64, i64)>,
}

impl Watch {
    fn new(f: &Fixture, restaurant: &str) -> Watch {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &f.brokers);
        for (k, v) in &f.client_properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config
            .set("group.id", format!("{}-watch", f.name))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&f.output_topic), Duration::from_secs(10))
            .expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            assignment
                .add_partition_offset(&f.output_topic, p.id(), Offset::End)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        Watch {
            consumer,
            restaurant: restaurant.to_string(),
            seen: 0,
            others: 0,
            others_span_ms: None,
        }
    }

    /// Messages of the restaurant seen so far.
    fn count(&mut self) -> usize {
        while let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(10)) {
            let value: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
            if value["restaurant_id"] == self.restaurant.as_str() {
                self.seen += 1;
            } else {
                self.others += 1;
                let at = m.timestamp().to_millis().unwrap_or_default();
                let (first, last) = self.others_span_ms.get_or_insert((at, at));
                (*first, *last) = ((*first).min(at), (*last).max(at));
            }
        }
        self.seen
    }
}

fn active(restaurant: &str, id: &str) -> String {
    let now = unix_now();
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": id,
        "adv_campaign_content": "lunch",
        "adv_campaign_owner": "Ivanov Ivan Ivanovich",
        "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
        "adv_campaign_datetime_start": now - 60,
        "adv_campaign_datetime_end": now + 3600,
        "datetime_created": now - 120,
    })
    .to_string()
}

/// `n` subscribers of `restaurant`, `large-1` to `large-N`.
async fn subscribe_many(f: &Fixture, restaurant: &str, n: i64) {
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT $1, 'large-' || c FROM generate_series(1, $2::int8) c",
        &[&restaurant, &n],
    )
    .await
    .expect("subscribe");
}

/// Rows of `restaurant` in Postgres.
async fn rows_of(f: &Fixture, restaurant: &str) -> usize {
    let rows: i64 = f
        .db
        .query_one(
            "SELECT count(*) FROM subscribers_feedback WHERE restaurant_id = $1",
            &[&restaurant],
        )
        .await
        .expect("count rows")
        .get(0);
    rows as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_campaign_sent_while_a_large_one_goes_out_is_through_long_before_it() {
    const LARGE: i64 = 300_000;
    let f = Fixture::new("fair", 2).await;
    subscribe_many(&f, "fair-large", LARGE).await;
    let small = ["s-0", "s-1", "s-2", "s-3", "s-4", "s-5", "s-6", "s-7", "s-8", "s-9"];
    f.subscribe("fair-small", &small).await;
    // The default budget: 200 000 notifications in flight, 50 000 of them kept for campaigns of
    // one slice.
    let service = Service::start(&f, "");
    f.produce_to(0, "large", active("fair-large", "c-large").as_bytes())
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.output_count() < 20_000 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch = Watch::new(&f, "fair-small");
    // Let the watch find the end of each partition first.
    watch.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = Instant::now();
    f.produce_to(1, "small", active("fair-small", "c-small").as_bytes())
        .await;
    loop {
        if watch.count() == small.len() && rows_of(&f, "fair-small").await == small.len() {
            break;
        }
        assert!(Instant::now() < deadline + Duration::from_secs(60), "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = sent.elapsed();
    let large_rows = rows_of(&f, "fair-large").await;
    let large_messages = f.output_count() as usize - small.len();
    println!(
        "the small campaign was in both sinks {took:?} after it was sent, with {large_rows} rows \
         and {large_messages} messages of the large one's {LARGE} written"
    );
    // Behind the large one's slices, it would have waited for most of it: the writers' queues
    // held 200 000 of its notifications when it came.
    assert!(
        large_messages < (LARGE / 2) as usize,
        "the small campaign waited behind the large one: {large_messages} of {LARGE} were out first"
    );
    let total = LARGE + small.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while f.output_count() < total || f.feedback_count().await < total {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_output_is_paced_to_the_limit_and_a_small_campaign_still_goes_first() {
    const LARGE: i64 = 10_000;
    const PER_SEC: i64 = 2_000;
    let f = Fixture::new("paced", 2).await;
    subscribe_many(&f, "paced-large", LARGE).await;
    let small = ["s-0", "s-1", "s-2", "s-3", "s-4"];
    f.subscribe("paced-small", &small).await;
    let service = Service::start(&f, &format!("[limits]\nmax_notifications_per_sec = {PER_SEC}\n"));
    let mut watch = Watch::new(&f, "paced-small");
    watch.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.produce_to(0, "large", active("paced-large", "c-large").as_bytes())
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while watch.count() == 0 && watch.others < 2_000 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.produce_to(1, "small", active("paced-small", "c-small").as_bytes())
        .await;
    while watch.count() < small.len() {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let large_when_small_done = watch.others;
    while watch.others < LARGE as usize {
        watch.count();
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, last) = watch.others_span_ms.expect("the large campaign's messages");
    let took = (last - first) as f64 / 1000.0;
    println!(
        "{LARGE} notifications from the first to the last in {took:.2} s at a limit of {PER_SEC}/s; \
         the small campaign was out with {large_when_small_done} of them"
    );
    // The first twentieth of a second goes out at once; the rest at the limit.
    let least = (LARGE - PER_SEC / 20) as f64 / PER_SEC as f64;
    assert!(took >= least * 0.95, "{took} s: faster than {PER_SEC}/s");
    assert!(
        large_when_small_done < (LARGE / 2) as usize,
        "the small campaign waited behind the large one under the limit"
    );
    assert_eq!(rows_of(&f, "paced-small").await, small.len());
    drop(service);
    f.cleanup().await;
}
