//! What a partner computes for each round, from its own records: no I/O, no network.
//!
//! The protocol driver ([`crate::node`]) hands in the global model and the federated
//! standardisation; this module evaluates, trains, clips and weights, and returns the values
//! of the round's vector (see [`fedmark_core::aggregate`]). Encoding and masking happen after.

use fedmark_core::aggregate::eval_stats_to_vec;
use fedmark_core::budget::PrivacyPlan;
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::matrix::Dataset;
use fedmark_core::metrics::EvalStats;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::spec::JobSpec;
use fedmark_core::spec::PrivacyMode;
use fedmark_core::train::{DpSgd, LocalTraining, clip_l2, train_dp_sgd, train_local};
use rand::Rng;

use crate::consent::ConsentSnapshot;
use crate::data::{KeyedData, LocalData};

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
            self.applied = Some(snapshot.hash.clone());
        }
    }

    /// Number of model parameters of the job.
    pub fn num_params(&self) -> usize {
        self.arch.num_params(self.schema.dim())
    }

    /// Statistics round: (count, sum, sum of squares) per numeric feature over training rows.
    pub fn statistics(&self) -> RoundValues {
        RoundValues {
            update: Vec::new(),
            stats: self.data.train.moments().into_iter().flatten().collect(),
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
        let bins = self.spec.evaluation.histogram_bins as usize;
        let (_, holdout) = self.datasets(standardizer);
        let scores = model.predict_all(&holdout.x);
        EvalStats::from_predictions(&scores, &holdout.y, bins)
    }

    /// Evaluation round: statistics of `model` on the holdout rows.
    pub fn evaluation(&mut self, model: &Model, standardizer: &Standardizer) -> RoundValues {
        let eval = self.evaluate(model, standardizer);
        let mut stats = Vec::new();
        eval_stats_to_vec(&eval, &mut stats);
        RoundValues {
            update: Vec::new(),
            stats,
        }
    }

    /// Training round: evaluates the incoming global model, trains from it, and returns the
    /// clipped delta weighted by the (capped) number of training rows — or, under
    /// partner-level DP, the delta clipped to the privacy norm with unit weight.
    pub fn training<R: Rng + ?Sized>(
        &mut self,
        global: &Model,
        standardizer: &Standardizer,
        rng: &mut R,
    ) -> Result<RoundValues, String> {
        let eval = self.evaluate(global, standardizer);
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
            }
            Some(plan)
                if matches!(
                    plan.mode,
                    PrivacyMode::PartnerCentral | PrivacyMode::PartnerDistributed
                ) =>
            {
                train_local(&mut local, train, &cfg, rng);
                clip = plan.clip;
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
        clip_l2(&mut update, clip);
        update.iter_mut().for_each(|v| *v *= weight);
        let mut stats = vec![weight];
        eval_stats_to_vec(&eval, &mut stats);
        Ok(RoundValues { update, stats })
    }
}
