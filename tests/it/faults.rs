//! Nothing lost, nothing twice: the service broken on purpose, against the run's Tansu broker and
//! the local Postgres. Every test ends by counting each (campaign, client) pair in both sinks.

use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn campaign_delivered_twice_notifies_each_client_once() {
    let f = Fixture::new("twice", 1).await;
    let restaurant = "71000000-0000-0000-0000-000000000001";
    let subscribers = subscribe_clients(&f, restaurant, 3).await;
    let service = Service::start(&f, "");
    let campaign = active_campaign(restaurant, "c-twice");
    f.produce("1", campaign.as_bytes()).await;
    f.produce("1-again", campaign.as_bytes()).await;
    f.produce("2", active_campaign(restaurant, "c-other").as_bytes())
        .await;
    service.wait_processed(3, Duration::from_secs(30));

    let expected = once_each(&["c-twice", "c-other"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    assert_eq!(
        service.metric_with(
            "campaign_notifier_campaigns_processed_total",
            "outcome=\"already_notified\""
        ),
        1.0
    );
    drop(service);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_duplicate_rows_stop_start_up_with_a_clear_message() {
    let f = Fixture::new("dupes", 1).await;
    // A table from before the key existed, with a notification stored twice.
    f.db.batch_execute(
        "DROP INDEX public.subscribers_feedback_notification_key;
         INSERT INTO subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content,
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start,
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created)
         SELECT 'r', 'c', 'x', 'o', 'e', 1, 2, 0, 'client', 3 FROM generate_series(1, 2);",
    )
    .await
    .unwrap();
    let (status, log) = Service::run_to_exit(&f, "");
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("subscribers_feedback"), "{log}");
    assert!(
        log.contains("HAVING count(*) > 1"),
        "names how to find them:\n{log}"
    );
    let rows = f.feedback_rows().await.len();
    assert_eq!(rows, 2, "nothing was deleted");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_times_mid_run_loses_nothing_and_duplicates_nothing() {
    let f = Fixture::new("kill9", 2).await;
    let restaurants = 50;
    let per_restaurant = 40;
    let campaigns = 300;
    let subscribers = clients(per_restaurant);
    let refs: Vec<&str> = subscribers.iter().map(String::as_str).collect();
    for r in 0..restaurants {
        f.subscribe(&kill9_restaurant(r), &refs).await;
    }
    let total = campaigns * per_restaurant;
    assert!(total >= 10_000);

    // Each round adds a fifth of the campaigns, starts the service, lets it get going and kills
    // it at a random moment while it works through them.
    let mut kills = Vec::new();
    let per_round = campaigns / 5;
    for round in 0..5 {
        let numbers = round * per_round..(round + 1) * per_round;
        kills.push(produce_start_and_kill_at_random(&f, round, numbers, restaurants).await);
    }
    eprintln!("killed after (ms, campaigns processed in the round, rows so far): {kills:?}");

    let mut service = Service::start_numbered(&f, KILL9_CONFIG, 99);
    wait_every_notification_and_no_mark(&f, total, &service).await;
    assert!(service.terminate().success(), "{}", service.log_text());

    let ids: Vec<String> = (0..campaigns).map(kill9_campaign).collect();
    let expected = once_each(&ids, &subscribers);
    let rows = row_pairs(&f).await;
    let output = output_pairs(&f);
    assert_eq!(rows.len(), total, "every pair in Postgres");
    assert_eq!(rows, expected, "each pair exactly once in Postgres");
    assert_eq!(output.len(), total, "every pair in Kafka");
    assert_eq!(output, expected, "each pair exactly once in Kafka");
    let marks: i64 = f.outbox_marks().await;
    assert_eq!(marks, 0, "every outbox mark cleared");
    f.cleanup().await;
}

const KILL9_CONFIG: &str = "[writers]\nbatch_max_rows = 500\n";
/// Tansu 0.6.0 leaves a killed member's partitions to nobody when the restarted instance joins
/// before the dead one's session has expired (docs/design.md, "Limits"): the orphan watch rejoins.
const KILL9_ENV: [(&str, &str); 2] = [
    ("CAMPAIGN_NOTIFIER__KAFKA__MAX_IN_FLIGHT_CAMPAIGNS", "8"),
    ("CAMPAIGN_NOTIFIER__KAFKA__ORPHANED_PARTITION_SECS", "10"),
];

fn kill9_restaurant(r: usize) -> String {
    format!("72000000-0000-0000-0000-{r:012}")
}

fn kill9_campaign(i: usize) -> String {
    format!("c-kill-{i:04}")
}

/// A round of the kill -9 test: produces the campaigns `numbers` (spread over `restaurants`),
/// starts instance `round`, lets it process one, and kills it after a random wait of less than
/// 400 ms; returns the wait (ms), the campaigns it had processed and the rows so far.
async fn produce_start_and_kill_at_random(
    f: &Fixture,
    round: usize,
    numbers: std::ops::Range<usize>,
    restaurants: usize,
) -> (u64, f64, usize) {
    for i in numbers {
        f.produce(
            &i.to_string(),
            active_campaign(&kill9_restaurant(i % restaurants), &kill9_campaign(i)).as_bytes(),
        )
        .await;
    }
    let mut service = Service::spawn_with_env(f, KILL9_CONFIG, round, &KILL9_ENV);
    service.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(60);
    while service.metric("campaign_notifier_campaigns_processed_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "round {round} processed nothing:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let wait_ms = random_below(400);
    std::thread::sleep(Duration::from_millis(wait_ms));
    let processed = service.metric("campaign_notifier_campaigns_processed_total");
    service.kill_hard();
    let killed = (wait_ms, processed, f.feedback_rows().await.len());
    for line in service
        .log_text()
        .lines()
        .filter(|l| l.contains("ledger: recovered owner"))
    {
        eprintln!("round {round}: {line}");
    }
    killed
}

/// Waits up to 240 s until both sinks hold `total` notifications and the killed instances' marks
/// are cleared too: when every notification they marked had landed before the kill, both sinks
/// are complete before recovery (which waits for the dead owners' sends to settle) takes the
/// marks over.
async fn wait_every_notification_and_no_mark(f: &Fixture, total: usize, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while f.output_count() < total as i64
        || f.feedback_rows().await.len() < total
        || f.outbox_marks().await > 0
    {
        assert!(
            Instant::now() < deadline,
            "{} rows, {} messages of {total}, {} marks:\n{}",
            f.feedback_rows().await.len(),
            f.output_count(),
            f.outbox_marks().await,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_stream_good_ones_delivered_bad_ones_dead_lettered_no_restart() {
    let f = Fixture::new("hostile", 1).await;
    let restaurant = "73000000-0000-0000-0000-000000000001";
    let subscribers = subscribe_clients(&f, restaurant, 2).await;
    let service = Service::start(&f, "");
    let hostile = hostile_messages(restaurant, unix_now());
    let sql = "'; DROP TABLE subscribers_feedback; --";
    let good = produce_each_before_a_good_one_that_reads_as_sql(&f, restaurant, &hostile, sql).await;
    service.wait_processed((hostile.len() + good.len()) as u64, Duration::from_secs(60));

    let expected = once_each(&good, &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    let contents: Vec<String> =
        f.db.query(
            "SELECT DISTINCT adv_campaign_content FROM subscribers_feedback",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(contents, vec![sql.to_string()], "stored as text, verbatim");

    assert_dead_lettered_in_source_order(&f, &hostile);
    for code in ["not_utf8", "too_large", "out_of_range", "ended"] {
        assert!(
            service.metric_with(
                "campaign_notifier_dead_letters_total",
                &format!("reason=\"{code}\"")
            ) >= 1.0,
            "{code} counted"
        );
    }
    assert_eq!(
        service.metric("campaign_notifier_actor_restarts_total"),
        0.0
    );
    drop(service);
    f.cleanup().await;
}

/// Eight hostile messages for `restaurant`, each with the reason code it is dead-lettered with.
fn hostile_messages(restaurant: &str, now: i64) -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (b"\xc3\x28\xa0\xa1 not utf-8".to_vec(), "not_utf8"),
        (
            format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes(),
            "too_large",
        ),
        (format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(), "not_json"),
        (
            campaign(restaurant, &"x".repeat(1 << 20), now - 10, now + 10).into_bytes(),
            "too_large",
        ),
        (campaign(restaurant, "c-neg", -5, now + 10).into_bytes(), "out_of_range"),
        (
            campaign(restaurant, "c-huge", now, 9_223_372_036_854_775_807).into_bytes(),
            "out_of_range",
        ),
        (campaign(restaurant, "c-over", now - 7200, now - 3600).into_bytes(), "ended"),
        (
            br#"{"restaurant_id":"r","adv_campaign_id":"c","adv_campaign_content":"a\u0000b","adv_campaign_owner":"o","adv_campaign_owner_contact":"e","adv_campaign_datetime_start":1,"adv_campaign_datetime_end":2,"datetime_created":1}"#.to_vec(),
            "invalid_char",
        ),
    ]
}

/// Produces each of `hostile` (keyed `bad-<i>`), each followed by a valid campaign (`c-good-<i>`)
/// whose text is `sql`, which is just text; returns the valid campaigns' ids.
async fn produce_each_before_a_good_one_that_reads_as_sql(
    f: &Fixture,
    restaurant: &str,
    hostile: &[(Vec<u8>, &str)],
    sql: &str,
) -> Vec<String> {
    let mut good = Vec::new();
    for (i, (bytes, _)) in hostile.iter().enumerate() {
        f.produce(&format!("bad-{i}"), bytes).await;
        // A valid campaign whose text looks like SQL is just text.
        let id = format!("c-good-{i}");
        let mut v: serde_json::Value =
            serde_json::from_str(&active_campaign(restaurant, &id)).unwrap();
        v["adv_campaign_content"] = sql.into();
        f.produce(&format!("good-{i}"), v.to_string().as_bytes())
            .await;
        good.push(id);
    }
    good
}

/// A campaign over already is dead-lettered after the lifecycle's answer, a malformed message
/// at once: the topic's order is not the input's, each letter names its source offset.
fn assert_dead_lettered_in_source_order(f: &Fixture, hostile: &[(Vec<u8>, &str)]) {
    let mut letters = f.read_topic(&f.dead_letter_topic);
    letters.sort_by_key(|l| l.headers["dlq.source.offset"].parse::<i64>().unwrap());
    assert_eq!(letters.len(), hostile.len());
    for (i, (letter, (bytes, code))) in letters.iter().zip(hostile).enumerate() {
        assert_eq!(letter.headers["dlq.reason.code"], *code, "message {i}");
        let omitted = letter.headers.contains_key("dlq.payload.omitted");
        if !omitted {
            assert_eq!(
                &letter.payload.clone().unwrap_or_default(),
                bytes,
                "message {i}"
            );
        }
        assert_eq!(letter.headers["dlq.source.offset"], (2 * i).to_string());
    }
}

const SLOW: [(&str, &str); 1] = [("CAMPAIGN_NOTIFIER__KAFKA__MAX_IN_FLIGHT_CAMPAIGNS", "4")];

#[tokio::test(flavor = "multi_thread")]
async fn postgres_unreachable_for_seconds_mid_run() {
    let f = Fixture::new("pgdown", 2).await;
    let expected = seed(&f, "pgdown", 20, 40, 200).await;
    let config = "[writers]\nrestart_backoff_initial_ms = 100\nrestart_backoff_max_ms = 1000\n";
    // A password in the URL (trust auth ignores it) that must never reach the log, even while
    // every connection fails.
    let url = f
        .db_url
        .replacen("postgres@", "postgres:pw-never-logged@", 1);
    assert_ne!(url, f.db_url);
    let env = [SLOW[0], ("CAMPAIGN_NOTIFIER__POSTGRES__URL", url.as_str())];
    let mut service = Service::spawn_with_env(&f, config, 0, &env);
    service.wait_ready();
    service.wait_processed(10, Duration::from_secs(60));
    f.set_postgres_reachable(false).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = service.metric("campaign_notifier_campaigns_processed_total");
    f.set_postgres_reachable(true).await;
    wait_complete(&f, expected.len(), Duration::from_secs(120), &|| {
        service.log_text()
    })
    .await;
    assert!(service.terminate().success(), "{}", service.log_text());
    eprintln!("campaigns processed when Postgres came back: {during}");
    let log = service.log_text();
    assert!(
        log.contains("postgres writer: cannot connect"),
        "the failed reconnects were logged:\n{log}"
    );
    assert!(
        !log.contains("pw-never-logged"),
        "the password was logged:\n{log}"
    );
    assert_exactly_once(&f, &expected).await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_stopped_and_started_mid_run() {
    let dir = std::env::temp_dir().join(format!(
        "cn-test-own-broker-{}",
        std::env::var("CN_TEST_RUN_ID").unwrap_or_default()
    ));
    let mut broker = OwnBroker::start(dir.clone());
    let f = Fixture::new_on("brokerdown", 2, &broker.address()).await;
    let expected = seed(&f, "brokerdown", 20, 40, 200).await;
    let mut service = Service::spawn_with_env(&f, "", 0, &SLOW);
    service.wait_ready();
    service.wait_processed(10, Duration::from_secs(60));
    broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    broker.resume();
    wait_complete(&f, expected.len(), Duration::from_secs(180), &|| {
        service.log_text()
    })
    .await;
    assert!(service.terminate().success(), "{}", service.log_text());
    assert_exactly_once(&f, &expected).await;
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_killed_the_other_takes_over_its_partitions_and_work() {
    let f = Fixture::new("twoinst", 4).await;
    seed(&f, "twoinst", 20, 40, 0).await;
    let config = "[ledger]\ntakeover_after_secs = 8\n[writers]\nkafka_message_timeout_ms = 5000\n";
    let env = [
        SLOW[0],
        ("CAMPAIGN_NOTIFIER__KAFKA__ORPHANED_PARTITION_SECS", "10"),
    ];
    let mut a = Service::spawn_with_env(&f, config, 1, &env);
    let mut b = Service::spawn_with_env(&f, config, 2, &env);
    a.wait_ready();
    b.wait_ready();
    // Campaigns only once the group has settled with partitions on both, so both get work.
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_two_partitions_each(&a, &b, deadline);
    let expected = produce_campaigns(&f, "twoinst", 20, 40, 300).await;
    // Both must have work before one dies.
    wait_both_working(&a, &b, deadline);
    a.kill_hard();
    // What the dead instance had written to Postgres but not confirmed in Kafka is finished by
    // the survivor's ledger once it is older than takeover_after_secs: no mark is left.
    wait_no_mark_left(&f, &b).await;
    // The survivor ends up consuming every partition (with Tansu 0.6.0 through its orphan
    // watch, which rejoins the group) and finishes the stream alone.
    wait_complete(&f, expected.len(), Duration::from_secs(180), &|| {
        b.log_text()
    })
    .await;
    let log = b.log_text();
    assert_the_survivor_holds_all_four_partitions(&log);
    assert!(b.terminate().success(), "{log}");
    assert_exactly_once(&f, &expected).await;
    f.cleanup().await;
}

fn wait_two_partitions_each(a: &Service, b: &Service, deadline: Instant) {
    let settled = |s: &Service| s.assigned_partitions() == Some(2);
    while !(settled(a) && settled(b)) {
        assert!(
            Instant::now() < deadline,
            "the group did not settle with two partitions each:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_both_working(a: &Service, b: &Service, deadline: Instant) {
    while a.metric("campaign_notifier_campaigns_processed_total") < 5.0
        || b.metric("campaign_notifier_campaigns_processed_total") < 5.0
    {
        assert!(
            Instant::now() < deadline,
            "both instances should be working:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 60 s until no outbox mark is left; says whether the survivor took the dead
/// instance's over.
async fn wait_no_mark_left(f: &Fixture, survivor: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let marks: i64 = f.outbox_marks().await;
        // Marks of the dead instance can only be cleared by the survivor's takeover (or there
        // were none at the moment of the kill).
        if marks == 0 {
            let took_over = survivor.log_text().contains("ledger: recovered owner");
            eprintln!("no marks left; the survivor took over the dead one's: {took_over}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{marks} marks left:\n{}",
            survivor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The survivor's last assignment, in its `log`, is all four partitions.
fn assert_the_survivor_holds_all_four_partitions(log: &str) {
    for line in log
        .lines()
        .filter(|l| l.contains("rejoining") || l.contains("assigned"))
    {
        eprintln!("survivor: {line}");
    }
    let last_assignment = log
        .lines()
        .rev()
        .find(|l| l.contains("kafka reader: assigned"))
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        last_assignment.matches(", ").count(),
        3,
        "the survivor holds all four partitions: {last_assignment}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_signal_exits_at_once_and_a_restart_finishes_exactly_once() {
    let f = Fixture::new("twosig", 2).await;
    let expected = seed(&f, "twosig", 20, 40, 150).await;
    let mut service = Service::spawn_with_env(&f, "", 0, &SLOW);
    service.wait_ready();
    service.wait_processed(5, Duration::from_secs(60));
    service.signal("TERM");
    std::thread::sleep(Duration::from_millis(5));
    let status = service.terminate();
    assert_eq!(status.code(), Some(130), "{}", service.log_text());
    assert!(
        service.log_text().contains("second SIGTERM"),
        "{}",
        service.log_text()
    );

    let mut service = Service::spawn_with_env(&f, "", 1, &[]);
    service.wait_ready();
    wait_complete(&f, expected.len(), Duration::from_secs(120), &|| {
        service.log_text()
    })
    .await;
    assert!(service.terminate().success(), "{}", service.log_text());
    assert_exactly_once(&f, &expected).await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writer_restarting_beyond_its_limit_stops_the_service_with_exit_code_3() {
    let f = Fixture::new("restartlimit", 1).await;
    let config = "[writers]\nrestart_limit = 3\nrestart_window_secs = 60\n\
                  restart_backoff_initial_ms = 50\nrestart_backoff_max_ms = 200\n";
    let mut service = Service::spawn(&f, config, 0);
    service.wait_ready();
    // Postgres stays unreachable for this service: its writer can only keep restarting.
    f.set_postgres_reachable(false).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = service.try_exit() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    f.set_postgres_reachable(true).await;
    let log = service.log_text();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("restarted more than 3 times"), "{log}");
    f.cleanup().await;
}

/// An instance started right after the only member was killed joins while the dead member's
/// session is still open. Tansu 0.6.0 then assigns it nothing, and nothing again when the session
/// expires; the orphan watch must see the waiting partitions from an instance with no partitions
/// at all, and rejoin.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_right_after_a_kill_9_consumes_even_when_the_broker_assigns_it_nothing() {
    let f = Fixture::new("idlejoin", 4).await;
    let expected = seed(&f, "idlejoin", 10, 20, 300).await;
    let env = [
        SLOW[0],
        ("CAMPAIGN_NOTIFIER__KAFKA__ORPHANED_PARTITION_SECS", "10"),
    ];
    let mut first = Service::spawn_with_env(&f, "", 1, &env);
    first.wait_ready();
    first.wait_processed(20, Duration::from_secs(60));
    first.kill_hard();
    // Joining a few seconds later, as an instance with a large snapshot to load does.
    std::thread::sleep(Duration::from_secs(3));
    let second = Service::spawn_with_env(&f, "", 2, &env);
    let deadline = Instant::now() + Duration::from_secs(90);
    while f.feedback_rows().await.len() < expected.len() || f.output_count() < expected.len() as i64
    {
        assert!(
            Instant::now() < deadline,
            "{} of {} rows after 90 s:\n{}",
            f.feedback_rows().await.len(),
            expected.len(),
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut second = second;
    assert!(second.terminate().success(), "{}", second.log_text());
    assert_exactly_once(&f, &expected).await;
    f.cleanup().await;
}

/// One campaign to a restaurant with a million subscribers, the service killed with SIGKILL in
/// the middle of it: each subscriber is notified exactly once in both sinks, and the service's
/// memory beyond its subscriber snapshot stays within what `writers.max_notifications_in_flight`
/// allows (the campaign is written a slice at a time), whatever the audience.
#[tokio::test(flavor = "multi_thread")]
async fn a_million_subscriber_campaign_with_a_kill_inside_goes_through_once_in_bounded_memory() {
    const SUBSCRIBERS: i64 = 1_000_000;
    const BUDGET: usize = 100_000;
    // At most 1 KiB per notification in flight beyond the snapshot. Before the campaign was
    // written in slices, the first instance had grown by 137 MiB when Postgres alone had the
    // whole campaign (one transaction of a million rows), before any of it went to Kafka.
    const ALLOWED_GROWTH_MIB: f64 = BUDGET as f64 / 1024.0;
    let f = Fixture::new("million", 4).await;
    let restaurant = "74000000-0000-0000-0000-000000000001";
    subscribe_a_million(&f, restaurant, SUBSCRIBERS).await;
    // No reload during the run: a reload holds two snapshots for a moment, which is the cache's
    // memory, not the campaign's.
    let config = format!(
        "[writers]\nmax_notifications_in_flight = {BUDGET}\n[cache]\nrefresh_interval_secs = 3600\n"
    );

    let mut first = Service::start_numbered(&f, &config, 1);
    let ready_mib = first.memory_mib("VmRSS");
    f.produce("m", active_campaign(restaurant, "c-million").as_bytes())
        .await;
    wait_rows_for_300_s(&f, SUBSCRIBERS * 3 / 10, &first).await;
    let peak_mib = first.memory_mib("VmHWM");
    let (rows_at_kill, sent_at_kill) = (f.feedback_count().await, f.output_count());
    first.kill_hard();
    eprintln!(
        "first instance: {ready_mib:.0} MiB resident with the snapshot loaded, peak {peak_mib:.0} MiB; \
         killed with {rows_at_kill} rows and {sent_at_kill} messages written"
    );

    let second = Service::start_numbered(&f, &config, 2);
    let second_ready_mib = second.memory_mib("VmRSS");
    wait_in_both_sinks_and_no_mark_for_600_s(&f, SUBSCRIBERS, &second).await;
    let second_peak_mib = second.memory_mib("VmHWM");
    eprintln!(
        "second instance: {second_ready_mib:.0} MiB resident with the snapshot loaded, peak \
         {second_peak_mib:.0} MiB, budget {BUDGET} notifications in flight"
    );

    assert_each_of_the_million_once_in_both_sinks(&f, SUBSCRIBERS).await;
    for (instance, ready, peak) in [
        ("first", ready_mib, peak_mib),
        ("second", second_ready_mib, second_peak_mib),
    ] {
        assert!(
            peak - ready < ALLOWED_GROWTH_MIB,
            "the {instance} instance grew from {ready:.0} to {peak:.0} MiB for a campaign \
             with {BUDGET} notifications in flight at most"
        );
    }
    f.cleanup().await;
}

async fn subscribe_a_million(f: &Fixture, restaurant: &str, subscribers: i64) {
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) \
         SELECT $1, 'm-' || lpad(n::text, 7, '0') FROM generate_series(0, $2::int8 - 1) AS n",
        &[&restaurant, &subscribers],
    )
    .await
    .expect("a million subscribers");
}

/// Waits up to 300 s until Postgres holds `rows` notifications.
async fn wait_rows_for_300_s(f: &Fixture, rows: i64, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while f.feedback_count().await < rows {
        assert!(
            Instant::now() < deadline,
            "{} rows after 300 s:\n{}",
            f.feedback_count().await,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 600 s until both sinks hold `n` notifications and no outbox mark is left.
async fn wait_in_both_sinks_and_no_mark_for_600_s(f: &Fixture, n: i64, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while f.feedback_count().await < n || f.output_count() < n || f.outbox_marks().await > 0 {
        assert!(
            Instant::now() < deadline,
            "{} rows, {} messages, {} marks after 600 s:\n{}",
            f.feedback_count().await,
            f.output_count(),
            f.outbox_marks().await,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `subscribers` rows of as many clients in Postgres, and as many clients in the output topic,
/// none of them twice.
async fn assert_each_of_the_million_once_in_both_sinks(f: &Fixture, subscribers: i64) {
    let distinct: i64 =
        f.db.query_one(
            "SELECT count(DISTINCT client_id) FROM subscribers_feedback \
             WHERE adv_campaign_id = 'c-million'",
            &[],
        )
        .await
        .expect("distinct clients")
        .get(0);
    assert_eq!(
        f.feedback_count().await,
        subscribers,
        "rows in subscribers_feedback"
    );
    assert_eq!(distinct, subscribers, "clients in subscribers_feedback");
    let counts = f.output_client_counts();
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(
        counts.len() as i64,
        subscribers,
        "clients in the output topic"
    );
}
