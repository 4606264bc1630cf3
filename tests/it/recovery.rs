//! Recovery of what a stopped instance left half-sent, against the local Postgres and the run's
//! broker: a dead owner's uncertain last sends, a backlog larger than one page with a kill in the
//! middle of its recovery, and a read-back longer than the stall limit. Run with
//! `./scripts/test.sh`.

use std::time::{Duration, Instant};

use crate::common::*;
use campaign_actors::cache::snapshot::ClientId;
use campaign_actors::campaign::Campaign;
use campaign_actors::kafka::{scan, ProducerSettings};
use campaign_actors::notification::{fingerprint_of, OutputEncoder, Wanted};
use campaign_actors::sinks::pg_writer::campaign_params;
use rdkafka::producer::FutureRecord;

/// The owner id of the instance that "died" in these tests: nobody holds its lock.
const DEAD_OWNER: i32 = 424_242;
const RESTAURANT: &str = "73000000-0000-0000-0000-000000000001";
/// Short, so that a dead owner is taken over about eight seconds after it is first seen.
const CONFIG: &str = "[writers]\nkafka_message_timeout_ms = 3000\n";

fn backlog_campaign(id: &str) -> Campaign {
    let now = unix_now();
    Campaign {
        restaurant_id: RESTAURANT.into(),
        adv_campaign_id: id.into(),
        adv_campaign_content: "recovered dish".into(),
        adv_campaign_owner: "Ivanov Ivan Ivanovich".into(),
        adv_campaign_owner_contact: "iiivanov@restaurant.ru".into(),
        adv_campaign_datetime_start: now - 60,
        adv_campaign_datetime_end: now + 3600,
        datetime_created: now - 120,
    }
}

/// What a dead owner leaves: `clients` rows of `campaign` in `subscribers_feedback`, and outbox
/// marks of at most 10 000 of them each (as the Postgres writer makes them), all in its name.
async fn leave_backlog(f: &Fixture, campaign: &Campaign, trigger: i64, clients: usize) {
    let [r, c, content, owner, contact, start, end, created] = campaign_params(campaign);
    f.db.execute(
        "INSERT INTO subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content, \
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'client-' || lpad(n::text, 7, '0'), $9::int8 \
         FROM generate_series(0, $10 - 1) AS n",
        &[
            r,
            c,
            content,
            owner,
            contact,
            start,
            end,
            created,
            &trigger,
            &(clients as i32),
        ],
    )
    .await
    .expect("backlog rows");
    f.db.execute(
        "INSERT INTO campaign_notifier_outbox (token, owner, feedback_ids) \
         SELECT ($1::int4::int8 << 32) + k + (SELECT count(*) FROM campaign_notifier_outbox \
                                             WHERE owner = $1), \
                $1::int4, array_agg(id ORDER BY id) \
         FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 10000 AS k \
               FROM subscribers_feedback WHERE adv_campaign_id = $2) r \
         GROUP BY k",
        &[&DEAD_OWNER, &campaign.adv_campaign_id],
    )
    .await
    .expect("backlog marks");
}

fn client(n: usize) -> String {
    format!("client-{n:07}")
}

/// Produces the notification of `client` to the output topic, exactly as the service encodes it.
async fn produce_notification(f: &Fixture, campaign: &Campaign, trigger: i64, client: &str) {
    let mut payload = Vec::new();
    OutputEncoder::new(campaign, trigger).encode(ClientId::Text(client), &mut payload);
    f.producer
        .send(
            FutureRecord::to(&f.output_topic)
                .key(client)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce notification");
}

async fn wait_no_marks(f: &Fixture, service: &Service, within: Duration) {
    let deadline = Instant::now() + within;
    while f.outbox_marks().await > 0 {
        assert!(
            Instant::now() < deadline,
            "{} marks left:\n{}",
            f.outbox_marks().await,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every (campaign, client) of the backlog exactly once in the output topic, and nothing else.
fn assert_each_once(f: &Fixture, campaign: &str, clients: usize) {
    let pairs = output_pairs(f);
    let twice: Vec<_> = pairs.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let missing: Vec<String> = (0..clients)
        .map(client)
        .filter(|c| !pairs.contains_key(&(campaign.to_string(), c.clone())))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    assert_eq!(pairs.len(), clients);
}

/// Waits up to 90 s until recovery has sent `sent` notifications, polling every `poll`.
async fn wait_recovery_under_way(f: &Fixture, sent: i64, poll: Duration, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while f.output_count() < sent {
        assert!(
            Instant::now() < deadline,
            "recovery did not get going:\n{}",
            service.log_text()
        );
        tokio::time::sleep(poll).await;
    }
}

/// A dead owner's produce request may land after its process is gone (the broker had it, or
/// librdkafka on another path was still retrying). Recovery that read the topic back at once
/// missed it and sent the notification again.
#[tokio::test(flavor = "multi_thread")]
async fn a_send_still_on_its_way_when_the_owner_died_is_not_sent_again() {
    let f = Fixture::new("late", 1).await;
    let campaign = backlog_campaign("c-late");
    let trigger = unix_now();
    leave_backlog(&f, &campaign, trigger, 1).await;

    let service = Service::start(&f, CONFIG);
    // The dead owner's request lands now, after the new instance has started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce_notification(&f, &campaign, trigger, &client(0)).await;

    wait_no_marks(&f, &service, Duration::from_secs(60)).await;
    let log = service.log_text();
    assert!(log.contains("ledger: recovered owner"), "{log}");
    assert_each_once(&f, "c-late", 1);
    f.cleanup().await;
}

/// A backlog of several pages; the instance recovering it is killed in the middle, and the next
/// one finishes it: every notification exactly once, no mark left.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_recovery_of_a_large_backlog_sends_each_notification_once() {
    const CLIENTS: usize = 120_000;
    let f = Fixture::new("bigbacklog", 2).await;
    let campaign = backlog_campaign("c-backlog");
    leave_backlog(&f, &campaign, unix_now(), CLIENTS).await;

    let mut first = Service::spawn(&f, CONFIG, 1);
    wait_recovery_under_way(&f, 20_000, Duration::from_millis(50), &first).await;
    first.kill_hard();
    let (sent, marks) = (f.output_count(), f.outbox_marks().await);
    eprintln!("killed with {sent} of {CLIENTS} sent and {marks} marks left");
    assert!(marks > 0, "the kill came after recovery had finished");

    let second = Service::start_numbered(&f, CONFIG, 2);
    wait_no_marks(&f, &second, Duration::from_secs(180)).await;
    eprintln!(
        "{}",
        second
            .log_text()
            .lines()
            .filter(|l| l.contains("ledger: "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_each_once(&f, "c-backlog", CLIENTS);
    f.cleanup().await;
}

/// The read-back runs as long as it keeps receiving: a topic that takes longer to read than the
/// stall limit is read to its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_back_longer_than_its_stall_limit_finishes_while_it_progresses() {
    const MESSAGES: usize = 150_000;
    let f = Fixture::new("longscan", 2).await;
    let campaign = backlog_campaign("c-scan");
    let since_ms = unix_now() * 1000;
    let encoder = OutputEncoder::new(&campaign, 1);
    let mut deliveries = Vec::with_capacity(MESSAGES);
    let mut payload = Vec::new();
    for n in 0..MESSAGES {
        payload.clear();
        let c = client(n);
        encoder.encode(ClientId::Text(&c), &mut payload);
        loop {
            match f
                .producer
                .send_result(FutureRecord::to(&f.output_topic).key(&c).payload(&payload))
            {
                Ok(d) => break deliveries.push(d),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for d in deliveries {
        d.await.expect("delivery").expect("delivered");
    }
    // The last notification is the one looked for, so the read must reach the end.
    let wanted: Wanted = [fingerprint_of(&campaign, &client(MESSAGES - 1))].into();
    let settings = ProducerSettings {
        brokers: f.brokers.clone(),
        message_timeout_ms: 3000,
        overrides: Vec::new(),
    };
    let topic = f.output_topic.clone();
    let stall = Duration::from_secs(1);
    let started = Instant::now();
    let found = tokio::task::spawn_blocking(move || {
        scan::find_sent(&settings, &topic, since_ms, &wanted, stall)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    eprintln!("read back {MESSAGES} messages in {took:.1?}");
    let found = found.expect("the read-back fails only when it stops receiving");
    assert_eq!(found.len(), 1);
    assert!(
        took > stall,
        "the read took {took:?}: too short to show anything about a {stall:?} limit"
    );
    f.cleanup().await;
}

/// The instance recovering a dead owner's backlog has its ledger's Postgres sessions cut in the
/// middle of the sends (its ledger restarts), and later another instance is killed with work of
/// its own in flight: the first goes on with the backlog where it stopped, and finishes the second
/// one's work too, each notification exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_whose_sessions_are_cut_goes_on_and_a_later_death_is_recovered_too() {
    const CLIENTS: usize = 120_000;
    let f = Fixture::new("cuttakeover", 2).await;
    let campaign = backlog_campaign("c-cut-backlog");
    leave_backlog(&f, &campaign, unix_now(), CLIENTS).await;
    // The recovering instance reads a topic nobody writes to: the campaigns below are the other
    // instance's alone.
    let idle = f.create_topic("idle", 1).await;
    let idle_input = [("CAMPAIGN_NOTIFIER__KAFKA__INPUT_TOPIC", idle.as_str())];
    let survivor = Service::spawn_with_env(&f, CONFIG, 1, &idle_input);
    wait_recovery_under_way(&f, 10_000, Duration::from_millis(20), &survivor).await;
    let cut = f.terminate_sessions_of(survivor.pid(), "ledger").await;
    let sent_at_cut = f.output_count();
    eprintln!("cut {cut} ledger sessions with {sent_at_cut} of {CLIENTS} sent");
    assert!(cut >= 1, "the ledger's sessions were found");
    assert!(
        (sent_at_cut as usize) < CLIENTS,
        "the cut came after recovery had finished"
    );

    // Another instance, whose notifications linger in librdkafka, dies with them in Postgres
    // and not yet in Kafka.
    let restaurant = "73000000-0000-0000-0000-000000000002";
    let audience: Vec<String> = (0..200).map(|n| format!("late-{n:03}")).collect();
    let refs: Vec<&str> = audience.iter().map(String::as_str).collect();
    f.subscribe(restaurant, &refs).await;
    let lingering = format!("{CONFIG}[kafka.producer]\n\"linger.ms\" = \"2500\"\n");
    let mut other = Service::start_numbered(&f, &lingering, 2);
    for i in 0..5 {
        f.produce(
            &i.to_string(),
            active_campaign(restaurant, &format!("c-cut-{i}")).as_bytes(),
        )
        .await;
    }
    wait_the_five_campaigns_in_postgres(&f, &other).await;
    other.kill_hard();
    let killed_at = Instant::now();

    wait_both_recovered(&f, CLIENTS + 1000, killed_at, &survivor).await;
    eprintln!(
        "both recovered {:.1} s after the second death",
        killed_at.elapsed().as_secs_f64()
    );
    let pairs = output_pairs(&f);
    let twice: Vec<_> = pairs.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    for i in 0..5 {
        for c in &audience {
            assert!(pairs.contains_key(&(format!("c-cut-{i}"), c.clone())));
        }
    }
    f.cleanup().await;
}

/// Waits up to 60 s until Postgres holds the 1 000 rows of the five `c-cut-<i>` campaigns.
async fn wait_the_five_campaigns_in_postgres(f: &Fixture, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: i64 =
            f.db.query_one(
                "SELECT count(*) FROM subscribers_feedback WHERE adv_campaign_id LIKE 'c-cut-%' \
                 AND adv_campaign_id <> 'c-cut-backlog'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if rows == 1000 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the output topic holds `pairs` distinct pairs and no mark is left, within the
/// dead instance's lease, the settle time of its producer (3 s plus 5 s) and a minute after
/// `killed_at`.
async fn wait_both_recovered(f: &Fixture, pairs: usize, killed_at: Instant, service: &Service) {
    let deadline = killed_at + Duration::from_secs(10 + 8 + 60);
    loop {
        let sent = output_pairs(f);
        let done = sent.len() == pairs && f.outbox_marks().await == 0;
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} pairs in Kafka, {} marks left:\n{}",
            sent.len(),
            pairs,
            f.outbox_marks().await,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// Among a dead owner's marks, a notification Kafka refuses for good (larger than the producer
/// takes): it is withdrawn from Postgres and its campaign dead-lettered, and the rest of the
/// backlog is recovered, instead of the recovery failing on it at every sweep.
#[tokio::test(flavor = "multi_thread")]
async fn a_notification_kafka_refuses_during_recovery_is_dead_lettered_and_the_rest_recovered() {
    let f = Fixture::new("poisonbacklog", 1).await;
    let ordinary = backlog_campaign("c-ordinary");
    leave_backlog(&f, &ordinary, unix_now(), 50).await;
    let mut poison = backlog_campaign("c-oversized");
    poison.adv_campaign_content = "x".repeat(30_000);
    leave_backlog(&f, &poison, unix_now(), 2).await;
    let config = format!("{CONFIG}[kafka.producer]\n\"message.max.bytes\" = \"20000\"\n");

    let service = Service::start(&f, &config);
    wait_no_marks(&f, &service, Duration::from_secs(60)).await;
    let pairs = output_pairs(&f);
    assert_eq!(
        pairs.len(),
        50,
        "the ordinary campaign recovered: {pairs:?}"
    );
    assert!(pairs.keys().all(|(c, _)| c == "c-ordinary"));
    let left: i64 =
        f.db.query_one(
            "SELECT count(*) FROM subscribers_feedback WHERE adv_campaign_id = 'c-oversized'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "the refused notifications are withdrawn from Postgres"
    );
    let letters = f.read_topic(&f.dead_letter_topic);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0]
            .headers
            .get("dlq.reason.code")
            .map(String::as_str),
        Some("sink_refused")
    );
    f.cleanup().await;
}

/// A dead owner whose clock ran a minute behind Postgres': the notifications it had sent carry
/// its producer's timestamps, a minute before the marks' `created_at`. Its row says how far off
/// its clock was (it reports that at every renewal), so the read-back starts early enough to find
/// them and sends none of them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_owner_whose_clock_ran_behind_is_recovered_without_sending_twice() {
    const CLIENTS: usize = 300;
    const BEHIND_MS: i64 = 60_000;
    let f = Fixture::new("skew", 1).await;
    let campaign = backlog_campaign("c-skew");
    let trigger = unix_now();
    leave_backlog(&f, &campaign, trigger, CLIENTS).await;
    f.db.execute(
        "INSERT INTO campaign_notifier_owners \
             (owner, host, pid, input_topic, expires_at, clock_offset_ms, settle_ms) \
         VALUES ($1, 'skewed-host', 1, '', now() - interval '1 minute', $2, 3000)",
        &[&DEAD_OWNER, &BEHIND_MS],
    )
    .await
    .expect("the dead owner's row");
    let stamped = campaign_actors::clock::unix_ms() - BEHIND_MS;
    for n in 0..CLIENTS {
        let mut payload = Vec::new();
        let c = client(n);
        OutputEncoder::new(&campaign, trigger).encode(ClientId::Text(&c), &mut payload);
        f.producer
            .send(
                FutureRecord::to(&f.output_topic)
                    .key(&c)
                    .payload(&payload)
                    .timestamp(stamped),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce notification");
    }

    // Others went on writing to the topic since, on clocks that are right.
    let other = backlog_campaign("c-skew-other");
    produce_notification(&f, &other, trigger, "someone-else").await;

    let service = Service::start(&f, CONFIG);
    wait_no_marks(&f, &service, Duration::from_secs(60)).await;
    let pairs = output_pairs(&f);
    let twice: Vec<_> = pairs.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(pairs.len(), CLIENTS + 1);
    f.cleanup().await;
}

/// A dead owner's notifications triggered after 2038-01-19T03:14:07Z, in a
/// `trigger_datetime_created` migrated to int8, are recovered with their trigger as it was
/// (recovery read the column as int4 and failed at every sweep).
#[tokio::test(flavor = "multi_thread")]
async fn notifications_triggered_past_2038_in_an_int8_column_are_recovered_as_they_were() {
    const CLIENTS: usize = 3;
    let f = Fixture::new("trig8", 1).await;
    f.db.batch_execute(
        "ALTER TABLE public.subscribers_feedback \
         ALTER COLUMN trigger_datetime_created TYPE bigint",
    )
    .await
    .expect("migrate the column");
    let campaign = backlog_campaign("c-2038");
    let trigger = (1_i64 << 31) + 77;
    leave_backlog(&f, &campaign, trigger, CLIENTS).await;

    let service = Service::start(&f, CONFIG);
    wait_no_marks(&f, &service, Duration::from_secs(60)).await;
    assert_each_once(&f, "c-2038", CLIENTS);
    let triggers: Vec<i64> = f
        .read_output()
        .iter()
        .map(|(_, v)| v["trigger_datetime_created"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(triggers, vec![trigger; CLIENTS], "{}", service.log_text());
    f.cleanup().await;
}
