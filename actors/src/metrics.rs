//! Every metric the service exports, registered in one [`prometheus::Registry`], and the bounded
//! label values they take, as enums.
//!
//! Names follow `campaign_notifier_<what>_<unit>`, counters end in `_total`, durations in
//! `_seconds`. Labels are bounded: a sink, a reason code, an outcome; never an id, an offset or
//! error text. Every value of every label enum is exported at 0 from the start. What the service
//! counts and logs together is emitted through the events module, so a counter and its log line
//! cannot drift apart.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const NAMESPACE: &str = "campaign_notifier";

/// An enum of label values: `ALL` lists them, `as_str` is the value exported.
macro_rules! label_values {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in the order they are declared.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// What became of a campaign (`campaigns_processed_total{outcome}`).
    pub enum Outcome {
        /// Both sinks confirmed its notifications.
        Delivered => "delivered",
        /// Every subscriber already had it (the message was delivered again).
        AlreadyNotified => "already_notified",
        /// The message was unusable.
        Rejected => "rejected",
        /// Arrived before its start: kept, to fire at its start.
        Scheduled => "scheduled",
        /// Arrived active inside quiet hours: kept, to fire when they end.
        Held => "held",
        /// A newer version, over already, cancelled the scheduled one.
        Cancelled => "cancelled",
        /// An older version than the one kept.
        Superseded => "superseded",
        /// It changed a campaign that has already fired: nobody notified again.
        ChangedAfterStart => "changed_after_start",
        /// It recalled a campaign that had fired, or every notification of a campaign that was
        /// going out was stopped by its recall.
        Recalled => "recalled",
        Ended => "ended",
        NoSubscribers => "no_subscribers",
        /// A sink refused it for good.
        SinkFailed => "sink_failed",
        /// A writer went away without confirming; it will be read again.
        Unconfirmed => "unconfirmed",
    }
}

label_values! {
    /// Why a campaign message was unusable (`campaigns_rejected_total{reason}`).
    pub enum RejectCode {
        TooLarge => "too_large",
        TooLong => "too_long",
        NotUtf8 => "not_utf8",
        NotJson => "not_json",
        MissingField => "missing_field",
        WrongType => "wrong_type",
        EmptyField => "empty_field",
        InvalidChar => "invalid_char",
        OutOfRange => "out_of_range",
        StartAfterEnd => "start_after_end",
    }
}

/// Why a message went to the dead-letter topic (`dead_letters_total{reason}` and the
/// `dlq.reason.code` header): the message was unusable, its campaign is outside its window, or a
/// sink refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    Rejected(RejectCode),
    Ended,
    /// A sink refused the campaign for good; nothing of it is in either sink.
    SinkRefused,
}

impl DeadLetterReason {
    /// Every value.
    pub fn all() -> impl Iterator<Item = DeadLetterReason> {
        let rejected = RejectCode::ALL
            .iter()
            .map(|&c| DeadLetterReason::Rejected(c));
        rejected.chain([DeadLetterReason::Ended, DeadLetterReason::SinkRefused])
    }

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected(code) => code.as_str(),
            DeadLetterReason::Ended => "ended",
            DeadLetterReason::SinkRefused => "sink_refused",
        }
    }
}

impl From<RejectCode> for DeadLetterReason {
    fn from(code: RejectCode) -> DeadLetterReason {
        DeadLetterReason::Rejected(code)
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

label_values! {
    /// A sink (`{sink}` of the writers' metrics).
    pub enum SinkKind {
        Kafka => "kafka",
        Postgres => "postgres",
        DeadLetter => "dead_letter",
    }
}

impl SinkKind {
    /// The writer actor of the sink.
    pub const fn writer(self) -> ActorKind {
        match self {
            SinkKind::Kafka => ActorKind::KafkaWriter,
            SinkKind::Postgres => ActorKind::PostgresWriter,
            SinkKind::DeadLetter => ActorKind::DeadLetterWriter,
        }
    }

    /// Whether what it writes are notifications (`notifications_written_total`).
    pub const fn writes_notifications(self) -> bool {
        !matches!(self, SinkKind::DeadLetter)
    }
}

label_values! {
    /// How a failed write is handled (`sink_write_errors_total{class}`).
    pub enum ErrorClass {
        /// Reconnect and write the same again.
        Retriable => "retriable",
        /// The data was refused: isolated and reported, never retried.
        Permanent => "permanent",
    }
}

label_values! {
    /// Why notifications written to Postgres were deleted again
    /// (`notifications_withdrawn_total{reason}`).
    pub enum WithdrawReason {
        /// Kafka refused them for good.
        Refused => "refused",
        /// The campaign's end (plus the grace) passed before Kafka had them.
        Ended => "ended",
        /// The campaign was recalled before Kafka had them.
        Recalled => "recalled",
    }
}

label_values! {
    /// What happened in a campaign's life (`lifecycle_events_total{event}`).
    pub enum LifecycleEvent {
        /// Kept to fire at its start.
        Scheduled => "scheduled",
        /// A newer version replaced the scheduled one before its start.
        Replaced => "replaced",
        /// A newer version with its end in the past cancelled the scheduled one.
        Cancelled => "cancelled",
        /// An older version than the one kept arrived, and was ignored.
        Superseded => "superseded",
        /// A version with changed content arrived after the campaign fired: nobody notified.
        ChangedAfterStart => "changed_after_start",
        /// A newer version with its end in the past recalled the campaign after it fired.
        Recalled => "recalled",
        /// Fired at its start (its notifications confirmed by both sinks).
        Fired => "fired",
        /// Its end passed before it could fire.
        Expired => "expired",
        /// Claimed again after the instance firing it died.
        TakenOver => "taken_over",
    }
}

label_values! {
    /// A supervised actor (`actor_restarts_total{actor}`).
    pub enum ActorKind {
        KafkaWriter => "kafka_writer",
        PostgresWriter => "postgres_writer",
        DeadLetterWriter => "dead_letter_writer",
        SubscriberCache => "subscriber_cache",
        Ledger => "ledger",
        LeaseKeeper => "lease_keeper",
        Lifecycle => "lifecycle",
    }
}

impl ActorKind {
    /// How logs and fatal reasons name it.
    pub const fn name(self) -> &'static str {
        match self {
            ActorKind::KafkaWriter => "kafka writer",
            ActorKind::PostgresWriter => "postgres writer",
            ActorKind::DeadLetterWriter => "dead_letter writer",
            ActorKind::SubscriberCache => "subscriber cache",
            ActorKind::Ledger => "ledger",
            ActorKind::LeaseKeeper => "lease keeper",
            ActorKind::Lifecycle => "lifecycle",
        }
    }
}

label_values! {
    /// A loop whose heartbeat `/healthz` watches (`loop_heartbeat_age_seconds{loop}`).
    pub enum Loop {
        /// The reader's loop: pulls campaigns, collects their outcomes.
        Reader => "kafka_reader",
        /// Renews this instance's lease.
        LeaseKeeper => "lease_keeper",
        /// Clears marks and takes over dead owners.
        Ledger => "ledger",
        /// Records campaigns and fires scheduled ones.
        Lifecycle => "lifecycle",
        KafkaWriter => "kafka_writer",
        PostgresWriter => "postgres_writer",
        DeadLetterWriter => "dead_letter_writer",
    }
}

impl Loop {
    /// The loop of the writer of `sink`.
    pub fn writer(sink: SinkKind) -> Loop {
        match sink {
            SinkKind::Kafka => Loop::KafkaWriter,
            SinkKind::Postgres => Loop::PostgresWriter,
            SinkKind::DeadLetter => Loop::DeadLetterWriter,
        }
    }
}

/// Declares [`Metrics`] from one table: each metric's field (its doc and type) beside how it is
/// registered (the [`Registrar`] method with the name, help, labels and buckets), one metric a
/// place, as a table reads best.
macro_rules! metrics {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $kind:ident($($arg:expr),+);)+) => {
        #[derive(Clone)]
        pub struct Metrics {
            pub registry: Registry,
            $($(#[$doc])* pub $field: $ty,)+
        }

        impl Metrics {
            fn register(r: Registrar) -> Metrics {
                Metrics {
                    $($field: r.$kind($($arg),+),)+
                    registry: r.0,
                }
            }
        }
    };
}

metrics! {
    /// Campaign messages read from the input topic.
    campaigns_received: IntCounter = counter("campaigns_received_total",
        "Campaign messages read from the input topic");
    /// Campaigns by what became of them ([`Outcome`]).
    campaigns_processed: IntCounterVec = counters("campaigns_processed_total",
        "Campaigns completed, by outcome", &["outcome"]);
    /// Rejected campaign messages by reason code ([`RejectCode`]).
    campaigns_rejected: IntCounterVec = counters("campaigns_rejected_total",
        "Campaign messages rejected as unusable, by reason", &["reason"]);
    /// Messages written to the dead-letter topic, by reason code ([`DeadLetterReason`]).
    dead_letters: IntCounterVec = counters("dead_letters_total",
        "Messages written to the dead-letter topic, by reason", &["reason"]);
    /// Notifications built by the enricher (one per campaign and subscriber).
    notifications_built: IntCounter = counter("notifications_built_total",
        "Notifications built, one per active campaign and subscriber");
    /// Notifications confirmed written, per sink.
    notifications_written: IntCounterVec = counters("notifications_written_total",
        "Notifications confirmed written, per sink", &["sink"]);
    /// Failed sink writes per sink and class ([`ErrorClass`]).
    sink_write_errors: IntCounterVec = counters("sink_write_errors_total",
        "Failed sink writes, per sink and error class", &["sink", "class"]);
    /// Rows per flushed write, per sink.
    sink_batch_rows: HistogramVec = histograms("sink_batch_rows",
        "Rows per sink write", &["sink"], ROWS);
    /// Duration of one flushed write, per sink.
    sink_write_duration: HistogramVec = histograms("sink_write_duration_seconds",
        "Duration of one sink write", &["sink"], SECONDS);
    /// Notifications waiting in or being written by each sink.
    sink_pending_rows: IntGaugeVec = gauges("sink_pending_rows",
        "Notifications queued in or being written by a sink", &["sink"]);
    /// 1 while the sink has a working connection.
    sink_connected: IntGaugeVec = gauges("sink_connected",
        "1 while the sink has a working connection", &["sink"]);
    /// 1 while the sink refuses every write (a configuration fault): campaigns are held.
    sink_fault: IntGaugeVec = gauges("sink_fault",
        "1 while the sink refuses every write (a configuration fault)", &["sink"]);
    /// What `/readyz` says, as of the last scrape or probe: 1 ready, 0 not.
    ready: IntGauge = gauge("ready",
        "What /readyz says, as of the last scrape or probe: 1 ready, 0 not (its reason is in /readyz)");
    /// Restarts per supervised actor ([`ActorKind`]).
    actor_restarts: IntCounterVec = counters("actor_restarts_total",
        "Restarts of a supervised actor", &["actor"]);
    /// Campaigns read and not yet completed.
    campaigns_in_flight: IntGauge = gauge("campaigns_in_flight",
        "Campaigns read and not yet completed");
    /// Notifications between the join and both sinks' confirmation (at most
    /// `writers.max_notifications_in_flight`).
    notifications_in_flight: IntGauge = gauge("notifications_in_flight",
        "Notifications between the join and both sinks' confirmation");
    /// Time from the campaign's Kafka timestamp until both sinks confirmed it.
    end_to_end_latency: Histogram = histogram("end_to_end_latency_seconds",
        "From the campaign's Kafka timestamp until both sinks confirmed it", LATENCY_SECONDS);
    /// Pairs of `subscribers_restaurants` the last load left out (an id over the length limit).
    cache_pairs_skipped: IntGauge = gauge("cache_pairs_skipped",
        "Pairs the last load left out for an id longer than the limit");
    /// Subscriber pairs in the snapshot in use, with the changes applied since it was loaded.
    cache_pairs: IntGauge = gauge("cache_pairs",
        "Subscriber pairs in the snapshot in use, with the changes applied since it was loaded");
    /// Restaurants with at least one subscriber in the loaded snapshot.
    cache_restaurants: IntGauge = gauge("cache_restaurants",
        "Restaurants with subscribers in the loaded snapshot");
    /// Unix time of the last successful snapshot load.
    cache_loaded_timestamp: IntGauge = gauge("cache_loaded_timestamp_seconds",
        "Unix time of the last successful snapshot load");
    /// Duration of a full snapshot load.
    cache_refresh_duration: Histogram = histogram("cache_refresh_duration_seconds",
        "Duration of a full subscriber snapshot load", SECONDS);
    /// Failed snapshot loads.
    cache_refresh_failures: IntCounter = counter("cache_refresh_failures_total",
        "Failed subscriber snapshot loads");
    /// Consumer offsets stored for commit.
    offsets_stored: IntCounter = counter("offsets_stored_total",
        "Input offsets stored for commit after both sinks confirmed");
    /// Per input partition: messages behind the last offset stored for commit (confirmed by
    /// both sinks), from librdkafka's statistics.
    consumer_lag: IntGaugeVec = gauges("consumer_lag_messages",
        "Messages in the input partition after the last offset confirmed by both sinks", &["partition"]);
    /// Seconds since the subscriber snapshot in use was loaded; updated at each scrape.
    cache_snapshot_age: IntGauge = gauge("cache_snapshot_age_seconds",
        "Seconds since the subscriber snapshot in use was loaded");
    /// Postgres' clock minus this host's, which the service follows (see [`crate::clock`]);
    /// updated at each scrape.
    clock_offset: Gauge = float_gauge("clock_offset_seconds",
        "Postgres' clock minus this host's, as last measured; the service keeps Postgres' time");
    /// Notifications written to Postgres and deleted again, by [`WithdrawReason`].
    notifications_withdrawn: IntCounterVec = counters("notifications_withdrawn_total",
        "Notifications deleted from Postgres again because Kafka could not have them, by reason", &["reason"]);
    /// Notifications of recalled campaigns that went to neither sink.
    notifications_recalled: IntCounter = counter("notifications_recalled_total",
        "Notifications of recalled campaigns that went to neither sink (stopped before Postgres, or withdrawn from it before Kafka had them)");
    /// Notifications over `[limits] per_client_max` for their client, written to neither sink
    /// (recorded in `campaign_notifier_capped`); counted once the transaction that capped them
    /// committed.
    notifications_capped: IntCounter = counter("notifications_capped_total",
        "Notifications over the per-client cap, written to neither sink");
    /// Campaigns kept to fire at their start.
    campaigns_scheduled: IntGauge = gauge("campaigns_scheduled",
        "Campaigns kept to fire at their start");
    /// Scheduled campaigns whose start has passed, held by quiet hours (0 outside them).
    campaigns_held: IntGauge = gauge("campaigns_held",
        "Scheduled campaigns whose start has passed, held until quiet hours end (0 outside them)");
    /// Notifications of the scheduled campaigns this instance claimed and is firing.
    notifications_firing: IntGauge = gauge("notifications_firing",
        "Notifications of the scheduled campaigns this instance claimed and is firing (bounded by writers.max_notifications_in_flight)");
    /// Events of the campaigns' lifecycle ([`LifecycleEvent`]).
    lifecycle_events: IntCounterVec = counters("lifecycle_events_total",
        "Events of the campaigns' lifecycle", &["event"]);
    /// From a scheduled campaign's start until both sinks confirmed its last notification.
    fire_delay: Histogram = histogram("fire_delay_seconds",
        "From a scheduled campaign's start until both sinks confirmed its last notification", FIRE_SECONDS);
    /// Subscribers read from Postgres at once for scheduled campaigns being fired (a large
    /// audience is read a slice at a time, within `writers.max_notifications_in_flight`).
    fire_audience_read: Histogram = histogram("fire_audience_read_subscribers",
        "Subscribers read from Postgres at once for scheduled campaigns being fired (a large audience a slice at a time)", AUDIENCE_READ);
    /// Notifications of active campaigns to clients who subscribed after the campaign was
    /// delivered (found by the change feed or a reload).
    late_subscriber_notifications: IntCounter = counter("late_subscriber_notifications_total",
        "Notifications of active campaigns to clients who subscribed after the campaign was delivered");
    /// On the instance that follows the change feed: seconds since everything subscribed before
    /// then had been followed and its notifications confirmed (0 elsewhere).
    change_feed_lag: Gauge = float_gauge("change_feed_lag_seconds",
        "Seconds since every subscription added before then was followed and notified (on the instance following the feed)");
    /// How `subscribers_restaurants`' changes are followed: 1 for the mode in use
    /// (`logical`, `trigger` or `ids`).
    subscriber_changes_mode: IntGaugeVec = gauges("subscriber_changes_mode",
        "1 for the way subscribers_restaurants' changes are followed (logical, trigger, ids)", &["mode"]);
    /// From a change's commit in `subscribers_restaurants` until this instance's join uses it.
    subscriber_change_lag: Histogram = histogram("subscriber_change_lag_seconds",
        "From a change's commit in subscribers_restaurants until this instance's join uses it", FIRE_SECONDS);
    /// Changes of pairs applied to this instance's snapshot, by op (`add`, `remove`).
    subscriber_changes_applied: IntCounterVec = counters("subscriber_changes_applied_total",
        "Changes of subscribers_restaurants applied to this instance's snapshot, by op", &["op"]);
    /// Notifications of a campaign going out in slices left out because the client unsubscribed
    /// (or moved to another restaurant) after the campaign was joined.
    notifications_unsubscribed: IntCounter = counter("notifications_unsubscribed_total",
        "Notifications of a campaign going out in slices left out because the client unsubscribed or moved away after the join");
    /// Clients added or removed since the snapshot in use was loaded (a reload folds them in).
    subscriber_changes_unfolded: IntGauge = gauge("subscriber_changes_unfolded",
        "Clients added or removed since the snapshot in use was loaded");
    /// The logical mode, on the change feed's leader: WAL written since the slot's confirmed
    /// position (what the service has yet to read).
    replication_slot_lag_bytes: IntGauge = gauge("replication_slot_lag_bytes",
        "WAL written since the replication slot's confirmed position (on the change feed's leader)");
    /// The logical mode, on the change feed's leader: WAL the server keeps for the slot.
    replication_slot_retained_bytes: IntGauge = gauge("replication_slot_retained_bytes",
        "WAL the server keeps for the replication slot (on the change feed's leader)");
    /// 1 for the replication slot's `wal_status` (`reserved`, `extended`, `unreserved`,
    /// `lost`), on the change feed's leader.
    replication_slot_wal_status: IntGaugeVec = gauges("replication_slot_wal_status",
        "1 for the replication slot's wal_status (on the change feed's leader)", &["status"]);
    /// 1 while this instance's lease is valid (it may write), 0 while it is lapsed or fenced.
    lease_valid: IntGauge = gauge("lease_valid",
        "1 while this instance's lease is valid and it may write, 0 while lapsed or fenced");
    /// Other instances this one fenced (their lease had expired), before taking their work over.
    owners_fenced: IntCounter = counter("owners_fenced_total",
        "Other instances this one fenced after their lease expired");
    /// Seconds since each loop `/healthz` watches last turned ([`Loop`]).
    loop_heartbeat_age: GaugeVec = float_gauges("loop_heartbeat_age_seconds",
        "Seconds since a loop /healthz watches last turned", &["loop"]);
    /// Campaigns a stop left unfinished at the end of its grace period (read again next time).
    drain_abandoned_campaigns: IntCounter = counter("drain_abandoned_campaigns_total",
        "Campaigns a stop left unfinished at the end of its grace period");
    /// Build information, value always 1.
    build_info: IntGaugeVec = gauges("build_info",
        "Build information; the value is always 1", &["version"]);
}

/// Durations from half a millisecond to a minute.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Finer where the latency target is (tens of milliseconds).
const LATENCY_SECONDS: &[f64] = &[
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Subscribers read at once for campaigns being fired.
const AUDIENCE_READ: &[f64] = &[
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    200_000.0,
    500_000.0,
    1_000_000.0,
    10_000_000.0,
];

/// From a scheduled campaign's start until its last notification is confirmed: a tenth of a second
/// to minutes, finest around the second the target is.
const FIRE_SECONDS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0,
    30.0, 60.0, 120.0, 300.0,
];
const ROWS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 50000.0, 100000.0,
];

/// Creates metrics under the namespace and registers them. Registration only fails on a
/// duplicate or malformed name, a programming error that the first test building a [`Metrics`]
/// catches.
struct Registrar(Registry);

impl Registrar {
    fn add<T: Collector + Clone + 'static>(&self, metric: prometheus::Result<T>) -> T {
        let metric = metric.unwrap_or_else(|e| panic!("invalid metric: {e}"));
        self.0
            .register(Box::new(metric.clone()))
            .unwrap_or_else(|e| panic!("metric registration: {e}"));
        metric
    }

    fn opts(what: &str, help: &str) -> Opts {
        Opts::new(format!("{NAMESPACE}_{what}"), help)
    }

    fn counter(&self, what: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Self::opts(what, help)))
    }

    fn counters(&self, what: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Self::opts(what, help), labels))
    }

    fn gauge(&self, what: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Self::opts(what, help)))
    }

    fn float_gauge(&self, what: &str, help: &str) -> Gauge {
        self.add(Gauge::with_opts(Self::opts(what, help)))
    }

    fn float_gauges(&self, what: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Self::opts(what, help), labels))
    }

    fn gauges(&self, what: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Self::opts(what, help), labels))
    }

    fn histogram(&self, what: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::from(Self::opts(what, help)).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts))
    }

    fn histograms(&self, what: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::from(Self::opts(what, help)).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels))
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let metrics = Metrics::register(Registrar(Registry::new()));
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // whole subscriber cache lives in this process's memory.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = metrics.registry.register(Box::new(process)) {
            log::warn!("process metrics unavailable: {e}");
        }
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics.export_known_labels();
        metrics
    }

    /// Every known label value starts at 0, so the first event is a step that rate() and alerts
    /// see, and panels show 0 instead of "No data".
    fn export_known_labels(&self) {
        for outcome in Outcome::ALL {
            self.campaigns_processed
                .with_label_values(&[outcome.as_str()]);
        }
        for code in RejectCode::ALL {
            self.campaigns_rejected.with_label_values(&[code.as_str()]);
        }
        for reason in DeadLetterReason::all() {
            self.dead_letters.with_label_values(&[reason.as_str()]);
        }
        for sink in SinkKind::ALL {
            if sink.writes_notifications() {
                self.notifications_written
                    .with_label_values(&[sink.as_str()]);
            }
            self.sink_fault.with_label_values(&[sink.as_str()]);
            for class in ErrorClass::ALL {
                self.sink_write_errors
                    .with_label_values(&[sink.as_str(), class.as_str()]);
            }
        }
        for actor in ActorKind::ALL {
            self.actor_restarts.with_label_values(&[actor.as_str()]);
        }
        for reason in WithdrawReason::ALL {
            self.notifications_withdrawn
                .with_label_values(&[reason.as_str()]);
        }
        for op in ["add", "remove"] {
            self.subscriber_changes_applied.with_label_values(&[op]);
        }
        for status in ["reserved", "extended", "unreserved", "lost"] {
            self.replication_slot_wal_status
                .with_label_values(&[status]);
        }
        for event in LifecycleEvent::ALL {
            self.lifecycle_events.with_label_values(&[event.as_str()]);
        }
        for l in Loop::ALL {
            self.loop_heartbeat_age.with_label_values(&[l.as_str()]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let loaded = self.cache_loaded_timestamp.get();
        if loaded > 0 {
            let now = crate::clock::Clock::system().now_secs();
            self.cache_snapshot_age.set((now - loaded).max(0));
        }
        self.clock_offset
            .set(crate::clock::postgres_offset_ms() as f64 / 1000.0);
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
            assert!(
                line.starts_with("campaign_notifier_") || line.starts_with("process_"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_process_itself_is_measured() {
        let text = Metrics::new().render();
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing"));
            // A process this young may not have used a whole clock tick of CPU yet.
            let least = if name == "process_cpu_seconds_total" {
                0.0
            } else {
                1.0
            };
            assert!(
                value.parse::<f64>().is_ok_and(|v| v >= least),
                "{name} {value}"
            );
        }
    }
}
