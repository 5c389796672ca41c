//! The live view of the coordinator's jobs, for the admin API's `job watch` and the dashboard.
//!
//! The store is the record; the board is what a watcher reads while jobs run: each job's
//! status, what it is doing now, and its committed rounds. It follows the job task's events
//! ([`BoardFeed`]), which come at the same points the job commits to the store, and every
//! change bumps a version number that watchers wait on, so a watcher never polls. It holds only aggregate figures (the same ones the report
//! holds), never an update or a partner's data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fedmark_core::spec::JobSpec;
use serde::Serialize;
use tokio::sync::watch;

use crate::events::{JobEvent, JobListener};
use crate::report::{FinalMetrics, JobReport, RoundRecord};
use crate::store::{AuditEvent, JobRecord, JobStatus, Store, StoreError};

/// What a watcher sees of one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Name from the spec.
    pub name: String,
    /// Processing purpose from the spec.
    pub purpose: String,
    /// Where the job stands (`queued`, `running`, `finished`, `failed` or `cancelled`).
    pub status: JobStatus,
    /// What the job is doing now (e.g. "waiting for partners", "round 3"), or why it ended.
    pub phase: String,
    /// Training rounds the spec asks for.
    pub planned_rounds: u64,
    /// Committed training rounds, in order.
    pub rounds: Vec<RoundRecord>,
    /// The privacy budget ε (differentially private jobs).
    pub epsilon_budget: Option<f64>,
    /// Final federated metrics (finished jobs).
    #[serde(rename = "final")]
    pub final_metrics: Option<FinalMetrics>,
    /// Who submitted it.
    pub submitted_by: String,
    /// When (Unix milliseconds).
    pub submitted_ms: u64,
    /// The settings that tell runs apart ([`JobSpec::settings`]).
    #[serde(default)]
    pub settings: Vec<(String, String)>,
}

impl JobView {
    /// The view of a stored job (its rounds from the report or the last checkpoint).
    pub fn from_record(store: &Store, job: &JobRecord) -> Result<Self, StoreError> {
        let spec = JobSpec::from_toml(&job.spec_toml).ok();
        let report: Option<JobReport> = job
            .report
            .clone()
            .and_then(|r| serde_json::from_value(r).ok());
        let rounds = match &report {
            Some(r) => r.rounds.clone(),
            None => store
                .checkpoint(&job.id, None)?
                .map(|c| c.checkpoint.records)
                .unwrap_or_default(),
        };
        let phase = match (job.status, &job.reason) {
            (status, Some(reason)) if status.is_ended() => reason.clone(),
            (JobStatus::Queued, _) => "queued".into(),
            (JobStatus::Running, _) => "interrupted; resumes when the coordinator runs it".into(),
            (status, _) => status.as_str().into(),
        };
        Ok(Self {
            id: job.id.clone(),
            name: spec
                .as_ref()
                .map_or_else(String::new, |s| s.job.name.clone()),
            purpose: spec
                .as_ref()
                .map_or_else(String::new, |s| s.job.purpose.clone()),
            status: job.status,
            phase,
            planned_rounds: spec.as_ref().map_or(0, |s| u64::from(s.job.rounds)),
            rounds,
            epsilon_budget: spec.as_ref().and_then(|s| {
                (s.privacy.mode != fedmark_core::spec::PrivacyMode::None)
                    .then_some(s.privacy.epsilon)
            }),
            final_metrics: report.map(|r| r.final_metrics),
            submitted_by: job.submitted_by.clone(),
            submitted_ms: job.submitted_ms,
            settings: spec
                .as_ref()
                .map(|s| {
                    s.settings()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// The live job views, shared by the job task, the admin API and the dashboard.
#[derive(Debug, Clone)]
pub struct Board {
    jobs: Arc<Mutex<BTreeMap<String, JobView>>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            jobs: Arc::default(),
            version: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Board {
    /// A board holding every job the store holds.
    pub fn from_store(store: &Store) -> Result<Self, StoreError> {
        let board = Board::default();
        for job in store.jobs()? {
            board.put(JobView::from_record(store, &job)?);
        }
        Ok(board)
    }

    /// Adds or replaces a job's view.
    pub fn put(&self, view: JobView) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(view.id.clone(), view);
        }
        self.bump();
    }

    /// Changes a job's view, if the board holds it.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut JobView)) {
        let changed = match self.jobs.lock() {
            Ok(mut jobs) => jobs.get_mut(id).map(change).is_some(),
            Err(_) => false,
        };
        if changed {
            self.bump();
        }
    }

    /// Shows job `id` as the store holds it now.
    pub fn refresh(&self, store: &Store, id: &str) -> Result<(), StoreError> {
        if let Some(job) = store.job(id)? {
            self.put(JobView::from_record(store, &job)?);
        }
        Ok(())
    }

    /// Records in the store that job `id` ended with `status`, with its audit event, and
    /// shows it; unless the job has ended already (it can finish in the instant a cancel
    /// arrives: the finished record stands). Returns whether it recorded the end.
    pub fn end_job(
        &self,
        store: &Store,
        id: &str,
        status: JobStatus,
        reason: &str,
        event: AuditEvent,
    ) -> Result<bool, StoreError> {
        match store.job(id)? {
            Some(job) if !job.status.is_ended() => {
                store.end_job(id, status, reason, None, vec![event])?;
            }
            _ => {
                tracing::info!(job = %id, "the job had already ended; its record stands");
                return Ok(false);
            }
        }
        self.refresh(store, id)?;
        Ok(true)
    }

    /// Sets what a job is doing now.
    pub fn set_phase(&self, id: &str, phase: impl Into<String>) {
        let phase = phase.into();
        self.update(id, |v| v.phase = phase);
    }

    /// Appends a committed round.
    pub fn round_committed(&self, id: &str, record: &RoundRecord) {
        self.update(id, |v| {
            v.rounds.retain(|r| r.round != record.round);
            v.rounds.push(record.clone());
        });
    }

    /// One job's view.
    pub fn get(&self, id: &str) -> Option<JobView> {
        self.jobs.lock().ok()?.get(id).cloned()
    }

    /// Every job's view, oldest submission first.
    pub fn list(&self) -> Vec<JobView> {
        let mut all: Vec<JobView> = self
            .jobs
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (a.submitted_ms, &a.id).cmp(&(b.submitted_ms, &b.id)));
        all
    }

    /// A receiver that sees every change (its value is a change counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// The board as a subscriber of job events; it reads a job's record from `store` when the
/// job says the record changed.
#[derive(Debug, Clone)]
pub struct BoardFeed {
    /// The board it shows events on.
    pub board: Board,
    /// The store it reads job records from.
    pub store: Store,
}

impl JobListener for BoardFeed {
    fn on_event(&self, event: &JobEvent<'_>) {
        match *event {
            JobEvent::Recorded { job } => {
                // The store is the record: a view that cannot be read shows its last state.
                if let Err(e) = self.board.refresh(&self.store, job) {
                    tracing::warn!(job, error = %e, "could not refresh the job's view");
                }
            }
            JobEvent::Phase { job, phase } => self.board.set_phase(job, phase),
            JobEvent::RoundCommitted { job, record } => self.board.round_committed(job, record),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, ms: u64) -> JobView {
        JobView {
            id: id.into(),
            name: String::new(),
            purpose: String::new(),
            status: JobStatus::Queued,
            phase: "queued".into(),
            planned_rounds: 3,
            rounds: Vec::new(),
            epsilon_budget: None,
            final_metrics: None,
            submitted_by: "t".into(),
            submitted_ms: ms,
            settings: Vec::new(),
        }
    }

    #[test]
    fn changes_wake_watchers_and_rounds_replace_by_number() {
        let board = Board::default();
        let mut rx = board.subscribe();
        board.put(view("b", 2));
        board.put(view("a", 1));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        let list: Vec<String> = board.list().into_iter().map(|v| v.id).collect();
        assert_eq!(list, ["a", "b"]);
        // An unknown job changes nothing and wakes no one.
        board.set_phase("zzz", "round 1");
        assert!(!rx.has_changed().unwrap_or(true));
        let mut rec = RoundRecord {
            round: 1,
            attempts: 1,
            participants: 3,
            dropped: 0,
            auc: 0.7,
            log_loss: 0.4,
            accuracy: 0.9,
            lift_top_decile: 2.0,
            seconds: 0.1,
            epsilon: None,
            clip: None,
            unclipped_share: None,
        };
        board.round_committed("a", &rec);
        rec.auc = 0.8;
        board.round_committed("a", &rec);
        let a = board.get("a");
        assert_eq!(a.as_ref().map(|v| v.rounds.len()), Some(1));
        assert_eq!(a.map(|v| v.rounds[0].auc), Some(0.8));
        assert!(rx.has_changed().unwrap_or(false));
    }
}
