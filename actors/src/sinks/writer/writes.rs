//! Grouping and writing: the queue becomes groups of jobs, each written by the sink, and the
//! answer of each write is given to its jobs ([`failures`](super::failures) says what a failure
//! means for them).

use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;

use super::{Job, Rows, Sink, SinkError, Writer};
use crate::events::{Event, SinkWriteFailed, SinkWritten};

impl<S: Sink> Writer<S> {
    /// Starts writes while there is room and something worth writing: anything when no write is
    /// in flight (an idle sink adds no delay), else a full batch, or anything once the linger time
    /// has passed. Under load the batches grow while earlier writes are out, as in a group commit.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>, linger_expired: bool) {
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
        while self.in_flight.len() < self.write_limit() && !self.pending.is_empty() {
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

    /// How many writes may be under way now: one more than the sink's limit while a small job
    /// is first in the queue, for a sink that allows it ([`Sink::EXPRESS_WRITE`]).
    fn write_limit(&self) -> usize {
        let small_first =
            (self.pending.front()).is_some_and(|j| j.item.rows() < self.settings.batch_max_rows);
        S::MAX_CONCURRENT_WRITES + usize::from(S::EXPRESS_WRITE && small_first)
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

    pub(super) fn start_write(&mut self, ctx: &mut Context<Self>, sink: &Rc<S>, jobs: Vec<Job<S>>) {
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
            Ok(outputs) => self.confirmed(ctx, jobs, outputs, rows, started),
            Err(e) => self.failed(ctx, jobs, rows, e),
        }
    }

    /// The sink took the write: each job is answered with its output, and what waited goes on.
    fn confirmed(
        &mut self,
        ctx: &mut Context<Self>,
        jobs: Vec<Job<S>>,
        outputs: Vec<S::Output>,
        rows: usize,
        started: Instant,
    ) {
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

    /// The write failed: its jobs are written again, split, held or refused, as the error says.
    fn failed(&mut self, ctx: &mut Context<Self>, jobs: Vec<Job<S>>, rows: usize, e: SinkError) {
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

    pub(super) fn finish_close_if_idle(&mut self, ctx: &mut Context<Self>) {
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
