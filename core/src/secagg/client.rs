//! The client's side of a round, as a state machine driven by the coordinator's messages.
//!
//! | phase | entered by | moved on by |
//! | --- | --- | --- |
//! | [`ClientPhase::AdvertisedKeys`] | [`ClientRound::new`]: fresh key pairs, signed advertisement | [`ClientRound::on_keys`] |
//! | [`ClientPhase::SharedKeys`] | keys verified (U1), secrets shared, envelopes out | [`ClientRound::on_shares`] |
//! | [`ClientPhase::ReadyToMask`] | neighbours' envelopes opened (U2) | [`ClientRound::mask`] or [`ClientRound::take_mask`] |
//! | [`ClientPhase::Masked`] | input masked, or its masks taken, once | [`ClientRound::on_survivors`] |
//! | [`ClientPhase::Signed`] | the survivor set U3 checked and signed, once | [`ClientRound::on_unmask`] |
//! | [`ClientPhase::Revealed`] | shares revealed for the one survivor set it signed | — (final) |
//!
//! A refused step returns an error and leaves the state as it was; nothing secret leaves the
//! client on a refusal. The client checks everything it can check itself, because the
//! coordinator may lie: every key set against its own roster, the threshold t in its own
//! neighbourhood at every phase, that the survivors completed the share phase, that it is a
//! survivor itself, and that it reveals only once, so it never gives out both the self-mask
//! share and the mask-key share of one partner.
//!
//! **Consistency check** (Bonawitz et al., CCS 2017, §4, within each SecAgg+ neighbourhood):
//! a coordinator that shows different survivor sets to different partners could collect, for
//! one partner, both its self-mask seed (from those told it survived) and the mask keys of its
//! neighbours (from those told they dropped), and so unmask its input alone. So each survivor
//! signs the one set it was shown ([`ClientRound::on_survivors`]) and reveals nothing until it
//! holds valid signatures over exactly that set from at least t distinct members of its own
//! closed neighbourhood ([`ClientRound::on_unmask`]). Every honest partner signs one set per
//! round, so two honest partners of a neighbourhood that reveal have revealed for the same
//! set.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use ed25519_dalek::SigningKey;
use rand::CryptoRng;

use super::error::SecAggError;
use super::keys::{
    ENVELOPE_LEN, ENVELOPE_PLAINTEXT_LEN, Party, Purpose, Roster, RoundKeyPairs, SIGNATURE_LEN,
    open, pairwise_secret, public_of, seal, sign_keys, sign_survivors, survivors_digest,
    verify_keys, verify_survivors,
};
use super::message::{
    Envelope, KeyAdvertisement, RevealedShare, ShareKind, SignedKeys, SurvivorSignature,
};
use super::params::RoundParams;
use super::prg::{apply_masks, expand_masks};
use super::shamir::{SHARE_LEN, Share, split};

/// What this partner demands of any round it joins, beyond the round's own threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPolicy {
    /// Fewest partners in the cohort, and among the survivors whose sum is revealed.
    pub min_partners: usize,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self { min_partners: 2 }
    }
}

/// Where a client is in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// Keys advertised; waiting for everyone's keys.
    AdvertisedKeys,
    /// Shares sent; waiting for the neighbours' envelopes.
    SharedKeys,
    /// Envelopes received; the input can be masked.
    ReadyToMask,
    /// Input masked; waiting for the survivor list.
    Masked,
    /// Survivor list checked and signed; waiting for the neighbours' signatures.
    Signed,
    /// Shares revealed; the round is over for this client.
    Revealed,
}

impl ClientPhase {
    /// The phase's name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            ClientPhase::AdvertisedKeys => "advertised-keys",
            ClientPhase::SharedKeys => "shared-keys",
            ClientPhase::ReadyToMask => "ready-to-mask",
            ClientPhase::Masked => "masked",
            ClientPhase::Signed => "signed",
            ClientPhase::Revealed => "revealed",
        }
    }
}

/// A neighbour that advertised valid keys (in U1).
struct Peer {
    mask_seed: [u8; 32],
    share_key: [u8; 32],
    /// Its shares of its self-mask seed and mask key, at this client's point, once its
    /// envelope arrived (it is then in U2).
    received: Option<(Share, Share)>,
}

/// One client's state in one round.
pub struct ClientRound {
    params: RoundParams,
    me: usize,
    policy: ClientPolicy,
    secrets: RoundKeyPairs,
    advert: KeyAdvertisement,
    phase: ClientPhase,
    /// Neighbours in U1, by cohort index.
    peers: BTreeMap<usize, Peer>,
    self_seed: [u8; 32],
    /// This client's own shares of its two secrets.
    own_shares: Option<(Share, Share)>,
    /// The survivor set it signed (U3, cohort indices) and its digest.
    survivors: Vec<usize>,
    survivors_digest: [u8; 32],
}

impl fmt::Debug for ClientRound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRound")
            .field("round", self.params.round())
            .field("me", &self.params.id(self.me))
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// A client's masks for one round, taken once from [`ClientRound::take_mask`]: the seeds to
/// add and to subtract. Applying or expanding consumes it, so one set of masks covers one
/// input.
pub struct MaskPlan {
    len: usize,
    add: Vec<[u8; 32]>,
    sub: Vec<[u8; 32]>,
}

impl fmt::Debug for MaskPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskPlan")
            .field("len", &self.len)
            .field("masks", &(self.add.len() + self.sub.len()))
            .finish_non_exhaustive()
    }
}

impl MaskPlan {
    /// Masks `input` in place.
    pub fn apply(self, input: &mut [u32]) -> Result<(), SecAggError> {
        if input.len() != self.len {
            return Err(SecAggError::VectorLength {
                expected: self.len,
                got: input.len(),
            });
        }
        apply_masks(input, &self.add, &self.sub);
        Ok(())
    }

    /// The total mask as a vector of its own, to add to the input once that is ready.
    pub fn expand(self) -> Mask {
        Mask {
            words: expand_masks(self.len, &self.add, &self.sub),
        }
    }
}

/// A client's total mask for one round, expanded ahead of its input; adding it consumes it.
pub struct Mask {
    words: Vec<u32>,
}

impl fmt::Debug for Mask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mask")
            .field("len", &self.words.len())
            .finish_non_exhaustive()
    }
}

impl Mask {
    /// Masks `input` in place: adds the mask word by word, wrapping mod 2^32.
    pub fn apply(self, input: &mut [u32]) -> Result<(), SecAggError> {
        if input.len() != self.words.len() {
            return Err(SecAggError::VectorLength {
                expected: self.words.len(),
                got: input.len(),
            });
        }
        for (w, m) in input.iter_mut().zip(&self.words) {
            *w = w.wrapping_add(*m);
        }
        Ok(())
    }
}

impl ClientRound {
    /// Joins a round as `my_id`: checks the parameters against the policy (cohort size; the
    /// graph and the canonical cohort are checked by [`RoundParams::new`]), makes the round's
    /// two key pairs and signs their public halves with `identity`.
    pub fn new<R: CryptoRng + ?Sized>(
        params: RoundParams,
        my_id: &str,
        identity: &SigningKey,
        policy: ClientPolicy,
        rng: &mut R,
    ) -> Result<(Self, KeyAdvertisement), SecAggError> {
        let me = params.require_index(my_id)?;
        if params.len() < policy.min_partners {
            return Err(SecAggError::BelowMinimum {
                got: params.len(),
                minimum: policy.min_partners,
            });
        }
        let secrets = RoundKeyPairs::generate(rng);
        let cipher_public = public_of(&secrets.cipher);
        let mask_public = public_of(&secrets.mask);
        let signature = sign_keys(
            identity,
            params.round(),
            my_id,
            &cipher_public,
            &mask_public,
        );
        let advert = KeyAdvertisement {
            cipher_public,
            mask_public,
            signature,
        };
        let round = Self {
            params,
            me,
            policy,
            secrets,
            advert: advert.clone(),
            phase: ClientPhase::AdvertisedKeys,
            peers: BTreeMap::new(),
            self_seed: [0; 32],
            own_shares: None,
            survivors: Vec::new(),
            survivors_digest: [0; 32],
        };
        Ok((round, advert))
    }

    /// The current phase.
    pub fn phase(&self) -> ClientPhase {
        self.phase
    }

    /// The round's parameters.
    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    /// This client's signed advertisement, e.g. to send it again.
    pub fn advertisement(&self) -> &KeyAdvertisement {
        &self.advert
    }

    fn my_id(&self) -> &str {
        self.params.id(self.me)
    }

    fn expect_phase(&self, phase: ClientPhase, call: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::WrongPhase {
                call,
                phase: self.phase.name(),
            })
        }
    }

    fn party(&self, index: usize) -> Party<'_> {
        Party {
            index,
            id: self.params.id(index),
        }
    }

    /// Phase 2: takes the key sets the coordinator relays (U1, or the part of it in this
    /// client's neighbourhood, including this client's own), verifies every one against
    /// `roster`, and returns one envelope per neighbour in U1 carrying its shares of this
    /// client's self-mask seed and mask key (t-of-|N⁺ ∩ U1|).
    ///
    /// Refuses a key set for an unknown partner or one outside the cohort, a bad signature,
    /// a partner listed twice, its own keys missing or altered, and fewer than t partners of
    /// its closed neighbourhood in U1.
    pub fn on_keys<R: CryptoRng + ?Sized>(
        &mut self,
        keys: &[SignedKeys],
        roster: &Roster,
        rng: &mut R,
    ) -> Result<Vec<Envelope>, SecAggError> {
        self.expect_phase(ClientPhase::AdvertisedKeys, "on_keys")?;
        let round = *self.params.round();
        let mut u1: BTreeMap<usize, &KeyAdvertisement> = BTreeMap::new();
        for signed in keys {
            let j = self.params.require_index(&signed.partner_id)?;
            if u1.contains_key(&j) {
                return Err(SecAggError::DuplicateKeys(signed.partner_id.clone()));
            }
            verify_keys(roster, &round, signed)?;
            if j == self.me && signed.keys != self.advert {
                return Err(SecAggError::OwnKeysAltered);
            }
            u1.insert(j, &signed.keys);
        }
        if !u1.contains_key(&self.me) {
            return Err(SecAggError::OwnKeysAltered);
        }
        let close: Vec<usize> = self
            .params
            .graph()
            .closed_neighbourhood(self.me)
            .into_iter()
            .filter(|j| u1.contains_key(j))
            .collect();
        let t = self.params.threshold();
        if close.len() < t {
            return Err(SecAggError::BelowThreshold {
                phase: "keys",
                partner: self.my_id().to_owned(),
                got: close.len(),
                need: t,
            });
        }

        let mut peers = BTreeMap::new();
        for (&j, adv) in u1.iter().filter(|&(&j, _)| j != self.me) {
            if !close.contains(&j) {
                continue;
            }
            let (me, them) = (self.party(self.me), self.party(j));
            let mask_seed = pairwise_secret(
                Purpose::MaskSeed,
                &round,
                &self.secrets.mask,
                &adv.mask_public,
                me,
                them,
            )?;
            let share_key = pairwise_secret(
                Purpose::ShareKey,
                &round,
                &self.secrets.cipher,
                &adv.cipher_public,
                me,
                them,
            )?;
            peers.insert(
                j,
                Peer {
                    mask_seed,
                    share_key,
                    received: None,
                },
            );
        }

        let mut self_seed = [0u8; 32];
        rng.fill_bytes(&mut self_seed);
        let xs: Vec<u32> = close.iter().map(|&j| RoundParams::point(j)).collect();
        let bad_share = |source| SecAggError::BadShare {
            owner: self.my_id().to_owned(),
            source,
        };
        let seed_shares = split(&self_seed, t, &xs, rng).map_err(bad_share)?;
        let key_shares = split(&self.secrets.mask.to_bytes(), t, &xs, rng).map_err(bad_share)?;

        let mut envelopes = Vec::with_capacity(close.len().saturating_sub(1));
        let mut own_shares = None;
        for ((&j, b), k) in close.iter().zip(seed_shares).zip(key_shares) {
            match peers.get(&j) {
                None => own_shares = Some((b, k)),
                Some(peer) => {
                    let mut plaintext = Vec::with_capacity(ENVELOPE_PLAINTEXT_LEN);
                    plaintext.extend_from_slice(&b.value_bytes());
                    plaintext.extend_from_slice(&k.value_bytes());
                    let to = self.params.id(j);
                    let ciphertext =
                        seal(&peer.share_key, &round, self.my_id(), to, &plaintext, rng)?;
                    envelopes.push(Envelope {
                        from: self.my_id().to_owned(),
                        to: to.to_owned(),
                        ciphertext,
                    });
                }
            }
        }
        self.peers = peers;
        self.self_seed = self_seed;
        self.own_shares = own_shares;
        self.phase = ClientPhase::SharedKeys;
        Ok(envelopes)
    }

    /// Phase 3: opens the envelopes neighbours sent this client. The senders, with this
    /// client, form its view of U2 and are the partners it masks with. Refuses an envelope
    /// not addressed to it, from a partner that is not a neighbour in U1, sent twice, or that
    /// does not decrypt under the pair's key for this round and direction; and refuses if
    /// fewer than t of its closed neighbourhood remain.
    pub fn on_shares(&mut self, envelopes: &[Envelope]) -> Result<(), SecAggError> {
        self.expect_phase(ClientPhase::SharedKeys, "on_shares")?;
        let round = *self.params.round();
        let my_point = RoundParams::point(self.me);
        let mut received = BTreeMap::new();
        for env in envelopes {
            if env.to != self.my_id() {
                return Err(SecAggError::Misrouted {
                    from: env.from.clone(),
                    to: env.to.clone(),
                });
            }
            let j = self.params.require_index(&env.from)?;
            let peer = self
                .peers
                .get(&j)
                .ok_or_else(|| SecAggError::UnexpectedSender(env.from.clone()))?;
            if received.contains_key(&j) {
                return Err(SecAggError::DuplicateEnvelope {
                    from: env.from.clone(),
                    to: env.to.clone(),
                });
            }
            if env.ciphertext.len() != ENVELOPE_LEN {
                return Err(SecAggError::WrongLength {
                    field: "ciphertext",
                    expected: ENVELOPE_LEN,
                    got: env.ciphertext.len(),
                });
            }
            let plaintext = open(
                &peer.share_key,
                &round,
                &env.from,
                self.my_id(),
                &env.ciphertext,
            )?;
            if plaintext.len() != ENVELOPE_PLAINTEXT_LEN {
                return Err(SecAggError::Decrypt(env.from.clone()));
            }
            let (b, k) = plaintext.split_at(SHARE_LEN);
            let bad_share = |source| SecAggError::BadShare {
                owner: env.from.clone(),
                source,
            };
            let b = Share::from_value_bytes(my_point, b).map_err(bad_share)?;
            let k = Share::from_value_bytes(my_point, k).map_err(bad_share)?;
            received.insert(j, (b, k));
        }
        let t = self.params.threshold();
        if received.len() + 1 < t {
            return Err(SecAggError::BelowThreshold {
                phase: "shares",
                partner: self.my_id().to_owned(),
                got: received.len() + 1,
                need: t,
            });
        }
        for (j, shares) in received {
            if let Some(peer) = self.peers.get_mut(&j) {
                peer.received = Some(shares);
            }
        }
        self.phase = ClientPhase::ReadyToMask;
        Ok(())
    }

    /// Masks `input` in place, once: y = x + PRG(b) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)
    /// over the neighbours j in U2. Masking twice is refused: two inputs under the same masks
    /// would reveal their difference.
    pub fn mask(&mut self, input: &mut [u32]) -> Result<(), SecAggError> {
        self.take_mask()?.apply(input)
    }

    /// Takes the round's masks (the seeds of [`ClientRound::mask`]) once, so they can be
    /// expanded away from the session, or before the input is ready: the mask does not depend
    /// on it. Moves the round on as masking does; a second call is refused.
    pub fn take_mask(&mut self) -> Result<MaskPlan, SecAggError> {
        self.expect_phase(ClientPhase::ReadyToMask, "mask")?;
        let mut add = vec![self.self_seed];
        let mut sub = Vec::new();
        for (&j, peer) in &self.peers {
            if peer.received.is_some() {
                if j > self.me {
                    add.push(peer.mask_seed);
                } else {
                    sub.push(peer.mask_seed);
                }
            }
        }
        self.phase = ClientPhase::Masked;
        Ok(MaskPlan {
            len: self.params.vector_len(),
            add,
            sub,
        })
    }

    /// Phase 4a: given the survivors U3 (whose masked inputs are in the sum), checks the set
    /// and signs it with `identity`, once. The signature goes to the coordinator, which relays
    /// the neighbours' signatures back with the unmask request.
    ///
    /// Refuses a second call, a survivor listed twice or outside the cohort, a survivor in its
    /// neighbourhood that did not complete the share phase (U3 ⊄ U2), being left out of U3
    /// itself, fewer than t survivors in its closed neighbourhood, and fewer survivors than
    /// its policy minimum.
    pub fn on_survivors(
        &mut self,
        survivors: &[String],
        identity: &SigningKey,
    ) -> Result<[u8; SIGNATURE_LEN], SecAggError> {
        if matches!(self.phase, ClientPhase::Signed | ClientPhase::Revealed) {
            return Err(SecAggError::AlreadyRevealed);
        }
        self.expect_phase(ClientPhase::Masked, "on_survivors")?;
        let mut u3 = HashSet::with_capacity(survivors.len());
        for id in survivors {
            let j = self.params.require_index(id)?;
            if !u3.insert(j) {
                return Err(SecAggError::DuplicateSurvivor(id.clone()));
            }
        }
        if !u3.contains(&self.me) {
            return Err(SecAggError::NotASurvivor);
        }
        let mut close_survivors = 0;
        for j in self.params.graph().closed_neighbourhood(self.me) {
            if !u3.contains(&j) {
                continue;
            }
            let shared = j == self.me || self.peers.get(&j).is_some_and(|p| p.received.is_some());
            if !shared {
                return Err(SecAggError::SurvivorWithoutShares(
                    self.params.id(j).to_owned(),
                ));
            }
            close_survivors += 1;
        }
        let t = self.params.threshold();
        if close_survivors < t {
            return Err(SecAggError::BelowThreshold {
                phase: "inputs",
                partner: self.my_id().to_owned(),
                got: close_survivors,
                need: t,
            });
        }
        if u3.len() < self.policy.min_partners {
            return Err(SecAggError::BelowMinimum {
                got: u3.len(),
                minimum: self.policy.min_partners,
            });
        }
        let mut sorted: Vec<usize> = u3.into_iter().collect();
        sorted.sort_unstable();
        let digest = survivors_digest(self.params.round(), &self.survivor_ids(&sorted));
        let signature = sign_survivors(identity, &digest);
        self.survivors = sorted;
        self.survivors_digest = digest;
        self.phase = ClientPhase::Signed;
        Ok(signature)
    }

    fn survivor_ids<'a>(&'a self, survivors: &[usize]) -> Vec<&'a str> {
        survivors.iter().map(|&j| self.params.id(j)).collect()
    }

    /// Phase 4b: given the survivors' signatures over the set this client signed, checks that
    /// each verifies under its signer's roster key over exactly that set and that at least t
    /// distinct members of its closed neighbourhood signed it; then returns this client's
    /// share of each U2 neighbour's self-mask seed if it survived, or of its mask key if it
    /// dropped, and its own self-mask share — never both kinds for one partner, because it
    /// answers only once.
    ///
    /// Refuses a second call, a signature that does not verify, one from a partner outside
    /// the set or given twice, and fewer than t valid signers in its closed neighbourhood.
    pub fn on_unmask(
        &mut self,
        signatures: &[SurvivorSignature],
        roster: &Roster,
    ) -> Result<Vec<RevealedShare>, SecAggError> {
        if self.phase == ClientPhase::Revealed {
            return Err(SecAggError::AlreadyRevealed);
        }
        self.expect_phase(ClientPhase::Signed, "on_unmask")?;
        let mut signers = HashSet::with_capacity(signatures.len());
        for signed in signatures {
            let j = self.params.require_index(&signed.partner_id)?;
            if self.survivors.binary_search(&j).is_err() {
                return Err(SecAggError::SignerNotASurvivor(signed.partner_id.clone()));
            }
            if !signers.insert(j) {
                return Err(SecAggError::DuplicateSignature(signed.partner_id.clone()));
            }
            verify_survivors(roster, &self.survivors_digest, signed)?;
        }
        let close_signers = self
            .params
            .graph()
            .closed_neighbourhood(self.me)
            .into_iter()
            .filter(|j| signers.contains(j))
            .count();
        let t = self.params.threshold();
        if close_signers < t {
            return Err(SecAggError::BelowThreshold {
                phase: "consistency",
                partner: self.my_id().to_owned(),
                got: close_signers,
                need: t,
            });
        }

        let x = RoundParams::point(self.me);
        let reveal = |owner: usize, kind, share: &Share| RevealedShare {
            owner: self.params.id(owner).to_owned(),
            kind,
            x,
            value: share.value_bytes().to_vec(),
        };
        let mut out = Vec::with_capacity(self.peers.len() + 1);
        if let Some((b, _)) = &self.own_shares {
            out.push(reveal(self.me, ShareKind::SelfMask, b));
        }
        for (&j, peer) in &self.peers {
            if let Some((b, k)) = &peer.received {
                out.push(if self.survivors.binary_search(&j).is_ok() {
                    reveal(j, ShareKind::SelfMask, b)
                } else {
                    reveal(j, ShareKind::MaskKey, k)
                });
            }
        }
        self.phase = ClientPhase::Revealed;
        Ok(out)
    }

    /// The survivor set this client signed, in cohort order (empty before
    /// [`ClientRound::on_survivors`]).
    pub fn signed_survivors(&self) -> Vec<String> {
        self.survivor_ids(&self.survivors)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}
