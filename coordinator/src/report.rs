//! The job report: what a data scientist reads after a job, and what the simulator extends.

use std::collections::BTreeMap;

use fedmark_core::budget::{JobSpend, PrivacyPlan};
use fedmark_core::metrics::Metrics;
use fedmark_core::spec::PrivacyMode;
use serde::{Deserialize, Serialize};

/// One completed training round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number (1-based); in a gbdt job, the tree's number (a record per tree).
    pub round: u64,
    /// Attempts the round took (1 = no retry); for a tree, the attempts of all its levels.
    pub attempts: u32,
    /// Partners whose update is in the round's sum; for a tree, in its last level's sum.
    pub participants: u32,
    /// Partners of the final attempt's cohort that dropped out; for a tree, the distinct
    /// partners that dropped out of the final attempt of any of its levels.
    pub dropped: u32,
    /// Federated AUC of the model the round started from.
    #[serde(deserialize_with = "nan_if_null")]
    pub auc: f64,
    /// Federated log-loss of that model.
    #[serde(deserialize_with = "nan_if_null")]
    pub log_loss: f64,
    /// Federated accuracy of that model.
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    /// Federated lift at the top decile of that model.
    #[serde(deserialize_with = "nan_if_null")]
    pub lift_top_decile: f64,
    /// Wall-clock seconds of the round, retries included.
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    /// Cumulative ε after this round (differentially private jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// The round's clip norm, when the job's clip is adaptive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f64>,
    /// The noised share of the round's partners whose update was within `clip` (adaptive
    /// clip): what the next round's clip moved by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclipped_share: Option<f64>,
}

impl RoundRecord {
    /// A record of a round with `participants` in its sum and `dropped` members, and its
    /// evaluation.
    pub fn new(
        round: u64,
        attempts: u32,
        (participants, dropped): (usize, usize),
        eval: &Metrics,
        seconds: f64,
    ) -> Self {
        Self {
            round,
            attempts,
            participants: participants as u32,
            dropped: dropped as u32,
            auc: eval.auc,
            log_loss: eval.log_loss,
            accuracy: eval.accuracy,
            lift_top_decile: eval.lift_top_decile,
            seconds,
            epsilon: None,
            clip: None,
            unclipped_share: None,
        }
    }
}

impl From<&Metrics> for FinalMetrics {
    fn from(m: &Metrics) -> Self {
        FinalMetrics {
            auc: m.auc,
            log_loss: m.log_loss,
            accuracy: m.accuracy,
            lift_top_decile: m.lift_top_decile,
            rows: m.count,
        }
    }
}

/// Federated evaluation of the final model on every partner's holdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    /// ROC AUC.
    #[serde(deserialize_with = "nan_if_null")]
    pub auc: f64,
    /// Mean log-loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub log_loss: f64,
    /// Accuracy at 0.5.
    #[serde(deserialize_with = "nan_if_null")]
    pub accuracy: f64,
    /// Lift at the top decile.
    #[serde(deserialize_with = "nan_if_null")]
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
    #[serde(deserialize_with = "nan_if_null")]
    pub training_rows: f64,
    /// Partners in the final evaluation.
    pub evaluated_by: u32,
    /// Training rounds.
    pub rounds: Vec<RoundRecord>,
    /// Training rounds lost in this run of the coordinator: their unmask failed after some
    /// partners revealed their shares, and too few others remained to retry them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds_lost: Vec<u64>,
    /// Final federated metrics.
    #[serde(rename = "final")]
    pub final_metrics: FinalMetrics,
    /// Wall-clock seconds of the whole job.
    #[serde(deserialize_with = "nan_if_null")]
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
    #[serde(deserialize_with = "nan_if_null")]
    pub noise_multiplier: f64,
    /// Clipping norm C.
    #[serde(deserialize_with = "nan_if_null")]
    pub clip: f64,
    /// The job's ε budget.
    #[serde(deserialize_with = "nan_if_null")]
    pub epsilon_budget: f64,
    /// ε spent by every release of the job, at `delta`: the total guarantee per protected
    /// unit (the larger of the training and holdout sides', which hold disjoint records).
    #[serde(deserialize_with = "nan_if_null")]
    pub epsilon_spent: f64,
    /// δ.
    #[serde(deserialize_with = "nan_if_null")]
    pub delta: f64,
    /// What one (ε, δ) protects: `one record` or `one partner` (all its records).
    #[serde(default)]
    pub protected_unit: String,
    /// The accountant that gave `epsilon_spent` (`pld` or `rdp`): the tightest bound proved.
    #[serde(default)]
    pub accountant: String,
    /// The accountant's parameter behind `epsilon_spent`: the PLD's discretisation interval or
    /// the Rényi order that gave the bound; empty in reports from before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub accountant_parameters: String,
    /// The accountant σ was calibrated on (the spec's `accountant`, or RDP where the mechanism
    /// has no PLD); empty in reports from before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub calibrated_by: String,
    /// ε spent by the releases computed from training rows (the noised updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_training: Option<f64>,
    /// ε spent by the releases computed from holdout rows (the noised final evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_evaluation: Option<f64>,
}

impl PrivacyReport {
    /// The mode as the spec spells it (`mode` keeps the older `Debug` name for stored
    /// reports), or that name as it is if no mode has it.
    pub fn mode_name(&self) -> &str {
        [
            PrivacyMode::None,
            PrivacyMode::Record,
            PrivacyMode::PartnerCentral,
            PrivacyMode::PartnerDistributed,
        ]
        .into_iter()
        .find(|m| format!("{m:?}") == self.mode)
        .map_or(self.mode.as_str(), |m| m.as_str())
    }

    /// The guarantee of a job with `plan` that spent `spend`. `mode` keeps the name earlier
    /// reports used (`Record`, `PartnerCentral`, …) so that stored reports compare alike.
    pub fn new(plan: &PrivacyPlan, spend: &JobSpend) -> Self {
        let (epsilon_spent, accountant, accountant_parameters) = match spend.epsilon(plan.delta) {
            Ok((e, bound)) => (e, bound.method().to_string(), bound_parameters(&bound)),
            Err(_) => (f64::NAN, String::new(), String::new()),
        };
        let (training, evaluation) = spend
            .sides(plan.delta)
            .map_or((None, None), |(t, h)| (Some(t), h));
        Self {
            mode: format!("{:?}", plan.mode),
            noise_multiplier: plan.noise_multiplier,
            clip: plan.clip,
            epsilon_budget: plan.epsilon,
            epsilon_spent,
            delta: plan.delta,
            protected_unit: plan.mode.protected_unit().to_owned(),
            accountant,
            accountant_parameters,
            calibrated_by: plan.accountant().to_string(),
            epsilon_training: training,
            epsilon_evaluation: evaluation,
        }
    }
}

/// A bound's parameter in words, as reports and model cards give it.
fn bound_parameters(bound: &fedmark_core::accountant::Bound) -> String {
    match bound {
        fedmark_core::accountant::Bound::Pld { discretisation } => {
            format!("discretisation interval {discretisation:.3e}")
        }
        fedmark_core::accountant::Bound::Rdp { order } => format!("Rényi order {order}"),
    }
}

/// serde_json writes a non-finite `f64` as `null`. Read `null` back as NaN, so a stored
/// record with an undefined metric (the AUC of a one-class holdout, say) still loads on resume.
pub(crate) fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Peak resident set size of this process (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undefined_metric_survives_the_store() {
        let r = RoundRecord {
            round: 1,
            attempts: 1,
            participants: 2,
            dropped: 0,
            auc: f64::NAN,
            log_loss: 0.5,
            accuracy: 0.9,
            lift_top_decile: f64::NAN,
            seconds: 0.1,
            epsilon: None,
            clip: None,
            unclipped_share: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"auc\":null"), "{text}");
        let back: RoundRecord = serde_json::from_str(&text).unwrap();
        assert!(back.auc.is_nan() && back.lift_top_decile.is_nan());
        assert_eq!(back.log_loss, 0.5);
    }
}
