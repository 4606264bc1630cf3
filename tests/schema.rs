//! The schema step against real Postgres, without a broker: index builds on a large existing
//! table, instances starting together, an index left invalid by an earlier build.
//! Run with `./scripts/test.sh --test schema` (needs only `CN_TEST_POSTGRES_URL` and
//! `CN_TEST_RUN_ID`).

mod common;

use std::time::{Duration, Instant};

use campaign_actors::contract;
use campaign_actors::postgres::{self, PostgresSettings, SchemaError};
use common::*;

/// The brief's two tables, as the app created them, without the service's indexes.
async fn brief_tables(db: &Database) {
    db.db
        .batch_execute(&format!(
            "{}{}",
            contract::SUBSCRIBERS_RESTAURANTS_DDL,
            contract::SUBSCRIBERS_FEEDBACK_DDL
        ))
        .await
        .expect("brief's tables");
}

/// `n` distinct notifications in `subscribers_feedback`, as a table that has been in use for
/// a while holds them (UUID text ids, 1 000 restaurants).
async fn fill_feedback(db: &Database, n: i64) {
    db.db
        .execute(
            "INSERT INTO subscribers_feedback (restaurant_id, adv_campaign_id, \
                 adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact, \
                 adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created, \
                 client_id, trigger_datetime_created) \
             SELECT md5((g % 1000)::text)::uuid::text, md5((g % 97)::text || 'c')::uuid::text, \
                    'first dish free', 'Ivanov Ivan Ivanovich', 'iiivanov@restaurant.ru', \
                    1659203516, 2659207116, 1659131516, md5(g::text)::uuid::text, 1659304828 \
             FROM generate_series(1, $1::int8) g",
            &[&n],
        )
        .await
        .expect("fill subscribers_feedback");
}

async fn schema_client(url: &str) -> tokio_postgres::Client {
    postgres::connect(&PostgresSettings::for_url(url), "schema")
        .await
        .expect("connect")
}

/// Whether the index exists and is valid: `None` when it does not exist.
async fn index_valid(db: &Database, index: &str) -> Option<bool> {
    db.db
        .query_opt(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&format!("public.{index}")],
        )
        .await
        .expect("pg_index")
        .map(|row| row.get(0))
}

/// An insert of one notification the table does not hold yet.
const ONE_MORE: &str = "INSERT INTO subscribers_feedback (restaurant_id, adv_campaign_id, \
     adv_campaign_content, adv_campaign_owner, adv_campaign_owner_contact, \
     adv_campaign_datetime_start, adv_campaign_datetime_end, datetime_created, client_id, \
     trigger_datetime_created) VALUES ('r-new', 'c-new', 'x', 'o', 'e', 1, 2, 0, 'client-new', 3)";

/// The schema step on a `subscribers_feedback` of a million rows and no notification key: the
/// app's writes go on while the key is built (today's version held every write of the table for
/// the whole build, and failed the start past `statement_timeout`).
#[actix_rt::test]
async fn the_app_writes_to_a_large_table_while_the_schema_step_builds_its_key() {
    let db = Database::new("idxlarge").await;
    brief_tables(&db).await;
    let rows = 1_000_000;
    fill_feedback(&db, rows).await;

    let url = db.url.clone();
    let started = Instant::now();
    let step = actix_rt::spawn(async move {
        let mut client = schema_client(&url).await;
        let result = postgres::ensure_schema(&mut client).await;
        (result, started.elapsed())
    });
    // The build of the key is under way (Postgres reports its progress).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let building: i64 = db
            .db
            .query_one(
                "SELECT count(*) FROM pg_stat_progress_create_index \
                 WHERE relid = 'public.subscribers_feedback'::regclass",
                &[],
            )
            .await
            .expect("progress")
            .get(0);
        if building > 0 {
            break;
        }
        assert!(
            !step.is_finished(),
            "the step ended before a build was seen"
        );
        assert!(Instant::now() < deadline, "no index build seen within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let building_since = started.elapsed();

    // The app's insert, from another session, while it builds.
    let app = connect(&db.url).await;
    let sent = Instant::now();
    let inserted = tokio::time::timeout(Duration::from_secs(120), app.execute(ONE_MORE, &[])).await;
    let insert_took = sent.elapsed();
    let still_building = !step.is_finished();
    let (result, step_took) = step.await.expect("schema step joined");
    println!(
        "{rows} rows: build seen after {building_since:?}; the app's insert took {insert_took:?} \
         (the build still running when it returned: {still_building}); the schema step took \
         {step_took:?}"
    );
    assert_eq!(inserted.expect("insert within 120 s").expect("insert"), 1);
    assert!(
        insert_took < Duration::from_secs(2),
        "the app's insert waited {insert_took:?} for the schema step"
    );
    assert!(
        still_building,
        "the insert returned only once the build was over"
    );
    result.expect("the schema step succeeds");
    assert_eq!(
        index_valid(&db, "subscribers_feedback_notification_key").await,
        Some(true)
    );
    // The row inserted during the build is under the key like any other.
    let again = app.execute(ONE_MORE, &[]).await;
    assert!(again.is_err(), "the key holds the row inserted meanwhile");
    db.cleanup().await;
}

/// Two instances starting together on a large table: one builds each index, the other waits for
/// it, and both start.
#[actix_rt::test]
async fn instances_starting_together_build_each_index_once_and_both_start() {
    let db = Database::new("idxrace").await;
    brief_tables(&db).await;
    fill_feedback(&db, 200_000).await;
    let steps = (0..2).map(|_| {
        let url = db.url.clone();
        actix_rt::spawn(async move {
            let mut client = schema_client(&url).await;
            postgres::ensure_schema(&mut client).await
        })
    });
    for (n, step) in futures::future::join_all(steps)
        .await
        .into_iter()
        .enumerate()
    {
        step.expect("joined")
            .unwrap_or_else(|e| panic!("instance {n}: {e}"));
    }
    for index in [
        "subscribers_feedback_notification_key",
        "subscribers_restaurants_restaurant_id_idx",
    ] {
        assert_eq!(index_valid(&db, index).await, Some(true), "{index}");
    }
    db.cleanup().await;
}

/// A build of the key that failed earlier (interrupted, or refused by duplicates since removed)
/// left an INVALID index behind: the next start drops it and builds it again (today's version
/// took it for the key and went on with no key at all).
#[actix_rt::test]
async fn an_invalid_index_left_by_an_earlier_build_is_dropped_and_built_again() {
    let db = Database::new("idxinvalid").await;
    brief_tables(&db).await;
    fill_feedback(&db, 1_000).await;
    // A duplicate makes a concurrent build fail, which leaves its index invalid.
    db.db.execute(ONE_MORE, &[]).await.expect("insert");
    db.db.execute(ONE_MORE, &[]).await.expect("insert");
    let failed = db
        .db
        .batch_execute(
            "CREATE UNIQUE INDEX CONCURRENTLY subscribers_feedback_notification_key \
             ON public.subscribers_feedback (restaurant_id, adv_campaign_id, client_id)",
        )
        .await;
    assert!(failed.is_err(), "the duplicate fails the build");
    assert_eq!(
        index_valid(&db, "subscribers_feedback_notification_key").await,
        Some(false),
        "the failed build left an invalid index"
    );
    db.db
        .batch_execute(
            "DELETE FROM subscribers_feedback WHERE id = \
             (SELECT max(id) FROM subscribers_feedback WHERE client_id = 'client-new')",
        )
        .await
        .expect("remove the duplicate");

    let mut client = schema_client(&db.url).await;
    postgres::ensure_schema(&mut client)
        .await
        .expect("the schema step succeeds");
    let valid = index_valid(&db, "subscribers_feedback_notification_key").await;
    println!("after the schema step: subscribers_feedback_notification_key valid = {valid:?}");
    assert_eq!(valid, Some(true), "built again, valid");
    let dup = db.db.execute(ONE_MORE, &[]).await;
    assert!(dup.is_err(), "the key refuses a second copy");
    db.cleanup().await;
}

/// Duplicates in an existing `subscribers_feedback` still give the clear message, and the failed
/// build leaves no invalid index behind, so the next start says the same.
#[actix_rt::test]
async fn duplicates_in_a_large_table_give_the_clear_message_every_time() {
    let db = Database::new("idxdupes").await;
    brief_tables(&db).await;
    fill_feedback(&db, 10_000).await;
    db.db.execute(ONE_MORE, &[]).await.expect("insert");
    db.db.execute(ONE_MORE, &[]).await.expect("insert");
    for attempt in 0..2 {
        let mut client = schema_client(&db.url).await;
        let result = postgres::ensure_schema(&mut client).await;
        assert!(
            matches!(result, Err(SchemaError::DuplicateNotifications)),
            "attempt {attempt}: {result:?}"
        );
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("HAVING count(*) > 1"), "{message}");
        assert_eq!(
            index_valid(&db, "subscribers_feedback_notification_key").await,
            None,
            "attempt {attempt}: no index left behind"
        );
    }
    let rows: i64 = db
        .db
        .query_one("SELECT count(*) FROM subscribers_feedback", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 10_002, "nothing was deleted");
    db.cleanup().await;
}
