//! The two sinks on their own, against the local Postgres and the run's broker.
//! Run with `./scripts/test.sh`.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::*;
use campaign_actors::postgres::PostgresSettings;
use campaign_actors::sinks::pg_writer::{Inserted, PgJob, PgSink, PgSinkConfig};
use campaign_actors::sinks::{Sink, SinkError};

const RESTAURANT: &str = "123e4567-e89b-12d3-a456-426614174000";
const CLIENTS: [&str; 3] = [
    "023e4567-e89b-12d3-a456-426614174000",
    "023e4567-e89b-12d3-a456-426614174001",
    "client-with-a-text-id",
];

fn job(first_token: i64) -> Arc<PgJob> {
    job_of("campaign-1", first_token)
}

fn job_of(campaign_id: &str, first_token: i64) -> Arc<PgJob> {
    pg_job(RESTAURANT, campaign_id, &CLIENTS, first_token)
}

/// The Postgres sink on the fixture's database, as owner 7.
async fn pg_sink(f: &Fixture) -> PgSink {
    PgSink::connect(PgSinkConfig {
        postgres: PostgresSettings::for_url(&f.db_url),
        owner: 7,
        lease: campaign_actors::lease::Lease::unbounded(),
        trigger_column: campaign_actors::postgres::TriggerColumn::Int4,
        cap: None,
    })
    .await
    .expect("connect")
}

fn clients(inserted: &Inserted) -> BTreeSet<String> {
    inserted.clients.iter().cloned().collect()
}

#[actix_rt::test]
async fn postgres_sink_reports_exactly_the_new_rows_and_replays_a_retried_chunk() {
    let f = Fixture::new("pgsink", 1).await;
    let sink = pg_sink(&f).await;
    let all: BTreeSet<String> = CLIENTS.iter().map(|c| c.to_string()).collect();

    // Every client is new: all of them, and one outbox mark.
    let first = sink.write(vec![job(1_000)]).await.expect("first write");
    assert_eq!(clients(&first[0]), all);
    assert_eq!(first[0].outbox_ids.len(), 1);
    assert_eq!(f.feedback_rows().await.len(), 3);

    // The same chunk again (its commit was not confirmed, so the writer reconciles it first): what
    // the first attempt inserted, with its mark, and no new rows.
    let again = sink.reconcile(vec![job(1_000)]).await.expect("reconcile");
    let retried = sink.write(again).await.expect("retried write");
    assert_eq!(clients(&retried[0]), all);
    assert_eq!(retried[0].outbox_ids, first[0].outbox_ids);
    assert_eq!(f.feedback_rows().await.len(), 3);

    // The campaign delivered again while one client's row is gone: only that client.
    f.db.execute(
        "DELETE FROM subscribers_feedback WHERE client_id = $1",
        &[&CLIENTS[2]],
    )
    .await
    .expect("delete a row");
    let partly = sink.write(vec![job(2_000)]).await.expect("partial write");
    assert_eq!(
        clients(&partly[0]),
        BTreeSet::from([CLIENTS[2].to_string()])
    );
    assert_eq!(partly[0].outbox_ids.len(), 1);
    assert_ne!(partly[0].outbox_ids, first[0].outbox_ids);

    // And once more: nobody, and no mark.
    let none = sink
        .write(vec![job(3_000)])
        .await
        .expect("write of nothing new");
    assert_eq!(none[0], Inserted::default());
    assert_eq!(f.feedback_rows().await.len(), 3);
    let marks: i64 = f.outbox_marks().await;
    assert_eq!(marks, 2);
    f.cleanup().await;
}

#[actix_rt::test]
async fn postgres_sink_calls_a_value_the_database_can_never_store_permanent() {
    let f = Fixture::new("pgpoison", 1).await;
    let sink = pg_sink(&f).await;
    // An id too long for the notification key's index entry (SQLSTATE 54000), made of characters
    // that do not compress: Postgres refuses it the same way on every attempt.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let id: String = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize])
        })
        .collect();
    for attempt in 0..2 {
        match sink.write(vec![job_of(&id, 5_000 + attempt)]).await {
            Err(SinkError::Permanent(reason)) => assert!(reason.contains("54000"), "{reason}"),
            other => panic!("attempt {attempt}: expected a permanent refusal, got {other:?}"),
        }
    }
    assert_eq!(f.feedback_rows().await.len(), 0, "nothing half-written");
    f.cleanup().await;
}

#[actix_rt::test]
async fn every_postgres_session_runs_with_the_configured_limits() {
    let f = Fixture::new("pglimits", 1).await;
    let mut settings = PostgresSettings::for_url(&f.db_url);
    settings.lock_timeout = std::time::Duration::from_secs(3);
    settings.statement_timeout = std::time::Duration::from_secs(7);
    settings.idle_in_transaction_timeout = std::time::Duration::from_secs(2);
    settings.keepalive_idle = std::time::Duration::from_secs(11);
    let client = campaign_actors::postgres::connect(&settings, "test")
        .await
        .expect("connect");
    for (setting, value) in [
        ("lock_timeout", "3s"),
        ("statement_timeout", "7s"),
        ("idle_in_transaction_session_timeout", "2s"),
        ("tcp_keepalives_idle", "11"),
    ] {
        let shown: String = client
            .query_one(&format!("SHOW {setting}"), &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!(shown, value, "{setting}");
    }
    // A transaction left idle is ended by the server, which releases what it holds.
    client.batch_execute("BEGIN").await.expect("begin");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = client.batch_execute("SELECT 1").await;
    assert!(
        after.is_err(),
        "the idle transaction was ended by the server"
    );
    f.cleanup().await;
}

/// The outbox marks and, for each, the campaigns of the rows it lists.
async fn marks_and_campaigns(f: &Fixture) -> Vec<(i64, Vec<String>)> {
    f.db.query(
        "SELECT o.id, array_agg(DISTINCT f.adv_campaign_id ORDER BY f.adv_campaign_id)
         FROM campaign_notifier_outbox o JOIN subscribers_feedback f ON f.id = ANY (o.feedback_ids)
         GROUP BY o.id ORDER BY o.id",
        &[],
    )
    .await
    .expect("marks")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[actix_rt::test]
async fn a_group_of_campaigns_is_written_at_once_and_each_gets_its_own_rows_and_mark() {
    let f = Fixture::new("pggroup", 1).await;
    let sink = pg_sink(&f).await;
    let all: BTreeSet<String> = CLIENTS.iter().map(|c| c.to_string()).collect();

    // Two campaigns and the first one again, in one group: the copy adds nothing.
    let group = vec![job_of("c-a", 10), job_of("c-b", 20), job_of("c-a", 30)];
    let first = sink.write(group).await.expect("group write");
    assert_eq!(clients(&first[0]), all);
    assert_eq!(clients(&first[1]), all);
    assert_eq!(first[2], Inserted::default(), "the same campaign again");
    assert_eq!(first[0].outbox_ids.len(), 1);
    assert_eq!(first[1].outbox_ids.len(), 1);
    assert_ne!(first[0].outbox_ids, first[1].outbox_ids);
    assert_eq!(f.feedback_rows().await.len(), 6);
    let marks = marks_and_campaigns(&f).await;
    assert_eq!(
        marks,
        vec![
            (first[0].outbox_ids[0], vec!["c-a".to_string()]),
            (first[1].outbox_ids[0], vec!["c-b".to_string()]),
        ],
        "each mark lists its own campaign's rows"
    );

    // The group again after a broken commit: reconciled, each job gets what it inserted before.
    let again = sink
        .reconcile(vec![
            job_of("c-a", 10),
            job_of("c-b", 20),
            job_of("c-a", 30),
        ])
        .await
        .expect("reconcile");
    let retried = sink.write(again).await.expect("retried group");
    for n in 0..3 {
        assert_eq!(retried[n], first[n], "job {n} replayed");
    }
    assert_eq!(f.feedback_rows().await.len(), 6);

    // One row of c-b gone, and a new campaign: only that client for c-b, everyone for c-c.
    f.db.execute(
        "DELETE FROM subscribers_feedback WHERE adv_campaign_id = 'c-b' AND client_id = $1",
        &[&CLIENTS[0]],
    )
    .await
    .expect("delete a row");
    let partly = sink
        .write(vec![job_of("c-b", 40), job_of("c-c", 50)])
        .await
        .expect("partial group");
    assert_eq!(
        clients(&partly[0]),
        BTreeSet::from([CLIENTS[0].to_string()])
    );
    assert_eq!(clients(&partly[1]), all);
    assert_eq!(f.feedback_rows().await.len(), 9);
    assert_eq!(marks_and_campaigns(&f).await.len(), 4);
    f.cleanup().await;
}

/// The writer's statements are prepared once per connection and soon run generic plans, made
/// while the tables may still be empty. None may scan a table: the outbox holds every mark not yet
/// cleared and `subscribers_feedback` every notification ever sent.
#[actix_rt::test]
async fn the_writer_statements_scan_no_table_even_with_plans_made_on_empty_tables() {
    use campaign_actors::sinks::pg_writer::{GROUP_INSERT, GROUP_INSERT_INT8, INSERT};
    let f = Fixture::new("pgplans", 1).await;
    for (name, statement, args) in [
        (
            "single",
            INSERT,
            "'r', 'c', 'x', 'o', 'k', 1, 2, 3, 4, ARRAY['a'], 5, 6",
        ),
        (
            "grouped",
            GROUP_INSERT,
            "ARRAY['r'], ARRAY['c'], ARRAY['x'], ARRAY['o'], ARRAY['k'], ARRAY[1::int8], \
             ARRAY[2::int8], ARRAY[3::int8], ARRAY[4], ARRAY[5::int8], ARRAY[1], ARRAY[1], \
             ARRAY['a'], 6",
        ),
        (
            "grouped_int8",
            GROUP_INSERT_INT8,
            "ARRAY['r'], ARRAY['c'], ARRAY['x'], ARRAY['o'], ARRAY['k'], ARRAY[1::int8], \
             ARRAY[2::int8], ARRAY[3::int8], ARRAY[4::int8], ARRAY[5::int8], ARRAY[1], ARRAY[1], \
             ARRAY['a'], 6",
        ),
    ] {
        let plan = f.generic_plan(name, statement, args).await;
        assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
    }
    f.cleanup().await;
}

/// A fence that lands while an owner's transaction is open waits for it; one that landed before
/// rolls the next transaction back with nothing written, and the owner's lease ends. This is
/// what keeps a thawed or cut-off instance from writing once a peer took its work over.
#[actix_rt::test]
async fn the_postgres_sink_of_a_fenced_owner_writes_nothing_and_its_lease_ends() {
    use campaign_actors::fatal::FatalReason;

    let f = Fixture::new("pgfence", 1).await;
    let live = LiveOwner::acquire(&f).await;
    let written = live
        .sink
        .write(vec![job_of("c-live", 10)])
        .await
        .expect("live owner writes");
    assert_eq!(written[0].clients.len(), 3);

    // A peer fences it (its lease had expired, as the ledger's sweep does).
    let fenced = expire_and_fence(&f, live.owner).await;
    assert_eq!(fenced, vec![live.owner]);

    // Its local lease is still valid (it does not know yet): Postgres refuses the write anyway.
    assert!(live.lease.is_valid());
    let refused = live.sink.write(vec![job_of("c-after-fence", 20)]).await;
    assert!(matches!(refused, Err(SinkError::Lapsed(_))), "{refused:?}");
    let rows = f.rows_of("c-after-fence").await;
    assert_eq!(rows, 0, "nothing of the fenced owner's transaction is left");
    assert_eq!(f.outbox_marks().await, 1, "only the live write's mark");
    assert!(live.lease.is_fenced());
    assert_eq!(
        *live.failed.borrow(),
        Some(FatalReason::LeaseFenced {
            by: Some(live.owner + 1000)
        })
    );
    // And it hands nothing more to Postgres at all.
    let again = live.sink.write(vec![job_of("c-after-fence", 30)]).await;
    assert!(matches!(again, Err(SinkError::Lapsed(_))), "{again:?}");
    f.cleanup().await;
}

/// An owner with a lease of 10 s just renewed, and the Postgres sink it writes with.
struct LiveOwner {
    owner: i32,
    lease: campaign_actors::lease::Lease,
    /// What the owner is told to stop with.
    failed: tokio::sync::watch::Receiver<Option<campaign_actors::fatal::FatalReason>>,
    sink: PgSink,
}

impl LiveOwner {
    async fn acquire(f: &Fixture) -> LiveOwner {
        use campaign_actors::fatal::Fatal;
        use campaign_actors::lease::{self, Lease, OwnerRow};
        use std::time::{Duration, Instant};

        let row = OwnerRow {
            host: "test".into(),
            pid: 1,
            input_topic: "in".into(),
            ttl: Duration::from_secs(10),
            settle: Duration::from_secs(5),
        };
        let owner = lease::acquire(&f.db, &row).await.expect("acquire");
        let (fatal, failed) = Fatal::channel();
        let lease = Lease::pending(fatal);
        lease.acquired(owner);
        lease.renewed(Instant::now(), row.ttl);
        let sink = PgSink::connect(PgSinkConfig {
            postgres: PostgresSettings::for_url(&f.db_url),
            owner,
            lease: lease.clone(),
            trigger_column: campaign_actors::postgres::TriggerColumn::Int4,
            cap: None,
        })
        .await
        .expect("connect");
        LiveOwner {
            owner,
            lease,
            failed,
            sink,
        }
    }
}

/// Expires `owner`'s lease and fences it as a peer, owner `owner + 1000`, does; returns the
/// owners fenced.
async fn expire_and_fence(f: &Fixture, owner: i32) -> Vec<i32> {
    f.db.execute(
        "UPDATE campaign_notifier_owners SET expires_at = now() - interval '1 second' \
         WHERE owner = $1",
        &[&owner],
    )
    .await
    .unwrap();
    campaign_actors::ledger::recovery::fence_expired(&f.db, owner + 1000)
        .await
        .expect("fence")
        .iter()
        .map(|o| o.owner)
        .collect()
}
