//! The partner's own privacy ledger: what differentially private jobs have spent of its
//! records' privacy, per purpose, across jobs.
//!
//! The partner does not take the coordinator's word for it. It computes each job's plan from
//! the spec itself, refuses a job that would take a purpose past its cap, and charges a round
//! *before* its update leaves — so a coordinator that runs more rounds than planned, or
//! restarts a job, cannot spend more than the partner allows. The ledger is a JSON file
//! written through a temporary file and a rename, so a crash never leaves half a ledger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fedmark_core::accountant::{Accountant, AccountantError};
use fedmark_core::budget::PrivacyPlan;

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
    /// Accounting failed.
    #[error(transparent)]
    Accounting(#[from] AccountantError),
}

/// Spent privacy per purpose, optionally backed by a file.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    spent: BTreeMap<String, Accountant>,
}

impl Ledger {
    /// Opens the ledger at `path` (an absent file is an empty ledger), or an in-memory one.
    pub fn open(path: Option<&Path>) -> Result<Self, LedgerError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let shown = path.display().to_string();
        let spent = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| LedgerError::Io {
                path: shown,
                reason: format!("not a valid ledger: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(LedgerError::Io {
                    path: shown,
                    reason: e.to_string(),
                });
            }
        };
        Ok(Self {
            path: Some(path.to_owned()),
            spent,
        })
    }

    /// ε spent for `purpose` at `delta`.
    pub fn spent(&self, purpose: &str, delta: f64) -> Result<f64, LedgerError> {
        match self.spent.get(purpose) {
            Some(acc) => Ok(acc.epsilon(delta)?.0),
            None => Ok(0.0),
        }
    }

    /// What `rounds` rounds of `plan` would bring `purpose` to, without charging.
    pub fn projected(
        &self,
        purpose: &str,
        plan: &PrivacyPlan,
        rounds: u64,
    ) -> Result<f64, LedgerError> {
        let mut acc = self.spent.get(purpose).cloned().unwrap_or_default();
        for _ in 0..rounds {
            plan.charge_round(&mut acc)?;
        }
        Ok(acc.epsilon(plan.delta)?.0)
    }

    /// Checks that `rounds` rounds fit under `cap`.
    pub fn check(
        &self,
        purpose: &str,
        plan: &PrivacyPlan,
        rounds: u64,
        cap: f64,
    ) -> Result<(), LedgerError> {
        let after = self.projected(purpose, plan, rounds)?;
        if after > cap {
            return Err(LedgerError::OverCap {
                purpose: purpose.to_owned(),
                spent: self.spent(purpose, plan.delta)?,
                after,
                cap,
            });
        }
        Ok(())
    }

    /// Charges one round of `plan` to `purpose` if it fits under `cap`, and persists it.
    pub fn charge_round(
        &mut self,
        purpose: &str,
        plan: &PrivacyPlan,
        cap: Option<f64>,
    ) -> Result<f64, LedgerError> {
        if let Some(cap) = cap {
            self.check(purpose, plan, 1, cap)?;
        }
        let acc = self.spent.entry(purpose.to_owned()).or_default();
        plan.charge_round(acc)?;
        let eps = acc.epsilon(plan.delta)?.0;
        self.save()?;
        Ok(eps)
    }

    fn save(&self) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |e: &dyn std::fmt::Display| LedgerError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let text = serde_json::to_string_pretty(&self.spent).map_err(|e| io(&e))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| io(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(&e))?;
        Ok(())
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
        for _ in 0..9 {
            ledger
                .charge_round("campaign_response", &plan(), Some(1.0))
                .unwrap();
        }
        let reopened = Ledger::open(Some(&path)).unwrap();
        let spent = reopened.spent("campaign_response", 1e-5).unwrap();
        assert!(spent > 0.9 && spent < 1.0, "{spent}");
        assert_eq!(
            reopened.spent("churn", 1e-5).unwrap(),
            0.0,
            "purposes are separate"
        );
        let mut reopened = reopened;
        let err = reopened
            .charge_round("campaign_response", &plan(), Some(1.0))
            .unwrap_err();
        assert!(
            err.to_string().contains("above this partner's cap of 1"),
            "{err}"
        );
        assert_eq!(
            reopened.spent("campaign_response", 1e-5).unwrap(),
            spent,
            "a refused charge spends nothing"
        );
        assert!(reopened.check("churn", &plan(), 9, 1.0).is_ok());
        assert!(reopened.check("churn", &plan(), 10, 1.0).is_err());
    }

    #[test]
    fn a_corrupt_ledger_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = Ledger::open(Some(&path)).unwrap_err();
        assert!(err.to_string().contains("not a valid ledger"), "{err}");
    }
}
