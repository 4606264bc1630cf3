//! What an operator runs beside the service, as commands of the binary: a campaign's status
//! ([`status`]) and the replay of dead letters ([`replay`]).
//!
//! They use the service's own tables, topics, connections and producer path, and never run inside
//! the service: a status reads Postgres only and writes nothing, so it answers whether the service
//! runs or not; a replay writes to the input topic and records what it replayed.
//!
//! Must not touch: the data path's tables beyond what is said here (a status writes nothing; a
//! replay writes only `campaign_notifier_replayed`).

pub mod replay;
pub mod status;
