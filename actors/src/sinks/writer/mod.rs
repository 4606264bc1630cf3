//! The supervised writer every sink runs in: batching, retries, restarts with backoff.
//!
//! [`Writer`] owns the jobs; a [`Sink`] only knows how to connect and how to write a group of
//! batches. Jobs stay in the actor's state until the sink confirmed them, and a restart keeps the
//! actor value (actix's `Supervisor` calls `restarting` on the same value), so a connection lost
//! mid-write never loses a batch: the write future is dropped with the old context, and its jobs
//! go back to the front of the queue and are written again after the reconnect.
//!
//! The queue is first come, first written, with one exception that keeps a small campaign from
//! waiting behind a large one: a job smaller than a batch goes ahead of the large jobs (a batch
//! or more each, the slices of a large campaign) waiting at the back of the queue, unless one of
//! them has already been passed over by [`PASS_OVER_BATCHES`] batches' worth of rows, so a large
//! campaign is delayed by a bounded amount however many small ones arrive
//! ([`Writer::place_of`]).
//!
//! While the writer is connecting it processes no messages (`ctx.wait`), its mailbox fills, and
//! the enricher's `send` waits: that is how backpressure reaches the reader.
//!
//! Its parts: [`sink`] (what a sink is, and how its errors are handled), this file (the actor's
//! state and its messages), [`writes`] (grouping the queue and writing it), [`failures`] (what a
//! failed write means for its jobs: held, split, refused, the sink faulted or unusable, the lease
//! lapsed), [`reconnect`] (connecting, restarting, and reconciling what interrupted writes left).

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::channel::oneshot;

use crate::messages::{Close, Health, WriterHealth};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

mod failures;
mod reconnect;
mod sink;
mod writes;

#[cfg(test)]
mod tests;

use failures::Suspicion;
pub use sink::{LocalFuture, Rows, Sink, SinkError, Write, WriteAll};

/// A large job waiting in the queue lets small jobs go ahead of it until this many batches
/// (`batch_max_rows` each) of them have.
pub const PASS_OVER_BATCHES: usize = 4;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// A write starts once this many rows wait...
    pub batch_max_rows: usize,
    /// ...or once the oldest has waited this long (or at once when no write is out).
    pub linger: Duration,
    /// Work waiting and nothing confirmed for this long is a stall (readiness says so).
    pub stall_after: Duration,
    pub restart: RestartPolicy,
}

struct Job<S: Sink> {
    item: Arc<S::Item>,
    done: oneshot::Sender<Result<S::Output, SinkError>>,
    /// Written alone: it was part of a group the sink refused or kept failing on.
    alone: bool,
    /// A write of it was started: after a failure its fate is unknown until reconciled.
    attempted: bool,
    suspicion: Suspicion,
    /// Rows of small jobs queued ahead of it since it was queued.
    passed_over: usize,
}

impl<S: Sink> Job<S> {
    fn new(item: Arc<S::Item>, done: oneshot::Sender<Result<S::Output, SinkError>>) -> Job<S> {
        Job {
            item,
            done,
            alone: false,
            attempted: false,
            suspicion: Suspicion::default(),
            passed_over: 0,
        }
    }
}

pub struct Writer<S: Sink> {
    config: S::Config,
    settings: WriterSettings,
    shared: Shared,
    sink: Option<Rc<S>>,
    pending: VecDeque<Job<S>>,
    pending_rows: usize,
    in_flight: BTreeMap<u64, Vec<Job<S>>>,
    /// Rows of the writes in `in_flight`, kept as they start and end: with one job per campaign
    /// a write holds thousands of jobs, too many to count on every message.
    in_flight_rows: usize,
    next_write: u64,
    linger_armed: bool,
    closing: Option<Vec<oneshot::Sender<()>>>,
    restarts: Restarts,
    /// Writes that went through: the evidence that the sink itself is healthy.
    successes: u64,
    /// When the writer last confirmed a write, or last went from idle to having work.
    progress_at: Instant,
    /// Jobs whose write failed alone, held back so that the others go first; released (and
    /// reconciled) once another write went through, or after `hold` when nothing else waits.
    suspects: VecDeque<(Job<S>, Instant)>,
    /// Jobs the sink refused for good, alone. The refusal is final (and answered) once another
    /// write went through, or after `REFUSAL_SETTLES_AFTER` with no contrary evidence; until then
    /// it may turn out to be a configuration fault instead.
    refused: VecDeque<(Job<S>, SinkError, Instant)>,
    refusals_in_a_row: u32,
    /// Set while the sink refuses every write: nothing is written but a probe every
    /// `PROBE_EVERY`, nothing is refused, readiness says why.
    fault: Option<String>,
    probe_at: Instant,
    /// Set while this process's lease is lapsed: nothing is written, the jobs wait (and are
    /// reconciled once it is renewed).
    paused: bool,
    /// A look at whether the lapsed lease was fenced is under way.
    probing_fence: bool,
    /// Set once the sink answered [`SinkError::Fatal`]: the service is stopping, and every job,
    /// held or new, is answered with it.
    unusable: Option<SinkError>,
}

impl<S: Sink> Writer<S> {
    /// Past its restart limit the writer raises the fatal reason in `shared`.
    pub fn new(config: S::Config, settings: WriterSettings, shared: Shared) -> Writer<S> {
        Writer {
            config,
            sink: None,
            pending: VecDeque::new(),
            pending_rows: 0,
            in_flight: BTreeMap::new(),
            in_flight_rows: 0,
            next_write: 0,
            linger_armed: false,
            closing: None,
            restarts: Restarts::new(S::KIND.writer(), settings.restart.clone()),
            successes: 0,
            progress_at: Instant::now(),
            suspects: VecDeque::new(),
            refused: VecDeque::new(),
            refusals_in_a_row: 0,
            fault: None,
            probe_at: Instant::now(),
            paused: false,
            probing_fence: false,
            unusable: None,
            shared,
            settings,
        }
    }

    fn has_work(&self) -> bool {
        !(self.pending.is_empty() && self.in_flight.is_empty() && self.suspects.is_empty())
    }

    /// Rows waiting, being written or held back.
    fn waiting_rows(&self) -> usize {
        let suspects: usize = self.suspects.iter().map(|(j, _)| j.item.rows()).sum();
        self.pending_rows + self.in_flight_rows + suspects
    }

    fn update_gauges(&self) {
        self.shared
            .metrics
            .sink_pending_rows
            .with_label_values(&[S::KIND.as_str()])
            .set(self.waiting_rows() as i64);
    }

    fn queue(&mut self, item: Arc<S::Item>, done: oneshot::Sender<Result<S::Output, SinkError>>) {
        if let Some(error) = &self.unusable {
            let _ = done.send(Err(error.clone()));
            return;
        }
        if !self.has_work() {
            self.progress_at = Instant::now();
        }
        let rows = item.rows();
        self.pending_rows += rows;
        let at = self.place_of(rows);
        self.pending.insert(at, Job::new(item, done));
    }

    /// Where a new job of `rows` goes in the queue: at the back, or, smaller than a batch, ahead
    /// of the large jobs at the back that have not been passed over by
    /// [`PASS_OVER_BATCHES`] batches yet (each of those counts the rows that passed it).
    fn place_of(&mut self, rows: usize) -> usize {
        let batch = self.settings.batch_max_rows;
        let mut at = self.pending.len();
        if rows >= batch {
            return at;
        }
        let limit = batch.saturating_mul(PASS_OVER_BATCHES);
        while at > 0 {
            let before = &self.pending[at - 1];
            if before.item.rows() < batch || before.passed_over >= limit {
                break;
            }
            at -= 1;
        }
        for passed in self.pending.range_mut(at..) {
            passed.passed_over += rows;
        }
        at
    }
}

impl<S: Sink> Handler<Write<S>> for Writer<S> {
    type Result = ResponseFuture<Result<S::Output, SinkError>>;

    fn handle(&mut self, msg: Write<S>, ctx: &mut Context<Self>) -> Self::Result {
        let (done, rx) = oneshot::channel();
        self.queue(msg.0, done);
        self.flush(ctx, false);
        Box::pin(async move { rx.await.unwrap_or(Err(SinkError::Canceled)) })
    }
}

impl<S: Sink> Handler<WriteAll<S>> for Writer<S> {
    type Result = ();

    fn handle(&mut self, msg: WriteAll<S>, ctx: &mut Context<Self>) {
        for (item, done) in msg.0 {
            self.queue(item, done);
        }
        self.flush(ctx, false);
    }
}

impl<S: Sink> Handler<Close> for Writer<S> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.shared.lease.is_fenced() {
            // Nothing may be written any more: the jobs it holds are the peer's now, and what
            // librdkafka still queues is dropped with the producer, not flushed.
            log::info!(
                "{}: closing without writing the {} notifications it holds (the lease was fenced)",
                S::KIND.writer().name(),
                self.waiting_rows()
            );
            let _ = tx.send(());
            return Box::pin(async move {
                let _ = rx.await;
            });
        }
        self.closing.get_or_insert_with(Vec::new).push(tx);
        if self.sink.is_some() {
            self.flush(ctx, true);
            self.finish_close_if_idle(ctx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl<S: Sink> Handler<Health> for Writer<S> {
    type Result = WriterHealth;

    fn handle(&mut self, _: Health, _: &mut Context<Self>) -> WriterHealth {
        let waited = self.progress_at.elapsed();
        let stalled = (self.has_work() && waited > self.settings.stall_after)
            .then(|| (waited, self.waiting_rows()));
        WriterHealth {
            connected: self.sink.as_ref().is_some_and(|s| s.is_connected()),
            stalled,
            fault: self.fault.clone(),
        }
    }
}
