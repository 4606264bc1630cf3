//! The input side: the consumer of the campaign topic and the keeper of its offsets.
//!
//! [`kafka_reader`] pulls campaigns, bounds how many are in flight and stores an offset only once
//! the campaign is finished ([`offsets`]); [`orphan_watch`] rejoins the group when partitions are
//! left to nobody. Both use the consumer [`consumer`] creates.
//!
//! Must not touch: the sinks, or the ledger beyond telling this process's lease which partitions
//! it holds (peers read them from its row; see [`crate::lease`]). The reader hands what
//! each poll finds to a `Recipient<ProcessCampaigns>` and learns only each campaign's outcome.

pub mod consumer;
pub mod kafka_reader;
pub mod offsets;
pub mod orphan_watch;

pub use consumer::ReaderSettings;
pub use kafka_reader::KafkaReader;
