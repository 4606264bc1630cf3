//! Why the service must stop, and the channel that says so: a component that fails in a way no
//! restart cures raises a [`FatalReason`]; the service stops with exit code 3 and the reason in
//! its last log line.
//!
//! Must not touch: anything but the channel (who stops what, and how, is the pipeline's).

use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::ActorKind;

/// Why the service must stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatalReason {
    #[error("the {} restarted more than {limit} times in {window:?}; giving up", actor.name())]
    RestartLimit {
        actor: ActorKind,
        limit: u32,
        window: Duration,
    },
    #[error("the {} has failed for longer than {window:?} without a success; giving up", actor.name())]
    FailingTooLong { actor: ActorKind, window: Duration },
    #[error("a campaign could not be confirmed by the writers; its offset was not committed")]
    CampaignUnconfirmed,
    #[error("cannot create the Kafka consumer: {0}")]
    ConsumerCreation(String),
    #[error("cannot subscribe to {topic}: {error}")]
    Subscription { topic: String, error: String },
    /// A sink can store nothing until an operator acts (an int4 `trigger_datetime_created`
    /// past 2038-01-19T03:14:07Z): the reason says what to do.
    #[error("the {} cannot write anything: {reason}", actor.name())]
    SinkUnusable { actor: ActorKind, reason: String },
    #[error(
        "this instance's lease was fenced by {}: it was frozen or cut off from Postgres for longer \
         than ledger.lease_ttl_secs, and another instance takes its work over",
        by.map_or("another instance".to_string(), |o| format!("owner {o}"))
    )]
    LeaseFenced { by: Option<i32> },
}

/// The sending side of the fatal channel.
#[derive(Clone)]
pub struct Fatal(watch::Sender<Option<FatalReason>>);

impl Fatal {
    pub fn channel() -> (Fatal, watch::Receiver<Option<FatalReason>>) {
        let (tx, rx) = watch::channel(None);
        (Fatal(tx), rx)
    }

    /// Asks the service to stop. The first reason raised is kept: it is the cause, what follows
    /// is usually its consequence.
    pub fn raise(&self, reason: FatalReason) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_is_kept() {
        let (fatal, failed) = Fatal::channel();
        fatal.raise(FatalReason::CampaignUnconfirmed);
        fatal.raise(FatalReason::ConsumerCreation("x".into()));
        assert_eq!(*failed.borrow(), Some(FatalReason::CampaignUnconfirmed));
        let limit = FatalReason::RestartLimit {
            actor: ActorKind::PostgresWriter,
            limit: 3,
            window: Duration::from_secs(300),
        };
        assert_eq!(
            limit.to_string(),
            "the postgres writer restarted more than 3 times in 300s; giving up"
        );
    }
}
