//! Helpers for tests that drive a coordinator and partners by hand: a consortium of
//! identities, a coordinator on 127.0.0.1:0, and client configs pointing at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fedmark_client::config::ClientConfig;
use fedmark_client::node::{Identity, NodeOptions};
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
        expected_partners: roster.len(),
        join_timeout: Duration::from_secs(30),
        phase_timeout,
        roster,
        store: store.clone(),
        submitted_by: "test".into(),
        pause_at: None,
        tls,
        metrics: Default::default(),
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
