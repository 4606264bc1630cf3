//! The README's first quick-start command, run as a user would run it.

use std::process::Command;

#[test]
fn demo_prints_both_sinks_and_exits_zero() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"));
    cmd.arg("demo");
    if let Ok(url) = std::env::var("CN_TEST_POSTGRES_URL") {
        cmd.env("DEMO_POSTGRES_URL", url);
    }
    let out = cmd.output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("== 9 notifications in the output topic"),
        "{stdout}"
    );
    assert!(
        stdout.contains("== 9 rows in subscribers_feedback"),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("\"client_id\":\"023e4567-e89b-12d3-a456-42661417400")
            .count(),
        9,
        "{stdout}"
    );
    assert!(
        stdout.contains("notified of both, in both sinks"),
        "the client who subscribed while campaigns were active was notified:\n{stdout}"
    );
    assert!(
        stdout.contains("fired; both sinks confirmed it"),
        "the campaign published before its start fired:\n{stdout}"
    );
    assert!(stdout.contains("feedback=NULL"), "{stdout}");
    assert!(stdout.contains("dropped database"), "{stdout}");
}
