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
[limits]
per_client_max = {per_client_max}
"#
    );
    Config::from_toml_with_env(&text, "bench", std::iter::empty()).map_err(err("config"))
}
