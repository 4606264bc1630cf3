//! Outbox marks and who owns them: the statements that clear and withdraw marks, and the advisory
//! locks versions before leases told live owners from dead ones by. The tokens that make a
//! retried chunk find its first attempt are the Postgres writer's (`sinks::pg_writer::Tokens`).
//!
//! The Postgres writer inserts a campaign's new rows and one `campaign_notifier_outbox` row (a
//! mark) listing their ids in one transaction; the mark is deleted once Kafka acknowledged them.

use tokio_postgres::Client;

use crate::lease::LOCK_CLASS;

/// Takes `owner`'s advisory lock if nobody holds it (release with [`release_owner_lock`]):
/// versions before leases held it while they lived.
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

/// True, in a statement, while owner `$n` may write: its row is not fenced (owner 0 has no row:
/// a process without owners).
fn unfenced(n: usize) -> String {
    format!(
        "(${n}::int4 = 0 OR EXISTS (SELECT 1 FROM public.campaign_notifier_owners \
          WHERE owner = ${n} AND fenced_at IS NULL))"
    )
}

/// Deletes marks and the feedback rows they list (all of them, or only those of the clients in
/// `only`), in one statement: a notification Kafka will never have (refused for good, or its
/// campaign ended first) leaves no row behind; the marks' other rows were acknowledged and stay.
/// Nothing is deleted once owner `me` is fenced. Returns how many rows were deleted.
pub async fn withdraw(
    client: &Client,
    ids: &[i64],
    only: Option<&[String]>,
    me: i32,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "WITH marks AS (
                     DELETE FROM public.campaign_notifier_outbox WHERE id = ANY($1) AND {}
                     RETURNING feedback_ids
                 )
                 DELETE FROM public.subscribers_feedback
                 WHERE id IN (SELECT unnest(feedback_ids) FROM marks)
                   AND ($2::text[] IS NULL OR client_id = ANY($2))",
                unfenced(3)
            ),
            &[&ids, &only, &me],
        )
        .await
}

/// Deletes, of the feedback rows `feedback_ids`, those of `campaign` for `clients`: notifications
/// recovery did not send because the campaign's end had passed, or the broker refused them (the
/// marks are cleared after). Nothing is deleted once owner `me` is fenced.
pub async fn delete_rows(
    client: &Client,
    feedback_ids: &[i32],
    campaign: &crate::campaign::Campaign,
    clients: &[String],
    me: i32,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "DELETE FROM public.subscribers_feedback
                 WHERE id = ANY($1) AND restaurant_id = $2 AND adv_campaign_id = $3
                   AND client_id = ANY($4) AND {}",
                unfenced(5)
            ),
            &[
                &feedback_ids,
                &campaign.restaurant_id,
                &campaign.adv_campaign_id,
                &clients,
                &me,
            ],
        )
        .await
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
