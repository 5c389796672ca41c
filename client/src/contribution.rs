//! What a partner computes for each round, from its own records: no I/O, no network.
//!
//! The protocol driver ([`crate::node`]) hands in the global model and the federated
//! standardisation; this module evaluates, trains, clips and weights, and returns the values
//! of the round's vector (see [`fedmark_core::aggregate`]). Encoding and masking happen after.

use fedmark_core::aggregate::{RoundKind, eval_stats_to_vec};
use fedmark_core::budget::{PrivacyPlan, noise_threshold};
use fedmark_core::dp::add_skellam_noise;
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::matrix::Dataset;
use fedmark_core::metrics::EvalStats;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::spec::JobSpec;
use fedmark_core::spec::PrivacyMode;
use fedmark_core::train::{DpSgd, LocalTraining, clip_l2, train_dp_sgd, train_local};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::consent::ConsentSnapshot;
use crate::data::{KeyedData, LocalData};
use crate::participant::{Computation, secret_rng};

/// A job this partner accepted, with its records for it.
#[derive(Debug)]
pub struct JobContext {
    /// The accepted spec.
    pub spec: JobSpec,
    /// Input layout.
    pub schema: FeatureSchema,
    /// Model family.
    pub arch: Architecture,
    /// The partner's rows used in the current round (declared columns only; with a consent
    /// source, only the rows of users in the round's consent snapshot).
    pub data: LocalData,
    /// With a consent source: every row with its user id, filtered again each round.
    keyed: Option<KeyedData>,
    /// Hash of the snapshot `data` was filtered with.
    applied: Option<String>,
    /// The job's privacy plan as this partner computes it from the spec.
    pub privacy: Option<PrivacyPlan>,
    encoded: Option<(Standardizer, Dataset, Dataset)>,
    /// A gbdt job's binned rows and margins.
    trees: Option<crate::trees::TreesCache>,
}

/// The values of one round's vector before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundValues {
    /// Update part (weighted, clipped model delta; empty outside training).
    pub update: Vec<f64>,
    /// Statistics part.
    pub stats: Vec<f64>,
}

impl JobContext {
    /// A context for an accepted job.
    pub fn new(spec: JobSpec, data: LocalData, privacy: Option<PrivacyPlan>) -> Self {
        Self {
            schema: FeatureSchema::from_spec(&spec),
            arch: Architecture::from_spec(&spec),
            spec,
            data,
            keyed: None,
            applied: None,
            privacy,
            encoded: None,
            trees: None,
        }
    }

    /// A context for an accepted job whose rows are filtered by consent each round; until
    /// [`JobContext::apply_consent`] is called no row is used.
    pub fn with_consent(spec: JobSpec, keyed: KeyedData, privacy: Option<PrivacyPlan>) -> Self {
        let schema = FeatureSchema::from_spec(&spec);
        let empty = LocalData {
            train: fedmark_core::features::RawRows::new(&schema),
            holdout: fedmark_core::features::RawRows::new(&schema),
            skipped: keyed.all.skipped.clone(),
        };
        let mut ctx = Self::new(spec, empty, privacy);
        ctx.keyed = Some(keyed);
        ctx
    }

    /// Training and holdout rows before any consent filter.
    pub fn rows_before_consent(&self) -> (usize, usize) {
        match &self.keyed {
            Some(k) => (k.all.train.len(), k.all.holdout.len()),
            None => (self.data.train.len(), self.data.holdout.len()),
        }
    }

    /// Whether rows are filtered by a consent snapshot.
    pub fn has_consent_source(&self) -> bool {
        self.keyed.is_some()
    }

    /// Uses, from now on, only the rows whose user is in `snapshot` (training, statistics and
    /// holdout evaluation alike). Without a consent source this changes nothing.
    pub fn apply_consent(&mut self, snapshot: &ConsentSnapshot) {
        if let Some(keyed) = &self.keyed
            && self.applied.as_deref() != Some(snapshot.hash.as_str())
        {
            self.data = keyed.consented(snapshot);
            self.encoded = None;
            self.trees = None;
            self.applied = Some(snapshot.hash.clone());
        }
    }

    /// Number of model parameters of the job.
    pub fn num_params(&self) -> usize {
        self.arch.num_params(self.schema.dim())
    }

    /// Statistics round: (count, sum, sum of squares) per numeric feature over training rows,
    /// then the usable rows (training and holdout) and the positives among them.
    pub fn statistics(&self) -> RoundValues {
        let mut stats: Vec<f64> = self.data.train.moments().into_iter().flatten().collect();
        let (train, holdout) = (&self.data.train, &self.data.holdout);
        let positives = |rows: &fedmark_core::features::RawRows| {
            rows.labels.iter().filter(|&&y| y > 0.5).count()
        };
        stats.push((train.len() + holdout.len()) as f64);
        stats.push((positives(train) + positives(holdout)) as f64);
        RoundValues {
            update: Vec::new(),
            stats,
        }
    }

    fn datasets(&mut self, standardizer: &Standardizer) -> (&Dataset, &Dataset) {
        let stale = self
            .encoded
            .as_ref()
            .is_none_or(|(s, _, _)| s != standardizer);
        if stale {
            let encode = |rows: &fedmark_core::features::RawRows| Dataset {
                x: self.schema.encode(rows, standardizer),
                y: rows.labels.clone(),
            };
            let train = encode(&self.data.train);
            let holdout = encode(&self.data.holdout);
            self.encoded = Some((standardizer.clone(), train, holdout));
        }
        match &self.encoded {
            Some((_, train, holdout)) => (train, holdout),
            None => unreachable!("encoded datasets were just set"),
        }
    }

    fn evaluate(&mut self, model: &Model, standardizer: &Standardizer) -> EvalStats {
        let bins = self.spec.histogram_bins() as usize;
        let (_, holdout) = self.datasets(standardizer);
        let scores = model.predict_all(&holdout.x);
        EvalStats::from_predictions(&scores, &holdout.y, bins)
    }

    /// Evaluation round: statistics of `model` on the holdout rows. In a `record` job they
    /// are released once, noised as [`fedmark_core::budget::noised_evaluation`] says, at the
    /// plan's evaluation noise. Under partner-level DP there is no evaluation round, and this
    /// refuses.
    pub fn evaluation<R: Rng + ?Sized>(
        &mut self,
        model: &Model,
        standardizer: &Standardizer,
        rng: &mut R,
    ) -> Result<RoundValues, String> {
        let privacy = self.privacy;
        if !self.spec.final_evaluation() {
            return Err("this job's privacy mode releases no holdout statistics".into());
        }
        let mut stats = Vec::new();
        match privacy.and_then(|p| p.evaluation_noise_std()) {
            Some(std) => {
                let bins = self.spec.histogram_bins() as usize;
                let (_, holdout) = self.datasets(standardizer);
                let scores = model.predict_all(&holdout.x);
                stats =
                    fedmark_core::budget::noised_evaluation(&scores, &holdout.y, bins, std, rng)
                        .map_err(|e| e.to_string())?;
            }
            None => {
                let eval = self.evaluate(model, standardizer);
                eval_stats_to_vec(&eval, &mut stats);
            }
        }
        Ok(RoundValues {
            update: Vec::new(),
            stats,
        })
    }

    /// Training round: evaluates the incoming global model, trains from it, and returns the
    /// clipped delta weighted by the (capped) number of training rows — or, under
    /// partner-level DP, the delta clipped to the privacy norm with unit weight.
    ///
    /// With an adaptive clip (`round_clip`, the round's announced norm), the delta is clipped
    /// to it and followed by one more value, the round's count coordinate
    /// `κ·(b − ½)` with `κ = 2ρ·round_clip` and b = 1 if the delta was within the clip
    /// ([`fedmark_core::budget::ADAPTIVE_COUNT_SHARE`]).
    pub fn training<R: Rng + ?Sized>(
        &mut self,
        global: &Model,
        standardizer: &Standardizer,
        round_clip: Option<f64>,
        rng: &mut R,
    ) -> Result<RoundValues, String> {
        // DP jobs release no holdout statistics while training (see `JobSpec`).
        let eval = self
            .spec
            .evaluates_in_training()
            .then(|| self.evaluate(global, standardizer));
        let cfg = LocalTraining::from_spec(&self.spec);
        let max_weight = f64::from(self.spec.training.max_weight);
        let privacy = self.privacy;
        let mut clip = self.spec.training.clip_norm;
        let (train, _) = self.datasets(standardizer);
        let mut local = global.clone();
        let mut weight = (train.len() as f64).min(max_weight);
        match privacy {
            Some(plan) if plan.mode == PrivacyMode::Record => {
                let dp = DpSgd {
                    q: plan.sampling_rate,
                    clip: plan.clip,
                    noise_multiplier: plan.noise_multiplier,
                };
                train_dp_sgd(&mut local, train, &cfg, &dp, rng).map_err(|e| e.to_string())?;
                // The weight is fixed by the spec, not the row count (which would leave un-noised).
                weight = 1.0;
            }
            Some(plan)
                if matches!(
                    plan.mode,
                    PrivacyMode::PartnerCentral | PrivacyMode::PartnerDistributed
                ) =>
            {
                train_local(&mut local, train, &cfg, rng);
                clip = match (plan.adaptive, round_clip) {
                    (Some(_), Some(c)) => c,
                    (Some(_), None) => return Err("an adaptive-clip round without its clip".into()),
                    (None, _) => plan.clip,
                };
                weight = 1.0;
            }
            _ => {
                train_local(&mut local, train, &cfg, rng);
            }
        }
        let mut update: Vec<f64> = local
            .params
            .iter()
            .zip(&global.params)
            .map(|(l, g)| l - g)
            .collect();
        let within = clip_l2(&mut update, clip) <= clip;
        update.iter_mut().for_each(|v| *v *= weight);
        if privacy.is_some_and(|p| p.adaptive.is_some()) {
            update.push(PrivacyPlan::count_value(clip, within));
        }
        let mut stats = vec![weight];
        if let Some(eval) = &eval {
            eval_stats_to_vec(eval, &mut stats);
        }
        Ok(RoundValues { update, stats })
    }
}

impl JobContext {
    /// What this partner sends in a round, before masking: the round's values
    /// ([`Self::statistics`], [`Self::training`] or [`Self::evaluation`]) encoded in the
    /// round's layout and, in a `partner-distributed` training round, with the partner's share
    /// of the round's Skellam noise. `seed` drives the shuffles and the stochastic rounding of
    /// a job without DP ([`training_seed`]); DP jobs draw from the operating system, so their
    /// noise is unpredictable to everyone.
    pub fn compute(&mut self, c: Computation, seed: u64) -> Result<Vec<u32>, String> {
        let mut rng = match self.privacy {
            Some(_) => StdRng::from_rng(&mut secret_rng()),
            None => StdRng::seed_from_u64(seed),
        };
        let (kind, layout) = (c.kind, c.layout);
        let model = Model {
            arch: self.arch,
            dim: self.schema.dim(),
            params: c.model,
        };
        // A DP job standardises with the spec's declared ranges, whatever the coordinator
        // sends: nothing measured on partners' data enters it.
        let standardizer = match self.spec.is_dp() {
            true => Standardizer::from_ranges(&self.schema)
                .ok_or("a DP job without declared feature ranges")?,
            false => c.standardizer,
        };
        if let Some(params) = self.spec.gbdt_params() {
            let mut job = crate::trees::TreesJob {
                spec: &self.spec,
                schema: &self.schema,
                data: &self.data,
                cache: &mut self.trees,
                privacy: self.privacy,
            };
            let stats = match kind {
                RoundKind::Statistics if self.spec.is_dp() => {
                    return Err("a DP job has no statistics round".into());
                }
                RoundKind::Statistics => crate::trees::statistics(&self.schema, &self.data)?,
                RoundKind::Training => job.level(
                    &params,
                    c.round.round,
                    &model.params,
                    layout.stats_len,
                    &mut rng,
                )?,
                RoundKind::Evaluation => job.evaluation(&model.params, &mut rng)?,
            };
            if stats.len() != layout.stats_len {
                return Err(format!(
                    "the round announces {} values; this partner computed {}",
                    layout.stats_len,
                    stats.len()
                ));
            }
            return Ok(layout.encode(&[], &stats, &mut rng));
        }
        let RoundValues { update, stats } = match kind {
            RoundKind::Statistics => self.statistics(),
            RoundKind::Training => self.training(&model, &standardizer, c.clip, &mut rng)?,
            RoundKind::Evaluation => self.evaluation(&model, &standardizer, &mut rng)?,
        };
        let mut words = layout.encode(&update, &stats, &mut rng);
        if kind == RoundKind::Training
            && let Some(plan) = self.privacy
            && plan.mode == PrivacyMode::PartnerDistributed
            && let Some(codec) = layout.update_codec
        {
            // The partner's share of the round's noise, added before masking; the threshold
            // is this partner's own computation, not the coordinator's word.
            let t = noise_threshold(&self.spec, c.cohort);
            let skellam = plan.skellam_round(
                codec.scale,
                layout.update_len,
                t,
                c.clip.unwrap_or(plan.clip),
            );
            add_skellam_noise(
                &mut words[..layout.update_len],
                skellam.mu_per_partner,
                &mut rng,
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(words)
    }
}

/// The seed of a round's training shuffles and stochastic rounding in a job without DP: a
/// function of the job's seed, the partner's own `seed` (if configured), its id, the job and
/// the round — never of the session, the attempt or the time — so the same spec, data and
/// seeds give the same model bit for bit, and a retried round computes the same update. (DP
/// jobs draw from the OS instead, see [`JobContext::compute`].)
pub fn training_seed(
    job_seed: u64,
    partner_seed: Option<u64>,
    partner: &str,
    job_id: &str,
    round: u64,
) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"fedmark training seed v1");
    h.update(job_seed.to_le_bytes());
    h.update(partner_seed.map_or([0u8; 9], |s| {
        let mut b = [1u8; 9];
        b[1..].copy_from_slice(&s.to_le_bytes());
        b
    }));
    for text in [partner, job_id] {
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(round.to_le_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmark_core::budget::EVAL_LOSS_CAP;
    use fedmark_core::features::RawRows;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn spec(mode: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\nrange = {{ a = [0.0, 10.0] }}\n[model]\nkind = \"logistic\"\n\
             [privacy]\nmode = \"{mode}\"\nepsilon = 4.0\n"
        ))
        .unwrap()
    }

    /// `rows` rows with a = i mod 10 and alternating labels, for training and holdout alike.
    fn context(spec: JobSpec, rows: usize) -> JobContext {
        let schema = FeatureSchema::from_spec(&spec);
        let mut train = RawRows::new(&schema);
        let mut holdout = RawRows::new(&schema);
        for i in 0..rows {
            train.push(&[(i % 10) as f64], &[], i % 2 == 0);
            holdout.push(&[(i % 10) as f64], &[], i % 3 == 0);
        }
        let plan = PrivacyPlan::from_spec(&spec).unwrap();
        JobContext::new(
            spec,
            LocalData {
                train,
                holdout,
                skipped: Default::default(),
            },
            plan,
        )
    }

    /// What a DP training round sends besides the noised update is the spec-fixed unit
    /// weight, whatever the partner's row count: no count, no holdout statistics.
    #[test]
    fn dp_training_rounds_send_only_the_fixed_weight() {
        for mode in ["record", "partner-central", "partner-distributed"] {
            for rows in [40, 400] {
                let mut ctx = context(spec(mode), rows);
                let std = Standardizer::from_ranges(&ctx.schema).unwrap();
                let model = Model::init(ctx.arch, ctx.schema.dim(), &mut StdRng::seed_from_u64(1));
                let values = ctx
                    .training(&model, &std, None, &mut StdRng::seed_from_u64(2))
                    .unwrap();
                assert_eq!(values.stats, vec![1.0], "{mode}, {rows} rows");
            }
        }
        // Without DP the weight is the (capped) row count, and holdout statistics follow.
        let plain = JobSpec {
            privacy: Default::default(),
            ..spec("record")
        };
        let mut ctx = context(plain, 40);
        let std = Standardizer::from_ranges(&ctx.schema).unwrap();
        let model = Model::init(ctx.arch, ctx.schema.dim(), &mut StdRng::seed_from_u64(1));
        let values = ctx
            .training(&model, &std, None, &mut StdRng::seed_from_u64(2))
            .unwrap();
        assert_eq!(values.stats[0], 40.0);
        assert!(values.stats.len() > 1);
    }

    /// A `record` job's evaluation statistics leave noised at the planned scale (the sample
    /// deviation over many draws against z · Δ, Δ = 2), as integers; the loss coordinate is
    /// the capped loss over the cap. Partner-level jobs release none.
    #[test]
    fn record_evaluation_is_noised_at_the_planned_scale() {
        let mut ctx = context(spec("record"), 200);
        let plan = ctx.privacy.unwrap();
        let expected = plan.evaluation_noise.unwrap() * fedmark_core::budget::EVAL_SENSITIVITY;
        assert_eq!(plan.evaluation_noise_std(), Some(expected));
        let std = Standardizer::from_ranges(&ctx.schema).unwrap();
        let model = Model::init(ctx.arch, ctx.schema.dim(), &mut StdRng::seed_from_u64(1));
        let bins = ctx.spec.histogram_bins() as usize;
        let exact = {
            let (_, holdout) = ctx.datasets(&std);
            let scores = model.predict_all(&holdout.x);
            let e = EvalStats::from_predictions_capped(&scores, &holdout.y, bins, EVAL_LOSS_CAP);
            let mut v = Vec::new();
            eval_stats_to_vec(&e, &mut v);
            v[2] /= EVAL_LOSS_CAP;
            v
        };
        let mut rng = StdRng::seed_from_u64(3);
        let draws = 400;
        let mut sq = vec![0.0; exact.len()];
        for _ in 0..draws {
            let v = ctx.evaluation(&model, &std, &mut rng).unwrap().stats;
            assert!(v.iter().all(|x| x.fract() == 0.0));
            for ((s, x), e) in sq.iter_mut().zip(&v).zip(&exact) {
                *s += (x - e).powi(2);
            }
        }
        for (k, s) in sq.iter().enumerate() {
            let sd = (s / draws as f64).sqrt();
            // Relative standard error of a 400-draw deviation ≈ 3.5 %; rounding adds ~0.3 %.
            assert!(
                (sd / expected - 1.0).abs() < 0.15,
                "stat {k}: {sd} vs {expected}"
            );
        }
        for mode in ["partner-central", "partner-distributed"] {
            let mut ctx = context(spec(mode), 50);
            assert!(ctx.evaluation(&model, &std, &mut rng).is_err(), "{mode}");
        }
    }
}
