//! `campaign_notifier_pair_changes`: the changes of `subscribers_restaurants`, numbered by `seq`
//! in the order every instance applies them.
//!
//! Who writes them depends on the mode ([`super::Mode`]): in the logical mode the change feed's
//! leader copies them out of the replication slot, one batch of whole transactions after
//! another, in commit order; in the trigger mode the trigger of [`super::trigger`] writes them in
//! the app's own transaction, so a row shows up when that transaction commits and a lower `seq`
//! may show up after a higher one (the reader's [`super::cursor::Cursor`] waits for such
//! gaps, as the id feed does). A `reload` row says that the changes alone cannot be trusted from
//! there on (the table was truncated, or the slot was made anew): every instance reloads.
//!
//! Applying the same changes twice, or a suffix of them on top of a snapshot that already holds
//! some, ends in the same state: an addition of a present pair and a removal of an absent one do
//! nothing, and the last change of a pair decides. That is what lets a crash replay a batch and a
//! new snapshot start from a mark below what it holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;

/// What a change does to the pair it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
    /// Not a pair's change: reload everything.
    Reload,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Remove => "remove",
            Op::Reload => "reload",
        }
    }

    fn parse(s: &str) -> Op {
        match s {
            "add" => Op::Add,
            "remove" => Op::Remove,
            // The table's check allows nothing else.
            _ => Op::Reload,
        }
    }
}

/// One change as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    pub seq: i64,
    pub op: Op,
    pub restaurant_id: String,
    pub client_id: String,
    /// When the app's transaction committed (the trigger mode: when the row changed), unix
    /// microseconds.
    pub committed_at_micros: i64,
}

impl StoredChange {
    /// Seconds from the change's commit to `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        let at = UNIX_EPOCH + Duration::from_micros(self.committed_at_micros.max(0) as u64);
        now.duration_since(at).unwrap_or_default()
    }
}

/// A change to store: op, restaurant, client, commit time (unix microseconds).
pub type NewChange = (Op, String, String, i64);

const COLUMNS: &str = "seq, op, restaurant_id, client_id, \
     (extract(epoch FROM committed_at) * 1000000)::int8";

fn parse_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<StoredChange>, tokio_postgres::Error> {
    rows.iter()
        .map(|r| {
            Ok(StoredChange {
                seq: r.try_get(0)?,
                op: Op::parse(r.try_get(1)?),
                restaurant_id: r.try_get(2)?,
                client_id: r.try_get(3)?,
                committed_at_micros: r.try_get(4)?,
            })
        })
        .collect()
}

/// Up to `limit` changes after `position`, in `seq` order.
pub async fn after(
    client: &Client,
    position: i64,
    limit: i64,
) -> Result<Vec<StoredChange>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM public.campaign_notifier_pair_changes \
         WHERE seq > $1 ORDER BY seq LIMIT $2"
    );
    parse_rows(&client.query(&sql, &[&position, &limit]).await?)
}

/// The changes among `seqs` that exist now (gaps that showed up), in `seq` order.
pub async fn among(
    client: &Client,
    seqs: &[i64],
) -> Result<Vec<StoredChange>, tokio_postgres::Error> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM public.campaign_notifier_pair_changes \
         WHERE seq = ANY($1::int8[]) ORDER BY seq"
    );
    parse_rows(&client.query(&sql, &[&seqs]).await?)
}

/// Stores `changes` in their order, in one statement (so in one transaction).
pub async fn store(client: &Client, changes: &[NewChange]) -> Result<u64, tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(0);
    }
    let ops: Vec<&str> = changes.iter().map(|c| c.0.as_str()).collect();
    let restaurants: Vec<&str> = changes.iter().map(|c| c.1.as_str()).collect();
    let clients: Vec<&str> = changes.iter().map(|c| c.2.as_str()).collect();
    let at: Vec<i64> = changes.iter().map(|c| c.3).collect();
    client
        .execute(
            "INSERT INTO public.campaign_notifier_pair_changes
                 (op, restaurant_id, client_id, committed_at)
             SELECT op, r, c, to_timestamp(t / 1000000.0)
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[])
                  WITH ORDINALITY AS u(op, r, c, t, n)
             ORDER BY n",
            &[&ops, &restaurants, &clients, &at],
        )
        .await
}

/// Asks every instance to reload its snapshot (written after a slot was made anew, or the
/// table truncated).
pub async fn ask_reload(client: &Client, why: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO public.campaign_notifier_pair_changes
                 (op, restaurant_id, client_id, committed_at)
             VALUES ('reload', '', $1, now())",
            &[&why],
        )
        .await?;
    Ok(())
}

/// Deletes the changes committed more than `keep` ago and at or below `mark` (what the leader
/// has followed); returns how many.
pub async fn trim(
    client: &Client,
    keep: Duration,
    mark: i64,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM public.campaign_notifier_pair_changes
             WHERE seq <= $1 AND committed_at < now() - make_interval(secs => $2)",
            &[&mark, &keep.as_secs_f64()],
        )
        .await
}
