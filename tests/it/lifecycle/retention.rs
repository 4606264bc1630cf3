//! What the table of campaigns keeps: a campaign is forgotten once nothing needs it, whatever its
//! end, and a cancelled one keeps no message.

use std::time::{Duration, Instant};

use super::*;

/// What the table keeps does not grow with how far ahead campaigns end: a campaign fired long
/// ago (its end in 2054, as the brief's sample) is forgotten once `lifecycle.retain_days` passed
/// since it last changed, while one fired recently and one still scheduled stay; a cancelled
/// campaign, which never fires, keeps no message.
#[tokio::test(flavor = "multi_thread")]
async fn campaigns_nothing_needs_are_forgotten_whatever_their_end_and_cancelled_ones_keep_no_message(
) {
    let f = Fixture::new("retain", 1).await;
    let restaurant = "5c000000-0000-0000-0000-000000000025";
    record_campaigns_changed_days_ago(&f, restaurant).await;
    let service = Service::start(&f, "");
    produce_a_campaign_and_its_cancellation(&f, restaurant).await;
    service.wait_processed(2, Duration::from_secs(30));
    let expected = vec![
        ("c-cancelled".to_string(), "cancelled".to_string(), 0),
        ("c-fired-lately".to_string(), "active".to_string(), 7),
        ("c-waiting".to_string(), "scheduled".to_string(), 7),
    ];
    wait_kept(&f, &expected, &service).await;
    drop(service);
    f.cleanup().await;
}

/// Campaigns on record, each last changed some days ago, all ending in 2054: one fired 31 days
/// ago, one fired 29 days ago, one scheduled 40 days ago to start in 2054.
async fn record_campaigns_changed_days_ago(f: &Fixture, restaurant: &str) {
    let far = 2_659_207_116_i64;
    for (campaign, state, age_days) in [
        ("c-fired-long-ago", "active", 31),
        ("c-fired-lately", "active", 29),
        ("c-waiting", "scheduled", 40),
    ] {
        let start = if state == "scheduled" {
            far - 10
        } else {
            1_659_203_516
        };
        f.db.execute(
            "INSERT INTO campaign_notifier_campaigns (restaurant_id, adv_campaign_id,
                 adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact,
                 adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created,
                 source_topic, source_partition, source_offset, message, state, updated_at)
             VALUES ($1, $2, 'x', 'o', 'o@r', $3, $4, 1, 'in', 0, 0, 'payload', $5,
                     now() - make_interval(days => $6))",
            &[&restaurant, &campaign, &start, &far, &state, &age_days],
        )
        .await
        .expect("a campaign on record");
    }
}

/// `c-cancelled`, due in ten minutes, then a newer version of it whose end is past.
async fn produce_a_campaign_and_its_cancellation(f: &Fixture, restaurant: &str) {
    let now = unix_now();
    f.produce(
        "v1",
        version(
            restaurant,
            "c-cancelled",
            "soon",
            (now + 600, now + 3600),
            10,
        )
        .as_bytes(),
    )
    .await;
    f.produce(
        "cancel",
        version(restaurant, "c-cancelled", "soon", (now - 120, now - 60), 11).as_bytes(),
    )
    .await;
}

/// The campaigns on record: id, state and the length of the message kept.
async fn kept(f: &Fixture) -> Vec<(String, String, i64)> {
    let rows =
        f.db.query(
            "SELECT adv_campaign_id, state, octet_length(message)::int8
             FROM campaign_notifier_campaigns ORDER BY adv_campaign_id",
            &[],
        )
        .await
        .expect("the campaigns on record");
    rows.iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
            )
        })
        .collect::<Vec<_>>()
}

/// Waits up to 20 s until the campaigns on record are `expected`.
async fn wait_kept(f: &Fixture, expected: &[(String, String, i64)], service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now_kept = kept(f).await;
        if now_kept == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept {now_kept:?}, expected {expected:?}:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
