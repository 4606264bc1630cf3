//! Recovery: fencing owners whose lease expired, and finishing the work of fenced owners that
//! left marks in the outbox (see "One owner at a time" in docs/design.md).
//!
//! A sweep fences every owner whose lease has expired ([`fence_expired`]), then claims the
//! owners whose settle time has passed since their fence, one at a time ([`claim`]): their last
//! produce requests have landed or failed by then, so the read-back sees every notification they
//! will ever have sent. It ends the claimed owner's remaining sessions (a frozen process's are
//! still open), then goes through its marks a window at a time (up to [`SCAN_WINDOW`]
//! notifications): it reads the marked rows a page at a time (one row per campaign, its clients
//! aggregated) and keeps only their fingerprints (16 bytes each), reads the output topic back
//! once from the window's oldest mark (in the dead owner's clock), then reads the rows again a
//! page at a time and sends only the notifications the topic lacks (encoded by the data path's
//! own encoder, through the producer path fenced by this process's lease, confirmed a chunk at a
//! time), and deletes the window's marks. Its memory is bounded by the window and the page,
//! whatever the backlog. Its progress is in Postgres (the marks left, `recovered_by`), so a
//! restart goes on where it stopped.
//!
//! Owners with marks and no row (instances of a version before leases) are judged by their
//! advisory lock, as those versions judged each other ([`Takeover`]), and given a fenced row once
//! it has been free for their settle time.
//!
//! Its parts: [`owners`] (the statements over the owners' rows: fence, claim, end the sessions,
//! forget; and [`Takeover`]), [`error`] (why a sweep stopped: [`RecoveryError`]) and this file
//! (the [`Recoverer`]: an owner's marks read, the topic read back, what it lacks sent).

use std::sync::Arc;

use actix::Recipient;
use tokio_postgres::Client;

use self::send::{campaign_of, deadline_ms, send_missing, MarkedCampaign};
use super::outbox;
use crate::campaign::Campaign;
use crate::events::{DeadLettered, Event, NotificationsWithdrawn};
use crate::kafka::{scan, Producer, ProducerSettings, TransactionalIds};
use crate::lease::Lease;
use crate::metrics::{DeadLetterReason, Metrics, WithdrawReason};
use crate::notification::{fingerprint_of, SourceRef, Wanted};
use crate::postgres::describe;
use crate::sinks::dead_letter_writer::{DeadLetter, DeadLetterSink};
use crate::sinks::kafka_writer::TRANSACTION_TIMEOUT;
use crate::sinks::Write;

mod error;
mod owners;
pub(crate) mod send;

pub use error::RecoveryError;
pub use owners::{
    claim, end_sessions, fence_expired, fence_legacy, forget, legacy_owners, Claimed, Fenced,
    Takeover,
};

/// One read-back of the output topic looks for the notifications of at most about this many
/// marks' worth (a window ends with the mark that reaches it; a mark lists at most 10 000), by
/// their 16-byte fingerprints.
pub const SCAN_WINDOW: usize = 1_000_000;

/// Marked rows are read and sent this many at a time.
pub const PAGE_NOTIFICATIONS: usize = 50_000;

/// Recovered notifications are handed to the producer in chunks of this many, each confirmed
/// before the next.
pub(crate) const SEND_CHUNK: usize = 5_000;

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
    /// Not sent, and withdrawn from Postgres: their campaign was recalled.
    pub recalled: usize,
    /// Refused by the broker for good: withdrawn from Postgres, their campaign dead-lettered.
    pub refused: usize,
}

/// Rows recovery withdrew from Postgres, by reason.
#[derive(Debug, Default)]
struct Withdrawn {
    expired: usize,
    recalled: usize,
    refused: usize,
}

impl std::ops::AddAssign for RecoveryReport {
    fn add_assign(&mut self, r: RecoveryReport) {
        self.owners += r.owners;
        self.marked += r.marked;
        self.already_sent += r.already_sent;
        self.resent += r.resent;
        self.expired += r.expired;
        self.recalled += r.recalled;
        self.refused += r.refused;
    }
}

/// What recovery needs besides the connection: where notifications go, this process's lease
/// (every send is fenced by it), where refused campaigns go, and the counters.
#[derive(Clone)]
pub struct Recoverer {
    pub output: OutputTarget,
    /// Set when the output is written in transactions: recovery first fences the dead owner's
    /// producer by initialising its transactional id (its open transaction is ended and never read
    /// committed), then sends what the topic lacks in transactions of that id.
    pub transactional_ids: Option<TransactionalIds>,
    pub lease: Lease,
    pub dead_letters: Option<Recipient<Write<DeadLetterSink>>>,
    pub metrics: Metrics,
}

impl Recoverer {
    /// Claims and finishes settled owners, one after another, until none is left; the sessions
    /// they still have are ended first.
    pub async fn recover_settled(&self, client: &Client) -> Result<RecoveryReport, RecoveryError> {
        let me = self.lease.owner();
        let mut report = RecoveryReport::default();
        loop {
            self.lease.check()?;
            let claimed = claim(client, me)
                .await
                .map_err(RecoveryError::postgres("claiming a settled owner"))?;
            let Some(claimed) = claimed else {
                return Ok(report);
            };
            match end_sessions(client, claimed.owner).await {
                Ok(0) => {}
                Ok(n) => log::info!(
                    "ledger: ended {n} Postgres session(s) owner {} still had",
                    claimed.owner
                ),
                Err(e) => log::warn!(
                    "ledger: cannot end the sessions of owner {}: {}",
                    claimed.owner,
                    describe(&e)
                ),
            }
            report += self
                .recover_owner(client, claimed)
                .await
                .map_err(RecoveryError::recovering(claimed.owner))?;
            forget(client, claimed.owner, me)
                .await
                .map_err(RecoveryError::postgres("forgetting a recovered owner"))?;
        }
    }
}

impl Recoverer {
    /// Finishes one claimed owner's marks, a window at a time.
    async fn recover_owner(
        &self,
        client: &Client,
        claimed: Claimed,
    ) -> Result<RecoveryReport, RecoveryError> {
        let (output, owner) = (&self.output, claimed.owner);
        let mut report = RecoveryReport {
            owners: 1,
            ..RecoveryReport::default()
        };
        let mut producer = self.fence_producer(owner).await?;
        loop {
            let window = outbox::marks_page(client, owner, SCAN_WINDOW)
                .await
                .map_err(RecoveryError::postgres("reading the marks"))?;
            if window.ids.is_empty() {
                break;
            }
            report += self
                .recover_window(client, claimed, &window, &mut producer)
                .await?;
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

    /// With transactions the broker fences the dead owner's producer now: what it had not
    /// committed is never read committed, and nothing of it can come later. The producer
    /// returned sends what the topic lacks in transactions of the owner's id.
    async fn fence_producer(&self, owner: i32) -> Result<Option<Producer>, RecoveryError> {
        match &self.transactional_ids {
            Some(ids) => {
                let fenced = Producer::transactional(
                    &self.output.producer,
                    &ids.of(owner),
                    TRANSACTION_TIMEOUT,
                )
                .await
                .map_err(|source| RecoveryError::FenceProducer { owner, source })?;
                Ok(Some(fenced.fenced_by(self.lease.clone())))
            }
            None => Ok(None),
        }
    }

    /// One window of the owner's marks: the output topic read back for their notifications, what
    /// it lacks sent (`producer` is made on first need), then the marks deleted.
    async fn recover_window(
        &self,
        client: &Client,
        claimed: Claimed,
        window: &outbox::Marks,
        producer: &mut Option<Producer>,
    ) -> Result<RecoveryReport, RecoveryError> {
        let (output, owner) = (&self.output, claimed.owner);
        let wanted = fingerprints(client, window).await?;
        let marked = wanted.len();
        let found = self.find_sent(claimed, window, wanted).await?;
        let Withdrawn {
            expired,
            recalled,
            refused,
        } = match found.len() < marked {
            true => self.send_lacking(client, window, &found, producer).await?,
            false => Withdrawn::default(),
        };
        outbox::clear_marks(client, &window.ids)
            .await
            .map_err(RecoveryError::postgres("clearing the recovered marks"))?;
        let resent = marked - found.len() - expired - recalled - refused;
        log::info!(
            "ledger: owner {owner}: {} marks done ({marked} notifications, {} already in {}, \
             {resent} sent now, {expired} withdrawn: their campaign had ended, {recalled} \
             withdrawn: their campaign is recalled, {refused} withdrawn: refused by the broker)",
            window.ids.len(),
            found.len(),
            output.topic,
        );
        Ok(RecoveryReport {
            owners: 0,
            marked,
            already_sent: found.len(),
            resent,
            expired,
            recalled,
            refused,
        })
    }

    /// Which of `wanted` the output topic has, read back once from the window's oldest mark.
    async fn find_sent(
        &self,
        claimed: Claimed,
        window: &outbox::Marks,
        wanted: Wanted,
    ) -> Result<Wanted, RecoveryError> {
        // The topic's timestamps are the dead producer's clock; the marks', Postgres'.
        let since_ms = window.since_ms - claimed.clock_offset_ms.max(0);
        let (settings, topic) = (self.output.producer.clone(), self.output.topic.clone());
        tokio::task::spawn_blocking(move || {
            scan::find_sent(&settings, &topic, since_ms, &wanted, scan::STALL_LIMIT)
        })
        .await
        .map_err(RecoveryError::ScanTask)?
        .map_err(RecoveryError::Scan)
    }

    /// Sends the window's notifications that `found` lacks, a page of rows at a time (in one
    /// transaction when the output has them); the rows of those not sent, their campaign ended or
    /// recalled or the broker refused them, are withdrawn. Returns how many were withdrawn for
    /// each reason.
    async fn send_lacking(
        &self,
        client: &Client,
        window: &outbox::Marks,
        found: &Wanted,
        producer: &mut Option<Producer>,
    ) -> Result<Withdrawn, RecoveryError> {
        let output = &self.output;
        if producer.is_none() {
            let created =
                Producer::create(&output.producer, &[]).map_err(RecoveryError::Producer)?;
            *producer = Some(created.fenced_by(self.lease.clone()));
        }
        let producer = producer.as_ref().expect("created above");
        let transactional = self.transactional_ids.is_some();
        if transactional {
            producer.begin().map_err(RecoveryError::Transaction)?;
        }
        let mut withdrawn = Withdrawn::default();
        for page in window.feedback_ids.chunks(PAGE_NOTIFICATIONS) {
            for m in marked_campaigns(client, page).await? {
                // Recalled: nothing is sent, what Kafka lacks is withdrawn.
                let deadline = match m.recalled {
                    true => i64::MIN,
                    false => deadline_ms(&m.campaign, output.end_grace_secs),
                };
                let unsent = send_missing(producer, &output.topic, &m, found, deadline)
                    .await
                    .map_err(RecoveryError::Send)?;
                if !unsent.expired.is_empty() {
                    self.delete_rows(client, page, &m.campaign, &unsent.expired)
                        .await?;
                    match m.recalled {
                        true => withdrawn.recalled += unsent.expired.len(),
                        false => withdrawn.expired += unsent.expired.len(),
                    }
                }
                if let Some(reason) = &unsent.reason {
                    self.refuse(client, page, &m, &unsent.refused, reason)
                        .await?;
                    withdrawn.refused += unsent.refused.len();
                }
            }
        }
        if transactional {
            producer
                .commit(TRANSACTION_TIMEOUT)
                .await
                .map_err(RecoveryError::Transaction)?;
        }
        Ok(withdrawn)
    }

    /// Deletes the rows of `campaign` for `clients`, fenced by this process's lease.
    async fn delete_rows(
        &self,
        client: &Client,
        feedback_ids: &[i32],
        campaign: &Campaign,
        clients: &[String],
    ) -> Result<(), RecoveryError> {
        outbox::delete_rows(client, feedback_ids, campaign, clients, self.lease.owner())
            .await
            .map(|_| ())
            .map_err(RecoveryError::postgres("withdrawing rows"))
    }

    /// Notifications the broker refused for good: the campaign goes to the dead-letter topic
    /// (its original message, when the lifecycle still has it), then its refused rows are
    /// withdrawn from Postgres, as on the data path.
    async fn refuse(
        &self,
        client: &Client,
        feedback_ids: &[i32],
        marked: &MarkedCampaign,
        clients: &[String],
        reason: &str,
    ) -> Result<(), RecoveryError> {
        let campaign = &marked.campaign;
        log::warn!(
            "ledger: the broker refused {} notifications of campaign {} of restaurant {} for good \
             ({reason}); withdrawing them and dead-lettering the campaign",
            clients.len(),
            campaign.adv_campaign_id,
            campaign.restaurant_id
        );
        if let Some(dead_letters) = &self.dead_letters {
            let letter = self.letter(client, campaign, clients.len(), reason).await?;
            let code = letter.code;
            match dead_letters.send(Write(Arc::new(letter))).await {
                Ok(Ok(())) => DeadLettered { reason: code }.emit(&self.metrics),
                Ok(Err(e)) => return Err(RecoveryError::DeadLetter(e)),
                Err(e) => return Err(RecoveryError::DeadLetterUnsent(e)),
            }
        }
        self.delete_rows(client, feedback_ids, campaign, clients)
            .await?;
        NotificationsWithdrawn {
            reason: WithdrawReason::Refused,
            notifications: clients.len(),
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// The dead letter of a campaign refused during recovery: its original message and where it
    /// came from, as the lifecycle kept them; else the campaign as the rows have it.
    async fn letter(
        &self,
        client: &Client,
        campaign: &Campaign,
        refused: usize,
        reason: &str,
    ) -> Result<DeadLetter, RecoveryError> {
        let kept = client
            .query_opt(
                "SELECT source_topic, source_partition, source_offset, message_key, message
                 FROM public.campaign_notifier_campaigns
                 WHERE restaurant_id = $1 AND adv_campaign_id = $2",
                &[&campaign.restaurant_id, &campaign.adv_campaign_id],
            )
            .await
            .map_err(RecoveryError::postgres(
                "reading the original message of a refused campaign",
            ))?;
        let reason = format!(
            "refused by the kafka sink during recovery: {reason} ({refused} notifications)"
        );
        let (source, key, payload) = match kept {
            Some(row) => (
                SourceRef {
                    topic: Arc::from(row.get::<_, String>(0)),
                    partition: row.get(1),
                    offset: row.get(2),
                    timestamp_ms: None,
                },
                row.get::<_, Option<Vec<u8>>>(3),
                row.get::<_, Vec<u8>>(4),
            ),
            None => (
                SourceRef {
                    topic: Arc::from(""),
                    partition: -1,
                    offset: -1,
                    timestamp_ms: None,
                },
                None,
                // The original message is gone: the campaign as the input carries it.
                campaign.input_json().into_bytes(),
            ),
        };
        Ok(DeadLetter {
            source,
            key,
            payload: Some(payload),
            code: DeadLetterReason::SinkRefused,
            reason,
        })
    }
}

/// The fingerprints of the notifications the window's marks list, their rows read a page at a
/// time.
async fn fingerprints(client: &Client, window: &outbox::Marks) -> Result<Wanted, RecoveryError> {
    let mut wanted = Wanted::with_capacity(window.feedback_ids.len());
    for page in window.feedback_ids.chunks(PAGE_NOTIFICATIONS) {
        for m in marked_campaigns(client, page).await? {
            wanted.extend(m.clients.iter().map(|c| fingerprint_of(&m.campaign, c)));
        }
    }
    Ok(wanted)
}

/// The marked rows, one entry per campaign and trigger time (the campaign's text is read once,
/// not once per row).
async fn marked_campaigns(
    client: &Client,
    feedback_ids: &[i32],
) -> Result<Vec<MarkedCampaign>, RecoveryError> {
    let rows = client
        .query(
            "SELECT restaurant_id, adv_campaign_id, adv_campaign_content, adv_campaign_owner, \
                    adv_campaign_owner_contact, adv_campaign_datetime_start, \
                    adv_campaign_datetime_end, datetime_created, \
                    trigger_datetime_created::int8, array_agg(client_id), \
                    EXISTS (SELECT 1 FROM public.campaign_notifier_campaigns c \
                            WHERE c.restaurant_id = f.restaurant_id \
                              AND c.adv_campaign_id = f.adv_campaign_id \
                              AND c.recalled_at IS NOT NULL) \
             FROM public.subscribers_feedback f WHERE id = ANY($1) \
             GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
            &[&feedback_ids],
        )
        .await
        .map_err(RecoveryError::postgres("reading the marked rows"))?;
    rows.iter()
        .map(|row| {
            Ok(MarkedCampaign {
                campaign: campaign_of(row)?,
                // int8 in the statement, whether the column is the brief's int4 or migrated.
                trigger_datetime_created: row.try_get(8)?,
                clients: row.try_get(9)?,
                recalled: row.try_get(10)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(RecoveryError::postgres("reading the marked rows"))
}
