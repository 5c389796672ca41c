//! One aggregation round, as the coordinator runs it.
//!
//! Phases and what moves them on:
//!
//! 1. **Start.** `RoundStart` (and, for training and evaluation, the global model in
//!    `ModelChunk`s) goes to every cohort member. A member whose session is gone is dropped.
//! 2. **Input.** Members stream their vectors in `InputChunk`s; each chunk is added into one
//!    [`RunningSum`] as it arrives, so memory is one vector whatever the cohort size. The phase
//!    ends when every member has finished or dropped, or at the phase deadline.
//! 3. **Result.** With at least `threshold` complete members the sum is the round's result.
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
use fedmark_proto::{ModelChunk, RoundAbort, RoundRef, RoundStart, client_message, server_message};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};

use crate::job::{Hub, RoundEvent};

/// Model values per `ModelChunk`: 1 MiB of f64.
pub const MODEL_CHUNK_VALUES: usize = 128 * 1024;

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
    /// Deadline of the input phase, from the start.
    pub phase_timeout: Duration,
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
}

fn start_message(plan: &RoundPlan) -> RoundStart {
    let (mean, std) = plan
        .standardizer
        .as_ref()
        .map(|s| (s.mean.clone(), s.std.clone()))
        .unwrap_or_default();
    RoundStart {
        round: Some(plan.rref.clone()),
        kind: match plan.kind {
            RoundKind::Statistics => fedmark_proto::RoundKind::Statistics,
            RoundKind::Training => fedmark_proto::RoundKind::Training,
            RoundKind::Evaluation => fedmark_proto::RoundKind::Evaluation,
        } as i32,
        cohort: plan.cohort.clone(),
        threshold: plan.threshold as u32,
        secure: false,
        vector_len: plan.layout.len() as u64,
        feature_mean: mean,
        feature_std: std,
        model_len: plan.model.as_ref().map_or(0, |m| m.len() as u64),
        graph_seed: Vec::new(),
        graph_degree: 0,
    }
}

/// Sends the round start and the model to every member, each on its own task so one slow
/// member does not hold up the others.
fn broadcast_start(hub: &Hub, plan: &RoundPlan) {
    let start = start_message(plan);
    for member in &plan.cohort {
        let Some((_, tx)) = hub.sessions.sender(member) else {
            continue;
        };
        let start = start.clone();
        let model = plan.model.clone();
        let rref = plan.rref.clone();
        tokio::spawn(async move {
            let msg = |b| Ok(fedmark_proto::ServerMessage { body: Some(b) });
            if tx
                .send(msg(server_message::Body::RoundStart(start)))
                .await
                .is_err()
            {
                return;
            }
            let Some(model) = model else { return };
            let chunks = model.len().div_ceil(MODEL_CHUNK_VALUES).max(1);
            for i in 0..chunks {
                let a = i * MODEL_CHUNK_VALUES;
                let b = (a + MODEL_CHUNK_VALUES).min(model.len());
                let chunk = ModelChunk {
                    round: Some(rref.clone()),
                    offset: a as u64,
                    values: model[a..b].to_vec(),
                    last: i + 1 == chunks,
                };
                if tx
                    .send(msg(server_message::Body::Model(chunk)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Runs one round to its sum or its abort.
pub async fn run_round(hub: &mut Hub, plan: &RoundPlan) -> Result<RoundOutput, RoundError> {
    let cohort: BTreeSet<&str> = plan.cohort.iter().map(String::as_str).collect();
    broadcast_start(hub, plan);
    let deadline = Instant::now() + plan.phase_timeout;
    let mut sum = RunningSum::new(plan.layout.len());
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let mut dropped: BTreeSet<String> = plan
        .cohort
        .iter()
        .filter(|m| hub.sessions.sender(m).is_none())
        .cloned()
        .collect();
    let pending = |progress: &BTreeMap<String, Progress>, dropped: &BTreeSet<String>| {
        cohort
            .iter()
            .filter(|m| !dropped.contains(**m) && !progress.get(**m).is_some_and(|p| p.complete))
            .count()
    };
    let outcome = loop {
        if pending(&progress, &dropped) == 0 {
            break Ok(());
        }
        let Some(event) = hub.next(deadline).await else {
            debug!(round = plan.rref.round, "input phase deadline passed");
            break Ok(());
        };
        match event {
            RoundEvent::Message {
                partner,
                body: client_message::Body::Input(chunk),
            } => {
                if !cohort.contains(partner.as_str()) || dropped.contains(&partner) {
                    warn!(partner = %partner, "input from a partner outside this round's cohort; ignored");
                    continue;
                }
                if chunk.round.as_ref() != Some(&plan.rref) {
                    warn!(partner = %partner, "stale input for another round; ignored");
                    continue;
                }
                let p = progress.entry(partner.clone()).or_default();
                if let Err(e) = sum.add(p, chunk.offset as usize, &chunk.values, chunk.last) {
                    warn!(partner = %partner, error = %e, "bad input chunk; closing the partner's session");
                    let partial = p.received > 0;
                    hub.sessions
                        .kick(
                            &partner,
                            Status::invalid_argument(format!("bad input chunk: {e}")),
                        )
                        .await;
                    if partial {
                        break Err(RoundError::PartialInput(partner));
                    }
                    dropped.insert(partner);
                }
            }
            RoundEvent::Message { partner, .. } => {
                warn!(partner = %partner, "message of the wrong phase; ignored");
            }
            RoundEvent::OfferAnswered => {}
            RoundEvent::Closed { partner } => {
                if !cohort.contains(partner.as_str()) {
                    continue;
                }
                match progress.get(&partner) {
                    Some(p) if p.complete => {}
                    Some(p) if p.received > 0 => break Err(RoundError::PartialInput(partner)),
                    _ => {
                        info!(round = plan.rref.round, partner = %partner, "partner dropped out");
                        dropped.insert(partner);
                    }
                }
            }
        }
    };
    let result = outcome.and_then(|()| {
        if let Some((p, _)) = progress.iter().find(|(_, p)| !p.complete && p.received > 0) {
            return Err(RoundError::PartialInput(p.clone()));
        }
        let survivors: Vec<String> = progress
            .iter()
            .filter(|(_, p)| p.complete)
            .map(|(m, _)| m.clone())
            .collect();
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
        Ok(RoundOutput {
            sum: sum.into_inner(),
            survivors,
            dropped,
        })
    });
    if let Err(e) = &result {
        warn!(round = plan.rref.round, attempt = plan.rref.attempt, reason = %e, "round aborted");
        for member in &plan.cohort {
            let abort = RoundAbort {
                round: Some(plan.rref.clone()),
                reason: e.to_string(),
            };
            hub.sessions
                .send(member, server_message::Body::RoundAbort(abort))
                .await;
        }
    }
    result
}
