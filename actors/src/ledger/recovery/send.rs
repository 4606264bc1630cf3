//! Sending a campaign's notifications that the output topic lacks: how recovery finishes a dead
//! owner's sends, and how `reconcile --repair` mends what Kafka lacks. Through the one producer
//! path, never after the campaign's end plus the grace.

use crate::cache::snapshot::ClientId;
use crate::campaign::Campaign;
use crate::kafka::{Chunk, FailureClass, KafkaFailure, Producer};
use crate::notification::{fingerprint_of, OutputEncoder, Wanted};

use super::SEND_CHUNK;

/// One campaign's marked rows of a page: the campaign as it was written, and its clients.
pub(crate) struct MarkedCampaign {
    pub(crate) campaign: Campaign,
    pub(crate) trigger_datetime_created: i64,
    pub(crate) clients: Vec<String>,
    /// The campaign is recalled: nothing more of it may be sent.
    pub(crate) recalled: bool,
}

/// The campaign of a row whose first eight columns are the campaign's eight fields, in the
/// brief's order (a row of `subscribers_feedback` or `campaign_notifier_campaigns`).
pub(crate) fn campaign_of(row: &tokio_postgres::Row) -> Result<Campaign, tokio_postgres::Error> {
    Ok(Campaign {
        restaurant_id: row.try_get(0)?,
        adv_campaign_id: row.try_get(1)?,
        adv_campaign_content: row.try_get(2)?,
        adv_campaign_owner: row.try_get(3)?,
        adv_campaign_owner_contact: row.try_get(4)?,
        adv_campaign_datetime_start: row.try_get(5)?,
        adv_campaign_datetime_end: row.try_get(6)?,
        datetime_created: row.try_get(7)?,
    })
}

/// When nothing of `campaign` may be sent any more (ms since the epoch).
pub(crate) fn deadline_ms(c: &Campaign, end_grace_secs: i64) -> i64 {
    let last = c.adv_campaign_datetime_end.saturating_add(end_grace_secs);
    last.saturating_add(1).saturating_mul(1000)
}

/// What [`send_missing`] could not send.
#[derive(Debug, Default)]
pub(crate) struct Unsent {
    /// Not sent: the campaign's deadline came first.
    pub(crate) expired: Vec<String>,
    /// Refused by the broker for good.
    pub(crate) refused: Vec<String>,
    /// Why they were refused (the first refusal).
    pub(crate) reason: Option<String>,
}

/// Sends the campaign's notifications the topic lacks through the service's one producer path,
/// keyed by client, placed by librdkafka's default partitioner (where the Kafka writer places
/// them too), a chunk at a time, none at or after `deadline_ms` (the campaign's end plus the
/// grace). A notification the broker refuses for good is left out and reported; any other
/// failure fails the send (retried at the next sweep).
pub(crate) async fn send_missing(
    producer: &Producer,
    topic: &str,
    marked: &MarkedCampaign,
    found: &Wanted,
    deadline_ms: i64,
) -> Result<Unsent, KafkaFailure> {
    let encoder = OutputEncoder::new(&marked.campaign, marked.trigger_datetime_created);
    let mut missing = marked
        .clients
        .iter()
        .filter(|c| !found.contains(&fingerprint_of(&marked.campaign, c)));
    let mut unsent = Unsent::default();
    let mut chunk = Chunk::new();
    let mut payload = Vec::with_capacity(512);
    while let Some(client) = missing.next() {
        if chunk.is_empty() && crate::clock::Clock::system().now_ms() >= deadline_ms {
            unsent.expired.push(client.clone());
            unsent.expired.extend(missing.cloned());
            break;
        }
        payload.clear();
        encoder.encode(ClientId::Text(client), &mut payload);
        let record = chunk
            .record(topic)
            .payload(&payload[..])
            .key(client.as_bytes());
        match producer.hand_over(&mut chunk, record).await {
            Ok(()) => {}
            Err(e) if e.class == FailureClass::Permanent => {
                unsent.reason.get_or_insert_with(|| e.message.clone());
                unsent.refused.push(client.clone());
            }
            Err(e) => {
                // What was handed over must have landed or failed before the next sweep reads
                // the topic back.
                let _ = settle(chunk, &mut unsent).await;
                return Err(e);
            }
        }
        if chunk.len() == SEND_CHUNK {
            settle(std::mem::take(&mut chunk), &mut unsent).await?;
        }
    }
    settle(chunk, &mut unsent).await?;
    Ok(unsent)
}

/// Waits for every acknowledgement of a chunk; refusals for good go to `unsent` (a record's key is
/// its client), the first other failure is the answer (after every one was awaited).
async fn settle(chunk: Chunk, unsent: &mut Unsent) -> Result<(), KafkaFailure> {
    let mut first = None;
    for refusal in chunk.settled().await {
        let failure = refusal.failure;
        if failure.class == FailureClass::Permanent {
            unsent.reason.get_or_insert_with(|| failure.message.clone());
            let client = refusal.key.unwrap_or_default();
            unsent
                .refused
                .push(String::from_utf8_lossy(&client).into_owned());
        } else {
            first.get_or_insert(failure);
        }
    }
    first.map_or(Ok(()), Err)
}
