//! The consumer of the input topic as the reader and the orphan watch share it: its settings,
//! and the context that logs the group's decisions and exports the lag.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::lease::Lease;
use crate::metrics::Metrics;

/// Logs the group's decisions (the lines an operator looks for when partitions move), tells the
/// lease which partitions this process holds (peers read them from its row), and turns
/// librdkafka's statistics into the lag gauge.
pub struct ReaderContext {
    metrics: Metrics,
    lease: Lease,
}

impl ClientContext for ReaderContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag = &self.metrics.consumer_lag;
        // Partitions revoked since the last report must not linger as stale series.
        lag.reset();
        for topic in statistics.topics.values() {
            for p in topic.partitions.values() {
                // -1 is librdkafka's internal partition; a negative lag means "not known yet".
                if p.partition >= 0 && p.desired && p.consumer_lag_stored >= 0 {
                    lag.with_label_values(&[&p.partition.to_string()])
                        .set(p.consumer_lag_stored);
                }
            }
        }
    }
}

impl ConsumerContext for ReaderContext {
    fn post_rebalance(
        &self,
        _base: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                log::info!("kafka reader: assigned {}", describe(tpl));
                self.lease
                    .set_partitions(tpl.elements().iter().map(|e| e.partition()).collect());
            }
            Rebalance::Revoke(tpl) => {
                log::info!("kafka reader: revoked {}", describe(tpl));
                self.lease.set_partitions(Default::default());
            }
            Rebalance::Error(e) => log::warn!("kafka reader: rebalance failed: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            log::warn!("kafka reader: offset commit failed: {e}");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    let parts: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        "no partitions".into()
    } else {
        parts.join(", ")
    }
}

pub type ReaderConsumer = StreamConsumer<ReaderContext>;

#[derive(Clone)]
pub struct ReaderSettings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub auto_offset_reset: String,
    pub max_in_flight: usize,
    /// See [`super::orphan_watch`]; `None` turns the watch off.
    pub orphan_stall: Option<Duration>,
    pub overrides: Vec<(String, String)>,
}

impl std::fmt::Debug for ReaderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("auto_offset_reset", &self.auto_offset_reset)
            .field("max_in_flight", &self.max_in_flight)
            .field("orphan_stall", &self.orphan_stall)
            .field("overrides", &crate::kafka::ShownProperties(&self.overrides))
            .finish()
    }
}

impl ReaderSettings {
    /// The consumer; its rebalances are told to `lease`.
    pub fn create_consumer(&self, metrics: Metrics, lease: Lease) -> KafkaResult<ReaderConsumer> {
        self.client_config()
            .create_with_context(ReaderContext { metrics, lease })
    }

    /// The consumer's librdkafka properties: the service's own, then the config's.
    pub fn client_config(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            // Offsets are stored by hand once both sinks confirmed, never on read.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &self.auto_offset_reset)
            .set("enable.partition.eof", "false")
            // A campaign is worth hundreds of notifications: a hundred waiting per partition keep
            // the pipeline busy, and librdkafka stops fetching while it holds them instead of
            // asking the broker for more all through a backlog (librdkafka's default is 100 000).
            .set("queued.min.messages", "100")
            // ...and looks again 10 ms later, not after librdkafka's default second, which a
            // hundred small campaigns take less than to process.
            .set("fetch.queue.backoff.ms", "10")
            .set("statistics.interval.ms", "5000");
        for (k, v) in &self.overrides {
            cc.set(k, v);
        }
        cc
    }
}
