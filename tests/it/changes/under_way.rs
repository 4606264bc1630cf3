//! A large campaign goes out in slices over seconds: a client who unsubscribes meanwhile is left
//! out of the slices that go out after the change is read.

use std::time::{Duration, Instant};

use crate::common::*;

const RESTAURANT: &str = "6b000000-0000-0000-0000-00000000000a";

#[tokio::test(flavor = "multi_thread")]
async fn a_client_who_unsubscribes_while_a_large_campaign_goes_out_is_left_out_of_its_later_slices(
) {
    let f = Fixture::new("chg_underway", 1).await;
    subscribe_forty_thousand(&f).await;
    // Slices of 7 500, one at a time (the budget less its reserve), 4 000 a second: about 10 s.
    let extra = "[cache]\nchanges = \"trigger\"\n[writers]\nmax_notifications_in_flight = 10000\n\
                 [limits]\nmax_notifications_per_sec = 4000\n";
    let service = Service::start(&f, extra);
    f.produce("large", active_campaign(RESTAURANT, "large").as_bytes()).await;
    // Once the first slice is out, the "z-" clients unsubscribe.
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.output_count() < 5_000 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_before = f.output_count();
    f.db.execute(
        "DELETE FROM subscribers_restaurants WHERE client_id LIKE 'z-%'",
        &[],
    )
    .await
    .expect("unsubscribe");
    service.wait_processed(1, Duration::from_secs(60));
    println!("sent when they unsubscribed: {sent_before} of 40000");
    let rows = row_pairs(&f).await;
    let messages = output_pairs(&f);
    let notified_z = |pairs: &std::collections::BTreeMap<(String, String), u32>| {
        pairs.keys().filter(|(_, c)| c.starts_with("z-")).count()
    };
    assert_eq!(notified_z(&rows), 0, "Postgres");
    assert_eq!(notified_z(&messages), 0, "Kafka");
    assert_eq!(rows.len(), 39_000);
    assert_eq!(messages.len(), 39_000);
    assert_eq!(
        service.metric("campaign_notifier_notifications_unsubscribed_total"),
        1_000.0
    );
    drop(service);
    f.cleanup().await;
}

/// 40 000 clients; the 1 000 "z-" ones come last in the restaurant's (sorted) list, so in the
/// campaign's last slice.
async fn subscribe_forty_thousand(f: &Fixture) {
    let clients: Vec<String> = (0..39_000)
        .map(|i| format!("c-{i:05}"))
        .chain((0..1_000).map(|i| format!("z-{i:04}")))
        .collect();
    super::subscribe(f, RESTAURANT, &clients).await;
}

