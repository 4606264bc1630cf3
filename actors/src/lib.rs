//! The actors of `campaign-notifier` and everything they exchange.
//!
//! ```text
//!                      SnapshotLoaded
//!  Postgres ──COPY──> SubscriberCache ───────────┐
//!                                                v
//!  Kafka ──> KafkaReader ──ProcessCampaign──> Enricher ──Write(PgJob)──> PgWriter ──> feedback rows
//!  input        ^   stores offsets              │  │                    + outbox mark
//!               │                               │  └─Write(KafkaJob)──> KafkaWriter ──> output topic
//!               └──── CampaignOutcome ◀─────────┤     (only the rows Postgres inserted)
//!                                               ├─ClearOutbox──> Ledger
//!                                               └─Write(DeadLetter)──> DeadLetterWriter ──> DLQ
//! ```
//!
//! A campaign's offset is stored for commit only after both writers confirmed all of its
//! notifications, so a stop at any moment loses nothing; Postgres is the ledger that keeps a
//! redelivery or a crash from notifying anyone twice (see [`ledger`]). The cache, the writers and
//! the ledger run under actix `Supervisor`; a writer that fails keeps the jobs it held across the
//! restart.
//!
//! - [`clock`]: the one clock (unix seconds and milliseconds).
//! - [`config`]: typed configuration, defaults, environment overrides, validation.
//! - [`campaign`]: parsing and validating a campaign message; the active-window rule.
//! - [`snapshot`]: the compact in-memory restaurant -> subscribers mapping.
//! - [`notification`]: the join result shared by both writers, and the output JSON.
//! - [`messages`]: every message that crosses an actor boundary.
//! - [`kafka_reader`]: consumer, in-flight limit, offset tracking.
//! - [`orphan_watch`]: rejoins the group when partitions are left to nobody.
//! - [`subscriber_cache`]: loads and refreshes the snapshot.
//! - [`enricher`]: validate, check activity, join, fan out to both writers.
//! - [`writer`]: the supervised batching writer both sinks share.
//! - [`kafka_writer`], [`pg_writer`]: the two sinks.
//! - [`dead_letter_writer`]: unusable messages, untouched, with the reason in headers.
//! - [`ledger`]: which notifications may still be missing from Kafka, and the recovery that
//!   sends them after a crash.
//! - [`schema`]: Postgres connections and the create-if-missing schema step.
//! - [`metrics`]: every Prometheus metric.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`pipeline`]: start and stop order.

pub mod cache;
pub mod campaign;
pub mod clock;
pub mod config;
pub mod contract;
pub mod delivery;
pub mod enricher;
pub mod events;
pub mod http;
pub mod kafka;
pub mod ledger;
pub mod messages;
pub mod metrics;
pub mod notification;
pub mod pipeline;
pub mod postgres;
pub mod reader;
pub mod shared;
pub mod sinks;
pub mod supervision;

pub use config::Config;
pub use metrics::Metrics;
pub use pipeline::Pipeline;
