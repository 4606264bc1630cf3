//! Following `subscribers_restaurants` by its changes, against a Postgres of the test's own with
//! `wal_level = logical` ([`crate::common::cluster::LogicalPostgres`]) and the run's shared server.
//!
//! - [`decoding`]: the slot peeked and advanced, its pgoutput messages decoded into pair changes
//!   in commit order, which LSN to advance to, what the slot holds back, and what the server
//!   allows (the run's shared server, with wal_level replica, is told what it lacks); no broker.
//! - [`check`]: `check-config --connect` says which mode `cache.changes` comes to on the server
//!   and what the logical mode lacks with each fix (the run's shared server: wal_level and its
//!   fix; a logical server: the trigger, then logical once the table is REPLICA IDENTITY FULL);
//!   the config is a fixture's, on the run's broker.

mod check;
mod decoding;
