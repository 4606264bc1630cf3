//! Postgres as the service meets it: connections (with TLS as the URL's `sslmode` says, see
//! [`tls`]), how errors are described and classed, and the schema step run at start-up.
//!
//! The schema step only ever creates what is missing (`IF NOT EXISTS`); it never drops, alters or
//! rewrites a table the app owns. It holds an advisory lock so that several instances starting at
//! once do not race each other's `CREATE TABLE`.

use std::time::Duration;

use tokio_postgres::Client;

pub mod tls;

use crate::contract;

const SCHEMA_LOCK_KEY: i64 = 0x6361_6d70_6169_676e; // "campaign"

/// The service's own additions to the brief's tables: the index the cache's reload and the
/// writers' lookups rely on, and the ledger's outbox.
const RESTAURANT_INDEX: &str = "
CREATE INDEX IF NOT EXISTS subscribers_restaurants_restaurant_id_idx
    ON public.subscribers_restaurants (restaurant_id)";
const OUTBOX_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.campaign_notifier_outbox (
    id bigserial PRIMARY KEY,
    token int8 NOT NULL UNIQUE,
    owner int4 NOT NULL,
    feedback_ids int4[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
";

/// The lifecycle's campaigns: scheduled ones until they fire, fired ones until their end has long
/// passed (see `lifecycle::store`).
const CAMPAIGNS_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.campaign_notifier_campaigns (
    restaurant_id text NOT NULL,
    adv_campaign_id text NOT NULL,
    adv_campaign_content text NOT NULL,
    adv_campaign_owner text NOT NULL,
    adv_campaign_owner_contact text NOT NULL,
    adv_campaign_datetime_start int8 NOT NULL,
    adv_campaign_datetime_end int8 NOT NULL,
    datetime_created int8 NOT NULL,
    source_topic text NOT NULL,
    source_partition int4 NOT NULL,
    source_offset int8 NOT NULL,
    source_timestamp_ms int8,
    message_key bytea,
    message bytea NOT NULL,
    state text NOT NULL CHECK (state IN
        ('scheduled', 'firing', 'active', 'cancelled', 'expired', 'refused')),
    owner int4,
    fired_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (restaurant_id, adv_campaign_id)
);
CREATE INDEX IF NOT EXISTS campaign_notifier_campaigns_due_idx
    ON public.campaign_notifier_campaigns (adv_campaign_datetime_start)
    WHERE state IN ('scheduled', 'firing');
";

/// Columns added to the service's own tables after their first release: added when missing
/// (`ADD COLUMN` without a default changes only the catalogue, so it takes its lock for an
/// instant), each with the relation it belongs to.
const ADDED_COLUMNS: [(&str, &str, &str); 2] = [
    (
        "campaign_notifier_campaigns",
        "source_timestamp_ms",
        "ALTER TABLE public.campaign_notifier_campaigns ADD COLUMN IF NOT EXISTS source_timestamp_ms int8",
    ),
    (
        "campaign_notifier_feed",
        "table_filenode",
        "ALTER TABLE public.campaign_notifier_feed ADD COLUMN IF NOT EXISTS table_filenode int8",
    ),
];

/// How far the change feed of `subscribers_restaurants` has been followed (see
/// `lifecycle::store`).
const FEED_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.campaign_notifier_feed (
    name text PRIMARY KEY,
    last_id int8 NOT NULL,
    table_filenode int8,
    updated_at timestamptz NOT NULL DEFAULT now()
);
";

/// The owners (one per process) and their leases (see `ledger::lease`). Owner ids come from the
/// sequence and are never reused.
const OWNER_SEQ_DDL: &str = "
CREATE SEQUENCE IF NOT EXISTS public.campaign_notifier_owner_seq AS int4 MINVALUE 1;
";
const OWNERS_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.campaign_notifier_owners (
    owner int4 PRIMARY KEY,
    host text NOT NULL,
    pid int4 NOT NULL,
    input_topic text NOT NULL,
    partitions int4[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    clock_offset_ms int8 NOT NULL DEFAULT 0,
    settle_ms int8 NOT NULL,
    fenced_at timestamptz,
    fenced_by int4,
    recovered_by int4
);
";

/// Which owner holds a role only one instance plays at a time (the change feed's).
const LEADERS_DDL: &str = "
CREATE TABLE IF NOT EXISTS public.campaign_notifier_leaders (
    role text PRIMARY KEY,
    owner int4 NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
";

/// One notification per (restaurant, campaign, client), ever. Created apart from the DDL above
/// so that existing duplicates give their own clear error.
const UNIQUE_KEY: &str = "
CREATE UNIQUE INDEX IF NOT EXISTS subscribers_feedback_notification_key
    ON public.subscribers_feedback (restaurant_id, adv_campaign_id, client_id)";

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "public.subscribers_feedback already holds more than one row for the same (restaurant_id, \
         adv_campaign_id, client_id), so the key that keeps notifications unique cannot be created. \
         Nothing was changed. Find them with: SELECT restaurant_id, adv_campaign_id, client_id, \
         count(*) FROM public.subscribers_feedback GROUP BY 1, 2, 3 HAVING count(*) > 1"
    )]
    DuplicateNotifications,
}

/// How the service connects to Postgres: the URL, and the limits every session runs with, so
/// that a stopped or vanished peer holding locks or an open transaction blocks the others only
/// for a bounded time.
#[derive(Clone)]
pub struct PostgresSettings {
    pub url: String,
    /// Used unless the URL sets its own `connect_timeout`.
    pub connect_timeout: Duration,
    /// A statement waiting longer than this for a lock another session holds fails (and the
    /// writer retries it).
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    /// The server ends a session whose transaction stays open and idle this long (its client
    /// stopped mid-transaction, say), which releases its locks.
    pub idle_in_transaction_timeout: Duration,
    /// TCP keepalives, on both ends: a peer that vanished is noticed after about three times
    /// this.
    pub keepalive_idle: Duration,
    /// The owner id of this process, once it has one: its sessions carry it in their
    /// `application_name`, so that the peer that fences it can end them.
    pub owner: Option<i32>,
}

impl PostgresSettings {
    /// The service's defaults for `url` (as the demo, the benchmark and the tests connect).
    pub fn for_url(url: &str) -> PostgresSettings {
        PostgresSettings {
            url: url.to_string(),
            connect_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(120),
            idle_in_transaction_timeout: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(30),
            owner: None,
        }
    }

    /// The connection config: the URL's, with the service's name, timeouts and keepalives; and
    /// its TLS settings.
    pub fn client_config(&self) -> Result<(tokio_postgres::Config, tls::Tls), ConnectError> {
        let (url, tls) = tls::split(&self.url).map_err(ConnectError::Tls)?;
        let mut config: tokio_postgres::Config = url.parse()?;
        tls.configure(&mut config);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        let ms = |d: Duration| d.as_millis();
        let keepalive = self.keepalive_idle.as_secs().max(1);
        let limits = format!(
            "-c lock_timeout={} -c statement_timeout={} -c idle_in_transaction_session_timeout={} \
             -c tcp_keepalives_idle={keepalive} -c tcp_keepalives_interval={keepalive} \
             -c tcp_keepalives_count=3",
            ms(self.lock_timeout),
            ms(self.statement_timeout),
            ms(self.idle_in_transaction_timeout),
        );
        let options = match config.get_options() {
            Some(own) if !own.trim().is_empty() => format!("{own} {limits}"),
            _ => limits,
        };
        config
            .application_name("campaign-notifier")
            .options(options)
            .keepalives(true)
            .keepalives_idle(self.keepalive_idle)
            .keepalives_interval(self.keepalive_idle)
            .keepalives_retries(3);
        Ok((config, tls))
    }
}

impl std::fmt::Debug for PostgresSettings {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The server (or whatever stands at its address) accepted the connection and never
    /// answered: tokio-postgres' own timeout covers the TCP connect only.
    #[error("no answer within {0:?} (postgres.connect_timeout_secs)")]
    TimedOut(Duration),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Connects, within the connect timeout for the whole handshake, and drives the connection on
/// the current arbiter. `who` names the connection in the log line written if it breaks.
pub async fn connect(
    settings: &PostgresSettings,
    who: &'static str,
) -> Result<Client, ConnectError> {
    let (mut config, tls) = settings.client_config()?;
    // Which part of which process a session is, as pg_stat_activity shows it (and the peer that
    // ends a fenced owner's sessions finds them).
    let pid = std::process::id();
    config.application_name(&match settings.owner {
        Some(owner) => format!("campaign-notifier {who} (owner {owner}, pid {pid})"),
        None => format!("campaign-notifier {who} (pid {pid})"),
    });
    let timeout = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(settings.connect_timeout);
    let connector = tls.connector().map_err(ConnectError::Tls)?;
    let (client, connection) = tokio::time::timeout(timeout, config.connect(connector))
        .await
        .map_err(|_| ConnectError::TimedOut(timeout))??;
    actix_rt::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("{who}: postgres connection closed: {}", describe(&e));
        }
    });
    Ok(client)
}

/// An error's message with its cause, which tokio-postgres keeps apart (`db error` alone says
/// nothing to an operator). Never contains the connection string.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let waited = match db.code().code() {
            "55P03" => {
                " (waited longer than lock_timeout for a lock another session holds: a \
                        stopped or stuck instance, or a long transaction of the app's)"
            }
            "57014" => " (ran longer than statement_timeout)",
            "25P03" => " (the transaction stayed idle longer than idle_in_transaction_timeout)",
            _ => "",
        };
        return format!(
            "{} ({}): {}{waited}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Creates the two tables, the index, the notification key, the outbox, the lifecycle's
/// campaigns and feed, and the owners' leases if they are missing.
pub async fn ensure_schema(client: &mut Client) -> Result<(), SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await?;
    // Only what is missing is created: `CREATE INDEX IF NOT EXISTS` takes a lock that waits for
    // every open write of its table, and holds up every write after it, even when the index
    // exists, so an instance starting beside busy (or frozen) peers must not run it.
    let steps = [
        (
            "public.subscribers_restaurants",
            contract::SUBSCRIBERS_RESTAURANTS_DDL,
        ),
        (
            "public.subscribers_feedback",
            contract::SUBSCRIBERS_FEEDBACK_DDL,
        ),
        (
            "public.subscribers_restaurants_restaurant_id_idx",
            RESTAURANT_INDEX,
        ),
        ("public.campaign_notifier_outbox", OUTBOX_DDL),
        ("public.campaign_notifier_campaigns", CAMPAIGNS_DDL),
        ("public.campaign_notifier_feed", FEED_DDL),
        ("public.campaign_notifier_owner_seq", OWNER_SEQ_DDL),
        ("public.campaign_notifier_owners", OWNERS_DDL),
        ("public.campaign_notifier_leaders", LEADERS_DDL),
    ];
    for (relation, ddl) in steps {
        if missing(&tx, relation).await? {
            tx.batch_execute(ddl).await?;
        }
    }
    for (table, column, ddl) in ADDED_COLUMNS {
        let row = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2)",
                &[&table, &column],
            )
            .await?;
        if row.try_get(0)? {
            tx.batch_execute(ddl).await?;
        }
    }
    if missing(&tx, "public.subscribers_feedback_notification_key").await? {
        if let Err(e) = tx.batch_execute(UNIQUE_KEY).await {
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                return Err(SchemaError::DuplicateNotifications);
            }
            return Err(e.into());
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn missing(
    tx: &tokio_postgres::Transaction<'_>,
    relation: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = tx
        .query_one("SELECT to_regclass($1) IS NULL", &[&relation])
        .await?;
    row.try_get(0)
}

/// Whether the session was lost rather than a statement failing: the connection closed, a
/// connection exception (class 08), or the server ending the session (57P01 terminated by an
/// administrator, 57P02 crash shutdown, 57P03 cannot connect now). Says nothing about what was
/// being written.
pub fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|code| {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        })
}

/// Whether an error is the data's fault and fails the same way every time: data errors (class
/// 22), constraint violations (class 23) and program limits such as an index entry too large
/// (class 54). Anything else (connection lost, server shutting down, out of resources) may pass.
pub fn is_permanent(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "23" | "54"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A peer that accepts connections and never answers: the handshake waits forever unless the
    /// connect timeout ends it.
    async fn silent_peer() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        (
            listener,
            format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        )
    }

    #[actix_rt::test]
    async fn a_peer_that_never_answers_is_given_up_after_the_connect_timeout() {
        let (_listener, url) = silent_peer().await;
        let settings = PostgresSettings {
            connect_timeout: Duration::from_millis(300),
            ..PostgresSettings::for_url(&url)
        };
        let started = Instant::now();
        let connecting = tokio::time::timeout(Duration::from_secs(10), connect(&settings, "test"));
        let err = (connecting.await.expect("gave up by itself")).expect_err("no server answered");
        let waited = started.elapsed();
        assert!(matches!(err, ConnectError::TimedOut(t) if t == Duration::from_millis(300)));
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert!(
            err.to_string().contains("postgres.connect_timeout_secs"),
            "{err}"
        );
    }

    #[actix_rt::test]
    async fn the_urls_own_connect_timeout_wins() {
        let (_listener, url) = silent_peer().await;
        let settings = PostgresSettings {
            connect_timeout: Duration::from_secs(60),
            ..PostgresSettings::for_url(&format!("{url}?connect_timeout=1"))
        };
        let connecting = tokio::time::timeout(Duration::from_secs(10), connect(&settings, "test"));
        let err = (connecting.await.expect("gave up by itself")).expect_err("no server answered");
        assert!(matches!(err, ConnectError::TimedOut(t) if t == Duration::from_secs(1)));
    }
}
