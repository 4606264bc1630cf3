//! What an operator runs beside the service, as commands of the binary: a campaign's status
//! ([`status`]), the comparison and repair of the two sinks ([`reconcile`]) and the replay of
//! dead letters ([`replay`]).
//!
//! They use the service's own tables, topics, connections and producer path, and never run inside
//! the service: a status reads Postgres only and writes nothing, so it answers whether the service
//! runs or not; a reconcile reads both sinks and, asked to repair, writes what one of them lacks;
//! a replay writes to the input topic and records what it replayed.
//!
//! Must not touch: the data path's tables beyond what is said here (a status writes nothing; a
//! repair writes only `subscribers_feedback` rows and output messages of the campaigns it
//! compared; a replay writes only `campaign_notifier_replayed`).

pub mod reconcile;
pub mod replay;
pub mod status;

use crate::kafka::scan::ScanError;
use crate::kafka::KafkaFailure;
use crate::postgres::{ConnectError, PostgresSettings};

/// Why an operator's command could not do its work, with the cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Asked for something it cannot do; the text says what.
    #[error("{0}")]
    Refused(&'static str),
    #[error("cannot connect to Postgres")]
    Connect(#[source] ConnectError),
    #[error("Postgres: {what}")]
    Postgres {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot read {topic}")]
    Read {
        topic: String,
        #[source]
        source: Box<ScanError>,
    },
    #[error("the read of {topic} stopped")]
    ReadTask {
        topic: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("Kafka: {what}")]
    Kafka {
        what: &'static str,
        #[source]
        source: KafkaFailure,
    },
}

/// Maps a Postgres error of the step `what`.
pub(crate) fn pg(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> OpsError {
    move |source| OpsError::Postgres { what, source }
}

/// Maps a Kafka error of the step `what`.
pub(crate) fn kafka(what: &'static str) -> impl FnOnce(KafkaFailure) -> OpsError {
    move |source| OpsError::Kafka { what, source }
}

/// A Postgres session of the command `who`.
pub(crate) async fn connect(
    settings: &PostgresSettings,
    who: &'static str,
) -> Result<tokio_postgres::Client, OpsError> {
    crate::postgres::connect(settings, who)
        .await
        .map_err(OpsError::Connect)
}

/// The outcome of a read of `topic` on a blocking task.
pub(crate) fn read_outcome<T>(
    topic: &str,
    joined: Result<Result<T, ScanError>, tokio::task::JoinError>,
) -> Result<T, OpsError> {
    let topic = topic.to_string();
    match joined {
        Ok(read) => read.map_err(|e| OpsError::Read {
            topic,
            source: Box::new(e),
        }),
        Err(source) => Err(OpsError::ReadTask { topic, source }),
    }
}
