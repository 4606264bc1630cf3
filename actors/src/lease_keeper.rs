//! The `LeaseKeeper` actor: renews this process's lease every third of its TTL, on a connection of
//! its own (nothing queues in front of a renewal), and publishes what the renewal learns: the
//! partitions live peers hold, for the orphan watch.
//!
//! A renewal that does not come back within a third of the TTL is given up and the connection
//! made again: the lease lapses rather than being renewed late. A renewal that finds the row
//! fenced ends the lease and stops the service. Supervised like the ledger.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::Client;

use crate::lease::{self, Renewal};
use crate::liveness::Loop;
use crate::metrics::ActorKind;
use crate::postgres::{describe, ConnectError, PostgresSettings};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

/// Marks this process's row fenced by itself at the end of a stop; `flushed` says its producer
/// had nothing left on its way, so a peer may take over what it left at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub flushed: bool,
}

pub struct LeaseKeeper {
    postgres: PostgresSettings,
    ttl: Duration,
    input_topic: String,
    client: Option<Rc<Client>>,
    /// When the renewal under way was sent.
    renewing: Option<Instant>,
    released: bool,
    shared: Shared,
    restarts: Restarts,
}

impl LeaseKeeper {
    pub fn new(
        postgres: PostgresSettings,
        ttl: Duration,
        input_topic: String,
        restart: RestartPolicy,
        shared: Shared,
    ) -> LeaseKeeper {
        LeaseKeeper {
            postgres,
            ttl,
            input_topic,
            client: None,
            renewing: None,
            released: false,
            restarts: Restarts::new(ActorKind::LeaseKeeper, restart),
            shared,
        }
    }

    fn every(&self) -> Duration {
        self.ttl / 3
    }

    fn renew(&mut self, ctx: &mut Context<Self>) {
        let lease = self.shared.lease.clone();
        self.shared
            .metrics
            .lease_valid
            .set(i64::from(lease.is_valid()));
        if self.released || lease.is_fenced() {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        if let Some(sent) = self.renewing {
            if sent.elapsed() > self.every() {
                log::warn!(
                    "lease: a renewal has not come back for {:.1?}; connecting again",
                    sent.elapsed()
                );
                self.restarts.failed();
                ctx.stop();
            }
            return;
        }
        let sent = Instant::now();
        self.renewing = Some(sent);
        let (owner, ttl, topic) = (lease.owner(), self.ttl, self.input_topic.clone());
        let partitions = lease.partitions();
        let fut = async move {
            let renewal = lease::renew(&client, owner, ttl, &partitions).await?;
            let peers = match renewal {
                Renewal::Renewed => Some(lease::partitions_of_peers(&client, owner, &topic).await?),
                Renewal::Fenced(_) => None,
            };
            Ok::<_, tokio_postgres::Error>((renewal, peers))
        };
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.renewing = None;
            let lease = &act.shared.lease;
            match result {
                Ok((Renewal::Renewed, peers)) => {
                    lease.renewed(sent, act.ttl);
                    if let Some(peers) = peers {
                        lease.set_held_by_peers(peers);
                    }
                    act.restarts.succeeded();
                }
                Ok((Renewal::Fenced(by), _)) => lease.fenced(by),
                Err(e) => {
                    log::warn!("lease: cannot renew: {}", describe(&e));
                    act.restarts.failed();
                    ctx.stop();
                }
            }
            act.shared
                .metrics
                .lease_valid
                .set(i64::from(lease.is_valid()));
        }));
    }
}

impl Actor for LeaseKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (postgres, owner) = (self.postgres.clone(), self.shared.lease.owner());
        let delay = self.restarts.delay();
        ctx.wait(
            async move {
                actix_rt::time::sleep(delay).await;
                let client = crate::postgres::connect(&postgres, "ledger lease").await?;
                let held = lease::hold_legacy_lock(&client, owner)
                    .await
                    .map_err(ConnectError::from)?;
                Ok::<_, ConnectError>((client, held))
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((client, held)) => {
                    if !held {
                        log::warn!(
                            "lease: another session holds the advisory lock of owner {}: an \
                             instance of a version before leases with the same id",
                            act.shared.lease.owner()
                        );
                    }
                    act.restarts.connected();
                    act.client = Some(Rc::new(client));
                    act.renew(ctx);
                    ctx.run_interval(act.every(), |act, ctx| {
                        act.shared.liveness.beat(Loop::LeaseKeeper);
                        if act.client.as_ref().is_some_and(|c| c.is_closed()) {
                            log::warn!("lease: connection lost; connecting again");
                            act.restarts.failed();
                            ctx.stop();
                        } else {
                            act.renew(ctx);
                        }
                    });
                }
                Err(e) => {
                    log::warn!("lease: cannot connect: {e}");
                    act.restarts.failed();
                    ctx.stop();
                }
            }),
        );
    }
}

impl Supervised for LeaseKeeper {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts.restarting(&self.shared);
        self.client = None;
        self.renewing = None;
    }
}

impl Handler<Release> for LeaseKeeper {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) -> Self::Result {
        self.released = true;
        let (client, owner) = (self.client.clone(), self.shared.lease.owner());
        let fenced = self.shared.lease.is_fenced();
        Box::pin(async move {
            let Some(client) = client.filter(|_| !fenced) else {
                return;
            };
            let released = tokio::time::timeout(
                Duration::from_secs(2),
                lease::release(&client, owner, msg.flushed),
            )
            .await;
            match released {
                Ok(Ok(())) => log::info!(
                    "lease: released (owner {owner}{})",
                    if msg.flushed {
                        ", nothing left on its way"
                    } else {
                        ""
                    }
                ),
                Ok(Err(e)) => log::warn!("lease: cannot release: {}", describe(&e)),
                Err(_) => log::warn!("lease: the release did not come back in 2 s"),
            }
        })
    }
}
