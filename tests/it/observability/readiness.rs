//! HTTP and readiness: the service serves `/healthz`, `/readyz` and `/metrics` from the start of
//! its start-up, `/readyz` says which step is under way and follows Postgres, and the image's
//! health check and the `ready` series agree with it.

use std::panic::AssertUnwindSafe;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::*;

/// Fails the test if the service has exited.
fn assert_running(service: &mut Service) {
    if let Some(status) = service.try_exit() {
        panic!("service exited with {status}:\n{}", service.log_text());
    }
}

/// Polls `/readyz` until it answers `status`; returns the JSON body.
fn wait_readyz(service: &mut Service, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        assert_running(service);
        let last = match http_get(service.http_port, "/readyz") {
            Ok((s, body)) if s == status => return body,
            other => other,
        };
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within {timeout:?} (last: {last:?}):\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The schema step's advisory lock (`postgres::SCHEMA_LOCK_KEY`): held by the test, it keeps the
/// service's start-up waiting in that step.
const SCHEMA_LOCK_KEY: i64 = 0x6361_6d70_6169_676e;

#[tokio::test(flavor = "multi_thread")]
async fn http_is_up_first_and_readyz_says_which_start_up_step_is_under_way() {
    let f = Fixture::new("obs_starting", 1).await;
    let mut other = connect(&f.db_url).await;
    let holder = other.transaction().await.expect("begin");
    holder
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await
        .expect("hold the schema lock");

    let mut service = Service::spawn(&f, "", 0);
    let port = service.http_port;

    // Alive and saying why it is not ready while the schema step waits for the lock.
    let body = wait_readyz(&mut service, 503, Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["status"], "starting", "{body}");
    assert_eq!(
        json["reason"], "starting: preparing the Postgres schema",
        "{body}"
    );
    assert_eq!(http_get(port, "/healthz").expect("GET /healthz").0, 200);
    assert!(http_get(port, "/metrics")
        .expect("GET /metrics")
        .1
        .contains("campaign_notifier_ready 0"));

    holder.commit().await.expect("release the schema lock");
    wait_readyz(&mut service, 200, Duration::from_secs(30));
    drop(service);
    f.cleanup().await;
}

fn not_ready_reason(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("/readyz body {body:?}: {e}"));
    json["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("/readyz 503 without a reason: {body}"))
        .to_string()
}

/// Runs the image's health check against the service on `port` (instead of 9898).
fn run_healthcheck(port: u16) -> ExitStatus {
    let command = dockerfile_healthcheck();
    let script = replace_once(
        &command[2],
        "/dev/tcp/127.0.0.1/9898",
        &format!("/dev/tcp/127.0.0.1/{port}"),
    );
    let mut child = Command::new(&command[0])
        .arg(&command[1])
        .arg(script)
        .stdout(Stdio::null())
        .spawn()
        .expect("run the health check");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the health check") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the health check took more than 10s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `campaign_notifier_ready` series of `/metrics`: readiness as a series, for alerts.
fn ready_series(port: u16) -> Option<String> {
    let (_, text) = http_get(port, "/metrics").expect("GET /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("campaign_notifier_ready "))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_with_a_reason_before_the_first_snapshot_and_while_postgres_is_unreachable() {
    let f = Fixture::new("obs_readyz", 1).await;
    f.subscribe(SAMPLE_RESTAURANT, &CLIENTS).await;
    let result = AssertUnwindSafe(readyz_follows_postgres(&f))
        .catch_unwind()
        .await;
    // Always, so that a database kept after a failure can be looked at and dropped.
    f.allow_new_connections(true).await;
    match result {
        Ok(()) => f.cleanup().await,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn readyz_follows_postgres(f: &Fixture) {
    // Before the first snapshot: the service serves HTTP as soon as it has started its actors,
    // then waits for the subscriber cache's first load. Postgres cannot simply be made
    // unreachable for that part, because start-up fails fast without it (exit 2). What holds the
    // first load back here is a lock the app could hold on its table (a migration, say): the
    // cache's COPY waits for it. The schema step is skipped (the tables exist) because its
    // CREATE INDEX IF NOT EXISTS would wait for the same lock before HTTP is served.
    let mut app = connect(&f.db_url).await;
    let migration = app.transaction().await.expect("begin");
    migration
        .batch_execute("LOCK TABLE public.subscribers_restaurants IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock subscribers_restaurants");
    let mut service = Service::spawn_with_env(
        f,
        "[writers]\nrestart_backoff_max_ms = 1000\n",
        0,
        &[("CAMPAIGN_NOTIFIER__POSTGRES__CREATE_SCHEMA", "false")],
    );
    let port = service.http_port;

    wait_until_the_first_load_is_what_waits(&mut service);
    // It stays so while the load waits.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        assert_running(&mut service);
        let (status, body) = http_get(port, "/readyz").expect("GET /readyz");
        assert_eq!(status, 503, "{body}");
    }
    assert!(!run_healthcheck(port).success(), "health check while 503");
    assert_eq!(ready_series(port).as_deref(), Some("0"));

    migration.rollback().await.expect("release the lock");
    wait_readyz(&mut service, 200, Duration::from_secs(30));
    assert!(run_healthcheck(port).success(), "health check while 200");
    assert_eq!(ready_series(port).as_deref(), Some("1"));

    // Postgres lost while running: the writer notices within a second and reconnects.
    f.allow_new_connections(false).await;
    assert!(
        f.terminate_service_connections().await > 0,
        "the writer holds a connection"
    );
    let body = wait_readyz(&mut service, 503, Duration::from_secs(15));
    let reason = not_ready_reason(&body);
    assert!(reason.contains("postgres"), "reason: {reason}");
    assert!(!run_healthcheck(port).success(), "health check while 503");

    f.allow_new_connections(true).await;
    wait_readyz(&mut service, 200, Duration::from_secs(30));
}

/// HTTP is up first: the start-up steps before the cache's load (the Kafka check) pass by, each
/// a "starting" reason, until the load is what waits.
fn wait_until_the_first_load_is_what_waits(service: &mut Service) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = wait_readyz(service, 503, Duration::from_secs(30));
        let reason = not_ready_reason(&body);
        if reason.contains("snapshot") {
            break;
        }
        assert!(reason.starts_with("starting: "), "reason: {reason}");
        assert!(Instant::now() < deadline, "still {reason:?} after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
