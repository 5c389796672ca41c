//! The job queue of the long-running coordinator: jobs wait in submission order and run one
//! at a time; a cancel takes a waiting job off the queue or signals the running one. The admin
//! API pushes and cancels, the scheduler in [`crate::server`] takes the next job.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{Notify, oneshot};

/// What [`JobQueue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was waiting; it is off the queue.
    Dequeued,
    /// The job is running; the scheduler has been told to stop it.
    Signalled,
    /// The queue does not hold the job.
    NotHere,
}

#[derive(Debug, Default)]
struct QueueState {
    waiting: VecDeque<String>,
    running: Option<(String, Option<oneshot::Sender<String>>)>,
}

/// The jobs waiting to run, in submission order, and the one running.
#[derive(Debug, Default)]
pub struct JobQueue {
    state: Mutex<QueueState>,
    wake: Notify,
}

impl JobQueue {
    /// Appends a job unless it is already waiting or running.
    pub fn push(&self, id: &str) {
        if let Ok(mut s) = self.state.lock() {
            let running = s.running.as_ref().is_some_and(|(r, _)| r == id);
            if !running && !s.waiting.iter().any(|w| w == id) {
                s.waiting.push_back(id.to_owned());
            }
        }
        self.wake.notify_one();
    }

    /// The next job to run, once there is one, marked running in the same step (so a cancel
    /// never finds it in neither place); the receiver hears the reason if it is cancelled.
    pub async fn next(&self) -> (String, oneshot::Receiver<String>) {
        loop {
            if let Ok(mut s) = self.state.lock()
                && let Some(id) = s.waiting.pop_front()
            {
                let (tx, rx) = oneshot::channel();
                s.running = Some((id.clone(), Some(tx)));
                return (id, rx);
            }
            self.wake.notified().await;
        }
    }

    /// Marks the running job done.
    pub fn finish(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.running = None;
        }
    }

    /// Takes a waiting job off the queue, or tells the running one to stop.
    pub fn cancel(&self, id: &str, reason: &str) -> Cancelled {
        let Ok(mut s) = self.state.lock() else {
            return Cancelled::NotHere;
        };
        if let Some(i) = s.waiting.iter().position(|w| w == id) {
            s.waiting.remove(i);
            return Cancelled::Dequeued;
        }
        match &mut s.running {
            Some((running, signal)) if running == id => {
                if let Some(tx) = signal.take() {
                    let _ = tx.send(reason.to_owned());
                }
                Cancelled::Signalled
            }
            _ => Cancelled::NotHere,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_runs_in_order_and_cancels_waiting_and_running_jobs() {
        let q = JobQueue::default();
        q.push("a");
        q.push("b");
        q.push("a");
        q.push("c");
        let (first, mut signal) = q.next().await;
        assert_eq!(first, "a");
        q.push("a");
        assert_eq!(q.cancel("b", "x"), Cancelled::Dequeued);
        assert_eq!(q.cancel("a", "stop"), Cancelled::Signalled);
        assert_eq!(signal.try_recv().ok().as_deref(), Some("stop"));
        assert_eq!(q.cancel("zzz", "x"), Cancelled::NotHere);
        q.finish();
        let (third, _signal) = q.next().await;
        assert_eq!(third, "c");
        // Taken off the queue is running at once: a cancel reaches it.
        assert_eq!(q.cancel("c", "x"), Cancelled::Signalled);
        q.finish();
        assert_eq!(q.cancel("c", "x"), Cancelled::NotHere);
    }
}
