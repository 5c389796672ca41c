//! A real partner node against a scripted, lying coordinator over real gRPC on loopback: the
//! partner's own defences, which hold whatever the coordinator says.
//!
//! - Secrets come from the OS, not the configured seed: a seeded partner that reconnects
//!   advertises fresh round keys, so a coordinator that declares it dropped in a later round
//!   (and collects that round's mask key) learns nothing about an input masked before.
//! - Round instances only move forward: a replayed round start is refused, and a round the
//!   job's plan does not have (a second statistics round) is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmark_client::node;
use fedmark_core::aggregate::RoundKind;
use fedmark_core::budget::secure_shape;
use fedmark_core::secagg::{RoundId, RoundParams};
use fedmark_core::spec::JobSpec;
use fedmark_proto::coordinator_server::{Coordinator, CoordinatorServer};
use fedmark_proto::{
    ClientMessage, InputChunk, JobOffer, ModelChunk, ModelRequest, RoundRef, RoundStart,
    ServerMessage, UploadStatus, Welcome, client_message, server_message,
};
use fedmark_tests::harness::{client_config, consortium, with_identity};
use fedmark_tests::partition::{Split, partition_csv};
use fedmark_tests::sim::SimOptions;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const JOB: &str = "lying-job";
const COHORT: [&str; 3] = ["p0", "p1", "p2"];

/// What the scripted coordinator saw: (session number, message).
type Seen = mpsc::UnboundedSender<(usize, client_message::Body)>;

struct Liar {
    spec_toml: String,
    /// Round starts to send on each session, in order (one list per session).
    scripts: Mutex<VecDeque<Vec<RoundStart>>>,
    sessions: Mutex<usize>,
    seen: Seen,
    /// Ends the current session.
    hang_up: Arc<Notify>,
}

fn server_msg(body: server_message::Body) -> Result<ServerMessage, Status> {
    Ok(ServerMessage { body: Some(body) })
}

#[tonic::async_trait]
impl Coordinator for Liar {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;
    type DownloadModelStream = ReceiverStream<Result<ModelChunk, Status>>;
    type UploadInputStream = ReceiverStream<Result<UploadStatus, Status>>;

    async fn download_model(
        &self,
        _: Request<ModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        Err(Status::unimplemented("no models here"))
    }

    async fn upload_input(
        &self,
        _: Request<Streaming<InputChunk>>,
    ) -> Result<Response<Self::UploadInputStream>, Status> {
        Err(Status::unimplemented("no uploads here"))
    }

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let session = {
            let mut n = self.sessions.lock().unwrap();
            *n += 1;
            *n
        };
        let script = self.scripts.lock().unwrap().pop_front().unwrap_or_default();
        let (tx, rx) = mpsc::channel(16);
        let spec_toml = self.spec_toml.clone();
        let seen = self.seen.clone();
        let hang_up = Arc::clone(&self.hang_up);
        tokio::spawn(async move {
            // Hello, then the welcome and the offer.
            let Ok(Some(_hello)) = inbound.message().await else {
                return;
            };
            let welcome = Welcome {
                coordinator_id: "liar".into(),
                session_token: vec![7; 32],
            };
            let offer = JobOffer {
                job_id: JOB.into(),
                spec_toml,
            };
            let _ = tx
                .send(server_msg(server_message::Body::Welcome(welcome)))
                .await;
            let _ = tx
                .send(server_msg(server_message::Body::Offer(offer)))
                .await;
            let Ok(Some(reply)) = inbound.message().await else {
                return;
            };
            if let Some(body) = reply.body {
                let _ = seen.send((session, body));
            }
            for start in script {
                let _ = tx
                    .send(server_msg(server_message::Body::RoundStart(start)))
                    .await;
            }
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => {
                            if let Some(body) = m.body {
                                let _ = seen.send((session, body));
                            }
                        }
                        _ => return,
                    },
                    () = hang_up.notified() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A secure statistics round start for attempt `attempt` of round `round`, as an honest
/// coordinator would shape it.
fn stats_start(spec: &JobSpec, round: u64, attempt: u32) -> RoundStart {
    let cohort: Vec<String> = COHORT.iter().map(|s| (*s).to_owned()).collect();
    let (degree, threshold) = secure_shape(spec, cohort.len());
    let layout = RoundKind::Statistics.layout(spec, 0, cohort.len()).unwrap();
    let params = RoundParams::new(
        RoundId::new(JOB, round, attempt),
        cohort.clone(),
        threshold,
        degree,
        layout.len(),
    )
    .unwrap();
    RoundStart {
        round: Some(RoundRef {
            job_id: JOB.into(),
            round,
            attempt,
        }),
        kind: fedmark_proto::RoundKind::Statistics as i32,
        cohort,
        threshold: threshold as u32,
        secure: true,
        vector_len: layout.len() as u64,
        feature_mean: vec![],
        feature_std: vec![],
        model_len: 0,
        graph_seed: params.graph_spec().seed.to_vec(),
        graph_degree: degree as u32,
        clip: 0.0,
    }
}

/// The next message of a kind the test waits for, within a bounded time.
async fn next_keys(
    seen: &mut mpsc::UnboundedReceiver<(usize, client_message::Body)>,
) -> (usize, fedmark_proto::KeyAdvertisement) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .expect("the partner advertised keys in time")
            .expect("the coordinator is up");
        if let (session, client_message::Body::Keys(k)) = got {
            return (session, k);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_partner_draws_fresh_secrets_and_refuses_replayed_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 3, &Split::Iid, 5).unwrap();
    let (_roster, identities) = consortium(&COHORT).unwrap();
    let path = fedmark_tests::sim::workspace_root().join("examples/bank-job.toml");
    let spec_toml = std::fs::read_to_string(path).unwrap();
    let spec = JobSpec::from_toml(&spec_toml).unwrap();

    // Session 1: round 0, attempt 0. Session 2: a replay of that very start, then round 0
    // attempt 1 (a retry, which a partner that has not unmasked round 0 may join).
    let scripts = VecDeque::from([
        vec![stats_start(&spec, 0, 0)],
        vec![stats_start(&spec, 0, 0), stats_start(&spec, 0, 1)],
    ]);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let hang_up = Arc::new(Notify::new());
    let liar = Liar {
        spec_toml,
        scripts: Mutex::new(scripts),
        sessions: Mutex::new(0),
        seen: seen_tx,
        hang_up: Arc::clone(&hang_up),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(liar))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    // One seeded partner node (the seed drives only its data split and training order).
    let cfg = client_config(addr, "p0", files[0].0.clone(), 42);
    let options = with_identity(&identities[0]);
    let audit = dir.path().join("p0.audit.jsonl");
    let mut cfg = cfg;
    cfg.audit = Some(audit.clone());
    let node = tokio::spawn(async move { node::run_until_finished(&cfg, options).await });

    let (s1, first) = next_keys(&mut seen).await;
    assert_eq!(s1, 1);
    assert_eq!(first.round.as_ref().map(|r| r.attempt), Some(0));
    hang_up.notify_one();

    // The partner reconnects; the replayed start gets nothing, the new attempt gets keys.
    let (s2, second) = next_keys(&mut seen).await;
    assert_eq!(s2, 2);
    assert_eq!(
        second.round.as_ref().map(|r| r.attempt),
        Some(1),
        "the replayed round start was answered"
    );
    assert_ne!(
        first.mask_public, second.mask_public,
        "a seeded partner reused its mask key across sessions"
    );
    assert_ne!(first.cipher_public, second.cipher_public);

    // The refusal is in the partner's audit file with its reason.
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("round_refused")
                && l.contains("does not come after round 0 attempt 0")),
        "{text}"
    );

    hang_up.notify_one();
    node.abort();
    server.abort();
}
