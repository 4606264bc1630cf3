//! `PgWriter`: inserts one `subscribers_feedback` row per notification, `feedback` NULL, and
//! records in the same transaction which of them still have to reach Kafka (the ledger).
//!
//! A group of batches is written in one transaction, each campaign in chunks of at most
//! 10 000 clients. Every chunk's statement inserts its rows with `ON CONFLICT DO NOTHING` on the
//! notification key, marks the new ones in `campaign_notifier_outbox` (one mark per chunk), and
//! returns what was new. A client who already has a row for this restaurant and campaign gets
//! nothing new: a campaign delivered twice notifies nobody twice. Small chunks (at most
//! [`GROUPED_ROWS`] clients) share one statement ([`GROUP_INSERT`]): with ten subscribers a
//! campaign, a statement per campaign cost more than its rows. Two chunks of the same campaign
//! never share a statement (the second goes to the next statement of the transaction), so each
//! row of a statement belongs to exactly one chunk; a larger chunk has an [`INSERT`] of its own.
//!
//! Every chunk carries a token that is stable across retries. When a connection breaks after
//! `COMMIT` was sent, the writer reconciles the jobs it had under way before writing them again;
//! here that flags them as replays, written chunk by chunk with [`INSERT`], which finds a chunk's
//! token in the outbox and returns the rows that attempt inserted instead of inserting nothing,
//! so no notification is dropped on the way to Kafka.
//!
//! With `[limits] per_client_max` set, the same transaction applies the per-client cap before the
//! inserts: the write's clients are locked, each notification over the cap is recorded in
//! `campaign_notifier_capped` instead of inserted, and so is in neither sink.
//!
//! Its parts: this file (the job, the sink, and the transaction of a write, fenced by the lease),
//! [`insert_all`](mod@insert_all) (a write's chunks planned into statements, their parameters
//! and answers), [`statements`] (the texts; the two inserts in `insert.sql` and
//! `group_insert.sql`), [`cap`] (the cap's decision, pure) and [`capping`] (the cap's
//! statements in the transaction).

use std::ops::Range;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::writer::{LocalFuture, Rows, Sink, SinkError, Writer};
use crate::cache::Subscribers;
use crate::campaign::Campaign;
use crate::error_chain::Chain;
use crate::events::{Event, NotificationsCapped};
use crate::lease::{self, Lapsed, Lease};
use crate::metrics::{Metrics, SinkKind};
use crate::notification::{cut, NotificationBatch};
use crate::postgres::trigger_column::TriggerColumn;
use crate::postgres::PostgresSettings;

pub mod cap;
mod capping;
mod insert_all;
mod statements;
mod tokens;

pub use cap::PerClientCap;
use capping::CapStatements;
pub use insert_all::GROUPED_ROWS;
use insert_all::{insert_all, Triggers};
pub use statements::{group_insert, FENCE, GROUP_INSERT, GROUP_INSERT_INT8, INSERT};
pub use tokens::Tokens;

pub type PgWriter = Writer<PgSink>;

pub const ROWS_PER_STATEMENT: usize = 10_000;

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
#[derive(Debug, Clone)]
pub struct PgJob {
    pub batch: Arc<NotificationBatch>,
    /// Indexes into the batch.
    pub range: Range<usize>,
    pub first_token: i64,
    /// An earlier write of it may have committed: written chunk by chunk with [`INSERT`], which
    /// returns what that write inserted.
    pub replay: bool,
}

impl PgJob {
    /// The same job, its notifications created at `trigger_datetime_created` instead.
    pub fn created_at(self, trigger_datetime_created: i64) -> PgJob {
        PgJob {
            batch: Arc::new(self.batch.created_at(trigger_datetime_created)),
            ..self
        }
    }

    /// The same job without the clients `subscribers` no longer lists at the campaign's
    /// restaurant (see [`NotificationBatch::still_subscribed`]), and how many those are: `None`
    /// when nobody is left. It keeps its first token: it has no more chunks than before.
    pub fn still_subscribed(self, subscribers: &Subscribers) -> (Option<PgJob>, usize) {
        match self.batch.still_subscribed(self.range.clone(), subscribers) {
            None => (Some(self), 0),
            Some(None) => {
                let left = self.range.len();
                (None, left)
            }
            Some(Some(batch)) => {
                let left = self.range.len() - batch.len();
                let job = PgJob {
                    range: 0..batch.len(),
                    batch: Arc::new(batch),
                    ..self
                };
                (Some(job), left)
            }
        }
    }

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
            replay: false,
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

#[derive(Clone)]
pub struct PgSinkConfig {
    pub postgres: PostgresSettings,
    /// This process's ledger owner id.
    pub owner: i32,
    /// Every transaction is fenced by it (see [`FENCE`]).
    pub lease: Lease,
    /// The type of `subscribers_feedback.trigger_datetime_created`, read at start.
    pub trigger_column: TriggerColumn,
    /// The per-client cap, when `[limits] per_client_max` sets one.
    pub cap: Option<Capping>,
}

/// The per-client cap as the Postgres writer applies it: the limit, and the metrics where what it
/// capped is counted ([`NotificationsCapped`], once the transaction that capped them committed).
#[derive(Clone)]
pub struct Capping {
    pub cap: PerClientCap,
    pub metrics: Metrics,
}

pub struct PgSink {
    client: Arc<Client>,
    statements: Arc<Statements>,
    owner: i32,
    lease: Lease,
    trigger_column: TriggerColumn,
    capped: Option<Metrics>,
}

/// The two inserts and the fence, prepared once per connection; the cap's statements too while
/// it is on.
struct Statements {
    group: Statement,
    single: Statement,
    fence: Statement,
    cap: Option<(PerClientCap, CapStatements)>,
}

fn classify(e: &tokio_postgres::Error) -> SinkError {
    let described = crate::postgres::describe(e);
    if crate::postgres::is_permanent(e) {
        SinkError::Permanent(described)
    } else if crate::postgres::is_connection_lost(e) {
        SinkError::Disconnected(described)
    } else {
        SinkError::Retriable(described)
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
                .map_err(|e| SinkError::Retriable(Chain(&e).to_string()))?;
            let group = client.prepare(group_insert(config.trigger_column)).await;
            let single = client.prepare(INSERT).await;
            let fence = client.prepare(FENCE).await;
            let cap = match &config.cap {
                Some(c) => Some((c.cap, CapStatements::prepare(&client).await?)),
                None => None,
            };
            Ok(PgSink {
                client: Arc::new(client),
                statements: Arc::new(Statements {
                    group: group.map_err(|e| classify(&e))?,
                    single: single.map_err(|e| classify(&e))?,
                    fence: fence.map_err(|e| classify(&e))?,
                    cap,
                }),
                owner: config.owner,
                lease: config.lease,
                trigger_column: config.trigger_column,
                capped: config.cap.map(|c| c.metrics),
            })
        })
    }

    fn write(&self, jobs: Vec<Arc<PgJob>>) -> LocalFuture<Result<Vec<Inserted>, SinkError>> {
        let client = self.client.clone();
        let statements = self.statements.clone();
        let (owner, lease, column) = (self.owner, self.lease.clone(), self.trigger_column);
        let capped = self.capped.clone();
        Box::pin(async move {
            // Before anything is sent: an int4 column past 2038-01-19T03:14:07Z refuses every
            // write, which no retry or refusal of the campaign cures.
            let triggers = Triggers::of(column, &jobs)?;
            lease
                .check()
                .map_err(|e| SinkError::Lapsed(Chain(&e).to_string()))?;
            client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| classify(&e))?;
            // The fence first, the inserts behind it on the same connection (pipelined): if it
            // finds the owner fenced, the transaction rolls back with whatever they did.
            let fence = async {
                match lease.fences() {
                    true => client
                        .query_opt(&statements.fence, &[&owner])
                        .await
                        .map(|r| r.is_some()),
                    false => Ok(true),
                }
            };
            let inserts = insert_all(&client, &statements, owner, &jobs, &triggers);
            let (unfenced, inserted) = futures::join!(fence, inserts);
            let fenced = matches!(unfenced, Ok(false));
            let result = match unfenced.map_err(|e| classify(&e)) {
                Ok(true) => inserted,
                Ok(false) => Err(SinkError::Lapsed(Lapsed::Fenced.to_string())),
                Err(e) => Err(e),
            };
            let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
            let ended = client.batch_execute(end).await.map_err(|e| classify(&e));
            if fenced {
                lease.fenced(lease::fenced_by(&client, owner).await.ok().flatten());
            }
            match (result, ended) {
                (Ok(written), Ok(())) => {
                    if let (Some(metrics), 1..) = (&capped, written.capped) {
                        let notifications = written.capped;
                        NotificationsCapped { notifications }.emit(metrics);
                    }
                    Ok(written.inserted)
                }
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            }
        })
    }

    /// Jobs whose earlier write may have committed are written again as replays, which find
    /// what that write inserted by their tokens.
    fn reconcile(&self, jobs: Vec<Arc<PgJob>>) -> LocalFuture<Result<Vec<Arc<PgJob>>, SinkError>> {
        let replays = jobs
            .into_iter()
            .map(|job| match job.replay {
                true => job,
                false => Arc::new(PgJob {
                    replay: true,
                    ..PgJob::clone(&job)
                }),
            })
            .collect();
        Box::pin(async move { Ok(replays) })
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

    fn probe_fence(&self) -> LocalFuture<()> {
        let (client, owner, lease) = (self.client.clone(), self.owner, self.lease.clone());
        Box::pin(async move {
            match lease::is_fenced(&client, owner).await {
                Ok(true) => lease.fenced(lease::fenced_by(&client, owner).await.ok().flatten()),
                Ok(false) => {}
                Err(e) => log::debug!(
                    "postgres writer: cannot look at the lease: {}",
                    crate::postgres::describe(&e)
                ),
            }
        })
    }
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
