//! Outbox marks and who owns them: owner ids, the tokens that make a retried chunk find its first
//! attempt, and the advisory locks that tell live owners from dead ones.
//!
//! The Postgres writer inserts a campaign's new rows and one `campaign_notifier_outbox` row (a
//! mark) listing their ids in one transaction; the mark is deleted once Kafka acknowledged them.

use tokio_postgres::Client;

/// First key of every advisory lock the service takes ("cn").
pub const LOCK_CLASS: i32 = 0x636e;

/// A random owner id for this process.
pub fn new_owner() -> i32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let id = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if id == 0 {
        1
    } else {
        id
    }
}

/// Hands out outbox tokens: unique per process (the owner in the high half) and never reused.
#[derive(Debug)]
pub struct Tokens {
    owner: i32,
    next: u32,
}

impl Tokens {
    pub fn new(owner: i32) -> Tokens {
        Tokens { owner, next: 0 }
    }

    /// Reserves `n` consecutive tokens and returns the first.
    pub fn take(&mut self, n: usize) -> i64 {
        let first = (i64::from(self.owner) << 32) | i64::from(self.next);
        self.next = self.next.wrapping_add(n as u32);
        first
    }
}

/// Takes the lock that tells other instances this owner is alive; held while the connection
/// lives.
pub async fn hold_owner_lock(client: &Client, owner: i32) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK_CLASS, &owner])
        .await
        .map(|_| ())
}

/// Takes `owner`'s lock if nobody holds it: true when that owner is dead and its marks are ours
/// to finish (release with [`release_owner_lock`]).
pub async fn try_owner_lock(client: &Client, owner: i32) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&LOCK_CLASS, &owner],
        )
        .await?
        .get(0))
}

pub async fn release_owner_lock(client: &Client, owner: i32) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&LOCK_CLASS, &owner])
        .await
        .map(|_| ())
}

/// Deletes marks whose notifications Kafka acknowledged.
pub async fn clear_marks(client: &Client, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM public.campaign_notifier_outbox WHERE id = ANY($1)",
            &[&ids],
        )
        .await
}

/// Deletes marks and the feedback rows they list (all of them, or only those of the clients in
/// `only`), in one statement: a notification Kafka will never have (refused for good, or its
/// campaign ended first) leaves no row behind; the marks' other rows were acknowledged and stay.
/// Returns how many rows were deleted.
pub async fn withdraw(
    client: &Client,
    ids: &[i64],
    only: Option<&[String]>,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "WITH marks AS (
                 DELETE FROM public.campaign_notifier_outbox WHERE id = ANY($1)
                 RETURNING feedback_ids
             )
             DELETE FROM public.subscribers_feedback
             WHERE id IN (SELECT unnest(feedback_ids) FROM marks)
               AND ($2::text[] IS NULL OR client_id = ANY($2))",
            &[&ids, &only],
        )
        .await
}

/// Deletes, of the feedback rows `feedback_ids`, those of `campaign` for `clients`: notifications
/// recovery did not send because the campaign's end had passed (the marks are cleared after).
pub async fn delete_rows(
    client: &Client,
    feedback_ids: &[i32],
    campaign: &crate::campaign::Campaign,
    clients: &[String],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM public.subscribers_feedback
             WHERE id = ANY($1) AND restaurant_id = $2 AND adv_campaign_id = $3
               AND client_id = ANY($4)",
            &[
                &feedback_ids,
                &campaign.restaurant_id,
                &campaign.adv_campaign_id,
                &clients,
            ],
        )
        .await
}

/// Owners other than `me` with marks made before `before_ms` (ms since the epoch) or at least
/// `min_age_secs` old.
pub async fn owners_with_marks(
    client: &Client,
    me: i32,
    before_ms: i64,
    min_age_secs: f64,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT DISTINCT owner FROM public.campaign_notifier_outbox \
             WHERE owner <> $1 AND (created_at < to_timestamp($2::float8 / 1000) \
                                    OR created_at < now() - make_interval(secs => $3))",
            &[&me, &(before_ms as f64), &min_age_secs],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Some of an owner's marks: their ids, the feedback rows they list, and when the oldest was made
/// (ms since the epoch; no notification of them can be in the output topic from before).
#[derive(Debug, Default)]
pub struct Marks {
    pub ids: Vec<i64>,
    pub feedback_ids: Vec<i32>,
    pub since_ms: i64,
}

/// The owner's oldest marks, up to the first that brings the rows they list to `rows` (at least
/// one mark when there is any).
pub async fn marks_page(
    client: &Client,
    owner: i32,
    rows: usize,
) -> Result<Marks, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, feedback_ids, ms FROM ( \
                 SELECT id, feedback_ids, (extract(epoch FROM created_at) * 1000)::int8 AS ms, \
                        sum(cardinality(feedback_ids)) OVER (ORDER BY id) \
                            - cardinality(feedback_ids) AS before \
                 FROM public.campaign_notifier_outbox WHERE owner = $1) m \
             WHERE before < $2 ORDER BY id",
            &[&owner, &(rows as i64)],
        )
        .await?;
    Ok(Marks {
        ids: rows.iter().map(|r| r.get(0)).collect(),
        feedback_ids: rows.iter().flat_map(|r| r.get::<_, Vec<i32>>(1)).collect(),
        since_ms: rows
            .iter()
            .map(|r| r.get::<_, i64>(2))
            .min()
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_per_owner_and_reserve_ranges() {
        let mut a = Tokens::new(7);
        let mut b = Tokens::new(8);
        let a1 = a.take(3);
        let a2 = a.take(1);
        assert_eq!(a2 - a1, 3);
        assert_ne!(a1, b.take(1));
        assert_eq!(a1 >> 32, 7);
        let mut neg = Tokens::new(-5);
        assert_eq!(neg.take(1) >> 32, -5);
    }
}
