//! The partner's side of a round, with no I/O: a state machine in the style of quinn-proto's
//! `Connection`. The coordinator's messages go in through the `on_*` methods, the results of
//! the work it asked for come back through [`Participant::consent_taken`],
//! [`Participant::model_received`], [`Participant::computed`],
//! [`Participant::mask_expanded`] and [`Participant::contribution`], and what the partner
//! must do next comes out of [`Participant::poll`] as [`Action`]s, in order: send a message,
//! write an audit record, take the round's consent snapshot, download the model, compute the
//! round's vector, expand the mask, charge the ledger (contribute), upload the masked input.
//!
//! The driver ([`crate::node`]) owns the network, the files and the threads. It must perform
//! the actions in the order `poll` returns them, each before the next — an audit record is
//! written before what it records is acted on, and the ledger is charged before the input
//! that pays for it is uploaded — and it must not feed a result back before the action that
//! asked for it. Results for a round that is no longer current are ignored.
//!
//! Everything a partner checks about a round lives here: the round is for the job it accepted
//! and its cohort holds this partner and is not below its floor; the job's round guard admits
//! it ([`fedmark_core::guard`], kept durably by [`RoundRecords`]); its shape is the partner's
//! own derivation from the spec ([`RoundShape`]); secure-aggregation messages go to the
//! round's [`ClientRound`]; shares are revealed at most once per start model.

use std::collections::VecDeque;

use fedmark_core::aggregate::{RoundKind, VectorLayout};
use fedmark_core::features::Standardizer;
use fedmark_core::secagg::{
    ClientPolicy, ClientRound, Envelope, Mask, MaskPlan, RoundId, RoundParams, SecAggError,
    SignedKeys,
};
use fedmark_core::shape::{RoundShape, RoundSize, bind_clip, check_clip, trees_size};
use fedmark_core::spec::JobSpec;
use fedmark_proto::{
    EncryptedShares, KeyBroadcast, RoundAbort, RoundRef, RoundResult, RoundStart, SharesDelivery,
    SurvivorCheck, SurvivorSignature, UnmaskReply, UnmaskRequest, client_message, convert,
};
use tracing::{debug, warn};

use crate::audit::PartnerEvent;
use crate::identity::Identity;
use crate::rounds::{RoundRecords, RoundsError};
use fedmark_core::audit::{f64s_sha256, u32s_sha256};

/// The source of every secret a round draws (X25519 keys, self-mask seeds, Shamir
/// coefficients, AEAD nonces) and of DP noise: the operating system's generator, never the
/// configured seed, so no two sessions, rounds or restarts ever draw the same secrets. (A
/// seeded partner that reused its keys after a reconnect would hand over, when declared
/// dropped, the mask key that unmasks an input it sent before.)
pub fn secret_rng() -> rand::rand_core::UnwrapErr<rand::rngs::SysRng> {
    rand::rand_core::UnwrapErr(rand::rngs::SysRng)
}

/// What the coordinator did that breaks the protocol; the session ends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A server message without a body.
    #[error("empty server message")]
    EmptyMessage,
    /// A welcome whose session token is not 32 bytes.
    #[error("malformed session token in the welcome")]
    MalformedWelcome,
    /// A round started before the welcome.
    #[error("a round started before the welcome")]
    RoundBeforeWelcome,
    /// A round started before any job was accepted.
    #[error("round started before any job was accepted")]
    RoundBeforeJob,
    /// A round start without a round reference.
    #[error("round start without a round reference")]
    RoundWithoutReference,
    /// A round of another job than the one accepted.
    #[error("round for a job this partner did not accept")]
    RoundForUnknownJob,
    /// A round whose cohort does not hold this partner.
    #[error("round started for a cohort without this partner")]
    CohortWithoutThisPartner,
    /// A round of kind 0.
    #[error("round of unspecified kind")]
    UnspecifiedRoundKind,
    /// A standardisation whose length is not the job's numeric feature count.
    #[error("standardisation does not match the numeric features")]
    StandardisationMismatch,
    /// A secure round for a partner without an identity.
    #[error("secure round without an identity")]
    SecureRoundWithoutIdentity,
    /// Keys for a round without secure aggregation.
    #[error("keys for a round without secure aggregation")]
    KeysOutsideSecureRound,
    /// Shares for a round without secure aggregation.
    #[error("shares for a round without secure aggregation")]
    SharesOutsideSecureRound,
    /// A survivor check for a round without secure aggregation.
    #[error("survivor check for a round without secure aggregation")]
    SurvivorCheckOutsideSecureRound,
    /// An unmask request for a round without secure aggregation.
    #[error("unmask request for a round without secure aggregation")]
    UnmaskOutsideSecureRound,
}

/// Why the participant stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParticipantError {
    /// The coordinator broke the protocol.
    #[error("protocol violation by coordinator: {0}")]
    Protocol(#[from] ProtocolViolation),
    /// The durable round records failed.
    #[error(transparent)]
    Rounds(#[from] RoundsError),
}

/// A job this partner accepted, as the participant needs it.
#[derive(Debug, Clone)]
pub struct AcceptedJob {
    /// The job id.
    pub job_id: String,
    /// The spec the partner accepted.
    pub spec: JobSpec,
    /// Parameters of the job's model.
    pub num_params: usize,
    /// The fewest partners this partner aggregates with in this job (its config's
    /// `min_cohort`, raised by its policy for the job's purpose).
    pub cohort_floor: usize,
    /// The lowest secure-aggregation threshold its policy allows for the purpose.
    pub threshold_floor: Option<u32>,
}

/// A round's vector to compute, from the partner's own records.
#[derive(Debug, Clone)]
pub struct Computation {
    /// The round.
    pub round: RoundRef,
    /// Its kind.
    pub kind: RoundKind,
    /// Its layout.
    pub layout: VectorLayout,
    /// Its cohort size (a distributed-noise share is sized by it).
    pub cohort: usize,
    /// The round's start model (empty in rounds without one).
    pub model: Vec<f64>,
    /// The standardisation the coordinator announced (a DP job uses its declared ranges).
    pub standardizer: Standardizer,
    /// The round's clip norm when the job's clip is adaptive (checked against the spec).
    pub clip: Option<f64>,
}

/// A round's consent snapshot, as the driver took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundConsent {
    /// Taken: the commitment the coordinator gets.
    Committed(String),
    /// The round cannot use any data, and why (the partner sits it out).
    Unavailable(String),
}

/// What may leave for a round's vector, as the ledger decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This vector (the computed one, or the one the round got before).
    Send(Vec<u32>),
    /// Nothing, and why (past the plan or a cap).
    Refuse(String),
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Send a message to the coordinator.
    Send(client_message::Body),
    /// Append a record to the partner's audit file.
    Audit(PartnerEvent),
    /// Take the round's consent snapshot; answer with [`Participant::consent_taken`].
    TakeConsent(RoundRef),
    /// Download the round's model on its bulk stream; answer with
    /// [`Participant::model_received`].
    Download {
        /// The round.
        round: RoundRef,
        /// Its model's parameter count.
        model_len: usize,
    },
    /// Compute the round's vector; answer with [`Participant::computed`].
    Compute(Computation),
    /// Expand the round's mask; answer with [`Participant::mask_expanded`].
    ExpandMask {
        /// The round.
        round: RoundRef,
        /// The mask's seeds.
        plan: MaskPlan,
    },
    /// Decide what this round's vector may leave as (the ledger's charge or replay); answer
    /// with [`Participant::contribution`].
    Contribute {
        /// The round.
        round: RoundRef,
        /// Its kind.
        kind: RoundKind,
        /// Its layout.
        layout: VectorLayout,
        /// The computed vector.
        words: Vec<u32>,
    },
    /// Upload the masked input on its bulk stream.
    Upload {
        /// The round.
        round: RoundRef,
        /// The masked (or, without secure aggregation, plain) encoded vector.
        words: Vec<u32>,
        /// The commitment to the round's consent snapshot.
        consent_commitment: String,
    },
}

/// The round in progress, from its start to its result or abort.
#[derive(Debug)]
struct Round {
    rref: RoundRef,
    start: RoundStart,
    kind: RoundKind,
    shape: RoundShape,
    /// The round's clip norm (adaptive-clip training rounds), as checked.
    clip: Option<f64>,
    /// SHA-256 of the round's start model, once it arrived (empty in rounds without one).
    model_sha256: String,
    /// The consent commitment, once the snapshot is taken.
    consent: Option<String>,
    secagg: Option<ClientRound>,
    mask: Option<Mask>,
    words: Option<Vec<u32>>,
    /// Whether the vector went to the ledger (and then, unless refused, out).
    contributed: bool,
}

/// The partner's side of the rounds of one session.
#[derive(Debug)]
pub struct Participant {
    partner_id: String,
    identity: Option<Identity>,
    job: Option<AcceptedJob>,
    round: Option<Round>,
    actions: VecDeque<Action>,
}

impl Participant {
    /// A participant for partner `partner_id`, with its identity if it takes part in secure
    /// aggregation.
    pub fn new(partner_id: String, identity: Option<Identity>) -> Self {
        Self {
            partner_id,
            identity,
            job: None,
            round: None,
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, in order.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The job this partner accepted, if any.
    pub fn job(&self) -> Option<&AcceptedJob> {
        self.job.as_ref()
    }

    /// The round in progress.
    pub fn round(&self) -> Option<&RoundRef> {
        self.round.as_ref().map(|r| &r.rref)
    }

    /// Whether `rref` names the round in progress.
    pub fn is_current(&self, rref: &Option<RoundRef>) -> bool {
        let current = self
            .round
            .as_ref()
            .is_some_and(|r| rref.as_ref() == Some(&r.rref));
        if !current {
            debug!("message for a round this partner is not in; ignored");
        }
        current
    }

    /// The partner accepted `job`: rounds of it may start.
    pub fn job_accepted(&mut self, job: AcceptedJob) {
        self.job = Some(job);
        self.round = None;
    }

    /// The job ended: nothing of it carries over.
    pub fn job_finished(&mut self) {
        self.job = None;
        self.round = None;
    }

    fn audit(&mut self, event: PartnerEvent) {
        self.actions.push_back(Action::Audit(event));
    }

    fn send(&mut self, body: client_message::Body) {
        self.actions.push_back(Action::Send(body));
    }

    /// Gives up on the current round (a forged key, a refused unmask, a failed transfer …):
    /// it is audited with `reason` and nothing more of it leaves.
    pub fn abandon(&mut self, reason: &str) {
        warn!(reason = %reason, "refusing to continue this round");
        if let Some(round) = self.round.take() {
            self.audit(PartnerEvent::RoundAbandoned {
                ids: (&round.rref).into(),
                reason: reason.to_owned(),
            });
        }
    }

    /// Refuses a round start that is not this partner's round: audited, nothing sent (the
    /// coordinator counts it out).
    fn refuse(&mut self, rref: &RoundRef, reason: String) {
        warn!(round = rref.round, attempt = rref.attempt, reason = %reason, "refusing a round");
        self.audit(PartnerEvent::RoundRefused {
            ids: rref.into(),
            reason,
        });
    }

    /// A round starts: checked against the accepted job, this partner's floors, the job's
    /// round guard (recorded in `guards`) and the partner's own derivation of its shape.
    pub fn on_round_start(
        &mut self,
        start: RoundStart,
        guards: &mut RoundRecords,
    ) -> Result<(), ParticipantError> {
        let Some(job) = &self.job else {
            return Err(ProtocolViolation::RoundBeforeJob.into());
        };
        let Some(rref) = start.round.clone() else {
            return Err(ProtocolViolation::RoundWithoutReference.into());
        };
        if rref.job_id != job.job_id {
            return Err(ProtocolViolation::RoundForUnknownJob.into());
        }
        if !start.cohort.iter().any(|p| p == &self.partner_id) {
            return Err(ProtocolViolation::CohortWithoutThisPartner.into());
        }
        // A new start replaces whatever round was in progress.
        self.round = None;
        let floor = job.cohort_floor;
        if start.cohort.len() < floor {
            let reason = format!(
                "cohort of {} is below this partner's minimum of {floor}",
                start.cohort.len()
            );
            self.refuse(&rref, reason);
            return Ok(());
        }
        let kind = start
            .round_kind()
            .map_err(|_| ProtocolViolation::UnspecifiedRoundKind)?;
        if let Err(refusal) = guards.admit(&rref.job_id, rref.round, rref.attempt, kind)? {
            self.refuse(&rref, refusal.to_string());
            return Ok(());
        }
        // The round's shape is the partner's own derivation from the spec it accepted and the
        // cohort's members; a start that announces anything else is sat out.
        // A boosted-trees round's sizes depend on the tree being grown: the partner takes them
        // from the start within the spec's bounds and checks them exactly against the state it
        // downloads (`JobContext::compute`).
        let size = if job.spec.is_gbdt() {
            trees_size(
                &job.spec,
                kind,
                rref.round,
                start.cohort.len(),
                &start.announced(),
            )
        } else {
            Ok(RoundSize::Params(job.num_params))
        };
        let shape = size
            .and_then(|size| RoundShape::derive_sized(&job.spec, kind, start.cohort.clone(), size))
            .and_then(|shape| {
                shape.check(&start.announced(), &rref.job_id, rref.round, rref.attempt)?;
                Ok(shape)
            });
        let shape = match shape {
            Ok(shape) => shape,
            Err(e) => {
                self.refuse(&rref, e.to_string());
                return Ok(());
            }
        };
        let clip = match check_clip(&job.spec, kind, start.clip) {
            Ok(clip) => clip,
            Err(e) => {
                self.refuse(&rref, e.to_string());
                return Ok(());
            }
        };
        let numeric = job.spec.features.numeric.len();
        if kind != RoundKind::Statistics
            && (start.feature_mean.len() != numeric || start.feature_std.len() != numeric)
        {
            return Err(ProtocolViolation::StandardisationMismatch.into());
        }
        if shape.secure.is_some() && self.identity.is_none() {
            return Err(ProtocolViolation::SecureRoundWithoutIdentity.into());
        }
        debug!(
            round = rref.round,
            attempt = rref.attempt,
            ?kind,
            "round started"
        );
        self.audit(PartnerEvent::RoundStarted {
            ids: (&rref).into(),
            kind: kind.as_str().to_owned(),
            cohort_size: start.cohort.len(),
            threshold: start.threshold,
        });
        self.actions.push_back(Action::TakeConsent(rref.clone()));
        self.round = Some(Round {
            rref,
            start,
            kind,
            shape,
            clip,
            model_sha256: String::new(),
            consent: None,
            secagg: None,
            mask: None,
            words: None,
            contributed: false,
        });
        Ok(())
    }

    /// The round's consent snapshot: its commitment, or why the round cannot use any data
    /// (the partner sits it out). Then the round's work begins: the model download, the
    /// round keys (secure rounds), and the computation when there is no model to wait for.
    pub fn consent_taken(&mut self, rref: &RoundRef, outcome: RoundConsent) {
        if self.round() != Some(rref) {
            return;
        }
        let commitment = match outcome {
            RoundConsent::Committed(c) => c,
            RoundConsent::Unavailable(reason) => {
                warn!(round = rref.round, reason = %reason, "cannot take this round's consent snapshot; sitting it out");
                self.abandon(&reason);
                return;
            }
        };
        let Some(round) = self.round.as_mut() else {
            return;
        };
        round.consent = Some(commitment);
        let model_len = round.shape.model_len;
        if model_len > 0 {
            self.actions.push_back(Action::Download {
                round: rref.clone(),
                model_len,
            });
        }
        if round.shape.secure.is_some() {
            self.advertise_keys();
        }
        if model_len == 0 && self.round.is_some() {
            self.compute(Vec::new());
        }
    }

    /// Phase 1 of a secure round: fresh keys, signed with the identity key.
    fn advertise_keys(&mut self) {
        let (Some(round), Some(identity), Some(job)) = (
            self.round.as_mut(),
            self.identity.as_ref(),
            self.job.as_ref(),
        ) else {
            return;
        };
        let Some(secure) = round.shape.secure else {
            return;
        };
        let (degree, threshold) = (secure.degree, secure.threshold);
        if let Some(floor) = job.threshold_floor
            && (threshold as u64) < u64::from(floor)
        {
            let reason = format!(
                "this round's threshold {threshold} is below this partner's policy minimum of {floor}"
            );
            self.abandon(&reason);
            return;
        }
        // The sum is revealed only over at least the round's own floor, which the partner
        // derives itself: the job's minimum, the threshold and, for distributed noise, the
        // survivors its noise share was sized for.
        let policy = ClientPolicy {
            min_partners: job.cohort_floor.max(round.shape.min_survivors),
        };
        let created = RoundParams::new(
            RoundId::from(&round.rref),
            round.start.cohort.clone(),
            threshold,
            degree,
            round.shape.layout.len(),
        )
        .map(|params| bind_clip(params, round.clip))
        .and_then(|params| {
            ClientRound::new(
                params,
                &self.partner_id,
                &identity.key,
                policy,
                &mut secret_rng(),
            )
        });
        match created {
            Ok((secagg, advert)) => {
                let msg = fedmark_proto::KeyAdvertisement::new(&round.rref, &advert);
                round.secagg = Some(secagg);
                self.send(client_message::Body::Keys(msg));
            }
            Err(e) => self.abandon(&e.to_string()),
        }
    }

    fn compute(&mut self, model: Vec<f64>) {
        let Some(round) = self.round.as_ref() else {
            return;
        };
        self.actions.push_back(Action::Compute(Computation {
            round: round.rref.clone(),
            kind: round.kind,
            layout: round.shape.layout,
            cohort: round.start.cohort.len(),
            model,
            standardizer: Standardizer {
                mean: round.start.feature_mean.clone(),
                std: round.start.feature_std.clone(),
            },
            clip: round.clip,
        }));
    }

    /// The round's model arrived: audited by its hash, checked against the rounds already
    /// unmasked from it (`guards`), then computed from.
    pub fn model_received(&mut self, rref: &RoundRef, model: Vec<f64>, guards: &RoundRecords) {
        let Some(round) = self.round.as_mut().filter(|r| &r.rref == rref) else {
            return;
        };
        let hash = if model.is_empty() {
            String::new()
        } else {
            f64s_sha256(&model)
        };
        round.model_sha256 = hash.clone();
        let secure = round.secagg.is_some();
        self.audit(PartnerEvent::ModelReceived {
            ids: rref.into(),
            model_sha256: hash.clone(),
            params: model.len(),
        });
        // A secure round from a model this partner already helped unmask another round from
        // is sat out at once (it would refuse that round's unmask anyway).
        if secure && let Err(refusal) = guards.may_unmask(&rref.job_id, rref.round, &hash) {
            self.abandon(&refusal.to_string());
            return;
        }
        self.compute(model);
    }

    /// Phase 2 of a secure round: the neighbours' keys arrived; the partner's encrypted
    /// shares go out.
    pub fn on_keys(&mut self, keys: KeyBroadcast) -> Result<(), ParticipantError> {
        if !self.is_current(&keys.round) {
            return Ok(());
        }
        // A malformed advertisement counts as missing: the client round decides whether
        // enough valid ones remain.
        let signed: Vec<SignedKeys> = keys
            .keys
            .into_iter()
            .filter_map(|k| SignedKeys::try_from(k).ok())
            .collect();
        let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref()) else {
            return Ok(());
        };
        let Some(secagg) = round.secagg.as_mut() else {
            return Err(ProtocolViolation::KeysOutsideSecureRound.into());
        };
        match secagg.on_keys(&signed, &identity.roster, &mut secret_rng()) {
            Ok(envelopes) => {
                let msg = EncryptedShares {
                    round: Some(round.rref.clone()),
                    envelopes: envelopes.into_iter().map(Into::into).collect(),
                };
                self.send(client_message::Body::Shares(msg));
            }
            Err(e) => self.abandon(&e.to_string()),
        }
        Ok(())
    }

    /// Phase 3 of a secure round: the shares for this partner arrived; its mask can be
    /// expanded.
    pub fn on_shares(&mut self, delivery: SharesDelivery) -> Result<(), ParticipantError> {
        if !self.is_current(&delivery.round) {
            return Ok(());
        }
        let envelopes: Result<Vec<Envelope>, _> = convert::all(delivery.envelopes);
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let Some(secagg) = round.secagg.as_mut() else {
            return Err(ProtocolViolation::SharesOutsideSecureRound.into());
        };
        match envelopes.and_then(|env| {
            secagg.on_shares(&env)?;
            secagg.take_mask()
        }) {
            Ok(plan) => {
                let round = round.rref.clone();
                self.actions.push_back(Action::ExpandMask { round, plan });
            }
            Err(e) => self.abandon(&e.to_string()),
        }
        Ok(())
    }

    /// The round's mask, expanded.
    pub fn mask_expanded(&mut self, rref: &RoundRef, mask: Mask) {
        if let Some(round) = self.round.as_mut().filter(|r| &r.rref == rref) {
            round.mask = Some(mask);
            self.ready_to_contribute();
        }
    }

    /// The round's vector, computed.
    pub fn computed(&mut self, rref: &RoundRef, words: Vec<u32>) {
        if let Some(round) = self.round.as_mut().filter(|r| &r.rref == rref) {
            round.words = Some(words);
            self.ready_to_contribute();
        }
    }

    /// Once the vector is computed and (in a secure round) the mask is ready, the vector goes
    /// to the ledger.
    fn ready_to_contribute(&mut self) {
        let Some(round) = self.round.as_mut() else {
            return;
        };
        let mask_ready = round.secagg.is_none() || round.mask.is_some();
        if round.contributed || !mask_ready {
            return;
        }
        let Some(words) = round.words.take() else {
            return;
        };
        round.contributed = true;
        self.actions.push_back(Action::Contribute {
            round: round.rref.clone(),
            kind: round.kind,
            layout: round.shape.layout,
            words,
        });
    }

    /// What the round's vector may leave as (after the ledger's charge, or the update this
    /// round got before), or why it may not leave: then masked and uploaded.
    pub fn contribution(&mut self, rref: &RoundRef, decided: Decision) {
        let Some(round) = self.round.as_mut().filter(|r| &r.rref == rref) else {
            return;
        };
        let mut words = match decided {
            Decision::Send(words) => words,
            Decision::Refuse(reason) => {
                self.abandon(&reason);
                return;
            }
        };
        if let Some(mask) = round.mask.take()
            && let Err(e) = mask.apply(&mut words)
        {
            self.abandon(&e.to_string());
            return;
        }
        let consent_commitment = round.consent.clone().unwrap_or_default();
        self.audit(PartnerEvent::InputSent {
            ids: rref.into(),
            masked_sha256: u32s_sha256(&words),
            words: words.len(),
        });
        self.actions.push_back(Action::Upload {
            round: rref.clone(),
            words,
            consent_commitment,
        });
    }

    /// The consistency check: the partner signs the survivor set it is shown, once.
    pub fn on_survivor_check(&mut self, check: SurvivorCheck) -> Result<(), ParticipantError> {
        if !self.is_current(&check.round) {
            return Ok(());
        }
        let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref()) else {
            return Ok(());
        };
        let Some(secagg) = round.secagg.as_mut() else {
            return Err(ProtocolViolation::SurvivorCheckOutsideSecureRound.into());
        };
        match secagg.on_survivors(&check.survivors, &identity.key) {
            Ok(signature) => {
                let msg = SurvivorSignature {
                    round: Some(round.rref.clone()),
                    signature: signature.to_vec(),
                };
                self.send(client_message::Body::SurvivorSignature(msg));
            }
            Err(e) => self.abandon(&e.to_string()),
        }
        Ok(())
    }

    /// The unmask: the partner reveals its shares once it holds enough valid signatures over
    /// the set it signed, and only if it has not helped unmask another round from the same
    /// start model (recorded durably in `guards` before the shares leave).
    pub fn on_unmask(
        &mut self,
        request: UnmaskRequest,
        guards: &mut RoundRecords,
    ) -> Result<(), ParticipantError> {
        if !self.is_current(&request.round) {
            return Ok(());
        }
        let (Some(round), Some(identity)) = (self.round.as_mut(), self.identity.as_ref()) else {
            return Ok(());
        };
        let Some(secagg) = round.secagg.as_mut() else {
            return Err(ProtocolViolation::UnmaskOutsideSecureRound.into());
        };
        let revealed = if request.survivors != secagg.signed_survivors() {
            Err(SecAggError::SurvivorSetChanged)
        } else {
            convert::all(request.signatures)
                .and_then(|signatures| secagg.on_unmask(&signatures, &identity.roster))
        };
        let shares = match revealed {
            Ok(shares) => shares,
            Err(e) => {
                self.abandon(&e.to_string());
                return Ok(());
            }
        };
        let rref = round.rref.clone();
        if let Err(refusal) = guards.reveal(&rref.job_id, rref.round, &round.model_sha256)? {
            self.abandon(&refusal.to_string());
            return Ok(());
        }
        let msg = UnmaskReply {
            round: Some(rref),
            shares: shares.into_iter().map(Into::into).collect(),
        };
        self.send(client_message::Body::Unmask(msg));
        Ok(())
    }

    /// The round completed; returns whether it was the round in progress.
    pub fn on_result(&mut self, result: &RoundResult) -> bool {
        let current = self.round.is_some() && self.is_current(&result.round);
        self.round = None;
        current
    }

    /// The coordinator aborted a round; only the round it names ends (a late abort must not
    /// end a newer round).
    pub fn on_abort(&mut self, abort: &RoundAbort) {
        if self.is_current(&abort.round) {
            warn!(round = abort.round.as_ref().map_or(0, |r| r.round), reason = %abort.reason, "round aborted");
            self.round = None;
        }
    }
}

#[cfg(test)]
mod tests;
