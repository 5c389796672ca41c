//! The partner's protocol driver: dials the coordinator, answers job offers, and takes part in
//! rounds. It mirrors the coordinator's round phases (see `fedmark_coordinator::round`):
//!
//! 1. `JobOffer` → the spec is parsed and checked, the declared columns loaded; accept or
//!    refuse with the reason.
//! 2. `RoundStart` (+ `ModelChunk`s) → everything in it is checked against what this partner
//!    computes itself (cohort membership, vector length, model size); local work runs on a
//!    blocking thread while the session stays responsive.
//! 3. The round's vector is encoded in fixed point and streamed as `InputChunk`s.
//! 4. `RoundResult` / `RoundAbort` close the round; `JobFinished` ends the session.
//!
//! Nothing that leaves this module is a raw record: only encoded (and, with secure aggregation,
//! masked) vectors, counts and the partner's accept/refuse decision.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedmark_core::aggregate::{RoundKind, VectorLayout};
use fedmark_core::features::Standardizer;
use fedmark_core::model::Model;
use fedmark_core::spec::JobSpec;
use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{
    ClientMessage, Hello, InputChunk, OfferReply, PROTOCOL_VERSION, RoundRef, RoundStart,
    client_message, server_message,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::contribution::{JobContext, RoundValues};
use crate::data::{HoldoutSplit, load_csv};

/// Words per `InputChunk`: 1 MiB, well under gRPC's 4 MiB message ceiling.
pub const INPUT_CHUNK_WORDS: usize = 256 * 1024;
/// Largest message the client accepts (model chunks are 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

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

/// Fault injection for simulations: drop out of the session at a given point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPoint {
    /// Close the session when a round starts, before sending anything for it.
    BeforeInput,
    /// Close the session after sending half of the round's input.
    MidInput,
}

/// A scripted dropout: leave at `point` of round `round`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropout {
    /// Round number at which to drop.
    pub round: u64,
    /// Where in the round.
    pub point: DropPoint,
}

/// Options that tests and the simulator set; real deployments use the defaults.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Scripted dropouts.
    pub dropouts: Vec<Dropout>,
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.connect_timeout_secs);
    let mut backoff = Duration::from_millis(50);
    let mut rng = StdRng::from_rng(&mut rand::rng());
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(CoordinatorClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES));
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

/// Runs one session: from `Hello` to `JobFinished`.
pub async fn run(cfg: &ClientConfig, options: NodeOptions) -> Result<ClientSummary, ClientError> {
    let mut client = connect(cfg).await?;
    let (tx, rx) = mpsc::channel::<ClientMessage>(16);
    send(
        &tx,
        client_message::Body::Hello(Hello {
            partner_id: cfg.partner_id.clone(),
            protocol_version: PROTOCOL_VERSION,
        }),
    )
    .await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let mut node = Node {
        cfg: cfg.clone(),
        options,
        tx,
        job: None,
        round: None,
        rng: match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_rng(&mut rand::rng()),
        },
        summary: ClientSummary::default(),
    };
    while let Some(msg) = inbound.message().await? {
        let Some(body) = msg.body else {
            return Err(ClientError::Protocol("empty server message".into()));
        };
        if node.handle(body).await? == Flow::Finished {
            return Ok(node.summary);
        }
    }
    Err(ClientError::Closed)
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Finished,
}

struct Node {
    cfg: ClientConfig,
    options: NodeOptions,
    tx: mpsc::Sender<ClientMessage>,
    job: Option<(String, Arc<Mutex<JobContext>>)>,
    round: Option<PendingRound>,
    rng: StdRng,
    summary: ClientSummary,
}

/// A round that has started and whose model is still arriving.
struct PendingRound {
    start: RoundStart,
    kind: RoundKind,
    layout: VectorLayout,
    model: Vec<f64>,
    model_len: usize,
}

async fn send(
    tx: &mpsc::Sender<ClientMessage>,
    body: client_message::Body,
) -> Result<(), ClientError> {
    tx.send(ClientMessage { body: Some(body) })
        .await
        .map_err(|_| ClientError::Closed)
}

fn same_round(a: &Option<RoundRef>, b: &Option<RoundRef>) -> bool {
    a.is_some() && a == b
}

impl Node {
    async fn handle(&mut self, body: server_message::Body) -> Result<Flow, ClientError> {
        use server_message::Body;
        match body {
            Body::Welcome(w) => info!(coordinator = %w.coordinator_id, "session open"),
            Body::Offer(offer) => {
                let reply = self.consider(&offer.job_id, &offer.spec_toml);
                // On a refusal the coordinator answers with `JobFinished`, which ends the session;
                // leaving at once could lose the reply with the stream.
                send(&self.tx, client_message::Body::OfferReply(reply)).await?;
            }
            Body::RoundStart(start) => self.start_round(start).await?,
            Body::Model(chunk) => {
                let Some(round) = self.round.as_mut() else {
                    return Err(ClientError::Protocol("model chunk outside a round".into()));
                };
                if !same_round(&chunk.round, &round.start.round) {
                    return Err(ClientError::Protocol(
                        "model chunk for another round".into(),
                    ));
                }
                if chunk.offset as usize != round.model.len()
                    || round.model.len() + chunk.values.len() > round.model_len
                {
                    return Err(ClientError::Protocol(format!(
                        "model chunk at offset {} does not continue {} of {} values",
                        chunk.offset,
                        round.model.len(),
                        round.model_len
                    )));
                }
                round.model.extend_from_slice(&chunk.values);
                if chunk.last {
                    if round.model.len() != round.model_len {
                        return Err(ClientError::Protocol("model ended early".into()));
                    }
                    self.contribute().await?;
                }
            }
            Body::RoundResult(r) => {
                info!(
                    round = r.round.as_ref().map_or(0, |r| r.round),
                    participants = r.participants,
                    "round complete"
                );
            }
            Body::RoundAbort(a) => {
                warn!(round = a.round.as_ref().map_or(0, |r| r.round), reason = %a.reason, "round aborted");
                self.round = None;
            }
            Body::Finished(f) => {
                info!(job = %f.job_id, reason = %f.reason, "job finished");
                self.summary.finish_reason = f.reason;
                return Ok(Flow::Finished);
            }
            Body::Keys(_) | Body::Shares(_) | Body::Unmask(_) => {
                return Err(ClientError::Protocol(
                    "secure-aggregation message in a round without it".into(),
                ));
            }
        }
        Ok(Flow::Continue)
    }

    /// Checks an offered job and loads the data for it; the reply says why on refusal.
    fn consider(&mut self, job_id: &str, spec_toml: &str) -> OfferReply {
        let refuse = |reason: String| {
            warn!(job = %job_id, reason = %reason, "refusing job");
            OfferReply {
                job_id: job_id.to_owned(),
                accept: false,
                reason,
            }
        };
        let spec = match JobSpec::from_toml(spec_toml) {
            Ok(s) => s,
            Err(e) => {
                let r = refuse(e.to_string());
                self.summary.refused = Some(r.reason.clone());
                return r;
            }
        };
        if spec.aggregation.secure {
            let r = refuse("secure aggregation is not available in this client build".into());
            self.summary.refused = Some(r.reason.clone());
            return r;
        }
        let split = HoldoutSplit {
            fraction: self.cfg.holdout_fraction,
            seed: self.cfg.holdout_seed,
        };
        let data = match load_csv(&self.cfg.data, &spec, split) {
            Ok(d) => d,
            Err(e) => {
                let r = refuse(e.to_string());
                self.summary.refused = Some(r.reason.clone());
                return r;
            }
        };
        for (reason, count) in &data.skipped {
            warn!(reason = reason.as_str(), rows = count, "skipped bad rows");
        }
        info!(job = %job_id, train_rows = data.train.len(), holdout_rows = data.holdout.len(), "accepted job");
        self.job = Some((
            job_id.to_owned(),
            Arc::new(Mutex::new(JobContext::new(spec, data))),
        ));
        OfferReply {
            job_id: job_id.to_owned(),
            accept: true,
            reason: String::new(),
        }
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
        if start.secure {
            return Err(ClientError::Protocol(
                "secure round in a job accepted without secure aggregation".into(),
            ));
        }
        let kind = match start.kind() {
            fedmark_proto::RoundKind::Statistics => RoundKind::Statistics,
            fedmark_proto::RoundKind::Training => RoundKind::Training,
            fedmark_proto::RoundKind::Evaluation => RoundKind::Evaluation,
            fedmark_proto::RoundKind::Unspecified => {
                return Err(ClientError::Protocol("round of unspecified kind".into()));
            }
        };
        let (layout, num_params, numeric) = {
            let ctx = ctx
                .lock()
                .map_err(|_| ClientError::Protocol("job state poisoned".into()))?;
            let layout = kind
                .layout(&ctx.spec, ctx.num_params(), start.cohort.len())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            (layout, ctx.num_params(), ctx.spec.features.numeric.len())
        };
        if start.vector_len as usize != layout.len() {
            return Err(ClientError::Protocol(format!(
                "round asks for a vector of {} words; this job's layout has {}",
                start.vector_len,
                layout.len()
            )));
        }
        let model_len = match kind {
            RoundKind::Statistics => 0,
            RoundKind::Training | RoundKind::Evaluation => num_params,
        };
        if start.model_len as usize != model_len {
            return Err(ClientError::Protocol(format!(
                "round announces a model of {} parameters; the job's model has {model_len}",
                start.model_len
            )));
        }
        if kind != RoundKind::Statistics
            && (start.feature_mean.len() != numeric || start.feature_std.len() != numeric)
        {
            return Err(ClientError::Protocol(
                "standardisation does not match the numeric features".into(),
            ));
        }
        if self.drops_at(rref.round, DropPoint::BeforeInput) {
            warn!(round = rref.round, "injected dropout: leaving before input");
            return Err(ClientError::Closed);
        }
        debug!(
            round = rref.round,
            attempt = rref.attempt,
            ?kind,
            "round started"
        );
        self.round = Some(PendingRound {
            start,
            kind,
            layout,
            model: Vec::with_capacity(model_len),
            model_len,
        });
        if model_len == 0 {
            self.contribute().await?;
        }
        Ok(())
    }

    fn drops_at(&self, round: u64, point: DropPoint) -> bool {
        self.options
            .dropouts
            .iter()
            .any(|d| d.round == round && d.point == point)
    }

    /// Computes this round's vector on a blocking thread and streams it.
    async fn contribute(&mut self) -> Result<(), ClientError> {
        let (Some(round), Some((_, ctx))) = (self.round.take(), self.job.as_ref()) else {
            return Ok(());
        };
        let ctx = Arc::clone(ctx);
        let seed = self.rng.random::<u64>();
        let PendingRound {
            start,
            kind,
            layout,
            model,
            ..
        } = round;
        let standardizer = Standardizer {
            mean: start.feature_mean.clone(),
            std: start.feature_std.clone(),
        };
        let words = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, String> {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut ctx = ctx.lock().map_err(|_| "job state poisoned".to_string())?;
            let model = Model {
                arch: ctx.arch,
                dim: ctx.schema.dim(),
                params: model,
            };
            let RoundValues { update, stats } = match kind {
                RoundKind::Statistics => ctx.statistics(),
                RoundKind::Training => ctx.training(&model, &standardizer, &mut rng),
                RoundKind::Evaluation => ctx.evaluation(&model, &standardizer),
            };
            Ok(layout.encode(&update, &stats, &mut rng))
        })
        .await
        .map_err(|e| ClientError::Protocol(format!("local computation failed: {e}")))?
        .map_err(ClientError::Protocol)?;
        let rref = start.round.clone();
        let round_no = rref.as_ref().map_or(0, |r| r.round);
        let drop_mid = self.drops_at(round_no, DropPoint::MidInput);
        // A scripted mid-input dropout needs at least two chunks to leave between them.
        let chunk_words = if drop_mid {
            words.len().div_ceil(2).max(1)
        } else {
            INPUT_CHUNK_WORDS
        };
        let chunks = words.len().div_ceil(chunk_words).max(1);
        for (i, chunk) in words.chunks(chunk_words).enumerate() {
            if drop_mid && i == chunks / 2 && i > 0 {
                warn!(round = round_no, "injected dropout: leaving mid-input");
                return Err(ClientError::Closed);
            }
            send(
                &self.tx,
                client_message::Body::Input(InputChunk {
                    round: rref.clone(),
                    offset: (i * chunk_words) as u64,
                    values: chunk.to_vec(),
                    last: i + 1 == chunks,
                }),
            )
            .await?;
        }
        if words.is_empty() {
            send(
                &self.tx,
                client_message::Body::Input(InputChunk {
                    round: rref,
                    offset: 0,
                    values: Vec::new(),
                    last: true,
                }),
            )
            .await?;
        }
        self.summary.rounds_contributed += 1;
        Ok(())
    }
}
