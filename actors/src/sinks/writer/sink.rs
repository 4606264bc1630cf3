//! What a sink is to the writer: it connects, writes a group of jobs or fails as a whole, and
//! says how its failures are to be handled ([`SinkError`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;

use crate::hand_off::Batch;
use crate::metrics::{ErrorClass, SinkKind};

pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// How a sink error is handled.
///
/// It keeps text, not the error it came from: one failure of a group answers every job of the
/// group (so it is `Clone`), and its text becomes a dead letter's reason. So that no cause is
/// lost, the text is made from the whole chain: [`crate::error_chain::Chain`] of the error (or
/// [`crate::postgres::describe`] of a Postgres error), never its `to_string()` alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The connection or the server failed: reconnect and write the same batches again.
    #[error("retriable: {0}")]
    Retriable(String),
    /// The connection was lost (cut from outside, the server shutting down): retried like
    /// [`SinkError::Retriable`], but it says nothing about the jobs being written, so it counts
    /// against none of them.
    #[error("retriable: connection lost: {0}")]
    Disconnected(String),
    /// The data itself was refused: writing it again would fail again.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The sink can take no write at all until an operator acts (a column that cannot hold the
    /// time any more): the service stops with the reason. The jobs are not refused (that would
    /// dead-letter every campaign) but left unconfirmed, to be read again after the fix.
    #[error("fatal: {0}")]
    Fatal(String),
    /// Nothing was written because this process's lease is not valid: the writer holds its jobs
    /// until the lease is renewed (the service stops if it was fenced).
    #[error("held: {0}")]
    Lapsed(String),
    /// The writer went away before answering (only during shutdown).
    #[error("writer stopped before confirming")]
    Canceled,
}

impl From<crate::kafka::KafkaFailure> for SinkError {
    fn from(e: crate::kafka::KafkaFailure) -> SinkError {
        use crate::kafka::FailureClass;
        match e.class {
            FailureClass::Permanent => SinkError::Permanent(e.message),
            // Retried like a lost connection: the writer restarts with backoff and, past its
            // restart limit, stops the service with the reason.
            FailureClass::Retriable | FailureClass::Configuration => {
                SinkError::Retriable(e.message)
            }
            FailureClass::Lapsed | FailureClass::Fenced => SinkError::Lapsed(e.message),
        }
    }
}

impl SinkError {
    pub(super) fn class(&self) -> ErrorClass {
        match self {
            SinkError::Retriable(_)
            | SinkError::Disconnected(_)
            | SinkError::Canceled
            | SinkError::Lapsed(_) => ErrorClass::Retriable,
            SinkError::Permanent(_) | SinkError::Fatal(_) => ErrorClass::Permanent,
        }
    }
}

/// What a writer job carries: it knows how many rows (notifications) it holds.
pub trait Rows {
    fn rows(&self) -> usize;
}

/// One destination of notifications.
pub trait Sink: Sized + 'static {
    /// Which sink it is, in metrics and logs.
    const KIND: SinkKind;
    /// Writes that may be under way at once.
    const MAX_CONCURRENT_WRITES: usize;
    /// One write more may start when the job first in the queue is smaller than a batch (a small
    /// campaign's), so that it need not wait for a large write to end. For a sink whose writes
    /// share nothing that a write holds for its whole length (the Kafka sink's partitions are
    /// taken a chunk at a time); not for one that writes on a single connection.
    const EXPRESS_WRITE: bool = false;
    type Config: Clone + Send + Unpin + 'static;
    /// One job, as delivery sends it.
    type Item: Rows + Send + Sync + 'static;
    /// What the writer answers for one job once it is written.
    type Output: Send + 'static;

    fn connect(config: Self::Config) -> LocalFuture<Result<Self, SinkError>>;
    /// Writes every job, or fails as a whole; on success one output per job, in order.
    fn write(
        &self,
        items: Vec<Arc<Self::Item>>,
    ) -> LocalFuture<Result<Vec<Self::Output>, SinkError>>;
    /// Called after a reconnect with the jobs whose earlier write may or may not have reached
    /// the sink; returns them with what is already there taken out. The default keeps them whole
    /// (right for a sink whose writes are idempotent).
    fn reconcile(
        &self,
        items: Vec<Arc<Self::Item>>,
    ) -> LocalFuture<Result<Vec<Arc<Self::Item>>, SinkError>> {
        Box::pin(async move { Ok(items) })
    }
    /// How many rows a confirmed job really added (for `notifications_written_total`).
    fn rows_written(item: &Self::Item, _output: &Self::Output) -> usize {
        item.rows()
    }
    /// Waits for anything buffered to be written; called once, at shutdown.
    fn close(&self) -> LocalFuture<()>;
    /// Whether the connection still works. The default is right for a client that reconnects by
    /// itself (librdkafka's), whose failures show in its writes instead.
    fn is_connected(&self) -> bool {
        true
    }
    /// Called every second while this process's lease is lapsed (its keeper cannot renew it): a
    /// sink whose own connection still works looks whether the lease was fenced meanwhile, and
    /// tells the lease, which stops the service. The default looks nowhere.
    fn probe_fence(&self) -> LocalFuture<()> {
        Box::pin(async {})
    }
}

/// Write one job; answered once the sink confirmed it.
pub struct Write<S: Sink>(pub Arc<S::Item>);

impl<S: Sink> Message for Write<S> {
    type Result = Result<S::Output, SinkError>;
}

/// Write many jobs, each answered on its own channel once the sink confirmed it (see
/// [`crate::hand_off`]).
pub type WriteAll<S> = Batch<Arc<<S as Sink>::Item>, Result<<S as Sink>::Output, SinkError>>;
