//! Following subscribers_restaurants by its changes: Postgres logical decoding of the table,
//! read through the SQL interface (tokio-postgres does not speak the replication protocol) with
//! the `pgoutput` plugin and the publication `campaign_notifier_subscribers`.
//!
//! - [`pgoutput`]: the slot's messages turned into pair changes (pure, no I/O).
//! - [`slot`]: the logical slot: made, peeked, advanced, dropped, and how far behind it is.
//! - [`server`]: what the server allows (wal_level, the REPLICATION attribute, the publication,
//!   REPLICA IDENTITY FULL, a free slot) and the statements that fix what is missing.
//!
//! Must not touch: where the changes are stored or how the cache applies them; this module only
//! reads the table's changes and tells the slot what may be freed.

pub mod pgoutput;
pub mod server;
pub mod slot;

/// The followed table, as pgoutput names it in its Relation messages.
pub const SCHEMA: &str = "public";
pub const TABLE: &str = "subscribers_restaurants";

/// The publication the service reads the table's changes through.
pub const PUBLICATION: &str = "campaign_notifier_subscribers";

/// The statement that makes deletes and updates carry the whole old row, which the decoder needs
/// to know which pair went away.
pub const REPLICA_IDENTITY_FIX: &str =
    "ALTER TABLE public.subscribers_restaurants REPLICA IDENTITY FULL";
