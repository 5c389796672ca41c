//! Running one job from offer to final evaluation.
//!
//! The job task owns all protocol state. Its life:
//!
//! 1. **Offer.** Every partner that connects is offered the spec ([`crate::hub`]); replies
//!    are recorded (refusals with their reason). The job starts when every expected partner
//!    has answered, or at the join deadline with at least `min_participants` acceptances.
//! 2. **Statistics round** (round 0, jobs without DP): counts, sums and sums of squares of
//!    the numeric features give the standardisation, so no partner reveals its own
//!    statistics. DP jobs standardise with the spec's declared ranges instead.
//! 3. **Training rounds** 1..=R: each one averages the partners' clipped deltas into the
//!    server optimiser (and, without DP, evaluates the incoming model on their holdouts). A
//!    round that fails ([`crate::round::RoundError`]) is retried with a fresh cohort up to
//!    `max_attempts` times (`attempts.rs`). What a round costs in privacy, and the
//!    coordinator's noise, come from core's [`PrivacyPlan`].
//! 4. **Final evaluation** (round R+1) of the last model, then `JobFinished` to everyone.
//!
//! Every round is committed to the store ([`crate::store::jobs`]) before it is released, and
//! what happens is published as [`JobEvent`]s for the board, the metrics and progress
//! watchers.

use std::sync::Arc;

use fedmark_core::aggregate::{RoundKind, eval_stats_from_slice};
use fedmark_core::audit::f64s_sha256;
use fedmark_core::budget::{EVAL_LOSS_CAP, PrivacyPlan};
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::metrics::Metrics;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::spec::{JobSpec, SpecError};
use fedmark_core::train::ServerOptimizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::attempts::{Done, RoundInputs, announce, run_with_retries};
pub use crate::error::JobError;
use crate::events::{JobEvent, JobEvents};
use crate::hub::{FINISH_SEND_LIMIT, Hub};
use crate::report::{FinalMetrics, JobReport, PrivacyReport, RoundRecord};
pub use crate::settings::{DEFAULT_MAX_MODEL_PARAMS, RunSettings, check_size};
use crate::store::events::{CoordinatorEvent, TrainingFigures};
pub use crate::store::jobs::JobOutcome;
use crate::store::jobs::{Committed, JobState, Registered, commit, register};
use crate::store::{JobStatus, Store};

/// Runs a job to its end, committing every round to the store; a job the store holds as
/// running resumes after its last committed round. `progress` receives each committed
/// round's record.
pub async fn run_job(
    mut hub: Hub,
    spec: JobSpec,
    settings: RunSettings,
    progress: Option<mpsc::UnboundedSender<RoundRecord>>,
) -> Result<JobOutcome, JobError> {
    let started = Instant::now();
    let job_id = hub.job_id.clone();
    let store = settings.store.clone();
    let mut events = settings.events.clone();
    if let Some(tx) = progress {
        events = events.with(tx);
    }
    check_size(&spec, settings.max_model_params)?;
    let by = &settings.submitted_by;
    let resumed = match register(&store, &job_id, &spec, &hub.spec_toml, by)? {
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
    events.publish(JobEvent::Recorded { job: &job_id });
    events.publish(JobEvent::Phase {
        job: &job_id,
        phase: "waiting for partners",
    });
    hub.audit_to(store.clone());
    hub.events = events.clone();
    hub.offer_connected().await;
    let deadline = Instant::now() + settings.join_timeout;
    if !hub
        .await_answers(settings.expected_partners, deadline)
        .await
    {
        return Err(JobError::ServerStopped);
    }
    let min = spec.aggregation.min_participants as usize;
    if hub.accepted.len() < min {
        return Err(JobError::NotEnoughPartners {
            accepted: hub.accepted.len(),
            needed: min,
            refusals: hub.refusals(),
        });
    }
    info!(job = %job_id, partners = hub.accepted.len(), "job starting");

    let privacy = PrivacyPlan::from_spec(&spec)?;
    if let Some(plan) = &privacy {
        info!(job = %job_id, mode = ?plan.mode, noise_multiplier = plan.noise_multiplier, epsilon = plan.epsilon, delta = plan.delta, "privacy plan");
    }
    let mut run = JobRun {
        hub,
        spec,
        settings,
        events,
        job_id,
        store,
        privacy,
    };
    if run.spec.is_gbdt() {
        return run.run_trees(started, resumed).await;
    }
    let mut state = match resumed {
        Some(state) => state,
        None => run.first_state().await?,
    };
    let (mut stop_reason, lost) = run.train(&mut state).await?;
    let (final_metrics, evaluated_by) = run.final_evaluation(&mut state, &mut stop_reason).await?;
    let ended = Ended {
        started,
        stop_reason,
        lost,
        final_metrics,
        evaluated_by,
    };
    run.finish(state, ended).await
}

mod trees;

/// A running job: what its phases share.
struct JobRun {
    hub: Hub,
    spec: JobSpec,
    settings: RunSettings,
    events: JobEvents,
    job_id: String,
    store: Store,
    privacy: Option<PrivacyPlan>,
}

impl JobRun {
    fn phase(&self, phase: &str) {
        self.events.publish(JobEvent::Phase {
            job: &self.job_id,
            phase,
        });
    }

    async fn round(
        &mut self,
        round: u64,
        kind: RoundKind,
        state: Option<&JobState>,
    ) -> Result<Done, JobError> {
        let model = state.map(|s| Arc::new(s.model.params.clone()));
        let standardizer = state.map(|s| s.standardizer.clone());
        let clip = match (kind, state) {
            (RoundKind::Training, Some(s)) => round_clip(&self.spec, &s.records),
            _ => None,
        };
        run_with_retries(
            &mut self.hub,
            &self.spec,
            &self.settings,
            round,
            kind,
            RoundInputs {
                model,
                standardizer,
                clip,
                trees_stats: None,
            },
        )
        .await
    }

    /// The state of a job that starts from the beginning: a fresh model, and the
    /// standardisation from the statistics round (jobs without DP) or the declared ranges.
    async fn first_state(&mut self) -> Result<JobState, JobError> {
        let spec = self.spec.clone();
        let schema = FeatureSchema::from_spec(&spec);
        let mut rng = StdRng::seed_from_u64(spec.job.seed);
        let model = Model::try_init(Architecture::from_spec(&spec), schema.dim(), &mut rng)?;
        let optimizer = ServerOptimizer::try_from_spec(&spec, model.params.len())?;
        let mut state = JobState {
            model,
            optimizer,
            standardizer: Standardizer {
                mean: Vec::new(),
                std: Vec::new(),
            },
            training_rows: f64::NAN,
            ledger: Default::default(),
            records: Vec::new(),
            next_round: 1,
        };
        if !spec.measures_moments() {
            // A DP job standardises with the spec's declared ranges: no statistics round,
            // nothing measured on any partner's data.
            state.standardizer =
                Standardizer::from_ranges(&schema).ok_or_else(|| SpecError::Invalid {
                    field: "features.range".into(),
                    reason: "a DP job needs a declared range for every numeric column".into(),
                })?;
            info!(job = %self.job_id, "standardising with the declared feature ranges");
            return Ok(state);
        }
        self.phase("round 0: feature statistics");
        let done = self.round(0, RoundKind::Statistics, None).await?;
        let numeric = 3 * spec.features.numeric.len();
        let stats = &done.sum.stats;
        let moments: Vec<[f64; 3]> = stats[..numeric]
            .chunks(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        check_labels(&spec, stats[numeric], stats[numeric + 1])?;
        state.standardizer = Standardizer::from_moments(&moments);
        state.training_rows = moments.first().map_or(0.0, |m| m[0]);
        commit(
            &self.store,
            &self.job_id,
            &state,
            Committed {
                kind: RoundKind::Statistics,
                attempt: done.attempt,
                participants: done.output.survivors.clone(),
                dropped: done.output.dropped.clone(),
                consent_snapshots: done.output.consent.clone(),
                training: None,
            },
        )?;
        info!(job = %self.job_id, training_rows = state.training_rows, "feature statistics agreed");
        let rref = (0, done.attempt);
        announce(
            &self.hub,
            &self.job_id,
            rref,
            &done.output.survivors,
            &Metrics::default(),
        )
        .await;
        Ok(state)
    }

    /// Runs the training rounds still to run; returns why training stopped and the rounds
    /// lost.
    async fn train(&mut self, state: &mut JobState) -> Result<(String, Vec<u64>), JobError> {
        let rounds = u64::from(self.spec.job.rounds);
        let mut stop_reason = format!("completed {rounds} rounds");
        // Central noise must be unpredictable to everyone, the job's seed included.
        let mut noise_rng = StdRng::from_rng(&mut rand::rng());
        let mut lost = Vec::new();
        for round in state.next_round..=rounds {
            if let Some(reason) = self.over_budget(state, round)? {
                warn!(job = %self.job_id, round, reason = %reason, "stopping early");
                stop_reason = reason;
                break;
            }
            self.phase(&format!("round {round} of {rounds}: training"));
            let t0 = Instant::now();
            let done = match self.round(round, RoundKind::Training, Some(state)).await {
                Err(JobError::RoundLost { round, sat_out }) => {
                    self.store.audit(vec![
                        CoordinatorEvent::RoundLost {
                            job: self.job_id.clone(),
                            round,
                            sat_out,
                        }
                        .into(),
                    ])?;
                    if !self.spec.is_dp() {
                        // Without DP, partners help unmask one round per start model: the
                        // next round would start from the same model and find them sitting
                        // out. Stop here.
                        return Err(JobError::RoundLost { round, sat_out });
                    }
                    // No second unmask of a round: the job goes on from the same model
                    // (every DP release is noised afresh and charged).
                    warn!(job = %self.job_id, round, sat_out, "round lost; going on with the next round");
                    lost.push(round);
                    continue;
                }
                other => other?,
            };
            self.commit_training(state, round, done, t0, &mut noise_rng)
                .await?;
        }
        if !lost.is_empty() {
            stop_reason = format!("{stop_reason} ({} lost)", lost.len());
        }
        Ok((stop_reason, lost))
    }

    /// Why round `round` must not run: it would pass the privacy budget.
    fn over_budget(&self, state: &JobState, round: u64) -> Result<Option<String>, JobError> {
        let Some(plan) = &self.privacy else {
            return Ok(None);
        };
        // A distributed round's charge depends on its encoding, i.e. its cohort size:
        // estimate it with the partners available now.
        let mut n = self.hub.available().len().max(1);
        if self.spec.aggregation.cohort_size > 0 {
            n = n.min(self.spec.aggregation.cohort_size as usize);
        }
        let params = state.model.params.len();
        let layout = RoundKind::Training.layout(&self.spec, params, n)?;
        let clip = round_clip(&self.spec, &state.records).unwrap_or(plan.clip);
        let next =
            plan.epsilon_after_training_round(&self.spec, &state.ledger, &layout, n, clip)?;
        Ok((next > plan.epsilon).then(|| {
            format!(
                "privacy budget exhausted: round {round} would bring epsilon to {next:.4}, above the budget of {}",
                plan.epsilon
            )
        }))
    }

    /// Noises (partner-central), charges, applies and commits a training round's sum, then
    /// tells its survivors and the job's subscribers.
    async fn commit_training(
        &mut self,
        state: &mut JobState,
        round: u64,
        done: Done,
        t0: Instant,
        noise_rng: &mut StdRng,
    ) -> Result<(), JobError> {
        let weight = done.sum.stats[0];
        let eval = if self.spec.evaluates_in_training() {
            let bins = self.spec.histogram_bins() as usize;
            eval_stats_from_slice(&done.sum.stats[1..], bins).metrics()
        } else {
            Metrics::not_evaluated()
        };
        let mut update = done.sum.update;
        let mut epsilon = None;
        let clip = round_clip(&self.spec, &state.records);
        let mut unclipped_share = None;
        if let Some(plan) = &self.privacy {
            let sensitivity_clip = clip.unwrap_or(plan.clip);
            if let Some(noise) =
                plan.add_central_noise(&mut update, &done.layout, sensitivity_clip, noise_rng)?
            {
                debug!(job = %self.job_id, round, lattice_step = noise.step, noise_std = noise.std_real, "central noise added");
            }
            // An adaptive round's last coordinate is the noised count of updates within
            // the clip, released with (and noised as) the update.
            if let Some(c) = clip {
                let count = update.pop().unwrap_or(f64::NAN);
                unclipped_share = Some(PrivacyPlan::unclipped_share(count, c, weight));
            }
            // Charged with the release of this round's result (one commit below).
            plan.charge_training_round(
                &self.spec,
                &mut state.ledger,
                &done.layout,
                done.cohort,
                sensitivity_clip,
            )?;
            epsilon = Some(state.ledger.epsilon(plan.delta)?.0);
        }
        if weight > 0.0 {
            let avg: Vec<f64> = update.iter().map(|u| u / weight).collect();
            state.optimizer.step(&mut state.model.params, &avg);
        }
        let survivors = &done.output.survivors;
        let counts = (survivors.len(), done.output.dropped.len());
        let seconds = t0.elapsed().as_secs_f64();
        let mut record = RoundRecord::new(round, done.attempts, counts, &eval, seconds);
        record.epsilon = epsilon;
        record.clip = clip;
        record.unclipped_share = unclipped_share;
        state.records.push(record.clone());
        state.next_round = round + 1;
        commit(
            &self.store,
            &self.job_id,
            state,
            Committed {
                kind: RoundKind::Training,
                attempt: done.attempt,
                participants: survivors.clone(),
                dropped: done.output.dropped.clone(),
                consent_snapshots: done.output.consent.clone(),
                training: Some(TrainingFigures {
                    epsilon,
                    auc: eval.auc,
                    log_loss: eval.log_loss,
                }),
            },
        )?;
        self.events.publish(JobEvent::RoundCommitted {
            job: &self.job_id,
            record: &record,
        });
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
            &self.hub,
            &self.job_id,
            (round, done.attempt),
            survivors,
            &eval,
        )
        .await;
        Ok(())
    }

    /// Why the final evaluation must not run (as a suffix of the stop reason): its release
    /// would pass the privacy budget.
    fn evaluation_over_budget(&self, state: &JobState) -> Result<Option<String>, JobError> {
        let Some(plan) = &self.privacy else {
            return Ok(None);
        };
        let after = plan.epsilon_after_evaluation(&state.ledger)?;
        Ok((after > plan.epsilon).then(|| {
            format!(
                "; no final evaluation: it would bring epsilon to {after:.4}, above the budget of {}",
                plan.epsilon
            )
        }))
    }

    /// Evaluates the last model on the partners' holdouts: plain, noised and charged
    /// (`record`), or not at all (partner-level DP, see `JobSpec::final_evaluation`, or no
    /// budget left). Returns the metrics and who evaluated.
    async fn final_evaluation(
        &mut self,
        state: &mut JobState,
        stop_reason: &mut String,
    ) -> Result<(Metrics, Vec<String>), JobError> {
        if !self.spec.final_evaluation() {
            return Ok((Metrics::not_evaluated(), Vec::new()));
        }
        if let Some(why) = self.evaluation_over_budget(state)? {
            stop_reason.push_str(&why);
            return Ok((Metrics::not_evaluated(), Vec::new()));
        }
        self.phase("final evaluation");
        let round = u64::from(self.spec.job.rounds) + 1;
        let done = self
            .round(round, RoundKind::Evaluation, Some(state))
            .await?;
        let mut stats = done.sum.stats.clone();
        if let Some(plan) = &self.privacy {
            // Released noised, each row's loss divided by the cap (see the client).
            stats[2] *= EVAL_LOSS_CAP;
            plan.charge_final_evaluation(&mut state.ledger)?;
        }
        let bins = self.spec.histogram_bins() as usize;
        let metrics = eval_stats_from_slice(&stats, bins).metrics();
        let survivors = done.output.survivors;
        announce(
            &self.hub,
            &self.job_id,
            (round, done.attempt),
            &survivors,
            &metrics,
        )
        .await;
        Ok((metrics, survivors))
    }

    /// Records the job finished with its report, and tells every partner.
    async fn finish(self, state: JobState, ended: Ended) -> Result<JobOutcome, JobError> {
        let Ended {
            started,
            stop_reason,
            lost,
            final_metrics,
            evaluated_by,
        } = ended;
        let spec = &self.spec;
        info!(job = %self.job_id, auc = final_metrics.auc, log_loss = final_metrics.log_loss, "job finished");
        let report = JobReport {
            job_id: self.job_id.clone(),
            name: spec.job.name.clone(),
            purpose: spec.job.purpose.clone(),
            model_kind: spec.model.kind.as_str().to_owned(),
            model_params: state.model.params.len(),
            input_dim: FeatureSchema::from_spec(spec).dim(),
            secure_aggregation: spec.aggregation.secure,
            partners_accepted: self.hub.accepted.iter().cloned().collect(),
            partners_refused: self.hub.refused.clone(),
            training_rows: state.training_rows,
            evaluated_by: evaluated_by.len() as u32,
            rounds: state.records,
            rounds_lost: lost,
            final_metrics: FinalMetrics::from(&final_metrics),
            seconds: started.elapsed().as_secs_f64(),
            peak_rss_bytes: None,
            stop_reason: stop_reason.clone(),
            privacy: self
                .privacy
                .map(|plan| PrivacyReport::new(&plan, &state.ledger)),
        };
        self.store.end_job(
            &self.job_id,
            JobStatus::Finished,
            &stop_reason,
            Some(serde_json::to_value(&report).unwrap_or_default()),
            vec![
                CoordinatorEvent::JobFinished {
                    job: self.job_id.clone(),
                    reason: stop_reason.clone(),
                    rounds: report.rounds.len(),
                    auc: final_metrics.auc,
                    model_sha256: f64s_sha256(&state.model.params),
                    epsilon: report.privacy.as_ref().map(|p| p.epsilon_spent),
                    evaluated_by,
                }
                .into(),
            ],
        )?;
        self.events
            .publish(JobEvent::Recorded { job: &self.job_id });
        self.hub
            .sessions
            .finish_all(&self.job_id, &stop_reason, FINISH_SEND_LIMIT)
            .await;
        Ok(JobOutcome {
            report,
            model: state.model,
            standardizer: state.standardizer,
        })
    }
}

/// The pre-flight label check: some but not all of the partners' usable rows are positive.
fn check_labels(spec: &JobSpec, rows: f64, positives: f64) -> Result<(), JobError> {
    if positives < 1.0 || positives > rows - 1.0 {
        let found = if positives < 1.0 { "none" } else { "every one" };
        return Err(JobError::Preflight(format!(
            "label column `{}`: {found} of the partners' {rows} usable rows has the positive value `{}` (values are compared exactly, case included); check `label.positive` against the data",
            spec.label.column, spec.label.positive
        )));
    }
    Ok(())
}

/// How a job ended, for its report.
struct Ended {
    started: Instant,
    stop_reason: String,
    lost: Vec<u64>,
    final_metrics: Metrics,
    evaluated_by: Vec<String>,
}

/// The clip norm of the next training round of a job whose clip is adaptive, from its
/// committed rounds (the last round's clip moved by its noised share, or the spec's initial
/// clip): the same after a restart, since it is a function of the stored records.
fn round_clip(spec: &JobSpec, records: &[RoundRecord]) -> Option<f64> {
    if !spec.privacy.clip.is_adaptive() {
        return None;
    }
    let a = &spec.privacy.adaptive_clip;
    Some(
        records
            .iter()
            .rev()
            .find_map(|r| r.clip.zip(r.unclipped_share))
            .map_or(a.initial, |(c, share)| a.next(c, share)),
    )
}
