//! Growing one tree through the secure sum, split into its two sides.
//!
//! - The coordinator's side is [`TreeGrower`], a state machine with no I/O: it says which
//!   nodes' histograms the next level needs ([`TreeGrower::request`]), takes their sum over
//!   every party ([`TreeGrower::absorb`]), derives each larger sibling as parent − smaller,
//!   picks the splits from these sums alone (within a level the best first, while the leaf
//!   budget lasts) and closes the nodes that will not split as leaves. A leaf's weight comes
//!   from its node's sums, known from the parent's split, so the deepest level needs no
//!   histogram.
//! - A party's side is a pure function of what the coordinator shows it: the tree so far as a
//!   [`PartialTree`] (its splits, and which nodes are still open) and the nodes asked for.
//!   [`level_vector`] routes each of the party's rows from the root to its node and adds it to
//!   that node's histogram block; the party keeps no state between levels, so a retried or
//!   resumed level computes the same vector.
//!
//! The centralised trainer ([`super::train`]) grows its trees with exactly these two pieces
//! (one party, so the sum is its vector); a federated job runs the same pieces with the
//! vectors summed by secure aggregation.

use super::bins::{BinEdges, BinnedRows, Feature};
use super::error::GbdtError;
use super::histogram::{HistLayout, NO_NODE, NodeStats, subtract};
use super::params::{GbdtParams, NOISED_MAX_WEIGHT};
use super::split::{Split, SplitRule, SplitSettings, best_split, leaf_weight};
use super::tree::{Node, Tree};

/// A node of a tree while it grows, as the parties see it.
#[derive(Debug, Clone, PartialEq)]
pub enum PartialNode {
    /// Decided: rows go to `left` or `right` by `rule` on `feature`'s bin.
    Split {
        /// The feature it splits on.
        feature: u32,
        /// Which rows go left.
        rule: SplitRule,
        /// Index of the left child.
        left: u32,
        /// Index of the right child.
        right: u32,
    },
    /// Not decided yet: its rows stay here.
    Open,
    /// Closed: its rows stay here and are never asked for again.
    Leaf,
}

/// The routing part of a tree while it grows: root first, every child after its parent.
#[derive(Debug, Clone, PartialEq)]
pub struct PartialTree {
    nodes: Vec<PartialNode>,
}

impl PartialTree {
    /// A tree of one open root.
    pub fn root() -> Self {
        Self {
            nodes: vec![PartialNode::Open],
        }
    }

    /// A tree from its nodes, checked against `features` (see [`PartialTree::check`]).
    pub fn from_nodes(nodes: Vec<PartialNode>, features: &[Feature]) -> Result<Self, GbdtError> {
        let tree = Self { nodes };
        tree.check(features).map_err(GbdtError::Model)?;
        Ok(tree)
    }

    /// The nodes, root first.
    pub fn nodes(&self) -> &[PartialNode] {
        &self.nodes
    }

    /// The node a row (its bins, one per feature) is in: the first node on its path from
    /// the root that is not a split.
    pub fn node_of(&self, bins: &[u8]) -> u32 {
        let mut i = 0usize;
        while let Some(PartialNode::Split {
            feature,
            rule,
            left,
            right,
        }) = self.nodes.get(i)
        {
            let bin = bins.get(*feature as usize).copied().unwrap_or(0);
            i = if rule.goes_left(bin) { *left } else { *right } as usize;
        }
        i as u32
    }

    /// Whether node `n` is open.
    pub fn is_open(&self, n: u32) -> bool {
        matches!(self.nodes.get(n as usize), Some(PartialNode::Open))
    }

    /// Checks what routing relies on: children after their parent and in range, every node
    /// but the root the child of exactly one split, features and rules that fit `features`.
    pub fn check(&self, features: &[Feature]) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree without nodes".into());
        }
        let splits = self.nodes.iter().map(|n| match n {
            PartialNode::Split {
                feature,
                rule,
                left,
                right,
            } => Some((*feature, rule, [*left, *right])),
            PartialNode::Open | PartialNode::Leaf => None,
        });
        check_routing(features, self.nodes.len(), splits)
    }
}

/// Checks a tree's routing (for finished and growing trees alike): every split's children
/// after it and within the `n` nodes, every node but the root the child of exactly one split,
/// and every rule fitting its feature ([`rule_fits`]). `splits` gives each node's split, if any.
pub(crate) fn check_routing<'r>(
    features: &[Feature],
    n: usize,
    splits: impl Iterator<Item = Option<(u32, &'r SplitRule, [u32; 2])>>,
) -> Result<(), String> {
    let mut parents = vec![0u32; n];
    for (i, split) in splits.enumerate() {
        let Some((feature, rule, children)) = split else {
            continue;
        };
        for c in children {
            let c = c as usize;
            if c <= i || c >= n {
                return Err(format!("node {i} has child {c}"));
            }
            parents[c] += 1;
        }
        rule_fits(features, i, feature, rule)?;
    }
    if parents.iter().skip(1).any(|&p| p != 1) {
        return Err("a node that is not the child of exactly one node".into());
    }
    Ok(())
}

/// Whether a split rule on `feature` fits the features' bins: a numeric rule on a numeric
/// feature, below its last bin, with the bin's own upper edge as its threshold; a categorical
/// rule on a categorical feature, within its slots.
pub(crate) fn rule_fits(
    features: &[Feature],
    node: usize,
    feature: u32,
    rule: &SplitRule,
) -> Result<(), String> {
    let f = features
        .get(feature as usize)
        .ok_or_else(|| format!("node {node} splits on feature {feature}"))?;
    let n_bins = f.edges.n_bins();
    let fits = match (rule, &f.edges) {
        // The threshold is the bin's upper edge, exactly: what scoring raw values and the
        // exports rely on (and no NaN can pass).
        (SplitRule::Numeric { bin, threshold }, BinEdges::Numeric { thresholds }) => {
            usize::from(*bin) + 1 < n_bins && thresholds.get(usize::from(*bin)) == Some(threshold)
        }
        (SplitRule::Numeric { .. }, BinEdges::Categorical { .. }) => false,
        (SplitRule::Categorical { left }, _) => {
            f.edges.is_categorical() && left.slots().iter().all(|&s| usize::from(s) < n_bins)
        }
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "node {node}'s rule does not fit feature `{}`",
            f.name
        ))
    }
}

/// One party's level vector: for each node of `build` (ascending, every one open in
/// `tree`), the histogram block of the party's rows that `tree` routes to it. Rows with
/// `in_sample(r)` false add nothing.
pub fn level_vector(
    layout: &HistLayout,
    rows: &BinnedRows,
    tree: &PartialTree,
    build: &[u32],
    in_sample: impl Fn(usize) -> bool,
    grad: &[f64],
    hess: &[f64],
) -> Result<Vec<f64>, GbdtError> {
    check_build(tree, build)?;
    let node_of_row: Vec<u32> = (0..rows.len())
        .map(|r| {
            if in_sample(r) {
                tree.node_of(rows.row(r))
            } else {
                NO_NODE
            }
        })
        .collect();
    layout.level_histograms(rows, &node_of_row, build, grad, hess)
}

/// Checks that `build` lists open nodes of `tree`, ascending, each once.
pub fn check_build(tree: &PartialTree, build: &[u32]) -> Result<(), GbdtError> {
    if build.windows(2).any(|w| w[0] >= w[1]) {
        return Err(GbdtError::Shape(
            "the nodes asked for are not ascending".into(),
        ));
    }
    if let Some(n) = build.iter().find(|&&n| !tree.is_open(n)) {
        return Err(GbdtError::Shape(format!(
            "node {n} is asked for but is not an open node of the tree"
        )));
    }
    Ok(())
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
#[derive(Debug, Clone, Default)]
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

/// The coordinator's side of growing one tree (see the module doc).
#[derive(Debug, Clone)]
pub struct TreeGrower {
    params: GbdtParams,
    settings: SplitSettings,
    features: Vec<Feature>,
    layout: HistLayout,
    allowed: Vec<bool>,
    drafts: Vec<Draft>,
    /// The nodes of the current level.
    level: Vec<usize>,
    /// Histograms of the nodes split at the previous level, by node id.
    parent_hists: Vec<(usize, Vec<f64>)>,
    leaves: usize,
    depth: u32,
    plan: LevelPlan,
}

impl TreeGrower {
    /// Starts a tree over `features`, splitting only on those with `allowed[f]` (all when
    /// `allowed` is empty).
    pub fn new(
        params: &GbdtParams,
        features: &[Feature],
        allowed: Vec<bool>,
    ) -> Result<Self, GbdtError> {
        params.validate()?;
        let mut grower = Self {
            params: params.clone(),
            settings: SplitSettings::from(params),
            features: features.to_vec(),
            layout: HistLayout::new(features),
            allowed,
            drafts: vec![Draft::Open {
                stats: None,
                parent: None,
                sibling: None,
            }],
            level: vec![0],
            parent_hists: Vec::new(),
            leaves: 1,
            depth: 0,
            plan: LevelPlan::default(),
        };
        grower.plan_level();
        Ok(grower)
    }

    /// The depth of the level whose histograms are asked for.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The layout of the histogram blocks.
    pub fn layout(&self) -> &HistLayout {
        &self.layout
    }

    /// The nodes whose histograms the next level needs (ascending), or `None` once the tree
    /// is complete.
    pub fn request(&self) -> Option<&[u32]> {
        (!self.plan.build.is_empty()).then_some(self.plan.build.as_slice())
    }

    /// Whether the level asked for derives some node's histogram from its parent's and its
    /// sibling's (so the level's sum must come from the partners whose sums gave the parent's).
    pub fn derives(&self) -> bool {
        self.plan.candidates.len() > self.plan.build.len()
    }

    /// Asks for every candidate of the level instead of deriving any: what a level needs when
    /// its sum came from other partners than its parents' histograms.
    pub fn ask_for_all(&mut self) {
        self.plan.build = self.plan.candidates.iter().map(|&n| n as u32).collect();
    }

    /// The tree so far, as the parties route by it.
    pub fn partial(&self) -> PartialTree {
        let nodes = self
            .drafts
            .iter()
            .map(|d| match d {
                Draft::Open { .. } => PartialNode::Open,
                Draft::Leaf { .. } => PartialNode::Leaf,
                Draft::Split {
                    split, left, right, ..
                } => PartialNode::Split {
                    feature: split.feature as u32,
                    rule: split.rule.clone(),
                    left: *left as u32,
                    right: *right as u32,
                },
            })
            .collect();
        PartialTree { nodes }
    }

    /// Plans the current level; a level with nothing to ask for closes its nodes as leaves
    /// and ends the tree.
    fn plan_level(&mut self) {
        let budget = self.params.leaf_budget();
        self.plan = if self.depth < self.params.max_depth && self.leaves < budget {
            self.plan_candidates()
        } else {
            LevelPlan::default()
        };
        // Every candidate is built or derived from a built sibling, so an empty build means
        // no candidate: the level's nodes are final.
        if self.plan.build.is_empty() {
            self.close_level();
            self.level.clear();
            self.parent_hists.clear();
        }
    }

    fn plan_candidates(&self) -> LevelPlan {
        let drafts = &self.drafts;
        let open = |n: usize| match &drafts[n] {
            Draft::Open {
                stats,
                parent,
                sibling,
            } => Some((*stats, *parent, *sibling)),
            _ => None,
        };
        let candidates: Vec<usize> = self
            .level
            .iter()
            .copied()
            .filter(|&n| open(n).is_some_and(|(s, _, _)| may_split(s, &self.params)))
            .collect();
        let is_candidate = |n: usize| candidates.binary_search(&n).is_ok();
        let count = |n: usize| open(n).and_then(|(s, _, _)| s).map_or(0.0, |s| s.count);
        let build = candidates
            .iter()
            .copied()
            .filter(|&n| match open(n).and_then(|(_, _, sib)| sib) {
                // Noised sums: every node asked for, none derived.
                _ if self.params.noised => true,
                // Both siblings open: build the smaller (the left one on a tie), derive the
                // other.
                Some(sib) if is_candidate(sib) => {
                    count(n).total_cmp(&count(sib)).then(n.cmp(&sib)).is_lt()
                }
                _ => true,
            })
            .map(|n| n as u32)
            .collect();
        LevelPlan { candidates, build }
    }

    /// Closes every still-open node of the current level as a leaf.
    fn close_level(&mut self) {
        for &n in &self.level {
            if let Draft::Open { stats, .. } = self.drafts[n] {
                let s = stats.unwrap_or_default();
                let weight = if self.params.noised {
                    leaf_weight(s.g, s.h.max(0.0), self.params.lambda)
                        .clamp(-NOISED_MAX_WEIGHT, NOISED_MAX_WEIGHT)
                } else {
                    leaf_weight(s.g, s.h, self.params.lambda)
                };
                self.drafts[n] = Draft::Leaf {
                    value: self.params.learning_rate * weight,
                    cover: s.h,
                };
            }
        }
    }

    /// Takes the level's summed vector (the blocks of [`TreeGrower::request`]'s nodes, in
    /// that order), decides the level's splits and plans the next level.
    pub fn absorb(&mut self, summed: &[f64]) -> Result<(), GbdtError> {
        let node_len = self.layout.node_len();
        let build = std::mem::take(&mut self.plan.build);
        if build.is_empty() {
            return Err(GbdtError::Shape(
                "a level's sum for a tree that asks for none".into(),
            ));
        }
        if summed.len() != build.len() * node_len {
            return Err(GbdtError::Shape(format!(
                "a level sum of {} values; {} nodes of {node_len} were asked for",
                summed.len(),
                build.len()
            )));
        }
        if let Some(i) = summed.iter().position(|v| !v.is_finite()) {
            return Err(GbdtError::Shape(format!(
                "value {i} of the level sum is not finite"
            )));
        }
        let candidates = std::mem::take(&mut self.plan.candidates);
        let block = |n: usize| {
            build
                .binary_search(&(n as u32))
                .ok()
                .map(|p| &summed[p * node_len..(p + 1) * node_len])
        };
        let mut hists: Vec<(usize, Vec<f64>)> = Vec::with_capacity(candidates.len());
        for &n in &candidates {
            let hist = match block(n) {
                Some(h) => h.to_vec(),
                None => {
                    let Draft::Open {
                        parent: Some(parent),
                        sibling: Some(sibling),
                        ..
                    } = self.drafts[n]
                    else {
                        return Err(GbdtError::Shape("a derived node without parent".into()));
                    };
                    let of_parent = self.parent_hists.iter().find(|(p, _)| *p == parent);
                    match (of_parent, block(sibling)) {
                        (Some((_, ph)), Some(sh)) => subtract(ph, sh),
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
        // Candidate splits, the best kept first within the leaf budget.
        let mut found: Vec<(usize, Split)> = Vec::new();
        for (n, hist) in &hists {
            if let Draft::Open {
                stats: stats @ None,
                ..
            } = &mut self.drafts[*n]
            {
                *stats = Some(if self.params.noised {
                    self.layout.mean_totals(hist)
                } else {
                    self.layout.totals(hist)
                });
            }
            if let Some(split) = best_split(
                &self.layout,
                hist,
                &self.features,
                &self.allowed,
                &self.settings,
            )? {
                found.push((*n, split));
            }
        }
        let budget = self.params.leaf_budget();
        found.sort_by(|a, b| b.1.gain.total_cmp(&a.1.gain).then(a.0.cmp(&b.0)));
        found.truncate(budget.saturating_sub(self.leaves));
        self.leaves += found.len();
        found.sort_by_key(|(n, _)| *n);
        let mut next = Vec::with_capacity(2 * found.len());
        let mut kept_hists = Vec::with_capacity(found.len());
        for (n, split) in found {
            let (left, right) = (self.drafts.len(), self.drafts.len() + 1);
            for (stats, sibling) in [(split.left, right), (split.right, left)] {
                self.drafts.push(Draft::Open {
                    stats: Some(stats),
                    parent: Some(n),
                    sibling: Some(sibling),
                });
            }
            let cover = split.left.h + split.right.h;
            self.drafts[n] = Draft::Split {
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
        self.close_level();
        self.level = next;
        self.parent_hists = kept_hists;
        self.depth += 1;
        if self.level.is_empty() {
            self.plan = LevelPlan::default();
        } else {
            self.plan_level();
        }
        Ok(())
    }

    /// The grown tree; an error while a level is still asked for.
    pub fn finish(self) -> Result<Tree, GbdtError> {
        if self.request().is_some() {
            return Err(GbdtError::Shape(format!(
                "the tree is not complete: level {} is still asked for",
                self.depth
            )));
        }
        let nodes = self
            .drafts
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
                // Every level is closed before the tree completes.
                Draft::Open { .. } => Node::Leaf {
                    value: 0.0,
                    cover: 0.0,
                },
            })
            .collect();
        Ok(Tree::from_nodes(nodes))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::gbdt::bins::BinEdges;
    use crate::gbdt::split::CategorySet;
    use crate::gbdt::tests::{Row, raw, schema};
    use crate::gbdt::train::{base_margin, column_sample, gradients, train};

    fn features() -> Vec<Feature> {
        vec![
            Feature {
                name: "x0".into(),
                edges: BinEdges::from_range(0.0, 1.0, 16).unwrap(),
            },
            Feature {
                name: "x1".into(),
                edges: BinEdges::from_range(0.0, 1.0, 16).unwrap(),
            },
            Feature {
                name: "c0".into(),
                edges: BinEdges::categorical(5).unwrap(),
            },
        ]
    }

    /// Rows whose label depends on x0, x1 and the category, with noise.
    fn rows(n: usize, seed: u64) -> Vec<Row> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let (a, b) = (rng.random::<f64>(), rng.random::<f64>());
                let c = rng.random_range(0..5u32);
                let score = 2.0 * a - b + if c == 2 { 1.0 } else { 0.0 };
                let y = score + 0.7 * rng.random::<f64>() > 1.1;
                Row {
                    x: vec![a, b],
                    slots: vec![c],
                    y,
                    g: 0.0,
                    h: 0.0,
                }
            })
            .collect()
    }

    /// Three parties, each holding every third row, grow trees through the grower with
    /// their level vectors summed: the model is the one the centralised trainer grows on
    /// the pooled rows (same splits; leaf values and predictions to rounding).
    #[test]
    fn three_parties_grow_the_pooled_model() {
        let s = schema(2, &[5]);
        let features = features();
        let all = rows(900, 1);
        let params = GbdtParams {
            trees: 4,
            max_depth: 3,
            learning_rate: 0.5,
            ..Default::default()
        };
        let pooled = BinnedRows::from_raw(&raw(&s, &all), &features).unwrap();
        let (central, _) = train(&params, &features, &pooled, None).unwrap();

        let parts: Vec<BinnedRows> = (0..3)
            .map(|p| {
                let mine: Vec<Row> = all.iter().skip(p).step_by(3).cloned().collect();
                BinnedRows::from_raw(&raw(&s, &mine), &features).unwrap()
            })
            .collect();
        // The base margin from two sums over the parties.
        let positives: f64 = parts.iter().map(|p| p.labels().iter().sum::<f64>()).sum();
        let count: f64 = parts.iter().map(|p| p.len() as f64).sum();
        let base = base_margin(positives, count);
        let layout = HistLayout::new(&features);
        let mut margins: Vec<Vec<f64>> = parts.iter().map(|p| vec![base; p.len()]).collect();
        let mut trees = Vec::new();
        for t in 0..params.trees as usize {
            let mut grower =
                TreeGrower::new(&params, &features, column_sample(&params, t, 3)).unwrap();
            let grads: Vec<(Vec<f64>, Vec<f64>)> = parts
                .iter()
                .zip(&margins)
                .map(|(p, m)| {
                    let (mut g, mut h) = (vec![0.0; p.len()], vec![0.0; p.len()]);
                    gradients(m, p.labels(), &mut g, &mut h);
                    (g, h)
                })
                .collect();
            let mut levels = 0;
            while let Some(build) = grower.request() {
                let partial = grower.partial();
                let mut sum = vec![0.0; build.len() * layout.node_len()];
                for (p, (g, h)) in parts.iter().zip(&grads) {
                    let v = level_vector(&layout, p, &partial, build, |_| true, g, h).unwrap();
                    sum.iter_mut().zip(&v).for_each(|(s, x)| *s += x);
                }
                grower.absorb(&sum).unwrap();
                levels += 1;
            }
            assert!(levels <= params.max_depth, "tree {t}: {levels} levels");
            let tree = grower.finish().unwrap();
            for (p, m) in parts.iter().zip(margins.iter_mut()) {
                for (r, m) in m.iter_mut().enumerate() {
                    *m += tree.predict(p.row(r));
                }
            }
            trees.push(tree);
        }
        assert_eq!(trees.len(), central.trees().len());
        for (t, (fed, cen)) in trees.iter().zip(central.trees()).enumerate() {
            assert_eq!(fed.nodes().len(), cen.nodes().len(), "tree {t}");
            for (a, b) in fed.nodes().iter().zip(cen.nodes()) {
                match (a, b) {
                    (
                        Node::Split {
                            feature: fa,
                            rule: ra,
                            left: la,
                            ..
                        },
                        Node::Split {
                            feature: fb,
                            rule: rb,
                            left: lb,
                            ..
                        },
                    ) => assert_eq!((fa, ra, la), (fb, rb, lb), "tree {t}"),
                    (Node::Leaf { value: va, .. }, Node::Leaf { value: vb, .. }) => {
                        assert!((va - vb).abs() < 1e-12, "tree {t}: {va} vs {vb}")
                    }
                    _ => panic!("tree {t}: {a:?} vs {b:?}"),
                }
            }
        }
        assert!(trees[0].leaves() >= 4, "the data has structure to split on");
    }

    /// After the root's split, the next level asks for one child only (the one with fewer
    /// rows); its sibling is derived as parent − child.
    #[test]
    fn a_level_asks_for_the_smaller_sibling_only() {
        let s = schema(2, &[5]);
        let features = features();
        let all = rows(400, 2);
        let binned = BinnedRows::from_raw(&raw(&s, &all), &features).unwrap();
        let params = GbdtParams {
            max_depth: 4,
            ..Default::default()
        };
        let n = binned.len();
        let (mut g, mut h) = (vec![0.0; n], vec![0.0; n]);
        gradients(&vec![0.0; n], binned.labels(), &mut g, &mut h);
        let layout = HistLayout::new(&features);
        let mut grower = TreeGrower::new(&params, &features, Vec::new()).unwrap();
        assert_eq!(grower.request(), Some(&[0u32][..]));
        let root = level_vector(&layout, &binned, &grower.partial(), &[0], |_| true, &g, &h);
        grower.absorb(&root.unwrap()).unwrap();
        let partial = grower.partial();
        let PartialNode::Split { left, right, .. } = partial.nodes()[0].clone() else {
            panic!("the root did not split");
        };
        let count = |node: u32| {
            (0..n)
                .filter(|&r| partial.node_of(binned.row(r)) == node)
                .count()
        };
        let smaller = if count(left) <= count(right) {
            left
        } else {
            right
        };
        assert_eq!(grower.request(), Some(&[smaller][..]));
        assert_eq!(grower.depth(), 1);
    }

    #[test]
    fn routing_by_a_partial_tree_by_hand() {
        let features = features();
        // Root: x0 bin ≤ 7 left (node 1, open); right (node 2) splits on c0 ∈ {1, 3} → 3, else 4.
        let nodes = vec![
            PartialNode::Split {
                feature: 0,
                rule: SplitRule::Numeric {
                    bin: 7,
                    threshold: 0.5,
                },
                left: 1,
                right: 2,
            },
            PartialNode::Open,
            PartialNode::Split {
                feature: 2,
                rule: SplitRule::Categorical {
                    left: CategorySet::from(vec![1, 3]),
                },
                left: 3,
                right: 4,
            },
            PartialNode::Leaf,
            PartialNode::Open,
        ];
        let tree = PartialTree::from_nodes(nodes.clone(), &features).unwrap();
        assert_eq!(tree.node_of(&[7, 15, 3]), 1);
        assert_eq!(tree.node_of(&[8, 0, 3]), 3);
        assert_eq!(tree.node_of(&[15, 0, 4]), 4);
        assert!(check_build(&tree, &[1, 4]).is_ok());
        assert!(check_build(&tree, &[4, 1]).is_err(), "not ascending");
        assert!(check_build(&tree, &[1, 1]).is_err(), "twice");
        assert!(check_build(&tree, &[3]).is_err(), "a leaf");
        assert!(check_build(&tree, &[2]).is_err(), "a split");
        assert!(check_build(&tree, &[5]).is_err(), "beyond the tree");

        let refused = |mutate: &dyn Fn(&mut Vec<PartialNode>)| {
            let mut n = nodes.clone();
            mutate(&mut n);
            PartialTree::from_nodes(n, &features).is_err()
        };
        assert!(refused(&|n| n.truncate(4)), "a child beyond the tree");
        assert!(
            refused(&|n| n[2] = n[0].clone()),
            "a child before its parent"
        );
        assert!(refused(
            &|n| if let PartialNode::Split { feature, .. } = &mut n[0] {
                *feature = 3
            }
        ));
        assert!(
            refused(&|n| if let PartialNode::Split { rule, .. } = &mut n[0] {
                *rule = SplitRule::Numeric {
                    bin: 15,
                    threshold: 1.0,
                }
            }),
            "the last bin leaves nothing on the right"
        );
        assert!(
            refused(&|n| if let PartialNode::Split { feature, .. } = &mut n[2] {
                *feature = 0
            }),
            "a categorical rule on a numeric feature"
        );
        assert!(refused(&|n| n.clear()));
        assert!(PartialTree::from_nodes(vec![PartialNode::Open], &features).is_ok());
    }

    #[test]
    fn the_grower_refuses_a_sum_of_the_wrong_shape() {
        let features = features();
        let params = GbdtParams::default();
        let mut grower = TreeGrower::new(&params, &features, Vec::new()).unwrap();
        let len = grower.layout().node_len();
        assert!(grower.absorb(&vec![0.0; len + 1]).is_err());
        let mut grower = TreeGrower::new(&params, &features, Vec::new()).unwrap();
        let mut bad = vec![0.0; len];
        bad[4] = f64::NAN;
        assert!(grower.absorb(&bad).is_err());
        let grower = TreeGrower::new(&params, &features, Vec::new()).unwrap();
        assert!(grower.finish().is_err(), "a level is still asked for");
        // An all-zero root histogram holds no row: no split, the tree is one leaf.
        let mut grower = TreeGrower::new(&params, &features, Vec::new()).unwrap();
        grower.absorb(&vec![0.0; len]).unwrap();
        assert_eq!(grower.request(), None);
        assert!(
            grower.absorb(&vec![0.0; len]).is_err(),
            "nothing was asked for"
        );
        assert_eq!(grower.finish().unwrap().leaves(), 1);
    }
}
