//! The errors of a secure-aggregation round, on either side.
//!
//! Every refusal is a value: a client that returns an error has revealed nothing further and
//! its state is unchanged (it can be given corrected input, or abandoned, which counts as a
//! dropout). The gRPC layers map these to statuses; [`SecAggError::is_bad_input`] tells which
//! ones are the caller's fault.

use super::graph::GraphError;
use super::message::ShareKind;
use super::shamir::ShamirError;

/// Why a secure-aggregation step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecAggError {
    /// The cohort has no partners.
    #[error("cohort is empty")]
    EmptyCohort,
    /// The cohort is larger than supported.
    #[error("cohort of {got} partners exceeds the maximum {max}")]
    CohortTooLarge {
        /// Partners in the cohort.
        got: usize,
        /// [`super::params::MAX_COHORT`].
        max: usize,
    },
    /// A partner id is empty.
    #[error("cohort position {0} has an empty partner id")]
    EmptyPartnerId(usize),
    /// A partner appears twice in the cohort.
    #[error("partner {0:?} appears twice in the cohort")]
    DuplicateInCohort(String),
    /// The threshold is not in (|N⁺|/2, |N⁺|] for the neighbourhood size |N⁺| = degree + 1:
    /// too low lets two disjoint groups both reconstruct, too high can never be met.
    #[error(
        "threshold {threshold} must be more than half of and at most the neighbourhood size {neighbourhood}"
    )]
    ThresholdOutOfRange {
        /// Threshold asked for.
        threshold: usize,
        /// Closed neighbourhood size (degree + 1).
        neighbourhood: usize,
    },
    /// The vector is longer than a mask can cover.
    #[error("vector length {got} exceeds the maximum {max}")]
    VectorTooLong {
        /// Words asked for.
        got: usize,
        /// [`super::prg::MAX_WORDS`].
        max: usize,
    },
    /// The neighbour graph could not be built.
    #[error("neighbour graph: {0}")]
    Graph(#[from] GraphError),
    /// The graph seed is not the one derived from the round id.
    #[error("the announced neighbour graph is not the one derived from the round and its cohort")]
    GraphSeedMismatch,
    /// The cohort is smaller than this partner's policy minimum.
    #[error("cohort of {got} partners is below the minimum of {minimum}")]
    BelowMinimum {
        /// Partners counted.
        got: usize,
        /// Policy minimum.
        minimum: usize,
    },
    /// A partner id that is not in the round's cohort.
    #[error("partner {0:?} is not in the round's cohort")]
    NotInCohort(String),
    /// The call does not fit the round's current phase.
    #[error("{call} is not allowed in phase {phase}")]
    WrongPhase {
        /// What was called.
        call: &'static str,
        /// The phase the round is in.
        phase: &'static str,
    },
    /// A partner that is not in this party's roster.
    #[error("partner {0:?} is not in the roster")]
    UnknownPartner(String),
    /// The signature over a partner's round keys does not verify against its roster key.
    #[error("signature over the round keys of partner {0:?} does not verify")]
    BadSignature(String),
    /// Two key sets (or two uploads) for one partner.
    #[error("partner {0:?} sent or was given keys twice")]
    DuplicateKeys(String),
    /// The key set relayed for this client is not the one it advertised.
    #[error("the coordinator relayed keys for this partner that it did not advertise")]
    OwnKeysAltered,
    /// A public key whose Diffie–Hellman agreement is degenerate (a low-order point).
    #[error("public key of partner {0:?} is degenerate")]
    DegenerateKey(String),
    /// Fewer partners than the threshold remain in a closed neighbourhood.
    #[error("{phase}: {got} partners in the neighbourhood of {partner:?}, threshold {need}")]
    BelowThreshold {
        /// The phase's set: "keys" (U1), "shares" (U2), "inputs" (U3), "reveal" (U4).
        phase: &'static str,
        /// Whose neighbourhood.
        partner: String,
        /// Partners present.
        got: usize,
        /// Threshold.
        need: usize,
    },
    /// Fewer partners than the threshold remain in the whole round: the coordinator must
    /// abort it.
    #[error("{phase}: {got} partners remain, threshold {need}")]
    QuorumLost {
        /// The phase's set: "keys" (U1), "shares" (U2) or "inputs" (U3).
        phase: &'static str,
        /// Partners present.
        got: usize,
        /// Threshold.
        need: usize,
    },
    /// A partner uploaded twice in one phase.
    #[error("partner {0:?} already uploaded in this phase")]
    DuplicateUpload(String),
    /// A revealed share for a partner that is not the revealer's neighbour, not in the share
    /// phase's set, or listed twice.
    #[error("partner {from:?} revealed an unexpected share of {owner:?}")]
    UnexpectedShare {
        /// Revealer.
        from: String,
        /// Owner of the secret.
        owner: String,
    },
    /// An envelope addressed to someone other than its receiver, or claiming another sender.
    #[error("envelope from {from:?} to {to:?} is misrouted")]
    Misrouted {
        /// Claimed sender.
        from: String,
        /// Claimed recipient.
        to: String,
    },
    /// A message from a partner that has no business sending it (not a neighbour, or not in
    /// the phase's set).
    #[error("unexpected message from partner {0:?}")]
    UnexpectedSender(String),
    /// Two envelopes between the same pair.
    #[error("duplicate envelope from {from:?} to {to:?}")]
    DuplicateEnvelope {
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
    },
    /// A partner's upload of envelopes misses a neighbour.
    #[error("partner {from:?} sent no envelope for neighbour {to:?}")]
    MissingEnvelope {
        /// Sender.
        from: String,
        /// Neighbour left out.
        to: String,
    },
    /// An envelope that does not decrypt and authenticate under the pair's key and binding.
    #[error("envelope from partner {0:?} does not decrypt")]
    Decrypt(String),
    /// Encryption failed (only for absurd plaintext sizes; never in practice).
    #[error("envelope to partner {0:?} could not be encrypted")]
    Encrypt(String),
    /// Key derivation failed (only for absurd output sizes; never in practice).
    #[error("key derivation failed")]
    Kdf,
    /// A byte field of the wrong size.
    #[error("{field} must be {expected} bytes, got {got}")]
    WrongLength {
        /// The field.
        field: &'static str,
        /// Expected size.
        expected: usize,
        /// Size given.
        got: usize,
    },
    /// The vector to mask or unmask has the wrong number of words.
    #[error("vector has {got} words, the round expects {expected}")]
    VectorLength {
        /// Words the round expects.
        expected: usize,
        /// Words given.
        got: usize,
    },
    /// A survivor listed twice.
    #[error("partner {0:?} is listed twice among the survivors")]
    DuplicateSurvivor(String),
    /// A survivor that did not complete the share phase (U3 ⊄ U2).
    #[error("survivor {0:?} did not complete the share phase")]
    SurvivorWithoutShares(String),
    /// The coordinator left this partner out of the survivors although it is asking it to
    /// help unmask: it would learn this partner's mask key.
    #[error("this partner is not among the survivors")]
    NotASurvivor,
    /// Shares were already revealed in this round; revealing again (e.g. for another
    /// survivor set) could expose both secrets of one partner.
    #[error("shares were already revealed in this round")]
    AlreadyRevealed,
    /// A revealed share whose kind is missing on the wire.
    #[error("a revealed share of {owner:?}'s secret names no kind")]
    UnspecifiedShareKind {
        /// Owner of the secret.
        owner: String,
    },
    /// A revealed share of the wrong kind for its owner (a self-mask share for a dropped
    /// partner, or a mask-key share for a survivor).
    #[error("partner {from:?} revealed a share of the wrong kind ({kind:?}) for {owner:?}")]
    WrongShareKind {
        /// Revealer.
        from: String,
        /// Owner of the secret.
        owner: String,
        /// Kind received.
        kind: ShareKind,
    },
    /// A revealed share at a point other than the revealer's.
    #[error("partner {from:?} revealed a share at x = {got}, expected x = {expected}")]
    WrongSharePoint {
        /// Revealer.
        from: String,
        /// Its evaluation point.
        expected: u32,
        /// The point given.
        got: u32,
    },
    /// A malformed share value.
    #[error("share of {owner:?}'s secret: {source}")]
    BadShare {
        /// Owner of the secret.
        owner: String,
        /// What is wrong.
        source: ShamirError,
    },
    /// Not enough shares to reconstruct a secret: the round cannot be unmasked.
    #[error("{got} shares of {owner:?}'s {kind:?} secret, {need} needed")]
    NotEnoughShares {
        /// Owner of the secret.
        owner: String,
        /// Which secret.
        kind: ShareKind,
        /// Shares received.
        got: usize,
        /// Threshold.
        need: usize,
    },
    /// A survivor-set signature does not verify under the signer's roster key, or is over
    /// another set than the one this partner was shown.
    #[error("signature of partner {0:?} over the survivor set does not verify")]
    BadSurvivorSignature(String),
    /// A survivor-set signature from a partner that is not a survivor.
    #[error("partner {0:?} signed the survivor set but is not in it")]
    SignerNotASurvivor(String),
    /// Two signatures from one partner.
    #[error("partner {0:?} signed the survivor set twice")]
    DuplicateSignature(String),
    /// The cohort is not in canonical (strictly ascending) order.
    #[error("the cohort is not in canonical order (sorted, each partner once)")]
    CohortNotCanonical,
    /// The unmask request names another survivor set than the one this partner signed.
    #[error("the unmask request's survivor set differs from the one this partner signed")]
    SurvivorSetChanged,
    /// A reconstructed mask key does not match the public key its owner signed: some share
    /// was wrong.
    #[error("reconstructed mask key of {0:?} does not match its advertised public key")]
    KeyMismatch(String),
}

impl SecAggError {
    /// True when the error is about the caller's input (malformed, misrouted, unknown or
    /// unauthenticated data), as opposed to the round's phase or its quorum.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            SecAggError::WrongPhase { .. }
                | SecAggError::BelowThreshold { .. }
                | SecAggError::QuorumLost { .. }
                | SecAggError::NotEnoughShares { .. }
                | SecAggError::AlreadyRevealed
                | SecAggError::Encrypt(_)
                | SecAggError::Kdf
        )
    }
}
