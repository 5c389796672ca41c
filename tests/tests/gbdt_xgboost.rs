//! A boosted model exported in XGBoost's JSON format (`GbdtModel::to_xgboost_json`) loads in
//! the `xgboost` Python package and scores the bank data's holdout rows as fedmark does: the
//! model is trained on the shipped bank data (numeric bins from a summed sketch, categorical
//! columns split natively), the holdout rows go to XGBoost as their raw numeric values and
//! categorical slot codes, and the margins agree to 1e-5 (XGBoost keeps leaves and the base
//! score as f32). Ignored, with a message, where Python cannot import xgboost; `.ci/run`
//! installs it and makes its absence a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::io::Write;
use std::process::Command;

use fedmark_client::data::{HoldoutSplit, load_csv};
use fedmark_core::features::{FeatureSchema, RawRows};
use fedmark_core::gbdt::{BinnedRows, Feature, GbdtParams, train};
use fedmark_core::spec::JobSpec;
use fedmark_tests::sim::workspace_root;

const SCRIPT: &str = r#"
import json, sys
import numpy as np
import xgboost as xgb
model, rows, types = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
booster = xgb.Booster(model_file=model)
x = np.loadtxt(rows, delimiter=",", ndmin=2)
d = xgb.DMatrix(x, feature_types=types, enable_categorical=True,
                feature_names=booster.feature_names)
print(json.dumps([float(m) for m in booster.predict(d, output_margin=True)]))
"#;

#[test]
#[cfg_attr(
    not(has_xgboost),
    ignore = "python3 with numpy and xgboost not found (set FEDMARK_PYTHON to one that has them)"
)]
fn xgboost_loads_the_export_and_scores_as_fedmark() {
    let root = workspace_root();
    let spec =
        JobSpec::from_toml(&std::fs::read_to_string(root.join("examples/bank-job.toml")).unwrap())
            .unwrap();
    let split = HoldoutSplit {
        fraction: 0.2,
        seed: 42,
    };
    let data = load_csv(&root.join("data/bank_marketing.csv"), &spec, split).unwrap();
    let schema = FeatureSchema::from_spec(&spec);
    let grids = Feature::sketch_grids(&schema, 1024).unwrap();
    let sketch = Feature::sketch(&data.train, &grids);
    let features = Feature::from_sketch(&schema, &grids, &sketch, 64).unwrap();
    let binned = BinnedRows::from_raw(&data.train, &features).unwrap();
    let params = GbdtParams {
        trees: 40,
        learning_rate: 0.2,
        max_depth: 4,
        ..Default::default()
    };
    let (model, _) = train(&params, &features, &binned, None).unwrap();
    let ours = model.predict_margin(&data.holdout).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.xgb.json");
    std::fs::write(&model_path, model.to_xgboost_json().to_string()).unwrap();
    let rows_path = dir.path().join("rows.csv");
    write_rows(&rows_path, &data.holdout);
    let types: Vec<&str> = features
        .iter()
        .map(|f| {
            if f.edges.is_categorical() {
                "c"
            } else {
                "float"
            }
        })
        .collect();
    let out = Command::new(env!("FEDMARK_TEST_PYTHON"))
        .args(["-c", SCRIPT])
        .arg(&model_path)
        .arg(&rows_path)
        .arg(types.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<f64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), ours.len());
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "largest margin difference {worst}");
    // The model is not trivial: its margins spread.
    let (lo, hi) = ours
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &m| (l.min(m), h.max(m)));
    assert!(hi - lo > 2.0, "margins from {lo} to {hi}");
}

/// The rows as XGBoost's input: numeric values, then categorical slot codes.
fn write_rows(path: &std::path::Path, rows: &RawRows) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for r in 0..rows.len() {
        let fields: Vec<String> = rows
            .numeric_row(r)
            .iter()
            .map(|x| format!("{x:?}"))
            .chain(rows.slot_row(r).iter().map(|s| s.to_string()))
            .collect();
        writeln!(f, "{}", fields.join(",")).unwrap();
    }
}
