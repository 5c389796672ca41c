//! Split finding from a node's histogram alone, and the gain and leaf formulas.
//!
//! Second-order boosting (Chen & Guestrin, XGBoost): a leaf holding gradient sum G and hessian
//! sum H gets weight −G/(H+λ); splitting a node (G, H) into (G_L, H_L) and (G_R, H_R) gains
//! ½·(G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ)) − γ. A split is allowed when both children
//! hold a hessian sum of at least `min_child_weight` and at least half a row (so an empty
//! child is never chosen, even through a rounding in a derived histogram), and is taken only
//! when its gain is positive.
//!
//! Numeric features split at a bin boundary: left = bins ≤ k. Categorical features split
//! natively by default: the node's present categories (count ≥ ½) are sorted by G/(H+λ) and
//! every prefix of that order is tried as the left set (LightGBM's method; for λ = 0 and no
//! `min_child_weight` it finds the best of all subsets, by Fisher's theorem on the
//! G²/H criterion; otherwise it is a heuristic). Categories absent from the node go right.
//! The cap on categories is the bin type: at most 256 slots per categorical feature.
//! With [`CategoricalMode::OneHot`] only one-vs-rest splits are tried.
//!
//! Ties: the first candidate in feature order, then bin (or prefix) order, wins, so the choice
//! is deterministic.

use serde::{Deserialize, Serialize};

use super::bins::{BinEdges, Feature};
use super::error::GbdtError;
use super::histogram::{HistLayout, NodeStats};
use super::params::{CategoricalMode, GbdtParams};

/// The optimal leaf weight −G/(H+λ) (0 where H+λ ≤ 0, i.e. an empty node without λ).
pub fn leaf_weight(g: f64, h: f64, lambda: f64) -> f64 {
    if h + lambda > 0.0 {
        -g / (h + lambda)
    } else {
        0.0
    }
}

/// A node's structure score G²/(H+λ) (0 where H+λ ≤ 0).
fn score(s: NodeStats, lambda: f64) -> f64 {
    if s.h + lambda > 0.0 {
        s.g * s.g / (s.h + lambda)
    } else {
        0.0
    }
}

/// The gain of splitting `left + right` into `left` and `right`.
pub fn split_gain(left: NodeStats, right: NodeStats, lambda: f64, gamma: f64) -> f64 {
    0.5 * (score(left, lambda) + score(right, lambda) - score(left.add(right), lambda)) - gamma
}

/// A set of category slots (0..256), serialised as its sorted list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "Vec<u8>", from = "Vec<u8>")]
pub struct CategorySet([u64; 4]);

impl CategorySet {
    /// Adds a slot.
    pub fn insert(&mut self, slot: u8) {
        self.0[usize::from(slot >> 6)] |= 1 << (slot & 63);
    }

    /// Whether a slot is in the set.
    pub fn contains(&self, slot: u8) -> bool {
        self.0[usize::from(slot >> 6)] >> (slot & 63) & 1 == 1
    }

    /// The set as four 64-bit words, slot `s` at bit `s mod 64` of word `s / 64`.
    pub fn words(&self) -> [u64; 4] {
        self.0
    }

    /// The set of [`CategorySet::words`].
    pub fn from_words(words: [u64; 4]) -> Self {
        Self(words)
    }

    /// The slots, ascending.
    pub fn slots(&self) -> Vec<u8> {
        (0..=255u8).filter(|&s| self.contains(s)).collect()
    }
}

impl From<Vec<u8>> for CategorySet {
    fn from(slots: Vec<u8>) -> Self {
        let mut s = Self::default();
        for slot in slots {
            s.insert(slot);
        }
        s
    }
}

impl From<CategorySet> for Vec<u8> {
    fn from(s: CategorySet) -> Self {
        s.slots()
    }
}

/// Which rows of a node go left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SplitRule {
    /// Left = bins ≤ `bin`, i.e. values ≤ `threshold` (the edge after bin `bin`).
    Numeric {
        /// Last bin on the left.
        bin: u8,
        /// The value edge, for people and for scoring raw values.
        threshold: f64,
    },
    /// Left = the slots in `left`.
    Categorical {
        /// The categories that go left.
        left: CategorySet,
    },
}

impl SplitRule {
    /// Whether a row with this bin (of the split's feature) goes left.
    pub fn goes_left(&self, bin: u8) -> bool {
        match self {
            Self::Numeric { bin: k, .. } => bin <= *k,
            Self::Categorical { left } => left.contains(bin),
        }
    }
}

/// The best split of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The feature split on.
    pub feature: usize,
    /// Which rows go left.
    pub rule: SplitRule,
    /// Its gain (γ already subtracted), > 0.
    pub gain: f64,
    /// Sums of the left child.
    pub left: NodeStats,
    /// Sums of the right child.
    pub right: NodeStats,
}

/// The settings split finding uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitSettings {
    /// λ.
    pub lambda: f64,
    /// γ.
    pub gamma: f64,
    /// Least hessian sum in a child.
    pub min_child_weight: f64,
    /// How categorical features split.
    pub categorical: CategoricalMode,
}

impl From<&GbdtParams> for SplitSettings {
    fn from(p: &GbdtParams) -> Self {
        Self {
            lambda: p.lambda,
            gamma: p.gamma,
            min_child_weight: p.min_child_weight,
            categorical: p.categorical,
        }
    }
}

/// Keeps the best candidate seen so far.
struct Best<'s> {
    settings: &'s SplitSettings,
    best: Option<Split>,
}

impl Best<'_> {
    fn allowed(&self, s: NodeStats) -> bool {
        s.h >= self.settings.min_child_weight && s.count >= 0.5
    }

    fn offer(
        &mut self,
        feature: usize,
        left: NodeStats,
        total: NodeStats,
        rule: impl FnOnce() -> SplitRule,
    ) {
        let right = total.sub(left);
        if !self.allowed(left) || !self.allowed(right) {
            return;
        }
        let gain = split_gain(left, right, self.settings.lambda, self.settings.gamma);
        let better = match &self.best {
            Some(b) => gain > b.gain,
            None => gain > 0.0,
        };
        if better && gain.is_finite() {
            self.best = Some(Split {
                feature,
                rule: rule(),
                gain,
                left,
                right,
            });
        }
    }
}

/// The best split of a node from its histogram block, over the features with `allowed[f]`
/// (all when `allowed` is empty); `None` when no allowed split has a positive gain. An error
/// when the block, the layout and the features do not agree.
pub fn best_split(
    layout: &HistLayout,
    node: &[f64],
    features: &[Feature],
    allowed: &[bool],
    settings: &SplitSettings,
) -> Result<Option<Split>, GbdtError> {
    let agree = node.len() == layout.node_len()
        && layout.n_features() == features.len()
        && features
            .iter()
            .enumerate()
            .all(|(f, feature)| layout.n_bins(f) == feature.edges.n_bins());
    if !agree {
        return Err(GbdtError::Shape(
            "a histogram block that does not match its layout and features".into(),
        ));
    }
    let mut best = Best {
        settings,
        best: None,
    };
    for (f, feature) in features.iter().enumerate() {
        if !allowed.is_empty() && !allowed.get(f).copied().unwrap_or(false) {
            continue;
        }
        let hist = layout.feature(node, f);
        let n_bins = layout.n_bins(f);
        let bins: Vec<NodeStats> = (0..n_bins).map(|b| NodeStats::of_bin(hist, b)).collect();
        let total = bins.iter().fold(NodeStats::default(), |a, &b| a.add(b));
        match &feature.edges {
            BinEdges::Numeric { thresholds } => {
                let mut left = NodeStats::default();
                for (k, &t) in thresholds.iter().enumerate().take(n_bins.saturating_sub(1)) {
                    left = left.add(bins[k]);
                    best.offer(f, left, total, || SplitRule::Numeric {
                        bin: k as u8,
                        threshold: t,
                    });
                }
            }
            BinEdges::Categorical { .. } => {
                categorical(&mut best, f, &bins, total, settings);
            }
        }
    }
    Ok(best.best)
}

fn categorical(
    best: &mut Best<'_>,
    f: usize,
    bins: &[NodeStats],
    total: NodeStats,
    settings: &SplitSettings,
) {
    // Slots fit in u8: categorical features have at most 256 bins.
    let mut present: Vec<u8> = (0..bins.len())
        .filter(|&c| bins[c].count >= 0.5)
        .map(|c| c as u8)
        .collect();
    if present.len() < 2 {
        return;
    }
    match settings.categorical {
        CategoricalMode::OneHot => {
            for &c in &present {
                best.offer(f, bins[usize::from(c)], total, || SplitRule::Categorical {
                    left: CategorySet::from(vec![c]),
                });
            }
        }
        CategoricalMode::Native => {
            let key = |c: u8| {
                let s = bins[usize::from(c)];
                if s.h + settings.lambda > 0.0 {
                    s.g / (s.h + settings.lambda)
                } else {
                    0.0
                }
            };
            // Stable sort: equal keys keep slot order.
            present.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
            let mut left = NodeStats::default();
            for k in 0..present.len() - 1 {
                left = left.add(bins[usize::from(present[k])]);
                best.offer(f, left, total, || SplitRule::Categorical {
                    left: CategorySet::from(present[..=k].to_vec()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(g: f64, h: f64, count: f64) -> NodeStats {
        NodeStats { g, h, count }
    }

    #[test]
    fn gain_and_leaf_weight_by_hand() {
        // Left (G, H) = (−4, 2), right (6, 3), λ = 1, γ = 0.5:
        // ½ (16/3 + 36/4 − 4/6) − 0.5 = ½ (5.3333… + 9 − 0.6666…) − 0.5 = 6.3333…
        let g = split_gain(s(-4.0, 2.0, 5.0), s(6.0, 3.0, 5.0), 1.0, 0.5);
        assert!((g - (0.5 * (16.0 / 3.0 + 9.0 - 4.0 / 6.0) - 0.5)).abs() < 1e-12);
        assert!((g - 19.0 / 3.0).abs() < 1e-12, "{g}");
        // −G/(H+λ): −(−4)/(2+1) = 4/3; empty node without λ → 0.
        assert!((leaf_weight(-4.0, 2.0, 1.0) - 4.0 / 3.0).abs() < 1e-15);
        assert_eq!(leaf_weight(3.0, 0.0, 0.0), 0.0);
        // A split that separates nothing gains −γ.
        assert!((split_gain(s(1.0, 1.0, 1.0), s(1.0, 1.0, 1.0), 0.0, 0.25) + 0.25).abs() < 1e-15);
    }

    #[test]
    fn category_sets_route_and_serialise_as_lists() {
        let set = CategorySet::from(vec![0, 63, 64, 255]);
        assert!(set.contains(255) && set.contains(64) && !set.contains(1));
        assert_eq!(serde_json::to_string(&set).unwrap(), "[0,63,64,255]");
        let rule = SplitRule::Categorical { left: set };
        assert!(rule.goes_left(63) && !rule.goes_left(65));
        let back: SplitRule = serde_json::from_str(&serde_json::to_string(&rule).unwrap()).unwrap();
        assert_eq!(back, rule);
        assert!(
            SplitRule::Numeric {
                bin: 3,
                threshold: 0.5
            }
            .goes_left(3)
        );
        assert!(
            !SplitRule::Numeric {
                bin: 3,
                threshold: 0.5
            }
            .goes_left(4)
        );
    }
}
