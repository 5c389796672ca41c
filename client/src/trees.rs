//! What a partner computes in the rounds of a boosted-trees job, from its own records: no I/O.
//!
//! - **Statistics** (round 0): each numeric column's counts on a fine grid over its declared
//!   range ([`fedmark_core::gbdt::plan::SKETCH_CELLS`] cells; the coordinator derives the
//!   global bin edges from their sum, so no partner's quantiles are revealed), then the usable
//!   rows and the positives among them. A DP job has no such round.
//! - **A tree level**: the round's [`RoundState`] (the model so far, the tree being grown, the
//!   nodes asked for) is read back checked against the job's schema and the round's place in
//!   the plan; the partner's margins come from the model's trees, its gradients from them, and
//!   its vector is the level's histogram blocks ([`level_vector`]), preceded on a tree's first
//!   level (jobs without DP) by the holdout's evaluation statistics of the incoming model. In a
//!   `record` job the histograms leave with Gaussian noise at the plan's scale, rounded.
//! - **Final evaluation**: the holdout's statistics of the model (noised in a `record` job).
//!
//! Binned rows and margins are cached: rows are binned once per set of edges, and margins are
//! extended tree by tree while the model's trees extend the ones already applied (checked by
//! value, so a coordinator that rewrites an earlier tree gets margins recomputed, never stale
//! ones).

use fedmark_core::aggregate::eval_stats_to_vec;
use fedmark_core::budget::PrivacyPlan;
use fedmark_core::dp::add_gaussian_noise;
use fedmark_core::features::{FeatureSchema, RawRows};
use fedmark_core::gbdt::plan::{SKETCH_CELLS, asks_again, tree_and_level};
use fedmark_core::gbdt::train::{gradients, in_row_sample};
use fedmark_core::gbdt::{
    BinnedRows, Feature, GbdtModel, GbdtParams, HistLayout, PartialNode, PartialTree, RoundState,
    Tree, level_vector,
};
use fedmark_core::metrics::EvalStats;
use fedmark_core::model::sigmoid;
use fedmark_core::spec::{JobSpec, PrivacyMode};
use rand::Rng;

use crate::data::LocalData;

/// Binned rows and the margins of the trees applied so far.
#[derive(Debug)]
pub struct TreesCache {
    features: Vec<Feature>,
    train: BinnedRows,
    holdout: BinnedRows,
    base: f64,
    trees: Vec<Tree>,
    train_margins: Vec<f64>,
    holdout_margins: Vec<f64>,
}

fn positives(rows: &RawRows) -> usize {
    rows.labels.iter().filter(|&&y| y > 0.5).count()
}

/// The statistics round's values: the sketches, then usable rows and positives.
pub fn statistics(schema: &FeatureSchema, data: &LocalData) -> Result<Vec<f64>, String> {
    let grids = Feature::sketch_grids(schema, SKETCH_CELLS).map_err(|e| e.to_string())?;
    let mut out = Feature::sketch(&data.train, &grids);
    out.push((data.train.len() + data.holdout.len()) as f64);
    out.push((positives(&data.train) + positives(&data.holdout)) as f64);
    Ok(out)
}

/// The depth of every node of a partial tree (children come after their parents).
fn depths(tree: &PartialTree) -> Vec<u32> {
    let mut depth = vec![0u32; tree.nodes().len()];
    for (i, node) in tree.nodes().iter().enumerate() {
        if let PartialNode::Split { left, right, .. } = node {
            let below = depth[i] + 1;
            for c in [*left, *right] {
                if let Some(d) = depth.get_mut(c as usize) {
                    *d = below;
                }
            }
        }
    }
    depth
}

impl TreesCache {
    /// The cache for `model`'s edges and trees, reusing `old` where it still applies.
    fn refresh(old: Option<Self>, model: &GbdtModel, data: &LocalData) -> Result<Self, String> {
        let mut cache = match old {
            Some(c) if c.features == model.features() && c.base == model.base_margin() => c,
            _ => {
                let bin = |rows: &RawRows| {
                    BinnedRows::from_raw(rows, model.features()).map_err(|e| e.to_string())
                };
                let (train, holdout) = (bin(&data.train)?, bin(&data.holdout)?);
                let base = model.base_margin();
                Self {
                    features: model.features().to_vec(),
                    train_margins: vec![base; train.len()],
                    holdout_margins: vec![base; holdout.len()],
                    train,
                    holdout,
                    base,
                    trees: Vec::new(),
                }
            }
        };
        let trees = model.trees();
        let extends = trees.len() >= cache.trees.len() && trees[..cache.trees.len()] == cache.trees;
        if !extends {
            cache.train_margins.fill(cache.base);
            cache.holdout_margins.fill(cache.base);
            cache.trees.clear();
        }
        // Tree by tree, as the model's own margins add them.
        for tree in &trees[cache.trees.len()..] {
            let one = GbdtModel::from_parts(model.features().to_vec(), 0.0, vec![tree.clone()])
                .map_err(|e| e.to_string())?;
            for (rows, margins) in [
                (&cache.train, &mut cache.train_margins),
                (&cache.holdout, &mut cache.holdout_margins),
            ] {
                let add = one.predict_margin_binned(rows).map_err(|e| e.to_string())?;
                margins.iter_mut().zip(add).for_each(|(m, a)| *m += a);
            }
            cache.trees.push(tree.clone());
        }
        Ok(cache)
    }

    fn evaluation(&self, bins: usize) -> Vec<f64> {
        let scores: Vec<f64> = self.holdout_margins.iter().map(|&m| sigmoid(m)).collect();
        let eval = EvalStats::from_predictions(&scores, self.holdout.labels(), bins);
        let mut out = Vec::new();
        eval_stats_to_vec(&eval, &mut out);
        out
    }
}

/// A partner's job as the rounds of a boosted-trees job need it.
pub struct TreesJob<'a> {
    /// The accepted spec.
    pub spec: &'a JobSpec,
    /// Its input layout.
    pub schema: &'a FeatureSchema,
    /// The partner's rows for the round.
    pub data: &'a LocalData,
    /// Binned rows and margins kept between rounds.
    pub cache: &'a mut Option<TreesCache>,
    /// The job's privacy plan (`record`: every level vector and the final evaluation leave
    /// noised).
    pub privacy: Option<PrivacyPlan>,
}

impl TreesJob<'_> {
    /// A tree level's values (see the module doc). `stats_len` is what the round announced; the
    /// state must ask for exactly that.
    pub fn level<R: Rng + ?Sized>(
        &mut self,
        params: &GbdtParams,
        round: u64,
        words: &[f64],
        stats_len: usize,
        rng: &mut R,
    ) -> Result<Vec<f64>, String> {
        let (spec, schema, data) = (self.spec, self.schema, self.data);
        let cache = &mut *self.cache;
        let state = RoundState::from_words(words, schema).map_err(|e| e.to_string())?;
        let (tree, lvl) = tree_and_level(params, round)
            .ok_or_else(|| format!("round {round} is not a level round of this job"))?;
        if state.model.trees().len() != tree as usize {
            return Err(format!(
                "round {round} grows tree {} but its model holds {} trees",
                tree + 1,
                state.model.trees().len()
            ));
        }
        if lvl == 0 && asks_again(params, round) {
            return Err(format!(
                "round {round} asks for a tree's root level a second time"
            ));
        }
        let depth = depths(&state.tree);
        if let Some(n) = state
            .build
            .iter()
            .find(|&&n| depth.get(n as usize) != Some(&lvl))
        {
            return Err(format!(
                "round {round} grows level {lvl} but asks for node {n}, which is not at that depth"
            ));
        }
        let fresh = TreesCache::refresh(cache.take(), &state.model, data)?;
        let c = cache.insert(fresh);
        let layout = HistLayout::new(&c.features);
        let bins = spec.histogram_bins() as usize;
        let mut out = if lvl == 0 && spec.evaluates_in_training() {
            c.evaluation(bins)
        } else {
            Vec::new()
        };
        let expected = out.len() + state.build.len() * layout.node_len();
        if expected != stats_len {
            return Err(format!(
                "the round announces {stats_len} values; its state asks for {expected}"
            ));
        }
        let n = c.train.len();
        let (mut g, mut h) = (vec![0.0; n], vec![0.0; n]);
        gradients(&c.train_margins, c.train.labels(), &mut g, &mut h);
        let mut hist = level_vector(
            &layout,
            &c.train,
            &state.tree,
            &state.build,
            |r| in_row_sample(params, tree as usize, r),
            &g,
            &h,
        )
        .map_err(|e| e.to_string())?;
        if let Some(plan) = self.privacy {
            // One record moves this vector by at most the plan's sensitivity in L2, whatever
            // the state shows (its rows' g and h are bounded by the loss, and it lands in one
            // bin of each feature of one node): the Gaussian release of record-level DP,
            // rounded to integers before it leaves.
            let sensitivity = fedmark_core::budget::gbdt_level_sensitivity(spec);
            if plan.mode != PrivacyMode::Record || plan.clip != sensitivity {
                return Err("a boosted-trees job's plan that is not record-level DP".into());
            }
            add_gaussian_noise(&mut hist, plan.noise_multiplier, sensitivity, rng)
                .map_err(|e| e.to_string())?;
            hist.iter_mut().for_each(|v| *v = v.round());
        }
        out.extend(hist);
        Ok(out)
    }

    /// The final evaluation's values: the holdout's statistics of the round's model (in a
    /// `record` job noised as [`fedmark_core::budget::noised_evaluation`] releases them).
    pub fn evaluation<R: Rng + ?Sized>(
        &mut self,
        words: &[f64],
        rng: &mut R,
    ) -> Result<Vec<f64>, String> {
        let (spec, schema, data) = (self.spec, self.schema, self.data);
        let cache = &mut *self.cache;
        let state = RoundState::from_words(words, schema).map_err(|e| e.to_string())?;
        if !state.build.is_empty() {
            return Err("an evaluation round that asks for histograms".into());
        }
        let fresh = TreesCache::refresh(cache.take(), &state.model, data)?;
        let c = cache.insert(fresh);
        let bins = spec.histogram_bins() as usize;
        match self.privacy.and_then(|p| p.evaluation_noise_std()) {
            Some(std) => {
                let scores: Vec<f64> = c.holdout_margins.iter().map(|&m| sigmoid(m)).collect();
                fedmark_core::budget::noised_evaluation(&scores, c.holdout.labels(), bins, std, rng)
                    .map_err(|e| e.to_string())
            }
            None if spec.is_dp() => {
                Err("this job's privacy mode releases no holdout statistics".into())
            }
            None => Ok(c.evaluation(bins)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmark_core::gbdt::plan::level_round;
    use fedmark_core::gbdt::train::train;
    use fedmark_core::gbdt::{PartialNode, PartialTree};
    use fedmark_core::spec::JobSpec;
    use rand::SeedableRng;

    fn spec() -> JobSpec {
        JobSpec::from_toml(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\ncategorical = [\"c\"]\nrange = { a = [0.0, 1.0] }\n\
             vocabulary = { c = [\"u\", \"v\"] }\n[model]\nkind = \"gbdt\"\n[model.gbdt]\nmax_depth = 3\nmax_bins = 8\n",
        )
        .unwrap()
    }

    fn data(schema: &FeatureSchema) -> LocalData {
        let (mut train, mut holdout) = (RawRows::new(schema), RawRows::new(schema));
        for i in 0..300u32 {
            let a = f64::from(i % 50) / 50.0;
            train.push(&[a], &[i % 3], a > 0.5 || i % 3 == 1);
            holdout.push(&[a], &[(i + 1) % 3], a > 0.4);
        }
        LocalData {
            train,
            holdout,
            skipped: Default::default(),
        }
    }

    /// A coordinator that shows a state out of step with the round is refused: nodes of
    /// another depth, a model with the wrong number of trees, the root asked for twice, or a
    /// vector length other than the state asks for. The honest state is answered.
    #[test]
    fn a_state_out_of_step_with_the_round_is_refused() {
        let spec = spec();
        let params = spec.gbdt_params().unwrap();
        let schema = FeatureSchema::from_spec(&spec);
        let data = data(&schema);
        let features = Feature::from_ranges(&schema, 8).unwrap();
        let layout = HistLayout::new(&features);
        let empty = GbdtModel::from_parts(features.clone(), 0.0, Vec::new()).unwrap();
        let mut cache = None;
        let mut job = TreesJob {
            spec: &spec,
            schema: &schema,
            data: &data,
            cache: &mut cache,
            privacy: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let eval = fedmark_core::aggregate::eval_stats_len(spec.histogram_bins() as usize);
        let root = RoundState {
            model: empty.clone(),
            tree: PartialTree::root(),
            build: vec![0],
        };
        let r1 = level_round(&params, 0, 0, false);
        let honest = job.level(
            &params,
            r1,
            &root.to_words(),
            eval + layout.node_len(),
            &mut rng,
        );
        assert_eq!(honest.unwrap().len(), eval + layout.node_len());
        assert!(
            job.level(&params, r1, &root.to_words(), layout.node_len(), &mut rng)
                .is_err()
        );
        let again = level_round(&params, 0, 0, true);
        assert!(
            job.level(
                &params,
                again,
                &root.to_words(),
                eval + layout.node_len(),
                &mut rng
            )
            .is_err()
        );
        // The root at the round of level 1.
        let r3 = level_round(&params, 0, 1, false);
        assert!(
            job.level(&params, r3, &root.to_words(), layout.node_len(), &mut rng)
                .is_err()
        );
        // Tree 2's first round with a model of no tree.
        let tree2 = level_round(&params, 1, 0, false);
        let err = job
            .level(
                &params,
                tree2,
                &root.to_words(),
                eval + layout.node_len(),
                &mut rng,
            )
            .unwrap_err();
        assert!(err.contains("holds 0 trees"), "{err}");
        // Level 1 with a split root: its children are at depth 1 and may be asked for.
        let split = PartialTree::from_nodes(
            vec![
                PartialNode::Split {
                    feature: 0,
                    rule: fedmark_core::gbdt::SplitRule::Numeric {
                        bin: 3,
                        threshold: 0.5,
                    },
                    left: 1,
                    right: 2,
                },
                PartialNode::Open,
                PartialNode::Open,
            ],
            &features,
        )
        .unwrap();
        let level1 = RoundState {
            model: empty,
            tree: split,
            build: vec![1, 2],
        };
        let out = job
            .level(
                &params,
                r3,
                &level1.to_words(),
                2 * layout.node_len(),
                &mut rng,
            )
            .unwrap();
        // Both children's counts add up to the sampled rows.
        let count: f64 = out.iter().skip(2).step_by(3).take(8).sum::<f64>()
            + out[layout.node_len()..]
                .iter()
                .skip(2)
                .step_by(3)
                .take(8)
                .sum::<f64>();
        assert_eq!(count, 300.0);
        // A model with a tree that the next level's round claims not to have.
        let binned = BinnedRows::from_raw(&data.train, &features).unwrap();
        let (one, _) = train(
            &GbdtParams {
                trees: 1,
                ..params.clone()
            },
            &features,
            &binned,
            None,
        )
        .unwrap();
        let with_one = RoundState {
            model: one,
            tree: PartialTree::root(),
            build: vec![0],
        };
        assert!(
            job.level(
                &params,
                r1,
                &with_one.to_words(),
                eval + layout.node_len(),
                &mut rng
            )
            .is_err()
        );
        assert!(
            job.level(
                &params,
                tree2,
                &with_one.to_words(),
                eval + layout.node_len(),
                &mut rng
            )
            .is_ok()
        );
    }
}

#[cfg(test)]
mod dp_tests {
    use super::*;
    use fedmark_core::gbdt::PartialTree;
    use fedmark_core::gbdt::plan::{level_round, planned_rounds};
    use rand::SeedableRng;

    fn dp_spec() -> JobSpec {
        JobSpec::from_toml(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\ncategorical = [\"c\"]\nrange = { a = [0.0, 1.0] }\n\
             vocabulary = { c = [\"u\", \"v\"] }\n[model]\nkind = \"gbdt\"\n[model.gbdt]\nmax_depth = 3\nmax_bins = 64\n\
             [privacy]\nmode = \"record\"\nepsilon = 1.0\n",
        )
        .unwrap()
    }

    fn data(schema: &FeatureSchema) -> LocalData {
        let (mut train, mut holdout) = (RawRows::new(schema), RawRows::new(schema));
        for i in 0..400u32 {
            let a = f64::from(i) / 400.0;
            train.push(&[a], &[i % 3], a > 0.5);
            holdout.push(&[a], &[(i + 1) % 3], a > 0.4);
        }
        LocalData {
            train,
            holdout,
            skipped: Default::default(),
        }
    }

    /// In a record-level DP job each level vector leaves with Gaussian noise of standard
    /// deviation z·S (S the vector's sensitivity, z the plan's multiplier) on every value,
    /// rounded to integers: the difference of two computations of one level has standard
    /// deviation √2·z·S and mean 0 (checked on its 201 × 2 values to within 15 % and 4
    /// standard errors), and the exact histogram is not what leaves. Removing the noise
    /// fails this test.
    #[test]
    fn a_dp_level_vector_leaves_noised_at_the_planned_scale() {
        let spec = dp_spec();
        let params = spec.gbdt_params().unwrap();
        let plan = PrivacyPlan::from_spec(&spec).unwrap().unwrap();
        let schema = FeatureSchema::from_spec(&spec);
        let data = data(&schema);
        let features = Feature::from_ranges(&schema, 64).unwrap();
        let layout = HistLayout::new(&features);
        let empty = GbdtModel::from_parts(features.clone(), 0.0, Vec::new()).unwrap();
        let root = RoundState {
            model: empty,
            tree: PartialTree::root(),
            build: vec![0],
        };
        let r1 = level_round(&params, 0, 0, false);
        let mut runs = Vec::new();
        for (seed, privacy) in [(1, Some(plan)), (2, Some(plan)), (3, None)] {
            let mut cache = None;
            let mut job = TreesJob {
                spec: &spec,
                schema: &schema,
                data: &data,
                cache: &mut cache,
                privacy,
            };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            runs.push(
                job.level(&params, r1, &root.to_words(), layout.node_len(), &mut rng)
                    .unwrap(),
            );
        }
        let (a, b, exact) = (&runs[0], &runs[1], &runs[2]);
        assert!(a.iter().all(|v| v.fract() == 0.0), "rounded to integers");
        let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let n = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / n;
        let sd = (diffs.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / (n - 1.0)).sqrt();
        let want = std::f64::consts::SQRT_2 * plan.noise_multiplier * plan.clip;
        assert!(plan.noise_multiplier > 1.0, "{plan:?}");
        assert!((sd / want - 1.0).abs() < 0.15, "sd {sd}, planned {want}");
        assert!(mean.abs() < 4.0 * want / n.sqrt(), "mean {mean}");
        let off: f64 = a.iter().zip(exact).map(|(x, e)| (x - e).abs()).sum::<f64>() / n;
        assert!(off > 0.5 * plan.noise_multiplier * plan.clip, "{off}");
    }

    /// A DP job's partner releases nothing but its plan: no statistics round (no sketch, no
    /// label counts), no level round past trees × depth (where a job without DP has its
    /// "again" rounds), and a final evaluation only noised.
    #[test]
    fn a_dp_partner_refuses_what_its_plan_does_not_release() {
        let spec = dp_spec();
        let params = spec.gbdt_params().unwrap();
        let plan = PrivacyPlan::from_spec(&spec).unwrap().unwrap();
        let schema = FeatureSchema::from_spec(&spec);
        let data = data(&schema);
        let features = Feature::from_ranges(&schema, 64).unwrap();
        let layout = HistLayout::new(&features);
        let empty = GbdtModel::from_parts(features, 0.0, Vec::new()).unwrap();
        let root = RoundState {
            model: empty.clone(),
            tree: PartialTree::root(),
            build: vec![0],
        };
        let mut cache = None;
        let mut job = TreesJob {
            spec: &spec,
            schema: &schema,
            data: &data,
            cache: &mut cache,
            privacy: Some(plan),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        assert_eq!(planned_rounds(&params), 9);
        let past = planned_rounds(&params) + 1;
        let err = job
            .level(&params, past, &root.to_words(), layout.node_len(), &mut rng)
            .unwrap_err();
        assert!(err.contains("not a level round"), "{err}");
        let final_state = RoundState {
            model: empty,
            tree: PartialTree::root(),
            build: Vec::new(),
        };
        let eval = job.evaluation(&final_state.to_words(), &mut rng).unwrap();
        assert!(eval.iter().all(|v| v.fract() == 0.0), "noised and rounded");
        let mut ctx = crate::contribution::JobContext::new(spec.clone(), data, Some(plan));
        let c = crate::participant::Computation {
            round: fedmark_proto::RoundRef {
                job_id: "j".into(),
                round: 0,
                attempt: 0,
            },
            kind: fedmark_core::aggregate::RoundKind::Statistics,
            layout: fedmark_core::aggregate::RoundKind::Statistics
                .layout(&spec, 0, 3)
                .unwrap(),
            model: Vec::new(),
            standardizer: fedmark_core::features::Standardizer {
                mean: vec![0.0],
                std: vec![1.0],
            },
            clip: None,
            cohort: 3,
        };
        let err = ctx.compute(c, 0).unwrap_err();
        assert!(err.contains("no statistics round"), "{err}");
    }
}
