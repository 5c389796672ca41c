//! Scoring speed of a boosted model: 300 trees of depth 6 over rows shaped like the bank data
//! (6 numeric columns in 255 bins, 9 categorical columns of 2 to 12 values), one thread. The
//! target is 10⁶ rows per second per core.
//!
//! ```text
//! cargo bench -p fedmark-core --bench gbdt_score -- --warm-up-time 1 --measurement-time 5
//! ```
//!
//! - `compiled_binned`: [`Scorer`] over rows already binned;
//! - `compiled_from_parsed`: binning parsed rows with the model's edges, then the scorer (what
//!   scoring a parsed CSV costs);
//! - `walk_binned`: the model's own node walk ([`GbdtModel::predict_margin_binned`]), the
//!   reference the scorer is measured against.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fedmark_core::features::{Categorical, FeatureSchema, RawRows};
use fedmark_core::gbdt::{BinnedRows, Feature, GbdtModel, GbdtParams, Scorer, train};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const WIDTHS: [usize; 9] = [12, 3, 4, 2, 2, 2, 3, 12, 4];

fn schema() -> FeatureSchema {
    FeatureSchema {
        numeric: (0..6).map(|j| format!("x{j}")).collect(),
        categorical: WIDTHS
            .iter()
            .enumerate()
            .map(|(k, &w)| {
                let vocab = (0..w).map(|v| format!("v{v}")).collect();
                (format!("c{k}"), Categorical::Vocabulary(vocab))
            })
            .collect(),
        ranges: vec![Some([0.0, 1.0]); 6],
    }
}

fn rows(schema: &FeatureSchema, n: usize, seed: u64) -> RawRows {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = RawRows::new(schema);
    for _ in 0..n {
        let x: Vec<f64> = (0..6).map(|_| rng.random::<f64>()).collect();
        let c: Vec<u32> = WIDTHS
            .iter()
            .map(|&w| rng.random_range(0..w as u32))
            .collect();
        let score = x[0] * x[1] + 0.5 * x[2] - 0.3 * x[3]
            + 0.1 * f64::from(c[0] % 3)
            + if c[7] > 6 { 0.2 } else { 0.0 };
        let y = score + 0.4 * rng.random::<f64>() > 0.8;
        out.push(&x, &c, y);
    }
    out
}

fn model(schema: &FeatureSchema) -> GbdtModel {
    let features = Feature::from_ranges(schema, 255).expect("ranges are declared");
    let train_rows = BinnedRows::from_raw(&rows(schema, 20_000, 1), &features).expect("shape");
    let params = GbdtParams {
        trees: 300,
        learning_rate: 0.05,
        max_depth: 6,
        min_child_weight: 0.1,
        ..Default::default()
    };
    train(&params, &features, &train_rows, None)
        .expect("valid parameters")
        .0
}

fn scoring(c: &mut Criterion) {
    let schema = schema();
    let model = model(&schema);
    let scorer = Scorer::new(&model);
    assert!(scorer.is_compiled());
    let n = 100_000;
    let parsed = rows(&schema, n, 2);
    let binned = BinnedRows::from_raw(&parsed, model.features()).expect("shape");
    let mut group = c.benchmark_group("gbdt_score_300x6");
    group.throughput(Throughput::Elements(n as u64));
    let mut out = Vec::with_capacity(n);
    group.bench_function(BenchmarkId::from_parameter("compiled_binned"), |b| {
        b.iter(|| scorer.margins_into(&binned, &mut out).expect("shape"));
    });
    group.bench_function(BenchmarkId::from_parameter("compiled_from_parsed"), |b| {
        b.iter(|| {
            let binned = BinnedRows::from_raw(&parsed, model.features()).expect("shape");
            scorer.margins_into(&binned, &mut out).expect("shape");
        });
    });
    group.bench_function(BenchmarkId::from_parameter("walk_binned"), |b| {
        b.iter(|| model.predict_margin_binned(&binned).expect("shape"));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = scoring
}
criterion_main!(benches);
