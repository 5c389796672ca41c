//! What a partner computes in the rounds of a boosted-trees job, from its own records: no I/O.
//!
//! - **Statistics** (round 0): each numeric column's counts on a fine grid over its declared
//!   range ([`fedmark_core::gbdt::plan::SKETCH_CELLS`] cells; the coordinator derives the
//!   global bin edges from their sum, so no partner's quantiles are revealed), then the usable
//!   rows and the positives among them.
//! - **A tree level**: the round's [`RoundState`] (the model so far, the tree being grown, the
//!   nodes asked for) is read back checked against the job's schema and the round's place in
//!   the plan; the partner's margins come from the model's trees, its gradients from them, and
//!   its vector is the level's histogram blocks ([`level_vector`]), preceded on a tree's first
//!   level (jobs without DP) by the holdout's evaluation statistics of the incoming model.
//! - **Final evaluation**: the holdout's statistics of the model.
//!
//! Binned rows and margins are cached: rows are binned once per set of edges, and margins are
//! extended tree by tree while the model's trees extend the ones already applied (checked by
//! value, so a coordinator that rewrites an earlier tree gets margins recomputed, never stale
//! ones).

use fedmark_core::aggregate::eval_stats_to_vec;
use fedmark_core::features::{FeatureSchema, RawRows};
use fedmark_core::gbdt::plan::{SKETCH_CELLS, tree_and_level};
use fedmark_core::gbdt::train::{gradients, in_row_sample};
use fedmark_core::gbdt::{
    BinnedRows, Feature, GbdtModel, GbdtParams, HistLayout, PartialNode, PartialTree, RoundState,
    Tree, level_vector,
};
use fedmark_core::metrics::EvalStats;
use fedmark_core::model::sigmoid;
use fedmark_core::spec::JobSpec;

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
}

impl TreesJob<'_> {
    /// A tree level's values (see the module doc). `stats_len` is what the round announced; the
    /// state must ask for exactly that.
    pub fn level(
        &mut self,
        params: &GbdtParams,
        round: u64,
        words: &[f64],
        stats_len: usize,
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
        let hist = level_vector(
            &layout,
            &c.train,
            &state.tree,
            &state.build,
            |r| in_row_sample(params, tree as usize, r),
            &g,
            &h,
        )
        .map_err(|e| e.to_string())?;
        out.extend(hist);
        Ok(out)
    }

    /// The final evaluation's values: the holdout's statistics of the round's model.
    pub fn evaluation(&mut self, words: &[f64]) -> Result<Vec<f64>, String> {
        let (spec, schema, data) = (self.spec, self.schema, self.data);
        let cache = &mut *self.cache;
        let state = RoundState::from_words(words, schema).map_err(|e| e.to_string())?;
        if !state.build.is_empty() {
            return Err("an evaluation round that asks for histograms".into());
        }
        let fresh = TreesCache::refresh(cache.take(), &state.model, data)?;
        Ok(cache
            .insert(fresh)
            .evaluation(spec.histogram_bins() as usize))
    }
}
