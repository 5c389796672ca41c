//! The partner's protocol driver: dials the coordinator, answers job offers, and takes part in
//! rounds. It mirrors the coordinator's round phases (see `fedmark_coordinator::round`):
//!
//! 1. `JobOffer` → the spec is parsed and checked, the declared columns loaded; accept or
//!    refuse with the reason.
//! 2. `RoundStart` → everything in it is checked against what this partner computes itself
//!    (cohort membership, vector length, model size); the model is downloaded on its own
//!    stream ([`crate::transfer`]) and local work runs on a blocking thread while the session
//!    stays responsive.
//! 3. The round's vector is encoded in fixed point (masked in a secure round) and uploaded as
//!    `InputChunk`s on its own stream, once the coordinator admits the upload.
//! 4. `RoundResult` / `RoundAbort` close the round; `JobFinished` ends the job, and with it
//!    the session unless the node keeps serving ([`NodeOptions::keep_serving`]): then it
//!    waits, connected, for the coordinator's next offer.
//!
//! Nothing that leaves this module is a raw record: only encoded (and, with secure aggregation,
//! masked) vectors, counts and the partner's accept/refuse decision.
//!
//! Governance happens here too: an offer is checked against the partner's policy
//! ([`crate::policy`]) before anything else; at the start of every round the consent source
//! is re-read and only consented users' rows are used ([`crate::consent`]); and every step is
//! written to the partner's audit file ([`crate::audit`]) before it is acted on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fedmark_core::aggregate::{RoundKind, VectorLayout};
use fedmark_core::budget::{PrivacyPlan, noise_threshold};
use fedmark_core::dp::add_skellam_noise;
use fedmark_core::features::Standardizer;
use fedmark_core::guard::GuardRefusal;
use fedmark_core::model::Model;
use fedmark_core::secagg::keys::parse_signing_key;
use fedmark_core::secagg::{
    ClientPolicy, ClientRound, Envelope, Mask, MaskPlan, Roster, RoundId, RoundParams, SecAggError,
    SignedKeys,
};
use fedmark_core::shape::RoundShape;
use fedmark_core::spec::{JobSpec, PrivacyMode};
use fedmark_proto::convert;
use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{
    ClientMessage, EncryptedShares, Hello, OfferReply, PROTOCOL_VERSION, RoundRef, RoundStart,
    SurvivorSignature, UnmaskReply, client_message, server_message,
};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
use tracing::{debug, info, warn};

use crate::audit::{AuditLog, AuditLogError};
use crate::config::ClientConfig;
use crate::consent::{ConsentSource, now_unix};
use crate::contribution::{JobContext, RoundValues};
use crate::data::{DataError, HoldoutSplit, load_csv, load_csv_keyed};
use crate::ledger::{self, Contribution, JobTerms, Ledger, LedgerError};
use crate::policy::{PartnerPolicy, PolicyError};
use crate::rounds::{RoundRecords, RoundsError};
use crate::transfer::{SessionToken, Uploaded, download_model, upload_input};
use fedmark_core::audit::{f64s_sha256, u32s_sha256};

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The coordinator could not be reached in time.
    #[error("cannot reach coordinator at {url}: {reason}")]
    Connect {
        /// Coordinator URL.
        url: String,
        /// Last error seen.
        reason: String,
    },
    /// The session failed.
    #[error("session with coordinator failed: {0}")]
    Session(#[from] tonic::Status),
    /// The coordinator sent something that breaks the protocol.
    #[error("protocol violation by coordinator: {0}")]
    Protocol(String),
    /// The coordinator closed the session before the job finished.
    #[error("coordinator closed the session before the job finished")]
    Closed,
    /// The identity key or roster could not be loaded.
    #[error("identity: {0}")]
    Identity(String),
    /// The TLS files could not be loaded or used.
    #[error("tls: {0}")]
    Tls(String),
    /// The privacy ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The partner's policy could not be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit file could not be opened or written.
    #[error(transparent)]
    Audit(#[from] AuditLogError),
    /// The partner's record of what each job asked of it could not be read or written.
    #[error(transparent)]
    Rounds(#[from] RoundsError),
}

/// What a client did, for its operator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientSummary {
    /// Rounds this partner contributed to.
    pub rounds_contributed: u32,
    /// Why the job ended, as the coordinator said.
    pub finish_reason: String,
    /// Whether the job was refused by this partner's checks.
    pub refused: Option<String>,
}

/// Fault injection for simulations: where in a round a partner leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPoint {
    /// When the round starts: it advertises no keys and sends nothing.
    Start,
    /// After advertising its keys, when the others' keys arrive (secure rounds).
    AfterKeys,
    /// After sending its shares, when the shares for it arrive, before any input.
    AfterShares,
    /// In the middle of streaming its input.
    MidInput,
    /// After its whole input, when asked to sign the survivor set (secure rounds).
    AfterInput,
    /// After signing the survivor set, when asked to help unmask (secure rounds).
    AfterSignature,
}

impl DropPoint {
    /// Parses a phase name as the simulator's `--dropout-phase` takes it.
    pub fn from_phase(name: &str) -> Option<Self> {
        Some(match name {
            "keys" => DropPoint::Start,
            "shares" => DropPoint::AfterKeys,
            "input" => DropPoint::AfterShares,
            "mid-input" => DropPoint::MidInput,
            "consistency" => DropPoint::AfterInput,
            "unmask" => DropPoint::AfterSignature,
            _ => return None,
        })
    }
}

/// A scripted dropout: leave at `point` of round `round`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropout {
    /// Round number at which to drop.
    pub round: u64,
    /// Where in the round.
    pub point: DropPoint,
}

/// The partner's long-term identity for secure aggregation.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Ed25519 key that signs this partner's round keys.
    pub key: SigningKey,
    /// Every partner's public identity key.
    pub roster: Arc<Roster>,
}

impl Identity {
    /// Loads the key and roster files named in the config, if both are set.
    pub fn from_config(cfg: &ClientConfig) -> Result<Option<Self>, ClientError> {
        let (Some(key_path), Some(roster_path)) = (&cfg.identity_key, &cfg.roster) else {
            return Ok(None);
        };
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| ClientError::Identity(format!("cannot read {}: {e}", p.display())))
        };
        let key = parse_signing_key(read(key_path)?.trim())
            .map_err(|e| ClientError::Identity(format!("{}: {e}", key_path.display())))?;
        let roster = Roster::from_toml(&read(roster_path)?)
            .map_err(|e| ClientError::Identity(format!("{}: {e}", roster_path.display())))?;
        match roster.get(&cfg.partner_id) {
            Some(k) if *k == key.verifying_key() => {}
            Some(_) => {
                return Err(ClientError::Identity(format!(
                    "the roster's key for `{}` is not the public half of {}",
                    cfg.partner_id,
                    key_path.display()
                )));
            }
            None => {
                return Err(ClientError::Identity(format!(
                    "the roster does not list `{}`",
                    cfg.partner_id
                )));
            }
        }
        Ok(Some(Self {
            key,
            roster: Arc::new(roster),
        }))
    }
}

/// Called with the round number at the start of every round, before the consent snapshot is
/// taken: simulations use it to change a partner's consent file between rounds.
#[derive(Clone)]
pub struct RoundHook(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for RoundHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoundHook")
    }
}

/// Options that tests and the simulator set; real deployments use the defaults.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Runs at the start of every round, before the consent snapshot.
    pub round_hook: Option<RoundHook>,
    /// Scripted dropouts, shared by the sessions of one partner: each fires once and is then
    /// removed, so a partner that reconnects goes on with the rest.
    pub dropouts: Arc<Mutex<Vec<Dropout>>>,
    /// Identity to use instead of the config's key and roster files.
    pub identity: Option<Identity>,
    /// Stay connected after a job ends and wait for the next offer (a partner's node beside
    /// a long-running coordinator); otherwise the session ends with the first job.
    pub keep_serving: bool,
    /// What each job has asked of this partner (its round guards), loaded from
    /// [`ClientConfig::rounds_path`] by the first session and kept across sessions and
    /// restarts.
    pub guards: Arc<Mutex<RoundRecords>>,
}

/// The client side of mutual TLS from the config's PEM files.
fn tls_config(tls: &crate::config::ClientTls) -> Result<ClientTlsConfig, ClientError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(TlsIdentity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(domain) = &tls.domain {
        config = config.domain_name(domain.clone());
    }
    Ok(config)
}

/// Dials the coordinator, retrying with exponential backoff and jitter until the configured
/// timeout.
pub async fn connect(cfg: &ClientConfig) -> Result<CoordinatorClient<Channel>, ClientError> {
    let url = cfg.coordinator.clone();
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Connect {
            url: url.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let endpoint = match &cfg.tls {
        None => endpoint,
        Some(tls) => endpoint
            .tls_config(tls_config(tls)?)
            .map_err(|e| ClientError::Tls(e.to_string()))?,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.connect_timeout_secs);
    let mut backoff = Duration::from_millis(50);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(CoordinatorClient::new(channel)
                    .max_decoding_message_size(fedmark_proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(fedmark_proto::MAX_MESSAGE_BYTES));
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(ClientError::Connect {
                        url,
                        reason: e.to_string(),
                    });
                }
                let jitter = rng.random_range(0.5..1.5);
                let wait = backoff.mul_f64(jitter).min(deadline - now);
                debug!(
                    wait_ms = wait.as_millis() as u64,
                    "coordinator not reachable yet; retrying"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs one session: from `Hello` to `JobFinished`. A session that ends early (the
/// coordinator restarted, the network broke) is an error; [`run_until_finished`] reconnects.
pub async fn run(cfg: &ClientConfig, options: NodeOptions) -> Result<ClientSummary, ClientError> {
    let mut summary = ClientSummary::default();
    let mut progressed = false;
    session(cfg, options, &mut summary, &mut progressed).await?;
    Ok(summary)
}

/// Whether a session that ended with `e` is worth dialling again: the coordinator went away
/// or the transport broke. A refusal of this partner (not in the roster, wrong protocol
/// version), a protocol violation or a local problem (identity, ledger, audit log) is not.
pub fn is_retryable(e: &ClientError) -> bool {
    use tonic::Code;
    match e {
        ClientError::Closed => true,
        ClientError::Session(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::Internal
                | Code::ResourceExhausted
        ),
        _ => false,
    }
}

/// Runs sessions until the job finishes or this partner refuses it. A session that ends
/// before `JobFinished` for a reason worth retrying (see [`is_retryable`]) is followed by a
/// new one: at once after a session that got going (the dial itself backs off while the
/// coordinator is unreachable), and after an exponential backoff with jitter after one that
/// did not; the new session answers the
/// coordinator's offer as usual. It gives up when `connect_timeout_secs` pass without a
/// session that got as far as the coordinator's welcome, returning the last error.
pub async fn run_until_finished(
    cfg: &ClientConfig,
    options: NodeOptions,
) -> Result<ClientSummary, ClientError> {
    let patience = Duration::from_secs(cfg.connect_timeout_secs);
    let mut summary = ClientSummary::default();
    let mut last_progress = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    let mut sessions: u64 = 0;
    loop {
        let mut progressed = false;
        sessions += 1;
        match session(cfg, options.clone(), &mut summary, &mut progressed).await {
            Ok(()) => return Ok(summary),
            Err(e) if is_retryable(&e) => {
                let now = tokio::time::Instant::now();
                if progressed {
                    // A session that got going and then broke: dial again at once (a partner
                    // that drops out should be back for the next round); `connect` backs off
                    // if the coordinator is not there yet.
                    last_progress = now;
                    backoff = Duration::from_millis(50);
                    warn!(error = %e, sessions, "session ended before the job finished; reconnecting");
                    continue;
                }
                if now.duration_since(last_progress) >= patience {
                    return Err(e);
                }
                let wait = backoff.mul_f64(rng.random_range(0.5..1.5));
                warn!(
                    error = %e,
                    sessions,
                    wait_ms = wait.as_millis() as u64,
                    "session ended before the job finished; reconnecting"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One session. `summary` carries over between sessions (rounds contributed add up);
/// `progressed` is set once the coordinator has welcomed this partner.
async fn session(
    cfg: &ClientConfig,
    options: NodeOptions,
    summary: &mut ClientSummary,
    progressed: &mut bool,
) -> Result<(), ClientError> {
    let identity = match options.identity.clone() {
        Some(i) => Some(i),
        None => Identity::from_config(cfg)?,
    };
    // Reopened from its file by every session, so a reconnect or a restart carries it on.
    let ledger = Ledger::open(cfg.ledger_path().as_deref())?;
    options
        .guards
        .lock()
        .map_err(|_| ClientError::Protocol("round records poisoned".into()))?
        .load_once(cfg.rounds_path().as_deref())?;
    let policy = cfg.policy.as_deref().map(PartnerPolicy::load).transpose()?;
    let audit = match &cfg.audit {
        Some(path) => Some(AuditLog::open(path, &cfg.partner_id)?),
        None => None,
    };
    let client = connect(cfg).await?;
    let (tx, rx) = mpsc::channel::<ClientMessage>(16);
    send(
        &tx,
        client_message::Body::Hello(Hello {
            partner_id: cfg.partner_id.clone(),
            protocol_version: PROTOCOL_VERSION,
        }),
    )
    .await?;
    let mut inbound = client
        .clone()
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (done_tx, mut done_rx) = mpsc::channel::<Computed>(1);
    let mut node = Node {
        client,
        token: None,
        cfg: cfg.clone(),
        options,
        identity,
        ledger,
        policy,
        audit,
        tx,
        done_tx,
        job: None,
        round: None,
        rng: match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        },
        summary: std::mem::take(summary),
        finished: None,
    };
    let result = async {
        loop {
            let flow = tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(m) => {
                        *progressed = true;
                        let Some(body) = m.body else {
                            return Err(ClientError::Protocol("empty server message".into()));
                        };
                        node.handle(body).await?
                    }
                    None => return Err(ClientError::Closed),
                },
                Some(done) = done_rx.recv() => {
                    node.on_computed(done).await?;
                    Flow::Continue
                }
            };
            if flow == Flow::Finished && !node.options.keep_serving {
                return Ok(());
            }
        }
    }
    .await;
    *summary = std::mem::take(&mut node.summary);
    result
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Finished,
}

/// A round's vector, computed on a blocking thread.
/// A round's vector or its mask, computed on a blocking thread.
struct Computed {
    rref: RoundRef,
    product: Result<Product, String>,
}

enum Product {
    /// The round's model, downloaded.
    Model(Vec<f64>),
    /// The encoded (and, under distributed DP, noised) vector, not yet masked.
    Words(Vec<u32>),
    /// The total mask, expanded while the vector is still being computed.
    Mask(Mask),
    /// The upload of the vector ended.
    Uploaded(Uploaded),
}

/// A round's transfer task; it stops when the round it belongs to is dropped.
struct TransferTask(tokio::task::JoinHandle<()>);

impl Drop for TransferTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Node {
    /// The session's connection; the bulk streams share it.
    client: CoordinatorClient<Channel>,
    /// The session token of the welcome, which binds the bulk streams to this session.
    token: Option<SessionToken>,
    cfg: ClientConfig,
    options: NodeOptions,
    identity: Option<Identity>,
    ledger: Ledger,
    policy: Option<PartnerPolicy>,
    audit: Option<AuditLog>,
    tx: mpsc::Sender<ClientMessage>,
    done_tx: mpsc::Sender<Computed>,
    job: Option<(String, Arc<Mutex<JobContext>>)>,
    round: Option<ActiveRound>,
    rng: StdRng,
    summary: ClientSummary,
    /// The last job that ended on this session (a refused job ends twice).
    finished: Option<String>,
}

/// The round in progress, from `RoundStart` to its result or abort.
struct ActiveRound {
    rref: RoundRef,
    start: RoundStart,
    kind: RoundKind,
    layout: VectorLayout,
    /// The round's shape as this partner derived it.
    shape: RoundShape,
    model: Vec<f64>,
    /// SHA-256 of the round's start model, kept when the model arrives (the model itself is
    /// handed to the computation); empty until then and in rounds without a model.
    model_sha256: String,
    /// Secure-aggregation state (secure rounds).
    secagg: Option<ClientRound>,
    /// The mask, expanded once the neighbours' shares arrived (secure rounds). The input
    /// leaves only with it.
    mask: Option<Mask>,
    /// The encoded vector, once computed.
    words: Option<Vec<u32>>,
    input_sent: bool,
    /// SHA-256 of the round's consent snapshot (empty without a consent source).
    consent_hash: String,
    /// The model download and vector upload running for this round.
    transfers: Vec<TransferTask>,
    /// Set by the upload once its last chunk is out.
    sent: Arc<AtomicBool>,
}

async fn send(
    tx: &mpsc::Sender<ClientMessage>,
    body: client_message::Body,
) -> Result<(), ClientError> {
    tx.send(ClientMessage { body: Some(body) })
        .await
        .map_err(|_| ClientError::Closed)
}

/// The source of every secret a round draws (X25519 keys, self-mask seeds, Shamir
/// coefficients, AEAD nonces) and of DP noise: the operating system's generator, never the
/// configured seed, so no two sessions, rounds or restarts ever draw the same secrets. (A
/// seeded partner that reused its keys after a reconnect would hand over, when declared
/// dropped, the mask key that unmasks an input it sent before.)
pub fn secret_rng() -> rand::rand_core::UnwrapErr<rand::rngs::SysRng> {
    rand::rand_core::UnwrapErr(rand::rngs::SysRng)
}

/// The partner's secret key for consent-snapshot hashes, derived (HKDF-SHA256) from its
/// identity key, so it needs no file of its own and no one else can recompute the hashes.
fn consent_key(identity: &SigningKey) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, identity.as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's output limit, so expand cannot fail.
    let _ = hk.expand(b"fedmark consent-snapshot key v1", &mut key);
    key
}

/// What the coordinator gets of a round's consent snapshot: a hiding commitment to its
/// (keyed) hash, `SHA-256("fedmark consent commitment v1" ‖ salt ‖ hash)` with 16 fresh
/// random bytes of salt, hex. The partner's audit file keeps the hash and the salt, so the
/// partner can open every commitment the model card lists to a regulator; the coordinator
/// learns nothing from it, not even whether two rounds used the same snapshot (a bare hash
/// would show each consent change). Empty without a consent source.
fn commit_snapshot(hash: &str) -> (String, String) {
    if hash.is_empty() {
        return (String::new(), String::new());
    }
    let mut salt = [0u8; 16];
    secret_rng().fill_bytes(&mut salt);
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"fedmark consent commitment v1");
    h.update(salt);
    h.update(hash.as_bytes());
    (hex::encode(h.finalize()), hex::encode(salt))
}

/// The reason sent to the coordinator when the partner's data cannot serve a job: what the
/// job asked for that is missing, never the partner's file paths or contents (those go to the
/// partner's own log).
fn data_refusal(e: DataError) -> String {
    warn!(error = %e, "the partner's data cannot serve the job");
    match e {
        DataError::MissingColumn { column, .. } => {
            format!("the partner's data lacks the declared column `{column}`")
        }
        DataError::Empty { by_reason, .. } => {
            // The columns at fault, never counts or values: what a data scientist needs to fix
            // the spec (a text column declared numeric, say).
            let columns: Vec<String> = by_reason
                .keys()
                .filter_map(|r| r.column())
                .map(|c| format!("`{c}`"))
                .collect();
            if columns.is_empty() {
                "the partner's data has no usable row for this job".into()
            } else {
                format!(
                    "the partner's data has no usable row for this job: declared numeric column {} holds no number",
                    columns.join(", ")
                )
            }
        }
        _ => "the partner's data cannot be read (see the partner's log)".into(),
    }
}

/// The seed of a round's training shuffles and stochastic rounding in a job without DP: a
/// function of the job's seed, the partner's own `seed` (if configured), its id, the job and
/// the round — never of the session, the attempt or the time — so the same spec, data and
/// seeds give the same model bit for bit, and a retried round computes the same update. (DP
/// jobs draw from the OS instead, see `compute`.)
fn training_seed(
    job_seed: u64,
    partner_seed: Option<u64>,
    partner: &str,
    job_id: &str,
    round: u64,
) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"fedmark training seed v1");
    h.update(job_seed.to_le_bytes());
    h.update(partner_seed.map_or([0u8; 9], |s| {
        let mut b = [1u8; 9];
        b[1..].copy_from_slice(&s.to_le_bytes());
        b
    }));
    for text in [partner, job_id] {
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    h.update(round.to_le_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// SHA-256 of a round's start model (empty for a round without one).
fn model_hash(model: &[f64]) -> String {
    if model.is_empty() {
        String::new()
    } else {
        f64s_sha256(model)
    }
}

impl Node {
    async fn handle(&mut self, body: server_message::Body) -> Result<Flow, ClientError> {
        use server_message::Body;
        match body {
            Body::Welcome(w) => {
                info!(coordinator = %w.coordinator_id, "session open");
                self.token = Some(
                    SessionToken::from_welcome(&w.session_token).map_err(ClientError::Protocol)?,
                );
            }
            Body::Offer(offer) => {
                // A job offered again (resubmitted after a cancel) will end again.
                if self.finished.as_deref() == Some(offer.job_id.as_str()) {
                    self.finished = None;
                }
                let purpose = JobSpec::from_toml(&offer.spec_toml)
                    .ok()
                    .map(|s| s.job.purpose);
                self.audit(
                    "offer_received",
                    serde_json::json!({
                        "job_id": offer.job_id,
                        "spec_sha256": fedmark_core::audit::sha256_hex(offer.spec_toml.as_bytes()),
                        "purpose": purpose,
                    }),
                )?;
                let reply = self.consider(&offer.job_id, &offer.spec_toml)?;
                // On a refusal the coordinator answers with `JobFinished`, which ends the session;
                // leaving at once could lose the reply with the stream.
                send(&self.tx, client_message::Body::OfferReply(reply)).await?;
            }
            Body::RoundStart(start) => self.start_round(start).await?,
            Body::Keys(keys) => {
                if !self.in_round(&keys.round) {
                    return Ok(Flow::Continue);
                }
                self.leave_if(DropPoint::AfterKeys)?;
                // A malformed advertisement counts as missing: the client round decides
                // whether enough valid ones remain.
                let signed: Vec<SignedKeys> = keys
                    .keys
                    .into_iter()
                    .filter_map(|k| SignedKeys::try_from(k).ok())
                    .collect();
                let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref())
                else {
                    return Ok(Flow::Continue);
                };
                let Some(secagg) = round.secagg.as_mut() else {
                    return Err(ClientError::Protocol(
                        "keys for a round without secure aggregation".into(),
                    ));
                };
                match secagg.on_keys(&signed, &identity.roster, &mut secret_rng()) {
                    Ok(envelopes) => {
                        let msg = EncryptedShares {
                            round: Some(round.rref.clone()),
                            envelopes: envelopes.into_iter().map(Into::into).collect(),
                        };
                        send(&self.tx, client_message::Body::Shares(msg)).await?;
                    }
                    Err(e) => self.abandon(&e.to_string())?,
                }
            }
            Body::Shares(delivery) => {
                if !self.in_round(&delivery.round) {
                    return Ok(Flow::Continue);
                }
                self.leave_if(DropPoint::AfterShares)?;
                let envelopes: Result<Vec<Envelope>, _> = convert::all(delivery.envelopes);
                let Some(round) = self.round.as_mut() else {
                    return Ok(Flow::Continue);
                };
                let Some(secagg) = round.secagg.as_mut() else {
                    return Err(ClientError::Protocol(
                        "shares for a round without secure aggregation".into(),
                    ));
                };
                match envelopes.and_then(|env| {
                    secagg.on_shares(&env)?;
                    secagg.take_mask()
                }) {
                    Ok(plan) => self.expand_mask(plan),
                    Err(e) => self.abandon(&e.to_string())?,
                }
            }
            Body::SurvivorCheck(check) => {
                if !self.in_round(&check.round) {
                    return Ok(Flow::Continue);
                }
                self.leave_if(DropPoint::AfterInput)?;
                let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref())
                else {
                    return Ok(Flow::Continue);
                };
                let Some(secagg) = round.secagg.as_mut() else {
                    return Err(ClientError::Protocol(
                        "survivor check for a round without secure aggregation".into(),
                    ));
                };
                match secagg.on_survivors(&check.survivors, &identity.key) {
                    Ok(signature) => {
                        let msg = SurvivorSignature {
                            round: Some(round.rref.clone()),
                            signature: signature.to_vec(),
                        };
                        send(&self.tx, client_message::Body::SurvivorSignature(msg)).await?;
                    }
                    Err(e) => self.abandon(&e.to_string())?,
                }
            }
            Body::Unmask(request) => {
                if !self.in_round(&request.round) {
                    return Ok(Flow::Continue);
                }
                self.leave_if(DropPoint::AfterSignature)?;
                let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref())
                else {
                    return Ok(Flow::Continue);
                };
                let Some(secagg) = round.secagg.as_mut() else {
                    return Err(ClientError::Protocol(
                        "unmask request for a round without secure aggregation".into(),
                    ));
                };
                let revealed = if request.survivors != secagg.signed_survivors() {
                    Err(SecAggError::SurvivorSetChanged)
                } else {
                    convert::all(request.signatures)
                        .and_then(|signatures| secagg.on_unmask(&signatures, &identity.roster))
                };
                // The hash kept at download: `round.model` went to the computation.
                let model = round.model_sha256.clone();
                match revealed {
                    Ok(shares) => {
                        // Checked against the rounds already unmasked from this model, and
                        // recorded (durably), before the shares leave.
                        let verdict = self
                            .options
                            .guards
                            .lock()
                            .map_err(|_| ClientError::Protocol("round records poisoned".into()))?
                            .reveal(&round.rref.job_id, round.rref.round, &model)?;
                        if let Err(refusal) = verdict {
                            self.abandon(&refusal.to_string())?;
                            return Ok(Flow::Continue);
                        }
                        let msg = UnmaskReply {
                            round: Some(round.rref.clone()),
                            shares: shares.into_iter().map(Into::into).collect(),
                        };
                        send(&self.tx, client_message::Body::Unmask(msg)).await?;
                    }
                    Err(e) => self.abandon(&e.to_string())?,
                }
            }
            Body::RoundResult(r) => {
                info!(
                    round = r.round.as_ref().map_or(0, |r| r.round),
                    participants = r.participants,
                    "round complete"
                );
                // A round counts as contributed once it completed with this partner's whole
                // vector sent (the upload's own last word may still be on its way).
                if let Some(round) = self.round.take()
                    && r.round.as_ref() == Some(&round.rref)
                    && round.sent.load(Ordering::Acquire)
                {
                    self.summary.rounds_contributed += 1;
                }
            }
            Body::RoundAbort(a) => {
                // Only the round it names: a late abort must not end a newer round.
                if self.in_round(&a.round) {
                    warn!(round = a.round.as_ref().map_or(0, |r| r.round), reason = %a.reason, "round aborted");
                    self.round = None;
                }
            }
            Body::Finished(f) => {
                if self.finished.as_deref() == Some(f.job_id.as_str()) {
                    // A refused job ends twice: at the refusal and for everyone at its end.
                    debug!(job = %f.job_id, "job already finished here; ignored");
                    return Ok(Flow::Continue);
                }
                info!(job = %f.job_id, reason = %f.reason, "job finished");
                self.finished = Some(f.job_id.clone());
                self.audit(
                    "job_finished",
                    serde_json::json!({"job_id": f.job_id, "reason": f.reason}),
                )?;
                self.summary.finish_reason = f.reason;
                // Ready for the next job: nothing of this one carries over.
                self.job = None;
                self.round = None;
                return Ok(Flow::Finished);
            }
        }
        Ok(Flow::Continue)
    }

    /// Checks a round start against the job's round guard and records it (durably).
    fn admit(
        &self,
        rref: &RoundRef,
        kind: RoundKind,
    ) -> Result<Result<(), GuardRefusal>, ClientError> {
        let mut guards = self
            .options
            .guards
            .lock()
            .map_err(|_| ClientError::Protocol("round records poisoned".into()))?;
        Ok(guards.admit(&rref.job_id, rref.round, rref.attempt, kind)?)
    }

    /// The fewest partners this partner aggregates with in the current job: its config's
    /// `min_cohort`, raised by its policy for the job's purpose.
    fn cohort_floor(&self) -> usize {
        let policy = match (&self.policy, &self.job) {
            (Some(policy), Some((_, ctx))) => ctx
                .lock()
                .ok()
                .map(|c| policy.min_cohort_for(&c.spec.job.purpose) as usize),
            _ => None,
        };
        policy.map_or(self.cfg.min_cohort, |p| p.max(self.cfg.min_cohort))
    }

    fn in_round(&self, rref: &Option<RoundRef>) -> bool {
        let current = self
            .round
            .as_ref()
            .is_some_and(|r| rref.as_ref() == Some(&r.rref));
        if !current {
            debug!("message for a round this partner is not in; ignored");
        }
        current
    }

    /// Gives up on the current round after the coordinator asked for something this partner
    /// refuses (a forged key, a cohort below the threshold, a second unmask request …).
    fn abandon(&mut self, reason: &str) -> Result<(), ClientError> {
        warn!(reason = %reason, "refusing to continue this round");
        if let Some(round) = self.round.take() {
            let data = serde_json::json!({
                "job_id": round.rref.job_id,
                "round": round.rref.round,
                "attempt": round.rref.attempt,
                "reason": reason,
            });
            self.audit("round_abandoned", data)?;
        }
        Ok(())
    }

    /// Appends a record to the partner's audit file, if it keeps one.
    fn audit(&mut self, kind: &str, data: serde_json::Value) -> Result<(), ClientError> {
        if let Some(log) = self.audit.as_mut() {
            log.append(kind, data)?;
        }
        Ok(())
    }

    fn leave_if(&self, point: DropPoint) -> Result<(), ClientError> {
        let round = self.round.as_ref().map_or(0, |r| r.rref.round);
        if self.take_dropout(round, point) {
            warn!(round, ?point, "injected dropout: leaving the session");
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    fn take_dropout(&self, round: u64, point: DropPoint) -> bool {
        let Ok(mut list) = self.options.dropouts.lock() else {
            return false;
        };
        match list
            .iter()
            .position(|d| d.round == round && d.point == point)
        {
            Some(i) => {
                list.remove(i);
                true
            }
            None => false,
        }
    }

    /// Checks an offered job and loads the data for it; the reply says why on refusal. The
    /// decision is written to the audit file before it is sent.
    fn consider(&mut self, job_id: &str, spec_toml: &str) -> Result<OfferReply, ClientError> {
        match self.check_offer(job_id, spec_toml) {
            Ok(ctx) => {
                let (train_rows, holdout_rows) = ctx.rows_before_consent();
                info!(job = %job_id, train_rows, holdout_rows, consent = ctx.has_consent_source(), "accepted job");
                self.audit(
                    "offer_accepted",
                    serde_json::json!({
                        "job_id": job_id,
                        "train_rows": train_rows,
                        "holdout_rows": holdout_rows,
                    }),
                )?;
                self.options
                    .guards
                    .lock()
                    .map_err(|_| ClientError::Protocol("round records poisoned".into()))?
                    .accept(job_id, &ctx.spec)?;
                self.job = Some((job_id.to_owned(), Arc::new(Mutex::new(ctx))));
                Ok(OfferReply {
                    job_id: job_id.to_owned(),
                    accept: true,
                    reason: String::new(),
                })
            }
            Err(reason) => {
                warn!(job = %job_id, reason = %reason, "refusing job");
                self.audit(
                    "offer_refused",
                    serde_json::json!({"job_id": job_id, "reason": reason}),
                )?;
                self.summary.refused = Some(reason.clone());
                Ok(OfferReply {
                    job_id: job_id.to_owned(),
                    accept: false,
                    reason,
                })
            }
        }
    }

    fn check_offer(&self, job_id: &str, spec_toml: &str) -> Result<JobContext, String> {
        let spec = JobSpec::from_toml(spec_toml).map_err(|e| e.to_string())?;
        // The partner's own policy comes first: a job outside it is refused whatever else.
        if let Some(policy) = &self.policy {
            policy.check(&spec)?;
        }
        if let Some(user_col) = &self.cfg.user_id_column
            && spec.declared_columns().contains(&user_col.as_str())
        {
            return Err(format!(
                "column `{user_col}` is this partner's user-id column and is never a feature or label"
            ));
        }
        if spec.aggregation.secure && self.identity.is_none() {
            return Err(
                "secure aggregation needs identity_key and roster in the client config".into(),
            );
        }
        if (spec.aggregation.min_participants as usize) < self.cfg.min_cohort {
            return Err(format!(
                "aggregation.min_participants {} is below this partner's minimum cohort {}",
                spec.aggregation.min_participants, self.cfg.min_cohort
            ));
        }
        let cap = ledger::partner_cap(
            self.cfg.max_epsilon,
            self.policy.as_ref(),
            &spec.job.purpose,
        );
        if spec.privacy.mode != PrivacyMode::None
            && let Some(cap) = cap
            && spec.privacy.epsilon > cap
        {
            return Err(format!(
                "the job's privacy budget epsilon = {} exceeds this partner's cap of {cap}",
                spec.privacy.epsilon
            ));
        }
        let privacy = PrivacyPlan::from_spec(&spec).map_err(|e| format!("privacy plan: {e}"))?;
        if let Some(plan) = &privacy {
            // Only what is left of the plan for this partner (a job offered again after a
            // coordinator restart) must fit the cap on top of what the purpose has spent.
            let terms = JobTerms {
                job_id,
                spec_sha256: &ledger::spec_digest(&spec),
                purpose: &spec.job.purpose,
                plan,
                planned_rounds: u64::from(spec.job.rounds),
                cap,
            };
            self.ledger.check_offer(&terms).map_err(|e| e.to_string())?;
        }
        let split = HoldoutSplit {
            fraction: self.cfg.holdout_fraction,
            seed: self.cfg.holdout_seed,
        };
        let ctx = match (&self.cfg.consent, &self.cfg.user_id_column) {
            (Some(consent), Some(user_col)) => {
                // Refuse now, not at the first round, if the consent source is unreadable.
                ConsentSource::load(consent).map_err(|e| {
                    warn!(error = %e, "the consent source cannot be read");
                    "the partner's consent source cannot be read (see the partner's log)".to_owned()
                })?;
                let keyed =
                    load_csv_keyed(&self.cfg.data, &spec, split, user_col).map_err(data_refusal)?;
                for (reason, count) in &keyed.all.skipped {
                    warn!(reason = reason.as_str(), rows = count, "skipped bad rows");
                }
                JobContext::with_consent(spec, keyed, privacy)
            }
            _ => {
                let data = load_csv(&self.cfg.data, &spec, split).map_err(data_refusal)?;
                for (reason, count) in &data.skipped {
                    warn!(reason = reason.as_str(), rows = count, "skipped bad rows");
                }
                JobContext::new(spec, data, privacy)
            }
        };
        Ok(ctx)
    }

    /// Takes the round's consent snapshot (re-reading the consent source) and restricts the
    /// job's rows to it; returns the snapshot hash (empty without a consent source), or the
    /// reason the round cannot use any data.
    fn consent_for_round(
        &mut self,
        rref: &RoundRef,
    ) -> Result<Result<String, String>, ClientError> {
        if let Some(hook) = &self.options.round_hook {
            (hook.0)(rref.round);
        }
        let Some((_, ctx)) = &self.job else {
            return Err(ClientError::Protocol(
                "round started before any job was accepted".into(),
            ));
        };
        let (hash, consented_users, train_rows, holdout_rows) = {
            let mut ctx = ctx
                .lock()
                .map_err(|_| ClientError::Protocol("job state poisoned".into()))?;
            match &self.cfg.consent {
                Some(path) if ctx.has_consent_source() => {
                    let source = match ConsentSource::load(path) {
                        Ok(s) => match &self.identity {
                            Some(identity) => s.with_key(consent_key(&identity.key)),
                            None => s,
                        },
                        Err(e) => return Ok(Err(format!("consent source: {e}"))),
                    };
                    let snapshot = source.snapshot(&ctx.spec.job.purpose, now_unix());
                    ctx.apply_consent(&snapshot);
                    (
                        snapshot.hash,
                        Some(snapshot.count),
                        ctx.data.train.len(),
                        ctx.data.holdout.len(),
                    )
                }
                _ => (
                    String::new(),
                    None,
                    ctx.data.train.len(),
                    ctx.data.holdout.len(),
                ),
            }
        };
        info!(
            round = rref.round,
            attempt = rref.attempt,
            usable_records = train_rows + holdout_rows,
            train_rows,
            holdout_rows,
            "consent snapshot taken"
        );
        let (commitment, salt) = commit_snapshot(&hash);
        self.audit(
            "consent_snapshot",
            serde_json::json!({
                "job_id": rref.job_id,
                "round": rref.round,
                "attempt": rref.attempt,
                "consent_source": consented_users.is_some(),
                "snapshot_sha256": hash,
                "commitment": commitment,
                "commitment_salt": salt,
                "consented_users": consented_users,
                "train_rows": train_rows,
                "holdout_rows": holdout_rows,
                "usable_records": train_rows + holdout_rows,
            }),
        )?;
        Ok(Ok(commitment))
    }

    async fn start_round(&mut self, start: RoundStart) -> Result<(), ClientError> {
        let Some((job_id, ctx)) = &self.job else {
            return Err(ClientError::Protocol(
                "round started before any job was accepted".into(),
            ));
        };
        let Some(rref) = start.round.clone() else {
            return Err(ClientError::Protocol(
                "round start without a round reference".into(),
            ));
        };
        if &rref.job_id != job_id {
            return Err(ClientError::Protocol(format!(
                "round for unknown job `{}`",
                rref.job_id
            )));
        }
        if !start.cohort.iter().any(|p| p == &self.cfg.partner_id) {
            return Err(ClientError::Protocol(
                "round started for a cohort without this partner".into(),
            ));
        }
        let floor = self.cohort_floor();
        if start.cohort.len() < floor {
            // Not this partner's round: it sends nothing, and the coordinator counts it out.
            warn!(
                round = rref.round,
                cohort = start.cohort.len(),
                floor,
                "refusing a round whose cohort is below this partner's minimum"
            );
            self.audit(
                "round_refused",
                serde_json::json!({
                    "job_id": rref.job_id,
                    "round": rref.round,
                    "attempt": rref.attempt,
                    "reason": format!("cohort of {} is below this partner's minimum of {floor}", start.cohort.len()),
                }),
            )?;
            return Ok(());
        }
        let kind = start
            .round_kind()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Err(refusal) = self.admit(&rref, kind)? {
            // Not this partner's round: it sends nothing, and the coordinator counts it out.
            warn!(round = rref.round, attempt = rref.attempt, reason = %refusal, "refusing a round this job may not ask for");
            self.audit(
                "round_refused",
                serde_json::json!({
                    "job_id": rref.job_id,
                    "round": rref.round,
                    "attempt": rref.attempt,
                    "reason": refusal.to_string(),
                }),
            )?;
            return Ok(());
        }
        // The round's shape is the partner's own derivation from the spec it accepted and
        // the cohort's members; a start that announces anything else is sat out.
        let (shape, numeric) = {
            let ctx = ctx
                .lock()
                .map_err(|_| ClientError::Protocol("job state poisoned".into()))?;
            let shape = RoundShape::derive(&ctx.spec, kind, start.cohort.clone(), ctx.num_params());
            (shape, ctx.spec.features.numeric.len())
        };
        let announced = start.announced();
        let shape = match shape.and_then(|shape| {
            shape.check(&announced, &rref.job_id, rref.round, rref.attempt)?;
            Ok(shape)
        }) {
            Ok(shape) => shape,
            Err(e) => {
                warn!(round = rref.round, attempt = rref.attempt, reason = %e, "refusing a round whose shape is not the job's");
                self.audit(
                    "round_refused",
                    serde_json::json!({
                        "job_id": rref.job_id,
                        "round": rref.round,
                        "attempt": rref.attempt,
                        "reason": e.to_string(),
                    }),
                )?;
                return Ok(());
            }
        };
        let (layout, model_len, secure) = (shape.layout, shape.model_len, shape.secure.is_some());
        if kind != RoundKind::Statistics
            && (start.feature_mean.len() != numeric || start.feature_std.len() != numeric)
        {
            return Err(ClientError::Protocol(
                "standardisation does not match the numeric features".into(),
            ));
        }
        debug!(
            round = rref.round,
            attempt = rref.attempt,
            ?kind,
            "round started"
        );
        let kind_name = match kind {
            RoundKind::Statistics => "statistics",
            RoundKind::Training => "training",
            RoundKind::Evaluation => "evaluation",
        };
        self.audit(
            "round_started",
            serde_json::json!({
                "job_id": rref.job_id,
                "round": rref.round,
                "attempt": rref.attempt,
                "kind": kind_name,
                "cohort_size": start.cohort.len(),
                "threshold": start.threshold,
            }),
        )?;
        let consent_hash = match self.consent_for_round(&rref)? {
            Ok(hash) => hash,
            Err(reason) => {
                warn!(round = rref.round, reason = %reason, "cannot take this round's consent snapshot; sitting it out");
                self.audit(
                    "round_abandoned",
                    serde_json::json!({
                        "job_id": rref.job_id,
                        "round": rref.round,
                        "attempt": rref.attempt,
                        "reason": reason,
                    }),
                )?;
                return Ok(());
            }
        };
        self.round = Some(ActiveRound {
            rref: rref.clone(),
            start,
            kind,
            layout,
            shape,
            model: Vec::new(),
            model_sha256: String::new(),
            secagg: None,
            mask: None,
            words: None,
            input_sent: false,
            consent_hash,
            transfers: Vec::new(),
            sent: Arc::new(AtomicBool::new(false)),
        });
        self.leave_if(DropPoint::Start)?;
        if model_len > 0 {
            self.download(rref, model_len)?;
        }
        if secure {
            self.advertise_keys().await?;
        }
        if model_len == 0 && self.round.is_some() {
            self.compute();
        }
        Ok(())
    }

    /// Fetches the round's model on its own stream; it arrives as a [`Product::Model`].
    fn download(&mut self, rref: RoundRef, model_len: usize) -> Result<(), ClientError> {
        let token = self.session_token()?;
        let client = self.client.clone();
        let done = self.done_tx.clone();
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        round.transfers.push(TransferTask(tokio::spawn(async move {
            let product = download_model(client, token, rref.clone(), model_len)
                .await
                .map(Product::Model);
            let _ = done.send(Computed { rref, product }).await;
        })));
        Ok(())
    }

    fn session_token(&self) -> Result<SessionToken, ClientError> {
        self.token
            .clone()
            .ok_or_else(|| ClientError::Protocol("a round started before the welcome".into()))
    }

    /// Phase 1: fresh keys for this round, signed with the identity key.
    async fn advertise_keys(&mut self) -> Result<(), ClientError> {
        let cohort_floor = self.cohort_floor();
        let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref()) else {
            return Err(ClientError::Protocol(
                "secure round without an identity".into(),
            ));
        };
        // The graph and the threshold are the partner's own derivation (checked against the
        // announcement when the round started).
        let Some(shape) = round.shape.secure else {
            return Err(ClientError::Protocol(
                "secure round without a secure shape".into(),
            ));
        };
        let (degree, threshold) = (shape.degree, shape.threshold);
        let rid = RoundId::from(&round.rref);
        let policy_floor = match (&self.policy, &self.job) {
            (Some(policy), Some((_, ctx))) => ctx
                .lock()
                .ok()
                .and_then(|c| policy.min_threshold_for(&c.spec.job.purpose)),
            _ => None,
        };
        if let Some(floor) = policy_floor
            && (threshold as u64) < u64::from(floor)
        {
            self.abandon(&format!(
                "this round's threshold {threshold} is below this partner's policy minimum of {floor}"
            ))?;
            return Ok(());
        }
        // The sum is revealed only over at least the round's own floor, which the partner
        // derives itself: the job's minimum, the threshold and, for distributed noise, the
        // survivors its noise share was sized for.
        let round_floor = round.shape.min_survivors;
        let policy = ClientPolicy {
            min_partners: cohort_floor.max(round_floor),
        };
        // The canonical cohort and the graph derived from it are checked by RoundParams; the
        // announced seed and degree must be the ones derived.
        let created = RoundParams::new(
            rid,
            round.start.cohort.clone(),
            threshold,
            degree,
            round.layout.len(),
        )
        .and_then(|params| {
            ClientRound::new(
                params,
                &self.cfg.partner_id,
                &identity.key,
                policy,
                &mut secret_rng(),
            )
        });
        match created {
            Ok((secagg, advert)) => {
                let msg = fedmark_proto::KeyAdvertisement::new(&round.rref, &advert);
                round.secagg = Some(secagg);
                send(&self.tx, client_message::Body::Keys(msg)).await?;
            }
            Err(e) => self.abandon(&e.to_string())?,
        }
        Ok(())
    }

    /// Starts computing this round's vector on a blocking thread; the result comes back
    /// through `done_tx` so the session keeps answering in the meantime.
    fn compute(&mut self) {
        let (Some(round), Some((_, ctx))) = (self.round.as_mut(), self.job.as_ref()) else {
            return;
        };
        let ctx = Arc::clone(ctx);
        let seed = match ctx.lock() {
            Ok(ctx) => training_seed(
                ctx.spec.job.seed,
                self.cfg.seed,
                &self.cfg.partner_id,
                &round.rref.job_id,
                round.rref.round,
            ),
            Err(_) => self.rng.random::<u64>(),
        };
        let kind = round.kind;
        let layout = round.layout;
        let params = std::mem::take(&mut round.model);
        let standardizer = Standardizer {
            mean: round.start.feature_mean.clone(),
            std: round.start.feature_std.clone(),
        };
        let rref = round.rref.clone();
        let cohort = round.start.cohort.len();
        let done = self.done_tx.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, String> {
            let mut ctx = ctx.lock().map_err(|_| "job state poisoned".to_string())?;
            // Differential-privacy noise must be unpredictable to everyone, so DP jobs draw
            // from the OS; others stay reproducible under the configured seed.
            let mut rng = match ctx.privacy {
                Some(_) => StdRng::from_rng(&mut secret_rng()),
                None => StdRng::seed_from_u64(seed),
            };
            let model = Model {
                arch: ctx.arch,
                dim: ctx.schema.dim(),
                params,
            };
            // A DP job standardises with the spec's declared ranges, whatever the coordinator
            // sends: nothing measured on partners' data enters it.
            let standardizer = match ctx.spec.is_dp() {
                true => Standardizer::from_ranges(&ctx.schema)
                    .ok_or("a DP job without declared feature ranges")?,
                false => standardizer,
            };
            let RoundValues { update, stats } = match kind {
                RoundKind::Statistics => ctx.statistics(),
                RoundKind::Training => ctx.training(&model, &standardizer, &mut rng)?,
                RoundKind::Evaluation => ctx.evaluation(&model, &standardizer, &mut rng)?,
            };
            let mut words = layout.encode(&update, &stats, &mut rng);
            if kind == RoundKind::Training
                && let Some(plan) = ctx.privacy
                && plan.mode == PrivacyMode::PartnerDistributed
                && let Some(codec) = layout.update_codec
            {
                // The partner's share of the round's noise, added before masking; the threshold
                // is this partner's own computation, not the coordinator's word.
                let t = noise_threshold(&ctx.spec, cohort);
                let skellam = plan.skellam_round(codec.scale, layout.update_len, t);
                add_skellam_noise(
                    &mut words[..layout.update_len],
                    skellam.mu_per_partner,
                    &mut rng,
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(words)
        });
        tokio::spawn(async move {
            let words = task
                .await
                .unwrap_or_else(|e| Err(format!("local computation failed: {e}")));
            let _ = done
                .send(Computed {
                    rref,
                    product: words.map(Product::Words),
                })
                .await;
        });
    }

    /// Expands the round's mask on a blocking thread: it needs only the seeds, so it runs
    /// while the model arrives and the update is trained, off the round's critical path.
    fn expand_mask(&mut self, plan: MaskPlan) {
        let Some(round) = self.round.as_ref() else {
            return;
        };
        let rref = round.rref.clone();
        let done = self.done_tx.clone();
        let task = tokio::task::spawn_blocking(move || plan.expand());
        tokio::spawn(async move {
            let product = task
                .await
                .map(Product::Mask)
                .map_err(|e| format!("mask expansion failed: {e}"));
            let _ = done.send(Computed { rref, product }).await;
        });
    }

    async fn on_computed(&mut self, done: Computed) -> Result<(), ClientError> {
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        if round.rref != done.rref {
            return Ok(());
        }
        let product = match done.product {
            Ok(p) => p,
            Err(reason) => {
                // A transfer that failed (the coordinator refused it or the stream broke) or a
                // computation that failed ends this partner's part in the round, not its
                // session: the coordinator counts it out.
                self.abandon(&reason)?;
                return Ok(());
            }
        };
        match product {
            Product::Model(model) => {
                let hash = model_hash(&model);
                let data = serde_json::json!({
                    "job_id": round.rref.job_id,
                    "round": round.rref.round,
                    "attempt": round.rref.attempt,
                    "model_sha256": hash,
                    "params": model.len(),
                });
                let (job_id, number) = (round.rref.job_id.clone(), round.rref.round);
                round.model = model;
                round.model_sha256 = hash.clone();
                self.audit("model_received", data)?;
                // A round from a model this partner already helped unmask another round from
                // is sat out at once (it would refuse that round's unmask anyway).
                let early = self
                    .options
                    .guards
                    .lock()
                    .map_err(|_| ClientError::Protocol("round records poisoned".into()))?
                    .may_unmask(&job_id, number, &hash);
                if self.round.as_ref().is_some_and(|r| r.secagg.is_some())
                    && let Err(refusal) = early
                {
                    self.abandon(&refusal.to_string())?;
                    return Ok(());
                }
                self.compute();
                return Ok(());
            }
            Product::Words(words) => round.words = Some(words),
            Product::Mask(mask) => round.mask = Some(mask),
            Product::Uploaded(Uploaded::Whole) => return Ok(()),
            Product::Uploaded(Uploaded::LeftMidway) => return Err(ClientError::Closed),
        }
        self.send_input().await
    }

    /// Phase 3: once the vector is computed and (in a secure round) the shares are in, mask
    /// the vector and upload it (the upload waits for the coordinator to admit it).
    async fn send_input(&mut self) -> Result<(), ClientError> {
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let mask_ready = round.secagg.is_none() || round.mask.is_some();
        if round.input_sent || !mask_ready {
            return Ok(());
        }
        let Some(mut words) = round.words.take() else {
            return Ok(());
        };
        // The partner's own ledger is charged and fsynced before a training update leaves; a
        // round outside the accepted plan or past a cap is not sent, and a round already
        // contributed to gets the same update again or none (see `crate::ledger`).
        let mut charged = None;
        let mut replayed = false;
        // Training updates, and a `record` job's noised final evaluation, are charged.
        if matches!(round.kind, RoundKind::Training | RoundKind::Evaluation)
            && let Some((job_id, ctx)) = &self.job
        {
            let (purpose, plan, planned, digest) = match ctx.lock() {
                Ok(ctx) => (
                    ctx.spec.job.purpose.clone(),
                    ctx.privacy,
                    u64::from(ctx.spec.job.rounds),
                    ledger::spec_digest(&ctx.spec),
                ),
                Err(_) => return Err(ClientError::Protocol("job state poisoned".into())),
            };
            let number = round.rref.round;
            let decided = match plan {
                None if round.kind == RoundKind::Evaluation => Ok(None),
                None if number == 0 || number > planned => Err(format!(
                    "training round {number} is past the plan this partner accepted: the job plans training rounds 1 to {planned}"
                )),
                None => Ok(None),
                Some(plan) => {
                    let cap =
                        ledger::partner_cap(self.cfg.max_epsilon, self.policy.as_ref(), &purpose);
                    let terms = JobTerms {
                        job_id,
                        spec_sha256: &digest,
                        purpose: &purpose,
                        plan: &plan,
                        planned_rounds: planned,
                        cap,
                    };
                    let replayable = plan.mode != PrivacyMode::PartnerDistributed;
                    ledger::contribute(
                        &mut self.ledger,
                        &terms,
                        number,
                        &round.layout,
                        &words,
                        replayable,
                        &mut self.rng,
                    )
                    .map(Some)
                }
            };
            match decided {
                Ok(Some(Contribution::Charged(eps))) => {
                    debug!(epsilon = eps, "charged the privacy ledger");
                    charged = Some((purpose, eps));
                    if let Some(pause) = ledger::pause_after_charge(number) {
                        tokio::time::sleep(pause).await;
                    }
                }
                Ok(Some(Contribution::Replayed(again))) => {
                    debug!(
                        round = number,
                        "re-sending the update this round got before"
                    );
                    words = again;
                    replayed = true;
                }
                Ok(None) => {}
                Err(reason) => {
                    self.abandon(&reason)?;
                    return Ok(());
                }
            }
        }
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let masked = match round.mask.take() {
            Some(mask) => mask.apply(&mut words).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        let rref = round.rref.clone();
        let consent_hash = round.consent_hash.clone();
        if replayed {
            self.audit(
                "input_replayed",
                serde_json::json!({"job_id": rref.job_id, "round": rref.round, "attempt": rref.attempt}),
            )?;
        }
        // The ledger was charged: that is audited whether or not the input goes out.
        if let Some((purpose, eps)) = charged {
            self.audit(
                "privacy_charged",
                serde_json::json!({
                    "job_id": rref.job_id,
                    "round": rref.round,
                    "purpose": purpose,
                    "epsilon_after": eps,
                }),
            )?;
        }
        if let Err(reason) = masked {
            self.abandon(&reason)?;
            return Ok(());
        }
        if let Some(round) = self.round.as_mut() {
            round.input_sent = true;
        }
        self.audit(
            "input_sent",
            serde_json::json!({
                "job_id": rref.job_id,
                "round": rref.round,
                "attempt": rref.attempt,
                "masked_sha256": u32s_sha256(&words),
                "words": words.len(),
            }),
        )?;
        let drop_mid = self.take_dropout(rref.round, DropPoint::MidInput);
        let token = self.session_token()?;
        let client = self.client.clone();
        let done = self.done_tx.clone();
        if let Some(round) = self.round.as_mut() {
            let sent = Arc::clone(&round.sent);
            round.transfers.push(TransferTask(tokio::spawn(async move {
                let product = upload_input(
                    client,
                    token,
                    rref.clone(),
                    words,
                    consent_hash,
                    drop_mid,
                    &sent,
                )
                .await
                .map(Product::Uploaded);
                let _ = done.send(Computed { rref, product }).await;
            })));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SkipReason;

    /// A refusal for unusable data names the numeric columns at fault, and nothing else of
    /// the data (no counts, no values).
    #[test]
    fn a_data_refusal_names_the_column_but_no_count() {
        let by_reason = [
            (
                SkipReason::BadNumber {
                    column: "age".into(),
                },
                1200,
            ),
            (SkipReason::Malformed, 3),
        ]
        .into_iter()
        .collect();
        let reason = data_refusal(DataError::Empty {
            path: "/secret/path.csv".into(),
            skipped: 1203,
            by_reason,
        });
        assert!(reason.contains("`age`"), "{reason}");
        assert!(
            !reason.contains("1200") && !reason.contains("1203") && !reason.contains("secret"),
            "{reason}"
        );
        let plain = data_refusal(DataError::Empty {
            path: "p".into(),
            skipped: 0,
            by_reason: Default::default(),
        });
        assert_eq!(plain, "the partner's data has no usable row for this job");
    }
}
