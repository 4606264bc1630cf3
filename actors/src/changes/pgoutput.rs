//! The pgoutput messages (protocol version 1) of the slot, turned into pair changes of
//! `subscribers_restaurants`: an insert adds a (restaurant, client) pair, a delete removes one, an
//! update that moves a pair removes the old one and adds the new one.
//!
//! Pure: no I/O, no clock. It reads one message at a time, as the rows of
//! `pg_logical_slot_peek_binary_changes` give them, and remembers only what the protocol asks a
//! reader to remember: the relations announced so far (where the two key columns are) and the
//! commit time of the transaction being read. The message layouts are those of the Postgres docs,
//! "Logical Replication Message Formats".
//!
//! Must not touch: the slot (see [`super::slot`]) or where the changes are stored.

use std::collections::HashMap;

use super::REPLICA_IDENTITY_FIX;

/// Microseconds from the Unix epoch to the Postgres epoch (2000-01-01), in which pgoutput gives
/// its timestamps.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOp {
    Add,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairChange {
    pub op: PairOp,
    pub restaurant_id: String,
    pub client_id: String,
    /// unix microseconds of the transaction's commit (from the Begin message)
    pub committed_at_micros: i64,
}

#[derive(Debug, PartialEq)]
pub enum Decoded {
    Nothing,
    Changes(Vec<PairChange>),
    /// the table was truncated: everything must be reloaded
    Truncated,
    /// end of a transaction
    Commit,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a pgoutput message ended early: {needed} more byte(s) needed at offset {at}")]
    Truncated { at: usize, needed: usize },
    #[error("unknown pgoutput message type {0:?} (only protocol version 1 is understood)")]
    UnknownMessage(char),
    #[error("unknown tuple marker {marker:?} in a {message:?} message")]
    UnknownTupleMarker { message: char, marker: char },
    #[error("unknown column value kind {0:?} in a tuple")]
    UnknownValueKind(char),
    #[error("relation {schema}.{table} has no column {column}")]
    MissingColumn {
        schema: String,
        table: String,
        column: &'static str,
    },
    #[error("a change of relation id {0}, which no Relation message announced")]
    UnknownRelation(u32),
    #[error("a change outside a transaction (no Begin message before it)")]
    OutsideTransaction,
    #[error("a tuple has {got} column(s) but its relation announced {expected}")]
    ColumnCount { expected: usize, got: usize },
    #[error("column {column} is not UTF-8")]
    NotUtf8 {
        column: &'static str,
        #[source]
        source: std::string::FromUtf8Error,
    },
    #[error("column {column} is null")]
    NullKey { column: &'static str },
    #[error("column {column} came as an unchanged TOAST value, without its value")]
    UnchangedToastKey { column: &'static str },
    #[error(
        "a {0} without the old row: the table is not REPLICA IDENTITY FULL; fix: \
         {REPLICA_IDENTITY_FIX}"
    )]
    NoOldRow(&'static str),
}

/// Where the key columns of a relation are, or that its changes are not ours.
#[derive(Debug, Clone, Copy)]
enum Relation {
    /// Another table (the publication may name more than ours): its changes are skipped.
    Other,
    Followed(Keys),
}

/// Where a tuple of our table holds the pair.
#[derive(Debug, Clone, Copy)]
struct Keys {
    columns: usize,
    restaurant_id: usize,
    client_id: usize,
}

/// Reads the messages of one slot, in order. One decoder per reading: it learns the relations
/// from the Relation messages pgoutput sends before a relation's first change in each call.
pub struct Decoder {
    schema: String,
    table: String,
    relations: HashMap<u32, Relation>,
    /// Commit time of the transaction being read, from its Begin; `None` between transactions.
    committed_at_micros: Option<i64>,
}

impl Decoder {
    /// Follows changes of `schema.table` only (other relations' changes are ignored).
    pub fn new(schema: &str, table: &str) -> Decoder {
        Decoder {
            schema: schema.to_string(),
            table: table.to_string(),
            relations: HashMap::new(),
            committed_at_micros: None,
        }
    }

    /// One message: the `data` column of one row of pg_logical_slot_peek_binary_changes.
    pub fn feed(&mut self, data: &[u8]) -> Result<Decoded, DecodeError> {
        let mut r = Reader { data, at: 0 };
        match r.u8()? {
            b'B' => {
                let _final_lsn = r.i64()?;
                let committed = r.i64()?;
                self.committed_at_micros = Some(committed + POSTGRES_EPOCH_UNIX_MICROS);
                Ok(Decoded::Nothing)
            }
            b'C' => {
                self.committed_at_micros = None;
                Ok(Decoded::Commit)
            }
            b'R' => self.relation(&mut r).map(|()| Decoded::Nothing),
            b'I' => self.insert(&mut r),
            b'D' => self.delete(&mut r),
            b'U' => self.update(&mut r),
            b'T' => self.truncate(&mut r),
            b'Y' | b'O' | b'M' => Ok(Decoded::Nothing),
            other => Err(DecodeError::UnknownMessage(other as char)),
        }
    }

    /// A Relation message: remembers where our key columns are, or that it is another table.
    /// A relation id announced again (after an ALTER TABLE) replaces what was known.
    fn relation(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let id = r.u32()?;
        let namespace = r.cstring()?;
        // An empty namespace is pg_catalog, as the protocol abbreviates it.
        let schema = if namespace.is_empty() {
            "pg_catalog".to_string()
        } else {
            namespace
        };
        let table = r.cstring()?;
        let _replica_identity = r.u8()?;
        let columns = usize::try_from(r.i16()?).unwrap_or(0);
        let mut names = Vec::with_capacity(columns);
        for _ in 0..columns {
            let _flags = r.u8()?;
            names.push(r.cstring()?);
            let _type_oid = r.u32()?;
            let _type_modifier = r.i32()?;
        }
        if schema != self.schema || table != self.table {
            self.relations.insert(id, Relation::Other);
            return Ok(());
        }
        let position = |column: &'static str| {
            names
                .iter()
                .position(|name| name == column)
                .ok_or_else(|| DecodeError::MissingColumn {
                    schema: schema.clone(),
                    table: table.clone(),
                    column,
                })
        };
        let followed = Relation::Followed(Keys {
            columns,
            restaurant_id: position("restaurant_id")?,
            client_id: position("client_id")?,
        });
        self.relations.insert(id, followed);
        Ok(())
    }

    fn insert(&mut self, r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
        let Some((keys, committed)) = self.followed(r.u32()?)? else {
            return Ok(Decoded::Nothing);
        };
        match r.u8()? {
            b'N' => {}
            marker => return Err(unknown_marker('I', marker)),
        }
        let (restaurant_id, client_id) = pair(keys, &tuple(r)?)?;
        Ok(Decoded::Changes(vec![PairChange {
            op: PairOp::Add,
            restaurant_id,
            client_id,
            committed_at_micros: committed,
        }]))
    }

    fn delete(&mut self, r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
        let Some((keys, committed)) = self.followed(r.u32()?)? else {
            return Ok(Decoded::Nothing);
        };
        match r.u8()? {
            // With a key only (the primary key), the row's pair is not in the message.
            b'O' => {}
            b'K' => return Err(DecodeError::NoOldRow("delete")),
            marker => return Err(unknown_marker('D', marker)),
        }
        let (restaurant_id, client_id) = pair(keys, &tuple(r)?)?;
        Ok(Decoded::Changes(vec![PairChange {
            op: PairOp::Remove,
            restaurant_id,
            client_id,
            committed_at_micros: committed,
        }]))
    }

    fn update(&mut self, r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
        let Some((keys, committed)) = self.followed(r.u32()?)? else {
            return Ok(Decoded::Nothing);
        };
        let old = match r.u8()? {
            b'O' => {
                let old = pair(keys, &tuple(r)?)?;
                match r.u8()? {
                    b'N' => old,
                    marker => return Err(unknown_marker('U', marker)),
                }
            }
            // A key only, or no old tuple at all (the key did not change): the old pair is not
            // known, so the move cannot be followed.
            b'K' | b'N' => return Err(DecodeError::NoOldRow("update")),
            marker => return Err(unknown_marker('U', marker)),
        };
        let new = pair(keys, &tuple(r)?)?;
        if old == new {
            return Ok(Decoded::Nothing);
        }
        let change = |op, (restaurant_id, client_id)| PairChange {
            op,
            restaurant_id,
            client_id,
            committed_at_micros: committed,
        };
        Ok(Decoded::Changes(vec![
            change(PairOp::Remove, old),
            change(PairOp::Add, new),
        ]))
    }

    fn truncate(&mut self, r: &mut Reader<'_>) -> Result<Decoded, DecodeError> {
        let count = r.i32()?;
        let _options = r.u8()?;
        let mut ours = false;
        for _ in 0..count {
            let id = r.u32()?;
            ours |= matches!(self.relations.get(&id), Some(Relation::Followed(_)));
        }
        Ok(if ours {
            Decoded::Truncated
        } else {
            Decoded::Nothing
        })
    }

    /// The key positions of relation `id` and the commit time of the transaction, or `None` for
    /// another table's change.
    fn followed(&self, id: u32) -> Result<Option<(Keys, i64)>, DecodeError> {
        match self.relations.get(&id) {
            None => Err(DecodeError::UnknownRelation(id)),
            Some(Relation::Other) => Ok(None),
            Some(Relation::Followed(keys)) => {
                let committed = self
                    .committed_at_micros
                    .ok_or(DecodeError::OutsideTransaction)?;
                Ok(Some((*keys, committed)))
            }
        }
    }
}

fn unknown_marker(message: char, marker: u8) -> DecodeError {
    DecodeError::UnknownTupleMarker {
        message,
        marker: marker as char,
    }
}

/// One column of a TupleData.
enum Value {
    Null,
    UnchangedToast,
    /// Text or binary: the bytes as sent.
    Bytes(Vec<u8>),
}

fn tuple(r: &mut Reader<'_>) -> Result<Vec<Value>, DecodeError> {
    let columns = usize::try_from(r.i16()?).unwrap_or(0);
    let mut values = Vec::with_capacity(columns);
    for _ in 0..columns {
        values.push(match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' | b'b' => {
                let len = usize::try_from(r.i32()?).unwrap_or(0);
                Value::Bytes(r.take(len)?.to_vec())
            }
            other => return Err(DecodeError::UnknownValueKind(other as char)),
        });
    }
    Ok(values)
}

/// The (restaurant_id, client_id) of a row of our table.
fn pair(keys: Keys, values: &[Value]) -> Result<(String, String), DecodeError> {
    if values.len() != keys.columns {
        return Err(DecodeError::ColumnCount {
            expected: keys.columns,
            got: values.len(),
        });
    }
    let text = |at: usize, column: &'static str| match &values[at] {
        Value::Null => Err(DecodeError::NullKey { column }),
        Value::UnchangedToast => Err(DecodeError::UnchangedToastKey { column }),
        Value::Bytes(bytes) => String::from_utf8(bytes.clone())
            .map_err(|source| DecodeError::NotUtf8 { column, source }),
    };
    Ok((
        text(keys.restaurant_id, "restaurant_id")?,
        text(keys.client_id, "client_id")?,
    ))
}

/// A cursor over one message, in network byte order.
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.data.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                at: self.at,
                needed: len.saturating_sub(self.data.len().saturating_sub(self.at)),
            });
        };
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated string (names are UTF-8 in our databases; anything else is shown
    /// lossily, as it is only compared and reported).
    fn cstring(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.at.min(self.data.len())..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                at: self.data.len(),
                needed: 1,
            });
        };
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.at += len + 1;
        Ok(text)
    }
}

#[cfg(test)]
#[path = "pgoutput_tests.rs"]
mod tests;
