//! The ledger: which notifications are in Postgres and may still be missing from Kafka, and the
//! recovery that sends them after a crash without sending any twice.
//!
//! The Postgres writer inserts a campaign's new rows and one outbox mark listing their ids in one
//! transaction ([`outbox`]); the Kafka writer sends exactly those rows; once the broker
//! acknowledged them, the [`Ledger`] actor deletes the mark. So after any stop, the outbox lists
//! every notification that may be missing from Kafka, and the output topic tells which of them
//! are: [`recovery`] sends the rest. Each process is an owner with a lease it renews
//! ([`crate::lease`]); every write it makes is fenced by it, and a peer takes its work over only
//! once the lease expired, the peer fenced it, and its last sends have settled.
//!
//! Must not touch: the data path's writes. The sinks insert the marks and send the notifications;
//! the ledger only clears marks and finishes what dead owners left.

mod actor;
pub mod outbox;
pub mod recovery;

pub use actor::Ledger;
pub use recovery::{OutputTarget, Recoverer, RecoveryReport};
