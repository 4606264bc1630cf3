//! `PgWriter`: inserts one `subscribers_feedback` row per notification, `feedback` NULL, and
//! records in the same transaction which of them still have to reach Kafka (the ledger).
//!
//! A group of batches is written in one transaction: per campaign (in chunks of at most
//! 10 000 clients) one statement that inserts the rows with `ON CONFLICT DO NOTHING` on the
//! notification key, marks the new ones in `campaign_notifier_outbox`, and returns them. A
//! client who already has a row for this restaurant and campaign gets nothing new: a campaign
//! delivered twice notifies nobody twice.
//!
//! Every chunk carries a token that is stable across retries. When a connection breaks after
//! `COMMIT` was sent, the retry finds its token in the outbox and returns the rows that attempt
//! inserted instead of inserting nothing, so no notification is dropped on the way to Kafka.

use std::ops::Range;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::writer::{LocalFuture, Rows, Sink, SinkError, Writer};
use crate::campaign::Campaign;
use crate::ledger::Tokens;
use crate::metrics::SinkKind;
use crate::notification::{cut, NotificationBatch};
use crate::postgres::PostgresSettings;

pub type PgWriter = Writer<PgSink>;

pub const ROWS_PER_STATEMENT: usize = 10_000;

/// One row: the outbox mark (NULL when nothing was new) and the clients inserted, NULL when that
/// is every client sent (the common case, which spares sending them back). A retried chunk whose
/// token is already in the outbox gets its first attempt's mark and clients instead.
const INSERT: &str = concat!(
    "
WITH prior AS (
    SELECT id, feedback_ids FROM public.campaign_notifier_outbox WHERE token = $11
), ins AS (
    INSERT INTO public.subscribers_feedback (",
    crate::notification_columns!(),
    ")
    SELECT $1, $2, $3, $4, $5, $6, $7, c, $8, $9 FROM unnest($10::text[]) AS c
    WHERE NOT EXISTS (SELECT 1 FROM prior)
    ON CONFLICT (restaurant_id, adv_campaign_id, client_id) DO NOTHING
    RETURNING id, client_id
), mark AS (
    INSERT INTO public.campaign_notifier_outbox (token, owner, feedback_ids)
    SELECT $11, $12, array_agg(id) FROM ins HAVING count(*) > 0
    RETURNING id
)
SELECT (SELECT id FROM mark),
       CASE WHEN (SELECT count(*) FROM ins) = cardinality($10::text[]) THEN NULL
            ELSE ARRAY(SELECT client_id FROM ins) END
WHERE NOT EXISTS (SELECT 1 FROM prior)
UNION ALL
SELECT p.id,
       ARRAY(SELECT f.client_id FROM public.subscribers_feedback f WHERE f.id = ANY (p.feedback_ids))
FROM prior p"
);

/// A campaign's fields as statement parameters, in the order of
/// [`crate::notification_columns!`] without `client_id` and `trigger_datetime_created`.
pub fn campaign_params(c: &Campaign) -> [&(dyn ToSql + Sync); 8] {
    [
        &c.restaurant_id,
        &c.adv_campaign_id,
        &c.adv_campaign_content,
        &c.adv_campaign_owner,
        &c.adv_campaign_owner_contact,
        &c.adv_campaign_datetime_start,
        &c.adv_campaign_datetime_end,
        &c.datetime_created,
    ]
}

/// A campaign's notifications as the Postgres writer takes them: the batch, the slice of it this
/// job writes (the delivery module cuts a large campaign into slices), and the ledger tokens of
/// its chunks (one per `ROWS_PER_STATEMENT` clients).
#[derive(Debug)]
pub struct PgJob {
    pub batch: Arc<NotificationBatch>,
    /// Indexes into the batch.
    pub range: Range<usize>,
    pub first_token: i64,
}

impl PgJob {
    /// The job of the whole of `batch`, with the tokens of its chunks reserved.
    pub fn new(batch: Arc<NotificationBatch>, tokens: &mut Tokens) -> PgJob {
        let all = 0..batch.len();
        PgJob::slice(batch, all, tokens)
    }

    /// The job of `range` of `batch`, with the tokens of its chunks reserved.
    pub fn slice(batch: Arc<NotificationBatch>, range: Range<usize>, tokens: &mut Tokens) -> PgJob {
        let first_token = tokens.take(range.len().div_ceil(ROWS_PER_STATEMENT));
        PgJob {
            batch,
            range,
            first_token,
        }
    }

    /// Its statements: each chunk's token and the clients (indexes into the batch) it inserts. A
    /// restaurant with a million subscribers still gives statements of bounded size.
    pub fn chunks(&self) -> impl Iterator<Item = (i64, Range<usize>)> + '_ {
        cut(self.range.clone(), ROWS_PER_STATEMENT)
            .enumerate()
            .map(|(k, clients)| (self.first_token + k as i64, clients))
    }
}

impl Rows for PgJob {
    fn rows(&self) -> usize {
        self.range.len()
    }
}

/// What a campaign added: the clients notified for the first time, and the outbox marks to
/// clear once Kafka has them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub clients: Vec<String>,
    pub outbox_ids: Vec<i64>,
}

#[derive(Clone, Debug)]
pub struct PgSinkConfig {
    pub postgres: PostgresSettings,
    /// This process's ledger owner id.
    pub owner: i32,
}

pub struct PgSink {
    client: Arc<Client>,
    insert: Statement,
    owner: i32,
}

fn classify(e: &tokio_postgres::Error) -> SinkError {
    if crate::postgres::is_permanent(e) {
        SinkError::Permanent(crate::postgres::describe(e))
    } else {
        SinkError::Retriable(crate::postgres::describe(e))
    }
}

impl Sink for PgSink {
    const KIND: SinkKind = SinkKind::Postgres;
    // One connection runs one transaction at a time.
    const MAX_CONCURRENT_WRITES: usize = 1;
    type Config = PgSinkConfig;
    type Item = PgJob;
    type Output = Inserted;

    fn connect(config: PgSinkConfig) -> LocalFuture<Result<PgSink, SinkError>> {
        Box::pin(async move {
            let client = crate::postgres::connect(&config.postgres, "postgres writer")
                .await
                .map_err(|e| SinkError::Retriable(e.to_string()))?;
            let insert = client.prepare(INSERT).await.map_err(|e| classify(&e))?;
            Ok(PgSink {
                client: Arc::new(client),
                insert,
                owner: config.owner,
            })
        })
    }

    fn write(&self, jobs: Vec<Arc<PgJob>>) -> LocalFuture<Result<Vec<Inserted>, SinkError>> {
        let client = self.client.clone();
        let insert = self.insert.clone();
        let owner = self.owner;
        Box::pin(async move {
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| classify(&e))?;
            let result = insert_all(&client, &insert, owner, &jobs).await;
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = client.batch_execute(end).await.map_err(|e| classify(&e));
            match (result, ended) {
                (Ok(inserted), Ok(())) => Ok(inserted),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            }
        })
    }

    /// Only the rows inserted: a client who already had the campaign is not written again.
    fn rows_written(_job: &PgJob, inserted: &Inserted) -> usize {
        inserted.clients.len()
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
    owner: i32,
    jobs: &[Arc<PgJob>],
) -> Result<Vec<Inserted>, SinkError> {
    let triggers: Vec<i32> = jobs
        .iter()
        .map(|j| i32::try_from(j.batch.trigger_datetime_created))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            SinkError::Permanent("trigger_datetime_created does not fit the int4 column".into())
        })?;
    // (job, token, client ids)
    let chunks: Vec<(usize, i64, Vec<String>)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(n, job)| {
            job.chunks().map(move |(token, clients)| {
                let ids = clients.map(|i| job.batch.client_id(i).to_string());
                (n, token, ids.collect())
            })
        })
        .collect();
    let params: Vec<[&(dyn ToSql + Sync); 12]> = chunks
        .iter()
        .map(|(n, token, ids)| {
            let [r, c, content, owner_name, contact, start, end, created] =
                campaign_params(&jobs[*n].batch.campaign);
            let (trigger, owner) = (&triggers[*n], &owner);
            [
                r, c, content, owner_name, contact, start, end, created, trigger, ids, token, owner,
            ]
        })
        .collect();
    // Issued together, the statements are pipelined on the one connection.
    let statements = params.iter().map(|p| client.query(insert, p));
    let results = futures::future::try_join_all(statements)
        .await
        .map_err(|e| classify(&e))?;
    drop(params);
    let mut inserted: Vec<Inserted> = vec![Inserted::default(); jobs.len()];
    for ((n, _, ids), rows) in chunks.into_iter().zip(results) {
        let out = &mut inserted[n];
        let [row] = rows.as_slice() else {
            return Err(SinkError::Retriable(format!(
                "the insert statement returned {} rows instead of one",
                rows.len()
            )));
        };
        let outbox_id: Option<i64> = row.try_get(0).map_err(|e| classify(&e))?;
        if let Some(id) = outbox_id {
            if out.outbox_ids.last() != Some(&id) {
                out.outbox_ids.push(id);
            }
        }
        let clients: Option<Vec<String>> = row.try_get(1).map_err(|e| classify(&e))?;
        match clients {
            // Every client sent was new.
            None => out.clients.extend(ids),
            Some(clients) => out.clients.extend(clients),
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(clients: usize) -> Arc<NotificationBatch> {
        crate::notification::test_batch(None, clients)
    }

    #[test]
    fn a_job_is_cut_into_statements_of_bounded_size_each_with_its_token() {
        let mut tokens = Tokens::new(3);
        let job = PgJob::new(batch(2 * ROWS_PER_STATEMENT + 1), &mut tokens);
        let chunks: Vec<_> = job.chunks().collect();
        assert_eq!(
            chunks,
            vec![
                (job.first_token, 0..ROWS_PER_STATEMENT),
                (
                    job.first_token + 1,
                    ROWS_PER_STATEMENT..2 * ROWS_PER_STATEMENT
                ),
                (
                    job.first_token + 2,
                    2 * ROWS_PER_STATEMENT..2 * ROWS_PER_STATEMENT + 1
                ),
            ]
        );
        let next = PgJob::new(batch(1), &mut tokens);
        assert_eq!(
            next.first_token,
            job.first_token + 3,
            "tokens are not shared"
        );
        assert_eq!(next.chunks().count(), 1);
    }

    #[test]
    fn a_slice_cuts_only_its_own_clients_into_statements() {
        let mut tokens = Tokens::new(3);
        let slice = ROWS_PER_STATEMENT + 5..3 * ROWS_PER_STATEMENT;
        let job = PgJob::slice(batch(4 * ROWS_PER_STATEMENT), slice.clone(), &mut tokens);
        assert_eq!(job.rows(), slice.len());
        let chunks: Vec<_> = job.chunks().collect();
        assert_eq!(
            chunks,
            vec![
                (
                    job.first_token,
                    slice.start..slice.start + ROWS_PER_STATEMENT
                ),
                (
                    job.first_token + 1,
                    slice.start + ROWS_PER_STATEMENT..slice.end
                ),
            ]
        );
        assert_eq!(
            PgJob::new(batch(1), &mut tokens).first_token,
            job.first_token + 2
        );
    }
}
