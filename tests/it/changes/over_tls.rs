//! The logical mode on a server reached over TLS (`sslmode=verify-full`): the slot is streamed
//! over an encrypted replication connection, and a delete, an insert and a move reach the join
//! within 2 s.

use std::time::{Duration, Instant};

use crate::common::cluster::run_dir;
use crate::common::secure::TlsPostgres;
use crate::common::*;

const RESTAURANT: &str = "6c000000-0000-0000-0000-00000000000a";

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_the_slot_is_streamed_encrypted_and_changes_reach_the_join_within_two_seconds() {
    let server = TlsPostgres::start_logical(run_dir("pg-tls-logical"));
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let f = Fixture::new_on_postgres("chg_tls", 1, &env("CN_TEST_BROKERS"), Vec::new(), &admin).await;
    f.db.batch_execute(
        "ALTER TABLE subscribers_restaurants REPLICA IDENTITY FULL;
         INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES
             ('6c000000-0000-0000-0000-00000000000a', 'stays'),
             ('6c000000-0000-0000-0000-00000000000a', 'leaves'),
             ('6c000000-0000-0000-0000-00000000000b', 'moves')",
    )
    .await
    .expect("seed");
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        f.db_url,
        server.ca_file.display()
    );
    let mut service =
        Service::spawn_with_env(&f, "", 0, &[("CAMPAIGN_NOTIFIER__POSTGRES__URL", url.as_str())]);
    service.wait_ready();
    wait_until_streamed(&f, &service).await;

    f.db.batch_execute(
        "DELETE FROM subscribers_restaurants WHERE client_id = 'leaves';
         INSERT INTO subscribers_restaurants (restaurant_id, client_id)
             VALUES ('6c000000-0000-0000-0000-00000000000a', 'joins');
         UPDATE subscribers_restaurants SET restaurant_id = '6c000000-0000-0000-0000-00000000000a'
             WHERE client_id = 'moves'",
    )
    .await
    .expect("changes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.produce("1", active_campaign(RESTAURANT, "tls-campaign").as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(30));
    let expected = once_each(&["tls-campaign"], &["joins", "moves", "stays"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while output_pairs(&f).len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(row_pairs(&f).await, expected, "{}", service.log_text());
    assert_eq!(output_pairs(&f), expected);
    assert!(service.terminate().success());
    f.db.execute(
        "SELECT pg_drop_replication_slot('campaign_notifier_subscribers')",
        &[],
    )
    .await
    .expect("drop the slot");
    f.cleanup().await;
}

/// Until the service's replication connection shows in `pg_stat_replication`, encrypted.
async fn wait_until_streamed(f: &Fixture, service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = f
            .db
            .query_opt(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
                 WHERE r.application_name LIKE 'campaign-notifier subscriber changes%'",
                &[],
            )
            .await
            .expect("pg_stat_replication");
        if let Some(row) = row {
            assert!(row.get::<_, bool>(0), "the replication connection is encrypted");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the slot is not streamed:\n{}",
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

