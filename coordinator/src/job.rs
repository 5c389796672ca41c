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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fedmark_core::accountant::{Accountant, AccountantError};
use fedmark_core::aggregate::VectorLayout;
use fedmark_core::aggregate::{RoundKind, eval_stats_from_slice};
use fedmark_core::budget::PrivacyPlan;
use fedmark_core::budget::{noise_threshold, secure_shape};
use fedmark_core::codec::CodecError;
use fedmark_core::dp::{DpError, add_gaussian_noise};
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::metrics::Metrics;
use fedmark_core::model::{Architecture, Model};
use fedmark_core::secagg::Roster;
use fedmark_core::spec::JobSpec;
use fedmark_core::spec::PrivacyMode;
use fedmark_core::train::ServerOptimizer;
use fedmark_proto::{JobFinished, JobOffer, RoundRef, client_message, server_message};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::report::{FinalMetrics, JobReport, PrivacyReport, RoundRecord};
use crate::round::{RoundError, RoundOutput, RoundPlan, SecureSetup, run_round};
use crate::service::{Event, Sessions};

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
    /// The fixed-point layout cannot be built for this cohort.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The privacy plan or ledger failed (e.g. an unreachable ε target).
    #[error("privacy accounting: {0}")]
    Privacy(#[from] AccountantError),
    /// Noise could not be drawn.
    #[error("privacy noise: {0}")]
    Noise(#[from] DpError),
    /// The spec could not be serialised for the partners.
    #[error(transparent)]
    Spec(#[from] fedmark_core::spec::SpecError),
    /// The event stream ended (the server stopped).
    #[error("the coordinator's server stopped during the job")]
    ServerStopped,
}

/// Timing and membership settings of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// How many partners the job waits for before starting (the roster size).
    pub expected_partners: usize,
    /// How long to wait for them.
    pub join_timeout: Duration,
    /// Deadline of each round phase.
    pub phase_timeout: Duration,
    /// Every partner's identity key (checked in secure aggregation).
    pub roster: Arc<Roster>,
}

/// A round-relevant event, after the hub has handled joins and offer replies.
#[derive(Debug)]
pub enum RoundEvent {
    /// A message from a partner's current session.
    Message {
        /// Partner id.
        partner: String,
        /// The message.
        body: client_message::Body,
    },
    /// A partner's current session closed.
    Closed {
        /// Partner id.
        partner: String,
    },
    /// A partner answered the job offer (already recorded in the hub).
    OfferAnswered,
}

/// The job task's view of the partners: sessions, offers and acceptances.
#[derive(Debug)]
pub struct Hub {
    /// Open sessions.
    pub sessions: Sessions,
    events: mpsc::Receiver<Event>,
    job_id: String,
    spec_toml: String,
    /// Partners that accepted the job.
    pub accepted: BTreeSet<String>,
    /// Partners that refused, with their reasons.
    pub refused: BTreeMap<String, String>,
    /// The latest session of each partner that connected.
    sessions_seen: BTreeMap<String, u64>,
    stopped: bool,
}

impl Hub {
    /// A hub for one job.
    pub fn new(
        sessions: Sessions,
        events: mpsc::Receiver<Event>,
        job_id: String,
        spec_toml: String,
    ) -> Self {
        Self {
            sessions,
            events,
            job_id,
            spec_toml,
            accepted: BTreeSet::new(),
            refused: BTreeMap::new(),
            sessions_seen: BTreeMap::new(),
            stopped: false,
        }
    }

    fn is_current(&self, partner: &str, session: u64) -> bool {
        self.sessions
            .sender(partner)
            .is_some_and(|(id, _)| id == session)
    }

    /// The next round-relevant event before `deadline` (None at the deadline or when the
    /// server stopped). Joins are offered the job and offer replies recorded on the way.
    pub async fn next(&mut self, deadline: Instant) -> Option<RoundEvent> {
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.stopped = true;
                    return None;
                }
                Err(_) => return None,
            };
            match event {
                Event::Connected { partner, session } => {
                    let offer = JobOffer {
                        job_id: self.job_id.clone(),
                        spec_toml: self.spec_toml.clone(),
                    };
                    self.sessions
                        .send(&partner, server_message::Body::Offer(offer))
                        .await;
                    // A new session replaces the old one: whatever the old one was doing in a
                    // round is over, even if its close has not been seen yet.
                    if self
                        .sessions_seen
                        .insert(partner.clone(), session)
                        .is_some()
                    {
                        return Some(RoundEvent::Closed { partner });
                    }
                }
                Event::Message {
                    partner,
                    session,
                    body,
                } => {
                    if !self.is_current(&partner, session) {
                        continue;
                    }
                    if let client_message::Body::OfferReply(r) = body {
                        if r.job_id != self.job_id {
                            warn!(partner = %partner, "offer reply for another job; ignored");
                        } else if r.accept {
                            info!(partner = %partner, "partner accepted the job");
                            self.refused.remove(&partner);
                            self.accepted.insert(partner);
                        } else {
                            warn!(partner = %partner, reason = %r.reason, "partner refused the job");
                            self.accepted.remove(&partner);
                            let fin = JobFinished {
                                job_id: self.job_id.clone(),
                                reason: "refused by the partner".into(),
                            };
                            self.sessions
                                .send(&partner, server_message::Body::Finished(fin))
                                .await;
                            self.refused.insert(partner, r.reason);
                        }
                        return Some(RoundEvent::OfferAnswered);
                    }
                    return Some(RoundEvent::Message { partner, body });
                }
                Event::Closed { partner, session } => {
                    // A close of a replaced session says nothing about the partner's presence.
                    if self
                        .sessions
                        .sender(&partner)
                        .is_some_and(|(id, _)| id != session)
                    {
                        continue;
                    }
                    return Some(RoundEvent::Closed { partner });
                }
            }
        }
    }

    /// Accepted partners with an open session.
    pub fn available(&self) -> Vec<String> {
        let connected = self.sessions.connected();
        self.accepted
            .iter()
            .filter(|p| connected.contains(*p))
            .cloned()
            .collect()
    }
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// What happened, round by round.
    pub report: JobReport,
    /// The final global model.
    pub model: Model,
    /// The federated standardisation.
    pub standardizer: Standardizer,
}

/// Runs a job to its end.
pub async fn run_job(
    mut hub: Hub,
    spec: JobSpec,
    settings: RunSettings,
    progress: Option<mpsc::UnboundedSender<RoundRecord>>,
) -> Result<JobOutcome, JobError> {
    let started = Instant::now();
    let job_id = hub.job_id.clone();
    let min = spec.aggregation.min_participants as usize;
    wait_for_partners(&mut hub, &settings, min).await?;
    info!(job = %job_id, partners = hub.accepted.len(), "job starting");

    let schema = FeatureSchema::from_spec(&spec);
    let arch = Architecture::from_spec(&spec);
    let mut rng = StdRng::seed_from_u64(spec.job.seed);
    let mut model = Model::init(arch, schema.dim(), &mut rng);
    let mut optimizer = ServerOptimizer::from_spec(&spec, model.params.len());
    let mut records = Vec::new();

    // Round 0: feature statistics.
    let (out, _, _, _, _) = run_with_retries(
        &mut hub,
        &spec,
        &settings,
        &mut rng,
        0,
        RoundKind::Statistics,
        None,
        None,
    )
    .await?;
    let moments: Vec<[f64; 3]> = out.stats.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    let standardizer = Standardizer::from_moments(&moments);
    let training_rows = moments.first().map_or(0.0, |m| m[0]);
    info!(job = %job_id, training_rows, "feature statistics agreed");

    let bins = spec.evaluation.histogram_bins as usize;
    let privacy = PrivacyPlan::from_spec(&spec)?;
    if let Some(plan) = &privacy {
        info!(job = %job_id, mode = ?plan.mode, noise_multiplier = plan.noise_multiplier, epsilon = plan.epsilon, delta = plan.delta, "privacy plan");
    }
    let mut ledger = Accountant::new();
    // Central noise must be unpredictable to everyone, the job's seed included.
    let mut noise_rng = StdRng::from_rng(&mut rand::rng());
    let mut stop_reason = format!("completed {} rounds", spec.job.rounds);
    for round in 1..=u64::from(spec.job.rounds) {
        if let Some(plan) = &privacy {
            let next = match plan.mode {
                PrivacyMode::PartnerDistributed => {
                    // The exact charge depends on the round's encoding, i.e. its cohort size;
                    // estimate it with the partners available now.
                    let mut n = hub.available().len().max(1);
                    if spec.aggregation.cohort_size > 0 {
                        n = n.min(spec.aggregation.cohort_size as usize);
                    }
                    let layout = RoundKind::Training.layout(&spec, model.params.len(), n)?;
                    let t = noise_threshold(&spec, n);
                    let scale = layout.update_codec.map_or(1.0, |c| c.scale);
                    let mut next = ledger.clone();
                    plan.charge_skellam(
                        &mut next,
                        &plan.skellam_round(scale, layout.update_len, t),
                    )?;
                    next.epsilon(plan.delta)?.0
                }
                _ => plan.epsilon_after_round(&ledger)?,
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
        let t0 = Instant::now();
        let shared = Some(Arc::new(model.params.clone()));
        let (out, output, attempts, layout, cohort) = run_with_retries(
            &mut hub,
            &spec,
            &settings,
            &mut rng,
            round,
            RoundKind::Training,
            shared,
            Some(standardizer.clone()),
        )
        .await?;
        let weight = out.stats[0];
        let eval = eval_stats_from_slice(&out.stats[1..], bins).metrics();
        let mut update = out.update;
        let mut epsilon = None;
        if let Some(plan) = &privacy {
            if plan.mode == PrivacyMode::PartnerCentral {
                add_gaussian_noise(
                    &mut update,
                    plan.noise_multiplier,
                    plan.clip,
                    &mut noise_rng,
                )?;
            }
            // Charged with the release of this round's result.
            match (plan.mode, layout.update_codec) {
                (PrivacyMode::PartnerDistributed, Some(codec)) => {
                    let t = noise_threshold(&spec, cohort);
                    plan.charge_skellam(
                        &mut ledger,
                        &plan.skellam_round(codec.scale, layout.update_len, t),
                    )?;
                }
                _ => plan.charge_round(&mut ledger)?,
            }
            epsilon = Some(ledger.epsilon(plan.delta)?.0);
        }
        if weight > 0.0 {
            let avg: Vec<f64> = update.iter().map(|u| u / weight).collect();
            optimizer.step(&mut model.params, &avg);
        }
        let mut record =
            RoundRecord::new(round, attempts, &output, &eval, t0.elapsed().as_secs_f64());
        record.epsilon = epsilon;
        info!(
            round,
            participants = record.participants,
            dropped = record.dropped,
            auc = eval.auc,
            log_loss = eval.log_loss,
            seconds = record.seconds,
            "round complete"
        );
        for p in &output.survivors {
            let result = fedmark_proto::RoundResult {
                round: Some(RoundRef {
                    job_id: job_id.clone(),
                    round,
                    attempt: attempts - 1,
                }),
                participants: record.participants,
                auc: eval.auc,
                log_loss: eval.log_loss,
                accuracy: eval.accuracy,
            };
            hub.sessions
                .send(p, server_message::Body::RoundResult(result))
                .await;
        }
        if let Some(tx) = &progress {
            let _ = tx.send(record.clone());
        }
        records.push(record);
    }

    // Final evaluation of the last model.
    let final_round = u64::from(spec.job.rounds) + 1;
    let shared = Some(Arc::new(model.params.clone()));
    let (out, output, _, _, _) = run_with_retries(
        &mut hub,
        &spec,
        &settings,
        &mut rng,
        final_round,
        RoundKind::Evaluation,
        shared,
        Some(standardizer.clone()),
    )
    .await?;
    let final_metrics = eval_stats_from_slice(&out.stats, bins).metrics();
    info!(job = %job_id, auc = final_metrics.auc, log_loss = final_metrics.log_loss, "job finished");
    for p in hub.sessions.connected() {
        let fin = JobFinished {
            job_id: job_id.clone(),
            reason: stop_reason.clone(),
        };
        hub.sessions
            .send(&p, server_message::Body::Finished(fin))
            .await;
    }
    let report = JobReport {
        job_id,
        name: spec.job.name.clone(),
        purpose: spec.job.purpose.clone(),
        model_kind: format!("{:?}", spec.model.kind).to_lowercase(),
        model_params: model.params.len(),
        input_dim: schema.dim(),
        secure_aggregation: spec.aggregation.secure,
        partners_accepted: hub.accepted.iter().cloned().collect(),
        partners_refused: hub.refused.clone(),
        training_rows,
        evaluated_by: output.survivors.len() as u32,
        rounds: records,
        final_metrics: FinalMetrics::from(&final_metrics),
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: None,
        stop_reason,
        privacy: privacy.map(|plan| PrivacyReport {
            mode: format!("{:?}", plan.mode),
            noise_multiplier: plan.noise_multiplier,
            clip: plan.clip,
            epsilon_budget: plan.epsilon,
            epsilon_spent: ledger.epsilon(plan.delta).map(|e| e.0).unwrap_or(f64::NAN),
            delta: plan.delta,
        }),
    };
    Ok(JobOutcome {
        report,
        model,
        standardizer,
    })
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

/// Runs round `round` until it succeeds, each attempt with a fresh cohort of the partners
/// available then. Returns the decoded sum, the output and the number of attempts used.
#[allow(clippy::too_many_arguments)]
async fn run_with_retries(
    hub: &mut Hub,
    spec: &JobSpec,
    settings: &RunSettings,
    rng: &mut StdRng,
    round: u64,
    kind: RoundKind,
    model: Option<Arc<Vec<f64>>>,
    standardizer: Option<Standardizer>,
) -> Result<
    (
        fedmark_core::aggregate::DecodedSum,
        RoundOutput,
        u32,
        VectorLayout,
        usize,
    ),
    JobError,
> {
    let min = spec.aggregation.min_participants as usize;
    let num_params = model.as_ref().map_or(0, |m| m.len());
    let mut last = RoundError::BelowThreshold {
        survivors: 0,
        cohort: 0,
        threshold: min,
    };
    for attempt in 0..spec.aggregation.max_attempts {
        let mut cohort = wait_for_available(hub, settings, min).await?;
        cohort.shuffle(rng);
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
        let n = cohort.len();
        let secure = spec.aggregation.secure.then(|| {
            let (degree, threshold) = secure_shape(spec, n);
            SecureSetup {
                roster: Arc::clone(&settings.roster),
                degree,
                threshold,
            }
        });
        let mut threshold = secure.as_ref().map_or(min, |s| s.threshold.max(min));
        if kind == RoundKind::Training && spec.privacy.mode == PrivacyMode::PartnerDistributed {
            // The partners sized their noise for this many survivors; fewer would carry too
            // little noise, so such a round is aborted.
            threshold = threshold.max(noise_threshold(spec, n));
        }
        let layout = kind.layout(spec, num_params, n)?;
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
        };
        match run_round(hub, &plan).await {
            Ok(output) => {
                let decoded = plan.layout.decode(&output.sum);
                return Ok((decoded, output, attempt + 1, plan.layout, plan.cohort.len()));
            }
            Err(e) => {
                if hub.stopped {
                    return Err(JobError::ServerStopped);
                }
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

impl From<&Metrics> for FinalMetrics {
    fn from(m: &Metrics) -> Self {
        FinalMetrics {
            auc: m.auc,
            log_loss: m.log_loss,
            accuracy: m.accuracy,
            lift_top_decile: m.lift_top_decile,
            rows: m.count,
        }
    }
}
