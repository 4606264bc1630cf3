//! Postgres as the service meets it: connections (with TLS as the URL's `sslmode` says, see
//! [`tls`]), how errors are described and classed, the schema step run at start-up, and the
//! type of `subscribers_feedback.trigger_datetime_created` read at start ([`trigger_column`]).
//!
//! The schema step only ever creates what is missing (`IF NOT EXISTS`); it never alters or
//! rewrites a table the app owns, and the only thing it drops is an index of its own that an
//! earlier build left INVALID. It holds an advisory lock so that several instances starting at
//! once do not race each other's `CREATE TABLE`. The two indexes it adds to the app's tables are
//! built with `CREATE INDEX CONCURRENTLY` when their table already existed (see
//! [`ensure_schema`]), so that the app's writes never wait for the build. The DDL of the
//! service's own tables is in `schema/`, one `.sql` file per relation.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

pub mod tls;
pub mod trigger_column;

pub use trigger_column::TriggerColumn;

use crate::contract;

const SCHEMA_LOCK_KEY: i64 = 0x6361_6d70_6169_676e; // "campaign"

/// Held (at session level) by the instance building an index of [`APP_INDEXES`] concurrently,
/// so that instances starting together build it once.
const INDEX_BUILD_LOCK_KEY: i64 = SCHEMA_LOCK_KEY + 1;

/// An index the service adds to a table of the app's.
#[derive(Debug)]
struct AppIndex {
    name: &'static str,
    table: &'static str,
    unique: bool,
    columns: &'static str,
}

impl AppIndex {
    fn create(&self, concurrently: bool) -> String {
        format!(
            "CREATE {}INDEX {}IF NOT EXISTS {} ON {} {}",
            if self.unique { "UNIQUE " } else { "" },
            if concurrently { "CONCURRENTLY " } else { "" },
            self.name,
            self.table,
            self.columns
        )
    }

    fn qualified(&self) -> String {
        format!("public.{}", self.name)
    }
}

/// The service's additions to the brief's tables: the index the cache's reload and the writers'
/// lookups rely on, and the key that keeps notifications unique (one per (restaurant, campaign,
/// client), ever), whose build refused by existing duplicates gives its own clear error.
const APP_INDEXES: [AppIndex; 2] = [
    AppIndex {
        // A restaurant's subscribers, counted at a claim and read a slice at a time in `id`
        // order when its campaign fires. (Earlier versions built `(restaurant_id)` alone, named
        // `subscribers_restaurants_restaurant_id_idx`: that one may be dropped once this is built.)
        name: "subscribers_restaurants_restaurant_id_id_idx",
        table: "public.subscribers_restaurants",
        unique: false,
        columns: "(restaurant_id, id)",
    },
    AppIndex {
        name: "subscribers_feedback_notification_key",
        table: "public.subscribers_feedback",
        unique: true,
        columns: "(restaurant_id, adv_campaign_id, client_id)",
    },
];

/// The ledger's outbox.
const OUTBOX_DDL: &str = include_str!("schema/campaign_notifier_outbox.sql");

/// The lifecycle's campaigns: scheduled ones until they fire, fired ones until their end has long
/// passed (see `lifecycle::store`).
const CAMPAIGNS_DDL: &str = include_str!("schema/campaign_notifier_campaigns.sql");

/// Columns added to the service's own tables after their first release: added when missing
/// (`ADD COLUMN` without a default changes only the catalogue, so it takes its lock for an
/// instant), each with the relation it belongs to.
const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
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
    (
        "campaign_notifier_campaigns",
        "recalled_at",
        "ALTER TABLE public.campaign_notifier_campaigns ADD COLUMN IF NOT EXISTS recalled_at int8;
         CREATE INDEX IF NOT EXISTS campaign_notifier_campaigns_recalled_idx
             ON public.campaign_notifier_campaigns (recalled_at) WHERE recalled_at IS NOT NULL",
    ),
];

/// How far the change feed of `subscribers_restaurants` has been followed (see
/// `lifecycle::store`).
const FEED_DDL: &str = include_str!("schema/campaign_notifier_feed.sql");

/// The owners (one per process) and their leases (docs/design.md, "One owner at a time"). Owner ids come from the
/// sequence and are never reused.
const OWNER_SEQ_DDL: &str = include_str!("schema/campaign_notifier_owner_seq.sql");
const OWNERS_DDL: &str = include_str!("schema/campaign_notifier_owners.sql");

/// Which owner holds a role only one instance plays at a time (the change feed's).
const LEADERS_DDL: &str = include_str!("schema/campaign_notifier_leaders.sql");

/// The per-client cap's: each client's sent times within the window (its row is the client's
/// lock), and the notifications it capped (see `sinks::pg_writer::capping`).
const CLIENTS_DDL: &str = include_str!("schema/campaign_notifier_clients.sql");
const CAPPED_DDL: &str = include_str!("schema/campaign_notifier_capped.sql");

/// The changes of `subscribers_restaurants`, in the order every instance applies them (see
/// `changes`).
const PAIR_CHANGES_DDL: &str = include_str!("schema/campaign_notifier_pair_changes.sql");

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
    #[error("the index {index} was built, yet the catalog says it is {state}")]
    NotBuilt { index: &'static str, state: String },
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
///
/// Everything but the two indexes on the app's tables is created in one transaction under an
/// advisory lock. An index whose table this transaction created (empty) is created with it; one
/// on a table that already existed, which may hold millions of rows the app keeps writing, is
/// built afterwards with `CREATE INDEX CONCURRENTLY` (one instance at a time): a plain
/// `CREATE INDEX` would hold every write of the table for the whole build.
pub async fn ensure_schema(client: &mut Client) -> Result<(), SchemaError> {
    let later = create_missing(client).await?;
    for index in later {
        build_concurrently(client, index).await?;
    }
    Ok(())
}

/// The transaction part of [`ensure_schema`]; returns the indexes left to build concurrently.
async fn create_missing(client: &mut Client) -> Result<Vec<&'static AppIndex>, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await?;
    // Only what is missing is created: `CREATE INDEX IF NOT EXISTS` takes a lock that waits for
    // every open write of its table, and holds up every write after it, even when the index
    // exists, so an instance starting beside busy (or frozen) peers must not run it.
    let created = create_missing_app_tables(&tx).await?;
    let later = create_indexes_of_new_tables(&tx, &created).await?;
    create_missing_own_relations(&tx).await?;
    add_missing_columns(&tx).await?;
    tx.commit().await?;
    Ok(later)
}

/// Creates the app's tables that are missing; returns those it created.
async fn create_missing_app_tables(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let app_tables = [
        (
            "public.subscribers_restaurants",
            contract::SUBSCRIBERS_RESTAURANTS_DDL,
        ),
        (
            "public.subscribers_feedback",
            contract::SUBSCRIBERS_FEEDBACK_DDL,
        ),
    ];
    let mut created = Vec::new();
    for (relation, ddl) in app_tables {
        if missing(tx, relation).await? {
            tx.batch_execute(ddl).await?;
            created.push(relation);
        }
    }
    Ok(created)
}

/// Creates the indexes of [`APP_INDEXES`] that are not valid yet on the tables in `created`;
/// returns those on the tables that already existed, to be built concurrently.
async fn create_indexes_of_new_tables(
    tx: &tokio_postgres::Transaction<'_>,
    created: &[&str],
) -> Result<Vec<&'static AppIndex>, SchemaError> {
    let mut later = Vec::new();
    for index in &APP_INDEXES {
        if index_state(tx, index).await? == IndexState::Valid {
            continue;
        }
        if !created.contains(&index.table) {
            later.push(index);
            continue;
        }
        // Its table is new and empty: built at once, in this transaction.
        if let Err(e) = tx.batch_execute(&index.create(false)).await {
            return Err(refused_build(e));
        }
    }
    Ok(later)
}

/// Creates the service's own tables and sequence that are missing.
async fn create_missing_own_relations(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    let own = [
        ("public.campaign_notifier_outbox", OUTBOX_DDL),
        ("public.campaign_notifier_campaigns", CAMPAIGNS_DDL),
        ("public.campaign_notifier_feed", FEED_DDL),
        ("public.campaign_notifier_owner_seq", OWNER_SEQ_DDL),
        ("public.campaign_notifier_owners", OWNERS_DDL),
        ("public.campaign_notifier_leaders", LEADERS_DDL),
        ("public.campaign_notifier_clients", CLIENTS_DDL),
        ("public.campaign_notifier_capped", CAPPED_DDL),
        ("public.campaign_notifier_pair_changes", PAIR_CHANGES_DDL),
    ];
    for (relation, ddl) in own {
        if missing(tx, relation).await? {
            tx.batch_execute(ddl).await?;
        }
    }
    Ok(())
}

/// Adds the [`ADDED_COLUMNS`] that are missing.
async fn add_missing_columns(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
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
    Ok(())
}

/// A build the database refused: duplicates in the table of the unique key have their own
/// message.
fn refused_build(e: tokio_postgres::Error) -> SchemaError {
    match e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        true => SchemaError::DuplicateNotifications,
        false => e.into(),
    }
}

/// What the catalog says of an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexState {
    Missing,
    Valid,
    /// `pg_index.indisvalid` false: a concurrent build that failed or was interrupted left it.
    /// The planner does not use it, yet it may be maintained on every write.
    Invalid,
}

async fn index_state(
    client: &impl tokio_postgres::GenericClient,
    index: &AppIndex,
) -> Result<IndexState, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT indisvalid FROM pg_catalog.pg_index WHERE indexrelid = to_regclass($1)",
            &[&index.qualified()],
        )
        .await?;
    Ok(match row.map(|r| r.try_get::<_, bool>(0)).transpose()? {
        None => IndexState::Missing,
        Some(true) => IndexState::Valid,
        Some(false) => IndexState::Invalid,
    })
}

/// How often an instance waiting for another's build looks again.
const BUILD_POLL: Duration = Duration::from_secs(1);

/// Builds `index` on a table that already existed with `CREATE INDEX CONCURRENTLY`, outside any
/// transaction: the app's reads and writes of the table go on while it is built.
///
/// One instance builds at a time (a session-level advisory lock, taken by polling, so that an
/// instance waiting for another's build also sees when it is done). The build runs with no
/// `statement_timeout` and no `lock_timeout`: it takes as long as the table needs, and what it
/// waits for (transactions that were open on the table when it began, a VACUUM or another
/// session's DDL) it must wait for; nothing the app does waits for it, and a timeout would only
/// leave an invalid index after the whole scan, to be built again at the next start. An INVALID
/// index left by an earlier build that failed or was interrupted is dropped (concurrently) and
/// built again. A build that fails drops what it left, so the next start finds the same state
/// (and, for duplicates, gives the same message).
async fn build_concurrently(client: &Client, index: &AppIndex) -> Result<(), SchemaError> {
    let mut waiting_since = None;
    loop {
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&INDEX_BUILD_LOCK_KEY])
            .await?
            .try_get(0)?;
        if locked {
            break;
        }
        if index_state(client, index).await? == IndexState::Valid {
            log::info!("{}: built by another instance", index.name);
            return Ok(());
        }
        let since = *waiting_since.get_or_insert_with(|| {
            log::info!(
                "{}: another instance is building an index of the schema; waiting for it",
                index.name
            );
            Instant::now()
        });
        if since.elapsed() > Duration::from_secs(600) {
            // Still waiting: say so now and then (the holder may be stuck; see docs).
            log::warn!(
                "{}: still waiting for another instance's index build after {:?}",
                index.name,
                since.elapsed()
            );
            waiting_since = Some(Instant::now());
        }
        tokio::time::sleep(BUILD_POLL).await;
    }
    let built = build_holding_lock(client, index).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&INDEX_BUILD_LOCK_KEY])
        .await;
    built?;
    unlocked?;
    Ok(())
}

/// The build itself, once this instance holds the build lock: clears the way, builds and checks
/// that the catalog calls the index valid.
async fn build_holding_lock(client: &Client, index: &AppIndex) -> Result<(), SchemaError> {
    if clear_the_way(client, index).await? == IndexState::Valid {
        return Ok(());
    }
    announce_build(client, index).await?;
    let started = Instant::now();
    build_or_drop_what_failed(client, index).await?;
    match index_state(client, index).await? {
        IndexState::Valid => {
            log::info!("{}: built in {:?}", index.name, started.elapsed());
            Ok(())
        }
        state => Err(SchemaError::NotBuilt {
            index: index.name,
            state: format!("{state:?}"),
        }),
    }
}

/// Waits until `index` is valid (returned as such: nothing to build) or missing, dropping an
/// INVALID one an earlier build of the service's left.
async fn clear_the_way(client: &Client, index: &AppIndex) -> Result<IndexState, SchemaError> {
    // A build of it by a session other than the service's (an operator's) is left to finish.
    loop {
        match index_state(client, index).await? {
            IndexState::Valid => return Ok(IndexState::Valid),
            IndexState::Missing => return Ok(IndexState::Missing),
            IndexState::Invalid if !being_built(client, index).await? => {
                log::warn!(
                    "{}: an earlier concurrent build failed or was interrupted and left it \
                     INVALID (unused, yet maintained on every write); dropping it and building \
                     it again",
                    index.name
                );
                unlimited(client, true).await?;
                let dropped = drop_concurrently(client, index).await;
                unlimited(client, false).await?;
                dropped?;
                return Ok(IndexState::Missing);
            }
            IndexState::Invalid => {
                log::info!("{}: another session is building it; waiting", index.name);
                tokio::time::sleep(BUILD_POLL).await;
            }
        }
    }
}

/// Says what is about to be built, and on about how many rows.
async fn announce_build(client: &Client, index: &AppIndex) -> Result<(), tokio_postgres::Error> {
    let rows: i64 = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class \
             WHERE oid = to_regclass($1)",
            &[&index.table],
        )
        .await?
        .try_get(0)?;
    log::info!(
        "{}: building it on {} (about {rows} rows) with CREATE INDEX CONCURRENTLY; the app's \
         reads and writes go on meanwhile",
        index.name,
        index.table
    );
    Ok(())
}

/// `CREATE INDEX CONCURRENTLY` without the session's timeouts; a build that fails drops the
/// invalid index it left.
async fn build_or_drop_what_failed(client: &Client, index: &AppIndex) -> Result<(), SchemaError> {
    unlimited(client, true).await?;
    let built = client.batch_execute(&index.create(true)).await;
    if built.is_err() {
        // The failed build left an invalid index: gone, the next start sees what this one saw.
        if let Err(e) = drop_concurrently(client, index).await {
            log::warn!(
                "{}: cannot drop what the failed build left ({}); the next start drops it",
                index.name,
                describe(&e)
            );
        }
    }
    unlimited(client, false).await?;
    built.map_err(refused_build)?;
    Ok(())
}

/// Whether a session is building `index` right now.
async fn being_built(client: &Client, index: &AppIndex) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_progress_create_index \
             WHERE index_relid = to_regclass($1) AND pid <> pg_backend_pid())",
            &[&index.qualified()],
        )
        .await?
        .try_get(0)
}

async fn drop_concurrently(client: &Client, index: &AppIndex) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            index.qualified()
        ))
        .await
}

/// Lifts this session's statement and lock timeouts for a concurrent build (`on`), or puts
/// back the ones it connected with.
async fn unlimited(client: &Client, on: bool) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(match on {
            true => "SET statement_timeout = 0; SET lock_timeout = 0",
            false => "RESET statement_timeout; RESET lock_timeout",
        })
        .await
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
