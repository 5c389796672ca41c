//! Secure aggregation: the coordinator learns the sum of the partners' `u32` vectors and
//! nothing else, even when partners drop out at any phase.
//!
//! This is the protocol of Bonawitz et al. (CCS 2017, "Practical secure aggregation for
//! privacy-preserving machine learning") with the sparse neighbour graph of SecAgg+ (Bell et
//! al., CCS 2020), as laid out in the design's "Secure aggregation" section. Each client adds
//! to its vector a self mask PRG(b_i) and, for each neighbour j, ±PRG(s_ij) with a seed agreed
//! by X25519; the pairwise masks cancel in the sum. Each client Shamir-shares b_i and its mask
//! secret key among its neighbours, so that after the inputs are in the coordinator can
//! recover, from any t survivors of each neighbourhood, the self masks of the survivors and
//! the pairwise masks of those who dropped — but never both secrets of one partner.
//!
//! Everything here is sans-I/O and deterministic given the RNG passed in:
//!
//! - [`params`]: the round's public parameters ([`RoundParams`]);
//! - [`client`] and [`server`]: the two sides as state machines ([`ClientRound`],
//!   [`ServerRound`]);
//! - [`message`]: what they send each other;
//! - [`keys`]: identities, the roster, round ids, key agreement, signatures and envelopes;
//! - [`shamir`]: secret sharing; [`prg`]: mask expansion; [`graph`]: the neighbour graph;
//! - [`error`]: the one error type, [`SecAggError`].
//!
//! A round, driven by the coordinator (each arrow is a message the caller carries):
//!
//! ```text
//! client: ClientRound::new ─ KeyAdvertisement ─▶ server: on_keys … close_keys (U1)
//! server: keys_for(i) ─▶ client: on_keys ─ Vec<Envelope> ─▶ server: on_shares … close_shares (U2)
//! server: envelopes_for(i) ─▶ client: on_shares; mask(x) ─ y ─▶ caller sums y (RunningSum)
//! server: close_inputs(U3) ─▶ client: on_survivors ─ SurvivorSignature ─▶ server: on_signature
//! server: close_consistency(U4); signatures_for(i) ─▶ client: on_unmask ─ Vec<RevealedShare>
//!                                                              ─▶ server: on_revealed
//! server: unmask(&mut sum)   // sum is now Σ_{i∈U3} x_i
//! ```

pub mod client;
pub mod error;
pub mod graph;
pub mod keys;
pub mod message;
pub mod params;
pub mod prg;
pub mod server;
pub mod shamir;

pub use client::{ClientPhase, ClientPolicy, ClientRound, Mask, MaskPlan};
pub use error::SecAggError;
pub use graph::{GraphSpec, NeighbourGraph, recommended_degree, recommended_threshold};
pub use keys::{
    Roster, RosterError, RoundId, generate_identity, parse_public_key, public_key_hex,
    valid_partner_id,
};
pub use message::{
    Envelope, KeyAdvertisement, RevealedShare, ShareKind, SignedKeys, SurvivorSignature,
};
pub use params::RoundParams;
pub use server::{ServerPhase, ServerRound};

#[cfg(test)]
mod adversary;
#[cfg(test)]
mod tests;
