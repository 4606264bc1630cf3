//! One owner at a time: instances that freeze, are cut off from Postgres, or keep a partition
//! busy for minutes, beside a live peer, against the run's Tansu broker and the local Postgres.
//! Each test ends with every (campaign, client) pair exactly once in both sinks, within a stated
//! bound of the fault. Run with `./scripts/test.sh`.
//!
//! The bounds follow from the defaults: a lease of `ledger.lease_ttl_secs` (10 s), a settle time
//! of the dead owner's `message.timeout.ms` plus 5 s, and a minute for the rest.

use std::time::{Duration, Instant};

use crate::common::*;

/// The producer's message timeout in these tests: a dead owner's sends settle 15 s after its
/// lease was fenced.
const MESSAGE_TIMEOUT: &str = "[writers]\nkafka_message_timeout_ms = 10000\n";
/// What an instance's notifications wait in librdkafka before they are sent: long enough that a
/// test can stop the instance while Postgres has them and Kafka does not.
const LINGERING: &str = "[kafka.producer]\n\"linger.ms\" = \"6000\"\n";
/// A partition that is not an instance's own, has messages waiting and has not moved for this
/// long makes it rejoin the group (unless a live owner holds the partition).
const ORPHAN: (&str, &str) = ("CAMPAIGN_NOTIFIER__KAFKA__ORPHANED_PARTITION_SECS", "10");
/// Lease, settle time and a minute.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10 + 15 + 60);

fn wait_until(
    what: &str,
    within: Duration,
    logs: &dyn Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until each instance holds one partition of the input topic.
fn wait_one_partition_each(a: &Service, b: &Service) {
    let one_each = |s: &Service| s.assigned_partitions() == Some(1);
    wait_until(
        "one partition each",
        Duration::from_secs(60),
        &|| format!("{}\n{}", a.log_text(), b.log_text()),
        || one_each(a) && one_each(b),
    );
}

/// An instance frozen (SIGSTOP) while Postgres has its rows and Kafka does not, one of them a
/// scheduled campaign it was firing: while it is still frozen, the other instance fences it,
/// waits for its sends to settle, and finishes its work (its marks and its fire); thawed after
/// two minutes, it finds it lost its lease and stops without writing anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_instance_is_taken_over_while_frozen_and_writes_nothing_once_thawed() {
    let f = Fixture::new("frozen", 2).await;
    subscribe_seeded(&f, 10, 30).await;
    let scheduled_restaurant = "75000000-0000-0000-0000-000000000001";
    let audience = subscribe_clients(&f, scheduled_restaurant, 300).await;

    let mut a = Service::start_numbered(&f, &format!("{MESSAGE_TIMEOUT}{LINGERING}"), 1);
    let start = unix_now() + 5;
    f.produce(
        "s",
        campaign(scheduled_restaurant, "c-frozen-fired", start, start + 3600).as_bytes(),
    )
    .await;
    let mut expected = once_each(&["c-frozen-fired"], &audience);
    expected.extend(produce_campaigns(&f, "frozen", 10, 30, 20).await);
    let total = expected.len() as i64;

    // Frozen once Postgres has every row, the fired campaign's included, and Kafka lacks some.
    wait_postgres_has_all(&f, total, &a).await;
    a.signal("STOP");
    let frozen_at = Instant::now();
    let sent_at_freeze = f.output_count();
    eprintln!("frozen with {total} rows in Postgres and {sent_at_freeze} messages in Kafka");
    assert!(
        sent_at_freeze < total,
        "Kafka had everything before the freeze"
    );

    let mut b = Service::spawn_with_env(&f, MESSAGE_TIMEOUT, 2, &[ORPHAN]);
    wait_complete(&f, total as usize, TAKEOVER_BOUND, &|| b.log_text()).await;
    eprintln!(
        "the other instance finished the frozen one's work {:.1} s after the freeze",
        frozen_at.elapsed().as_secs_f64()
    );
    assert_exactly_once(&f, &expected).await;

    thaw_two_minutes_after_the_freeze_and_see_it_stop_fenced(&mut a, frozen_at).await;
    // Whatever librdkafka of the thawed process held would have landed by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once(&f, &expected).await;
    assert!(b.terminate().success(), "{}", b.log_text());
    f.cleanup().await;
}

/// Waits up to 60 s until Postgres holds all `total` rows, the 300 of `c-frozen-fired` among them.
async fn wait_postgres_has_all(f: &Fixture, total: i64, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = f.feedback_rows().await.len() as i64;
        if rows == total && f.rows_of("c-frozen-fired").await == 300 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} of {total} rows:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Frozen for minutes, then thawed: it must stop without writing.
async fn thaw_two_minutes_after_the_freeze_and_see_it_stop_fenced(
    frozen: &mut Service,
    frozen_at: Instant,
) {
    let thaw_at = frozen_at + Duration::from_secs(120);
    tokio::time::sleep(thaw_at.saturating_duration_since(Instant::now())).await;
    frozen.signal("CONT");
    let status = frozen.wait_exit(Duration::from_secs(45), "after the thaw");
    assert!(!status.success(), "the thawed instance exits non-zero");
    assert!(
        frozen.log_text().contains("fenced"),
        "the thawed instance says its lease was fenced:\n{}",
        frozen.log_text()
    );
}

/// A live instance whose ledger sessions are cut and cannot be opened again (as with a DNS or
/// pooler failure, or a connection limit) while its writers' sessions go on, for two minutes: its
/// writers stop at the end of its lease, its peer fences it and finishes its work, and nothing
/// is sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_instance_cut_off_from_the_ledger_is_fenced_before_its_work_is_taken_over() {
    let f = Fixture::new("cutoff", 2).await;
    subscribe_seeded(&f, 20, 40).await;
    // A version before leases took a peer's marks over once they were this old. The cut-off
    // instance's notifications linger in librdkafka, so that it always has some on their way.
    let config = format!("{MESSAGE_TIMEOUT}[ledger]\ntakeover_after_secs = 15\n");
    let lingering = format!("{config}[kafka.producer]\n\"linger.ms\" = \"3000\"\n");
    let env = [
        ORPHAN,
        ("CAMPAIGN_NOTIFIER__KAFKA__MAX_IN_FLIGHT_CAMPAIGNS", "8"),
    ];
    let mut a = Service::spawn_with_env(&f, &lingering, 1, &env);
    let mut b = Service::spawn_with_env(&f, &config, 2, &env);
    a.wait_ready();
    b.wait_ready();
    // Campaigns only once the group has settled with a partition each: an instance that held
    // both for the first second could otherwise take all 300 before the other had any.
    wait_one_partition_each(&a, &b);
    let expected = produce_campaigns(&f, "cutoff", 20, 40, 300).await;
    wait_until(
        "both instances working",
        Duration::from_secs(60),
        &|| format!("{}\n{}", a.log_text(), b.log_text()),
        || {
            a.metric("campaign_notifier_campaigns_processed_total") >= 5.0
                && b.metric("campaign_notifier_campaigns_processed_total") >= 5.0
        },
    );
    f.allow_new_connections(false).await;
    let cut = f.terminate_sessions_of(a.pid(), "ledger").await;
    assert!(cut >= 1, "the first instance's ledger sessions were found");
    let cut_at = Instant::now();

    wait_complete(
        &f,
        expected.len(),
        TAKEOVER_BOUND + Duration::from_secs(30),
        &|| format!("{}\n-----\n{}", a.log_text(), b.log_text()),
    )
    .await;
    eprintln!(
        "everything in both sinks {:.1} s after the cut",
        cut_at.elapsed().as_secs_f64()
    );
    assert_exactly_once(&f, &expected).await;
    let_it_reconnect_two_minutes_after_the_cut_and_see_it_stop_fenced(&f, &mut a, cut_at).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once(&f, &expected).await;
    assert!(b.terminate().success(), "{}", b.log_text());
    f.cleanup().await;
}

/// Cut for two minutes in all; then it may connect again, and must write nothing.
async fn let_it_reconnect_two_minutes_after_the_cut_and_see_it_stop_fenced(
    f: &Fixture,
    cut_off: &mut Service,
    cut_at: Instant,
) {
    tokio::time::sleep(
        (cut_at + Duration::from_secs(120)).saturating_duration_since(Instant::now()),
    )
    .await;
    f.allow_new_connections(true).await;
    if cut_off.try_exit().is_none() {
        let status = cut_off.wait_exit(
            Duration::from_secs(30),
            "after it could reach Postgres again",
        );
        assert!(!status.success());
    }
    assert!(cut_off.log_text().contains("fenced"), "{}", cut_off.log_text());
}

/// A campaign to a restaurant with two million subscribers keeps its partition busy for longer
/// than the orphan watch's limit, with small campaigns queued behind it and on the other
/// partition: the other instance does not mistake its live owner for a dead one, so nobody
/// rejoins the group, the partition stays where it is and the big campaign is read once; both
/// sinks end with every notification.
#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_longer_than_the_orphan_limit_stays_with_its_live_owner_and_is_read_once() {
    const AUDIENCE: i64 = 2_000_000;
    let setup = Instant::now();
    let f = Fixture::new("longcampaign", 2).await;
    let big = "76000000-0000-0000-0000-000000000001";
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id) \
         SELECT $1, 'b-' || lpad(n::text, 7, '0') FROM generate_series(0, $2::int8 - 1) AS n",
        &[&big, &AUDIENCE],
    )
    .await
    .expect("the big audience");
    let small = subscribe_seeded(&f, 10, 20).await;
    eprintln!("subscribed in {:.0} s", setup.elapsed().as_secs_f64());
    let config = "[cache]\nrefresh_interval_secs = 3600\n";
    let mut a = Service::spawn_with_env(&f, config, 1, &[ORPHAN]);
    let mut b = Service::spawn_with_env(&f, config, 2, &[ORPHAN]);
    a.wait_ready();
    b.wait_ready();
    wait_one_partition_each(&a, &b);
    eprintln!(
        "both ready, one partition each, after {:.0} s",
        setup.elapsed().as_secs_f64()
    );
    let small_expected = produce_the_big_one_and_20_small_ones(&f, big, small.len()).await;
    let total = AUDIENCE as usize + small_expected;
    let started = Instant::now();
    wait_complete(&f, total, Duration::from_secs(900), &|| {
        format!("{}\n-----\n{}", a.log_text(), b.log_text())
    })
    .await;
    eprintln!(
        "{total} notifications in both sinks in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        started.elapsed() > Duration::from_secs(20),
        "the big campaign kept its partition busy for longer than the orphan limit"
    );
    assert_nobody_rejoined_or_read_a_campaign_again(&a, &b);
    assert_eq!(f.rows_of("c-big").await, AUDIENCE);
    // Postgres holds each pair once (its unique key), and Kafka as many notifications: the big
    // campaign was read and delivered once, by one instance. (Reading two million notifications
    // back from Tansu takes minutes; `a_million_subscriber_campaign_with_a_kill_inside_...` in
    // tests/it/faults.rs reads a million back client by client.)
    let rows = f.feedback_count().await;
    assert_eq!(rows as usize, total);
    assert_eq!(
        f.output_count() as usize,
        total,
        "as many in Kafka as in Postgres"
    );
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    f.cleanup().await;
}

/// `c-big` of `big` to partition 0, then 20 small campaigns of the seeded restaurants to both
/// partitions; returns how many notifications the small ones make (`small_audience` each).
async fn produce_the_big_one_and_20_small_ones(f: &Fixture, big: &str, small_audience: usize) -> usize {
    f.produce_to(0, "big", active_campaign(big, "c-big").as_bytes())
        .await;
    let mut small_expected = 0;
    for i in 0..20 {
        let id = format!("c-small-{i:02}");
        let restaurant = seeded_restaurant(i % 10);
        f.produce_to(
            i as i32 % 2,
            &id,
            active_campaign(&restaurant, &id).as_bytes(),
        )
        .await;
        small_expected += small_audience;
    }
    small_expected
}

fn assert_nobody_rejoined_or_read_a_campaign_again(a: &Service, b: &Service) {
    for s in [a, b] {
        assert!(
            !s.log_text().contains("rejoining"),
            "no instance rejoined the group:\n{}",
            s.log_text()
        );
    }
    let read_again: f64 = [a, b]
        .iter()
        .map(|s| {
            s.metric_with(
                "campaign_notifier_campaigns_processed_total",
                "outcome=\"already_notified\"",
            )
        })
        .sum();
    assert_eq!(read_again, 0.0, "no campaign was read a second time");
}
