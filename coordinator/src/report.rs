//! The job report: what a data scientist reads after a job, and what the simulator extends.

use std::collections::BTreeMap;

use fedmark_core::metrics::Metrics;
use serde::{Deserialize, Serialize};

use crate::round::RoundOutput;

/// One completed training round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number (1-based).
    pub round: u64,
    /// Attempts the round took (1 = no retry).
    pub attempts: u32,
    /// Partners whose update is in the round's sum.
    pub participants: u32,
    /// Partners of the final attempt's cohort that dropped out.
    pub dropped: u32,
    /// Federated AUC of the model the round started from.
    pub auc: f64,
    /// Federated log-loss of that model.
    pub log_loss: f64,
    /// Federated accuracy of that model.
    pub accuracy: f64,
    /// Federated lift at the top decile of that model.
    pub lift_top_decile: f64,
    /// Wall-clock seconds of the round, retries included.
    pub seconds: f64,
    /// Cumulative ε after this round (differentially private jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
}

impl RoundRecord {
    /// A record from a round's output and its evaluation.
    pub fn new(
        round: u64,
        attempts: u32,
        output: &RoundOutput,
        eval: &Metrics,
        seconds: f64,
    ) -> Self {
        Self {
            round,
            attempts,
            participants: output.survivors.len() as u32,
            dropped: output.dropped.len() as u32,
            auc: eval.auc,
            log_loss: eval.log_loss,
            accuracy: eval.accuracy,
            lift_top_decile: eval.lift_top_decile,
            seconds,
            epsilon: None,
        }
    }
}

/// Federated evaluation of the final model on every partner's holdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    /// ROC AUC.
    pub auc: f64,
    /// Mean log-loss.
    pub log_loss: f64,
    /// Accuracy at 0.5.
    pub accuracy: f64,
    /// Lift at the top decile.
    pub lift_top_decile: f64,
    /// Holdout rows evaluated.
    pub rows: u64,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// Job id.
    pub job_id: String,
    /// Job name from the spec.
    pub name: String,
    /// Processing purpose.
    pub purpose: String,
    /// `logistic` or `mlp`.
    pub model_kind: String,
    /// Number of model parameters.
    pub model_params: usize,
    /// Number of model inputs.
    pub input_dim: usize,
    /// Whether inputs were masked.
    pub secure_aggregation: bool,
    /// Partners that accepted.
    pub partners_accepted: Vec<String>,
    /// Partners that refused, with reasons.
    pub partners_refused: BTreeMap<String, String>,
    /// Training rows over all partners (from the statistics round).
    pub training_rows: f64,
    /// Partners in the final evaluation.
    pub evaluated_by: u32,
    /// Training rounds.
    pub rounds: Vec<RoundRecord>,
    /// Final federated metrics.
    #[serde(rename = "final")]
    pub final_metrics: FinalMetrics,
    /// Wall-clock seconds of the whole job.
    pub seconds: f64,
    /// Why the job ended (its round count, or an exhausted privacy budget).
    pub stop_reason: String,
    /// The privacy guarantee (differentially private jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyReport>,
    /// Peak resident memory of the coordinator process (Linux; set by the binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// The (ε, δ) guarantee a job gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// `Record` or `PartnerCentral`.
    pub mode: String,
    /// Noise multiplier σ used.
    pub noise_multiplier: f64,
    /// Clipping norm C.
    pub clip: f64,
    /// The job's ε budget.
    pub epsilon_budget: f64,
    /// ε spent by the released rounds.
    pub epsilon_spent: f64,
    /// δ.
    pub delta: f64,
}

/// Peak resident set size of this process (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
