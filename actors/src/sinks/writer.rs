//! The supervised writer every sink runs in: batching, retries, restarts with backoff.
//!
//! [`Writer`] owns the jobs; a [`Sink`] only knows how to connect and how to write a group of
//! batches. Jobs stay in the actor's state until the sink confirmed them, and a restart keeps the
//! actor value (actix's `Supervisor` calls `restarting` on the same value), so a connection lost
//! mid-write never loses a batch: the write future is dropped with the old context, and its jobs
//! go back to the front of the queue and are written again after the reconnect.
//!
//! While the writer is connecting it processes no messages (`ctx.wait`), its mailbox fills, and
//! the enricher's `send` waits: that is how backpressure reaches the reader.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::channel::oneshot;

use crate::events::{Event, SinkWriteFailed, SinkWritten};
use crate::fatal::FatalReason;
use crate::hand_off::Batch;
use crate::messages::{Close, Health, WriterHealth};
use crate::metrics::{ErrorClass, SinkKind};
use crate::shared::Shared;
use crate::supervision::{RestartPolicy, Restarts};

pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A group that failed this many times with retriable errors is split, each job written alone.
const SPLIT_AFTER_FAILURES: u32 = 2;
/// A job that failed this many times, at least once alone after other writes had gone through
/// since its previous failure, fails the same way every time: it is refused for good. (Twice
/// alone with other writes in between would need traffic after it, which its campaign, the last
/// of a burst, may never get.)
const POISON_FAILURES: u32 = 3;
/// This many jobs refused for good in a row, with no write going through in between, are not
/// this many bad campaigns but a sink that refuses everything (a column that overflows, an id
/// sequence exhausted): a configuration fault. (Kafka's configuration errors, such as a topic
/// limit below the batch size, are classed retriable and restart the writer instead.)
const FAULT_AFTER_REFUSALS: u32 = 3;
/// While faulted, one job is tried this often to learn whether the sink takes writes again.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A refusal with no other write to tell whether it is the job's or the sink's is final after
/// this long (a lone campaign must not wait for traffic that may not come).
const REFUSAL_SETTLES_AFTER: Duration = Duration::from_secs(5);

/// How a sink error is handled.
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
    fn class(&self) -> ErrorClass {
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

/// Where jobs go back in the queue once checked: first (their turn had come), or behind what
/// waits (suspects, so that the others go first).
#[derive(Clone, Copy)]
enum Place {
    Front,
    Behind,
}

struct Job<S: Sink> {
    item: Arc<S::Item>,
    done: oneshot::Sender<Result<S::Output, SinkError>>,
    /// Written alone: it was part of a group the sink refused or kept failing on.
    alone: bool,
    /// A write of it was started: after a failure its fate is unknown until reconciled.
    attempted: bool,
    suspicion: Suspicion,
}

impl<S: Sink> Job<S> {
    fn new(item: Arc<S::Item>, done: oneshot::Sender<Result<S::Output, SinkError>>) -> Job<S> {
        Job {
            item,
            done,
            alone: false,
            attempted: false,
            suspicion: Suspicion::default(),
        }
    }
}

/// What a job's retriable failures say about it. A sink that is down fails every write; a job
/// the sink can never take (a value the database refuses with an error it reports as transient,
/// say) fails while other writes go through. Only the second kind is refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Suspicion {
    /// Retriable failures of writes that held the job.
    failures: u32,
    /// Failures alone with other writes gone through since the job's previous failure.
    strikes: u32,
    /// How many writes had gone through at its last failure.
    successes_at_failure: u64,
}

impl Suspicion {
    /// Records a retriable failure of a write of `jobs` jobs, `successes` writes having gone
    /// through so far; true when the job is now known to fail every time.
    fn failed(&mut self, jobs: usize, successes: u64) -> bool {
        self.failures += 1;
        if jobs == 1 && successes > self.successes_at_failure {
            self.strikes += 1;
        }
        self.successes_at_failure = successes;
        self.strikes > 0 && self.failures >= POISON_FAILURES
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

    /// Starts writes while there is room and something worth writing: anything when no write is
    /// in flight (an idle sink adds no delay), else a full batch, or anything once the linger time
    /// has passed. Under load the batches grow while earlier writes are out, as in a group commit.
    fn flush(&mut self, ctx: &mut Context<Self>, linger_expired: bool) {
        if linger_expired {
            self.linger_armed = false;
        }
        let Some(sink) = self.sink.clone() else {
            return;
        };
        if self.unusable.is_some() {
            return;
        }
        if self.paused {
            self.update_gauges();
            return;
        }
        if self.fault.is_some() {
            self.probe(ctx, &sink);
            self.update_gauges();
            return;
        }
        while self.in_flight.len() < S::MAX_CONCURRENT_WRITES && !self.pending.is_empty() {
            let full = self.pending_rows >= self.settings.batch_max_rows;
            let idle = self.in_flight.is_empty();
            if !(full || idle || linger_expired || self.pending.front().is_some_and(|j| j.alone)) {
                break;
            }
            let jobs = self.take_group();
            self.start_write(ctx, &sink, jobs);
        }
        if !self.pending.is_empty() && !self.linger_armed {
            self.linger_armed = true;
            ctx.run_later(self.settings.linger, |act, ctx| act.flush(ctx, true));
        }
        self.update_gauges();
    }

    fn take_group(&mut self) -> Vec<Job<S>> {
        let mut jobs = Vec::new();
        let mut rows = 0;
        while let Some(job) = self.pending.front() {
            let alone = job.alone;
            if !jobs.is_empty() && (alone || rows + job.item.rows() > self.settings.batch_max_rows)
            {
                break;
            }
            let mut job = self.pending.pop_front().expect("front exists");
            job.attempted = true;
            rows += job.item.rows();
            jobs.push(job);
            if alone {
                break;
            }
        }
        self.pending_rows -= rows;
        jobs
    }

    fn start_write(&mut self, ctx: &mut Context<Self>, sink: &Rc<S>, jobs: Vec<Job<S>>) {
        let id = self.next_write;
        self.next_write += 1;
        let items: Vec<_> = jobs.iter().map(|j| j.item.clone()).collect();
        let rows: usize = items.iter().map(|b| b.rows()).sum();
        self.in_flight.insert(id, jobs);
        self.in_flight_rows += rows;
        let started = Instant::now();
        let write = sink.write(items);
        ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            let jobs = act.in_flight.remove(&id).unwrap_or_default();
            if !jobs.is_empty() {
                act.in_flight_rows -= rows;
            }
            act.written(ctx, jobs, rows, started, result);
        }));
    }

    fn written(
        &mut self,
        ctx: &mut Context<Self>,
        jobs: Vec<Job<S>>,
        rows: usize,
        started: Instant,
        result: Result<Vec<S::Output>, SinkError>,
    ) {
        match result {
            Ok(outputs) => {
                self.restarts.succeeded();
                self.successes += 1;
                self.progress_at = Instant::now();
                self.went_through();
                let mut added = 0;
                for (job, output) in jobs.into_iter().zip(outputs) {
                    added += S::rows_written(&job.item, &output);
                    let _ = job.done.send(Ok(output));
                }
                SinkWritten {
                    sink: S::KIND,
                    rows,
                    added,
                    took: started.elapsed(),
                }
                .emit(&self.shared.metrics);
                if self.suspects.is_empty() {
                    self.flush(ctx, false);
                } else {
                    // The sink took a write: the suspects may be tried again.
                    self.release_suspects(ctx);
                }
                self.finish_close_if_idle(ctx);
            }
            Err(e) => {
                SinkWriteFailed {
                    sink: S::KIND,
                    class: e.class(),
                    error: &e,
                    jobs: jobs.len(),
                    rows,
                }
                .emit(&self.shared.metrics);
                match e {
                    SinkError::Fatal(reason) => {
                        self.unusable_for_good(ctx, jobs, reason);
                        return;
                    }
                    // Nothing of it was written after the lease lapsed; what was handed over
                    // before is reconciled when the writes go on.
                    SinkError::Lapsed(_) => {
                        self.requeue_front(jobs.into_iter());
                        self.pause(ctx);
                        return;
                    }
                    SinkError::Permanent(_) if jobs.len() == 1 => {
                        for job in jobs {
                            self.refused_alone(job, e.clone());
                        }
                    }
                    // One of the group is bad; write each alone to find it and keep the others,
                    // once what of the group did land is known.
                    SinkError::Permanent(_) => {
                        self.requeue_front(jobs.into_iter().map(|mut j| {
                            j.alone = true;
                            j
                        }));
                        self.reconcile_then_flush(ctx);
                        return;
                    }
                    SinkError::Retriable(_) | SinkError::Disconnected(_) | SinkError::Canceled => {
                        self.restarts.failed();
                        self.retry_later(jobs, &e);
                        ctx.stop();
                        return;
                    }
                }
                self.flush(ctx, false);
                self.finish_close_if_idle(ctx);
            }
        }
    }

    /// The sink can store nothing until an operator acts: the service is told to stop with the
    /// reason, and every job is answered unconfirmed (so that no campaign is refused for it).
    fn unusable_for_good(&mut self, ctx: &mut Context<Self>, jobs: Vec<Job<S>>, reason: String) {
        log::error!("{}: {reason}", S::KIND.writer().name());
        self.shared.fatal.raise(FatalReason::SinkUnusable {
            actor: S::KIND.writer(),
            reason: reason.clone(),
        });
        self.set_fault(Some(reason.clone()));
        let error = SinkError::Fatal(reason);
        let held = std::mem::take(&mut self.pending)
            .into_iter()
            .chain(self.suspects.drain(..).map(|(job, _)| job))
            .chain(self.refused.drain(..).map(|(job, _, _)| job));
        for job in jobs.into_iter().chain(held) {
            let _ = job.done.send(Err(error.clone()));
        }
        self.pending_rows = 0;
        self.unusable = Some(error);
        self.update_gauges();
        self.finish_close_if_idle(ctx);
    }

    /// Holds every job until the lease is valid again, then checks what the interrupted writes
    /// left in the sink and goes on. No restart: the sink is fine, this process may not write.
    fn pause(&mut self, ctx: &mut Context<Self>) {
        if self.paused {
            return;
        }
        self.paused = true;
        log::warn!(
            "{}: holding {} notifications until this instance's lease is renewed",
            S::KIND.writer().name(),
            self.waiting_rows()
        );
        let lease = self.shared.lease.clone();
        ctx.spawn(
            async move { lease.wait_valid().await }
                .into_actor(self)
                .map(|(), act, ctx| {
                    act.paused = false;
                    log::info!("{}: writing again", S::KIND.writer().name());
                    act.reconcile_then_flush(ctx);
                }),
        );
    }

    /// While the lease is lapsed, looks (through the sink's own session) whether it was fenced.
    fn probe_fence(&mut self, ctx: &mut Context<Self>) {
        if self.probing_fence || self.shared.lease.is_valid() || self.shared.lease.is_fenced() {
            return;
        }
        let Some(sink) = self.sink.clone() else {
            return;
        };
        self.probing_fence = true;
        ctx.spawn(sink.probe_fence().into_actor(self).map(|(), act, _| {
            act.probing_fence = false;
        }));
    }

    /// A job the sink refused for good, alone: held until the refusal is known to be the job's
    /// (another write goes through) rather than the sink's (every write is refused).
    fn refused_alone(&mut self, job: Job<S>, error: SinkError) {
        self.refusals_in_a_row += 1;
        if self.fault.is_none() && self.refusals_in_a_row >= FAULT_AFTER_REFUSALS {
            let reason = error.to_string();
            log::error!(
                "{}: {} jobs in a row refused and none written: the sink refuses every write \
                 (a configuration fault); holding the campaigns and trying one every {:?}: {reason}",
                S::KIND.writer().name(),
                self.refusals_in_a_row,
                PROBE_EVERY
            );
            self.set_fault(Some(reason));
            let now = Instant::now();
            self.probe_at = now + PROBE_EVERY;
            let refused = std::mem::take(&mut self.refused);
            self.suspects
                .extend(refused.into_iter().map(|(job, _, _)| (job, now)));
        }
        if self.fault.is_some() {
            // Written again, once reconciled, when the sink takes writes again.
            self.suspects.push_back((job, Instant::now()));
        } else {
            let until = Instant::now() + REFUSAL_SETTLES_AFTER;
            self.refused.push_back((job, error, until));
        }
    }

    /// A write went through: refusals held are the jobs' own; a fault is over.
    fn went_through(&mut self) {
        self.refusals_in_a_row = 0;
        if self.fault.is_some() {
            log::info!("{}: writes go through again", S::KIND.writer().name());
            self.set_fault(None);
        }
        for (job, error, _) in self.refused.drain(..) {
            let _ = job.done.send(Err(error));
        }
    }

    /// Refusals held with no contrary evidence for `REFUSAL_SETTLES_AFTER` are final.
    fn settle_refusals(&mut self) {
        let now = Instant::now();
        while self
            .refused
            .front()
            .is_some_and(|(_, _, until)| *until <= now)
        {
            if let Some((job, error, _)) = self.refused.pop_front() {
                let _ = job.done.send(Err(error));
            }
        }
    }

    fn set_fault(&mut self, fault: Option<String>) {
        self.shared
            .metrics
            .sink_fault
            .with_label_values(&[S::KIND.as_str()])
            .set(i64::from(fault.is_some()));
        self.fault = fault;
    }

    /// While faulted: one job, alone, every `PROBE_EVERY`.
    fn probe(&mut self, ctx: &mut Context<Self>, sink: &Rc<S>) {
        let now = Instant::now();
        if !self.in_flight.is_empty() || now < self.probe_at {
            return;
        }
        let Some(mut job) = self.pending.pop_front() else {
            return;
        };
        self.probe_at = now + PROBE_EVERY;
        self.pending_rows -= job.item.rows();
        job.alone = true;
        job.attempted = true;
        self.start_write(ctx, sink, vec![job]);
    }

    /// After a retriable failure: a group that keeps failing is split; a job that failed alone
    /// waits among the suspects so that the others go first; one that keeps failing while others
    /// go through is refused for good (and delivery dead-letters it).
    fn retry_later(&mut self, jobs: Vec<Job<S>>, error: &SinkError) {
        // A lost connection is no evidence against the jobs: tried again as they were.
        if matches!(error, SinkError::Disconnected(_)) {
            self.requeue_front(jobs.into_iter());
            return;
        }
        let count = jobs.len();
        let mut again = Vec::with_capacity(count);
        for mut job in jobs {
            if job.suspicion.failed(count, self.successes) {
                let reason = format!(
                    "failed {} times, {} of them alone while other writes went through: {error}",
                    job.suspicion.failures, job.suspicion.strikes
                );
                log::error!(
                    "{}: a job of {} notifications keeps failing while others are written; refusing it: {error}",
                    S::KIND.writer().name(),
                    job.item.rows()
                );
                let _ = job.done.send(Err(SinkError::Permanent(reason)));
            } else if count == 1 {
                job.alone = true;
                let until = Instant::now() + self.hold(job.suspicion.failures);
                self.suspects.push_back((job, until));
            } else {
                job.alone |= job.suspicion.failures >= SPLIT_AFTER_FAILURES;
                again.push(job);
            }
        }
        self.requeue_front(again.into_iter());
    }

    /// How long a suspect that failed `failures` times waits when nothing else is written:
    /// doubling from the restart backoff's start, up to a spacing at which retrying one job alone
    /// (each failure restarts the writer) stays within half the restart limit. A lone job that
    /// failed once, in a blip, is tried again soon; one that keeps failing, rarely.
    fn hold(&self, failures: u32) -> Duration {
        let restart = &self.settings.restart;
        let spacing = restart.window * 2 / restart.limit.unwrap_or(u32::MAX).max(1);
        let doubling = 1u32 << failures.saturating_sub(1).min(20);
        restart
            .backoff_initial
            .saturating_mul(doubling)
            .min(spacing.max(restart.backoff_max))
    }

    /// Puts the suspects back in the queue, behind what waits, once what of them landed before
    /// is known.
    fn release_suspects(&mut self, ctx: &mut Context<Self>) {
        let suspects: Vec<Job<S>> = self.suspects.drain(..).map(|(job, _)| job).collect();
        self.reconcile_then_queue(ctx, suspects, Place::Behind);
    }

    fn requeue_front(&mut self, jobs: impl DoubleEndedIterator<Item = Job<S>>) {
        for job in jobs.rev() {
            self.pending_rows += job.item.rows();
            self.pending.push_front(job);
        }
    }

    /// After a reconnect, or after a group was refused: jobs whose earlier write may have landed
    /// in part are checked against the sink before anything is written again, so a retry never
    /// writes a notification twice.
    fn reconcile_then_flush(&mut self, ctx: &mut Context<Self>) {
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

    fn finish_close_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.pending.is_empty() && self.in_flight.is_empty() {
            if let Some(waiters) = self.closing.take() {
                let close = match &self.sink {
                    Some(sink) => sink.close(),
                    None => Box::pin(async {}),
                };
                ctx.spawn(close.into_actor(self).map(move |(), _, _| {
                    for w in waiters {
                        let _ = w.send(());
                    }
                }));
            }
        }
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
                Ok(sink) => {
                    act.restarts.connected();
                    if act.restarts.after_failure() {
                        log::info!("{}: connected again", S::KIND.writer().name());
                    } else {
                        log::info!("{}: connected", S::KIND.writer().name());
                    }
                    act.shared
                        .metrics
                        .sink_connected
                        .with_label_values(&[S::KIND.as_str()])
                        .set(1);
                    act.sink = Some(Rc::new(sink));
                    act.reconcile_then_flush(ctx);
                    // A connection can die while idle; notice it without waiting for the next
                    // write to fail, so readiness tells the truth and the reconnect starts early.
                    ctx.run_interval(CONNECTION_CHECK_INTERVAL, |act, ctx| {
                        act.shared
                            .liveness
                            .beat(crate::liveness::Loop::writer(S::KIND));
                        act.probe_fence(ctx);
                        if act.sink.as_ref().is_some_and(|s| !s.is_connected()) {
                            act.restarts.failed();
                            log::warn!("{}: connection lost, restarting", S::KIND.writer().name());
                            ctx.stop();
                        } else if act.pending.is_empty()
                            && act.in_flight.is_empty()
                            && act
                                .suspects
                                .front()
                                .is_some_and(|(_, until)| *until <= Instant::now())
                        {
                            act.release_suspects(ctx);
                        } else if act.fault.is_some() {
                            act.flush(ctx, false);
                        }
                        act.settle_refusals();
                    });
                }
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

impl<S: Sink> Writer<S> {
    fn queue(&mut self, item: Arc<S::Item>, done: oneshot::Sender<Result<S::Output, SinkError>>) {
        if let Some(error) = &self.unusable {
            let _ = done.send(Err(error.clone()));
            return;
        }
        if !self.has_work() {
            self.progress_at = Instant::now();
        }
        self.pending_rows += item.rows();
        self.pending.push_back(Job::new(item, done));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// What the in-memory sink does on its next connect or write.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// The connection fails before anything is written.
        Fail,
        /// The write lands, then the connection fails before the answer (a lost acknowledgement).
        LandThenFail,
    }

    /// The sink's state, shared with the test: what it holds and what it is told to do.
    #[derive(Debug, Default)]
    struct Script {
        stored: Vec<u32>,
        connect_faults: VecDeque<Fault>,
        write_faults: VecDeque<Fault>,
        /// Ids the sink refuses for good, whatever group they are in.
        refused: HashSet<u32>,
        /// Every write is refused for good (a setup fault, not the data's).
        refuse_all: bool,
        /// Ids whose writes fail with a retriable error, every time (a poison the sink misreports).
        failing: HashSet<u32>,
        /// Ids whose next writes lose their connection, this many times each (a server whose
        /// sessions are cut from outside while this job happens to be written).
        cut: std::collections::HashMap<u32, u32>,
        /// A refusal lands the rest of the group (as a broker acknowledges the other records of
        /// a produce request it refuses one record of).
        refusal_lands_the_rest: bool,
        connects: u32,
        reconciled: Vec<Vec<u32>>,
        groups: Vec<Vec<u32>>,
        write_delay: Duration,
        /// Asked before every write, as the real sinks ask theirs.
        lease: Option<crate::lease::Lease>,
    }

    #[derive(Clone, Default)]
    struct Handle(Arc<Mutex<Script>>);

    impl Handle {
        fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
            f(&mut self.0.lock().unwrap())
        }
    }

    /// One job: ids, as a notification batch carries clients.
    #[derive(Debug)]
    struct Ids(Vec<u32>);

    impl Rows for Ids {
        fn rows(&self) -> usize {
            self.0.len()
        }
    }

    struct MemorySink(Handle);

    impl Sink for MemorySink {
        const KIND: SinkKind = SinkKind::Postgres;
        const MAX_CONCURRENT_WRITES: usize = 1;
        type Config = Handle;
        type Item = Ids;
        type Output = usize;

        fn connect(shared: Handle) -> LocalFuture<Result<Self, SinkError>> {
            Box::pin(async move {
                let fault = shared.with(|s| {
                    s.connects += 1;
                    s.connect_faults.pop_front()
                });
                match fault {
                    Some(_) => Err(SinkError::Retriable("connection refused".into())),
                    None => Ok(MemorySink(shared)),
                }
            })
        }

        fn write(&self, items: Vec<Arc<Ids>>) -> LocalFuture<Result<Vec<usize>, SinkError>> {
            let shared = self.0.clone();
            Box::pin(async move {
                let delay = shared.with(|s| s.write_delay);
                actix_rt::time::sleep(delay).await;
                shared.with(|s| {
                    if let Some(Err(lapsed)) = s.lease.as_ref().map(|l| l.check()) {
                        return Err(SinkError::Lapsed(lapsed.to_string()));
                    }
                    let ids: Vec<u32> = items.iter().flat_map(|i| i.0.iter().copied()).collect();
                    s.groups.push(ids.clone());
                    if s.refuse_all {
                        return Err(SinkError::Permanent("column overflows".into()));
                    }
                    if ids.iter().any(|id| s.refused.contains(id)) {
                        if s.refusal_lands_the_rest {
                            let landed = ids.iter().filter(|id| !s.refused.contains(id));
                            s.stored.extend(landed);
                        }
                        return Err(SinkError::Permanent("value refused".into()));
                    }
                    if ids.iter().any(|id| s.failing.contains(id)) {
                        return Err(SinkError::Retriable("statement failed".into()));
                    }
                    let cut = ids.iter().find(|id| s.cut.get(id).is_some_and(|n| *n > 0));
                    if let Some(id) = cut.copied() {
                        *s.cut.get_mut(&id).expect("found") -= 1;
                        return Err(SinkError::Disconnected(
                            "terminating connection due to administrator command".into(),
                        ));
                    }
                    match s.write_faults.pop_front() {
                        Some(Fault::Fail) => Err(SinkError::Retriable("connection reset".into())),
                        Some(Fault::LandThenFail) => {
                            s.stored.extend(ids);
                            Err(SinkError::Retriable("connection reset".into()))
                        }
                        None => {
                            s.stored.extend(ids);
                            Ok(items.iter().map(|i| i.0.len()).collect())
                        }
                    }
                })
            })
        }

        fn reconcile(&self, items: Vec<Arc<Ids>>) -> LocalFuture<Result<Vec<Arc<Ids>>, SinkError>> {
            let shared = self.0.clone();
            Box::pin(async move {
                shared.with(|s| {
                    s.reconciled
                        .push(items.iter().flat_map(|i| i.0.iter().copied()).collect());
                    Ok(items
                        .iter()
                        .map(|i| {
                            Arc::new(Ids(i
                                .0
                                .iter()
                                .copied()
                                .filter(|id| !s.stored.contains(id))
                                .collect()))
                        })
                        .collect())
                })
            })
        }

        fn close(&self) -> LocalFuture<()> {
            Box::pin(async {})
        }

        fn is_connected(&self) -> bool {
            true
        }
    }

    fn settings() -> WriterSettings {
        WriterSettings {
            batch_max_rows: 1_000,
            linger: Duration::from_secs(1),
            stall_after: Duration::from_secs(30),
            restart: RestartPolicy {
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                limit: Some(20),
                window: Duration::from_secs(2),
            },
        }
    }

    type Fatal = tokio::sync::watch::Receiver<Option<crate::fatal::FatalReason>>;

    fn start(
        handle: &Handle,
        settings: WriterSettings,
    ) -> (Addr<Writer<MemorySink>>, Metrics, Fatal) {
        let (shared, fatal) = Shared::new(Metrics::new(), crate::clock::Clock::system());
        start_with(handle, settings, shared, fatal)
    }

    fn start_with(
        handle: &Handle,
        settings: WriterSettings,
        shared: Shared,
        fatal: Fatal,
    ) -> (Addr<Writer<MemorySink>>, Metrics, Fatal) {
        let metrics = shared.metrics.clone();
        let handle = handle.clone();
        let addr = Supervisor::start(move |_| Writer::<MemorySink>::new(handle, settings, shared));
        (addr, metrics, fatal)
    }

    /// Sends every job at once, as the enricher does, and waits for every answer.
    async fn write_all(
        addr: &Addr<Writer<MemorySink>>,
        jobs: &[&[u32]],
    ) -> Vec<Result<usize, SinkError>> {
        let sends = jobs
            .iter()
            .map(|ids| addr.send(Write::<MemorySink>(Arc::new(Ids(ids.to_vec())))));
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|answer| answer.expect("writer alive"))
            .collect()
    }

    fn restarts(metrics: &Metrics) -> u64 {
        metrics
            .actor_restarts
            .with_label_values(&["postgres_writer"])
            .get()
    }

    fn sorted(mut ids: Vec<u32>) -> Vec<u32> {
        ids.sort_unstable();
        ids
    }

    #[actix_rt::test]
    async fn a_retriable_error_restarts_the_writer_and_writes_the_same_jobs_again() {
        let shared = Handle::default();
        shared.with(|s| s.write_faults.push_back(Fault::Fail));
        let (addr, metrics, fatal) = start(&shared, settings());
        let answers = write_all(&addr, &[&[1, 2], &[3], &[4, 5, 6]]).await;
        assert_eq!(answers, vec![Ok(2), Ok(1), Ok(3)]);
        assert_eq!(
            shared.with(|s| sorted(s.stored.clone())),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(shared.with(|s| s.connects), 2, "one reconnect");
        assert_eq!(restarts(&metrics), 1);
        assert!(fatal.borrow().is_none());
    }

    #[actix_rt::test]
    async fn a_job_refused_for_good_is_isolated_and_the_rest_of_its_group_is_written() {
        let shared = Handle::default();
        shared.with(|s| {
            s.refused.insert(40);
            // The first write is still out while the others arrive, so they form one group.
            s.write_delay = Duration::from_millis(50);
        });
        let (addr, metrics, _fatal) = start(&shared, settings());
        let answers = write_all(&addr, &[&[1], &[2], &[30, 40], &[5]]).await;
        assert_eq!(answers[0], Ok(1));
        assert_eq!(answers[1], Ok(1));
        assert!(
            matches!(answers[2], Err(SinkError::Permanent(_))),
            "{answers:?}"
        );
        assert_eq!(answers[3], Ok(1));
        let groups = shared.with(|s| s.groups.clone());
        assert!(
            groups.contains(&vec![2, 30, 40, 5]),
            "the three later jobs were first written as one group: {groups:?}"
        );
        assert_eq!(shared.with(|s| sorted(s.stored.clone())), vec![1, 2, 5]);
        assert_eq!(
            restarts(&metrics),
            0,
            "a refusal is not a connection failure"
        );
        assert_eq!(
            metrics
                .sink_write_errors
                .with_label_values(&["postgres", "permanent"])
                .get(),
            2,
            "the group, then the job alone"
        );
    }

    #[actix_rt::test]
    async fn a_group_refused_in_part_is_reconciled_before_its_jobs_are_written_again() {
        let handle = Handle::default();
        handle.with(|s| {
            s.refused.insert(40);
            s.refusal_lands_the_rest = true;
            s.write_delay = Duration::from_millis(50);
        });
        let (addr, _metrics, _fatal) = start(&handle, settings());
        let answers = write_all(&addr, &[&[1], &[2], &[30, 40], &[5]]).await;
        assert!(
            matches!(answers[2], Err(SinkError::Permanent(_))),
            "{answers:?}"
        );
        assert_eq!(answers[1], Ok(0), "job 2 had landed with the refused group");
        assert_eq!(answers[3], Ok(0), "so had job 5");
        assert_eq!(
            handle.with(|s| sorted(s.stored.clone())),
            vec![1, 2, 5, 30],
            "each landed id once"
        );
    }

    /// Sends every job at once and waits at most `secs` for every answer.
    async fn write_all_within(
        addr: &Addr<Writer<MemorySink>>,
        jobs: &[&[u32]],
        secs: u64,
    ) -> Vec<Result<usize, SinkError>> {
        tokio::time::timeout(Duration::from_secs(secs), write_all(addr, jobs))
            .await
            .expect("every job answered in time")
    }

    #[actix_rt::test]
    async fn a_job_that_keeps_failing_while_others_go_through_is_isolated_and_refused() {
        let handle = Handle::default();
        handle.with(|s| {
            s.failing.insert(40);
            s.write_delay = Duration::from_millis(50);
        });
        let (addr, metrics, fatal) = start(&handle, settings());
        let answers = write_all_within(&addr, &[&[1], &[2], &[30, 40], &[5]], 10).await;
        assert_eq!(answers[0], Ok(1));
        assert_eq!(answers[1], Ok(1));
        match &answers[2] {
            Err(SinkError::Permanent(reason)) => {
                assert!(reason.contains("statement failed"), "{reason}")
            }
            other => panic!("the poison job: {other:?}"),
        }
        assert_eq!(answers[3], Ok(1));
        assert_eq!(handle.with(|s| sorted(s.stored.clone())), vec![1, 2, 5]);
        assert!(
            fatal.borrow().is_none(),
            "isolated before the restart limit"
        );
        assert!(restarts(&metrics) <= 4, "{} restarts", restarts(&metrics));
    }

    #[actix_rt::test]
    async fn a_job_whose_connection_is_cut_again_and_again_while_others_go_through_is_written() {
        let handle = Handle::default();
        handle.with(|s| {
            s.cut.insert(40, 5);
            s.write_delay = Duration::from_millis(50);
        });
        let (addr, _metrics, fatal) = start(&handle, settings());
        let answers = write_all_within(&addr, &[&[1], &[2], &[30, 40], &[5], &[6]], 20).await;
        assert_eq!(
            answers[2],
            Ok(2),
            "a lost connection says nothing about the job"
        );
        assert_eq!(
            handle.with(|s| sorted(s.stored.clone())),
            vec![1, 2, 5, 6, 30, 40]
        );
        assert!(fatal.borrow().is_none());
    }

    #[actix_rt::test]
    async fn a_sink_refusing_every_write_holds_the_jobs_and_takes_them_once_mended() {
        let handle = Handle::default();
        handle.with(|s| s.refuse_all = true);
        let (addr, metrics, _fatal) = start(&handle, settings());
        let jobs: [&[u32]; 4] = [&[1], &[2], &[3], &[4]];
        let sends = futures::future::join_all(
            jobs.iter()
                .map(|ids| addr.send(Write::<MemorySink>(Arc::new(Ids(ids.to_vec()))))),
        );
        let mut sends = Box::pin(sends);
        let early = tokio::time::timeout(Duration::from_secs(2), &mut sends).await;
        assert!(early.is_err(), "no job was answered as refused: {early:?}");
        let health = addr.send(Health).await.unwrap();
        assert!(health.fault.is_some_and(|f| f.contains("column overflows")));
        let fault = || metrics.sink_fault.with_label_values(&["postgres"]).get();
        assert_eq!(fault(), 1);
        // Mended: a probe goes through, and everything held is written.
        handle.with(|s| s.refuse_all = false);
        let answers = tokio::time::timeout(Duration::from_secs(15), sends)
            .await
            .expect("answered once mended");
        let answers: Vec<_> = answers.into_iter().map(|a| a.unwrap()).collect();
        assert_eq!(answers, vec![Ok(1), Ok(1), Ok(1), Ok(1)]);
        assert_eq!(handle.with(|s| sorted(s.stored.clone())), vec![1, 2, 3, 4]);
        assert_eq!(fault(), 0);
        assert!(addr.send(Health).await.unwrap().fault.is_none());
    }

    #[actix_rt::test]
    async fn a_poison_job_last_of_its_burst_is_refused_without_more_traffic() {
        let handle = Handle::default();
        handle.with(|s| {
            s.failing.insert(40);
            s.write_delay = Duration::from_millis(50);
        });
        let (addr, _metrics, _fatal) = start(&handle, settings());
        // The poison is grouped with the burst's other job and nothing follows them.
        let answers = write_all_within(&addr, &[&[1], &[40], &[2]], 10).await;
        assert_eq!(answers[0], Ok(1));
        assert!(
            matches!(answers[1], Err(SinkError::Permanent(_))),
            "{answers:?}"
        );
        assert_eq!(answers[2], Ok(1));
    }

    #[actix_rt::test]
    async fn a_job_that_fails_alone_with_no_other_write_going_through_is_not_refused() {
        let handle = Handle::default();
        handle.with(|s| s.failing.insert(7));
        let mut settings = settings();
        settings.restart.limit = Some(100);
        let (addr, _metrics, _fatal) = start(&handle, settings);
        let poison = addr.send(Write::<MemorySink>(Arc::new(Ids(vec![7]))));
        let mut poison = Box::pin(poison);
        // Alone, nothing says the sink is healthy: the job is held, tried again later, and kept.
        let early = tokio::time::timeout(Duration::from_millis(2500), &mut poison).await;
        assert!(early.is_err(), "answered without evidence: {early:?}");
        assert!(handle.with(|s| s.groups.len()) >= 2, "it was tried again");
        // Other writes going through are that evidence.
        for id in [8, 9] {
            let answers = write_all_within(&addr, &[&[id]], 10).await;
            assert_eq!(answers, vec![Ok(1)]);
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), poison)
            .await
            .expect("answered")
            .expect("writer alive");
        assert!(matches!(answer, Err(SinkError::Permanent(_))), "{answer:?}");
    }

    #[actix_rt::test]
    async fn a_sink_failing_every_write_for_a_while_refuses_nothing() {
        let handle = Handle::default();
        handle.with(|s| s.write_faults.extend([Fault::Fail; 8]));
        let mut settings = settings();
        settings.restart.limit = Some(100);
        let (addr, _metrics, _fatal) = start(&handle, settings);
        let answers = write_all_within(&addr, &[&[1], &[2, 3], &[4]], 20).await;
        assert_eq!(answers, vec![Ok(1), Ok(2), Ok(1)]);
        assert_eq!(handle.with(|s| sorted(s.stored.clone())), vec![1, 2, 3, 4]);
    }

    #[actix_rt::test]
    async fn after_a_reconnect_what_already_landed_is_not_written_again() {
        let shared = Handle::default();
        shared.with(|s| s.write_faults.push_back(Fault::LandThenFail));
        let (addr, _metrics, _fatal) = start(&shared, settings());
        let answers = write_all(&addr, &[&[1, 2, 3]]).await;
        assert_eq!(
            answers,
            vec![Ok(0)],
            "the retry found every row already there"
        );
        assert_eq!(
            shared.with(|s| s.stored.clone()),
            vec![1, 2, 3],
            "each id once"
        );
        assert_eq!(shared.with(|s| s.reconciled.clone()), vec![vec![1, 2, 3]]);
    }

    #[actix_rt::test]
    async fn jobs_sent_while_the_sink_is_unreachable_are_kept_until_it_is_back() {
        let shared = Handle::default();
        shared.with(|s| {
            s.connect_faults
                .extend([Fault::Fail, Fault::Fail, Fault::Fail]);
        });
        let (addr, metrics, fatal) = start(&shared, settings());
        let answers = write_all(&addr, &[&[1], &[2]]).await;
        assert_eq!(answers, vec![Ok(1), Ok(1)]);
        assert_eq!(shared.with(|s| sorted(s.stored.clone())), vec![1, 2]);
        assert_eq!(shared.with(|s| s.connects), 4);
        assert_eq!(restarts(&metrics), 3);
        assert!(fatal.borrow().is_none());
    }

    #[actix_rt::test]
    async fn restarting_beyond_the_limit_raises_the_fatal_reason() {
        let shared = Handle::default();
        shared.with(|s| s.connect_faults.extend([Fault::Fail; 10]));
        let mut settings = settings();
        settings.restart.limit = Some(2);
        settings.restart.window = Duration::from_secs(60);
        let (_addr, _metrics, mut fatal) = start(&shared, settings);
        let reason = tokio::time::timeout(Duration::from_secs(5), fatal.wait_for(Option::is_some))
            .await
            .expect("fatal within 5s")
            .expect("sender alive")
            .clone()
            .map(|r| r.to_string())
            .unwrap_or_default();
        assert!(reason.contains("restarted more than 2 times"), "{reason}");
    }

    #[actix_rt::test]
    async fn a_writer_whose_lease_lapses_holds_its_jobs_and_writes_them_once_it_is_renewed() {
        let handle = Handle::default();
        let (shared, fatal) = Shared::with_lease(Metrics::new(), crate::clock::Clock::system());
        let lease = shared.lease.clone();
        lease.acquired(1);
        // Valid for half a second (the renewal's end less the margin).
        let ttl = crate::lease::MARGIN + Duration::from_millis(500);
        lease.renewed(Instant::now(), ttl);
        handle.with(|s| s.lease = Some(lease.clone()));
        let (addr, metrics, _fatal) = start_with(&handle, settings(), shared, fatal);
        assert_eq!(write_all(&addr, &[&[1]]).await, vec![Ok(1)]);

        actix_rt::time::sleep(Duration::from_millis(600)).await;
        assert!(!lease.is_valid());
        let held = addr.send(Write::<MemorySink>(Arc::new(Ids(vec![2]))));
        let held = actix_rt::spawn(held);
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !held.is_finished(),
            "a job is held, not refused, while the lease is lapsed"
        );
        assert_eq!(handle.with(|s| s.stored.clone()), vec![1]);

        lease.renewed(Instant::now(), Duration::from_secs(10));
        let answer = held.await.expect("joined").expect("writer alive");
        assert_eq!(answer, Ok(1));
        assert_eq!(handle.with(|s| s.stored.clone()), vec![1, 2]);
        assert_eq!(restarts(&metrics), 0, "a lapse restarts nothing");
    }
}
