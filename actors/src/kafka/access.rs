//! The start-up check of the brokers: credentials and certificates that can never work stop the
//! service at once with librdkafka's own reason, instead of every client retrying them for ever.
//! Brokers that are only unreachable are not an error here: the clients keep trying, and
//! readiness says so, as at any other time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _, ProducerContext};

use super::{KafkaFailure, ProducerSettings};

/// What the brokers said at start-up.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Metadata was read: the connection and the credentials work.
    Granted,
    /// No broker answered (every one refused the connection, or none answered within the wait);
    /// the reason is librdkafka's last word.
    Unreachable(String),
}

/// Errors librdkafka reported while connecting.
#[derive(Default)]
struct Heard(Mutex<Vec<(RDKafkaErrorCode, String)>>);

impl ClientContext for Heard {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            if let Ok(mut heard) = self.0.lock() {
                heard.push((code, reason.to_string()));
            }
        }
    }
}

impl ProducerContext for Heard {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// A client of the brokers that connects as the service's producers do: the same brokers and
/// `[kafka.security]`, and nothing else of theirs.
fn connect_as_producers(settings: &ProducerSettings) -> Result<BaseProducer<Heard>, KafkaFailure> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &settings.brokers);
    for (k, v) in settings.connection_overrides() {
        cc.set(k, v);
    }
    cc.create_with_context(Heard::default())
        .map_err(|e| KafkaFailure::configuration(format!("invalid Kafka client config: {e}")))
}

/// Failures no retry cures: the credentials or the certificates.
fn refused(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::SSL
    )
}

/// Connects as the service's producers do (the same brokers and `[kafka.security]`) and reads
/// the cluster's metadata, for at most `wait`. Blocking: call it from a blocking thread.
pub fn check(settings: &ProducerSettings, wait: Duration) -> Result<Access, KafkaFailure> {
    let client = connect_as_producers(settings)?;
    let deadline = Instant::now() + wait;
    loop {
        let answered = client
            .client()
            .fetch_metadata(None, Duration::from_millis(500));
        // Errors reach the context only when the client is polled.
        client.poll(Duration::from_millis(100));
        let heard = std::mem::take(&mut *client.context().0.lock().map_err(|_| {
            KafkaFailure::retriable("the start-up check's error list was poisoned")
        })?);
        if let Some((code, reason)) = heard.iter().find(|(code, _)| refused(*code)) {
            return Err(KafkaFailure {
                class: super::FailureClass::Configuration,
                code: Some(*code),
                message: format!("the brokers refused the connection: {reason}"),
            });
        }
        let all_down = heard
            .iter()
            .any(|(code, _)| *code == RDKafkaErrorCode::AllBrokersDown);
        match answered {
            Ok(_) => return Ok(Access::Granted),
            Err(e) if all_down || Instant::now() >= deadline => {
                let last = heard
                    .last()
                    .map_or_else(|| e.to_string(), |(_, r)| r.clone());
                return Ok(Access::Unreachable(last));
            }
            Err(_) => {}
        }
    }
}

/// What the brokers say of one topic the service uses.
#[derive(Debug, PartialEq, Eq)]
pub enum TopicState {
    /// It exists with this many partitions, and its metadata may be read.
    Partitions(usize),
    /// The brokers' error for it: it does not exist, or the service's user may not see it.
    Refused(String),
}

/// Each topic's state, as the service's producers' connection sees it. Blocking: call it from
/// a blocking thread.
pub fn topics(
    settings: &ProducerSettings,
    names: &[&str],
    timeout: Duration,
) -> Result<Vec<(String, TopicState)>, KafkaFailure> {
    let client = connect_as_producers(settings)?;
    let mut states = Vec::new();
    for name in names {
        let metadata = client
            .client()
            .fetch_metadata(Some(name), timeout)
            .map_err(|e| KafkaFailure::retriable(format!("cannot read metadata: {e}")))?;
        let state = match metadata.topics().iter().find(|t| t.name() == *name) {
            Some(t) => match t.error() {
                Some(e) => TopicState::Refused(format!("{:?}", RDKafkaErrorCode::from(e))),
                None if t.partitions().is_empty() => {
                    TopicState::Refused("UnknownTopicOrPartition".into())
                }
                None => TopicState::Partitions(t.partitions().len()),
            },
            None => TopicState::Refused("UnknownTopicOrPartition".into()),
        };
        states.push((name.to_string(), state));
    }
    Ok(states)
}
