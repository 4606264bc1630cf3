//! Why a sweep or a recovery stopped: what it was doing, with the error that stopped it as its
//! source. The ledger logs [`crate::error_chain::Chain`] of it and sweeps again later; what was
//! done before the failure is in Postgres.

use actix::MailboxError;
use tokio::task::JoinError;

use crate::kafka::scan::ScanError;
use crate::kafka::KafkaFailure;
use crate::lease::Lapsed;
use crate::sinks::SinkError;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// This process's lease is not valid: it recovers nothing until it is renewed.
    #[error(transparent)]
    Lapsed(#[from] Lapsed),
    /// A statement failed; `what` says which.
    #[error("{what}")]
    Postgres {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("recovering owner {owner}")]
    Owner {
        owner: i32,
        #[source]
        source: Box<RecoveryError>,
    },
    #[error("fencing owner {owner}'s producer")]
    FenceProducer {
        owner: i32,
        #[source]
        source: KafkaFailure,
    },
    #[error("recovery producer")]
    Producer(#[source] KafkaFailure),
    #[error("recovery transaction")]
    Transaction(#[source] KafkaFailure),
    #[error("recovery send")]
    Send(#[source] KafkaFailure),
    /// The read-back of the output topic, which says what it was doing itself.
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("scan task failed")]
    ScanTask(#[source] JoinError),
    #[error("dead letter")]
    DeadLetter(#[source] SinkError),
    #[error("dead letter")]
    DeadLetterUnsent(#[source] MailboxError),
}

impl RecoveryError {
    /// For `map_err`: a failed statement, and what it was for.
    pub fn postgres(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> RecoveryError {
        move |source| RecoveryError::Postgres { what, source }
    }

    /// For `map_err`: a failure while recovering `owner`.
    pub fn recovering(owner: i32) -> impl FnOnce(RecoveryError) -> RecoveryError {
        move |e| RecoveryError::Owner {
            owner,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_chain::Chain;
    use crate::kafka::FailureClass;

    #[test]
    fn a_recovery_failure_shows_the_owner_the_step_and_the_brokers_error() {
        let e = RecoveryError::recovering(7)(RecoveryError::Send(KafkaFailure {
            class: FailureClass::Retriable,
            code: None,
            message: "Message production error: MessageTimedOut".into(),
        }));
        assert_eq!(
            Chain(&e).to_string(),
            "recovering owner 7: recovery send: Message production error: MessageTimedOut"
        );
        let lapsed = RecoveryError::from(Lapsed::Fenced);
        assert_eq!(Chain(&lapsed).to_string(), Lapsed::Fenced.to_string());
    }
}
