//! Postgres as the service meets it: connections, how errors are described and classed, and the
//! schema step run at start-up.
//!
//! The schema step only ever creates what is missing (`IF NOT EXISTS`); it never drops, alters or
//! rewrites a table the app owns. It holds an advisory lock so that several instances starting at
//! once do not race each other's `CREATE TABLE`.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::contract;

const SCHEMA_LOCK_KEY: i64 = 0x6361_6d70_6169_676e; // "campaign"

/// The service's own additions to the brief's tables: the index the cache's reload and the
/// writers' lookups rely on, and the ledger's outbox.
const SERVICE_DDL: &str = "
CREATE INDEX IF NOT EXISTS subscribers_restaurants_restaurant_id_idx
    ON public.subscribers_restaurants (restaurant_id);
CREATE TABLE IF NOT EXISTS public.campaign_notifier_outbox (
    id bigserial PRIMARY KEY,
    token int8 NOT NULL UNIQUE,
    owner int4 NOT NULL,
    feedback_ids int4[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
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

/// Connects and drives the connection on the current arbiter. `who` names the connection in
/// the log line written if it breaks.
pub async fn connect(url: &str, who: &'static str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("campaign-notifier");
    let (client, connection) = config.connect(NoTls).await?;
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
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Creates the two tables, the index, the notification key and the outbox if they are missing.
pub async fn ensure_schema(client: &mut Client) -> Result<(), SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .await?;
    tx.batch_execute(contract::SUBSCRIBERS_RESTAURANTS_DDL)
        .await?;
    tx.batch_execute(contract::SUBSCRIBERS_FEEDBACK_DDL).await?;
    tx.batch_execute(SERVICE_DDL).await?;
    if let Err(e) = tx.batch_execute(UNIQUE_KEY).await {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            return Err(SchemaError::DuplicateNotifications);
        }
        return Err(e.into());
    }
    tx.commit().await?;
    Ok(())
}

/// Whether an error is the data's fault and fails the same way every time: data errors (class
/// 22), constraint violations (class 23) and program limits such as an index entry too large
/// (class 54). Anything else (connection lost, server shutting down, out of resources) may pass.
pub fn is_permanent(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|code| matches!(&code.code()[..2], "22" | "23" | "54"))
}
