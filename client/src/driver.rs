//! The node's session: tokio glue around the round [`Participant`]. It runs one session with
//! the coordinator, answers job offers ([`crate::offer`]), and performs what the participant
//! asks for, in order: sends messages, writes the audit file ([`crate::audit`]), takes each
//! round's consent snapshot ([`crate::consent`]), downloads the model and uploads the input
//! on their own streams ([`crate::transfer`]), computes on a blocking thread
//! ([`crate::contribution`]) and charges the privacy ledger ([`crate::ledger`]) before an
//! input leaves. The protocol's checks and state are the participant's; what the driver adds
//! is I/O, threads, and the simulator's fault injection.
//!
//! Nothing that leaves it is a raw record: only encoded (and, with secure aggregation,
//! masked) vectors, counts and the partner's accept/refuse decision.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fedmark_core::aggregate::{RoundKind, VectorLayout};
use fedmark_core::secagg::Mask;
use fedmark_core::spec::{JobSpec, PrivacyMode};
use fedmark_proto::coordinator_client::CoordinatorClient;
use fedmark_proto::{ClientMessage, Hello, OfferReply, PROTOCOL_VERSION, RoundRef};
use fedmark_proto::{client_message, server_message};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::audit::{AuditLog, PartnerEvent};
use crate::config::ClientConfig;
use crate::consent::{ConsentSource, commit_snapshot, consent_key, now_unix};
use crate::contribution::{JobContext, training_seed};
use crate::dial::connect;
use crate::error::ClientError;
use crate::identity::Identity;
use crate::ledger::{self, Contribution, JobTerms, Ledger};
use crate::options::{DropPoint, NodeOptions};
use crate::participant::{
    AcceptedJob, Action, Computation, Decision, Participant, ProtocolViolation, RoundConsent,
};
use crate::policy::PartnerPolicy;
use crate::rounds::RoundRecords;
use crate::transfer::{SessionToken, Uploaded, download_model, upload_input};

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

/// One session. `summary` carries over between sessions (rounds contributed add up);
/// `progressed` is set once the coordinator has welcomed this partner.
pub(crate) async fn session(
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
    lock(&options.guards)?.load_once(cfg.rounds_path().as_deref())?;
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
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1);
    let mut node = Node {
        client,
        token: None,
        cfg: cfg.clone(),
        participant: Participant::new(cfg.partner_id.clone(), identity.clone()),
        options,
        identity,
        ledger,
        policy,
        audit,
        tx,
        done_tx,
        job: None,
        transfers: Transfers::default(),
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
                            return Err(ProtocolViolation::EmptyMessage.into());
                        };
                        node.handle(body).await?
                    }
                    None => return Err(ClientError::Closed),
                },
                Some(done) = done_rx.recv() => {
                    node.on_done(done)?;
                    node.drive().await?;
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

/// What a round's background work produced.
struct Done {
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

/// The background work of the round in progress (its transfers stop when it is dropped),
/// and whether its whole input was sent.
#[derive(Default)]
struct Transfers {
    round: Option<RoundRef>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sent: Arc<AtomicBool>,
}

impl Transfers {
    fn for_round(round: Option<RoundRef>) -> Self {
        Self {
            round,
            tasks: Vec::new(),
            sent: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Node {
    /// The session's connection; the bulk streams share it.
    client: CoordinatorClient<Channel>,
    /// The session token of the welcome, which binds the bulk streams to this session.
    token: Option<SessionToken>,
    cfg: ClientConfig,
    participant: Participant,
    options: NodeOptions,
    identity: Option<Identity>,
    ledger: Ledger,
    policy: Option<PartnerPolicy>,
    audit: Option<AuditLog>,
    tx: mpsc::Sender<ClientMessage>,
    done_tx: mpsc::Sender<Done>,
    job: Option<(String, Arc<Mutex<JobContext>>)>,
    transfers: Transfers,
    rng: StdRng,
    summary: ClientSummary,
    /// The last job that ended on this session (a refused job ends twice).
    finished: Option<String>,
}

/// The round records, locked.
fn lock(guards: &Mutex<RoundRecords>) -> Result<MutexGuard<'_, RoundRecords>, ClientError> {
    guards
        .lock()
        .map_err(|_| ClientError::Poisoned("round records"))
}

async fn send(
    tx: &mpsc::Sender<ClientMessage>,
    body: client_message::Body,
) -> Result<(), ClientError> {
    tx.send(ClientMessage { body: Some(body) })
        .await
        .map_err(|_| ClientError::Closed)
}

impl Node {
    async fn handle(&mut self, body: server_message::Body) -> Result<Flow, ClientError> {
        use server_message::Body;
        match body {
            Body::Welcome(w) => {
                info!(coordinator = %w.coordinator_id, "session open");
                let token = SessionToken::from_welcome(&w.session_token)
                    .map_err(|_| ProtocolViolation::MalformedWelcome)?;
                self.token = Some(token);
            }
            Body::Offer(offer) => {
                // A job offered again (resubmitted after a cancel) will end again.
                if self.finished.as_deref() == Some(offer.job_id.as_str()) {
                    self.finished = None;
                }
                let purpose = JobSpec::from_toml(&offer.spec_toml)
                    .ok()
                    .map(|s| s.job.purpose);
                self.audit(PartnerEvent::OfferReceived {
                    job_id: offer.job_id.clone(),
                    spec_sha256: fedmark_core::audit::sha256_hex(offer.spec_toml.as_bytes()),
                    purpose,
                })?;
                let reply = self.consider(&offer.job_id, &offer.spec_toml)?;
                // On a refusal the coordinator answers with `JobFinished`, which ends the
                // session; leaving at once could lose the reply with the stream.
                send(&self.tx, client_message::Body::OfferReply(reply)).await?;
            }
            Body::RoundStart(start) => {
                if self.token.is_none() {
                    return Err(ProtocolViolation::RoundBeforeWelcome.into());
                }
                let mut guards = lock(&self.options.guards)?;
                self.participant.on_round_start(start, &mut guards)?;
            }
            Body::Keys(keys) => {
                if self.participant.is_current(&keys.round) {
                    self.leave_if(DropPoint::AfterKeys)?;
                    self.participant.on_keys(keys)?;
                }
            }
            Body::Shares(delivery) => {
                if self.participant.is_current(&delivery.round) {
                    self.leave_if(DropPoint::AfterShares)?;
                    self.participant.on_shares(delivery)?;
                }
            }
            Body::SurvivorCheck(check) => {
                if self.participant.is_current(&check.round) {
                    self.leave_if(DropPoint::AfterInput)?;
                    self.participant.on_survivor_check(check)?;
                }
            }
            Body::Unmask(request) => {
                if self.participant.is_current(&request.round) {
                    self.leave_if(DropPoint::AfterSignature)?;
                    let mut guards = lock(&self.options.guards)?;
                    self.participant.on_unmask(request, &mut guards)?;
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
                if self.participant.on_result(&r) && self.transfers.sent.load(Ordering::Acquire) {
                    self.summary.rounds_contributed += 1;
                }
            }
            Body::RoundAbort(a) => self.participant.on_abort(&a),
            Body::Finished(f) => {
                if self.finished.as_deref() == Some(f.job_id.as_str()) {
                    // A refused job ends twice: at the refusal and for everyone at its end.
                    debug!(job = %f.job_id, "job already finished here; ignored");
                    return Ok(Flow::Continue);
                }
                info!(job = %f.job_id, reason = %f.reason, "job finished");
                self.finished = Some(f.job_id.clone());
                self.audit(PartnerEvent::JobFinished {
                    job_id: f.job_id.clone(),
                    reason: f.reason.clone(),
                })?;
                self.summary.finish_reason = f.reason;
                // Ready for the next job: nothing of this one carries over.
                self.job = None;
                self.participant.job_finished();
                self.drive().await?;
                return Ok(Flow::Finished);
            }
        }
        self.drive().await?;
        Ok(Flow::Continue)
    }

    /// Performs what the participant asks for, in order, feeding back what it waits on.
    async fn drive(&mut self) -> Result<(), ClientError> {
        while let Some(action) = self.participant.poll() {
            match action {
                Action::Send(body) => send(&self.tx, body).await?,
                Action::Audit(event) => self.audit(event)?,
                Action::TakeConsent(rref) => {
                    let outcome = self.consent_for_round(&rref)?;
                    if matches!(outcome, RoundConsent::Committed(_)) {
                        self.leave_if(DropPoint::Start)?;
                    }
                    self.participant.consent_taken(&rref, outcome);
                }
                Action::Download { round, model_len } => {
                    let (client, token) = (self.client.clone(), self.session_token()?);
                    let rref = round.clone();
                    self.spawn(round, async move {
                        download_model(client, token, rref, model_len)
                            .await
                            .map(Product::Model)
                    });
                }
                Action::Compute(c) => self.compute(c),
                Action::ExpandMask { round, plan } => {
                    let task = tokio::task::spawn_blocking(move || plan.expand());
                    self.spawn(round, async move {
                        task.await
                            .map(Product::Mask)
                            .map_err(|e| format!("mask expansion failed: {e}"))
                    });
                }
                Action::Contribute {
                    round,
                    kind,
                    layout,
                    words,
                } => {
                    let decided = self.contribute(&round, kind, &layout, words).await?;
                    self.participant.contribution(&round, decided);
                }
                Action::Upload {
                    round,
                    words,
                    consent_commitment,
                } => {
                    let drop_mid = self.take_dropout(round.round, DropPoint::MidInput);
                    let (client, token) = (self.client.clone(), self.session_token()?);
                    let sent = Arc::clone(&self.transfers_for(&round).sent);
                    let rref = round.clone();
                    self.spawn(round, async move {
                        upload_input(
                            client,
                            token,
                            rref,
                            words,
                            consent_commitment,
                            drop_mid,
                            &sent,
                        )
                        .await
                        .map(Product::Uploaded)
                    });
                }
            }
        }
        // The background work of a round that ended stops with it.
        if self.participant.round() != self.transfers.round.as_ref() {
            self.transfers = Transfers::for_round(self.participant.round().cloned());
        }
        Ok(())
    }

    /// Runs `work` for round `rref` in the background; its product comes back as a [`Done`].
    fn spawn(
        &mut self,
        rref: RoundRef,
        work: impl std::future::Future<Output = Result<Product, String>> + Send + 'static,
    ) {
        let done = self.done_tx.clone();
        let task = tokio::spawn({
            let rref = rref.clone();
            async move {
                let product = work.await;
                let _ = done.send(Done { rref, product }).await;
            }
        });
        self.transfers_for(&rref).tasks.push(task);
    }

    /// The background work of round `rref`, started afresh if it belonged to another round
    /// (whose tasks stop).
    fn transfers_for(&mut self, rref: &RoundRef) -> &mut Transfers {
        if self.transfers.round.as_ref() != Some(rref) {
            self.transfers = Transfers::for_round(Some(rref.clone()));
        }
        &mut self.transfers
    }

    /// Hands the product of a round's background work to the participant.
    fn on_done(&mut self, done: Done) -> Result<(), ClientError> {
        if self.participant.round() != Some(&done.rref) {
            return Ok(());
        }
        let rref = done.rref;
        match done.product {
            // A transfer that failed (the coordinator refused it or the stream broke) or a
            // computation that failed ends this partner's part in the round, not its
            // session: the coordinator counts it out.
            Err(reason) => self.participant.abandon(&reason),
            Ok(Product::Model(model)) => {
                let guards = lock(&self.options.guards)?;
                self.participant.model_received(&rref, model, &guards);
            }
            Ok(Product::Words(words)) => self.participant.computed(&rref, words),
            Ok(Product::Mask(mask)) => self.participant.mask_expanded(&rref, mask),
            Ok(Product::Uploaded(Uploaded::Whole)) => {}
            Ok(Product::Uploaded(Uploaded::LeftMidway)) => return Err(ClientError::Closed),
        }
        Ok(())
    }

    /// Computes a round's vector on a blocking thread, so the session keeps answering.
    fn compute(&mut self, c: Computation) {
        let Some((_, ctx)) = self.job.as_ref() else {
            return;
        };
        let ctx = Arc::clone(ctx);
        let seed = match ctx.lock() {
            Ok(ctx) => training_seed(
                ctx.spec.job.seed,
                self.cfg.seed,
                &self.cfg.partner_id,
                &c.round.job_id,
                c.round.round,
            ),
            Err(_) => self.rng.random::<u64>(),
        };
        let round = c.round.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, String> {
            let mut ctx = ctx.lock().map_err(|_| "job state poisoned".to_string())?;
            ctx.compute(c, seed)
        });
        self.spawn(round, async move {
            task.await
                .unwrap_or_else(|e| Err(format!("local computation failed: {e}")))
                .map(Product::Words)
        });
    }

    /// What a round's vector may leave as. The partner's own ledger is charged and fsynced
    /// before a training update (or a `record` job's noised final evaluation) leaves; a
    /// round outside the accepted plan or past a cap is not sent (`Err`), and a round already
    /// contributed to gets the same update again or none (see [`crate::ledger`]).
    async fn contribute(
        &mut self,
        rref: &RoundRef,
        kind: RoundKind,
        layout: &VectorLayout,
        words: Vec<u32>,
    ) -> Result<Decision, ClientError> {
        if !matches!(kind, RoundKind::Training | RoundKind::Evaluation) {
            return Ok(Decision::Send(words));
        }
        let Some((job_id, ctx)) = &self.job else {
            return Ok(Decision::Send(words));
        };
        let (purpose, plan, planned, digest) = match ctx.lock() {
            Ok(ctx) => (
                ctx.spec.job.purpose.clone(),
                ctx.privacy,
                ctx.spec.planned_rounds(),
                ledger::spec_digest(&ctx.spec),
            ),
            Err(_) => return Err(ClientError::Poisoned("job state")),
        };
        let number = rref.round;
        let Some(plan) = plan else {
            if kind == RoundKind::Training && (number == 0 || number > planned) {
                return Ok(Decision::Refuse(format!(
                    "training round {number} is past the plan this partner accepted: the job plans training rounds 1 to {planned}"
                )));
            }
            return Ok(Decision::Send(words));
        };
        let cap = ledger::partner_cap(self.cfg.max_epsilon, self.policy.as_ref(), &purpose);
        let terms = JobTerms {
            job_id,
            spec_sha256: &digest,
            purpose: &purpose,
            plan: &plan,
            planned_rounds: planned,
            cap,
        };
        let replayable = plan.mode != PrivacyMode::PartnerDistributed;
        let decided = ledger::contribute(
            &mut self.ledger,
            &terms,
            number,
            layout,
            &words,
            replayable,
            &mut self.rng,
        );
        match decided {
            Ok(Contribution::Charged(eps)) => {
                debug!(epsilon = eps, "charged the privacy ledger");
                // The ledger was charged: that is audited whether or not the input goes out.
                self.audit(PartnerEvent::PrivacyCharged {
                    job_id: rref.job_id.clone(),
                    round: rref.round,
                    purpose,
                    epsilon_after: eps,
                })?;
                if let Some(pause) = ledger::pause_after_charge(number) {
                    tokio::time::sleep(pause).await;
                }
                Ok(Decision::Send(words))
            }
            Ok(Contribution::Replayed(again)) => {
                debug!(
                    round = number,
                    "re-sending the update this round got before"
                );
                self.audit(PartnerEvent::InputReplayed { ids: rref.into() })?;
                Ok(Decision::Send(again))
            }
            Err(reason) => Ok(Decision::Refuse(reason)),
        }
    }

    /// Appends a record to the partner's audit file, if it keeps one.
    fn audit(&mut self, event: PartnerEvent) -> Result<(), ClientError> {
        if let Some(log) = self.audit.as_mut() {
            log.record(&event)?;
        }
        Ok(())
    }

    fn session_token(&self) -> Result<SessionToken, ClientError> {
        self.token
            .clone()
            .ok_or(ProtocolViolation::RoundBeforeWelcome.into())
    }

    /// Leaves the session if a scripted dropout is due here (simulations).
    fn leave_if(&self, point: DropPoint) -> Result<(), ClientError> {
        let round = self.participant.round().map_or(0, |r| r.round);
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

    /// Checks an offered job and loads the data for it ([`crate::offer`]); the reply says
    /// why on refusal. The decision is written to the audit file before it is sent.
    fn consider(&mut self, job_id: &str, spec_toml: &str) -> Result<OfferReply, ClientError> {
        let checked = crate::offer::check_offer(
            &self.cfg,
            self.policy.as_ref(),
            self.identity.is_some(),
            &self.ledger,
            job_id,
            spec_toml,
        );
        let ctx = match checked {
            Ok(ctx) => ctx,
            Err(reason) => {
                warn!(job = %job_id, reason = %reason, "refusing job");
                self.audit(PartnerEvent::OfferRefused {
                    job_id: job_id.to_owned(),
                    reason: reason.clone(),
                })?;
                self.summary.refused = Some(reason.clone());
                return Ok(OfferReply {
                    job_id: job_id.to_owned(),
                    accept: false,
                    reason,
                });
            }
        };
        let (train_rows, holdout_rows) = ctx.rows_before_consent();
        info!(job = %job_id, train_rows, holdout_rows, consent = ctx.has_consent_source(), "accepted job");
        self.audit(PartnerEvent::OfferAccepted {
            job_id: job_id.to_owned(),
            train_rows,
            holdout_rows,
        })?;
        lock(&self.options.guards)?.accept(job_id, &ctx.spec)?;
        let purpose = &ctx.spec.job.purpose;
        let policy_floor = self
            .policy
            .as_ref()
            .map(|p| p.min_cohort_for(purpose) as usize);
        self.participant.job_accepted(AcceptedJob {
            job_id: job_id.to_owned(),
            spec: ctx.spec.clone(),
            num_params: ctx.num_params(),
            cohort_floor: policy_floor.map_or(self.cfg.min_cohort, |p| p.max(self.cfg.min_cohort)),
            threshold_floor: self
                .policy
                .as_ref()
                .and_then(|p| p.min_threshold_for(purpose)),
        });
        self.job = Some((job_id.to_owned(), Arc::new(Mutex::new(ctx))));
        Ok(OfferReply {
            job_id: job_id.to_owned(),
            accept: true,
            reason: String::new(),
        })
    }

    /// Takes the round's consent snapshot (re-reading the consent source) and restricts the
    /// job's rows to it; returns the snapshot hash (empty without a consent source), or the
    /// reason the round cannot use any data.
    fn consent_for_round(&mut self, rref: &RoundRef) -> Result<RoundConsent, ClientError> {
        if let Some(hook) = &self.options.round_hook {
            (hook.0)(rref.round);
        }
        let Some((_, ctx)) = &self.job else {
            return Err(ProtocolViolation::RoundBeforeJob.into());
        };
        let (hash, consented_users, train_rows, holdout_rows) = {
            let mut ctx = ctx.lock().map_err(|_| ClientError::Poisoned("job state"))?;
            match &self.cfg.consent {
                Some(path) if ctx.has_consent_source() => {
                    let source = match ConsentSource::load(path) {
                        Ok(s) => match &self.identity {
                            Some(identity) => s.with_key(consent_key(&identity.key)),
                            None => s,
                        },
                        Err(e) => {
                            return Ok(RoundConsent::Unavailable(format!("consent source: {e}")));
                        }
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
        self.audit(PartnerEvent::ConsentSnapshot {
            ids: rref.into(),
            consent_source: consented_users.is_some(),
            snapshot_sha256: hash,
            commitment: commitment.clone(),
            commitment_salt: salt,
            consented_users,
            train_rows,
            holdout_rows,
            usable_records: train_rows + holdout_rows,
        })?;
        Ok(RoundConsent::Committed(commitment))
    }
}
