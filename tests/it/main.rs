//! The integration suite: the service binary and its actors against a real broker and a real
//! Postgres, one module per concern, sharing [`common`] (the run's broker and Postgres, a fixture
//! per test with its own database and topics, the service started as an operator starts it).
//!
//! `./scripts/test.sh` starts what the suite needs and runs it with `--features integration`;
//! without the feature, `cargo test` runs the unit tests and lists this suite as ignored, with
//! that command as the reason. docs/testing.md says what each module shows.

#[cfg(feature = "integration")]
mod common;
#[cfg(feature = "integration")]
mod demo;
#[cfg(feature = "integration")]
mod e2e;
#[cfg(feature = "integration")]
mod faults;
#[cfg(feature = "integration")]
mod lifecycle;
#[cfg(feature = "integration")]
mod observability;
#[cfg(feature = "integration")]
mod owners;
#[cfg(feature = "integration")]
mod poison;
#[cfg(feature = "integration")]
mod recovery;
#[cfg(feature = "integration")]
mod schema;
#[cfg(feature = "integration")]
mod security;
#[cfg(feature = "integration")]
mod sinks;
#[cfg(feature = "integration")]
mod transactions;

#[cfg(not(feature = "integration"))]
#[test]
#[ignore = "the integration suite needs a broker and Postgres: run ./scripts/test.sh, which \
            starts them and runs it (cargo test --workspace --features integration)"]
fn integration_suite() {}
