//! A write's statements: its jobs cut into chunks, the chunks planned into statements (small ones
//! grouped), the statements issued at once, and their answers read back into what each job added.
//! With the per-client cap on, [`capping`](super::capping) first leaves in each chunk only the
//! clients to insert.

use std::ops::Range;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::capping;
use super::{campaign_params, classify, Inserted, PgJob, Statements};
use crate::campaign::Campaign;
use crate::postgres::trigger_column::{self, TriggerColumn};
use crate::sinks::SinkError;

/// What a write did: what each job added, and how many notifications it capped.
pub(super) struct Written {
    pub inserted: Vec<Inserted>,
    pub capped: u64,
}

/// Inserts every chunk of `jobs`, in one round of statements, and returns what each job added.
/// With `cap`, the clients over it are left out and recorded as capped first.
pub(super) async fn insert_all(
    client: &Client,
    statements: &Statements,
    owner: i32,
    jobs: &[Arc<PgJob>],
    triggers: &Triggers,
) -> Result<Written, SinkError> {
    let mut chunks = chunks_of(jobs);
    let capping = match &statements.cap {
        Some((cap, cap_statements)) => {
            let changes = capping::decide(client, cap_statements, *cap, jobs, &mut chunks).await?;
            Some((cap_statements, changes))
        }
        None => None,
    };
    let (groups, singles) = plan(jobs, &chunks);
    let group_params: Vec<GroupParams<'_>> = groups
        .iter()
        .map(|g| GroupParams::new(jobs, g, triggers))
        .collect();
    let single_params: Vec<SingleParams<'_>> = singles
        .iter()
        .map(|c| SingleParams::new(jobs, c, triggers))
        .collect();
    let inserts = query_all(client, statements, owner, &group_params, &single_params);
    let (results, capped) = match capping {
        None => (inserts.await?, 0),
        Some((cap_statements, changes)) => {
            let recorded = capping::record(client, cap_statements, &changes);
            let (capped, results) = futures::try_join!(recorded, inserts)?;
            (results, capped)
        }
    };
    let mut answers = Answers::new(results, chunks.len());
    answers.of_groups(&groups, group_params)?;
    answers.of_singles(&singles, single_params)?;
    let inserted = answers.per_job(jobs.len(), &chunks)?;
    Ok(Written { inserted, capped })
}

/// Runs the statements, the groups' then the singles', and returns their rows in that order.
async fn query_all(
    client: &Client,
    statements: &Statements,
    owner: i32,
    groups: &[GroupParams<'_>],
    singles: &[SingleParams<'_>],
) -> Result<Vec<Vec<Row>>, SinkError> {
    let group_calls: Vec<[&(dyn ToSql + Sync); 14]> =
        groups.iter().map(|p| p.params(&owner)).collect();
    let single_calls: Vec<[&(dyn ToSql + Sync); 12]> =
        singles.iter().map(|p| p.params(&owner)).collect();
    // Issued together, the statements are pipelined on the one connection, in this order.
    let calls = (group_calls.iter().map(|p| (&statements.group, &p[..])))
        .chain(single_calls.iter().map(|p| (&statements.single, &p[..])))
        .map(|(statement, params)| client.query(statement, params));
    futures::future::try_join_all(calls)
        .await
        .map_err(|e| classify(&e))
}

/// One statement's share of a write: a chunk of a job (its token and clients, indexes into the
/// job's batch).
pub(super) struct Chunk {
    pub job: usize,
    pub token: i64,
    pub clients: Range<usize>,
    /// With the per-client cap on: those of `clients` to insert, the others capped or decided
    /// before. The statement is issued even when none is left.
    pub kept: Option<Vec<usize>>,
}

impl Chunk {
    /// The clients its statement inserts.
    fn sent(&self) -> Sent<'_> {
        match &self.kept {
            None => Sent::All(self.clients.clone()),
            Some(kept) => Sent::Kept(kept.iter()),
        }
    }

    fn len(&self) -> usize {
        self.kept.as_ref().map_or(self.clients.len(), Vec::len)
    }
}

/// The clients a chunk inserts: all of its range, or those the cap kept.
enum Sent<'a> {
    All(Range<usize>),
    Kept(std::slice::Iter<'a, usize>),
}

impl Iterator for Sent<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Sent::All(range) => range.next(),
            Sent::Kept(kept) => kept.next().copied(),
        }
    }
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
                kept: None,
            })
        })
        .collect()
}

/// The parameters of one [`GROUP_INSERT`](super::GROUP_INSERT): its chunks' campaigns and its rows.
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
            p.unit_rows.push(chunk.len() as i32);
            let unit = k as i32 + 1;
            for i in chunk.sent() {
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

/// A chunk of at most this many clients is written with others in a [`GROUP_INSERT`](super::GROUP_INSERT); a larger
/// one in an [`INSERT`](super::INSERT) of its own. The group statement saves a statement per campaign (about
/// 15 microseconds of Postgres CPU, and the service's work for it) and costs about one more per
/// row (each row joined to its campaign, the new rows grouped by campaign): worth it for small
/// campaigns only.
pub const GROUPED_ROWS: usize = 32;

/// The statements of a write: small chunks in as few [`GROUP_INSERT`](super::GROUP_INSERT)s as keep each campaign to
/// one chunk per statement, in order (a campaign's second chunk goes to the next statement, which
/// sees what the first inserted); chunks of replayed jobs, large chunks and a group that would
/// hold one chunk, one [`INSERT`](super::INSERT) each.
fn plan<'c>(jobs: &[Arc<PgJob>], chunks: &'c [Chunk]) -> (Vec<Vec<&'c Chunk>>, Vec<&'c Chunk>) {
    // Each statement's campaigns (restaurant, campaign) and chunks.
    type Statement<'k, 'c> = (foldhash::HashSet<(&'k str, &'k str)>, Vec<&'c Chunk>);
    let mut groups: Vec<Statement<'_, 'c>> = Vec::new();
    let mut singles = Vec::new();
    for chunk in chunks {
        let job = &jobs[chunk.job];
        if job.replay || chunk.len() > GROUPED_ROWS {
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
pub(super) enum Triggers {
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
    pub(super) fn of(column: TriggerColumn, jobs: &[Arc<PgJob>]) -> Result<Triggers, SinkError> {
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

/// The parameters of one [`INSERT`](super::INSERT): a chunk's campaign, its trigger time, its
/// clients and its token.
struct SingleParams<'a> {
    campaign: &'a Campaign,
    trigger: &'a (dyn ToSql + Sync),
    clients: Vec<String>,
    token: i64,
}

impl<'a> SingleParams<'a> {
    fn new(jobs: &'a [Arc<PgJob>], chunk: &Chunk, triggers: &'a Triggers) -> SingleParams<'a> {
        let batch = &jobs[chunk.job].batch;
        SingleParams {
            campaign: &batch.campaign,
            trigger: triggers.one(chunk.job),
            clients: chunk
                .sent()
                .map(|i| batch.client_id(i).to_string())
                .collect(),
            token: chunk.token,
        }
    }

    fn params<'b>(&'b self, owner: &'b i32) -> [&'b (dyn ToSql + Sync); 12] {
        let [r, c, content, owner_name, contact, start, end, created] =
            campaign_params(self.campaign);
        [
            r,
            c,
            content,
            owner_name,
            contact,
            start,
            end,
            created,
            self.trigger,
            &self.clients,
            &self.token,
            owner,
        ]
    }
}

/// The statements' answers, taken in the order they were issued, and what each chunk added.
struct Answers {
    results: std::vec::IntoIter<Vec<Row>>,
    by_token: foldhash::HashMap<i64, Added>,
}

impl Answers {
    fn new(results: Vec<Vec<Row>>, chunks: usize) -> Answers {
        Answers {
            results: results.into_iter(),
            by_token: foldhash::HashMap::with_capacity_and_hasher(chunks, Default::default()),
        }
    }

    /// A group's answer: one row per chunk, in order, each with its token.
    fn of_groups(
        &mut self,
        groups: &[Vec<&Chunk>],
        params: Vec<GroupParams<'_>>,
    ) -> Result<(), SinkError> {
        for (group, params) in groups.iter().zip(params) {
            let rows = self.results.next().unwrap_or_default();
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
                let mine = sent.by_ref().take(chunk.len()).collect();
                self.by_token.insert(chunk.token, added(row, 1, mine)?);
            }
        }
        Ok(())
    }

    /// A single chunk's answer: one row.
    fn of_singles(
        &mut self,
        singles: &[&Chunk],
        params: Vec<SingleParams<'_>>,
    ) -> Result<(), SinkError> {
        for (chunk, params) in singles.iter().zip(params) {
            let rows = self.results.next().unwrap_or_default();
            let [row] = rows.as_slice() else {
                return Err(SinkError::Retriable(format!(
                    "the insert statement returned {} rows instead of one",
                    rows.len()
                )));
            };
            self.by_token
                .insert(chunk.token, added(row, 0, params.clients)?);
        }
        Ok(())
    }

    /// What each of `jobs` jobs added, from the answers of its chunks.
    fn per_job(mut self, jobs: usize, chunks: &[Chunk]) -> Result<Vec<Inserted>, SinkError> {
        let mut inserted: Vec<Inserted> = vec![Inserted::default(); jobs];
        for chunk in chunks {
            // Every chunk was in one statement; without its answer its new rows would never reach
            // Kafka, so the write fails (and is replayed) rather than report nothing new.
            let added = self.by_token.remove(&chunk.token).ok_or_else(|| {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::pg_writer::Tokens;

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
}
