//! A job's privacy plan: the noise it uses and what each round costs, from its spec.
//!
//! The coordinator charges [`PrivacyPlan::charge_round`] to an [`Accountant`] for every
//! released round and refuses a round whose charge would pass the budget. When the spec gives
//! no noise multiplier, [`PrivacyPlan::from_spec`] calibrates the smallest one under which the
//! whole planned job fits the budget, so the budget lasts exactly the planned rounds.

use crate::accountant::{Accountant, AccountantError, calibrate_noise_multiplier};
use crate::spec::{JobSpec, PrivacyMode};

/// What one round of a job costs in privacy, and with which noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyPlan {
    /// The guarantee.
    pub mode: PrivacyMode,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Clipping norm C.
    pub clip: f64,
    /// Sampling rate of one mechanism application (record: Poisson rate per local step;
    /// partner modes: 1, every partner of the cohort takes part).
    pub sampling_rate: f64,
    /// Mechanism applications per round (record: local steps; partner modes: 1).
    pub steps_per_round: u64,
    /// Total ε budget.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
}

impl PrivacyPlan {
    /// The plan of a job, or `None` for `mode = "none"`.
    pub fn from_spec(spec: &JobSpec) -> Result<Option<Self>, AccountantError> {
        let p = &spec.privacy;
        let (sampling_rate, steps_per_round) = match p.mode {
            PrivacyMode::None => return Ok(None),
            PrivacyMode::Record => {
                let per_epoch = (1.0 / p.sampling_rate).ceil() as u64;
                (
                    p.sampling_rate,
                    per_epoch * u64::from(spec.training.local_epochs),
                )
            }
            PrivacyMode::PartnerCentral => (1.0, 1),
        };
        let total_steps = steps_per_round * u64::from(spec.job.rounds);
        let noise_multiplier = match p.noise_multiplier {
            Some(s) => s,
            None => calibrate_noise_multiplier(p.epsilon, p.delta, sampling_rate, total_steps)?,
        };
        Ok(Some(Self {
            mode: p.mode,
            noise_multiplier,
            clip: p.clip,
            sampling_rate,
            steps_per_round,
            epsilon: p.epsilon,
            delta: p.delta,
        }))
    }

    /// Charges one round to `ledger`.
    pub fn charge_round(&self, ledger: &mut Accountant) -> Result<(), AccountantError> {
        ledger.compose_subsampled_gaussian(
            self.sampling_rate,
            self.noise_multiplier,
            self.steps_per_round,
        )
    }

    /// ε after charging one more round to a copy of `ledger`.
    pub fn epsilon_after_round(&self, ledger: &Accountant) -> Result<f64, AccountantError> {
        let mut next = ledger.clone();
        self.charge_round(&mut next)?;
        Ok(next.epsilon(self.delta)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 20\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\n[model]\nkind = \"logistic\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn calibrated_plan_spends_the_budget_in_exactly_the_planned_rounds() {
        for extra in [
            "[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\n",
            "[privacy]\nmode = \"partner-central\"\nepsilon = 2.0\n",
        ] {
            let s = spec(extra);
            let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
            let mut ledger = Accountant::new();
            for _ in 0..s.job.rounds {
                assert!(plan.epsilon_after_round(&ledger).unwrap() <= s.privacy.epsilon);
                plan.charge_round(&mut ledger).unwrap();
            }
            let spent = ledger.epsilon(s.privacy.delta).unwrap().0;
            assert!(
                spent <= s.privacy.epsilon && spent > 0.99 * s.privacy.epsilon,
                "{extra}: {spent}"
            );
            assert!(
                plan.epsilon_after_round(&ledger).unwrap() > s.privacy.epsilon,
                "one more round would pass the budget"
            );
        }
    }

    #[test]
    fn record_plan_counts_local_steps() {
        let plan = PrivacyPlan::from_spec(&spec(
            "[privacy]\nmode = \"record\"\nsampling_rate = 0.01\nnoise_multiplier = 1.0\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                plan.steps_per_round,
                plan.sampling_rate,
                plan.noise_multiplier
            ),
            (100, 0.01, 1.0)
        );
        assert!(PrivacyPlan::from_spec(&spec("")).unwrap().is_none());
    }
}
