//! Tests of training and of the model: formulas by hand on a trained tree, every trained split
//! against the best split of the rows that reach it (computed directly, no subtraction), XOR,
//! determinism, the leaf budget, early stopping, serialisation and importance.

use super::bins::{BinEdges, BinnedRows, Feature};
use super::error::GbdtError;
use super::histogram::HistLayout;
use super::params::GbdtParams;
use super::split::{SplitSettings, best_split, leaf_weight};
use super::tests::{Row, close, raw, schema};
use super::train::{TrainReport, train};
use super::train::{column_sample, gradients, in_row_sample};
use super::tree::{GbdtModel, Node};
use crate::features::{FeatureSchema, RawRows};

fn model_of(
    params: &GbdtParams,
    s: &FeatureSchema,
    features: &[Feature],
    rows: &[Row],
) -> (GbdtModel, TrainReport, BinnedRows) {
    let binned = BinnedRows::from_raw(&raw(s, rows), features).unwrap();
    let (model, report) = train(params, features, &binned, None).unwrap();
    (model, report, binned)
}

#[test]
fn one_tree_by_hand() {
    // x = 0, 0, 1, 1 and y = 0, 1, 1, 1: base margin ln 3 (p = 3/4), so g = p − y =
    // (3/4, −1/4, −1/4, −1/4) and h = 3/16. Split x ≤ 0: G_L = 1/2, H_L = 3/8; G_R = −1/2,
    // H_R = 3/8. With λ = 1 the leaves are ∓(1/2)/(11/8) = ∓4/11, times the rate 0.5, and
    // the gain ½(2·(1/4)/(11/8) − 0) = 2/11.
    let s = schema(1, &[]);
    let rows: Vec<Row> = [(0.0, false), (0.0, true), (1.0, true), (1.0, true)]
        .into_iter()
        .map(|(x, y)| Row {
            x: vec![x],
            slots: vec![],
            y,
            g: 0.0,
            h: 0.0,
        })
        .collect();
    let features = vec![Feature {
        name: "x0".into(),
        edges: BinEdges::from_range(0.0, 1.0, 2).unwrap(),
    }];
    let params = GbdtParams {
        trees: 1,
        learning_rate: 0.5,
        max_depth: 3,
        min_child_weight: 0.1,
        ..Default::default()
    };
    let (model, _, binned) = model_of(&params, &s, &features, &rows);
    assert!(close(model.base_margin(), 3f64.ln()));
    let nodes = model.trees()[0].nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let Node::Split { gain, cover, .. } = &nodes[0] else {
        panic!()
    };
    assert!(
        close(*gain, 2.0 / 11.0) && close(*cover, 0.75),
        "{gain} {cover}"
    );
    let Node::Leaf { value: left, .. } = nodes[1] else {
        panic!()
    };
    let Node::Leaf { value: right, .. } = nodes[2] else {
        panic!()
    };
    assert!(
        close(left, -2.0 / 11.0) && close(right, 2.0 / 11.0),
        "{left} {right}"
    );
    let m = model.predict_margin_binned(&binned).unwrap();
    assert!(close(m[0], 3f64.ln() - 2.0 / 11.0) && close(m[3], 3f64.ln() + 2.0 / 11.0));
}

/// Rows of an unbalanced XOR of two binary features (unbalanced so that the first split has a
/// positive gain), with a useless categorical feature.
fn xor() -> (FeatureSchema, Vec<Feature>, Vec<Row>) {
    let s = schema(2, &[3]);
    let mut rows = Vec::new();
    for (a, b, n) in [
        (0.0, 0.0, 30),
        (0.0, 1.0, 20),
        (1.0, 0.0, 25),
        (1.0, 1.0, 15),
    ] {
        for i in 0..n {
            let y = (a != b) as u8 == 1;
            rows.push(Row {
                x: vec![a, b],
                slots: vec![i % 3],
                y,
                g: 0.0,
                h: 0.0,
            });
        }
    }
    let features = vec![
        Feature {
            name: "a".into(),
            edges: BinEdges::from_range(0.0, 1.0, 2).unwrap(),
        },
        Feature {
            name: "b".into(),
            edges: BinEdges::from_range(0.0, 1.0, 2).unwrap(),
        },
        Feature {
            name: "noise".into(),
            edges: BinEdges::categorical(3).unwrap(),
        },
    ];
    (s, features, rows)
}

#[test]
fn depth_two_trees_learn_xor_and_stumps_cannot() {
    let (s, features, rows) = xor();
    let params = GbdtParams {
        trees: 30,
        learning_rate: 0.5,
        max_depth: 2,
        min_child_weight: 0.01,
        ..Default::default()
    };
    let (model, report, _) = model_of(&params, &s, &features, &rows);
    let p = model.predict_proba(&raw(&s, &rows)).unwrap();
    assert!(
        rows.iter()
            .zip(&p)
            .all(|(r, &p)| if r.y { p > 0.9 } else { p < 0.1 }),
        "{p:?}"
    );
    assert!(report.train_loss.windows(2).all(|w| w[1] <= w[0] + 1e-12));
    assert!(model.trees().iter().all(|t| t.depth() <= 2));
    // Stumps add up to a function of a plus a function of b, which cannot be XOR.
    let stumps = GbdtParams {
        max_depth: 1,
        ..params
    };
    let (model, _, _) = model_of(&stumps, &s, &features, &rows);
    let p = model.predict_proba(&raw(&s, &rows)).unwrap();
    assert!(rows.iter().zip(&p).any(|(r, &p)| (p > 0.5) != r.y));
}

/// Noisy rows from a fixed hash: three numeric features and one categorical.
fn noisy(n: usize, salt: u64) -> (FeatureSchema, Vec<Feature>, Vec<Row>) {
    let s = schema(3, &[5]);
    let u = |i: usize, k: u64| {
        let mut z = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ k.wrapping_mul(0xD1B5_4A32_D192_ED03)
            ^ salt;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let rows = (0..n)
        .map(|i| {
            let x = vec![u(i, 1), u(i, 2), u(i, 3)];
            let c = (u(i, 4) * 5.0) as u32;
            let z = 3.0 * (x[0] - 0.5) - 2.0 * (x[1] - 0.5).abs() + if c == 2 { 1.0 } else { 0.0 };
            Row {
                y: u(i, 5) < 1.0 / (1.0 + (-z).exp()),
                x,
                slots: vec![c],
                g: 0.0,
                h: 0.0,
            }
        })
        .collect();
    let mut features: Vec<Feature> = (0..3)
        .map(|j| Feature {
            name: format!("x{j}"),
            edges: BinEdges::from_range(0.0, 1.0, 32).unwrap(),
        })
        .collect();
    features.push(Feature {
        name: "c0".into(),
        edges: BinEdges::categorical(5).unwrap(),
    });
    (s, features, rows)
}

#[test]
fn training_is_deterministic_for_a_seed_and_the_seed_matters() {
    let (s, features, rows) = noisy(400, 1);
    let params = GbdtParams {
        trees: 8,
        max_depth: 3,
        row_subsample: 0.6,
        col_subsample: 0.5,
        seed: 11,
        ..Default::default()
    };
    let (a, ra, _) = model_of(&params, &s, &features, &rows);
    let (b, rb, _) = model_of(&params, &s, &features, &rows);
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    assert_eq!(ra, rb);
    let (c, _, _) = model_of(&GbdtParams { seed: 12, ..params }, &s, &features, &rows);
    assert_ne!(a.to_json().unwrap(), c.to_json().unwrap());
    // Half the features per tree: every tree splits on at most 2 of the 4.
    for t in a.trees() {
        let mut used: Vec<u32> = t
            .nodes()
            .iter()
            .filter_map(|n| match n {
                Node::Split { feature, .. } => Some(*feature),
                _ => None,
            })
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() <= 2, "{used:?}");
    }
}

#[test]
fn leaf_budget_and_depth_are_respected() {
    let (s, features, rows) = noisy(500, 2);
    let params = GbdtParams {
        trees: 5,
        max_depth: 4,
        max_leaves: Some(5),
        min_child_weight: 0.0,
        lambda: 0.1,
        ..Default::default()
    };
    let (model, _, _) = model_of(&params, &s, &features, &rows);
    assert!(
        model
            .trees()
            .iter()
            .all(|t| t.leaves() <= 5 && t.depth() <= 4)
    );
    assert!(model.trees().iter().any(|t| t.leaves() == 5));
    let unlimited = GbdtParams {
        max_leaves: None,
        ..params
    };
    let (model, _, _) = model_of(&unlimited, &s, &features, &rows);
    assert!(model.trees().iter().any(|t| t.leaves() > 5));
}

#[test]
fn early_stopping_keeps_the_best_trees() {
    let (s, features, rows) = noisy(300, 3);
    let (_, _, valid_rows) = noisy(300, 4);
    let train_rows = BinnedRows::from_raw(&raw(&s, &rows), &features).unwrap();
    let valid = BinnedRows::from_raw(&raw(&s, &valid_rows), &features).unwrap();
    // A high rate and deep trees overfit 300 rows quickly.
    let params = GbdtParams {
        trees: 200,
        learning_rate: 1.0,
        max_depth: 6,
        min_child_weight: 0.0,
        lambda: 0.0,
        early_stopping_rounds: Some(4),
        ..Default::default()
    };
    let (model, report) = train(&params, &features, &train_rows, Some(&valid)).unwrap();
    let best = report
        .valid_loss
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(report.kept, best + 1);
    assert_eq!(model.trees().len(), best + 1);
    assert_eq!(report.grown, best + 1 + 4, "{report:?}");
    assert!(report.grown < 200);
    let no_valid = train(&params, &features, &train_rows, None).unwrap_err();
    assert_eq!(no_valid, GbdtError::NoValidation);
}

/// The early-stopping rule against a direct reading of its definition on random loss
/// sequences (ties, NaN and infinities included): the model kept is the first with the lowest
/// finite loss so far, and training stops at the first model with `rounds` more trees.
#[test]
fn early_stopping_follows_its_definition() {
    use super::train::EarlyStopping;
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for case in 0..2000 {
        let n = rng.random_range(1..6u32);
        let losses: Vec<f64> = (0..rng.random_range(1..30))
            .map(|_| match rng.random_range(0..12) {
                0 => f64::NAN,
                1 => f64::INFINITY,
                _ => f64::from(rng.random_range(0..8u32)) / 4.0,
            })
            .collect();
        let mut rule = EarlyStopping::new(n);
        let got = losses
            .iter()
            .enumerate()
            .find_map(|(i, &l)| rule.observe(i + 1, l).map(|k| (i + 1, k)));
        let best_upto = |j: usize| {
            let mut best: Option<(f64, usize)> = None;
            for (i, &l) in losses[..j].iter().enumerate() {
                if l.is_finite() && best.is_none_or(|(b, _)| l < b) {
                    best = Some((l, i + 1));
                }
            }
            best
        };
        let want = (1..=losses.len()).find_map(|j| {
            best_upto(j)
                .filter(|&(_, k)| j - k >= n as usize)
                .map(|(_, k)| (j, k))
        });
        assert_eq!(got, want, "case {case}: n {n}, losses {losses:?}");
        let seen = got.map_or(losses.len(), |(j, _)| j);
        assert_eq!(rule.best(), best_upto(seen), "case {case}");
    }
}

#[test]
fn a_model_round_trips_and_damaged_files_are_refused() {
    let (s, features, rows) = xor();
    let params = GbdtParams {
        trees: 3,
        max_depth: 2,
        min_child_weight: 0.01,
        ..Default::default()
    };
    let (model, _, binned) = model_of(&params, &s, &features, &rows);
    let text = model.to_json().unwrap();
    assert!(
        text.starts_with(r#"{"format":"fedmark-gbdt","version":1,"#),
        "{text}"
    );
    let back = GbdtModel::from_json(&text).unwrap();
    assert_eq!(back, model);
    assert_eq!(
        back.predict_margin_binned(&binned).unwrap(),
        model.predict_margin_binned(&binned).unwrap()
    );
    let refused = |from: &str, to: &str| {
        assert!(text.contains(from), "{from} not in {text}");
        let e = GbdtModel::from_json(&text.replacen(from, to, 1)).unwrap_err();
        assert!(matches!(e, GbdtError::Model(_)), "{e}");
    };
    refused(r#""version":1"#, r#""version":2"#);
    refused(r#""left":1,"#, r#""left":0,"#);
    refused(r#""feature":0"#, r#""feature":7"#);
    refused(r#""bin":0"#, r#""bin":1"#);
    refused(r#""thresholds":[0.5]"#, r#""thresholds":[0.5,0.25]"#);
    refused(r#""format":"#, r#""extra":1,"format":"#);
    // JSON has no NaN; a format that has one (TOML) cannot smuggle one into a leaf either.
    let as_toml = toml::to_string(&model).unwrap();
    let at = as_toml.find("value = ").unwrap() + "value = ".len();
    let end = at + as_toml[at..].find(',').unwrap();
    let nan_leaf = format!("{}nan{}", &as_toml[..at], &as_toml[end..]);
    let e = toml::from_str::<GbdtModel>(&nan_leaf).unwrap_err();
    assert!(e.to_string().contains("value NaN"), "{e}");
    // Nor a NaN gain, cover or threshold (the fuzzer's finds on the round state: a model that
    // holds one is not equal to itself).
    for key in ["gain = ", "cover = ", "threshold = "] {
        let at = as_toml.find(key).unwrap() + key.len();
        let end = at + as_toml[at..].find([',', ' ', '}']).unwrap();
        let nan = format!("{}nan{}", &as_toml[..at], &as_toml[end..]);
        let e = toml::from_str::<GbdtModel>(&nan).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("NaN") || e.contains("does not fit"),
            "{key}: {e}"
        );
    }
    assert_eq!(toml::from_str::<GbdtModel>(&as_toml).unwrap(), model);
    // Rows binned with other edges are refused, not misrouted.
    let other = vec![features[0].clone(), features[1].clone()];
    let e = model.predict_margin_binned(
        &BinnedRows::from_raw(&RawRows::new(&schema(2, &[])), &other).unwrap(),
    );
    assert!(matches!(e, Err(GbdtError::Shape(_))));
}

#[test]
fn the_importance_table_sums_gain_per_feature() {
    let (s, features, rows) = xor();
    let params = GbdtParams {
        trees: 4,
        max_depth: 2,
        min_child_weight: 0.01,
        ..Default::default()
    };
    let (model, _, _) = model_of(&params, &s, &features, &rows);
    let imp = model.importance();
    assert_eq!(imp.len(), 3);
    let splits: u64 = model
        .trees()
        .iter()
        .map(|t| (t.nodes().len() - t.leaves()) as u64)
        .sum();
    assert_eq!(imp.iter().map(|i| i.splits).sum::<u64>(), splits);
    let gain: f64 = model
        .trees()
        .iter()
        .flat_map(|t| t.nodes())
        .map(|n| match n {
            Node::Split { gain, .. } => *gain,
            _ => 0.0,
        })
        .sum();
    assert!(close(imp.iter().map(|i| i.gain).sum(), gain));
    assert!(imp.windows(2).all(|w| w[0].gain >= w[1].gain));
    assert_eq!(imp[2].feature, "noise");
    let table = model.importance_table();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.lines().next().unwrap().starts_with("feature"),
        "{table}"
    );
    assert!(
        table.lines().nth(3).unwrap().starts_with("noise"),
        "{table}"
    );
}

/// Every split of a trained tree is the best split of the rows that reach its node, found
/// from that node's histogram computed directly from those rows (the trainer derives half of
/// its histograms by subtraction), over the tree's column sample; every leaf is the rate
/// times −G/(H+λ) of its rows; and the rows are the tree's row sample.
#[test]
fn each_trained_split_is_the_best_for_the_rows_reaching_it() {
    let (s, features, rows) = noisy(600, 5);
    let params = GbdtParams {
        trees: 4,
        max_depth: 4,
        learning_rate: 0.3,
        min_child_weight: 0.5,
        row_subsample: 0.7,
        col_subsample: 0.75,
        seed: 3,
        ..Default::default()
    };
    let (model, _, binned) = model_of(&params, &s, &features, &rows);
    let layout = HistLayout::new(&features);
    let settings = SplitSettings::from(&params);
    let n = rows.len();
    let mut margin = vec![model.base_margin(); n];
    let (mut g, mut h) = (vec![0.0; n], vec![0.0; n]);
    for (t, tree) in model.trees().iter().enumerate() {
        gradients(&margin, binned.labels(), &mut g, &mut h);
        let sample: Vec<usize> = (0..n).filter(|&r| in_row_sample(&params, t, r)).collect();
        assert!(
            (0.6..0.8).contains(&(sample.len() as f64 / n as f64)),
            "{}",
            sample.len()
        );
        let allowed = column_sample(&params, t, features.len());
        assert_eq!(allowed.iter().filter(|&&a| a).count(), 3);
        // The rows reaching each node, by walking each sampled row's path.
        let mut reach: Vec<Vec<usize>> = vec![Vec::new(); tree.nodes().len()];
        for &r in &sample {
            let mut i = 0;
            loop {
                reach[i].push(r);
                match &tree.nodes()[i] {
                    Node::Split {
                        feature,
                        rule,
                        left,
                        right,
                        ..
                    } => {
                        i = if rule.goes_left(binned.row(r)[*feature as usize]) {
                            *left
                        } else {
                            *right
                        } as usize;
                    }
                    Node::Leaf { .. } => break,
                }
            }
        }
        for (i, node) in tree.nodes().iter().enumerate() {
            let hist = layout.node_histogram(&binned, &reach[i], &g, &h).unwrap();
            let total = layout.totals(&hist);
            match node {
                Node::Split {
                    feature,
                    rule,
                    gain,
                    cover,
                    ..
                } => {
                    let best = best_split(&layout, &hist, &features, &allowed, &settings)
                        .unwrap()
                        .unwrap();
                    assert_eq!(
                        (best.feature, &best.rule),
                        (*feature as usize, rule),
                        "tree {t} node {i}"
                    );
                    assert!(
                        close(best.gain, *gain) && close(total.h, *cover),
                        "tree {t} node {i}"
                    );
                }
                Node::Leaf { value, .. } => {
                    let w = params.learning_rate * leaf_weight(total.g, total.h, params.lambda);
                    assert!(close(w, *value), "tree {t} leaf {i}: {w} vs {value}");
                }
            }
        }
        assert!(tree.leaves() > 3, "tree {t} is too small to test much");
        for (r, m) in margin.iter_mut().enumerate() {
            *m += tree.predict(binned.row(r));
        }
    }
}

/// With a leaf budget, a level spends it on its best splits, not on its first nodes: below a
/// root split on `a`, `b` gains about 5.7 where a = 1 (the right child) and 2.4 where a = 0.
#[test]
fn the_leaf_budget_goes_to_the_best_splits_of_a_level() {
    let s = schema(2, &[]);
    let mut rows = Vec::new();
    for (a, b, negatives, positives) in [
        (0.0, 0.0, 19, 1),
        (0.0, 1.0, 11, 9),
        (1.0, 0.0, 0, 20),
        (1.0, 1.0, 12, 8),
    ] {
        for i in 0..negatives + positives {
            rows.push(Row {
                x: vec![a, b],
                slots: vec![],
                y: i >= negatives,
                g: 0.0,
                h: 0.0,
            });
        }
    }
    let features: Vec<Feature> = ["a", "b"]
        .iter()
        .map(|n| Feature {
            name: (*n).into(),
            edges: BinEdges::from_range(0.0, 1.0, 2).unwrap(),
        })
        .collect();
    let params = GbdtParams {
        trees: 1,
        max_depth: 2,
        max_leaves: Some(3),
        min_child_weight: 0.1,
        ..Default::default()
    };
    let (model, _, _) = model_of(&params, &s, &features, &rows);
    let nodes = model.trees()[0].nodes();
    assert!(
        matches!(nodes[0], Node::Split { feature: 0, .. }),
        "{nodes:?}"
    );
    assert!(matches!(nodes[1], Node::Leaf { .. }), "{nodes:?}");
    assert!(
        matches!(nodes[2], Node::Split { feature: 1, .. }),
        "{nodes:?}"
    );
    assert_eq!(model.trees()[0].leaves(), 3);
}
