//! The slot and the decoder together on a real server: what an insert, a move, a delete, a
//! transaction of several rows and a truncate come out as, and which LSN the slot is advanced to
//! so that the next peek neither repeats a transaction nor skips one.

use campaign_actors::changes::pgoutput::{Decoded, Decoder, PairOp};
use campaign_actors::changes::slot::{self, Message};
use campaign_actors::changes::{server, PUBLICATION, REPLICA_IDENTITY_FIX, SCHEMA, TABLE};
use campaign_actors::contract::SUBSCRIBERS_RESTAURANTS_DDL;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::common::cluster::{run_dir, LogicalPostgres};
use crate::common::{connect, env};

const SLOT: &str = "campaign_notifier_test";

/// What one change of a transaction came out as.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Pair(PairOp, String, String),
    Truncated,
}

/// One transaction of the slot, decoded.
#[derive(Debug)]
struct Transaction {
    items: Vec<(PairOp, String, String)>,
    truncated: bool,
    committed_at_micros: Vec<i64>,
    /// The `lsn` column of the Commit row.
    commit_row_lsn: PgLsn,
    /// The commit LSN and the end LSN written inside the Commit message.
    commit_lsn: PgLsn,
    end_lsn: PgLsn,
}

impl Transaction {
    fn items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .items
            .iter()
            .map(|(op, r, c)| Item::Pair(*op, r.clone(), c.clone()))
            .collect();
        if self.truncated {
            items.push(Item::Truncated);
        }
        items
    }
}

fn pair(op: PairOp, restaurant: &str, client: &str) -> Item {
    Item::Pair(op, restaurant.to_string(), client.to_string())
}

fn lsn_at(data: &[u8], at: usize) -> PgLsn {
    let bytes: [u8; 8] = data[at..at + 8].try_into().expect("8 bytes");
    PgLsn::from(u64::from_be_bytes(bytes))
}

/// The slot's messages as transactions, in the order the slot gave them.
fn transactions(messages: &[Message]) -> Vec<Transaction> {
    let mut decoder = Decoder::new(SCHEMA, TABLE);
    let mut done = Vec::new();
    let (mut items, mut times, mut truncated) = (Vec::new(), Vec::new(), false);
    for message in messages {
        match decoder.feed(&message.data).expect("decode") {
            Decoded::Nothing => {}
            Decoded::Changes(changes) => {
                for c in changes {
                    times.push(c.committed_at_micros);
                    items.push((c.op, c.restaurant_id, c.client_id));
                }
            }
            Decoded::Truncated => truncated = true,
            Decoded::Commit => done.push(Transaction {
                items: std::mem::take(&mut items),
                truncated: std::mem::take(&mut truncated),
                committed_at_micros: std::mem::take(&mut times),
                commit_row_lsn: message.lsn,
                commit_lsn: lsn_at(&message.data, 2),
                end_lsn: lsn_at(&message.data, 10),
            }),
        }
    }
    assert!(items.is_empty(), "a peek ended inside a transaction");
    done
}

async fn peek(db: &Client) -> Vec<Transaction> {
    transactions(&slot::peek(db, SLOT, PUBLICATION, 1000).await.expect("peek"))
}

/// The table, REPLICA IDENTITY FULL, the publication (with a second table in it, whose changes
/// pgoutput sends and the decoder must leave out), a table outside it, and the slot.
async fn prepare(db: &Client) {
    db.batch_execute(SUBSCRIBERS_RESTAURANTS_DDL).await.expect("table");
    db.batch_execute(REPLICA_IDENTITY_FIX).await.expect("replica identity");
    db.batch_execute(
        "CREATE TABLE public.also_published (id int PRIMARY KEY, restaurant_id text, \
         client_id text); CREATE TABLE public.unpublished (id int)",
    )
    .await
    .expect("other tables");
    assert!(server::ensure_publication(db, PUBLICATION).await.unwrap());
    assert!(!server::ensure_publication(db, PUBLICATION).await.unwrap());
    db.batch_execute(&format!(
        "ALTER PUBLICATION {PUBLICATION} ADD TABLE public.also_published"
    ))
    .await
    .expect("second table in the publication");
    assert!(slot::ensure_slot(db, SLOT).await.unwrap(), "slot created");
    assert!(!slot::ensure_slot(db, SLOT).await.unwrap(), "slot kept");
    let caps = server::probe(db, PUBLICATION, SLOT).await.expect("probe");
    assert_eq!(caps.missing(), Vec::new(), "{caps:?}");
}

/// Five transactions, one statement each unless said.
async fn write_five_transactions(db: &Client) {
    for statement in [
        "INSERT INTO subscribers_restaurants (client_id, restaurant_id) \
         VALUES ('c1', 'r1'), ('c2', 'r1')",
        "UPDATE subscribers_restaurants SET restaurant_id = 'r2' WHERE client_id = 'c1'",
        "DELETE FROM subscribers_restaurants WHERE client_id = 'c2'",
        "BEGIN; INSERT INTO also_published VALUES (1, 'r9', 'c9'); \
         INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ('c3', 'r3'); \
         UPDATE subscribers_restaurants SET id = 100 WHERE client_id = 'c3'; COMMIT",
        "TRUNCATE subscribers_restaurants",
    ] {
        db.batch_execute(statement).await.expect(statement);
    }
}

fn expected_five() -> Vec<Vec<Item>> {
    use PairOp::{Add, Remove};
    vec![
        vec![pair(Add, "r1", "c1"), pair(Add, "r1", "c2")],
        vec![pair(Remove, "r1", "c1"), pair(Add, "r2", "c1")],
        vec![pair(Remove, "r1", "c2")],
        vec![pair(Add, "r3", "c3")],
        vec![Item::Truncated],
    ]
}

#[actix_rt::test]
async fn inserts_moves_and_deletes_come_out_of_the_slot_in_commit_order_with_their_old_rows() {
    let server = LogicalPostgres::start(run_dir("logical-decoding"));
    let db = connect(&server.url()).await;
    prepare(&db).await;
    let before_micros = campaign_actors::clock::unix_secs() * 1_000_000 - 1_000_000;
    write_five_transactions(&db).await;
    let state = slot::state(&db, SLOT).await.unwrap().expect("slot state");
    assert!(state.lag_bytes > 0 && state.retained_bytes > 0, "{state:?}");

    let read = peek(&db).await;
    let items: Vec<Vec<Item>> = read.iter().map(Transaction::items).collect();
    assert_eq!(items, expected_five());
    let times: Vec<i64> = read.iter().flat_map(|t| t.committed_at_micros.clone()).collect();
    let after_micros = (campaign_actors::clock::unix_secs() + 1) * 1_000_000;
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times.iter().all(|t| (before_micros..after_micros).contains(t)));
    // A peek consumes nothing: the same transactions again.
    assert_eq!(peek(&db).await.len(), 5);
    for t in &read {
        assert_eq!(t.commit_row_lsn, t.end_lsn, "the Commit row's lsn is the end LSN");
        assert!(t.commit_lsn < t.end_lsn, "{t:?}");
    }
    // A peek cut short by its limit may be advanced only past what it returned.
    let limited = slot::peek_with_position(&db, SLOT, PUBLICATION, 1).await.unwrap();
    assert_eq!(transactions(&limited.messages).len(), 1);
    assert_eq!(limited.advance_to, Some(read[0].commit_row_lsn));
    advance_and_peek_again(&db, &read).await;
    drop(server);
}

/// Which LSN to advance to: the commit LSN inside the message repeats the transaction; the
/// Commit row's lsn (its end LSN) moves on to the next one, skipping none.
async fn advance_and_peek_again(db: &Client, read: &[Transaction]) {
    slot::advance(db, SLOT, read[0].commit_lsn).await.expect("advance");
    let again = peek(db).await;
    assert_eq!(again.len(), 5, "advanced to the commit LSN: the first transaction again");
    assert_eq!(again[0].items(), expected_five()[0]);

    slot::advance(db, SLOT, read[0].commit_row_lsn).await.expect("advance");
    let rest: Vec<Vec<Item>> = peek(db).await.iter().map(Transaction::items).collect();
    assert_eq!(rest, expected_five()[1..].to_vec(), "advanced past the first only");
    // Behind the slot or where it is: nothing happens, no error.
    slot::advance(db, SLOT, read[0].commit_lsn).await.expect("backwards");
    slot::advance(db, SLOT, read[0].commit_row_lsn).await.expect("same");

    slot::advance(db, SLOT, read[4].commit_row_lsn).await.expect("advance");
    assert!(peek(db).await.is_empty(), "everything read was advanced past");
    let state = slot::state(db, SLOT).await.unwrap().expect("slot state");
    assert_eq!(state.lag_bytes, 0, "{state:?}");
    assert!(!state.active, "{state:?}");
    assert_eq!(state.wal_status.as_deref(), Some("reserved"));
}

#[actix_rt::test]
async fn other_tables_hold_the_slot_back_until_advanced_past_and_it_keeps_its_place_across_a_restart() {
    let mut server = LogicalPostgres::start(run_dir("logical-restart"));
    let db = connect(&server.url()).await;
    prepare(&db).await;
    db.batch_execute("INSERT INTO subscribers_restaurants (client_id, restaurant_id) VALUES ('c1', 'r1')")
        .await
        .expect("insert");
    let first = peek(&db).await;
    assert_eq!(first.len(), 1);
    slot::advance(&db, SLOT, first[0].commit_row_lsn).await.expect("advance");

    // Writes outside the publication: no rows at all, and the slot stays where it was, so the
    // server keeps the WAL since then for it.
    db.batch_execute("INSERT INTO unpublished SELECT generate_series(1, 10000)")
        .await
        .expect("unpublished");
    assert!(peek(&db).await.is_empty());
    let held = slot::state(&db, SLOT).await.unwrap().expect("slot state");
    assert!(held.lag_bytes > 100_000, "{held:?}");
    // The position read before the peek lets the slot past them.
    let peeked = slot::peek_with_position(&db, SLOT, PUBLICATION, 1000).await.unwrap();
    assert!(peeked.messages.is_empty());
    let position = peeked.advance_to.expect("a position past the other tables' writes");
    assert!(position > first[0].commit_row_lsn);
    slot::advance(&db, SLOT, position).await.expect("advance");
    let freed = slot::state(&db, SLOT).await.unwrap().expect("slot state");
    assert!(freed.lag_bytes < 1_000, "{freed:?}");

    db.batch_execute("DELETE FROM subscribers_restaurants WHERE client_id = 'c1'")
        .await
        .expect("delete");
    drop(db);
    server.stop();
    server.start_again();
    let db = connect(&server.url()).await;
    let after: Vec<Vec<Item>> = peek(&db).await.iter().map(Transaction::items).collect();
    assert_eq!(after, vec![vec![pair(PairOp::Remove, "r1", "c1")]]);
    assert!(slot::drop_slot(&db, SLOT).await.unwrap());
    assert!(!slot::drop_slot(&db, SLOT).await.unwrap());
    assert_eq!(slot::state(&db, SLOT).await.unwrap(), None);
}

#[actix_rt::test]
async fn the_shared_server_without_logical_wal_is_told_to_set_wal_level_logical() {
    let db = connect(&env("CN_TEST_POSTGRES_URL")).await;
    let caps = server::probe(&db, PUBLICATION, "campaign_notifier_never_created")
        .await
        .expect("probe");
    assert_ne!(caps.wal_level, "logical", "the shared server is expected at wal_level replica");
    let missing = caps.missing();
    assert!(
        missing
            .iter()
            .any(|m| m.what.contains("wal_level") && m.fix.contains("wal_level = logical")),
        "{missing:?}"
    );
    assert!(!caps.slot_exists);
}
