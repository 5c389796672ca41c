//! Gradient-boosted decision trees for binary log-loss, built so that a tree can be grown
//! through the secure sum: second-order (XGBoost-style) histogram boosting whose split decisions
//! use summed histograms only.
//!
//! The pieces, in the order a tree is grown:
//!
//! - [`params`]: [`GbdtParams`], the settings (meant to sit under the job spec's `[model]`),
//!   and [`error`], the module's typed errors;
//! - [`bins`]: global bin edges per feature ([`BinEdges`]), from a declared range or from a
//!   fine histogram sketch summed across partners, and [`BinnedRows`], one `u8` bin per row
//!   and feature;
//! - [`histogram`]: per node, feature and bin the (gradient, hessian, count) sums, laid out as
//!   one flat `Vec<f64>` per level — the vector the secure sum adds — and the bound of one
//!   row's contribution the fixed-point codec needs;
//! - [`split`]: the gain and leaf formulas and the best split of a node from its (summed)
//!   histogram alone;
//! - [`tree`]: [`Tree`] and [`GbdtModel`]: routing by bins, prediction, versioned
//!   serialisation, feature importance;
//! - [`grow`]: one tree grown through the sum, as its two sides: the coordinator's
//!   [`TreeGrower`] (which nodes to ask for, splits and leaves from summed histograms) and a
//!   party's [`level_vector`] (its rows routed by the [`PartialTree`] so far);
//! - [`wire`]: [`RoundState`], what a round shows the parties (the model so far, the tree
//!   being grown, the nodes asked for) as the flat words a round's model travels as;
//! - [`score`]: [`Scorer`], a model compiled for scoring many rows fast;
//! - [`xgboost`]: the model in XGBoost's JSON model format;
//! - [`plan`]: a federated job's rounds (tree × level) and the largest round state its spec
//!   allows;
//! - [`train`](mod@train): the centralised trainer, made of exactly those two sides (one
//!   party), with row and column subsampling and early stopping.
//!
//! Features are numbered as in [`FeatureSchema`](crate::features::FeatureSchema): its numeric
//! columns first, then its categorical columns (one feature per column, not per one-hot slot).
//! There are no missing values: the loader skips rows with an unparsable value, numeric values
//! outside a feature's edges fall in its first or last bin (as [`FeatureSchema::clamp`] would
//! clamp them), and a NaN (which the loader never produces) falls in bin 0.
//!
//! [`FeatureSchema::clamp`]: crate::features::FeatureSchema::clamp

pub mod bins;
pub mod error;
pub use crate::gbdt_params as params;
pub use crate::gbdt_plan as plan;
pub mod grow;
pub mod histogram;
pub mod score;
pub mod split;
pub mod train;
pub mod tree;
pub mod wire;
pub mod xgboost;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod train_tests;

pub use bins::{BinEdges, BinnedRows, Feature, FineGrid};
pub use error::{BinError, GbdtError};
pub use grow::{PartialNode, PartialTree, TreeGrower, level_vector};
pub use histogram::{HistLayout, NodeStats, RowBound};
pub use params::{CategoricalMode, GbdtParams, ParamError};
pub use score::Scorer;
pub use split::{Split, SplitRule};
pub use train::{TrainReport, train};
pub use tree::{FORMAT, GbdtModel, Importance, Tree, VERSION};
pub use wire::RoundState;
