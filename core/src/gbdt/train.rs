//! The centralised trainer: the reference the federated trainer will be checked against.
//!
//! It is built from exactly the steps the federated protocol distributes, and keeps the two
//! sides apart so the later split is mechanical. For each tree:
//!
//! 1. every party computes the gradients and hessians of its rows (g = p − y, h = p(1 − p));
//! 2. depth-wise, one level at a time: the coordinator plans the level from what it already
//!    knows (which open nodes may still split, and for each pair of siblings which one is
//!    smaller, from the parent split's counts), every party computes the level vector of the
//!    nodes asked for ([`HistLayout::level_histograms`]), the vectors are summed (here: one
//!    party, so the sum is its vector), and the coordinator derives each larger sibling as
//!    parent − smaller sibling and picks the splits from these histograms alone
//!    ([`best_split`]); within a level the best splits are kept first while the leaf budget
//!    lasts;
//! 3. every party routes its rows of the split nodes to their children by their bins.
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
use super::histogram::{HistLayout, NO_NODE, NodeStats, subtract};
use super::params::GbdtParams;
use super::split::{Split, SplitSettings, best_split, leaf_weight};
use super::tree::{GbdtModel, Node, Tree};
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
    let mut best: Option<(f64, usize)> = None;
    for t in 0..params.trees as usize {
        gradients(&margin, labels, &mut grad, &mut hess);
        let node_of_row: Vec<u32> = (0..n)
            .map(|r| {
                if in_row_sample(params, t, r) {
                    0
                } else {
                    NO_NODE
                }
            })
            .collect();
        let allowed = column_sample(params, t, features.len());
        let tree = grow_tree(
            params,
            features,
            &layout,
            rows,
            &grad,
            &hess,
            node_of_row,
            &allowed,
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
        if best.is_none_or(|(b, _)| loss < b) {
            best = Some((loss, t));
        }
        if let (Some(rounds), Some((_, at))) = (params.early_stopping_rounds, best)
            && t - at >= rounds as usize
        {
            break;
        }
    }
    report.grown = trees.len();
    let mut model = GbdtModel::new(features.to_vec(), base, trees);
    if let (Some(_), Some((_, at))) = (params.early_stopping_rounds, best) {
        model.truncate(at + 1);
    }
    report.kept = model.trees().len();
    Ok((model, report))
}

/// The coordinator's record of a node while its tree grows.
#[derive(Debug, Clone)]
enum Draft {
    /// Not decided yet; its sums are known from the parent's split (not for the root).
    Open {
        stats: Option<NodeStats>,
        parent: Option<usize>,
        sibling: Option<usize>,
    },
    Split {
        split: Split,
        left: usize,
        right: usize,
        cover: f64,
    },
    Leaf {
        value: f64,
        cover: f64,
    },
}

/// A level's plan: the nodes that may split, and how each one's histogram is obtained.
struct LevelPlan {
    /// Open nodes that may split, ascending.
    candidates: Vec<usize>,
    /// Nodes whose histograms the parties compute (ascending): the level vector's blocks.
    build: Vec<u32>,
}

/// Whether an open node can hold a split at all: both children need `min_child_weight` and
/// a row. The root's sums are not known before its histogram, so it is always a candidate.
fn may_split(stats: Option<NodeStats>, params: &GbdtParams) -> bool {
    stats.is_none_or(|s| s.h >= 2.0 * params.min_child_weight && s.count >= 1.5)
}

fn plan_level(drafts: &[Draft], level: &[usize], params: &GbdtParams) -> LevelPlan {
    let open = |n: usize| match &drafts[n] {
        Draft::Open {
            stats,
            parent,
            sibling,
        } => Some((*stats, *parent, *sibling)),
        _ => None,
    };
    let candidates: Vec<usize> = level
        .iter()
        .copied()
        .filter(|&n| open(n).is_some_and(|(s, _, _)| may_split(s, params)))
        .collect();
    let is_candidate = |n: usize| candidates.binary_search(&n).is_ok();
    let count = |n: usize| open(n).and_then(|(s, _, _)| s).map_or(0.0, |s| s.count);
    let build = candidates
        .iter()
        .copied()
        .filter(|&n| match open(n).and_then(|(_, _, sib)| sib) {
            // Both siblings open: build the smaller (the left one on a tie), derive the other.
            Some(sib) if is_candidate(sib) => {
                count(n).total_cmp(&count(sib)).then(n.cmp(&sib)).is_lt()
            }
            _ => true,
        })
        .map(|n| n as u32)
        .collect();
    LevelPlan { candidates, build }
}

/// Grows one tree depth-wise. `node_of_row` is the parties' state (which node each sampled
/// row is in); everything else the coordinator decides from summed histograms.
#[allow(clippy::too_many_arguments)]
fn grow_tree(
    params: &GbdtParams,
    features: &[Feature],
    layout: &HistLayout,
    rows: &BinnedRows,
    grad: &[f64],
    hess: &[f64],
    mut node_of_row: Vec<u32>,
    allowed: &[bool],
) -> Result<Tree, GbdtError> {
    let settings = SplitSettings::from(params);
    let budget = params.leaf_budget();
    let mut drafts = vec![Draft::Open {
        stats: None,
        parent: None,
        sibling: None,
    }];
    let mut level = vec![0usize];
    // Histograms of the nodes split at the previous level, by node id.
    let mut parent_hists: Vec<(usize, Vec<f64>)> = Vec::new();
    let mut leaves = 1;
    let node_len = layout.node_len();
    for depth in 0..=params.max_depth {
        let plan = if depth < params.max_depth && leaves < budget {
            plan_level(&drafts, &level, params)
        } else {
            LevelPlan {
                candidates: Vec::new(),
                build: Vec::new(),
            }
        };
        // The parties' level vector, summed.
        let summed = if plan.build.is_empty() {
            Vec::new()
        } else {
            layout.level_histograms(rows, &node_of_row, &plan.build, grad, hess)?
        };
        // Coordinator: every candidate's histogram, from the sum or by subtraction.
        let block = |n: usize| {
            plan.build
                .binary_search(&(n as u32))
                .ok()
                .map(|p| summed[p * node_len..(p + 1) * node_len].to_vec())
        };
        let mut hists: Vec<(usize, Vec<f64>)> = Vec::with_capacity(plan.candidates.len());
        for &n in &plan.candidates {
            let hist = match block(n) {
                Some(h) => h,
                None => {
                    let (parent, sibling) = match &drafts[n] {
                        Draft::Open {
                            parent: Some(p),
                            sibling: Some(s),
                            ..
                        } => (*p, *s),
                        _ => return Err(GbdtError::Shape("a derived node without parent".into())),
                    };
                    let of_parent = parent_hists.iter().find(|(p, _)| *p == parent);
                    match (of_parent, block(sibling)) {
                        (Some((_, ph)), Some(sh)) => subtract(ph, &sh),
                        _ => {
                            return Err(GbdtError::Shape(
                                "a derived node without its parent's histogram".into(),
                            ));
                        }
                    }
                }
            };
            hists.push((n, hist));
        }
        // Coordinator: candidate splits, the best kept first within the leaf budget.
        let mut found: Vec<(usize, Split)> = Vec::new();
        for (n, hist) in &hists {
            if let Draft::Open {
                stats: stats @ None,
                ..
            } = &mut drafts[*n]
            {
                *stats = Some(layout.totals(hist));
            }
            if let Some(split) = best_split(layout, hist, features, allowed, &settings)? {
                found.push((*n, split));
            }
        }
        found.sort_by(|a, b| b.1.gain.total_cmp(&a.1.gain).then(a.0.cmp(&b.0)));
        found.truncate(budget.saturating_sub(leaves));
        leaves += found.len();
        found.sort_by_key(|(n, _)| *n);
        let mut next = Vec::with_capacity(2 * found.len());
        let mut kept_hists = Vec::with_capacity(found.len());
        for (n, split) in found {
            let (left, right) = (drafts.len(), drafts.len() + 1);
            for (stats, sibling) in [(split.left, right), (split.right, left)] {
                drafts.push(Draft::Open {
                    stats: Some(stats),
                    parent: Some(n),
                    sibling: Some(sibling),
                });
            }
            let cover = split.left.h + split.right.h;
            drafts[n] = Draft::Split {
                split,
                left,
                right,
                cover,
            };
            next.extend([left, right]);
            if let Some(i) = hists.iter().position(|(h, _)| *h == n) {
                kept_hists.push(hists.swap_remove(i));
            }
        }
        for &n in &level {
            if let Draft::Open { stats, .. } = drafts[n] {
                let s = stats.unwrap_or_default();
                drafts[n] = Draft::Leaf {
                    value: params.learning_rate * leaf_weight(s.g, s.h, params.lambda),
                    cover: s.h,
                };
            }
        }
        // Parties: rows of the split nodes move to their children.
        if !next.is_empty() {
            for (r, node) in node_of_row.iter_mut().enumerate() {
                if let Some(Draft::Split {
                    split, left, right, ..
                }) = drafts.get(*node as usize)
                {
                    let bin = rows.row(r)[split.feature];
                    *node = if split.rule.goes_left(bin) {
                        *left
                    } else {
                        *right
                    } as u32;
                }
            }
        }
        level = next;
        parent_hists = kept_hists;
        if level.is_empty() {
            break;
        }
    }
    let nodes = drafts
        .into_iter()
        .map(|d| match d {
            Draft::Split {
                split,
                left,
                right,
                cover,
            } => Node::Split {
                feature: split.feature as u32,
                rule: split.rule,
                left: left as u32,
                right: right as u32,
                gain: split.gain,
                cover,
            },
            Draft::Leaf { value, cover } => Node::Leaf { value, cover },
            // Every node of the last level was closed above.
            Draft::Open { .. } => Node::Leaf {
                value: 0.0,
                cover: 0.0,
            },
        })
        .collect();
    Ok(Tree::from_nodes(nodes))
}
