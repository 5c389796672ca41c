//! Whether this partner takes an offered job: its own policy first, then its config (user-id
//! column, minimum cohort, identity for secure aggregation), its privacy ledger (what is left
//! of the plan must fit its cap), and finally its data (the declared columns must load). A
//! refusal's reason names what the job asked for that is missing — never the partner's file
//! paths, counts or values, which go to the partner's own log.

use fedmark_core::budget::PrivacyPlan;
use fedmark_core::spec::{JobSpec, PrivacyMode};
use tracing::warn;

use crate::config::ClientConfig;
use crate::consent::ConsentSource;
use crate::contribution::JobContext;
use crate::data::{DataError, HoldoutSplit, load_csv, load_csv_keyed};
use crate::ledger::{self, JobTerms, Ledger};
use crate::policy::PartnerPolicy;

/// Checks an offered job against this partner's policy, config and privacy ledger, and loads
/// its declared columns; the `Err` is the reason sent back with the refusal.
pub fn check_offer(
    cfg: &ClientConfig,
    policy: Option<&PartnerPolicy>,
    has_identity: bool,
    ledger: &Ledger,
    job_id: &str,
    spec_toml: &str,
) -> Result<JobContext, String> {
    let spec = JobSpec::from_toml(spec_toml).map_err(|e| e.to_string())?;
    // The partner's own policy comes first: a job outside it is refused whatever else.
    if let Some(policy) = &policy {
        policy.check(&spec)?;
    }
    if let Some(user_col) = &cfg.user_id_column
        && spec.declared_columns().contains(&user_col.as_str())
    {
        return Err(format!(
            "column `{user_col}` is this partner's user-id column and is never a feature or label"
        ));
    }
    if spec.aggregation.secure && !has_identity {
        return Err("secure aggregation needs identity_key and roster in the client config".into());
    }
    if (spec.aggregation.min_participants as usize) < cfg.min_cohort {
        return Err(format!(
            "aggregation.min_participants {} is below this partner's minimum cohort {}",
            spec.aggregation.min_participants, cfg.min_cohort
        ));
    }
    // Before anything is built for it: the model, its update and their encodings are held
    // in memory every round.
    let params = spec.model_params();
    if params > u128::from(cfg.max_model_params) {
        return Err(format!(
            "the model has {params} parameters, above this partner's max_model_params = {}",
            cfg.max_model_params
        ));
    }
    let cap = ledger::partner_cap(cfg.max_epsilon, policy, &spec.job.purpose);
    if spec.privacy.mode != PrivacyMode::None
        && let Some(cap) = cap
        && spec.privacy.epsilon > cap
    {
        return Err(format!(
            "the job's privacy budget epsilon = {} exceeds this partner's cap of {cap}",
            spec.privacy.epsilon
        ));
    }
    let privacy = PrivacyPlan::from_spec(&spec).map_err(|e| format!("privacy plan: {e}"))?;
    if let Some(plan) = &privacy {
        // Only what is left of the plan for this partner (a job offered again after a
        // coordinator restart) must fit the cap on top of what the purpose has spent.
        let terms = JobTerms {
            job_id,
            spec_sha256: &ledger::spec_digest(&spec),
            purpose: &spec.job.purpose,
            plan,
            planned_rounds: spec.planned_rounds(),
            cap,
        };
        ledger.check_offer(&terms).map_err(|e| e.to_string())?;
    }
    let split = HoldoutSplit {
        fraction: cfg.holdout_fraction,
        seed: cfg.holdout_seed,
    };
    let ctx = match (&cfg.consent, &cfg.user_id_column) {
        (Some(consent), Some(user_col)) => {
            // Refuse now, not at the first round, if the consent source is unreadable.
            ConsentSource::load(consent).map_err(|e| {
                warn!(error = %e, "the consent source cannot be read");
                "the partner's consent source cannot be read (see the partner's log)".to_owned()
            })?;
            let keyed = load_csv_keyed(&cfg.data, &spec, split, user_col).map_err(data_refusal)?;
            for (reason, count) in &keyed.all.skipped {
                warn!(reason = reason.as_str(), rows = count, "skipped bad rows");
            }
            JobContext::with_consent(spec, keyed, privacy)
        }
        _ => {
            let data = load_csv(&cfg.data, &spec, split).map_err(data_refusal)?;
            for (reason, count) in &data.skipped {
                warn!(reason = reason.as_str(), rows = count, "skipped bad rows");
            }
            JobContext::new(spec, data, privacy)
        }
    };
    Ok(ctx)
}

/// The reason sent to the coordinator when the partner's data cannot serve a job: what the
/// job asked for that is missing, never the partner's file paths or contents (those go to the
/// partner's own log).
pub fn data_refusal(e: DataError) -> String {
    warn!(error = %e, "the partner's data cannot serve the job");
    match e {
        DataError::MissingColumn { column, .. } => {
            format!("the partner's data lacks the declared column `{column}`")
        }
        DataError::Empty { by_reason, .. } => {
            // The columns at fault, never counts or values: what a data scientist needs to fix
            // the spec (a text column declared numeric, say).
            let columns: Vec<String> = by_reason
                .keys()
                .filter_map(|r| r.column())
                .map(|c| format!("`{c}`"))
                .collect();
            if columns.is_empty() {
                "the partner's data has no usable row for this job".into()
            } else {
                format!(
                    "the partner's data has no usable row for this job: declared numeric column {} holds no number",
                    columns.join(", ")
                )
            }
        }
        _ => "the partner's data cannot be read (see the partner's log)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SkipReason;

    /// The poison job of issue 16 (no vocabulary, 2^22 hash buckets, an MLP of 4,096 units)
    /// is refused by the partner itself, naming the size and the setting, before its data is
    /// even opened (the data path here does not exist); raising the setting moves the refusal
    /// on to the data.
    #[test]
    fn a_model_above_this_partners_size_budget_is_refused_before_anything_is_built() {
        let mut cfg = ClientConfig::new(
            "http://127.0.0.1:1".into(),
            "p".into(),
            "/nonexistent/fedmark/data.csv".into(),
        );
        let ledger = Ledger::open(None).unwrap();
        let poison = "[job]\nname = \"p\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
                      [features]\ncategorical = [\"job\"]\nhash_buckets = 4194304\n\
                      [model]\nkind = \"mlp\"\nhidden = 4096\n";
        let err = check_offer(&cfg, None, true, &ledger, "job-p", poison)
            .err()
            .unwrap();
        assert!(
            err.contains("17179877377 parameters") && err.contains("max_model_params = 16777216"),
            "{err}"
        );
        cfg.max_model_params = u64::MAX;
        let err = check_offer(&cfg, None, true, &ledger, "job-p", poison)
            .err()
            .unwrap();
        assert!(!err.contains("max_model_params"), "{err}");
    }

    /// A refusal for unusable data names the numeric columns at fault, and nothing else of
    /// the data (no counts, no values).
    #[test]
    fn a_data_refusal_names_the_column_but_no_count() {
        let by_reason = [
            (
                SkipReason::BadNumber {
                    column: "age".into(),
                },
                1200,
            ),
            (SkipReason::Malformed, 3),
        ]
        .into_iter()
        .collect();
        let reason = data_refusal(DataError::Empty {
            path: "/secret/path.csv".into(),
            skipped: 1203,
            by_reason,
        });
        assert!(reason.contains("`age`"), "{reason}");
        assert!(
            !reason.contains("1200") && !reason.contains("1203") && !reason.contains("secret"),
            "{reason}"
        );
        let plain = data_refusal(DataError::Empty {
            path: "p".into(),
            skipped: 0,
            by_reason: Default::default(),
        });
        assert_eq!(plain, "the partner's data has no usable row for this job");
    }
}
