//! The fixture's topics on the broker: created, counted by their watermarks, the service group's
//! commits, and every message read back as a read-committed reader sees it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::Fixture;

/// A message as read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: std::collections::BTreeMap<String, String>,
}

/// A client of `brokers` with `properties` set.
pub(super) fn client_of(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        cc.set(k, v);
    }
    cc
}

/// Creates `topics` on `brokers`; fails the test if any of them cannot be made.
pub(super) async fn create_topics(
    brokers: &str,
    properties: &[(String, String)],
    topics: &[NewTopic<'_>],
) {
    let admin: AdminClient<DefaultClientContext> = client_of(brokers, properties)
        .create()
        .expect("admin client");
    for result in admin
        .create_topics(topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

impl Fixture {
    /// Creates one more topic of this test's (`cn-<test>-<suffix>`); returns its name.
    pub async fn create_topic(&self, suffix: &str, partitions: i32) -> String {
        let name = format!("cn-{}-{suffix}", self.name);
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        create_topics(&self.brokers, &self.client_properties, &[topic]).await;
        name
    }

    /// Messages in the output topic right now, by the partitions' watermarks: exact, no waiting.
    pub fn output_count(&self) -> i64 {
        self.count(&self.output_topic)
    }

    pub fn count(&self, topic: &str) -> i64 {
        let consumer = self.consumer();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                high - low
            })
            .sum()
    }

    /// The settings of the test's own reads: a group of its own, nothing committed.
    fn verify_config(&self) -> ClientConfig {
        let mut config = client_of(&self.brokers, &self.client_properties);
        config
            .set("group.id", format!("{}-verify", self.group_id))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10");
        config
    }

    fn consumer(&self) -> BaseConsumer {
        self.verify_config().create().expect("consumer")
    }

    /// Per partition of the input topic: the service group's committed offset and the end of the
    /// partition.
    pub fn input_commits(&self) -> Vec<(i64, i64)> {
        let consumer: BaseConsumer = client_of(&self.brokers, &self.client_properties)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&self.input_topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition(&self.input_topic, p.id());
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| {
                let (_, high) = consumer
                    .fetch_watermarks(&self.input_topic, e.partition(), Duration::from_secs(10))
                    .expect("watermarks");
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                (at, high)
            })
            .collect()
    }

    /// How often each client id occurs in the output topic, reading only that field (for topics
    /// too large to keep whole in the test).
    pub fn output_client_counts(&self) -> HashMap<String, u32> {
        #[derive(serde::Deserialize)]
        struct Client<'a> {
            #[serde(borrow)]
            client_id: std::borrow::Cow<'a, str>,
        }
        let mut counts = HashMap::with_capacity(self.output_count() as usize);
        self.read_to_end(&self.output_topic, |m| {
            let c: Client<'_> = serde_json::from_slice(m.payload().unwrap_or_default())
                .expect("output JSON with a client_id");
            *counts.entry(c.client_id.into_owned()).or_insert(0) += 1;
        });
        counts
    }

    /// Every message of the output topic, as (key, JSON value).
    pub fn read_output(&self) -> Vec<(String, serde_json::Value)> {
        self.read_topic(&self.output_topic)
            .into_iter()
            .map(|m| {
                let key = String::from_utf8(m.key.unwrap_or_default()).expect("utf8 key");
                let value = serde_json::from_slice(&m.payload.unwrap_or_default())
                    .unwrap_or_else(|e| panic!("output is not JSON: {e}"));
                (key, value)
            })
            .collect()
    }

    /// Every message of `topic`, in partition and offset order.
    pub fn read_topic(&self, topic: &str) -> Vec<Received> {
        use rdkafka::message::Headers;
        let mut out = Vec::new();
        self.read_to_end(topic, |m| {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Received {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        });
        out
    }

    /// Hands `each` every message of `topic` a reader that reads committed sees now, from the
    /// start of every partition to its end (transaction markers and aborted records, which the
    /// offsets count, are not messages to it).
    fn read_to_end(
        &self,
        topic: &str,
        mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
    ) {
        let offsets = self.count(topic) as u64;
        let consumer: BaseConsumer = self
            .verify_config()
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let mut left = assign_from_the_start(&consumer, topic);
        let mut read = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60 + offsets / 2000);
        while !left.is_empty() {
            assert!(
                Instant::now() < deadline,
                "read {read} messages of {topic} ({offsets} offsets); partitions {left:?} not \
                 read to their end in time"
            );
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    read += 1;
                    each(&m);
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    left.remove(&p);
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
    }
}

/// Assigns `consumer` every partition of `topic` from its beginning; returns the partitions.
fn assign_from_the_start(
    consumer: &BaseConsumer,
    topic: &str,
) -> std::collections::BTreeSet<i32> {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut partitions = std::collections::BTreeSet::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        partitions.insert(p.id());
    }
    consumer.assign(&tpl).expect("assign");
    partitions
}
