//! The integration suite: the service binary and its actors against a real broker and a real
//! Postgres, one module per concern, sharing [`common`] (the run's broker and Postgres, a fixture
//! per test with its own database and topics, the service started as an operator starts it).
//!
//! `./scripts/test.sh` starts what the suite needs and runs it with `--features integration`;
//! without the feature, `cargo test` runs the unit tests and lists this suite as ignored, with
//! that command as the reason. docs/testing.md says what each module shows.

/// The suite's modules, compiled only with the `integration` feature.
macro_rules! suite {
    ($($module:ident),* $(,)?) => {
        $(
            #[cfg(feature = "integration")]
            mod $module;
        )*
    };
}

suite!(
    caps,
    changes,
    common,
    controls,
    demo,
    e2e,
    faults,
    lifecycle,
    observability,
    ops,
    owners,
    poison,
    recovery,
    schema,
    security,
    sinks,
    transactions,
);

#[cfg(not(feature = "integration"))]
#[test]
#[ignore = "the integration suite needs a broker and Postgres: run ./scripts/test.sh, which \
            starts them and runs it (cargo test --workspace --features \
            campaign-notifier/integration)"]
fn integration_suite() {}
