//! Recovery: finishing the work of owners that died with marks in the outbox.
//!
//! Recovery takes over only owners whose lock is free: a crashed process, never a live one. For
//! each, it reads the marked rows, reads the output topic back from the oldest mark's time, sends
//! only the notifications the topic lacks (encoded by the data path's own encoder) and deletes the
//! marks.

use rdkafka::producer::FutureRecord;
use tokio_postgres::Client;

use super::outbox;
use crate::cache::snapshot::ClientId;
use crate::campaign::Campaign;
use crate::kafka::{scan, Producer, ProducerSettings};
use crate::notification::{NotificationKey, OutputEncoder, Wanted};
use crate::postgres::describe;

/// Where recovered notifications go: the output topic, with the service's producer settings.
#[derive(Debug, Clone)]
pub struct OutputTarget {
    pub producer: ProducerSettings,
    pub topic: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub owners: usize,
    pub marked: usize,
    pub already_sent: usize,
    pub resent: usize,
}

/// Finishes the work of every dead owner (other than `me`) whose marks are at least
/// `min_age_secs` old: sends what the output topic lacks, then clears the marks.
pub async fn recover(
    client: &Client,
    output: &OutputTarget,
    me: i32,
    min_age_secs: f64,
) -> Result<RecoveryReport, String> {
    let owners = outbox::owners_with_marks(client, me, min_age_secs)
        .await
        .map_err(|e| describe(&e))?;
    let mut report = RecoveryReport::default();
    for owner in owners {
        if !outbox::try_owner_lock(client, owner)
            .await
            .map_err(|e| describe(&e))?
        {
            continue;
        }
        let result = recover_owner(client, output, owner).await;
        let _ = outbox::release_owner_lock(client, owner).await;
        let r = result?;
        report.owners += 1;
        report.marked += r.marked;
        report.already_sent += r.already_sent;
        report.resent += r.resent;
    }
    Ok(report)
}

/// A marked row, as the output message it should have become.
struct Marked {
    campaign: Campaign,
    client_id: String,
    trigger_datetime_created: i64,
}

impl Marked {
    fn key(&self) -> NotificationKey {
        NotificationKey::of(&self.campaign, &self.client_id)
    }
}

async fn recover_owner(
    client: &Client,
    output: &OutputTarget,
    owner: i32,
) -> Result<RecoveryReport, String> {
    let marks = outbox::marks_of(client, owner)
        .await
        .map_err(|e| describe(&e))?;
    let rows = marked_rows(client, &marks.feedback_ids).await?;
    let wanted: Wanted = rows.iter().map(Marked::key).collect();
    let (settings, topic) = (output.producer.clone(), output.topic.clone());
    let since_ms = marks.since_ms;
    let found =
        tokio::task::spawn_blocking(move || scan::find_sent(&settings, &topic, since_ms, &wanted))
            .await
            .map_err(|e| format!("scan task failed: {e}"))??;
    let missing: Vec<&Marked> = rows.iter().filter(|r| !found.contains(&r.key())).collect();
    if !missing.is_empty() {
        send(output, &missing)
            .await
            .map_err(|e| format!("recovery send: {e}"))?;
    }
    outbox::clear_marks(client, &marks.ids)
        .await
        .map_err(|e| describe(&e))?;
    let report = RecoveryReport {
        owners: 1,
        marked: rows.len(),
        already_sent: found.len(),
        resent: missing.len(),
    };
    log::info!(
        "ledger: recovered owner {owner}: {} notifications were marked, {} already in {}, {} sent now",
        report.marked,
        report.already_sent,
        output.topic,
        report.resent
    );
    Ok(report)
}

async fn marked_rows(client: &Client, feedback_ids: &[i32]) -> Result<Vec<Marked>, String> {
    let rows = client
        .query(
            concat!(
                "SELECT ",
                crate::notification_columns!(),
                " FROM public.subscribers_feedback WHERE id = ANY($1)"
            ),
            &[&feedback_ids],
        )
        .await
        .map_err(|e| describe(&e))?;
    rows.iter()
        .map(|row| {
            Ok(Marked {
                campaign: Campaign {
                    restaurant_id: row.try_get(0)?,
                    adv_campaign_id: row.try_get(1)?,
                    adv_campaign_content: row.try_get(2)?,
                    adv_campaign_owner: row.try_get(3)?,
                    adv_campaign_owner_contact: row.try_get(4)?,
                    adv_campaign_datetime_start: row.try_get(5)?,
                    adv_campaign_datetime_end: row.try_get(6)?,
                    datetime_created: row.try_get(8)?,
                },
                client_id: row.try_get(7)?,
                trigger_datetime_created: i64::from(row.try_get::<_, i32>(9)?),
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| describe(&e))
}

/// Sends the notifications through the service's one producer path, keyed by client, placed by
/// librdkafka's default partitioner (where the Kafka writer places them too).
async fn send(
    output: &OutputTarget,
    missing: &[&Marked],
) -> Result<(), crate::kafka::KafkaFailure> {
    let producer = Producer::create(&output.producer, &[])?;
    let mut deliveries = Vec::with_capacity(missing.len());
    let mut payload = Vec::with_capacity(512);
    for marked in missing {
        payload.clear();
        OutputEncoder::new(&marked.campaign, marked.trigger_datetime_created)
            .encode(ClientId::Text(&marked.client_id), &mut payload);
        let record = FutureRecord::to(&output.topic)
            .payload(&payload)
            .key(marked.client_id.as_bytes());
        deliveries.push(producer.enqueue(record).await?);
    }
    Producer::confirm(deliveries).await?;
    producer.close("ledger recovery").await;
    Ok(())
}
