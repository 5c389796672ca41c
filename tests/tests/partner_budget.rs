//! A partner enforces its own budget against a coordinator that does not: a fake coordinator
//! (raw gRPC, plain aggregation) offers a record-DP job to a real partner node and then asks
//! for more than the plan — rounds past the spec's `rounds`, a round past the job's ε, a
//! round it already had — across a reconnect and a restart of the node. The node sends an
//! update for each planned round once (a re-run gets the same words again), refuses the rest
//! with the reason in its audit file (its round guard refuses rounds outside the plan or out
//! of order, its ledger what it already contributed or what would pass the budget), and its
//! ledger on disk never passes the plan.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fedmark_client::ledger::Ledger;
use fedmark_client::node::{self, NodeOptions};
use fedmark_core::aggregate::RoundKind;
use fedmark_core::features::FeatureSchema;
use fedmark_core::model::Architecture;
use fedmark_core::spec::{JobSpec, PrivacyMode};
use fedmark_proto::coordinator_server::{Coordinator, CoordinatorServer};
use fedmark_proto::{
    ClientMessage, InputChunk, JobFinished, JobOffer, ModelChunk, ModelRequest, RoundAbort,
    RoundRef, RoundResult, RoundStart, ServerMessage, UploadState, UploadStatus, Welcome,
    client_message, server_message,
};
use fedmark_tests::harness::{bank_spec, client_config};
use fedmark_tests::partition::{Split, partition_csv};
use fedmark_tests::sim::SimOptions;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// The fake coordinator: sessions are handed to the test, which drives them; models are
/// zeros; uploads are collected.
struct Fake {
    sessions: mpsc::Sender<(Streaming<ClientMessage>, Outbound)>,
    uploads: mpsc::Sender<(RoundRef, Vec<u32>, Vec<InputChunk>)>,
    model_len: usize,
}

#[tonic::async_trait]
impl Coordinator for Fake {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;
    type DownloadModelStream = ReceiverStream<Result<ModelChunk, Status>>;
    type UploadInputStream = ReceiverStream<Result<UploadStatus, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.sessions
            .send((request.into_inner(), tx))
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn download_model(
        &self,
        request: Request<ModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let (tx, rx) = mpsc::channel(2);
        let chunk = ModelChunk {
            round: request.into_inner().round,
            offset: 0,
            values: vec![0u8; self.model_len * 8].into(),
            last: true,
        };
        tx.send(Ok(chunk)).await.ok();
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload_input(
        &self,
        request: Request<Streaming<InputChunk>>,
    ) -> Result<Response<Self::UploadInputStream>, Status> {
        let mut chunks = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let status = |state: UploadState| UploadStatus {
            state: state as i32,
        };
        tx.send(Ok(status(UploadState::Admitted))).await.ok();
        let uploads = self.uploads.clone();
        tokio::spawn(async move {
            let (mut words, mut seen) = (Vec::new(), Vec::new());
            while let Ok(Some(chunk)) = chunks.message().await {
                words.extend_from_slice(&chunk.values);
                let (last, round) = (chunk.last, chunk.round.clone());
                seen.push(chunk);
                if last {
                    tx.send(Ok(status(UploadState::Received))).await.ok();
                    if let Some(round) = round {
                        uploads.send((round, words, seen)).await.ok();
                    }
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One session as the test drives it.
struct Session {
    inbound: Streaming<ClientMessage>,
    out: Outbound,
}

/// What the partner did with a round.
#[derive(Debug, PartialEq)]
enum Outcome {
    Sent(Vec<u32>),
    Refused(String),
}

/// The last upload's chunks, kept for the test that walks every field.
type Chunks = Vec<InputChunk>;

struct Driver {
    sessions: mpsc::Receiver<(Streaming<ClientMessage>, Outbound)>,
    uploads: mpsc::Receiver<(RoundRef, Vec<u32>, Chunks)>,
    last_chunks: Chunks,
    spec: JobSpec,
    spec_toml: String,
    job_id: String,
    audit: PathBuf,
    model_len: usize,
}

const PARTNER: &str = "bank";
const WAIT: Duration = Duration::from_secs(60);

impl Driver {
    async fn open(&mut self) -> Session {
        self.open_with_hello().await.0
    }

    /// Opens the next session and returns the partner's hello with it.
    async fn open_with_hello(&mut self) -> (Session, client_message::Body) {
        let (mut inbound, out) = tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("no session within a minute")
            .unwrap();
        let hello = next(&mut inbound).await;
        assert!(matches!(hello, client_message::Body::Hello(_)), "{hello:?}");
        send(
            &out,
            server_message::Body::Welcome(Welcome {
                coordinator_id: "fake".into(),
                session_token: vec![7; 32],
            }),
        )
        .await;
        (Session { inbound, out }, hello)
    }

    async fn offer(&self, s: &mut Session) {
        self.offer_reply(s).await;
    }

    /// Offers the job and returns the partner's (accepting) reply.
    async fn offer_reply(&self, s: &mut Session) -> client_message::Body {
        send(
            &s.out,
            server_message::Body::Offer(JobOffer {
                job_id: self.job_id.clone(),
                spec_toml: self.spec_toml.clone(),
            }),
        )
        .await;
        match next(&mut s.inbound).await {
            client_message::Body::OfferReply(r) => {
                assert!(r.accept, "refused: {}", r.reason);
                client_message::Body::OfferReply(r)
            }
            other => panic!("expected an offer reply, got {other:?}"),
        }
    }

    /// Asks for training round `round` (attempt `attempt`) and waits for the partner's
    /// update or its refusal in its audit file.
    async fn round(&mut self, s: &mut Session, round: u64, attempt: u32) -> Outcome {
        self.round_of(s, round, attempt, RoundKind::Training).await
    }

    /// Asks for round `round` of `kind`; see [`Driver::round`].
    async fn round_of(
        &mut self,
        s: &mut Session,
        round: u64,
        attempt: u32,
        kind: RoundKind,
    ) -> Outcome {
        let rref = RoundRef {
            job_id: self.job_id.clone(),
            round,
            attempt,
        };
        let cohort = vec![PARTNER.to_owned(), "ghost".to_owned()];
        let layout = kind
            .layout(&self.spec, self.model_len, cohort.len())
            .unwrap();
        let numeric = self.spec.features.numeric.len();
        let mut start = RoundStart {
            round: Some(rref.clone()),
            cohort,
            threshold: 2,
            secure: false,
            vector_len: layout.len() as u64,
            feature_mean: vec![0.0; numeric],
            feature_std: vec![1.0; numeric],
            model_len: self.model_len as u64,
            ..RoundStart::default()
        };
        start.set_kind(kind.into());
        send(&s.out, server_message::Body::RoundStart(start)).await;
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: no upload, no refusal"
            );
            if let Ok(Some((got, words, chunks))) =
                tokio::time::timeout(Duration::from_millis(100), self.uploads.recv()).await
            {
                assert_eq!(got, rref, "an upload for another round");
                self.last_chunks = chunks;
                send(
                    &s.out,
                    server_message::Body::RoundResult(RoundResult {
                        round: Some(rref),
                        participants: 2,
                        ..RoundResult::default()
                    }),
                )
                .await;
                return Outcome::Sent(words);
            }
            if let Some(reason) = refusal(&self.audit, &rref) {
                send(
                    &s.out,
                    server_message::Body::RoundAbort(RoundAbort {
                        round: Some(rref),
                        reason: "the partner sat out".into(),
                    }),
                )
                .await;
                return Outcome::Refused(reason);
            }
        }
    }

    async fn finish(&self, s: &Session) {
        send(
            &s.out,
            server_message::Body::Finished(JobFinished {
                job_id: self.job_id.clone(),
                reason: "done".into(),
            }),
        )
        .await;
    }
}

async fn next(inbound: &mut Streaming<ClientMessage>) -> client_message::Body {
    tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("no message from the partner within a minute")
        .unwrap()
        .and_then(|m| m.body)
        .expect("the partner closed its session")
}

async fn send(out: &Outbound, body: server_message::Body) {
    out.send(Ok(ServerMessage { body: Some(body) }))
        .await
        .expect("the session is gone");
}

/// The reason the partner's audit file gives for sitting out `rref`, if it did.
fn refusal(audit: &Path, rref: &RoundRef) -> Option<String> {
    let text = std::fs::read_to_string(audit).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| {
            (r["kind"] == "round_abandoned" || r["kind"] == "round_refused")
                && r["data"]["job_id"] == rref.job_id.as_str()
                && r["data"]["round"] == rref.round
                && r["data"]["attempt"] == rref.attempt
        })
        .map(|r| r["data"]["reason"].as_str().unwrap_or_default().to_owned())
}

fn refused(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Refused(reason) => reason,
        Outcome::Sent(_) => panic!("the partner sent an update"),
    }
}

fn sent(outcome: Outcome) -> Vec<u32> {
    match outcome {
        Outcome::Sent(words) => words,
        Outcome::Refused(reason) => panic!("the partner refused: {reason}"),
    }
}

/// A record-DP job of `rounds` rounds at ε = 1 with a fixed noise multiplier `sigma`.
fn dp_spec(name: &str, rounds: u32, sigma: f64) -> JobSpec {
    let mut spec = bank_spec(rounds).unwrap();
    spec.job.name = name.into();
    spec.aggregation.secure = false;
    spec.privacy.mode = PrivacyMode::Record;
    spec.privacy.epsilon = 1.0;
    spec.privacy.delta = 1e-5;
    spec.privacy.noise_multiplier = Some(sigma);
    spec
}

async fn start_fake(spec: JobSpec, job_id: &str, audit: PathBuf) -> (std::net::SocketAddr, Driver) {
    let schema = FeatureSchema::from_spec(&spec);
    let model_len = Architecture::from_spec(&spec).num_params(schema.dim());
    let (sessions_tx, sessions) = mpsc::channel(4);
    let (uploads_tx, uploads) = mpsc::channel(4);
    let fake = Fake {
        sessions: sessions_tx,
        uploads: uploads_tx,
        model_len,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let driver = Driver {
        sessions,
        uploads,
        last_chunks: Vec::new(),
        spec_toml: spec.to_toml().unwrap(),
        spec,
        job_id: job_id.to_owned(),
        audit,
        model_len,
    };
    (addr, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_asks_past_the_plan_gets_refusals_across_reconnects_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 2, &Split::Iid, 5).unwrap();
    let audit = dir.path().join("bank.audit.jsonl");
    // σ = 4: three rounds spend far less than the job's ε = 1, so only the plan's three
    // rounds stop a fourth.
    let (addr, mut fake) = start_fake(dp_spec("plan", 3, 4.0), "job-plan", audit.clone()).await;
    let mut cfg = client_config(addr, PARTNER, files[0].0.clone(), 1);
    cfg.audit = Some(audit.clone());
    let ledger_path = cfg.ledger_path().unwrap();
    assert!(
        ledger_path.starts_with(dir.path()),
        "durable by default, beside the data"
    );
    let node_cfg = cfg.clone();
    let node =
        tokio::spawn(
            async move { node::run_until_finished(&node_cfg, NodeOptions::default()).await },
        );

    let mut s = fake.open().await;
    fake.offer(&mut s).await;
    let mut first = Vec::new();
    for round in 1..=3 {
        first.push(sent(fake.round(&mut s, round, 0).await));
    }
    // A second attempt at the last round gets the very same update: nothing new released.
    let again = sent(fake.round(&mut s, 3, 1).await);
    assert_eq!(again, first[2], "a re-run re-sends what was sent");
    // Round 4 of a 3-round plan is the final evaluation, never a training round.
    let past = fake.round(&mut s, 4, 2).await;
    assert!(
        refused(&past).contains("must be a evaluation round"),
        "{past:?}"
    );

    // The coordinator drops the session; the node reconnects and is offered the job again.
    drop(s);
    let mut s = fake.open().await;
    fake.offer(&mut s).await;
    let past = fake.round(&mut s, 4, 3).await;
    assert!(refused(&past).contains("evaluation round"), "{past:?}");
    // An older round does not come back (the round guard outlives the session).
    let old = fake.round(&mut s, 2, 1).await;
    assert!(refused(&old).contains("does not come after"), "{old:?}");
    fake.finish(&s).await;
    node.await.unwrap().unwrap();

    // A restarted node reads the same ledger.
    let node_cfg = cfg.clone();
    let node =
        tokio::spawn(
            async move { node::run_until_finished(&node_cfg, NodeOptions::default()).await },
        );
    let mut s = fake.open().await;
    fake.offer(&mut s).await;
    for round in [5, 200] {
        let past = fake.round(&mut s, round, 0).await;
        assert!(
            refused(&past).contains("outside the job's plan of 3"),
            "{past:?}"
        );
    }
    // The restarted node's ledger remembers (this plain job's round order is kept in memory
    // only): an older round's update is no longer kept, and a fresh one would be a second
    // release.
    let old = fake.round(&mut s, 1, 3).await;
    assert!(refused(&old).contains("already contributed"), "{old:?}");
    fake.finish(&s).await;
    node.await.unwrap().unwrap();

    let ledger = Ledger::open(Some(&ledger_path)).unwrap();
    let job = ledger.job("job-plan").unwrap();
    assert_eq!(job.charged_rounds, [1, 2, 3].into_iter().collect());
    let spent = job.spent.epsilon(1e-5).unwrap().0;
    assert!(
        (ledger.spent("campaign_response", 1e-5).unwrap() - spent).abs() < 1e-12,
        "the purpose was charged exactly the job's three rounds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_past_the_jobs_epsilon_is_refused_without_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 2, &Split::Iid, 6).unwrap();
    let audit = dir.path().join("bank.audit.jsonl");
    // σ = 1.4 at q = 0.01: 9 rounds (900 steps) spend ε ≈ 0.962, a 10th would pass 1 (PLD
    // accountant) — the plan says 12 rounds and the partner has no `max_epsilon`, so only
    // the job's own ε stops round 10.
    let (addr, mut fake) = start_fake(dp_spec("eps", 12, 1.4), "job-eps", audit.clone()).await;
    let mut cfg = client_config(addr, PARTNER, files[0].0.clone(), 1);
    cfg.audit = Some(audit);
    assert_eq!(cfg.max_epsilon, None);
    let node_cfg = cfg.clone();
    let node =
        tokio::spawn(
            async move { node::run_until_finished(&node_cfg, NodeOptions::default()).await },
        );
    let mut s = fake.open().await;
    fake.offer(&mut s).await;
    for round in 1..=9 {
        sent(fake.round(&mut s, round, 0).await);
    }
    for round in [10, 11, 12] {
        let over = fake.round(&mut s, round, 0).await;
        assert!(
            refused(&over).contains("above the job's budget of 1"),
            "{over:?}"
        );
    }
    fake.finish(&s).await;
    node.await.unwrap().unwrap();
    let ledger = Ledger::open(cfg.ledger_path().as_deref()).unwrap();
    let job = ledger.job("job-eps").unwrap();
    assert_eq!(job.charged_rounds.len(), 9);
    assert!(ledger.spent("campaign_response", 1e-5).unwrap() <= 1.0);
}

/// What a message from the partner is, field by field. The patterns name every field (no
/// `..`), so a field added to the protocol does not compile until it is classified here.
fn walk(body: &client_message::Body, partner: &str, job_id: &str) {
    use fedmark_proto::{
        EncryptedShares, Hello, KeyAdvertisement, OfferReply, SurvivorSignature, UnmaskReply,
    };
    match body {
        // Spec-fixed: the roster id and the protocol's version.
        client_message::Body::Hello(Hello {
            partner_id,
            protocol_version,
        }) => {
            assert_eq!(partner_id, partner);
            assert_eq!(*protocol_version, fedmark_proto::PROTOCOL_VERSION);
        }
        // Spec-fixed: the offered job's id, and a yes (a refusal reason names the spec's
        // terms, never the data; see the governance tests).
        client_message::Body::OfferReply(OfferReply {
            job_id: id,
            accept,
            reason,
        }) => {
            assert_eq!(id, job_id);
            assert!(*accept && reason.is_empty(), "{reason}");
        }
        // Cryptographic, drawn fresh from the OS for the round and independent of the data
        // (fresh X25519 keys, their signature, encrypted shares of fresh secrets, a signature
        // over the survivor set, shares of those secrets): secure rounds only, so none here.
        client_message::Body::Keys(KeyAdvertisement {
            round: _,
            cipher_public: _,
            mask_public: _,
            signature: _,
        })
        | client_message::Body::Shares(EncryptedShares {
            round: _,
            envelopes: _,
        })
        | client_message::Body::SurvivorSignature(SurvivorSignature {
            round: _,
            signature: _,
        })
        | client_message::Body::Unmask(UnmaskReply {
            round: _,
            shares: _,
        }) => panic!("secure-aggregation message in a plain job: {body:?}"),
    }
}

/// Every field of every message a partner sends in a record-DP job, walked: the session's
/// messages (see [`walk`]); each input chunk's round, offset, `last` flag and consent field
/// (spec- or protocol-fixed; without a consent source the field is empty, with one it is a
/// fresh commitment, see the governance tests); and the values. A training round's values
/// are the DP-SGD update (clipped, noised, charged before it left) and the one spec-fixed
/// weight; the final evaluation's are the holdout statistics plus Gaussian noise of the
/// planned scale, charged too. The exact statistics are recomputed here for the all-zero
/// model the fake coordinator serves (every score 0.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_a_dp_partner_sends_is_fixed_by_the_spec_or_noised_and_charged() {
    use fedmark_client::data::{HoldoutSplit, load_csv};
    use fedmark_core::budget::{EVAL_LOSS_CAP, PrivacyPlan};

    let dir = tempfile::tempdir().unwrap();
    let files = partition_csv(&SimOptions::default().data, dir.path(), 2, &Split::Iid, 7).unwrap();
    let audit = dir.path().join("bank.audit.jsonl");
    let rounds = 2u64;
    let spec = dp_spec("walk", rounds as u32, 4.0);
    let plan = PrivacyPlan::from_spec(&spec).unwrap().unwrap();
    let (addr, mut fake) = start_fake(spec.clone(), "job-walk", audit.clone()).await;
    let mut cfg = client_config(addr, PARTNER, files[0].0.clone(), 1);
    cfg.audit = Some(audit.clone());
    let node_cfg = cfg.clone();
    let node =
        tokio::spawn(
            async move { node::run_until_finished(&node_cfg, NodeOptions::default()).await },
        );

    let (mut s, hello) = fake.open_with_hello().await;
    walk(&hello, PARTNER, "job-walk");
    walk(&fake.offer_reply(&mut s).await, PARTNER, "job-walk");

    let check_chunks = |chunks: &Chunks, round: u64, words: usize| {
        let mut offset = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            let InputChunk {
                round: rref,
                offset: at,
                values,
                last,
                consent_snapshot,
            } = c;
            assert_eq!(rref.as_ref().map(|r| r.round), Some(round));
            assert_eq!(*at, offset, "offsets follow the protocol");
            assert_eq!(*last, i + 1 == chunks.len());
            assert!(consent_snapshot.is_empty(), "no consent source configured");
            offset += values.len() as u64;
        }
        assert_eq!(offset as usize, words);
    };
    for round in 1..=rounds {
        let words = sent(fake.round(&mut s, round, 0).await);
        check_chunks(&fake.last_chunks, round, words.len());
        let layout = RoundKind::Training
            .layout(&spec, fake.model_len, 2)
            .unwrap();
        let values = layout.decode(&words);
        assert_eq!(
            values.stats,
            vec![1.0],
            "the spec-fixed weight, nothing else"
        );
        let norm = values.update.iter().map(|u| u * u).sum::<f64>().sqrt();
        assert!(norm <= spec.training.clip_norm * 1.001, "clipped: {norm}");
    }
    let eval_round = rounds + 1;
    let words = sent(
        fake.round_of(&mut s, eval_round, 0, RoundKind::Evaluation)
            .await,
    );
    check_chunks(&fake.last_chunks, eval_round, words.len());
    fake.finish(&s).await;
    node.await.unwrap().unwrap();

    // The exact holdout statistics of the zero model, from the partner's own file.
    let data = load_csv(
        &files[0].0,
        &spec,
        HoldoutSplit {
            fraction: cfg.holdout_fraction,
            seed: cfg.holdout_seed,
        },
    )
    .unwrap();
    let bins = spec.histogram_bins() as usize;
    let n = data.holdout.len() as f64;
    let positives = data.holdout.labels.iter().filter(|&&y| y > 0.5).count() as f64;
    let mut exact = vec![0.0; 3 + 2 * bins];
    exact[0] = n;
    exact[1] = positives; // a score of 0.5 predicts positive
    exact[2] = n * std::f64::consts::LN_2 / EVAL_LOSS_CAP;
    exact[3 + bins / 2] = positives;
    exact[3 + bins + bins / 2] = n - positives;
    let released = RoundKind::Evaluation
        .layout(&spec, fake.model_len, 2)
        .unwrap()
        .decode(&words)
        .stats;
    assert_eq!(released.len(), exact.len());
    assert!(released.iter().all(|v| v.fract() == 0.0), "rounded");
    // The deviations are N(0, s²) with s = z·Δ = 16 (plus rounding): their mean square over
    // 43 values has a chi-square spread; 0.3 to 2.0 of s² is over 5 standard deviations.
    let s = plan.evaluation_noise_std().unwrap();
    let mean_square = released
        .iter()
        .zip(&exact)
        .map(|(r, e)| (r - e.round()).powi(2))
        .sum::<f64>()
        / exact.len() as f64;
    assert!(
        (0.3..2.0).contains(&(mean_square / (s * s))),
        "noise {mean_square} against {}",
        s * s
    );

    // Charged before each release: the training rounds to the training side, the evaluation
    // to the holdout side, and each side's total is the plan's, recomputed here.
    let ledger = Ledger::open(Some(&cfg.ledger_path().unwrap())).unwrap();
    let job = ledger.job("job-walk").unwrap();
    assert_eq!(job.charged_rounds, (1..=eval_round).collect());
    let mut training = fedmark_core::accountant::Accountant::new();
    plan.charge_rounds(&mut training, rounds).unwrap();
    let mut holdout = fedmark_core::accountant::Accountant::new();
    plan.charge_evaluation(&mut holdout).unwrap();
    assert_eq!(job.spent, training);
    assert_eq!(job.holdout, holdout);
    let job_epsilon = job.spend().epsilon(1e-5).unwrap().0;
    assert!(job_epsilon <= plan.epsilon * (1.0 + 1e-9));
    assert_eq!(
        job_epsilon,
        training
            .epsilon(1e-5)
            .unwrap()
            .0
            .max(holdout.epsilon(1e-5).unwrap().0)
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    for round in 1..=eval_round {
        let at = |kind: &str| {
            text.lines().position(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                r["kind"] == kind && r["data"]["round"] == round
            })
        };
        assert!(
            at("privacy_charged").unwrap() < at("input_sent").unwrap(),
            "round {round}: charged before it was sent"
        );
    }
}
