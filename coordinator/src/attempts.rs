//! One round of a job, from cohort draw to result: [`run_with_retries`] draws a cohort from
//! the partners available (leaving out those on probation while the others suffice, and
//! those that already revealed shares for this round), runs it ([`crate::round::run_round`])
//! under a fresh, durable attempt number, and retries with a fresh cohort up to the spec's
//! `max_attempts`; [`announce`] tells the survivors the result.

use std::collections::BTreeSet;
use std::sync::Arc;

use fedmark_core::aggregate::{RoundKind, VectorLayout};
use fedmark_core::features::Standardizer;
use fedmark_core::shape::{RoundShape, RoundSize};
use fedmark_core::spec::{JobSpec, PrivacyMode};
use fedmark_proto::{RoundRef, server_message};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::time::Instant;
use tracing::info;

use crate::error::JobError;
use crate::events::JobEvent;
use crate::hub::Hub;
use crate::round::{RoundError, RoundOutput, RoundPlan, SecureSetup, run_round};
use crate::settings::RunSettings;
use crate::store::events::CoordinatorEvent;

/// A round that produced its result.
pub(crate) struct Done {
    /// The decoded sum.
    pub(crate) sum: fedmark_core::aggregate::DecodedSum,
    /// Who is in it.
    pub(crate) output: RoundOutput,
    /// Attempts this run of the coordinator made (1 = no retry).
    pub(crate) attempts: u32,
    /// The attempt number of the successful round instance.
    pub(crate) attempt: u32,
    /// Its layout.
    pub(crate) layout: VectorLayout,
    /// Its cohort size.
    pub(crate) cohort: usize,
}

/// What every attempt of a round starts from.
pub(crate) struct RoundInputs {
    /// The global model (training and evaluation rounds).
    pub(crate) model: Option<Arc<Vec<f64>>>,
    /// The standardisation (training and evaluation rounds).
    pub(crate) standardizer: Option<Standardizer>,
    /// The round's clip norm when the job's clip is adaptive (training rounds).
    pub(crate) clip: Option<f64>,
    /// A boosted-trees round's statistics count (its model is the round state's words).
    pub(crate) trees_stats: Option<usize>,
}

/// Runs round `round` until it succeeds, each attempt with a fresh cohort of the partners
/// available then and a fresh attempt number from the store.
pub(crate) async fn run_with_retries(
    hub: &mut Hub,
    spec: &JobSpec,
    settings: &RunSettings,
    round: u64,
    kind: RoundKind,
    inputs: RoundInputs,
) -> Result<Done, JobError> {
    let RoundInputs {
        model,
        standardizer,
        clip,
        trees_stats,
    } = inputs;
    let min = spec.aggregation.min_participants as usize;
    let num_params = model.as_ref().map_or(0, |m| m.len());
    let mut last = RoundError::BelowThreshold {
        survivors: 0,
        cohort: 0,
        threshold: min,
    };
    // Partners that revealed their shares in a failed unmask of this round sit out its
    // retries (a partner's input is unmasked at most once), except in the training rounds of
    // a record-DP job, whose updates are private on their own (fedmark_core::guard).
    let redo_allowed = kind == RoundKind::Training && spec.privacy.mode == PrivacyMode::Record;
    let mut sat_out: BTreeSet<String> = BTreeSet::new();
    // Members that missed a deadline of this round's earlier attempts, or of the last round
    // they were in: left out while the others can meet the round's floors, so one silent
    // partner does not fail every attempt.
    let mut missed: BTreeSet<String> = hub
        .probation
        .iter()
        .filter(|(_, p)| p.sit_out > 0)
        .map(|(id, _)| id.clone())
        .collect();
    let mut missed_now: BTreeSet<String> = BTreeSet::new();
    for tries in 1..=spec.aggregation.max_attempts {
        let mut cohort = wait_for_available(hub, settings, min, &sat_out).await?;
        if cohort.len() < min && !sat_out.is_empty() {
            return Err(JobError::RoundLost {
                round,
                sat_out: sat_out.len(),
            });
        }
        let responsive: Vec<String> = cohort
            .iter()
            .filter(|p| !missed.contains(*p))
            .cloned()
            .collect();
        if responsive.len() >= min.max(2) && responsive.len() < cohort.len() {
            info!(
                job = %hub.job_id,
                round,
                left_out = cohort.len() - responsive.len(),
                "drawing without the partners that missed a deadline"
            );
            cohort = responsive;
        }
        let attempt = settings.store.next_attempt(&hub.job_id, round)?;
        // The cohort draw depends only on (seed, round, attempt), so a restarted coordinator
        // draws as an uninterrupted one would have for the same attempt.
        let mut rng = StdRng::seed_from_u64(
            spec.job.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt) << 48,
        );
        cohort.shuffle(&mut rng);
        if spec.aggregation.cohort_size > 0 {
            cohort.truncate(spec.aggregation.cohort_size as usize);
        }
        cohort.sort();
        if cohort.len() < min {
            last = RoundError::BelowThreshold {
                survivors: 0,
                cohort: cohort.len(),
                threshold: min,
            };
            continue;
        }
        // One rule for both sides: the partners derive the same shape and refuse another.
        let size = match trees_stats {
            Some(stats_len) => RoundSize::Trees {
                model_len: num_params,
                stats_len,
            },
            None => RoundSize::Params(num_params),
        };
        let shape = RoundShape::derive_sized(spec, kind, cohort, size)?;
        let secure = shape.secure.map(|s| SecureSetup {
            roster: Arc::clone(&settings.roster),
            degree: s.degree,
            threshold: s.threshold,
        });
        let RoundShape {
            cohort,
            layout,
            min_survivors: threshold,
            ..
        } = shape;
        settings.store.audit(vec![
            CoordinatorEvent::RoundStarted {
                job: hub.job_id.clone(),
                round,
                attempt,
                kind: kind.as_str().to_owned(),
                cohort: cohort.clone(),
                threshold,
                secure: secure.is_some(),
                vector_len: layout.len(),
            }
            .into(),
        ])?;
        let plan = RoundPlan {
            rref: RoundRef {
                job_id: hub.job_id.clone(),
                round,
                attempt,
            },
            kind,
            cohort,
            threshold,
            layout,
            model: model.clone(),
            standardizer: standardizer.clone(),
            phase_timeout: settings.phase_timeout,
            secure,
            pause_at: settings.pause_at.clone(),
            clip,
        };
        let mut out_of_round = BTreeSet::new();
        let result = run_round(hub, &plan, &mut out_of_round).await;
        missed.extend(out_of_round.iter().cloned());
        missed_now.extend(out_of_round);
        match result {
            Ok(output) => {
                // Whoever completed this round leaves probation; whoever missed it (in any
                // attempt) is left out of the next rounds, longer after each miss.
                for p in hub.probation.values_mut() {
                    p.sit_out = p.sit_out.saturating_sub(1);
                }
                for p in &output.survivors {
                    hub.probation.remove(p);
                    missed_now.remove(p);
                }
                for p in missed_now {
                    hub.probation.entry(p).or_default().strike();
                }
                let sum = plan.layout.decode(&output.sum);
                return Ok(Done {
                    sum,
                    output,
                    // Every attempt of this round, before a restart too (numbers are stored).
                    attempts: tries.max(attempt.saturating_add(1)),
                    attempt,
                    layout: plan.layout,
                    cohort: plan.cohort.len(),
                });
            }
            Err(e) => {
                if hub.stopped {
                    return Err(JobError::ServerStopped);
                }
                if let RoundError::UnmaskFailed { revealers, .. } = &e
                    && !redo_allowed
                {
                    sat_out.extend(revealers.iter().cloned());
                }
                let event = CoordinatorEvent::RoundAborted {
                    job: hub.job_id.clone(),
                    round,
                    attempt,
                    reason: e.to_string(),
                };
                settings.store.audit(vec![event.into()])?;
                hub.events
                    .publish(JobEvent::RoundAborted { job: &hub.job_id });
                last = e;
            }
        }
    }
    Err(JobError::RoundFailed {
        round,
        attempts: spec.aggregation.max_attempts,
        last,
    })
}

/// Waits (up to one phase timeout) until at least `threshold` accepted partners other than
/// those sitting the round out are connected: partners that dropped out of the failed attempt
/// are usually still dialling back in, and counting the ones sitting out would give the round
/// up before they are.
async fn wait_for_available(
    hub: &mut Hub,
    settings: &RunSettings,
    threshold: usize,
    sitting_out: &BTreeSet<String>,
) -> Result<Vec<String>, JobError> {
    let deadline = Instant::now() + settings.phase_timeout;
    let eligible = |hub: &Hub| -> Vec<String> {
        let mut available = hub.available();
        available.retain(|p| !sitting_out.contains(p));
        available
    };
    loop {
        let available = eligible(hub);
        if available.len() >= threshold {
            return Ok(available);
        }
        if hub.next(deadline).await.is_none() {
            if hub.stopped {
                return Err(JobError::ServerStopped);
            }
            return Ok(eligible(hub));
        }
    }
}

/// Tells a round's survivors that it completed, with the federated evaluation it measured
/// (zeros for the statistics round): every round a partner sends to ends, for it, with
/// `RoundResult` or `RoundAbort`.
pub(crate) async fn announce(
    hub: &Hub,
    job_id: &str,
    (round, attempt): (u64, u32),
    survivors: &[String],
    eval: &fedmark_core::metrics::Metrics,
) {
    for p in survivors {
        let result = fedmark_proto::RoundResult {
            round: Some(RoundRef {
                job_id: job_id.to_owned(),
                round,
                attempt,
            }),
            participants: survivors.len() as u32,
            auc: eval.auc,
            log_loss: eval.log_loss,
            accuracy: eval.accuracy,
        };
        hub.send(p, server_message::Body::RoundResult(result)).await;
    }
}
