//! The service against a broker reached as a managed cluster is: SASL_SSL with SCRAM-SHA-512
//! (see `crate::common::secure`). Every client of the service connects through `[kafka.security]`; a
//! wrong password or a certificate signed by an authority the service does not trust stops the
//! start with exit code 2 and librdkafka's reason, instead of a service that retries for ever.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::cluster::run_dir;
use crate::common::secure::{SecureBroker, USER};
use crate::common::{Fixture, Service, CONTRACT_OUTPUT, SAMPLE, SAMPLE_RESTAURANT};

/// The `[kafka.security]` section for `broker`, the password read from `password_file` and the
/// broker's certificate checked against `ca_file`.
fn security(password_file: &std::path::Path, ca_file: &std::path::Path) -> String {
    format!(
        "[kafka.security]\nprotocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         username = \"{USER}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
        password_file.display(),
        ca_file.display()
    )
}

async fn fixture(tag: &str, broker: &SecureBroker) -> Fixture {
    Fixture::new_secured(tag, 1, &broker.address(), broker.client_properties()).await
}

/// Starts the service with `password` (in a file) and the authority `ca_file`, expecting it to
/// stop by itself: its exit code, its log and how long it ran.
fn start_refused(
    fixture: &Fixture,
    password: &str,
    ca_file: &std::path::Path,
) -> (Option<i32>, String, Duration) {
    let password_file = fixture.dir.join("kafka-password");
    std::fs::write(&password_file, password).expect("password file");
    let started = Instant::now();
    let (status, log) = Service::run_to_exit(fixture, &security(&password_file, ca_file));
    (status.code(), log, started.elapsed())
}

#[actix_rt::test]
async fn over_sasl_ssl_with_scram_sha_512_the_sample_reaches_both_sinks() {
    let broker = SecureBroker::start(run_dir("secure-ok"));
    let fixture = fixture("secure_ok", &broker).await;
    fixture
        .subscribe(SAMPLE_RESTAURANT, &["client-a", "client-b"])
        .await;
    let password_file = fixture.dir.join("kafka-password");
    std::fs::write(&password_file, format!("{}\n", broker.password)).expect("password file");
    let config = security(&password_file, &broker.ca_file);

    // check-config shows the section with the password masked.
    let path = fixture.dir.join("check.toml");
    std::fs::write(&path, fixture.config(crate::common::free_port(), &config)).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("protocol=sasl_ssl sasl_mechanism=SCRAM-SHA-512")
            && shown.contains(&format!("username={USER} password=***")),
        "{shown}"
    );
    assert!(!shown.contains(&broker.password), "{shown}");

    let mut service = Service::start(&fixture, &config);
    // The brief's sample as it is written there, key and JSON in one value.
    fixture.produce("1", SAMPLE.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(60));

    let output = fixture.read_output();
    assert_eq!(output.len(), 2, "{output:?}");
    let expected: serde_json::Value = serde_json::from_str(CONTRACT_OUTPUT).expect("contract");
    for (_, notification) in &output {
        assert_eq!(notification["adv_campaign_id"], expected["adv_campaign_id"]);
    }
    assert_eq!(fixture.feedback_rows().await.len(), 2);
    assert!(
        !service.log_text().contains(&broker.password),
        "the password reached the log"
    );
    assert!(service.terminate().success());
    fixture.cleanup().await;
}

#[actix_rt::test]
async fn a_wrong_password_stops_the_start_with_exit_code_2() {
    let broker = SecureBroker::start(run_dir("secure-password"));
    let fixture = fixture("secure_password", &broker).await;
    let (code, log, took) = start_refused(&fixture, "not-the-password", &broker.ca_file);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("Kafka: the brokers refused the connection"),
        "{log}"
    );
    assert!(log.to_lowercase().contains("authentication"), "{log}");
    println!("a wrong password stopped the start after {took:?}");
    fixture.cleanup().await;
}

#[actix_rt::test]
async fn a_certificate_from_an_untrusted_authority_stops_the_start_with_exit_code_2() {
    let broker = SecureBroker::start(run_dir("secure-ca"));
    let fixture = fixture("secure_ca", &broker).await;
    let (code, log, took) = start_refused(&fixture, &broker.password, &broker.other_ca_file);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("Kafka: the brokers refused the connection"),
        "{log}"
    );
    assert!(log.contains("certificate verify failed"), "{log}");
    println!("an untrusted certificate stopped the start after {took:?}");
    fixture.cleanup().await;
}

/// Whether the session of `client` is encrypted.
async fn encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[actix_rt::test]
async fn postgres_sslmode_is_honoured_as_libpq_reads_it() {
    let server = crate::common::secure::TlsPostgres::start(run_dir("pg-tls-modes"));
    let ca = server.ca_file.display().to_string();
    let other = server.other_ca_file.display().to_string();
    for (host, params, expected) in sslmodes_that_connect(&ca) {
        assert_eq!(
            session(server.url(host, &params)).await,
            expected,
            "{host} {params}"
        );
    }
    for (host, params, reason) in sslmodes_that_refuse(&ca, &other) {
        let err = session(server.url(host, &params)).await.expect_err(&params);
        assert!(err.contains(reason), "{host} {params}: {err}");
    }
}

/// A session of the service's own connect to `url`: whether it is encrypted, or why it failed.
async fn session(url: String) -> Result<bool, String> {
    use campaign_actors::postgres::{connect, PostgresSettings};
    match connect(&PostgresSettings::for_url(&url), "test").await {
        Ok(client) => Ok(encrypted(&client).await),
        Err(e) => Err(e.to_string()),
    }
}

/// Hosts and `sslmode` parameters that connect to the server whose authority is `ca`, each with
/// whether the session is encrypted.
fn sslmodes_that_connect(ca: &str) -> [(&'static str, String, Result<bool, String>); 6] {
    [
        ("127.0.0.1", "sslmode=disable".to_string(), Ok(false)),
        ("127.0.0.1", "sslmode=prefer".to_string(), Ok(true)),
        ("127.0.0.1", "sslmode=require".to_string(), Ok(true)),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            Ok(true),
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            Ok(true),
        ),
        // The certificate names 127.0.0.1, not localhost: only verify-full checks that.
        (
            "localhost",
            format!("sslmode=verify-ca&sslrootcert={ca}"),
            Ok(true),
        ),
    ]
}

/// Hosts and `sslmode` parameters refused by the server whose authority is `ca` (`other` signed
/// nothing of it), each with why.
fn sslmodes_that_refuse(ca: &str, other: &str) -> [(&'static str, String, &'static str); 4] {
    [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={other}"),
            "certificate verify failed",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            "certificate verify failed",
        ),
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={other}"),
            "certificate verify failed",
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={ca}"),
            "certificate verify failed",
        ),
    ]
}

#[actix_rt::test]
async fn the_service_runs_on_postgres_over_verify_full_with_every_connection_encrypted() {
    let server = crate::common::secure::TlsPostgres::start(run_dir("pg-tls-service"));
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
    let brokers = std::env::var("CN_TEST_BROKERS").expect("CN_TEST_BROKERS");
    let fixture = Fixture::new_on_postgres("pg_tls", 1, &brokers, Vec::new(), &admin).await;
    fixture
        .subscribe(SAMPLE_RESTAURANT, &["client-a", "client-b"])
        .await;
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        fixture.db_url,
        server.ca_file.display()
    );
    let mut service = Service::spawn_with_env(
        &fixture,
        "",
        0,
        &[("CAMPAIGN_NOTIFIER__POSTGRES__URL", url.as_str())],
    );
    service.wait_ready();
    fixture.produce("1", SAMPLE.as_bytes()).await;
    service.wait_processed(1, Duration::from_secs(60));
    assert_eq!(fixture.read_output().len(), 2);
    assert_eq!(fixture.feedback_rows().await.len(), 2);
    let (all, encrypted): (i64, i64) = {
        let row = fixture
            .db
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
                 JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'campaign-notifier %'",
                &[],
            )
            .await
            .expect("sessions");
        (row.get(0), row.get(1))
    };
    assert!(
        all >= 3,
        "the cache, the writer, the lifecycle and the ledger connect: {all}"
    );
    assert_eq!(
        encrypted, all,
        "every connection of the service is encrypted"
    );
    assert!(service.terminate().success());
    fixture.cleanup().await;
}
