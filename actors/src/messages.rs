//! The messages several actors share: a campaign and its outcome, clearing outbox marks, draining
//! the reader, closing a writer. A wing's own messages live in it (the cache's `SnapshotLoaded`
//! and `RefreshCache`, the writers' `Write`).
//!
//! Commands are imperative (`ProcessCampaigns`, `Drain`), events past tense (`SnapshotLoaded`). The
//! data path uses `send()` and awaits it, so a full mailbox slows the sender down; only control
//! messages use `do_send`.

use actix::{Message, MessageResponse};

use crate::campaign::Rejection;
use crate::metrics::Outcome;
use crate::notification::SourceRef;

/// One message from the input topic, owned, as the reader hands it to the enricher.
#[derive(Debug)]
pub struct CampaignRecord {
    pub source: SourceRef,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What one poll of the reader found, as one message: validate, join and write each campaign.
/// Each is answered on its own channel, once both sinks confirmed every notification, or as soon
/// as it is clear there is nothing to write.
pub type ProcessCampaigns = crate::hand_off::Batch<CampaignRecord, CampaignOutcome>;

/// What became of a campaign. Every outcome but `Unconfirmed` lets the reader store the
/// campaign's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignOutcome {
    /// Both sinks confirmed this many notifications.
    Delivered {
        notifications: usize,
    },
    /// Every subscriber already had this campaign (the message was delivered again).
    AlreadyNotified,
    Rejected(Rejection),
    /// Arrived before its start: kept durably, to fire at its start.
    Scheduled,
    /// Arrived active inside quiet hours: kept durably, to fire when they end.
    Held,
    /// A newer version, over already, cancelled the scheduled one.
    Cancelled,
    /// An older version than the one kept: ignored.
    Superseded,
    /// It changed a campaign that has already fired: nobody is notified again.
    ChangedAfterStart,
    /// It recalled a campaign that had fired; or, for the campaign going out, every notification
    /// not yet delivered was stopped by its recall.
    Recalled,
    Ended,
    NoSubscribers,
    /// A sink refused the batch for good (the data itself was refused, not the connection).
    SinkFailed {
        sink: &'static str,
        reason: String,
    },
    /// A writer went away without confirming (the service is stopping): the offset must not be
    /// stored, so that the campaign is read again.
    Unconfirmed {
        sink: &'static str,
        reason: String,
    },
}

impl CampaignOutcome {
    /// The metric label.
    pub fn outcome(&self) -> Outcome {
        match self {
            CampaignOutcome::Delivered { .. } => Outcome::Delivered,
            CampaignOutcome::AlreadyNotified => Outcome::AlreadyNotified,
            CampaignOutcome::Rejected(_) => Outcome::Rejected,
            CampaignOutcome::Scheduled => Outcome::Scheduled,
            CampaignOutcome::Held => Outcome::Held,
            CampaignOutcome::Cancelled => Outcome::Cancelled,
            CampaignOutcome::Superseded => Outcome::Superseded,
            CampaignOutcome::ChangedAfterStart => Outcome::ChangedAfterStart,
            CampaignOutcome::Recalled => Outcome::Recalled,
            CampaignOutcome::Ended => Outcome::Ended,
            CampaignOutcome::NoSubscribers => Outcome::NoSubscribers,
            CampaignOutcome::SinkFailed { .. } => Outcome::SinkFailed,
            CampaignOutcome::Unconfirmed { .. } => Outcome::Unconfirmed,
        }
    }
}

/// Clear these outbox marks: Kafka acknowledged every notification they list. Sent in a
/// [`crate::hand_off::Batch`], a turn's marks at once.
pub struct ClearOutbox(pub Vec<i64>);

/// Delete these outbox marks and the `subscribers_feedback` rows they list (all of them, or only
/// those of the clients in `only`): Kafka will never have those notifications (it refused them for
/// good, or the campaign's end passed before they reached it), so Postgres must not keep them
/// either; every other notification of the marks was acknowledged. Answered once done (the ledger
/// keeps trying across reconnects); an error only when the ledger stopped first.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Withdraw {
    pub marks: Vec<i64>,
    pub only: Option<Vec<String>>,
}

/// Stop pulling campaigns, wait for those in flight (up to the grace period), commit offsets.
#[derive(Message)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    pub grace: std::time::Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Campaigns still unfinished when the grace period ran out; they are redelivered next start.
    pub abandoned: usize,
    pub committed: bool,
}

/// Flush and close the writer's connection; answered when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Close;

/// How a writer is doing, for readiness.
#[derive(Message)]
#[rtype(result = "WriterHealth")]
pub struct Health;

#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub struct WriterHealth {
    /// The writer has a working connection.
    pub connected: bool,
    /// Set when the writer has had work waiting and confirmed nothing for longer than its
    /// `stall_after`: how long, and how many notifications wait.
    pub stalled: Option<(std::time::Duration, usize)>,
    /// Set while the sink refuses every write (a configuration fault), with the sink's reason.
    pub fault: Option<String>,
}
