//! The schema step and the `trigger_datetime_created` column against real Postgres, without a
//! broker: index builds on a large existing table, an index left invalid by an earlier build,
//! and what happens with an int4 column at and after 2038-01-19T03:14:08Z.
//! Run with `./scripts/test.sh schema::` (needs only `CN_TEST_POSTGRES_URL` and
//! `CN_TEST_RUN_ID`; no broker is reached).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use actix::prelude::*;
use campaign_actors::cache::snapshot::SnapshotBuilder;
use campaign_actors::campaign::Campaign;
use campaign_actors::contract;
use campaign_actors::notification::{NotificationBatch, SourceRef};
use campaign_actors::postgres::trigger_column::{self, TriggerColumnError};
use campaign_actors::postgres::{self, PostgresSettings, SchemaError, TriggerColumn};
use campaign_actors::sinks::pg_writer::{PgJob, PgSink, PgSinkConfig};
use campaign_actors::sinks::{Sink, SinkError, Write};

/// The first second an int4 column cannot hold: 2038-01-19T03:14:08Z.
const PAST_2038: i64 = 1 << 31;

const RESTAURANT: &str = "123e4567-e89b-12d3-a456-426614174000";
const CLIENTS: [&str; 3] = [
    "023e4567-e89b-12d3-a456-426614174000",
    "023e4567-e89b-12d3-a456-426614174001",
    "client-with-a-text-id",
];

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
    wait_until_the_key_is_being_built(&db, || step.is_finished()).await;
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

/// Waits up to 60 s until the build of the key is under way (Postgres reports its progress);
/// fails the test if the schema step ends first (`step_finished`).
async fn wait_until_the_key_is_being_built(db: &Database, step_finished: impl Fn() -> bool) {
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
            return;
        }
        assert!(!step_finished(), "the step ended before a build was seen");
        assert!(Instant::now() < deadline, "no index build seen within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        "subscribers_restaurants_restaurant_id_id_idx",
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

/// A database made by the schema step, its `trigger_datetime_created` of `column_type`.
async fn schema_with_trigger(tag: &str, column_type: &str) -> Database {
    let db = Database::new(tag).await;
    let mut client = schema_client(&db.url).await;
    postgres::ensure_schema(&mut client).await.expect("schema");
    if column_type != "int4" {
        db.db
            .batch_execute(&format!(
                "ALTER TABLE public.subscribers_feedback \
                 ALTER COLUMN trigger_datetime_created TYPE {column_type}"
            ))
            .await
            .expect("alter column");
    }
    db
}

/// The job of `campaign_id` to the three clients, its notifications triggered at `trigger`.
fn job_at(campaign_id: &str, trigger: i64, first_token: i64, replay: bool) -> Arc<PgJob> {
    let mut builder = SnapshotBuilder::new();
    for client in CLIENTS {
        builder.push(RESTAURANT, client);
    }
    let snapshot = Arc::new(builder.build());
    let entry = snapshot.lookup(RESTAURANT).expect("restaurant in snapshot");
    let campaign = Campaign {
        restaurant_id: RESTAURANT.into(),
        adv_campaign_id: campaign_id.into(),
        adv_campaign_content: "first dish free".into(),
        adv_campaign_owner: "Ivanov Ivan Ivanovich".into(),
        adv_campaign_owner_contact: "iiivanov@restaurant.ru".into(),
        adv_campaign_datetime_start: trigger - 60,
        adv_campaign_datetime_end: trigger + 3600,
        datetime_created: trigger - 120,
    };
    let source = SourceRef {
        topic: "in".into(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };
    let batch = NotificationBatch::new(campaign, trigger, source, snapshot, entry);
    Arc::new(PgJob {
        range: 0..batch.len(),
        batch: Arc::new(batch),
        first_token,
        replay,
    })
}

/// The Postgres sink's config, as the start makes it: the column's type read from the catalog.
async fn sink_config(db: &Database) -> PgSinkConfig {
    let client = schema_client(&db.url).await;
    let trigger_column = TriggerColumn::read(&client).await.expect("column type");
    PgSinkConfig {
        postgres: PostgresSettings::for_url(&db.url),
        owner: 7,
        lease: campaign_actors::lease::Lease::unbounded(),
        trigger_column,
        cap: None,
    }
}

async fn triggers_of(db: &Database, campaign_id: &str) -> Vec<i64> {
    db.db
        .query(
            "SELECT trigger_datetime_created::int8 FROM subscribers_feedback \
             WHERE adv_campaign_id = $1 ORDER BY client_id",
            &[&campaign_id],
        )
        .await
        .expect("rows")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// With the column migrated to int8, notifications triggered after 2038-01-19T03:14:07Z are
/// written by both of the writer's statements (a group of small campaigns, and a chunk alone)
/// and read back as they were sent (today's version refused every one of them).
#[actix_rt::test]
async fn an_int8_column_takes_triggers_past_2038_and_they_read_back_right() {
    let db = schema_with_trigger("trigcol8", "int8").await;
    let sink = PgSink::connect(sink_config(&db).await)
        .await
        .expect("connect");
    let at = PAST_2038 + 12_345;
    // Two campaigns in one group statement, one replayed chunk in a statement of its own.
    let written = sink
        .write(vec![
            job_at("c-grouped-1", at, 10, false),
            job_at("c-grouped-2", at + 1, 20, false),
        ])
        .await;
    println!("group of two campaigns at {at}: {written:?}");
    let written = written.expect("group written");
    assert_eq!(written[0].clients.len(), 3);
    assert_eq!(written[1].clients.len(), 3);
    let alone = sink.write(vec![job_at("c-alone", at + 2, 30, true)]).await;
    println!("a chunk alone at {}: {alone:?}", at + 2);
    assert_eq!(alone.expect("written alone")[0].clients.len(), 3);
    assert_eq!(triggers_of(&db, "c-grouped-1").await, vec![at; 3]);
    assert_eq!(triggers_of(&db, "c-grouped-2").await, vec![at + 1; 3]);
    assert_eq!(triggers_of(&db, "c-alone").await, vec![at + 2; 3]);
    db.cleanup().await;
}

type FatalWatch = tokio::sync::watch::Receiver<Option<campaign_actors::fatal::FatalReason>>;

async fn pg_writer(
    db: &Database,
) -> (
    Addr<campaign_actors::sinks::pg_writer::PgWriter>,
    FatalWatch,
) {
    use campaign_actors::clock::Clock;
    use campaign_actors::shared::Shared;
    use campaign_actors::sinks::WriterSettings;
    use campaign_actors::supervision::RestartPolicy;
    let (shared, fatal) = Shared::new(campaign_actors::Metrics::new(), Clock::system());
    let settings = WriterSettings {
        batch_max_rows: 5_000,
        linger: Duration::from_millis(5),
        stall_after: Duration::from_secs(30),
        restart: RestartPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            limit: Some(30),
            window: Duration::from_secs(300),
        },
    };
    let config = sink_config(db).await;
    let addr = Supervisor::start(move |_| {
        campaign_actors::sinks::pg_writer::PgWriter::new(config, settings, shared)
    });
    (addr, fatal)
}

/// With the brief's int4 column, the last second it holds is written; once the clock passes it,
/// the writer stops the service with the reason and the migration, refusing nothing (today's
/// version took three refusals for a configuration fault and held every campaign for ever,
/// saying only that the value did not fit).
#[actix_rt::test]
async fn an_int4_column_past_2038_stops_the_service_with_the_reason_instead_of_holding() {
    let db = schema_with_trigger("trig4", "int4").await;
    let (writer, mut fatal) = pg_writer(&db).await;
    let last = i64::from(i32::MAX);
    let answer = writer
        .send(Write::<PgSink>(job_at("c-last-second", last, 10, false)))
        .await
        .expect("writer alive");
    assert_eq!(answer.expect("2038-01-19T03:14:07Z fits").clients.len(), 3);
    assert_eq!(triggers_of(&db, "c-last-second").await, vec![last; 3]);

    let started = Instant::now();
    let sends = futures::future::join_all((0..3).map(|k| {
        writer.send(Write::<PgSink>(job_at(
            &format!("c-after-{k}"),
            PAST_2038 + k,
            100 + 10 * k,
            false,
        )))
    }));
    let mut sends = Box::pin(sends);
    let stopped = fatal_reason_within_20_s(&mut fatal).await;
    let health = writer.send(campaign_actors::messages::Health).await;
    println!(
        "after {:?}: fatal reason {:?}; writer health {:?}",
        started.elapsed(),
        stopped.as_ref().map(ToString::to_string),
        health.as_ref().map(|h| h.fault.clone())
    );
    let reason = stopped.expect("the service is told to stop").to_string();
    assert_names_the_column_the_date_and_the_migration(&reason);
    // Their campaigns are not refused (they would be dead-lettered): not confirmed, read again
    // once the column is migrated.
    let answers = tokio::time::timeout(Duration::from_secs(10), &mut sends)
        .await
        .expect("answered");
    for answer in answers {
        let answer = answer.expect("writer alive");
        assert!(
            matches!(answer, Err(ref e) if !matches!(e, SinkError::Permanent(_))),
            "{answer:?}"
        );
    }
    let rows: i64 = db
        .db
        .query_one(
            "SELECT count(*) FROM subscribers_feedback WHERE adv_campaign_id LIKE 'c-after-%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0);
    db.cleanup().await;
}

/// The reason the writer tells the service to stop with, if it does within 20 s.
async fn fatal_reason_within_20_s(
    fatal: &mut FatalWatch,
) -> Option<campaign_actors::fatal::FatalReason> {
    tokio::time::timeout(Duration::from_secs(20), fatal.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().map(|reason| reason.clone()))
        .flatten()
}

/// The stop's reason says which column, until when int4 holds it, and the migration.
fn assert_names_the_column_the_date_and_the_migration(reason: &str) {
    for needed in [
        "trigger_datetime_created",
        "2038-01-19T03:14:07Z",
        "ALTER TABLE public.subscribers_feedback ALTER COLUMN trigger_datetime_created TYPE bigint",
    ] {
        assert!(reason.contains(needed), "{needed:?} in: {reason}");
    }
}

/// The start reads the column's type: int4 and int8 are taken (int4 until 2038-01-19T03:14:07Z),
/// anything else, or no column, is refused.
#[actix_rt::test]
async fn the_start_takes_an_int4_or_int8_column_and_refuses_anything_else() {
    let db = schema_with_trigger("trigtypes", "int4").await;
    let client = schema_client(&db.url).await;
    let today = unix_now();
    let last = trigger_column::INT4_LAST_SECOND;
    let at = |now| trigger_column::check_at_start(&client, now);
    assert_eq!(at(today).await.expect("int4 today"), TriggerColumn::Int4);
    assert_eq!(
        at(last).await.expect("int4 at its last second"),
        TriggerColumn::Int4
    );
    let refused = at(PAST_2038).await;
    assert!(
        matches!(refused, Err(TriggerColumnError::Exhausted { now_secs }) if now_secs == PAST_2038),
        "{refused:?}"
    );
    for (column_type, expected) in [
        ("bigint", Ok(TriggerColumn::Int8)),
        ("numeric", Err("numeric")),
        ("text", Err("text")),
    ] {
        db.db
            .batch_execute(&format!(
                "ALTER TABLE public.subscribers_feedback ALTER COLUMN trigger_datetime_created \
                 TYPE {column_type} USING trigger_datetime_created::{column_type}"
            ))
            .await
            .expect("alter");
        let read = at(PAST_2038).await;
        match expected {
            Ok(column) => assert_eq!(read.expect("taken"), column, "{column_type}"),
            Err(named) => {
                let message = read.expect_err("refused").to_string();
                assert!(message.contains(named), "{column_type}: {message}");
            }
        }
    }
    db.db
        .batch_execute(
            "ALTER TABLE public.subscribers_feedback DROP COLUMN trigger_datetime_created",
        )
        .await
        .expect("drop column");
    assert!(matches!(at(today).await, Err(TriggerColumnError::Missing)));
    db.cleanup().await;
}

/// The service's start with its clock past 2038-01-19T03:14:07Z and the brief's int4 column is
/// refused (exit code 2 in `run`) with the reason and the migration, before it reaches Kafka.
#[actix_rt::test]
async fn the_start_is_refused_once_the_clock_is_past_what_an_int4_column_holds() {
    use campaign_actors::clock::Clock;
    use campaign_actors::{Config, Metrics, Pipeline};
    let db = schema_with_trigger("trigstart", "int4").await;
    let text = format!(
        r#"
[kafka]
brokers = "127.0.0.1:1"
input_topic = "in"
output_topic = "out"
group_id = "g"
[postgres]
url = "{}"
[http]
listen = "127.0.0.1:0"
"#,
        db.url
    );
    let config = Config::from_toml_with_env(&text, "test", Vec::new()).expect("config");
    let clock = Clock::fixed_at_ms(PAST_2038 * 1000);
    let started = Instant::now();
    let start = Pipeline::start_with_clock(config, Metrics::new(), clock);
    let refused = match tokio::time::timeout(Duration::from_secs(30), start).await {
        Ok(Ok(_)) => panic!("the start went through"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("no answer within 30 s"),
    };
    println!("refused after {:?}: {refused}", started.elapsed());
    for needed in [
        "int4",
        "2038-01-19T03:14:07Z",
        trigger_column::MIGRATION,
        "ACCESS EXCLUSIVE",
    ] {
        assert!(refused.contains(needed), "{needed:?} in: {refused}");
    }
    db.cleanup().await;
}

/// `check-config --connect` says what the column is: ok with int8, a warning (the check still
/// passes) with the date and the migration with int4. (The broker of this config does not exist;
/// its line fails either way.)
#[test]
fn check_config_says_until_when_an_int4_column_works_and_how_to_migrate() {
    let system = actix_rt::System::new();
    let lines = |column_type: &'static str| {
        let db = system.block_on(schema_with_trigger(
            &format!("trigcheck{column_type}"),
            column_type,
        ));
        let dir = std::env::temp_dir().join(format!("cn-test-{}", db.name));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.toml");
        std::fs::write(
            &path,
            format!(
                "[kafka]\nbrokers = \"127.0.0.1:1\"\ninput_topic = \"in\"\noutput_topic = \"out\"\n\
                 group_id = \"g\"\n[postgres]\nurl = \"{}\"\n",
                db.url
            ),
        )
        .expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
            .args(["check-config", "--connect", "--config"])
            .arg(&path)
            .output()
            .expect("check-config");
        let _ = std::fs::remove_dir_all(&dir);
        system.block_on(db.cleanup());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("trigger_datetime_created"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let int4 = lines("int4");
    let int8 = lines("int8");
    println!("{int4}\n{int8}");
    let column = "column subscribers_feedback.trigger_datetime_created";
    assert!(
        int4.starts_with(&format!(
            "warn   {column}: int4: works until 2038-01-19T03:14:07Z"
        )),
        "{int4}"
    );
    assert!(int4.contains(trigger_column::MIGRATION), "{int4}");
    assert_eq!(int8, format!("ok     {column}: int8"));
}

/// The column migrated while the service runs: the writer's statements, prepared for int4, go on
/// writing (int4-sized values) into the bigint column until the next start picks int8.
#[actix_rt::test]
async fn a_column_migrated_while_the_writer_runs_still_takes_its_writes() {
    let db = schema_with_trigger("trigmigrated", "int4").await;
    let sink = PgSink::connect(sink_config(&db).await)
        .await
        .expect("connect");
    let now = unix_now();
    let before = sink.write(vec![job_at("c-before", now, 10, false)]).await;
    assert_eq!(before.expect("int4 write")[0].clients.len(), 3);
    db.db
        .batch_execute(
            "ALTER TABLE public.subscribers_feedback \
             ALTER COLUMN trigger_datetime_created TYPE bigint",
        )
        .await
        .expect("migrate");
    let grouped = sink
        .write(vec![
            job_at("c-after-1", now, 20, false),
            job_at("c-after-2", now, 30, false),
        ])
        .await;
    let alone = sink.write(vec![job_at("c-after-3", now, 40, true)]).await;
    println!("after the migration: grouped {grouped:?}, alone {alone:?}");
    assert_eq!(grouped.expect("grouped write")[1].clients.len(), 3);
    assert_eq!(alone.expect("single write")[0].clients.len(), 3);
    assert_eq!(triggers_of(&db, "c-after-3").await, vec![now; 3]);
    db.cleanup().await;
}
