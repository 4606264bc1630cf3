//! The `Ledger` actor: holds this process's owner lock, clears acknowledged marks in batches off
//! the data path, and sweeps for owners that died.
//!
//! Every `SWEEP_INTERVAL` the ledger looks for owners that died (this process's predecessor, or a
//! peer in the same consumer group) and takes over their marks ([`recover`]): marks made before
//! this process started, or older than `[ledger] takeover_after_secs` (a peer whose connection to
//! Postgres dropped for a moment loses its lock but is still sending, and must be given time to
//! finish), and only once the owner's lock has been free for the settle time
//! ([`Takeover`]: the producer's message timeout and a margin).

use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use futures::channel::oneshot;
use tokio_postgres::Client;

use super::outbox;
use super::recovery::{recover, OutputTarget, Takeover};
use crate::hand_off::Batch;
use crate::messages::{ClearOutbox, Withdraw};
use crate::metrics::{ActorKind, WithdrawReason};
use crate::postgres::{ConnectError, PostgresSettings};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Added to the producer's message timeout: how long a dead owner's lock must have been free
/// before its marks are taken over.
const SETTLE_MARGIN: Duration = Duration::from_secs(5);

/// Holds this process's owner lock, clears acknowledged marks in batches, and sweeps for dead
/// owners. Supervised: a lost connection restarts it (after the restart policy's backoff), which
/// takes the lock again; past the policy's limit the service stops.
pub struct Ledger {
    postgres: PostgresSettings,
    owner: i32,
    output: OutputTarget,
    client: Option<Rc<Client>>,
    to_clear: Vec<i64>,
    to_withdraw: Vec<(Withdraw, oneshot::Sender<()>)>,
    clearing: bool,
    sweeping: bool,
    takeover_after: Duration,
    /// Owners seen without their lock, and since when; `None` while a sweep has it.
    takeover: Option<Takeover>,
    /// When this process started (ms since the epoch): marks made before are a predecessor's.
    started_ms: i64,
    shared: Shared,
    restarts: Restarts,
}

impl Ledger {
    pub fn new(
        postgres: PostgresSettings,
        owner: i32,
        output: OutputTarget,
        takeover_after: Duration,
        restart: RestartPolicy,
        shared: Shared,
    ) -> Ledger {
        let settle = Duration::from_millis(output.producer.message_timeout_ms) + SETTLE_MARGIN;
        Ledger {
            takeover: Some(Takeover::new(settle)),
            started_ms: shared.clock.now_ms(),
            postgres,
            owner,
            output,
            client: None,
            to_clear: Vec::new(),
            to_withdraw: Vec::new(),
            clearing: false,
            sweeping: false,
            takeover_after,
            shared,
            restarts: Restarts::new(ActorKind::Ledger, restart),
        }
    }

    /// Withdraws and clears what waits, one batch at a time, off the data path.
    fn clear(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.clearing || (self.to_clear.is_empty() && self.to_withdraw.is_empty()) {
            return;
        }
        self.clearing = true;
        let ids = std::mem::take(&mut self.to_clear);
        let withdrawals = std::mem::take(&mut self.to_withdraw);
        let fut = async move {
            let mut withdrawn = Ok(0);
            for (w, _) in &withdrawals {
                let Ok(rows) = withdrawn else { break };
                withdrawn = outbox::withdraw(&client, &w.marks, w.only.as_deref())
                    .await
                    .map(|n| rows + n);
            }
            let cleared = match ids.is_empty() {
                true => Ok(0),
                false => outbox::clear_marks(&client, &ids).await,
            };
            (ids, withdrawals, withdrawn, cleared)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(|(ids, withdrawals, withdrawn, cleared), act, ctx| {
                    act.clearing = false;
                    let mut failed = None;
                    match withdrawn {
                        Ok(rows) if !withdrawals.is_empty() => {
                            log::warn!(
                                "ledger: withdrew {rows} notifications Kafka refused or that \
                                 reached their campaign's end before Kafka had them"
                            );
                            withdrawals.into_iter().for_each(|(_, done)| {
                                let _ = done.send(());
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            act.to_withdraw.extend(withdrawals);
                            failed = Some(e);
                        }
                    }
                    if let Err(e) = cleared {
                        // Not lost: kept to clear after the reconnect. A mark left behind is only
                        // work for the next recovery, which finds its notifications already in Kafka.
                        act.to_clear.extend(ids);
                        failed = Some(e);
                    }
                    if let Some(e) = failed {
                        log::warn!(
                            "ledger: cannot update outbox marks: {}",
                            crate::postgres::describe(&e)
                        );
                        act.restarts.failed();
                        ctx.stop();
                    }
                }),
        );
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.sweeping {
            return;
        }
        let Some(mut takeover) = self.takeover.take() else {
            return;
        };
        self.sweeping = true;
        let (output, owner) = (self.output.clone(), self.owner);
        let which = (self.started_ms, self.takeover_after.as_secs_f64());
        let fut = async move {
            let result = recover(&client, &output, owner, which, &mut takeover).await;
            (result, takeover)
        };
        ctx.spawn(fut.into_actor(self).map(|(result, takeover), act, _| {
            act.sweeping = false;
            act.takeover = Some(takeover);
            match result {
                Ok(r) if r.owners > 0 => {
                    log::info!(
                        "ledger: recovered {} stopped instance(s): {} notifications re-sent, {} were \
                         already in Kafka, {} withdrawn from Postgres (their campaign had ended)",
                        r.owners,
                        r.resent,
                        r.already_sent,
                        r.expired
                    );
                    act.shared
                        .metrics
                        .notifications_withdrawn
                        .with_label_values(&[WithdrawReason::Ended.as_str()])
                        .inc_by(r.expired as u64);
                }
                Ok(_) => {}
                Err(e) => log::warn!("ledger: recovery sweep failed, will retry: {e}"),
            }
        }));
    }
}

impl Actor for Ledger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (postgres, owner) = (self.postgres.clone(), self.owner);
        let delay = self.restarts.delay();
        ctx.wait(
            async move {
                actix_rt::time::sleep(delay).await;
                let client = crate::postgres::connect(&postgres, "ledger").await?;
                outbox::hold_owner_lock(&client, owner)
                    .await
                    .map_err(ConnectError::from)?;
                Ok::<_, ConnectError>(client)
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(client) => {
                    act.restarts.succeeded();
                    act.client = Some(Rc::new(client));
                    ctx.run_interval(Duration::from_millis(200), |act, ctx| {
                        if act.client.as_ref().is_some_and(|c| c.is_closed()) {
                            act.restarts.failed();
                            ctx.stop();
                        } else {
                            act.clear(ctx);
                        }
                    });
                    ctx.run_interval(SWEEP_INTERVAL, |act, ctx| act.sweep(ctx));
                }
                Err(e) => {
                    log::warn!("ledger: cannot connect: {e}");
                    act.restarts.failed();
                    ctx.stop();
                }
            }),
        );
    }
}

impl Supervised for Ledger {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts.restarting(&self.shared);
        self.client = None;
        self.clearing = false;
        self.sweeping = false;
    }
}

impl Handler<Withdraw> for Ledger {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, msg: Withdraw, _: &mut Context<Self>) -> Self::Result {
        let (done, withdrawn) = oneshot::channel();
        self.to_withdraw.push((msg, done));
        Box::pin(async move {
            withdrawn
                .await
                .map_err(|_| "the ledger stopped before withdrawing".to_string())
        })
    }
}

impl Handler<Batch<ClearOutbox, ()>> for Ledger {
    type Result = ();

    fn handle(&mut self, msg: Batch<ClearOutbox, ()>, _: &mut Context<Self>) {
        for (ClearOutbox(marks), _) in msg.0 {
            self.to_clear.extend(marks);
        }
    }
}
