//! What the service reports as it works: each event writes its log line and bumps its metrics in
//! one `emit`, so a counter and the line an operator greps for cannot drift apart (the manner of
//! Vector's `internal_events`).
//!
//! Label values come from the enums in [`crate::metrics`]. Events on the hot path (one per
//! campaign or per write) log nothing at `info` or above unless something went wrong.
//!
//! Must not touch: anything but metrics and logs.

use std::fmt::Display;
use std::time::Duration;

use crate::campaign::Rejection;
use crate::messages::CampaignOutcome;
use crate::metrics::{ActorKind, DeadLetterReason, ErrorClass, LifecycleEvent, Metrics, SinkKind};
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
            LifecycleEvent::TakenOver => {
                log::info!("campaign {c} of restaurant {r}: the instance firing it is gone; firing it again")
            }
        }
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

/// A load of the subscriber snapshot failed; `serving` says whether an older one is in use.
pub struct CacheLoadFailed<'a> {
    pub error: &'a str,
    pub serving: bool,
}

impl Event for CacheLoadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.cache_refresh_failures.inc();
        if self.serving {
            log::warn!(
                "subscriber cache: reload failed, keeping the previous snapshot: {}",
                self.error
            );
        } else {
            log::warn!("subscriber cache: first load failed: {}", self.error);
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
}
