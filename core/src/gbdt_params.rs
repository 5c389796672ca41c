//! The boosting settings (`gbdt::params`): what a job spec declares under `[model.gbdt]` for
//! `kind = "gbdt"`.
//!
//! Every field has a default (XGBoost's where it has one), so an empty table is a valid
//! setting; unknown fields are refused, and [`GbdtParams::validate`] names the first field
//! outside its range together with the range. A module of its own, outside `gbdt/`, so the
//! spec can hold the settings without importing the trees.

use serde::{Deserialize, Serialize};

/// The most bins a feature can have: bins are stored as `u8`.
pub const MAX_BINS: usize = 256;
/// The deepest tree allowed (a level's node count doubles with depth).
pub const MAX_DEPTH: u32 = 16;
/// The most trees a model can have.
pub const MAX_TREES: u32 = 10_000;
/// Upper bound on the regularisation settings (anything larger makes every split or leaf 0).
const MAX_REGULARISATION: f64 = 1e6;

/// How a categorical feature is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategoricalMode {
    /// Any subset of categories goes left: categories are sorted by G/(H+λ) and the sorted
    /// order is scanned (as LightGBM does; exact for λ = 0 by Fisher's theorem).
    #[default]
    Native,
    /// One category left, all others right (what one-hot encoding gives a tree).
    OneHot,
}

/// Settings of gradient-boosted trees for binary log-loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GbdtParams {
    /// Number of boosting rounds (trees), 1..=10,000. Default 100.
    pub trees: u32,
    /// Shrinkage applied to every leaf weight, in (0, 1]. Default 0.3.
    pub learning_rate: f64,
    /// Maximum depth of a tree (the root is depth 0), 1..=16. Default 6.
    pub max_depth: u32,
    /// Maximum leaves per tree, 2..=65,536; within a level the best splits are kept first.
    /// Default none (only `max_depth` limits).
    pub max_leaves: Option<u32>,
    /// Minimum hessian sum in each child of a split, in [0, 10^6]. Default 1.
    pub min_child_weight: f64,
    /// L2 regularisation of leaf weights (λ), in [0, 10^6]. Default 1.
    pub lambda: f64,
    /// Minimum gain of a split (γ), in [0, 10^6]. Default 0.
    pub gamma: f64,
    /// Bins per numeric feature, 2..=256. Default 256.
    pub max_bins: u32,
    /// Probability that a row is drawn into a tree's sample (each row independently, anew
    /// for every tree), in (0, 1]. Default 1.
    pub row_subsample: f64,
    /// Share of features drawn per tree, in (0, 1]. Default 1.
    pub col_subsample: f64,
    /// Stop when the validation loss has not improved for this many trees, 1..=10,000, and
    /// keep the best model. Default none.
    pub early_stopping_rounds: Option<u32>,
    /// Seed of the row and column draws.
    pub seed: u64,
    /// How categorical features are split. Default `native`.
    pub categorical: CategoricalMode,
    /// Whether the level sums are noised (set by the job spec for a DP job, never read from
    /// a file). Then every node of a level is asked for in one round (no sibling is derived
    /// as parent − child, so no level is asked for again and a job's releases are exactly
    /// its planned rounds), a node's totals are the mean over its features' bins, and a
    /// leaf's weight is bounded by [`NOISED_MAX_WEIGHT`] before the learning rate.
    #[serde(skip)]
    pub noised: bool,
}

/// The largest leaf weight (before the learning rate) of a tree grown from noised sums: a
/// noised hessian sum near zero would otherwise give a leaf of any size.
pub const NOISED_MAX_WEIGHT: f64 = 1.0;

impl Default for GbdtParams {
    fn default() -> Self {
        Self {
            trees: 100,
            learning_rate: 0.3,
            max_depth: 6,
            max_leaves: None,
            min_child_weight: 1.0,
            lambda: 1.0,
            gamma: 0.0,
            max_bins: 256,
            row_subsample: 1.0,
            col_subsample: 1.0,
            early_stopping_rounds: None,
            seed: 0,
            categorical: CategoricalMode::Native,
            noised: false,
        }
    }
}

/// A parameter outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gbdt parameter `{field}` = {value} is out of range: allowed {allowed}")]
pub struct ParamError {
    /// The field, as spelled in the spec.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// The allowed range.
    pub allowed: &'static str,
}

fn check_int(
    field: &'static str,
    v: u32,
    lo: u32,
    hi: u32,
    allowed: &'static str,
) -> Result<(), ParamError> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(ParamError {
            field,
            value: v.to_string(),
            allowed,
        })
    }
}

/// `ok` is written so that NaN fails it.
fn check_f64(
    field: &'static str,
    v: f64,
    ok: bool,
    allowed: &'static str,
) -> Result<(), ParamError> {
    if ok {
        Ok(())
    } else {
        Err(ParamError {
            field,
            value: v.to_string(),
            allowed,
        })
    }
}

impl GbdtParams {
    /// Checks every field against its range; the first one outside is the error.
    pub fn validate(&self) -> Result<(), ParamError> {
        check_int("trees", self.trees, 1, MAX_TREES, "1..=10000")?;
        let lr = self.learning_rate;
        check_f64("learning_rate", lr, lr > 0.0 && lr <= 1.0, "(0, 1]")?;
        check_int("max_depth", self.max_depth, 1, MAX_DEPTH, "1..=16")?;
        if let Some(l) = self.max_leaves {
            check_int("max_leaves", l, 2, 1 << MAX_DEPTH, "2..=65536")?;
        }
        for (field, v) in [
            ("min_child_weight", self.min_child_weight),
            ("lambda", self.lambda),
            ("gamma", self.gamma),
        ] {
            check_f64(
                field,
                v,
                (0.0..=MAX_REGULARISATION).contains(&v),
                "[0, 1e6]",
            )?;
        }
        check_int("max_bins", self.max_bins, 2, MAX_BINS as u32, "2..=256")?;
        for (field, v) in [
            ("row_subsample", self.row_subsample),
            ("col_subsample", self.col_subsample),
        ] {
            check_f64(field, v, v > 0.0 && v <= 1.0, "(0, 1]")?;
        }
        if let Some(r) = self.early_stopping_rounds {
            check_int("early_stopping_rounds", r, 1, MAX_TREES, "1..=10000")?;
        }
        Ok(())
    }

    /// The most leaves a tree of these settings can have.
    pub fn leaf_budget(&self) -> usize {
        let by_depth = 1usize << self.max_depth.min(MAX_DEPTH);
        self.max_leaves
            .map_or(by_depth, |l| by_depth.min(l as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_an_empty_table_gives_them() {
        let p: GbdtParams = toml::from_str("").unwrap();
        assert_eq!(p, GbdtParams::default());
        p.validate().unwrap();
        assert_eq!(p.leaf_budget(), 64);
    }

    #[test]
    fn a_table_parses_and_unknown_fields_are_refused() {
        let p: GbdtParams = toml::from_str(
            "trees = 300\nlearning_rate = 0.05\nmax_leaves = 31\ncategorical = \"one_hot\"\n\
             early_stopping_rounds = 20\nseed = 9",
        )
        .unwrap();
        assert_eq!(p.trees, 300);
        assert_eq!(p.max_leaves, Some(31));
        assert_eq!(p.categorical, CategoricalMode::OneHot);
        assert_eq!(p.leaf_budget(), 31);
        p.validate().unwrap();
        let err = toml::from_str::<GbdtParams>("tress = 3").unwrap_err();
        assert!(err.to_string().contains("tress"), "{err}");
    }

    #[test]
    fn each_bad_field_is_named_with_its_range() {
        let cases: Vec<(GbdtParams, &str, &str)> = vec![
            (
                GbdtParams {
                    trees: 0,
                    ..Default::default()
                },
                "trees",
                "1..=10000",
            ),
            (
                GbdtParams {
                    learning_rate: 0.0,
                    ..Default::default()
                },
                "learning_rate",
                "(0, 1]",
            ),
            (
                GbdtParams {
                    learning_rate: f64::NAN,
                    ..Default::default()
                },
                "learning_rate",
                "(0, 1]",
            ),
            (
                GbdtParams {
                    max_depth: 17,
                    ..Default::default()
                },
                "max_depth",
                "1..=16",
            ),
            (
                GbdtParams {
                    max_leaves: Some(1),
                    ..Default::default()
                },
                "max_leaves",
                "2..=65536",
            ),
            (
                GbdtParams {
                    min_child_weight: -1.0,
                    ..Default::default()
                },
                "min_child_weight",
                "[0, 1e6]",
            ),
            (
                GbdtParams {
                    lambda: f64::INFINITY,
                    ..Default::default()
                },
                "lambda",
                "[0, 1e6]",
            ),
            (
                GbdtParams {
                    gamma: f64::NAN,
                    ..Default::default()
                },
                "gamma",
                "[0, 1e6]",
            ),
            (
                GbdtParams {
                    max_bins: 257,
                    ..Default::default()
                },
                "max_bins",
                "2..=256",
            ),
            (
                GbdtParams {
                    row_subsample: 1.5,
                    ..Default::default()
                },
                "row_subsample",
                "(0, 1]",
            ),
            (
                GbdtParams {
                    col_subsample: 0.0,
                    ..Default::default()
                },
                "col_subsample",
                "(0, 1]",
            ),
            (
                GbdtParams {
                    early_stopping_rounds: Some(0),
                    ..Default::default()
                },
                "early_stopping_rounds",
                "1..=10000",
            ),
        ];
        for (p, field, allowed) in cases {
            let e = p.validate().unwrap_err();
            assert_eq!((e.field, e.allowed), (field, allowed));
            assert!(
                e.to_string()
                    .starts_with(&format!("gbdt parameter `{field}` = ")),
                "{e}"
            );
        }
    }
}
