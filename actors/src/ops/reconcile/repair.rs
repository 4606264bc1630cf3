//! `reconcile --repair`: making the two sinks agree about one campaign without sending anything
//! twice. What Kafka lacks is sent through the one producer path (recovery's
//! [`send_missing`]) while the campaign is active, and withdrawn from Postgres once it is over;
//! what Postgres lacks is inserted from the message Kafka has (`ON CONFLICT DO NOTHING`).

use serde::Serialize;
use tokio_postgres::Client;

use super::Compared;
use crate::config::Settings;
use crate::kafka::Producer;
use crate::ledger::recovery::send::{deadline_ms, send_missing, MarkedCampaign};
use crate::notification::Wanted;
use crate::ops::{kafka, pg, OpsError};

/// What a repair did to one campaign.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Repaired {
    pub sent_to_kafka: usize,
    pub inserted_into_postgres: usize,
    /// Rows Kafka lacks of a campaign that is over: withdrawn, since nothing of a campaign goes
    /// out after its end (as the service withdraws them).
    pub withdrawn_from_postgres: usize,
    /// What could not be mended, and why.
    pub not_mended: Vec<String>,
}

/// Mends what `c`'s comparison found.
pub(super) async fn mend(
    settings: &Settings,
    client: &Client,
    c: &Compared,
) -> Result<Repaired, OpsError> {
    let mut repaired = Repaired::default();
    if !c.lacking_rows.is_empty() {
        repaired.inserted_into_postgres = insert_lacking(client, c).await?;
    }
    let missing = c.missing_in_kafka();
    if !missing.is_empty() && c.over {
        repaired.withdrawn_from_postgres = withdraw(client, c, &missing).await?;
    } else if !missing.is_empty() {
        send(settings, client, c, missing, &mut repaired).await?;
    }
    let twice = c.kafka.values().filter(|n| **n > 1).count();
    if twice > 0 {
        repaired.not_mended.push(format!(
            "{twice} clients have this notification more than once in Kafka: a message cannot be \
             taken back"
        ));
    }
    Ok(repaired)
}

/// Inserts the rows Postgres lacks, from the messages Kafka has.
async fn insert_lacking(client: &Client, c: &Compared) -> Result<usize, OpsError> {
    let mut messages = Vec::with_capacity(c.lacking_rows.len() * 400);
    messages.push(b'[');
    for (i, message) in c.lacking_rows.values().enumerate() {
        if i > 0 {
            messages.push(b',');
        }
        messages.extend_from_slice(message);
    }
    messages.push(b']');
    let messages = String::from_utf8_lossy(&messages);
    let inserted = client
        .execute(
            concat!(
                "INSERT INTO public.subscribers_feedback (",
                crate::notification_columns!(),
                ")
                 SELECT restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner,
                        adv_campaign_owner_contact, adv_campaign_datetime_start,
                        adv_campaign_datetime_end, client_id, datetime_created,
                        trigger_datetime_created
                 FROM jsonb_to_recordset($1::text::jsonb) AS x(
                     restaurant_id text, adv_campaign_id text, adv_campaign_content text,
                     adv_campaign_owner text, adv_campaign_owner_contact text,
                     adv_campaign_datetime_start int8, adv_campaign_datetime_end int8,
                     client_id text, datetime_created int8, trigger_datetime_created int8)
                 ON CONFLICT (restaurant_id, adv_campaign_id, client_id) DO NOTHING"
            ),
            &[&messages.as_ref()],
        )
        .await
        .map_err(pg("inserting the rows Postgres lacks"))?;
    Ok(inserted as usize)
}

/// Deletes the rows of `clients` that no outbox mark lists (one that does is on its way).
async fn withdraw(client: &Client, c: &Compared, clients: &[String]) -> Result<usize, OpsError> {
    let deleted = client
        .execute(
            "DELETE FROM public.subscribers_feedback s
             WHERE restaurant_id = $1 AND adv_campaign_id = $2 AND client_id = ANY($3)
               AND NOT EXISTS (SELECT 1 FROM public.campaign_notifier_outbox o
                               WHERE s.id = ANY(o.feedback_ids))",
            &[
                &c.campaign.restaurant_id,
                &c.campaign.adv_campaign_id,
                &clients,
            ],
        )
        .await
        .map_err(pg("withdrawing rows of a campaign that is over"))?;
    Ok(deleted as usize)
}

/// Sends the notifications of `missing` Kafka lacks, as their rows have them (grouped by their
/// `trigger_datetime_created`); what the campaign's end overtook is withdrawn.
async fn send(
    settings: &Settings,
    client: &Client,
    c: &Compared,
    missing: Vec<String>,
    repaired: &mut Repaired,
) -> Result<(), OpsError> {
    let rows = client
        .query(
            "SELECT trigger_datetime_created::int8, array_agg(client_id)
             FROM public.subscribers_feedback
             WHERE restaurant_id = $1 AND adv_campaign_id = $2 AND client_id = ANY($3)
             GROUP BY 1",
            &[
                &c.campaign.restaurant_id,
                &c.campaign.adv_campaign_id,
                &missing,
            ],
        )
        .await
        .map_err(pg("reading the rows Kafka lacks"))?;
    let producer = Producer::create(&settings.producer, &[]).map_err(kafka("the producer"))?;
    let grace = settings.lifecycle.window.end_grace_secs;
    let deadline = deadline_ms(&c.campaign, grace);
    for row in rows {
        let marked = MarkedCampaign {
            campaign: c.campaign.clone(),
            trigger_datetime_created: row.try_get(0).map_err(pg("reading the rows Kafka lacks"))?,
            clients: row.try_get(1).map_err(pg("reading the rows Kafka lacks"))?,
            // A recalled campaign counts as over here: it is withdrawn, not sent.
            recalled: false,
        };
        let topic = &settings.output_topic;
        let unsent = send_missing(&producer, topic, &marked, &Wanted::new(), deadline)
            .await
            .map_err(kafka("sending what Kafka lacks"))?;
        repaired.sent_to_kafka +=
            marked.clients.len() - unsent.expired.len() - unsent.refused.len();
        if !unsent.expired.is_empty() {
            repaired.withdrawn_from_postgres += withdraw(client, c, &unsent.expired).await?;
        }
        if let Some(reason) = unsent.reason {
            repaired.not_mended.push(format!(
                "{} notifications refused by the broker: {reason}",
                unsent.refused.len()
            ));
        }
    }
    producer.close("reconcile").await;
    Ok(())
}
