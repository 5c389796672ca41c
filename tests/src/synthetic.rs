//! A synthetic workload for scale tests: non-IID logistic data from one fixed true weight
//! vector, written as per-partner CSV files plus the job spec that reads them.
//!
//! - Up to [`DENSE_LIMIT`] features: dense numeric columns `x0..`, each partner with its own
//!   mean shift per feature.
//! - Beyond: sparse rows like hashed one-hot marketing data — [`TOKEN_COLUMNS`] categorical
//!   columns each holding one token id, hashed into `dim / TOKEN_COLUMNS` slots, so the model
//!   has `dim` inputs of which a few dozen are active per row. Each partner draws half its
//!   tokens from its own slice of the token space, with power-law token popularity.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Largest dimension generated as dense numeric columns.
pub const DENSE_LIMIT: usize = 10_000;
/// Active categorical columns of a sparse row.
pub const TOKEN_COLUMNS: usize = 32;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Writes `partners` files of `rows` rows each into `dir`; returns the files and the spec text.
pub fn generate(
    dir: &Path,
    dim: usize,
    partners: usize,
    rows: usize,
    rounds: u32,
    seed: u64,
) -> anyhow::Result<(Vec<(PathBuf, usize)>, String)> {
    if dim == 0 || partners == 0 || rows == 0 {
        bail!("--synthetic-dim, --partners and --rows-per-partner must be at least 1");
    }
    let sparse = dim > DENSE_LIMIT;
    if sparse && !dim.is_multiple_of(TOKEN_COLUMNS) {
        bail!("--synthetic-dim above {DENSE_LIMIT} must be a multiple of {TOKEN_COLUMNS}");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0, 1.0).context("normal distribution")?;
    let truth: Vec<f64> = (0..dim).map(|_| normal.sample(&mut rng)).collect();
    let mut files = Vec::with_capacity(partners);
    for p in 0..partners {
        let path = dir.join(format!("partner-{p}.csv"));
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let mut prng = StdRng::seed_from_u64(seed ^ (0xA5A5 + p as u64));
        if sparse {
            let header: Vec<String> = (0..TOKEN_COLUMNS).map(|k| format!("tok{k}")).collect();
            writeln!(out, "{},y", header.join(","))?;
            let slice = dim / partners.max(1);
            let mut line = String::new();
            for _ in 0..rows {
                line.clear();
                let mut z = -1.0;
                for _ in 0..TOKEN_COLUMNS {
                    // Token popularity follows a power law (u^4), as item and page ids do, so
                    // popular tokens recur across rows and the model has something to learn.
                    let u: f64 = prng.random();
                    let id = if prng.random_bool(0.5) {
                        p * slice + (u.powi(4) * slice as f64) as usize
                    } else {
                        (u.powi(4) * dim as f64) as usize
                    };
                    z += truth[id.min(dim - 1)] * 2.0 / (TOKEN_COLUMNS as f64).sqrt();
                    line.push_str(&format!("t{id},"));
                }
                let y = prng.random_bool(sigmoid(z));
                writeln!(out, "{line}{}", u8::from(y))?;
            }
        } else {
            let header: Vec<String> = (0..dim).map(|j| format!("x{j}")).collect();
            writeln!(out, "{},y", header.join(","))?;
            let shift: Vec<f64> = (0..dim).map(|_| 0.5 * normal.sample(&mut prng)).collect();
            let mut line = String::new();
            for _ in 0..rows {
                line.clear();
                let mut z = -1.0;
                for j in 0..dim {
                    let x = shift[j] + normal.sample(&mut prng);
                    z += truth[j] * x * 2.0 / (dim as f64).sqrt();
                    line.push_str(&format!("{x:.4},"));
                }
                let y = prng.random_bool(sigmoid(z));
                writeln!(out, "{line}{}", u8::from(y))?;
            }
        }
        out.flush()?;
        files.push((path, rows));
    }
    let features = if sparse {
        let cols: Vec<String> = (0..TOKEN_COLUMNS).map(|k| format!("\"tok{k}\"")).collect();
        format!(
            "categorical = [{}]\nhash_buckets = {}",
            cols.join(", "),
            dim / TOKEN_COLUMNS
        )
    } else {
        let cols: Vec<String> = (0..dim).map(|j| format!("\"x{j}\"")).collect();
        format!("numeric = [{}]", cols.join(", "))
    };
    let spec = format!(
        "[job]\nname = \"synthetic-{dim}\"\npurpose = \"campaign_response\"\nrounds = {rounds}\nseed = {seed}\n\
         [label]\ncolumn = \"y\"\npositive = \"1\"\n[features]\n{features}\n[model]\nkind = \"logistic\"\nl2 = 0.0\n\
         [training]\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.5\n[aggregation]\nsecure = false\n"
    );
    Ok((files, spec))
}
