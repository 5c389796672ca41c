//! Tests of the whole module: split finding against brute force over rows, the additivity the
//! federation relies on, binning, formulas by hand, and training on small known cases.

use proptest::prelude::*;

use super::bins::{BinEdges, BinnedRows, Feature};
use super::histogram::{HistLayout, RowBound, subtract};
use super::params::CategoricalMode;
use super::split::{SplitRule, SplitSettings, best_split};
use crate::features::{Categorical, FeatureSchema, RawRows};

/// A schema of `numeric` numeric columns (no ranges) and categorical columns of the given
/// widths.
pub(super) fn schema(numeric: usize, widths: &[usize]) -> FeatureSchema {
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

#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) x: Vec<f64>,
    pub(super) slots: Vec<u32>,
    pub(super) y: bool,
    pub(super) g: f64,
    pub(super) h: f64,
}

pub(super) fn raw(schema: &FeatureSchema, rows: &[Row]) -> RawRows {
    let mut out = RawRows::new(schema);
    for r in rows {
        out.push(&r.x, &r.slots, r.y);
    }
    out
}

/// The split gain, written out again from the formula, independently of `split.rs`.
fn gain_by_formula(gl: f64, hl: f64, gr: f64, hr: f64, lambda: f64, gamma: f64) -> f64 {
    let (g, h) = (gl + gr, hl + hr);
    (gl * gl / (hl + lambda) + gr * gr / (hr + lambda) - g * g / (h + lambda)) / 2.0 - gamma
}

/// Sums of the rows for which `left` holds, and of the others; `None` when a side violates
/// `min_child_weight` or is empty.
fn sides(rows: &[Row], mcw: f64, left: impl Fn(&Row) -> bool) -> Option<[f64; 4]> {
    let (mut gl, mut hl, mut nl, mut gr, mut hr, mut nr) = (0.0, 0.0, 0, 0.0, 0.0, 0);
    for r in rows {
        if left(r) {
            (gl, hl, nl) = (gl + r.g, hl + r.h, nl + 1);
        } else {
            (gr, hr, nr) = (gr + r.g, hr + r.h, nr + 1);
        }
    }
    (nl > 0 && nr > 0 && hl >= mcw && hr >= mcw).then_some([gl, hl, gr, hr])
}

fn histogram(features: &[Feature], rows: &[Row], schema: &FeatureSchema) -> (HistLayout, Vec<f64>) {
    let binned = BinnedRows::from_raw(&raw(schema, rows), features).unwrap();
    let layout = HistLayout::new(features);
    let g: Vec<f64> = rows.iter().map(|r| r.g).collect();
    let h: Vec<f64> = rows.iter().map(|r| r.h).collect();
    let all: Vec<usize> = (0..rows.len()).collect();
    let hist = layout.node_histogram(&binned, &all, &g, &h).unwrap();
    (layout, hist)
}

pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn native(lambda: f64, gamma: f64, min_child_weight: f64) -> SplitSettings {
    SplitSettings {
        lambda,
        gamma,
        min_child_weight,
        categorical: CategoricalMode::Native,
    }
}

fn row_strategy(numeric: usize, slots: u32) -> impl Strategy<Value = Row> {
    (
        prop::collection::vec(0u8..=10, numeric),
        0..slots,
        any::<bool>(),
        -1.0f64..1.0,
        0.01f64..0.25,
    )
        .prop_map(|(x, slot, y, g, h)| Row {
            x: x.into_iter().map(f64::from).collect(),
            slots: vec![slot],
            y,
            g,
            h,
        })
}

proptest! {
    /// The best numeric split from the histogram has the best gain of every threshold applied
    /// to the raw values of the rows, and its own gain recomputed from the rows.
    #[test]
    fn numeric_split_matches_brute_force_over_rows(
        rows in prop::collection::vec(row_strategy(2, 3), 2..60),
        bins in 2usize..9,
        lambda in 0.0f64..2.0,
        gamma in 0.0f64..0.3,
        mcw in 0.0f64..1.0,
    ) {
        let schema = schema(2, &[3]);
        let features = vec![
            Feature { name: "x0".into(), edges: BinEdges::from_range(0.0, 10.0, bins).unwrap() },
            Feature { name: "x1".into(), edges: BinEdges::from_range(-1.0, 12.0, bins).unwrap() },
            Feature { name: "c0".into(), edges: BinEdges::categorical(3).unwrap() },
        ];
        let (layout, hist) = histogram(&features, &rows, &schema);
        let settings = native(lambda, gamma, mcw);
        // Numeric features only: the categorical search has its own brute-force test.
        let found = best_split(&layout, &hist, &features, &[true, true, false], &settings).unwrap();
        let mut brute = f64::NEG_INFINITY;
        for (f, feature) in features.iter().enumerate().take(2) {
            let BinEdges::Numeric { thresholds } = &feature.edges else { unreachable!() };
            for &t in thresholds {
                if let Some([gl, hl, gr, hr]) = sides(&rows, mcw, |r| r.x[f] <= t) {
                    brute = brute.max(gain_by_formula(gl, hl, gr, hr, lambda, gamma));
                }
            }
        }
        match found {
            None => prop_assert!(brute <= 1e-9, "no split found, brute force gains {brute}"),
            Some(split) => {
                prop_assert!(close(split.gain, brute), "{} vs brute force {brute}", split.gain);
                let SplitRule::Numeric { threshold, .. } = split.rule else { unreachable!() };
                let goes_left = |r: &Row| r.x[split.feature] <= threshold;
                let [gl, hl, gr, hr] = sides(&rows, mcw, goes_left).unwrap();
                prop_assert!(close(split.gain, gain_by_formula(gl, hl, gr, hr, lambda, gamma)));
                prop_assert!(close(split.left.g, gl) && close(split.right.h, hr));
            }
        }
    }

    /// With λ = 0 and no weight floor, the native categorical search finds the best of all
    /// 2^k subsets (Fisher's theorem); with λ > 0 it finds a split whose gain, recomputed
    /// from the rows, is what it reports and at most the best subset's.
    #[test]
    fn native_categorical_split_against_every_subset(
        rows in prop::collection::vec(row_strategy(0, 6), 2..60),
        lambda in prop_oneof![Just(0.0), 0.0f64..2.0],
    ) {
        let schema = schema(0, &[6]);
        let features =
            vec![Feature { name: "c0".into(), edges: BinEdges::categorical(6).unwrap() }];
        let (layout, hist) = histogram(&features, &rows, &schema);
        let settings = native(lambda, 0.0, 0.0);
        let found = best_split(&layout, &hist, &features, &[], &settings).unwrap();
        let mut brute = f64::NEG_INFINITY;
        for mask in 1u32..(1 << 6) - 1 {
            if let Some([gl, hl, gr, hr]) = sides(&rows, 0.0, |r| mask >> r.slots[0] & 1 == 1) {
                brute = brute.max(gain_by_formula(gl, hl, gr, hr, lambda, 0.0));
            }
        }
        match found {
            None => prop_assert!(lambda > 0.0 || brute <= 1e-9, "none found, best subset {brute}"),
            Some(split) => {
                let SplitRule::Categorical { left } = split.rule else { unreachable!() };
                let goes_left = |r: &Row| left.contains(r.slots[0] as u8);
                let [gl, hl, gr, hr] = sides(&rows, 0.0, goes_left).unwrap();
                prop_assert!(close(split.gain, gain_by_formula(gl, hl, gr, hr, lambda, 0.0)));
                prop_assert!(split.gain <= brute + 1e-9);
                if lambda == 0.0 {
                    prop_assert!(close(split.gain, brute), "{} vs best subset {brute}", split.gain);
                }
            }
        }
    }

    /// Two parties' level vectors add up to the level vector of their pooled rows: the
    /// property the secure sum relies on.
    #[test]
    fn histogram_of_a_union_is_the_sum_of_histograms(
        a in prop::collection::vec((row_strategy(2, 4), 0u32..3), 0..40),
        b in prop::collection::vec((row_strategy(2, 4), 0u32..3), 0..40),
    ) {
        let schema = schema(2, &[4]);
        let features = vec![
            Feature { name: "x0".into(), edges: BinEdges::from_range(0.0, 10.0, 5).unwrap() },
            Feature { name: "x1".into(), edges: BinEdges::from_range(2.0, 8.0, 3).unwrap() },
            Feature { name: "c0".into(), edges: BinEdges::categorical(4).unwrap() },
        ];
        let layout = HistLayout::new(&features);
        // Node 1 is not built: its rows must add nothing.
        let built = [0u32, 2];
        let level = |part: &[(Row, u32)]| {
            let rows: Vec<&Row> = part.iter().map(|(r, _)| r).collect();
            let mut raw_rows = RawRows::new(&schema);
            for r in &rows {
                raw_rows.push(&r.x, &r.slots, r.y);
            }
            let binned = BinnedRows::from_raw(&raw_rows, &features).unwrap();
            let g: Vec<f64> = rows.iter().map(|r| r.g).collect();
            let h: Vec<f64> = rows.iter().map(|r| r.h).collect();
            let nodes: Vec<u32> = part.iter().map(|(_, n)| *n).collect();
            layout.level_histograms(&binned, &nodes, &built, &g, &h).unwrap()
        };
        let (va, vb) = (level(&a), level(&b));
        let pooled: Vec<(Row, u32)> = a.into_iter().chain(b).collect();
        let vp = level(&pooled);
        prop_assert_eq!(vp.len(), 2 * layout.node_len());
        for ((x, y), p) in va.iter().zip(&vb).zip(&vp) {
            prop_assert!(close(x + y, *p), "{x} + {y} != {p}");
        }
        let counted: f64 = vp.iter().skip(2).step_by(3).sum::<f64>() / 3.0;
        let expected = pooled.iter().filter(|(_, n)| *n != 1).count() as f64;
        prop_assert_eq!(counted, expected);
    }

    /// One row's contribution to a level vector stays within the codec's bound.
    #[test]
    fn a_rows_contribution_is_within_the_logistic_bound(
        row in row_strategy(2, 4),
        g in -1.0f64..=1.0,
        h in 0.0f64..=0.25,
    ) {
        let schema = schema(2, &[4]);
        let features = vec![
            Feature { name: "x0".into(), edges: BinEdges::from_range(0.0, 10.0, 5).unwrap() },
            Feature { name: "x1".into(), edges: BinEdges::from_range(0.0, 10.0, 5).unwrap() },
            Feature { name: "c0".into(), edges: BinEdges::categorical(4).unwrap() },
        ];
        let binned = BinnedRows::from_raw(&raw(&schema, &[row]), &features).unwrap();
        let layout = HistLayout::new(&features);
        let v = layout.level_histograms(&binned, &[1], &[1], &[g], &[h]).unwrap();
        let bound = RowBound::logistic(3);
        prop_assert!(v.iter().all(|x| x.abs() <= bound.linf));
        prop_assert!(v.iter().map(|x| x * x).sum::<f64>().sqrt() <= bound.l2 + 1e-12);
    }
}

#[test]
fn sibling_subtraction_equals_the_direct_histogram() {
    let s = schema(1, &[2]);
    let rows: Vec<Row> = (0..10)
        .map(|i| Row {
            x: vec![i as f64],
            slots: vec![i % 2],
            y: i % 3 == 0,
            g: 0.1 * i as f64 - 0.4,
            h: 0.2,
        })
        .collect();
    let features = vec![
        Feature {
            name: "x0".into(),
            edges: BinEdges::from_range(0.0, 9.0, 3).unwrap(),
        },
        Feature {
            name: "c0".into(),
            edges: BinEdges::categorical(2).unwrap(),
        },
    ];
    let binned = BinnedRows::from_raw(&raw(&s, &rows), &features).unwrap();
    let layout = HistLayout::new(&features);
    let (g, h): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (r.g, r.h)).unzip();
    let parent = layout
        .node_histogram(&binned, &(0..10).collect::<Vec<_>>(), &g, &h)
        .unwrap();
    let left = layout
        .node_histogram(&binned, &[0, 1, 2, 3], &g, &h)
        .unwrap();
    let right = layout
        .node_histogram(&binned, &[4, 5, 6, 7, 8, 9], &g, &h)
        .unwrap();
    let derived = subtract(&parent, &left);
    assert!(derived.iter().zip(&right).all(|(a, b)| close(*a, *b)));
    let t = layout.totals(&parent);
    assert!(close(t.g, g.iter().sum()) && close(t.h, 2.0) && t.count == 10.0);
}

/// A categorical feature whose positive categories are not contiguous in slot order: the
/// native split separates them in one split; the slot number as a numeric feature and a
/// one-vs-rest split cannot.
#[test]
fn a_native_categorical_split_beats_numeric_encodings() {
    let positive = [0u32, 3, 5];
    let s = schema(1, &[6]);
    let rows: Vec<Row> = (0..60u32)
        .map(|i| {
            let c = i % 6;
            let y = positive.contains(&c);
            Row {
                x: vec![f64::from(c)],
                slots: vec![c],
                y,
                g: if y { -0.5 } else { 0.5 },
                h: 0.25,
            }
        })
        .collect();
    let features = vec![
        Feature {
            name: "ordinal".into(),
            edges: BinEdges::from_range(-0.5, 5.5, 6).unwrap(),
        },
        Feature {
            name: "c0".into(),
            edges: BinEdges::categorical(6).unwrap(),
        },
    ];
    let (layout, hist) = histogram(&features, &rows, &s);
    let settings = |categorical| SplitSettings {
        lambda: 1.0,
        gamma: 0.0,
        min_child_weight: 1.0,
        categorical,
    };
    let split = |allowed: &[bool], mode| {
        best_split(&layout, &hist, &features, allowed, &settings(mode))
            .unwrap()
            .unwrap()
    };
    let native = split(&[false, true], CategoricalMode::Native);
    let ordinal = split(&[true, false], CategoricalMode::Native);
    let one_hot = split(&[false, true], CategoricalMode::OneHot);
    let SplitRule::Categorical { left } = native.rule else {
        panic!("{native:?}")
    };
    assert!(
        left.slots() == [0, 3, 5] || left.slots() == [1, 2, 4],
        "{left:?}"
    );
    // Perfect separation: G = ∓15 on each side of 30 rows, H = 7.5 → ½·2·225/8.5.
    assert!(close(native.gain, 225.0 / 8.5), "{}", native.gain);
    assert!(native.gain > 2.0 * ordinal.gain && native.gain > 2.0 * one_hot.gain);
    // And the native split is the one chosen with both encodings on offer.
    assert_eq!(split(&[], CategoricalMode::Native).feature, 1);
}
