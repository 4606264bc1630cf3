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
//! is confirmed. So does a campaign a sink refuses for good, with nothing of it left in either
//! sink: Postgres refusing writes nothing, and the rows of a campaign Kafka refuses are withdrawn
//! from Postgres before it is dead-lettered.
//!
//! Must not touch: what a campaign is (validation, the active window, the join are the
//! enricher's) or how a sink writes (the sinks').

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use crate::clock::Clock;
use crate::events::{DeadLettered, Event};
use crate::ledger::Tokens;
use crate::messages::{CampaignOutcome, ClearOutbox, Withdraw};
use crate::metrics::{DeadLetterReason, Metrics, SinkKind};
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
    pub withdraw: Recipient<Withdraw>,
    /// `None` when no dead-letter topic is configured: unusable messages are only logged and
    /// counted.
    pub dead_letters: Option<Recipient<Write<DeadLetterSink>>>,
}

pub struct Delivery {
    /// Shared by every campaign's future: one reference count per campaign, not a copy of each
    /// recipient and of the metrics.
    routes: Rc<Routes>,
    tokens: Tokens,
    clock: Clock,
}

/// What a delivery under way needs: where to send, and the metrics to count dead letters in.
struct Routes {
    targets: DeliveryTargets,
    metrics: Metrics,
}

impl Delivery {
    /// `owner` is this process's ledger owner id: the tokens of its outbox marks carry it.
    pub fn new(targets: DeliveryTargets, owner: i32, shared: Shared) -> Delivery {
        Delivery {
            routes: Rc::new(Routes {
                targets,
                metrics: shared.metrics,
            }),
            tokens: Tokens::new(owner),
            clock: shared.clock,
        }
    }

    /// Writes `batch` to both sinks in the order above; resolves with the campaign's outcome.
    /// `origin` is the campaign's message, dead-lettered if a sink refuses the campaign.
    pub fn deliver(
        &mut self,
        batch: Arc<NotificationBatch>,
        origin: Origin,
    ) -> impl Future<Output = CampaignOutcome> + 'static {
        let job = PgJob::new(batch.clone(), &mut self.tokens);
        let to_postgres = self.routes.targets.postgres.send(Write(Arc::new(job)));
        let routes = self.routes.clone();
        let clock = self.clock;
        async move {
            let inserted = match confirmed(SinkKind::Postgres, to_postgres.await) {
                Ok(inserted) => inserted,
                // Its transaction was rolled back: nothing of the campaign was written.
                Err(CampaignOutcome::SinkFailed { sink, reason }) => {
                    return routes.refused(&batch, origin, sink, reason).await
                }
                Err(outcome) => return outcome,
            };
            if inserted.clients.is_empty() {
                return CampaignOutcome::AlreadyNotified;
            }
            let notifications = inserted.clients.len();
            let job = KafkaJob {
                batch: batch.clone(),
                clients: inserted.clients,
                created_ms: clock.now_ms(),
            };
            let to_kafka = routes.targets.kafka.send(Write(Arc::new(job)));
            match confirmed(SinkKind::Kafka, to_kafka.await) {
                Ok(()) => {
                    routes
                        .targets
                        .ledger
                        .do_send(ClearOutbox(inserted.outbox_ids));
                    CampaignOutcome::Delivered { notifications }
                }
                // Refused for good: Postgres must not keep what Kafka will never have.
                Err(CampaignOutcome::SinkFailed { sink, reason }) => {
                    let withdraw = Withdraw(inserted.outbox_ids);
                    let withdrawn = routes.targets.withdraw.send(withdraw).await;
                    match withdrawn.map_err(|e| e.to_string()).and_then(|r| r) {
                        Ok(()) => routes.refused(&batch, origin, sink, reason).await,
                        Err(e) => CampaignOutcome::Unconfirmed {
                            sink: "ledger",
                            reason: e,
                        },
                    }
                }
                Err(outcome) => outcome,
            }
        }
    }

    /// Keeps an unusable message in the dead-letter topic; resolves with `outcome` once that is
    /// confirmed (at once when there is no dead-letter topic).
    pub fn dead_letter(
        &self,
        letter: DeadLetter,
        outcome: CampaignOutcome,
    ) -> impl Future<Output = CampaignOutcome> + 'static {
        let routes = self.routes.clone();
        async move { routes.dead_letter(letter, outcome).await }
    }
}

/// The campaign's original message, kept to dead-letter it if a sink refuses the campaign.
#[derive(Debug, Default)]
pub struct Origin {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Routes {
    async fn dead_letter(&self, letter: DeadLetter, outcome: CampaignOutcome) -> CampaignOutcome {
        let Some(target) = &self.targets.dead_letters else {
            return outcome;
        };
        let reason = letter.code;
        match confirmed(
            SinkKind::DeadLetter,
            target.send(Write(Arc::new(letter))).await,
        ) {
            Ok(()) => {
                DeadLettered { reason }.emit(&self.metrics);
                outcome
            }
            Err(failed) => failed,
        }
    }

    /// A campaign `sink` refused for good, with nothing of it in either sink.
    async fn refused(
        &self,
        batch: &NotificationBatch,
        origin: Origin,
        sink: &'static str,
        reason: String,
    ) -> CampaignOutcome {
        let letter = DeadLetter {
            source: batch.source.clone(),
            key: origin.key,
            payload: origin.payload,
            code: DeadLetterReason::SinkRefused,
            reason: format!("refused by the {sink} sink: {reason}"),
        };
        self.dead_letter(letter, CampaignOutcome::SinkFailed { sink, reason })
            .await
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
