//! The type of `subscribers_feedback.trigger_datetime_created`, read once at start.
//!
//! The brief's DDL makes it `int4`, which holds unix seconds up to 2038-01-19T03:14:07Z; the
//! service writes `int8` to a column migrated to `bigint`, and stops with the reason and the
//! migration instead of refusing every write once an `int4` column cannot hold the time. The
//! brief's DDL itself (see [`crate::contract`]) is the customer's and stays as it is.

use tokio_postgres::Client;

use super::describe;

/// The last second an int4 column holds: 2^31 - 1, 2038-01-19T03:14:07Z.
pub const INT4_LAST_SECOND: i64 = i32::MAX as i64;

/// [`INT4_LAST_SECOND`] in words.
pub const INT4_LAST_DATE: &str = "2038-01-19T03:14:07Z";

/// What an operator runs to move past it.
pub const MIGRATION: &str = "ALTER TABLE public.subscribers_feedback ALTER COLUMN \
     trigger_datetime_created TYPE bigint;";

/// What the migration costs, said wherever it is suggested.
pub const MIGRATION_NOTE: &str = "it rewrites the table under an ACCESS EXCLUSIVE lock, during \
     which the app can neither read nor write it: plan it; the service writes int8 from its next \
     start";

/// The column's type, as the Postgres writer binds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerColumn {
    /// The brief's `int4`: works until [`INT4_LAST_DATE`].
    Int4,
    /// `int8` (`bigint`).
    Int8,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerColumnError {
    #[error(
        "cannot read the type of public.subscribers_feedback.trigger_datetime_created: {}",
        describe(.0)
    )]
    Postgres(#[source] tokio_postgres::Error),
    #[error(
        "public.subscribers_feedback has no column trigger_datetime_created (the table is missing, \
         or is not the brief's)"
    )]
    Missing,
    #[error(
        "public.subscribers_feedback.trigger_datetime_created is {0}: the service writes unix \
         seconds to an int4 or int8 (bigint) column only"
    )]
    Unsupported(String),
    #[error("{}", exhausted(*.now_secs))]
    Exhausted { now_secs: i64 },
}

/// The message for an int4 column that cannot hold `now_secs`.
pub fn exhausted(now_secs: i64) -> String {
    format!(
        "public.subscribers_feedback.trigger_datetime_created is int4, which holds unix seconds up \
         to {INT4_LAST_DATE} ({INT4_LAST_SECOND}), and the time is now {now_secs}: no \
         notification can be stored. Migrate the column: {MIGRATION} ({MIGRATION_NOTE})"
    )
}

impl TriggerColumn {
    /// Reads the column's type from the catalog.
    pub async fn read(client: &Client) -> Result<TriggerColumn, TriggerColumnError> {
        let row = client
            .query_opt(
                "SELECT t.typname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass('public.subscribers_feedback') \
                   AND a.attname = 'trigger_datetime_created' AND a.attnum > 0 \
                   AND NOT a.attisdropped",
                &[],
            )
            .await
            .map_err(TriggerColumnError::Postgres)?
            .ok_or(TriggerColumnError::Missing)?;
        let name: String = row.try_get(0).map_err(TriggerColumnError::Postgres)?;
        match name.as_str() {
            "int4" => Ok(TriggerColumn::Int4),
            "int8" => Ok(TriggerColumn::Int8),
            _ => Err(TriggerColumnError::Unsupported(
                row.try_get(1).map_err(TriggerColumnError::Postgres)?,
            )),
        }
    }

    /// Whether a notification triggered at `secs` can be stored.
    pub fn holds(self, secs: i64) -> bool {
        match self {
            TriggerColumn::Int4 => i32::try_from(secs).is_ok(),
            TriggerColumn::Int8 => true,
        }
    }

    /// The start-up rule: an int4 column that cannot hold the time now stops the start.
    pub fn usable_at(self, now_secs: i64) -> Result<TriggerColumn, TriggerColumnError> {
        match self.holds(now_secs) {
            true => Ok(self),
            false => Err(TriggerColumnError::Exhausted { now_secs }),
        }
    }

    /// The Postgres array type of the writer's grouped statement.
    pub fn array_type(self) -> &'static str {
        match self {
            TriggerColumn::Int4 => "int4[]",
            TriggerColumn::Int8 => "int8[]",
        }
    }
}

/// The start-up check: the column's type, refused when it is neither int4 nor int8, or int4 with
/// the clock already past what it holds; an int4 column that works today is logged as a warning
/// with the date it stops working and the migration.
pub async fn check_at_start(
    client: &Client,
    now_secs: i64,
) -> Result<TriggerColumn, TriggerColumnError> {
    let column = TriggerColumn::read(client).await?.usable_at(now_secs)?;
    if column == TriggerColumn::Int4 {
        log::warn!(
            "public.subscribers_feedback.trigger_datetime_created is int4 (the brief's DDL): it \
             holds unix seconds up to {INT4_LAST_DATE}, and from then on the service stops (exit \
             code 3) rather than store a notification. Migrate it before then: {MIGRATION} \
             ({MIGRATION_NOTE})"
        );
    }
    Ok(column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_int4_column_holds_the_last_second_of_2038_01_19t03_14_07z_and_no_later() {
        assert!(TriggerColumn::Int4.holds(INT4_LAST_SECOND));
        assert!(!TriggerColumn::Int4.holds(INT4_LAST_SECOND + 1));
        assert!(TriggerColumn::Int8.holds(INT4_LAST_SECOND + 1));
        assert!(TriggerColumn::Int4.usable_at(INT4_LAST_SECOND).is_ok());
        let refused = TriggerColumn::Int4
            .usable_at(1 << 31)
            .unwrap_err()
            .to_string();
        assert!(refused.contains(INT4_LAST_DATE), "{refused}");
        assert!(refused.contains(MIGRATION), "{refused}");
        assert!(refused.contains("ACCESS EXCLUSIVE"), "{refused}");
        assert!(TriggerColumn::Int8.usable_at(i64::MAX).is_ok());
        // 2^31 s after the epoch is 2038-01-19T03:14:08Z: 24 855 days, 3 h 14 min 8 s.
        assert_eq!(
            INT4_LAST_SECOND + 1,
            24_855 * 86_400 + 3 * 3600 + 14 * 60 + 8
        );
    }
}
