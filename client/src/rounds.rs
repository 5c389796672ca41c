//! The partner's record of what each job asked of it ([`RoundGuard`]), kept on disk beside its
//! privacy ledger, so that neither a reconnect nor a restart of the node lets a coordinator
//! replay a round or unmask one twice.
//!
//! The file (`<data_dir>/<partner_id>.rounds.json` by default) maps job ids to their guards
//! and is replaced durably (written to a temporary file, fsynced, renamed, folder fsynced)
//! whenever a guard changes, before the partner answers the round that changed it. A node
//! whose ledger is kept in memory keeps this record in memory too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedmark_core::aggregate::RoundKind;
use fedmark_core::guard::{GuardRefusal, RoundGuard};
use fedmark_core::spec::JobSpec;

use crate::ledger::write_durably;

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoundsError {
    /// The file could not be read or written.
    #[error("round record {path}: {reason}")]
    Io {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Every job's round guard, loaded once per node and shared by its sessions.
#[derive(Debug, Default)]
pub struct RoundRecords {
    path: Option<PathBuf>,
    loaded: bool,
    jobs: BTreeMap<String, RoundGuard>,
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> RoundsError {
    RoundsError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl RoundRecords {
    /// Loads the record at `path` the first time it is called (later calls change nothing);
    /// `None` keeps it in memory.
    pub fn load_once(&mut self, path: Option<&Path>) -> Result<(), RoundsError> {
        if self.loaded {
            return Ok(());
        }
        if let Some(path) = path {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    self.jobs = serde_json::from_str(&text).map_err(|e| io_error(path, e))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(path, e)),
            }
            self.path = Some(path.to_owned());
        }
        self.loaded = true;
        Ok(())
    }

    fn save(&self) -> Result<(), RoundsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string(&self.jobs).map_err(|e| io_error(path, e))?;
        write_durably(path, text.as_bytes()).map_err(|e| io_error(path, e))
    }

    /// Starts a job's guard from the spec it was accepted under, unless the job has one.
    pub fn accept(&mut self, job_id: &str, spec: &JobSpec) -> Result<(), RoundsError> {
        if self.jobs.contains_key(job_id) {
            return Ok(());
        }
        self.jobs.insert(job_id.to_owned(), RoundGuard::new(spec));
        self.save()
    }

    /// Checks a round start against its job's guard ([`RoundGuard::admit`]) and, in a secure
    /// job, persists what changed. (A plain job's vectors reach the coordinator as they are,
    /// so its round order is kept in memory only: one durable write fewer per round.) A job
    /// without a guard (never accepted here) admits nothing.
    pub fn admit(
        &mut self,
        job_id: &str,
        round: u64,
        attempt: u32,
        kind: RoundKind,
    ) -> Result<Result<(), GuardRefusal>, RoundsError> {
        let Some(guard) = self.jobs.get_mut(job_id) else {
            return Ok(Err(GuardRefusal::BeyondPlan { round, rounds: 0 }));
        };
        let before = guard.clone();
        let verdict = guard.admit(round, attempt, kind);
        if *guard != before && guard.is_secure() {
            self.save()?;
        }
        Ok(verdict)
    }

    /// Records that the partner revealed its shares for `round` of `job_id`.
    pub fn unmasked(&mut self, job_id: &str, round: u64) -> Result<(), RoundsError> {
        self.reveal(job_id, round, "").map(|_| ())
    }

    /// Whether the partner may help unmask `round` of `job_id`, which started from the model
    /// whose SHA-256 is `model` ([`RoundGuard::may_unmask`]), without recording anything.
    pub fn may_unmask(&self, job_id: &str, round: u64, model: &str) -> Result<(), GuardRefusal> {
        match self.jobs.get(job_id) {
            Some(guard) => guard.may_unmask(round, model),
            None => Err(GuardRefusal::BeyondPlan { round, rounds: 0 }),
        }
    }

    /// Checks that the partner may help unmask `round` of `job_id` from `model` and, if so,
    /// records (durably) that it does, before its shares leave.
    pub fn reveal(
        &mut self,
        job_id: &str,
        round: u64,
        model: &str,
    ) -> Result<Result<(), GuardRefusal>, RoundsError> {
        let Some(guard) = self.jobs.get_mut(job_id) else {
            return Ok(Err(GuardRefusal::BeyondPlan { round, rounds: 0 }));
        };
        if let Err(refusal) = guard.may_unmask(round, model) {
            return Ok(Err(refusal));
        }
        guard.unmasked_from(round, model);
        self.save()?;
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmark_core::guard::GuardRefusal;

    fn spec() -> JobSpec {
        JobSpec::from_toml(
            "[job]\nname = \"t\"\npurpose = \"p\"\nrounds = 3\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\nrange = { a = [-10.0, 10.0] }\n[model]\nkind = \"logistic\"\n",
        )
        .unwrap()
    }

    /// A restarted node reads what the job asked before: a replay and a second unmask of a
    /// round are refused after the restart too.
    #[test]
    fn a_restart_forgets_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0.rounds.json");
        let mut records = RoundRecords::default();
        records.load_once(Some(&path)).unwrap();
        records.accept("job", &spec()).unwrap();
        records
            .admit("job", 0, 0, RoundKind::Statistics)
            .unwrap()
            .unwrap();
        records.unmasked("job", 0).unwrap();
        records
            .admit("job", 1, 4, RoundKind::Training)
            .unwrap()
            .unwrap();

        let mut restarted = RoundRecords::default();
        restarted.load_once(Some(&path)).unwrap();
        // Accepting the job again (the coordinator re-offers it) keeps its guard.
        restarted.accept("job", &spec()).unwrap();
        assert!(matches!(
            restarted.admit("job", 1, 4, RoundKind::Training).unwrap(),
            Err(GuardRefusal::NotAfter { .. })
        ));
        assert_eq!(
            restarted.admit("job", 0, 9, RoundKind::Statistics).unwrap(),
            Err(GuardRefusal::NotAfter {
                round: 0,
                attempt: 9,
                last_round: 1,
                last_attempt: 4
            })
        );
        restarted
            .admit("job", 1, 5, RoundKind::Training)
            .unwrap()
            .unwrap();
        assert!(
            !dir.path().join(".p0.rounds.json.tmp").exists(),
            "written through a temporary file"
        );
    }

    /// In a job without DP the partner helps unmask one round per start model, and a
    /// restart remembers which models those were.
    #[test]
    fn one_unmask_per_start_model_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0.rounds.json");
        let mut records = RoundRecords::default();
        records.load_once(Some(&path)).unwrap();
        records.accept("job", &spec()).unwrap();
        records
            .admit("job", 1, 0, RoundKind::Training)
            .unwrap()
            .unwrap();
        assert_eq!(records.reveal("job", 1, "m1").unwrap(), Ok(()));
        let mut restarted = RoundRecords::default();
        restarted.load_once(Some(&path)).unwrap();
        restarted
            .admit("job", 2, 0, RoundKind::Training)
            .unwrap()
            .unwrap();
        let refusal = GuardRefusal::ModelAlreadyUnmasked {
            round: 2,
            earlier: 1,
        };
        assert_eq!(restarted.may_unmask("job", 2, "m1"), Err(refusal.clone()));
        assert_eq!(restarted.reveal("job", 2, "m1").unwrap(), Err(refusal));
        assert_eq!(restarted.reveal("job", 2, "m2").unwrap(), Ok(()));
    }

    #[test]
    fn in_memory_and_unknown_jobs() {
        let mut records = RoundRecords::default();
        records.load_once(None).unwrap();
        assert!(
            records
                .admit("job", 0, 0, RoundKind::Statistics)
                .unwrap()
                .is_err()
        );
        records.accept("job", &spec()).unwrap();
        records
            .admit("job", 0, 0, RoundKind::Statistics)
            .unwrap()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let mut broken = RoundRecords::default();
        assert!(broken.load_once(Some(&bad)).is_err());
    }
}
