//! `Enricher`: turns one campaign message into one notification batch and hands the same batch to
//! both writers.
//!
//! It validates the message, applies the active-window rule at processing time, and joins with
//! the newest subscriber snapshot it was sent. It does no I/O itself; its reply to the reader
//! resolves once both writers confirmed, which is what lets the reader commit the offset.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;

use crate::campaign::{parse_campaign, split_inline_key, Activity, Rejection};
use crate::messages::{CampaignOutcome, ProcessCampaign, SnapshotLoaded, WriteBatch};
use crate::metrics::Metrics;
use crate::notification::NotificationBatch;
use crate::snapshot::Snapshot;
use crate::writer::SinkError;

pub struct Enricher {
    snapshot: Option<Arc<Snapshot>>,
    kafka: Recipient<WriteBatch>,
    postgres: Recipient<WriteBatch>,
    max_campaign_bytes: usize,
    metrics: Metrics,
    /// The clock, replaceable in tests.
    now: fn() -> i64,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Enricher {
    pub fn new(
        kafka: Recipient<WriteBatch>,
        postgres: Recipient<WriteBatch>,
        max_campaign_bytes: usize,
        metrics: Metrics,
    ) -> Enricher {
        Enricher {
            snapshot: None,
            kafka,
            postgres,
            max_campaign_bytes,
            metrics,
            now: unix_now,
        }
    }

    /// Everything up to the join: what to write, or why there is nothing to write.
    fn prepare(&self, msg: ProcessCampaign) -> Result<NotificationBatch, CampaignOutcome> {
        let record = msg.0;
        let payload = record.payload.as_deref().unwrap_or_default();
        let (_inline_key, json) = split_inline_key(payload);
        let campaign = parse_campaign(json, self.max_campaign_bytes).map_err(|reason| {
            self.reject(&record.source, &reason);
            CampaignOutcome::Rejected(reason)
        })?;
        let now = (self.now)();
        match campaign.activity(now) {
            Activity::Active => {}
            Activity::NotStarted => return Err(CampaignOutcome::NotStarted),
            Activity::Ended => return Err(CampaignOutcome::Ended),
        }
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(CampaignOutcome::NoSubscribers)?;
        let entry = snapshot
            .lookup(&campaign.restaurant_id)
            .ok_or(CampaignOutcome::NoSubscribers)?;
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
            Err(outcome) => return Box::pin(async move { outcome }),
        };
        let notifications = batch.len();
        self.metrics
            .notifications_built
            .inc_by(notifications as u64);
        let to_kafka = self.kafka.send(WriteBatch(batch.clone()));
        let to_postgres = self.postgres.send(WriteBatch(batch));
        Box::pin(async move {
            let (kafka, postgres) = futures::join!(to_kafka, to_postgres);
            for (sink, result) in [("kafka", kafka), ("postgres", postgres)] {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(SinkError::Permanent(reason))) => {
                        return CampaignOutcome::SinkFailed { sink, reason }
                    }
                    // Not written and not refused: the campaign must be read again.
                    Ok(Err(e)) => {
                        return CampaignOutcome::Unconfirmed {
                            sink,
                            reason: e.to_string(),
                        }
                    }
                    Err(e) => {
                        return CampaignOutcome::Unconfirmed {
                            sink,
                            reason: format!("writer unavailable: {e}"),
                        }
                    }
                }
            }
            CampaignOutcome::Delivered { notifications }
        })
    }
}
