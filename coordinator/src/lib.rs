//! fedmark-coordinator: runs training jobs across partners over gRPC.
//!
//! Partners dial in ([`service`]); one task per job ([`job`]) drives the rounds ([`round`])
//! and sees only running sums of the partners' vectors, committing each round to the durable
//! [`store`] before releasing it. [`config`] holds the operator's settings, [`report`] what
//! a finished job says, [`export`] what leaves for a data scientist (model files, model card,
//! a job's audit records) and [`metrics`] what operators scrape. [`run`] wires them together
//! for one job on a listener the caller bound, so tests and the simulator bind `127.0.0.1:0`.

use std::collections::BTreeSet;
use std::future::Future;

use fedmark_core::spec::JobSpec;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub mod config;
pub mod export;
pub mod job;
pub mod metrics;
pub mod report;
pub mod round;
pub mod service;
pub mod store;
pub mod tls;

use job::{Hub, JobError, JobOutcome, RunSettings};
use report::RoundRecord;
use service::{CoordinatorService, Sessions};

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
    if let Some(outcome) = job::stored_outcome(&settings.store, &spec, &id)? {
        tracing::info!(job = %id, "the store holds this job as finished; not running it again");
        return Ok(outcome);
    }
    let sessions = Sessions::default();
    // Bounded so that partners streaming faster than the job task sums wait (HTTP/2 flow
    // control then holds them back) instead of piling chunks up in memory.
    let (events_tx, events_rx) = mpsc::channel(64);
    let roster: BTreeSet<String> = settings
        .roster
        .iter()
        .map(|(id, _)| id.to_owned())
        .collect();
    let service = CoordinatorService::new(
        "fedmark-coordinator".into(),
        sessions.clone(),
        events_tx,
        Some(roster),
    );
    let tls = settings.tls.clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        let stop = async move {
            tokio::select! {
                _ = stop_rx => {}
                () = shutdown => {}
            }
        };
        service::serve(listener, service, tls, stop).await
    });
    let hub = Hub::new(sessions, events_rx, id, spec_toml);
    let outcome = job::run_job(hub, spec, settings, progress).await;
    // Graceful stop: partners close their sessions after `JobFinished`; one that does not is
    // cut off after a bounded grace period.
    let _ = stop_tx.send(());
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    outcome
}
