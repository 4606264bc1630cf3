//! The run's Postgres: connections, a database of a test's own (made and dropped), what the
//! fixture's database holds, and what a test does to the service's sessions in it.

use tokio_postgres::Client;

use super::{env, fixture::claim_tag, Fixture};

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Postgres: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Creates the database `name` on the server of `admin_url`; returns its URL.
pub(super) async fn create_database(admin_url: &str, name: &str) -> String {
    let admin = connect(admin_url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    format!(
        "{}/{name}",
        admin_url.rsplit_once('/').expect("URL with a database").0
    )
}

/// Drops the database `name` of the server of `admin_url`, whoever is still connected to it.
pub(super) async fn drop_database(admin_url: &str, name: &str) {
    let admin = connect(admin_url).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// One test's own database and nothing else, for tests that need only Postgres: no tables are
/// created (the test sets up what it needs).
pub struct Database {
    pub name: String,
    pub url: String,
    pub admin_url: String,
    pub db: Client,
}

impl Database {
    pub async fn new(tag: &str) -> Database {
        claim_tag(tag);
        let run = env("CN_TEST_RUN_ID");
        let admin_url = env("CN_TEST_POSTGRES_URL");
        let name = format!("cn_test_{run}_{tag}");
        let url = create_database(&admin_url, &name).await;
        let db = connect(&url).await;
        Database {
            name,
            url,
            admin_url,
            db,
        }
    }

    pub async fn cleanup(self) {
        drop(self.db);
        drop_database(&self.admin_url, &self.name).await;
    }
}

impl Fixture {
    /// Outbox marks left: notifications in Postgres not yet confirmed by Kafka.
    pub async fn outbox_marks(&self) -> i64 {
        self.db
            .query_one("SELECT count(*) FROM campaign_notifier_outbox", &[])
            .await
            .expect("count outbox marks")
            .get(0)
    }

    pub async fn feedback_rows(&self) -> Vec<tokio_postgres::Row> {
        self.db
            .query("SELECT * FROM subscribers_feedback ORDER BY id", &[])
            .await
            .expect("query feedback")
    }

    /// Rows in `subscribers_feedback`, counted by Postgres.
    pub async fn feedback_count(&self) -> i64 {
        self.db
            .query_one("SELECT count(*) FROM subscribers_feedback", &[])
            .await
            .expect("count feedback")
            .get(0)
    }

    /// Rows of `campaign` in `subscribers_feedback`.
    pub async fn rows_of(&self, campaign: &str) -> i64 {
        self.db
            .query_one(
                "SELECT count(*) FROM subscribers_feedback WHERE adv_campaign_id = $1",
                &[&campaign],
            )
            .await
            .expect("count rows")
            .get(0)
    }

    /// Makes this test's database unreachable for the service (no new connections, the service's
    /// open ones cut) or reachable again, without touching the shared server.
    pub async fn set_postgres_reachable(&self, reachable: bool) {
        let admin = connect(&self.admin_url).await;
        let sql = if reachable {
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.db_name)
        } else {
            format!(
                "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{db}' AND application_name LIKE 'campaign-notifier %';",
                db = self.db_name
            )
        };
        admin
            .batch_execute(&sql)
            .await
            .expect("change reachability");
    }

    /// Lets new connections to this test's database in, or keeps them out while the open ones
    /// go on (as a DNS failure, a pooler or a connection limit would).
    pub async fn allow_new_connections(&self, allowed: bool) {
        let admin = connect(&self.admin_url).await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}",
                self.db_name
            ))
            .await
            .expect("change ALLOW_CONNECTIONS");
    }

    /// Cuts the Postgres sessions of the service process `pid` whose part (the name it connects
    /// with, `ledger`, `postgres writer`, ...) starts with `part`; returns how many there were.
    pub async fn terminate_sessions_of(&self, pid: u32, part: &str) -> usize {
        self.db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() \
                   AND application_name LIKE 'campaign-notifier ' || $1 || '%' \
                   AND application_name LIKE '% pid ' || $2 || ')'",
                &[&part, &pid.to_string()],
            )
            .await
            .expect("terminate sessions")
            .len()
    }

    /// Cuts every Postgres connection the service holds; returns how many there were.
    pub async fn terminate_service_connections(&self) -> usize {
        self.db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'campaign-notifier %'",
                &[],
            )
            .await
            .expect("terminate the service's connections")
            .len()
    }

    /// The plan Postgres makes for `statement` executed with `args` (SQL literals) when it plans
    /// generically, as it soon does for a statement prepared once; planned, not run.
    pub async fn generic_plan(&self, name: &str, statement: &str, args: &str) -> String {
        self.db
            .batch_execute(&format!(
                "SET plan_cache_mode = force_generic_plan; PREPARE {name} AS {statement}"
            ))
            .await
            .expect("prepare");
        let lines: Vec<String> = self
            .db
            .query(&format!("EXPLAIN EXECUTE {name}({args})"), &[])
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get(0))
            .collect();
        lines.join("\n")
    }
}
