//! What the service reports as it works: each event writes its log line and bumps its metrics in
//! one `emit`, so a counter and the line an operator greps for cannot drift apart (the manner of
//! Vector's `internal_events`).
//!
//! Label values come from the enums in [`crate::metrics`]. Events on the hot path (one per
//! campaign or per write) log nothing at `info` or above unless something went wrong.
//!
//! Every counter and histogram is bumped here, by an event. Gauges are not events but state:
//! each is set where the state it shows lives (campaigns and notifications in flight or being
//! fired, a writer's pending rows, fault and connection, readiness, the change feed's lag, the
//! heartbeats, the consumer lag).
//!
//! Must not touch: anything but metrics and logs.

use std::fmt::Display;
use std::time::Duration;

use crate::campaign::Rejection;
use crate::error_chain::Chain;
use crate::messages::CampaignOutcome;
use crate::metrics::{
    ActorKind, DeadLetterReason, ErrorClass, LifecycleEvent, Metrics, SinkKind, WithdrawReason,
};
use crate::notification::SourceRef;

/// Something that happened, to be reported.
pub trait Event {
    fn emit(self, metrics: &Metrics);
}

/// A campaign message was unusable.
pub struct CampaignRejected<'a> {
    pub source: &'a SourceRef,
    pub reason: &'a Rejection,
}

impl Event for CampaignRejected<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .campaigns_rejected
            .with_label_values(&[self.reason.code().as_str()])
            .inc();
        log::warn!(
            "rejected campaign message at {}: {}",
            self.source,
            self.reason
        );
    }
}

/// A campaign is finished (whatever became of it); `now_ms` is when, for the latency.
pub struct CampaignFinished<'a> {
    pub source: &'a SourceRef,
    pub outcome: &'a CampaignOutcome,
    pub now_ms: i64,
}

impl Event for CampaignFinished<'_> {
    fn emit(self, metrics: &Metrics) {
        let source = self.source;
        metrics
            .campaigns_processed
            .with_label_values(&[self.outcome.outcome().as_str()])
            .inc();
        match self.outcome {
            CampaignOutcome::Delivered { .. } => {
                if let Some(ts) = source.timestamp_ms {
                    let seconds = (self.now_ms - ts).max(0) as f64 / 1000.0;
                    metrics.end_to_end_latency.observe(seconds);
                }
            }
            CampaignOutcome::SinkFailed { sink, reason } => {
                log::error!(
                    "campaign at {source} was refused by the {sink} sink; nothing of it is kept in either sink: {reason}"
                );
            }
            CampaignOutcome::Unconfirmed { sink, reason } => {
                log::error!(
                    "campaign at {source} was not confirmed by {sink} ({reason}); stopping so it is read again"
                );
            }
            _ => {}
        }
    }
}

/// Something happened in a campaign's life: counted in `lifecycle_events_total{event}`; logged
/// unless it is routine (scheduled, fired).
pub struct CampaignLifecycle<'a> {
    pub event: LifecycleEvent,
    pub restaurant_id: &'a str,
    pub adv_campaign_id: &'a str,
    pub source: &'a SourceRef,
}

impl Event for CampaignLifecycle<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .lifecycle_events
            .with_label_values(&[self.event.as_str()])
            .inc();
        let (r, c, source) = (self.restaurant_id, self.adv_campaign_id, self.source);
        match self.event {
            LifecycleEvent::Scheduled | LifecycleEvent::Fired => {
                log::debug!("campaign {c} of restaurant {r} ({source}): {}", self.event)
            }
            LifecycleEvent::ChangedAfterStart => log::warn!(
                "campaign {c} of restaurant {r} was sent again with other content ({source}) after \
                 it had fired; nobody is notified of the new version"
            ),
            LifecycleEvent::Replaced => {
                log::info!("campaign {c} of restaurant {r}: replaced by a newer version ({source}) before its start")
            }
            LifecycleEvent::Cancelled => {
                log::info!("campaign {c} of restaurant {r}: cancelled by a newer version with its end in the past ({source})")
            }
            LifecycleEvent::Superseded => {
                log::info!("campaign {c} of restaurant {r}: an older version arrived ({source}) and was ignored")
            }
            LifecycleEvent::Expired => {
                log::warn!("campaign {c} of restaurant {r}: its end passed before it could fire; nobody notified")
            }
            LifecycleEvent::Recalled => {
                log::warn!("campaign {c} of restaurant {r}: recalled by a newer version with its end in the past ({source}); nothing more of it is sent")
            }
            LifecycleEvent::TakenOver => {
                log::info!("campaign {c} of restaurant {r}: the instance firing it is gone; firing it again")
            }
        }
    }
}

/// A write to Postgres that left out `notifications` notifications over the per-client cap
/// committed (they are in neither sink, recorded in `campaign_notifier_capped`).
pub struct NotificationsCapped {
    pub notifications: u64,
}

impl Event for NotificationsCapped {
    fn emit(self, metrics: &Metrics) {
        metrics.notifications_capped.inc_by(self.notifications);
        log::debug!(
            "{} notifications over the per-client cap kept from both sinks",
            self.notifications
        );
    }
}

/// A campaign was taken from the input topic (counted before it is parsed).
pub struct CampaignReceived;

impl Event for CampaignReceived {
    fn emit(self, metrics: &Metrics) {
        metrics.campaigns_received.inc();
    }
}

/// The join of a campaign gave `notifications` notifications.
pub struct NotificationsBuilt {
    pub notifications: usize,
}

impl Event for NotificationsBuilt {
    fn emit(self, metrics: &Metrics) {
        metrics
            .notifications_built
            .inc_by(self.notifications as u64);
    }
}

/// A fire read `subscribers` subscribers of due campaigns from Postgres (one slice or several
/// campaigns).
pub struct FireAudienceRead {
    pub subscribers: usize,
}

impl Event for FireAudienceRead {
    fn emit(self, metrics: &Metrics) {
        metrics.fire_audience_read.observe(self.subscribers as f64);
    }
}

/// A scheduled campaign's fire settled: it went out (`delay_secs` after its start) or its end
/// passed first.
pub struct FireSettled {
    pub event: LifecycleEvent,
    pub delay_secs: Option<f64>,
}

impl Event for FireSettled {
    fn emit(self, metrics: &Metrics) {
        metrics
            .lifecycle_events
            .with_label_values(&[self.event.as_str()])
            .inc();
        if let Some(delay) = self.delay_secs {
            metrics.fire_delay.observe(delay.max(0.0));
        }
    }
}

/// Rows written to Postgres were deleted again because Kafka will never have them.
pub struct NotificationsWithdrawn {
    pub reason: WithdrawReason,
    pub notifications: usize,
}

impl Event for NotificationsWithdrawn {
    fn emit(self, metrics: &Metrics) {
        metrics
            .notifications_withdrawn
            .with_label_values(&[self.reason.as_str()])
            .inc_by(self.notifications as u64);
    }
}

/// Notifications of a recalled campaign that went to neither sink.
pub struct NotificationsRecalled<'a> {
    pub restaurant_id: &'a str,
    pub adv_campaign_id: &'a str,
    pub notifications: usize,
}

impl Event for NotificationsRecalled<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .notifications_recalled
            .inc_by(self.notifications as u64);
        log::info!(
            "campaign {} of restaurant {}: {} notifications not sent, the campaign is recalled",
            self.adv_campaign_id,
            self.restaurant_id,
            self.notifications
        );
    }
}

/// A dead owner was fenced: its work is taken over once its sends have settled.
pub enum OwnerFenced<'a> {
    /// An owner whose lease expired `expired_secs` ago.
    Lease {
        owner: i32,
        host: &'a str,
        pid: i32,
        expired_secs: f64,
    },
    /// An owner of a version before leases, whose advisory lock is free.
    Legacy { owner: i32 },
}

impl Event for OwnerFenced<'_> {
    fn emit(self, metrics: &Metrics) {
        match self {
            OwnerFenced::Lease {
                owner,
                host,
                pid,
                expired_secs,
            } => log::warn!(
                "ledger: fenced owner {owner} ({host} pid {pid}): its lease expired \
                 {expired_secs:.1} s ago; its work is taken over once its sends have settled"
            ),
            OwnerFenced::Legacy { owner } => {
                log::warn!("ledger: fenced owner {owner} (a version before leases, its lock free)")
            }
        }
        metrics.owners_fenced.inc();
    }
}

/// The reader stopped with `campaigns` campaigns not finished: they are read again at the next
/// start.
pub struct DrainAbandoned {
    pub campaigns: usize,
}

impl Event for DrainAbandoned {
    fn emit(self, metrics: &Metrics) {
        log::warn!(
            "kafka reader: {} campaigns were not finished; they will be read again at the next start",
            self.campaigns
        );
        metrics
            .drain_abandoned_campaigns
            .inc_by(self.campaigns as u64);
    }
}

/// The reader stored `offsets` offsets for commit (one per partition whose finished campaigns
/// freed one).
pub struct OffsetsStored {
    pub offsets: usize,
}

impl Event for OffsetsStored {
    fn emit(self, metrics: &Metrics) {
        metrics.offsets_stored.inc_by(self.offsets as u64);
    }
}

/// Clients who subscribed while a campaign was active were sent it (the change feed or a
/// reload's comparison).
pub struct LateSubscribersNotified {
    pub notifications: usize,
}

impl Event for LateSubscribersNotified {
    fn emit(self, metrics: &Metrics) {
        metrics
            .late_subscriber_notifications
            .inc_by(self.notifications as u64);
    }
}

/// A message is safe in the dead-letter topic.
pub struct DeadLettered {
    pub reason: DeadLetterReason,
}

impl Event for DeadLettered {
    fn emit(self, metrics: &Metrics) {
        metrics
            .dead_letters
            .with_label_values(&[self.reason.as_str()])
            .inc();
    }
}

/// A sink confirmed a write of `rows` rows, of which `added` were new.
pub struct SinkWritten {
    pub sink: SinkKind,
    pub rows: usize,
    pub added: usize,
    pub took: Duration,
}

impl Event for SinkWritten {
    fn emit(self, metrics: &Metrics) {
        let sink = self.sink.as_str();
        metrics
            .sink_write_duration
            .with_label_values(&[sink])
            .observe(self.took.as_secs_f64());
        metrics
            .sink_batch_rows
            .with_label_values(&[sink])
            .observe(self.rows as f64);
        if self.sink.writes_notifications() {
            metrics
                .notifications_written
                .with_label_values(&[sink])
                .inc_by(self.added as u64);
        }
    }
}

/// A write of `jobs` jobs (`rows` rows) failed; what follows depends on the class.
pub struct SinkWriteFailed<'a> {
    pub sink: SinkKind,
    pub class: ErrorClass,
    pub error: &'a dyn Display,
    pub jobs: usize,
    pub rows: usize,
}

impl Event for SinkWriteFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .sink_write_errors
            .with_label_values(&[self.sink.as_str(), self.class.as_str()])
            .inc();
        let (writer, e) = (self.sink.writer().name(), self.error);
        match self.class {
            ErrorClass::Permanent if self.jobs == 1 => {
                log::error!(
                    "{writer}: refused a job of {} notifications: {e}",
                    self.rows
                );
            }
            ErrorClass::Permanent => log::warn!(
                "{writer}: a group of {} campaigns was refused ({e}); writing them one by one",
                self.jobs
            ),
            ErrorClass::Retriable => log::warn!(
                "{writer}: write of {} notifications failed, restarting: {e}",
                self.rows
            ),
        }
    }
}

/// A supervised actor is restarting and starts again after `delay`.
pub struct ActorRestarting {
    pub actor: ActorKind,
    pub delay: Duration,
}

impl Event for ActorRestarting {
    fn emit(self, metrics: &Metrics) {
        metrics
            .actor_restarts
            .with_label_values(&[self.actor.as_str()])
            .inc();
        log::info!("{}: restarting in {:?}", self.actor.name(), self.delay);
    }
}

/// A subscriber snapshot was loaded (the first one is logged at `info`, reloads at `debug`).
pub struct CacheLoaded {
    pub pairs: usize,
    pub restaurants: usize,
    pub loaded_at_unix: i64,
    /// Pairs left out for an id longer than the limit.
    pub skipped: usize,
    pub took: Duration,
    pub first: bool,
}

impl Event for CacheLoaded {
    fn emit(self, metrics: &Metrics) {
        metrics.cache_pairs.set(self.pairs as i64);
        metrics.cache_restaurants.set(self.restaurants as i64);
        metrics.cache_loaded_timestamp.set(self.loaded_at_unix);
        metrics.cache_pairs_skipped.set(self.skipped as i64);
        if self.skipped > 0 {
            log::warn!(
                "subscriber cache: left out {} pair(s) of subscribers_restaurants with a \
                 restaurant_id or client_id longer than {} bytes: no notification of them could \
                 be written",
                self.skipped,
                crate::campaign::MAX_ID_BYTES
            );
        }
        metrics
            .cache_refresh_duration
            .observe(self.took.as_secs_f64());
        let level = if self.first {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "subscriber cache: loaded {} pairs for {} restaurants in {:.3}s",
            self.pairs,
            self.restaurants,
            self.took.as_secs_f64()
        );
    }
}

/// Changes of `subscribers_restaurants` applied to this instance's snapshot, read at `now`.
pub struct SubscriberChangesApplied<'a> {
    pub changes: &'a [crate::changes::table::StoredChange],
    /// Changes at or below this `seq` were in the snapshot already: their lag is not observed.
    pub replayed_up_to: i64,
    pub now: std::time::SystemTime,
}

impl Event for SubscriberChangesApplied<'_> {
    fn emit(self, metrics: &Metrics) {
        use crate::changes::table::Op;
        for c in self.changes {
            let op = match c.op {
                Op::Add => "add",
                Op::Remove => "remove",
                Op::Reload => continue,
            };
            metrics
                .subscriber_changes_applied
                .with_label_values(&[op])
                .inc();
            if c.seq > self.replayed_up_to {
                let lag = c.age(self.now).as_secs_f64();
                metrics.subscriber_change_lag.observe(lag);
            }
        }
    }
}

/// Notifications of a campaign going out in slices left out because their clients unsubscribed
/// (or moved to another restaurant) after it was joined.
pub struct UnsubscribedLeftOut {
    pub notifications: usize,
}

impl Event for UnsubscribedLeftOut {
    fn emit(self, metrics: &Metrics) {
        (metrics.notifications_unsubscribed).inc_by(self.notifications as u64);
    }
}

/// A load of the subscriber snapshot failed; `serving` says whether an older one is in use.
pub struct CacheLoadFailed<'a> {
    pub error: &'a (dyn std::error::Error + 'static),
    pub serving: bool,
}

impl Event for CacheLoadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.cache_refresh_failures.inc();
        if self.serving {
            log::warn!(
                "subscriber cache: reload failed, keeping the previous snapshot: {}",
                Chain(self.error)
            );
        } else {
            log::warn!("subscriber cache: first load failed: {}", Chain(self.error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_counts_under_its_sink_and_class() {
        let metrics = Metrics::new();
        SinkWriteFailed {
            sink: SinkKind::Postgres,
            class: ErrorClass::Permanent,
            error: &"value too long",
            jobs: 1,
            rows: 3,
        }
        .emit(&metrics);
        let text = metrics.render();
        assert!(text.contains(
            r#"campaign_notifier_sink_write_errors_total{class="permanent",sink="postgres"} 1"#
        ));
        assert!(text.contains(
            r#"campaign_notifier_sink_write_errors_total{class="retriable",sink="postgres"} 0"#
        ));
    }

    #[test]
    fn dead_letters_count_no_notifications_written() {
        let metrics = Metrics::new();
        SinkWritten {
            sink: SinkKind::DeadLetter,
            rows: 2,
            added: 2,
            took: Duration::from_millis(3),
        }
        .emit(&metrics);
        let text = metrics.render();
        assert!(!text.contains(r#"notifications_written_total{sink="dead_letter"}"#));
        assert!(text.contains(r#"campaign_notifier_sink_batch_rows_count{sink="dead_letter"} 1"#));
    }

    /// Every `.rs` file below `dir`.
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn counters_are_bumped_only_by_events() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut bypasses = Vec::new();
        for file in files {
            let name = file.strip_prefix(&root).unwrap().display().to_string();
            if name == "events.rs" || name == "metrics.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.contains(".inc()") || line.contains(".inc_by(") {
                    bypasses.push(format!("{name}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            bypasses.is_empty(),
            "counters bumped outside an event:\n{}",
            bypasses.join("\n")
        );
    }
}
