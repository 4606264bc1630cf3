//! `PgWriter`: inserts one `subscribers_feedback` row per notification, `feedback` NULL.
//!
//! A group of batches is written in one transaction, one `INSERT ... SELECT FROM unnest($10)` per
//! campaign (the campaign's fields are sent once, the client ids as one array), all statements
//! pipelined on the connection: one round trip per group, never one per row.

use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::notification::NotificationBatch;
use crate::writer::{LocalFuture, Sink, SinkError, Writer};

pub type PgWriter = Writer<PgSink>;

const INSERT: &str = "INSERT INTO public.subscribers_feedback \
    (restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, \
     adv_campaign_owner_contact, adv_campaign_datetime_start, adv_campaign_datetime_end, \
     datetime_created, client_id, trigger_datetime_created) \
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, c, $9 FROM unnest($10::text[]) AS c";

const ROWS_PER_STATEMENT: usize = 10_000;

#[derive(Clone)]
pub struct PgSinkConfig {
    pub url: String,
}

impl std::fmt::Debug for PgSinkConfig {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSinkConfig").finish_non_exhaustive()
    }
}

pub struct PgSink {
    client: Arc<Client>,
    insert: Statement,
}

/// Data errors (class 22) and constraint violations (class 23) are the rows' fault; anything else
/// (connection lost, server shutting down, out of resources) may pass, so it is retried.
pub fn classify(e: &tokio_postgres::Error) -> SinkError {
    if let Some(code) = e.code() {
        let class = &code.code()[..2];
        if class == "22" || class == "23" {
            return SinkError::Permanent(e.to_string());
        }
    }
    SinkError::Retriable(crate::schema::describe(e))
}

impl Sink for PgSink {
    const NAME: &'static str = "postgres";
    // One connection runs one transaction at a time.
    const MAX_CONCURRENT_WRITES: usize = 1;
    type Config = PgSinkConfig;

    fn connect(config: PgSinkConfig) -> LocalFuture<Result<PgSink, SinkError>> {
        Box::pin(async move {
            let client = crate::schema::connect(&config.url, "postgres writer")
                .await
                .map_err(|e| SinkError::Retriable(crate::schema::describe(&e)))?;
            let insert = client.prepare(INSERT).await.map_err(|e| classify(&e))?;
            Ok(PgSink {
                client: Arc::new(client),
                insert,
            })
        })
    }

    fn write(&self, batches: Vec<Arc<NotificationBatch>>) -> LocalFuture<Result<(), SinkError>> {
        let client = self.client.clone();
        let insert = self.insert.clone();
        Box::pin(async move {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| classify(&e))?;
            let result = insert_all(&client, &insert, &batches).await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = client.batch_execute(end).await.map_err(|e| classify(&e));
            result.and(ended)
        })
    }

    fn close(&self) -> LocalFuture<()> {
        Box::pin(async {})
    }

    fn is_connected(&self) -> bool {
        !self.client.is_closed()
    }
}

async fn insert_all(
    client: &Client,
    insert: &Statement,
    batches: &[Arc<NotificationBatch>],
) -> Result<(), SinkError> {
    let triggers: Vec<i32> = batches
        .iter()
        .map(|b| i32::try_from(b.trigger_datetime_created))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            SinkError::Permanent("trigger_datetime_created does not fit the int4 column".into())
        })?;
    // A restaurant with a million subscribers still gives statements of bounded size.
    let chunks: Vec<(usize, Vec<String>)> = batches
        .iter()
        .enumerate()
        .flat_map(|(n, b)| {
            (0..b.len()).step_by(ROWS_PER_STATEMENT).map(move |start| {
                let end = (start + ROWS_PER_STATEMENT).min(b.len());
                (
                    n,
                    (start..end).map(|i| b.client_id(i).to_string()).collect(),
                )
            })
        })
        .collect();
    let params: Vec<[&(dyn ToSql + Sync); 10]> = chunks
        .iter()
        .map(|(n, ids)| {
            let c = &batches[*n].campaign;
            [
                &c.restaurant_id as &(dyn ToSql + Sync),
                &c.adv_campaign_id,
                &c.adv_campaign_content,
                &c.adv_campaign_owner,
                &c.adv_campaign_owner_contact,
                &c.adv_campaign_datetime_start,
                &c.adv_campaign_datetime_end,
                &c.datetime_created,
                &triggers[*n],
                ids,
            ]
        })
        .collect();
    // Issued together, the statements are pipelined on the one connection.
    let statements = params.iter().map(|p| client.execute(insert, p));
    futures::future::try_join_all(statements)
        .await
        .map_err(|e| classify(&e))?;
    Ok(())
}
