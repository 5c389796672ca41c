//! Helpers for tests that drive a coordinator and partners by hand: a consortium of
//! identities, a coordinator on 127.0.0.1:0, and client configs pointing at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fedmark_client::config::ClientConfig;
use fedmark_client::node::{ClientError, Identity, NodeOptions};
use fedmark_coordinator::job::{JobError, JobOutcome, RunSettings};
use fedmark_coordinator::store::Store;
use fedmark_core::secagg::{Roster, generate_identity};
use fedmark_core::spec::JobSpec;
use tokio::task::JoinHandle;

/// Identity keys for `ids` and the roster of their public halves.
pub fn consortium(ids: &[&str]) -> anyhow::Result<(Arc<Roster>, Vec<Identity>)> {
    let mut rng = rand::rng();
    let keys: Vec<_> = ids.iter().map(|_| generate_identity(&mut rng)).collect();
    let mut roster = Roster::new();
    for (id, key) in ids.iter().zip(&keys) {
        roster.insert((*id).to_owned(), key.verifying_key())?;
    }
    let roster = Arc::new(roster);
    let identities = keys
        .into_iter()
        .map(|key| Identity {
            key,
            roster: Arc::clone(&roster),
        })
        .collect();
    Ok((roster, identities))
}

/// A running coordinator for one job.
pub struct Coordinator {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The coordinator's store (in memory): its audit chain, checkpoints and jobs.
    pub store: Store,
    /// The job task.
    pub job: JoinHandle<Result<JobOutcome, JobError>>,
}

/// Starts a coordinator on 127.0.0.1:0 for `spec`, expecting every partner of `roster`.
pub async fn start_coordinator(
    spec: JobSpec,
    roster: Arc<Roster>,
    phase_timeout: Duration,
) -> anyhow::Result<Coordinator> {
    start_coordinator_with_tls(spec, roster, phase_timeout, None).await
}

/// [`start_coordinator`] serving mutual TLS with `tls`.
pub async fn start_coordinator_with_tls(
    spec: JobSpec,
    roster: Arc<Roster>,
    phase_timeout: Duration,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<Coordinator> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store = Store::in_memory()?;
    let settings = RunSettings {
        max_model_params: fedmark_coordinator::job::DEFAULT_MAX_MODEL_PARAMS,
        expected_partners: roster.len(),
        join_timeout: Duration::from_secs(30),
        phase_timeout,
        // Fewer slots than most tests have partners, so transfers wait their turn in every
        // test that runs a round.
        transfer_slots: 2,
        // Short, so a test can watch a stalled transfer lose its slot.
        transfer_idle: Duration::from_secs(5),
        roster,
        store: store.clone(),
        submitted_by: "test".into(),
        pause_at: None,
        tls,
        events: Default::default(),
    };
    let job = tokio::spawn(fedmark_coordinator::run(
        listener,
        spec,
        settings,
        None,
        std::future::pending(),
    ));
    Ok(Coordinator { addr, store, job })
}

/// A client config for partner `id` of the coordinator at `addr`.
pub fn client_config(addr: SocketAddr, id: &str, data: PathBuf, seed: u64) -> ClientConfig {
    let mut cfg = ClientConfig::new(format!("http://{addr}"), id.to_owned(), data);
    cfg.seed = Some(seed);
    cfg.connect_timeout_secs = 10;
    cfg
}

/// Node options with an identity and no dropouts.
pub fn with_identity(identity: &Identity) -> NodeOptions {
    NodeOptions {
        identity: Some(identity.clone()),
        ..NodeOptions::default()
    }
}

/// The shipped bank job with `rounds` rounds.
pub fn bank_spec(rounds: u32) -> anyhow::Result<JobSpec> {
    let path = crate::sim::workspace_root().join("examples/bank-job.toml");
    let mut spec = JobSpec::from_toml(&std::fs::read_to_string(path)?)?;
    spec.job.rounds = rounds;
    Ok(spec)
}

/// A plain-aggregation job of `rounds` rounds with two honest partners (`good-0`, `good-1`,
/// real client nodes on two halves of the shipped data) and one partner, `odd`, that the test
/// drives by hand over raw gRPC.
pub struct HandDriven {
    /// The data folder (deleted on drop).
    pub dir: tempfile::TempDir,
    /// The coordinator.
    pub coordinator: Coordinator,
    /// The honest partners' tasks.
    pub honest: Vec<JoinHandle<Result<fedmark_client::node::ClientSummary, ClientError>>>,
    /// What the hand-driven partner sends (its hello is already queued).
    pub tx: tokio::sync::mpsc::Sender<fedmark_proto::ClientMessage>,
    /// What it receives.
    pub inbound: tonic::Streaming<fedmark_proto::ServerMessage>,
    /// Its connection, for its bulk streams.
    pub client: fedmark_proto::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
}

/// A hand-driven partner's acceptance of the job offered as `job_id`.
pub fn accept(job_id: &str) -> fedmark_proto::ClientMessage {
    use fedmark_proto::client_message::Body;
    fedmark_proto::ClientMessage {
        body: Some(Body::OfferReply(fedmark_proto::OfferReply {
            job_id: job_id.to_owned(),
            accept: true,
            reason: String::new(),
        })),
    }
}

/// A whole vector of round `rref` in one chunk (all zeros encode "no rows": they change no
/// sum).
pub fn whole_input(rref: &fedmark_proto::RoundRef, values: Vec<u32>) -> fedmark_proto::InputChunk {
    fedmark_proto::InputChunk {
        round: Some(rref.clone()),
        offset: 0,
        values,
        last: true,
        consent_snapshot: String::new(),
    }
}

/// A request carrying session `token` (the welcome's) as a bulk stream's metadata.
pub fn bind<T>(message: T, token: &[u8]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // Hex digits are always valid ASCII metadata.
    if let Ok(value) = hex::encode(token).parse() {
        request
            .metadata_mut()
            .insert(fedmark_proto::SESSION_METADATA, value);
    }
    request
}

/// Uploads `chunks` on an `UploadInput` stream bound to session `token` (the welcome's), as a
/// hand-driven partner: waits to be admitted, sends every chunk, closes its half and waits for
/// the coordinator's last word.
pub async fn upload(
    client: &fedmark_proto::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    token: &[u8],
    chunks: Vec<fedmark_proto::InputChunk>,
) -> Result<(), tonic::Status> {
    use fedmark_proto::UploadState;
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let request = bind(tokio_stream::wrappers::ReceiverStream::new(rx), token);
    let mut replies = client.clone().upload_input(request).await?.into_inner();
    let state = |m: Option<fedmark_proto::UploadStatus>| m.map(|s| s.state());
    if state(replies.message().await?) != Some(UploadState::Admitted) {
        return Err(tonic::Status::internal("not admitted"));
    }
    for chunk in chunks {
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    match state(replies.message().await?) {
        Some(UploadState::Received) => Ok(()),
        other => Err(tonic::Status::internal(format!(
            "upload ended with {other:?}"
        ))),
    }
}

/// Starts a [`HandDriven`] job. Plain aggregation, so the hand-driven partner can send
/// unmasked vectors.
pub async fn hand_driven(
    odd: &str,
    rounds: u32,
    phase_timeout: Duration,
) -> anyhow::Result<HandDriven> {
    hand_driven_with(odd, rounds, phase_timeout, false).await
}

/// [`hand_driven`], with secure aggregation on or off.
pub async fn hand_driven_with(
    odd: &str,
    rounds: u32,
    phase_timeout: Duration,
    secure: bool,
) -> anyhow::Result<HandDriven> {
    use fedmark_proto::coordinator_client::CoordinatorClient;
    use fedmark_proto::{ClientMessage, Hello, PROTOCOL_VERSION, client_message};

    let dir = tempfile::tempdir()?;
    let files = crate::partition::partition_csv(
        &crate::sim::SimOptions::default().data,
        dir.path(),
        2,
        &crate::partition::Split::Iid,
        3,
    )?;
    let mut spec = bank_spec(rounds)?;
    spec.aggregation.secure = secure;
    let (roster, identities) = consortium(&["good-0", "good-1", odd])?;
    let coordinator = start_coordinator(spec, roster, phase_timeout).await?;
    let addr = coordinator.addr;
    let mut client = CoordinatorClient::connect(format!("http://{addr}"))
        .await?
        .max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(ClientMessage {
        body: Some(client_message::Body::Hello(Hello {
            partner_id: odd.to_owned(),
            protocol_version: PROTOCOL_VERSION,
        })),
    })
    .await?;
    let inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut honest = Vec::new();
    for (i, (path, _)) in files.iter().enumerate() {
        let cfg = client_config(addr, &format!("good-{i}"), path.clone(), 1);
        let options = with_identity(&identities[i]);
        honest.push(tokio::spawn(async move {
            fedmark_client::node::run(&cfg, options).await
        }));
    }
    Ok(HandDriven {
        dir,
        coordinator,
        honest,
        tx,
        inbound,
        client,
    })
}
