//! What an operator runs beside the service, as commands of the binary: a campaign's status
//! ([`status`]), the comparison and repair of the two sinks ([`reconcile`]) and the replay of
//! dead letters ([`replay`]).
//!
//! They use the service's own tables, topics, connections and producer path, and never run inside
//! the service: a status reads Postgres only and writes nothing, so it answers whether the service
//! runs or not; a reconcile reads both sinks and, asked to repair, writes what one of them lacks;
//! a replay writes to the input topic and records what it replayed.
//!
//! Must not touch: the data path's tables beyond what is said here (a status writes nothing; a
//! repair writes only `subscribers_feedback` rows and output messages of the campaigns it
//! compared; a replay writes only `campaign_notifier_replayed`).

pub mod reconcile;
pub mod replay;
pub mod status;
