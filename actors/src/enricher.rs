//! `Enricher`: turns one campaign message into one notification batch.
//!
//! It validates the message, has the lifecycle record it (which says whether it is to be
//! delivered now, kept for its start, or is a version that changes nothing), and joins it with the
//! newest subscriber snapshot it was sent. A campaign the lifecycle fires at its start comes back
//! as a [`Fire`], with its restaurant's subscribers read at that moment. The enricher does no I/O
//! itself: the batch (or, for a message the service cannot use, the dead letter) goes to
//! [`Delivery`], and the answer resolves once delivery is done.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::cache::snapshot::{Entry, Snapshot};
use crate::cache::{Subscribers, SubscribersChanged};
use crate::campaign::parse_message;
use crate::clock::Clock;
use crate::delivery::{Delivery, Origin};
use crate::events::{CampaignRejected, Event, NotificationsBuilt};
use crate::hand_off::HandOff;
use crate::lifecycle::rules::Phase;
use crate::lifecycle::{Arrival, Decision, Fire, RecordAll, Recorded, Window};
use crate::messages::{CampaignOutcome, CampaignRecord, ProcessCampaigns};
use crate::metrics::{DeadLetterReason, Metrics};
use crate::notification::NotificationBatch;
use crate::shared::Shared;
use crate::sinks::dead_letter_writer::DeadLetter;

pub struct Enricher {
    subscribers: Option<Subscribers>,
    /// Shared by every campaign's future: one reference count per campaign.
    joiner: Rc<Joiner>,
    lifecycle: HandOff<Arc<Arrival>, Recorded>,
    max_campaign_bytes: usize,
    shared: Shared,
}

type Outcome = Pin<Box<dyn Future<Output = CampaignOutcome>>>;

impl Enricher {
    pub fn new(
        delivery: Delivery,
        lifecycle: Recipient<RecordAll>,
        window: Window,
        max_campaign_bytes: usize,
        shared: Shared,
    ) -> Enricher {
        let joiner = Rc::new(Joiner {
            delivery,
            window,
            clock: shared.clock,
            metrics: shared.metrics.clone(),
        });
        Enricher {
            subscribers: None,
            joiner,
            lifecycle: HandOff::new(lifecycle),
            max_campaign_bytes,
            shared,
        }
    }

    /// The campaign, or the dead letter that keeps an unusable message.
    fn validate(
        &self,
        record: CampaignRecord,
    ) -> Result<Arrival, Box<(CampaignOutcome, DeadLetter)>> {
        let payload = record.payload.as_deref().unwrap_or_default();
        match parse_message(record.key.as_deref(), payload, self.max_campaign_bytes) {
            Ok(campaign) => Ok(Arrival {
                campaign,
                source: record.source,
                key: record.key,
                payload: record.payload.unwrap_or_default(),
            }),
            Err(reason) => {
                CampaignRejected {
                    source: &record.source,
                    reason: &reason,
                }
                .emit(&self.shared.metrics);
                let letter = DeadLetter {
                    source: record.source.clone(),
                    key: record.key,
                    payload: record.payload,
                    code: reason.code().into(),
                    reason: reason.to_string(),
                };
                Err(Box::new((CampaignOutcome::Rejected(reason), letter)))
            }
        }
    }
}

/// Joins a campaign with its subscribers and delivers it; built once per enricher.
struct Joiner {
    delivery: Delivery,
    window: Window,
    clock: Clock,
    metrics: Metrics,
}

impl Joiner {
    /// `found`: the snapshot holding the campaign's restaurant's subscribers, and where.
    fn deliver(&self, arrival: &Arrival, found: Option<(Arc<Snapshot>, Entry)>) -> Outcome {
        let campaign = &arrival.campaign;
        let Some((snapshot, entry)) = found else {
            return Box::pin(async { CampaignOutcome::NoSubscribers });
        };
        let now = self.clock.now_secs();
        let mut batch = NotificationBatch::new(
            campaign.clone(),
            now,
            arrival.source.clone(),
            snapshot,
            entry,
        );
        // The end is inclusive: its whole last second may still be used.
        batch.deadline_ms = (self.window.deadline(campaign).saturating_add(1)).saturating_mul(1000);
        NotificationsBuilt {
            notifications: batch.len(),
        }
        .emit(&self.metrics);
        let origin = Origin {
            key: arrival.key.clone(),
            payload: Some(arrival.payload.clone()),
        };
        Box::pin(self.delivery.deliver(Arc::new(batch), origin))
    }

    /// A campaign that is over: dead-lettered as `ended`, as it arrived.
    fn ended(&self, arrival: &Arrival) -> Outcome {
        let now = self.clock.now_secs();
        let letter = DeadLetter {
            source: arrival.source.clone(),
            key: arrival.key.clone(),
            payload: Some(arrival.payload.clone()),
            code: DeadLetterReason::Ended,
            reason: format!(
                "campaign ended at {} but arrived at {now}",
                arrival.campaign.adv_campaign_datetime_end
            ),
        };
        Box::pin(self.delivery.dead_letter(letter, CampaignOutcome::Ended))
    }
}

impl Actor for Enricher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<SubscribersChanged> for Enricher {
    type Result = ();

    fn handle(&mut self, msg: SubscribersChanged, _: &mut Context<Self>) {
        self.subscribers = Some(msg.0);
    }
}

/// A poll's campaigns: each goes its own way (validated, recorded, joined, delivered) and is
/// answered on its own; they run as one task of the enricher, which sends what they hand to the
/// lifecycle and the writers in the same turn as one message to each.
impl Handler<ProcessCampaigns> for Enricher {
    type Result = ();

    fn handle(&mut self, msg: ProcessCampaigns, ctx: &mut Context<Self>) {
        let mut running: FuturesUnordered<_> = msg
            .0
            .into_iter()
            .map(|(record, answer)| {
                let outcome = self.process(record);
                async move {
                    // A reader that stopped waiting needs no answer.
                    let _ = answer.send(outcome.await);
                }
            })
            .collect();
        // Bound to the enricher: if it stops, the campaigns' answers are dropped and each reads
        // as unconfirmed at the reader.
        ctx.spawn(async move { while running.next().await.is_some() {} }.into_actor(self));
    }
}

impl Enricher {
    /// One campaign, from its message to its outcome.
    fn process(&mut self, record: CampaignRecord) -> Outcome {
        let arrival = match self.validate(record) {
            Ok(arrival) => Arc::new(arrival),
            Err(unusable) => {
                let (outcome, letter) = *unusable;
                return Box::pin(self.joiner.delivery.dead_letter(letter, outcome));
            }
        };
        let recorded = self.lifecycle.send(arrival.clone());
        let (joiner, subscribers) = (self.joiner.clone(), self.subscribers.clone());
        Box::pin(async move {
            let unconfirmed = |reason| CampaignOutcome::Unconfirmed {
                sink: "lifecycle",
                reason,
            };
            let Ok(recorded) = recorded.await else {
                return unconfirmed("the lifecycle stopped before recording the campaign".into());
            };
            let done: Outcome = match recorded.decision {
                Decision::Deliver => {
                    let found = (subscribers.as_ref())
                        .and_then(|s| s.lookup(&arrival.campaign.restaurant_id));
                    joiner.deliver(&arrival, found)
                }
                Decision::Ended => joiner.ended(&arrival),
                decision => Box::pin(async move {
                    match decision {
                        Decision::Schedule { .. } => CampaignOutcome::Scheduled,
                        Decision::Hold => CampaignOutcome::Held,
                        Decision::Cancel => CampaignOutcome::Cancelled,
                        Decision::Superseded => CampaignOutcome::Superseded,
                        Decision::Recall => CampaignOutcome::Recalled,
                        _ => CampaignOutcome::ChangedAfterStart,
                    }
                }),
            };
            // Done once delivered and stored: a campaign whose version is not in the table yet
            // must be read again.
            let (outcome, stored) = futures::join!(done, recorded.stored.wait());
            match stored {
                Ok(()) => outcome,
                Err(reason) => unconfirmed(reason),
            }
        })
    }
}

impl Handler<Fire> for Enricher {
    type Result = ResponseFuture<CampaignOutcome>;

    fn handle(&mut self, msg: Fire, _: &mut Context<Self>) -> Self::Result {
        let now = self.shared.clock.now_secs();
        if self.joiner.window.phase(&msg.arrival.campaign, now) == Phase::Over {
            return Box::pin(async { CampaignOutcome::Ended });
        }
        let found = (msg.subscribers.lookup(&msg.arrival.campaign.restaurant_id))
            .map(|entry| (msg.subscribers.clone(), entry));
        self.joiner.deliver(&msg.arrival, found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::snapshot::SnapshotBuilder;
    use crate::clock::Clock;
    use crate::contract::{BRIEF_SAMPLE, BRIEF_SAMPLE_RESTAURANT};
    use crate::delivery::DeliveryTargets;
    use crate::hand_off::Batch;
    use crate::lifecycle::rules::{decide, Kept};
    use crate::lifecycle::store::{key_of, KeyMap};
    use crate::lifecycle::{Recorded, Stored};
    use crate::messages::{ClearOutbox, Withdraw};
    use crate::metrics::Metrics;
    use crate::metrics::SinkKind;
    use crate::notification::SourceRef;
    use crate::sinks::dead_letter_writer::DeadLetterSink;
    use crate::sinks::kafka_writer::{KafkaJob, KafkaSink, Sent};
    use crate::sinks::pg_writer::{Inserted, PgJob, PgSink};
    use crate::sinks::{SinkError, Write, WriteAll};
    use std::sync::Mutex;

    const W: Window = Window {
        clock_skew_secs: 3,
        end_grace_secs: 0,
    };

    /// Stands in for every writer, the ledger and the lifecycle (whose table is a map here);
    /// records what reached it, in order.
    #[derive(Default)]
    struct Sinks {
        kept: KeyMap<Kept>,
        log: Arc<Mutex<Vec<String>>>,
        /// Clients Postgres says were new; `None`: every client of the job.
        inserted: Option<Vec<String>>,
        /// The sink that refuses every job for good, if any.
        refusing: Option<SinkKind>,
        /// Postgres refuses any job with this client.
        refused_client: Option<&'static str>,
        /// The lifecycle's clock.
        now: i64,
        /// Clients Kafka answers as expired (the campaign's end passed before it had them).
        expired: Vec<&'static str>,
    }

    impl Actor for Sinks {
        type Context = Context<Self>;
    }

    /// Answers each request of a batch in turn, as the real actors do.
    fn answer_each<T: Send, R: Send>(batch: Batch<T, R>, mut answer: impl FnMut(T) -> R) {
        for (request, answered) in batch.0 {
            let _ = answered.send(answer(request));
        }
    }

    impl Handler<WriteAll<PgSink>> for Sinks {
        type Result = ();
        fn handle(&mut self, msg: WriteAll<PgSink>, _: &mut Context<Self>) {
            answer_each(msg, |job| self.postgres(&job));
        }
    }

    impl Sinks {
        fn postgres(&mut self, job: &PgJob) -> Result<Inserted, SinkError> {
            let (batch, range) = (&job.batch, job.range.clone());
            let all: Vec<String> = range.map(|i| batch.client_id(i).to_string()).collect();
            let refused = self
                .refused_client
                .is_some_and(|c| all.iter().any(|a| a == c));
            if self.refusing == Some(SinkKind::Postgres) || refused {
                self.log.lock().unwrap().push("postgres refused".into());
                return Err(SinkError::Permanent("value too long".into()));
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("postgres {}", all.len()));
            let clients = self.inserted.clone().unwrap_or(all);
            let outbox_ids = if clients.is_empty() { vec![] } else { vec![7] };
            Ok(Inserted {
                clients,
                outbox_ids,
            })
        }
    }

    impl Handler<RecordAll> for Sinks {
        type Result = ();
        fn handle(&mut self, msg: RecordAll, _: &mut Context<Self>) {
            answer_each(msg, |arrival| self.record(&arrival));
        }
    }

    impl Sinks {
        fn record(&mut self, arrival: &Arrival) -> Recorded {
            let now = self.now;
            let key = key_of(&arrival.campaign);
            let version = arrival.version();
            let (decision, state) = decide(
                self.kept.get(&key),
                &arrival.campaign,
                version,
                now,
                &W,
                false,
            );
            if let Some(state) = state {
                let campaign = arrival.campaign.clone();
                let kept = Kept {
                    campaign,
                    version,
                    state,
                };
                self.kept.insert(key, kept);
            }
            self.log
                .lock()
                .unwrap()
                .push(format!("record {decision:?}"));
            let (stored, is_stored) = futures::channel::oneshot::channel();
            let _ = stored.send(());
            Recorded {
                decision,
                stored: Stored(is_stored),
            }
        }
    }

    impl Handler<WriteAll<KafkaSink>> for Sinks {
        type Result = ();
        fn handle(&mut self, msg: WriteAll<KafkaSink>, _: &mut Context<Self>) {
            answer_each(msg, |job| self.kafka(&job));
        }
    }

    impl Sinks {
        fn kafka(&mut self, job: &KafkaJob) -> Result<Sent, SinkError> {
            let clients = job.clients.join(",");
            self.log.lock().unwrap().push(format!("kafka {clients}"));
            match self.refusing {
                Some(SinkKind::Kafka) => Err(SinkError::Permanent("message too large".into())),
                _ => Ok(Sent {
                    expired: (job.clients.iter())
                        .filter(|c| self.expired.contains(&c.as_str()))
                        .cloned()
                        .collect(),
                    recalled: Vec::new(),
                }),
            }
        }
    }

    impl Handler<Batch<ClearOutbox, ()>> for Sinks {
        type Result = ();
        fn handle(&mut self, msg: Batch<ClearOutbox, ()>, _: &mut Context<Self>) {
            answer_each(msg, |ClearOutbox(marks)| {
                self.log.lock().unwrap().push(format!("clear {marks:?}"));
            });
        }
    }

    impl Handler<Withdraw> for Sinks {
        type Result = Result<(), String>;
        fn handle(&mut self, msg: Withdraw, _: &mut Context<Self>) -> Self::Result {
            let only = msg.only.map(|c| format!(" only {c:?}")).unwrap_or_default();
            self.log
                .lock()
                .unwrap()
                .push(format!("withdraw {:?}{only}", msg.marks));
            Ok(())
        }
    }

    impl Handler<Write<DeadLetterSink>> for Sinks {
        type Result = Result<(), SinkError>;
        fn handle(&mut self, msg: Write<DeadLetterSink>, _: &mut Context<Self>) -> Self::Result {
            self.log
                .lock()
                .unwrap()
                .push(format!("dead letter {}", msg.0.code));
            Ok(())
        }
    }

    const START: i64 = 1_659_203_516;
    const END: i64 = 2_659_207_116;

    /// An enricher at `now` whose snapshot holds two clients of the sample's restaurant.
    fn enricher(now: i64, sinks: Sinks) -> (Addr<Enricher>, Arc<Mutex<Vec<String>>>) {
        enricher_with_budget(now, sinks, 1_000)
    }

    /// The same, with at most `budget` notifications in flight.
    fn enricher_with_budget(
        now: i64,
        sinks: Sinks,
        budget: usize,
    ) -> (Addr<Enricher>, Arc<Mutex<Vec<String>>>) {
        let log = sinks.log.clone();
        let sinks = Sinks { now, ..sinks }.start();
        let (shared, _failed) = Shared::new(Metrics::new(), Clock::fixed_at_ms(now * 1000));
        let targets = DeliveryTargets {
            postgres: sinks.clone().recipient(),
            kafka: sinks.clone().recipient(),
            ledger: sinks.clone().recipient(),
            withdraw: sinks.clone().recipient(),
            dead_letters: Some(sinks.clone().recipient()),
        };
        let current = crate::cache::CurrentSubscribers::default();
        let delivery = Delivery::new(targets, 1, budget, current, shared.clone());
        let enricher = Enricher::new(delivery, sinks.recipient(), W, 65536, shared).start();
        let mut b = SnapshotBuilder::new();
        b.push(BRIEF_SAMPLE_RESTAURANT, "client-a");
        b.push(BRIEF_SAMPLE_RESTAURANT, "client-b");
        enricher.do_send(SubscribersChanged(Subscribers::new(Arc::new(b.build()))));
        (enricher, log)
    }

    async fn process(enricher: &Addr<Enricher>, payload: &str) -> CampaignOutcome {
        let record = CampaignRecord {
            source: SourceRef {
                topic: "in".into(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
        };
        // As the reader hands it over: one campaign of a poll, answered on its own channel.
        let (answer, answered) = futures::channel::oneshot::channel();
        enricher.send(Batch(vec![(record, answer)])).await.unwrap();
        answered.await.unwrap()
    }

    #[actix_rt::test]
    async fn postgres_first_then_exactly_its_new_rows_to_kafka_then_the_marks_are_cleared() {
        let sinks = Sinks {
            inserted: Some(vec!["client-b".into()]),
            ..Sinks::default()
        };
        let (enricher, log) = enricher(START, sinks);
        let outcome = process(&enricher, BRIEF_SAMPLE).await;
        assert_eq!(outcome, CampaignOutcome::Delivered { notifications: 1 });
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                "record Deliver",
                "postgres 2",
                "kafka client-b",
                "clear [7]"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_campaign_larger_than_the_budget_goes_a_slice_at_a_time() {
        let (enricher, log) = enricher_with_budget(START, Sinks::default(), 1);
        let outcome = process(&enricher, BRIEF_SAMPLE).await;
        assert_eq!(outcome, CampaignOutcome::Delivered { notifications: 2 });
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                "record Deliver",
                "postgres 1",
                "kafka client-a",
                // The marks are cleared a turn later, off the data path.
                "postgres 1",
                "clear [7]",
                "kafka client-b",
                "clear [7]"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_slice_refused_after_others_went_out_says_so_in_the_dead_letter() {
        let sinks = Sinks {
            refused_client: Some("client-b"),
            ..Sinks::default()
        };
        let (enricher, log) = enricher_with_budget(START, sinks, 1);
        let outcome = process(&enricher, BRIEF_SAMPLE).await;
        let CampaignOutcome::SinkFailed { sink, reason } = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(sink, "postgres");
        assert!(
            reason.ends_with("(after 1 of its 2 notifications had been delivered)"),
            "{reason}"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            *log.lock().unwrap(),
            [
                "record Deliver",
                "postgres 1",
                "kafka client-a",
                "postgres refused",
                "clear [7]",
                "dead letter sink_refused"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_campaign_postgres_refuses_is_dead_lettered_and_sent_nowhere() {
        let sinks = Sinks {
            refusing: Some(SinkKind::Postgres),
            ..Sinks::default()
        };
        let (enricher, log) = enricher(START, sinks);
        let outcome = process(&enricher, BRIEF_SAMPLE).await;
        assert!(
            matches!(
                outcome,
                CampaignOutcome::SinkFailed {
                    sink: "postgres",
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(
            *log.lock().unwrap(),
            [
                "record Deliver",
                "postgres refused",
                "dead letter sink_refused"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_campaign_kafka_refuses_is_withdrawn_from_postgres_then_dead_lettered() {
        let sinks = Sinks {
            refusing: Some(SinkKind::Kafka),
            ..Sinks::default()
        };
        let (enricher, log) = enricher(START, sinks);
        let outcome = process(&enricher, BRIEF_SAMPLE).await;
        assert!(
            matches!(outcome, CampaignOutcome::SinkFailed { sink: "kafka", .. }),
            "{outcome:?}"
        );
        assert_eq!(
            *log.lock().unwrap(),
            [
                "record Deliver",
                "postgres 2",
                "kafka client-a,client-b",
                "withdraw [7]",
                "dead letter sink_refused"
            ]
        );
    }

    #[actix_rt::test]
    async fn notifications_that_reached_the_end_before_kafka_had_them_are_withdrawn_from_postgres()
    {
        let sinks = Sinks {
            expired: vec!["client-b"],
            ..Sinks::default()
        };
        let (some_expired, log) = enricher(START, sinks);
        let outcome = process(&some_expired, BRIEF_SAMPLE).await;
        assert_eq!(outcome, CampaignOutcome::Delivered { notifications: 1 });
        assert_eq!(
            *log.lock().unwrap(),
            [
                "record Deliver",
                "postgres 2",
                "kafka client-a,client-b",
                r#"withdraw [7] only ["client-b"]"#
            ]
        );
        // None reached Kafka in time: the campaign ended.
        let sinks = Sinks {
            expired: vec!["client-a", "client-b"],
            ..Sinks::default()
        };
        let (all_expired, _) = enricher(START, sinks);
        assert_eq!(
            process(&all_expired, BRIEF_SAMPLE).await,
            CampaignOutcome::Ended
        );
    }

    #[actix_rt::test]
    async fn a_campaign_every_client_already_had_goes_nowhere_else() {
        let sinks = Sinks {
            inserted: Some(vec![]),
            ..Sinks::default()
        };
        let (enricher, log) = enricher(START, sinks);
        let outcome = process(&enricher, BRIEF_SAMPLE).await;
        assert_eq!(outcome, CampaignOutcome::AlreadyNotified);
        assert_eq!(*log.lock().unwrap(), ["record Deliver", "postgres 2"]);
    }

    #[actix_rt::test]
    async fn the_window_at_processing_time_schedules_delivers_or_dead_letters() {
        for (now, expected, first) in [
            (
                START - 4,
                CampaignOutcome::Scheduled,
                "record Schedule { replaced: false }",
            ),
            (
                START - 3,
                CampaignOutcome::Delivered { notifications: 2 },
                "record Deliver",
            ),
            (
                END,
                CampaignOutcome::Delivered { notifications: 2 },
                "record Deliver",
            ),
            (END + 1, CampaignOutcome::Ended, "record Ended"),
        ] {
            let (enricher, log) = enricher(now, Sinks::default());
            assert_eq!(process(&enricher, BRIEF_SAMPLE).await, expected, "at {now}");
            let log = log.lock().unwrap();
            assert_eq!(log[0], first, "at {now}");
            match expected {
                CampaignOutcome::Scheduled => assert_eq!(log.len(), 1),
                CampaignOutcome::Ended => assert_eq!(log[1], "dead letter ended"),
                _ => assert_eq!(log[1], "postgres 2"),
            }
        }
    }

    #[actix_rt::test]
    async fn a_fired_campaign_is_joined_with_the_subscribers_it_is_given() {
        let (enricher, log) = enricher(START, Sinks::default());
        let campaign = parse_message(None, BRIEF_SAMPLE.as_bytes(), 65536).unwrap();
        let mut b = SnapshotBuilder::new();
        b.push(BRIEF_SAMPLE_RESTAURANT, "client-c");
        let arrival = Arrival {
            campaign,
            source: SourceRef {
                topic: "in".into(),
                partition: 0,
                offset: 0,
                timestamp_ms: None,
            },
            key: None,
            payload: BRIEF_SAMPLE.as_bytes().to_vec(),
        };
        let fire = Fire {
            arrival,
            subscribers: Arc::new(b.build()),
        };
        let outcome = enricher.send(fire).await.unwrap();
        assert_eq!(outcome, CampaignOutcome::Delivered { notifications: 1 });
        assert_eq!(log.lock().unwrap()[..2], ["postgres 1", "kafka client-c"]);
    }

    #[actix_rt::test]
    async fn unusable_input_is_dead_lettered_and_unknown_restaurants_give_nothing() {
        let (enricher, log) = enricher(START, Sinks::default());
        let outcome = process(&enricher, "{\"restaurant_id\": 42").await;
        assert!(
            matches!(outcome, CampaignOutcome::Rejected(_)),
            "{outcome:?}"
        );
        let other = BRIEF_SAMPLE.replace(BRIEF_SAMPLE_RESTAURANT, "nobody-subscribed");
        assert_eq!(
            process(&enricher, &other).await,
            CampaignOutcome::NoSubscribers
        );
        assert_eq!(
            *log.lock().unwrap(),
            ["dead letter not_json", "record Deliver"]
        );
    }
}
