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
            log.append("torn_write_discarded", serde_json::json!({ "bytes": torn }))?;
        }
        Ok(log)
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
}
