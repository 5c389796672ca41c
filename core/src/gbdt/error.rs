//! The module's errors: why a binning, a boosting step or a model could not be used.

use super::params::ParamError;

/// Why one feature's edges could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BinError {
    /// A range that is empty, reversed or not finite.
    #[error("range [{low}, {high}] must be finite with low < high")]
    BadRange {
        /// Low end.
        low: f64,
        /// High end.
        high: f64,
    },
    /// A numeric feature without a declared range.
    #[error("no declared range")]
    NoRange,
    /// A bin or cell count outside its allowed range.
    #[error("{count} bins or cells, allowed {allowed}")]
    BadCount {
        /// The count asked for.
        count: usize,
        /// The allowed range.
        allowed: &'static str,
    },
    /// More category slots than a `u8` bin can hold (the cap on categories).
    #[error("{slots} category slots, allowed 1..=256")]
    TooManyCategories {
        /// The slots.
        slots: usize,
    },
}

/// Why a boosting step, a binning or a model could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GbdtError {
    /// A parameter is outside its allowed range.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A feature's bin edges could not be made.
    #[error("feature `{feature}`: {source}")]
    Binning {
        /// The feature.
        feature: String,
        /// What was wrong.
        source: BinError,
    },
    /// A row holds a category slot beyond its feature's slots.
    #[error("row {row}: categorical feature `{feature}` has slot {slot}, beyond its {slots} slots")]
    SlotOutOfRange {
        /// The row.
        row: usize,
        /// The feature.
        feature: String,
        /// The slot found.
        slot: u32,
        /// The feature's slots.
        slots: usize,
    },
    /// Rows and features (or two sets of rows) do not have the same shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Early stopping was asked for without validation rows.
    #[error("early_stopping_rounds needs validation rows")]
    NoValidation,
    /// No training rows.
    #[error("no training rows")]
    NoRows,
    /// A serialised model could not be read or is inconsistent.
    #[error("model: {0}")]
    Model(String),
}
