//! Poison messages and partial failures: one bad campaign never stalls the others, and nothing of
//! it is half-written. Against the run's Tansu broker and the local Postgres; every test counts
//! each (campaign, client) pair in both sinks. Run with `./scripts/test.sh`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

const CLIENTS: [&str; 2] = [
    "0d000000-0000-4000-8000-000000000001",
    "0d000000-0000-4000-8000-000000000002",
];

/// Ten ordinary campaigns of `restaurant` with `poison` produced in the middle of them, all at
/// once so that the writers group the poison with ordinary ones; returns the ordinary ids.
async fn ordinary_around(f: &Fixture, restaurant: &str, poison: &[u8]) -> Vec<String> {
    let ids: Vec<String> = (0..10).map(|i| format!("c-ordinary-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i == 5 {
            f.produce("poison", poison).await;
        }
        f.produce(id, active_campaign(restaurant, id).as_bytes())
            .await;
    }
    ids
}

fn pairs(campaigns: &[String]) -> BTreeMap<(String, String), u32> {
    campaigns
        .iter()
        .flat_map(|c| CLIENTS.iter().map(move |s| ((c.clone(), s.to_string()), 1)))
        .collect()
}

/// `n` characters that do not compress (Postgres compresses a long repetitive value into a small
/// index entry, and accepts it).
fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize])
        })
        .collect()
}

/// The one dead letter of the test: its reason code and reason.
fn only_dead_letter(f: &Fixture) -> (String, String) {
    let letters = f.read_topic(&f.dead_letter_topic);
    assert_eq!(letters.len(), 1, "one dead letter");
    let h = &letters[0].headers;
    (h["dlq.reason.code"].clone(), h["dlq.reason"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_too_long_for_the_notification_key_is_dead_lettered_and_the_rest_flow() {
    let f = Fixture::new("longid", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000001";
    f.subscribe(restaurant, &CLIENTS).await;
    let service = Service::start(&f, "");
    // Postgres refuses an index entry this large (SQLSTATE 54000) every time it is written.
    let poison = active_campaign(restaurant, &incompressible(3000));
    let ordinary = ordinary_around(&f, restaurant, poison.as_bytes()).await;
    service.wait_processed(11, Duration::from_secs(30));

    assert_eq!(row_pairs(&f).await, pairs(&ordinary));
    assert_eq!(output_pairs(&f), pairs(&ordinary));
    let (code, reason) = only_dead_letter(&f);
    assert_eq!(code, "too_long");
    assert!(reason.contains("adv_campaign_id"), "{reason}");
    assert_eq!(
        service.metric("campaign_notifier_actor_restarts_total"),
        0.0
    );
    drop(service);
    f.cleanup().await;
}

/// A campaign a sink refuses: none of its notifications in either sink, the campaign in the
/// dead-letter topic with the sink's reason, and every ordinary campaign delivered exactly once.
async fn assert_refused_and_the_rest_delivered(f: &Fixture, ordinary: &[String], sink: &str) {
    assert_eq!(row_pairs(f).await, pairs(ordinary), "Postgres");
    assert_eq!(output_pairs(f), pairs(ordinary), "Kafka");
    // Marks are cleared by the ledger a moment after Kafka confirmed their notifications.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let marks: i64 = f.outbox_marks().await;
        if marks == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{marks} outbox marks left behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, reason) = only_dead_letter(f);
    assert_eq!(code, "sink_refused");
    assert!(reason.contains(sink), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_postgres_refuses_is_dead_lettered_and_the_rest_flow() {
    let f = Fixture::new("pgrefuses", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000002";
    f.subscribe(restaurant, &CLIENTS).await;
    // A rule of the app's own: a value it does not accept (SQLSTATE 23514, the data's fault).
    f.db.batch_execute(
        "ALTER TABLE subscribers_feedback ADD CONSTRAINT no_refused_campaigns \
         CHECK (adv_campaign_id <> 'c-refused') NOT VALID",
    )
    .await
    .unwrap();
    let service = Service::start(&f, "");
    let poison = active_campaign(restaurant, "c-refused");
    let ordinary = ordinary_around(&f, restaurant, poison.as_bytes()).await;
    service.wait_processed(11, Duration::from_secs(30));
    assert_refused_and_the_rest_delivered(&f, &ordinary, "postgres").await;
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_postgres_keeps_failing_on_is_isolated_dead_lettered_and_the_rest_flow() {
    let f = Fixture::new("pgfails", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000003";
    f.subscribe(restaurant, &CLIENTS).await;
    // A failure the service cannot tell from a transient one (SQLSTATE XX000), every time this
    // campaign is written.
    f.db.batch_execute(
        "CREATE FUNCTION fail_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.adv_campaign_id = 'c-poison' THEN
             RAISE EXCEPTION 'cannot store this one' USING ERRCODE = 'XX000';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER fail_poison BEFORE INSERT ON subscribers_feedback
           FOR EACH ROW EXECUTE FUNCTION fail_poison();",
    )
    .await
    .unwrap();
    let service = Service::start(&f, "");
    let poison = active_campaign(restaurant, "c-poison");
    let ordinary = ordinary_around(&f, restaurant, poison.as_bytes()).await;
    service.wait_processed(11, Duration::from_secs(60));
    assert_refused_and_the_rest_delivered(&f, &ordinary, "cannot store this one").await;
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_kafka_refuses_is_withdrawn_from_postgres_and_dead_lettered() {
    let f = Fixture::new("kafkarefuses", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000004";
    f.subscribe(restaurant, &CLIENTS).await;
    // The producer takes no message over 20 000 bytes; this campaign's notifications are 30 000
    // (Tansu enforces no topic size limit, so the producer's own limit stands in for it).
    let service = Service::start(
        &f,
        "[kafka.producer]\n\"message.max.bytes\" = \"20000\"\n\"batch.size\" = \"20000\"\n",
    );
    let mut poison: serde_json::Value =
        serde_json::from_str(&active_campaign(restaurant, "c-oversize")).unwrap();
    poison["adv_campaign_content"] = "x".repeat(30_000).into();
    let ordinary = ordinary_around(&f, restaurant, poison.to_string().as_bytes()).await;
    service.wait_processed(11, Duration::from_secs(30));
    assert_refused_and_the_rest_delivered(&f, &ordinary, "kafka").await;
    drop(service);
    f.cleanup().await;
}

/// Polls `/readyz` until it answers `status`; returns the body.
fn wait_readyz(service: &Service, status: u16, timeout: Duration) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = http_get(service.http_port, "/readyz");
        if let Ok((s, body)) = &last {
            if *s == status {
                return body.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz did not answer {status} within {timeout:?} (last: {last:?}):\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_holding_a_lock_stalls_the_writer_only_for_a_bounded_time_and_readiness_says_so()
{
    let f = Fixture::new("lockwait", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000005";
    f.subscribe(restaurant, &CLIENTS).await;
    let mut service = Service::spawn_with_env(
        &f,
        "[writers]\nstall_secs = 3\n",
        0,
        &[("CAMPAIGN_NOTIFIER__POSTGRES__LOCK_TIMEOUT_SECS", "1")],
    );
    service.wait_ready();
    // Another session (a stopped instance mid-transaction, say) holds a lock every insert into
    // subscribers_feedback waits for.
    let holder = connect(&f.db_url).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE subscribers_feedback IN SHARE MODE;")
        .await
        .unwrap();
    f.produce("c-1", active_campaign(restaurant, "c-1").as_bytes())
        .await;
    let body = wait_readyz(&service, 503, Duration::from_secs(15));
    assert!(body.contains("postgres"), "{body}");
    let log = service.log_text();
    assert!(
        log.contains("lock_timeout"),
        "the wait is named in the log:\n{log}"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    service.wait_processed(1, Duration::from_secs(30));
    wait_readyz(&service, 200, Duration::from_secs(10));
    let ordinary = vec!["c-1".to_string()];
    assert_eq!(row_pairs(&f).await, pairs(&ordinary));
    assert_eq!(output_pairs(&f), pairs(&ordinary));
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_that_stops_answering_stops_the_service_with_exit_code_3() {
    let f = Fixture::new("blackhole", 1).await;
    let proxy = PgProxy::start();
    let url = proxy.url_for(&f.db_url);
    // Each attempt to connect times out after 2 s, so fewer than restart_limit restarts fit in
    // restart_window_secs: counting restarts alone would never give up.
    // The writer that cannot connect cannot close either: the stop waits the grace period.
    let config = "[writers]\nrestart_limit = 3\nrestart_window_secs = 5\n\
                  restart_backoff_initial_ms = 50\nrestart_backoff_max_ms = 200\n\
                  [shutdown]\ngrace_period_secs = 3\n";
    let mut service = Service::spawn_with_env(
        &f,
        config,
        0,
        &[
            ("CAMPAIGN_NOTIFIER__POSTGRES__URL", url.as_str()),
            ("CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS", "2"),
        ],
    );
    service.wait_ready();
    proxy.blackhole();
    let status = service.wait_exit(Duration::from_secs(30), "after Postgres stopped answering");
    let log = service.log_text();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("without a success"), "{log}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_frozen_mid_transaction_does_not_stop_the_other_and_nothing_is_written_twice() {
    let f = Fixture::new("sigstop", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000006";
    f.subscribe(restaurant, &CLIENTS).await;
    // The insert of this campaign takes 3 s, so its transaction is open when A is frozen.
    f.db.batch_execute(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.adv_campaign_id = 'c-slow' AND NEW.client_id LIKE '%1' THEN
             PERFORM pg_sleep(3);
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER slow_insert BEFORE INSERT ON subscribers_feedback
           FOR EACH ROW EXECUTE FUNCTION slow_insert();",
    )
    .await
    .unwrap();
    let env = [
        ("CAMPAIGN_NOTIFIER__POSTGRES__LOCK_TIMEOUT_SECS", "1"),
        (
            "CAMPAIGN_NOTIFIER__POSTGRES__IDLE_IN_TRANSACTION_TIMEOUT_SECS",
            "4",
        ),
        ("CAMPAIGN_NOTIFIER__KAFKA__ORPHANED_PARTITION_SECS", "3"),
    ];
    let mut a = Service::spawn_with_env(&f, "", 1, &env);
    a.wait_ready();
    f.produce("c-slow", active_campaign(restaurant, "c-slow").as_bytes())
        .await;
    std::thread::sleep(Duration::from_millis(1500));
    a.signal("STOP");
    // A holds its transaction open, with the campaign's rows locked, for as long as it is
    // frozen. B takes the partition over (the orphan watch) and reads the campaign again.
    let mut b = Service::spawn_with_env(&f, "", 2, &env);
    b.wait_ready();
    f.produce("c-after", active_campaign(restaurant, "c-after").as_bytes())
        .await;
    let expected = pairs(&["c-slow".to_string(), "c-after".to_string()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while output_pairs(&f) != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "B did not finish while A was frozen: {:?}\n{}",
            output_pairs(&f),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    a.signal("CONT");
    // A, thawed, finds its transaction gone and its campaign already notified.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(row_pairs(&f).await, expected, "Postgres");
    assert_eq!(output_pairs(&f), expected, "Kafka");
    assert!(b.terminate().success(), "{}", b.log_text());
    assert!(a.terminate().success(), "{}", a.log_text());
    f.cleanup().await;
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_of_two_instances_reads_nothing_confirmed_again() {
    let f = Fixture::new("rolling", 2).await;
    let restaurant = "7a000000-0000-0000-0000-000000000007";
    f.subscribe(restaurant, &CLIENTS).await;
    let produce = |from: usize| {
        let f = &f;
        async move {
            for i in from..from + 20 {
                let id = format!("c-{i}");
                f.produce(&id, active_campaign(restaurant, &id).as_bytes())
                    .await;
            }
        }
    };
    let mut a = Service::start_numbered(&f, "", 1);
    wait_for(
        "A assigned both partitions",
        Duration::from_secs(30),
        || a.assigned_partitions() == Some(2),
    );
    produce(0).await;
    a.wait_processed(20, Duration::from_secs(30));
    // B joins: the partitions are shared, and each goes on from where A left it.
    let mut b = Service::start_numbered(&f, "", 2);
    wait_for(
        "A and B sharing the partitions",
        Duration::from_secs(60),
        || a.assigned_partitions() == Some(1) && b.assigned_partitions() == Some(1),
    );
    produce(20).await;
    wait_for(
        "the second twenty processed",
        Duration::from_secs(30),
        || {
            a.metric("campaign_notifier_campaigns_processed_total")
                + b.metric("campaign_notifier_campaigns_processed_total")
                >= 40.0
        },
    );
    // Rolling restart: B first, then A. A must not commit what it remembers of B's partition.
    assert!(b.terminate().success(), "{}", b.log_text());
    assert!(a.terminate().success(), "{}", a.log_text());
    for (partition, (committed, end)) in f.input_commits().into_iter().enumerate() {
        assert_eq!(
            committed,
            end,
            "partition {partition}: confirmed campaigns would be read again:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
    }
    let all: Vec<String> = (0..40).map(|i| format!("c-{i}")).collect();
    assert_eq!(row_pairs(&f).await, pairs(&all));
    assert_eq!(output_pairs(&f), pairs(&all));
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_that_hits_every_write_holds_the_campaigns_instead_of_dead_lettering_them() {
    let f = Fixture::new("allrefused", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000008";
    f.subscribe(restaurant, &CLIENTS).await;
    // A rule of the app's that no row passes (as a column that overflows or an exhausted id
    // sequence would be): the fault is the database's setup, not any campaign's.
    f.db.batch_execute(
        "ALTER TABLE subscribers_feedback ADD CONSTRAINT every_row_refused CHECK (false) NOT VALID",
    )
    .await
    .unwrap();
    let service = Service::start(&f, "");
    let campaigns: Vec<String> = (0..10).map(|i| format!("c-{i}")).collect();
    for id in &campaigns {
        f.produce(id, active_campaign(restaurant, id).as_bytes())
            .await;
    }
    let body = wait_readyz(&service, 503, Duration::from_secs(20));
    assert!(body.contains("refuses every write"), "{body}");
    assert_eq!(
        service.metric_with("campaign_notifier_sink_fault", "sink=\"postgres\""),
        1.0
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        f.count(&f.dead_letter_topic),
        0,
        "no campaign was dead-lettered"
    );
    for (committed, _) in f.input_commits() {
        assert!(
            committed <= 0,
            "nothing was committed past the fault: {committed}"
        );
    }
    // The operator mends the table: everything held goes through, once.
    f.db.batch_execute("ALTER TABLE subscribers_feedback DROP CONSTRAINT every_row_refused")
        .await
        .unwrap();
    service.wait_processed(10, Duration::from_secs(30));
    wait_readyz(&service, 200, Duration::from_secs(10));
    assert_eq!(row_pairs(&f).await, pairs(&campaigns));
    assert_eq!(output_pairs(&f), pairs(&campaigns));
    assert_eq!(f.count(&f.dead_letter_topic), 0);
    assert_eq!(
        service.metric_with("campaign_notifier_sink_fault", "sink=\"postgres\""),
        0.0
    );
    drop(service);
    f.cleanup().await;
}

/// A client id in `subscribers_restaurants` too long for the notification key would make
/// Postgres refuse every campaign of its restaurant (SQLSTATE 54000). The cache leaves such a
/// pair out, says so in the log and in `campaign_notifier_cache_pairs_skipped`, and the
/// restaurant's other subscribers are notified.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_id_too_long_for_the_key_is_left_out_and_the_others_notified() {
    let f = Fixture::new("longclient", 1).await;
    let restaurant = "7a000000-0000-0000-0000-000000000009";
    let poison = incompressible(3000);
    f.subscribe(restaurant, &[CLIENTS[0], &poison, CLIENTS[1]])
        .await;
    let service = Service::start(&f, "");
    let campaigns: Vec<String> = (0..3).map(|i| format!("c-longclient-{i}")).collect();
    for id in &campaigns {
        f.produce(id, active_campaign(restaurant, id).as_bytes())
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while row_pairs(&f).await != pairs(&campaigns) || output_pairs(&f) != pairs(&campaigns) {
        assert!(
            std::time::Instant::now() < deadline,
            "rows {:?}\nmessages {:?}\n{}",
            row_pairs(&f).await.len(),
            output_pairs(&f).len(),
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.count(&f.dead_letter_topic), 0, "{}", service.log_text());
    assert_eq!(service.metric("campaign_notifier_cache_pairs_skipped"), 1.0);
    assert!(
        service
            .log_text()
            .contains("subscriber cache: left out 1 pair"),
        "{}",
        service.log_text()
    );
    drop(service);
    f.cleanup().await;
}

/// The whole stop takes one grace period, whatever hangs: here Postgres stops answering with a
/// campaign in flight, so the reader's drain, the writers' close and the threads' stop would
/// each wait their full time. The campaign it leaves unfinished is logged, and the exit code (4)
/// says the drain was incomplete.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_with_postgres_gone_silent_takes_one_grace_period() {
    let f = Fixture::new("one_grace", 1).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let proxy = PgProxy::start();
    let url = proxy.url_for(&f.db_url);
    let config = "[shutdown]\ngrace_period_secs = 3\n";
    let mut service = Service::spawn_with_env(
        &f,
        config,
        0,
        &[
            ("CAMPAIGN_NOTIFIER__POSTGRES__URL", url.as_str()),
            ("CAMPAIGN_NOTIFIER__POSTGRES__CONNECT_TIMEOUT_SECS", "2"),
        ],
    );
    service.wait_ready();
    proxy.blackhole();
    f.produce("1", SAMPLE.as_bytes()).await;
    // The campaign is read and waits on Postgres.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while service.metric("campaign_notifier_campaigns_in_flight") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the campaign was not read:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = std::time::Instant::now();
    service.signal("TERM");
    let status = service.wait_exit(Duration::from_secs(30), "after SIGTERM");
    let took = stopping.elapsed();
    println!("stopped in {took:?} with a grace period of 3 s, exit {status}");
    // The campaign was left unfinished: the exit code says the drain was incomplete.
    assert_eq!(status.code(), Some(4), "{}", service.log_text());
    assert!(
        service
            .log_text()
            .contains("drain incomplete: 1 campaigns unfinished"),
        "{}",
        service.log_text()
    );
    assert!(
        took < Duration::from_millis(4_500),
        "the stop took {took:?}, more than the 3 s grace period:\n{}",
        service.log_text()
    );
    f.cleanup().await;
}
