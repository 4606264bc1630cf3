//! The sinks: where notifications (and unusable input) are written.
//!
//! [`writer`] is the supervised batching writer every sink runs in: it owns the jobs, groups them,
//! retries, restarts with backoff, and keeps what it holds across a restart. A [`Sink`] only
//! connects and writes a group: [`kafka_writer`] (the output topic), [`pg_writer`]
//! (`subscribers_feedback` plus the outbox mark) and [`dead_letter_writer`] (the dead-letter topic).
//! [`pace`] holds the Kafka writer to `[limits] max_notifications_per_sec`.
//!
//! Must not touch: the order of the writes across sinks (that is the delivery module's), offsets
//! (the reader's), or the outbox beyond inserting marks (the ledger's).

pub mod dead_letter_writer;
pub mod kafka_writer;
pub mod pace;
pub mod pg_writer;
pub mod writer;

pub use writer::{LocalFuture, Rows, Sink, SinkError, Write, WriteAll, Writer, WriterSettings};
