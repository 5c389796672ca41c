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
use fedmark_proto::{JobFinished, JobOffer, RoundRef, client_message, server_message};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::board::Board;
use crate::metrics::Metrics as MetricsRegistry;
use crate::report::{FinalMetrics, JobReport, PrivacyReport, RoundRecord};
use crate::round::{PausePoint, RoundError, RoundOutput, RoundPlan, SecureSetup, run_round};
use crate::service::{Event, Sessions};
use crate::store::{AuditEvent, Checkpoint, JobRecord, JobStatus, Store, StoreError};
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
    /// A chunk of a partner's vector, from an upload bound to its current session.
    Input {
        /// Partner id.
        partner: String,
        /// The chunk.
        chunk: fedmark_proto::InputChunk,
    },
    /// A partner's upload stream ended.
    UploadEnded {
        /// Partner id.
        partner: String,
    },
    /// A partner's current session closed.
    Closed {
        /// Partner id.
        partner: String,
    },
    /// A partner answered the job offer (already recorded in the hub).
    OfferAnswered,
}

/// The sessions' events, shared by the jobs a long-running coordinator runs one after another;
/// the job that runs holds the lock, so the receiver outlives a job that is cancelled.
pub type SharedEvents = Arc<tokio::sync::Mutex<mpsc::Receiver<Event>>>;

/// The job task's view of the partners: sessions, offers and acceptances.
#[derive(Debug)]
pub struct Hub {
    /// Open sessions.
    pub sessions: Sessions,
    events: tokio::sync::OwnedMutexGuard<mpsc::Receiver<Event>>,
    job_id: String,
    spec_toml: String,
    /// Partners that accepted the job.
    pub accepted: BTreeSet<String>,
    /// Partners that refused, with their reasons.
    pub refused: BTreeMap<String, String>,
    /// The latest session of each partner that connected.
    sessions_seen: BTreeMap<String, u64>,
    stopped: bool,
    /// Where offer answers are audited.
    store: Option<Store>,
    /// Where the rounds record their metrics.
    pub metrics: MetricsRegistry,
    /// The session whose offer each partner has answered: one decision per offer.
    answered: BTreeMap<String, u64>,
    /// Partners that missed a phase deadline (or left) in a round: for the next rounds they
    /// are drawn only when the others fall short (see [`run_with_retries`]).
    probation: BTreeMap<String, Probation>,
}

/// A partner's standing after missing deadlines.
#[derive(Debug, Clone, Copy, Default)]
struct Probation {
    /// Rounds missed since it last completed one.
    strikes: u32,
    /// Rounds it is still left out of (while the others can do without it).
    sit_out: u32,
}

impl Probation {
    /// After another miss: left out of 1, 3, 7, 15, then 31 rounds.
    fn strike(&mut self) {
        self.strikes = self.strikes.saturating_add(1);
        self.sit_out = (1u32 << self.strikes.min(5)) - 1;
    }
}

impl Hub {
    /// A hub for one job, holding the sessions' events until it is dropped.
    pub async fn new(
        sessions: Sessions,
        events: SharedEvents,
        job_id: String,
        spec_toml: String,
    ) -> Self {
        Self {
            sessions,
            events: events.lock_owned().await,
            job_id,
            spec_toml,
            accepted: BTreeSet::new(),
            refused: BTreeMap::new(),
            sessions_seen: BTreeMap::new(),
            stopped: false,
            store: None,
            metrics: MetricsRegistry::default(),
            probation: BTreeMap::new(),
            answered: BTreeMap::new(),
        }
    }

    /// Audits offer answers to `store` from now on.
    pub fn audit_to(&mut self, store: Store) {
        self.store = Some(store);
    }

    fn audit_offer(&self, partner: &str, accepted: bool, reason: &str) {
        let Some(store) = &self.store else {
            return;
        };
        let event = if accepted {
            (
                "offer_accepted",
                json!({"job": self.job_id, "partner": partner}),
            )
        } else {
            (
                "offer_refused",
                json!({"job": self.job_id, "partner": partner, "reason": reason}),
            )
        };
        // The audit write failing must not hide the answer; the error is logged and the
        // job's commits (which do fail hard) follow.
        if let Err(e) = store.audit(vec![event]) {
            warn!(error = %e, "could not audit an offer answer");
        }
    }

    /// Offers the job on every session open now (a long-running coordinator's partners are
    /// connected before a job is submitted); sessions that open later are offered it as their
    /// `Connected` event arrives.
    async fn offer_connected(&mut self) {
        for (partner, session) in self.sessions.open() {
            if self.sessions_seen.get(&partner) == Some(&session) {
                continue;
            }
            self.sessions_seen.insert(partner.clone(), session);
            self.offer(&partner).await;
        }
    }

    async fn offer(&self, partner: &str) {
        let offer = JobOffer {
            job_id: self.job_id.clone(),
            spec_toml: self.spec_toml.clone(),
        };
        self.sessions
            .send(partner, server_message::Body::Offer(offer))
            .await;
    }

    fn is_current(&self, partner: &str, session: u64) -> bool {
        self.sessions.is_current(partner, session)
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
                    if self.sessions_seen.get(&partner) == Some(&session) {
                        // Already offered by `offer_connected`.
                        continue;
                    }
                    self.offer(&partner).await;
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
                    if let client_message::Body::OfferReply(mut r) = body {
                        r.reason = bounded_reason(&r.reason);
                        if r.job_id == self.job_id && self.answered.get(&partner) == Some(&session)
                        {
                            // One decision per offer: a second answer on the session is a
                            // protocol violation, counted and ended, never audited again.
                            warn!(partner = %partner, "second answer to one job offer; closing the session");
                            self.metrics.protocol_violation(&self.job_id);
                            self.sessions
                                .kick(
                                    &partner,
                                    tonic::Status::failed_precondition(
                                        "a job offer is answered once; this session answered it already",
                                    ),
                                )
                                .await;
                            continue;
                        }
                        if r.job_id != self.job_id {
                            warn!(partner = %partner, "offer reply for another job; ignored");
                        } else if r.accept {
                            self.answered.insert(partner.clone(), session);
                            info!(partner = %partner, "partner accepted the job");
                            self.audit_offer(&partner, true, "");
                            self.refused.remove(&partner);
                            self.accepted.insert(partner);
                        } else {
                            self.answered.insert(partner.clone(), session);
                            warn!(partner = %partner, reason = %r.reason, "partner refused the job");
                            self.audit_offer(&partner, false, &r.reason);
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
                Event::Input {
                    partner,
                    session,
                    chunk,
                } => {
                    if self.is_current(&partner, session) {
                        return Some(RoundEvent::Input { partner, chunk });
                    }
                }
                Event::UploadEnded { partner, session } => {
                    if self.is_current(&partner, session) {
                        return Some(RoundEvent::UploadEnded { partner });
                    }
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

    /// The outbound channel of a partner's current session, if this job has offered itself
    /// on that session. A session the service registered but whose `Connected` the hub has not
    /// handled yet has had no offer, so no round message may reach it before one.
    pub fn offered_sender(&self, partner: &str) -> Option<crate::service::Outbound> {
        let (id, tx) = self.sessions.sender(partner)?;
        (self.sessions_seen.get(partner) == Some(&id)).then_some(tx)
    }

    /// Sends a round message to a partner's current session, if the job has offered itself on
    /// it (see [`Hub::offered_sender`]); false otherwise or if the session just closed.
    pub async fn send(&self, partner: &str, body: server_message::Body) -> bool {
        match self.offered_sender(partner) {
            Some(tx) => tx
                .send(Ok(fedmark_proto::ServerMessage { body: Some(body) }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Accepted partners whose current session has been offered the job.
    pub fn available(&self) -> Vec<String> {
        self.accepted
            .iter()
            .filter(|p| self.offered_sender(p).is_some())
            .cloned()
            .collect()
    }
}

/// How long telling one partner that a job ended may take: a partner that does not read its
/// session must not hold up the coordinator.
pub const FINISH_SEND_LIMIT: Duration = Duration::from_secs(2);

/// Longest refusal reason kept from a partner, in characters.
pub const MAX_REASON_CHARS: usize = 512;

/// A partner's refusal reason as the coordinator keeps and shows it: at most
/// [`MAX_REASON_CHARS`] characters, control characters (terminal escapes included) replaced,
/// so one partner cannot bloat every job listing or write into an operator's terminal.
pub fn bounded_reason(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .take(MAX_REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if reason.chars().count() > MAX_REASON_CHARS {
        out.push('…');
    }
    out
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

/// Where a job starts: fresh, or from its last committed round.
struct JobState {
    model: Model,
    optimizer: ServerOptimizer,
    standardizer: Standardizer,
    training_rows: f64,
    ledger: Accountant,
    records: Vec<RoundRecord>,
    /// The first training round still to run.
    next_round: u64,
}

/// The outcome of a job the store holds as finished, rebuilt from its report and its last
/// checkpoint (a coordinator restarted after the job ended writes its results again).
pub fn stored_outcome(
    store: &Store,
    spec: &JobSpec,
    id: &str,
) -> Result<Option<JobOutcome>, JobError> {
    let Some(job) = store.job(id)? else {
        return Ok(None);
    };
    if job.status != JobStatus::Finished {
        return Ok(None);
    }
    let corrupt = |reason: String| {
        JobError::Store(StoreError::Corrupt {
            path: "store".into(),
            what: format!("job {id}"),
            reason,
        })
    };
    let report: JobReport = serde_json::from_value(job.report.unwrap_or_default())
        .map_err(|e| corrupt(format!("report: {e}")))?;
    let restored = store
        .checkpoint(id, None)?
        .ok_or_else(|| corrupt("finished without a checkpoint".into()))?;
    let arch = Architecture::from_spec(spec);
    let dim = FeatureSchema::from_spec(spec).dim();
    let mut model = Model::zeros(arch, dim);
    if model.params.len() != restored.model.len() {
        return Err(corrupt(
            "the checkpoint's model does not fit the spec".into(),
        ));
    }
    model.params = restored.model;
    Ok(Some(JobOutcome {
        report,
        model,
        standardizer: Standardizer {
            mean: restored.checkpoint.feature_mean,
            std: restored.checkpoint.feature_std,
        },
    }))
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

/// Stores a newly submitted job with status `status` and its `job_submitted` audit record
/// (who, what, the spec's SHA-256), in one transaction.
pub fn submit(
    store: &Store,
    id: &str,
    spec: &JobSpec,
    spec_toml: &str,
    by: &str,
    status: JobStatus,
) -> Result<(), StoreError> {
    let record = JobRecord {
        id: id.to_owned(),
        spec_toml: spec_toml.to_owned(),
        submitted_by: by.to_owned(),
        submitted_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        status,
        reason: None,
        report: None,
    };
    store.submit_job(
        &record,
        vec![(
            "job_submitted",
            json!({
                "job": id, "by": by, "name": spec.job.name,
                "purpose": spec.job.purpose, "rounds": spec.job.rounds,
                "spec_sha256": fedmark_core::audit::sha256_hex(spec_toml.as_bytes()),
                "privacy_mode": format!("{:?}", spec.privacy.mode),
            }),
        )],
    )
}

/// Registers the job in the store, or finds where a restarted coordinator left it.
fn register(
    hub: &Hub,
    spec: &JobSpec,
    settings: &RunSettings,
) -> Result<Option<JobState>, JobError> {
    let store = &settings.store;
    let id = &hub.job_id;
    match store.job(id)? {
        None => {
            submit(
                store,
                id,
                spec,
                &hub.spec_toml,
                &settings.submitted_by,
                JobStatus::Running,
            )?;
            Ok(None)
        }
        Some(job) if matches!(job.status, JobStatus::Running | JobStatus::Queued) => {
            if job.status == JobStatus::Queued {
                store.set_status(
                    id,
                    JobStatus::Running,
                    vec![("job_started", json!({"job": id}))],
                )?;
            }
            let Some(restored) = store.checkpoint(id, None)? else {
                if job.status == JobStatus::Queued {
                    return Ok(None);
                }
                store.audit(vec![("job_resumed", json!({"job": id, "from_round": 0}))])?;
                return Ok(None);
            };
            let cp = restored.checkpoint;
            let arch = Architecture::from_spec(spec);
            let mut model = Model::zeros(arch, FeatureSchema::from_spec(spec).dim());
            let mut optimizer = ServerOptimizer::from_spec(spec, model.params.len());
            if model.params.len() != restored.model.len() || !optimizer.restore(&restored.optimizer)
            {
                return Err(JobError::Store(StoreError::Corrupt {
                    path: "store".into(),
                    what: format!("checkpoint of job {id} round {}", cp.round),
                    reason: "its vectors do not fit the spec".into(),
                }));
            }
            model.params = restored.model;
            info!(job = %id, round = cp.round, "resuming after the last committed round");
            store.audit(vec![(
                "job_resumed",
                json!({"job": id, "from_round": cp.round + 1, "model_sha256": cp.model_sha256}),
            )])?;
            Ok(Some(JobState {
                model,
                optimizer,
                standardizer: Standardizer {
                    mean: cp.feature_mean,
                    std: cp.feature_std,
                },
                training_rows: cp.training_rows,
                ledger: cp.ledger,
                records: cp.records,
                next_round: cp.round + 1,
            }))
        }
        Some(job) => Err(JobError::AlreadyEnded {
            id: id.clone(),
            status: job.status,
            reason: job.reason.unwrap_or_default(),
        }),
    }
}

/// Commits round `state.next_round - 1` with its audit events: the only way a round's result
/// becomes part of the job.
fn commit(
    store: &Store,
    job_id: &str,
    state: &JobState,
    mut event: serde_json::Value,
) -> Result<(), JobError> {
    let round = state.next_round - 1;
    let model_hash = f64s_sha256(&state.model.params);
    event["job"] = json!(job_id);
    event["round"] = json!(round);
    event["model_sha256"] = json!(model_hash);
    let checkpoint = Checkpoint {
        round,
        model_len: state.model.params.len(),
        model_sha256: model_hash,
        feature_mean: state.standardizer.mean.clone(),
        feature_std: state.standardizer.std.clone(),
        training_rows: state.training_rows,
        ledger: state.ledger.clone(),
        records: state.records.clone(),
    };
    store.commit_round(
        job_id,
        &checkpoint,
        &state.model.params,
        &state.optimizer.state(),
        vec![("round_committed", event)],
    )?;
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
    let resumed = register(&hub, &spec, &settings)?;
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
            &done.output,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_reasons_are_bounded_and_printable() {
        assert_eq!(bounded_reason("ε above the cap"), "ε above the cap");
        assert_eq!(bounded_reason("a\x1b[2Jb\nc"), "a [2Jb c");
        let long = "x".repeat(10 * MAX_REASON_CHARS);
        let cut = bounded_reason(&long);
        assert_eq!(cut.chars().count(), MAX_REASON_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

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
