//! Fast scoring: a model compiled for prediction over many rows.
//!
//! [`Scorer`] lays every tree out as a complete binary tree of the model's depth in heap order
//! (node `i`'s children at `2i + 1` and `2i + 2`), so a row takes exactly `depth` steps per
//! tree with no branch on the tree's shape: a leaf above the last level becomes a node whose
//! rule sends every row left, with the leaf's value copied to every leaf below it. Every rule is
//! a set of bins that go left — a numeric rule "bin ≤ k" is the set {0, …, k} — so one step is a
//! bit test, the same for numeric and categorical splits. Rows are scored in blocks, each tree
//! walked for the whole block level by level, so the independent rows' steps overlap.
//!
//! Trees deeper than [`MAX_COMPILED_DEPTH`] (a leaf-budget model grown to depth 16) would
//! need 2^depth nodes each; such models are scored by walking their nodes instead. Both paths
//! give bit-for-bit the margins of [`GbdtModel::predict_margin_binned`]: the same leaves,
//! added in the same order.

use super::bins::BinnedRows;
use super::error::GbdtError;
use super::split::SplitRule;
use super::tree::{GbdtModel, Node, Tree};

/// The deepest trees laid out as complete trees (2^10 leaves, 32 KB of rules per tree).
pub const MAX_COMPILED_DEPTH: usize = 10;

/// Rows whose steps through one tree are interleaved.
const BLOCK: usize = 16;
/// Rows that meet each tree in turn (their bins stay in cache across the trees).
const CHUNK: usize = 1024;

/// A model compiled for scoring (see the module doc).
#[derive(Debug, Clone)]
pub struct Scorer {
    base_margin: f64,
    n_bins: Vec<usize>,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// Complete trees of `depth` levels: per tree `2^depth` slots of rules (the last unused)
    /// and `2^depth` leaves.
    Complete {
        depth: usize,
        trees: usize,
        feature: Vec<u8>,
        left: Vec<[u64; 4]>,
        leaves: Vec<f64>,
    },
    /// The trees as they are.
    Walk(Vec<Tree>),
}

fn rule_set(rule: &SplitRule) -> [u64; 4] {
    match rule {
        SplitRule::Numeric { bin, .. } => {
            let mut set = [0u64; 4];
            for b in 0..=usize::from(*bin) {
                set[b >> 6] |= 1 << (b & 63);
            }
            set
        }
        SplitRule::Categorical { left } => left.words(),
    }
}

/// Fills the complete tree's position `pos` (at `level`) from node `node` of `nodes`.
#[allow(clippy::too_many_arguments)]
fn fill(
    nodes: &[Node],
    node: usize,
    pos: usize,
    level: usize,
    depth: usize,
    feature: &mut [u8],
    left: &mut [[u64; 4]],
    leaves: &mut [f64],
) {
    let inner = (1 << depth) - 1;
    if level == depth {
        leaves[pos - inner] = match &nodes[node] {
            Node::Leaf { value, .. } => *value,
            // A tree is never deeper than the model's depth.
            Node::Split { .. } => 0.0,
        };
        return;
    }
    let (l, r) = match &nodes[node] {
        Node::Split {
            feature: f,
            rule,
            left: l,
            right: r,
            ..
        } => {
            // The compiled layout is only built for at most 256 features.
            feature[pos] = *f as u8;
            left[pos] = rule_set(rule);
            (*l as usize, *r as usize)
        }
        Node::Leaf { .. } => {
            feature[pos] = 0;
            left[pos] = [u64::MAX; 4];
            (node, node)
        }
    };
    let args = (feature, left, leaves);
    fill(
        nodes,
        l,
        2 * pos + 1,
        level + 1,
        depth,
        args.0,
        args.1,
        args.2,
    );
    fill(
        nodes,
        r,
        2 * pos + 2,
        level + 1,
        depth,
        args.0,
        args.1,
        args.2,
    );
}

/// One complete tree's arrays, each `N = 2^depth` long: rules at `0..N − 1` (the last slot
/// unused), leaves at `0..N`. With `N` a constant and indices masked with `N − 1`, and bins
/// looked up by a `u8` feature in a 256-row table, no index needs a run-time bounds check.
struct TreeArrays<'a, const N: usize> {
    feature: &'a [u8; N],
    left: &'a [[u64; 4]; N],
    leaves: &'a [f64; N],
}

impl<const N: usize> TreeArrays<'_, N> {
    /// Adds the tree's value to a block of rows (their bins transposed: `bins[f][r]`), the
    /// rows' steps interleaved.
    #[inline]
    fn add_block(&self, bins: &[[u8; BLOCK]; 256], depth: usize, margins: &mut [f64; BLOCK]) {
        let mut pos = [0usize; BLOCK];
        for _ in 0..depth {
            for (r, p) in pos.iter_mut().enumerate() {
                let node = *p & (N - 1);
                let bin = bins[usize::from(self.feature[node])][r];
                let goes_right = (!self.left[node][usize::from(bin >> 6)] >> (bin & 63)) & 1;
                *p = 2 * *p + 1 + goes_right as usize;
            }
        }
        for (m, p) in margins.iter_mut().zip(pos) {
            *m += self.leaves[(p + 1) & (N - 1)];
        }
    }
}

/// Scores complete trees of `2^depth = N` slots over rows in blocks (see [`Scorer`]).
fn score_complete<const N: usize>(
    depth: usize,
    trees: usize,
    (feature, left, leaves): (&[u8], &[[u64; 4]], &[f64]),
    bins: &[u8],
    width: usize,
    out: &mut [f64],
) {
    let mut table = [[0u8; BLOCK]; 256];
    let mut block = [0.0; BLOCK];
    // A chunk of rows meets every tree in turn, so a tree's arrays are read from cache for
    // the whole chunk; within it rows go in blocks whose steps overlap.
    for (c, chunk) in out.chunks_mut(CHUNK).enumerate() {
        let first = c * CHUNK;
        let blocks = chunk.len().div_ceil(BLOCK);
        let mut tables = Vec::with_capacity(blocks);
        for b in 0..blocks {
            for row in table.iter_mut() {
                row.fill(0);
            }
            let rows = (chunk.len() - b * BLOCK).min(BLOCK);
            let at = (first + b * BLOCK) * width;
            // `max(1)`: a model without features has no split to look a bin up for.
            for (r, row) in bins[at..at + rows * width]
                .chunks_exact(width.max(1))
                .enumerate()
            {
                for (f, &bin) in row.iter().enumerate() {
                    table[f][r] = bin;
                }
            }
            tables.push(table);
        }
        for t in 0..trees {
            let range = t * N..(t + 1) * N;
            let (Ok(feature), Ok(left), Ok(leaves)) = (
                <&[u8; N]>::try_from(&feature[range.clone()]),
                <&[[u64; 4]; N]>::try_from(&left[range.clone()]),
                <&[f64; N]>::try_from(&leaves[range]),
            ) else {
                continue;
            };
            let tree = TreeArrays {
                feature,
                left,
                leaves,
            };
            for (margins, table) in chunk.chunks_mut(BLOCK).zip(&tables) {
                block[..margins.len()].copy_from_slice(margins);
                tree.add_block(table, depth, &mut block);
                margins.copy_from_slice(&block[..margins.len()]);
            }
        }
    }
}

impl Scorer {
    /// Compiles a model.
    pub fn new(model: &GbdtModel) -> Self {
        Self::compiled_to(model, MAX_COMPILED_DEPTH)
    }

    /// Compiles a model whose trees are at most `max_depth` deep; walks deeper ones.
    fn compiled_to(model: &GbdtModel, max_depth: usize) -> Self {
        let n_bins = model.features().iter().map(|f| f.edges.n_bins()).collect();
        let depth = model.trees().iter().map(Tree::depth).max().unwrap_or(0);
        let few_features = model.features().len() <= 256;
        let layout = if depth <= max_depth && few_features {
            let trees = model.trees().len();
            let size = 1usize << depth;
            let mut feature = vec![0u8; trees * size];
            let mut left = vec![[0u64; 4]; trees * size];
            let mut leaves = vec![0.0; trees * size];
            for (t, tree) in model.trees().iter().enumerate() {
                fill(
                    tree.nodes(),
                    0,
                    0,
                    0,
                    depth,
                    &mut feature[t * size..(t + 1) * size],
                    &mut left[t * size..(t + 1) * size],
                    &mut leaves[t * size..(t + 1) * size],
                );
            }
            Layout::Complete {
                depth,
                trees,
                feature,
                left,
                leaves,
            }
        } else {
            Layout::Walk(model.trees().to_vec())
        };
        Self {
            base_margin: model.base_margin(),
            n_bins,
            layout,
        }
    }

    /// Whether the trees were laid out as complete trees (the fast path).
    pub fn is_compiled(&self) -> bool {
        matches!(self.layout, Layout::Complete { .. })
    }

    /// Margins of binned rows (binned with the model's features), into `out` (one per row).
    pub fn margins_into(&self, rows: &BinnedRows, out: &mut Vec<f64>) -> Result<(), GbdtError> {
        if rows.n_bins() != self.n_bins.as_slice() {
            return Err(GbdtError::Shape(
                "rows were binned with other edges than the model's".into(),
            ));
        }
        out.clear();
        out.resize(rows.len(), self.base_margin);
        match &self.layout {
            Layout::Walk(trees) => {
                for (r, m) in out.iter_mut().enumerate() {
                    for tree in trees {
                        *m += tree.predict(rows.row(r));
                    }
                }
            }
            Layout::Complete {
                depth,
                trees,
                feature,
                left,
                leaves,
            } => {
                let arrays = (feature.as_slice(), left.as_slice(), leaves.as_slice());
                let (bins, width) = (rows.bins(), self.n_bins.len());
                let run = match depth {
                    0 => score_complete::<1>,
                    1 => score_complete::<2>,
                    2 => score_complete::<4>,
                    3 => score_complete::<8>,
                    4 => score_complete::<16>,
                    5 => score_complete::<32>,
                    6 => score_complete::<64>,
                    7 => score_complete::<128>,
                    8 => score_complete::<256>,
                    9 => score_complete::<512>,
                    _ => score_complete::<1024>,
                };
                run(*depth, *trees, arrays, bins, width, out);
            }
        }
        Ok(())
    }

    /// Margins of binned rows.
    pub fn margins(&self, rows: &BinnedRows) -> Result<Vec<f64>, GbdtError> {
        let mut out = Vec::new();
        self.margins_into(rows, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::features::{Categorical, FeatureSchema, RawRows};
    use crate::gbdt::bins::Feature;
    use crate::gbdt::params::GbdtParams;
    use crate::gbdt::train::train;

    fn data(n: usize, seed: u64) -> (FeatureSchema, RawRows) {
        let schema = FeatureSchema {
            numeric: vec!["a".into(), "b".into()],
            categorical: vec![(
                "c".into(),
                Categorical::Vocabulary((0..6).map(|v| format!("v{v}")).collect()),
            )],
            ranges: vec![Some([0.0, 1.0]), Some([0.0, 1.0])],
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rows = RawRows::new(&schema);
        for _ in 0..n {
            let (a, b) = (rng.random::<f64>(), rng.random::<f64>());
            let c = rng.random_range(0..7u32);
            let y = a * b + if c % 3 == 0 { 0.3 } else { 0.0 } + 0.3 * rng.random::<f64>() > 0.5;
            rows.push(&[a, b], &[c], y);
        }
        (schema, rows)
    }

    /// The compiled scorer and the walk give the model's own margins, bit for bit, for
    /// shallow and unbalanced trees, a leaf-budget model (walked, as one too deep to compile
    /// would be), and a model without trees.
    #[test]
    fn compiled_margins_are_the_models_bit_for_bit() {
        let (schema, rows) = data(3000, 1);
        let features = Feature::from_ranges(&schema, 32).unwrap();
        let binned = BinnedRows::from_raw(&rows, &features).unwrap();
        let (held_schema, held) = data(777, 2);
        assert_eq!(held_schema, schema);
        let held = BinnedRows::from_raw(&held, &features).unwrap();
        for (params, max_depth) in [
            (
                GbdtParams {
                    trees: 30,
                    max_depth: 4,
                    ..Default::default()
                },
                MAX_COMPILED_DEPTH,
            ),
            (
                GbdtParams {
                    trees: 20,
                    max_depth: 12,
                    max_leaves: Some(9),
                    min_child_weight: 0.01,
                    ..Default::default()
                },
                2,
            ),
            (
                GbdtParams {
                    trees: 10,
                    max_depth: 6,
                    min_child_weight: 5.0,
                    ..Default::default()
                },
                MAX_COMPILED_DEPTH,
            ),
        ] {
            let (model, _) = train(&params, &features, &binned, None).unwrap();
            let scorer = Scorer::compiled_to(&model, max_depth);
            let deepest = model.trees().iter().map(Tree::depth).max().unwrap();
            assert_eq!(
                scorer.is_compiled(),
                deepest <= max_depth,
                "depth {deepest}"
            );
            let fast = scorer.margins(&held).unwrap();
            let slow = model.predict_margin_binned(&held).unwrap();
            assert_eq!(fast.len(), held.len());
            for (r, (a, b)) in fast.iter().zip(&slow).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "row {r}: {a} vs {b}");
            }
            // Trees of several depths in one model: some leaves sit above the last level.
            let depths: std::collections::BTreeSet<usize> =
                model.trees().iter().map(Tree::depth).collect();
            assert!(depths.len() > 1 || model.trees().iter().any(|t| t.leaves() < 1 << deepest));
        }
        let empty = GbdtModel::new(features.clone(), 0.25, Vec::new());
        let scorer = Scorer::new(&empty);
        assert_eq!(
            scorer.margins(&held).unwrap(),
            empty.predict_margin_binned(&held).unwrap()
        );
        // Rows binned with other edges are refused.
        let other = Feature::from_ranges(&schema, 8).unwrap();
        let (_, raw) = data(5, 3);
        let wrong = BinnedRows::from_raw(&raw, &other).unwrap();
        assert!(scorer.margins(&wrong).is_err());
    }
}
