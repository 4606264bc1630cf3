//! The per-client cap in the Postgres writer's transaction, after the fence and before the
//! inserts (see "Per-client cap" in docs/design.md): every client of the write gets its row of
//! `campaign_notifier_clients` and it is locked, in sorted order; what is decided already (a row
//! of `subscribers_feedback` or of `campaign_notifier_capped`) is read; [`cap::decide`] decides
//! the rest in processing order; and each chunk is left with the clients to insert. What the
//! decision changed (the clients' sent times, the capped records) is written beside the inserts.
//! Nothing here runs while the cap is off.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::cap::{self, Key, PerClientCap, Verdict};
use super::insert_all::Chunk;
use super::statements::{CAP_CLIENTS, CAP_DECIDED, CAP_LOCK, CAP_RECORD, CAP_SENT};
use super::{classify, PgJob};
use crate::sinks::SinkError;

/// The cap's statements, prepared once per connection while the cap is on.
pub(super) struct CapStatements {
    clients: Statement,
    lock: Statement,
    decided: Statement,
    sent: Statement,
    record: Statement,
}

impl CapStatements {
    pub(super) async fn prepare(client: &Client) -> Result<CapStatements, SinkError> {
        let prepare = |text| async move { client.prepare(text).await.map_err(|e| classify(&e)) };
        Ok(CapStatements {
            clients: prepare(CAP_CLIENTS).await?,
            lock: prepare(CAP_LOCK).await?,
            decided: prepare(CAP_DECIDED).await?,
            sent: prepare(CAP_SENT).await?,
            record: prepare(CAP_RECORD).await?,
        })
    }
}

/// What a write's decision changed, to be written with its inserts.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// One entry per sent time of each client sent something.
    sent_clients: Vec<String>,
    sent_times: Vec<i64>,
    /// The notifications capped now.
    capped: [Vec<String>; 3],
}

/// Steps 1 to 4: locks the write's clients, decides each notification and leaves in each chunk
/// only the clients to insert (an empty chunk is still written: a replayed one's token finds
/// what its first attempt inserted).
pub(super) async fn decide(
    client: &Client,
    statements: &CapStatements,
    cap: PerClientCap,
    jobs: &[Arc<PgJob>],
    chunks: &mut [Chunk],
) -> Result<Changes, SinkError> {
    let clients: Vec<String> = jobs
        .iter()
        .flat_map(|j| j.range.clone().map(|i| j.batch.client_id(i).to_string()))
        .collect();
    let keys = keys_of(jobs, &clients);
    let mut distinct: Vec<&str> = clients.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let (Locked { sent, now, .. }, decided) =
        lock(client, statements, jobs, &clients, &distinct).await?;
    let decided: HashSet<Key<'_>> = decided.into_iter().map(|n| keys[n]).collect();
    let decisions = cap::decide(cap, now, keys.iter().copied(), &decided, sent);
    keep_the_sent(chunks, &decisions.verdicts);
    let mut changes = Changes::default();
    for (client, times) in decisions.changed {
        for t in times {
            changes.sent_clients.push(client.to_string());
            changes.sent_times.push(t);
        }
    }
    for (key, verdict) in keys.iter().zip(&decisions.verdicts) {
        if *verdict == Verdict::Capped {
            changes.capped[0].push(key.0.to_string());
            changes.capped[1].push(key.1.to_string());
            changes.capped[2].push(key.2.to_string());
        }
    }
    Ok(changes)
}

/// Every notification of `jobs` in processing order (the jobs in order, each one's clients in
/// order), `clients` being their clients in that order.
fn keys_of<'a>(jobs: &'a [Arc<PgJob>], clients: &'a [String]) -> Vec<Key<'a>> {
    let mut clients = clients.iter();
    let mut keys = Vec::with_capacity(clients.len());
    for job in jobs {
        let c = &job.batch.campaign;
        for client in clients.by_ref().take(job.range.len()) {
            keys.push((
                c.restaurant_id.as_str(),
                c.adv_campaign_id.as_str(),
                client.as_str(),
            ));
        }
    }
    keys
}

/// Rounds of [`lock_and_read`] a write makes at most.
const LOCK_ROUNDS: usize = 3;

/// Steps 1 to 3, made again while some client's row was deleted (by housekeeping, whose
/// delete skips the rows a write holds) between its insert and its lock: the rows held are
/// held still, and what is decided is read again under every lock.
async fn lock<'a>(
    client: &Client,
    statements: &CapStatements,
    jobs: &[Arc<PgJob>],
    clients: &[String],
    distinct: &[&'a str],
) -> Result<(Locked<'a>, Vec<usize>), SinkError> {
    let mut round = 1;
    loop {
        let (rows, decided) = lock_and_read(client, statements, jobs, clients, distinct).await?;
        let locked = sent_of(rows, distinct)?;
        match locked.missing {
            0 => return Ok((locked, decided)),
            _ if round < LOCK_ROUNDS => round += 1,
            missing => {
                return Err(SinkError::Retriable(format!(
                    "{missing} clients' rows of campaign_notifier_clients were deleted before \
                     they could be locked, {LOCK_ROUNDS} times"
                )))
            }
        }
    }
}

/// Steps 1 to 3, pipelined: the clients' rows made and locked, and the positions (from 0) of the
/// notifications decided already, read once the locks are held.
async fn lock_and_read(
    client: &Client,
    statements: &CapStatements,
    jobs: &[Arc<PgJob>],
    clients: &[String],
    distinct: &[&str],
) -> Result<(Vec<tokio_postgres::Row>, Vec<usize>), SinkError> {
    let restaurants: Vec<&str> = jobs
        .iter()
        .map(|j| j.batch.campaign.restaurant_id.as_str())
        .collect();
    let campaigns: Vec<&str> = jobs
        .iter()
        .map(|j| j.batch.campaign.adv_campaign_id.as_str())
        .collect();
    let job_of: Vec<i64> = (jobs.iter().enumerate())
        .flat_map(|(k, j)| std::iter::repeat_n(k as i64 + 1, j.range.len()))
        .collect();
    let all: [&(dyn ToSql + Sync); 1] = [&distinct];
    let notifications: [&(dyn ToSql + Sync); 4] = [&restaurants, &campaigns, &job_of, &clients];
    let made = client.execute(&statements.clients, &all);
    let locked = client.query(&statements.lock, &all);
    let decided = client.query(&statements.decided, &notifications);
    let (_, locked, decided) =
        futures::try_join!(made, locked, decided).map_err(|e| classify(&e))?;
    let positions = decided
        .iter()
        .map(|row| row.try_get::<_, i64>(0).map(|n| n as usize - 1))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|e| classify(&e))?;
    match positions.iter().all(|n| *n < clients.len()) {
        true => Ok((locked, positions)),
        false => Err(SinkError::Retriable(
            "the cap's read of what is decided answered a position out of the write".into(),
        )),
    }
}

/// The clients locked: their sent times, Postgres' clock, and how many of the write's clients
/// had no row to lock.
struct Locked<'a> {
    sent: HashMap<&'a str, Vec<i64>>,
    now: i64,
    missing: usize,
}

fn sent_of<'a>(
    locked: Vec<tokio_postgres::Row>,
    distinct: &[&'a str],
) -> Result<Locked<'a>, SinkError> {
    let mut now = None;
    let mut by_client: HashMap<String, Vec<i64>> = HashMap::default();
    for row in locked {
        let (client, sent, at) = (row.try_get(0), row.try_get(1), row.try_get(2));
        let e = |e: tokio_postgres::Error| classify(&e);
        by_client.insert(client.map_err(e)?, sent.map_err(e)?);
        now = Some(at.map_err(e)?);
    }
    let sent: HashMap<&'a str, Vec<i64>> = distinct
        .iter()
        .filter_map(|c| Some((*c, by_client.remove(*c)?)))
        .collect();
    Ok(Locked {
        missing: distinct.len() - sent.len(),
        sent,
        now: now.unwrap_or_default(),
    })
}

/// Leaves in each chunk the clients sent (the chunks cover the notifications in processing
/// order, as the verdicts do).
fn keep_the_sent(chunks: &mut [Chunk], verdicts: &[Verdict]) {
    let mut verdicts = verdicts.iter();
    for chunk in chunks {
        let kept = (chunk.clients.clone())
            .zip(verdicts.by_ref())
            .filter(|(_, v)| **v == Verdict::Send)
            .map(|(i, _)| i)
            .collect();
        chunk.kept = Some(kept);
    }
}

/// Step 5: the sent times and the capped records written (pipelined with the inserts); returns
/// how many notifications were capped now.
pub(super) async fn record(
    client: &Client,
    statements: &CapStatements,
    changes: &Changes,
) -> Result<u64, SinkError> {
    let sent = async {
        match changes.sent_clients.is_empty() {
            true => Ok(0),
            false => {
                let params = [&changes.sent_clients as _, &changes.sent_times as _];
                client.execute(&statements.sent, &params).await
            }
        }
    };
    let capped = async {
        match changes.capped[0].is_empty() {
            true => Ok(0),
            false => {
                let [r, c, k] = &changes.capped;
                client.execute(&statements.record, &[r, c, k]).await
            }
        }
    };
    let (_, capped) = futures::try_join!(sent, capped).map_err(|e| classify(&e))?;
    Ok(capped)
}
