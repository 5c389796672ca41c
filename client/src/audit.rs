//! The partner's audit file: an append-only, hash-chained log of JSON lines in the format of
//! [`fedmark_core::audit`], written by the client as it takes part in a job.
//!
//! Record kinds (every `data` field is a count, a hash, an id of a job or a reason — never a
//! record, a user id or an unmasked value):
//!
//! | kind | data |
//! | --- | --- |
//! | `offer_received` | `job_id`, `spec_sha256`, `purpose` |
//! | `offer_accepted` | `job_id`, `train_rows`, `holdout_rows` |
//! | `offer_refused` | `job_id`, `reason` |
//! | `round_started` | `job_id`, `round`, `attempt`, `kind`, `cohort_size`, `threshold` |
//! | `consent_snapshot` | `job_id`, `round`, `attempt`, `consent_source`, `snapshot_sha256`, `commitment`, `commitment_salt`, `consented_users`, `train_rows`, `holdout_rows`, `usable_records` |
//! | `model_received` | `job_id`, `round`, `attempt`, `model_sha256`, `params` |
//! | `input_sent` | `job_id`, `round`, `attempt`, `masked_sha256`, `words` |
//! | `privacy_charged` | `job_id`, `round`, `purpose`, `epsilon_after` |
//! | `round_abandoned` | `job_id`, `round`, `attempt`, `reason` |
//! | `round_refused` | `job_id`, `round`, `attempt`, `reason` (a cohort below the partner's minimum) |
//! | `job_finished` | `job_id`, `reason` |
//! | `torn_write_discarded` | `bytes`: the unfinished last line a crash left, cut off on open |
//!
//! `consent_snapshot` is written at the start of every round; without a consent source its
//! `snapshot_sha256` is empty and the counts are all of the partner's usable rows. Only the
//! `commitment` leaves the partner (on the round's last input chunk, then in the model card);
//! `SHA-256("fedmark consent commitment v1" ‖ salt ‖ snapshot_sha256)` with the hex-decoded
//! `commitment_salt` opens it.
//! `input_sent.masked_sha256` is SHA-256 over the words as sent (masked under secure
//! aggregation), little-endian.
//!
//! Each line is written, flushed and synced before the client goes on. On open the existing
//! file is verified and the chain resumed from its last record. A last line that a crash left
//! unfinished (no newline, not a whole record) is cut off and the cut recorded; any other
//! damage makes the log refuse to open.
//! `fedmark-client audit verify PATH` checks a log.

use std::io::Write;
use std::path::{Path, PathBuf};

use fedmark_core::audit::{self, AuditChain, AuditError, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why the audit file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditLogError {
    /// The file could not be read, written or synced.
    #[error("audit file {path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The existing file does not verify; the client will not append to a broken log.
    #[error("audit file {path} does not verify: {source}")]
    Broken {
        /// File path.
        path: String,
        /// The first problem, naming its line.
        source: AuditError,
    },
    /// A record could not be built.
    #[error("audit file {path}: {source}")]
    Record {
        /// File path.
        path: String,
        /// What went wrong.
        source: AuditError,
    },
}

/// An open audit file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: std::fs::File,
    chain: AuditChain,
}

impl AuditLog {
    /// Opens (or creates) the audit file at `path` for `actor`, verifying what it holds and
    /// resuming its chain.
    pub fn open(path: &Path, actor: &str) -> Result<Self, AuditLogError> {
        let shown = path.display().to_string();
        let io = |source| AuditLogError::Io {
            path: shown.clone(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let broken = |source| AuditLogError::Broken {
            path: shown.clone(),
            source,
        };
        // A crash in the middle of an append leaves a last line without its newline. If that
        // line is not a whole record, it was never written: cut it off (and say so in the log
        // itself below). Anything else that fails verification is tampering or damage, and
        // the log refuses to open.
        let lines = text.lines().count();
        let mut torn = 0;
        let text = match audit::verify(&text, None) {
            Ok(_) => text,
            Err(e) if !text.ends_with('\n') && e.line() == Some(lines) => {
                let keep = text.rfind('\n').map_or(0, |i| i + 1);
                torn = text.len() - keep;
                let kept = text[..keep].to_owned();
                audit::verify(&kept, None).map_err(broken)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| {
                        f.set_len(keep as u64)?;
                        f.sync_all()
                    })
                    .map_err(io)?;
                kept
            }
            Err(e) => return Err(broken(e)),
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if !text.is_empty() && !text.ends_with('\n') {
            // A whole record whose newline did not make it: end the line.
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .map_err(io)?;
        }
        let last = match text.lines().last() {
            Some(line) => Some(AuditRecord::parse_line(line, text.lines().count()).map_err(
                |source| AuditLogError::Broken {
                    path: shown.clone(),
                    source,
                },
            )?),
            None => None,
        };
        let mut log = Self {
            path: path.to_path_buf(),
            file,
            chain: AuditChain::resume(actor, last.as_ref()),
        };
        if torn > 0 {
            log.record(&PartnerEvent::TornWriteDiscarded { bytes: torn })?;
        }
        Ok(log)
    }

    /// Appends the record of `event`.
    pub fn record(&mut self, event: &PartnerEvent) -> Result<(), AuditLogError> {
        self.append(event.kind(), event.data())
    }

    /// Appends one record and syncs it to disk.
    pub fn append(&mut self, kind: &str, data: Value) -> Result<(), AuditLogError> {
        let shown = || self.path.display().to_string();
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Build on a copy so a failed write leaves the chain where the file is.
        let mut chain = self.chain.clone();
        let record = chain
            .append(time_ms, kind, data)
            .map_err(|source| AuditLogError::Record {
                path: shown(),
                source,
            })?;
        let mut line = record.to_line();
        line.push('\n');
        let io = |source| AuditLogError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.flush().map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.chain = chain;
        Ok(())
    }

    /// Hash of the last record written.
    pub fn head(&self) -> &str {
        self.chain.head()
    }

    /// Records in the log.
    pub fn len(&self) -> u64 {
        self.chain.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }
}

/// Reads `path` and verifies it (`head`: the hash its last record must have).
pub fn verify_file(path: &Path, head: Option<&str>) -> Result<audit::Verified, AuditLogError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuditLogError::Io {
        path: shown.clone(),
        source,
    })?;
    audit::verify(&text, head).map_err(|source| AuditLogError::Broken {
        path: shown,
        source,
    })
}

/// A round's identity as audit records name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundIds {
    /// The job.
    pub job_id: String,
    /// The round number.
    pub round: u64,
    /// The attempt.
    pub attempt: u32,
}

impl From<&fedmark_proto::RoundRef> for RoundIds {
    fn from(r: &fedmark_proto::RoundRef) -> Self {
        Self {
            job_id: r.job_id.clone(),
            round: r.round,
            attempt: r.attempt,
        }
    }
}

/// Every record a partner writes, one variant per kind: serialised, each is the `kind` and
/// `data` of the record exactly as the partner has always written it, so files written
/// before these types existed still verify and read the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PartnerEvent {
    /// A job was offered.
    OfferReceived {
        /// The job.
        job_id: String,
        /// SHA-256 of the spec text.
        spec_sha256: String,
        /// The spec's purpose, if it parses.
        purpose: Option<String>,
    },
    /// The partner took the job.
    OfferAccepted {
        /// The job.
        job_id: String,
        /// Training rows before consent.
        train_rows: usize,
        /// Holdout rows before consent.
        holdout_rows: usize,
    },
    /// The partner refused the job.
    OfferRefused {
        /// The job.
        job_id: String,
        /// Why (as sent to the coordinator).
        reason: String,
    },
    /// A round started for this partner.
    RoundStarted {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
        /// `statistics`, `training` or `evaluation`.
        kind: String,
        /// Members of its cohort.
        cohort_size: usize,
        /// Its announced threshold.
        threshold: u32,
    },
    /// The partner refused a round start (nothing sent).
    RoundRefused {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
        /// Why.
        reason: String,
    },
    /// The partner gave up on a round it had started.
    RoundAbandoned {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
        /// Why.
        reason: String,
    },
    /// The round's consent snapshot.
    ConsentSnapshot {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
        /// Whether the partner has a consent source.
        consent_source: bool,
        /// The snapshot's keyed hash (empty without a consent source).
        snapshot_sha256: String,
        /// The commitment the coordinator gets.
        commitment: String,
        /// Its salt, so the partner can open it.
        commitment_salt: String,
        /// Users with consent for the purpose (with a consent source).
        consented_users: Option<usize>,
        /// Training rows used.
        train_rows: usize,
        /// Holdout rows used.
        holdout_rows: usize,
        /// Both.
        usable_records: usize,
    },
    /// The round's model arrived.
    ModelReceived {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
        /// SHA-256 of the model.
        model_sha256: String,
        /// Its parameter count.
        params: usize,
    },
    /// The privacy ledger was charged for a round.
    PrivacyCharged {
        /// The job.
        job_id: String,
        /// The round.
        round: u64,
        /// The job's purpose.
        purpose: String,
        /// The purpose's ε after the charge.
        epsilon_after: f64,
    },
    /// A round got the update it had before again.
    InputReplayed {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
    },
    /// The partner's (masked) input left.
    InputSent {
        /// The round.
        #[serde(flatten)]
        ids: RoundIds,
        /// SHA-256 of the words sent.
        masked_sha256: String,
        /// How many.
        words: usize,
    },
    /// A half-written last record (a crash mid-write) was cut off when the file was opened.
    TornWriteDiscarded {
        /// Bytes discarded.
        bytes: usize,
    },
    /// The job ended.
    JobFinished {
        /// The job.
        job_id: String,
        /// Why, as the coordinator said.
        reason: String,
    },
}

impl PartnerEvent {
    /// The record's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            PartnerEvent::OfferReceived { .. } => "offer_received",
            PartnerEvent::OfferAccepted { .. } => "offer_accepted",
            PartnerEvent::OfferRefused { .. } => "offer_refused",
            PartnerEvent::RoundStarted { .. } => "round_started",
            PartnerEvent::RoundRefused { .. } => "round_refused",
            PartnerEvent::RoundAbandoned { .. } => "round_abandoned",
            PartnerEvent::ConsentSnapshot { .. } => "consent_snapshot",
            PartnerEvent::ModelReceived { .. } => "model_received",
            PartnerEvent::PrivacyCharged { .. } => "privacy_charged",
            PartnerEvent::InputReplayed { .. } => "input_replayed",
            PartnerEvent::InputSent { .. } => "input_sent",
            PartnerEvent::TornWriteDiscarded { .. } => "torn_write_discarded",
            PartnerEvent::JobFinished { .. } => "job_finished",
        }
    }

    /// The record's `data`, as the serde representation's `data` (strings, integers,
    /// booleans and floats only, so serialising cannot fail; a NaN is written as null, as
    /// `serde_json` writes every non-finite float).
    pub fn data(&self) -> Value {
        audit::event_data(self)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_round_trip_so_records_with_epsilon_verify() {
        // Without serde_json's `float_roundtrip` some values parse to a neighbouring f64 and
        // the record no longer reads back byte for byte.
        let mut chain = AuditChain::new("bank");
        let mut text = String::new();
        let mut eps = 0.0f64;
        for i in 0..2000 {
            eps += 0.000_499_712_345_678_9 * f64::from(i % 7 + 1) / 3.0;
            let record = chain
                .append(1, "privacy_charged", json!({"epsilon_after": eps}))
                .unwrap();
            text.push_str(&record.to_line());
            text.push('\n');
        }
        assert_eq!(
            audit::verify(&text, Some(chain.head())).unwrap().records,
            2000
        );
    }

    #[test]
    fn appends_resume_the_chain_and_a_broken_log_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, "bank").unwrap();
        log.append("offer_received", json!({"job_id": "j"}))
            .unwrap();
        log.append("offer_accepted", json!({"job_id": "j"}))
            .unwrap();
        drop(log);
        let mut log = AuditLog::open(&path, "bank").unwrap();
        assert_eq!(log.len(), 2);
        log.append("job_finished", json!({"reason": "done"}))
            .unwrap();
        let v = verify_file(&path, Some(log.head())).unwrap();
        assert_eq!(v.records, 3);
        assert!(log.append("x", json!([1])).is_err());

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("offer_accepted", "offer_accepteD", 1)).unwrap();
        let e = AuditLog::open(&path, "bank").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_write_torn_by_a_crash_is_cut_off_and_recorded_but_damage_elsewhere_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, "bank").unwrap();
        for i in 0..3 {
            log.append("round_started", json!({"round": i})).unwrap();
        }
        drop(log);
        let whole = std::fs::read_to_string(&path).unwrap();
        // Half of a fourth record, as a crash mid-append leaves it.
        let fourth = whole
            .lines()
            .nth(2)
            .unwrap()
            .replace("\"seq\":2", "\"seq\":3");
        std::fs::write(&path, format!("{whole}{}", &fourth[..fourth.len() / 2])).unwrap();
        let log = AuditLog::open(&path, "bank").unwrap();
        assert_eq!(log.len(), 4, "three records and the note of the cut");
        let text = std::fs::read_to_string(&path).unwrap();
        let v = audit::verify(&text, Some(log.head())).unwrap();
        assert_eq!(v.records, 4);
        let last = text.lines().last().unwrap();
        assert!(last.contains("torn_write_discarded"), "{last}");
        assert!(
            last.contains(&format!("\"bytes\":{}", fourth.len() / 2)),
            "{last}"
        );
        drop(log);

        // A whole last record without its newline is kept and its line ended.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end_matches('\n')).unwrap();
        let mut log = AuditLog::open(&path, "bank").unwrap();
        assert_eq!(log.len(), 4);
        log.append("job_finished", json!({})).unwrap();
        assert_eq!(verify_file(&path, Some(log.head())).unwrap().records, 5);
        drop(log);

        // Damage before the last line is never "repaired".
        let text = std::fs::read_to_string(&path).unwrap();
        let damaged = text.replacen("\"round\":1", "\"round\":7", 1);
        std::fs::write(&path, &damaged[..damaged.len() - 10]).unwrap();
        let e = AuditLog::open(&path, "bank").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    /// Each typed event is the record the partner wrote before the types existed: the same
    /// kind and the same data, field for field (written out here by hand from the old
    /// call sites).
    #[test]
    fn typed_events_are_the_old_records() {
        use serde_json::json;
        let ids = || RoundIds {
            job_id: "j".into(),
            round: 3,
            attempt: 1,
        };
        let cases = [
            (
                PartnerEvent::OfferReceived {
                    job_id: "j".into(),
                    spec_sha256: "ab".into(),
                    purpose: None,
                },
                "offer_received",
                json!({"job_id": "j", "spec_sha256": "ab", "purpose": null}),
            ),
            (
                PartnerEvent::OfferAccepted {
                    job_id: "j".into(),
                    train_rows: 10,
                    holdout_rows: 2,
                },
                "offer_accepted",
                json!({"job_id": "j", "train_rows": 10, "holdout_rows": 2}),
            ),
            (
                PartnerEvent::OfferRefused {
                    job_id: "j".into(),
                    reason: "no".into(),
                },
                "offer_refused",
                json!({"job_id": "j", "reason": "no"}),
            ),
            (
                PartnerEvent::RoundStarted {
                    ids: ids(),
                    kind: "training".into(),
                    cohort_size: 5,
                    threshold: 4,
                },
                "round_started",
                json!({"job_id": "j", "round": 3, "attempt": 1, "kind": "training", "cohort_size": 5, "threshold": 4}),
            ),
            (
                PartnerEvent::RoundRefused {
                    ids: ids(),
                    reason: "r".into(),
                },
                "round_refused",
                json!({"job_id": "j", "round": 3, "attempt": 1, "reason": "r"}),
            ),
            (
                PartnerEvent::RoundAbandoned {
                    ids: ids(),
                    reason: "r".into(),
                },
                "round_abandoned",
                json!({"job_id": "j", "round": 3, "attempt": 1, "reason": "r"}),
            ),
            (
                PartnerEvent::ConsentSnapshot {
                    ids: ids(),
                    consent_source: true,
                    snapshot_sha256: "h".into(),
                    commitment: "c".into(),
                    commitment_salt: "s".into(),
                    consented_users: Some(7),
                    train_rows: 8,
                    holdout_rows: 1,
                    usable_records: 9,
                },
                "consent_snapshot",
                json!({"job_id": "j", "round": 3, "attempt": 1, "consent_source": true,
                       "snapshot_sha256": "h", "commitment": "c", "commitment_salt": "s",
                       "consented_users": 7, "train_rows": 8, "holdout_rows": 1,
                       "usable_records": 9}),
            ),
            (
                PartnerEvent::ModelReceived {
                    ids: ids(),
                    model_sha256: "m".into(),
                    params: 60,
                },
                "model_received",
                json!({"job_id": "j", "round": 3, "attempt": 1, "model_sha256": "m", "params": 60}),
            ),
            (
                PartnerEvent::PrivacyCharged {
                    job_id: "j".into(),
                    round: 3,
                    purpose: "p".into(),
                    epsilon_after: 0.5,
                },
                "privacy_charged",
                json!({"job_id": "j", "round": 3, "purpose": "p", "epsilon_after": 0.5}),
            ),
            (
                PartnerEvent::InputReplayed { ids: ids() },
                "input_replayed",
                json!({"job_id": "j", "round": 3, "attempt": 1}),
            ),
            (
                PartnerEvent::InputSent {
                    ids: ids(),
                    masked_sha256: "w".into(),
                    words: 9,
                },
                "input_sent",
                json!({"job_id": "j", "round": 3, "attempt": 1, "masked_sha256": "w", "words": 9}),
            ),
            (
                PartnerEvent::TornWriteDiscarded { bytes: 12 },
                "torn_write_discarded",
                json!({"bytes": 12}),
            ),
            (
                PartnerEvent::JobFinished {
                    job_id: "j".into(),
                    reason: "done".into(),
                },
                "job_finished",
                json!({"job_id": "j", "reason": "done"}),
            ),
        ];
        for (event, kind, data) in cases {
            assert_eq!(event.kind(), kind);
            assert_eq!(event.data(), data, "{kind}");
            // The serde tag agrees with kind().
            assert_eq!(serde_json::to_value(&event).unwrap()["kind"], kind);
        }
    }
}
