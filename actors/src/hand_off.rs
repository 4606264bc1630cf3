//! Hand-off: what one turn of a thread sends to an actor on another thread goes as one message.
//!
//! With one subscriber a campaign, a campaign is a request to the lifecycle and one to each writer,
//! each on its own thread. Sent one message each, every request wakes the other thread on its own
//! and has actix spawn a task there to answer it. A [`HandOff`] queues what the thread's current
//! turn sends and sends it as one [`Batch`] once the turn's ready tasks have run; each request
//! still has its own answer, sent straight to the task waiting for it.
//!
//! Must not touch: what the requests are or in what order the receiver handles them (it gets them
//! in the order they were handed off).

use std::cell::RefCell;
use std::mem;
use std::rc::Rc;

use actix::prelude::*;
use futures::channel::oneshot;

/// Requests, each with the channel its answer goes back on. A request whose answer channel is
/// dropped unanswered (the receiver stopped) reads as canceled at the sender.
pub struct Batch<T: Send + 'static, R: Send + 'static>(pub Vec<Request<T, R>>);

/// A request and the channel its answer goes back on.
pub type Request<T, R> = (T, oneshot::Sender<R>);

impl<T: Send + 'static, R: Send + 'static> Message for Batch<T, R> {
    type Result = ();
}

/// The queue of one thread's requests to one actor. Cheap to clone: clones share the queue.
pub struct HandOff<T: Send + 'static, R: Send + 'static> {
    to: Recipient<Batch<T, R>>,
    queued: Rc<RefCell<Vec<Request<T, R>>>>,
}

impl<T: Send + 'static, R: Send + 'static> Clone for HandOff<T, R> {
    fn clone(&self) -> Self {
        HandOff {
            to: self.to.clone(),
            queued: self.queued.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> HandOff<T, R> {
    pub fn new(to: Recipient<Batch<T, R>>) -> HandOff<T, R> {
        HandOff {
            to,
            queued: Rc::default(),
        }
    }

    /// Queues `request`; it is sent with the rest of this turn's. Must be called on an actix
    /// arbiter (the queue is sent from a task spawned there).
    pub fn send(&self, request: T) -> oneshot::Receiver<R> {
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut queued = self.queued.borrow_mut();
            queued.push((request, answer));
            queued.len() == 1
        };
        if first {
            let this = self.clone();
            actix_rt::spawn(async move {
                // Behind every task that is ready now: what they send goes in the same batch.
                tokio::task::yield_now().await;
                this.flush();
            });
        }
        answered
    }

    fn flush(&self) {
        let requests = mem::take(&mut *self.queued.borrow_mut());
        if !requests.is_empty() {
            // A receiver that is gone drops the batch and with it every answer channel: each
            // request then reads as canceled.
            self.to.do_send(Batch(requests));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Answers each request with its double; records the size of each batch it got.
    struct Doubler(Arc<Mutex<Vec<usize>>>);

    impl Actor for Doubler {
        type Context = Context<Self>;
    }

    impl Handler<Batch<u32, u32>> for Doubler {
        type Result = ();
        fn handle(&mut self, msg: Batch<u32, u32>, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg.0.len());
            for (n, answer) in msg.0 {
                let _ = answer.send(n * 2);
            }
        }
    }

    #[actix_rt::test]
    async fn requests_of_one_turn_go_as_one_batch_and_each_gets_its_own_answer() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let arbiter = Arbiter::new();
        let doubler = Doubler::start_in_arbiter(&arbiter.handle(), {
            let batches = batches.clone();
            move |_| Doubler(batches)
        });
        let hand_off = HandOff::new(doubler.recipient());
        let answers: Vec<_> = (1..=5).map(|n| hand_off.send(n)).collect();
        let answers = futures::future::join_all(answers).await;
        assert_eq!(
            answers.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![2, 4, 6, 8, 10]
        );
        // A later turn is a batch of its own.
        assert_eq!(hand_off.send(21).await.unwrap(), 42);
        assert_eq!(*batches.lock().unwrap(), vec![5, 1]);
        arbiter.stop();
    }

    #[actix_rt::test]
    async fn a_request_to_a_receiver_that_is_gone_reads_as_canceled() {
        let arbiter = Arbiter::new();
        let doubler = Doubler::start_in_arbiter(&arbiter.handle(), |_| Doubler(Arc::default()));
        let hand_off = HandOff::new(doubler.recipient());
        arbiter.stop();
        arbiter.join().unwrap();
        assert!(hand_off.send(1).await.is_err());
    }
}
