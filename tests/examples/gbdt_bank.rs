//! Measures the centralised gradient-boosted trees on the shipped bank data: holdout AUC,
//! log-loss and training seconds, with the example job's columns (`duration` not declared),
//! the partner loader's 20 % holdout (seed 42) and quantile bins from a summed 1,024-cell
//! sketch, as `tests/tests/gbdt_reference.rs` does with a reduced setting.
//!
//! ```sh
//! cargo run --release -p fedmark-tests --example gbdt_bank -- \
//!     --trees 300 --learning-rate 0.05 --max-leaves 31 --max-depth 16
//! ```
//!
//! Flags (defaults in brackets): `--trees` [300], `--learning-rate` [0.05], `--max-depth` [6],
//! `--max-leaves` [none], `--max-bins` [256], `--lambda` [1], `--min-child-weight` [1],
//! `--categorical` [native] or one_hot.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: fail loudly

use std::time::Instant;

use anyhow::{Context, bail};
use fedmark_client::data::{HoldoutSplit, load_csv};
use fedmark_core::features::{FeatureSchema, RawRows};
use fedmark_core::gbdt::{BinnedRows, CategoricalMode, Feature, GbdtParams, train};
use fedmark_core::metrics;
use fedmark_core::model::sigmoid;
use fedmark_core::spec::JobSpec;
use fedmark_tests::sim::workspace_root;

fn parse_args() -> anyhow::Result<GbdtParams> {
    let mut p = GbdtParams {
        trees: 300,
        learning_rate: 0.05,
        ..GbdtParams::default()
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            bail!("flag {} without a value", pair[0]);
        };
        let bad = || format!("{flag} {value}");
        match flag.as_str() {
            "--trees" => p.trees = value.parse().with_context(bad)?,
            "--learning-rate" => p.learning_rate = value.parse().with_context(bad)?,
            "--max-depth" => p.max_depth = value.parse().with_context(bad)?,
            "--max-leaves" => p.max_leaves = Some(value.parse().with_context(bad)?),
            "--max-bins" => p.max_bins = value.parse().with_context(bad)?,
            "--lambda" => p.lambda = value.parse().with_context(bad)?,
            "--min-child-weight" => p.min_child_weight = value.parse().with_context(bad)?,
            "--categorical" => {
                p.categorical = match value.as_str() {
                    "native" => CategoricalMode::Native,
                    "one_hot" => CategoricalMode::OneHot,
                    _ => bail!("--categorical is native or one_hot, not {value}"),
                }
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    p.validate()?;
    Ok(p)
}

fn main() -> anyhow::Result<()> {
    let params = parse_args()?;
    let root = workspace_root();
    let spec = JobSpec::from_toml(&std::fs::read_to_string(
        root.join("examples/bank-job.toml"),
    )?)?;
    let split = HoldoutSplit {
        fraction: 0.2,
        seed: 42,
    };
    let data = load_csv(&root.join("data/bank_marketing.csv"), &spec, split)?;
    let schema = FeatureSchema::from_spec(&spec);

    let started = Instant::now();
    let grids = Feature::sketch_grids(&schema, 1024)?;
    let mut summed = vec![0.0; grids.iter().map(|g| g.cells()).sum()];
    for p in 0..3 {
        let mut part = RawRows::new(&schema);
        for r in (p..data.train.len()).step_by(3) {
            part.push(
                data.train.numeric_row(r),
                data.train.slot_row(r),
                data.train.labels[r] > 0.5,
            );
        }
        for (s, x) in summed.iter_mut().zip(Feature::sketch(&part, &grids)) {
            *s += x;
        }
    }
    let features = Feature::from_sketch(&schema, &grids, &summed, params.max_bins as usize)?;
    let train_rows = BinnedRows::from_raw(&data.train, &features)?;
    let test_rows = BinnedRows::from_raw(&data.holdout, &features)?;
    let binned = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (model, report) = train(&params, &features, &train_rows, None)?;
    let trained = started.elapsed().as_secs_f64();

    let p: Vec<f64> = model
        .predict_margin_binned(&test_rows)?
        .into_iter()
        .map(sigmoid)
        .collect();
    let m = metrics::exact(&p, test_rows.labels());
    let leaves: usize = model.trees().iter().map(|t| t.leaves()).sum();
    println!("{params:?}");
    println!(
        "rows: {} train, {} holdout; trees {}, mean leaves {:.1}",
        train_rows.len(),
        test_rows.len(),
        report.kept,
        leaves as f64 / report.kept.max(1) as f64
    );
    println!(
        "holdout AUC {:.4}, log-loss {:.4}; binning {binned:.2} s, training {trained:.2} s",
        m.auc, m.log_loss
    );
    println!("{}", model.importance_table());
    Ok(())
}
