//! What a benchmark needs around the service: a database of its own, topics of its own.

use campaign_actors::postgres::PostgresSettings;
use campaign_actors::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use tokio_postgres::Client;

/// What went wrong, in words: every step of a benchmark either works or stops it.
pub type BenchResult<T> = Result<T, String>;

/// Turns an error into the words of the step that failed.
pub fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// A connection to the server at `url`, with the service's own settings.
pub async fn connect(url: &str) -> BenchResult<Client> {
    campaign_actors::postgres::connect(&PostgresSettings::for_url(url), "bench")
        .await
        .map_err(|e| e.to_string())
}

/// `url` with its database replaced by `database`.
pub fn database_url(url: &str, database: &str) -> String {
    match url.rsplit_once('/') {
        Some((server, _)) if url.contains("://") => format!("{server}/{database}"),
        _ => format!("{url} dbname={database}"),
    }
}

/// Creates `(name, partitions)` topics (Tansu creates none by itself).
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> BenchResult<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(err("admin client"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(err("create topics"))?
    {
        r.map_err(|(t, e)| format!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// The service's config in a benchmark: topics `{prefix}-in`, `-out` and `-dlq`, group `prefix`,
/// a cache that reloads only when asked, a free HTTP port, warnings only, `producer` properties
/// on top of the service's own (and `consumer` properties on top of the reader's), and the
/// per-client cap at `per_client_max` a day (0: none).
pub fn service_config(
    brokers: &str,
    prefix: &str,
    db_url: &str,
    producer: &[(String, String)],
    consumer: &[(String, String)],
    per_client_max: u32,
) -> BenchResult<Config> {
    let limits = format!("[limits]\nper_client_max = {per_client_max}\n");
    service_config_with(brokers, prefix, db_url, (producer, consumer), &limits)
}

/// librdkafka properties, as (name, value).
pub type Properties<'a> = &'a [(String, String)];

/// [`service_config`] with `extra`, more sections of the config file (`[writers]`, `[limits]`,
/// ...), appended.
pub fn service_config_with(
    brokers: &str,
    prefix: &str,
    db_url: &str,
    (producer, consumer): (Properties<'_>, Properties<'_>),
    extra: &str,
) -> BenchResult<Config> {
    let toml = |properties: &[(String, String)]| -> String {
        properties
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}\n"))
            .collect()
    };
    let (producer, consumer) = (toml(producer), toml(consumer));
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
input_topic = "{prefix}-in"
output_topic = "{prefix}-out"
dead_letter_topic = "{prefix}-dlq"
group_id = "{prefix}"
[kafka.consumer]
"fetch.wait.max.ms" = "10"
{consumer}[kafka.producer]
{producer}
[postgres]
url = "{db_url}"
[cache]
refresh_interval_secs = 3600
[http]
listen = "127.0.0.1:0"
[log]
level = "warn"
{extra}"#
    );
    Config::from_toml_with_env(&text, "bench", std::iter::empty()).map_err(err("config"))
}

/// Produces every (key, value) to `topic`, waiting while the producer's queue is full; returns
/// once the broker acknowledged them all.
pub async fn produce_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    messages: impl Iterator<Item = (String, String)>,
) -> BenchResult<()> {
    let mut sends = Vec::new();
    for (key, value) in messages {
        let mut record = rdkafka::producer::FutureRecord::to(topic)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    sends.push(delivery);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::error::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    actix_rt::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
    }
    for send in sends {
        send.await
            .map_err(|_| "producer dropped".to_string())?
            .map_err(|(e, _)| format!("produce: {e}"))?;
    }
    Ok(())
}

/// Waits, polling every 10 ms, until `done`; an error naming `what` after `timeout`.
pub async fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    mut done: impl FnMut() -> bool,
) -> BenchResult<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        if std::time::Instant::now() > deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs `f` with the URL of a database of its own, `database` on the server of `postgres_url`,
/// made before and dropped after (whatever `f` answered).
pub async fn in_own_database<T, F, Fut>(postgres_url: &str, database: &str, f: F) -> BenchResult<T>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = BenchResult<T>>,
{
    let admin = connect(postgres_url).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .map_err(err("create database"))?;
    let result = f(database_url(postgres_url, database)).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await;
    result
}

/// A benchmark's end: its JSON line printed, or why `what` failed on stderr.
pub fn finish(what: &str, result: BenchResult<serde_json::Value>) -> std::process::ExitCode {
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{what} failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
