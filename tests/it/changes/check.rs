//! `check-config --connect` says which mode `cache.changes` comes to on the server and, where the
//! logical mode is not allowed, what is missing with its fix: against the run's shared server
//! (wal_level replica) and against a [`LogicalPostgres`] as its table is made ready. The config is
//! a fixture's, on the run's broker, so every other line passes and the exit code is this line's.

use campaign_actors::changes::{server, slot, trigger, PUBLICATION, REPLICA_IDENTITY_FIX};

use crate::common::cluster::{run_dir, LogicalPostgres};
use crate::common::{env, free_port, Fixture};

const SLOT: &str = "campaign_notifier_subscribers";

/// `check-config --connect` on the fixture's config with `cache` appended to `[cache]`: its exit
/// code and its `subscriber changes` line.
fn changes_line(f: &Fixture, cache: &str) -> (Option<i32>, String) {
    let path = f.dir.join("check-changes.toml");
    let config = f.config(free_port(), &format!("[cache]\n{cache}\n"));
    std::fs::write(&path, config).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["check-config", "--connect", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{cache}:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text
        .lines()
        .find(|l| l.contains(" subscriber changes: "))
        .unwrap_or_else(|| panic!("no subscriber changes line in:\n{text}"))
        .to_string();
    (out.status.code(), line)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_server_is_told_wal_level_and_its_fix_and_logical_fails_the_check() {
    let f = Fixture::new("changes_check_shared", 1).await;
    let (code, line) = changes_line(&f, "changes = \"auto\"");
    assert_eq!(code, Some(0), "auto falls back with a warning: {line}");
    assert!(line.starts_with("warn   subscriber changes: ids only"), "{line}");
    assert!(line.contains("wal_level is replica"), "{line}");
    assert!(
        line.contains("ALTER SYSTEM SET wal_level = logical; then restart the server"),
        "{line}"
    );

    let (code, line) = changes_line(&f, "changes = \"logical\"");
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("FAILED subscriber changes: cache.changes = \"logical\""),
        "{line}"
    );
    assert!(line.contains("wal_level = logical"), "{line}");

    // The fixture's user (a superuser) owns the table: the service would install the trigger.
    let (code, line) = changes_line(&f, "changes = \"trigger\"");
    assert_eq!(code, Some(0), "{line}");
    assert!(line.contains("installs it at start"), "{line}");
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logical_server_is_told_logical_once_the_table_is_replica_identity_full() {
    let server = LogicalPostgres::start(run_dir("changes-check"));
    let f = Fixture::new_on_postgres(
        "changes_check_logical",
        1,
        &env("CN_TEST_BROKERS"),
        Vec::new(),
        &server.url(),
    )
    .await;
    let (code, line) = changes_line(&f, "");
    assert_eq!(code, Some(0), "{line}");
    assert!(line.starts_with("warn   subscriber changes: ids only"), "{line}");
    assert!(line.contains(REPLICA_IDENTITY_FIX), "{line}");

    f.db.batch_execute(trigger::INSTALL).await.expect("install");
    let (code, line) = changes_line(&f, "");
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("ok     subscriber changes: trigger on public.subscribers_restaurants"),
        "{line}"
    );
    f.db.batch_execute(trigger::UNINSTALL).await.expect("uninstall");

    f.db.batch_execute(REPLICA_IDENTITY_FIX).await.expect("replica identity");
    let (code, line) = changes_line(&f, "");
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(
        line,
        format!(
            "ok     subscriber changes: logical decoding (slot {SLOT} will be made at start, \
             publication {PUBLICATION} will be made at start)"
        )
    );

    assert!(server::ensure_publication(&f.db, PUBLICATION).await.expect("publication"));
    assert!(slot::ensure_slot(&f.db, SLOT).await.expect("slot"));
    let (code, line) = changes_line(&f, "changes = \"logical\"");
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(
        line,
        format!(
            "ok     subscriber changes: logical decoding (slot {SLOT} exists, publication \
             {PUBLICATION} exists)"
        )
    );
    // A slot keeps its database from being dropped.
    assert!(slot::drop_slot(&f.db, SLOT).await.expect("drop slot"));
    f.cleanup().await;
    drop(server);
}
