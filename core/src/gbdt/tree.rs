//! The trees and the boosted model: routing a row by its bins, prediction, versioned
//! serialisation and feature importance.
//!
//! A [`Tree`] is a flat list of nodes, the root first, every child after its parent (so
//! routing always moves forward and ends). A [`GbdtModel`] holds its features' bin edges, so
//! it bins raw rows exactly as training did, a base margin (the prior log-odds) and its trees;
//! leaf values already include the learning rate. The model serialises as
//! `{"format": "fedmark-gbdt", "version": 1, …}` and is checked when read back, so a damaged
//! or hostile file is an error, never an out-of-bounds index.

use serde::{Deserialize, Serialize};

use super::bins::{BinnedRows, Feature};
use super::error::GbdtError;
use super::split::SplitRule;
use crate::features::RawRows;
use crate::model::sigmoid;

/// The format name in a serialised model.
pub const FORMAT: &str = "fedmark-gbdt";
/// The serialisation version this code writes and reads.
pub const VERSION: u32 = 1;

/// One node of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "node", rename_all = "snake_case", deny_unknown_fields)]
pub enum Node {
    /// An inner node.
    Split {
        /// The feature it splits on.
        feature: u32,
        /// Which rows go left.
        rule: SplitRule,
        /// Index of the left child.
        left: u32,
        /// Index of the right child.
        right: u32,
        /// The split's gain (γ subtracted).
        gain: f64,
        /// Hessian sum of the node's rows.
        cover: f64,
    },
    /// A leaf.
    Leaf {
        /// Its contribution to the margin (learning rate included).
        value: f64,
        /// Hessian sum of the node's rows.
        cover: f64,
    },
}

/// A regression tree on bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// A tree from nodes the trainer built (root first, children after parents).
    pub(crate) fn from_nodes(nodes: Vec<Node>) -> Self {
        Self { nodes }
    }

    /// The nodes, root first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The index of the leaf a row (its bins, one per feature of the model) lands in.
    /// Crate-internal: the public way in is [`GbdtModel::predict_margin_binned`], which checks
    /// the rows' shape first.
    pub(crate) fn leaf_of(&self, bins: &[u8]) -> usize {
        let mut i = 0;
        while let Node::Split {
            feature,
            rule,
            left,
            right,
            ..
        } = &self.nodes[i]
        {
            i = if rule.goes_left(bins[*feature as usize]) {
                *left as usize
            } else {
                *right as usize
            };
        }
        i
    }

    /// The tree's output for a row (as [`Tree::leaf_of`]).
    pub(crate) fn predict(&self, bins: &[u8]) -> f64 {
        match self.nodes[self.leaf_of(bins)] {
            Node::Leaf { value, .. } => value,
            Node::Split { .. } => 0.0,
        }
    }

    /// Number of leaves.
    pub fn leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }

    /// Depth (a lone leaf has depth 0).
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if let Node::Split { left, right, .. } = n {
                depth[*left as usize] = depth[i] + 1;
                depth[*right as usize] = depth[i] + 1;
            }
        }
        depth.into_iter().max().unwrap_or(0)
    }

    /// Checks what routing relies on: children after their parent and in range, every node
    /// but the root reached exactly once, features and rules that fit `features`; and finite
    /// leaf values, so a model cannot score NaN.
    fn check(&self, features: &[Feature]) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree without nodes".into());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            // Gains and covers feed the importance table and the exports: finite, or refused
            // (a NaN would also make a model unequal to itself).
            let (gain, cover) = match n {
                Node::Split { gain, cover, .. } => (*gain, *cover),
                Node::Leaf { cover, .. } => (0.0, *cover),
            };
            if !gain.is_finite() || !cover.is_finite() {
                return Err(format!("node {i} has gain {gain} and cover {cover}"));
            }
            if let Node::Leaf { value, .. } = n
                && !value.is_finite()
            {
                return Err(format!("leaf {i} has value {value}"));
            }
        }
        let splits = self.nodes.iter().map(|n| match n {
            Node::Split {
                feature,
                rule,
                left,
                right,
                ..
            } => Some((*feature, rule, [*left, *right])),
            Node::Leaf { .. } => None,
        });
        super::grow::check_routing(features, self.nodes.len(), splits)
    }
}

/// Total gain and number of splits of one feature over a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// The feature.
    pub feature: String,
    /// Σ gain of its splits.
    pub gain: f64,
    /// Number of splits on it.
    pub splits: u64,
}

/// A boosted model for binary log-loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ModelFile", try_from = "ModelFile")]
pub struct GbdtModel {
    features: Vec<Feature>,
    base_margin: f64,
    trees: Vec<Tree>,
}

/// The serialised form, versioned.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    format: String,
    version: u32,
    features: Vec<Feature>,
    base_margin: f64,
    trees: Vec<Tree>,
}

impl From<GbdtModel> for ModelFile {
    fn from(m: GbdtModel) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            features: m.features,
            base_margin: m.base_margin,
            trees: m.trees,
        }
    }
}

impl TryFrom<ModelFile> for GbdtModel {
    type Error = GbdtError;

    fn try_from(f: ModelFile) -> Result<Self, GbdtError> {
        if f.format != FORMAT || f.version != VERSION {
            return Err(GbdtError::Model(format!(
                "format `{}` version {}, this build reads `{FORMAT}` version {VERSION}",
                f.format, f.version
            )));
        }
        GbdtModel::checked(f.features, f.base_margin, f.trees)
    }
}

impl GbdtModel {
    /// A model from parts read from outside, checked: a finite base margin, valid edges, and
    /// trees whose routing and rules fit the features, with finite leaves.
    pub fn from_parts(
        features: Vec<Feature>,
        base_margin: f64,
        trees: Vec<Tree>,
    ) -> Result<Self, GbdtError> {
        Self::checked(features, base_margin, trees)
    }

    pub(crate) fn checked(
        features: Vec<Feature>,
        base_margin: f64,
        trees: Vec<Tree>,
    ) -> Result<Self, GbdtError> {
        if !base_margin.is_finite() {
            return Err(GbdtError::Model("base margin is not finite".into()));
        }
        for feature in &features {
            feature
                .edges
                .check()
                .map_err(|e| GbdtError::Model(format!("feature `{}`: {e}", feature.name)))?;
        }
        for (t, tree) in trees.iter().enumerate() {
            tree.check(&features)
                .map_err(|e| GbdtError::Model(format!("tree {t}: {e}")))?;
        }
        Ok(Self {
            features,
            base_margin,
            trees,
        })
    }

    /// A model from the trainer's parts.
    pub(crate) fn new(features: Vec<Feature>, base_margin: f64, trees: Vec<Tree>) -> Self {
        Self {
            features,
            base_margin,
            trees,
        }
    }

    /// Keeps the first `n` trees (early stopping).
    pub(crate) fn truncate(&mut self, n: usize) {
        self.trees.truncate(n);
    }

    /// The features and their bin edges.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The margin before any tree: the prior log-odds.
    pub fn base_margin(&self) -> f64 {
        self.base_margin
    }

    /// The trees.
    pub fn trees(&self) -> &[Tree] {
        &self.trees
    }

    /// The margin (log-odds) of one binned row, of the model's shape.
    fn margin_of(&self, bins: &[u8]) -> f64 {
        // Tree by tree from the base, as training and the compiled scorer add them.
        self.trees
            .iter()
            .fold(self.base_margin, |m, t| m + t.predict(bins))
    }

    /// Margins of binned rows (binned with this model's features).
    pub fn predict_margin_binned(&self, rows: &BinnedRows) -> Result<Vec<f64>, GbdtError> {
        rows.check_shape(&self.features)?;
        Ok((0..rows.len())
            .map(|r| self.margin_of(rows.row(r)))
            .collect())
    }

    /// Margins of parsed rows, binned with the model's own edges.
    pub fn predict_margin(&self, rows: &RawRows) -> Result<Vec<f64>, GbdtError> {
        self.predict_margin_binned(&BinnedRows::from_raw(rows, &self.features)?)
    }

    /// Probabilities of the positive class of parsed rows.
    pub fn predict_proba(&self, rows: &RawRows) -> Result<Vec<f64>, GbdtError> {
        Ok(self
            .predict_margin(rows)?
            .into_iter()
            .map(sigmoid)
            .collect())
    }

    /// The model as JSON.
    pub fn to_json(&self) -> Result<String, GbdtError> {
        serde_json::to_string(self).map_err(|e| GbdtError::Model(e.to_string()))
    }

    /// A model read back from [`GbdtModel::to_json`]'s text, checked.
    pub fn from_json(text: &str) -> Result<Self, GbdtError> {
        serde_json::from_str(text).map_err(|e| GbdtError::Model(e.to_string()))
    }

    /// Total gain and splits per feature, largest gain first (then feature order); features
    /// never split on are listed with zero.
    pub fn importance(&self) -> Vec<Importance> {
        let mut out: Vec<Importance> = self
            .features
            .iter()
            .map(|f| Importance {
                feature: f.name.clone(),
                gain: 0.0,
                splits: 0,
            })
            .collect();
        for tree in &self.trees {
            for node in &tree.nodes {
                if let Node::Split { feature, gain, .. } = node {
                    let i = &mut out[*feature as usize];
                    i.gain += gain;
                    i.splits += 1;
                }
            }
        }
        // Stable: equal gains keep feature order.
        out.sort_by(|a, b| b.gain.total_cmp(&a.gain));
        out
    }

    /// [`GbdtModel::importance`] as a small text table: feature, total gain, share, splits.
    pub fn importance_table(&self) -> String {
        let rows = self.importance();
        let total: f64 = rows.iter().map(|r| r.gain).sum();
        let width = rows
            .iter()
            .map(|r| r.feature.chars().count())
            .chain([7])
            .max()
            .unwrap_or(7);
        let mut out = format!(
            "{:<width$}  {:>12}  {:>6}  {:>6}\n",
            "feature", "gain", "share", "splits"
        );
        for r in &rows {
            let share = if total > 0.0 {
                100.0 * r.gain / total
            } else {
                0.0
            };
            out.push_str(&format!(
                "{:<width$}  {:>12.3}  {:>5.1}%  {:>6}\n",
                r.feature, r.gain, share, r.splits
            ));
        }
        out
    }
}
