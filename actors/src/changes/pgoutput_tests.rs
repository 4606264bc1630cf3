//! The decoder against messages built byte by byte, as pgoutput (protocol version 1) lays them out.

use super::*;

const OURS: u32 = 16_400;
const OTHER: u32 = 16_500;
/// 2026-01-01T00:00:00Z in the Postgres epoch, and the same instant in Unix microseconds.
const COMMIT_PG_MICROS: i64 = 820_540_800_000_000;
const COMMIT_UNIX_MICROS: i64 = 1_767_225_600_000_000;

/// One column value of a TupleData.
#[derive(Clone, Copy)]
enum Col<'a> {
    Text(&'a str),
    Null,
    Toast,
}

/// Encodes pgoutput messages in network byte order.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u8) -> Msg {
        Msg(vec![kind])
    }
    fn u8(mut self, v: u8) -> Msg {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Msg {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Msg {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Msg {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Msg {
        self.0.extend(v.to_be_bytes());
        self
    }
    fn cstring(mut self, v: &str) -> Msg {
        self.0.extend(v.as_bytes());
        self.0.push(0);
        self
    }
    fn bytes(mut self, v: &[u8]) -> Msg {
        self.0.extend(v);
        self
    }
    fn tuple(mut self, cols: &[Col<'_>]) -> Msg {
        self = self.i16(cols.len() as i16);
        for col in cols {
            self = match col {
                Col::Null => self.u8(b'n'),
                Col::Toast => self.u8(b'u'),
                Col::Text(t) => self.u8(b't').i32(t.len() as i32).bytes(t.as_bytes()),
            };
        }
        self
    }
}

fn begin() -> Vec<u8> {
    Msg::new(b'B')
        .i64(0x1_6000)
        .i64(COMMIT_PG_MICROS)
        .i32(740)
        .0
}

fn commit() -> Vec<u8> {
    let m = Msg::new(b'C').u8(0).i64(0x1_6000).i64(0x1_6040);
    m.i64(COMMIT_PG_MICROS).0
}

fn relation(id: u32, schema: &str, table: &str, columns: &[&str]) -> Vec<u8> {
    let mut m = Msg::new(b'R')
        .u32(id)
        .cstring(schema)
        .cstring(table)
        .u8(b'f');
    m = m.i16(columns.len() as i16);
    for name in columns {
        m = m.u8(0).cstring(name).u32(1043).i32(-1);
    }
    m.0
}

fn ours() -> Vec<u8> {
    relation(
        OURS,
        "public",
        "subscribers_restaurants",
        &["id", "client_id", "restaurant_id"],
    )
}

/// A row of our table in its announced order: id, client_id, restaurant_id.
fn row<'a>(id: &'a str, client: &'a str, restaurant: &'a str) -> [Col<'a>; 3] {
    [Col::Text(id), Col::Text(client), Col::Text(restaurant)]
}

fn insert(id: u32, cols: &[Col<'_>]) -> Vec<u8> {
    Msg::new(b'I').u32(id).u8(b'N').tuple(cols).0
}

fn delete(id: u32, marker: u8, cols: &[Col<'_>]) -> Vec<u8> {
    Msg::new(b'D').u32(id).u8(marker).tuple(cols).0
}

fn update(id: u32, old: Option<(u8, &[Col<'_>])>, new: &[Col<'_>]) -> Vec<u8> {
    let mut m = Msg::new(b'U').u32(id);
    if let Some((marker, cols)) = old {
        m = m.u8(marker).tuple(cols);
    }
    m.u8(b'N').tuple(new).0
}

fn change(op: PairOp, restaurant: &str, client: &str) -> PairChange {
    PairChange {
        op,
        restaurant_id: restaurant.to_string(),
        client_id: client.to_string(),
        committed_at_micros: COMMIT_UNIX_MICROS,
    }
}

/// A decoder that has read our relation and the Begin of a transaction.
fn in_transaction() -> Decoder {
    let mut d = Decoder::new("public", "subscribers_restaurants");
    assert_eq!(d.feed(&ours()).unwrap(), Decoded::Nothing);
    assert_eq!(d.feed(&begin()).unwrap(), Decoded::Nothing);
    d
}

#[test]
fn an_insert_adds_its_pair_at_the_commit_time_of_its_transaction() {
    let mut d = in_transaction();
    let got = d.feed(&insert(OURS, &row("1", "c1", "r1"))).unwrap();
    assert_eq!(got, Decoded::Changes(vec![change(PairOp::Add, "r1", "c1")]));
    assert_eq!(d.feed(&commit()).unwrap(), Decoded::Commit);
}

#[test]
fn a_delete_with_the_old_row_removes_its_pair() {
    let mut d = in_transaction();
    let got = d.feed(&delete(OURS, b'O', &row("1", "c1", "r1"))).unwrap();
    assert_eq!(
        got,
        Decoded::Changes(vec![change(PairOp::Remove, "r1", "c1")])
    );
}

#[test]
fn an_update_that_moves_a_restaurant_removes_the_old_pair_then_adds_the_new() {
    let mut d = in_transaction();
    let old = row("1", "c1", "r1");
    let got = d
        .feed(&update(OURS, Some((b'O', &old)), &row("1", "c1", "r2")))
        .unwrap();
    let expected = vec![
        change(PairOp::Remove, "r1", "c1"),
        change(PairOp::Add, "r2", "c1"),
    ];
    assert_eq!(got, Decoded::Changes(expected));
}

#[test]
fn an_update_that_changes_only_the_id_changes_no_pair() {
    let mut d = in_transaction();
    let old = row("1", "c1", "r1");
    let got = d
        .feed(&update(OURS, Some((b'O', &old)), &row("2", "c1", "r1")))
        .unwrap();
    assert_eq!(got, Decoded::Nothing);
}

#[test]
fn a_truncate_naming_the_table_asks_for_a_reload_and_one_of_another_table_does_not() {
    let mut d = in_transaction();
    d.feed(&relation(OTHER, "public", "other", &["x"])).unwrap();
    let truncate = |ids: &[u32]| {
        let mut m = Msg::new(b'T').i32(ids.len() as i32).u8(0);
        for id in ids {
            m = m.u32(*id);
        }
        m.0
    };
    assert_eq!(
        d.feed(&truncate(&[OTHER, OURS])).unwrap(),
        Decoded::Truncated
    );
    assert_eq!(d.feed(&truncate(&[OTHER])).unwrap(), Decoded::Nothing);
}

#[test]
fn changes_of_other_relations_are_ignored_even_one_of_the_same_name_elsewhere() {
    let mut d = in_transaction();
    let columns = ["id", "client_id", "restaurant_id"];
    let elsewhere = relation(OTHER, "archive", "subscribers_restaurants", &columns);
    assert_eq!(d.feed(&elsewhere).unwrap(), Decoded::Nothing);
    let r = row("1", "c1", "r1");
    assert_eq!(d.feed(&insert(OTHER, &r)).unwrap(), Decoded::Nothing);
    assert_eq!(d.feed(&delete(OTHER, b'K', &r)).unwrap(), Decoded::Nothing);
    let moved = row("1", "c1", "r2");
    assert_eq!(
        d.feed(&update(OTHER, None, &moved)).unwrap(),
        Decoded::Nothing
    );
}

#[test]
fn a_relation_announced_again_with_its_columns_reordered_is_read_in_the_new_order() {
    let mut d = in_transaction();
    let reordered = ["restaurant_id", "id", "client_id", "added_at"];
    let announce = relation(OURS, "public", "subscribers_restaurants", &reordered);
    d.feed(&announce).unwrap();
    let cols = [Col::Text("r9"), Col::Text("1"), Col::Text("c9"), Col::Null];
    let got = d.feed(&insert(OURS, &cols)).unwrap();
    assert_eq!(got, Decoded::Changes(vec![change(PairOp::Add, "r9", "c9")]));
}

#[test]
fn type_origin_and_logical_messages_change_nothing() {
    let mut d = in_transaction();
    let type_message = Msg::new(b'Y').u32(700).cstring("public").cstring("t").0;
    let origin = Msg::new(b'O').i64(0x10).cstring("elsewhere").0;
    let message = Msg::new(b'M').u8(1).i64(0x10).cstring("p").i32(0).0;
    for m in [type_message, origin, message] {
        assert_eq!(d.feed(&m).unwrap(), Decoded::Nothing);
    }
}

#[test]
fn a_delete_or_update_without_the_old_row_names_the_replica_identity_fix() {
    let mut d = in_transaction();
    let key = [Col::Text("1"), Col::Null, Col::Null];
    let errors = [
        d.feed(&delete(OURS, b'K', &key)).unwrap_err(),
        d.feed(&update(OURS, Some((b'K', &key)), &row("1", "c1", "r2")))
            .unwrap_err(),
        d.feed(&update(OURS, None, &row("1", "c1", "r2")))
            .unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, DecodeError::NoOldRow(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(REPLICA_IDENTITY_FIX), "{text}");
    }
}

#[test]
fn a_relation_of_our_table_without_a_key_column_is_refused() {
    let mut d = Decoder::new("public", "subscribers_restaurants");
    let without = relation(
        OURS,
        "public",
        "subscribers_restaurants",
        &["id", "client_id"],
    );
    let e = d.feed(&without).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::MissingColumn {
                column: "restaurant_id",
                ..
            }
        ),
        "{e:?}"
    );
    let without = relation(
        OURS,
        "public",
        "subscribers_restaurants",
        &["restaurant_id"],
    );
    let e = d.feed(&without).unwrap_err();
    assert!(e.to_string().contains("client_id"), "{e}");
}

#[test]
fn a_change_of_a_relation_never_announced_is_refused() {
    let mut d = in_transaction();
    let e = d.feed(&insert(42, &row("1", "c1", "r1"))).unwrap_err();
    assert!(matches!(e, DecodeError::UnknownRelation(42)), "{e:?}");
}

#[test]
fn a_change_outside_a_transaction_is_refused() {
    let mut d = Decoder::new("public", "subscribers_restaurants");
    d.feed(&ours()).unwrap();
    let e = d.feed(&insert(OURS, &row("1", "c1", "r1"))).unwrap_err();
    assert!(matches!(e, DecodeError::OutsideTransaction), "{e:?}");
}

#[test]
fn null_unchanged_toast_and_non_utf8_keys_are_refused() {
    let mut d = in_transaction();
    let null = [Col::Text("1"), Col::Null, Col::Text("r1")];
    let e = d.feed(&insert(OURS, &null)).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::NullKey {
                column: "client_id"
            }
        ),
        "{e:?}"
    );
    let toast = [Col::Text("1"), Col::Text("c1"), Col::Toast];
    let e = d.feed(&insert(OURS, &toast)).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::UnchangedToastKey {
                column: "restaurant_id"
            }
        ),
        "{e:?}"
    );
    let mut bad = Msg::new(b'I').u32(OURS).u8(b'N').i16(3);
    bad = bad.u8(b't').i32(1).bytes(b"1").u8(b't').i32(2).bytes(b"c1");
    let bad = bad.u8(b'b').i32(2).bytes(&[0xff, 0xfe]).0;
    let e = d.feed(&bad).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::NotUtf8 {
                column: "restaurant_id",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn truncated_messages_unknown_types_and_wrong_column_counts_are_refused() {
    let mut d = in_transaction();
    let whole = insert(OURS, &row("1", "c1", "r1"));
    for cut in [1, 5, 8, whole.len() - 1] {
        let e = d.feed(&whole[..cut]).unwrap_err();
        assert!(
            matches!(e, DecodeError::Truncated { .. }),
            "cut {cut}: {e:?}"
        );
    }
    assert!(matches!(
        d.feed(&[]).unwrap_err(),
        DecodeError::Truncated { .. }
    ));
    let e = d.feed(b"Zxyz").unwrap_err();
    assert!(matches!(e, DecodeError::UnknownMessage('Z')), "{e:?}");
    let e = d.feed(&insert(OURS, &[Col::Text("1")])).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::ColumnCount {
                expected: 3,
                got: 1
            }
        ),
        "{e:?}"
    );
    let e = d.feed(&Msg::new(b'I').u32(OURS).u8(b'X').0).unwrap_err();
    assert!(matches!(e, DecodeError::UnknownTupleMarker { .. }), "{e:?}");
}
