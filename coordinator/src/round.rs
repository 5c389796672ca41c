//! One aggregation round, as the coordinator runs it.
//!
//! Phases and what moves them on (the bracketed ones run only with secure aggregation, the
//! protocol of Bonawitz et al. with the SecAgg+ graph, see [`fedmark_core::secagg`]):
//!
//! 1. **Start.** `RoundStart` goes to every cohort member on its session; for training and
//!    evaluation each member then downloads the global model on a stream of its own
//!    ([`crate::bulk`]). A member whose session is gone is dropped.
//! 2. [**Advertise keys.**] Each member sends two fresh public keys signed with its identity
//!    key; the signatures are checked against the roster. When all have answered (or at the
//!    deadline) the advertisers are U1, at least `threshold` of them, and each gets its
//!    neighbours' signed keys.
//! 3. [**Share keys.**] Each member of U1 sends its encrypted shares; the coordinator only
//!    routes them. The senders are U2, and each gets the envelopes addressed to it.
//! 4. **Input.** Members upload their vectors in `InputChunk`s, a few members at a time (the
//!    transfer slots of [`crate::bulk`]); each chunk is added into one [`RunningSum`] as it
//!    arrives, so memory is one vector whatever the cohort size. The phase ends when every
//!    member has finished or dropped, or at the phase deadline. With secure aggregation each
//!    vector is masked, and only members of U2 may upload one.
//! 5. [**Consistency check.**] The complete members are U3. Fewer than `threshold` abort the
//!    round here, before anyone is asked to reveal anything. Each member of U3 gets U3 and
//!    answers with its signature over it; the signers are U4.
//! 6. [**Unmask.**] Each member of U4 gets U3 again with the signatures of its neighbourhood
//!    and, once it has checked t of them, answers with its shares of the survivors' self-mask
//!    seeds and of the dropped members' mask keys; from `threshold` answers per neighbourhood
//!    the masks are removed from the sum, leaving exactly the sum of U3's vectors.
//! 7. **Result.** With at least `threshold` complete members the sum is the round's result.
//!    Otherwise — or if a member left after part of its vector was summed, which would corrupt
//!    the sum — the round is aborted (`RoundAbort` to the cohort) and the job retries it with a
//!    fresh cohort.
//!
//! Messages for another job, round or attempt are stale and ignored; malformed ones end the
//! sender's session and count as its dropout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fedmark_core::aggregate::{Progress, RoundKind, RunningSum, VectorLayout};
use fedmark_core::features::Standardizer;
use fedmark_core::secagg::{
    Envelope, GraphSpec, RevealedShare, Roster, RoundId, RoundParams, SecAggError, ServerRound,
    SignedKeys, SurvivorSignature,
};
use fedmark_core::shape::bind_clip;
use fedmark_proto::convert;
use fedmark_proto::{
    KeyBroadcast, RoundAbort, RoundRef, RoundStart, SharesDelivery, SurvivorCheck, UnmaskRequest,
    client_message, server_message,
};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::bulk::{OpenRound, model_bytes};
use crate::hub::{Hub, RoundEvent};

/// Everything a round needs to start.
#[derive(Debug, Clone)]
pub struct RoundPlan {
    /// Which round instance.
    pub rref: RoundRef,
    /// What it aggregates.
    pub kind: RoundKind,
    /// Ordered cohort.
    pub cohort: Vec<String>,
    /// Minimum complete members for a result.
    pub threshold: usize,
    /// Layout of every member's vector.
    pub layout: VectorLayout,
    /// Global model (training and evaluation).
    pub model: Option<Arc<Vec<f64>>>,
    /// Standardisation (training and evaluation).
    pub standardizer: Option<Standardizer>,
    /// Deadline of each phase, from its start.
    pub phase_timeout: Duration,
    /// Secure aggregation, when on.
    pub secure: Option<SecureSetup>,
    /// Fault injection for crash tests: halt at this point of the round.
    pub pause_at: Option<PausePoint>,
    /// The round's clip norm when the job's clip is adaptive (training rounds).
    pub clip: Option<f64>,
}

/// A point in a round where a crash test halts the coordinator (see
/// `fedmark-coordinator serve`'s `FEDMARK_TEST_PAUSE_AT`): it prints a marker line to stderr
/// and waits, so the test can kill the process there and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausePoint {
    /// Round number.
    pub round: u64,
    /// `keys` (keys broadcast), `shares` (shares delivered), `input` (first complete input
    /// summed) or `unmask` (unmask requests sent).
    pub phase: String,
}

impl PausePoint {
    /// Parses `PHASE:ROUND`.
    pub fn parse(text: &str) -> Option<Self> {
        let (phase, round) = text.split_once(':')?;
        let round = round.parse().ok()?;
        matches!(phase, "keys" | "shares" | "input" | "unmask").then(|| Self {
            round,
            phase: phase.to_owned(),
        })
    }
}

async fn pause_if(plan: &RoundPlan, phase: &str) {
    if let Some(p) = &plan.pause_at
        && p.round == plan.rref.round
        && p.phase == phase
    {
        eprintln!(
            "FEDMARK_PAUSED phase={phase} round={} attempt={}",
            plan.rref.round, plan.rref.attempt
        );
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// What secure aggregation needs beyond the plan.
#[derive(Debug, Clone)]
pub struct SecureSetup {
    /// Every partner's identity key.
    pub roster: Arc<Roster>,
    /// Neighbours per member (cohort size − 1 for the complete graph).
    pub degree: usize,
    /// Survivors needed in every closed neighbourhood to unmask.
    pub threshold: usize,
}

/// A round that produced its sum.
#[derive(Debug, Clone)]
pub struct RoundOutput {
    /// The wrapping sum of the survivors' vectors.
    pub sum: Vec<u32>,
    /// Members whose whole vector is in the sum.
    pub survivors: Vec<String>,
    /// Members that dropped out.
    pub dropped: Vec<String>,
    /// The consent-snapshot hash each survivor reported with its input (partners with a
    /// consent source).
    pub consent: BTreeMap<String, String>,
}

/// Why a round produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoundError {
    /// Too few members finished.
    #[error("only {survivors} of {cohort} partners completed the round (threshold {threshold})")]
    BelowThreshold {
        /// Members that completed.
        survivors: usize,
        /// Cohort size.
        cohort: usize,
        /// Required.
        threshold: usize,
    },
    /// A member left after part of its vector was summed.
    #[error("partner `{0}` left after sending part of its input")]
    PartialInput(String),
    /// Secure aggregation could not complete (too few advertisers, sharers or unmaskers).
    #[error("secure aggregation: {0}")]
    SecAgg(#[from] SecAggError),
    /// The round's running sum does not fit in memory.
    #[error(transparent)]
    Memory(#[from] fedmark_core::alloc::AllocError),
    /// The unmask failed after some members revealed their shares. They will not help unmask
    /// this round again (see [`fedmark_core::guard`]), so its retries go on without them.
    #[error("unmasking failed after {} partners revealed their shares: {reason}", revealers.len())]
    UnmaskFailed {
        /// Why.
        reason: SecAggError,
        /// Members whose shares were accepted.
        revealers: Vec<String>,
    },
}

fn start_message(plan: &RoundPlan) -> RoundStart {
    let (mean, std) = plan
        .standardizer
        .as_ref()
        .map(|s| (s.mean.clone(), s.std.clone()))
        .unwrap_or_default();
    RoundStart {
        round: Some(plan.rref.clone()),
        kind: fedmark_proto::RoundKind::from(plan.kind) as i32,
        cohort: plan.cohort.clone(),
        threshold: plan.threshold as u32,
        secure: plan.secure.is_some(),
        vector_len: plan.layout.len() as u64,
        feature_mean: mean,
        feature_std: std,
        model_len: plan.model.as_ref().map_or(0, |m| m.len() as u64),
        graph_seed: plan
            .secure
            .as_ref()
            .map(|sec| {
                GraphSpec::for_cohort(&round_id(&plan.rref), &plan.cohort, sec.degree)
                    .seed
                    .to_vec()
            })
            .unwrap_or_default(),
        graph_degree: plan.secure.as_ref().map_or(0, |sec| sec.degree as u32),
        clip: plan.clip.unwrap_or(0.0),
    }
}

/// The secure-aggregation id of a round instance; a retried round is a new instance.
pub fn round_id(rref: &RoundRef) -> RoundId {
    RoundId::from(rref)
}

/// The tasks sending a round's start to its members. They are stopped when the round is
/// dropped, so a job cancelled mid-round sends nothing more of it.
struct Streams(Vec<tokio::task::JoinHandle<()>>);

impl Streams {
    /// Stops every stream and waits until each has stopped.
    async fn stop(&mut self) {
        for stream in &self.0 {
            stream.abort();
        }
        for stream in &mut self.0 {
            let _ = stream.await;
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        for stream in &self.0 {
            stream.abort();
        }
    }
}

/// Opens the round's transfers (the model to download; uploads at once in a plain round) and
/// sends `RoundStart` to every member, each on its own task so a partner that does not read
/// holds up no other. The handles let an aborted round stop them before `RoundAbort` goes out,
/// so no partner sees a message of this round after the abort.
fn broadcast_start(hub: &Hub, plan: &RoundPlan) -> (Streams, OpenRound) {
    let start = start_message(plan);
    // One little-endian copy of the model; every download's chunks are slices of it.
    let model = plan.model.as_ref().map(|m| model_bytes(m));
    let transfers = hub.sessions.bulk().open(
        plan.rref.clone(),
        &plan.cohort,
        model,
        plan.secure.is_none(),
    );
    let mut streams = Vec::with_capacity(plan.cohort.len());
    for member in &plan.cohort {
        let Some(tx) = hub.offered_sender(member) else {
            continue;
        };
        let start = start.clone();
        streams.push(tokio::spawn(async move {
            let msg = fedmark_proto::ServerMessage {
                body: Some(server_message::Body::RoundStart(start)),
            };
            let _ = tx.send(Ok(msg)).await;
        }));
    }
    (Streams(streams), transfers)
}

/// Runs one round to its sum or its abort; the members that missed a phase deadline or left
/// are added to `missed`, whatever the outcome.
pub async fn run_round(
    hub: &mut Hub,
    plan: &RoundPlan,
    missed: &mut BTreeSet<String>,
) -> Result<RoundOutput, RoundError> {
    let (mut streams, transfers) = broadcast_start(hub, plan);
    let mut dropped: BTreeSet<String> = plan
        .cohort
        .iter()
        .filter(|m| hub.offered_sender(m).is_none())
        .cloned()
        .collect();
    let result = match &plan.secure {
        None => {
            let senders: BTreeSet<String> = plan.cohort.iter().cloned().collect();
            input_phase(hub, plan, &senders, &mut dropped)
                .await
                .and_then(|input| {
                    finish(plan, input.sum.into_inner(), input.survivors, input.consent)
                })
        }
        Some(setup) => secure_round(hub, plan, setup, &transfers, &mut dropped).await,
    };
    // The round's transfers end with it, whether it produced a sum or not.
    drop(transfers);
    missed.extend(dropped.iter().cloned());
    if let Err(e) = &result {
        warn!(round = plan.rref.round, attempt = plan.rref.attempt, reason = %e, "round aborted");
        // A partner that failed early (e.g. a bad first chunk) can abort the round while the
        // start is still going out to the others: stop those sends first, so the abort is the
        // last word of this round on every session.
        streams.stop().await;
        for member in &plan.cohort {
            let abort = RoundAbort {
                round: Some(plan.rref.clone()),
                reason: e.to_string(),
            };
            hub.send(member, server_message::Body::RoundAbort(abort))
                .await;
        }
    }
    result
}

fn finish(
    plan: &RoundPlan,
    sum: Vec<u32>,
    survivors: Vec<String>,
    mut consent: BTreeMap<String, String>,
) -> Result<RoundOutput, RoundError> {
    if survivors.len() < plan.threshold {
        return Err(RoundError::BelowThreshold {
            survivors: survivors.len(),
            cohort: plan.cohort.len(),
            threshold: plan.threshold,
        });
    }
    let dropped = plan
        .cohort
        .iter()
        .filter(|m| !survivors.contains(m))
        .cloned()
        .collect();
    consent.retain(|m, _| survivors.contains(m));
    Ok(RoundOutput {
        sum,
        survivors,
        dropped,
        consent,
    })
}

fn secagg_failed(e: SecAggError) -> RoundError {
    RoundError::SecAgg(e)
}

/// The secure phases around the input phase.
async fn secure_round(
    hub: &mut Hub,
    plan: &RoundPlan,
    setup: &SecureSetup,
    transfers: &OpenRound,
    dropped: &mut BTreeSet<String>,
) -> Result<RoundOutput, RoundError> {
    let params = RoundParams::new(
        round_id(&plan.rref),
        plan.cohort.clone(),
        setup.threshold,
        setup.degree,
        plan.layout.len(),
    )
    .map(|params| bind_clip(params, plan.clip))
    .map_err(secagg_failed)?;
    let mut server = ServerRound::new(params);
    let began = std::time::Instant::now();
    let phase_done = |phase: &str, members: usize| {
        debug!(
            round = plan.rref.round,
            phase,
            members,
            ms = began.elapsed().as_secs_f64() * 1e3,
            "secure phase closed"
        );
    };

    // Advertise keys (U1).
    let mut waiting: BTreeSet<String> = plan
        .cohort
        .iter()
        .filter(|m| !dropped.contains(*m))
        .cloned()
        .collect();
    collect(
        hub,
        plan,
        &mut waiting,
        dropped,
        |partner, body| match body {
            client_message::Body::Keys(k) if k.round.as_ref() == Some(&plan.rref) => {
                let keys = k.keys()?;
                server.on_keys(
                    SignedKeys {
                        partner_id: partner.to_owned(),
                        keys,
                    },
                    &setup.roster,
                )?;
                Ok(true)
            }
            _ => Ok(false),
        },
    )
    .await;
    let u1 = server.close_keys().map_err(secagg_failed)?;
    phase_done("keys", u1.len());
    for member in &u1 {
        let keys = server.keys_for(member).map_err(secagg_failed)?;
        let msg = KeyBroadcast {
            round: Some(plan.rref.clone()),
            keys: keys.into_iter().map(Into::into).collect(),
        };
        hub.send(member, server_message::Body::Keys(msg)).await;
    }
    pause_if(plan, "keys").await;

    // Share keys (U2).
    let mut waiting: BTreeSet<String> = u1
        .iter()
        .filter(|m| !dropped.contains(*m))
        .cloned()
        .collect();
    collect(
        hub,
        plan,
        &mut waiting,
        dropped,
        |partner, body| match body {
            client_message::Body::Shares(sh) if sh.round.as_ref() == Some(&plan.rref) => {
                let envelopes: Vec<Envelope> = convert::all(sh.envelopes)?;
                server.on_shares(partner, envelopes)?;
                Ok(true)
            }
            _ => Ok(false),
        },
    )
    .await;
    let u2 = server.close_shares().map_err(secagg_failed)?;
    phase_done("shares", u2.len());
    let senders: BTreeSet<String> = u2.iter().cloned().collect();
    // Before any member of U2 learns its shares arrived, so none is refused for being early.
    transfers.allow_uploads(&senders);
    for member in &u2 {
        let envelopes = server.envelopes_for(member).map_err(secagg_failed)?;
        let msg = SharesDelivery {
            round: Some(plan.rref.clone()),
            envelopes: envelopes.into_iter().map(Into::into).collect(),
        };
        hub.send(member, server_message::Body::Shares(msg)).await;
    }
    pause_if(plan, "shares").await;

    // Masked input (U3).
    let Input {
        mut sum,
        survivors,
        consent,
    } = input_phase(hub, plan, &senders, dropped).await?;

    // Consistency check (U4). The round's floors are checked first: a sum of fewer than
    // `threshold` members is never unmasked.
    let u3 = server.close_inputs(&survivors).map_err(secagg_failed)?;
    phase_done("input", u3.len());
    if u3.len() < plan.threshold {
        return Err(RoundError::BelowThreshold {
            survivors: u3.len(),
            cohort: plan.cohort.len(),
            threshold: plan.threshold,
        });
    }
    for member in &u3 {
        let msg = SurvivorCheck {
            round: Some(plan.rref.clone()),
            survivors: u3.clone(),
        };
        hub.send(member, server_message::Body::SurvivorCheck(msg))
            .await;
    }
    let mut waiting: BTreeSet<String> = u3
        .iter()
        .filter(|m| !dropped.contains(*m))
        .cloned()
        .collect();
    // A member that stops answering now still had its input summed: it stays in U3.
    let mut late_dropped = dropped.clone();
    collect(
        hub,
        plan,
        &mut waiting,
        &mut late_dropped,
        |partner, body| match body {
            client_message::Body::SurvivorSignature(s) if s.round.as_ref() == Some(&plan.rref) => {
                let signed = SurvivorSignature::new(partner.to_owned(), &s.signature)?;
                server.on_signature(signed, &setup.roster)?;
                Ok(true)
            }
            _ => Ok(false),
        },
    )
    .await;
    let u4 = server.close_consistency().map_err(secagg_failed)?;
    phase_done("consistency", u4.len());

    // Unmask.
    for member in &u4 {
        let signatures = server.signatures_for(member).map_err(secagg_failed)?;
        let msg = UnmaskRequest {
            round: Some(plan.rref.clone()),
            survivors: u3.clone(),
            signatures: signatures.into_iter().map(Into::into).collect(),
        };
        hub.send(member, server_message::Body::Unmask(msg)).await;
    }
    pause_if(plan, "unmask").await;
    let mut waiting: BTreeSet<String> = u4
        .iter()
        .filter(|m| !late_dropped.contains(*m))
        .cloned()
        .collect();
    collect(
        hub,
        plan,
        &mut waiting,
        &mut late_dropped,
        |partner, body| match body {
            client_message::Body::Unmask(u) if u.round.as_ref() == Some(&plan.rref) => {
                let shares: Vec<RevealedShare> = convert::all(u.shares)?;
                server.on_revealed(partner, shares)?;
                Ok(true)
            }
            _ => Ok(false),
        },
    )
    .await;
    phase_done("unmask shares", u3.len());
    let mut words = std::mem::replace(&mut sum, RunningSum::new(0)).into_inner();
    server
        .unmask(&mut words)
        .map_err(|e| RoundError::UnmaskFailed {
            reason: e,
            revealers: server.revealers(),
        })?;
    phase_done("unmasked", u3.len());
    // A member that left during unmasking still had its input summed: it counts as a survivor.
    finish(plan, words, u3, consent)
}

/// Gathers one answer from each partner in `waiting` (until all answered, left, or the phase
/// deadline). `on_message` returns Ok(true) when the message was the partner's answer,
/// Ok(false) for a message to ignore, and an error for a message that breaks the protocol,
/// which ends the partner's session and drops it from the round.
async fn collect<F>(
    hub: &mut Hub,
    plan: &RoundPlan,
    waiting: &mut BTreeSet<String>,
    dropped: &mut BTreeSet<String>,
    mut on_message: F,
) where
    F: FnMut(&str, client_message::Body) -> Result<bool, SecAggError>,
{
    let deadline = Instant::now() + plan.phase_timeout;
    while !waiting.is_empty() {
        let Some(event) = hub.next(deadline).await else {
            debug!(
                round = plan.rref.round,
                waiting = waiting.len(),
                "phase deadline passed"
            );
            break;
        };
        match event {
            RoundEvent::Message { partner, body } => {
                if !waiting.contains(&partner) {
                    debug!(partner = %partner, "message from a partner not expected in this phase; ignored");
                    continue;
                }
                match on_message(&partner, body) {
                    Ok(true) => {
                        waiting.remove(&partner);
                    }
                    Ok(false) => {
                        warn!(partner = %partner, "message of the wrong phase or round; ignored")
                    }
                    Err(e) => {
                        warn!(partner = %partner, error = %e, "refused a protocol message; closing the partner's session");
                        let status = if e.is_bad_input() {
                            Status::invalid_argument(e.to_string())
                        } else {
                            Status::failed_precondition(e.to_string())
                        };
                        hub.sessions.kick(&partner, status).await;
                        waiting.remove(&partner);
                        dropped.insert(partner);
                    }
                }
            }
            RoundEvent::Input { partner, .. } | RoundEvent::UploadEnded { partner } => {
                debug!(partner = %partner, "input outside the input phase; ignored");
            }
            RoundEvent::OfferAnswered => {}
            RoundEvent::Closed { partner } => {
                if waiting.remove(&partner) {
                    info!(round = plan.rref.round, partner = %partner, "partner dropped out");
                    dropped.insert(partner);
                }
            }
        }
    }
    // Whoever has not answered by now is out of the round.
    dropped.extend(std::mem::take(waiting));
}

/// What the input phase gathered.
struct Input {
    sum: RunningSum,
    /// Members whose whole vector is in the sum.
    survivors: Vec<String>,
    /// Consent-snapshot hashes reported with the last chunks.
    consent: BTreeMap<String, String>,
}

/// Whether a reported consent-snapshot hash has the form of one (empty or 64 hex digits).
fn valid_snapshot_hash(h: &str) -> bool {
    h.is_empty() || (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The input phase: vectors from `senders` summed chunk by chunk.
async fn input_phase(
    hub: &mut Hub,
    plan: &RoundPlan,
    senders: &BTreeSet<String>,
    dropped: &mut BTreeSet<String>,
) -> Result<Input, RoundError> {
    let deadline = Instant::now() + plan.phase_timeout;
    let mut sum = RunningSum::try_new(plan.layout.len())?;
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let mut consent: BTreeMap<String, String> = BTreeMap::new();
    let mut paused = false;
    let pending = |progress: &BTreeMap<String, Progress>, dropped: &BTreeSet<String>| {
        senders
            .iter()
            .filter(|m| !dropped.contains(*m) && !progress.get(*m).is_some_and(|p| p.complete))
            .count()
    };
    loop {
        if pending(&progress, dropped) == 0 {
            break;
        }
        let Some(event) = hub.next(deadline).await else {
            debug!(round = plan.rref.round, "input phase deadline passed");
            break;
        };
        match event {
            RoundEvent::Input { partner, chunk } => {
                if !senders.contains(&partner) || dropped.contains(&partner) {
                    warn!(partner = %partner, "input from a partner not admitted to this phase; ignored");
                    continue;
                }
                if chunk.round.as_ref() != Some(&plan.rref) {
                    warn!(partner = %partner, "stale input for another round; ignored");
                    continue;
                }
                let p = progress.entry(partner.clone()).or_default();
                let added = if valid_snapshot_hash(&chunk.consent_snapshot) {
                    sum.add(p, chunk.offset as usize, &chunk.values, chunk.last)
                        .map_err(|e| e.to_string())
                } else {
                    Err("the consent snapshot is not a SHA-256 hex digest".to_owned())
                };
                if added.is_ok() {
                    let bytes = chunk.values.len() * std::mem::size_of::<u32>();
                    hub.events.publish(crate::events::JobEvent::InputBytes {
                        job: &plan.rref.job_id,
                        bytes: bytes as u64,
                    });
                }
                if chunk.last && !chunk.consent_snapshot.is_empty() && added.is_ok() {
                    consent.insert(partner.clone(), chunk.consent_snapshot.to_ascii_lowercase());
                }
                if added.is_ok() && p.complete && !paused {
                    paused = true;
                    pause_if(plan, "input").await;
                }
                if let Err(e) = added {
                    warn!(partner = %partner, error = %e, "bad input chunk; closing the partner's session");
                    // A chunk after a complete vector (a duplicate submission) was refused
                    // before it touched the sum: the complete vector stays in the round.
                    let complete = p.complete;
                    let partial = p.received > 0 && !complete;
                    hub.sessions
                        .kick(
                            &partner,
                            Status::invalid_argument(format!("bad input chunk: {e}")),
                        )
                        .await;
                    if partial {
                        return Err(RoundError::PartialInput(partner));
                    }
                    if !complete {
                        dropped.insert(partner);
                    }
                }
            }
            RoundEvent::Message { partner, .. } => {
                warn!(partner = %partner, "message of the wrong phase; ignored");
            }
            RoundEvent::UploadEnded { partner } => {
                // An upload cut short leaves part of a vector in the sum, which the round
                // cannot take out again; one that ended whole or before any chunk changes
                // nothing.
                if let Some(p) = progress.get(&partner)
                    && senders.contains(&partner)
                    && !p.complete
                    && p.received > 0
                {
                    return Err(RoundError::PartialInput(partner));
                }
            }
            RoundEvent::OfferAnswered => {}
            RoundEvent::Closed { partner } => {
                if !senders.contains(&partner) {
                    continue;
                }
                match progress.get(&partner) {
                    Some(p) if p.complete => {}
                    Some(p) if p.received > 0 => return Err(RoundError::PartialInput(partner)),
                    _ => {
                        info!(round = plan.rref.round, partner = %partner, "partner dropped out");
                        dropped.insert(partner);
                    }
                }
            }
        }
    }
    if let Some((p, _)) = progress.iter().find(|(_, p)| !p.complete && p.received > 0) {
        return Err(RoundError::PartialInput(p.clone()));
    }
    let survivors: Vec<String> = progress
        .iter()
        .filter(|(_, p)| p.complete)
        .map(|(m, _)| m.clone())
        .collect();
    Ok(Input {
        sum,
        survivors,
        consent,
    })
}
