//! Delivery: the order in which a campaign's notifications reach the sinks, which is what makes
//! "nothing lost, nothing twice" hold.
//!
//! 1. Postgres first: the Postgres writer inserts the rows that are new (a client already notified
//!    of this campaign gets nothing) and, in the same transaction, an outbox mark listing them.
//! 2. Then exactly those rows go to the Kafka writer.
//! 3. Once the broker acknowledged them, the marks are cleared (by the ledger, off the data path).
//!
//! Only then is the campaign `Delivered`, which lets the reader store its offset. A message the
//! service cannot use goes to the dead-letter writer instead, and counts as done once that write
//! is confirmed.
//!
//! Must not touch: what a campaign is (validation, the active window, the join are the
//! enricher's) or how a sink writes (the sinks').

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;

use crate::events::{DeadLettered, Event};
use crate::ledger::Tokens;
use crate::messages::{CampaignOutcome, ClearOutbox};
use crate::metrics::SinkKind;
use crate::notification::NotificationBatch;
use crate::shared::Shared;
use crate::sinks::dead_letter_writer::{DeadLetter, DeadLetterSink};
use crate::sinks::kafka_writer::{KafkaJob, KafkaSink};
use crate::sinks::pg_writer::{PgJob, PgSink};
use crate::sinks::{SinkError, Write};

/// Where delivery sends things.
pub struct DeliveryTargets {
    pub postgres: Recipient<Write<PgSink>>,
    pub kafka: Recipient<Write<KafkaSink>>,
    pub ledger: Recipient<ClearOutbox>,
    /// `None` when no dead-letter topic is configured: unusable messages are only logged and
    /// counted.
    pub dead_letters: Option<Recipient<Write<DeadLetterSink>>>,
}

pub struct Delivery {
    targets: DeliveryTargets,
    tokens: Tokens,
    shared: Shared,
}

impl Delivery {
    /// `owner` is this process's ledger owner id: the tokens of its outbox marks carry it.
    pub fn new(targets: DeliveryTargets, owner: i32, shared: Shared) -> Delivery {
        Delivery {
            targets,
            tokens: Tokens::new(owner),
            shared,
        }
    }

    /// Writes `batch` to both sinks in the order above; resolves with the campaign's outcome.
    pub fn deliver(
        &mut self,
        batch: Arc<NotificationBatch>,
    ) -> impl Future<Output = CampaignOutcome> + 'static {
        let job = PgJob::new(batch.clone(), &mut self.tokens);
        let to_postgres = self.targets.postgres.send(Write(Arc::new(job)));
        let (kafka, ledger) = (self.targets.kafka.clone(), self.targets.ledger.clone());
        let clock = self.shared.clock;
        async move {
            let inserted = match confirmed(SinkKind::Postgres, to_postgres.await) {
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
                created_ms: clock.now_ms(),
            };
            match confirmed(SinkKind::Kafka, kafka.send(Write(Arc::new(job))).await) {
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
        }
    }

    /// Keeps an unusable message in the dead-letter topic; resolves with `outcome` once that is
    /// confirmed (at once when there is no dead-letter topic).
    pub fn dead_letter(
        &self,
        letter: DeadLetter,
        outcome: CampaignOutcome,
    ) -> impl Future<Output = CampaignOutcome> + 'static {
        let dead_letters = self.targets.dead_letters.clone();
        let metrics = self.shared.metrics.clone();
        async move {
            let Some(dead_letters) = dead_letters else {
                return outcome;
            };
            let reason = letter.code;
            match confirmed(
                SinkKind::DeadLetter,
                dead_letters.send(Write(Arc::new(letter))).await,
            ) {
                Ok(()) => {
                    DeadLettered { reason }.emit(&metrics);
                    outcome
                }
                Err(failed) => failed,
            }
        }
    }
}

/// A writer's answer, or the outcome that reports why there is none.
fn confirmed<T>(
    sink: SinkKind,
    answer: Result<Result<T, SinkError>, MailboxError>,
) -> Result<T, CampaignOutcome> {
    match answer {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(SinkError::Permanent(reason))) => Err(CampaignOutcome::SinkFailed {
            sink: sink.as_str(),
            reason,
        }),
        // Not written and not refused: the campaign must be read again.
        Ok(Err(e)) => Err(CampaignOutcome::Unconfirmed {
            sink: sink.as_str(),
            reason: e.to_string(),
        }),
        Err(e) => Err(CampaignOutcome::Unconfirmed {
            sink: sink.as_str(),
            reason: format!("writer unavailable: {e}"),
        }),
    }
}
