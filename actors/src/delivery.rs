//! Delivery: the order in which a campaign's notifications reach the sinks, which is what makes
//! "nothing lost, nothing twice" hold, and the budget that bounds how many are in flight.
//!
//! 1. Postgres first: the Postgres writer inserts the rows that are new (a client already notified
//!    of this campaign gets nothing) and, in the same transaction, an outbox mark listing them.
//! 2. Then exactly those rows go to the Kafka writer.
//! 3. Once the broker acknowledged them, the marks are cleared (by the ledger, off the data path).
//!
//! A campaign goes through in slices of at most [`SLICE_NOTIFICATIONS`], each taking its share of
//! `writers.max_notifications_in_flight` before it is written and giving it back once both sinks
//! confirmed it: memory is bounded by the notifications in flight, not by how many subscribers a
//! restaurant has or how many campaigns are read. The first slice goes alone (a campaign a sink
//! refuses is refused there, with nothing of it written); the others follow, a few at once.
//!
//! The budget is shared between the campaigns under way: the slices of a campaign larger than one
//! slice take their share from the part of the budget a quarter of it is kept apart from (the
//! reserve), so a small campaign arriving while a large one goes out finds room at once; and the
//! writers put a small campaign's job ahead of a large one's slices waiting in their queue
//! (`sinks::writer`). Together they keep a small campaign from waiting behind a large one.
//!
//! Only when every slice is through is the campaign `Delivered`, which lets the reader store its
//! offset. If the service stops in the middle, the campaign is read again: its delivered slices
//! insert nothing new, and what the outbox lists is finished by recovery. A message the service
//! cannot use goes to the dead-letter writer instead, and counts as done once that write is
//! confirmed. So does a campaign a sink refuses for good: Postgres refusing writes nothing, and the
//! rows of a slice Kafka refuses are withdrawn from Postgres before the campaign is dead-lettered.
//! Refusals that depend on the campaign (its ids, its text) happen on the first slice, so nothing
//! of such a campaign is in either sink; one that depends on a single subscriber can come later,
//! and then the dead letter's reason says how many notifications had gone out before.
//!
//! A campaign recalled while it goes out ([`crate::recalls`]) stops: a slice that has not reached
//! Postgres yet is not written, and what the Kafka writer answers as recalled is withdrawn from
//! Postgres, so that both sinks keep the same set of what went out.
//!
//! Must not touch: what a campaign is (validation, the active window, the join are the
//! enricher's) or how a sink writes (the sinks').

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;
use crate::events::{
    DeadLettered, Event, NotificationsRecalled, NotificationsWithdrawn, UnsubscribedLeftOut,
};
use crate::hand_off::{Batch, HandOff};
use crate::messages::{CampaignOutcome, ClearOutbox, Withdraw};
use crate::metrics::{DeadLetterReason, Metrics, SinkKind, WithdrawReason};
use crate::notification::{cut, NotificationBatch};
use crate::shared::Shared;
use crate::sinks::dead_letter_writer::{DeadLetter, DeadLetterSink};
use crate::sinks::kafka_writer::{KafkaJob, KafkaSink, Sent};
use crate::sinks::pg_writer::Tokens;
use crate::sinks::pg_writer::{Inserted, PgJob, PgSink};
use crate::sinks::{SinkError, Write, WriteAll};

/// The most notifications of one campaign written as one piece (a multiple of the Postgres
/// writer's statement size, so a slice's statements are full).
pub const SLICE_NOTIFICATIONS: usize = 10_000;

/// Slices of one campaign under way at once, after its first.
const SLICES_AT_ONCE: usize = 8;

/// Where delivery sends things.
pub struct DeliveryTargets {
    pub postgres: Recipient<WriteAll<PgSink>>,
    pub kafka: Recipient<WriteAll<KafkaSink>>,
    pub ledger: Recipient<Batch<ClearOutbox, ()>>,
    pub withdraw: Recipient<Withdraw>,
    /// `None` when no dead-letter topic is configured: unusable messages are only logged and
    /// counted.
    pub dead_letters: Option<Recipient<Write<DeadLetterSink>>>,
}

/// Cheap to clone: every clone writes through the same routes and hands out tokens from the same
/// sequence.
#[derive(Clone)]
pub struct Delivery {
    /// Shared by every campaign's future: one reference count per campaign, not a copy of each
    /// recipient and of the metrics.
    routes: Rc<Routes>,
    tokens: Rc<RefCell<Tokens>>,
    /// Slices are cut this large: [`SLICE_NOTIFICATIONS`], or the budget less its reserve when
    /// that is smaller.
    slice: usize,
}

/// What a delivery under way needs: where to send, the metrics, the clock, and the budget of
/// notifications in flight (one permit each). What the campaigns of one turn send to the writers
/// and the ledger goes to each as one message.
struct Routes {
    postgres: HandOff<Arc<PgJob>, Result<Inserted, SinkError>>,
    kafka: HandOff<Arc<KafkaJob>, Result<Sent, SinkError>>,
    clear: HandOff<ClearOutbox, ()>,
    targets: DeliveryTargets,
    metrics: Metrics,
    quiet: crate::quiet::QuietHours,
    clock: Clock,
    budget: Arc<Semaphore>,
    /// The budget less the reserve: what the slices of large campaigns may hold at most.
    large: Arc<Semaphore>,
    recalls: crate::recalls::Recalls,
    subscribers: crate::cache::CurrentSubscribers,
}

impl Delivery {
    /// `owner` is this process's ledger owner id: the tokens of its outbox marks carry it.
    /// `max_in_flight` notifications at most are between the join and both sinks' confirmation.
    /// `subscribers`: the subscribers in use, looked at before each slice of a large campaign.
    pub fn new(
        targets: DeliveryTargets,
        owner: i32,
        max_in_flight: usize,
        subscribers: crate::cache::CurrentSubscribers,
        shared: Shared,
    ) -> Delivery {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let large = (max_in_flight - max_in_flight / 4).max(1);
        Delivery {
            routes: Rc::new(Routes {
                postgres: HandOff::new(targets.postgres.clone()),
                kafka: HandOff::new(targets.kafka.clone()),
                clear: HandOff::new(targets.ledger.clone()),
                targets,
                metrics: shared.metrics,
                clock: shared.clock,
                quiet: shared.quiet,
                recalls: shared.recalls,
                subscribers,
                budget: Arc::new(Semaphore::new(max_in_flight)),
                large: Arc::new(Semaphore::new(large)),
            }),
            tokens: Rc::new(RefCell::new(Tokens::new(owner))),
            slice: SLICE_NOTIFICATIONS.min(large),
        }
    }

    /// Writes `batch` to both sinks in the order above, a slice at a time; resolves with the
    /// campaign's outcome. `origin` is the campaign's message, dead-lettered if a sink refuses the
    /// campaign.
    pub fn deliver(
        &self,
        batch: Arc<NotificationBatch>,
        origin: Origin,
    ) -> impl Future<Output = CampaignOutcome> + 'static {
        let mut tokens = self.tokens.borrow_mut();
        let slices: Vec<PgJob> = cut(0..batch.len(), self.slice)
            .map(|range| PgJob::slice(batch.clone(), range, &mut tokens))
            .collect();
        drop(tokens);
        let routes = self.routes.clone();
        async move {
            // Most campaigns are one slice: no set of slices to run.
            if slices.len() == 1 {
                let mut progress = Progress::default();
                if let Some(job) = slices.into_iter().next() {
                    progress.add(routes.clone().deliver_slice(job, false).await);
                }
                return progress.finish(&routes, &batch, origin).await;
            }
            let mut slices = slices.into_iter();
            let mut running = FuturesUnordered::new();
            let mut progress = Progress::default();
            let mut at_once = 1;
            loop {
                while running.len() < at_once && progress.goes_on() {
                    let Some(job) = slices.next() else { break };
                    running.push(routes.clone().deliver_slice(job, true));
                }
                // Slices under way are always finished, even after one failed: each must end
                // with its marks cleared or its rows withdrawn.
                let Some(outcome) = running.next().await else {
                    break;
                };
                progress.add(outcome);
                at_once = SLICES_AT_ONCE;
            }
            progress.finish(&routes, &batch, origin).await
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

/// What became of one slice.
enum SliceOutcome {
    /// Both sinks have `written` new notifications (0: every client already had them); `expired`
    /// more reached the campaign's end before Kafka had them and were withdrawn from Postgres;
    /// `recalled` more were stopped by the campaign's recall (not written, or withdrawn).
    Written {
        written: usize,
        expired: usize,
        recalled: usize,
    },
    /// A sink refused the slice for good; nothing of it is in either sink.
    Refused { sink: &'static str, reason: String },
    /// Not confirmed: the campaign must be read again.
    Unconfirmed(CampaignOutcome),
}

/// A campaign's slices so far.
#[derive(Default)]
struct Progress {
    written: usize,
    expired: usize,
    recalled: usize,
    refused: Option<(&'static str, String)>,
    unconfirmed: Option<CampaignOutcome>,
}

impl Progress {
    /// Further slices are started only while every slice went through.
    fn goes_on(&self) -> bool {
        self.refused.is_none() && self.unconfirmed.is_none()
    }

    fn add(&mut self, outcome: SliceOutcome) {
        match outcome {
            SliceOutcome::Written {
                written,
                expired,
                recalled,
            } => {
                self.written += written;
                self.expired += expired;
                self.recalled += recalled;
            }
            SliceOutcome::Refused { sink, reason } => {
                self.refused.get_or_insert((sink, reason));
            }
            SliceOutcome::Unconfirmed(outcome) => {
                self.unconfirmed.get_or_insert(outcome);
            }
        }
    }

    async fn finish(
        self,
        routes: &Routes,
        batch: &NotificationBatch,
        origin: Origin,
    ) -> CampaignOutcome {
        if let Some(outcome) = self.unconfirmed {
            return outcome;
        }
        if let Some((sink, reason)) = self.refused {
            let reason = match self.written {
                0 => reason,
                n => format!(
                    "{reason} (after {n} of its {} notifications had been delivered)",
                    batch.len()
                ),
            };
            return routes.refused(batch, origin, sink, reason).await;
        }
        match (self.written, self.expired, self.recalled) {
            // Recalled before any of its new notifications reached Kafka.
            (0, _, 1..) => CampaignOutcome::Recalled,
            // Its end came before any of its new notifications reached Kafka.
            (0, 1.., _) => CampaignOutcome::Ended,
            (0, 0, 0) => CampaignOutcome::AlreadyNotified,
            (notifications, _, _) => CampaignOutcome::Delivered { notifications },
        }
    }
}

/// A slice's share of the budget (and of the large campaigns' part of it), held until both sinks
/// confirmed it; counted in `notifications_in_flight`.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    _large: Option<OwnedSemaphorePermit>,
    notifications: i64,
    /// `notifications_in_flight` (one handle, not a clone of every metric).
    gauge: prometheus::IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.notifications);
    }
}

impl Routes {
    /// Waits for room in the budget, then writes the slice to Postgres, its new rows to Kafka, and
    /// clears the marks (or withdraws the rows Kafka refused). `large`: one slice of several,
    /// whose share comes from the budget less its reserve.
    async fn deliver_slice(self: Rc<Self>, job: PgJob, large: bool) -> SliceOutcome {
        // Quiet hours: not written before they end; a slice made before them is created anew
        // when it goes out.
        self.quiet.wait_outside(&self.clock).await;
        let now = self.clock.now_secs();
        let job = match self.quiet.crossed(job.batch.trigger_datetime_created, now) {
            true => job.created_at(now),
            false => job,
        };
        let _in_flight = self.take_budget(job.range.len(), large).await;
        // A large campaign's slices go out over seconds: who unsubscribed since the join is
        // left out.
        let job = match large {
            true => match self.still_subscribed(job) {
                Some(job) => job,
                None => {
                    return SliceOutcome::Written {
                        written: 0,
                        expired: 0,
                        recalled: 0,
                    }
                }
            },
            false => job,
        };
        let batch = job.batch.clone();
        let c = &batch.campaign;
        if self.recalls.contains(&c.restaurant_id, &c.adv_campaign_id) {
            let recalled = job.range.len();
            self.recalled(&batch, recalled);
            return SliceOutcome::Written {
                written: 0,
                expired: 0,
                recalled,
            };
        }
        let inserted = match self.to_postgres(job).await {
            Ok(inserted) => inserted,
            Err(outcome) => return outcome,
        };
        if inserted.clients.is_empty() {
            return SliceOutcome::Written {
                written: 0,
                expired: 0,
                recalled: 0,
            };
        }
        self.to_kafka(batch, inserted).await
    }

    /// `job` without the clients no longer subscribed, counted; `None` when nobody is left.
    fn still_subscribed(&self, job: PgJob) -> Option<PgJob> {
        let Some(subscribers) = self.subscribers.get() else {
            return Some(job);
        };
        let (job, left) = job.still_subscribed(&subscribers);
        if left > 0 {
            UnsubscribedLeftOut {
                notifications: left,
            }
            .emit(&self.metrics);
        }
        job
    }

    /// Counts `notifications` of `batch` its recall stopped.
    fn recalled(&self, batch: &NotificationBatch, notifications: usize) {
        NotificationsRecalled {
            restaurant_id: &batch.campaign.restaurant_id,
            adv_campaign_id: &batch.campaign.adv_campaign_id,
            notifications,
        }
        .emit(&self.metrics);
    }

    /// The slice's share of the budget, once there is room for it (for a slice of a large
    /// campaign, room in the budget less the reserve first).
    async fn take_budget(&self, rows: usize, large: bool) -> InFlight {
        let large = match large {
            true => Some(
                self.large
                    .clone()
                    .acquire_many_owned(rows as u32)
                    .await
                    .expect("the budget is never closed"),
            ),
            false => None,
        };
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(rows as u32)
            .await
            .expect("the budget is never closed");
        self.metrics.notifications_in_flight.add(rows as i64);
        InFlight {
            _permit: permit,
            _large: large,
            notifications: rows as i64,
            gauge: self.metrics.notifications_in_flight.clone(),
        }
    }

    /// Writes the slice to Postgres: the rows that were new, or what became of the slice.
    async fn to_postgres(&self, job: PgJob) -> Result<Inserted, SliceOutcome> {
        let to_postgres = self.postgres.send(Arc::new(job));
        match confirmed(SinkKind::Postgres, to_postgres.await) {
            Ok(inserted) => Ok(inserted),
            // Its transaction was rolled back: nothing of the slice was written.
            Err(CampaignOutcome::SinkFailed { sink, reason }) => {
                Err(SliceOutcome::Refused { sink, reason })
            }
            Err(outcome) => Err(SliceOutcome::Unconfirmed(outcome)),
        }
    }

    /// Sends the rows Postgres inserted to Kafka, then clears their marks, or withdraws from
    /// Postgres what Kafka will not have.
    async fn to_kafka(&self, batch: Arc<NotificationBatch>, inserted: Inserted) -> SliceOutcome {
        let notifications = inserted.clients.len();
        let job = KafkaJob {
            batch: batch.clone(),
            clients: inserted.clients,
            created_ms: self.clock.now_ms(),
        };
        let to_kafka = self.kafka.send(Arc::new(job));
        match confirmed(SinkKind::Kafka, to_kafka.await) {
            Ok(sent) if sent.expired.is_empty() && sent.recalled.is_empty() => {
                // Nobody waits for the marks to be cleared: what is left is cleared by recovery.
                drop(self.clear.send(ClearOutbox(inserted.outbox_ids)));
                SliceOutcome::Written {
                    written: notifications,
                    expired: 0,
                    recalled: 0,
                }
            }
            // The campaign's end or its recall came before these reached Kafka: Postgres must not
            // keep them.
            Ok(sent) => {
                let (expired, recalled) = (sent.expired.len(), sent.recalled.len());
                let mut only = sent.expired;
                only.extend(sent.recalled);
                let withdraw = Withdraw {
                    marks: inserted.outbox_ids,
                    only: Some(only),
                };
                let reasons = [
                    (WithdrawReason::Ended, expired),
                    (WithdrawReason::Recalled, recalled),
                ];
                match self.withdraw(withdraw, &reasons).await {
                    Ok(()) => {
                        if recalled > 0 {
                            self.recalled(&batch, recalled);
                        }
                        SliceOutcome::Written {
                            written: notifications - expired - recalled,
                            expired,
                            recalled,
                        }
                    }
                    Err(outcome) => SliceOutcome::Unconfirmed(outcome),
                }
            }
            Err(outcome) => {
                self.kafka_failed(inserted.outbox_ids, notifications, outcome)
                    .await
            }
        }
    }

    /// Kafka did not confirm the slice: refused for good, Postgres must not keep what Kafka will
    /// never have; otherwise the campaign is read again.
    async fn kafka_failed(
        &self,
        marks: Vec<i64>,
        notifications: usize,
        outcome: CampaignOutcome,
    ) -> SliceOutcome {
        let CampaignOutcome::SinkFailed { sink, reason } = outcome else {
            return SliceOutcome::Unconfirmed(outcome);
        };
        let withdraw = Withdraw { marks, only: None };
        match self
            .withdraw(withdraw, &[(WithdrawReason::Refused, notifications)])
            .await
        {
            Ok(()) => SliceOutcome::Refused { sink, reason },
            Err(outcome) => SliceOutcome::Unconfirmed(outcome),
        }
    }

    /// Has the ledger withdraw rows from Postgres; counted, by reason, once done.
    async fn withdraw(
        &self,
        withdraw: Withdraw,
        reasons: &[(WithdrawReason, usize)],
    ) -> Result<(), CampaignOutcome> {
        let withdrawn = self.targets.withdraw.send(withdraw).await;
        match withdrawn.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(()) => {
                for &(reason, notifications) in reasons.iter().filter(|(_, n)| *n > 0) {
                    NotificationsWithdrawn {
                        reason,
                        notifications,
                    }
                    .emit(&self.metrics);
                }
                Ok(())
            }
            Err(e) => Err(CampaignOutcome::Unconfirmed {
                sink: "ledger",
                reason: e,
            }),
        }
    }

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

    /// A campaign `sink` refused for good.
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

/// A writer's answer, or the outcome that reports why there is none (the writer's mailbox error
/// or its answer channel canceled).
fn confirmed<T, E: std::fmt::Display>(
    sink: SinkKind,
    answer: Result<Result<T, SinkError>, E>,
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
