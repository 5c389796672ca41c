//! The coordinator's durable store: jobs, round checkpoints, the privacy ledger and the audit
//! chain, in one embedded transactional database (redb) in the data directory.
//!
//! What must never be lost is written in one transaction with what it pays for: a round's
//! result is released only after its checkpoint (model, optimiser state, standardisation, the
//! job's round records) *and* its privacy-ledger charge *and* its audit record have been
//! committed together. A coordinator killed at any instant therefore restarts at the last
//! committed round with the ledger exactly right; the round that was in flight is aborted and
//! run again under a new attempt number, so no round id — and no secure-aggregation key — is
//! ever used twice (the attempt counter is itself durable, bumped before each attempt starts).
//!
//! A store is created once, by `fedmark-coordinator init`; `serve` only opens one. A coordinator
//! whose data directory has gone therefore refuses to start instead of silently starting over.
//! On open the audit chain is verified, and its JSON-lines mirror (`audit.jsonl`, what
//! `audit verify` reads) is rewritten from the store, so the mirror never lags after a crash.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fedmark_core::accountant::Accountant;
use fedmark_core::audit::{self, AuditChain, AuditError, AuditRecord, f64s_sha256};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::info;

use crate::report::RoundRecord;

pub mod events;
pub mod jobs;

/// The database file in the data directory.
pub const STORE_FILE: &str = "fedmark.redb";
/// The audit chain's JSON-lines mirror in the data directory.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// The store format this build reads and writes.
const FORMAT: &str = "fedmark-store-1";
/// Page cache: small, so the store adds little to the coordinator's O(model) memory.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

const META: TableDefinition<'_, &str, &str> = TableDefinition::new("meta");
const JOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("jobs");
const CHECKPOINTS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("checkpoints");
const VECTORS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("vectors");
const ATTEMPTS: TableDefinition<'_, (&str, u64), u32> = TableDefinition::new("attempts");
const AUDIT: TableDefinition<'_, u64, &str> = TableDefinition::new("audit");
/// Per job: starts since its last committed round (a job that never gets that far keeps
/// counting, so a restart cannot loop on it for ever).
/// The level rounds of the tree a boosted-trees job is growing, until the tree is committed:
/// (job, round) → a [`LevelRecord`] as JSON, then its summed values as little-endian f64.
const TREE_LEVELS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("tree_levels");
const STARTS: TableDefinition<'_, &str, u32> = TableDefinition::new("starts_without_progress");

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `serve` found no store: it never creates one on its own.
    #[error(
        "no coordinator store in {dir}: create it once with `fedmark-coordinator init --config …` (a coordinator whose store is gone refuses to start rather than start over)"
    )]
    Missing {
        /// The data directory.
        dir: String,
    },
    /// `init` found a store already.
    #[error("a coordinator store already exists in {dir}; refusing to overwrite it")]
    Exists {
        /// The data directory.
        dir: String,
    },
    /// The database failed (I/O, locking, corruption detected by redb).
    #[error("coordinator store {path}: {source}")]
    Db {
        /// Database file.
        path: String,
        /// The database's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A value in the store does not decode.
    #[error("coordinator store {path}: {what} is corrupt: {reason}")]
    Corrupt {
        /// Database file.
        path: String,
        /// Which value.
        what: String,
        /// Why.
        reason: String,
    },
    /// The audit chain in the store does not verify.
    #[error("coordinator store {path}: audit chain: {source}")]
    Audit {
        /// Database file.
        path: String,
        /// The failed check.
        #[source]
        source: AuditError,
    },
    /// A stored job's vectors do not fit in memory now.
    #[error(transparent)]
    Memory(#[from] fedmark_core::alloc::AllocError),
    /// The data directory or the audit mirror could not be written.
    #[error("coordinator data directory {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Submitted to a long-running coordinator, waiting for the jobs before it.
    Queued,
    /// Accepted and not finished: a restarted coordinator resumes it.
    Running,
    /// Ran to its end; its report is stored.
    Finished,
    /// Stopped by an error (its reason is stored).
    Failed,
    /// Stopped by an administrator; resubmitting it resumes after its last committed round.
    Cancelled,
}

impl JobStatus {
    /// The lower-case name the admin API, the dashboard and the audit records use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job will not run again by itself.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            JobStatus::Finished | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// The spec as submitted (TOML).
    pub spec_toml: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// When (Unix milliseconds).
    pub submitted_ms: u64,
    /// Where it stands.
    pub status: JobStatus,
    /// Why it ended (finished or failed jobs).
    #[serde(default)]
    pub reason: Option<String>,
    /// The final report (finished jobs).
    #[serde(default)]
    pub report: Option<Value>,
}

/// What a committed round leaves for the rounds after it (the vectors are stored apart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last committed round (0 = the statistics round).
    pub round: u64,
    /// Model parameters in the vector blob.
    pub model_len: usize,
    /// SHA-256 of the model parameters (little-endian f64), as the audit record names it.
    pub model_sha256: String,
    /// Feature means from the statistics round.
    pub feature_mean: Vec<f64>,
    /// Feature standard deviations from the statistics round.
    pub feature_std: Vec<f64>,
    /// Training rows over all partners (statistics round; NaN in DP jobs, which have none).
    #[serde(deserialize_with = "crate::report::nan_if_null")]
    pub training_rows: f64,
    /// The job's privacy ledger after this round: what its training rows have spent (see
    /// [`fedmark_core::budget::JobSpend`]).
    pub ledger: Accountant,
    /// What its holdout rows have spent (a checkpoint written before parallel composition
    /// has none: its `ledger` held every release).
    #[serde(default, skip_serializing_if = "Accountant::is_empty")]
    pub holdout_ledger: Accountant,
    /// Every committed training round so far.
    pub records: Vec<RoundRecord>,
}

/// A level round of the tree a boosted-trees job is growing, kept so that a restarted
/// coordinator grows the tree on from the same sums instead of asking the partners again
/// (without DP they would not unmask a round twice; with DP each sum was a release, charged
/// again when it is replayed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelRecord {
    /// The tree (0-based).
    pub tree: u32,
    /// Whether the round asked for its level again, every node built.
    pub again: bool,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// Whose sums it holds.
    pub survivors: Vec<String>,
    /// Who dropped out of it.
    pub dropped: Vec<String>,
    /// Each survivor's consent commitment.
    pub consent: BTreeMap<String, String>,
    /// The cohort it was drawn for.
    pub cohort: usize,
    /// SHA-256 of its summed values.
    pub stats_sha256: String,
}

/// A checkpoint with its vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Model parameters.
    pub model: Vec<f64>,
    /// Server-optimiser state (see `ServerOptimizer::state`).
    pub optimizer: Vec<f64>,
}

/// An audit event to record: its kind and its data (a JSON object).
pub type AuditEvent = (&'static str, Value);

/// The coordinator's store. Cheap to clone; every clone is the same database.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Database,
    path: String,
    mirror: Option<PathBuf>,
    chain: Mutex<AuditChain>,
}

/// The audit actor of the coordinator.
pub const ACTOR: &str = "coordinator";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Little-endian bytes of f64 values.
fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Store {
    /// Creates a new store in `dir` (made if absent); refuses if one exists.
    pub fn init(dir: &Path) -> Result<Self, StoreError> {
        let file = dir.join(STORE_FILE);
        if file.exists() {
            return Err(StoreError::Exists {
                dir: dir.display().to_string(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        // The store is the coordinator's alone: jobs, models and the ledger are read and
        // exported only by whoever runs it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| StoreError::Io {
                    path: dir.display().to_string(),
                    source,
                },
            )?;
        }
        let path = file.display().to_string();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
            .map_err(|e| db_err(&path, e))?;
        let store = Self::wrap(db, path, Some(dir.join(AUDIT_FILE)), AuditChain::new(ACTOR));
        store.write(
            vec![
                events::CoordinatorEvent::StoreCreated {
                    format: FORMAT.to_owned(),
                }
                .into(),
            ],
            |txn| {
                let mut meta = txn.open_table(META)?;
                meta.insert("format", FORMAT)?;
                Ok(())
            },
        )?;
        store.rewrite_mirror()?;
        info!(path = %store.inner.path, "created the coordinator store");
        Ok(store)
    }

    /// Opens the store in `dir`; refuses if there is none, if it is of another format, or if
    /// its audit chain does not verify.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let file = dir.join(STORE_FILE);
        if !file.is_file() {
            return Err(StoreError::Missing {
                dir: dir.display().to_string(),
            });
        }
        let path = file.display().to_string();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .open(&file)
            .map_err(|e| db_err(&path, e))?;
        let store = Self::wrap(db, path, Some(dir.join(AUDIT_FILE)), AuditChain::new(ACTOR));
        let format = store.read(|txn| {
            let meta = txn.open_table(META)?;
            Ok(meta.get("format")?.map(|v| v.value().to_owned()))
        })?;
        if format.as_deref() != Some(FORMAT) {
            return Err(store.corrupt(
                "format",
                format!("expected {FORMAT}, found {}", format.unwrap_or_default()),
            ));
        }
        let text = store.audit_text()?;
        let verified = audit::verify(&text, None).map_err(|source| StoreError::Audit {
            path: store.inner.path.clone(),
            source,
        })?;
        let last = text
            .lines()
            .last()
            .map(|l| AuditRecord::parse_line(l, verified.records as usize))
            .transpose()
            .map_err(|source| StoreError::Audit {
                path: store.inner.path.clone(),
                source,
            })?;
        *store.chain() = AuditChain::resume(ACTOR, last.as_ref());
        store.rewrite_mirror()?;
        info!(path = %store.inner.path, audit_records = verified.records, "opened the coordinator store");
        Ok(store)
    }

    /// A store in memory, for simulations and tests that need no durability.
    pub fn in_memory() -> Result<Self, StoreError> {
        let path = "(in memory)".to_owned();
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| db_err(&path, e))?;
        let store = Self::wrap(db, path, None, AuditChain::new(ACTOR));
        store.write(Vec::new(), |txn| {
            let mut meta = txn.open_table(META)?;
            meta.insert("format", FORMAT)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn wrap(db: Database, path: String, mirror: Option<PathBuf>, chain: AuditChain) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                path,
                mirror,
                chain: Mutex::new(chain),
            }),
        }
    }

    fn chain(&self) -> MutexGuard<'_, AuditChain> {
        // A panic while the lock was held cannot leave the chain half-updated (it is replaced
        // whole after each commit), so a poisoned lock is still sound to use.
        self.inner
            .chain
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn corrupt(&self, what: &str, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.inner.path.clone(),
            what: what.to_owned(),
            reason,
        }
    }

    /// Runs `f` and the audit events in one write transaction. The audit chain moves on only
    /// once the transaction has committed; the mirror file follows after.
    fn write<T>(
        &self,
        events: Vec<AuditEvent>,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let path = &self.inner.path;
        let mut guard = self.chain();
        let mut chain = guard.clone();
        let time = now_ms();
        let mut records = Vec::with_capacity(events.len());
        for (kind, data) in events {
            records.push(
                chain
                    .append(time, kind, data)
                    .map_err(|source| StoreError::Audit {
                        path: path.clone(),
                        source,
                    })?,
            );
        }
        let lines: Vec<String> = records.iter().map(AuditRecord::to_line).collect();
        let out = (|| {
            let txn = self.inner.db.begin_write()?;
            let out = f(&txn)?;
            {
                let mut table = txn.open_table(AUDIT)?;
                for (r, line) in records.iter().zip(&lines) {
                    table.insert(r.seq, line.as_str())?;
                }
            }
            txn.commit()?;
            Ok::<T, redb::Error>(out)
        })()
        .map_err(|e| db_err(path, e))?;
        *guard = chain;
        // Still under the chain's lock, so concurrent writers append to the mirror in order.
        if !lines.is_empty() {
            self.append_mirror(&lines)?;
        }
        drop(guard);
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        (|| {
            let txn = self.inner.db.begin_read()?;
            f(&txn)
        })()
        .map_err(|e| db_err(&self.inner.path, e))
    }

    fn append_mirror(&self, lines: &[String]) -> Result<(), StoreError> {
        let Some(mirror) = &self.inner.mirror else {
            return Ok(());
        };
        let io = |source| StoreError::Io {
            path: mirror.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(mirror)
            .map_err(io)?;
        let mut text = lines.join("\n");
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)
    }

    fn rewrite_mirror(&self) -> Result<(), StoreError> {
        let Some(mirror) = &self.inner.mirror else {
            return Ok(());
        };
        let io = |source| StoreError::Io {
            path: mirror.display().to_string(),
            source,
        };
        fedmark_proto::durable::replace(mirror, self.audit_text()?.as_bytes()).map_err(io)
    }

    /// Records audit events on their own.
    pub fn audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.write(events, |_| Ok(()))
    }

    /// The whole audit chain as JSON lines.
    pub fn audit_text(&self) -> Result<String, StoreError> {
        self.read(|txn| {
            let mut text = String::new();
            let table = match txn.open_table(AUDIT) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(text),
                Err(e) => return Err(e.into()),
            };
            for row in table.iter()? {
                let (_, line) = row?;
                text.push_str(line.value());
                text.push('\n');
            }
            Ok(text)
        })
    }

    /// The hash of the last audit record.
    pub fn audit_head(&self) -> String {
        self.chain().head().to_owned()
    }

    /// Stores a newly submitted job, with its audit record.
    pub fn submit_job(&self, job: &JobRecord, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let bytes = self.encode("job", job)?;
        self.write(events, |txn| {
            let mut jobs = txn.open_table(JOBS)?;
            jobs.insert(job.id.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// A stored job.
    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let bytes = self.read(|txn| match txn.open_table(JOBS) {
            Ok(t) => Ok(t.get(id)?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        })?;
        bytes
            .map(|b| self.decode(&format!("job {id}"), &b))
            .transpose()
    }

    /// Every stored job, by id.
    pub fn jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self.read(|txn| {
            let table = match txn.open_table(JOBS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut rows = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                rows.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(rows)
        })?;
        rows.iter()
            .map(|(id, b)| self.decode(&format!("job {id}"), b))
            .collect()
    }

    /// The attempt number to use for the next attempt of `round`, made durable before it is
    /// returned: a round instance is never started twice under one id, even across restarts.
    pub fn next_attempt(&self, job: &str, round: u64) -> Result<u32, StoreError> {
        self.write(Vec::new(), |txn| {
            let mut table = txn.open_table(ATTEMPTS)?;
            let next = table.get((job, round))?.map_or(0, |v| v.value());
            // Never hand out one number twice, even at the end of the range.
            let after = next.checked_add(1).ok_or(redb::Error::Corrupted(format!(
                "attempt numbers of round {round} are exhausted"
            )))?;
            table.insert((job, round), after)?;
            Ok(next)
        })
    }

    /// Commits a round: its checkpoint, its vectors (model ++ optimiser state) and its audit
    /// events, in one transaction. The ledger is inside the checkpoint, so the charge and the
    /// release it pays for cannot be separated.
    pub fn commit_round(
        &self,
        job: &str,
        checkpoint: &Checkpoint,
        model: &[f64],
        optimizer: &[f64],
        events: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let header = self.encode("checkpoint", checkpoint)?;
        let mut blob = f64_bytes(model);
        blob.extend(f64_bytes(optimizer));
        let round = checkpoint.round;
        self.write(events, |txn| {
            txn.open_table(CHECKPOINTS)?
                .insert((job, round), header.as_slice())?;
            txn.open_table(VECTORS)?
                .insert((job, round), blob.as_slice())?;
            // Progress: the job's count of starts without progress begins again.
            txn.open_table(STARTS)?.remove(job)?;
            Ok(())
        })
    }

    /// Counts (durably) one more start of `job` and returns how many starts it has had since
    /// it last committed a round, this one included.
    pub fn record_start(&self, job: &str) -> Result<u32, StoreError> {
        self.write(Vec::new(), |txn| {
            let mut table = txn.open_table(STARTS)?;
            let n = table.get(job)?.map_or(0, |v| v.value()).saturating_add(1);
            table.insert(job, n)?;
            Ok(n)
        })
    }

    /// The checkpoint of `round`, or of the last committed round when `round` is None.
    pub fn checkpoint(
        &self,
        job: &str,
        round: Option<u64>,
    ) -> Result<Option<Restored>, StoreError> {
        let found = self.read(|txn| {
            let headers = match txn.open_table(CHECKPOINTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let header = match round {
                Some(r) => headers.get((job, r))?.map(|v| (r, v.value().to_vec())),
                None => headers
                    .range((job, 0)..=(job, u64::MAX))?
                    .next_back()
                    .transpose()?
                    .map(|(k, v)| (k.value().1, v.value().to_vec())),
            };
            let Some((r, header)) = header else {
                return Ok(None);
            };
            let blob = txn
                .open_table(VECTORS)?
                .get((job, r))?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            Ok(Some((r, header, blob)))
        })?;
        let Some((r, header, blob)) = found else {
            return Ok(None);
        };
        let what = format!("checkpoint of job {job} round {r}");
        let checkpoint: Checkpoint = self.decode(&what, &header)?;
        if blob.len() % 8 != 0 || blob.len() / 8 < checkpoint.model_len {
            return Err(self.corrupt(&what, format!("vector blob of {} bytes", blob.len())));
        }
        let values: Vec<f64> = blob
            .chunks_exact(8)
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                f64::from_le_bytes(a)
            })
            .collect();
        let (model, optimizer) = values.split_at(checkpoint.model_len);
        if f64s_sha256(model) != checkpoint.model_sha256 {
            return Err(self.corrupt(&what, "the model does not match its hash".into()));
        }
        Ok(Some(Restored {
            model: model.to_vec(),
            optimizer: optimizer.to_vec(),
            checkpoint,
        }))
    }

    /// Keeps a level round of the tree `job` is growing, with its summed values (see
    /// [`LevelRecord`]), durably.
    pub fn save_level(
        &self,
        job: &str,
        round: u64,
        record: &LevelRecord,
        stats: &[f64],
    ) -> Result<(), StoreError> {
        let header = self.encode("level record", record)?;
        let mut value = (header.len() as u64).to_le_bytes().to_vec();
        value.extend(header);
        value.extend(f64_bytes(stats));
        self.write(Vec::new(), |txn| {
            txn.open_table(TREE_LEVELS)?
                .insert((job, round), value.as_slice())?;
            Ok(())
        })
    }

    /// The level rounds kept for `job`, by round, each checked against its hash.
    pub fn levels(&self, job: &str) -> Result<Vec<(u64, LevelRecord, Vec<f64>)>, StoreError> {
        let rows = self.read(|txn| {
            let table = match txn.open_table(TREE_LEVELS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut rows = Vec::new();
            for row in table.range((job, 0)..=(job, u64::MAX))? {
                let (k, v) = row?;
                rows.push((k.value().1, v.value().to_vec()));
            }
            Ok(rows)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (round, bytes) in rows {
            let what = format!("level record of job {job} round {round}");
            let bad = |reason: &str| self.corrupt(&what, reason.to_owned());
            let len_bytes: [u8; 8] = bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| bad("shorter than its length prefix"))?;
            let header_len = usize::try_from(u64::from_le_bytes(len_bytes))
                .map_err(|_| bad("a header length past the address space"))?;
            let header_end = header_len
                .checked_add(8)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| bad("a header past the record's end"))?;
            let record: LevelRecord = self.decode(&what, &bytes[8..header_end])?;
            let body = &bytes[header_end..];
            if body.len() % 8 != 0 {
                return Err(bad("a sum that is not whole f64 values"));
            }
            let stats: Vec<f64> = body
                .chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_le_bytes(a)
                })
                .collect();
            if f64s_sha256(&stats) != record.stats_sha256 {
                return Err(bad("the sum does not match its hash"));
            }
            out.push((round, record, stats));
        }
        Ok(out)
    }

    /// Drops the level rounds kept for `job` (its tree was committed, or it ended).
    pub fn clear_levels(&self, job: &str) -> Result<(), StoreError> {
        self.write(Vec::new(), |txn| {
            let mut table = txn.open_table(TREE_LEVELS)?;
            let rounds: Vec<u64> = table
                .range((job, 0)..=(job, u64::MAX))?
                .map(|row| row.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for r in rounds {
                table.remove((job, r))?;
            }
            Ok(())
        })
    }

    /// The rounds of `job` that have a committed checkpoint, in order.
    pub fn checkpoint_rounds(&self, job: &str) -> Result<Vec<u64>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(CHECKPOINTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut rounds = Vec::new();
            for row in table.range((job, 0)..=(job, u64::MAX))? {
                rounds.push(row?.0.value().1);
            }
            Ok(rounds)
        })
    }

    /// Moves a job to `status` (its reason and report untouched), in one transaction with its
    /// audit events.
    pub fn set_status(
        &self,
        id: &str,
        status: JobStatus,
        events: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        self.update_job(id, events, |job| job.status = status)
    }

    /// Marks a job finished, failed or cancelled, with its report, in one transaction with its
    /// audit events.
    pub fn end_job(
        &self,
        id: &str,
        status: JobStatus,
        reason: &str,
        report: Option<Value>,
        events: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        self.update_job(id, events, |job| {
            job.status = status;
            job.reason = Some(reason.to_owned());
            job.report = report;
        })
    }

    fn update_job(
        &self,
        id: &str,
        events: Vec<AuditEvent>,
        change: impl FnOnce(&mut JobRecord),
    ) -> Result<(), StoreError> {
        let mut job = self
            .job(id)?
            .ok_or_else(|| self.corrupt(&format!("job {id}"), "not in the store".into()))?;
        change(&mut job);
        let bytes = self.encode("job", &job)?;
        self.write(events, |txn| {
            txn.open_table(JOBS)?.insert(id, bytes.as_slice())?;
            Ok(())
        })
    }

    /// Audit records and jobs held, for the operator's log line.
    pub fn counts(&self) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        self.read(|txn| {
            let mut out = BTreeMap::new();
            for (name, len) in [
                ("jobs", txn.open_table(JOBS).map(|t| t.len())),
                ("checkpoints", txn.open_table(CHECKPOINTS).map(|t| t.len())),
            ] {
                out.insert(
                    name,
                    match len {
                        Ok(n) => n?,
                        Err(redb::TableError::TableDoesNotExist(_)) => 0,
                        Err(e) => return Err(e.into()),
                    },
                );
            }
            Ok(out)
        })
    }

    fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| self.corrupt(what, e.to_string()))
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        what: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(what, e.to_string()))
    }
}

fn db_err(path: &str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checkpoint(round: u64, model: &[f64]) -> Checkpoint {
        Checkpoint {
            round,
            model_len: model.len(),
            model_sha256: f64s_sha256(model),
            feature_mean: vec![1.0],
            feature_std: vec![2.0],
            training_rows: 10.0,
            ledger: Accountant::new(),
            holdout_ledger: Accountant::new(),
            records: Vec::new(),
        }
    }

    fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            spec_toml: "x".into(),
            submitted_by: "test".into(),
            submitted_ms: 1,
            status: JobStatus::Running,
            reason: None,
            report: None,
        }
    }

    /// Starts count up until a round commits, then begin again: a job that crashes the
    /// coordinator before its first commit keeps counting across restarts.
    #[test]
    fn starts_without_progress_count_until_a_round_commits() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Store::init(&data).unwrap();
        assert_eq!(store.record_start("job-a").unwrap(), 1);
        assert_eq!(store.record_start("job-a").unwrap(), 2);
        assert_eq!(store.record_start("job-b").unwrap(), 1);
        drop(store);
        let store = Store::open(&data).unwrap();
        assert_eq!(
            store.record_start("job-a").unwrap(),
            3,
            "durable across a restart"
        );
        store
            .commit_round("job-a", &checkpoint(1, &[0.5]), &[0.5], &[], Vec::new())
            .unwrap();
        assert_eq!(store.record_start("job-a").unwrap(), 1);
    }

    #[test]
    fn serve_refuses_a_missing_store_and_init_refuses_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(matches!(
            Store::open(&data),
            Err(StoreError::Missing { .. })
        ));
        drop(Store::init(&data).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&data).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o777,
                0o700,
                "the data directory is the coordinator's alone"
            );
        }
        assert!(matches!(Store::init(&data), Err(StoreError::Exists { .. })));
        assert!(Store::open(&data).is_ok());
    }

    #[test]
    fn commits_survive_reopening_and_the_latest_checkpoint_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::init(dir.path()).unwrap();
            store
                .submit_job(&job("j1"), vec![("job_submitted", json!({"job": "j1"}))])
                .unwrap();
            for r in 0..3u64 {
                let model = vec![r as f64; 4];
                store
                    .commit_round(
                        "j1",
                        &checkpoint(r, &model),
                        &model,
                        &[9.0, 8.0],
                        vec![("round_committed", json!({"round": r}))],
                    )
                    .unwrap();
            }
            assert_eq!(store.next_attempt("j1", 3).unwrap(), 0);
            assert_eq!(store.next_attempt("j1", 3).unwrap(), 1);
        }
        let store = Store::open(dir.path()).unwrap();
        let last = store.checkpoint("j1", None).unwrap().unwrap();
        assert_eq!(last.checkpoint.round, 2);
        assert_eq!(last.model, vec![2.0; 4]);
        assert_eq!(last.optimizer, vec![9.0, 8.0]);
        assert_eq!(store.checkpoint_rounds("j1").unwrap(), vec![0, 1, 2]);
        assert!(store.checkpoint("other", None).unwrap().is_none());
        assert_eq!(
            store.next_attempt("j1", 3).unwrap(),
            2,
            "attempt numbers survive a restart"
        );
        assert_eq!(store.job("j1").unwrap().unwrap().status, JobStatus::Running);
        // The mirror matches the store and verifies against the head.
        let mirror = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        let v = audit::verify(&mirror, Some(&store.audit_head())).unwrap();
        assert_eq!(v.records, 5, "created, submitted, three rounds");
        store
            .end_job(
                "j1",
                JobStatus::Finished,
                "done",
                Some(json!({"auc": 0.7})),
                vec![],
            )
            .unwrap();
        let j = store.job("j1").unwrap().unwrap();
        assert_eq!(j.status, JobStatus::Finished);
        assert_eq!(j.report, Some(json!({"auc": 0.7})));
    }

    #[test]
    fn a_lagging_mirror_is_rewritten_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::init(dir.path()).unwrap();
            store
                .audit(vec![("a", json!({})), ("b", json!({}))])
                .unwrap();
        }
        // A crash between the commit and the mirror's append leaves the mirror short.
        let path = dir.path().join(AUDIT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        std::fs::write(&path, format!("{first}\n")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            audit::verify(&text, Some(&store.audit_head()))
                .unwrap()
                .records,
            3
        );
        store.audit(vec![("c", json!({}))]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            audit::verify(&text, Some(&store.audit_head()))
                .unwrap()
                .records,
            4
        );
    }

    #[test]
    fn a_corrupted_vector_is_refused_not_loaded() {
        let store = Store::in_memory().unwrap();
        let model = vec![1.0, 2.0];
        let mut cp = checkpoint(0, &model);
        cp.model_sha256 = f64s_sha256(&[1.0, 2.5]);
        store.commit_round("j", &cp, &model, &[], vec![]).unwrap();
        let err = store.checkpoint("j", Some(0)).unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
    }
}
