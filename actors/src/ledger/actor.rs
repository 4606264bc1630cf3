//! The `Ledger` actor: clears acknowledged marks in batches off the data path, withdraws what
//! Kafka will never have, and sweeps for owners whose lease expired.
//!
//! Every `SWEEP_INTERVAL` the ledger fences the owners whose lease has expired (once this
//! process's own lease has been valid for a whole TTL, so that after an outage every owner gets
//! the chance to renew first), gives owners of versions before leases whose advisory lock has
//! been free for their settle time a fenced row, and recovers every fenced owner whose settle
//! time has passed ([`Recoverer`]). Nothing of a sweep lives in the future that runs it but the
//! connection: what it found is in Postgres, and the legacy owners' watch is applied by the actor
//! when the sweep returns, so a restart in the middle of a sweep loses nothing.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::channel::oneshot;
use tokio_postgres::Client;

use super::outbox;
use super::recovery::{self, Recoverer, RecoveryError, RecoveryReport, Takeover};
use crate::error_chain::Chain;
use crate::events::{Event, NotificationsWithdrawn, OwnerFenced};
use crate::hand_off::Batch;
use crate::liveness::Loop;
use crate::messages::{ClearOutbox, Close, Withdraw};
use crate::metrics::{ActorKind, WithdrawReason};
use crate::postgres::{describe, PostgresSettings};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Clears acknowledged marks in batches, withdraws rows, and sweeps for expired owners.
/// Supervised: a lost connection restarts it (after the restart policy's backoff); past the
/// policy's limit the service stops.
pub struct Ledger {
    postgres: PostgresSettings,
    recoverer: Recoverer,
    /// This process's lease TTL: how long its own lease must have been valid before it fences
    /// anyone.
    ttl: Duration,
    client: Option<Rc<Client>>,
    to_clear: Vec<i64>,
    to_withdraw: Vec<(Withdraw, oneshot::Sender<()>)>,
    /// The marks being cleared and the withdrawals under way.
    clearing: Option<Pending>,
    sweeping: bool,
    /// Owners of versions before leases seen without their lock, and since when.
    legacy: Takeover,
    /// Of them, those due for a fenced row at the next sweep.
    legacy_due: Vec<i32>,
    /// Set by [`Close`]: no sweep starts any more.
    closing: bool,
    /// Who waits for the sweep under way to end.
    close_waiters: Vec<oneshot::Sender<()>>,
    shared: Shared,
    restarts: Restarts,
}

/// Marks to clear, and withdrawals with who waits for each.
type Pending = (Vec<i64>, Vec<(Withdraw, oneshot::Sender<()>)>);

/// What one sweep found and did.
#[derive(Default)]
struct Swept {
    fenced: Vec<recovery::Fenced>,
    legacy_looks: Vec<(i32, bool)>,
    legacy_fenced: Vec<i32>,
    recovered: RecoveryReport,
}

impl Swept {
    /// Fences expired owners (when this process may), gives due legacy owners a fenced row,
    /// looks at the legacy owners' locks, and recovers every settled owner.
    async fn run(
        &mut self,
        client: &Client,
        recoverer: &Recoverer,
        me: i32,
        may_fence: bool,
        legacy_due: Vec<i32>,
    ) -> Result<(), RecoveryError> {
        if may_fence {
            self.fenced = recovery::fence_expired(client, me)
                .await
                .map_err(RecoveryError::postgres("fencing expired owners"))?;
        }
        for owner in legacy_due {
            if recovery::fence_legacy(client, owner, me)
                .await
                .map_err(RecoveryError::postgres("fencing a legacy owner"))?
            {
                self.legacy_fenced.push(owner);
            }
        }
        let looking = RecoveryError::postgres("looking at the legacy owners' locks");
        self.legacy_looks = recovery::legacy_owners(client).await.map_err(looking)?;
        self.recovered = recoverer.recover_settled(client).await?;
        Ok(())
    }
}

/// Runs the withdrawals of `work` (marks, and the clients whose rows go, or all of them) one after
/// another until one fails, nothing withdrawn once owner `me` is fenced; then clears the marks
/// `to_clear`. Returns the rows withdrawn and the marks cleared.
async fn update_outbox(
    client: Rc<Client>,
    work: Vec<(Vec<i64>, Option<Vec<String>>)>,
    to_clear: Vec<i64>,
    me: i32,
) -> (
    Result<u64, tokio_postgres::Error>,
    Result<u64, tokio_postgres::Error>,
) {
    let mut withdrawn = Ok(0);
    for (marks, only) in &work {
        let Ok(rows) = withdrawn else { break };
        withdrawn = outbox::withdraw(&client, marks, only.as_deref(), me)
            .await
            .map(|n| rows + n);
    }
    let cleared = match to_clear.is_empty() {
        true => Ok(0),
        false => outbox::clear_marks(&client, &to_clear).await,
    };
    (withdrawn, cleared)
}

impl Ledger {
    /// `legacy_settle`: how long an owner of a version before leases must have been seen without
    /// its lock (that version's producer message timeout and a margin, taken as this one's).
    pub fn new(
        postgres: PostgresSettings,
        recoverer: Recoverer,
        ttl: Duration,
        legacy_settle: Duration,
        restart: RestartPolicy,
        shared: Shared,
    ) -> Ledger {
        Ledger {
            postgres,
            recoverer,
            ttl,
            client: None,
            to_clear: Vec::new(),
            to_withdraw: Vec::new(),
            clearing: None,
            sweeping: false,
            legacy: Takeover::new(legacy_settle),
            legacy_due: Vec::new(),
            closing: false,
            close_waiters: Vec::new(),
            shared,
            restarts: Restarts::new(ActorKind::Ledger, restart),
        }
    }

    /// Withdraws and clears what waits, one batch at a time, off the data path.
    fn clear(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        if self.clearing.is_some() || (self.to_clear.is_empty() && self.to_withdraw.is_empty()) {
            return;
        }
        let ids = std::mem::take(&mut self.to_clear);
        // Rows are withdrawn only under a valid lease; they wait for it (or for the peer that
        // takes this owner over, which finds them with their marks).
        let withdrawals = match self.shared.lease.is_valid() {
            true => std::mem::take(&mut self.to_withdraw),
            false => Vec::new(),
        };
        let work: Vec<(Vec<i64>, Option<Vec<String>>)> = withdrawals
            .iter()
            .map(|(w, _)| (w.marks.clone(), w.only.clone()))
            .collect();
        let to_clear = ids.clone();
        // Kept here while the statements run: a restart puts them back instead of dropping who
        // waits for a withdrawal.
        self.clearing = Some((ids, withdrawals));
        let me = self.shared.lease.owner();
        let fut = update_outbox(client, work, to_clear, me);
        ctx.spawn(
            fut.into_actor(self)
                .map(|(withdrawn, cleared), act, ctx| act.outbox_updated(ctx, withdrawn, cleared)),
        );
    }

    /// The withdrawals are answered, or, if they failed, kept to run again; marks that could not
    /// be cleared are kept too; either failure restarts the ledger.
    fn outbox_updated(
        &mut self,
        ctx: &mut Context<Self>,
        withdrawn: Result<u64, tokio_postgres::Error>,
        cleared: Result<u64, tokio_postgres::Error>,
    ) {
        let (ids, withdrawals) = self.clearing.take().unwrap_or_default();
        let mut failed = None;
        match withdrawn {
            Ok(rows) if !withdrawals.is_empty() => {
                log::warn!(
                    "ledger: withdrew {rows} notifications Kafka refused or that reached their \
                     campaign's end before Kafka had them"
                );
                withdrawals.into_iter().for_each(|(_, done)| {
                    let _ = done.send(());
                });
            }
            Ok(_) => {}
            Err(e) => {
                self.to_withdraw.extend(withdrawals);
                failed = Some(e);
            }
        }
        if let Err(e) = cleared {
            // Not lost: kept to clear after the reconnect. A mark left behind is only work
            // for a later recovery, which finds its notifications already in Kafka.
            self.to_clear.extend(ids);
            failed = Some(e);
        }
        if let Some(e) = failed {
            log::warn!("ledger: cannot update outbox marks: {}", describe(&e));
            self.restarts.failed();
            ctx.stop();
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let lease = self.shared.lease.clone();
        if self.sweeping || self.closing || !lease.is_valid() {
            return;
        }
        self.sweeping = true;
        let recoverer = self.recoverer.clone();
        let me = lease.owner();
        let may_fence = lease.valid_for() >= self.ttl;
        // Taken here, and given back by the next sweep's looks: lost with a dropped sweep, they
        // are only found due again one sweep later.
        let legacy_due = std::mem::take(&mut self.legacy_due);
        let fut = async move {
            let mut swept = Swept::default();
            // What was done before a step failed is reported all the same.
            let failed = swept
                .run(&client, &recoverer, me, may_fence, legacy_due)
                .await
                .err();
            (swept, failed)
        };
        ctx.spawn(fut.into_actor(self).map(|(swept, failed), act, _| {
            act.sweep_ended();
            act.swept(swept);
            if let Some(e) = failed {
                log::warn!("ledger: recovery sweep failed, will retry: {}", Chain(&e));
            }
        }));
    }

    fn sweep_ended(&mut self) {
        self.sweeping = false;
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn swept(&mut self, swept: Swept) {
        let metrics = &self.shared.metrics;
        for f in &swept.fenced {
            OwnerFenced::Lease {
                owner: f.owner,
                host: &f.host,
                pid: f.pid,
                expired_secs: f.expired_secs,
            }
            .emit(metrics);
        }
        for owner in &swept.legacy_fenced {
            OwnerFenced::Legacy { owner: *owner }.emit(metrics);
            self.legacy.taken_over(*owner);
        }
        self.legacy_due = self.legacy.observe(&swept.legacy_looks, Instant::now());
        let r = swept.recovered;
        if r.owners > 0 {
            log::info!(
                "ledger: recovered {} stopped instance(s): {} notifications re-sent, {} were \
                 already in Kafka, {} withdrawn from Postgres (their campaign had ended), {} \
                 withdrawn (their campaign is recalled), {} refused by the broker",
                r.owners,
                r.resent,
                r.already_sent,
                r.expired,
                r.recalled,
                r.refused
            );
            for (reason, notifications) in [
                (WithdrawReason::Ended, r.expired),
                (WithdrawReason::Recalled, r.recalled),
            ] {
                NotificationsWithdrawn {
                    reason,
                    notifications,
                }
                .emit(&self.shared.metrics);
            }
        }
    }
}

impl Actor for Ledger {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let postgres = self.postgres.clone();
        let delay = self.restarts.delay();
        ctx.wait(
            async move {
                actix_rt::time::sleep(delay).await;
                crate::postgres::connect(&postgres, "ledger").await
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(client) => {
                    act.restarts.succeeded();
                    act.client = Some(Rc::new(client));
                    ctx.run_interval(Duration::from_millis(200), |act, ctx| {
                        act.shared.liveness.beat(Loop::Ledger);
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
        if let Some((ids, withdrawals)) = self.clearing.take() {
            self.to_clear.extend(ids);
            self.to_withdraw.extend(withdrawals);
        }
        // A sweep under way went with the old context; its progress is in Postgres.
        self.sweep_ended();
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

impl Handler<Close> for Ledger {
    type Result = ResponseFuture<()>;

    /// Starts no more sweeps; answers once the one under way (which may be sending a dead owner's
    /// notifications) is over.
    fn handle(&mut self, _: Close, _: &mut Context<Self>) -> Self::Result {
        self.closing = true;
        let (done, idle) = oneshot::channel();
        match self.sweeping {
            true => self.close_waiters.push(done),
            false => {
                let _ = done.send(());
            }
        }
        Box::pin(async move {
            let _ = idle.await;
        })
    }
}
