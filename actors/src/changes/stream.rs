//! The logical mode's reader: the replication slot streamed over a replication connection
//! ([`super::wire`]), so the server decodes each WAL record once, as it is written.
//!
//! Reading the slot with SQL calls ([`super::drain`]) makes the server decode again, at every
//! call, everything written since the slot's restart point, which moves only every 15 s or so:
//! on a busy database that is hundreds of megabytes a call, and the lag and the CPU grow with
//! the database's writes (the benchmark at 50 million pairs showed it). The stream is read by one
//! instance at a time, the server's own rule (a slot has one reader); the others try again every
//! few seconds and take over when its connection ends (a killed instance's at once, a frozen
//! one's when it is fenced: the connection carries its owner in `application_name`).
//!
//! Whole transactions are stored in `campaign_notifier_pair_changes` every
//! [`STORE_EVERY`] (sooner past [`STORE_AT`] changes), and only then is the server told that
//! the slot may free them (a standby status update with the commit's end as flushed). While the
//! table is quiet, the position the server has sent up to is confirmed, so the slot does not keep
//! the WAL of the database's other writes.

use std::time::{Duration, Instant};

use bytes::Buf;
use tokio_postgres::Client;

use super::drain::Collector;
use super::table::{self, NewChange};
use super::wire::{Wire, WireError};
use super::SlotNames;
use crate::postgres::PostgresSettings;

/// Stored changes are confirmed this often at most, and stored this often at least.
pub const STORE_EVERY: Duration = Duration::from_millis(100);

/// Changes held before they are stored at once.
const STORE_AT: usize = 5_000;

/// A status update is sent at least this often (the server's `wal_sender_timeout` is a minute by
/// default).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Microseconds from the Unix epoch to Postgres' (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("cannot store the changes: {}", crate::postgres::describe(.0))]
    Store(#[from] tokio_postgres::Error),
}

impl StreamError {
    /// Another instance streams the slot now.
    pub fn busy(&self) -> bool {
        matches!(self, StreamError::Wire(WireError::Server { code, .. }) if code == "55006")
    }
}

/// Where the stream stands.
struct Position {
    /// The end of the last transaction stored: what the slot may free.
    stored: u64,
    /// What the server has sent up to (its keepalives say).
    sent: u64,
    /// A transaction has begun and not yet committed.
    inside: bool,
}

/// Streams the slot from its confirmed position until the connection ends; stores on `store`.
pub async fn stream(
    settings: &PostgresSettings,
    names: &SlotNames,
    store: &Client,
    application_name: &str,
) -> Result<(), StreamError> {
    let mut wire = Wire::connect(settings, application_name).await?;
    wire.query(&format!(
        "START_REPLICATION SLOT \"{}\" LOGICAL 0/0 (proto_version '1', publication_names '\"{}\"')",
        names.slot, names.publication
    ))
    .await?;
    let first = wire.read().await?;
    if first.tag != b'W' {
        return Err(WireError::Unexpected(first.tag as char).into());
    }
    log::info!(
        "subscriber changes: streaming the replication slot {}",
        names.slot
    );
    let mut collector = Collector::new();
    let mut held: Vec<NewChange> = Vec::new();
    let mut at = Position {
        stored: 0,
        sent: 0,
        inside: false,
    };
    let (mut stored_at, mut status_at) = (Instant::now(), Instant::now());
    let mut incoming = wire.read_in_background();
    loop {
        let wait = STORE_EVERY.saturating_sub(stored_at.elapsed());
        if let Ok(message) = tokio::time::timeout(wait, incoming.recv()).await {
            let Some(message) = message else {
                return Ok(());
            };
            let mut m = message?;
            match m.tag {
                b'd' => on_copy_data(&mut m.body, &mut collector, &mut held, &mut at),
                b'c' | b'C' | b'Z' => return Ok(()),
                _ => {}
            }
            if held.len() < STORE_AT && stored_at.elapsed() < STORE_EVERY {
                continue;
            }
        }
        let confirm = flush(store, &mut held, &mut at).await?;
        stored_at = Instant::now();
        if confirm || status_at.elapsed() >= STATUS_EVERY {
            wire.copy_data(&status(at.stored)).await?;
            status_at = Instant::now();
        }
    }
}

/// One CopyData of the stream: changes (XLogData, 'w') or a keepalive ('k').
fn on_copy_data(
    body: &mut bytes::BytesMut,
    collector: &mut Collector,
    held: &mut Vec<NewChange>,
    at: &mut Position,
) {
    if body.is_empty() {
        return;
    }
    match body.get_u8() {
        b'w' if body.len() >= 24 => {
            let _start = body.get_u64();
            let end = body.get_u64();
            let _time = body.get_i64();
            at.sent = at.sent.max(end);
            let data = &body[..];
            match data.first() {
                Some(b'B') => at.inside = true,
                Some(b'C') => at.inside = false,
                _ => {}
            }
            if let Some(mut changes) = collector.feed(data) {
                // A Commit: byte 0 'C', flags, the commit's LSN, then its end.
                if data.len() >= 18 {
                    let end = u64::from_be_bytes(data[10..18].try_into().unwrap_or_default());
                    at.sent = at.sent.max(end);
                }
                held.append(&mut changes);
            }
        }
        b'k' if body.len() >= 17 => {
            let end = body.get_u64();
            at.sent = at.sent.max(end);
        }
        _ => {}
    }
}

/// Stores what is held; returns whether there is a new position to confirm. Outside a
/// transaction, everything the server sent is then stored or not ours.
async fn flush(
    store: &Client,
    held: &mut Vec<NewChange>,
    at: &mut Position,
) -> Result<bool, tokio_postgres::Error> {
    if !held.is_empty() {
        table::store(store, held).await?;
        held.clear();
    }
    if at.inside || at.sent <= at.stored {
        return Ok(false);
    }
    at.stored = at.sent;
    Ok(true)
}

/// A standby status update: written, flushed and applied up to `lsn`.
fn status(lsn: u64) -> Vec<u8> {
    let now = crate::clock::unix_ms().saturating_mul(1000) - PG_EPOCH_MICROS;
    let mut out = Vec::with_capacity(34);
    out.push(b'r');
    for _ in 0..3 {
        out.extend_from_slice(&lsn.to_be_bytes());
    }
    out.extend_from_slice(&now.to_be_bytes());
    out.push(0);
    out
}

/// Streams the slot whenever no other instance does, until the future is dropped; sets
/// `unsupported` (and returns) when this server cannot be streamed from here (an authentication
/// the replication connection does not speak, TLS it cannot agree, a refusal), so that the
/// caller reads the slot with SQL calls instead.
pub async fn run(
    settings: PostgresSettings,
    names: SlotNames,
    unsupported: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let pid = std::process::id();
    let application_name = match settings.owner {
        Some(owner) => format!("campaign-notifier subscriber changes (owner {owner}, pid {pid})"),
        None => format!("campaign-notifier subscriber changes (pid {pid})"),
    };
    let mut busy_logged = false;
    loop {
        let ended = once(&settings, &names, &application_name).await;
        let pause = match ended {
            Ok(()) => Duration::from_secs(1),
            Err(e) if e.busy() => {
                if !busy_logged {
                    log::info!("subscriber changes: another instance streams the slot; waiting");
                    busy_logged = true;
                }
                Duration::from_secs(2)
            }
            Err(StreamError::Wire(e)) if refused(&e) => {
                log::warn!(
                    "subscriber changes: cannot stream the replication slot ({e}); reading it \
                     with SQL calls instead, which costs the server more"
                );
                unsupported.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Err(e) => {
                log::warn!("subscriber changes: the stream of the replication slot ended: {e}");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// What no retry changes: TLS or an authentication this connection cannot agree, a server
/// without walsenders, the server's refusal of the connection or of the role (classes 08, 28
/// and 42501).
fn refused(e: &WireError) -> bool {
    match e {
        WireError::Unsupported(_) => true,
        WireError::Server { code, .. } => {
            code.starts_with("08") || code.starts_with("28") || code == "42501"
        }
        _ => false,
    }
}

/// One connection's stream, the slot made (or made again) first.
async fn once(
    settings: &PostgresSettings,
    names: &SlotNames,
    application_name: &str,
) -> Result<(), StreamError> {
    // Not being able to connect at all is no reason to give the stream up: tried again.
    let store = crate::postgres::connect(settings, "subscriber changes")
        .await
        .map_err(|e| WireError::Io(std::io::Error::other(e.to_string())))?;
    super::drain::prepare_slot(&store, names).await?;
    // The server would refuse the connection as "too many" (53300), which is no reason to give
    // up when it is only full; with no walsender at all it will never take one.
    let senders = store.query_one("SHOW max_wal_senders", &[]).await?;
    if senders.try_get::<_, String>(0)?.trim() == "0" {
        return Err(WireError::Unsupported(
            "the server has max_wal_senders = 0: it takes no replication connection".into(),
        )
        .into());
    }
    stream(settings, names, &store, application_name).await
}
