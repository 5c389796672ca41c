//! Global bin edges and binned rows.
//!
//! Every party bins with the same edges, fixed before training, so a bin index means the same
//! value interval everywhere and histograms add. A numeric feature's edges come either from its
//! declared range (fixed width, [`BinEdges::from_range`]) or from a fine fixed-width histogram
//! over that range ([`FineGrid`]): each partner counts its own values per fine cell, the counts
//! are summed securely, and [`BinEdges::from_histogram`] derives quantile edges from the sum
//! alone — no partner reveals its own quantiles. A categorical feature has one bin per slot of
//! its [`Categorical`](crate::features::Categorical) encoding.
//!
//! Numeric bins are left-open intervals: with thresholds t₀ < t₁ < … , bin `b` holds the
//! values in (t_{b−1}, t_b], so "bin ≤ k" is exactly "value ≤ t_k" and a split at a bin
//! boundary is a split at a value. Values below the first threshold (or above the last) fall
//! in the first (or last) bin, as if clamped; NaN falls in bin 0.

use serde::{Deserialize, Serialize};

use super::error::{BinError, GbdtError};
use super::params::MAX_BINS;
use crate::features::{FeatureSchema, RawRows};

/// The most cells of a fine sketch grid.
pub const MAX_GRID_CELLS: usize = 1 << 20;

/// A fixed-width grid of `cells` cells over `[low, high]`, on which partners count their
/// values for the quantile sketch. Cell `c` holds the values in (b_c, b_{c+1}] where
/// `b_k = low + (high − low)·k/cells` (the first cell also holds everything ≤ b_1, the last
/// everything above b_{cells−1}), the same left-open convention as the bins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineGrid {
    low: f64,
    high: f64,
    cells: usize,
}

impl FineGrid {
    /// A grid over a finite, non-empty range with 1..=2^20 cells.
    pub fn new(low: f64, high: f64, cells: usize) -> Result<Self, BinError> {
        if !(low.is_finite() && high.is_finite() && low < high && (high - low).is_finite()) {
            return Err(BinError::BadRange { low, high });
        }
        if !(1..=MAX_GRID_CELLS).contains(&cells) {
            return Err(BinError::BadCount {
                count: cells,
                allowed: "1..=1048576",
            });
        }
        Ok(Self { low, high, cells })
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.cells
    }

    /// Boundary `k` (0 ≤ k ≤ cells): `low + (high − low)·k/cells`.
    pub fn boundary(&self, k: usize) -> f64 {
        self.low + (self.high - self.low) * (k as f64 / self.cells as f64)
    }

    /// The cell of `x`: the number of interior boundaries strictly below it. Computed by
    /// arithmetic, then corrected against [`FineGrid::boundary`] itself so that the cell and
    /// the thresholds derived from boundaries never disagree by a rounding.
    pub fn cell(&self, x: f64) -> usize {
        let last = self.cells - 1;
        let guess = ((x - self.low) / (self.high - self.low) * self.cells as f64).ceil() - 1.0;
        // `as` saturates and maps NaN to 0.
        let mut c = (guess.max(0.0) as usize).min(last);
        while c > 0 && x <= self.boundary(c) {
            c -= 1;
        }
        while c < last && x > self.boundary(c + 1) {
            c += 1;
        }
        c
    }

    /// Counts of `values` per cell: one partner's share of the summed sketch.
    pub fn counts(&self, values: impl IntoIterator<Item = f64>) -> Vec<f64> {
        let mut out = vec![0.0; self.cells];
        for x in values {
            out[self.cell(x)] += 1.0;
        }
        out
    }
}

fn check_bins(max_bins: usize) -> Result<(), BinError> {
    if (2..=MAX_BINS).contains(&max_bins) {
        Ok(())
    } else {
        Err(BinError::BadCount {
            count: max_bins,
            allowed: "2..=256",
        })
    }
}

/// The bin edges of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BinEdges {
    /// Strictly increasing thresholds; `thresholds.len() + 1` bins (at most 256).
    Numeric {
        /// t₀ < t₁ < …; bin `b` holds (t_{b−1}, t_b].
        thresholds: Vec<f64>,
    },
    /// One bin per category slot (1..=256 slots).
    Categorical {
        /// Number of slots.
        slots: usize,
    },
}

impl BinEdges {
    /// Fixed-width bins over a declared range: `max_bins` (2..=256) bins of equal width.
    pub fn from_range(low: f64, high: f64, max_bins: usize) -> Result<Self, BinError> {
        check_bins(max_bins)?;
        let grid = FineGrid::new(low, high, max_bins)?;
        let mut thresholds: Vec<f64> = (1..max_bins).map(|k| grid.boundary(k)).collect();
        thresholds.dedup();
        Ok(Self::Numeric { thresholds })
    }

    /// Quantile bins from a fine histogram: `counts[c]` values in cell `c` of the fixed-width
    /// grid of `counts.len()` cells over `[low, high]` (see [`FineGrid`]), typically the sum of
    /// every partner's [`FineGrid::counts`]. Thresholds are cell boundaries. Cells are taken
    /// in order into a bin until it holds at least the remaining mass over the remaining bins,
    /// so a heavy cell gets a bin of its own and the bins after it share the rest; no bin is
    /// opened after the last non-empty cell. Negative or NaN counts (noise) count as 0; with
    /// no mass at all the feature has a single bin (it cannot be split). A function of the
    /// counts alone: equal counts give equal edges, whoever holds the rows.
    pub fn from_histogram(
        counts: &[f64],
        low: f64,
        high: f64,
        max_bins: usize,
    ) -> Result<Self, BinError> {
        check_bins(max_bins)?;
        let grid = FineGrid::new(low, high, counts.len())?;
        let clean = |n: f64| if n > 0.0 { n } else { 0.0 };
        let mut rest_mass: f64 = counts.iter().map(|&n| clean(n)).sum();
        let mut rest_bins = max_bins;
        let mut acc = 0.0;
        let mut thresholds = Vec::new();
        for (c, &n) in counts.iter().enumerate().take(counts.len() - 1) {
            acc += clean(n);
            let enough = acc > 0.0 && acc * rest_bins as f64 >= rest_mass;
            if rest_bins > 1 && enough && rest_mass - acc > 0.0 {
                thresholds.push(grid.boundary(c + 1));
                rest_mass -= acc;
                rest_bins -= 1;
                acc = 0.0;
            }
        }
        thresholds.dedup();
        Ok(Self::Numeric { thresholds })
    }

    /// One bin per category slot, 1..=256 slots.
    pub fn categorical(slots: usize) -> Result<Self, BinError> {
        if (1..=MAX_BINS).contains(&slots) {
            Ok(Self::Categorical { slots })
        } else {
            Err(BinError::TooManyCategories { slots })
        }
    }

    /// Number of bins.
    pub fn n_bins(&self) -> usize {
        match self {
            Self::Numeric { thresholds } => thresholds.len() + 1,
            Self::Categorical { slots } => *slots,
        }
    }

    /// Whether the feature is categorical.
    pub fn is_categorical(&self) -> bool {
        matches!(self, Self::Categorical { .. })
    }

    /// The bin of a numeric value (for a categorical feature the slot is the bin).
    pub fn numeric_bin(&self, x: f64) -> u8 {
        match self {
            // At most 255 thresholds, so the count fits in a u8.
            Self::Numeric { thresholds } => thresholds.partition_point(|&t| t < x) as u8,
            Self::Categorical { .. } => 0,
        }
    }

    /// Checks the invariants a deserialised value may break.
    pub(crate) fn check(&self) -> Result<(), BinError> {
        match self {
            Self::Numeric { thresholds } => {
                // No threshold (one bin) is legal: a feature with no mass.
                if thresholds.len() >= MAX_BINS {
                    return Err(BinError::BadCount {
                        count: thresholds.len() + 1,
                        allowed: "1..=256",
                    });
                }
                let sorted = thresholds.windows(2).all(|w| w[0] < w[1]);
                if !sorted || thresholds.iter().any(|t| !t.is_finite()) {
                    return Err(BinError::BadRange {
                        low: thresholds.first().copied().unwrap_or(f64::NAN),
                        high: thresholds.last().copied().unwrap_or(f64::NAN),
                    });
                }
                Ok(())
            }
            Self::Categorical { slots } => Self::categorical(*slots).map(|_| ()),
        }
    }
}

/// A named feature with its edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// The column's name.
    pub name: String,
    /// Its bin edges.
    pub edges: BinEdges,
}

fn named<T>(name: &str, r: Result<T, BinError>) -> Result<T, GbdtError> {
    r.map_err(|source| GbdtError::Binning {
        feature: name.to_owned(),
        source,
    })
}

impl Feature {
    /// The features of a schema with fixed-width numeric bins over each declared range; a
    /// numeric column without a range is an error (use the sketch instead).
    pub fn from_ranges(schema: &FeatureSchema, max_bins: usize) -> Result<Vec<Self>, GbdtError> {
        let mut out = Vec::with_capacity(schema.numeric.len() + schema.categorical.len());
        for (name, range) in schema.numeric.iter().zip(&schema.ranges) {
            let [low, high] = named(name, range.ok_or(BinError::NoRange))?;
            let edges = named(name, BinEdges::from_range(low, high, max_bins))?;
            out.push(Self {
                name: name.clone(),
                edges,
            });
        }
        out.extend(Self::categorical(schema)?);
        Ok(out)
    }

    /// The fine sketch grid of every numeric column of a schema, over its declared range.
    pub fn sketch_grids(schema: &FeatureSchema, cells: usize) -> Result<Vec<FineGrid>, GbdtError> {
        schema
            .numeric
            .iter()
            .zip(&schema.ranges)
            .map(|(name, range)| {
                let [low, high] = named(name, range.ok_or(BinError::NoRange))?;
                named(name, FineGrid::new(low, high, cells))
            })
            .collect()
    }

    /// One party's sketch: the counts of its rows on each numeric column's grid, concatenated
    /// in column order (the vector the secure sum adds).
    pub fn sketch(rows: &RawRows, grids: &[FineGrid]) -> Vec<f64> {
        let mut out = Vec::with_capacity(grids.iter().map(FineGrid::cells).sum());
        for (j, grid) in grids.iter().enumerate() {
            out.extend(grid.counts((0..rows.len()).map(|r| rows.numeric_row(r)[j])));
        }
        out
    }

    /// The features of a schema with quantile numeric bins from the summed sketch of
    /// [`Feature::sketch`] over `grids`.
    pub fn from_sketch(
        schema: &FeatureSchema,
        grids: &[FineGrid],
        summed: &[f64],
        max_bins: usize,
    ) -> Result<Vec<Self>, GbdtError> {
        let cells: usize = grids.iter().map(FineGrid::cells).sum();
        if grids.len() != schema.numeric.len() || summed.len() != cells {
            return Err(GbdtError::Shape(format!(
                "a sketch of {} values over {} grids, expected {cells} over {}",
                summed.len(),
                grids.len(),
                schema.numeric.len()
            )));
        }
        let mut out = Vec::with_capacity(schema.numeric.len() + schema.categorical.len());
        let mut at = 0;
        for (name, grid) in schema.numeric.iter().zip(grids) {
            let counts = &summed[at..at + grid.cells()];
            at += grid.cells();
            let (low, high) = (grid.boundary(0), grid.boundary(grid.cells()));
            let edges = named(name, BinEdges::from_histogram(counts, low, high, max_bins))?;
            out.push(Self {
                name: name.clone(),
                edges,
            });
        }
        out.extend(Self::categorical(schema)?);
        Ok(out)
    }

    fn categorical(schema: &FeatureSchema) -> Result<Vec<Self>, GbdtError> {
        schema
            .categorical
            .iter()
            .map(|(name, c)| {
                Ok(Self {
                    name: name.clone(),
                    edges: named(name, BinEdges::categorical(c.width()))?,
                })
            })
            .collect()
    }
}

/// Rows as bins: one `u8` per row and feature, row-major, with the labels.
#[derive(Debug, Clone, PartialEq)]
pub struct BinnedRows {
    n_bins: Vec<usize>,
    bins: Vec<u8>,
    labels: Vec<f64>,
}

impl BinnedRows {
    /// Bins parsed rows: the schema's numeric columns are `features[..n]` (numeric edges) and
    /// its categorical columns the rest (categorical edges), in order.
    pub fn from_raw(rows: &RawRows, features: &[Feature]) -> Result<Self, GbdtError> {
        let n_bins: Vec<usize> = features.iter().map(|f| f.edges.n_bins()).collect();
        let n_numeric = features
            .iter()
            .take_while(|f| !f.edges.is_categorical())
            .count();
        if features[n_numeric..]
            .iter()
            .any(|f| !f.edges.is_categorical())
        {
            return Err(GbdtError::Shape(
                "numeric features must come before categorical ones".into(),
            ));
        }
        let mut out = Self {
            bins: Vec::with_capacity(rows.len() * features.len()),
            labels: rows.labels.clone(),
            n_bins,
        };
        if rows.is_empty() {
            return Ok(out);
        }
        let (num, cat) = (rows.numeric_row(0).len(), rows.slot_row(0).len());
        if (num, cat) != (n_numeric, features.len() - n_numeric) {
            return Err(GbdtError::Shape(format!(
                "rows have {num} numeric and {cat} categorical columns, the features \
                 {n_numeric} and {}",
                features.len() - n_numeric
            )));
        }
        for r in 0..rows.len() {
            for (f, &x) in features.iter().zip(rows.numeric_row(r)) {
                out.bins.push(f.edges.numeric_bin(x));
            }
            for (f, &slot) in features[n_numeric..].iter().zip(rows.slot_row(r)) {
                let slots = f.edges.n_bins();
                if slot as usize >= slots {
                    return Err(GbdtError::SlotOutOfRange {
                        row: r,
                        feature: f.name.clone(),
                        slot,
                        slots,
                    });
                }
                out.bins.push(slot as u8);
            }
        }
        Ok(out)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.n_bins.len()
    }

    /// Number of bins of each feature (the edges the rows were binned with).
    pub fn n_bins(&self) -> &[usize] {
        &self.n_bins
    }

    /// The bins of row `r`, one per feature.
    pub fn row(&self, r: usize) -> &[u8] {
        let f = self.n_bins.len();
        &self.bins[r * f..(r + 1) * f]
    }

    /// Every row's bins, row after row.
    pub(crate) fn bins(&self) -> &[u8] {
        &self.bins
    }

    /// Labels, 1.0 for a positive row.
    pub fn labels(&self) -> &[f64] {
        &self.labels
    }

    /// Checks that the rows were binned with `features`' bin counts.
    pub(crate) fn check_shape(&self, features: &[Feature]) -> Result<(), GbdtError> {
        let ok = self.n_bins.len() == features.len()
            && self
                .n_bins
                .iter()
                .zip(features)
                .all(|(&n, f)| n == f.edges.n_bins());
        if ok {
            Ok(())
        } else {
            Err(GbdtError::Shape(
                "rows were binned with other features or edges".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::features::Categorical;

    /// A schema of `numeric` numeric columns (no ranges) and categorical columns of the given
    /// widths.
    fn schema(numeric: usize, widths: &[usize]) -> FeatureSchema {
        FeatureSchema {
            numeric: (0..numeric).map(|j| format!("x{j}")).collect(),
            categorical: widths
                .iter()
                .enumerate()
                .map(|(k, &w)| {
                    let vocab = (0..w - 1).map(|v| format!("v{v}")).collect();
                    (format!("c{k}"), Categorical::Vocabulary(vocab))
                })
                .collect(),
            ranges: vec![None; numeric],
        }
    }

    proptest! {
        /// Quantile edges from the sum of two parties' sketches equal those from the sketch of
        /// their pooled values, and every value's fine cell agrees with the cell boundaries.
        #[test]
        fn edges_from_a_summed_sketch_equal_the_pooled_ones(
            a in prop::collection::vec(-50.0f64..150.0, 0..200),
            b in prop::collection::vec(prop_oneof![Just(7.0), 0.0f64..100.0], 0..200),
            cells in 1usize..300,
            max_bins in 2usize..40,
        ) {
            let grid = FineGrid::new(0.0, 100.0, cells).unwrap();
            let (ca, cb) = (grid.counts(a.iter().copied()), grid.counts(b.iter().copied()));
            let summed: Vec<f64> = ca.iter().zip(&cb).map(|(x, y)| x + y).collect();
            let pooled = grid.counts(a.iter().chain(&b).copied());
            prop_assert_eq!(&summed, &pooled);
            let from_sum = BinEdges::from_histogram(&summed, 0.0, 100.0, max_bins).unwrap();
            let from_pool = BinEdges::from_histogram(&pooled, 0.0, 100.0, max_bins).unwrap();
            prop_assert_eq!(&from_sum, &from_pool);
            prop_assert!(from_sum.n_bins() <= max_bins);
            // Every threshold is a cell boundary, so a value's fine cell decides its bin.
            let BinEdges::Numeric { thresholds } = &from_sum else { unreachable!() };
            let boundaries: Vec<f64> = (1..cells).map(|k| grid.boundary(k)).collect();
            prop_assert!(thresholds.iter().all(|t| boundaries.contains(t)));
            for &x in a.iter().chain(&b) {
                let c = grid.cell(x);
                let lo = if c == 0 { f64::NEG_INFINITY } else { grid.boundary(c) };
                prop_assert!(x > lo || c == 0);
                prop_assert!(c + 1 == cells || x <= grid.boundary(c + 1));
                let below = thresholds.iter().filter(|&&t| t <= grid.boundary(c)).count();
                prop_assert_eq!(usize::from(from_sum.numeric_bin(x)), below);
            }
        }
    }

    #[test]
    fn range_edges_are_fixed_width_and_left_open() {
        let edges = BinEdges::from_range(0.0, 8.0, 4).unwrap();
        assert_eq!(
            edges,
            BinEdges::Numeric {
                thresholds: vec![2.0, 4.0, 6.0]
            }
        );
        let bin = |x| edges.numeric_bin(x);
        assert_eq!(
            [
                bin(-5.0),
                bin(0.0),
                bin(2.0),
                bin(2.1),
                bin(6.0),
                bin(8.0),
                bin(99.0)
            ],
            [0, 0, 0, 1, 2, 3, 3]
        );
        assert_eq!(bin(f64::NAN), 0);
        assert!(BinEdges::from_range(1.0, 1.0, 4).is_err());
        assert!(BinEdges::from_range(0.0, f64::INFINITY, 4).is_err());
        assert!(BinEdges::from_range(0.0, 1.0, 1).is_err());
        assert!(BinEdges::from_range(0.0, 1.0, 257).is_err());
        assert_eq!(BinEdges::from_range(0.0, 1.0, 256).unwrap().n_bins(), 256);
        assert!(BinEdges::categorical(257).is_err());
    }

    #[test]
    fn histogram_edges_split_the_mass_evenly_and_give_a_heavy_cell_its_own_bin() {
        // Uniform mass over 100 cells into 4 bins: boundaries at cells 25, 50, 75.
        let edges = BinEdges::from_histogram(&[3.0; 100], 0.0, 100.0, 4).unwrap();
        assert_eq!(
            edges,
            BinEdges::Numeric {
                thresholds: vec![25.0, 50.0, 75.0]
            }
        );
        // 80 % of the mass in cell 0 (like `pdays = -1`): cell 0 is a bin, the rest share 3 bins.
        let mut counts = vec![1.0; 20];
        counts[0] = 76.0;
        let edges = BinEdges::from_histogram(&counts, 0.0, 20.0, 4).unwrap();
        assert_eq!(
            edges,
            BinEdges::Numeric {
                thresholds: vec![1.0, 8.0, 14.0]
            }
        );
        // Nothing after the last non-empty cell, noise counted as nothing, no mass → one bin.
        let edges =
            BinEdges::from_histogram(&[0.0, 5.0, -2.0, 5.0, 0.0, f64::NAN], 0.0, 6.0, 8).unwrap();
        assert_eq!(
            edges,
            BinEdges::Numeric {
                thresholds: vec![2.0]
            }
        );
        assert_eq!(
            BinEdges::from_histogram(&[0.0; 9], 0.0, 1.0, 8)
                .unwrap()
                .n_bins(),
            1
        );
    }

    #[test]
    fn binning_checks_shapes_slots_and_ranges() {
        let s = schema(1, &[3]);
        let e = Feature::from_ranges(&s, 16).unwrap_err();
        assert_eq!(e.to_string(), "feature `x0`: no declared range");
        let mut with_range = s.clone();
        with_range.ranges = vec![Some([0.0, 4.0])];
        let features = Feature::from_ranges(&with_range, 4).unwrap();
        assert_eq!(features.len(), 2);
        assert_eq!(features[1].edges, BinEdges::Categorical { slots: 3 });
        let mut rows = RawRows::new(&s);
        rows.push(&[3.5], &[2], true);
        let binned = BinnedRows::from_raw(&rows, &features).unwrap();
        assert_eq!(binned.row(0), &[3, 2]);
        rows.push(&[1.0], &[3], false);
        let e = BinnedRows::from_raw(&rows, &features).unwrap_err();
        assert!(
            matches!(
                e,
                GbdtError::SlotOutOfRange {
                    row: 1,
                    slot: 3,
                    slots: 3,
                    ..
                }
            ),
            "{e}"
        );
        let reversed = vec![features[1].clone(), features[0].clone()];
        assert!(matches!(
            BinnedRows::from_raw(&rows, &reversed),
            Err(GbdtError::Shape(_))
        ));
        let grids = Feature::sketch_grids(&with_range, 8).unwrap();
        let sketch = Feature::sketch(&rows, &grids);
        assert_eq!(sketch, vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let from_sketch = Feature::from_sketch(&with_range, &grids, &sketch, 4).unwrap();
        assert_eq!(
            from_sketch[0].edges,
            BinEdges::Numeric {
                thresholds: vec![1.0]
            }
        );
        assert!(Feature::from_sketch(&with_range, &grids, &sketch[1..], 4).is_err());
    }
}
