//! The actors of `campaign-notifier` and everything they exchange.
//!
//! The pipeline, drawn here once (docs/design.md and the module docs link to it):
//!
//! ```text
//!                         SnapshotLoaded (every refresh_interval_secs)
//!  Postgres ──COPY──> cache::SubscriberCache ────────────┐
//!  subscribers_restaurants                               v
//!  Kafka ────> reader::KafkaReader ─ProcessCampaigns──> Enricher: validate, join
//!  input topic   ^  stores offsets                       │  ^ Record ─> lifecycle::Lifecycle: decide,
//!                │                                       │  │   keep the version in campaign_notifier_campaigns;
//!                │                                       │  └ Fire ─── at a start, or for new subscribers
//!                │                                       │ one NotificationBatch
//!                │                                       v
//!                │                               delivery::Delivery
//!                │                     1. Write(PgJob) ───> sinks::PgWriter ──> subscribers_feedback
//!                │                                             + outbox mark, same transaction
//!                │                     2. Write(KafkaJob) ─> sinks::KafkaWriter ──> output topic
//!                │                        (only the rows Postgres inserted)
//!                │                     3. ClearOutbox ──> ledger::Ledger (mark clean-up,
//!                │                                           takeover of dead owners)
//!                │                     or Write(DeadLetter) ──> sinks::DeadLetterWriter ──> DLQ
//!                └────── CampaignOutcome ◀───────────────┘
//! ```
//!
//! A campaign's offset is stored for commit only after both writers confirmed all of its
//! notifications, so a stop at any moment loses nothing; Postgres is the ledger that keeps a
//! redelivery or a crash from notifying anyone twice (see [`ledger`]). Every write is fenced by
//! the process's lease, so an instance that froze or was cut off writes nothing once a peer has
//! taken its work over. The cache, the writers and
//! the ledger run under actix `Supervisor` with one restart policy ([`supervision`]); a writer
//! that fails keeps the jobs it held across the restart.
//!
//! The rooms, from the data path down to what everything shares:
//!
//! - [`pipeline`]: start and stop order; the one place the actors are wired together.
//! - [`reader`]: the consumer of the input topic, offset tracking, the orphan watch.
//! - [`enricher`]: validate, have the lifecycle record the campaign, join with the snapshot.
//! - [`delivery`]: Postgres first, then exactly those rows to Kafka, then clear the marks; a large
//!   campaign a slice at a time, within the budget of notifications in flight.
//! - [`sinks`]: the supervised batching writer and the Kafka, Postgres and dead-letter sinks.
//! - [`ledger`]: outbox marks and tokens, fencing and recovery of dead owners, the `Ledger` actor.
//! - [`lease`]: this process's lease, which every write asks first; [`lease_keeper`]: the
//!   `LeaseKeeper` actor that renews it; [`fatal`]: why the service must stop, and the channel
//!   that says so.
//! - [`lifecycle`]: the durable table of campaigns; scheduled ones fired at their start, newer
//!   versions replacing or cancelling them, the `Lifecycle` actor.
//! - [`cache`]: the compact snapshot and the actor that loads and refreshes it; [`changes`]: the
//!   table followed by its changes through logical decoding (the pgoutput messages, the slot,
//!   what the server allows).
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`; [`liveness`]: the heartbeats of the loops
//!   `/healthz` watches.
//! - [`kafka`]: the one producer path, error classification, the read-back scan.
//! - [`postgres`]: connections, error description and class, the schema step, the type of
//!   `trigger_datetime_created` read at start.
//! - [`campaign`], [`notification`]: the input parsed and validated; the join result and the one
//!   encoder of the output JSON.
//! - [`contract`]: what the brief fixes (samples, tables, the notification columns).
//! - [`messages`]: every message that crosses an actor boundary; [`hand_off`]: what a turn of a
//!   thread sends to one actor elsewhere, as one message.
//! - [`config`]: the file, its checks, and its translation into component settings.
//! - [`error_chain`]: an error and its causes as one line, where an error is finally reported.
//! - [`recalls`]: the campaigns recalled, which the writers consult beside each deadline.
//! - [`quiet`]: quiet hours, the daily window of local time inside which nothing new goes out.
//! - [`supervision`], [`shared`], [`events`], [`metrics`], [`clock`]: restart policy, the context
//!   every component is handed (metrics, fatal reasons, clock), what is logged and counted, the
//!   label values, the one clock.

// The tour above links to the crate's own rooms, most of them not public: read it with
// `cargo doc -p campaign-actors --document-private-items --open`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cache;
pub mod campaign;
pub mod changes;
pub mod clock;
pub mod config;
pub mod contract;
pub(crate) mod delivery;
pub(crate) mod enricher;
pub mod error_chain;
pub(crate) mod events;
pub mod fatal;
pub(crate) mod hand_off;
pub(crate) mod http;
pub mod kafka;
pub mod lease;
pub(crate) mod lease_keeper;
pub mod ledger;
pub mod lifecycle;
pub(crate) mod liveness;
pub mod messages;
pub mod metrics;
pub mod notification;
pub mod ops;
pub mod pipeline;
pub mod postgres;
pub mod quiet;
pub(crate) mod reader;
pub mod recalls;
pub mod shared;
pub mod sinks;
pub mod supervision;

pub use config::Config;
pub use metrics::Metrics;
pub use pipeline::Pipeline;
