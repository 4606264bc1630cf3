//! Following `subscribers_restaurants` by its changes instead of reloading it whole.
//!
//! Every change of a pair (an addition, a removal; a move is both) lands in one table of the
//! service's, `campaign_notifier_pair_changes` ([`table`]), numbered in the order every instance
//! applies it to its snapshot (`cache::overlay`). How the changes get there is the [`Mode`]:
//!
//! - **logical**: the change feed's leader reads the server's logical decoding of the table
//!   (plugin `pgoutput`, through a replication slot the service names: [`slot`], decoded by
//!   [`pgoutput`]) and copies each batch of whole transactions into the table, in commit order,
//!   before it lets the slot free them ([`drain`]); needs `wal_level = logical` and what
//!   [`server`] checks;
//! - **trigger**: a trigger on the app's table writes them in the app's own transaction
//!   ([`trigger`]): the fallback where the server has no logical decoding, opted into;
//! - **ids**: neither; new rows are followed by their `id` ([`cursor`]) and deletes and
//!   moves are learnt at the next full reload.
//!
//! docs/design.md, "Fresh at scale", says why; docs/operations.md how to run each mode.
//!
//! Must not touch: the snapshot or how the cache applies the changes (`cache::overlay`); this
//! module reads the table's changes, stores them, and tells the slot what may be freed.

pub mod cursor;
pub mod drain;
pub mod mode;
pub mod pgoutput;
pub mod server;
pub mod slot;
pub mod stream;
pub mod table;
pub mod trigger;
pub mod wire;

use serde::{Deserialize, Serialize};

/// The followed table, as pgoutput names it in its Relation messages.
pub const SCHEMA: &str = "public";
pub const TABLE: &str = "subscribers_restaurants";

/// The publication the service reads the table's changes through.
pub const PUBLICATION: &str = "campaign_notifier_subscribers";

/// The statement that makes deletes and updates carry the whole old row, which the decoder needs
/// to know which pair went away.
pub const REPLICA_IDENTITY_FIX: &str =
    "ALTER TABLE public.subscribers_restaurants REPLICA IDENTITY FULL";

/// How the changes of `subscribers_restaurants` are followed, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangesSetting {
    /// Logical when the server allows it, else the trigger when it is installed, else ids.
    Auto,
    Logical,
    Trigger,
    Ids,
}

/// How they are followed, once the server was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Logical(SlotNames),
    Trigger,
    Ids,
}

impl Mode {
    /// Whether every change lands in `campaign_notifier_pair_changes`.
    pub fn follows_changes(&self) -> bool {
        !matches!(self, Mode::Ids)
    }

    /// The mode's name, as the metrics and the logs say it.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Logical(_) => "logical",
            Mode::Trigger => "trigger",
            Mode::Ids => "ids",
        }
    }
}

/// The logical mode's replication slot and publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotNames {
    pub slot: String,
    pub publication: String,
}
