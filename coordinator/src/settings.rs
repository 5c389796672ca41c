//! How a job runs on this coordinator ([`RunSettings`]) and the size budget a job must fit
//! ([`check_size`]).

use std::sync::Arc;
use std::time::Duration;

use fedmark_core::secagg::Roster;
use fedmark_core::spec::JobSpec;

use crate::error::JobError;
use crate::events::JobEvents;
use crate::round::PausePoint;
use crate::store::Store;

/// Timing and membership settings of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Largest model a job may ask for (`max_model_params` in coordinator.toml).
    pub max_model_params: u64,
    /// How many partners the job waits for before starting (the roster size).
    pub expected_partners: usize,
    /// How long to wait for them.
    pub join_timeout: Duration,
    /// Deadline of each round phase.
    pub phase_timeout: Duration,
    /// Bulk transfers running at once (see [`crate::bulk`]).
    pub transfer_slots: usize,
    /// How long an admitted transfer may stall before it loses its slot.
    pub transfer_idle: Duration,
    /// Every partner's identity key (checked in secure aggregation).
    pub roster: Arc<Roster>,
    /// The durable store the job commits to (in memory for simulations).
    pub store: Store,
    /// Who submitted the job, for the audit record.
    pub submitted_by: String,
    /// Crash-test fault injection (`FEDMARK_TEST_PAUSE_AT`); None in normal runs.
    pub pause_at: Option<PausePoint>,
    /// Mutual TLS (see [`crate::tls`]); None serves plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Who hears what the job does: the board, the metrics registry (see
    /// [`crate::events`]).
    pub events: JobEvents,
}

/// Default of `max_model_params` in coordinator.toml: 2^24 parameters.
pub const DEFAULT_MAX_MODEL_PARAMS: u64 = 1 << 24;

/// Refuses a job whose model is larger than `max` parameters, saying by how much and how to
/// allow it. Checked at submit, and again before a stored job starts (a limit lowered since).
pub fn check_size(spec: &JobSpec, max: u64) -> Result<(), JobError> {
    let params = spec.model_params();
    if params > u128::from(max) {
        let gib = |p: u128| p as f64 * 8.0 * 6.0 / (1u64 << 30) as f64;
        return Err(JobError::TooLarge(format!(
            "the model has {params} parameters (about {:.1} GiB of coordinator memory a round), above this coordinator's max_model_params = {max} ({:.1} GiB); shrink hash_buckets, the vocabularies or model.hidden, or raise max_model_params in coordinator.toml",
            gib(params),
            gib(u128::from(max))
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poison job of the issue (no vocabulary, 2^22 hash buckets, an MLP of 4,096
    /// units) passes every per-field cap but not the size budget, which names the size, the
    /// limit and the setting; a job within the budget passes.
    #[test]
    fn a_model_above_the_size_budget_is_refused_with_the_setting_to_raise() {
        let poison = JobSpec::from_toml(
            "[job]\nname = \"p\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\ncategorical = [\"job\"]\nhash_buckets = 4194304\n\
             [model]\nkind = \"mlp\"\nhidden = 4096\n",
        )
        .unwrap();
        let expected: u128 = 4_194_304 * 4096 + 2 * 4096 + 1;
        assert_eq!(poison.model_params(), expected);
        let e = check_size(&poison, DEFAULT_MAX_MODEL_PARAMS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&expected.to_string()) && e.contains("max_model_params = 16777216"),
            "{e}"
        );
        assert!(check_size(&poison, u64::MAX).is_ok());
        let small = JobSpec::from_toml(
            "[job]\nname = \"s\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\n[model]\nkind = \"logistic\"\n",
        )
        .unwrap();
        assert!(check_size(&small, 2).is_ok() && check_size(&small, 1).is_err());
    }
}
