//! The Postgres writer's statements. The two inserts are in `.sql` files beside this one
//! ([`INSERT`] in `insert.sql`, [`GROUP_INSERT`] in `group_insert.sql`); the text sent to Postgres
//! is a newline and the file without its final newline, byte for byte the text the statements had
//! when they were written in Rust.

use crate::postgres::trigger_column::TriggerColumn;

/// A statement's text from its file beside this one.
macro_rules! statement {
    ($file:literal) => {
        concat!("\n", include_str!($file)).trim_ascii_end()
    };
}

/// One row: the outbox mark (NULL when nothing was new) and the clients inserted, NULL when that
/// is every client sent (the common case, which spares sending them back). A retried chunk whose
/// token is already in the outbox gets its first attempt's mark and clients instead. `$9` takes
/// the type of `trigger_datetime_created` (int4 as the brief has it, int8 once migrated) and is
/// bound as such.
/// (Those are read one primary-key lookup at a time: the statement is prepared once and runs a
/// generic plan, and one made while `subscribers_feedback` was empty would otherwise scan it.)
pub const INSERT: &str = statement!("insert.sql");

/// Every chunk of a group at once (the campaigns of a statement are distinct). Parameters: per
/// chunk the campaign's fields, `trigger_datetime_created`, the token and the number of clients
/// (`$1` to `$11`); per row the chunk's position (from 1) and the client (`$12`, `$13`); the owner
/// (`$14`). One row per chunk, in order: its token, its outbox mark (NULL when nothing was new)
/// and the clients inserted, NULL when that is every client sent. `$9` is of the column's type
/// (see [`group_insert`]); this text is for the brief's int4.
pub const GROUP_INSERT: &str = statement!("group_insert.sql");

/// [`GROUP_INSERT`] for a `trigger_datetime_created` migrated to int8: the same text with `$9` an
/// int8[], made when the crate is compiled (the build fails if `$9::int4[]` is not found).
pub const GROUP_INSERT_INT8: &str = match std::str::from_utf8(&GROUP_INSERT_INT8_BYTES) {
    Ok(text) => text,
    Err(_) => panic!("GROUP_INSERT_INT8 is not UTF-8"),
};

const GROUP_INSERT_INT8_BYTES: [u8; GROUP_INSERT.len()] =
    swapped(GROUP_INSERT, "$9::int4[]", "$9::int8[]");

/// The grouped statement for the column's type, chosen once, when the statements are prepared.
pub fn group_insert(column: TriggerColumn) -> &'static str {
    match column {
        TriggerColumn::Int4 => GROUP_INSERT,
        TriggerColumn::Int8 => GROUP_INSERT_INT8,
    }
}

// Both inserts write the contract's columns, in its order (`crate::notification_columns!`, which
// the statements' parameters follow too): checked when the crate is compiled.
const _: () = assert!(contains(INSERT, INSERTED_COLUMNS));
const _: () = assert!(contains(GROUP_INSERT, INSERTED_COLUMNS));
const INSERTED_COLUMNS: &str = concat!(
    "INSERT INTO public.subscribers_feedback (",
    crate::notification_columns!(),
    ")\n"
);

/// Runs first in every transaction: no row means the owner was fenced, and the transaction rolls
/// back. The lock makes a peer's fence (an update of the row, see `ledger::recovery`) wait for
/// this transaction, so a transaction either commits before the fence, and its marks are there
/// for the peer, or sees the fence and writes nothing. `KEY SHARE` does not conflict with the
/// owner's own renewals, which leave the key alone.
pub const FENCE: &str = "SELECT 1 FROM public.campaign_notifier_owners \
     WHERE owner = $1 AND fenced_at IS NULL FOR KEY SHARE";

/// The per-client cap's statements (see [`capping`](super::capping)), run only while it is on.
/// Every client of a write gets its row, which is the client's lock (row locks, not advisory
/// ones: thousands of advisory locks in one transaction would exhaust Postgres' lock table).
pub const CAP_CLIENTS: &str = "INSERT INTO public.campaign_notifier_clients (client_id, sent) \
     SELECT DISTINCT c, '{}'::int8[] FROM unnest($1::text[]) AS c ORDER BY 1 ON CONFLICT DO NOTHING";

/// The clients' rows locked in sorted order, so that two instances lock in the same order and
/// never deadlock, with their sent times and Postgres' clock.
pub const CAP_LOCK: &str = "SELECT client_id, sent, extract(epoch FROM now())::int8 \
     FROM public.campaign_notifier_clients WHERE client_id = ANY($1::text[]) \
     ORDER BY client_id FOR UPDATE";

/// Which notifications of a write are decided already: their row or their capped record exists.
/// Parameters: per job its restaurant and campaign (`$1`, `$2`); per notification its job (from 1)
/// and client (`$3`, `$4`). Answers the positions (from 1) of those decided.
pub const CAP_DECIDED: &str = statement!("cap_decided.sql");

/// The new sent times of the clients sent something: one row per time (`$1` the client, `$2` the
/// time), oldest first.
pub const CAP_SENT: &str = "UPDATE public.campaign_notifier_clients AS c SET sent = u.sent \
     FROM (SELECT client_id, array_agg(at ORDER BY n) AS sent \
           FROM unnest($1::text[], $2::int8[]) WITH ORDINALITY AS x(client_id, at, n) \
           GROUP BY client_id) AS u \
     WHERE c.client_id = u.client_id";

/// The notifications capped now (restaurant, campaign, client).
pub const CAP_RECORD: &str = "INSERT INTO public.campaign_notifier_capped \
     (restaurant_id, adv_campaign_id, client_id, reason, capped_at) \
     SELECT r, c, k, 'per_client_max', extract(epoch FROM now())::int8 \
     FROM unnest($1::text[], $2::text[], $3::text[]) AS u(r, c, k) ON CONFLICT DO NOTHING";

/// Where `part` first starts in `text`.
const fn find(text: &[u8], part: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + part.len() <= text.len() {
        let mut i = 0;
        while i < part.len() && text[at + i] == part[i] {
            i += 1;
        }
        if i == part.len() {
            return Some(at);
        }
        at += 1;
    }
    None
}

const fn contains(text: &str, part: &str) -> bool {
    find(text.as_bytes(), part.as_bytes()).is_some()
}

/// `text` (`N` bytes) with its first `from` replaced by `to`, of the same length.
const fn swapped<const N: usize>(text: &str, from: &str, to: &str) -> [u8; N] {
    assert!(text.len() == N && from.len() == to.len());
    let Some(at) = find(text.as_bytes(), from.as_bytes()) else {
        panic!("the text to replace is not in the statement");
    };
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = text.as_bytes()[i];
        i += 1;
    }
    let mut i = 0;
    while i < to.len() {
        out[at + i] = to.as_bytes()[i];
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_int8_group_insert_is_the_int4_one_with_9_an_int8_array() {
        assert_eq!(GROUP_INSERT.matches("$9::").count(), 1);
        assert_eq!(
            GROUP_INSERT_INT8,
            GROUP_INSERT.replace("$9::int4[]", "$9::int8[]")
        );
        assert_eq!(group_insert(TriggerColumn::Int4), GROUP_INSERT);
        assert_eq!(group_insert(TriggerColumn::Int8), GROUP_INSERT_INT8);
    }
}
