//! `Enricher`: turns one campaign message into one notification batch.
//!
//! It validates the message, applies the active-window rule at processing time, and joins with
//! the newest subscriber snapshot it was sent. It does no I/O itself: the batch (or, for a message
//! the service cannot use, the dead letter) goes to [`Delivery`], and the enricher's answer to the
//! reader resolves once delivery is done.

use std::sync::Arc;

use actix::prelude::*;

use crate::cache::snapshot::Snapshot;
use crate::cache::SnapshotLoaded;
use crate::campaign::{parse_campaign, split_inline_key, Activity};
use crate::delivery::{Delivery, Origin};
use crate::events::{CampaignRejected, Event};
use crate::messages::{CampaignOutcome, CampaignRecord, ProcessCampaign};
use crate::metrics::DeadLetterReason;
use crate::notification::NotificationBatch;
use crate::shared::Shared;
use crate::sinks::dead_letter_writer::DeadLetter;

pub struct Enricher {
    snapshot: Option<Arc<Snapshot>>,
    delivery: Delivery,
    max_campaign_bytes: usize,
    shared: Shared,
}

/// What a campaign message becomes: notifications to deliver, or why there are none (and, for a
/// message the service cannot use, the dead letter that keeps it).
enum Prepared {
    Batch(Arc<NotificationBatch>, Origin),
    Nothing(CampaignOutcome),
    Unusable(CampaignOutcome, Box<DeadLetter>),
}

impl Enricher {
    pub fn new(delivery: Delivery, max_campaign_bytes: usize, shared: Shared) -> Enricher {
        Enricher {
            snapshot: None,
            delivery,
            max_campaign_bytes,
            shared,
        }
    }

    /// Everything up to the join.
    fn prepare(&self, record: CampaignRecord) -> Prepared {
        let payload = record.payload.as_deref().unwrap_or_default();
        let (_inline_key, json) = split_inline_key(payload);
        let letter = |code: DeadLetterReason, reason: String| {
            Box::new(DeadLetter {
                source: record.source.clone(),
                key: record.key.clone(),
                payload: record.payload.clone(),
                code,
                reason,
            })
        };
        let campaign = match parse_campaign(json, self.max_campaign_bytes) {
            Ok(c) => c,
            Err(reason) => {
                CampaignRejected {
                    source: &record.source,
                    reason: &reason,
                }
                .emit(&self.shared.metrics);
                let dead = letter(reason.code().into(), reason.to_string());
                return Prepared::Unusable(CampaignOutcome::Rejected(reason), dead);
            }
        };
        let now = self.shared.clock.now_secs();
        match campaign.activity(now) {
            Activity::Active => {}
            Activity::NotStarted => {
                let reason = format!(
                    "campaign starts at {} but arrived at {now}; it is not scheduled for later",
                    campaign.adv_campaign_datetime_start
                );
                return Prepared::Unusable(
                    CampaignOutcome::NotStarted,
                    letter(DeadLetterReason::NotStarted, reason),
                );
            }
            Activity::Ended => {
                let reason = format!(
                    "campaign ended at {} but arrived at {now}",
                    campaign.adv_campaign_datetime_end
                );
                return Prepared::Unusable(
                    CampaignOutcome::Ended,
                    letter(DeadLetterReason::Ended, reason),
                );
            }
        }
        let entry = self
            .snapshot
            .as_ref()
            .and_then(|s| s.lookup(&campaign.restaurant_id).map(|e| (s, e)));
        let Some((snapshot, entry)) = entry else {
            return Prepared::Nothing(CampaignOutcome::NoSubscribers);
        };
        let batch = NotificationBatch::new(campaign, now, record.source, snapshot.clone(), entry);
        let origin = Origin {
            key: record.key,
            payload: record.payload,
        };
        Prepared::Batch(Arc::new(batch), origin)
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
        match self.prepare(msg.0) {
            Prepared::Batch(batch, origin) => {
                let built = batch.len() as u64;
                self.shared.metrics.notifications_built.inc_by(built);
                Box::pin(self.delivery.deliver(batch, origin))
            }
            Prepared::Nothing(outcome) => Box::pin(async move { outcome }),
            Prepared::Unusable(outcome, letter) => {
                Box::pin(self.delivery.dead_letter(*letter, outcome))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::snapshot::SnapshotBuilder;
    use crate::clock::Clock;
    use crate::contract::{BRIEF_SAMPLE, BRIEF_SAMPLE_RESTAURANT};
    use crate::delivery::DeliveryTargets;
    use crate::messages::{ClearOutbox, Withdraw};
    use crate::metrics::Metrics;
    use crate::metrics::SinkKind;
    use crate::notification::SourceRef;
    use crate::sinks::dead_letter_writer::DeadLetterSink;
    use crate::sinks::kafka_writer::KafkaSink;
    use crate::sinks::pg_writer::{Inserted, PgSink};
    use crate::sinks::{SinkError, Write};
    use std::sync::Mutex;

    /// Stands in for every writer and the ledger; records what reached it, in order.
    #[derive(Default)]
    struct Sinks {
        log: Arc<Mutex<Vec<String>>>,
        /// Clients Postgres says were new; `None`: every client of the job.
        inserted: Option<Vec<String>>,
        /// The sink that refuses every job for good, if any.
        refusing: Option<SinkKind>,
        /// Postgres refuses any job with this client.
        refused_client: Option<&'static str>,
    }

    impl Actor for Sinks {
        type Context = Context<Self>;
    }

    impl Handler<Write<PgSink>> for Sinks {
        type Result = Result<Inserted, SinkError>;
        fn handle(&mut self, msg: Write<PgSink>, _: &mut Context<Self>) -> Self::Result {
            let (batch, range) = (&msg.0.batch, msg.0.range.clone());
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

    impl Handler<Write<KafkaSink>> for Sinks {
        type Result = Result<(), SinkError>;
        fn handle(&mut self, msg: Write<KafkaSink>, _: &mut Context<Self>) -> Self::Result {
            let clients = msg.0.clients.join(",");
            self.log.lock().unwrap().push(format!("kafka {clients}"));
            match self.refusing {
                Some(SinkKind::Kafka) => Err(SinkError::Permanent("message too large".into())),
                _ => Ok(()),
            }
        }
    }

    impl Handler<ClearOutbox> for Sinks {
        type Result = ();
        fn handle(&mut self, msg: ClearOutbox, _: &mut Context<Self>) {
            self.log.lock().unwrap().push(format!("clear {:?}", msg.0));
        }
    }

    impl Handler<Withdraw> for Sinks {
        type Result = Result<(), String>;
        fn handle(&mut self, msg: Withdraw, _: &mut Context<Self>) -> Self::Result {
            self.log
                .lock()
                .unwrap()
                .push(format!("withdraw {:?}", msg.0));
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
        let sinks = sinks.start();
        let (shared, _failed) = Shared::new(Metrics::new(), Clock::fixed_at_ms(now * 1000));
        let targets = DeliveryTargets {
            postgres: sinks.clone().recipient(),
            kafka: sinks.clone().recipient(),
            ledger: sinks.clone().recipient(),
            withdraw: sinks.clone().recipient(),
            dead_letters: Some(sinks.recipient()),
        };
        let delivery = Delivery::new(targets, 1, budget, shared.clone());
        let enricher = Enricher::new(delivery, 65536, shared).start();
        let mut b = SnapshotBuilder::new();
        b.push(BRIEF_SAMPLE_RESTAURANT, "client-a");
        b.push(BRIEF_SAMPLE_RESTAURANT, "client-b");
        enricher.do_send(SnapshotLoaded(Arc::new(b.build())));
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
        enricher.send(ProcessCampaign(record)).await.unwrap()
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
            ["postgres 2", "kafka client-b", "clear [7]"]
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
                "postgres 1",
                "kafka client-a",
                "clear [7]",
                "postgres 1",
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
                "postgres 1",
                "kafka client-a",
                "clear [7]",
                "postgres refused",
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
            ["postgres refused", "dead letter sink_refused"]
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
                "postgres 2",
                "kafka client-a,client-b",
                "withdraw [7]",
                "dead letter sink_refused"
            ]
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
        assert_eq!(*log.lock().unwrap(), ["postgres 2"]);
    }

    #[actix_rt::test]
    async fn the_active_window_includes_both_ends_at_processing_time() {
        for (now, expected) in [
            (START - 1, CampaignOutcome::NotStarted),
            (START, CampaignOutcome::Delivered { notifications: 2 }),
            (END, CampaignOutcome::Delivered { notifications: 2 }),
            (END + 1, CampaignOutcome::Ended),
        ] {
            let (enricher, log) = enricher(now, Sinks::default());
            assert_eq!(process(&enricher, BRIEF_SAMPLE).await, expected, "at {now}");
            let log = log.lock().unwrap();
            match expected {
                CampaignOutcome::NotStarted => assert_eq!(*log, ["dead letter not_started"]),
                CampaignOutcome::Ended => assert_eq!(*log, ["dead letter ended"]),
                _ => assert_eq!(log[0], "postgres 2"),
            }
        }
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
        assert_eq!(*log.lock().unwrap(), ["dead letter not_json"]);
    }
}
