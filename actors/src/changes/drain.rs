//! The logical mode's one step: what the slot holds, decoded and stored in
//! `campaign_notifier_pair_changes`, then freed in the slot.
//!
//! Any instance drains, one at a time: [`drain_if_free`] holds a session advisory lock for the
//! whole step, so that no leader's crash or lapsed lease holds the changes up (a killed
//! instance's session ends, and its lock with it; a frozen one's sessions are ended when it is
//! fenced). The order is what makes a crash harmless: the changes are stored first, in one
//! statement, and the slot is advanced after. A crash between the two leaves them in the slot,
//! and the next drain stores them again, right after the first copy, from the same position:
//! applying a run of changes twice in a row changes nothing (see [`super::table`]).

use tokio_postgres::Client;

use super::pgoutput::{DecodeError, Decoded, Decoder, PairOp};
use super::slot;
use super::table::{self, NewChange, Op};
use super::SlotNames;

/// Changes of whole transactions read from the slot at once, about.
pub const MAX_CHANGES: i32 = 10_000;

/// What one drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Changes of pairs stored.
    pub changes: usize,
    /// Transactions read.
    pub transactions: usize,
    /// The slot may hold more.
    pub more: bool,
}

/// The advisory lock one drain holds (a fixed key of the service's).
const DRAIN_LOCK: i64 = 0x636e_5f64_7261_696e; // "cn_drain"

/// Drains the slot unless another instance is draining it: up to [`DRAINS_AT_ONCE`] reads while
/// the slot holds more. A slot the server invalidated is made again first (every instance then
/// reloads). `None`: another instance holds the lock.
pub async fn drain_if_free(
    client: &Client,
    names: &SlotNames,
) -> Result<Option<Drained>, tokio_postgres::Error> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&DRAIN_LOCK])
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(None);
    }
    let drained = drain_locked(client, names).await;
    // On an error the connection may be gone, and the lock with it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&DRAIN_LOCK])
        .await;
    drained.map(Some)
}

/// Reads from the slot at once while it holds more, at most.
pub const DRAINS_AT_ONCE: usize = 4;

async fn drain_locked(
    client: &Client,
    names: &SlotNames,
) -> Result<Drained, tokio_postgres::Error> {
    prepare_slot(client, names).await?;
    let mut all = Drained::default();
    for _ in 0..DRAINS_AT_ONCE {
        let one = drain(client, names).await?;
        all.changes += one.changes;
        all.transactions += one.transactions;
        all.more = one.more;
        if !one.more {
            break;
        }
    }
    Ok(all)
}

/// Makes the slot unless it exists, and makes it again if the server invalidated it.
pub async fn prepare_slot(client: &Client, names: &SlotNames) -> Result<(), tokio_postgres::Error> {
    if let Some(state) = slot::state(client, &names.slot).await? {
        if state.wal_status.as_deref() == Some("lost") {
            log::error!(
                "subscriber changes: the server invalidated the replication slot {} (it kept more \
                 WAL than max_slot_wal_keep_size while nobody read it): making it again, and \
                 every instance loads the table again",
                names.slot
            );
            slot::drop_slot(client, &names.slot).await?;
        }
    }
    if ensure(client, names).await? {
        log::info!(
            "subscriber changes: made the replication slot {}",
            names.slot
        );
    }
    Ok(())
}

/// Makes the slot unless it exists; when it had to be made, every instance is asked to reload
/// (the slot sees only what commits after it is made). Returns whether it was made.
pub async fn ensure(client: &Client, names: &SlotNames) -> Result<bool, tokio_postgres::Error> {
    let made = slot::ensure_slot(client, &names.slot).await?;
    if made {
        table::ask_reload(client, "the replication slot was made").await?;
    }
    Ok(made)
}

/// Reads up to about [`MAX_CHANGES`] changes of whole transactions from the slot, stores them and
/// frees them in the slot.
///
/// A transaction that cannot be decoded (a delete without its old row, because the table's
/// replica identity was changed back, say) is stored as a `reload` row with the reason, logged
/// as an error, and passed: every instance then loads the table again, which is right whatever
/// the transaction did.
pub async fn drain(client: &Client, names: &SlotNames) -> Result<Drained, tokio_postgres::Error> {
    let peeked =
        slot::peek_with_position(client, &names.slot, &names.publication, MAX_CHANGES).await?;
    let messages = peeked.messages;
    let (stored, transactions) = decode(&messages);
    let mut out = Drained {
        transactions,
        ..Drained::default()
    };
    // Past the last commit read, or past other tables' writes while this one is quiet.
    let Some(lsn) = peeked.advance_to else {
        return Ok(out);
    };
    out.changes = stored.iter().filter(|c| c.0 != Op::Reload).count();
    if !stored.is_empty() {
        table::store(client, &stored).await?;
    }
    slot::advance(client, &names.slot, lsn).await?;
    out.more = messages.len() >= MAX_CHANGES as usize;
    Ok(out)
}

/// The changes of the whole transactions among `messages`, and how many transactions.
fn decode(messages: &[slot::Message]) -> (Vec<NewChange>, usize) {
    let mut collector = Collector::new();
    let (mut stored, mut transactions) = (Vec::new(), 0);
    for message in messages {
        if let Some(mut changes) = collector.feed(&message.data) {
            stored.append(&mut changes);
            transactions += 1;
        }
    }
    (stored, transactions)
}

/// Turns the slot's messages, one by one, into the changes of each whole transaction.
///
/// A transaction that cannot be decoded (a delete without its old row, because the table's
/// replica identity was changed back, say) comes out as one `reload` row with the reason, logged
/// as an error: every instance then loads the table again, which is right whatever it did.
pub struct Collector {
    decoder: Decoder,
    pending: Vec<NewChange>,
    broken: Option<DecodeError>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            decoder: Decoder::new(super::SCHEMA, super::TABLE),
            pending: Vec::new(),
            broken: None,
        }
    }

    /// One message; at a transaction's commit, its changes.
    pub fn feed(&mut self, data: &[u8]) -> Option<Vec<NewChange>> {
        let now = || crate::clock::unix_ms().saturating_mul(1000);
        match self.decoder.feed(data) {
            Err(e) => self.broken = self.broken.take().or(Some(e)),
            Ok(Decoded::Nothing) => {}
            Ok(Decoded::Changes(changes)) => self.pending.extend(changes.into_iter().map(|c| {
                let op = match c.op {
                    PairOp::Add => Op::Add,
                    PairOp::Remove => Op::Remove,
                };
                (op, c.restaurant_id, c.client_id, c.committed_at_micros)
            })),
            Ok(Decoded::Truncated) => self.pending.push((
                Op::Reload,
                String::new(),
                "subscribers_restaurants was truncated".into(),
                now(),
            )),
            Ok(Decoded::Commit) => {
                if let Some(e) = self.broken.take() {
                    log::error!(
                        "subscriber changes: a transaction of the replication slot cannot be \
                         decoded ({e}); every instance loads the table again"
                    );
                    self.pending.clear();
                    let why = format!("a change could not be decoded: {e}");
                    self.pending.push((Op::Reload, String::new(), why, now()));
                }
                return Some(std::mem::take(&mut self.pending));
            }
        }
        None
    }
}
