//! The partner's own privacy ledger: what differentially private jobs have spent of its
//! records' privacy, per purpose across jobs, and per job against the plan it accepted.
//!
//! The partner does not take the coordinator's word for it. It computes each job's plan from
//! the spec itself and keeps, per job, the plan (training rounds × mechanism steps a round),
//! the training rounds it has been charged for and what they spent. A round is charged — and
//! the charge fsynced — *before* its update leaves, and refused when it is
//!
//! * outside the plan: a round number of 0 or above the spec's `rounds`, or one more round
//!   than planned;
//! * past the job's own ε: this job's charges would pass the budget the spec states;
//! * past the partner's cap: the purpose's total across jobs would pass the lower of the
//!   config's and the policy's `max_epsilon`.
//!
//! **Once per round, ever.** A partner contributes at most one noised update to a training
//! round of a job ([`Ledger::prepare`] says [`Prepared::AlreadyCharged`] the second time): a
//! retried attempt or a re-run after a coordinator restart gets the *same* update again
//! ([`Ledger::save_replay`], [`Ledger::replay`]) — re-sending a released value spends nothing
//! more — or, where re-sending is not safe (distributed noise, see the node) or the update is
//! gone, the partner sits the round out. A fresh update for a round already charged would be
//! a second release and is never sent. So the job's charges never pass its plan, and a re-offer
//! of a job the partner has already served is checked against what is *left* of its plan
//! ([`Ledger::check_offer`]), not the whole plan again: a coordinator crash never makes a
//! capped job impossible to finish.
//!
//! **Parallel composition.** A job's training rounds release what its training rows give, a
//! `record` job's final evaluation what its holdout rows give; each record's side is decided
//! by the record alone, so the job's own ε is the larger side's ([`JobSpend`]). Across jobs a
//! record can be on either side (another job declares other columns), so the purpose's total
//! is the sum over jobs of each job's [`JobSpend::envelope`] (the pointwise maximum of the two
//! sides' RDP curves), or — where that is larger — every release composed one after the
//! other (which the PLD accountant can bound): the purpose's ε is the smaller of the two —
//! or, while one job is all a purpose has spent, that job's own ε, which is exactly its total.
//!
//! The ledger is a JSON file (by default in the node's data directory, see
//! [`crate::config::ClientConfig::ledger_path`]) written to a temporary file that is fsynced,
//! renamed over the old one, and the folder fsynced: a crash leaves the old ledger or the
//! new one, never half of one, and a charge that returned is on disk. Files of the first
//! format (a map of purpose to spent RDP) still load; they have no per-job records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use fedmark_core::accountant::{Accountant, AccountantError};
use fedmark_core::aggregate::VectorLayout;
use fedmark_core::budget::{JobSpend, PrivacyPlan};
use fedmark_core::spec::JobSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::PartnerPolicy;

/// The ledger file's format version (3: per-job holdout spend and per-purpose parallel
/// totals; 2 still loads).
const VERSION: u32 = 3;

/// Relative slack on the job's own ε, so that rounds composed one by one are not refused for
/// a rounding error against a plan calibrated to fit exactly.
const JOB_EPSILON_SLACK: f64 = 1e-9;

/// Why the ledger refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The ledger file could not be read or written.
    #[error("privacy ledger {path}: {reason}")]
    Io {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The charge would pass the partner's cap.
    #[error(
        "privacy budget for purpose `{purpose}`: spent epsilon {spent:.4}, this would bring it to {after:.4}, above this partner's cap of {cap}"
    )]
    OverCap {
        /// Purpose.
        purpose: String,
        /// ε spent so far.
        spent: f64,
        /// ε after the charge.
        after: f64,
        /// The cap.
        cap: f64,
    },
    /// The charge would pass the job's own budget.
    #[error(
        "this job has spent epsilon {spent:.4} of this partner's records; round {round} would bring it to {after:.4}, above the job's budget of {budget}"
    )]
    OverJobBudget {
        /// The training round asked for.
        round: u64,
        /// ε this job has spent.
        spent: f64,
        /// ε after the charge.
        after: f64,
        /// The job's budget.
        budget: f64,
    },
    /// The round is not in the plan the partner accepted.
    #[error("training round {round} is past the plan this partner accepted: {reason}")]
    PastPlan {
        /// The training round asked for.
        round: u64,
        /// How it is outside the plan.
        reason: String,
    },
    /// The job id names a job with another spec.
    #[error(
        "this partner's ledger holds job `{job_id}` with another spec; a job id is never reused"
    )]
    SpecMismatch {
        /// The job id.
        job_id: String,
    },
    /// Accounting failed.
    #[error(transparent)]
    Accounting(#[from] AccountantError),
}

/// One job as the partner accepted it, and what it has spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The job's purpose.
    pub purpose: String,
    /// SHA-256 of the spec text the partner accepted: a job id is bound to one spec.
    pub spec_sha256: String,
    /// Training rounds in the plan (the spec's `rounds`).
    pub planned_rounds: u64,
    /// Mechanism applications per round (the plan's steps per round).
    pub steps_per_round: u64,
    /// The job's own ε budget.
    pub epsilon: f64,
    /// δ of the budget.
    pub delta: f64,
    /// The training rounds this partner has been charged for (each at most once), and the
    /// final evaluation as round `planned_rounds + 1`.
    pub charged_rounds: BTreeSet<u64>,
    /// What this job's training rounds spent (in a record written before parallel
    /// composition, format 2: everything the job spent).
    pub spent: Accountant,
    /// What this job's release of holdout statistics spent.
    #[serde(default, skip_serializing_if = "Accountant::is_empty")]
    pub holdout: Accountant,
}

impl JobRecord {
    /// What the job spent, by side.
    pub fn spend(&self) -> JobSpend {
        JobSpend {
            training: self.spent.clone(),
            holdout: self.holdout.clone(),
        }
    }
}

/// The file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    /// Spent privacy per purpose, across jobs: every release composed one after the other.
    purposes: BTreeMap<String, Accountant>,
    /// Per purpose, the sum over its jobs of each job's parallel envelope (RDP alone). A
    /// purpose loaded from an older file starts from its sequential total.
    #[serde(default)]
    parallel: BTreeMap<String, Accountant>,
    /// Purposes whose totals include charges from before per-job sides were kept (files of
    /// format 1 and 2): their ε is never taken from a single job's.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    legacy: BTreeSet<String>,
    /// Per job id.
    #[serde(default)]
    jobs: BTreeMap<String, JobRecord>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: VERSION,
            purposes: BTreeMap::new(),
            parallel: BTreeMap::new(),
            legacy: BTreeSet::new(),
            jobs: BTreeMap::new(),
        }
    }
}

/// A job as offered, with the partner's own plan and cap for it.
#[derive(Debug, Clone, Copy)]
pub struct JobTerms<'a> {
    /// The coordinator's job id.
    pub job_id: &'a str,
    /// SHA-256 (hex) of the offered spec text.
    pub spec_sha256: &'a str,
    /// The job's purpose.
    pub purpose: &'a str,
    /// The plan the partner computed from the spec.
    pub plan: &'a PrivacyPlan,
    /// Training rounds in the spec.
    pub planned_rounds: u64,
    /// The partner's cap for the purpose (the lower of config and policy), if any.
    pub cap: Option<f64>,
}

/// What the ledger says of an offer it accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OfferCheck {
    /// Training rounds of the plan this partner has not yet been charged for.
    pub remaining_rounds: u64,
    /// The purpose's ε if all of them run (within the job's budget).
    pub projected_epsilon: f64,
}

/// Whether a training round is still to be charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// A new round within the plan and the caps: [`Ledger::charge`] it before sending.
    Fresh,
    /// This partner was already charged for this round of the job: it may only re-send the
    /// update it sent then, never a new one.
    AlreadyCharged,
}

/// The update a partner sent for a round, kept so that a re-run of the round gets the same
/// one.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The training round.
    pub round: u64,
    /// The layout the words were encoded with.
    pub layout: VectorLayout,
    /// The encoded words before masking.
    pub words: Vec<u32>,
}

/// Spent privacy per purpose and per job, backed by a file unless explicitly in memory.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    state: State,
    /// In-memory replays (a ledger without a file).
    replays: HashMap<String, Replay>,
}

#[cfg(test)]
static SYNCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn io_error(path: &Path, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `bytes` to `path` durably ([`fedmark_proto::durable::replace`]), creating its
/// folder first.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    fedmark_proto::durable::replace(path, bytes)?;
    #[cfg(test)]
    SYNCS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// `acc` with the plan's release of holdout statistics composed onto it, if `pending`.
fn with_evaluation(
    mut acc: Accountant,
    plan: &PrivacyPlan,
    pending: bool,
) -> Result<Accountant, LedgerError> {
    if pending {
        plan.charge_evaluation(&mut acc)?;
    }
    Ok(acc)
}

/// A job's spend after `n` more training rounds of `plan`, and its holdout release if
/// `evaluation_pending`.
fn projected(
    spend: &JobSpend,
    plan: &PrivacyPlan,
    n: u64,
    evaluation_pending: bool,
) -> Result<JobSpend, LedgerError> {
    Ok(JobSpend {
        training: with_rounds(&spend.training, plan, n)?,
        holdout: with_evaluation(spend.holdout.clone(), plan, evaluation_pending)?,
    })
}

/// `n` rounds of `plan` composed onto `acc`.
fn with_rounds(acc: &Accountant, plan: &PrivacyPlan, n: u64) -> Result<Accountant, LedgerError> {
    let mut acc = acc.clone();
    if n > 0 {
        if plan.steps_per_round.checked_mul(n).is_none() {
            return Err(LedgerError::PastPlan {
                round: n,
                reason: "the plan's steps overflow".into(),
            });
        }
        plan.charge_rounds(&mut acc, n)?;
    }
    Ok(acc)
}

/// A purpose's ε from its (sequential, parallel) totals: the smaller of the sequential
/// ledger's tightest bound and the parallel total's RDP bound — and, when one job is all the
/// purpose ever spent (`only_job`), that job's own ε, which is exactly its total.
fn purpose_epsilon(
    spent: &(Accountant, Accountant),
    only_job: Option<&JobSpend>,
    delta: f64,
) -> Result<f64, LedgerError> {
    let sequential = spent.0.epsilon(delta)?.0;
    let parallel = spent.1.epsilon_rdp(delta)?.0;
    let mut eps = sequential.min(parallel);
    if let Some(job) = only_job {
        eps = eps.min(job.epsilon(delta)?.0);
    }
    Ok(eps)
}

/// `spent` with a job's growth from `before` to `after` charged: `charge` composed onto the
/// sequential total, the growth of the job's envelope onto the parallel one.
fn purpose_after(
    spent: &(Accountant, Accountant),
    before: &JobSpend,
    after: &JobSpend,
    charge: impl Fn(&Accountant) -> Result<Accountant, LedgerError>,
) -> Result<(Accountant, Accountant), LedgerError> {
    let sequential = charge(&spent.0)?;
    let mut parallel = spent.1.clone();
    parallel.compose_growth(&before.envelope()?, &after.envelope()?)?;
    Ok((sequential, parallel))
}

/// The lower of two optional caps.
pub fn lower_cap(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The partner's cap for `purpose`: the lower of its config's `max_epsilon` and its policy's
/// for the purpose, if either is set.
pub fn partner_cap(
    config_cap: Option<f64>,
    policy: Option<&PartnerPolicy>,
    purpose: &str,
) -> Option<f64> {
    let policy_cap = policy
        .and_then(|p| p.purposes.get(purpose))
        .and_then(|p| p.max_epsilon);
    lower_cap(config_cap, policy_cap)
}

/// The digest that binds a job id to its spec in the ledger: SHA-256 of the spec's canonical
/// TOML (the same for the same spec however the coordinator formatted it).
pub fn spec_digest(spec: &JobSpec) -> String {
    let text = spec.to_toml().unwrap_or_else(|_| format!("{spec:?}"));
    fedmark_core::audit::sha256_hex(text.as_bytes())
}

/// What a training round's update does, as the ledger decides it.
#[derive(Debug, Clone, PartialEq)]
pub enum Contribution {
    /// A new round: charged (and fsynced); the purpose's ε after it.
    Charged(f64),
    /// A round this partner already contributed to: send these words (the update it sent
    /// then, re-encoded if the round's layout changed) instead of the new ones; nothing is
    /// charged, nothing new is released.
    Replayed(Vec<u32>),
}

/// Decides a training round's contribution before anything leaves: refuses it (`Err` is
/// the reason, for the audit file) when it is outside the plan or the caps, or when it is a
/// round already contributed to whose update cannot be re-sent as it was (`replayable` is
/// false for distributed noise, where re-sending one partner's noise share while the others'
/// differ could isolate it); otherwise charges a new round — keeping its words first when
/// `replayable` — or hands back the words sent before.
pub fn contribute<R: rand::Rng + ?Sized>(
    ledger: &mut Ledger,
    terms: &JobTerms<'_>,
    round: u64,
    layout: &VectorLayout,
    words: &[u32],
    replayable: bool,
    rng: &mut R,
) -> Result<Contribution, String> {
    match ledger.prepare(terms, round).map_err(|e| e.to_string())? {
        Prepared::AlreadyCharged => {
            let already =
                format!("this partner already contributed to training round {round} of this job");
            if !replayable {
                return Err(format!(
                    "{already}; under distributed noise it sends no second update"
                ));
            }
            let Some(replay) = ledger.replay(terms.job_id, round) else {
                return Err(format!(
                    "{already} and no longer keeps that update; a new one would be a second release"
                ));
            };
            if replay.layout == *layout {
                return Ok(Contribution::Replayed(replay.words));
            }
            // Another cohort size gives another fixed-point scale: the same values, encoded
            // anew (fresh rounding of released values releases nothing new).
            let sum = replay.layout.decode(&replay.words);
            if sum.update.len() != layout.update_len || sum.stats.len() != layout.stats_len {
                return Err(format!(
                    "{already}; this re-run asks for a vector of another shape"
                ));
            }
            Ok(Contribution::Replayed(layout.encode(
                &sum.update,
                &sum.stats,
                rng,
            )))
        }
        Prepared::Fresh => {
            if replayable {
                ledger
                    .save_replay(
                        terms.job_id,
                        Replay {
                            round,
                            layout: *layout,
                            words: words.to_vec(),
                        },
                    )
                    .map_err(|e| e.to_string())?;
            }
            ledger
                .charge(terms, round)
                .map(Contribution::Charged)
                .map_err(|e| e.to_string())
        }
    }
}

/// Test-only crash point (`FEDMARK_TEST_PAUSE_AFTER_CHARGE=ROUND`): after training round
/// `round` is charged and before its update is handed to the upload, print a marker to
/// stderr and say how long to hold, so that a test can kill the node exactly there.
pub fn pause_after_charge(round: u64) -> Option<std::time::Duration> {
    let at: u64 = std::env::var("FEDMARK_TEST_PAUSE_AFTER_CHARGE")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if at != round {
        return None;
    }
    eprintln!("FEDMARK_CLIENT_PAUSED after charging round {round}");
    Some(std::time::Duration::from_secs(300))
}

impl Ledger {
    /// Opens the ledger file at `path` (an absent file is an empty ledger), or, with `None`,
    /// a ledger in memory that forgets everything when dropped (tests only: ask for it
    /// explicitly with `ledger_in_memory`).
    pub fn open(path: Option<&Path>) -> Result<Self, LedgerError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let state = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|reason| LedgerError::Io {
                path: path.display().to_string(),
                reason: format!("not a valid ledger: {reason}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_error(path, e)),
        };
        Ok(Self {
            path: Some(path.to_owned()),
            state,
            replays: HashMap::new(),
        })
    }

    /// The file behind the ledger, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn parse(text: &str) -> Result<State, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if value
            .get("version")
            .is_some_and(serde_json::Value::is_number)
        {
            let mut state: State = serde_json::from_value(value).map_err(|e| e.to_string())?;
            if !(2..=VERSION).contains(&state.version) {
                return Err(format!(
                    "format version {} is not one this node reads (2 to {VERSION})",
                    state.version
                ));
            }
            if state.version < 3 {
                state.legacy.extend(state.purposes.keys().cloned());
            }
            state.version = VERSION;
            return Ok(Self::with_parallel_totals(state));
        }
        // The first format: purpose → spent RDP, no per-job records.
        let purposes: BTreeMap<String, Accountant> =
            serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(Self::with_parallel_totals(State {
            legacy: purposes.keys().cloned().collect(),
            purposes,
            ..State::default()
        }))
    }

    /// Gives every purpose without a parallel total its sequential one: an upper bound on
    /// the sum of its jobs' envelopes, so an older file never under-reports.
    fn with_parallel_totals(mut state: State) -> State {
        for (purpose, acc) in &state.purposes {
            state
                .parallel
                .entry(purpose.clone())
                .or_insert_with(|| acc.clone());
        }
        state
    }

    /// ε spent for `purpose` at `delta`, across jobs: the smaller of the sequential and the
    /// parallel bound, or the one job's own ε while it is all the purpose spent (see the
    /// module doc).
    pub fn spent(&self, purpose: &str, delta: f64) -> Result<f64, LedgerError> {
        if !self.state.purposes.contains_key(purpose) {
            return Ok(0.0);
        }
        let only = self.only_job(purpose).map(JobRecord::spend);
        purpose_epsilon(&self.purpose_spent(purpose), only.as_ref(), delta)
    }

    /// The one job of `purpose`, if it is all the purpose ever spent.
    fn only_job(&self, purpose: &str) -> Option<&JobRecord> {
        if self.state.legacy.contains(purpose) {
            return None;
        }
        let mut jobs = self.state.jobs.values().filter(|j| j.purpose == purpose);
        match (jobs.next(), jobs.next()) {
            (Some(job), None) => Some(job),
            _ => None,
        }
    }

    /// Whether `job_id` would be the only job `purpose` ever spent on.
    fn is_only_job(&self, purpose: &str, job_id: &str) -> bool {
        if self.state.legacy.contains(purpose) {
            return false;
        }
        self.state
            .jobs
            .iter()
            .all(|(id, j)| j.purpose != purpose || id == job_id)
    }

    /// What `purpose` has spent across jobs, (sequential, parallel) (empty ledgers if
    /// nothing yet).
    fn purpose_spent(&self, purpose: &str) -> (Accountant, Accountant) {
        let get =
            |map: &BTreeMap<String, Accountant>| map.get(purpose).cloned().unwrap_or_default();
        (get(&self.state.purposes), get(&self.state.parallel))
    }

    /// The record of job `job_id`, if this partner has been charged for it.
    pub fn job(&self, job_id: &str) -> Option<&JobRecord> {
        self.state.jobs.get(job_id)
    }

    /// The job's record, checked against the offered spec.
    fn job_for(&self, terms: &JobTerms<'_>) -> Result<Option<&JobRecord>, LedgerError> {
        match self.state.jobs.get(terms.job_id) {
            Some(job) if job.spec_sha256 != terms.spec_sha256 || job.purpose != terms.purpose => {
                Err(LedgerError::SpecMismatch {
                    job_id: terms.job_id.to_owned(),
                })
            }
            other => Ok(other),
        }
    }

    /// How many of `remaining` further rounds fit the job's own budget after `spent`, with
    /// the release of holdout statistics still to come if `evaluation_pending`.
    fn rounds_within_budget(
        spent: &JobSpend,
        plan: &PrivacyPlan,
        remaining: u64,
        evaluation_pending: bool,
    ) -> Result<u64, LedgerError> {
        let fits = |n: u64| -> Result<bool, LedgerError> {
            let eps = projected(spent, plan, n, evaluation_pending)?
                .epsilon(plan.delta)?
                .0;
            Ok(eps <= plan.epsilon * (1.0 + JOB_EPSILON_SLACK))
        };
        if fits(remaining)? {
            return Ok(remaining);
        }
        // ε grows with the rounds: the largest n with fits(n), by bisection.
        let (mut lo, mut hi) = (0u64, remaining);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Checks an offer: the rounds of the plan this partner has not yet been charged for
    /// (as many of them as fit the job's own budget) must fit the cap on top of what the
    /// purpose has spent. A job offered again after it ran in part is charged only what is
    /// left of it.
    pub fn check_offer(&self, terms: &JobTerms<'_>) -> Result<OfferCheck, LedgerError> {
        let job = self.job_for(terms)?;
        let evaluation_round = terms.planned_rounds + 1;
        let (done, job_spent, evaluated) = match job {
            Some(j) => (
                j.charged_rounds.range(..evaluation_round).count() as u64,
                j.spend(),
                j.charged_rounds.contains(&evaluation_round),
            ),
            None => (0, JobSpend::default(), false),
        };
        let pending = terms.plan.evaluation_noise.is_some() && !evaluated;
        let remaining = terms.planned_rounds.saturating_sub(done);
        let runnable = Self::rounds_within_budget(&job_spent, terms.plan, remaining, pending)?;
        let job_after = projected(&job_spent, terms.plan, runnable, pending)?;
        let purpose = purpose_after(
            &self.purpose_spent(terms.purpose),
            &job_spent,
            &job_after,
            |acc| with_evaluation(with_rounds(acc, terms.plan, runnable)?, terms.plan, pending),
        )?;
        let only = self
            .is_only_job(terms.purpose, terms.job_id)
            .then_some(&job_after);
        let projected = purpose_epsilon(&purpose, only, terms.plan.delta)?;
        if let Some(cap) = terms.cap
            && projected > cap
        {
            return Err(LedgerError::OverCap {
                purpose: terms.purpose.to_owned(),
                spent: self.spent(terms.purpose, terms.plan.delta)?,
                after: projected,
                cap,
            });
        }
        Ok(OfferCheck {
            remaining_rounds: remaining,
            projected_epsilon: projected,
        })
    }

    /// Whether training round `round` may be charged (without charging it): `Fresh` if it is
    /// new and fits the plan, the job's budget and the cap; `AlreadyCharged` if this partner
    /// was charged for it before; an error naming the reason otherwise.
    pub fn prepare(&self, terms: &JobTerms<'_>, round: u64) -> Result<Prepared, LedgerError> {
        self.next_state(terms, round).map(|next| match next {
            Some(_) => Prepared::Fresh,
            None => Prepared::AlreadyCharged,
        })
    }

    /// The state after charging `round`, or `None` if it was charged before.
    fn next_state(&self, terms: &JobTerms<'_>, round: u64) -> Result<Option<State>, LedgerError> {
        let planned = terms.planned_rounds;
        // A `record` job's final evaluation (round planned + 1) releases noised holdout
        // statistics once: charged like a round, with the plan's evaluation noise.
        let evaluation = round == planned + 1 && terms.plan.evaluation_noise.is_some();
        if round == 0 || (round > planned && !evaluation) {
            return Err(LedgerError::PastPlan {
                round,
                reason: format!("the job plans training rounds 1 to {planned}"),
            });
        }
        let job = match self.job_for(terms)? {
            Some(job) => job.clone(),
            None => JobRecord {
                purpose: terms.purpose.to_owned(),
                spec_sha256: terms.spec_sha256.to_owned(),
                planned_rounds: planned,
                steps_per_round: terms.plan.steps_per_round,
                epsilon: terms.plan.epsilon,
                delta: terms.plan.delta,
                charged_rounds: BTreeSet::new(),
                spent: Accountant::new(),
                holdout: Accountant::new(),
            },
        };
        if job.charged_rounds.contains(&round) {
            return Ok(None);
        }
        if !evaluation && job.charged_rounds.range(..=planned).count() as u64 >= planned {
            return Err(LedgerError::PastPlan {
                round,
                reason: format!("all {planned} planned rounds were charged"),
            });
        }
        let charge = |acc: &Accountant| -> Result<Accountant, LedgerError> {
            if evaluation {
                with_evaluation(acc.clone(), terms.plan, true)
            } else {
                with_rounds(acc, terms.plan, 1)
            }
        };
        let before = job.spend();
        let job_after = projected(&before, terms.plan, u64::from(!evaluation), evaluation)?;
        let after = job_after.epsilon(terms.plan.delta)?.0;
        if after > terms.plan.epsilon * (1.0 + JOB_EPSILON_SLACK) {
            return Err(LedgerError::OverJobBudget {
                round,
                spent: before.epsilon(terms.plan.delta)?.0,
                after,
                budget: terms.plan.epsilon,
            });
        }
        let purpose = self.purpose_spent(terms.purpose);
        let purpose_next = purpose_after(&purpose, &before, &job_after, charge)?;
        if let Some(cap) = terms.cap {
            let only = self
                .is_only_job(terms.purpose, terms.job_id)
                .then_some(&job_after);
            let after = purpose_epsilon(&purpose_next, only, terms.plan.delta)?;
            if after > cap {
                return Err(LedgerError::OverCap {
                    purpose: terms.purpose.to_owned(),
                    spent: self.spent(terms.purpose, terms.plan.delta)?,
                    after,
                    cap,
                });
            }
        }
        let mut next = self.state.clone();
        let (sequential, parallel) = purpose_next;
        next.purposes.insert(terms.purpose.to_owned(), sequential);
        next.parallel.insert(terms.purpose.to_owned(), parallel);
        let mut job = job;
        job.charged_rounds.insert(round);
        job.spent = job_after.training;
        job.holdout = job_after.holdout;
        next.jobs.insert(terms.job_id.to_owned(), job);
        Ok(Some(next))
    }

    /// Charges training round `round` of a job and persists the charge (fsynced) before it
    /// returns; returns the purpose's ε after it. A round this partner was already charged
    /// for, a round outside the plan, or one past the job's budget or the cap is refused and
    /// spends nothing; so does a charge that cannot be written.
    pub fn charge(&mut self, terms: &JobTerms<'_>, round: u64) -> Result<f64, LedgerError> {
        let Some(next) = self.next_state(terms, round)? else {
            return Err(LedgerError::PastPlan {
                round,
                reason: "this partner already contributed to this round of the job".into(),
            });
        };
        self.save(&next)?;
        self.state = next;
        self.spent(terms.purpose, terms.plan.delta)
    }

    fn save(&self, state: &State) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(state).map_err(|e| io_error(path, e))?;
        write_durably(path, text.as_bytes()).map_err(|e| io_error(path, e))
    }

    /// Where the replay of job `job_id` is kept: beside the ledger, one file per job named by
    /// the hash of its id (the id is the coordinator's word, never a path).
    fn replay_path(&self, job_id: &str) -> Option<PathBuf> {
        let path = self.path.as_ref()?;
        let mut dir = path.as_os_str().to_owned();
        dir.push(".replay");
        let name = hex::encode(&Sha256::digest(job_id.as_bytes())[..16]);
        Some(PathBuf::from(dir).join(format!("{name}.bin")))
    }

    /// Keeps the update sent for `round` of `job_id` (fsynced), replacing the job's previous
    /// one: only the latest round can be re-run (a coordinator resumes after its last
    /// committed round), an older one sits out.
    pub fn save_replay(&mut self, job_id: &str, replay: Replay) -> Result<(), LedgerError> {
        let Some(path) = self.replay_path(job_id) else {
            self.replays.insert(job_id.to_owned(), replay);
            return Ok(());
        };
        let header = serde_json::json!({
            "job_sha256": fedmark_core::audit::sha256_hex(job_id.as_bytes()),
            "round": replay.round,
            "layout": replay.layout,
            "words": replay.words.len(),
            "words_sha256": fedmark_core::audit::u32s_sha256(&replay.words),
        })
        .to_string();
        let mut bytes = Vec::with_capacity(header.len() + 1 + replay.words.len() * 4);
        bytes.extend_from_slice(header.as_bytes());
        bytes.push(b'\n');
        for w in &replay.words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        write_durably(&path, &bytes).map_err(|e| io_error(&path, e))
    }

    /// The update sent for `round` of `job_id`, if it is the one kept and intact.
    pub fn replay(&self, job_id: &str, round: u64) -> Option<Replay> {
        let Some(path) = self.replay_path(job_id) else {
            return self
                .replays
                .get(job_id)
                .filter(|r| r.round == round)
                .cloned();
        };
        let bytes = std::fs::read(&path).ok()?;
        let split = bytes.iter().position(|&b| b == b'\n')?;
        let header: serde_json::Value = serde_json::from_slice(&bytes[..split]).ok()?;
        let body = &bytes[split + 1..];
        if header["job_sha256"] != fedmark_core::audit::sha256_hex(job_id.as_bytes())
            || header["round"].as_u64() != Some(round)
            || !body.len().is_multiple_of(4)
            || header["words"].as_u64() != Some((body.len() / 4) as u64)
        {
            return None;
        }
        let layout: VectorLayout = serde_json::from_value(header["layout"].clone()).ok()?;
        let words: Vec<u32> = body
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if header["words_sha256"] != fedmark_core::audit::u32s_sha256(&words) {
            return None;
        }
        Some(Replay {
            round,
            layout,
            words,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmark_core::spec::PrivacyMode;

    fn plan() -> PrivacyPlan {
        PrivacyPlan {
            mode: PrivacyMode::Record,
            noise_multiplier: 1.4,
            clip: 1.0,
            sampling_rate: 0.01,
            steps_per_round: 100,
            epsilon: 1.0,
            delta: 1e-5,
            evaluation_noise: None,
            accountant: fedmark_core::accountant::Method::Pld,
            adaptive: None,
        }
    }

    fn terms<'a>(job_id: &'a str, plan: &'a PrivacyPlan, rounds: u64) -> JobTerms<'a> {
        JobTerms {
            job_id,
            spec_sha256: "spec",
            purpose: "campaign_response",
            plan,
            planned_rounds: rounds,
            cap: None,
        }
    }

    #[test]
    fn charges_persist_across_openings_and_the_cap_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::open(Some(&path)).unwrap();
        // σ = 1.4, q = 0.01: 900 steps spend ε ≈ 0.962, 1000 steps ≈ 1.016 (see the
        // `privacy epsilon` command, PLD accountant) — 9 rounds fit a cap of 1, the 10th
        // does not.
        let mut p = plan();
        p.epsilon = 100.0; // the job's own budget is not what this test is about
        let t = JobTerms {
            cap: Some(1.0),
            ..terms("job-a", &p, 20)
        };
        let before = SYNCS.load(std::sync::atomic::Ordering::SeqCst);
        for round in 1..=9 {
            ledger.charge(&t, round).unwrap();
        }
        assert!(
            SYNCS.load(std::sync::atomic::Ordering::SeqCst) >= before + 9,
            "every charge went through the fsynced write"
        );
        assert!(
            !dir.path().join(".ledger.json.tmp").exists(),
            "the temporary file was renamed"
        );
        let mut reopened = Ledger::open(Some(&path)).unwrap();
        let spent = reopened.spent("campaign_response", 1e-5).unwrap();
        assert!(spent > 0.9 && spent < 1.0, "{spent}");
        assert_eq!(
            reopened.spent("churn", 1e-5).unwrap(),
            0.0,
            "purposes are separate"
        );
        let job = reopened.job("job-a").unwrap();
        assert_eq!(job.charged_rounds, (1..=9).collect());
        assert_eq!(job.planned_rounds, 20);
        let err = reopened.charge(&t, 10).unwrap_err();
        assert!(
            err.to_string().contains("above this partner's cap of 1"),
            "{err}"
        );
        assert_eq!(
            reopened.spent("campaign_response", 1e-5).unwrap(),
            spent,
            "a refused charge spends nothing"
        );
        let churn = JobTerms {
            purpose: "churn",
            ..terms("job-c", &p, 9)
        };
        let capped = |cap| JobTerms {
            cap: Some(cap),
            ..churn
        };
        assert!(reopened.check_offer(&capped(1.0)).is_ok());
        let ten = JobTerms {
            planned_rounds: 10,
            ..capped(1.0)
        };
        assert!(reopened.check_offer(&ten).is_err());
    }

    /// A `record` job's final evaluation (round rounds + 1) is one more charge, of the
    /// plan's evaluation noise, once; a plan without one has no such round, and nothing
    /// past it is charged. The charge is recomputed here from the Gaussian's RDP.
    #[test]
    fn the_final_evaluation_is_charged_once_and_only_when_planned() {
        let mut ledger = Ledger::open(None).unwrap();
        let mut p = plan();
        p.epsilon = 100.0;
        let without = terms("job-a", &p, 3);
        assert!(matches!(
            ledger.prepare(&without, 4),
            Err(LedgerError::PastPlan { round: 4, .. })
        ));
        p.evaluation_noise = Some(8.0);
        let t = terms("job-b", &p, 3);
        for round in 1..=3 {
            ledger.charge(&t, round).unwrap();
        }
        let before = ledger.job("job-b").unwrap().spent.clone();
        assert!(ledger.job("job-b").unwrap().holdout.is_empty());
        ledger.charge(&t, 4).unwrap();
        assert_eq!(ledger.prepare(&t, 4).unwrap(), Prepared::AlreadyCharged);
        assert!(matches!(
            ledger.prepare(&t, 5),
            Err(LedgerError::PastPlan { round: 5, .. })
        ));
        // The evaluation is charged to the holdout side; training's spend is untouched.
        let job = ledger.job("job-b").unwrap();
        assert_eq!(job.spent, before);
        for (order, h) in job.holdout.orders().iter().zip(job.holdout.rdp()) {
            let gaussian = order / (2.0 * 8.0 * 8.0);
            assert!((h - gaussian).abs() < 1e-12, "order {order}");
        }
        // Training rounds are still counted apart from it: no fourth training round.
        let err = ledger.check_offer(&t).unwrap();
        assert_eq!(err.remaining_rounds, 0);
    }

    #[test]
    fn rounds_past_the_plan_or_the_job_budget_are_refused() {
        let mut ledger = Ledger::open(None).unwrap();
        let p = plan(); // the job's budget is ε = 1: 9 rounds fit, 10 do not
        let t = terms("job-a", &p, 12);
        for round in [0, 13, 200] {
            let err = ledger.charge(&t, round).unwrap_err();
            assert!(
                matches!(err, LedgerError::PastPlan { .. }) && err.to_string().contains("1 to 12"),
                "{err}"
            );
        }
        for round in 1..=9 {
            assert_eq!(ledger.prepare(&t, round).unwrap(), Prepared::Fresh);
            ledger.charge(&t, round).unwrap();
        }
        let err = ledger.charge(&t, 10).unwrap_err();
        assert!(
            err.to_string().contains("above the job's budget of 1"),
            "{err}"
        );
        // A round already charged is never charged (nor sent fresh) again.
        assert_eq!(ledger.prepare(&t, 4).unwrap(), Prepared::AlreadyCharged);
        assert!(ledger.charge(&t, 4).is_err());
        let job = ledger.job("job-a").unwrap();
        assert_eq!(job.charged_rounds.len(), 9);
        assert!(job.spent.epsilon(1e-5).unwrap().0 <= 1.0);
        // Another spec under the same job id is refused.
        let other = JobTerms {
            spec_sha256: "another",
            ..t
        };
        assert!(matches!(
            ledger.check_offer(&other),
            Err(LedgerError::SpecMismatch { .. })
        ));
        assert!(ledger.prepare(&other, 10).is_err());
    }

    #[test]
    fn a_plan_never_passes_its_rounds() {
        let mut ledger = Ledger::open(None).unwrap();
        let mut p = plan();
        p.epsilon = 100.0;
        let t = terms("job-a", &p, 3);
        for round in 1..=3 {
            ledger.charge(&t, round).unwrap();
        }
        for round in 4..8 {
            assert!(matches!(
                ledger.prepare(&t, round),
                Err(LedgerError::PastPlan { .. })
            ));
        }
        assert_eq!(ledger.job("job-a").unwrap().charged_rounds.len(), 3);
    }

    #[test]
    fn a_re_offer_counts_only_what_is_left_of_the_plan() {
        // The case: a job calibrated to ε = 6, cap 7, stopped after 6 of its rounds.
        let rounds = 12;
        let mut p = plan();
        p.epsilon = 6.0;
        p.noise_multiplier = fedmark_core::accountant::calibrate_noise_multiplier(
            6.0,
            p.delta,
            p.sampling_rate,
            p.steps_per_round * rounds,
        )
        .unwrap();
        let mut ledger = Ledger::open(None).unwrap();
        let t = JobTerms {
            cap: Some(7.0),
            ..terms("job-6", &p, rounds)
        };
        let whole = ledger.check_offer(&t).unwrap();
        assert_eq!(whole.remaining_rounds, rounds);
        assert!(
            whole.projected_epsilon <= 6.0 && whole.projected_epsilon > 5.9,
            "{whole:?}"
        );
        for round in 1..=6 {
            ledger.charge(&t, round).unwrap();
        }
        let again = ledger.check_offer(&t).unwrap();
        assert_eq!(again.remaining_rounds, 6);
        assert!(
            (again.projected_epsilon - whole.projected_epsilon).abs() < 1e-9,
            "{again:?} vs {whole:?}"
        );
        // Counting the whole plan again on top of the spent half is what refused before.
        let naive = with_rounds(&ledger.state.purposes["campaign_response"], &p, rounds)
            .unwrap()
            .epsilon(p.delta)
            .unwrap()
            .0;
        assert!(naive > 7.0, "{naive}");
        for round in 7..=rounds {
            ledger.charge(&t, round).unwrap();
        }
        let spent = ledger.spent("campaign_response", p.delta).unwrap();
        assert!(spent <= 6.0 * (1.0 + JOB_EPSILON_SLACK), "{spent}");
        // A new job of the same purpose is checked against the rest of the cap.
        let next = JobTerms {
            spec_sha256: "next",
            ..terms("job-7", &p, rounds)
        };
        let next = JobTerms {
            cap: Some(7.0),
            ..next
        };
        assert!(ledger.check_offer(&next).is_err());
    }

    /// The purpose's ε after one job is that job's own; across two `record` jobs with
    /// evaluations it is recomputed here from the
    /// RDP closed forms: the sum over jobs of max(training, holdout) at each order, converted
    /// with `epsilon_from_rdp`; never above the sequential composition of every release, and
    /// each job's own ε the larger side's. A file of format 2 (job records without a holdout
    /// side) loads with its totals as they were.
    #[test]
    fn purposes_compose_each_job_in_parallel_and_jobs_in_sequence() {
        use fedmark_core::accountant::{epsilon_from_rdp, rdp_subsampled_gaussian};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::open(Some(&path)).unwrap();
        let mut p = plan();
        p.epsilon = 100.0;
        p.steps_per_round = 200;
        // An evaluation about as costly as training (z = 3), so that parallel composition
        // matters.
        p.evaluation_noise = Some(3.0);
        let a = terms("job-a", &p, 5);
        let b = terms("job-b", &p, 5);
        for round in 1..=6 {
            ledger.charge(&a, round).unwrap();
        }
        // One job is all the purpose spent: its total is the job's own ε (the larger side's,
        // each by PLD), below both cross-job bounds.
        let only_a = ledger
            .job("job-a")
            .unwrap()
            .spend()
            .epsilon(1e-5)
            .unwrap()
            .0;
        assert_eq!(ledger.spent("campaign_response", 1e-5).unwrap(), only_a);
        assert!(
            only_a
                < ledger.state.purposes["campaign_response"]
                    .epsilon(1e-5)
                    .unwrap()
                    .0
        );
        for round in 1..=6 {
            ledger.charge(&b, round).unwrap();
        }
        let orders = Accountant::new().orders().to_vec();
        let curve = |rounds: f64| -> Vec<f64> {
            orders
                .iter()
                .map(|&o| {
                    let training = rounds * 200.0 * rdp_subsampled_gaussian(0.01, 1.4, o).unwrap();
                    training.max(o / (2.0 * 3.0 * 3.0))
                })
                .collect()
        };
        let total: Vec<f64> = curve(5.0).iter().map(|x| 2.0 * x).collect();
        let (expected, _) = epsilon_from_rdp(&orders, &total, 1e-5).unwrap();
        // dp-accounting 0.6 (RdpAccountant over the same orders, the two curves' maximum
        // summed, `compute_epsilon`) gives 2.028993 for this; its PLD accountant gives
        // 2.449769 for every release composed in sequence.
        assert!((expected - 2.028993).abs() < 1e-4, "{expected}");
        let spent = ledger.spent("campaign_response", 1e-5).unwrap();
        let sequential = ledger.state.purposes["campaign_response"]
            .epsilon(1e-5)
            .unwrap()
            .0;
        assert!((sequential - 2.449769).abs() < 2e-3, "{sequential}");
        assert!(
            spent >= expected && spent <= expected * (1.0 + 1e-9),
            "spent {spent}, parallel {expected}, sequential {sequential}"
        );
        let job = ledger.job("job-a").unwrap();
        let (training, holdout) = job.spend().sides(1e-5).unwrap();
        assert_eq!(
            job.spend().epsilon(1e-5).unwrap().0,
            training.max(holdout.unwrap())
        );

        // Format 2: the same totals, read back as written.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["version"] = 2.into();
        v.as_object_mut().unwrap().remove("parallel");
        for job in v["jobs"].as_object_mut().unwrap().values_mut() {
            job.as_object_mut().unwrap().remove("holdout");
        }
        std::fs::write(&path, v.to_string()).unwrap();
        let old = Ledger::open(Some(&path)).unwrap();
        assert_eq!(old.spent("campaign_response", 1e-5).unwrap(), sequential);
    }

    #[test]
    fn the_first_format_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut acc = Accountant::new();
        plan().charge_round(&mut acc).unwrap();
        let old: BTreeMap<&str, &Accountant> = [("campaign_response", &acc)].into();
        std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
        let mut ledger = Ledger::open(Some(&path)).unwrap();
        let spent = ledger.spent("campaign_response", 1e-5).unwrap();
        assert!(spent > 0.0);
        let mut p = plan();
        p.epsilon = 100.0;
        ledger.charge(&terms("job-a", &p, 5), 1).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 3"), "{text}");
        let reopened = Ledger::open(Some(&path)).unwrap();
        assert!(reopened.spent("campaign_response", 1e-5).unwrap() > spent);
    }

    #[test]
    fn a_corrupt_ledger_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = Ledger::open(Some(&path)).unwrap_err();
        assert!(err.to_string().contains("not a valid ledger"), "{err}");
        std::fs::write(&path, "{\"version\": 9, \"purposes\": {}}").unwrap();
        let err = Ledger::open(Some(&path)).unwrap_err();
        assert!(err.to_string().contains("format version 9"), "{err}");
    }

    #[test]
    fn a_round_is_contributed_once_then_replayed_or_sat_out() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let mut ledger = Ledger::open(Some(&path)).unwrap();
        let p = plan();
        let t = terms("job-a", &p, 5);
        let three = VectorLayout::new(3, 4, 1.0, 2).unwrap();
        let update = [0.5, -0.25, 0.125, 0.0];
        let stats = [7.0, 3.0];
        let words = three.encode(&update, &stats, &mut rng);
        let first = contribute(&mut ledger, &t, 1, &three, &words, true, &mut rng).unwrap();
        assert!(matches!(first, Contribution::Charged(_)), "{first:?}");
        let spent = ledger.spent("campaign_response", 1e-5).unwrap();
        // A restart (the ledger reopened) and a re-run of the round with new words: the old
        // words go out again and nothing is charged.
        let mut ledger = Ledger::open(Some(&path)).unwrap();
        let other = three.encode(&[0.9; 4], &stats, &mut rng);
        let again = contribute(&mut ledger, &t, 1, &three, &other, true, &mut rng).unwrap();
        assert_eq!(again, Contribution::Replayed(words.clone()));
        assert_eq!(ledger.spent("campaign_response", 1e-5).unwrap(), spent);
        // A smaller cohort re-runs it with another scale: the same values, encoded anew.
        let two = VectorLayout::new(2, 4, 1.0, 2).unwrap();
        assert_ne!(two, three);
        let Contribution::Replayed(re) =
            contribute(&mut ledger, &t, 1, &two, &other, true, &mut rng).unwrap()
        else {
            panic!("not replayed");
        };
        let decoded = two.decode(&re);
        for (a, b) in decoded.update.iter().zip(update) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert_eq!(decoded.stats, stats);
        // Under distributed noise a round already contributed to sits out.
        let err = contribute(&mut ledger, &t, 1, &three, &words, false, &mut rng).unwrap_err();
        assert!(
            err.contains("already contributed to training round 1"),
            "{err}"
        );
        // An update no longer kept (an older round) cannot be re-sent: it sits out.
        contribute(&mut ledger, &t, 2, &three, &words, true, &mut rng).unwrap();
        let err = contribute(&mut ledger, &t, 1, &three, &words, true, &mut rng).unwrap_err();
        assert!(err.contains("no longer keeps that update"), "{err}");
        assert_eq!(
            ledger.job("job-a").unwrap().charged_rounds,
            [1, 2].into_iter().collect()
        );
    }

    #[test]
    fn the_partner_cap_is_the_lower_of_config_and_policy() {
        let policy = PartnerPolicy::from_toml(
            "allowed_purposes = [\"a\"]\nallowed_features = [\"x\"]\n[purposes.a]\nmax_epsilon = 3.0\n",
            "policy.toml",
        )
        .unwrap();
        assert_eq!(partner_cap(Some(5.0), Some(&policy), "a"), Some(3.0));
        assert_eq!(partner_cap(Some(2.0), Some(&policy), "a"), Some(2.0));
        assert_eq!(partner_cap(None, Some(&policy), "a"), Some(3.0));
        assert_eq!(partner_cap(None, Some(&policy), "b"), None);
        assert_eq!(partner_cap(Some(4.0), None, "b"), Some(4.0));
    }

    #[test]
    fn replays_are_kept_per_job_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        let layout = VectorLayout::new(3, 4, 1.0, 2).unwrap();
        for mut ledger in [
            Ledger::open(Some(&path)).unwrap(),
            Ledger::open(None).unwrap(),
        ] {
            let replay = Replay {
                round: 2,
                layout,
                words: (0..layout.len() as u32).collect(),
            };
            ledger.save_replay("job/../a", replay.clone()).unwrap();
            assert_eq!(ledger.replay("job/../a", 2), Some(replay.clone()));
            assert_eq!(ledger.replay("job/../a", 3), None, "another round");
            assert_eq!(ledger.replay("job-b", 2), None, "another job");
            let newer = Replay {
                round: 3,
                ..replay.clone()
            };
            ledger.save_replay("job/../a", newer).unwrap();
            assert_eq!(
                ledger.replay("job/../a", 2),
                None,
                "only the latest is kept"
            );
        }
        // A damaged replay is not used.
        let file = std::fs::read_dir(dir.path().join("ledger.json.replay"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(
            Ledger::open(Some(&path)).unwrap().replay("job/../a", 3),
            None
        );
    }
}
