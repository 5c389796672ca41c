//! The centralised trainer: the reference the federated trainer is checked against.
//!
//! It grows every tree with the two sides of [`super::grow`], the ones a federated job
//! distributes. For each tree:
//!
//! 1. every party computes the gradients and hessians of its rows (g = p − y, h = p(1 − p));
//! 2. depth-wise, one level at a time: the coordinator's [`TreeGrower`] says which nodes'
//!    histograms it needs, every party computes its level vector of those nodes
//!    ([`level_vector`], its rows routed by the tree so far), the vectors are summed (here:
//!    one party, so the sum is its vector), and the grower derives each larger sibling as
//!    parent − smaller sibling and picks the splits from these histograms alone.
//!
//! A leaf's weight comes from its node's sums (−G/(H+λ), times the learning rate), which the
//! coordinator knows from the parent's split, so the deepest level needs no histogram.
//!
//! Row subsampling draws each row into a tree's sample with probability `row_subsample` by a
//! hash of (seed, tree, row), and column subsampling keeps the `round(col_subsample · F)`
//! (at least 1) features of smallest hash of (seed, tree, feature): both deterministic for a
//! seed, with no generator state to share. Rows out of the sample still get the tree's output.
//! With validation rows the validation loss is recorded after each tree; with
//! `early_stopping_rounds`, training stops once it has not improved for that many trees and
//! the model keeps the trees up to the best one.

use super::bins::{BinnedRows, Feature};
use super::error::GbdtError;
use super::grow::{TreeGrower, level_vector};
use super::histogram::HistLayout;
use super::params::GbdtParams;
use super::tree::{GbdtModel, Tree};
use crate::model::{bce_from_logit, sigmoid};

/// What training did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainReport {
    /// Trees grown (before any early-stopping cut).
    pub grown: usize,
    /// Trees kept in the model.
    pub kept: usize,
    /// Mean log-loss of the training rows after each tree grown.
    pub train_loss: Vec<f64>,
    /// Mean log-loss of the validation rows after each tree grown (empty without them).
    pub valid_loss: Vec<f64>,
}

/// Early stopping on a validation loss, one rule for the centralised trainer and a federated
/// job: the model with `j` trees (j ≥ 1) has loss `L(j)`; the best model is the one with the
/// lowest loss (the fewest trees among equals, non-finite losses ignored), and training stops
/// once the model has `rounds` trees more than the best one.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopping {
    rounds: u32,
    best: Option<(f64, usize)>,
}

impl EarlyStopping {
    /// Stops after `rounds` trees without improvement.
    pub fn new(rounds: u32) -> Self {
        Self { rounds, best: None }
    }

    /// Records the loss of the model with `trees` trees; `Some(best)` (the trees to keep) once
    /// training should stop.
    pub fn observe(&mut self, trees: usize, loss: f64) -> Option<usize> {
        if loss.is_finite() && self.best.is_none_or(|(b, _)| loss < b) {
            self.best = Some((loss, trees));
        }
        let (_, at) = self.best?;
        (trees.saturating_sub(at) >= self.rounds as usize).then_some(at)
    }

    /// The lowest loss seen and the trees of its model.
    pub fn best(&self) -> Option<(f64, usize)> {
        self.best
    }
}

/// The prior log-odds of `positives` out of `count` rows (clamped away from 0 and 1): the
/// margin every row starts from. From two sums, so the federation can compute it securely.
pub fn base_margin(positives: f64, count: f64) -> f64 {
    if count.is_nan() || count <= 0.0 {
        return 0.0;
    }
    let p = (positives / count).clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// Gradients and hessians of log-loss at the given margins.
pub fn gradients(margins: &[f64], labels: &[f64], grad: &mut [f64], hess: &mut [f64]) {
    for (((&m, &y), g), h) in margins.iter().zip(labels).zip(grad).zip(hess) {
        let p = sigmoid(m);
        *g = p - y;
        *h = p * (1.0 - p);
    }
}

fn mean_loss(margins: &[f64], labels: &[f64]) -> f64 {
    let n = margins.len().max(1) as f64;
    margins
        .iter()
        .zip(labels)
        .map(|(&m, &y)| bce_from_logit(m, y))
        .sum::<f64>()
        / n
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from (seed, stream, tree, index).
fn uniform(seed: u64, stream: u64, tree: u64, index: u64) -> f64 {
    let z = mix(mix(mix(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ tree) ^ index);
    (z >> 11) as f64 / (1u64 << 53) as f64
}

const ROWS: u64 = 1;
const COLUMNS: u64 = 2;

/// Whether row `r` is in tree `t`'s sample.
pub fn in_row_sample(params: &GbdtParams, tree: usize, row: usize) -> bool {
    params.row_subsample >= 1.0
        || uniform(params.seed, ROWS, tree as u64, row as u64) < params.row_subsample
}

/// Which of `n` features tree `t` may split on.
pub fn column_sample(params: &GbdtParams, tree: usize, n: usize) -> Vec<bool> {
    if params.col_subsample >= 1.0 {
        return vec![true; n];
    }
    let k = ((params.col_subsample * n as f64).round() as usize).clamp(1.min(n), n);
    let mut order: Vec<(f64, usize)> = (0..n)
        .map(|f| (uniform(params.seed, COLUMNS, tree as u64, f as u64), f))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut allowed = vec![false; n];
    for &(_, f) in &order[..k] {
        allowed[f] = true;
    }
    allowed
}

/// Trains a model on binned rows (binned with `features`), with optional validation rows.
pub fn train(
    params: &GbdtParams,
    features: &[Feature],
    rows: &BinnedRows,
    valid: Option<&BinnedRows>,
) -> Result<(GbdtModel, TrainReport), GbdtError> {
    params.validate()?;
    rows.check_shape(features)?;
    if let Some(v) = valid {
        v.check_shape(features)?;
    }
    if rows.is_empty() {
        return Err(GbdtError::NoRows);
    }
    if params.early_stopping_rounds.is_some() && valid.is_none() {
        return Err(GbdtError::NoValidation);
    }
    let layout = HistLayout::new(features);
    let labels = rows.labels();
    let n = rows.len();
    let base = base_margin(labels.iter().sum(), n as f64);
    let mut margin = vec![base; n];
    let mut valid_margin: Vec<f64> = valid.map_or_else(Vec::new, |v| vec![base; v.len()]);
    let (mut grad, mut hess) = (vec![0.0; n], vec![0.0; n]);
    let mut trees = Vec::new();
    let mut report = TrainReport::default();
    let mut stopping = params.early_stopping_rounds.map(EarlyStopping::new);
    for t in 0..params.trees as usize {
        gradients(&margin, labels, &mut grad, &mut hess);
        let sampled: Vec<bool> = (0..n).map(|r| in_row_sample(params, t, r)).collect();
        let allowed = column_sample(params, t, features.len());
        let tree = grow_tree(
            params, features, &layout, rows, &grad, &hess, &sampled, &allowed,
        )?;
        for (r, m) in margin.iter_mut().enumerate() {
            *m += tree.predict(rows.row(r));
        }
        report.train_loss.push(mean_loss(&margin, labels));
        trees.push(tree);
        let Some(v) = valid else { continue };
        let tree = &trees[t];
        for (r, m) in valid_margin.iter_mut().enumerate() {
            *m += tree.predict(v.row(r));
        }
        let loss = mean_loss(&valid_margin, v.labels());
        report.valid_loss.push(loss);
        if let Some(s) = &mut stopping
            && s.observe(t + 1, loss).is_some()
        {
            break;
        }
    }
    report.grown = trees.len();
    let mut model = GbdtModel::new(features.to_vec(), base, trees);
    if let Some((_, at)) = stopping.as_ref().and_then(EarlyStopping::best) {
        model.truncate(at);
    }
    report.kept = model.trees().len();
    Ok((model, report))
}

/// Grows one tree with the two sides of [`super::grow`]: one party (so the sum is its level
/// vector) and the coordinator's [`TreeGrower`].
#[allow(clippy::too_many_arguments)]
fn grow_tree(
    params: &GbdtParams,
    features: &[Feature],
    layout: &HistLayout,
    rows: &BinnedRows,
    grad: &[f64],
    hess: &[f64],
    sampled: &[bool],
    allowed: &[bool],
) -> Result<Tree, GbdtError> {
    let mut grower = TreeGrower::new(params, features, allowed.to_vec())?;
    while let Some(build) = grower.request() {
        let summed = level_vector(
            layout,
            rows,
            &grower.partial(),
            build,
            |r| sampled[r],
            grad,
            hess,
        )?;
        grower.absorb(&summed)?;
    }
    grower.finish()
}
