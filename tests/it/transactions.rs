//! `kafka.transactions = true`, against a broker whose Kafka transactions commit, abort and
//! fence (noida-db, started by `./scripts/test.sh`; Tansu 0.6.0 cannot commit one) and the local
//! Postgres. Readers here read committed, as librdkafka does by default and as a reader of the
//! output should in this mode.

use std::time::{Duration, Instant};

use crate::common::*;

const TRANSACTIONS: (&str, &str) = ("CAMPAIGN_NOTIFIER__KAFKA__TRANSACTIONS", "true");

async fn fixture(tag: &str, partitions: i32) -> Fixture {
    Fixture::new_on(tag, partitions, &env("CN_TEST_TXN_BROKERS")).await
}

/// A stream of campaigns written in transactions: every notification once in Postgres and once
/// among what a read-committed reader sees.
#[tokio::test(flavor = "multi_thread")]
async fn in_transactions_every_notification_reaches_a_read_committed_reader_once() {
    let f = fixture("txnflow", 2).await;
    let expected = seed(&f, "txnflow", 10, 20, 50).await;
    let mut service = Service::spawn_with_env(&f, "", 0, &[TRANSACTIONS]);
    service.wait_ready();
    wait_complete(&f, expected.len(), Duration::from_secs(120), &|| {
        service.log_text()
    })
    .await;
    assert_exactly_once(&f, &expected).await;
    assert!(service.terminate().success(), "{}", service.log_text());
    f.cleanup().await;
}

/// An instance frozen while its transaction is open (its notifications in Postgres, on their way
/// to the broker, not committed): once its lease expires the other fences its producer at the
/// broker by initialising its transactional id, which aborts that transaction, and sends what is
/// missing; thawed, the frozen one can commit nothing. A read-committed reader sees each
/// notification once.
#[tokio::test(flavor = "multi_thread")]
async fn in_transactions_a_frozen_instance_is_fenced_by_the_broker_and_its_open_transaction_never_shows(
) {
    let f = fixture("txnfrozen", 2).await;
    let subscribers = clients(30);
    let refs: Vec<&str> = subscribers.iter().map(String::as_str).collect();
    for r in 0..10 {
        f.subscribe(&seeded_restaurant(r), &refs).await;
    }
    let lingering = "[kafka.producer]\n\"linger.ms\" = \"4000\"\n";
    let mut a = Service::spawn_with_env(&f, lingering, 1, &[TRANSACTIONS]);
    a.wait_ready();
    let expected = produce_campaigns(&f, "txnfrozen", 10, 30, 20).await;
    let total = expected.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.feedback_rows().await.len() < total {
        assert!(Instant::now() < deadline, "rows:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.signal("STOP");
    let frozen_at = Instant::now();
    let committed_at_freeze = f.output_count();
    eprintln!("frozen with {total} rows in Postgres, {committed_at_freeze} messages in Kafka");

    let mut b = Service::spawn_with_env(&f, "", 2, &[TRANSACTIONS]);
    // The lease, no settle time (the broker fences), and a minute.
    wait_complete(&f, total, Duration::from_secs(10 + 60), &|| b.log_text()).await;
    eprintln!(
        "the other instance finished the frozen one's work {:.1} s after the freeze",
        frozen_at.elapsed().as_secs_f64()
    );
    assert_exactly_once(&f, &expected).await;

    a.signal("CONT");
    let status = a.wait_exit(Duration::from_secs(45), "after the thaw");
    assert!(!status.success(), "{}", a.log_text());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once(&f, &expected).await;
    assert!(b.terminate().success(), "{}", b.log_text());
    f.cleanup().await;
}
