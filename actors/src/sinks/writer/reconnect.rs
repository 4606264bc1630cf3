//! Connecting and reconnecting: the connection made at every (re)start after the restart
//! policy's backoff, the check that notices a lost one, what a restart puts back (the writes under
//! way go first again), and the reconcile that takes out of those jobs what already landed before
//! anything is written again.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{Job, Rows, Sink, Writer};

const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Where jobs go back in the queue once checked: first (their turn had come), or behind what
/// waits (suspects, so that the others go first).
#[derive(Clone, Copy)]
enum Place {
    Front,
    Behind,
}

impl<S: Sink> Writer<S> {
    /// Puts the suspects back in the queue, behind what waits, once what of them landed before
    /// is known.
    pub(super) fn release_suspects(&mut self, ctx: &mut Context<Self>) {
        let suspects: Vec<Job<S>> = self.suspects.drain(..).map(|(job, _)| job).collect();
        self.reconcile_then_queue(ctx, suspects, Place::Behind);
    }

    pub(super) fn requeue_front(&mut self, jobs: impl DoubleEndedIterator<Item = Job<S>>) {
        for job in jobs.rev() {
            self.pending_rows += job.item.rows();
            self.pending.push_front(job);
        }
    }

    /// After a reconnect, or after a group was refused: jobs whose earlier write may have landed
    /// in part are checked against the sink before anything is written again, so a retry never
    /// writes a notification twice.
    pub(super) fn reconcile_then_flush(&mut self, ctx: &mut Context<Self>) {
        let (attempted, untouched): (VecDeque<Job<S>>, VecDeque<Job<S>>) =
            std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|j| j.attempted);
        self.pending = untouched;
        self.pending_rows -= attempted.iter().map(|j| j.item.rows()).sum::<usize>();
        if attempted.is_empty() {
            self.flush(ctx, true);
            self.finish_close_if_idle(ctx);
        } else {
            self.reconcile_then_queue(ctx, attempted.into(), Place::Front);
        }
    }

    /// Takes out of `jobs` what the sink already holds and queues the rest at `place`; nothing
    /// else runs meanwhile (`ctx.wait`). If the check fails, the jobs wait at the front, still
    /// to be checked, and the writer restarts.
    fn reconcile_then_queue(&mut self, ctx: &mut Context<Self>, jobs: Vec<Job<S>>, place: Place) {
        let Some(sink) = self.sink.clone() else {
            self.requeue_front(jobs.into_iter());
            return;
        };
        let items: Vec<_> = jobs.iter().map(|j| j.item.clone()).collect();
        ctx.wait(sink.reconcile(items).into_actor(self).map(
            move |result, act, ctx| match result {
                Ok(items) => {
                    let checked = jobs.into_iter().zip(items).map(|(mut job, item)| {
                        job.item = item;
                        job.attempted = false;
                        job
                    });
                    match place {
                        Place::Front => act.requeue_front(checked),
                        Place::Behind => {
                            for job in checked {
                                act.pending_rows += job.item.rows();
                                act.pending.push_back(job);
                            }
                        }
                    }
                    act.flush(ctx, true);
                    act.finish_close_if_idle(ctx);
                }
                Err(e) => {
                    act.requeue_front(jobs.into_iter());
                    act.restarts.failed();
                    log::warn!(
                        "{}: cannot check what was written before: {e}",
                        S::KIND.writer().name()
                    );
                    ctx.stop();
                }
            },
        ));
    }

    /// Connected: what interrupted writes left in the sink is checked, then the writes go on.
    fn connected(&mut self, ctx: &mut Context<Self>, sink: S) {
        self.restarts.connected();
        if self.restarts.after_failure() {
            log::info!("{}: connected again", S::KIND.writer().name());
        } else {
            log::info!("{}: connected", S::KIND.writer().name());
        }
        self.shared
            .metrics
            .sink_connected
            .with_label_values(&[S::KIND.as_str()])
            .set(1);
        self.sink = Some(Rc::new(sink));
        self.reconcile_then_flush(ctx);
        // A connection can die while idle; notice it without waiting for the next
        // write to fail, so readiness tells the truth and the reconnect starts early.
        ctx.run_interval(CONNECTION_CHECK_INTERVAL, |act, ctx| {
            act.periodic_check(ctx)
        });
    }

    /// Every `CONNECTION_CHECK_INTERVAL` while connected: a liveness beat, a look at the fence
    /// while the lease is lapsed, a lost connection noticed, suspects released when nothing else
    /// waits, a probe while faulted, and refusals settled.
    fn periodic_check(&mut self, ctx: &mut Context<Self>) {
        self.shared
            .liveness
            .beat(crate::liveness::Loop::writer(S::KIND));
        self.probe_fence(ctx);
        if self.sink.as_ref().is_some_and(|s| !s.is_connected()) {
            self.restarts.failed();
            log::warn!("{}: connection lost, restarting", S::KIND.writer().name());
            ctx.stop();
        } else if self.pending.is_empty()
            && self.in_flight.is_empty()
            && self
                .suspects
                .front()
                .is_some_and(|(_, until)| *until <= Instant::now())
        {
            self.release_suspects(ctx);
        } else if self.fault.is_some() {
            self.flush(ctx, false);
        }
        self.settle_refusals();
    }
}

impl<S: Sink> Actor for Writer<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The data path awaits `send()`, so this is the backpressure window of each writer.
        ctx.set_mailbox_capacity(64);
        let delay = self.restarts.delay();
        let config = self.config.clone();
        ctx.wait(
            async move {
                actix_rt::time::sleep(delay).await;
                S::connect(config).await
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok(sink) => act.connected(ctx, sink),
                Err(e) => {
                    act.restarts.failed();
                    log::warn!("{}: cannot connect: {e}", S::KIND.writer().name());
                    ctx.stop();
                }
            }),
        );
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared
            .metrics
            .sink_connected
            .with_label_values(&[S::KIND.as_str()])
            .set(0);
    }
}

impl<S: Sink> Supervised for Writer<S> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.restarts.restarting(&self.shared);
        self.sink = None;
        self.linger_armed = false;
        // The wait for the lease went with the old context; the next write finds out again.
        self.paused = false;
        self.probing_fence = false;
        // The writes under way were dropped with the old context: their jobs go first.
        let in_flight = std::mem::take(&mut self.in_flight);
        self.in_flight_rows = 0;
        for jobs in in_flight.into_values().rev() {
            self.requeue_front(jobs.into_iter());
        }
    }
}
