//! Gradient and hessian histograms, flat, so a whole level adds as one vector.
//!
//! Layout ([`HistLayout`]). A node's histogram is a block of `3 · B` values, where `B` is the
//! total number of bins over all features: feature `f` occupies bins `offset(f) ..
//! offset(f) + n_bins(f)`, features in order, and bin `b` of feature `f` holds at
//! `3 · (offset(f) + b)` the triple (Σ gradient, Σ hessian, row count). A level's vector is
//! the blocks of the nodes it asks for, one after the other, in the order given (the trainer
//! gives ascending node ids). Each row adds (g, h, 1) to exactly one bin of every feature of
//! exactly one node, so histograms of disjoint row sets add: the sum over partners of their
//! level vectors is the level vector of the pooled rows, which is what the secure sum
//! computes and all the coordinator needs.
//!
//! Every feature's bins are included even for features a tree does not use (column
//! subsampling), so the vector's length depends on the edges and the node count only.

use serde::{Deserialize, Serialize};

use super::bins::{BinnedRows, Feature};
use super::error::GbdtError;

/// Values per bin: gradient sum, hessian sum, count.
pub const STRIDE: usize = 3;
/// Position of the gradient sum in a bin's triple.
pub const GRAD: usize = 0;
/// Position of the hessian sum in a bin's triple.
pub const HESS: usize = 1;
/// Position of the row count in a bin's triple.
pub const COUNT: usize = 2;
/// `node_of_row` value of a row that is in no node (left out by row subsampling).
pub const NO_NODE: u32 = u32::MAX;

/// A node's (or a side's) sums: gradient, hessian, rows.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// Σ gradient.
    pub g: f64,
    /// Σ hessian.
    pub h: f64,
    /// Rows.
    pub count: f64,
}

impl NodeStats {
    pub(crate) fn add(self, o: Self) -> Self {
        Self {
            g: self.g + o.g,
            h: self.h + o.h,
            count: self.count + o.count,
        }
    }

    pub(crate) fn sub(self, o: Self) -> Self {
        Self {
            g: self.g - o.g,
            h: self.h - o.h,
            count: self.count - o.count,
        }
    }

    pub(crate) fn of_bin(hist: &[f64], b: usize) -> Self {
        Self {
            g: hist[STRIDE * b + GRAD],
            h: hist[STRIDE * b + HESS],
            count: hist[STRIDE * b + COUNT],
        }
    }
}

/// Where each feature's bins sit in a node's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistLayout {
    offsets: Vec<usize>,
    n_bins: Vec<usize>,
    total_bins: usize,
}

impl HistLayout {
    /// The layout of a set of features.
    pub fn new(features: &[Feature]) -> Self {
        Self::from_bin_counts(features.iter().map(|f| f.edges.n_bins()).collect())
    }

    fn from_bin_counts(n_bins: Vec<usize>) -> Self {
        let mut offsets = Vec::with_capacity(n_bins.len());
        let mut total_bins = 0;
        for &n in &n_bins {
            offsets.push(total_bins);
            total_bins += n;
        }
        Self {
            offsets,
            n_bins,
            total_bins,
        }
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.n_bins.len()
    }

    /// Bins of feature `f`.
    pub fn n_bins(&self, f: usize) -> usize {
        self.n_bins[f]
    }

    /// Length of one node's block: `3 · Σ bins`.
    pub fn node_len(&self) -> usize {
        STRIDE * self.total_bins
    }

    /// Index within a node's block of bin `b` of feature `f` (its gradient sum; the hessian
    /// sum and count follow).
    pub fn index(&self, f: usize, b: usize) -> usize {
        STRIDE * (self.offsets[f] + b)
    }

    /// The `3 · n_bins(f)` values of feature `f` within a node's block.
    pub fn feature<'h>(&self, node: &'h [f64], f: usize) -> &'h [f64] {
        &node[self.index(f, 0)..self.index(f, self.n_bins[f])]
    }

    /// The node's totals, from its first feature's bins (every row is in one bin of each
    /// feature). Zero without features.
    pub fn totals(&self, node: &[f64]) -> NodeStats {
        if self.n_bins.is_empty() {
            return NodeStats::default();
        }
        let mut s = NodeStats::default();
        for t in self.feature(node, 0).chunks_exact(STRIDE) {
            s.g += t[GRAD];
            s.h += t[HESS];
            s.count += t[COUNT];
        }
        s
    }

    /// The node's totals as the mean of its features' totals: what noised sums give best
    /// (each feature's bins hold every row once, so each feature's total estimates the same
    /// sums with its own noise). Zero without features.
    pub fn mean_totals(&self, node: &[f64]) -> NodeStats {
        let mut s = NodeStats::default();
        for f in 0..self.n_bins.len() {
            for t in self.feature(node, f).chunks_exact(STRIDE) {
                s.g += t[GRAD];
                s.h += t[HESS];
                s.count += t[COUNT];
            }
        }
        let n = self.n_bins.len().max(1) as f64;
        NodeStats {
            g: s.g / n,
            h: s.h / n,
            count: s.count / n,
        }
    }

    fn check(&self, rows: &BinnedRows, grad: &[f64], hess: &[f64]) -> Result<(), GbdtError> {
        if rows.n_bins() != self.n_bins.as_slice() {
            return Err(GbdtError::Shape(
                "rows were binned with other edges than the layout's".into(),
            ));
        }
        if grad.len() != rows.len() || hess.len() != rows.len() {
            return Err(GbdtError::Shape(format!(
                "{} gradients and {} hessians for {} rows",
                grad.len(),
                hess.len(),
                rows.len()
            )));
        }
        Ok(())
    }

    /// Adds row `r` to a node block.
    fn add_row(&self, rows: &BinnedRows, r: usize, g: f64, h: f64, block: &mut [f64]) {
        for (&off, &b) in self.offsets.iter().zip(rows.row(r)) {
            let i = STRIDE * (off + b as usize);
            block[i + GRAD] += g;
            block[i + HESS] += h;
            block[i + COUNT] += 1.0;
        }
    }

    /// The histogram of one node holding the rows `row_ids`.
    pub fn node_histogram(
        &self,
        rows: &BinnedRows,
        row_ids: &[usize],
        grad: &[f64],
        hess: &[f64],
    ) -> Result<Vec<f64>, GbdtError> {
        self.check(rows, grad, hess)?;
        let mut block = vec![0.0; self.node_len()];
        for &r in row_ids {
            if r >= rows.len() {
                return Err(GbdtError::Shape(format!("row {r} of {}", rows.len())));
            }
            self.add_row(rows, r, grad[r], hess[r], &mut block);
        }
        Ok(block)
    }

    /// One party's level vector: the blocks of the nodes `built` (in that order), each row
    /// `r` added to the block of node `node_of_row[r]` when that node is built (rows in other
    /// nodes, or in [`NO_NODE`], add nothing). One pass over the rows.
    pub fn level_histograms(
        &self,
        rows: &BinnedRows,
        node_of_row: &[u32],
        built: &[u32],
        grad: &[f64],
        hess: &[f64],
    ) -> Result<Vec<f64>, GbdtError> {
        self.check(rows, grad, hess)?;
        if node_of_row.len() != rows.len() {
            return Err(GbdtError::Shape(format!(
                "{} node assignments for {} rows",
                node_of_row.len(),
                rows.len()
            )));
        }
        // Node id → position in `built`.
        let top = built.iter().map(|&n| n as usize + 1).max().unwrap_or(0);
        let mut position = vec![usize::MAX; top];
        for (p, &n) in built.iter().enumerate() {
            position[n as usize] = p;
        }
        let len = self.node_len();
        let mut out = vec![0.0; len * built.len()];
        for (r, &node) in node_of_row.iter().enumerate() {
            match position.get(node as usize) {
                Some(&p) if p != usize::MAX => {
                    self.add_row(rows, r, grad[r], hess[r], &mut out[p * len..(p + 1) * len]);
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A sibling's histogram from its parent's and the other sibling's: `parent − child`,
/// element by element (the rows of a parent are the disjoint union of its children's).
/// Lets a level ask the secure sum only for the smaller child of each split.
pub fn subtract(parent: &[f64], child: &[f64]) -> Vec<f64> {
    parent.iter().zip(child).map(|(p, c)| p - c).collect()
}

/// Bounds on one row's contribution to a level vector, which the fixed-point codec needs to
/// size its range: the row adds (g, h, 1) to one bin of each of `F` features of one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowBound {
    /// Largest absolute value of a coordinate it adds: `max(|g|max, h_max, 1)`.
    pub linf: f64,
    /// L2 norm of what it adds: `sqrt(F · (g_max² + h_max² + 1))`.
    pub l2: f64,
}

impl RowBound {
    /// The bound for `n_features` features with |g| ≤ `g_max` and 0 ≤ h ≤ `h_max`.
    pub fn new(n_features: usize, g_max: f64, h_max: f64) -> Self {
        Self {
            linf: g_max.max(h_max).max(1.0),
            l2: (n_features as f64 * (g_max * g_max + h_max * h_max + 1.0)).sqrt(),
        }
    }

    /// The bound for binary log-loss: g = p − y ∈ [−1, 1], h = p(1 − p) ∈ [0, 1/4].
    pub fn logistic(n_features: usize) -> Self {
        Self::new(n_features, 1.0, 0.25)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gbdt::bins::BinEdges;

    #[test]
    fn layout_offsets_and_logistic_bound_by_hand() {
        let features = vec![
            Feature {
                name: "a".into(),
                edges: BinEdges::from_range(0.0, 1.0, 4).unwrap(),
            },
            Feature {
                name: "c".into(),
                edges: BinEdges::categorical(3).unwrap(),
            },
        ];
        let l = HistLayout::new(&features);
        assert_eq!(l.node_len(), 3 * 7);
        assert_eq!(l.index(0, 2), 6);
        assert_eq!(l.index(1, 0), 12);
        assert_eq!(l.index(1, 2), 18);
        // Two features: each adds (g, h, 1) = (1, 1/4, 1) at most, so L2² = 2·(1 + 1/16 + 1)
        // = 4.125 and L∞ = 1.
        let b = RowBound::logistic(2);
        assert_eq!(b.linf, 1.0);
        assert!((b.l2 - 4.125f64.sqrt()).abs() < 1e-15);
        assert_eq!(RowBound::new(1, 3.0, 0.5).linf, 3.0);
        assert_eq!(RowBound::new(4, 0.0, 0.0).l2, 2.0);
    }
}
