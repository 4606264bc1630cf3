//! What the end-to-end tests share: the broker and Postgres of this test run (started by
//! `scripts/test.sh`), a fixture per test with its own database and topics, and the service
//! binary started as an operator would start it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::Client;

pub mod load;
pub mod secure;

#[allow(unused_imports)]
pub use load::*;

/// The brief's sample input (in the brief's `key:json` form), its restaurant, and the contract's
/// output example (`client_id` and `trigger_datetime_created` vary).
#[allow(unused_imports)]
pub use campaign_actors::contract::{
    BRIEF_SAMPLE as SAMPLE, BRIEF_SAMPLE_RESTAURANT as SAMPLE_RESTAURANT,
    OUTPUT_EXAMPLE as CONTRACT_OUTPUT,
};

pub fn unix_now() -> i64 {
    campaign_actors::clock::unix_secs()
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with ./scripts/test.sh, which starts the broker")
    })
}

/// A campaign JSON with the given window.
pub fn campaign(restaurant: &str, campaign_id: &str, start: i64, end: i64) -> String {
    serde_json::json!({
        "restaurant_id": restaurant,
        "adv_campaign_id": campaign_id,
        "adv_campaign_content": format!("campaign {campaign_id}"),
        "adv_campaign_owner": "Ivanov Ivan Ivanovich",
        "adv_campaign_owner_contact": "iiivanov@restaurant.ru",
        "adv_campaign_datetime_start": start,
        "adv_campaign_datetime_end": end,
        "datetime_created": start,
    })
    .to_string()
}

pub fn active_campaign(restaurant: &str, campaign_id: &str) -> String {
    let now = unix_now();
    campaign(restaurant, campaign_id, now - 3600, now + 3600)
}

/// A message as read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: std::collections::BTreeMap<String, String>,
}

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

/// A client of `brokers` with `properties` set.
fn client_of(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        cc.set(k, v);
    }
    cc
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to Postgres: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
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
        let brokers = brokers.to_string();
        let admin_url = admin_url.to_string();
        let name = format!("{run}_{tag}");
        let db_name = format!("cn_test_{name}");
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .expect("create test database");
        let db_url = format!(
            "{}/{db_name}",
            admin_url.rsplit_once('/').expect("URL with a database").0
        );
        let db = connect(&db_url).await;
        // The tables exist before the service starts, as the app owns them in production.
        let mut setup = connect(&db_url).await;
        campaign_actors::postgres::ensure_schema(&mut setup)
            .await
            .expect("schema");
        let input_topic = format!("cn-{name}-in");
        let output_topic = format!("cn-{name}-out");
        let dead_letter_topic = format!("cn-{name}-dlq");
        let admin_client: AdminClient<DefaultClientContext> =
            client_of(&brokers, &client_properties)
                .create()
                .expect("admin client");
        let topics = [
            NewTopic::new(&input_topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&output_topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&dead_letter_topic, 1, TopicReplication::Fixed(1)),
        ];
        for result in admin_client
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        let producer: FutureProducer = client_of(&brokers, &client_properties)
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            // Room for the oversized messages the hostile-input test sends.
            .set("message.max.bytes", "4000000")
            .create()
            .expect("producer");
        let dir = std::env::temp_dir().join(format!("cn-test-{name}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        Fixture {
            group_id: format!("cn-{name}-group"),
            name,
            brokers,
            admin_url,
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

    /// Creates one more topic of this test's (`cn-<test>-<suffix>`); returns its name.
    pub async fn create_topic(&self, suffix: &str, partitions: i32) -> String {
        let name = format!("cn-{}-{suffix}", self.name);
        let admin: AdminClient<DefaultClientContext> =
            client_of(&self.brokers, &self.client_properties)
                .create()
                .expect("admin client");
        let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
        for result in admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .expect("create topic")
        {
            result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
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

    fn consumer(&self) -> BaseConsumer {
        client_of(&self.brokers, &self.client_properties)
            .set("group.id", format!("{}-verify", self.group_id))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer")
    }

    /// Outbox marks left: notifications in Postgres not yet confirmed by Kafka.
    pub async fn outbox_marks(&self) -> i64 {
        self.db
            .query_one("SELECT count(*) FROM campaign_notifier_outbox", &[])
            .await
            .expect("count outbox marks")
            .get(0)
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
        let consumer: BaseConsumer = client_of(&self.brokers, &self.client_properties)
            .set("group.id", format!("{}-verify", self.group_id))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = TopicPartitionList::new();
        let mut left = std::collections::BTreeSet::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
            left.insert(p.id());
        }
        consumer.assign(&tpl).expect("assign");
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

    /// Makes this test's database unreachable for the service (no new connections, the service's
    /// open ones cut) or reachable again, without touching the shared server.
    pub async fn set_postgres_reachable(&self, reachable: bool) {
        let admin = connect(&self.admin_url).await;
        let sql = if reachable {
            format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.db_name)
        } else {
            format!(
                "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{db}' AND application_name LIKE 'campaign-notifier %';",
                db = self.db_name
            )
        };
        admin
            .batch_execute(&sql)
            .await
            .expect("change reachability");
    }

    /// Lets new connections to this test's database in, or keeps them out while the open ones
    /// go on (as a DNS failure, a pooler or a connection limit would).
    pub async fn allow_new_connections(&self, allowed: bool) {
        let admin = connect(&self.admin_url).await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS {allowed}",
                self.db_name
            ))
            .await
            .expect("change ALLOW_CONNECTIONS");
    }

    /// Cuts the Postgres sessions of the service process `pid` whose part (the name it connects
    /// with, `ledger`, `postgres writer`, ...) starts with `part`; returns how many there were.
    pub async fn terminate_sessions_of(&self, pid: u32, part: &str) -> usize {
        self.db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() \
                   AND application_name LIKE 'campaign-notifier ' || $1 || '%' \
                   AND application_name LIKE '% pid ' || $2 || ')'",
                &[&part, &pid.to_string()],
            )
            .await
            .expect("terminate sessions")
            .len()
    }

    /// Cuts every Postgres connection the service holds; returns how many there were.
    pub async fn terminate_service_connections(&self) -> usize {
        self.db
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'campaign-notifier %'",
                &[],
            )
            .await
            .expect("terminate the service's connections")
            .len()
    }

    /// The plan Postgres makes for `statement` executed with `args` (SQL literals) when it plans
    /// generically, as it soon does for a statement prepared once; planned, not run.
    pub async fn generic_plan(&self, name: &str, statement: &str, args: &str) -> String {
        self.db
            .batch_execute(&format!(
                "SET plan_cache_mode = force_generic_plan; PREPARE {name} AS {statement}"
            ))
            .await
            .expect("prepare");
        let lines: Vec<String> = self
            .db
            .query(&format!("EXPLAIN EXECUTE {name}({args})"), &[])
            .await
            .expect("explain")
            .iter()
            .map(|row| row.get(0))
            .collect();
        lines.join("\n")
    }

    pub async fn feedback_rows(&self) -> Vec<tokio_postgres::Row> {
        self.db
            .query("SELECT * FROM subscribers_feedback ORDER BY id", &[])
            .await
            .expect("query feedback")
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
        let admin = connect(&self.admin_url).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Takes `tag` for this test: it names the test's database and topics, so two tests of the suite
/// (one process, tests running side by side) must never share one.
fn claim_tag(tag: &str) {
    static TAGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut tags = TAGS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(
        !tags.iter().any(|t| t == tag),
        "two tests use the tag {tag:?}: their databases and topics would collide"
    );
    tags.push(tag.to_string());
}

/// One test's own database and nothing else, for tests that need only Postgres: no tables are
/// created (the test sets up what it needs).
pub struct Database {
    pub name: String,
    pub url: String,
    pub admin_url: String,
    pub db: Client,
}

impl Database {
    pub async fn new(tag: &str) -> Database {
        claim_tag(tag);
        let run = env("CN_TEST_RUN_ID");
        let admin_url = env("CN_TEST_POSTGRES_URL");
        let name = format!("cn_test_{run}_{tag}");
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = format!(
            "{}/{name}",
            admin_url.rsplit_once('/').expect("URL with a database").0
        );
        let db = connect(&url).await;
        Database {
            name,
            url,
            admin_url,
            db,
        }
    }

    pub async fn cleanup(self) {
        drop(self.db);
        let admin = connect(&self.admin_url).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// Waits up to 30 s for something (`what`, logging to `log`) to listen on `port`.
pub fn wait_listening(port: u16, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} in 30s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over plain HTTP/1.0; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The service binary, started with a config file as an operator would.
pub struct Service {
    child: Child,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Service {
    pub fn start(fixture: &Fixture, extra_config: &str) -> Service {
        Service::start_numbered(fixture, extra_config, 0)
    }

    pub fn start_numbered(fixture: &Fixture, extra_config: &str, n: usize) -> Service {
        let mut service = Service::spawn(fixture, extra_config, n);
        service.wait_ready();
        service
    }

    /// Starts the service without waiting for it to be ready.
    pub fn spawn(fixture: &Fixture, extra_config: &str, n: usize) -> Service {
        Service::spawn_with_env(fixture, extra_config, n, &[])
    }

    /// The same, with `CAMPAIGN_NOTIFIER__*` overrides (for keys of sections the fixture's
    /// config already has).
    pub fn spawn_with_env(
        fixture: &Fixture,
        extra_config: &str,
        n: usize,
        env: &[(&str, &str)],
    ) -> Service {
        let http_port = free_port();
        let config = fixture.dir.join(format!("config-{n}.toml"));
        std::fs::write(&config, fixture.config(http_port, extra_config)).expect("write config");
        let log = fixture.dir.join(format!("service-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
            .args(["run", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the service");
        Service {
            child,
            http_port,
            log,
        }
    }

    /// Starts instance `n` with its wall clock `skew_secs` ahead of the host's (behind, if
    /// negative): `tests/it/common/skewed_clock.c`, built with the system's C compiler, preloaded.
    pub fn spawn_with_skewed_clock(
        fixture: &Fixture,
        extra_config: &str,
        n: usize,
        skew_secs: i64,
    ) -> Service {
        let shim = fixture.dir.join("skewed_clock.so");
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/common/skewed_clock.c"
        );
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&shim)
            .arg(source)
            .arg("-ldl")
            .status()
            .expect("run cc");
        assert!(built.success(), "cannot build {source}");
        let skew = skew_secs.to_string();
        let preload = shim.to_string_lossy().into_owned();
        Service::spawn_with_env(
            fixture,
            extra_config,
            n,
            &[("LD_PRELOAD", &preload), ("CN_TEST_CLOCK_SKEW_SECS", &skew)],
        )
    }

    /// Starts the service and waits for it to exit by itself (for start-up failures); fails the
    /// test if it is still running after 60 s (a start-up that hangs is what such tests guard
    /// against).
    pub fn run_to_exit(fixture: &Fixture, extra_config: &str) -> (ExitStatus, String) {
        let config = fixture.dir.join("config-exit.toml");
        std::fs::write(&config, fixture.config(free_port(), extra_config)).expect("write config");
        let log = fixture.dir.join("service-exit.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_campaign-notifier"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("run the service");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the service") {
                return (status, std::fs::read_to_string(&log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "still running after 60 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The service's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the service has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// A line of `/proc/PID/status` in MiB: `VmRSS` (resident now) or `VmHWM` (the peak).
    pub fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the service's /proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib / 1024.0
    }

    /// SIGKILL: no drain, no commit, nothing flushed.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many partitions of the input topic the service was last assigned, from its log
    /// (`None` before its first assignment).
    pub fn assigned_partitions(&self) -> Option<usize> {
        let log = self.log_text();
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("kafka reader: assigned"))?;
        Some(match line.contains("no partitions") {
            true => 0,
            false => line.matches(", ").count() + 1,
        })
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "service exited with {status} before ready:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.http_port, "/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "service not ready in 60s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Sum of every series of a metric (all label values).
    pub fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.metrics(), name)
    }

    pub fn metric_with(&self, name: &str, labels: &str) -> f64 {
        let series = format!("{name}{{{labels}}}");
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `campaigns_processed_total` reaches `n` (every outcome counts).
    pub fn wait_processed(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.metric("campaign_notifier_campaigns_processed_total") as u64;
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {n} campaigns processed in {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then the exit status (waits up to 60 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(60), "after SIGTERM")
    }

    /// Waits for the service to exit; fails the test if it is still running after `within`
    /// (`when` says after what, in the failure).
    pub fn wait_exit(&mut self, within: Duration, when: &str) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service still running {within:?} {when}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A Tansu broker of the test's own, on a free port, with sqlite storage in `dir`: it can be
/// stopped and started again with its data.
pub struct OwnBroker {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl OwnBroker {
    pub fn start(dir: PathBuf) -> OwnBroker {
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut broker = OwnBroker {
            child: None,
            port: free_port(),
            dir,
        };
        broker.resume();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and storage.
    pub fn resume(&mut self) {
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("broker log");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_listening(self.port, "tansu", &self.dir.join("tansu.log"));
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A number in `0..n` that differs from call to call (no seed to manage; tests print what they
/// drew).
pub fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() % n.max(1)
}

/// Counts per (adv_campaign_id, client_id) in `subscribers_feedback`.
pub async fn row_pairs(f: &Fixture) -> std::collections::BTreeMap<(String, String), u32> {
    let mut pairs = std::collections::BTreeMap::new();
    for row in f.feedback_rows().await {
        *pairs
            .entry((row.get("adv_campaign_id"), row.get("client_id")))
            .or_insert(0) += 1;
    }
    pairs
}

/// Counts per (adv_campaign_id, client_id) in the output topic.
pub fn output_pairs(f: &Fixture) -> std::collections::BTreeMap<(String, String), u32> {
    let mut pairs = std::collections::BTreeMap::new();
    for (_, v) in f.read_output() {
        *pairs
            .entry((
                v["adv_campaign_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["client_id"].as_str().unwrap_or_default().to_string(),
            ))
            .or_insert(0) += 1;
    }
    pairs
}

pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP proxy in front of the run's Postgres that can turn into a black hole: it then accepts
/// connections and never answers, as a host that vanished or a network that drops packets does
/// (a failure that times out instead of being refused).
pub struct PgProxy {
    pub port: u16,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl PgProxy {
    pub fn start() -> PgProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (hole, conns) = (blackhole.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let keep = client.try_clone().expect("clone socket");
                conns.lock().unwrap().push(keep);
                if hole.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", 5432)) else {
                    continue;
                };
                conns
                    .lock()
                    .unwrap()
                    .push(server.try_clone().expect("clone socket"));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                std::thread::spawn(move || std::io::copy(&mut s_in, &mut c_out));
            }
        });
        PgProxy {
            port,
            blackhole,
            open,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}/{path}", self.port)
    }

    /// From now on, connections are accepted and never answered; the open ones are cut.
    pub fn blackhole(&self) {
        self.blackhole
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for conn in self.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}
