//! A replication slot the server invalidated while nobody read it (it kept more WAL than
//! `max_slot_wal_keep_size`): the changes it held are gone, so the service makes the slot again
//! and loads the table again: the next campaign reaches exactly the clients the table holds, and
//! a client who subscribes after it is notified of it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::cluster::{run_dir, LogicalPostgres};
use crate::common::*;

const RESTAURANT: &str = "6c000000-0000-0000-0000-00000000000a";
const SLOT: &str = "campaign_notifier_subscribers";

async fn wal_status(f: &Fixture) -> Option<String> {
    f.db.query_opt(
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
        &[&SLOT],
    )
    .await
    .expect("slot state")
    .and_then(|row| row.get(0))
}

/// Writes WAL past the slot's allowance and checkpoints until the server invalidates the slot.
async fn lose_the_slot(f: &Fixture) {
    // Not in a transaction block: one statement at a time.
    f.db.batch_execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        .await
        .expect("max_slot_wal_keep_size");
    f.db.batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    f.db.batch_execute("CREATE TABLE wal_filler (n int, pad text)")
        .await
        .expect("filler table");
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal_status(f).await.as_deref() != Some("lost") {
        assert!(
            Instant::now() < deadline,
            "the slot is {:?}",
            wal_status(f).await
        );
        f.db.batch_execute(
            "INSERT INTO wal_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g;
             SELECT pg_switch_wal();",
        )
        .await
        .expect("write WAL");
        f.db.batch_execute("CHECKPOINT").await.expect("checkpoint");
    }
}

/// Waits until `service` streams a slot the server has not invalidated.
async fn streaming(f: &Fixture, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal_status(f).await.as_deref() == Some("lost")
        || !service.log_text().contains("streaming the replication slot")
    {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_the_server_invalidated_while_the_service_was_down_is_made_again_and_the_table_loaded(
) {
    let server = LogicalPostgres::start(run_dir("pg-logical-lost-slot"));
    let brokers = env("CN_TEST_BROKERS");
    let f = Fixture::new_on_postgres("chg_lost_slot", 1, &brokers, Vec::new(), &server.url()).await;
    f.db.batch_execute("ALTER TABLE subscribers_restaurants REPLICA IDENTITY FULL")
        .await
        .expect("replica identity");
    let first: Vec<String> = (0..10).map(|i| format!("first-{i}")).collect();
    super::subscribe(&f, RESTAURANT, &first).await;
    let mut service = Service::start(&f, "");
    streaming(&f, &service).await;
    service.kill_hard();

    // While nobody reads the slot: three clients leave, three arrive, and the slot is lost with
    // those changes in it.
    f.db.execute(
        "DELETE FROM subscribers_restaurants WHERE client_id = ANY($1)",
        &[&&first[..3]],
    )
    .await
    .expect("unsubscribe");
    let later: Vec<String> = (0..3).map(|i| format!("later-{i}")).collect();
    super::subscribe(&f, RESTAURANT, &later).await;
    lose_the_slot(&f).await;

    let service = Service::start_numbered(&f, "", 1);
    streaming(&f, &service).await;
    let log = service.log_text();
    assert!(
        log.contains("the server invalidated the replication slot"),
        "the lost slot is said:\n{log}"
    );
    // The reload the new slot asks for, and its campaign.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let campaign = active_campaign(RESTAURANT, "after-lost");
    f.produce("after-lost", campaign.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));
    // And the new slot is followed: who subscribes now is notified of the active campaign.
    let last = vec!["after-0".to_string()];
    super::subscribe(&f, RESTAURANT, &last).await;
    let want: BTreeMap<(String, String), u32> = (first[3..].iter().chain(&later).chain(&last))
        .map(|c| (("after-lost".to_string(), c.clone()), 1))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.output_count() < want.len() as i64 {
        assert!(Instant::now() < deadline, "{}", service.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(row_pairs(&f).await, want, "Postgres:\n{}", service.log_text());
    assert_eq!(output_pairs(&f), want, "Kafka:\n{}", service.log_text());
    drop(service);
    super::following::drop_slot_once_inactive(&f).await;
    f.cleanup().await;
}
