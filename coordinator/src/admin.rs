//! The admin API: what data scientists and operators call on a long-running coordinator
//! (`fedmark job submit|list|watch|cancel`, `fedmark model export`, `fedmark audit export`).
//!
//! Every call must present the admin credential ([`AdminAuth`]): the admin token as a bearer
//! token, and under mutual TLS also a client certificate whose common name starts with
//! `admin:`, so a partner's certificate (which the TLS layer accepts for partner sessions) can
//! never submit or read jobs (the rule is [`crate::tls::admin_name`], which the dashboard
//! applies too). The token itself is [`crate::token`]'s.
//!
//! Submissions go into the durable store first (status `queued`, with an audit record naming
//! who submitted) and then onto the [`crate::queue::JobQueue`] the scheduler in [`crate::server`] runs from.

use std::pin::Pin;
use std::sync::Arc;

use fedmark_core::spec::JobSpec;
use fedmark_proto::admin_server::{Admin, AdminServer};
use fedmark_proto::{
    ExportModelRequest, FileChunk, FinalEvaluation, JobInfo, JobList, JobRequest, ListJobsRequest,
    RoundProgress, SubmitJobRequest,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::board::{Board, JobView};
use crate::export::{self, ExportError};
use crate::queue::{Cancelled, JobQueue};
use crate::store::events::CoordinatorEvent;
use crate::store::{JobStatus, Store, StoreError};
use crate::tls::NotAdmin;
pub use crate::token::{AdminError, AdminToken, TOKEN_FILE};

/// Bytes per streamed file chunk.
const FILE_CHUNK_BYTES: usize = 1024 * 1024;

/// Largest admin request accepted (a job spec with its vocabularies fits with room to
/// spare; the partner service's limit is [`fedmark_proto::MAX_MESSAGE_BYTES`]).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The admin credential as a tonic interceptor: a call without it is refused on its
/// metadata, before a byte of its body is read or decoded.
#[derive(Debug, Clone)]
pub struct AdminGate(AdminAuth);

impl Interceptor for AdminGate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.0.check(&request)?;
        Ok(request)
    }
}

/// What an admin call must present.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// The admin token.
    pub token: AdminToken,
    /// Whether the caller must also hold an `admin:` client certificate (mutual TLS).
    pub require_admin_cert: bool,
}

impl AdminAuth {
    /// Who is calling (the certificate's name, or `admin` without TLS), or why the call is
    /// refused.
    pub fn check<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            return Err(Status::unauthenticated(
                "the admin API needs the metadata `authorization: Bearer <admin token>`",
            ));
        };
        if !self.token.verify(presented) {
            warn!("refused an admin call with a wrong token");
            return Err(Status::unauthenticated("the admin token is not valid"));
        }
        if !self.require_admin_cert {
            return Ok("admin".into());
        }
        let chain = request.peer_certs();
        let leaf = chain.as_ref().and_then(|c| c.first()).map(|l| l.as_ref());
        match crate::tls::admin_name(leaf) {
            Ok(n) => Ok(n),
            Err(refusal @ NotAdmin::Named(_)) => {
                warn!(%refusal, "refused an admin call from a non-admin certificate");
                Err(Status::permission_denied(refusal.to_string()))
            }
            Err(_) => Err(Status::unauthenticated(
                "the admin API needs an administrator's client certificate",
            )),
        }
    }
}

/// The `Admin` gRPC service.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    board: Board,
    queue: Arc<JobQueue>,
    auth: AdminAuth,
    /// Serialises submissions: each reads the store, then writes it.
    submitting: Arc<tokio::sync::Mutex<()>>,
    /// Largest model a job may ask for.
    max_model_params: u64,
}

impl AdminService {
    /// A service submitting to `queue`.
    pub fn new(store: Store, board: Board, queue: Arc<JobQueue>, auth: AdminAuth) -> Self {
        Self {
            store,
            board,
            queue,
            auth,
            submitting: Arc::default(),
            max_model_params: crate::job::DEFAULT_MAX_MODEL_PARAMS,
        }
    }

    /// Refuses at submit jobs whose model has more than `max` parameters.
    pub fn with_max_model_params(mut self, max: u64) -> Self {
        self.max_model_params = max;
        self
    }

    /// The tonic server wrapper: the credential is checked by an interceptor, on the
    /// request's metadata, before its body is read; requests are at most
    /// [`MAX_REQUEST_BYTES`].
    pub fn into_server(self) -> InterceptedService<AdminServer<Self>, AdminGate> {
        let gate = AdminGate(self.auth.clone());
        let server = AdminServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(fedmark_proto::MAX_MESSAGE_BYTES);
        InterceptedService::new(server, gate)
    }

    fn info(&self, view: JobView) -> JobInfo {
        job_info(view, self.store.audit_head())
    }

    fn view(&self, id: &str) -> Result<JobView, Status> {
        check_job_id(id)?;
        self.board
            .get(id)
            .ok_or_else(|| Status::not_found(format!("the coordinator holds no job `{id}`")))
    }
}

/// Longest job id accepted from a request (ids are `job-` and 12 hex digits).
const MAX_JOB_ID: usize = 64;

/// Refuses, before any lookup, a job id that cannot be one: too long or with characters no
/// id has. The id is not echoed back (a long one would not fit a gRPC status header).
fn check_job_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= MAX_JOB_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "not a job id ({} bytes): job ids are `job-` and 12 hex digits, as `fedmark job list` shows them",
            id.len()
        )))
    }
}

/// The wire form of a job view.
pub fn job_info(view: JobView, audit_head: String) -> JobInfo {
    JobInfo {
        job_id: view.id,
        name: view.name,
        purpose: view.purpose,
        status: view.status.as_str().to_owned(),
        phase: view.phase,
        planned_rounds: view.planned_rounds,
        rounds: view
            .rounds
            .iter()
            .map(|r| RoundProgress {
                round: r.round,
                participants: r.participants,
                dropped: r.dropped,
                auc: r.auc,
                log_loss: r.log_loss,
                accuracy: r.accuracy,
                seconds: r.seconds,
                epsilon: r.epsilon,
                attempts: r.attempts,
            })
            .collect(),
        epsilon_budget: view.epsilon_budget,
        r#final: view.final_metrics.map(|f| FinalEvaluation {
            auc: f.auc,
            log_loss: f.log_loss,
            accuracy: f.accuracy,
            rows: f.rows,
        }),
        submitted_by: view.submitted_by,
        submitted_ms: view.submitted_ms,
        audit_head,
        settings: view
            .settings
            .into_iter()
            .map(|(name, value)| fedmark_proto::Setting { name, value })
            .collect(),
    }
}

fn store_status(e: StoreError) -> Status {
    warn!(error = %e, "admin call failed in the store");
    Status::internal(format!("coordinator store: {e}"))
}

fn export_status(e: ExportError) -> Status {
    if e.is_bad_request() {
        Status::not_found(e.to_string())
    } else {
        warn!(error = %e, "export failed");
        Status::internal(e.to_string())
    }
}

/// Streams files as chunks, the first one carrying `summary`.
fn file_stream(files: Vec<(String, Vec<u8>)>, summary: String) -> FileStream {
    let mut chunks = Vec::new();
    for (name, bytes) in files {
        let parts: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(FILE_CHUNK_BYTES).collect()
        };
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            chunks.push(Ok(FileChunk {
                name: name.clone(),
                data: part.to_vec(),
                last: i + 1 == n,
                summary: String::new(),
            }));
        }
    }
    if let Some(Ok(first)) = chunks.first_mut() {
        first.summary = summary;
    }
    Box::pin(tokio_stream::iter(chunks))
}

type FileStream = Pin<Box<dyn Stream<Item = Result<FileChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<JobInfo>, Status> {
        let who = self.auth.check(&request)?;
        let spec = JobSpec::from_toml(&request.get_ref().spec_toml)
            .map_err(|e| Status::invalid_argument(format!("the job spec is not valid: {e}")))?;
        let spec_toml = spec
            .to_toml()
            .map_err(|e| Status::invalid_argument(format!("the job spec is not valid: {e}")))?;
        crate::job::check_size(&spec, self.max_model_params)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = crate::job_id(&spec_toml);
        let _one_at_a_time = self.submitting.lock().await;
        let queue_it = match self.store.job(&id).map_err(store_status)? {
            None => {
                crate::store::jobs::submit(
                    &self.store,
                    &id,
                    &spec,
                    &spec_toml,
                    &who,
                    JobStatus::Queued,
                )
                .map_err(store_status)?;
                info!(job = %id, by = %who, "job submitted");
                true
            }
            Some(job) if matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) => {
                self.store
                    .set_status(
                        &id,
                        JobStatus::Queued,
                        vec![
                            CoordinatorEvent::JobResubmitted {
                                job: id.clone(),
                                by: who.clone(),
                                was: job.status.as_str().to_owned(),
                            }
                            .into(),
                        ],
                    )
                    .map_err(store_status)?;
                info!(job = %id, by = %who, "job resubmitted");
                true
            }
            Some(_) => false,
        };
        if queue_it {
            self.board.refresh(&self.store, &id).map_err(store_status)?;
            self.queue.push(&id);
        }
        Ok(Response::new(self.info(self.view(&id)?)))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<JobList>, Status> {
        self.auth.check(&request)?;
        let head = self.store.audit_head();
        let jobs = self
            .board
            .list()
            .into_iter()
            .map(|v| job_info(v, head.clone()))
            .collect();
        Ok(Response::new(JobList {
            jobs,
            audit_head: head,
        }))
    }

    type WatchJobStream = ReceiverStream<Result<JobInfo, Status>>;

    async fn watch_job(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.auth.check(&request)?;
        let id = request.into_inner().job_id;
        self.view(&id)?;
        let (tx, rx) = mpsc::channel(8);
        let board = self.board.clone();
        let store = self.store.clone();
        let mut changes = board.subscribe();
        tokio::spawn(async move {
            let mut last: Option<JobView> = None;
            loop {
                changes.mark_unchanged();
                let Some(view) = board.get(&id) else { break };
                let ended = view.status.is_ended();
                if last.as_ref() != Some(&view) {
                    let info = job_info(view.clone(), store.audit_head());
                    if tx.send(Ok(info)).await.is_err() {
                        break;
                    }
                    last = Some(view);
                }
                if ended {
                    break;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_job(&self, request: Request<JobRequest>) -> Result<Response<JobInfo>, Status> {
        let who = self.auth.check(&request)?;
        let id = request.into_inner().job_id;
        let view = self.view(&id)?;
        let reason = format!("cancelled by {who}");
        match self.queue.cancel(&id, &reason) {
            Cancelled::Dequeued => {
                let event = CoordinatorEvent::JobCancelled {
                    job: id.clone(),
                    by: Some(who.clone()),
                    reason: None,
                    was: "queued".into(),
                    last_committed_round: None,
                }
                .into();
                self.board
                    .end_job(&self.store, &id, JobStatus::Cancelled, &reason, event)
                    .map_err(store_status)?;
            }
            Cancelled::Signalled => {
                // The scheduler stops the job and records it; wait (bounded) to report it.
                let mut changes = self.board.subscribe();
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                while self
                    .board
                    .get(&id)
                    .is_some_and(|v| v.status == JobStatus::Running)
                {
                    if tokio::time::timeout_at(deadline, changes.changed())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            Cancelled::NotHere => {
                return Err(Status::failed_precondition(format!(
                    "job `{id}` is {} and cannot be cancelled",
                    view.status.as_str()
                )));
            }
        }
        let now = self.view(&id)?;
        if now.status == JobStatus::Cancelled {
            info!(job = %id, by = %who, "job cancelled");
        } else {
            info!(job = %id, status = now.status.as_str(), "the job ended before the cancel took effect");
        }
        Ok(Response::new(self.info(now)))
    }

    type ExportModelStream = FileStream;

    async fn export_model(
        &self,
        request: Request<ExportModelRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let who = self.auth.check(&request)?;
        let req = request.into_inner();
        check_job_id(&req.job_id)?;
        let (done, files) = export::model_files(
            &self.store,
            &req.job_id,
            req.round,
            &format!("admin API ({who})"),
        )
        .map_err(export_status)?;
        let summary = format!(
            "job {} round {}{}: {} parameters, sha256 {}",
            done.job_id,
            done.round,
            if done.round == done.last_round {
                " (the last committed round)"
            } else {
                ""
            },
            done.params,
            done.model_sha256
        );
        let files = files
            .into_iter()
            .map(|(name, bytes)| (name.to_owned(), bytes))
            .collect();
        Ok(Response::new(file_stream(files, summary)))
    }

    type ExportAuditStream = FileStream;

    async fn export_audit(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.auth.check(&request)?;
        let id = request.into_inner().job_id;
        check_job_id(&id)?;
        if self.store.job(&id).map_err(store_status)?.is_none() {
            return Err(Status::not_found(format!(
                "the coordinator holds no job `{id}`"
            )));
        }
        let sel = export::job_audit_records(&self.store, &id).map_err(export_status)?;
        let mut text = sel.lines.join("\n");
        text.push('\n');
        let summary = format!(
            "{} of {} audit records (job {id} and the store's own); the full chain's head is {}: a filtered export is not a verifiable chain on its own, check the coordinator's audit.jsonl with `fedmark-coordinator audit verify --head {}`",
            sel.lines.len(),
            sel.total,
            sel.head,
            sel.head
        );
        Ok(Response::new(file_stream(
            vec![("audit.jsonl".to_owned(), text.into_bytes())],
            summary,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked_before_any_lookup_and_never_echoed() {
        assert!(check_job_id("job-0123456789ab").is_ok());
        let long = "j".repeat(100_000);
        let e = check_job_id(&long).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().len() < 200 && e.message().contains("100000 bytes"));
        for bad in ["", "job/../x", "job id", "job-\u{1b}[31m"] {
            assert!(check_job_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bearer_token_is_required_and_checked() {
        let auth = AdminAuth {
            token: AdminToken::from_secret("s3cret"),
            require_admin_cert: false,
        };
        let mut req = Request::new(());
        assert_eq!(
            auth.check(&req).err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );
        req.metadata_mut().insert(
            "authorization",
            "Bearer wrong".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(
            auth.check(&req).err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );
        req.metadata_mut().insert(
            "authorization",
            "Bearer s3cret".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(auth.check(&req).ok().as_deref(), Some("admin"));
        // Under mutual TLS the token alone is not enough.
        let tls = AdminAuth {
            require_admin_cert: true,
            ..auth
        };
        assert_eq!(
            tls.check(&req).err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );
    }
}
