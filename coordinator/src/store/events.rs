//! Every record the coordinator adds to its audit chain, one variant per kind. Serialised,
//! each is the `kind` and `data` the coordinator has always written (chains written before
//! these types existed verify and read the same); the store writes them as [`AuditEvent`]s.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::AuditEvent;

/// The figures a training round's commit records (absent from the statistics round's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingFigures {
    /// ε after the round (DP jobs; null otherwise).
    pub epsilon: Option<f64>,
    /// Federated AUC of the model the round started from (null when not evaluated).
    pub auc: f64,
    /// Its log-loss (null when not evaluated).
    pub log_loss: f64,
}

/// A record of the coordinator's audit chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CoordinatorEvent {
    /// The store was created.
    StoreCreated {
        /// The store format.
        format: String,
    },
    /// A job was submitted.
    JobSubmitted {
        /// Job id.
        job: String,
        /// Who submitted it.
        by: String,
        /// Its name.
        name: String,
        /// Its purpose.
        purpose: String,
        /// Training rounds it plans.
        rounds: u32,
        /// SHA-256 of its spec text.
        spec_sha256: String,
        /// Its privacy mode.
        privacy_mode: String,
    },
    /// A queued job started.
    JobStarted {
        /// Job id.
        job: String,
    },
    /// A job resumed after a restart.
    JobResumed {
        /// Job id.
        job: String,
        /// The first round it runs.
        from_round: u64,
        /// SHA-256 of the model it resumes from (absent when it starts over).
        #[serde(skip_serializing_if = "Option::is_none")]
        model_sha256: Option<String>,
    },
    /// A failed or cancelled job was submitted again.
    JobResubmitted {
        /// Job id.
        job: String,
        /// Who.
        by: String,
        /// Its status before.
        was: String,
    },
    /// A partner accepted the job.
    OfferAccepted {
        /// Job id.
        job: String,
        /// The partner.
        partner: String,
    },
    /// A partner refused the job.
    OfferRefused {
        /// Job id.
        job: String,
        /// The partner.
        partner: String,
        /// Its reason (bounded, printable).
        reason: String,
    },
    /// A round attempt started.
    RoundStarted {
        /// Job id.
        job: String,
        /// Round number.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// `statistics`, `training` or `evaluation`.
        kind: String,
        /// The canonical cohort.
        cohort: Vec<String>,
        /// Survivors it needs.
        threshold: usize,
        /// Whether it is securely aggregated.
        secure: bool,
        /// Words of each member's vector.
        vector_len: usize,
    },
    /// A round attempt was aborted.
    RoundAborted {
        /// Job id.
        job: String,
        /// Round number.
        round: u64,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// A round's result was committed.
    RoundCommitted {
        /// Job id.
        job: String,
        /// Round number.
        round: u64,
        /// SHA-256 of the model after the round.
        model_sha256: String,
        /// `statistics` or `training`.
        kind: String,
        /// The attempt that succeeded.
        attempt: u32,
        /// Members in its sum.
        participants: Vec<String>,
        /// Members that dropped.
        dropped: Vec<String>,
        /// Each member's consent commitment.
        consent_snapshots: BTreeMap<String, String>,
        /// A training round's figures.
        #[serde(flatten)]
        training: Option<TrainingFigures>,
    },
    /// A round was lost: its unmask failed after shares were revealed.
    RoundLost {
        /// Job id.
        job: String,
        /// Round number.
        round: u64,
        /// Partners sitting its retries out.
        sat_out: usize,
    },
    /// A job finished.
    JobFinished {
        /// Job id.
        job: String,
        /// Why it stopped.
        reason: String,
        /// Rounds committed.
        rounds: usize,
        /// Final federated AUC (null when not evaluated).
        auc: f64,
        /// SHA-256 of the final model.
        model_sha256: String,
        /// ε spent (DP jobs; null otherwise).
        epsilon: Option<f64>,
        /// Partners that evaluated the final model.
        evaluated_by: Vec<String>,
    },
    /// A job failed.
    JobFailed {
        /// Job id.
        job: String,
        /// Why.
        reason: String,
        /// Starts without a committed round (when that is why).
        #[serde(skip_serializing_if = "Option::is_none")]
        starts: Option<u32>,
    },
    /// A job was cancelled.
    JobCancelled {
        /// Job id.
        job: String,
        /// Who cancelled it (a queued job, from the admin API).
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// Why (a running job).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// `queued` or `running`.
        was: String,
        /// Its last committed round (a running job; null before any).
        #[serde(skip_serializing_if = "Option::is_none")]
        last_committed_round: Option<Option<u64>>,
    },
}

impl CoordinatorEvent {
    /// The record's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            CoordinatorEvent::StoreCreated { .. } => "store_created",
            CoordinatorEvent::JobSubmitted { .. } => "job_submitted",
            CoordinatorEvent::JobStarted { .. } => "job_started",
            CoordinatorEvent::JobResumed { .. } => "job_resumed",
            CoordinatorEvent::JobResubmitted { .. } => "job_resubmitted",
            CoordinatorEvent::OfferAccepted { .. } => "offer_accepted",
            CoordinatorEvent::OfferRefused { .. } => "offer_refused",
            CoordinatorEvent::RoundStarted { .. } => "round_started",
            CoordinatorEvent::RoundAborted { .. } => "round_aborted",
            CoordinatorEvent::RoundCommitted { .. } => "round_committed",
            CoordinatorEvent::RoundLost { .. } => "round_lost",
            CoordinatorEvent::JobFinished { .. } => "job_finished",
            CoordinatorEvent::JobFailed { .. } => "job_failed",
            CoordinatorEvent::JobCancelled { .. } => "job_cancelled",
        }
    }

    /// The record's `data` (strings, integers, booleans, floats and lists of them, so
    /// serialising cannot fail; a NaN is written as null, as `serde_json` writes every
    /// non-finite float).
    pub fn data(&self) -> Value {
        fedmark_core::audit::event_data(self)
    }
}

impl From<CoordinatorEvent> for AuditEvent {
    fn from(e: CoordinatorEvent) -> Self {
        (e.kind(), e.data())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each typed event is the record the coordinator wrote before the types existed (the
    /// literals are the old call sites' `json!` payloads).
    #[test]
    fn typed_events_are_the_old_records() {
        let s = |x: &str| x.to_owned();
        let consent: BTreeMap<String, String> = [(s("a"), s("c1"))].into_iter().collect();
        let commit = |training: Option<TrainingFigures>| CoordinatorEvent::RoundCommitted {
            job: s("j"),
            round: 2,
            model_sha256: s("m"),
            kind: s(if training.is_some() {
                "training"
            } else {
                "statistics"
            }),
            attempt: 1,
            participants: vec![s("a")],
            dropped: vec![s("b")],
            consent_snapshots: consent.clone(),
            training,
        };
        let cases = [
            (
                CoordinatorEvent::StoreCreated { format: s("f") },
                json!({"format": "f"}),
            ),
            (
                CoordinatorEvent::JobSubmitted {
                    job: s("j"),
                    by: s("u"),
                    name: s("n"),
                    purpose: s("p"),
                    rounds: 20,
                    spec_sha256: s("h"),
                    privacy_mode: s("Record"),
                },
                json!({"job": "j", "by": "u", "name": "n", "purpose": "p", "rounds": 20,
                       "spec_sha256": "h", "privacy_mode": "Record"}),
            ),
            (
                CoordinatorEvent::JobStarted { job: s("j") },
                json!({"job": "j"}),
            ),
            (
                CoordinatorEvent::JobResumed {
                    job: s("j"),
                    from_round: 0,
                    model_sha256: None,
                },
                json!({"job": "j", "from_round": 0}),
            ),
            (
                CoordinatorEvent::JobResumed {
                    job: s("j"),
                    from_round: 4,
                    model_sha256: Some(s("m")),
                },
                json!({"job": "j", "from_round": 4, "model_sha256": "m"}),
            ),
            (
                CoordinatorEvent::JobResubmitted {
                    job: s("j"),
                    by: s("u"),
                    was: s("failed"),
                },
                json!({"job": "j", "by": "u", "was": "failed"}),
            ),
            (
                CoordinatorEvent::OfferAccepted {
                    job: s("j"),
                    partner: s("a"),
                },
                json!({"job": "j", "partner": "a"}),
            ),
            (
                CoordinatorEvent::OfferRefused {
                    job: s("j"),
                    partner: s("a"),
                    reason: s("r"),
                },
                json!({"job": "j", "partner": "a", "reason": "r"}),
            ),
            (
                CoordinatorEvent::RoundStarted {
                    job: s("j"),
                    round: 2,
                    attempt: 1,
                    kind: s("training"),
                    cohort: vec![s("a"), s("b")],
                    threshold: 2,
                    secure: true,
                    vector_len: 63,
                },
                json!({"job": "j", "round": 2, "attempt": 1, "kind": "training",
                       "cohort": ["a", "b"], "threshold": 2, "secure": true, "vector_len": 63}),
            ),
            (
                CoordinatorEvent::RoundAborted {
                    job: s("j"),
                    round: 2,
                    attempt: 1,
                    reason: s("r"),
                },
                json!({"job": "j", "round": 2, "attempt": 1, "reason": "r"}),
            ),
            (
                commit(None),
                json!({"job": "j", "round": 2, "model_sha256": "m", "kind": "statistics",
                       "attempt": 1, "participants": ["a"], "dropped": ["b"],
                       "consent_snapshots": {"a": "c1"}}),
            ),
            (
                commit(Some(TrainingFigures {
                    epsilon: None,
                    auc: f64::NAN,
                    log_loss: 0.5,
                })),
                json!({"job": "j", "round": 2, "model_sha256": "m", "kind": "training",
                       "attempt": 1, "participants": ["a"], "dropped": ["b"],
                       "consent_snapshots": {"a": "c1"}, "epsilon": null, "auc": null,
                       "log_loss": 0.5}),
            ),
            (
                CoordinatorEvent::RoundLost {
                    job: s("j"),
                    round: 2,
                    sat_out: 3,
                },
                json!({"job": "j", "round": 2, "sat_out": 3}),
            ),
            (
                CoordinatorEvent::JobFinished {
                    job: s("j"),
                    reason: s("r"),
                    rounds: 20,
                    auc: 0.75,
                    model_sha256: s("m"),
                    epsilon: Some(1.0),
                    evaluated_by: vec![s("a")],
                },
                json!({"job": "j", "reason": "r", "rounds": 20, "auc": 0.75,
                       "model_sha256": "m", "epsilon": 1.0, "evaluated_by": ["a"]}),
            ),
            (
                CoordinatorEvent::JobFailed {
                    job: s("j"),
                    reason: s("r"),
                    starts: Some(4),
                },
                json!({"job": "j", "reason": "r", "starts": 4}),
            ),
            (
                CoordinatorEvent::JobCancelled {
                    job: s("j"),
                    by: Some(s("u")),
                    reason: None,
                    was: s("queued"),
                    last_committed_round: None,
                },
                json!({"job": "j", "by": "u", "was": "queued"}),
            ),
            (
                CoordinatorEvent::JobCancelled {
                    job: s("j"),
                    by: None,
                    reason: Some(s("r")),
                    was: s("running"),
                    last_committed_round: Some(None),
                },
                json!({"job": "j", "reason": "r", "was": "running",
                       "last_committed_round": null}),
            ),
        ];
        for (event, data) in cases {
            let kind = event.kind();
            assert_eq!(serde_json::to_value(&event).unwrap()["kind"], kind);
            let (k, d) = AuditEvent::from(event);
            assert_eq!((k, d), (kind, data));
        }
    }
}
