//! Versions of a campaign: a newer one replaces or cancels a kept campaign, an older one is
//! ignored, a change after the start notifies nobody again, the newer version wins whatever
//! partition and offset it comes from, and the store never un-fires a campaign.

use std::collections::BTreeMap;
use std::time::Duration;

use campaign_actors::lifecycle::rules::State;
use campaign_actors::lifecycle::store::{self, Arrival};

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn newer_versions_replace_or_cancel_a_scheduled_campaign_and_a_change_after_it_fired_notifies_nobody(
) {
    let f = Fixture::new("versions", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000003";
    let subscribers = clients("v", 2);
    subscribe_all(&f, restaurant, &subscribers).await;
    let service = Service::start(&f, "");
    let messages = replaced_cancelled_and_edited_live(restaurant, unix_now());
    for (i, m) in messages.iter().enumerate() {
        f.produce(&i.to_string(), m.as_bytes()).await;
    }
    service.wait_processed(messages.len() as u64, Duration::from_secs(30));
    assert_eq!(
        outcome(&service, "scheduled"),
        3.0,
        "two versions of one, one of the other"
    );
    assert_eq!(outcome(&service, "superseded"), 1.0);
    assert_eq!(outcome(&service, "cancelled"), 1.0);
    assert_eq!(outcome(&service, "delivered"), 1.0);
    assert_eq!(outcome(&service, "changed_after_start"), 1.0);
    assert_eq!(event(&service, "replaced"), 1.0);
    assert_eq!(
        state_of(&f, "c-cancelled").await.as_deref(),
        Some("cancelled")
    );

    wait_both_sinks(&f, 4, Duration::from_secs(30), || service.log_text()).await;
    // Time for a wrongly fired cancelled campaign to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected = once_each(&["c-replaced", "c-live"], &subscribers);
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    for (_, message) in f.read_output() {
        let text = message["adv_campaign_content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(text == "new text" || text == "live", "{message}");
    }
    drop(service);
    f.cleanup().await;
}

/// Versions of three campaigns of `restaurant`, in the order they are sent: one replaced (and an
/// older version after), one cancelled before its start, one edited while active.
fn replaced_cancelled_and_edited_live(restaurant: &str, now: i64) -> [String; 7] {
    let start = now + 10;
    let window = (start, start + 3600);
    [
        // Replaced: the newer text is the one that fires.
        version(restaurant, "c-replaced", "old text", window, 10),
        version(restaurant, "c-replaced", "new text", window, 11),
        // An older version arriving after: ignored.
        version(restaurant, "c-replaced", "stale text", window, 9),
        // Cancelled: a newer version whose end is in the past.
        version(restaurant, "c-cancelled", "soon", window, 10),
        version(restaurant, "c-cancelled", "soon", (now - 120, now - 60), 11),
        // Active now, then sent again with another text: nobody notified again.
        version(restaurant, "c-live", "live", (now - 60, now + 3600), 10),
        version(
            restaurant,
            "c-live",
            "live, edited",
            (now - 60, now + 3600),
            11,
        ),
    ]
}

/// The recorder's read of the kept versions is prepared once per connection and, after a few
/// executions, runs a generic plan. Made while the table was still empty (a new deployment, or
/// any benchmark), a plan that hashes the keys and scans the table would read every kept
/// campaign for each group of arrivals as the table grows (at fan-out 1 that made Postgres the
/// pipeline's bottleneck). The statement must go by the primary key whatever the table held
/// when it was planned.
#[actix_rt::test]
async fn the_kept_versions_are_read_by_key_even_by_a_plan_made_on_an_empty_table() {
    let f = Fixture::new("keptplan", 1).await;
    let statement = campaign_actors::lifecycle::store::kept_statement();
    let plan = f
        .generic_plan("kept", &statement, "ARRAY['r'], ARRAY['c']")
        .await;
    assert!(
        !plan.contains("Seq Scan on campaign_notifier_campaigns"),
        "the kept versions are read by scanning the table:\n{plan}"
    );
    assert!(
        plan.contains("campaign_notifier_campaigns_pkey"),
        "the kept versions are not read through the primary key:\n{plan}"
    );
    f.cleanup().await;
}

/// A producer that does not key by campaign and keeps `datetime_created` as the creation time
/// when it edits or cancels: v1 lands at offset 500 of partition 0, the edit and the cancellation
/// a moment later at offsets 0 and 1 of partition 1. The later message is the newer version, so
/// the cancelled campaign notifies nobody and the edited one goes out with its new text.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_and_a_cancellation_sent_to_another_partition_win_over_an_earlier_version_at_a_higher_offset(
) {
    let f = Fixture::new("xpartition", 2).await;
    let restaurant = "5c000000-0000-0000-0000-000000000021";
    let subscribers = clients("xp", 10);
    subscribe_all(&f, restaurant, &subscribers).await;
    let service = Service::start(&f, "");
    let now = unix_now();
    produce_500_others_to_partition_0(&f, now).await;
    produce_v1_to_partition_0_and_v2_to_partition_1(&f, restaurant, now).await;
    service.wait_processed(504, Duration::from_secs(60));
    let expected = once_each(&["c-edited"], &subscribers);
    wait_both_sinks(&f, 10, Duration::from_secs(40), || service.log_text()).await;
    // Time for a wrongly fired cancellation to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        state_of(&f, "c-cancelled").await.as_deref(),
        Some("cancelled")
    );
    assert_eq!(row_pairs(&f).await, expected);
    assert_eq!(output_pairs(&f), expected);
    assert_eq!(
        texts_sent(&f),
        BTreeMap::from([("new text".to_string(), 10)])
    );
    drop(service);
    f.cleanup().await;
}

/// Other campaigns ahead of v1 on partition 0 (of a restaurant nobody follows).
async fn produce_500_others_to_partition_0(f: &Fixture, now: i64) {
    for i in 0..500 {
        let other = version(
            "5c000000-0000-0000-0000-0000000000ff",
            &format!("c-other-{i}"),
            "x",
            (now - 60, now + 3600),
            1,
        );
        f.produce_to(0, &format!("o{i}"), other.as_bytes()).await;
    }
}

/// v1 of a campaign to cancel and of one to edit on partition 0; a moment later, with the same
/// creation time, the cancellation and the edit on partition 1.
async fn produce_v1_to_partition_0_and_v2_to_partition_1(f: &Fixture, restaurant: &str, now: i64) {
    let window = (now + 8, now + 3600);
    let created = 1_659_131_516;
    let v1_cancel = version(restaurant, "c-cancelled", "soon", window, created);
    f.produce_to(0, "v1-cancel", v1_cancel.as_bytes()).await;
    let v1_edit = version(restaurant, "c-edited", "old text", window, created);
    f.produce_to(0, "v1-edit", v1_edit.as_bytes()).await;
    // A moment later, the same creation time, on the other partition.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ended = (now - 120, now - 60);
    let cancel = version(restaurant, "c-cancelled", "soon", ended, created);
    f.produce_to(1, "cancel", cancel.as_bytes()).await;
    let edit = version(restaurant, "c-edited", "new text", window, created);
    f.produce_to(1, "edit", edit.as_bytes()).await;
}

/// How many notifications of the output topic carry each campaign text.
fn texts_sent(f: &Fixture) -> BTreeMap<String, usize> {
    f.read_output()
        .iter()
        .fold(BTreeMap::new(), |mut m, (_, v)| {
            *m.entry(v["adv_campaign_content"].as_str().unwrap().to_string())
                .or_default() += 1;
            m
        })
}

/// The store replaces a version only by a newer one, whichever instance writes, and a campaign
/// being fired or fired never goes back to scheduled: what two instances that decided on the same
/// kept version write, in either order, leaves the newer one.
#[actix_rt::test]
async fn the_store_replaces_a_version_only_by_a_newer_one_and_never_unfires_a_campaign() {
    let f = Fixture::new("storecas", 1).await;
    let other = OtherInstance::new(&f).await;
    let newer = arrival("newer", 1, 3, 2_000);
    let older = arrival("older", 0, 500, 1_000);
    other.store(&newer, State::Scheduled).await;
    // The other instance, which decided on the empty table, writes the older version after.
    other.store(&older, State::Scheduled).await;
    assert_eq!(content_and_state(&f).await, ("newer".into(), "scheduled".into()));
    // Claimed and being fired: a still newer version stored as scheduled leaves it firing.
    set_the_campaigns_row(&f, "state = 'firing', owner = 7").await;
    let newest = arrival("newest", 0, 501, 3_000);
    other.store(&newest, State::Scheduled).await;
    other.store(&newest, State::Cancelled).await;
    assert_eq!(content_and_state(&f).await, ("newer".into(), "firing".into()));
    // A newer end of a fired campaign is stored.
    other.store(&newest, State::Active).await;
    assert_eq!(content_and_state(&f).await, ("newest".into(), "active".into()));
    // After a campaign ended unsent, any version is a new campaign.
    set_the_campaigns_row(&f, "state = 'expired'").await;
    other.store(&older, State::Scheduled).await;
    assert_eq!(content_and_state(&f).await, ("older".into(), "scheduled".into()));
    f.cleanup().await;
}

/// The other instance of the store test: its own session, with the store's statements prepared.
struct OtherInstance {
    db: tokio_postgres::Client,
    prepared: store::Prepared,
}

impl OtherInstance {
    async fn new(f: &Fixture) -> OtherInstance {
        let db = connect(&f.db_url).await;
        let prepared = store::Prepared::new(&f.db, &db).await.unwrap();
        OtherInstance { db, prepared }
    }

    /// Stores `arrival` as its decider decided (`state`).
    async fn store(&self, arrival: &Arrival, state: State) {
        store::store(&self.db, &self.prepared, &[(arrival, state)])
            .await
            .unwrap();
    }
}

/// Version `text` of the one campaign of the store test, read at `offset` of `partition` with the
/// broker's timestamp `ts`.
fn arrival(text: &str, partition: i32, offset: i64, ts: i64) -> Arrival {
    use campaign_actors::campaign::Campaign;
    use campaign_actors::notification::SourceRef;
    Arrival {
        campaign: Campaign {
            restaurant_id: "r".into(),
            adv_campaign_id: "c".into(),
            adv_campaign_content: text.into(),
            adv_campaign_owner: "o".into(),
            adv_campaign_owner_contact: "o@r".into(),
            adv_campaign_datetime_start: 100,
            adv_campaign_datetime_end: 200,
            datetime_created: 10,
        },
        source: SourceRef {
            topic: "in".into(),
            partition,
            offset,
            timestamp_ms: Some(ts),
        },
        key: None,
        payload: b"{}".to_vec(),
    }
}

/// What a peer's claim or the end of the campaign does to its row: `UPDATE ... SET {set}`.
async fn set_the_campaigns_row(f: &Fixture, set: &str) {
    f.db.execute(&format!("UPDATE campaign_notifier_campaigns SET {set}"), &[])
        .await
        .unwrap();
}

async fn content_and_state(f: &Fixture) -> (String, String) {
    let row =
        f.db.query_one(
            "SELECT adv_campaign_content, state FROM campaign_notifier_campaigns",
            &[],
        )
        .await
        .expect("the campaign's row");
    (row.get(0), row.get(1))
}
