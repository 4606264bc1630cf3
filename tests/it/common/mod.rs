//! What the end-to-end tests share: the broker and Postgres of this test run (started by
//! `scripts/test.sh`), a fixture per test with its own database and topics, and the service
//! binary started as an operator would start it.
//!
//! - [`fixture`]: one test's database and topics, made and dropped; what it feeds the input topic
//!   and the subscriber table, and the service's config file.
//! - [`topics`]: the fixture's topics, created, counted and read back.
//! - [`database`]: connections to the run's Postgres, a database of a test's own, and what a test
//!   does to the service's sessions (reachability, cut sessions, generic plans).
//! - [`service`]: the service binary as a process: started, waited for, signalled, its log, its
//!   metrics and its memory.
//! - [`broker`]: a broker of a test's own, which can be stopped and started again.
//! - [`pg_proxy`]: a proxy in front of Postgres that can turn into a black hole.
//! - [`counts`]: every (campaign, client) pair counted in each sink.
//! - [`load`]: restaurants with subscribers, campaigns over them, waits for both sinks.
//! - [`secure`]: a broker behind SCRAM and TLS, and a Postgres with TLS.
//! - [`cluster`]: a Postgres server of a test's own (made, stopped, started again), and one with
//!   `wal_level = logical` for the logical decoding tests.

pub mod broker;
pub mod cluster;
pub mod counts;
pub mod database;
pub mod fixture;
pub mod load;
pub mod pg_proxy;
pub mod secure;
pub mod service;
pub mod topics;

#[allow(unused_imports)]
pub use broker::*;
#[allow(unused_imports)]
pub use counts::*;
#[allow(unused_imports)]
pub use database::*;
#[allow(unused_imports)]
pub use fixture::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use pg_proxy::*;
#[allow(unused_imports)]
pub use service::*;
#[allow(unused_imports)]
pub use topics::*;

/// The brief's sample input (in the brief's `key:json` form), its restaurant, and the contract's
/// output example (`client_id` and `trigger_datetime_created` vary).
#[allow(unused_imports)]
pub use campaign_actors::contract::{
    BRIEF_SAMPLE as SAMPLE, BRIEF_SAMPLE_RESTAURANT as SAMPLE_RESTAURANT,
    OUTPUT_EXAMPLE as CONTRACT_OUTPUT,
};

pub fn unix_now() -> i64 {
    campaign_actors::clock::unix_secs()
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with ./scripts/test.sh, which starts the broker")
    })
}

/// A campaign JSON with the given window.
pub fn campaign(restaurant: &str, campaign_id: &str, start: i64, end: i64) -> String {
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": campaign_id,
        "adv_campaign_content": format!("campaign {campaign_id}"),
        "adv_campaign_owner": "Ivanov Ivan Ivanovich",
        "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
        "adv_campaign_datetime_start": start,
        "adv_campaign_datetime_end": end,
        "datetime_created": start,
    })
    .to_string()
}

pub fn active_campaign(restaurant: &str, campaign_id: &str) -> String {
    let now = unix_now();
    campaign(restaurant, campaign_id, now - 3600, now + 3600)
}

/// A number in `0..n` that differs from call to call (no seed to manage; tests print what they
/// drew).
pub fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() % n.max(1)
}
