//! End-to-end: the service binary against the run's Tansu broker and the local Postgres.
//! Run with `./scripts/test.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::*;

const CLIENTS: [&str; 3] = [
    "023e4567-e89b-12d3-a456-426614174000",
    "023e4567-e89b-12d3-a456-426614174001",
    "023e4567-e89b-12d3-a456-426614174002",
];

#[tokio::test(flavor = "multi_thread")]
async fn brief_sample_gives_the_contract_output_in_both_sinks() {
    let f = Fixture::new("sample", 1).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let mut service = Service::start(&f, "");

    let before = unix_now();
    // Sent exactly as the brief writes it: `key:json` in the value.
    f.produce("1", SAMPLE.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));
    let after = unix_now();

    let output = f.read_output();
    assert_eq!(output.len(), 3, "one message per subscriber");
    let seen = assert_each_message_is_the_contracts(&output, (before, after));
    assert_eq!(seen, CLIENTS.iter().map(|c| c.to_string()).collect());

    let rows = f.feedback_rows().await;
    assert_eq!(rows.len(), 3);
    let row_clients = assert_each_row_is_the_samples(&rows, (before, after));
    assert_eq!(row_clients, seen);

    assert!(service.terminate().success(), "{}", service.log_text());
    f.cleanup().await;
}

/// Each message of `output` is the contract's example with its own `client_id` (its key) and a
/// trigger within `before..=after`; returns the clients notified.
fn assert_each_message_is_the_contracts(
    output: &[(String, serde_json::Value)],
    (before, after): (i64, i64),
) -> BTreeSet<String> {
    let template: serde_json::Value = serde_json::from_str(CONTRACT_OUTPUT).unwrap();
    let mut seen = BTreeSet::new();
    for (key, value) in output {
        let object = value.as_object().expect("a JSON object");
        assert_eq!(
            object.keys().collect::<BTreeSet<_>>(),
            template
                .as_object()
                .unwrap()
                .keys()
                .collect::<BTreeSet<_>>(),
            "exactly the contract's fields"
        );
        let client = value["client_id"].as_str().expect("client_id string");
        assert_eq!(key, client, "keyed by client_id");
        let trigger = value["trigger_datetime_created"]
            .as_i64()
            .expect("trigger_datetime_created integer");
        assert!(
            (before..=after).contains(&trigger),
            "{trigger} outside {before}..={after}"
        );
        let mut expected = template.clone();
        expected["client_id"] = client.into();
        expected["trigger_datetime_created"] = trigger.into();
        assert_eq!(
            value, &expected,
            "same names, values and JSON types as the contract"
        );
        seen.insert(client.to_string());
    }
    seen
}

/// Each row holds the sample's campaign, a trigger within `before..=after` and no feedback; returns the
/// clients of the rows.
fn assert_each_row_is_the_samples(
    rows: &[tokio_postgres::Row],
    (before, after): (i64, i64),
) -> BTreeSet<String> {
    let mut row_clients = BTreeSet::new();
    for row in rows {
        assert_eq!(row.get::<_, String>("restaurant_id"), SAMPLE_RESTAURANT);
        assert_eq!(
            row.get::<_, String>("adv_campaign_id"),
            "123e4567-e89b-12d3-a456-426614174003"
        );
        assert_eq!(
            row.get::<_, String>("adv_campaign_content"),
            "first campaign"
        );
        assert_eq!(
            row.get::<_, String>("adv_campaign_owner"),
            "Ivanov Ivan Ivanovich"
        );
        assert_eq!(
            row.get::<_, String>("adv_campaign_owner_contact"),
            "iiivanov@restaurant.ru"
        );
        assert_eq!(row.get::<_, i64>("adv_campaign_datetime_start"), 1659203516);
        assert_eq!(row.get::<_, i64>("adv_campaign_datetime_end"), 2659207116);
        assert_eq!(row.get::<_, i64>("datetime_created"), 1659131516);
        let trigger = i64::from(row.get::<_, i32>("trigger_datetime_created"));
        assert!((before..=after).contains(&trigger));
        assert_eq!(row.get::<_, Option<String>>("feedback"), None);
        row_clients.insert(row.get::<_, String>("client_id"));
    }
    row_clients
}

#[tokio::test(flavor = "multi_thread")]
async fn inactive_campaigns_and_restaurants_without_subscribers_give_nothing() {
    let f = Fixture::new("inactive", 1).await;
    let restaurant = "aaaaaaaa-0000-0000-0000-000000000001";
    f.subscribe(restaurant, &CLIENTS).await;
    let service = Service::start(&f, "");
    let now = unix_now();
    f.produce(
        "expired",
        campaign(restaurant, "c-expired", now - 7200, now - 3600).as_bytes(),
    )
    .await;
    f.produce(
        "future",
        campaign(restaurant, "c-future", now + 3600, now + 7200).as_bytes(),
    )
    .await;
    f.produce(
        "lonely",
        active_campaign("bbbbbbbb-0000-0000-0000-000000000002", "c-lonely").as_bytes(),
    )
    .await;
    service.wait_processed(3, Duration::from_secs(30));

    assert_eq!(f.output_count(), 0);
    assert_eq!(f.feedback_rows().await.len(), 0);
    let outcome = |o: &str| {
        service.metric_with(
            "campaign_notifier_campaigns_processed_total",
            &format!("outcome=\"{o}\""),
        )
    };
    assert_eq!(outcome("ended"), 1.0);
    // Kept to fire at its start, an hour from now.
    assert_eq!(outcome("scheduled"), 1.0);
    assert_eq!(outcome("no_subscribers"), 1.0);
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_do_not_stop_or_change_the_good_ones() {
    let f = Fixture::new("malformed", 1).await;
    let restaurant = "cccccccc-0000-0000-0000-000000000003";
    f.subscribe(restaurant, &CLIENTS[..2]).await;
    let service = Service::start(&f, "");
    let bad = malformed_messages(restaurant, unix_now());
    let good = produce_each_after_a_good_one(&f, restaurant, &bad).await;
    service.wait_processed((bad.len() + good.len()) as u64, Duration::from_secs(30));

    let output = f.read_output();
    let mut per_campaign: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, v) in &output {
        per_campaign
            .entry(v["adv_campaign_id"].as_str().unwrap().to_string())
            .or_default()
            .insert(v["client_id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        output.len(),
        good.len() * 2,
        "two subscribers per good campaign"
    );
    assert_eq!(
        per_campaign.keys().cloned().collect::<BTreeSet<_>>(),
        good.iter().cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(f.feedback_rows().await.len(), good.len() * 2);
    assert_eq!(
        service.metric("campaign_notifier_campaigns_rejected_total"),
        bad.len() as f64
    );
    assert_eq!(
        service.metric("campaign_notifier_actor_restarts_total"),
        0.0
    );
    let log = service.log_text();
    assert!(
        log.contains(&format!("{}/0@1", f.input_topic)),
        "the warning names topic, partition and offset:\n{log}"
    );
    assert_dead_lettered_untouched_with_why_and_where_from(&f, &bad);
    drop(service);
    f.cleanup().await;
}

/// Ten kinds of bad input for `restaurant`, each with the reason code it is rejected with.
fn malformed_messages(restaurant: &str, now: i64) -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"not json at all".to_vec(), "not_json"),
        (b"\xff\xfe broken utf-8".to_vec(), "not_utf8"),
        (br#"{"restaurant_id": 7}"#.to_vec(), "wrong_type"),
        (
            campaign(restaurant, "c-bad-window", now + 10, now - 10).into_bytes(),
            "start_after_end",
        ),
        (
            campaign(restaurant, "", now - 10, now + 10).into_bytes(),
            "empty_field",
        ),
        (
            campaign(restaurant, "c-huge-ts", now, 99_999_999_999_999).into_bytes(),
            "out_of_range",
        ),
        (format!("{}1", "[".repeat(10_000)).into_bytes(), "not_json"),
        (vec![], "not_json"),
        // The `key:json` form: the limit is on the whole value, key part included...
        (
            format!(
                "{}:{}",
                "k".repeat(64 * 1024),
                active_campaign(restaurant, "c-big-key")
            )
            .into_bytes(),
            "too_large",
        ),
        // ...and the key part is an id, not a payload.
        (
            format!(
                "{}:{}",
                "k".repeat(300),
                active_campaign(restaurant, "c-long-key")
            )
            .into_bytes(),
            "too_long",
        ),
    ]
}

/// Produces each of `bad` (keyed `bad-<i>`) after a good campaign (`c-good-<i>`), and a last
/// good one; returns the good campaigns' ids.
async fn produce_each_after_a_good_one(
    f: &Fixture,
    restaurant: &str,
    bad: &[(Vec<u8>, &str)],
) -> Vec<String> {
    let mut good = Vec::new();
    for (i, (b, _)) in bad.iter().enumerate() {
        let id = format!("c-good-{i}");
        f.produce(
            &format!("good-{i}"),
            active_campaign(restaurant, &id).as_bytes(),
        )
        .await;
        good.push(id);
        f.produce(&format!("bad-{i}"), b).await;
    }
    let last = "c-good-last".to_string();
    f.produce("good-last", active_campaign(restaurant, &last).as_bytes())
        .await;
    good.push(last);
    good
}

/// Every bad message is in the dead-letter topic, untouched, with why and where from.
fn assert_dead_lettered_untouched_with_why_and_where_from(f: &Fixture, bad: &[(Vec<u8>, &str)]) {
    let letters = f.read_topic(&f.dead_letter_topic);
    assert_eq!(letters.len(), bad.len());
    for (i, (letter, (bytes, code))) in letters.iter().zip(bad).enumerate() {
        assert_eq!(letter.key.as_deref(), Some(format!("bad-{i}").as_bytes()));
        assert_eq!(
            letter.payload.clone().unwrap_or_default(),
            *bytes,
            "bytes untouched"
        );
        assert_eq!(letter.headers["dlq.reason.code"], *code);
        assert!(!letter.headers["dlq.reason"].is_empty());
        assert_eq!(letter.headers["dlq.source.topic"], f.input_topic);
        assert_eq!(letter.headers["dlq.source.partition"], "0");
        assert_eq!(letter.headers["dlq.source.offset"], (2 * i + 1).to_string());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriber_added_to_the_table_is_notified_after_a_refresh() {
    let f = Fixture::new("refresh", 1).await;
    let restaurant = "dddddddd-0000-0000-0000-000000000004";
    f.subscribe(restaurant, &CLIENTS[..1]).await;
    let service = Service::start(&f, "[cache]\nrefresh_interval_secs = 1\n");
    f.produce("1", active_campaign(restaurant, "c-before").as_bytes())
        .await;
    service.wait_processed(1, Duration::from_secs(30));
    assert_eq!(f.output_count(), 1);

    f.subscribe(restaurant, &CLIENTS[1..2]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while service.metric("campaign_notifier_cache_pairs") < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "cache never saw the new subscriber"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    f.produce("2", active_campaign(restaurant, "c-after").as_bytes())
        .await;
    service.wait_processed(2, Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while f.output_count() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let output = f.read_output();
    let after: BTreeSet<_> = output
        .iter()
        .filter(|(_, v)| v["adv_campaign_id"] == "c-after")
        .map(|(_, v)| v["client_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, CLIENTS[..2].iter().map(|c| c.to_string()).collect());
    // The new subscriber also got the campaign that was active when they subscribed (the change
    // feed): 2 + 2.
    let before: BTreeSet<_> = output
        .iter()
        .filter(|(_, v)| v["adv_campaign_id"] == "c-before")
        .map(|(_, v)| v["client_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(before, after);
    assert_eq!(output.len(), 4);
    assert_eq!(f.feedback_rows().await.len(), 4);
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_after_sigterm_continues_from_committed_offsets() {
    let f = Fixture::new("restart", 2).await;
    let restaurants: Vec<String> = (0..10)
        .map(|i| format!("eeeeeeee-0000-0000-0000-{i:012}"))
        .collect();
    for r in &restaurants {
        f.subscribe(r, &CLIENTS).await;
    }
    let total = 300;
    let mut service = Service::start_numbered(&f, "", 1);
    produce_restart_campaigns(&f, &restaurants, 0..total / 2).await;
    // Stop while the first half is still being worked through.
    service.wait_processed(10, Duration::from_secs(60));
    let status = service.terminate();
    assert!(status.success(), "exit {status}:\n{}", service.log_text());
    let done_before = service.log_text();
    assert!(done_before.contains("offsets committed"), "{done_before}");

    // The second half arrives while the service is down.
    produce_restart_campaigns(&f, &restaurants, total / 2..total).await;
    let mut service = Service::start_numbered(&f, "", 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while (f.feedback_rows().await.len()) < total * CLIENTS.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} rows after restart:\n{}",
            f.feedback_rows().await.len(),
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(service.terminate().success());

    let row_pairs = row_pairs(&f).await;
    let out_pairs = output_pairs(&f);
    let campaigns: Vec<String> = (0..total).map(restart_campaign).collect();
    let expected = once_each(&campaigns, &CLIENTS);
    assert_eq!(row_pairs.len(), expected.len(), "every pair in Postgres");
    assert_eq!(row_pairs, expected, "each pair exactly once in Postgres");
    assert_eq!(out_pairs, expected, "each pair exactly once in Kafka");
    f.cleanup().await;
}

fn restart_campaign(i: usize) -> String {
    format!("c-restart-{i:04}")
}

/// The restart test's campaigns `numbers`, spread over `restaurants`.
async fn produce_restart_campaigns(
    f: &Fixture,
    restaurants: &[String],
    numbers: std::ops::Range<usize>,
) {
    for i in numbers {
        f.produce(
            &i.to_string(),
            active_campaign(&restaurants[i % restaurants.len()], &restart_campaign(i)).as_bytes(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_writer_reconnects_and_keeps_the_batches_it_held() {
    let f = Fixture::new("pgdrop", 1).await;
    let restaurant = "ffffffff-0000-0000-0000-000000000006";
    f.subscribe(restaurant, &CLIENTS).await;
    let service = Service::start(
        &f,
        "[writers]\nrestart_backoff_initial_ms = 50\nrestart_backoff_max_ms = 500\n",
    );
    let total = 200;
    let campaigns: Vec<String> = (0..total).map(|i| format!("c-pgdrop-{i:04}")).collect();
    for (i, campaign) in campaigns.iter().enumerate() {
        f.produce(&i.to_string(), active_campaign(restaurant, campaign).as_bytes())
            .await;
        if i == total / 2 {
            assert!(
                f.terminate_service_connections().await >= 1,
                "the service had no connection to cut"
            );
        }
    }
    service.wait_processed(total as u64, Duration::from_secs(60));

    let expected: BTreeSet<(String, String)> = once_each(&campaigns, &CLIENTS).into_keys().collect();
    let rows: BTreeSet<(String, String)> = row_pairs(&f).await.into_keys().collect();
    let output: BTreeSet<(String, String)> = output_pairs(&f).into_keys().collect();
    assert_eq!(rows, expected, "every notification reached Postgres");
    assert_eq!(output, expected, "every notification reached Kafka");
    assert!(
        service.metric_with(
            "campaign_notifier_actor_restarts_total",
            "actor=\"postgres_writer\""
        ) >= 1.0,
        "the postgres writer restarted:\n{}",
        service.log_text()
    );
    assert_eq!(
        service.metric_with(
            "campaign_notifier_campaigns_processed_total",
            "outcome=\"delivered\""
        ),
        total as f64
    );
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn popular_restaurant_reaches_every_one_of_its_subscribers() {
    let f = Fixture::new("fanout", 1).await;
    let restaurant = "99999999-0000-0000-0000-000000000009";
    let subscribers = 25_000i64;
    // Client ids of both kinds the cache stores: UUIDs and free text.
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) \
         SELECT $1, CASE WHEN i % 2 = 0 \
             THEN '00000000-0000-4000-8000-' || lpad(i::text, 12, '0') \
             ELSE 'client-' || i END \
         FROM generate_series(1, $2::int8) AS i",
        &[&restaurant, &subscribers],
    )
    .await
    .expect("seed subscribers");
    let service = Service::start(&f, "");
    f.produce("1", active_campaign(restaurant, "c-fanout").as_bytes())
        .await;
    service.wait_processed(1, Duration::from_secs(120));

    assert_eq!(f.output_count(), subscribers);
    let distinct: i64 = f
        .db
        .query_one(
            "SELECT count(DISTINCT client_id) FROM subscribers_feedback WHERE adv_campaign_id = 'c-fanout'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, subscribers);
    assert_eq!(f.feedback_rows().await.len() as i64, subscribers);
    let output = f.read_output();
    let clients: BTreeSet<&str> = output
        .iter()
        .map(|(_, v)| v["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(clients.len() as i64, subscribers);
    assert!(
        clients.contains("client-1") && clients.contains("00000000-0000-4000-8000-000000025000")
    );
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_subscribers_at_once() {
    let f = Fixture::new("sighup", 1).await;
    let restaurant = "dddddddd-0000-0000-0000-000000000005";
    f.subscribe(restaurant, &CLIENTS[..1]).await;
    let service = Service::start(&f, "[cache]\nrefresh_interval_secs = 3600\n");
    assert_eq!(service.metric("campaign_notifier_cache_pairs"), 1.0);
    f.subscribe(restaurant, &CLIENTS[1..3]).await;
    service.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while service.metric("campaign_notifier_cache_pairs") < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    f.produce("1", active_campaign(restaurant, "c-hup").as_bytes())
        .await;
    service.wait_processed(1, Duration::from_secs(30));
    assert_eq!(f.output_count(), 3);
    assert_eq!(f.feedback_rows().await.len(), 3);
    drop(service);
    f.cleanup().await;
}

/// Every Postgres connection of the service cut twenty times while a burst of campaigns flows: each
/// actor holding one restarts, and whatever it had under way (the lifecycle records groups of
/// arrivals and stores one group while it reads the next) is done after its restart. Nothing may
/// stop the service, and every notification reaches both sinks once.
#[tokio::test(flavor = "multi_thread")]
async fn connections_cut_again_and_again_during_a_burst_stop_nothing() {
    let f = Fixture::new("pgcuts", 1).await;
    let restaurant = "ffffffff-0000-0000-0000-000000000007";
    f.subscribe(restaurant, &CLIENTS).await;
    let mut service = Service::start(
        &f,
        "[writers]\nrestart_backoff_initial_ms = 20\nrestart_backoff_max_ms = 200\n",
    );
    let total = 1_000;
    let campaign_of = |i: usize| format!("c-pgcuts-{i:04}");
    for i in 0..total {
        f.produce(
            &i.to_string(),
            active_campaign(restaurant, &campaign_of(i)).as_bytes(),
        )
        .await;
        if i % 50 == 25 {
            f.terminate_service_connections().await;
        }
    }
    service.wait_processed(total as u64, Duration::from_secs(90));
    assert!(
        service.try_exit().is_none(),
        "the service stopped:\n{}",
        service.log_text()
    );
    let expected = total * CLIENTS.len();
    let rows = f.feedback_rows().await.len();
    let output = f.output_client_counts().values().sum::<u32>() as usize;
    assert_eq!(rows, expected, "rows in Postgres");
    assert_eq!(output, expected, "messages in Kafka");
    drop(service);
    f.cleanup().await;
}

/// librdkafka is built with every codec: campaigns compressed with zstd (as a producer on a
/// managed cluster may send them) are read, and the service's own output can be compressed.
/// Snappy is left out: Tansu 0.6.0 stores a snappy batch but cannot serve it back (its fetch
/// fails with `UnexpectedType("Snappy")` and it drops the connection).
#[tokio::test(flavor = "multi_thread")]
async fn compressed_campaigns_are_read_and_the_output_can_be_compressed() {
    for codec in ["zstd", "lz4", "gzip"] {
        let compressed = vec![("compression.type".to_string(), codec.to_string())];
        let brokers = std::env::var("CN_TEST_BROKERS").expect("CN_TEST_BROKERS");
        let f = Fixture::new_secured(&format!("codec_{codec}"), 1, &brokers, compressed).await;
        f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
        let extra = format!("[kafka.producer]\n\"compression.type\" = \"{codec}\"\n");
        let mut service = Service::start(&f, &extra);
        f.produce("1", SAMPLE.as_bytes()).await;
        service.wait_processed(1, Duration::from_secs(30));
        assert_eq!(
            service.metric("campaign_notifier_campaigns_rejected_total"),
            0.0,
            "{codec}: {}",
            service.log_text()
        );
        assert_eq!(f.read_output().len(), CLIENTS.len(), "{codec}");
        assert!(service.terminate().success());
        f.cleanup().await;
    }
}

/// `log.format = "json"`: every line the service writes is one JSON object with its time, level,
/// target and message, from start-up to the drain.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let f = Fixture::new("json_logs", 1).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let mut service =
        Service::spawn_with_env(&f, "", 0, &[("CAMPAIGN_NOTIFIER__LOG__FORMAT", "json")]);
    service.wait_ready();
    f.produce("1", SAMPLE.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));
    assert!(service.terminate().success());
    let text = service.log_text();
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n--- log ---\n{text}"));
        for key in ["ts", "level", "target", "message"] {
            assert!(object[key].is_string(), "{key} missing: {line}");
        }
        messages.push(object["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(messages.iter().any(|m| m == "ready"), "{text}");
    assert!(messages.iter().any(|m| m.contains("drain")), "{text}");
    f.cleanup().await;
}

/// `check-config --connect` says which of the brokers, the topics, Postgres and the tables'
/// privileges is not usable, with exit code 2, and exit code 0 when all are.
#[tokio::test(flavor = "multi_thread")]
async fn check_config_connect_says_which_part_is_not_usable() {
    let f = Fixture::new("check_connect", 1).await;
    let path = f.dir.join("check.toml");
    std::fs::write(&path, f.config(free_port(), "")).expect("config");
    let check = |env: &[(&str, &str)]| check_config_connect(&path, env);

    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    for expected in [
        "ok     kafka: ".to_string(),
        format!("ok     topic {}: 1 partitions", f.input_topic),
        format!("ok     topic {}: 1 partitions", f.output_topic),
        "ok     postgres: connected as postgres".to_string(),
        "ok     table subscribers_feedback: SELECT, INSERT, DELETE".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in:\n{text}");
    }

    let (code, text) = check(&[("CAMPAIGN_NOTIFIER__KAFKA__OUTPUT_TOPIC", "cn-no-such-topic")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("FAILED topic cn-no-such-topic: UnknownTopicOrPartition"),
        "{text}"
    );

    let (code, text) = check(&[("CAMPAIGN_NOTIFIER__KAFKA__BROKERS", "127.0.0.1:1")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("FAILED kafka: no broker of 127.0.0.1:1 answered"),
        "{text}"
    );

    let (code, text) = check(&[(
        "CAMPAIGN_NOTIFIER__POSTGRES__URL",
        "postgres://postgres@127.0.0.1:1/postgres",
    )]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("FAILED postgres: cannot connect"), "{text}");

    let (role, code, text) = check_as_a_user_who_may_only_read_the_subscribers(&f, &path).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("ok     table subscribers_restaurants: SELECT"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FAILED table subscribers_feedback: {role} lacks SELECT, INSERT, DELETE"
        )),
        "{text}"
    );
    f.cleanup().await;
}

/// `check-config --connect` on the config at `path` with `env` set: its exit code and what it
/// printed.
fn check_config_connect(path: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["check-config", "--connect", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .expect("check-config");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The check as a role that may read the subscribers and nothing else (made for it and dropped
/// after): the role, the exit code and what it printed.
async fn check_as_a_user_who_may_only_read_the_subscribers(
    f: &Fixture,
    path: &std::path::Path,
) -> (String, Option<i32>, String) {
    let role = format!("{}_reader", f.db_name);
    f.db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN; GRANT SELECT ON subscribers_restaurants TO {role};"
    ))
    .await
    .expect("create role");
    let url = f.db_url.replacen("postgres@", &format!("{role}@"), 1);
    let (code, text) = check_config_connect(path, &[("CAMPAIGN_NOTIFIER__POSTGRES__URL", url.as_str())]);
    f.db.batch_execute(&format!(
        "REVOKE ALL ON subscribers_restaurants FROM {role}; DROP ROLE {role};"
    ))
    .await
    .expect("drop role");
    (role, code, text)
}
