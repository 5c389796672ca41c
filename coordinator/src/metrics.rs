//! Prometheus metrics for operators: [`Metrics`] is a small registry the job task records
//! into (after each commit, each abort, each input chunk summed) and renders in the
//! Prometheus text format (version 0.0.4); [`crate::http`] serves it. Metrics carry counts,
//! durations and ε only — never a partner's numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use crate::events::{JobEvent, JobListener};

/// Upper bounds (seconds) of the round-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone, Default)]
struct JobMetrics {
    rounds_completed: u64,
    rounds_aborted: u64,
    protocol_violations: u64,
    dropouts: u64,
    input_bytes: u64,
    participants: f64,
    epsilon: Option<f64>,
    /// Cumulative counts per bucket of [`DURATION_BUCKETS`].
    buckets: [u64; DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
}

/// The coordinator's metrics, by job. Cheap to clone; every clone is the same registry.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    jobs: Arc<Mutex<BTreeMap<String, JobMetrics>>>,
}

impl Metrics {
    fn with<T>(&self, job: &str, f: impl FnOnce(&mut JobMetrics) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain counters behind: keep going.
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        f(jobs.entry(job.to_owned()).or_default())
    }

    /// A training round of `job` was committed.
    pub fn round_committed(
        &self,
        job: &str,
        seconds: f64,
        participants: usize,
        dropped: usize,
        epsilon: Option<f64>,
    ) {
        self.with(job, |m| {
            m.rounds_completed += 1;
            m.dropouts += dropped as u64;
            m.participants = participants as f64;
            if epsilon.is_some() {
                m.epsilon = epsilon;
            }
            for (count, &le) in m.buckets.iter_mut().zip(&DURATION_BUCKETS) {
                if seconds <= le {
                    *count += 1;
                }
            }
            m.duration_sum += seconds;
            m.duration_count += 1;
        });
    }

    /// An attempt of a round of `job` was aborted.
    pub fn round_aborted(&self, job: &str) {
        self.with(job, |m| m.rounds_aborted += 1);
    }

    /// A partner broke the protocol in `job` (e.g. answered one offer twice).
    pub fn protocol_violation(&self, job: &str) {
        self.with(job, |m| m.protocol_violations += 1);
    }

    /// `bytes` of input chunks were added into a round's sum.
    pub fn input_bytes(&self, job: &str, bytes: u64) {
        self.with(job, |m| m.input_bytes += bytes);
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        let mut family =
            |name: &str, kind: &str, help: &str, value: &dyn Fn(&JobMetrics) -> Option<f64>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (job, m) in &jobs {
                    if let Some(v) = value(m) {
                        let _ = writeln!(out, "{name}{{job=\"{}\"}} {v}", escape(job));
                    }
                }
            };
        family(
            "fedmark_rounds_completed_total",
            "counter",
            "Training rounds committed.",
            &|m| Some(m.rounds_completed as f64),
        );
        family(
            "fedmark_rounds_aborted_total",
            "counter",
            "Round attempts aborted (each is retried with a fresh cohort up to max_attempts).",
            &|m| Some(m.rounds_aborted as f64),
        );
        family(
            "fedmark_protocol_violations_total",
            "counter",
            "Partner messages refused as protocol violations (the session is closed).",
            &|m| Some(m.protocol_violations as f64),
        );
        family(
            "fedmark_dropouts_total",
            "counter",
            "Partners of a committed round's cohort that dropped out of it.",
            &|m| Some(m.dropouts as f64),
        );
        family(
            "fedmark_input_bytes_received_total",
            "counter",
            "Bytes of partner input chunks added into round sums.",
            &|m| Some(m.input_bytes as f64),
        );
        family(
            "fedmark_round_participants",
            "gauge",
            "Partners whose update is in the last committed round.",
            &|m| Some(m.participants),
        );
        family(
            "fedmark_epsilon_spent",
            "gauge",
            "Privacy spent so far (epsilon at the job's delta; differentially private jobs).",
            &|m| m.epsilon,
        );
        let name = "fedmark_round_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Wall-clock seconds of committed training rounds, retries included.\n# TYPE {name} histogram"
        );
        for (job, m) in &jobs {
            let job = escape(job);
            for (count, le) in m.buckets.iter().zip(DURATION_BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{job=\"{job}\",le=\"{le}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{job=\"{job}\",le=\"+Inf\"}} {c}\n{name}_sum{{job=\"{job}\"}} {s}\n{name}_count{{job=\"{job}\"}} {c}",
                c = m.duration_count,
                s = m.duration_sum,
            );
        }
        out
    }
}

impl JobListener for Metrics {
    fn on_event(&self, event: &JobEvent<'_>) {
        match *event {
            JobEvent::RoundCommitted { job, record } => self.round_committed(
                job,
                record.seconds,
                record.participants as usize,
                record.dropped as usize,
                record.epsilon,
            ),
            JobEvent::RoundAborted { job } => self.round_aborted(job),
            JobEvent::ProtocolViolation { job } => self.protocol_violation(job),
            JobEvent::InputBytes { job, bytes } => self.input_bytes(job, bytes),
            _ => {}
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_a_histogram() {
        let m = Metrics::default();
        m.round_committed("job-a", 0.3, 3, 1, Some(0.5));
        m.round_committed("job-a", 7.0, 2, 0, None);
        m.input_bytes("job-a", 4096);
        m.round_aborted("job-a");
        let text = m.render();
        for line in [
            "fedmark_rounds_completed_total{job=\"job-a\"} 2",
            "fedmark_rounds_aborted_total{job=\"job-a\"} 1",
            "fedmark_dropouts_total{job=\"job-a\"} 1",
            "fedmark_input_bytes_received_total{job=\"job-a\"} 4096",
            "fedmark_round_participants{job=\"job-a\"} 2",
            "fedmark_epsilon_spent{job=\"job-a\"} 0.5",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"0.25\"} 0",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"0.5\"} 1",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"10\"} 2",
            "fedmark_round_duration_seconds_bucket{job=\"job-a\",le=\"+Inf\"} 2",
            "fedmark_round_duration_seconds_sum{job=\"job-a\"} 7.3",
            "fedmark_round_duration_seconds_count{job=\"job-a\"} 2",
            "# TYPE fedmark_round_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
