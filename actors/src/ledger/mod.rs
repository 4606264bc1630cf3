//! The ledger: which notifications are in Postgres and may still be missing from Kafka, and the
//! recovery that sends them after a crash without sending any twice.
//!
//! Must not touch: the data path's writes (the sinks insert the marks and send the notifications;
//! the ledger only clears marks and recovers what dead owners left).

mod actor;

pub use actor::*;
