//! Recovery of what a stopped instance left half-sent, against the local Postgres and the run's
//! broker: a dead owner's uncertain last sends, a backlog larger than one page with a kill in the
//! middle of its recovery, and a read-back longer than the stall limit. Run with
//! `./scripts/test.sh`.

mod common;

use std::time::{Duration, Instant};

use campaign_actors::cache::snapshot::ClientId;
use campaign_actors::campaign::Campaign;
use campaign_actors::kafka::{scan, ProducerSettings};
use campaign_actors::notification::{fingerprint_of, OutputEncoder, Wanted};
use campaign_actors::sinks::pg_writer::campaign_params;
use common::*;
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
async fn leave_backlog(f: &Fixture, campaign: &Campaign, trigger: i32, clients: usize) {
    let [r, c, content, owner, contact, start, end, created] = campaign_params(campaign);
    f.db.execute(
        "INSERT INTO subscribers_feedback (restaurant_id, adv_campaign_id, adv_campaign_content, \
             adv_campaign_owner, adv_campaign_owner_contact, adv_campaign_datetime_start, \
             adv_campaign_datetime_end, datetime_created, client_id, trigger_datetime_created) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'client-' || lpad(n::text, 7, '0'), $9 \
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
         SELECT ($1::int4::int8 << 32) + k, $1::int4, array_agg(id ORDER BY id) \
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

/// A dead owner's produce request may land after its process is gone (the broker had it, or
/// librdkafka on another path was still retrying). Recovery that read the topic back at once
/// missed it and sent the notification again.
#[tokio::test(flavor = "multi_thread")]
async fn a_send_still_on_its_way_when_the_owner_died_is_not_sent_again() {
    let f = Fixture::new("late", 1).await;
    let campaign = backlog_campaign("c-late");
    let trigger = unix_now() as i32;
    leave_backlog(&f, &campaign, trigger, 1).await;

    let service = Service::start(&f, CONFIG);
    // The dead owner's request lands now, after the new instance has started.
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce_notification(&f, &campaign, i64::from(trigger), &client(0)).await;

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
    leave_backlog(&f, &campaign, unix_now() as i32, CLIENTS).await;

    let mut first = Service::spawn(&f, CONFIG, 1);
    let deadline = Instant::now() + Duration::from_secs(90);
    while f.output_count() < 20_000 {
        assert!(
            Instant::now() < deadline,
            "recovery did not get going:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
