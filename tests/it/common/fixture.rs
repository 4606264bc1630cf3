//! One test's own database and topics: made on the run's broker and Postgres (or on a broker or
//! server of the test's own), fed through the input topic and the subscriber table, described to
//! the service in a config file, and dropped at the end.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::Client;

use super::{client_of, connect, create_database, create_topics, drop_database, env};

/// One test's own database and topics.
pub struct Fixture {
    pub name: String,
    pub brokers: String,
    pub admin_url: String,
    pub db_name: String,
    pub db_url: String,
    pub input_topic: String,
    pub output_topic: String,
    pub dead_letter_topic: String,
    pub group_id: String,
    pub db: Client,
    pub dir: PathBuf,
    pub producer: FutureProducer,
    /// librdkafka properties every client of the fixture's connects with (a secured broker's).
    pub client_properties: Vec<(String, String)>,
}

impl Fixture {
    /// A fixture on the test run's shared broker.
    pub async fn new(tag: &str, partitions: i32) -> Fixture {
        Fixture::new_on(tag, partitions, &env("CN_TEST_BROKERS")).await
    }

    /// A fixture on the given broker (a test that stops its broker brings its own).
    pub async fn new_on(tag: &str, partitions: i32, brokers: &str) -> Fixture {
        Fixture::new_secured(tag, partitions, brokers, Vec::new()).await
    }

    /// A fixture on the given broker, whose clients connect with `client_properties`.
    pub async fn new_secured(
        tag: &str,
        partitions: i32,
        brokers: &str,
        client_properties: Vec<(String, String)>,
    ) -> Fixture {
        let admin_url = env("CN_TEST_POSTGRES_URL");
        Fixture::new_on_postgres(tag, partitions, brokers, client_properties, &admin_url).await
    }

    /// The same, with the database made on the server of `admin_url` (a URL without
    /// parameters, ending in a database name).
    pub async fn new_on_postgres(
        tag: &str,
        partitions: i32,
        brokers: &str,
        client_properties: Vec<(String, String)>,
        admin_url: &str,
    ) -> Fixture {
        claim_tag(tag);
        let run = env("CN_TEST_RUN_ID");
        let name = format!("{run}_{tag}");
        let db_name = format!("cn_test_{name}");
        let db_url = create_database(admin_url, &db_name).await;
        let db = connect(&db_url).await;
        create_the_apps_tables(&db_url).await;
        let input_topic = format!("cn-{name}-in");
        let output_topic = format!("cn-{name}-out");
        let dead_letter_topic = format!("cn-{name}-dlq");
        let topics = [
            NewTopic::new(&input_topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&output_topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dead_letter_topic, 1, TopicReplication::Fixed(1)),
        ];
        create_topics(brokers, &client_properties, &topics).await;
        let producer = input_producer(brokers, &client_properties);
        let dir = std::env::temp_dir().join(format!("cn-test-{name}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        Fixture {
            group_id: format!("cn-{name}-group"),
            name,
            brokers: brokers.to_string(),
            admin_url: admin_url.to_string(),
            db_name,
            db_url,
            input_topic,
            output_topic,
            dead_letter_topic,
            db,
            dir,
            producer,
            client_properties,
        }
    }

    pub async fn subscribe(&self, restaurant: &str, clients: &[&str]) {
        for client in clients {
            self.db
                .execute(
                    "INSERT INTO subscribers_restaurants (restaurant_id, client_id) VALUES ($1, $2)",
                    &[&restaurant, client],
                )
                .await
                .expect("insert subscriber");
        }
    }

    pub async fn produce(&self, key: &str, value: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(&self.input_topic).key(key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce campaign");
    }

    /// Produces a campaign to one partition of the input topic.
    pub async fn produce_to(&self, partition: i32, key: &str, value: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(&self.input_topic)
                    .partition(partition)
                    .key(key)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce campaign");
    }

    pub fn config(&self, http_port: u16, extra: &str) -> String {
        format!(
            r#"
[kafka]
brokers = "{brokers}"
input_topic = "{input}"
output_topic = "{output}"
dead_letter_topic = "{dlq}"
group_id = "{group}"
[kafka.consumer]
"fetch.wait.max.ms" = "10"
# A member killed with SIGKILL is noticed after this long, so a restarted one is not kept
# waiting for the default 45 s.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[postgres]
url = "{db_url}"
[http]
listen = "127.0.0.1:{http_port}"
[log]
level = "info"
{extra}
"#,
            brokers = self.brokers,
            input = self.input_topic,
            output = self.output_topic,
            dlq = self.dead_letter_topic,
            group = self.group_id,
            db_url = self.db_url,
        )
    }

    pub async fn cleanup(self) {
        drop(self.db);
        drop_database(&self.admin_url, &self.db_name).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tables exist before the service starts, as the app owns them in production.
async fn create_the_apps_tables(db_url: &str) {
    let mut setup = connect(db_url).await;
    campaign_actors::postgres::ensure_schema(&mut setup)
        .await
        .expect("schema");
}

/// The producer a test feeds the input topic with.
fn input_producer(brokers: &str, client_properties: &[(String, String)]) -> FutureProducer {
    client_of(brokers, client_properties)
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        // Room for the oversized messages the hostile-input test sends.
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer")
}

/// Takes `tag` for this test: it names the test's database and topics, so two tests of the suite
/// (one process, tests running side by side) must never share one.
pub(super) fn claim_tag(tag: &str) {
    static TAGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut tags = TAGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(
        !tags.iter().any(|t| t == tag),
        "two tests use the tag {tag:?}: their databases and topics would collide"
    );
    tags.push(tag.to_string());
}
