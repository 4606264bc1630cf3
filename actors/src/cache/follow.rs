//! The cache's follower of `campaign_notifier_pair_changes`: where this instance stands, and
//! one read.
//!
//! A load reads, before its `COPY`, where following starts ([`start_of`]): the first change
//! committed in the last [`REPLAY`] (or, with none, the last change), and the highest `seq` then
//! (a `reload` row at or below it is what this load already is). Changes from there on are read
//! every `cache.changes_poll_interval_ms`, the gaps below the position again until they show up
//! ([`Cursor`]). Some of them are already in the snapshot, and applying them again in order
//! changes nothing; what commits after the `COPY`'s snapshot is read with them. So nothing is
//! missed but a change of a transaction of the app's that stayed open over [`REPLAY`] across a
//! load, in the trigger mode, which the next reload finds. A removal of a pair the table still
//! holds through another row is left out ([`without_removals_still_held`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::changes::cursor::Cursor;
use crate::changes::table::{self, Op, StoredChange};

/// How far before its `COPY` a load starts following, in commit time.
pub const REPLAY: Duration = Duration::from_secs(60);

/// Changes read at once, at most.
pub const PAGE: i64 = 10_000;

/// Where a load starts following: its cursor, and the highest `seq` committed before its
/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub position: i64,
    pub loaded_after: i64,
}

/// Read on the load's connection before its `COPY`.
pub async fn start_of(client: &Client) -> Result<Start, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT min(seq) - 1 FROM public.campaign_notifier_pair_changes
                              WHERE committed_at > now() - make_interval(secs => $1)),
                             max(seq), 0)::int8,
                    coalesce(max(seq), 0)::int8
             FROM public.campaign_notifier_pair_changes",
            &[&REPLAY.as_secs_f64()],
        )
        .await?;
    Ok(Start {
        position: row.try_get(0)?,
        loaded_after: row.try_get(1)?,
    })
}

/// Where this instance stands with the changes of the snapshot in use.
#[derive(Debug, Clone)]
pub struct Following {
    pub cursor: Cursor,
    /// A `reload` row above this asks for a new load.
    pub loaded_after: i64,
    /// When a read last succeeded: after half the time changes are kept without one, changes
    /// may have been trimmed unread, and the cache reloads instead.
    pub read_at: Instant,
}

impl Following {
    pub fn new(start: &Start, now: Instant) -> Following {
        Following {
            cursor: Cursor::at(start.position),
            loaded_after: start.loaded_after,
            read_at: now,
        }
    }
}

/// What one read found.
#[derive(Debug)]
pub struct Read {
    /// Gaps that showed up, then the new changes, in `seq` order each.
    pub changes: Vec<StoredChange>,
    pub cursor: Cursor,
    /// A whole page: more may wait.
    pub full: bool,
    /// A `reload` row this load does not cover, with its reason.
    pub reload: Option<String>,
    /// The load it was read for (`Following::loaded_after`), and the reader's count of loads
    /// then: a read of an older load's following is not applied.
    pub loaded_after: i64,
    pub loads: u64,
}

/// Reads the changes after `following`'s position and the gaps that showed up; `doubled` says
/// which pairs the table may hold through more than one row.
pub async fn read(
    client: &Client,
    following: &Following,
    doubled: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Read, tokio_postgres::Error> {
    let cursor = &following.cursor;
    let found = table::among(client, &cursor.gaps()).await?;
    let new = table::after(client, cursor.position, PAGE).await?;
    let seqs = |c: &[StoredChange]| c.iter().map(|c| c.seq).collect::<Vec<_>>();
    let next = cursor.advanced(&seqs(&new), &seqs(&found), Instant::now());
    let full = new.len() as i64 >= PAGE;
    let mut changes = found;
    changes.extend(new);
    let changes = without_removals_still_held(client, changes, doubled).await?;
    let reload = changes
        .iter()
        .find(|c| c.op == Op::Reload && c.seq > following.loaded_after)
        .map(|c| c.client_id.clone());
    Ok(Read {
        changes,
        cursor: next,
        full,
        reload,
        loaded_after: following.loaded_after,
        loads: 0,
    })
}

/// `changes` without the removals of pairs the table holds now: the brief's table has no unique
/// key, so a client may follow a restaurant through two rows, and one of them deleted leaves the
/// pair in place. Only the pairs that may be doubled are asked (`doubled`, or added earlier in
/// `changes`: added again while present), in one indexed query; usually none is. Asked now, not
/// at the removal's commit: a pair added again since has its addition later in the changes, a
/// row deleted since its removal later too, so what is applied in the end is what the table
/// holds.
async fn without_removals_still_held(
    client: &Client,
    changes: Vec<StoredChange>,
    doubled: &(dyn Fn(&str, &str) -> bool + Sync),
) -> Result<Vec<StoredChange>, tokio_postgres::Error> {
    let mut added: HashSet<(&str, &str)> = HashSet::new();
    let (mut restaurants, mut clients) = (Vec::new(), Vec::new());
    for c in &changes {
        let pair = (c.restaurant_id.as_str(), c.client_id.as_str());
        match c.op {
            Op::Add => drop(added.insert(pair)),
            Op::Remove if added.contains(&pair) || doubled(pair.0, pair.1) => {
                restaurants.push(pair.0);
                clients.push(pair.1);
            }
            _ => {}
        }
    }
    if restaurants.is_empty() {
        return Ok(changes);
    }
    let rows = client
        .query(
            "SELECT DISTINCT s.restaurant_id::text, s.client_id::text
             FROM unnest($1::text[], $2::text[]) AS r(restaurant_id, client_id)
             JOIN public.subscribers_restaurants s
               ON s.restaurant_id = r.restaurant_id AND s.client_id = r.client_id",
            &[&restaurants, &clients],
        )
        .await?;
    let held: HashSet<(String, String)> = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    if held.is_empty() {
        return Ok(changes);
    }
    Ok(changes
        .into_iter()
        .filter(|c| {
            c.op != Op::Remove || !held.contains(&(c.restaurant_id.clone(), c.client_id.clone()))
        })
        .collect())
}
