//! fedmark-coordinator: runs training jobs across partners over gRPC.
//!
//! Partners dial in ([`service`]); one task per job ([`job`]) drives the rounds ([`round`])
//! and sees only running sums of the partners' vectors, committing each round to the durable
//! [`store`] before releasing it. [`config`] holds the operator's settings, [`report`] what
//! a finished job says, [`export`] what leaves for a data scientist (model files, model card,
//! a job's audit records), [`scoring`] how the `fedmark` CLI scores an audience with an exported
//! model, and [`metrics`] what operators scrape (with the dashboard).
//!
//! Two ways to run: [`run`] serves one job to its end on a listener the caller bound (the
//! simulator and tests bind `127.0.0.1:0`); [`server::serve_jobs`] is the long-running
//! coordinator, taking jobs over the authenticated [`admin`] API and showing their progress
//! on the [`board`]. Both drive the same job task and round state machine.

use std::future::Future;

use fedmark_core::spec::JobSpec;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub mod admin;
mod attempts;
pub mod board;
pub mod bulk;
pub mod card;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod export;
pub mod http;
pub mod hub;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod report;
pub mod round;
pub mod scoring;
pub mod server;
pub mod service;
pub mod settings;
pub mod store;
pub mod tls;
pub mod token;

use hub::Hub;
use job::{JobError, JobOutcome, RunSettings};
use report::RoundRecord;

/// How long a stopping server waits for partners to close their sessions.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A job id derived from the spec text, so resubmitting the same spec names the same job.
pub fn job_id(spec_toml: &str) -> String {
    let digest = Sha256::digest(spec_toml.as_bytes());
    format!("job-{}", hex::encode(&digest[..6]))
}

/// Serves partners on `listener` and runs `spec` to its end, then stops serving. Only the
/// partners of `settings.roster` may join; `progress` receives each completed round.
pub async fn run(
    listener: TcpListener,
    spec: JobSpec,
    settings: RunSettings,
    progress: Option<mpsc::UnboundedSender<RoundRecord>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<JobOutcome, JobError> {
    let spec_toml = spec.to_toml()?;
    let id = job_id(&spec_toml);
    if let Some(outcome) = store::jobs::stored_outcome(&settings.store, &spec, &id)? {
        tracing::info!(job = %id, "the store holds this job as finished; not running it again");
        return Ok(outcome);
    }
    let server = server::PartnerServer::start(listener, &settings, None);
    let hub = Hub::new(
        server.sessions.clone(),
        server.events.clone(),
        id,
        spec_toml,
    )
    .await;
    let outcome = tokio::select! {
        outcome = job::run_job(hub, spec, settings, progress) => outcome,
        () = shutdown => Err(JobError::ServerStopped),
    };
    // Graceful stop: partners close their sessions after `JobFinished`; one that does not is
    // cut off after a bounded grace period.
    if let Err(e) = server.stop().await {
        tracing::warn!(error = %e, "the partner server ended with an error");
    }
    outcome
}
