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

use std::ops::Range;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::writer::{LocalFuture, Rows, Sink, SinkError, Writer};
use crate::campaign::Campaign;
use crate::lease::{self, Lapsed, Lease};
use crate::ledger::Tokens;
use crate::metrics::SinkKind;
use crate::notification::{cut, NotificationBatch};
use crate::postgres::trigger_column::{self, TriggerColumn};
use crate::postgres::PostgresSettings;

pub type PgWriter = Writer<PgSink>;

pub const ROWS_PER_STATEMENT: usize = 10_000;

/// One row: the outbox mark (NULL when nothing was new) and the clients inserted, NULL when that
/// is every client sent (the common case, which spares sending them back). A retried chunk whose
/// token is already in the outbox gets its first attempt's mark and clients instead. `$9` takes
/// the type of `trigger_datetime_created` (int4 as the brief has it, int8 once migrated) and is
/// bound as such.
/// (Those are read one primary-key lookup at a time: the statement is prepared once and runs a
/// generic plan, and one made while `subscribers_feedback` was empty would otherwise scan it.)
pub const INSERT: &str = concat!(
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
       ARRAY(SELECT f.client_id FROM unnest(p.feedback_ids) AS m(id)
             CROSS JOIN LATERAL (SELECT client_id FROM public.subscribers_feedback
                                 WHERE id = m.id LIMIT 1) f)
FROM prior p"
);

/// The text of [`GROUP_INSERT`] with the array type of `$9`.
macro_rules! group_insert_sql {
    ($trigger_array:literal) => {
        concat!(
            "
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int8[], $7::int8[], $8::int8[], $9::",
            $trigger_array,
            ", $10::int8[], $11::int4[])
        WITH ORDINALITY AS u(restaurant_id, adv_campaign_id, content, owner_name, contact,
                             start_at, end_at, created, trig, token, unit_rows, n)
), ins AS (
    INSERT INTO public.subscribers_feedback (",
            crate::notification_columns!(),
            ")
    SELECT u.restaurant_id, u.adv_campaign_id, u.content, u.owner_name, u.contact,
           u.start_at, u.end_at, x.client_id, u.created, u.trig
    FROM unnest($12::int4[], $13::text[]) AS x(unit, client_id) JOIN u ON u.n = x.unit
    ON CONFLICT (restaurant_id, adv_campaign_id, client_id) DO NOTHING
    RETURNING id, restaurant_id, adv_campaign_id, client_id
), per AS (
    SELECT restaurant_id, adv_campaign_id, array_agg(id) AS ids, count(*) AS inserted
    FROM ins GROUP BY restaurant_id, adv_campaign_id
), mark AS (
    INSERT INTO public.campaign_notifier_outbox (token, owner, feedback_ids)
    SELECT u.token, $14, per.ids FROM per JOIN u USING (restaurant_id, adv_campaign_id)
    RETURNING id, token
)
SELECT u.token, mark.id,
       CASE WHEN coalesce(per.inserted, 0) = u.unit_rows THEN NULL
            ELSE ARRAY(SELECT i.client_id FROM ins i
                       WHERE i.restaurant_id = u.restaurant_id
                         AND i.adv_campaign_id = u.adv_campaign_id) END
FROM u LEFT JOIN per USING (restaurant_id, adv_campaign_id)
       LEFT JOIN mark ON mark.token = u.token
ORDER BY u.n"
        )
    };
}

/// Every chunk of a group at once (the campaigns of a statement are distinct). Parameters: per
/// chunk the campaign's fields, `trigger_datetime_created`, the token and the number of clients
/// (`$1` to `$11`); per row the chunk's position (from 1) and the client (`$12`, `$13`); the owner
/// (`$14`). One row per chunk, in order: its token, its outbox mark (NULL when nothing was new)
/// and the clients inserted, NULL when that is every client sent. `$9` is of the column's type
/// (see [`group_insert`]); this text is for the brief's int4.
pub const GROUP_INSERT: &str = group_insert_sql!("int4[]");

/// [`GROUP_INSERT`] for a `trigger_datetime_created` migrated to int8.
pub const GROUP_INSERT_INT8: &str = group_insert_sql!("int8[]");

/// The grouped statement for the column's type, chosen once, when the statements are prepared.
pub fn group_insert(column: TriggerColumn) -> &'static str {
    match column {
        TriggerColumn::Int4 => GROUP_INSERT,
        TriggerColumn::Int8 => GROUP_INSERT_INT8,
    }
}

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
}

pub struct PgSink {
    client: Arc<Client>,
    statements: Arc<Statements>,
    owner: i32,
    lease: Lease,
    trigger_column: TriggerColumn,
}

/// The two inserts and the fence, prepared once per connection.
struct Statements {
    group: Statement,
    single: Statement,
    fence: Statement,
}

/// Runs first in every transaction: no row means the owner was fenced, and the transaction rolls
/// back. The lock makes a peer's fence (an update of the row, see `ledger::recovery`) wait for
/// this transaction, so a transaction either commits before the fence, and its marks are there
/// for the peer, or sees the fence and writes nothing. `KEY SHARE` does not conflict with the
/// owner's own renewals, which leave the key alone.
pub const FENCE: &str = "SELECT 1 FROM public.campaign_notifier_owners \
     WHERE owner = $1 AND fenced_at IS NULL FOR KEY SHARE";

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
                .map_err(|e| SinkError::Retriable(e.to_string()))?;
            let group = client.prepare(group_insert(config.trigger_column)).await;
            let single = client.prepare(INSERT).await;
            let fence = client.prepare(FENCE).await;
            Ok(PgSink {
                client: Arc::new(client),
                statements: Arc::new(Statements {
                    group: group.map_err(|e| classify(&e))?,
                    single: single.map_err(|e| classify(&e))?,
                    fence: fence.map_err(|e| classify(&e))?,
                }),
                owner: config.owner,
                lease: config.lease,
                trigger_column: config.trigger_column,
            })
        })
    }

    fn write(&self, jobs: Vec<Arc<PgJob>>) -> LocalFuture<Result<Vec<Inserted>, SinkError>> {
        let client = self.client.clone();
        let statements = self.statements.clone();
        let (owner, lease, column) = (self.owner, self.lease.clone(), self.trigger_column);
        Box::pin(async move {
            // Before anything is sent: an int4 column past 2038-01-19T03:14:07Z refuses every
            // write, which no retry or refusal of the campaign cures.
            let triggers = Triggers::of(column, &jobs)?;
            lease
                .check()
                .map_err(|e| SinkError::Lapsed(e.to_string()))?;
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
                (Ok(inserted), Ok(())) => Ok(inserted),
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

/// One statement's share of a write: a chunk of a job (its token and clients, indexes into the
/// job's batch).
struct Chunk {
    job: usize,
    token: i64,
    clients: Range<usize>,
}

/// Every chunk of `jobs`, in order.
fn chunks_of(jobs: &[Arc<PgJob>]) -> Vec<Chunk> {
    jobs.iter()
        .enumerate()
        .flat_map(|(job, j)| {
            j.chunks().map(move |(token, clients)| Chunk {
                job,
                token,
                clients,
            })
        })
        .collect()
}

/// The parameters of one [`GROUP_INSERT`]: its chunks' campaigns and its rows.
#[derive(Default)]
struct GroupParams<'a> {
    restaurants: Vec<&'a str>,
    campaigns: Vec<&'a str>,
    contents: Vec<&'a str>,
    owners: Vec<&'a str>,
    contacts: Vec<&'a str>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    created: Vec<i64>,
    triggers: Triggers,
    tokens: Vec<i64>,
    unit_rows: Vec<i32>,
    units: Vec<i32>,
    clients: Vec<String>,
}

impl<'a> GroupParams<'a> {
    fn new(jobs: &'a [Arc<PgJob>], chunks: &[&Chunk], triggers: &Triggers) -> GroupParams<'a> {
        let mut p = GroupParams {
            triggers: triggers.pick(chunks.iter().map(|c| c.job)),
            ..GroupParams::default()
        };
        for (k, chunk) in chunks.iter().enumerate() {
            let batch = &jobs[chunk.job].batch;
            let c = &batch.campaign;
            p.restaurants.push(&c.restaurant_id);
            p.campaigns.push(&c.adv_campaign_id);
            p.contents.push(&c.adv_campaign_content);
            p.owners.push(&c.adv_campaign_owner);
            p.contacts.push(&c.adv_campaign_owner_contact);
            p.starts.push(c.adv_campaign_datetime_start);
            p.ends.push(c.adv_campaign_datetime_end);
            p.created.push(c.datetime_created);
            p.tokens.push(chunk.token);
            p.unit_rows.push(chunk.clients.len() as i32);
            let unit = k as i32 + 1;
            for i in chunk.clients.clone() {
                p.units.push(unit);
                p.clients.push(batch.client_id(i).to_string());
            }
        }
        p
    }

    fn params<'b>(&'b self, owner: &'b i32) -> [&'b (dyn ToSql + Sync); 14] {
        [
            &self.restaurants,
            &self.campaigns,
            &self.contents,
            &self.owners,
            &self.contacts,
            &self.starts,
            &self.ends,
            &self.created,
            self.triggers.array(),
            &self.tokens,
            &self.unit_rows,
            &self.units,
            &self.clients,
            owner,
        ]
    }
}

/// A chunk of at most this many clients is written with others in a [`GROUP_INSERT`]; a larger
/// one in an [`INSERT`] of its own. The group statement saves a statement per campaign (about
/// 15 microseconds of Postgres CPU, and the service's work for it) and costs about one more per
/// row (each row joined to its campaign, the new rows grouped by campaign): worth it for small
/// campaigns only.
pub const GROUPED_ROWS: usize = 32;

/// The statements of a write: small chunks in as few [`GROUP_INSERT`]s as keep each campaign to
/// one chunk per statement, in order (a campaign's second chunk goes to the next statement, which
/// sees what the first inserted); chunks of replayed jobs, large chunks and a group that would
/// hold one chunk, one [`INSERT`] each.
fn plan<'c>(jobs: &[Arc<PgJob>], chunks: &'c [Chunk]) -> (Vec<Vec<&'c Chunk>>, Vec<&'c Chunk>) {
    // Each statement's campaigns (restaurant, campaign) and chunks.
    type Statement<'k, 'c> = (foldhash::HashSet<(&'k str, &'k str)>, Vec<&'c Chunk>);
    let mut groups: Vec<Statement<'_, 'c>> = Vec::new();
    let mut singles = Vec::new();
    for chunk in chunks {
        let job = &jobs[chunk.job];
        if job.replay || chunk.clients.len() > GROUPED_ROWS {
            singles.push(chunk);
            continue;
        }
        let c = &job.batch.campaign;
        let key = (c.restaurant_id.as_str(), c.adv_campaign_id.as_str());
        let free = groups.iter().position(|(keys, _)| !keys.contains(&key));
        let k = free.unwrap_or_else(|| {
            groups.push((foldhash::HashSet::default(), Vec::new()));
            groups.len() - 1
        });
        groups[k].0.insert(key);
        groups[k].1.push(chunk);
    }
    let mut grouped = Vec::with_capacity(groups.len());
    for (_, group) in groups {
        match group.as_slice() {
            [one] => singles.push(one),
            _ => grouped.push(group),
        }
    }
    (grouped, singles)
}

/// What a chunk added: its outbox mark, and the clients inserted.
struct Added {
    mark: Option<i64>,
    clients: Vec<String>,
}

fn added(row: &tokio_postgres::Row, first: usize, sent: Vec<String>) -> Result<Added, SinkError> {
    let mark: Option<i64> = row.try_get(first).map_err(|e| classify(&e))?;
    let clients: Option<Vec<String>> = row.try_get(first + 1).map_err(|e| classify(&e))?;
    Ok(Added {
        mark,
        // NULL: every client sent was new.
        clients: clients.unwrap_or(sent),
    })
}

/// The jobs' `trigger_datetime_created`, one per job, of the column's type.
#[derive(Debug)]
enum Triggers {
    Int4(Vec<i32>),
    Int8(Vec<i64>),
}

impl Default for Triggers {
    fn default() -> Triggers {
        Triggers::Int4(Vec::new())
    }
}

impl Triggers {
    /// Fails as [`SinkError::Fatal`] when one does not fit an int4 column: the time has passed
    /// 2038-01-19T03:14:07Z, and every write from now on would fail the same way.
    fn of(column: TriggerColumn, jobs: &[Arc<PgJob>]) -> Result<Triggers, SinkError> {
        let secs = jobs.iter().map(|j| j.batch.trigger_datetime_created);
        match column {
            TriggerColumn::Int8 => Ok(Triggers::Int8(secs.collect())),
            TriggerColumn::Int4 => secs
                .map(|t| {
                    i32::try_from(t).map_err(|_| SinkError::Fatal(trigger_column::exhausted(t)))
                })
                .collect::<Result<_, _>>()
                .map(Triggers::Int4),
        }
    }

    /// The ones of `jobs`, in that order.
    fn pick(&self, jobs: impl Iterator<Item = usize>) -> Triggers {
        match self {
            Triggers::Int4(t) => Triggers::Int4(jobs.map(|j| t[j]).collect()),
            Triggers::Int8(t) => Triggers::Int8(jobs.map(|j| t[j]).collect()),
        }
    }

    /// Job `job`'s, as a parameter.
    fn one(&self, job: usize) -> &(dyn ToSql + Sync) {
        match self {
            Triggers::Int4(t) => &t[job],
            Triggers::Int8(t) => &t[job],
        }
    }

    /// All of them, as an array parameter.
    fn array(&self) -> &(dyn ToSql + Sync) {
        match self {
            Triggers::Int4(t) => t,
            Triggers::Int8(t) => t,
        }
    }
}

async fn insert_all(
    client: &Client,
    statements: &Statements,
    owner: i32,
    jobs: &[Arc<PgJob>],
    triggers: &Triggers,
) -> Result<Vec<Inserted>, SinkError> {
    let chunks = chunks_of(jobs);
    let (groups, singles) = plan(jobs, &chunks);
    let group_params: Vec<GroupParams<'_>> = groups
        .iter()
        .map(|g| GroupParams::new(jobs, g, triggers))
        .collect();
    let single_clients: Vec<Vec<String>> = singles
        .iter()
        .map(|c| {
            let batch = &jobs[c.job].batch;
            c.clients
                .clone()
                .map(|i| batch.client_id(i).to_string())
                .collect()
        })
        .collect();
    let single_params: Vec<[&(dyn ToSql + Sync); 12]> = singles
        .iter()
        .zip(&single_clients)
        .map(|(chunk, ids)| {
            let [r, c, content, owner_name, contact, start, end, created] =
                campaign_params(&jobs[chunk.job].batch.campaign);
            let (trigger, token) = (triggers.one(chunk.job), &chunk.token);
            [
                r, c, content, owner_name, contact, start, end, created, trigger, ids, token,
                &owner,
            ]
        })
        .collect();
    let group_calls: Vec<[&(dyn ToSql + Sync); 14]> =
        group_params.iter().map(|p| p.params(&owner)).collect();
    // Issued together, the statements are pipelined on the one connection, in this order.
    let calls = (group_calls.iter().map(|p| (&statements.group, &p[..])))
        .chain(single_params.iter().map(|p| (&statements.single, &p[..])))
        .map(|(statement, params)| client.query(statement, params));
    let mut results = futures::future::try_join_all(calls)
        .await
        .map_err(|e| classify(&e))?
        .into_iter();
    drop((group_calls, single_params));

    let mut by_token: foldhash::HashMap<i64, Added> =
        foldhash::HashMap::with_capacity_and_hasher(chunks.len(), Default::default());
    for (group, params) in groups.iter().zip(group_params) {
        let rows = results.next().unwrap_or_default();
        if rows.len() != group.len() {
            return Err(SinkError::Retriable(format!(
                "the insert statement returned {} rows for {} chunks",
                rows.len(),
                group.len()
            )));
        }
        let mut sent = params.clients.into_iter();
        for (chunk, row) in group.iter().zip(&rows) {
            let token: i64 = row.try_get(0).map_err(|e| classify(&e))?;
            if token != chunk.token {
                return Err(SinkError::Retriable(
                    "the insert statement answered its chunks out of order".into(),
                ));
            }
            let mine = sent.by_ref().take(chunk.clients.len()).collect();
            by_token.insert(chunk.token, added(row, 1, mine)?);
        }
    }
    for (chunk, ids) in singles.iter().zip(single_clients) {
        let rows = results.next().unwrap_or_default();
        let [row] = rows.as_slice() else {
            return Err(SinkError::Retriable(format!(
                "the insert statement returned {} rows instead of one",
                rows.len()
            )));
        };
        by_token.insert(chunk.token, added(row, 0, ids)?);
    }
    let mut inserted: Vec<Inserted> = vec![Inserted::default(); jobs.len()];
    for chunk in &chunks {
        // Every chunk was in one statement; without its answer its new rows would never reach
        // Kafka, so the write fails (and is replayed) rather than report nothing new.
        let added = by_token.remove(&chunk.token).ok_or_else(|| {
            SinkError::Retriable(format!("no answer for the chunk of token {}", chunk.token))
        })?;
        let out = &mut inserted[chunk.job];
        if let Some(id) = added.mark {
            if out.outbox_ids.last() != Some(&id) {
                out.outbox_ids.push(id);
            }
        }
        out.clients.extend(added.clients);
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(clients: usize) -> Arc<NotificationBatch> {
        crate::notification::test_batch(None, clients)
    }

    fn job_of(campaign: &str, clients: usize, tokens: &mut Tokens) -> Arc<PgJob> {
        Arc::new(PgJob::new(
            crate::notification::test_batch_of(campaign, clients),
            tokens,
        ))
    }

    /// Each statement of `plan`, as the campaigns of its chunks.
    fn layout(jobs: &[Arc<PgJob>]) -> (Vec<Vec<String>>, Vec<String>) {
        let chunks = chunks_of(jobs);
        let name = |c: &&Chunk| {
            let job = &jobs[c.job];
            format!("{}:{}", job.batch.campaign.adv_campaign_id, c.clients.len())
        };
        let (groups, singles) = plan(jobs, &chunks);
        (
            groups
                .iter()
                .map(|g| g.iter().map(name).collect())
                .collect(),
            singles.iter().map(name).collect(),
        )
    }

    #[test]
    fn small_campaigns_share_a_statement_once_each_and_the_rest_have_their_own() {
        let mut tokens = Tokens::new(3);
        let mut t = |c: &str, n: usize| job_of(c, n, &mut tokens);
        let jobs = vec![
            t("a", 10),
            t("b", GROUPED_ROWS),
            t("big", GROUPED_ROWS + 1),
            t("a", 10),
            t("c", 1),
            t("a", 10),
        ];
        let (groups, singles) = layout(&jobs);
        assert_eq!(
            groups,
            vec![vec!["a:10", "b:32", "c:1"]],
            "one statement for the small chunks, each campaign once"
        );
        assert_eq!(
            singles,
            vec!["big:33", "a:10", "a:10"],
            "a large chunk stands alone, and so do the copies of a, each of which would have been \
             alone in a statement after the first"
        );

        let mut replayed = PgJob::clone(&job_of("d", 5, &mut tokens));
        replayed.replay = true;
        let (groups, singles) = layout(&[job_of("e", 5, &mut tokens), Arc::new(replayed)]);
        assert!(
            groups.is_empty(),
            "one small chunk left is alone: {groups:?}"
        );
        assert_eq!(singles, vec!["d:5", "e:5"], "a replay is written alone");
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
