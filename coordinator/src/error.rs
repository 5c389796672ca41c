//! Why a job could not complete ([`JobError`]), one enum for the job task, its rounds and the
//! checks before it starts.

use fedmark_core::accountant::AccountantError;
use fedmark_core::codec::CodecError;
use fedmark_core::discrete_gaussian::DiscreteGaussianError;

use crate::round::RoundError;
use crate::store::{JobStatus, StoreError};

/// Why a job could not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Too few partners accepted the job in time.
    #[error(
        "only {accepted} partners accepted the job by the join deadline (need {needed}); refusals: {refusals}"
    )]
    NotEnoughPartners {
        /// Acceptances.
        accepted: usize,
        /// Required.
        needed: usize,
        /// Refusals, `partner: reason`.
        refusals: String,
    },
    /// A round failed on every attempt.
    #[error("round {round} failed {attempts} times; last: {last}")]
    RoundFailed {
        /// Round number.
        round: u64,
        /// Attempts made.
        attempts: u32,
        /// Last failure.
        last: RoundError,
    },
    /// The job asks for more than this coordinator's size budget.
    #[error("job too large: {0}")]
    TooLarge(String),
    /// The job's vectors do not fit in this coordinator's memory now.
    #[error(transparent)]
    Memory(#[from] fedmark_core::alloc::AllocError),
    /// A boosted-trees step failed (bin edges, a level's sum, the model).
    #[error("boosted trees: {0}")]
    Trees(#[from] fedmark_core::gbdt::GbdtError),
    /// A check before training failed (e.g. no row carries the positive label).
    #[error("pre-flight check failed: {0}")]
    Preflight(String),
    /// A round's unmask failed after partners revealed their shares, and too few others
    /// remain to retry it.
    #[error(
        "round {round} is lost: its unmask failed after {sat_out} partners revealed their shares, and they do not help unmask a round twice (nor, in a job without DP, a second round from the same model)"
    )]
    RoundLost {
        /// Round number.
        round: u64,
        /// Partners sitting its retries out.
        sat_out: usize,
    },
    /// The fixed-point layout cannot be built for this cohort.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The round's shape cannot be derived for this cohort.
    #[error(transparent)]
    Shape(#[from] fedmark_core::shape::ShapeError),
    /// The privacy plan or ledger failed (e.g. an unreachable ε target).
    #[error("privacy accounting: {0}")]
    Privacy(#[from] AccountantError),
    /// Noise could not be drawn.
    #[error("privacy noise: {0}")]
    Noise(#[from] DiscreteGaussianError),
    /// The spec could not be serialised for the partners.
    #[error(transparent)]
    Spec(#[from] fedmark_core::spec::SpecError),
    /// The event stream ended (the server stopped).
    #[error("the coordinator's server stopped during the job")]
    ServerStopped,
    /// The durable store failed; nothing past its last commit was released.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds this job already ended.
    #[error("job {id} already ended ({status:?}): {reason}")]
    AlreadyEnded {
        /// Job id.
        id: String,
        /// How it ended.
        status: JobStatus,
        /// Why.
        reason: String,
    },
}
