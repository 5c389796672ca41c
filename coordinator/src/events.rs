//! What a running job tells the rest of the coordinator. The job task, its rounds and the hub
//! publish [`JobEvent`]s; the board (`job watch`, the dashboard), the metrics registry and a
//! caller's progress channel subscribe ([`JobListener`]). The job task therefore knows none of
//! them, and a new view of jobs is a new subscriber, not a change to the job.
//!
//! Publishing is synchronous and cheap (a listener records a figure or a view and returns),
//! so a subscriber sees the events of a job in the order they happened. Events carry
//! aggregate figures only — counts, durations, ε, the round records of the report — never a
//! partner's numbers.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::report::RoundRecord;

/// Something that happened in a job.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum JobEvent<'a> {
    /// The store's record of the job changed (registered, resumed or ended): read it again.
    Recorded {
        /// Job id.
        job: &'a str,
    },
    /// What the job is doing now ("waiting for partners", "round 3 of 20: training", …).
    Phase {
        /// Job id.
        job: &'a str,
        /// The phase, for people.
        phase: &'a str,
    },
    /// A training round was committed to the store.
    RoundCommitted {
        /// Job id.
        job: &'a str,
        /// Its record, as the report holds it.
        record: &'a RoundRecord,
    },
    /// A round attempt was aborted (it is retried with a fresh cohort).
    RoundAborted {
        /// Job id.
        job: &'a str,
    },
    /// A partner broke the protocol and its session was closed.
    ProtocolViolation {
        /// Job id.
        job: &'a str,
    },
    /// Bytes of a partner's vector were received and summed.
    InputBytes {
        /// Job id.
        job: &'a str,
        /// How many.
        bytes: u64,
    },
}

/// A subscriber of job events.
pub trait JobListener: Send + Sync + std::fmt::Debug {
    /// Takes one event; must return quickly and never block on I/O.
    fn on_event(&self, event: &JobEvent<'_>);
}

/// The publisher a job holds: every subscriber gets every event, in subscription order.
#[derive(Debug, Clone, Default)]
pub struct JobEvents {
    listeners: Vec<Arc<dyn JobListener>>,
}

impl JobEvents {
    /// These subscribers and `listener`.
    pub fn with(mut self, listener: impl JobListener + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Tells every subscriber.
    pub fn publish(&self, event: JobEvent<'_>) {
        for l in &self.listeners {
            l.on_event(&event);
        }
    }
}

/// A caller's progress channel: receives each committed round's record.
impl JobListener for mpsc::UnboundedSender<RoundRecord> {
    fn on_event(&self, event: &JobEvent<'_>) {
        if let JobEvent::RoundCommitted { record, .. } = event {
            // A caller that stopped listening does not stop the job.
            let _ = self.send((*record).clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Log(Mutex<Vec<String>>);

    impl JobListener for Arc<Log> {
        fn on_event(&self, event: &JobEvent<'_>) {
            if let Ok(mut log) = self.0.lock() {
                log.push(format!("{event:?}"));
            }
        }
    }

    #[test]
    fn every_subscriber_sees_every_event_in_order() {
        let (a, b) = (Arc::new(Log::default()), Arc::new(Log::default()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let events = JobEvents::default()
            .with(Arc::clone(&a))
            .with(tx)
            .with(Arc::clone(&b));
        let record = RoundRecord::new(
            1,
            1,
            (3, 0),
            &fedmark_core::metrics::Metrics::default(),
            0.5,
        );
        events.publish(JobEvent::Phase {
            job: "j",
            phase: "round 1",
        });
        events.publish(JobEvent::RoundCommitted {
            job: "j",
            record: &record,
        });
        events.publish(JobEvent::RoundAborted { job: "j" });
        for log in [&a, &b] {
            let seen = log.0.lock().map(|l| l.clone()).unwrap_or_default();
            assert_eq!(seen.len(), 3);
            assert!(seen[0].starts_with("Phase") && seen[1].starts_with("RoundCommitted"));
        }
        assert_eq!(rx.try_recv().ok(), Some(record));
        assert!(
            rx.try_recv().is_err(),
            "only committed rounds reach the progress channel"
        );
        // A progress receiver that went away does not stop the publisher.
        drop(rx);
        events.publish(JobEvent::RoundAborted { job: "j" });
    }
}
