//! The long-running coordinator: one gRPC port for partner sessions and the admin API, and a
//! scheduler that runs the submitted jobs **one at a time, in submission order**.
//!
//! One at a time because every job uses all of a partner's node (one session, one data set,
//! one privacy ledger per purpose), and a partner's node answers one job's rounds at a time;
//! running jobs side by side would only interleave them. Partners stay connected between jobs
//! and are offered each job as it starts.
//!
//! A job's life here is the same [`crate::job::run_job`] a one-job run uses. The scheduler
//! adds what a service needs around it: jobs the store holds unfinished (running, then queued)
//! are queued again at start, so a restart resumes them; a job that fails is marked `failed`
//! with its reason; a cancelled one is stopped at once (its last committed round stays in the
//! store, and resubmitting it resumes from there); and partners hear `JobFinished` whichever
//! way a job ends, so they are ready for the next.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fedmark_core::spec::JobSpec;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::admin::{AdminAuth, AdminService};
use crate::board::Board;
use crate::hub::{FINISH_SEND_LIMIT, Hub, SharedEvents};
use crate::job::{JobError, RunSettings, run_job};
use crate::queue::JobQueue;
use crate::service::{CoordinatorService, Event, Sessions};
use crate::store::events::CoordinatorEvent;
use crate::store::{JobStatus, StoreError};

/// HTTP/2 receive window per stream and per connection (eight 64 KiB input chunks).
const RECEIVE_WINDOW: u32 = 512 * 1024;

/// Why the service stopped other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store failed; the service cannot record what it does.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A running gRPC server for partners (and the admin API, when given).
pub(crate) struct PartnerServer {
    pub sessions: Sessions,
    pub events: SharedEvents,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl PartnerServer {
    /// Starts serving on `listener`; only the roster's partners may open sessions.
    pub fn start(
        listener: TcpListener,
        settings: &RunSettings,
        admin: Option<AdminService>,
    ) -> Self {
        let sessions = Sessions::with_transfers(settings.transfer_slots, settings.transfer_idle);
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
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stop_rx.await;
            };
            serve(listener, service, admin, tls, stop).await
        });
        Self {
            sessions,
            events: Arc::new(tokio::sync::Mutex::new(events_rx)),
            stop: Some(stop_tx),
            task,
        }
    }

    /// Stops serving: partners get a bounded grace period to close their sessions.
    pub async fn stop(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(crate::SHUTDOWN_GRACE, &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                warn!(error = %e, "the partner server task ended abnormally");
                Ok(())
            }
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// Starts of one job without a committed round after which it is failed instead of resumed.
pub const MAX_STARTS_WITHOUT_PROGRESS: u32 = 3;

/// How one scheduled job ended.
enum Ended {
    Ran(Result<(), JobError>),
    Cancelled(String),
    Stopped,
}

/// Serves partners and the admin API on `listener` and runs submitted jobs until `shutdown`.
/// `board` should hold the store's jobs ([`crate::board::Board::from_store`]) and follow
/// the jobs' events (a [`crate::board::BoardFeed`] in `settings.events`); the admin API reads
/// it, and the scheduler records on it how jobs end.
pub async fn serve_jobs(
    listener: TcpListener,
    settings: RunSettings,
    board: Board,
    auth: AdminAuth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = settings.store.clone();
    let queue = Arc::new(JobQueue::default());
    // Unfinished jobs first (a restart resumes them), then the queued ones, each in
    // submission order.
    let mut pending: Vec<_> = store
        .jobs()?
        .into_iter()
        .filter(|j| matches!(j.status, JobStatus::Running | JobStatus::Queued))
        .collect();
    pending.sort_by_key(|j| (j.status != JobStatus::Running, j.submitted_ms));
    for job in &pending {
        info!(job = %job.id, status = job.status.as_str(), "queued from the store");
        queue.push(&job.id);
    }
    let admin = AdminService::new(store.clone(), board.clone(), Arc::clone(&queue), auth)
        .with_max_model_params(settings.max_model_params);
    let server = PartnerServer::start(listener, &settings, Some(admin));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let result = async {
        loop {
            // Idle: wait for a job, answering nothing to partners (a session that opens now
            // is offered the next job when it starts).
            let next = {
                let mut events = server.events.lock().await;
                loop {
                    tokio::select! {
                        next = queue.next() => break Some(next),
                        event = events.recv() => match event {
                            Some(Event::Message { partner, .. }) => {
                                debug!(partner = %partner, "message between jobs; ignored");
                            }
                            Some(_) => {}
                            None => break None,
                        },
                        _ = stop_rx.wait_for(|s| *s) => break None,
                    }
                }
            };
            let Some((id, cancelled)) = next else { break };
            let Some(job) = store.job(&id)? else {
                queue.finish();
                continue;
            };
            if job.status.is_ended() {
                queue.finish();
                continue;
            }
            let spec = match JobSpec::from_toml(&job.spec_toml) {
                Ok(spec) => spec,
                Err(e) => {
                    let reason = format!("the stored spec does not parse: {e}");
                    let event = CoordinatorEvent::JobFailed {
                        job: id.clone(),
                        reason: reason.clone(),
                        starts: None,
                    }
                    .into();
                    board.end_job(&store, &id, JobStatus::Failed, &reason, event)?;
                    queue.finish();
                    continue;
                }
            };
            // A job that brings the coordinator down before it commits anything (a crash
            // each time) would be resumed first after every restart, for ever: after
            // MAX_STARTS_WITHOUT_PROGRESS such starts it is failed and the queue goes on.
            let starts = store.record_start(&id)?;
            if starts > MAX_STARTS_WITHOUT_PROGRESS {
                let reason = format!(
                    "started {starts} times without committing a round (the coordinator stopped during each start); failed so that the queue goes on — check the coordinator's log, then resubmit"
                );
                warn!(job = %id, starts, "job failed: no progress across restarts");
                let event = CoordinatorEvent::JobFailed {
                    job: id.clone(),
                    reason: reason.clone(),
                    starts: Some(starts),
                }
                .into();
                board.end_job(&store, &id, JobStatus::Failed, &reason, event)?;
                queue.finish();
                continue;
            }
            info!(job = %id, name = %spec.job.name, starts, "starting job");
            let hub = Hub::new(
                server.sessions.clone(),
                Arc::clone(&server.events),
                id.clone(),
                job.spec_toml.clone(),
            )
            .await;
            let ended = tokio::select! {
                r = run_job(hub, spec, settings.clone(), None) => Ended::Ran(r.map(|_| ())),
                reason = cancelled => Ended::Cancelled(reason.unwrap_or_else(|_| "cancelled".into())),
                _ = stop_rx.wait_for(|s| *s) => Ended::Stopped,
            };
            queue.finish();
            match ended {
                Ended::Ran(Ok(())) => info!(job = %id, "job finished"),
                Ended::Ran(Err(JobError::ServerStopped)) | Ended::Stopped => {
                    info!(job = %id, "stopping; the job resumes after its last committed round at the next start");
                    break;
                }
                Ended::Ran(Err(e)) => {
                    let reason = e.to_string();
                    warn!(job = %id, reason = %reason, "job failed");
                    let event = CoordinatorEvent::JobFailed {
                        job: id.clone(),
                        reason: reason.clone(),
                        starts: None,
                    }
                    .into();
                    // Partners hear a generic end: why a job failed (e.g. other partners'
                    // refusals) is not theirs to read.
                    if board.end_job(&store, &id, JobStatus::Failed, &reason, event)? {
                        server
                            .sessions
                            .finish_all(&id, "the job failed", FINISH_SEND_LIMIT)
                            .await;
                    }
                }
                Ended::Cancelled(reason) => {
                    warn!(job = %id, reason = %reason, "job cancelled");
                    let at = store.checkpoint_rounds(&id)?.last().copied();
                    let event = CoordinatorEvent::JobCancelled {
                        job: id.clone(),
                        by: None,
                        reason: Some(reason.clone()),
                        was: "running".into(),
                        last_committed_round: Some(at),
                    }
                    .into();
                    if board.end_job(&store, &id, JobStatus::Cancelled, &reason, event)? {
                        server
                            .sessions
                            .finish_all(&id, "the job was cancelled", FINISH_SEND_LIMIT)
                            .await;
                    }
                }
            }
        }
        Ok::<(), ServerError>(())
    }
    .await;
    server.stop().await?;
    result
}

/// Serves `service` (and the admin API, when given) on an already-bound listener until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: CoordinatorService,
    admin: Option<AdminService>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(addr = ?addr, tls = tls.is_some(), "coordinator listening");
    let mut builder = tonic::transport::Server::builder();
    let mut service = service;
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
        // With TLS every session is bound to its certificate's name; no caller can forget it.
        service = service.bind_certificates();
    }
    builder
        // Small HTTP/2 receive windows bound what a partner can have in flight unread, so the
        // coordinator's memory stays one vector plus a small constant per partner.
        .initial_stream_window_size(RECEIVE_WINDOW)
        .initial_connection_window_size(RECEIVE_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service.into_server())
        .add_optional_service(admin.map(AdminService::into_server))
        // `tcp_nodelay` above does not reach sockets from our own listener; without it Nagle
        // holds each small phase message for the peer's delayed ACK (40 ms a round trip).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
