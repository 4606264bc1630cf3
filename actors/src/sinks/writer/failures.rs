//! What a failed write says, and what becomes of its jobs: a job that fails alone is held as a
//! suspect while the others go first; one the sink keeps failing on while others go through, or
//! refuses for good, is refused; a sink that refuses every write is faulted and probed; a lapsed
//! lease holds everything; a sink that can take no write at all stops the service.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{Job, Rows, Sink, SinkError, Writer};
use crate::fatal::FatalReason;

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

/// What a job's retriable failures say about it. A sink that is down fails every write; a job
/// the sink can never take (a value the database refuses with an error it reports as transient,
/// say) fails while other writes go through. Only the second kind is refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Suspicion {
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

impl<S: Sink> Writer<S> {
    /// The sink can store nothing until an operator acts: the service is told to stop with the
    /// reason, and every job is answered unconfirmed (so that no campaign is refused for it).
    pub(super) fn unusable_for_good(
        &mut self,
        ctx: &mut Context<Self>,
        jobs: Vec<Job<S>>,
        reason: String,
    ) {
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
    pub(super) fn pause(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn probe_fence(&mut self, ctx: &mut Context<Self>) {
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
    pub(super) fn refused_alone(&mut self, job: Job<S>, error: SinkError) {
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
    pub(super) fn went_through(&mut self) {
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
    pub(super) fn settle_refusals(&mut self) {
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
    pub(super) fn probe(&mut self, ctx: &mut Context<Self>, sink: &Rc<S>) {
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
    pub(super) fn retry_later(&mut self, jobs: Vec<Job<S>>, error: &SinkError) {
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
}
