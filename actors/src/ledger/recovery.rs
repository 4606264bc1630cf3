//! Recovery: finishing the work of owners that died with marks in the outbox.
//!
//! Recovery takes over only owners whose lock is free, and only once it has been free for the
//! settle time ([`Takeover`]): a dead owner's last produce requests have landed or failed by then,
//! so the read-back sees every notification it will ever have of them. It goes through an owner's
//! marks a window at a time (up to [`SCAN_WINDOW`] notifications): it reads the marked rows a page
//! at a time (one row per campaign, its clients aggregated) and keeps only their fingerprints
//! (16 bytes each), reads the output topic back once from the window's oldest mark, then reads the
//! rows again a page at a time and sends only the notifications the topic lacks (encoded by the
//! data path's own encoder, with backpressure from the producer's queue, confirmed a chunk at a
//! time), and deletes the window's marks. Its memory is bounded by the window and the page,
//! whatever the backlog.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;
use tokio_postgres::Client;

use super::outbox;
use crate::cache::snapshot::ClientId;
use crate::campaign::Campaign;
use crate::kafka::{scan, KafkaFailure, Producer, ProducerSettings};
use crate::notification::{fingerprint_of, OutputEncoder, Wanted};
use crate::postgres::describe;

/// One read-back of the output topic looks for the notifications of at most about this many
/// marks' worth (a window ends with the mark that reaches it; a mark lists at most 10 000), by
/// their 16-byte fingerprints.
pub const SCAN_WINDOW: usize = 1_000_000;

/// Marked rows are read and sent this many at a time.
pub const PAGE_NOTIFICATIONS: usize = 50_000;

/// Recovered notifications are handed to the producer in chunks of this many, each confirmed
/// before the next.
const SEND_CHUNK: usize = 5_000;

/// Where recovered notifications go: the output topic, with the service's producer settings; and
/// until when they may go: nothing of a campaign is sent later than `end_grace_secs` after its
/// end (its rows are withdrawn from Postgres instead).
#[derive(Debug, Clone)]
pub struct OutputTarget {
    pub producer: ProducerSettings,
    pub topic: String,
    pub end_grace_secs: i64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub owners: usize,
    pub marked: usize,
    pub already_sent: usize,
    pub resent: usize,
    /// Not sent, and withdrawn from Postgres: their campaign's end (plus the grace) had passed.
    pub expired: usize,
}

impl std::ops::AddAssign for RecoveryReport {
    fn add_assign(&mut self, r: RecoveryReport) {
        self.owners += r.owners;
        self.marked += r.marked;
        self.already_sent += r.already_sent;
        self.resent += r.resent;
        self.expired += r.expired;
    }
}

/// Which owners' locks have been seen free, and since when: an owner is taken over only once its
/// lock has been free at every look for `settle`.
///
/// An owner's lock is free when its process died, and also for a moment when a live process lost
/// its connection to Postgres. A dead owner may have had produce requests on their way when it
/// died; once its lock has been free for longer than the producer's message timeout, every one of
/// them has landed or failed, and the read-back sees all that landed.
#[derive(Debug)]
pub struct Takeover {
    settle: Duration,
    free_since: HashMap<i32, Instant>,
}

impl Takeover {
    pub fn new(settle: Duration) -> Takeover {
        Takeover {
            settle,
            free_since: HashMap::new(),
        }
    }

    /// Records one look at `owner`'s lock at `now`; true when the owner is due for takeover.
    pub fn due(&mut self, owner: i32, lock_free: bool, now: Instant) -> bool {
        if !lock_free {
            self.free_since.remove(&owner);
            return false;
        }
        let settle = self.settle;
        let since = *self.free_since.entry(owner).or_insert_with(|| {
            log::info!(
                "ledger: owner {owner} left marks and holds no lock; taking them over once it has \
                 been gone for {settle:?}"
            );
            now
        });
        now.duration_since(since) >= settle
    }

    /// Forgets owners that no longer have marks to take over.
    pub fn keep_only(&mut self, owners: &[i32]) {
        self.free_since.retain(|o, _| owners.contains(o));
    }

    pub fn taken_over(&mut self, owner: i32) {
        self.free_since.remove(&owner);
    }
}

/// Looks at every owner other than `me` with marks made before `started_ms` (this process's
/// start) or at least `min_age_secs` old, and finishes the work of those [`Takeover`] says are
/// due: sends what the output topic lacks, then clears the marks.
pub async fn recover(
    client: &Client,
    output: &OutputTarget,
    me: i32,
    (started_ms, min_age_secs): (i64, f64),
    takeover: &mut Takeover,
) -> Result<RecoveryReport, String> {
    let owners = outbox::owners_with_marks(client, me, started_ms, min_age_secs)
        .await
        .map_err(|e| describe(&e))?;
    takeover.keep_only(&owners);
    let mut report = RecoveryReport::default();
    for owner in owners {
        let free = outbox::try_owner_lock(client, owner)
            .await
            .map_err(|e| describe(&e))?;
        if !takeover.due(owner, free, Instant::now()) {
            if free {
                outbox::release_owner_lock(client, owner)
                    .await
                    .map_err(|e| describe(&e))?;
            }
            continue;
        }
        let result = recover_owner(client, output, owner).await;
        let _ = outbox::release_owner_lock(client, owner).await;
        report += result?;
        takeover.taken_over(owner);
    }
    Ok(report)
}

/// One campaign's marked rows of a page: the campaign as it was written, and its clients.
struct MarkedCampaign {
    campaign: Campaign,
    trigger_datetime_created: i64,
    clients: Vec<String>,
}

/// Finishes one dead owner's marks, a window at a time; the caller holds the owner's lock.
async fn recover_owner(
    client: &Client,
    output: &OutputTarget,
    owner: i32,
) -> Result<RecoveryReport, String> {
    let mut report = RecoveryReport {
        owners: 1,
        ..RecoveryReport::default()
    };
    let mut producer = None;
    loop {
        let window = outbox::marks_page(client, owner, SCAN_WINDOW)
            .await
            .map_err(|e| describe(&e))?;
        if window.ids.is_empty() {
            break;
        }
        let mut wanted = Wanted::with_capacity(window.feedback_ids.len());
        for page in window.feedback_ids.chunks(PAGE_NOTIFICATIONS) {
            for m in marked_campaigns(client, page).await? {
                wanted.extend(m.clients.iter().map(|c| fingerprint_of(&m.campaign, c)));
            }
        }
        let marked = wanted.len();
        let (settings, topic, since_ms) = (
            output.producer.clone(),
            output.topic.clone(),
            window.since_ms,
        );
        let found = tokio::task::spawn_blocking(move || {
            scan::find_sent(&settings, &topic, since_ms, &wanted, scan::STALL_LIMIT)
        })
        .await
        .map_err(|e| format!("scan task failed: {e}"))??;
        let mut expired = 0;
        if found.len() < marked {
            if producer.is_none() {
                producer = Some(
                    Producer::create(&output.producer, &[])
                        .map_err(|e| format!("recovery producer: {e}"))?,
                );
            }
            let producer = producer.as_ref().expect("created above");
            let deadline_ms = |c: &Campaign| {
                let last = c
                    .adv_campaign_datetime_end
                    .saturating_add(output.end_grace_secs);
                last.saturating_add(1).saturating_mul(1000)
            };
            for page in window.feedback_ids.chunks(PAGE_NOTIFICATIONS) {
                for m in marked_campaigns(client, page).await? {
                    let deadline = deadline_ms(&m.campaign);
                    let unsent = send_missing(producer, &output.topic, &m, &found, deadline)
                        .await
                        .map_err(|e| format!("recovery send: {e}"))?;
                    if !unsent.is_empty() {
                        outbox::delete_rows(client, page, &m.campaign, &unsent)
                            .await
                            .map_err(|e| describe(&e))?;
                        expired += unsent.len();
                    }
                }
            }
        }
        outbox::clear_marks(client, &window.ids)
            .await
            .map_err(|e| describe(&e))?;
        report.marked += marked;
        report.already_sent += found.len();
        report.resent += marked - found.len() - expired;
        report.expired += expired;
        log::info!(
            "ledger: owner {owner}: {} marks done ({marked} notifications, {} already in {}, {} sent \
             now, {expired} withdrawn: their campaign had ended)",
            window.ids.len(),
            found.len(),
            output.topic,
            marked - found.len() - expired
        );
    }
    if let Some(producer) = producer {
        producer.close("ledger recovery").await;
    }
    log::info!(
        "ledger: recovered owner {owner}: {} notifications were marked, {} already in {}, {} sent now",
        report.marked,
        report.already_sent,
        output.topic,
        report.resent
    );
    Ok(report)
}

/// The marked rows, one entry per campaign and trigger time (the campaign's text is read once,
/// not once per row).
async fn marked_campaigns(
    client: &Client,
    feedback_ids: &[i32],
) -> Result<Vec<MarkedCampaign>, String> {
    let rows = client
        .query(
            "SELECT restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, \
                    adv_campaign_owner_contact, adv_campaign_datetime_start, \
                    adv_campaign_datetime_end, datetime_created, trigger_datetime_created, \
                    array_agg(client_id) \
             FROM public.subscribers_feedback WHERE id = ANY($1) \
             GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
            &[&feedback_ids],
        )
        .await
        .map_err(|e| describe(&e))?;
    rows.iter()
        .map(|row| {
            Ok(MarkedCampaign {
                campaign: Campaign {
                    restaurant_id: row.try_get(0)?,
                    adv_campaign_id: row.try_get(1)?,
                    adv_campaign_content: row.try_get(2)?,
                    adv_campaign_owner: row.try_get(3)?,
                    adv_campaign_owner_contact: row.try_get(4)?,
                    adv_campaign_datetime_start: row.try_get(5)?,
                    adv_campaign_datetime_end: row.try_get(6)?,
                    datetime_created: row.try_get(7)?,
                },
                trigger_datetime_created: i64::from(row.try_get::<_, i32>(8)?),
                clients: row.try_get(9)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| describe(&e))
}

/// Sends the campaign's notifications the topic lacks through the service's one producer path,
/// keyed by client, placed by librdkafka's default partitioner (where the Kafka writer places
/// them too), a chunk at a time, none at or after `deadline_ms` (the campaign's end plus the
/// grace). Returns the clients not sent because the deadline came first.
async fn send_missing(
    producer: &Producer,
    topic: &str,
    marked: &MarkedCampaign,
    found: &Wanted,
    deadline_ms: i64,
) -> Result<Vec<String>, KafkaFailure> {
    let encoder = OutputEncoder::new(&marked.campaign, marked.trigger_datetime_created);
    let mut missing = marked
        .clients
        .iter()
        .filter(|c| !found.contains(&fingerprint_of(&marked.campaign, c)));
    let mut deliveries = Vec::with_capacity(SEND_CHUNK);
    let mut payload = Vec::with_capacity(512);
    for client in missing.by_ref() {
        if deliveries.is_empty() && crate::clock::unix_ms() >= deadline_ms {
            let mut unsent = vec![client.clone()];
            unsent.extend(missing.cloned());
            return Ok(unsent);
        }
        payload.clear();
        encoder.encode(ClientId::Text(client), &mut payload);
        let record = FutureRecord::to(topic)
            .payload(&payload)
            .key(client.as_bytes());
        match producer.enqueue(record).await {
            Ok(delivery) => deliveries.push(delivery),
            Err(refused) => {
                // What was handed over must have landed or failed before the next sweep reads
                // the topic back.
                let _ = Producer::confirm(deliveries).await;
                return Err(refused);
            }
        }
        if deliveries.len() == SEND_CHUNK {
            Producer::confirm(deliveries.drain(..)).await?;
        }
    }
    Producer::confirm(deliveries).await?;
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_due_only_once_its_lock_has_been_free_at_every_look_for_the_settle_time() {
        let settle = Duration::from_secs(30);
        let mut t = Takeover::new(settle);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!t.due(7, true, at(0)), "first seen free");
        assert!(!t.due(7, true, at(29)));
        // It came back (a live instance that reconnected): the wait starts over.
        assert!(!t.due(7, false, at(31)));
        assert!(!t.due(7, true, at(35)));
        assert!(!t.due(7, true, at(64)));
        assert!(t.due(7, true, at(65)));
        // Another owner has its own clock.
        assert!(!t.due(8, true, at(65)));
        t.taken_over(7);
        assert!(!t.due(7, true, at(100)), "a new loss is a new wait");
        t.keep_only(&[]);
        assert!(!t.due(8, true, at(200)), "forgotten owners start over");
    }
}
