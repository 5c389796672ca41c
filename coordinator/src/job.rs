//! Running one job from offer to final evaluation.
//!
//! The job task owns all protocol state. Its life:
//!
//! 1. **Offer.** Every partner that connects is offered the spec; replies are recorded
//!    (refusals with their reason). The job starts when every expected partner has answered,
//!    or at the join deadline with at least `min_participants` acceptances.
//! 2. **Statistics round** (round 0): counts, sums and sums of squares of the numeric features
//!    give the standardisation, so no partner reveals its own statistics.
//! 3. **Training rounds** 1..=R: each one evaluates the incoming model on the partners'
//!    holdouts and averages their clipped, example-weighted deltas into the server optimiser.
//!    A round that fails ([`crate::round::RoundError`]) is retried with a fresh cohort up to
//!    `max_attempts` times.
//! 4. **Final evaluation** (round R+1) of the last model, then `JobFinished` to everyone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use fedmark_core::accountant::{Accountant, AccountantError};
use fedmark_core::aggregate::VectorLayout;
use fedmark_core::aggregate::{RoundKind, eval_stats_from_slice};
use fedmark_core::budget::noise_threshold;
use fedmark_core::budget::{EVAL_LOSS_CAP, PrivacyPlan};
use fedmark_core::codec::CodecError;
use fedmark_core::discrete_gaussian::{self, DiscreteGaussianError};
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::metrics::Metrics;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::secagg::Roster;
use fedmark_core::shape::RoundShape;
use fedmark_core::spec::JobSpec;
use fedmark_core::spec::PrivacyMode;
use fedmark_core::train::ServerOptimizer;
use fedmark_proto::{RoundRef, server_message};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::board::Board;
use crate::hub::{FINISH_SEND_LIMIT, Hub};
use crate::metrics::Metrics as MetricsRegistry;
use crate::report::{FinalMetrics, JobReport, PrivacyReport, RoundRecord};
use crate::round::{PausePoint, RoundError, RoundOutput, RoundPlan, SecureSetup, run_round};
pub use crate::store::jobs::JobOutcome;
use crate::store::jobs::{JobState, Registered, commit, register};
use crate::store::{AuditEvent, JobStatus, Store, StoreError};
use fedmark_core::audit::f64s_sha256;
use serde_json::json;

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

/// Timing and membership settings of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Largest model a job may ask for (`max_model_params` in coordinator.toml).
    pub max_model_params: u64,
    /// How many partners the job waits for before starting (the roster size).
    pub expected_partners: usize,
    /// How long to wait for them.
    pub join_timeout: Duration,
    /// Deadline of each round phase.
    pub phase_timeout: Duration,
    /// Bulk transfers running at once (see [`crate::bulk`]).
    pub transfer_slots: usize,
    /// How long an admitted transfer may stall before it loses its slot.
    pub transfer_idle: Duration,
    /// Every partner's identity key (checked in secure aggregation).
    pub roster: Arc<Roster>,
    /// The durable store the job commits to (in memory for simulations).
    pub store: Store,
    /// Who submitted the job, for the audit record.
    pub submitted_by: String,
    /// Crash-test fault injection (`FEDMARK_TEST_PAUSE_AT`); None in normal runs.
    pub pause_at: Option<PausePoint>,
    /// Mutual TLS (see [`crate::tls`]); None serves plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Where the job records its metrics (see [`crate::metrics`]; served only when the
    /// caller serves them).
    pub metrics: MetricsRegistry,
    /// Where the job shows its progress to watchers (see [`crate::board`]).
    pub board: Board,
}

/// Default of `max_model_params` in coordinator.toml: 2^24 parameters.
pub const DEFAULT_MAX_MODEL_PARAMS: u64 = 1 << 24;

/// Refuses a job whose model is larger than `max` parameters, saying by how much and how to
/// allow it. Checked at submit, and again before a stored job starts (a limit lowered since).
pub fn check_size(spec: &JobSpec, max: u64) -> Result<(), JobError> {
    let params = spec.model_params();
    if params > u128::from(max) {
        let gib = |p: u128| p as f64 * 8.0 * 6.0 / (1u64 << 30) as f64;
        return Err(JobError::TooLarge(format!(
            "the model has {params} parameters (about {:.1} GiB of coordinator memory a round), above this coordinator's max_model_params = {max} ({:.1} GiB); shrink hash_buckets, the vocabularies or model.hidden, or raise max_model_params in coordinator.toml",
            gib(params),
            gib(u128::from(max))
        )));
    }
    Ok(())
}

/// Runs a job to its end, committing every round to the store; a job the store holds as
/// running resumes after its last committed round.
pub async fn run_job(
    mut hub: Hub,
    spec: JobSpec,
    settings: RunSettings,
    progress: Option<mpsc::UnboundedSender<RoundRecord>>,
) -> Result<JobOutcome, JobError> {
    let started = Instant::now();
    let job_id = hub.job_id.clone();
    let store = settings.store.clone();
    check_size(&spec, settings.max_model_params)?;
    let resumed = match register(
        &store,
        &job_id,
        &spec,
        &hub.spec_toml,
        &settings.submitted_by,
    )? {
        Registered::Fresh => None,
        Registered::Resumed(state) => Some(*state),
        Registered::Ended { status, reason } => {
            return Err(JobError::AlreadyEnded {
                id: job_id,
                status,
                reason,
            });
        }
    };
    let board = &settings.board;
    board.refresh(&store, &job_id)?;
    board.set_phase(&job_id, "waiting for partners");
    hub.audit_to(store.clone());
    hub.metrics = settings.metrics.clone();
    hub.offer_connected().await;
    let min = spec.aggregation.min_participants as usize;
    wait_for_partners(&mut hub, &settings, min).await?;
    info!(job = %job_id, partners = hub.accepted.len(), "job starting");

    let schema = FeatureSchema::from_spec(&spec);
    let mut state = match resumed {
        Some(state) => state,
        None => {
            let arch = Architecture::from_spec(&spec);
            let mut rng = StdRng::seed_from_u64(spec.job.seed);
            let model = Model::init(arch, schema.dim(), &mut rng);
            let optimizer = ServerOptimizer::from_spec(&spec, model.params.len());
            if !spec.measures_moments() {
                // A DP job standardises with the spec's declared ranges: no statistics round,
                // nothing measured on any partner's data.
                let standardizer = Standardizer::from_ranges(&schema).ok_or_else(|| {
                    JobError::Spec(fedmark_core::spec::SpecError::Invalid {
                        field: "features.range".into(),
                        reason: "a DP job needs a declared range for every numeric column".into(),
                    })
                })?;
                info!(job = %job_id, "standardising with the declared feature ranges");
                JobState {
                    model,
                    optimizer,
                    standardizer,
                    training_rows: f64::NAN,
                    ledger: Accountant::new(),
                    records: Vec::new(),
                    next_round: 1,
                }
            } else {
                board.set_phase(&job_id, "round 0: feature statistics");
                let done = run_with_retries(
                    &mut hub,
                    &spec,
                    &settings,
                    0,
                    RoundKind::Statistics,
                    None,
                    None,
                )
                .await?;
                let numeric = 3 * spec.features.numeric.len();
                let moments: Vec<[f64; 3]> = done.sum.stats[..numeric]
                    .chunks(3)
                    .map(|c| [c[0], c[1], c[2]])
                    .collect();
                let (rows, positives) = (done.sum.stats[numeric], done.sum.stats[numeric + 1]);
                if positives < 1.0 || positives > rows - 1.0 {
                    let found = if positives < 1.0 { "none" } else { "every one" };
                    return Err(JobError::Preflight(format!(
                        "label column `{}`: {found} of the partners' {rows} usable rows has the positive value `{}` (values are compared exactly, case included); check `label.positive` against the data",
                        spec.label.column, spec.label.positive
                    )));
                }
                let state = JobState {
                    model,
                    optimizer,
                    standardizer: Standardizer::from_moments(&moments),
                    training_rows: moments.first().map_or(0.0, |m| m[0]),
                    ledger: Accountant::new(),
                    records: Vec::new(),
                    next_round: 1,
                };
                commit(
                    &store,
                    &job_id,
                    &state,
                    json!({
                        "kind": "statistics", "attempt": done.attempt,
                        "participants": done.output.survivors, "dropped": done.output.dropped,
                        "consent_snapshots": done.output.consent,
                    }),
                )?;
                info!(job = %job_id, training_rows = state.training_rows, "feature statistics agreed");
                announce(
                    &hub,
                    &job_id,
                    (0, done.attempt),
                    &done.output.survivors,
                    &Default::default(),
                )
                .await;
                state
            }
        }
    };

    let bins = spec.histogram_bins() as usize;
    let privacy = PrivacyPlan::from_spec(&spec)?;
    if let Some(plan) = &privacy {
        info!(job = %job_id, mode = ?plan.mode, noise_multiplier = plan.noise_multiplier, epsilon = plan.epsilon, delta = plan.delta, "privacy plan");
    }
    // Central noise must be unpredictable to everyone, the job's seed included.
    let mut noise_rng = StdRng::from_rng(&mut rand::rng());
    let mut stop_reason = format!("completed {} rounds", spec.job.rounds);
    let mut rounds_lost: Vec<u64> = Vec::new();
    for round in state.next_round..=u64::from(spec.job.rounds) {
        if let Some(plan) = &privacy {
            let next = match plan.mode {
                PrivacyMode::PartnerDistributed => {
                    // The exact charge depends on the round's encoding, i.e. its cohort size;
                    // estimate it with the partners available now.
                    let mut n = hub.available().len().max(1);
                    if spec.aggregation.cohort_size > 0 {
                        n = n.min(spec.aggregation.cohort_size as usize);
                    }
                    let layout = RoundKind::Training.layout(&spec, state.model.params.len(), n)?;
                    let t = noise_threshold(&spec, n);
                    let scale = layout.update_codec.map_or(1.0, |c| c.scale);
                    let mut next = state.ledger.clone();
                    plan.charge_skellam(
                        &mut next,
                        &plan.skellam_round(scale, layout.update_len, t),
                    )?;
                    next.epsilon(plan.delta)?.0
                }
                _ => plan.epsilon_after_round(&state.ledger)?,
            };
            if next > plan.epsilon {
                stop_reason = format!(
                    "privacy budget exhausted: round {round} would bring epsilon to {next:.4}, above the budget of {}",
                    plan.epsilon
                );
                warn!(job = %job_id, round, reason = %stop_reason, "stopping early");
                break;
            }
        }
        board.set_phase(
            &job_id,
            format!("round {round} of {}: training", spec.job.rounds),
        );
        let t0 = Instant::now();
        let shared = Some(Arc::new(state.model.params.clone()));
        let done = match run_with_retries(
            &mut hub,
            &spec,
            &settings,
            round,
            RoundKind::Training,
            shared,
            Some(state.standardizer.clone()),
        )
        .await
        {
            Err(JobError::RoundLost { round, sat_out }) if !spec.is_dp() => {
                // Without DP, partners help unmask one round per start model: the next round
                // would start from the same model and find them sitting out. Stop here.
                settings.store.audit(vec![(
                    "round_lost",
                    json!({"job": job_id, "round": round, "sat_out": sat_out}),
                )])?;
                return Err(JobError::RoundLost { round, sat_out });
            }
            Err(JobError::RoundLost { round, sat_out }) => {
                // No second unmask of a round: the job goes on from the same model (every DP
                // release is noised afresh and charged).
                warn!(job = %job_id, round, sat_out, "round lost; going on with the next round");
                settings.store.audit(vec![(
                    "round_lost",
                    json!({"job": job_id, "round": round, "sat_out": sat_out}),
                )])?;
                rounds_lost.push(round);
                continue;
            }
            other => other?,
        };
        let weight = done.sum.stats[0];
        let eval = if spec.evaluates_in_training() {
            eval_stats_from_slice(&done.sum.stats[1..], bins).metrics()
        } else {
            not_evaluated()
        };
        let mut update = done.sum.update;
        let mut epsilon = None;
        if let Some(plan) = &privacy {
            if plan.mode == PrivacyMode::PartnerCentral
                && let Some(codec) = done.layout.update_codec
            {
                // Discrete Gaussian on the integer sum, not a float Gaussian on floats.
                let noise = discrete_gaussian::add_to_fixed_point_sum(
                    &mut update,
                    codec.scale,
                    plan.clip,
                    plan.noise_multiplier,
                    &mut noise_rng,
                )?;
                debug!(job = %job_id, round, lattice_step = noise.step, noise_std = noise.std_real, "central noise added");
            }
            // Charged with the release of this round's result (one commit below).
            match (plan.mode, done.layout.update_codec) {
                (PrivacyMode::PartnerDistributed, Some(codec)) => {
                    let t = noise_threshold(&spec, done.cohort);
                    plan.charge_skellam(
                        &mut state.ledger,
                        &plan.skellam_round(codec.scale, done.layout.update_len, t),
                    )?;
                }
                _ => plan.charge_round(&mut state.ledger)?,
            }
            epsilon = Some(state.ledger.epsilon(plan.delta)?.0);
        }
        if weight > 0.0 {
            let avg: Vec<f64> = update.iter().map(|u| u / weight).collect();
            state.optimizer.step(&mut state.model.params, &avg);
        }
        let mut record = RoundRecord::new(
            round,
            done.attempts,
            (done.output.survivors.len(), done.output.dropped.len()),
            &eval,
            t0.elapsed().as_secs_f64(),
        );
        record.epsilon = epsilon;
        state.records.push(record.clone());
        state.next_round = round + 1;
        commit(
            &store,
            &job_id,
            &state,
            json!({
                "kind": "training", "attempt": done.attempt,
                "participants": done.output.survivors, "dropped": done.output.dropped,
                "consent_snapshots": done.output.consent, "epsilon": epsilon,
                "auc": eval.auc, "log_loss": eval.log_loss,
            }),
        )?;
        board.round_committed(&job_id, &record);
        settings.metrics.round_committed(
            &job_id,
            record.seconds,
            record.participants as usize,
            record.dropped as usize,
            epsilon,
        );
        info!(
            round,
            participants = record.participants,
            dropped = record.dropped,
            auc = eval.auc,
            log_loss = eval.log_loss,
            seconds = record.seconds,
            "round complete"
        );
        announce(
            &hub,
            &job_id,
            (round, done.attempt),
            &done.output.survivors,
            &eval,
        )
        .await;
        if let Some(tx) = &progress {
            let _ = tx.send(record);
        }
    }

    if !rounds_lost.is_empty() {
        stop_reason = format!("{stop_reason} ({} lost)", rounds_lost.len());
    }
    // Final evaluation of the last model: plain, noised and charged (`record`), or none
    // (partner-level DP, see `JobSpec::final_evaluation`).
    let final_round = u64::from(spec.job.rounds) + 1;
    let mut evaluated_by: Vec<String> = Vec::new();
    let mut final_metrics = not_evaluated();
    let mut evaluate = spec.final_evaluation();
    if evaluate && let Some(plan) = &privacy {
        let mut next = state.ledger.clone();
        plan.charge_evaluation(&mut next)?;
        let after = next.epsilon(plan.delta)?.0;
        if after > plan.epsilon {
            evaluate = false;
            stop_reason = format!(
                "{stop_reason}; no final evaluation: it would bring epsilon to {after:.4}, above the budget of {}",
                plan.epsilon
            );
        }
    }
    if evaluate {
        board.set_phase(&job_id, "final evaluation");
        let shared = Some(Arc::new(state.model.params.clone()));
        let done = run_with_retries(
            &mut hub,
            &spec,
            &settings,
            final_round,
            RoundKind::Evaluation,
            shared,
            Some(state.standardizer.clone()),
        )
        .await?;
        let mut stats = done.sum.stats.clone();
        if let Some(plan) = &privacy {
            // Released noised, each row's loss divided by the cap (see the client).
            stats[2] *= EVAL_LOSS_CAP;
            plan.charge_evaluation(&mut state.ledger)?;
        }
        final_metrics = eval_stats_from_slice(&stats, bins).metrics();
        evaluated_by = done.output.survivors.clone();
        announce(
            &hub,
            &job_id,
            (final_round, done.attempt),
            &done.output.survivors,
            &final_metrics,
        )
        .await;
    }
    info!(job = %job_id, auc = final_metrics.auc, log_loss = final_metrics.log_loss, "job finished");
    let report = JobReport {
        job_id: job_id.clone(),
        name: spec.job.name.clone(),
        purpose: spec.job.purpose.clone(),
        model_kind: format!("{:?}", spec.model.kind).to_lowercase(),
        model_params: state.model.params.len(),
        input_dim: schema.dim(),
        secure_aggregation: spec.aggregation.secure,
        partners_accepted: hub.accepted.iter().cloned().collect(),
        partners_refused: hub.refused.clone(),
        training_rows: state.training_rows,
        evaluated_by: evaluated_by.len() as u32,
        rounds: state.records,
        rounds_lost,
        final_metrics: FinalMetrics::from(&final_metrics),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: None,
        stop_reason: stop_reason.clone(),
        privacy: privacy.map(|plan| PrivacyReport {
            mode: format!("{:?}", plan.mode),
            noise_multiplier: plan.noise_multiplier,
            clip: plan.clip,
            epsilon_budget: plan.epsilon,
            epsilon_spent: state
                .ledger
                .epsilon(plan.delta)
                .map(|e| e.0)
                .unwrap_or(f64::NAN),
            delta: plan.delta,
        }),
    };
    store.end_job(
        &job_id,
        JobStatus::Finished,
        &stop_reason,
        Some(serde_json::to_value(&report).unwrap_or_default()),
        vec![(
            "job_finished",
            json!({
                "job": job_id, "reason": stop_reason, "rounds": report.rounds.len(),
                "auc": final_metrics.auc, "model_sha256": f64s_sha256(&state.model.params),
                "epsilon": report.privacy.as_ref().map(|p| p.epsilon_spent),
                "evaluated_by": evaluated_by,
            }),
        )],
    )?;
    board.refresh(&store, &job_id)?;
    hub.sessions
        .finish_all(&job_id, &stop_reason, FINISH_SEND_LIMIT)
        .await;
    Ok(JobOutcome {
        report,
        model: state.model,
        standardizer: state.standardizer,
    })
}

/// The metrics of a round or job that released no holdout statistics (NaN: shown as "–").
fn not_evaluated() -> Metrics {
    Metrics {
        auc: f64::NAN,
        log_loss: f64::NAN,
        accuracy: f64::NAN,
        lift_top_decile: f64::NAN,
        count: 0,
    }
}

async fn wait_for_partners(
    hub: &mut Hub,
    settings: &RunSettings,
    min: usize,
) -> Result<(), JobError> {
    let deadline = Instant::now() + settings.join_timeout;
    while hub.accepted.len() + hub.refused.len() < settings.expected_partners {
        if hub.next(deadline).await.is_none() {
            if hub.stopped {
                return Err(JobError::ServerStopped);
            }
            break;
        }
    }
    if hub.accepted.len() < min {
        let refusals = hub
            .refused
            .iter()
            .map(|(p, r)| format!("{p}: {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(JobError::NotEnoughPartners {
            accepted: hub.accepted.len(),
            needed: min,
            refusals,
        });
    }
    Ok(())
}

/// A round that produced its result.
/// Tells a round's survivors that it completed, with the federated evaluation it measured
/// (zeros for the statistics round): every round a partner sends to ends, for it, with
/// `RoundResult` or `RoundAbort`.
async fn announce(
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

struct Done {
    /// The decoded sum.
    sum: fedmark_core::aggregate::DecodedSum,
    /// Who is in it.
    output: RoundOutput,
    /// Attempts this run of the coordinator made (1 = no retry).
    attempts: u32,
    /// The attempt number of the successful round instance.
    attempt: u32,
    /// Its layout.
    layout: VectorLayout,
    /// Its cohort size.
    cohort: usize,
}

/// Runs round `round` until it succeeds, each attempt with a fresh cohort of the partners
/// available then and a fresh attempt number from the store.
async fn run_with_retries(
    hub: &mut Hub,
    spec: &JobSpec,
    settings: &RunSettings,
    round: u64,
    kind: RoundKind,
    model: Option<Arc<Vec<f64>>>,
    standardizer: Option<Standardizer>,
) -> Result<Done, JobError> {
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
        let mut cohort = wait_for_available(hub, settings, min).await?;
        cohort.retain(|p| !sat_out.contains(p));
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
        let shape = RoundShape::derive(spec, kind, cohort, num_params)?;
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
        settings.store.audit(vec![(
            "round_started",
            json!({
                "job": hub.job_id, "round": round, "attempt": attempt,
                "kind": format!("{kind:?}").to_lowercase(), "cohort": cohort,
                "threshold": threshold, "secure": secure.is_some(),
                "vector_len": layout.len(),
            }),
        )])?;
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
                let event: AuditEvent = (
                    "round_aborted",
                    json!({"job": hub.job_id, "round": round, "attempt": attempt, "reason": e.to_string()}),
                );
                settings.store.audit(vec![event])?;
                settings.metrics.round_aborted(&hub.job_id);
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

/// Waits (up to one phase timeout) until at least `threshold` accepted partners are connected.
async fn wait_for_available(
    hub: &mut Hub,
    settings: &RunSettings,
    threshold: usize,
) -> Result<Vec<String>, JobError> {
    let deadline = Instant::now() + settings.phase_timeout;
    loop {
        let available = hub.available();
        if available.len() >= threshold {
            return Ok(available);
        }
        if hub.next(deadline).await.is_none() {
            if hub.stopped {
                return Err(JobError::ServerStopped);
            }
            return Ok(hub.available());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The poison job of the issue (no vocabulary, 2^22 hash buckets, an MLP of 4,096
    /// units) passes every per-field cap but not the size budget, which names the size, the
    /// limit and the setting; a job within the budget passes.
    #[test]
    fn a_model_above_the_size_budget_is_refused_with_the_setting_to_raise() {
        let poison = JobSpec::from_toml(
            "[job]\nname = \"p\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\ncategorical = [\"job\"]\nhash_buckets = 4194304\n\
             [model]\nkind = \"mlp\"\nhidden = 4096\n",
        )
        .unwrap();
        let expected: u128 = 4_194_304 * 4096 + 2 * 4096 + 1;
        assert_eq!(poison.model_params(), expected);
        let e = check_size(&poison, DEFAULT_MAX_MODEL_PARAMS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&expected.to_string()) && e.contains("max_model_params = 16777216"),
            "{e}"
        );
        assert!(check_size(&poison, u64::MAX).is_ok());
        let small = JobSpec::from_toml(
            "[job]\nname = \"s\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\n[model]\nkind = \"logistic\"\n",
        )
        .unwrap();
        assert!(check_size(&small, 2).is_ok() && check_size(&small, 1).is_err());
    }
}
