//! The campaign lifecycle: scheduled, active, over, cancelled.
//!
//! Every campaign that passes validation is recorded in the durable table
//! `campaign_notifier_campaigns` before anything else happens to it ([`store`]), and the
//! [`rules`] decide what its arrival means against the version kept there: one that arrives
//! before its start is kept and fired at its start (by exactly one instance, claimed with
//! `FOR UPDATE SKIP LOCKED`), one that is active is delivered at once, a newer version replaces or
//! cancels a scheduled one, and one that changes a campaign already fired notifies nobody.
//!
//! Where it stands in the pipeline (the enricher sends it `Record`, it answers with a
//! `Decision` and later hands due campaigns back as `Fire`) is drawn in the crate docs
//! ([`crate`]).
//!
//! Its rooms, each with its own state, deciding without I/O, and its unit tests:
//!
//! - [`recording`]: arrivals decided against the kept version and stored, a group at a time;
//! - [`scheduler`]: due campaigns claimed within the budget, fired (a large audience a slice at
//!   a time) and settled;
//! - [`subscriptions`]: the change feed of new subscriptions, and the comparison at each reload;
//! - [`housekeeping`]: the gauge of scheduled campaigns, and forgetting what nothing needs;
//! - [`quiet_watch`]: when quiet hours begin and end here, and the reload comparison put off;
//!
//! beside [`rules`] (what an arrival means), [`crate::changes::cursor`] (the change feed's
//! cursor) and [`store`] (every statement). The [`Lifecycle`] actor holds the connections and wires them together.
//!
//! Must not touch: how a campaign is joined or written (the enricher's and delivery's). The
//! lifecycle only keeps the table and says when.

mod actor;

mod housekeeping;
mod quiet_watch;
mod recording;
pub mod rules;
mod scheduler;
pub mod store;
mod subscriptions;

use std::sync::Arc;

use actix::Message;

pub use actor::{Lifecycle, LifecycleSettings};
pub use housekeeping::Retention;
pub use rules::{Decision, Window};
pub use store::Arrival;

use crate::cache::snapshot::Snapshot;
use crate::hand_off::Batch;
use crate::messages::CampaignOutcome;

/// Record arriving campaigns; each is answered with what to do with it as soon as that is decided,
/// while its version is still being stored (unanswered, its channel reads as canceled, when the
/// lifecycle stopped first). Sent through a [`crate::hand_off::HandOff`].
pub type RecordAll = Batch<Arc<Arrival>, Recorded>;

/// What to do with an arriving campaign, and when its version is in the table: a campaign is done
/// (its offset may be committed) only once both its delivery and [`Stored`] are.
#[derive(Debug)]
pub struct Recorded {
    pub decision: Decision,
    pub stored: Stored,
}

/// Resolves once the campaign's version is durably in the table.
#[derive(Debug)]
pub struct Stored(pub futures::channel::oneshot::Receiver<()>);

impl Stored {
    /// An error only when the lifecycle stopped before storing it.
    pub async fn wait(self) -> Result<(), String> {
        self.0
            .await
            .map_err(|_| "the lifecycle stopped before storing the campaign".to_string())
    }
}

/// Fire a campaign that is due: join it with `subscribers` (its restaurant's, read at fire time)
/// and deliver it. Answered once delivered, like a campaign from the input topic.
#[derive(Message)]
#[rtype(result = "CampaignOutcome")]
pub struct Fire {
    pub arrival: Arrival,
    pub subscribers: Arc<Snapshot>,
}
