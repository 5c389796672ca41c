//! The partner's own policy (`policy.toml`): which jobs this partner's data may serve.
//!
//! The policy belongs to the partner and never to the coordinator: the client checks every
//! offered job against it before anything else and refuses with the exact reason. Fields:
//!
//! ```toml
//! allowed_purposes = ["campaign_response"]   # job.purpose must be one of these
//! allowed_features = ["age", "job", "y"]     # every declared column, label included
//! allowed_models = ["logistic", "mlp"]       # default: every kind (logistic, mlp, gbdt)
//! min_cohort = 3                             # fewest partners to aggregate with (default 2)
//! min_threshold = 2                          # optional: secure-aggregation threshold floor
//!
//! [purposes.campaign_response]               # optional, per allowed purpose
//! min_dp_mode = "none"                       # none | record | partner-central | partner-distributed
//! max_epsilon = 8.0                          # optional cap on a DP job's ε
//! min_cohort = 4                             # optional: raises the global floor for this purpose
//! min_threshold = 3                          # optional: likewise
//! ```
//!
//! **Strength of the privacy modes.** `none` is the weakest. `partner-central` and
//! `partner-distributed` protect a partner's whole contribution, which also protects each of
//! its records; `record` and `partner-distributed` add their noise at the partner, trusting
//! nobody with it, while `partner-central` trusts the coordinator to add it. So the order is
//! partial: `none` < `record` < `partner-distributed` and `none` < `partner-central` <
//! `partner-distributed`, with `record` and `partner-central` not comparable. A purpose that
//! requires `record` accepts `record` or `partner-distributed`; one that requires
//! `partner-central` accepts `partner-central` or `partner-distributed`.
//!
//! `max_epsilon` caps the ε of jobs that give a DP guarantee; whether a job may give none is
//! `min_dp_mode`'s business. `min_threshold` is checked against the threshold the job's spec
//! gives at its smallest cohort (`aggregation.min_participants`); a job without secure
//! aggregation has no threshold and is refused when the policy sets one.

use std::collections::BTreeMap;
use std::path::Path;

use fedmark_core::budget::secure_shape;
use fedmark_core::spec::{JobSpec, ModelKindName, PrivacyMode};
use serde::Deserialize;

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read partner policy {path}: {source}")]
    Io {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Not valid TOML for a policy (syntax, unknown field, wrong type).
    #[error("partner policy {path}: {reason}")]
    Parse {
        /// Path of the file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range.
    #[error("partner policy: `{field}` {reason}")]
    Invalid {
        /// Dotted field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// Per-purpose rules.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposePolicy {
    /// Weakest privacy mode accepted for this purpose.
    #[serde(default)]
    pub min_dp_mode: PrivacyMode,
    /// Largest ε a DP job for this purpose may spend.
    #[serde(default)]
    pub max_epsilon: Option<f64>,
    /// Raises the policy's `min_cohort` for this purpose.
    #[serde(default)]
    pub min_cohort: Option<u32>,
    /// Raises the policy's `min_threshold` for this purpose.
    #[serde(default)]
    pub min_threshold: Option<u32>,
}

/// `policy.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerPolicy {
    /// Purposes this partner's data may serve.
    pub allowed_purposes: Vec<String>,
    /// Columns a job may declare (features and label).
    pub allowed_features: Vec<String>,
    /// Model families allowed.
    #[serde(default = "all_models")]
    pub allowed_models: Vec<ModelKindName>,
    /// Fewest partners this partner will aggregate with.
    #[serde(default = "default_min_cohort")]
    pub min_cohort: u32,
    /// Lowest secure-aggregation threshold accepted.
    #[serde(default)]
    pub min_threshold: Option<u32>,
    /// Per-purpose rules.
    #[serde(default)]
    pub purposes: BTreeMap<String, PurposePolicy>,
}

fn all_models() -> Vec<ModelKindName> {
    vec![
        ModelKindName::Logistic,
        ModelKindName::Mlp,
        ModelKindName::Gbdt,
    ]
}

fn default_min_cohort() -> u32 {
    2
}

/// The name of a privacy mode as the spec and the policy write it.
pub fn mode_name(mode: PrivacyMode) -> &'static str {
    match mode {
        PrivacyMode::None => "none",
        PrivacyMode::Record => "record",
        PrivacyMode::PartnerCentral => "partner-central",
        PrivacyMode::PartnerDistributed => "partner-distributed",
    }
}

fn model_name(kind: ModelKindName) -> &'static str {
    kind.as_str()
}

/// Whether a job in mode `offered` meets a requirement of `required` (see the module notes).
pub fn satisfies(offered: PrivacyMode, required: PrivacyMode) -> bool {
    use PrivacyMode::*;
    match required {
        None => true,
        Record => matches!(offered, Record | PartnerDistributed),
        PartnerCentral => matches!(offered, PartnerCentral | PartnerDistributed),
        PartnerDistributed => offered == PartnerDistributed,
    }
}

impl PartnerPolicy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Parses and validates policy TOML (`name` is used in messages).
    pub fn from_toml(text: &str, name: &str) -> Result<Self, PolicyError> {
        let policy: PartnerPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: name.to_owned(),
            reason: e.to_string(),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |field: String, reason: &str| PolicyError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if self.allowed_purposes.is_empty() {
            return Err(invalid(
                "allowed_purposes".into(),
                "must list at least one purpose",
            ));
        }
        if self.allowed_features.is_empty() {
            return Err(invalid(
                "allowed_features".into(),
                "must list at least one column",
            ));
        }
        if self.allowed_models.is_empty() {
            return Err(invalid(
                "allowed_models".into(),
                "must list at least one model kind",
            ));
        }
        if self.min_cohort == 0 {
            return Err(invalid("min_cohort".into(), "must be at least 1"));
        }
        if self.min_threshold == Some(0) {
            return Err(invalid("min_threshold".into(), "must be at least 1"));
        }
        for (name, p) in &self.purposes {
            if !self.allowed_purposes.contains(name) {
                return Err(invalid(
                    format!("purposes.{name}"),
                    "names a purpose that is not in `allowed_purposes`",
                ));
            }
            if let Some(e) = p.max_epsilon
                && !(e.is_finite() && e > 0.0)
            {
                return Err(invalid(
                    format!("purposes.{name}.max_epsilon"),
                    "must be a positive number",
                ));
            }
            if p.min_cohort == Some(0) {
                return Err(invalid(
                    format!("purposes.{name}.min_cohort"),
                    "must be at least 1",
                ));
            }
            if p.min_threshold == Some(0) {
                return Err(invalid(
                    format!("purposes.{name}.min_threshold"),
                    "must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// Checks an offered job; `Err` is the refusal reason, exactly as the partner reports it.
    pub fn check(&self, spec: &JobSpec) -> Result<(), String> {
        let purpose = &spec.job.purpose;
        if !self.allowed_purposes.contains(purpose) {
            return Err(format!(
                "purpose `{purpose}` is not in this partner's allowed purposes"
            ));
        }
        for column in spec.declared_columns() {
            if !self.allowed_features.iter().any(|c| c == column) {
                return Err(format!(
                    "column `{column}` is not in this partner's allowed features"
                ));
            }
        }
        if !self.allowed_models.contains(&spec.model.kind) {
            return Err(format!(
                "model kind `{}` is not in this partner's allowed models",
                model_name(spec.model.kind)
            ));
        }
        let rules = self.purposes.get(purpose).cloned().unwrap_or_default();
        let mode = spec.privacy.mode;
        if !satisfies(mode, rules.min_dp_mode) {
            return Err(format!(
                "privacy mode `{}` is weaker than the `{}` this partner's policy requires for purpose `{purpose}`",
                mode_name(mode),
                mode_name(rules.min_dp_mode)
            ));
        }
        if mode != PrivacyMode::None
            && let Some(cap) = rules.max_epsilon
            && spec.privacy.epsilon > cap
        {
            return Err(format!(
                "epsilon {} exceeds this partner's policy cap of {cap} for purpose `{purpose}`",
                spec.privacy.epsilon
            ));
        }
        let min_cohort = rules.min_cohort.unwrap_or(0).max(self.min_cohort);
        if spec.aggregation.min_participants < min_cohort {
            return Err(format!(
                "aggregation.min_participants {} is below this partner's policy minimum cohort {min_cohort}",
                spec.aggregation.min_participants
            ));
        }
        if let Some(min_t) = self.min_threshold.max(rules.min_threshold) {
            if !spec.aggregation.secure {
                return Err(format!(
                    "the job does not use secure aggregation; this partner's policy requires a threshold of at least {min_t}"
                ));
            }
            let (_, t) = secure_shape(spec, spec.aggregation.min_participants as usize);
            if (t as u64) < u64::from(min_t) {
                return Err(format!(
                    "the secure-aggregation threshold {t} (at the job's minimum cohort of {}) is below this partner's policy minimum of {min_t}",
                    spec.aggregation.min_participants
                ));
            }
        }
        Ok(())
    }

    /// The fewest partners this policy lets `purpose` aggregate with (the global floor raised
    /// by the purpose's own), for checking each round's cohort.
    pub fn min_cohort_for(&self, purpose: &str) -> u32 {
        let rules = self.purposes.get(purpose).and_then(|p| p.min_cohort);
        rules.map_or(self.min_cohort, |r| r.max(self.min_cohort))
    }

    /// The policy's secure-aggregation threshold floor for `purpose` (the global one raised by
    /// the purpose's own), if any.
    pub fn min_threshold_for(&self, purpose: &str) -> Option<u32> {
        let rules = self.purposes.get(purpose).and_then(|p| p.min_threshold);
        self.min_threshold.max(rules)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SPEC: &str = r#"
[job]
name = "t"
purpose = "ads"
rounds = 1
[label]
column = "y"
positive = "yes"
[features]
numeric = ["age", "balance"]
categorical = ["job"]
range = { age = [18.0, 95.0], balance = [-5000.0, 50000.0] }
[model]
kind = "logistic"
[aggregation]
secure = true
min_participants = 3
[privacy]
mode = "partner-central"
epsilon = 4.0
"#;

    const POLICY: &str = r#"
allowed_purposes = ["ads", "churn"]
allowed_features = ["age", "balance", "job", "y"]
allowed_models = ["logistic"]
min_cohort = 2
[purposes.ads]
min_dp_mode = "partner-central"
max_epsilon = 5.0
"#;

    fn spec(edit: impl FnOnce(&mut JobSpec)) -> JobSpec {
        let mut s = JobSpec::from_toml(SPEC).unwrap();
        edit(&mut s);
        s
    }

    fn policy(text: &str) -> PartnerPolicy {
        PartnerPolicy::from_toml(text, "policy.toml").unwrap()
    }

    #[test]
    fn a_job_inside_the_policy_is_accepted() {
        policy(POLICY).check(&spec(|_| {})).unwrap();
        // Distributed DP is at least as strong as partner-central.
        policy(POLICY)
            .check(&spec(|s| s.privacy.mode = PrivacyMode::PartnerDistributed))
            .unwrap();
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let p = policy(POLICY);
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                spec(|s| s.job.purpose = "credit".into()),
                "purpose `credit` is not in this partner's allowed purposes",
            ),
            (
                spec(|s| s.features.numeric.push("income".into())),
                "column `income` is not in this partner's allowed features",
            ),
            (
                spec(|s| s.label.column = "converted".into()),
                "column `converted` is not in this partner's allowed features",
            ),
            (
                spec(|s| s.model.kind = ModelKindName::Mlp),
                "model kind `mlp` is not in this partner's allowed models",
            ),
            (
                spec(|s| s.privacy.mode = PrivacyMode::None),
                "privacy mode `none` is weaker than the `partner-central` this partner's policy requires for purpose `ads`",
            ),
            (
                spec(|s| s.privacy.mode = PrivacyMode::Record),
                "privacy mode `record` is weaker than the `partner-central`",
            ),
            (
                spec(|s| s.privacy.epsilon = 6.0),
                "epsilon 6 exceeds this partner's policy cap of 5 for purpose `ads`",
            ),
            (
                spec(|s| s.aggregation.min_participants = 1),
                "aggregation.min_participants 1 is below this partner's policy minimum cohort 2",
            ),
        ];
        for (s, reason) in cases {
            let got = p.check(&s).unwrap_err();
            assert!(got.starts_with(reason), "want `{reason}`, got `{got}`");
        }
    }

    #[test]
    fn thresholds_and_per_purpose_floors() {
        let text = format!("{POLICY}min_cohort = 4\nmin_threshold = 3\n");
        let p = policy(&text);
        // min_participants 3 < purpose floor 4.
        assert!(
            p.check(&spec(|_| {}))
                .unwrap_err()
                .contains("below this partner's policy minimum cohort 4")
        );
        let p = policy(&format!(
            "min_threshold = 3\n{}",
            POLICY.replace("[purposes.ads]", "[purposes.ads]\nmin_cohort = 1")
        ));
        // Three partners: degree 2, threshold 3 — accepted; two: threshold 2 — refused.
        p.check(&spec(|_| {})).unwrap();
        let e = p
            .check(&spec(|s| s.aggregation.min_participants = 2))
            .unwrap_err();
        assert!(
            e.contains("threshold 2") && e.contains("minimum of 3"),
            "{e}"
        );
        let e = p
            .check(&spec(|s| s.aggregation.secure = false))
            .unwrap_err();
        assert!(e.contains("does not use secure aggregation"), "{e}");
        assert_eq!(p.min_threshold_for("ads"), Some(3));
        // The purpose's `min_cohort = 1` cannot lower the global floor (default 2).
        assert_eq!(p.min_cohort_for("ads"), 2);
        let raised = policy(&format!(
            "{POLICY}min_cohort = 4
"
        ));
        assert_eq!(raised.min_cohort_for("ads"), 4);
        assert_eq!(raised.min_cohort_for("other"), 2);
    }

    #[test]
    fn mode_order() {
        use PrivacyMode::*;
        for m in [None, Record, PartnerCentral, PartnerDistributed] {
            assert!(satisfies(m, None));
            assert!(satisfies(PartnerDistributed, m));
            assert!(satisfies(m, m));
        }
        assert!(!satisfies(PartnerCentral, Record));
        assert!(!satisfies(Record, PartnerCentral));
        assert!(!satisfies(None, Record));
    }

    #[test]
    fn bad_policies_name_the_field() {
        for (text, needle) in [
            (
                "allowed_features = [\"a\"]\n",
                "missing field `allowed_purposes`",
            ),
            (
                "allowed_purposes = []\nallowed_features = [\"a\"]\n",
                "`allowed_purposes`",
            ),
            (
                "allowed_purposes = [\"a\"]\nallowed_features = [\"a\"]\nport = 1\n",
                "unknown field `port`",
            ),
            (
                "allowed_purposes = [\"a\"]\nallowed_features = [\"a\"]\n[purposes.b]\n",
                "`purposes.b`",
            ),
            (
                "allowed_purposes = [\"a\"]\nallowed_features = [\"a\"]\n[purposes.a]\nmax_epsilon = -1\n",
                "`purposes.a.max_epsilon`",
            ),
            (
                "allowed_purposes = [\"a\"]\nallowed_features = [\"a\"]\n[purposes.a]\nmin_dp_mode = \"strong\"\n",
                "unknown variant `strong`",
            ),
            (
                "allowed_purposes = [\"a\"]\nallowed_features = [\"a\"]\nallowed_models = [\"tree\"]\n",
                "unknown variant `tree`",
            ),
        ] {
            let e = PartnerPolicy::from_toml(text, "p.toml")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
