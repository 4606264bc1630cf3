//! Every metric the service exports, registered in one [`prometheus::Registry`].
//!
//! Names follow `campaign_notifier_<what>_<unit>`, counters end in `_total`, durations in
//! `_seconds`. Labels are bounded: a sink name, a reason code, an outcome; never an id, an offset
//! or error text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "campaign_notifier";

/// Label values known in advance (see `CampaignOutcome::label`, the writers' `Sink::NAME`).
const OUTCOMES: [&str; 8] = [
    "delivered",
    "already_notified",
    "rejected",
    "not_started",
    "ended",
    "no_subscribers",
    "sink_failed",
    "unconfirmed",
];
const SINKS: [&str; 3] = ["kafka", "postgres", "dead_letter"];
const ACTORS: [&str; 5] = [
    "kafka_writer",
    "postgres_writer",
    "dead_letter_writer",
    "subscriber_cache",
    "ledger",
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Campaign messages read from the input topic.
    pub campaigns_received: IntCounter,
    /// Campaigns by what became of them: `delivered`, `rejected`, `not_started`, `ended`,
    /// `no_subscribers`, `sink_failed`.
    pub campaigns_processed: IntCounterVec,
    /// Rejected campaign messages by reason code.
    pub campaigns_rejected: IntCounterVec,
    /// Messages written to the dead-letter topic, by reason code.
    pub dead_letters: IntCounterVec,
    /// Notifications built by the enricher (one per campaign and subscriber).
    pub notifications_built: IntCounter,
    /// Notifications confirmed written, per sink.
    pub notifications_written: IntCounterVec,
    /// Failed sink writes per sink and class (`retriable`, `permanent`).
    pub sink_write_errors: IntCounterVec,
    /// Rows per flushed write, per sink.
    pub sink_batch_rows: HistogramVec,
    /// Duration of one flushed write, per sink.
    pub sink_write_duration: HistogramVec,
    /// Notifications waiting in or being written by each sink.
    pub sink_pending_rows: IntGaugeVec,
    /// 1 while the sink has a working connection.
    pub sink_connected: IntGaugeVec,
    /// Restarts per supervised actor.
    pub actor_restarts: IntCounterVec,
    /// Campaigns read and not yet completed.
    pub campaigns_in_flight: IntGauge,
    /// Time from the campaign's Kafka timestamp until both sinks confirmed it.
    pub end_to_end_latency: Histogram,
    /// Subscriber pairs in the loaded snapshot.
    pub cache_pairs: IntGauge,
    /// Restaurants with at least one subscriber in the loaded snapshot.
    pub cache_restaurants: IntGauge,
    /// Unix time of the last successful snapshot load.
    pub cache_loaded_timestamp: IntGauge,
    /// Duration of a full snapshot load.
    pub cache_refresh_duration: Histogram,
    /// Failed snapshot loads.
    pub cache_refresh_failures: IntCounter,
    /// Consumer offsets stored for commit.
    pub offsets_stored: IntCounter,
    /// Per input partition: messages behind the last offset stored for commit (confirmed by
    /// both sinks), from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Seconds since the subscriber snapshot in use was loaded; updated at each scrape.
    pub cache_snapshot_age: IntGauge,
    /// Build information, value always 1.
    pub build_info: IntGaugeVec,
}

fn name(what: &str) -> String {
    format!("{NAMESPACE}_{what}")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // Registration only fails on a duplicate or malformed name, which is a programming error
        // caught by the first test that builds a Metrics.
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("metric registration: {e}"));
            c
        }
        let counter = |what: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name(what), help).expect("valid metric"),
            )
        };
        let counter_vec = |what: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name(what), help), labels).expect("valid metric"),
            )
        };
        let gauge = |what: &str, help: &str| {
            reg(
                &registry,
                IntGauge::new(name(what), help).expect("valid metric"),
            )
        };
        let gauge_vec = |what: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntGaugeVec::new(Opts::new(name(what), help), labels).expect("valid metric"),
            )
        };
        let secs = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        // Finer where the latency target is (tens of milliseconds).
        let latency_secs = vec![
            0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1,
            0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let rows = vec![
            1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0, 100000.0,
        ];
        let metrics = Metrics {
            campaigns_received: counter(
                "campaigns_received_total",
                "Campaign messages read from the input topic",
            ),
            campaigns_processed: counter_vec(
                "campaigns_processed_total",
                "Campaigns completed, by outcome",
                &["outcome"],
            ),
            campaigns_rejected: counter_vec(
                "campaigns_rejected_total",
                "Campaign messages rejected as unusable, by reason",
                &["reason"],
            ),
            dead_letters: counter_vec(
                "dead_letters_total",
                "Messages written to the dead-letter topic, by reason",
                &["reason"],
            ),
            notifications_built: counter(
                "notifications_built_total",
                "Notifications built, one per active campaign and subscriber",
            ),
            notifications_written: counter_vec(
                "notifications_written_total",
                "Notifications confirmed written, per sink",
                &["sink"],
            ),
            sink_write_errors: counter_vec(
                "sink_write_errors_total",
                "Failed sink writes, per sink and error class",
                &["sink", "class"],
            ),
            sink_batch_rows: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name("sink_batch_rows"), "Rows per sink write")
                        .buckets(rows),
                    &["sink"],
                )
                .expect("valid metric"),
            ),
            sink_write_duration: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("sink_write_duration_seconds"),
                        "Duration of one sink write",
                    )
                    .buckets(secs.clone()),
                    &["sink"],
                )
                .expect("valid metric"),
            ),
            sink_pending_rows: gauge_vec(
                "sink_pending_rows",
                "Notifications queued in or being written by a sink",
                &["sink"],
            ),
            sink_connected: gauge_vec(
                "sink_connected",
                "1 while the sink has a working connection",
                &["sink"],
            ),
            actor_restarts: counter_vec(
                "actor_restarts_total",
                "Restarts of a supervised actor",
                &["actor"],
            ),
            campaigns_in_flight: gauge(
                "campaigns_in_flight",
                "Campaigns read and not yet completed",
            ),
            end_to_end_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        name("end_to_end_latency_seconds"),
                        "From the campaign's Kafka timestamp until both sinks confirmed it",
                    )
                    .buckets(latency_secs),
                )
                .expect("valid metric"),
            ),
            cache_pairs: gauge("cache_pairs", "Subscriber pairs in the loaded snapshot"),
            cache_restaurants: gauge(
                "cache_restaurants",
                "Restaurants with subscribers in the loaded snapshot",
            ),
            cache_loaded_timestamp: gauge(
                "cache_loaded_timestamp_seconds",
                "Unix time of the last successful snapshot load",
            ),
            cache_refresh_duration: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        name("cache_refresh_duration_seconds"),
                        "Duration of a full subscriber snapshot load",
                    )
                    .buckets(secs),
                )
                .expect("valid metric"),
            ),
            cache_refresh_failures: counter(
                "cache_refresh_failures_total",
                "Failed subscriber snapshot loads",
            ),
            offsets_stored: counter(
                "offsets_stored_total",
                "Input offsets stored for commit after both sinks confirmed",
            ),
            consumer_lag: gauge_vec(
                "consumer_lag_messages",
                "Messages in the input partition after the last offset confirmed by both sinks",
                &["partition"],
            ),
            cache_snapshot_age: gauge(
                "cache_snapshot_age_seconds",
                "Seconds since the subscriber snapshot in use was loaded",
            ),
            build_info: gauge_vec(
                "build_info",
                "Build information; the value is always 1",
                &["version"],
            ),
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Every known label value starts at 0, so the first event is a step that rate() and
        // alerts see, and panels show 0 instead of "No data".
        for outcome in OUTCOMES {
            metrics.campaigns_processed.with_label_values(&[outcome]);
        }
        for reason in crate::campaign::Rejection::CODES {
            metrics.campaigns_rejected.with_label_values(&[reason]);
            metrics.dead_letters.with_label_values(&[reason]);
        }
        for reason in ["ended", "not_started"] {
            metrics.dead_letters.with_label_values(&[reason]);
        }
        for sink in SINKS {
            if sink != "dead_letter" {
                metrics.notifications_written.with_label_values(&[sink]);
            }
            for class in ["retriable", "permanent"] {
                metrics.sink_write_errors.with_label_values(&[sink, class]);
            }
        }
        for actor in ACTORS {
            metrics.actor_restarts.with_label_values(&[actor]);
        }
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let loaded = self.cache_loaded_timestamp.get();
        if loaded > 0 {
            let now = crate::clock::unix_secs();
            self.cache_snapshot_age.set((now - loaded).max(0));
        }
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_values_are_exported_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for series in [
            r#"campaign_notifier_campaigns_processed_total{outcome="delivered"} 0"#,
            r#"campaign_notifier_campaigns_rejected_total{reason="not_json"} 0"#,
            r#"campaign_notifier_dead_letters_total{reason="ended"} 0"#,
            r#"campaign_notifier_sink_write_errors_total{class="permanent",sink="postgres"} 0"#,
            r#"campaign_notifier_actor_restarts_total{actor="ledger"} 0"#,
            r#"campaign_notifier_notifications_written_total{sink="kafka"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing");
        }
        assert!(!text.contains(r#"notifications_written_total{sink="dead_letter"}"#));
    }

    #[test]
    fn every_metric_is_exported_with_the_namespace() {
        let m = Metrics::new();
        m.campaigns_rejected.with_label_values(&["not_json"]).inc();
        m.notifications_written
            .with_label_values(&["kafka"])
            .inc_by(3);
        let text = m.render();
        assert!(text.contains("campaign_notifier_campaigns_rejected_total{reason=\"not_json\"} 1"));
        assert!(text.contains("campaign_notifier_notifications_written_total{sink=\"kafka\"} 3"));
        assert!(text.contains("campaign_notifier_build_info{version="));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("campaign_notifier_"), "{line}");
        }
    }
}
