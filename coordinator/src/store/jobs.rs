//! A job's durable life in the store: submitted, registered (or found where a restarted
//! coordinator left it), each round committed with its checkpoint, and its outcome rebuilt
//! once finished. The job task ([`crate::job`]) calls these; they know nothing of sessions or
//! rounds.

use fedmark_core::audit::f64s_sha256;
use fedmark_core::budget::JobSpend;
use fedmark_core::features::{FeatureSchema, Standardizer};
use fedmark_core::model::{Architecture, Model};
use fedmark_core::spec::JobSpec;
use fedmark_core::train::ServerOptimizer;
use std::collections::BTreeMap;

use fedmark_core::aggregate::RoundKind;
use tracing::info;

use super::events::{CoordinatorEvent, TrainingFigures};
use super::{Checkpoint, JobRecord, JobStatus, Store, StoreError};
use crate::report::{JobReport, RoundRecord};

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
#[derive(Debug)]
pub struct JobState {
    /// The global model.
    pub model: Model,
    /// The server optimiser and its state.
    pub optimizer: ServerOptimizer,
    /// The standardisation of the model's inputs.
    pub standardizer: Standardizer,
    /// Training rows the statistics round counted (NaN: not measured, a DP job).
    pub training_rows: f64,
    /// The job's privacy ledger, by the disjoint rows its releases come from.
    pub ledger: JobSpend,
    /// The committed rounds.
    pub records: Vec<RoundRecord>,
    /// The first training round still to run.
    pub next_round: u64,
}

/// The outcome of a job the store holds as finished, rebuilt from its report and its last
/// checkpoint (a coordinator restarted after the job ended writes its results again).
pub fn stored_outcome(
    store: &Store,
    spec: &JobSpec,
    id: &str,
) -> Result<Option<JobOutcome>, StoreError> {
    let Some(job) = store.job(id)? else {
        return Ok(None);
    };
    if job.status != JobStatus::Finished {
        return Ok(None);
    }
    let corrupt = |reason: String| StoreError::Corrupt {
        path: "store".into(),
        what: format!("job {id}"),
        reason,
    };
    let report: JobReport = serde_json::from_value(job.report.unwrap_or_default())
        .map_err(|e| corrupt(format!("report: {e}")))?;
    let restored = store
        .checkpoint(id, None)?
        .ok_or_else(|| corrupt("finished without a checkpoint".into()))?;
    let model = checkpoint_model(spec, restored.model)
        .ok_or_else(|| corrupt("the checkpoint's model does not fit the spec".into()))?;
    Ok(Some(JobOutcome {
        report,
        model,
        standardizer: Standardizer {
            mean: restored.checkpoint.feature_mean,
            std: restored.checkpoint.feature_std,
        },
    }))
}

/// A checkpoint's model vector as the job's model: a linear model's parameters, or a gbdt
/// job's round-state words (read back checked against the schema); `None` when it does not
/// fit the spec.
fn checkpoint_model(spec: &JobSpec, params: Vec<f64>) -> Option<Model> {
    let schema = FeatureSchema::from_spec(spec);
    let arch = Architecture::from_spec(spec);
    if spec.is_gbdt() {
        fedmark_core::gbdt::RoundState::from_words(&params, &schema).ok()?;
        return Some(Model {
            arch,
            dim: schema.dim(),
            params,
        });
    }
    Model::from_params(arch, schema.dim(), params)
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
        vec![
            CoordinatorEvent::JobSubmitted {
                job: id.to_owned(),
                by: by.to_owned(),
                name: spec.job.name.clone(),
                purpose: spec.job.purpose.clone(),
                rounds: spec.job.rounds,
                spec_sha256: fedmark_core::audit::sha256_hex(spec_toml.as_bytes()),
                privacy_mode: format!("{:?}", spec.privacy.mode),
            }
            .into(),
        ],
    )
}

/// Where a job starts, as [`register`] finds it.
#[derive(Debug)]
pub enum Registered {
    /// From the beginning.
    Fresh,
    /// After its last committed round.
    Resumed(Box<JobState>),
    /// Nowhere: the store holds it ended.
    Ended {
        /// How it ended.
        status: JobStatus,
        /// Why.
        reason: String,
    },
}

/// Registers job `id` in the store (submitted by `by`), or finds where a restarted
/// coordinator left it.
pub fn register(
    store: &Store,
    id: &str,
    spec: &JobSpec,
    spec_toml: &str,
    by: &str,
) -> Result<Registered, StoreError> {
    match store.job(id)? {
        None => {
            submit(store, id, spec, spec_toml, by, JobStatus::Running)?;
            Ok(Registered::Fresh)
        }
        Some(job) if matches!(job.status, JobStatus::Running | JobStatus::Queued) => {
            if job.status == JobStatus::Queued {
                store.set_status(
                    id,
                    JobStatus::Running,
                    vec![CoordinatorEvent::JobStarted { job: id.to_owned() }.into()],
                )?;
            }
            let Some(restored) = store.checkpoint(id, None)? else {
                if job.status == JobStatus::Queued {
                    return Ok(Registered::Fresh);
                }
                let event = CoordinatorEvent::JobResumed {
                    job: id.to_owned(),
                    from_round: 0,
                    model_sha256: None,
                };
                store.audit(vec![event.into()])?;
                return Ok(Registered::Fresh);
            };
            let cp = restored.checkpoint;
            let unfit = || StoreError::Corrupt {
                path: "store".into(),
                what: format!("checkpoint of job {id} round {}", cp.round),
                reason: "its vectors do not fit the spec".into(),
            };
            let model = checkpoint_model(spec, restored.model).ok_or_else(unfit)?;
            let mut optimizer = ServerOptimizer::try_from_spec(spec, model.params.len())?;
            if !optimizer.restore(&restored.optimizer) {
                return Err(unfit());
            }
            info!(job = %id, round = cp.round, "resuming after the last committed round");
            let event = CoordinatorEvent::JobResumed {
                job: id.to_owned(),
                from_round: cp.round + 1,
                model_sha256: Some(cp.model_sha256.clone()),
            };
            store.audit(vec![event.into()])?;
            Ok(Registered::Resumed(Box::new(JobState {
                model,
                optimizer,
                standardizer: Standardizer {
                    mean: cp.feature_mean,
                    std: cp.feature_std,
                },
                training_rows: cp.training_rows,
                ledger: JobSpend {
                    training: cp.ledger,
                    holdout: cp.holdout_ledger,
                },
                records: cp.records,
                next_round: cp.round + 1,
            })))
        }
        Some(job) => Ok(Registered::Ended {
            status: job.status,
            reason: job.reason.unwrap_or_default(),
        }),
    }
}

/// What a committed round's audit record says of the round itself.
#[derive(Debug, Clone)]
pub struct Committed {
    /// `statistics` or `training`.
    pub kind: RoundKind,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// Members in its sum.
    pub participants: Vec<String>,
    /// Members that dropped.
    pub dropped: Vec<String>,
    /// Each member's consent commitment.
    pub consent_snapshots: BTreeMap<String, String>,
    /// A training round's figures.
    pub training: Option<TrainingFigures>,
}

/// Commits round `state.next_round - 1` with its audit record: the only way a round's result
/// becomes part of the job.
pub fn commit(
    store: &Store,
    job_id: &str,
    state: &JobState,
    committed: Committed,
) -> Result<(), StoreError> {
    let round = state.next_round - 1;
    let model_hash = f64s_sha256(&state.model.params);
    let event = CoordinatorEvent::RoundCommitted {
        job: job_id.to_owned(),
        round,
        model_sha256: model_hash.clone(),
        kind: committed.kind.as_str().to_owned(),
        attempt: committed.attempt,
        participants: committed.participants,
        dropped: committed.dropped,
        consent_snapshots: committed.consent_snapshots,
        training: committed.training,
    };
    let checkpoint = Checkpoint {
        round,
        model_len: state.model.params.len(),
        model_sha256: model_hash,
        feature_mean: state.standardizer.mean.clone(),
        feature_std: state.standardizer.std.clone(),
        training_rows: state.training_rows,
        ledger: state.ledger.training.clone(),
        holdout_ledger: state.ledger.holdout.clone(),
        records: state.records.clone(),
    };
    store.commit_round(
        job_id,
        &checkpoint,
        &state.model.params,
        &state.optimizer.state(),
        vec![event.into()],
    )
}
