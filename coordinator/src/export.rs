//! What leaves the coordinator for a data scientist: a trained model in files that load without
//! fedmark, the model card, and a job's audit records.
//!
//! [`export_model`] reads a checkpoint from the durable [`Store`] and writes
//! - `weights.npy`: the flat parameter vector as a little-endian float64 NPY (v1.0) array;
//! - `pipeline.json`: how a CSV row becomes the model's input and how the flat vector splits
//!   into layers, derived from [`FeatureSchema::from_spec`] and the checkpoint's standardiser,
//!   so it cannot drift from what the partners trained on;
//! - `model_card.json` (finished jobs): the same card `serve` writes ([`model_card`]).
//!
//! [`model_files`] builds the same files in memory for the admin API (`fedmark model export`),
//! so an export over the network and one from the store are byte for byte the same.
//!
//! [`job_audit_records`] selects one job's records from the audit chain. A selection is not a
//! verifiable chain on its own (records of other jobs are cut out), so it carries the full
//! chain's head to check `audit.jsonl` against.

use std::io::Write;
use std::path::{Path, PathBuf};

use fedmark_core::features::{Categorical, FeatureSchema, Standardizer};
use fedmark_core::model::Architecture;
use fedmark_core::spec::JobSpec;
use fedmark_proto::durable::AtomicFile;
use serde_json::{Value, json};

use crate::report::PrivacyReport;
use crate::store::jobs::{JobOutcome, stored_outcome};
use crate::store::{JobStatus, Store, StoreError};
use fedmark_core::audit::f64s_sha256;

/// File name of the exported weights.
pub const WEIGHTS_FILE: &str = "weights.npy";
/// File name of the exported input pipeline.
pub const PIPELINE_FILE: &str = "pipeline.json";
/// File name of the model card.
pub const CARD_FILE: &str = "model_card.json";
/// A boosted-trees model in fedmark's own JSON (`fedmark-gbdt`, version 1).
pub const TREES_FILE: &str = "model.json";
/// A boosted-trees model in XGBoost's JSON model format (`xgboost.Booster(model_file=…)`).
pub const XGBOOST_FILE: &str = "model.xgb.json";
/// Format tag of `pipeline.json`.
pub const PIPELINE_FORMAT: &str = "fedmark-pipeline/1";

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store holds no job of this id.
    #[error("the coordinator store holds no job `{id}`")]
    UnknownJob {
        /// The id asked for.
        id: String,
    },
    /// The job has no checkpoint of that round.
    #[error("job `{id}` has no committed round {round} (committed: {committed})")]
    NoCheckpoint {
        /// Job id.
        id: String,
        /// The round asked for (`latest` when none was).
        round: String,
        /// The rounds the store holds.
        committed: String,
    },
    /// The stored spec no longer parses.
    #[error("job `{id}`: stored spec: {source}")]
    Spec {
        /// Job id.
        id: String,
        /// The spec error.
        #[source]
        source: fedmark_core::spec::SpecError,
    },
    /// The checkpoint does not fit the spec's architecture or feature layout.
    #[error("job `{id}` round {round}: {reason}")]
    Mismatch {
        /// Job id.
        id: String,
        /// Round.
        round: u64,
        /// What does not fit.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An audit record in the store is not JSON.
    #[error("audit record {line}: {source}")]
    AuditRecord {
        /// 1-based line in the chain.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An output file could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ExportError {
    /// True when the caller asked for something the store does not have (a usage error, not a
    /// failure of the store or the disk).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            ExportError::UnknownJob { .. } | ExportError::NoCheckpoint { .. }
        )
    }
}

/// What [`export_model`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelExport {
    /// Job id.
    pub job_id: String,
    /// The round whose checkpoint the weights come from.
    pub round: u64,
    /// The last committed round of the job.
    pub last_round: u64,
    /// SHA-256 of the weights (little-endian f64), as the audit chain names them.
    pub model_sha256: String,
    /// Number of parameters.
    pub params: usize,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// A NumPy `.npy` (format 1.0) file holding `values` as a one-dimensional little-endian
/// float64 array.
pub fn npy_f64(values: &[f64]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    // magic (6) + version (2) + header length (2) + dict, padded with spaces and ended by a
    // newline so that the data starts at a multiple of 64 bytes.
    let unpadded = 10 + dict.len() + 1;
    let header_len = dict.len() + 1 + (64 - unpadded % 64) % 64;
    let mut out = Vec::with_capacity(10 + header_len + 8 * values.len());
    out.extend_from_slice(b"\x93NUMPY");
    out.extend_from_slice(&[1, 0]);
    // At most a few hundred bytes: the shape is one integer.
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(10 + header_len - 1, b' ');
    out.push(b'\n');
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The model file `pipeline.json` names: a network's parameters (`weights.npy`) or a
/// boosted model's trees (`model.json`, whose bytes it states the SHA-256 of).
#[derive(Debug, Clone, Copy)]
pub enum ModelBytes<'a> {
    /// A linear model's or an MLP's parameter vector.
    Network(&'a [f64]),
    /// A boosted model: its `model.json` bytes and its number of trees.
    Trees(&'a [u8], usize),
}

/// `pipeline.json`: everything needed to turn a CSV row into the model's input and score it.
/// A boosted model's numeric inputs are the clamped values themselves (mean 0, std 1): its
/// trees bin them with `model.json`'s edges.
pub fn pipeline(
    spec: &JobSpec,
    standardizer: &Standardizer,
    job_id: &str,
    round: u64,
    model_bytes: ModelBytes<'_>,
) -> Value {
    let schema = FeatureSchema::from_spec(spec);
    let mut columns = Vec::new();
    for (j, name) in schema.numeric.iter().enumerate() {
        columns.push(json!({
            "name": name,
            "type": "numeric",
            "index": j,
            "mean": standardizer.mean.get(j),
            "std": standardizer.std.get(j),
            "range": schema.ranges.get(j).copied().flatten(),
        }));
    }
    let mut offset = schema.numeric.len();
    for (name, enc) in &schema.categorical {
        let width = enc.width();
        columns.push(match enc {
            Categorical::Vocabulary(vocab) => json!({
                "name": name,
                "type": "categorical",
                "offset": offset,
                "width": width,
                "vocabulary": vocab,
                "other_slot": vocab.len(),
            }),
            Categorical::Hashed { buckets } => json!({
                "name": name,
                "type": "hashed",
                "offset": offset,
                "width": width,
                "buckets": buckets,
                "hash": "sha256",
            }),
        });
        offset += width;
    }
    let d = schema.dim();
    let model = match (model_bytes, Architecture::from_spec(spec)) {
        (ModelBytes::Trees(..), _) => json!({
            "kind": "gbdt",
            "file_format": format!("{}/{}", fedmark_core::gbdt::FORMAT, fedmark_core::gbdt::VERSION),
            "score": "sigmoid(base_margin + the value of the leaf the row reaches in each tree); a numeric input goes to bin b = the number of the feature's thresholds below it, a categorical one to its slot",
        }),
        (_, Architecture::Logistic) => json!({
            "kind": "logistic",
            "layers": [
                {"name": "w", "offset": 0, "shape": [d]},
                {"name": "b", "offset": d, "shape": []},
            ],
            "score": "sigmoid(x . w + b)",
        }),
        (_, Architecture::Mlp { hidden: h }) => json!({
            "kind": "mlp",
            "hidden": h,
            "activation": "relu",
            "layers": [
                {"name": "W1", "offset": 0, "shape": [d, h], "order": "C (row j holds input j's weights to every hidden unit)"},
                {"name": "b1", "offset": d * h, "shape": [h]},
                {"name": "w2", "offset": d * h + h, "shape": [h]},
                {"name": "b2", "offset": d * h + 2 * h, "shape": []},
            ],
            "score": "sigmoid(relu(x . W1 + b1) . w2 + b2)",
        }),
    };
    let weights = match model_bytes {
        ModelBytes::Network(params) => json!({
            "file": WEIGHTS_FILE,
            "dtype": "<f8",
            "length": params.len(),
            "sha256": f64s_sha256(params),
        }),
        ModelBytes::Trees(bytes, trees) => json!({
            "file": TREES_FILE,
            "dtype": "fedmark-gbdt JSON",
            "length": trees,
            "sha256": fedmark_core::audit::sha256_hex(bytes),
        }),
    };
    json!({
        "format": PIPELINE_FORMAT,
        "job_id": job_id,
        "name": spec.job.name,
        "purpose": spec.job.purpose,
        "round": round,
        "weights": weights,
        "input_dim": d,
        "label": {
            "column": spec.label.column,
            "positive": spec.label.positive,
        },
        "columns": columns,
        "model": model,
        "rules": {
            "csv": "comma-separated with a header row; columns are found by name; a record whose field count differs from the header's is skipped",
            "numeric": "the field, trimmed of surrounding whitespace, parsed as a decimal number; a row with an empty, unparseable or non-finite value is skipped (never imputed); x is clamped to `range` [low, high] when the column has one (null: no clamp); input[index] = (x - mean) / std",
            "categorical": "the field, trimmed; input[offset + i] = 1 where i is the value's position in the vocabulary, or other_slot (= len(vocabulary), the last slot) for any value not in it, empty included",
            "hashed": "the field, trimmed; input[offset + (u64 from the first 8 bytes of SHA-256(UTF-8 value), little-endian) mod buckets] = 1",
            "label": "positive when the field equals label.positive exactly (not trimmed); a row with an empty label is skipped",
            "other_inputs": "every input not set above is 0",
        },
    })
}

/// Replaces `path` with `bytes` durably ([`fedmark_proto::durable`]): a crash never leaves
/// half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    write_through_temp(path, |file| file.write_all(bytes))
}

/// Pretty JSON of `value` streamed into `path` as [`write_atomic`] writes, for values too
/// large to hold twice in memory, such as a model of millions of parameters; the bytes are
/// those [`json_bytes`] would give.
pub fn write_json_streamed(path: &Path, value: &impl serde::Serialize) -> Result<(), ExportError> {
    write_through_temp(path, |file| {
        serde_json::to_writer_pretty(&mut *file, value)?;
        file.write_all(b"\n")
    })
}

fn write_through_temp(
    path: &Path,
    write: impl FnOnce(&mut AtomicFile) -> std::io::Result<()>,
) -> Result<(), ExportError> {
    fedmark_proto::durable::replace_with(path, write).map_err(|source| ExportError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Pretty JSON of `value` with a final newline, as every exported JSON file is written.
pub fn json_bytes(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Pretty JSON of `value`, written with [`write_atomic`]; returns the bytes written.
pub fn write_json(path: &Path, value: &Value) -> Result<Vec<u8>, ExportError> {
    let bytes = json_bytes(value);
    write_atomic(path, &bytes)?;
    Ok(bytes)
}

/// The model card: what the model is, how well it does, what privacy it gives, who trained
/// it round by round, which consent snapshots it used, and the audit head that proves it.
pub fn model_card(store: &Store, outcome: &JobOutcome) -> Result<Value, ExportError> {
    let report = &outcome.report;
    let job = store
        .job(&report.job_id)?
        .ok_or_else(|| ExportError::UnknownJob {
            id: report.job_id.clone(),
        })?;
    let rounds = store.checkpoint_rounds(&report.job_id)?;
    let mut consent = Vec::new();
    for (i, line) in store.audit_text()?.lines().enumerate() {
        let v: Value = serde_json::from_str(line).map_err(|source| ExportError::AuditRecord {
            line: i + 1,
            source,
        })?;
        if v["kind"] == "round_committed"
            && v["data"]["job"] == report.job_id.as_str()
            && v["data"]["consent_snapshots"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        {
            consent.push(json!({
                "round": v["data"]["round"],
                "snapshots": v["data"]["consent_snapshots"],
            }));
        }
    }
    Ok(json!({
        "job_id": report.job_id,
        "name": report.name,
        "purpose": report.purpose,
        "spec_toml": job.spec_toml,
        "submitted_by": job.submitted_by,
        "model": {
            "kind": report.model_kind,
            "params": report.model_params,
            "input_dim": report.input_dim,
            "sha256": f64s_sha256(&outcome.model.params),
        },
        "metrics": report.final_metrics,
        "privacy": privacy_card(report.privacy.as_ref()),
        "secure_aggregation": report.secure_aggregation,
        "partners_per_round": report.rounds.iter().map(|r| r.participants).collect::<Vec<_>>(),
        "partners_accepted": report.partners_accepted,
        "partners_refused": report.partners_refused,
        "committed_rounds": rounds,
        "consent_snapshots": consent,
        "stop_reason": report.stop_reason,
        "audit_head": store.audit_head(),
    }))
}

/// The card's privacy section: the total (ε, δ) over every release of the job, per protected
/// unit, how it composes, and each side's share.
fn privacy_card(privacy: Option<&PrivacyReport>) -> Value {
    let Some(p) = privacy else {
        return json!({
            "mode": "none",
            "guarantee": "no differential privacy: secure aggregation (if on) hides each partner's update, but the model and its metrics are not noised",
        });
    };
    let mode = p.mode_name();
    let composition = if p.epsilon_evaluation.is_some() {
        "parallel: training and holdout rows are disjoint (each record's side is decided by its own values), so the total is the larger side's"
    } else {
        "sequential over the training rounds"
    };
    json!({
        "mode": mode,
        "protected_unit": p.protected_unit,
        "guarantee": format!(
            "({:.4}, {:e})-differential privacy for {} over every release of the job",
            p.epsilon_spent, p.delta, p.protected_unit
        ),
        "epsilon": p.epsilon_spent,
        "delta": p.delta,
        "epsilon_budget": p.epsilon_budget,
        "accountant": p.accountant,
        "accountant_parameters": p.accountant_parameters,
        "calibrated_by": p.calibrated_by,
        "composition": composition,
        "epsilon_training": p.epsilon_training,
        "epsilon_evaluation": p.epsilon_evaluation,
        "noise_multiplier": p.noise_multiplier,
        "clip": p.clip,
    })
}

/// One exported file: its name and its bytes.
pub type ModelFile = (&'static str, Vec<u8>);

/// Exports the model of `job_id` at `round` (the last committed round when None) into `out`:
/// `weights.npy`, `pipeline.json`, and for a finished job `model_card.json`. The export is
/// recorded in the audit chain (`model_exported`).
pub fn export_model(
    store: &Store,
    job_id: &str,
    round: Option<u64>,
    out: &Path,
) -> Result<ModelExport, ExportError> {
    let (mut done, files) = build_model_files(store, job_id, round)?;
    std::fs::create_dir_all(out).map_err(|source| ExportError::Io {
        path: out.display().to_string(),
        source,
    })?;
    for (name, bytes) in &files {
        let path = out.join(name);
        write_atomic(&path, bytes)?;
        done.files.push(path);
    }
    audit_model_export(store, &done, &files, &out.display().to_string())?;
    Ok(done)
}

/// The files of [`export_model`] in memory, for sending over the admin API to `destination`
/// (who asked, for the audit record). The export is recorded in the audit chain before the
/// files are returned.
pub fn model_files(
    store: &Store,
    job_id: &str,
    round: Option<u64>,
    destination: &str,
) -> Result<(ModelExport, Vec<ModelFile>), ExportError> {
    let (done, files) = build_model_files(store, job_id, round)?;
    audit_model_export(store, &done, &files, destination)?;
    Ok((done, files))
}

fn audit_model_export(
    store: &Store,
    done: &ModelExport,
    files: &[ModelFile],
    destination: &str,
) -> Result<(), ExportError> {
    let card_sha256 = files
        .iter()
        .find(|(name, _)| *name == CARD_FILE)
        .map(|(_, bytes)| fedmark_core::audit::sha256_hex(bytes));
    store.audit(vec![(
        "model_exported",
        json!({
            "job": done.job_id,
            "round": done.round,
            "model_sha256": done.model_sha256,
            "card_sha256": card_sha256,
            "out_dir": destination,
        }),
    )])?;
    Ok(())
}

fn build_model_files(
    store: &Store,
    job_id: &str,
    round: Option<u64>,
) -> Result<(ModelExport, Vec<ModelFile>), ExportError> {
    let job = store.job(job_id)?.ok_or_else(|| ExportError::UnknownJob {
        id: job_id.to_owned(),
    })?;
    let spec = JobSpec::from_toml(&job.spec_toml).map_err(|source| ExportError::Spec {
        id: job_id.to_owned(),
        source,
    })?;
    let committed = store.checkpoint_rounds(job_id)?;
    let no_checkpoint = || ExportError::NoCheckpoint {
        id: job_id.to_owned(),
        round: round.map_or_else(|| "latest".to_owned(), |r| r.to_string()),
        committed: if committed.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{}..={}",
                committed.first().copied().unwrap_or(0),
                committed.last().copied().unwrap_or(0)
            )
        },
    };
    let last_round = *committed.last().ok_or_else(no_checkpoint)?;
    let restored = store.checkpoint(job_id, round)?.ok_or_else(no_checkpoint)?;
    let at = restored.checkpoint.round;
    let schema = FeatureSchema::from_spec(&spec);
    if spec.is_gbdt() {
        return trees_export(
            store,
            &spec,
            &schema,
            &job,
            (at, last_round),
            &restored.model,
        );
    }
    let expected = Architecture::from_spec(&spec).num_params(schema.dim());
    let mismatch = |reason: String| ExportError::Mismatch {
        id: job_id.to_owned(),
        round: at,
        reason,
    };
    if restored.model.len() != expected {
        return Err(mismatch(format!(
            "{} parameters stored, the spec's model has {expected}",
            restored.model.len()
        )));
    }
    let cp = &restored.checkpoint;
    if cp.feature_mean.len() != schema.numeric.len() || cp.feature_std.len() != schema.numeric.len()
    {
        return Err(mismatch(format!(
            "standardisation for {} columns, the spec declares {} numeric columns",
            cp.feature_mean.len(),
            schema.numeric.len()
        )));
    }
    let standardizer = Standardizer {
        mean: cp.feature_mean.clone(),
        std: cp.feature_std.clone(),
    };
    let mut files = vec![
        (WEIGHTS_FILE, npy_f64(&restored.model)),
        (
            PIPELINE_FILE,
            json_bytes(&pipeline(
                &spec,
                &standardizer,
                job_id,
                at,
                ModelBytes::Network(&restored.model),
            )),
        ),
    ];
    if job.status == JobStatus::Finished
        && let Some(outcome) = stored_outcome(store, &spec, job_id)?
    {
        let card = model_card(store, &outcome)?;
        files.push((CARD_FILE, json_bytes(&card)));
        files.push((
            crate::card::CARD_MARKDOWN_FILE,
            crate::card::markdown(&card).into_bytes(),
        ));
    }
    let done = ModelExport {
        job_id: job_id.to_owned(),
        round: at,
        last_round,
        model_sha256: f64s_sha256(&restored.model),
        params: restored.model.len(),
        files: Vec::new(),
    };
    Ok((done, files))
}

/// A boosted-trees job's export: the model in fedmark's own JSON and in XGBoost's, and the
/// card of a finished job.
fn trees_export(
    store: &Store,
    spec: &JobSpec,
    schema: &FeatureSchema,
    job: &crate::store::JobRecord,
    (at, last_round): (u64, u64),
    words: &[f64],
) -> Result<(ModelExport, Vec<ModelFile>), ExportError> {
    let job_id = job.id.as_str();
    let state = fedmark_core::gbdt::RoundState::from_words(words, schema).map_err(|e| {
        ExportError::Mismatch {
            id: job_id.to_owned(),
            round: at,
            reason: e.to_string(),
        }
    })?;
    let own = state.model.to_json().map_err(|e| ExportError::Mismatch {
        id: job_id.to_owned(),
        round: at,
        reason: e.to_string(),
    })?;
    let own = own.into_bytes();
    let identity = Standardizer {
        mean: vec![0.0; schema.numeric.len()],
        std: vec![1.0; schema.numeric.len()],
    };
    let pipe = pipeline(
        spec,
        &identity,
        job_id,
        at,
        ModelBytes::Trees(&own, state.model.trees().len()),
    );
    let mut files = vec![
        (PIPELINE_FILE, json_bytes(&pipe)),
        (TREES_FILE, own),
        (XGBOOST_FILE, json_bytes(&state.model.to_xgboost_json())),
    ];
    if job.status == JobStatus::Finished
        && let Some(outcome) = stored_outcome(store, spec, job_id)?
    {
        let card = model_card(store, &outcome)?;
        files.push((CARD_FILE, json_bytes(&card)));
        files.push((
            crate::card::CARD_MARKDOWN_FILE,
            crate::card::markdown(&card).into_bytes(),
        ));
    }
    Ok((
        ModelExport {
            job_id: job_id.to_owned(),
            round: at,
            last_round,
            model_sha256: f64s_sha256(words),
            params: words.len(),
            files: Vec::new(),
        },
        files,
    ))
}

/// One job's audit records, as [`job_audit_records`] selects them.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSelection {
    /// The selected records, each one line of canonical JSON as the chain holds it.
    pub lines: Vec<String>,
    /// Records in the whole chain.
    pub total: usize,
    /// Hash of the whole chain's last record, to check `audit.jsonl` with
    /// `audit verify --head`.
    pub head: String,
}

/// The records of the audit chain that concern `job_id` (`data.job` is the id) and the
/// store's own records (no `data.job`), in chain order.
pub fn job_audit_records(store: &Store, job_id: &str) -> Result<AuditSelection, ExportError> {
    let text = store.audit_text()?;
    let mut lines = Vec::new();
    let mut total = 0;
    let mut head = fedmark_core::audit::GENESIS.to_owned();
    for (i, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line).map_err(|source| ExportError::AuditRecord {
            line: i + 1,
            source,
        })?;
        total += 1;
        if let Some(h) = v["hash"].as_str() {
            head = h.to_owned();
        }
        let job = &v["data"]["job"];
        if job.is_null() || job == job_id {
            lines.push(line.to_owned());
        }
    }
    Ok(AuditSelection { lines, total, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A streamed file holds exactly what building the `Value` and printing it would give,
    /// with the final newline, and leaves no temporary file behind.
    #[test]
    fn streamed_json_matches_json_bytes() {
        #[derive(serde::Serialize)]
        struct Sorted<'a> {
            a_values: &'a [f64],
            b_name: &'a str,
            c_count: usize,
        }
        let values = [0.1, -2.5e-300, 1e21, f64::MIN_POSITIVE, 3.0];
        let x = Sorted {
            a_values: &values,
            b_name: "logistic \"q\"",
            c_count: 7,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        write_json_streamed(&path, &x).unwrap();
        let expected = json_bytes(&serde_json::to_value(&x).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/model.json");
        let err = write_json_streamed(&missing, &x).unwrap_err().to_string();
        assert!(err.contains("no/such/dir"), "{err}");
    }

    #[test]
    fn npy_header_is_aligned_and_parses() {
        for n in [0usize, 1, 3, 61, 1_000_000] {
            let values: Vec<f64> = (0..n.min(5)).map(|i| i as f64 * 0.5 - 1.0).collect();
            let values = if n > 5 { vec![0.25; n] } else { values };
            let bytes = npy_f64(&values);
            assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0, "n = {n}");
            let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap_or("");
            assert!(header.ends_with('\n'));
            assert!(
                header.starts_with(&format!(
                    "{{'descr': '<f8', 'fortran_order': False, 'shape': ({n},), }}"
                )),
                "{header:?}"
            );
            let data = &bytes[10 + header_len..];
            assert_eq!(data.len(), 8 * values.len());
            for (chunk, v) in data.chunks_exact(8).zip(&values) {
                let mut a = [0u8; 8];
                a.copy_from_slice(chunk);
                assert_eq!(f64::from_le_bytes(a), *v);
            }
        }
    }

    /// A spec with two numeric, one vocabulary and one hashed column, and `model` (TOML).
    fn spec_with(model: &str) -> JobSpec {
        let spec = JobSpec::from_toml(&format!(
            r#"
[job]
name = "t"
purpose = "p"
rounds = 1
[label]
column = "y"
positive = "yes"
[features]
numeric = ["a", "b"]
categorical = ["c", "h"]
hash_buckets = 8
[features.range]
b = [-1.5, 20]
[features.vocabulary]
c = ["x", "y"]
[model]
{model}
"#
        ));
        let Ok(spec) = spec else {
            panic!("spec: {spec:?}");
        };
        spec
    }

    /// What `pipeline.json` and `weights.npy` say reads back, through
    /// `fedmark_core::pipeline` (what `fedmark score` loads), into the very schema,
    /// standardisation, architecture and weights they were written from.
    #[test]
    fn an_export_reads_back_into_what_it_was_built_from() {
        use fedmark_core::pipeline::{ModelFamily, Pipeline, ScoringModel};
        for model in ["kind = \"logistic\"", "kind = \"mlp\"\nhidden = 3"] {
            let spec = spec_with(model);
            let schema = FeatureSchema::from_spec(&spec);
            let arch = Architecture::from_spec(&spec);
            let st = Standardizer {
                mean: vec![1.0 / 3.0, -2.5e-7],
                std: vec![3.0, 0.1],
            };
            let params: Vec<f64> = (0..arch.num_params(schema.dim()))
                .map(|i| (i as f64).sin() / 7.0)
                .collect();
            let text = String::from_utf8(json_bytes(&pipeline(
                &spec,
                &st,
                "job-x",
                4,
                ModelBytes::Network(&params),
            )))
            .unwrap();
            let read = Pipeline::from_json(&text).unwrap();
            assert_eq!(read.weights_file(), WEIGHTS_FILE);
            assert_eq!((read.job_id.as_str(), read.round), ("job-x", 4));
            let m = read.with_weights(&npy_f64(&params)).unwrap();
            assert_eq!(m.pipeline.schema, schema);
            assert_eq!(m.pipeline.standardizer, st, "bit for bit");
            assert_eq!(m.pipeline.family, ModelFamily::Network(arch));
            let ScoringModel::Network(model) = &m.model else {
                panic!("a network export reads as a network");
            };
            assert_eq!(model.params, params);
            assert_eq!(m.pipeline.label_column, "y");
        }
    }

    #[test]
    fn pipeline_follows_the_schema_layout() {
        let spec = spec_with("kind = \"mlp\"\nhidden = 3");
        let st = Standardizer {
            mean: vec![1.0, 2.0],
            std: vec![3.0, 4.0],
        };
        let d = 2 + 3 + 8;
        let params = vec![0.0; d * 3 + 2 * 3 + 1];
        let p = pipeline(&spec, &st, "job-x", 4, ModelBytes::Network(&params));
        assert_eq!(p["input_dim"], d);
        assert_eq!(p["round"], 4);
        assert_eq!(p["columns"][1]["std"], 4.0);
        assert_eq!(p["columns"][2]["offset"], 2);
        assert_eq!(p["columns"][2]["other_slot"], 2);
        assert_eq!(p["columns"][3]["type"], "hashed");
        assert_eq!(p["columns"][3]["offset"], 5);
        assert_eq!(p["model"]["layers"][3]["offset"], d * 3 + 2 * 3);
        assert_eq!(p["weights"]["length"], params.len());
    }
}
