//! `Enricher`: turns one campaign message into one notification batch and hands the same batch to
//! both writers.
//!
//! It validates the message, applies the active-window rule at processing time, and joins with
//! the newest subscriber snapshot it was sent. It does no I/O itself. The batch goes to the
//! Postgres writer first, which inserts the rows that are new (a client already notified of this
//! campaign gets nothing) and marks them in the ledger; then exactly those go to the Kafka writer;
//! then the marks are cleared. Its reply to the reader resolves once both writers confirmed,
//! which is what lets the reader commit the offset.

use std::sync::Arc;

use actix::prelude::*;

use crate::cache::snapshot::Snapshot;
use crate::campaign::{parse_campaign, split_inline_key, Activity, Rejection};
use crate::ledger::Tokens;
use crate::messages::{
    CampaignOutcome, CampaignRecord, ClearOutbox, ProcessCampaign, SnapshotLoaded,
};
use crate::metrics::Metrics;
use crate::notification::NotificationBatch;
use crate::sinks::dead_letter_writer::{DeadLetter, DeadLetterSink};
use crate::sinks::kafka_writer::{KafkaJob, KafkaSink};
use crate::sinks::pg_writer::{PgJob, PgSink};
use crate::sinks::{SinkError, Write};

pub struct Enricher {
    snapshot: Option<Arc<Snapshot>>,
    kafka: Recipient<Write<KafkaSink>>,
    postgres: Recipient<Write<PgSink>>,
    ledger: Recipient<ClearOutbox>,
    /// Where unusable messages go; `None` when no dead-letter topic is configured.
    dead_letters: Option<Recipient<Write<DeadLetterSink>>>,
    tokens: Tokens,
    max_campaign_bytes: usize,
    metrics: Metrics,
    /// The clock, replaceable in tests.
    now: fn() -> i64,
}

impl Enricher {
    pub fn new(
        kafka: Recipient<Write<KafkaSink>>,
        postgres: Recipient<Write<PgSink>>,
        ledger: Recipient<ClearOutbox>,
        dead_letters: Option<Recipient<Write<DeadLetterSink>>>,
        owner: i32,
        max_campaign_bytes: usize,
        metrics: Metrics,
    ) -> Enricher {
        Enricher {
            snapshot: None,
            kafka,
            postgres,
            ledger,
            dead_letters,
            tokens: Tokens::new(owner),
            max_campaign_bytes,
            metrics,
            now: crate::clock::unix_secs,
        }
    }

    /// Everything up to the join: what to write, or why there is nothing to write (and, for a
    /// message the service cannot use, the dead letter that keeps it).
    fn prepare(
        &self,
        msg: ProcessCampaign,
    ) -> Result<NotificationBatch, (CampaignOutcome, Option<Box<DeadLetter>>)> {
        let record = msg.0;
        let payload = record.payload.as_deref().unwrap_or_default();
        let (_inline_key, json) = split_inline_key(payload);
        let letter = |code: &'static str, reason: String| {
            let CampaignRecord {
                source,
                key,
                payload,
            } = &record;
            Box::new(DeadLetter {
                source: source.clone(),
                key: key.clone(),
                payload: payload.clone(),
                code,
                reason,
            })
        };
        let campaign = match parse_campaign(json, self.max_campaign_bytes) {
            Ok(c) => c,
            Err(reason) => {
                self.reject(&record.source, &reason);
                let dead = letter(reason.code(), reason.to_string());
                return Err((CampaignOutcome::Rejected(reason), Some(dead)));
            }
        };
        let now = (self.now)();
        match campaign.activity(now) {
            Activity::Active => {}
            Activity::NotStarted => {
                let reason = format!(
                    "campaign starts at {} but arrived at {now}; it is not scheduled for later",
                    campaign.adv_campaign_datetime_start
                );
                return Err((
                    CampaignOutcome::NotStarted,
                    Some(letter("not_started", reason)),
                ));
            }
            Activity::Ended => {
                let reason = format!(
                    "campaign ended at {} but arrived at {now}",
                    campaign.adv_campaign_datetime_end
                );
                return Err((CampaignOutcome::Ended, Some(letter("ended", reason))));
            }
        }
        let entry = self
            .snapshot
            .as_ref()
            .and_then(|s| s.lookup(&campaign.restaurant_id).map(|e| (s, e)));
        let Some((snapshot, entry)) = entry else {
            return Err((CampaignOutcome::NoSubscribers, None));
        };
        Ok(NotificationBatch::new(
            campaign,
            now,
            record.source,
            snapshot.clone(),
            entry,
        ))
    }

    fn reject(&self, source: &crate::notification::SourceRef, reason: &Rejection) {
        self.metrics
            .campaigns_rejected
            .with_label_values(&[reason.code()])
            .inc();
        log::warn!("rejected campaign message at {source}: {reason}");
    }
}

impl Actor for Enricher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<SnapshotLoaded> for Enricher {
    type Result = ();

    fn handle(&mut self, msg: SnapshotLoaded, _: &mut Context<Self>) {
        self.snapshot = Some(msg.0);
    }
}

impl Handler<ProcessCampaign> for Enricher {
    type Result = ResponseFuture<CampaignOutcome>;

    fn handle(&mut self, msg: ProcessCampaign, _: &mut Context<Self>) -> Self::Result {
        let batch = match self.prepare(msg) {
            Ok(batch) => Arc::new(batch),
            Err((outcome, None)) => return Box::pin(async move { outcome }),
            Err((outcome, Some(letter))) => {
                let Some(dead_letters) = self.dead_letters.clone() else {
                    return Box::pin(async move { outcome });
                };
                let metrics = self.metrics.clone();
                let code = letter.code;
                return Box::pin(async move {
                    match confirmed(
                        "dead_letter",
                        dead_letters.send(Write(Arc::new(*letter))).await,
                    ) {
                        Ok(()) => {
                            metrics.dead_letters.with_label_values(&[code]).inc();
                            outcome
                        }
                        Err(failed) => failed,
                    }
                });
            }
        };
        self.metrics.notifications_built.inc_by(batch.len() as u64);
        let job = PgJob {
            first_token: self.tokens.take(
                batch
                    .len()
                    .div_ceil(crate::sinks::pg_writer::ROWS_PER_STATEMENT),
            ),
            batch: batch.clone(),
        };
        let to_postgres = self.postgres.send(Write(Arc::new(job)));
        let (kafka, ledger) = (self.kafka.clone(), self.ledger.clone());
        Box::pin(async move {
            let inserted = match confirmed("postgres", to_postgres.await) {
                Ok(inserted) => inserted,
                Err(outcome) => return outcome,
            };
            if inserted.clients.is_empty() {
                return CampaignOutcome::AlreadyNotified;
            }
            let notifications = inserted.clients.len();
            let job = KafkaJob {
                batch,
                clients: inserted.clients,
                created_ms: crate::clock::unix_ms(),
            };
            match confirmed("kafka", kafka.send(Write(Arc::new(job))).await) {
                Ok(()) => {}
                // Refused for good: keeping the marks would only make every later recovery
                // try, and fail, again. The error is logged by the writer and the reader.
                Err(outcome @ CampaignOutcome::SinkFailed { .. }) => {
                    ledger.do_send(ClearOutbox(inserted.outbox_ids));
                    return outcome;
                }
                Err(outcome) => return outcome,
            }
            ledger.do_send(ClearOutbox(inserted.outbox_ids));
            CampaignOutcome::Delivered { notifications }
        })
    }
}

/// A writer's answer, or the outcome that reports why there is none.
fn confirmed<T>(
    sink: &'static str,
    answer: Result<Result<T, SinkError>, MailboxError>,
) -> Result<T, CampaignOutcome> {
    match answer {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(SinkError::Permanent(reason))) => Err(CampaignOutcome::SinkFailed { sink, reason }),
        // Not written and not refused: the campaign must be read again.
        Ok(Err(e)) => Err(CampaignOutcome::Unconfirmed {
            sink,
            reason: e.to_string(),
        }),
        Err(e) => Err(CampaignOutcome::Unconfirmed {
            sink,
            reason: format!("writer unavailable: {e}"),
        }),
    }
}
