//! The logical replication slot that keeps the table's changes for us, handled through SQL:
//! created with the `pgoutput` plugin, peeked (read without being consumed), advanced once what
//! was read is stored, dropped, and measured (how much WAL it holds back).
//!
//! How the positions work, as checked against Postgres 15 (tests/it/changes/decoding.rs):
//!
//! - A logical slot belongs to the database it was created in, and is read from a session of that
//!   database: the service's own (where the table is).
//! - A slot sees the changes of transactions that commit after it was created. The first peek
//!   needs no position: `upto_lsn` NULL reads from the slot's confirmed position, which creation
//!   set, to the end of the WAL.
//! - Each row's `lsn` is where its message comes from: a Begin row carries the transaction's
//!   first LSN, a change row the change's own record, and a Commit row the *end* of the commit
//!   record (the same value as the end LSN inside the Commit message; the commit LSN inside it is
//!   the record's start).
//! - [`advance`] to the lsn of the last Commit row stored is the one position that neither
//!   repeats that transaction nor skips the next: decoding skips a transaction whose commit
//!   record starts before the confirmed position. Advancing to the commit LSN inside the message
//!   (the record's start) repeats the transaction at the next peek.
//! - A peek returns whole transactions: it stops at the first Commit after `max_changes` rows,
//!   so it may return more rows than asked.
//! - Transactions that touch only other tables give no rows at all (pgoutput skips empty
//!   transactions), so a peek of a quiet table returns nothing and advancing to the last Commit
//!   leaves the slot where it was: the server keeps all the WAL written since, and [`state`]'s
//!   `lag_bytes` and `retained_bytes` grow with everything the server writes until a change of
//!   our table comes. [`peek_with_position`] gives a position past those writes too.
//!
//! Must not touch: the decoding of the messages ([`super::pgoutput`]) or where they are stored.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

/// A row of the slot's changes: where it is in the WAL, and the pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub lsn: PgLsn,
    pub data: Vec<u8>,
}

/// Creates the logical slot `slot` with plugin pgoutput unless it exists; true when created.
///
/// It waits for the transactions running at that moment to end (the slot needs a consistent
/// starting point), so a long transaction elsewhere holds it up.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    let created = client
        .query(
            "SELECT pg_create_logical_replication_slot($1::name, 'pgoutput') \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::name)",
            &[&slot],
        )
        .await;
    match created {
        Ok(rows) => Ok(!rows.is_empty()),
        // Another instance created it between the look and the call.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Up to about `max_changes` messages from the slot's confirmed position, without consuming them
/// (whole transactions).
pub async fn peek(
    client: &Client,
    slot: &str,
    publication: &str,
    max_changes: i32,
) -> Result<Vec<Message>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT lsn, data FROM pg_logical_slot_peek_binary_changes($1::name, NULL, \
             $3::int4, 'proto_version', '1', 'publication_names', $2::text)",
            &[&slot, &publication, &max_changes],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Message {
                lsn: row.try_get(0)?,
                data: row.try_get(1)?,
            })
        })
        .collect()
}

/// What [`peek_with_position`] read, and how far the slot may be advanced once it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub messages: Vec<Message>,
    /// Where to [`advance`] once every message is stored: the lsn of the last Commit row, or, when
    /// the peek read to the end of the WAL, the WAL position read before it, if that is further
    /// (past the writes of other tables, which give no rows). `None`: nothing to advance past.
    pub advance_to: Option<PgLsn>,
}

/// [`peek`], and the position the slot may be advanced to once the messages are stored, so that
/// a table with no changes of its own does not keep the server's WAL for ever.
///
/// The WAL flush position is read first; a peek that returns fewer than `max_changes` rows was
/// not cut short, so it decoded every transaction whose commit record starts before that
/// position, and advancing there skips none.
pub async fn peek_with_position(
    client: &Client,
    slot: &str,
    publication: &str,
    max_changes: i32,
) -> Result<Peeked, tokio_postgres::Error> {
    let flushed: PgLsn = client
        .query_one("SELECT pg_current_wal_flush_lsn()", &[])
        .await?
        .try_get(0)?;
    let messages = peek(client, slot, publication, max_changes).await?;
    let last_commit = messages
        .iter()
        .rev()
        .find(|m| m.data.first() == Some(&b'C'))
        .map(|m| m.lsn);
    // No limit (0) or fewer rows than the limit: the peek read to the end of the WAL.
    let read_to_the_end = match usize::try_from(max_changes) {
        Ok(0) | Err(_) => true,
        Ok(max) => messages.len() < max,
    };
    let advance_to = match (last_commit, read_to_the_end) {
        (Some(commit), true) => Some(commit.max(flushed)),
        (None, true) => Some(flushed),
        (commit, false) => commit,
    };
    Ok(Peeked {
        messages,
        advance_to,
    })
}

/// Everything up to and including the message at `lsn` has been stored: the slot may free it.
///
/// Pass the lsn of the last Commit row stored (see the module doc). Advancing to where the slot
/// already is, or behind it, does nothing: the server refuses to move a slot backwards, and a
/// leader that repeats an advance after a lost reply must not fail for it.
pub async fn advance(client: &Client, slot: &str, lsn: PgLsn) -> Result<(), tokio_postgres::Error> {
    // A missing slot gives '0/0' as its position, so the server's own "does not exist" error
    // comes back rather than nothing.
    client
        .query(
            "SELECT pg_replication_slot_advance($1::name, $2::pg_lsn) \
             WHERE $2::pg_lsn > COALESCE((SELECT confirmed_flush_lsn FROM pg_replication_slots \
             WHERE slot_name = $1::name), '0/0'::pg_lsn)",
            &[&slot, &lsn],
        )
        .await?;
    Ok(())
}

/// Drops the slot `slot` if it exists; true when it did. Its WAL is freed with it.
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1::name",
            &[&slot],
        )
        .await?;
    Ok(!rows.is_empty())
}

#[derive(Debug, Clone, PartialEq)]
pub struct SlotState {
    pub active: bool,
    /// 'reserved', 'extended', 'unreserved', 'lost' (pg_replication_slots.wal_status)
    pub wal_status: Option<String>,
    /// bytes of WAL written since the slot's confirmed position
    pub lag_bytes: i64,
    /// bytes of WAL the server keeps for the slot (since restart_lsn)
    pub retained_bytes: i64,
}

/// The slot `slot` as the server sees it, or `None` when it does not exist.
pub async fn state(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT active, wal_status, \
             COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8, \
             COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1::name",
            &[&slot],
        )
        .await?;
    row.map(|row| {
        Ok(SlotState {
            active: row.try_get(0)?,
            wal_status: row.try_get(1)?,
            lag_bytes: row.try_get(2)?,
            retained_bytes: row.try_get(3)?,
        })
    })
    .transpose()
}
