//! Following `subscribers_restaurants` by its changes: the logical decoding layer against a
//! Postgres of the test's own with `wal_level = logical`
//! ([`crate::common::cluster::LogicalPostgres`]), what `check-config` says of a server, and the
//! service following the changes.
//!
//! - [`decoding`]: the slot peeked and advanced, its pgoutput messages decoded into pair changes
//!   in commit order, which LSN to advance to, what the slot holds back, and what the server
//!   allows (the run's shared server, with wal_level replica, is told what it lacks); no broker.
//! - [`check`]: `check-config --connect` says which mode `cache.changes` comes to on the server
//!   and what the logical mode lacks with each fix (the run's shared server: wal_level and its
//!   fix; a logical server: the trigger, then logical once the table is REPLICA IDENTITY FULL);
//!   the config is a fixture's, on the run's broker.
//! - [`duplicates`]: a client following a restaurant through two rows is notified until both
//!   are deleted.
//! - [`following`]: the service itself: deletes, inserts and moves applied within 2 s of their
//!   commit, across a `kill -9`, in the trigger mode (on the run's server) and the logical
//!   mode, streamed, and read with SQL calls where the server has no walsenders.
//! - [`lost_slot`]: a slot the server invalidated while the service was down is made again, the
//!   table loaded again, and the new slot followed.
//! - [`over_tls`]: the logical mode on a server reached with `sslmode=verify-full`: the slot is
//!   streamed over an encrypted replication connection.
//! - [`under_way`]: a large campaign going out in slices leaves out who unsubscribes meanwhile.

use crate::common::Fixture;

/// Subscribes `clients` to `restaurant`, a row each.
async fn subscribe(f: &Fixture, restaurant: &str, clients: &[String]) {
    f.db.execute(
        "INSERT INTO subscribers_restaurants (restaurant_id, client_id)
         SELECT $1, unnest($2::text[])",
        &[&restaurant, &clients],
    )
    .await
    .expect("subscribe");
}

mod check;
mod decoding;
mod duplicates;
mod following;
mod lost_slot;
mod over_tls;
mod under_way;
