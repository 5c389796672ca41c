//! fedmark-core: the pure heart of fedmark.
//!
//! Everything that the coordinator and the partners must agree on lives here once, with no
//! I/O: the job spec, the feature pipeline, the models and their training, the metrics, the
//! fixed-point codec, the layout of what a partner contributes to a round, and the hash-chained
//! audit record both sides keep; and, for the data scientist, an exported model read back
//! ([`pipeline`]) and the deciles of its scores ([`decile`]). Randomness is always passed in,
//! so every function is deterministic under a seeded generator and testable without a network.

pub mod accountant;
pub mod alloc;
/// The privacy-loss-distribution accountant (part of [`accountant`]).
pub use accountant::pld;
pub mod aggregate;
pub mod audit;
pub mod budget;
pub mod codec;
pub mod decile;
pub mod discrete_gaussian;
pub mod dp;
pub mod features;
pub mod gbdt;
pub mod gbdt_params;
pub mod gbdt_plan;
pub mod guard;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod secagg;
pub mod shape;
pub mod spec;
pub mod train;
