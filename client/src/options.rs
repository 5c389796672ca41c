//! What tests and the simulator set on a partner's node ([`NodeOptions`]): scripted dropouts,
//! a hook at each round's start, an identity instead of the config's files, whether to stay
//! connected between jobs, and the round records shared by its sessions. Real deployments use
//! the defaults.

use std::sync::{Arc, Mutex};

use crate::identity::Identity;
use crate::rounds::RoundRecords;

/// Fault injection for simulations: where in a round a partner leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPoint {
    /// When the round starts: it advertises no keys and sends nothing.
    Start,
    /// After advertising its keys, when the others' keys arrive (secure rounds).
    AfterKeys,
    /// After sending its shares, when the shares for it arrive, before any input.
    AfterShares,
    /// In the middle of streaming its input.
    MidInput,
    /// After its whole input, when asked to sign the survivor set (secure rounds).
    AfterInput,
    /// After signing the survivor set, when asked to help unmask (secure rounds).
    AfterSignature,
}

impl DropPoint {
    /// Parses a phase name as the simulator's `--dropout-phase` takes it.
    pub fn from_phase(name: &str) -> Option<Self> {
        Some(match name {
            "keys" => DropPoint::Start,
            "shares" => DropPoint::AfterKeys,
            "input" => DropPoint::AfterShares,
            "mid-input" => DropPoint::MidInput,
            "consistency" => DropPoint::AfterInput,
            "unmask" => DropPoint::AfterSignature,
            _ => return None,
        })
    }
}

/// A scripted dropout: leave at `point` of round `round`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropout {
    /// Round number at which to drop.
    pub round: u64,
    /// Where in the round.
    pub point: DropPoint,
}

/// Called with the round number at the start of every round, before the consent snapshot is
/// taken: simulations use it to change a partner's consent file between rounds.
#[derive(Clone)]
pub struct RoundHook(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for RoundHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoundHook")
    }
}

/// Options that tests and the simulator set; real deployments use the defaults.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Runs at the start of every round, before the consent snapshot.
    pub round_hook: Option<RoundHook>,
    /// Scripted dropouts, shared by the sessions of one partner: each fires once and is then
    /// removed, so a partner that reconnects goes on with the rest.
    pub dropouts: Arc<Mutex<Vec<Dropout>>>,
    /// Identity to use instead of the config's key and roster files.
    pub identity: Option<Identity>,
    /// Stay connected after a job ends and wait for the next offer (a partner's node beside
    /// a long-running coordinator); otherwise the session ends with the first job.
    pub keep_serving: bool,
    /// What each job has asked of this partner (its round guards), loaded from
    /// [`crate::config::ClientConfig::rounds_path`] by the first session and kept across sessions and
    /// restarts.
    pub guards: Arc<Mutex<RoundRecords>>,
}
