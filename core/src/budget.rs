//! A job's privacy plan: the noise it uses and what each round costs, from its spec.
//!
//! The coordinator charges [`PrivacyPlan::charge_round`] to an [`Accountant`] for every
//! released round and refuses a round whose charge would pass the budget. When the spec gives
//! no noise multiplier, [`PrivacyPlan::from_spec`] calibrates the smallest one under which the
//! whole planned job fits the budget, so the budget lasts exactly the planned rounds.
//!
//! A job's releases fall on two disjoint sets of a partner's records: its training rows
//! (the noised updates) and its holdout rows (a `record` job's noised final evaluation).
//! Which side a record is on depends on that record alone (see the holdout split), so adding
//! or removing one record changes what only one side releases: a job's ε is the larger of
//! the two sides' ([`JobSpend`], parallel composition), and calibration gives training the
//! whole budget once the evaluation fits it on its own.
//!
//! Calibration uses the tightest accountant the job's mechanism has
//! ([`PrivacyPlan::accountant`]): privacy loss distributions for the Gaussian mechanism
//! (`record` and `partner-central`), Rényi DP for the Skellam noise of
//! `partner-distributed`. Coordinator and partners derive the plan with this same pure
//! function, so they agree on σ to the last bit.

use rand::Rng;

use serde::{Deserialize, Serialize};

use crate::accountant::{
    Accountant, AccountantError, Bound, Method, calibrate_noise_multiplier_after,
};
use crate::aggregate::VectorLayout;
use crate::discrete_gaussian::{self, DiscreteGaussianError, LatticeNoise};
use crate::secagg::{recommended_degree, recommended_threshold};
use crate::spec::{AdaptiveClip, JobSpec, PrivacyMode};

/// Standard deviations of the summed distributed noise the fixed-point range keeps free, so
/// the noised sum wraps with probability far below 1e-9 (see
/// [`crate::dp::skellam_wrap_probability`]).
pub const NOISE_MARGIN_STD: f64 = 10.0;

/// The secure-aggregation shape of a cohort of `n`: neighbours per partner and the threshold
/// within each closed neighbourhood. Coordinator and partners compute it alike.
pub fn secure_shape(spec: &JobSpec, n: usize) -> (usize, usize) {
    let degree = if n > spec.aggregation.sparse_graph_above as usize {
        recommended_degree(n)
    } else {
        n.saturating_sub(1)
    };
    (degree, recommended_threshold(degree))
}

/// Survivors a distributed-DP round needs, and for which each partner sizes its noise share:
/// the secure-aggregation threshold, and at least two thirds of the cohort overall (with a
/// sparse graph the per-neighbourhood threshold alone would let each partner's share shrink
/// to ~1/t of the target and the sum carry n/t times the noise it needs).
pub fn noise_threshold(spec: &JobSpec, n: usize) -> usize {
    let (_, t) = secure_shape(spec, n);
    t.max(2 * n / 3 + 1).min(n.max(1))
}

/// Integer-domain parameters of distributed Skellam noise for one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkellamRound {
    /// L2 sensitivity in encoded units (clip · scale, plus √d for stochastic rounding).
    pub l2: f64,
    /// L1 sensitivity in encoded units.
    pub l1: f64,
    /// Noise variance the `t` guaranteed survivors carry together.
    pub variance: f64,
    /// Poisson mean each partner draws (its Skellam variance is twice this).
    pub mu_per_partner: f64,
}

/// Representative L2 sensitivity (encoded units) used to calibrate σ for distributed noise;
/// real rounds have larger ones, where Skellam is closer still to the Gaussian.
const CALIBRATION_L2: f64 = 1000.0;

/// What one round of a job costs in privacy, and with which noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyPlan {
    /// The guarantee.
    pub mode: PrivacyMode,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Clipping norm C: the L2 sensitivity the noise is scaled to (in a boosted-trees job the
    /// level vector's, [`gbdt_level_sensitivity`], which needs no clipping).
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
    /// `record` jobs: the noise multiplier of the one release of holdout statistics (the
    /// final evaluation), planned and charged with training. `None`: no such release.
    pub evaluation_noise: Option<f64>,
    /// The accountant σ was calibrated on and ε is reported by ([`Self::accountant`]).
    pub accountant: Method,
    /// An adaptive clip (partner-level modes): `clip` is then its largest value.
    pub adaptive: Option<AdaptiveClip>,
}

/// The share ρ of an adaptive-clip round's sensitivity given to its count. Each partner's
/// vector is its update clipped to the round's clip C and one more coordinate,
/// `κ·(b − ½)` with `κ = 2ρC` and b = 1 if the update was within C: its L2 norm is at most
/// `C·√(1 + ρ²)`, the sensitivity the noise is scaled to. One Gaussian release of the whole
/// vector carries both (Andrew et al. 2021 show the same split), so the count costs no
/// separate charge: the update's noise grows by `√(1 + ρ²)` (2 %), and the noised count of
/// the "within C" bits has standard deviation `σ·√(1 + ρ²)/(2ρ)` ≈ 2.55σ (0.07 of the share
/// with 100 partners at σ = 2.85, a 20-round job at ε = 8).
pub const ADAPTIVE_COUNT_SHARE: f64 = 0.2;

/// The L2 sensitivity of one partner's vector in an adaptive-clip round clipped at `clip`:
/// `clip·√(1 + ρ²)` ([`ADAPTIVE_COUNT_SHARE`]).
pub fn adaptive_sensitivity(clip: f64) -> f64 {
    clip * (1.0 + ADAPTIVE_COUNT_SHARE * ADAPTIVE_COUNT_SHARE).sqrt()
}

/// The L2 sensitivity of a partner's level vector in a boosted-trees job: one record adds
/// (g, h, 1) with |g| ≤ 1 and 0 ≤ h ≤ ¼ to one bin of each feature of one node
/// ([`crate::gbdt::RowBound::logistic`]), whatever tree, nodes and margins the round shows.
/// It is the plan's `clip` for such a job, the scale of each partner's noise.
pub fn gbdt_level_sensitivity(spec: &JobSpec) -> f64 {
    let features = spec.features.numeric.len() + spec.features.categorical.len();
    crate::gbdt::RowBound::logistic(features).l2
}

/// L2 sensitivity of one record's holdout statistics as a `record` job releases them: its
/// count (1), whether it was classified right (≤ 1), its log-loss over
/// [`EVAL_LOSS_CAP`] (≤ 1, rounded so the rounded sum moves by at most 1) and its one
/// histogram bin (1).
pub const EVAL_SENSITIVITY: f64 = 2.0;

/// Per-row log-loss cap in released holdout statistics (a score of about 4.5e-5 for the
/// true class).
pub const EVAL_LOSS_CAP: f64 = 10.0;

/// A `record` job's released holdout statistics of `scores` against `labels` (what a
/// partner sends in the final evaluation, of a linear model or of trees): each row's log-loss
/// capped at [`EVAL_LOSS_CAP`] and divided by it (so every statistic moves by at most 1 per
/// row, L2 sensitivity [`EVAL_SENSITIVITY`]), Gaussian noise of standard deviation `std` added
/// to each, each rounded to an integer.
pub fn noised_evaluation<R: Rng + ?Sized>(
    scores: &[f64],
    labels: &[f64],
    bins: usize,
    std: f64,
    rng: &mut R,
) -> Result<Vec<f64>, crate::dp::DpError> {
    let eval =
        crate::metrics::EvalStats::from_predictions_capped(scores, labels, bins, EVAL_LOSS_CAP);
    let mut stats = Vec::new();
    crate::aggregate::eval_stats_to_vec(&eval, &mut stats);
    if let Some(loss) = stats.get_mut(2) {
        *loss /= EVAL_LOSS_CAP;
    }
    crate::dp::add_gaussian_noise(&mut stats, 1.0, std, rng)?;
    stats.iter_mut().for_each(|v| *v = v.round());
    Ok(stats)
}

/// What one job has spent of a protected unit's privacy, by the disjoint sets of records its
/// releases are computed from. Persisted with the job (coordinator checkpoint, partner ledger).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpend {
    /// Releases computed from the training rows: the rounds' noised updates. (Under
    /// partner-level DP the unit is a partner, whose rows are on both sides; those jobs
    /// release nothing from the holdout.)
    pub training: Accountant,
    /// Releases computed from the holdout rows and released models alone: a `record` job's
    /// noised final evaluation.
    #[serde(default)]
    pub holdout: Accountant,
}

impl JobSpend {
    /// The job's ε at `delta` by parallel composition: the larger of the two sides' (each by
    /// its tightest accountant), and which accountant gave it.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, Bound), AccountantError> {
        let training = self.training.epsilon(delta)?;
        if self.holdout.is_empty() {
            return Ok(training);
        }
        let holdout = self.holdout.epsilon(delta)?;
        Ok(if holdout.0 > training.0 {
            holdout
        } else {
            training
        })
    }

    /// ε of each side at `delta`: (training, holdout), the holdout's `None` when it released
    /// nothing.
    pub fn sides(&self, delta: f64) -> Result<(f64, Option<f64>), AccountantError> {
        let holdout = if self.holdout.is_empty() {
            None
        } else {
            Some(self.holdout.epsilon(delta)?.0)
        };
        Ok((self.training.epsilon(delta)?.0, holdout))
    }

    /// The job's RDP curve by parallel composition ([`Accountant::parallel`]): what it adds
    /// to a partner's total across jobs, where another job may put the same record on the
    /// other side.
    pub fn envelope(&self) -> Result<Accountant, AccountantError> {
        Accountant::parallel(&[&self.training, &self.holdout])
    }
}

impl PrivacyPlan {
    /// The plan of a job, or `None` for `mode = "none"`.
    pub fn from_spec(spec: &JobSpec) -> Result<Option<Self>, AccountantError> {
        let p = &spec.privacy;
        let (sampling_rate, steps_per_round) = match p.mode {
            PrivacyMode::None => return Ok(None),
            // A boosted-trees job: each level round is one Gaussian release of the partner's
            // whole level vector (every row in it), at the level vector's sensitivity.
            PrivacyMode::Record if spec.is_gbdt() => (1.0, 1),
            PrivacyMode::Record => {
                let per_epoch = (1.0 / p.sampling_rate).ceil() as u64;
                (
                    p.sampling_rate,
                    per_epoch * u64::from(spec.training.local_epochs),
                )
            }
            PrivacyMode::PartnerCentral | PrivacyMode::PartnerDistributed => (1.0, 1),
        };
        let total_steps = steps_per_round * spec.planned_rounds();
        let evaluation_noise =
            (p.mode == PrivacyMode::Record).then_some(p.evaluation_noise_multiplier);
        if let Some(z) = evaluation_noise {
            // The holdout's release is composed in parallel with training: it must fit the
            // budget on its own, and then leaves all of it to training.
            let mut holdout = Accountant::new();
            holdout.compose_gaussian(z, 1)?;
            let epsilon = holdout.epsilon(p.delta)?.0;
            if epsilon > p.epsilon {
                return Err(AccountantError::ReleaseOverBudget {
                    release: "the final evaluation (evaluation_noise_multiplier)",
                    epsilon,
                    budget: p.epsilon,
                });
            }
        }
        let mut noise_multiplier = match p.noise_multiplier {
            Some(s) => s,
            None => calibrate_noise_multiplier_after(
                &Accountant::new(),
                Self::accountant_for(p.mode, p.accountant),
                p.epsilon,
                p.delta,
                sampling_rate,
                total_steps,
            )?,
        };
        if p.mode == PrivacyMode::PartnerDistributed && p.noise_multiplier.is_none() {
            // Skellam costs a little more than the Gaussian at the same variance: raise σ in
            // 1 % steps until the whole job fits at the calibration sensitivity.
            for _ in 0..200 {
                let mut acc = Accountant::new();
                let l2 = CALIBRATION_L2;
                let variance = (noise_multiplier * l2).powi(2);
                acc.compose_skellam(l2, l2 * l2, variance, u64::from(spec.job.rounds))?;
                if acc.epsilon(p.delta)?.0 <= p.epsilon {
                    break;
                }
                noise_multiplier *= 1.01;
            }
        }
        let adaptive = p.clip.is_adaptive().then_some(p.adaptive_clip);
        let clip = match spec.is_gbdt() {
            true => gbdt_level_sensitivity(spec),
            false => p.largest_clip(),
        };
        Ok(Some(Self {
            mode: p.mode,
            noise_multiplier,
            clip,
            sampling_rate,
            steps_per_round,
            epsilon: p.epsilon,
            delta: p.delta,
            evaluation_noise,
            accountant: Self::accountant_for(p.mode, p.accountant),
            adaptive,
        }))
    }

    /// The L2 sensitivity of one partner's vector in a round clipped at `round_clip` (the
    /// plan's clip when it is fixed): what the noise is scaled to.
    pub fn round_sensitivity(&self, round_clip: f64) -> f64 {
        match self.adaptive {
            Some(_) => adaptive_sensitivity(round_clip),
            None => self.clip,
        }
    }

    /// The scale κ of an adaptive round's count coordinate at clip `round_clip`.
    pub fn count_scale(round_clip: f64) -> f64 {
        2.0 * ADAPTIVE_COUNT_SHARE * round_clip
    }

    /// One partner's count coordinate in an adaptive round at clip `round_clip`: `κ·(b − ½)`,
    /// b = 1 if its update was `within` the clip. [`Self::unclipped_share`] decodes the sum.
    pub fn count_value(round_clip: f64, within: bool) -> f64 {
        Self::count_scale(round_clip) * if within { 0.5 } else { -0.5 }
    }

    /// An adaptive round's noised share of partners whose update was within `round_clip`,
    /// from the noised sum of the count coordinate over `contributors` partners.
    pub fn unclipped_share(noised_count: f64, round_clip: f64, contributors: f64) -> f64 {
        if contributors <= 0.0 {
            return f64::NAN;
        }
        (noised_count / Self::count_scale(round_clip) + 0.5 * contributors) / contributors
    }

    /// Charges the release of holdout statistics (the final evaluation of a `record` job);
    /// nothing for a plan without one.
    pub fn charge_evaluation(&self, ledger: &mut Accountant) -> Result<(), AccountantError> {
        match self.evaluation_noise {
            Some(z) => ledger.compose_gaussian(z, 1),
            None => Ok(()),
        }
    }

    /// Standard deviation of the Gaussian noise a partner adds to each of its holdout
    /// statistics in the final evaluation of a `record` job.
    pub fn evaluation_noise_std(&self) -> Option<f64> {
        self.evaluation_noise.map(|z| z * EVAL_SENSITIVITY)
    }

    /// The tightest accountant for a job's mechanism: PLD for the (subsampled) Gaussian of
    /// DP-SGD (`record`); RDP for the discrete Gaussian the coordinator adds in
    /// `partner-central` jobs and for the Skellam noise of `partner-distributed` jobs (no PLD
    /// for either here).
    ///
    /// A spec may ask for `rdp` instead ([`crate::spec::PrivacySection::accountant`]).
    pub fn accountant(&self) -> Method {
        self.accountant
    }

    /// The spec's choice (`requested`) where the mechanism has a PLD, RDP where it has not.
    fn accountant_for(mode: PrivacyMode, requested: Method) -> Method {
        match mode {
            PrivacyMode::Record => requested,
            _ => Method::Rdp,
        }
    }

    /// Charges one round to `ledger`. Distributed rounds are charged with
    /// [`Self::charge_skellam`] where the round's encoding is known (the coordinator); the
    /// partner's own ledger charges them as the Gaussian of the same σ, which they approach
    /// at the sensitivities fixed point gives.
    pub fn charge_round(&self, ledger: &mut Accountant) -> Result<(), AccountantError> {
        self.charge_rounds(ledger, 1)
    }

    /// Charges `rounds` rounds to `ledger` at once (see [`Self::charge_round`]).
    pub fn charge_rounds(
        &self,
        ledger: &mut Accountant,
        rounds: u64,
    ) -> Result<(), AccountantError> {
        let steps = self
            .steps_per_round
            .checked_mul(rounds)
            .ok_or(AccountantError::ZeroSteps)?;
        match self.mode {
            PrivacyMode::PartnerCentral => {
                ledger.compose_discrete_gaussian(self.noise_multiplier, steps)
            }
            _ => {
                ledger.compose_subsampled_gaussian(self.sampling_rate, self.noise_multiplier, steps)
            }
        }
    }

    /// Fixed-point headroom factor of a distributed round with `n` partners and threshold
    /// `t`: the update bound grows by this factor so that signal plus noise cannot wrap.
    pub fn headroom(&self, n: usize, t: usize) -> f64 {
        match self.mode {
            PrivacyMode::PartnerDistributed => {
                1.0 + NOISE_MARGIN_STD * self.noise_multiplier
                    / ((n.max(1) * t.max(1)) as f64).sqrt()
            }
            _ => 1.0,
        }
    }

    /// The integer noise of a distributed round with encoding `scale`, `dim` coordinates and
    /// threshold `t`, clipped at `round_clip` (the plan's clip when it is fixed; see
    /// [`Self::round_sensitivity`]).
    pub fn skellam_round(&self, scale: f64, dim: usize, t: usize, round_clip: f64) -> SkellamRound {
        let l2 = self.round_sensitivity(round_clip) * scale + (dim as f64).sqrt();
        let l1 = (dim as f64).sqrt() * l2;
        let variance = (self.noise_multiplier * l2).powi(2);
        SkellamRound {
            l2,
            l1,
            variance,
            mu_per_partner: variance / (2.0 * t.max(1) as f64),
        }
    }

    /// Charges one distributed round (see [`Self::skellam_round`]).
    pub fn charge_skellam(
        &self,
        ledger: &mut Accountant,
        round: &SkellamRound,
    ) -> Result<(), AccountantError> {
        ledger.compose_skellam(round.l2, round.l1, round.variance, 1)
    }

    /// ε after charging one more round to a copy of `ledger`.
    pub fn epsilon_after_round(&self, ledger: &Accountant) -> Result<f64, AccountantError> {
        let mut next = ledger.clone();
        self.charge_round(&mut next)?;
        Ok(next.epsilon(self.delta)?.0)
    }

    /// Charges a released training round of `spec` to `ledger`: its round's Skellam noise
    /// where partners noise in the integers (`partner-distributed`: the cost depends on the
    /// encoding `layout` and the threshold of a cohort of `cohort`), one round of the plan's
    /// mechanism otherwise. `round_clip` is the round's clip (the plan's when it is fixed).
    pub fn charge_training_round(
        &self,
        spec: &JobSpec,
        spend: &mut JobSpend,
        layout: &VectorLayout,
        cohort: usize,
        round_clip: f64,
    ) -> Result<(), AccountantError> {
        let ledger = &mut spend.training;
        match (self.mode, layout.update_codec) {
            (PrivacyMode::PartnerDistributed, Some(codec)) => {
                let t = noise_threshold(spec, cohort);
                self.charge_skellam(
                    ledger,
                    &self.skellam_round(codec.scale, layout.update_len, t, round_clip),
                )
            }
            _ => self.charge_round(ledger),
        }
    }

    /// ε after one more training round with the `layout` of a cohort of `n`, charged to a
    /// copy of `ledger` as [`Self::charge_training_round`] will charge it: what the
    /// coordinator checks before it starts a round.
    pub fn epsilon_after_training_round(
        &self,
        spec: &JobSpec,
        spend: &JobSpend,
        layout: &VectorLayout,
        n: usize,
        round_clip: f64,
    ) -> Result<f64, AccountantError> {
        let mut next = spend.clone();
        self.charge_training_round(spec, &mut next, layout, n, round_clip)?;
        Ok(next.epsilon(self.delta)?.0)
    }

    /// Charges the final evaluation's release to the holdout side of `spend` (nothing for a
    /// plan without one).
    pub fn charge_final_evaluation(&self, spend: &mut JobSpend) -> Result<(), AccountantError> {
        self.charge_evaluation(&mut spend.holdout)
    }

    /// The job's ε after the release of holdout statistics planned for the end of the job,
    /// charged to a copy of `spend` (its own ε for a plan without one).
    pub fn epsilon_after_evaluation(&self, spend: &JobSpend) -> Result<f64, AccountantError> {
        let mut next = spend.clone();
        self.charge_final_evaluation(&mut next)?;
        Ok(next.epsilon(self.delta)?.0)
    }

    /// Adds the coordinator's noise to a round's summed update in a `partner-central` job
    /// clipped at `round_clip` ([`Self::round_sensitivity`]): a discrete Gaussian on the
    /// integer sum the round's `layout` encodes
    /// ([`discrete_gaussian::add_to_fixed_point_sum`]), charged by
    /// [`Self::charge_training_round`]. Other modes add nothing here (`record` and
    /// `partner-distributed` partners noise their own updates) and return `None`.
    pub fn add_central_noise<R: Rng + ?Sized>(
        &self,
        update: &mut [f64],
        layout: &VectorLayout,
        round_clip: f64,
        rng: &mut R,
    ) -> Result<Option<LatticeNoise>, DiscreteGaussianError> {
        match (self.mode, layout.update_codec) {
            (PrivacyMode::PartnerCentral, Some(codec)) => {
                discrete_gaussian::add_to_fixed_point_sum(
                    update,
                    codec.scale,
                    self.round_sensitivity(round_clip),
                    self.noise_multiplier,
                    rng,
                )
                .map(Some)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 20\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\nrange = {{ a = [-10.0, 10.0] }}\n[model]\nkind = \"logistic\"\n{extra}"
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
            // Training has the whole budget: a `record` job's evaluation is on other rows.
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

    /// A `record` job's final evaluation is on the holdout rows, disjoint from training:
    /// training is calibrated to the whole budget and the evaluation does not add to the
    /// job's ε, which is the larger side's. The holdout side is checked against the analytic
    /// Gaussian mechanism (Balle and Wang 2018), recomputed here: δ(ε) = Φ(1/(2z) − εz) −
    /// e^ε Φ(−1/(2z) − εz).
    #[test]
    fn a_record_job_composes_its_evaluation_in_parallel_with_training() {
        let s = spec(
            "[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\nevaluation_noise_multiplier = 4.0\n",
        );
        let delta = s.privacy.delta;
        let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
        let mut spend = JobSpend::default();
        for _ in 0..s.job.rounds {
            plan.charge_round(&mut spend.training).unwrap();
        }
        let trained = spend.epsilon(delta).unwrap().0;
        assert!(trained <= 1.0 && trained > 0.99, "{trained}");
        assert!(plan.epsilon_after_evaluation(&spend).unwrap() <= 1.0);
        plan.charge_final_evaluation(&mut spend).unwrap();
        let (training, holdout) = spend.sides(delta).unwrap();
        let holdout = holdout.unwrap();
        assert_eq!(training, trained);
        assert_eq!(spend.epsilon(delta).unwrap().0, training.max(holdout));

        let z = 4.0_f64;
        let phi = |x: f64| 0.5 * crate::accountant::log_erfc(-x / std::f64::consts::SQRT_2).exp();
        let delta_at =
            |e: f64| phi(1.0 / (2.0 * z) - e * z) - e.exp() * phi(-1.0 / (2.0 * z) - e * z);
        let (mut lo, mut hi) = (0.0, 10.0);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if delta_at(mid) > delta {
                lo = mid
            } else {
                hi = mid
            }
        }
        assert!(
            holdout >= hi && holdout < 1.01 * hi,
            "{holdout} vs analytic {hi}"
        );
        assert!(
            holdout > 0.5,
            "the test's evaluation is not negligible: {holdout}"
        );

        // One after the other, the same releases would have passed the budget.
        let mut sequential = spend.training.clone();
        sequential.compose_ledger(&spend.holdout).unwrap();
        assert!(sequential.epsilon(delta).unwrap().0 > 1.05);

        // An evaluation that alone passes the budget is refused at the plan.
        let s = spec(
            "[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\nevaluation_noise_multiplier = 1.0\n",
        );
        let err = PrivacyPlan::from_spec(&s).unwrap_err();
        assert!(
            matches!(err, AccountantError::ReleaseOverBudget { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("evaluation_noise_multiplier"));
    }

    /// A boosted-trees `record` job: one Gaussian release per planned level round (trees ×
    /// depth, no statistics round), calibrated so the whole plan spends the budget — checked
    /// against the analytic Gaussian mechanism recomputed here (K releases at noise z are one
    /// release at z/√K: μ-GDP with μ = √K/z, δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)) — at
    /// the level vector's sensitivity √(F·(1 + 1/16 + 1)).
    #[test]
    fn a_gbdt_record_plan_fits_trees_times_depth_releases() {
        let s = JobSpec::from_toml(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 10\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\", \"b\"]\ncategorical = [\"c\"]\nrange = { a = [0.0, 1.0], b = [0.0, 5.0] }\n\
             [features.vocabulary]\nc = [\"x\", \"y\"]\n\
             [model]\nkind = \"gbdt\"\n[model.gbdt]\nmax_depth = 3\n\
             [privacy]\nmode = \"record\"\nepsilon = 1.0\ndelta = 1e-5\n",
        )
        .unwrap();
        let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
        let releases = 30;
        assert_eq!(s.planned_rounds(), releases);
        assert_eq!((plan.sampling_rate, plan.steps_per_round), (1.0, 1));
        assert_eq!(plan.clip, (3.0f64 * (1.0 + 1.0 / 16.0 + 1.0)).sqrt());
        let mut spend = JobSpend::default();
        for _ in 0..releases {
            assert!(plan.epsilon_after_round(&spend.training).unwrap() <= 1.0);
            plan.charge_round(&mut spend.training).unwrap();
        }
        let spent = spend.epsilon(1e-5).unwrap().0;
        assert!(spent <= 1.0 && spent > 0.99, "{spent}");

        let mu = (releases as f64).sqrt() / plan.noise_multiplier;
        let phi = |x: f64| 0.5 * crate::accountant::log_erfc(-x / std::f64::consts::SQRT_2).exp();
        let delta_at = |e: f64| phi(-e / mu + mu / 2.0) - e.exp() * phi(-e / mu - mu / 2.0);
        // The exact ε of the plan's releases is within the budget and close to it: the
        // calibration neither overspends nor wastes noise.
        assert!(delta_at(1.0) <= 1e-5, "{}", delta_at(1.0));
        assert!(delta_at(0.97) > 1e-5, "{}", delta_at(0.97));
    }

    /// What the coordinator can unmask in a distributed round — the wrapping sum of the
    /// partners' encoded, noised vectors (secure aggregation returns exactly that sum, see
    /// `secagg::tests`) — already carries noise of the planned scale: at least σ·C on the sum
    /// when only the threshold survives, about √(n/t)·σ·C with everyone, and never wraps.
    #[test]
    fn distributed_noise_reaches_the_sum_at_the_planned_scale() {
        use crate::aggregate::{Progress, RoundKind, RunningSum};
        use rand::SeedableRng;
        use rand::rngs::StdRng;

        let s =
            spec("[privacy]\nmode = \"partner-distributed\"\nnoise_multiplier = 2.0\nclip = 1.0\n");
        let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
        let (n, dim) = (6, 4000);
        let layout = RoundKind::Training.layout(&s, dim, n).unwrap();
        let codec = layout.update_codec.unwrap();
        let t = noise_threshold(&s, n);
        assert_eq!(t, 5);
        let round = plan.skellam_round(codec.scale, layout.update_len, t, plan.clip);
        let mut rng = StdRng::seed_from_u64(8);
        let mut sum = RunningSum::new(layout.len());
        let mut exact = vec![0.0; dim];
        for k in 0..n {
            // each partner's update: unit weight, L2 norm exactly C = 1
            let update: Vec<f64> = (0..dim)
                .map(|j| if (j + k) % 2 == 0 { 1.0 } else { -1.0 } / (dim as f64).sqrt())
                .collect();
            for (e, u) in exact.iter_mut().zip(&update) {
                *e += u;
            }
            // A DP job's training round carries only the spec-fixed unit weight.
            let stats = vec![1.0];
            let mut words = layout.encode(&update, &stats, &mut rng);
            crate::dp::add_skellam_noise(
                &mut words[..layout.update_len],
                round.mu_per_partner,
                &mut rng,
            )
            .unwrap();
            let mut p = Progress::default();
            sum.add(&mut p, 0, &words, true).unwrap();
        }
        let decoded = layout.decode(sum.as_slice());
        let diffs: Vec<f64> = decoded
            .update
            .iter()
            .zip(&exact)
            .map(|(d, e)| d - e)
            .collect();
        let var = diffs.iter().map(|d| d * d).sum::<f64>() / dim as f64;
        // n partners each add variance σ²·l2²/t (l2 in encoded units), i.e. σ²C²·n/t decoded
        let l2_decoded = round.l2 / codec.scale;
        let expected = plan.noise_multiplier.powi(2) * l2_decoded.powi(2) * n as f64 / t as f64;
        assert!(
            (var / expected - 1.0).abs() < 0.1,
            "noise variance {var}, expected {expected}"
        );
        assert!(
            var >= plan.noise_multiplier.powi(2),
            "at least σ²C² on the sum"
        );
        // no coordinate wrapped: every difference is a plausible noise draw
        let max = diffs.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        assert!(max < 8.0 * expected.sqrt(), "largest deviation {max}");
        // and the coordinator's charge is a real Skellam charge
        let mut ledger = Accountant::new();
        plan.charge_skellam(&mut ledger, &round).unwrap();
        assert!(ledger.epsilon(1e-5).unwrap().0 > 0.0);
    }

    /// Coordinator and partners each calibrate σ from the spec: the same call must give the
    /// same σ to the last bit, on any thread, however often it is made.
    #[test]
    fn calibrated_sigma_is_deterministic_to_the_last_bit() {
        for extra in [
            "[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\n",
            "[privacy]\nmode = \"partner-central\"\nepsilon = 2.0\n",
            "[privacy]\nmode = \"partner-distributed\"\nepsilon = 2.0\n",
        ] {
            let s = spec(extra);
            let first = PrivacyPlan::from_spec(&s).unwrap().unwrap();
            let again = PrivacyPlan::from_spec(&s).unwrap().unwrap();
            let elsewhere = std::thread::scope(|scope| {
                scope
                    .spawn(|| PrivacyPlan::from_spec(&s).unwrap().unwrap())
                    .join()
                    .unwrap()
            });
            for other in [again, elsewhere] {
                assert_eq!(
                    first.noise_multiplier.to_bits(),
                    other.noise_multiplier.to_bits(),
                    "{extra}"
                );
                assert_eq!(first, other);
            }
        }
    }

    #[test]
    fn gaussian_plans_calibrate_on_pld_and_need_less_noise_than_rdp() {
        let s = spec("[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\n");
        let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
        assert_eq!(plan.accountant(), Method::Pld);
        let total = plan.steps_per_round * u64::from(s.job.rounds);
        let rdp = calibrate_noise_multiplier_after(
            &Accountant::new(),
            Method::Rdp,
            1.0,
            s.privacy.delta,
            0.02,
            total,
        )
        .unwrap();
        assert!(
            plan.noise_multiplier < rdp,
            "pld sigma {} vs rdp {rdp}",
            plan.noise_multiplier
        );
        let mut ledger = Accountant::new();
        for _ in 0..s.job.rounds {
            plan.charge_round(&mut ledger).unwrap();
        }
        let (spent, bound) = ledger.epsilon(s.privacy.delta).unwrap();
        assert_eq!(bound.method(), Method::Pld);
        assert!(spent <= 1.0 && spent > 0.99, "{spent}");
        // A spec that asks for RDP gets RDP's σ (what both ends re-derive from the spec).
        let asked = spec(
            "[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\naccountant = \"rdp\"\n",
        );
        let plan = PrivacyPlan::from_spec(&asked).unwrap().unwrap();
        assert_eq!(plan.accountant(), Method::Rdp);
        assert_eq!(plan.noise_multiplier, rdp);
        assert!(asked.to_toml().unwrap().contains("accountant = \"rdp\""));
        assert!(!s.to_toml().unwrap().contains("accountant"));
        let distributed = spec("[privacy]\nmode = \"partner-distributed\"\nepsilon = 2.0\n");
        let plan = PrivacyPlan::from_spec(&distributed).unwrap().unwrap();
        assert_eq!(plan.accountant(), Method::Rdp);
        // Skellam has no PLD: asking for it still calibrates on RDP.
        let distributed = spec(
            "[privacy]\nmode = \"partner-distributed\"\nepsilon = 2.0\naccountant = \"pld\"\n",
        );
        let plan = PrivacyPlan::from_spec(&distributed).unwrap().unwrap();
        assert_eq!(plan.accountant(), Method::Rdp);
        let unknown = JobSpec::from_toml(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 2\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\n[model]\nkind = \"logistic\"\n[privacy]\naccountant = \"prv\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("prv") && unknown.contains("rdp"),
            "{unknown}"
        );
    }

    #[test]
    fn adaptive_clip_count_decodes_exactly_and_fits_the_sensitivity() {
        let s = spec(
            "[privacy]\nmode = \"partner-central\"\nepsilon = 8.0\nclip = \"adaptive\"\n\
             [privacy.adaptive_clip]\ninitial = 0.3\nmax = 4.0\n",
        );
        let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
        assert_eq!(plan.clip, 4.0, "the encoding bound is the largest clip");
        assert!(plan.adaptive.is_some());
        // Every count of "within" bits among m partners decodes to its exact share.
        for m in [1usize, 2, 7, 100] {
            for k in 0..=m {
                let c = 0.37;
                let sum: f64 = (0..m).map(|i| PrivacyPlan::count_value(c, i < k)).sum();
                let share = PrivacyPlan::unclipped_share(sum, c, m as f64);
                assert!(
                    (share - k as f64 / m as f64).abs() < 1e-12,
                    "{k}/{m}: {share}"
                );
            }
        }
        assert!(PrivacyPlan::unclipped_share(1.0, 0.5, 0.0).is_nan());
        // One partner's vector (its update clipped to C, then κ(b − ½)) has an L2 norm of at
        // most the sensitivity the noise is scaled to, with equality at the bound.
        use rand::RngExt;
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for c in [1e-3, 0.3, 4.0] {
            let bound = plan.round_sensitivity(c);
            for _ in 0..200 {
                let mut u: Vec<f64> = (0..5).map(|_| rng.random_range(-3.0..3.0)).collect();
                let norm = u.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > c {
                    u.iter_mut().for_each(|v| *v *= c / norm);
                }
                u.push(PrivacyPlan::count_value(c, true));
                let total = u.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!(total <= bound * (1.0 + 1e-12), "{total} > {bound}");
            }
            let tight = (c * c + (PrivacyPlan::count_scale(c) * 0.5).powi(2)).sqrt();
            assert!((tight - bound).abs() <= 1e-12 * bound);
        }
        // A fixed clip's sensitivity is the clip, whatever is passed.
        let fixed = PrivacyPlan::from_spec(&spec(
            "[privacy]\nmode = \"partner-central\"\nepsilon = 8.0\nclip = 0.7\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(fixed.round_sensitivity(123.0), 0.7);
        assert!(fixed.adaptive.is_none());
    }

    /// What the coordinator checks before a round is what it charges after it, in every
    /// mode: for distributed noise the Skellam charge of the cohort's own encoding (its cost
    /// differs from the Gaussian's, and with the cohort size), for the others one round of
    /// the plan. Central noise is added only in `partner-central` jobs, with the plan's σ
    /// times the clip (checked on the sample spread over 20,000 coordinates).
    #[test]
    fn the_round_check_matches_the_round_charge_and_noise_is_central_only() {
        use crate::aggregate::RoundKind;
        use rand::SeedableRng;
        for extra in [
            "[privacy]\nmode = \"record\"\nepsilon = 1.0\nsampling_rate = 0.02\n",
            "[privacy]\nmode = \"partner-central\"\nepsilon = 2.0\n",
            "[privacy]\nmode = \"partner-distributed\"\nepsilon = 2.0\n",
        ] {
            let s = spec(extra);
            let plan = PrivacyPlan::from_spec(&s).unwrap().unwrap();
            let params = 2;
            for n in [3usize, 10, 40] {
                let layout = RoundKind::Training.layout(&s, params, n).unwrap();
                let mut charged = JobSpend::default();
                plan.charge_rounds(&mut charged.training, 1).unwrap();
                let before = charged.clone();
                plan.charge_training_round(&s, &mut charged, &layout, n, plan.clip)
                    .unwrap();
                let mut reference = Accountant::new();
                plan.charge_rounds(&mut reference, 1).unwrap();
                match plan.mode {
                    PrivacyMode::PartnerDistributed => {
                        let codec = layout.update_codec.unwrap();
                        let t = noise_threshold(&s, n);
                        let round =
                            plan.skellam_round(codec.scale, layout.update_len, t, plan.clip);
                        reference
                            .compose_skellam(round.l2, round.l1, round.variance, 1)
                            .unwrap();
                    }
                    _ => plan.charge_round(&mut reference).unwrap(),
                }
                assert_eq!(charged.training, reference, "{extra} n = {n}");
                assert!(charged.holdout.is_empty());
                let estimate = plan
                    .epsilon_after_training_round(&s, &before, &layout, n, plan.clip)
                    .unwrap();
                assert_eq!(estimate, charged.epsilon(s.privacy.delta).unwrap().0);

                // Enough coordinates that the sample spread pins the noise's scale down.
                let wide = RoundKind::Training.layout(&s, 20_000, n).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
                let mut update = vec![0.0; wide.update_len];
                let noise = plan
                    .add_central_noise(&mut update, &wide, plan.clip, &mut rng)
                    .unwrap();
                match plan.mode {
                    PrivacyMode::PartnerCentral => {
                        let noise = noise.unwrap();
                        let var = update.iter().map(|u| u * u).sum::<f64>() / update.len() as f64;
                        let ratio = var.sqrt() / noise.std_real;
                        assert!(
                            (ratio - 1.0).abs() < 0.05,
                            "sample std / planned std {ratio}"
                        );
                        // σ_real is the plan's σ times the clip (the sum's L2 sensitivity),
                        // up to the lattice's rounding of σ.
                        let planned = plan.noise_multiplier * plan.clip;
                        assert!(
                            noise.std_real >= planned && noise.std_real < 1.01 * planned,
                            "{} vs {planned}",
                            noise.std_real
                        );
                    }
                    _ => {
                        assert!(noise.is_none());
                        assert!(update.iter().all(|&u| u == 0.0));
                    }
                }
            }
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
