//! The coordinator's side of a round: it collects and relays, and in the end removes the masks
//! from the sum of the survivors' masked inputs. It never sees an unmasked input.
//!
//! | phase | what arrives | closed by | set fixed |
//! | --- | --- | --- | --- |
//! | [`ServerPhase::CollectingKeys`] | signed key sets ([`ServerRound::on_keys`]) | [`ServerRound::close_keys`] | U1 |
//! | [`ServerPhase::CollectingShares`] | each client's envelopes ([`ServerRound::on_shares`]) | [`ServerRound::close_shares`] | U2 |
//! | [`ServerPhase::CollectingInputs`] | masked inputs, summed by the caller (e.g. [`crate::aggregate::RunningSum`]) | [`ServerRound::close_inputs`] | U3 |
//! | [`ServerPhase::CheckingConsistency`] | survivors' signatures over U3 ([`ServerRound::on_signature`]) | [`ServerRound::close_consistency`] | U4 |
//! | [`ServerPhase::CollectingReveals`] | revealed shares ([`ServerRound::on_revealed`]) | [`ServerRound::unmask`] | — |
//!
//! Between phases the coordinator relays [`ServerRound::keys_for`] and
//! [`ServerRound::envelopes_for`] to each client, announces U3, and relays
//! [`ServerRound::signatures_for`] with the unmask request. Each phase needs at least t
//! partners in all; each client checks t within its own neighbourhood.
//!
//! Unmasking reconstructs, for each partner in U2, its self-mask seed if it is in U3 or its
//! mask key if it dropped, from at least t shares; only when every secret is recovered does
//! it touch the sum, subtracting each survivor's self mask and removing the pairwise masks
//! between each dropped partner and its surviving neighbours. Masks are expanded straight into
//! the sum, so memory stays O(d).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use x25519_dalek::StaticSecret;

use super::error::SecAggError;
use super::keys::{
    ENVELOPE_LEN, Party, Purpose, Roster, pairwise_secret, public_of, survivors_digest,
    verify_keys, verify_survivors,
};
use super::message::{Envelope, RevealedShare, ShareKind, SignedKeys, SurvivorSignature};
use super::params::RoundParams;
use super::prg::apply_masks;
use super::shamir::{Share, reconstruct};

/// Where the coordinator is in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPhase {
    /// Collecting key advertisements.
    CollectingKeys,
    /// Collecting envelopes.
    CollectingShares,
    /// Collecting masked inputs.
    CollectingInputs,
    /// Collecting the survivors' signatures over U3.
    CheckingConsistency,
    /// Collecting revealed shares.
    CollectingReveals,
}

impl ServerPhase {
    /// The phase's name, for errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            ServerPhase::CollectingKeys => "collecting-keys",
            ServerPhase::CollectingShares => "collecting-shares",
            ServerPhase::CollectingInputs => "collecting-inputs",
            ServerPhase::CheckingConsistency => "checking-consistency",
            ServerPhase::CollectingReveals => "collecting-reveals",
        }
    }
}

/// The coordinator's state in one round.
#[derive(Debug, Clone)]
pub struct ServerRound {
    params: RoundParams,
    phase: ServerPhase,
    /// Verified key sets: U1 once keys are closed.
    keys: BTreeMap<usize, SignedKeys>,
    /// Envelopes by recipient.
    outbox: BTreeMap<usize, Vec<Envelope>>,
    /// U2.
    sharers: BTreeSet<usize>,
    /// U3.
    survivors: BTreeSet<usize>,
    /// The digest of U3 that survivors sign.
    survivors_digest: [u8; 32],
    /// U4: survivors' verified signatures over U3.
    signatures: BTreeMap<usize, SurvivorSignature>,
    /// Survivors that revealed their shares.
    revealers: BTreeSet<usize>,
    /// Revealed shares by owner and kind.
    shares: BTreeMap<(usize, ShareKind), Vec<Share>>,
}

impl ServerRound {
    /// Starts a round.
    pub fn new(params: RoundParams) -> Self {
        Self {
            params,
            phase: ServerPhase::CollectingKeys,
            keys: BTreeMap::new(),
            outbox: BTreeMap::new(),
            sharers: BTreeSet::new(),
            survivors: BTreeSet::new(),
            survivors_digest: [0; 32],
            signatures: BTreeMap::new(),
            revealers: BTreeSet::new(),
            shares: BTreeMap::new(),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> ServerPhase {
        self.phase
    }

    /// The round's parameters.
    pub fn params(&self) -> &RoundParams {
        &self.params
    }

    fn expect_phase(&self, phase: ServerPhase, call: &'static str) -> Result<(), SecAggError> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(SecAggError::WrongPhase {
                call,
                phase: self.phase.name(),
            })
        }
    }

    fn ids(&self, set: impl IntoIterator<Item = usize>) -> Vec<String> {
        set.into_iter()
            .map(|i| self.params.id(i).to_owned())
            .collect()
    }

    fn quorum(&self, phase: &'static str, got: usize) -> Result<(), SecAggError> {
        let need = self.params.threshold();
        if got < need {
            Err(SecAggError::QuorumLost { phase, got, need })
        } else {
            Ok(())
        }
    }

    /// Records a partner's signed keys after checking them against the coordinator's roster.
    pub fn on_keys(&mut self, signed: SignedKeys, roster: &Roster) -> Result<(), SecAggError> {
        self.expect_phase(ServerPhase::CollectingKeys, "on_keys")?;
        let i = self.params.require_index(&signed.partner_id)?;
        if self.keys.contains_key(&i) {
            return Err(SecAggError::DuplicateKeys(signed.partner_id));
        }
        verify_keys(roster, self.params.round(), &signed)?;
        self.keys.insert(i, signed);
        Ok(())
    }

    /// Ends key collection: the partners with keys are U1 (returned in cohort order). Refused
    /// with fewer than t.
    pub fn close_keys(&mut self) -> Result<Vec<String>, SecAggError> {
        self.expect_phase(ServerPhase::CollectingKeys, "close_keys")?;
        self.quorum("keys", self.keys.len())?;
        self.phase = ServerPhase::CollectingShares;
        Ok(self.ids(self.keys.keys().copied()))
    }

    /// The key sets to relay to `partner`: those of U1 in its closed neighbourhood, its own
    /// included.
    pub fn keys_for(&self, partner: &str) -> Result<Vec<SignedKeys>, SecAggError> {
        if self.phase == ServerPhase::CollectingKeys {
            return Err(SecAggError::WrongPhase {
                call: "keys_for",
                phase: self.phase.name(),
            });
        }
        let i = self.params.require_index(partner)?;
        if !self.keys.contains_key(&i) {
            return Err(SecAggError::UnexpectedSender(partner.to_owned()));
        }
        Ok(self
            .params
            .graph()
            .closed_neighbourhood(i)
            .into_iter()
            .filter_map(|j| self.keys.get(&j).cloned())
            .collect())
    }

    /// Records one client's envelopes: exactly one for each of its neighbours in U1, each of
    /// the right size. The whole upload is refused if any is wrong.
    pub fn on_shares(&mut self, from: &str, envelopes: Vec<Envelope>) -> Result<(), SecAggError> {
        self.expect_phase(ServerPhase::CollectingShares, "on_shares")?;
        let i = self.params.require_index(from)?;
        if !self.keys.contains_key(&i) {
            return Err(SecAggError::UnexpectedSender(from.to_owned()));
        }
        if self.sharers.contains(&i) {
            return Err(SecAggError::DuplicateUpload(from.to_owned()));
        }
        let mut seen = HashSet::with_capacity(envelopes.len());
        let mut routed = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let to = self.params.require_index(&env.to)?;
            if env.from != from || to == i || !self.params.graph().is_close(i, to) {
                return Err(SecAggError::Misrouted {
                    from: env.from,
                    to: env.to,
                });
            }
            if !self.keys.contains_key(&to) {
                return Err(SecAggError::UnexpectedSender(env.to));
            }
            if !seen.insert(to) {
                return Err(SecAggError::DuplicateEnvelope {
                    from: env.from,
                    to: env.to,
                });
            }
            if env.ciphertext.len() != ENVELOPE_LEN {
                return Err(SecAggError::WrongLength {
                    field: "ciphertext",
                    expected: ENVELOPE_LEN,
                    got: env.ciphertext.len(),
                });
            }
            routed.push((to, env));
        }
        if let Some(missing) = self
            .params
            .graph()
            .neighbours(i)
            .iter()
            .map(|&j| j as usize)
            .find(|j| self.keys.contains_key(j) && !seen.contains(j))
        {
            return Err(SecAggError::MissingEnvelope {
                from: from.to_owned(),
                to: self.params.id(missing).to_owned(),
            });
        }
        for (to, env) in routed {
            self.outbox.entry(to).or_default().push(env);
        }
        self.sharers.insert(i);
        Ok(())
    }

    /// Ends share collection: the partners that uploaded are U2 (returned in cohort order).
    /// Refused with fewer than t.
    pub fn close_shares(&mut self) -> Result<Vec<String>, SecAggError> {
        self.expect_phase(ServerPhase::CollectingShares, "close_shares")?;
        self.quorum("shares", self.sharers.len())?;
        let sharers = &self.sharers;
        self.outbox.retain(|to, _| sharers.contains(to));
        self.phase = ServerPhase::CollectingInputs;
        Ok(self.ids(self.sharers.iter().copied()))
    }

    /// The envelopes to relay to `partner` (a member of U2).
    pub fn envelopes_for(&self, partner: &str) -> Result<Vec<Envelope>, SecAggError> {
        self.expect_phase(ServerPhase::CollectingInputs, "envelopes_for")?;
        let i = self.params.require_index(partner)?;
        if !self.sharers.contains(&i) {
            return Err(SecAggError::UnexpectedSender(partner.to_owned()));
        }
        Ok(self.outbox.get(&i).cloned().unwrap_or_default())
    }

    /// Ends input collection with the partners whose masked inputs are complete in the sum:
    /// they are U3 (returned in cohort order, to announce). Refused if one is listed twice or
    /// is not in U2, or with fewer than t.
    pub fn close_inputs(&mut self, survivors: &[String]) -> Result<Vec<String>, SecAggError> {
        self.expect_phase(ServerPhase::CollectingInputs, "close_inputs")?;
        let mut u3 = BTreeSet::new();
        for id in survivors {
            let i = self.params.require_index(id)?;
            if !self.sharers.contains(&i) {
                return Err(SecAggError::SurvivorWithoutShares(id.clone()));
            }
            if !u3.insert(i) {
                return Err(SecAggError::DuplicateSurvivor(id.clone()));
            }
        }
        self.quorum("inputs", u3.len())?;
        self.survivors = u3;
        let ids = self.ids(self.survivors.iter().copied());
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.survivors_digest = survivors_digest(self.params.round(), &ids);
        self.phase = ServerPhase::CheckingConsistency;
        Ok(self.ids(self.survivors.iter().copied()))
    }

    /// Records a survivor's signature over U3 after checking it against the coordinator's
    /// roster. Refuses a signer outside U3, a second signature, and one that does not verify.
    pub fn on_signature(
        &mut self,
        signed: SurvivorSignature,
        roster: &Roster,
    ) -> Result<(), SecAggError> {
        self.expect_phase(ServerPhase::CheckingConsistency, "on_signature")?;
        let i = self.params.require_index(&signed.partner_id)?;
        if !self.survivors.contains(&i) {
            return Err(SecAggError::SignerNotASurvivor(signed.partner_id));
        }
        if self.signatures.contains_key(&i) {
            return Err(SecAggError::DuplicateSignature(signed.partner_id));
        }
        verify_survivors(roster, &self.survivors_digest, &signed)?;
        self.signatures.insert(i, signed);
        Ok(())
    }

    /// Ends the consistency check: the survivors that signed are U4 (returned in cohort
    /// order), the partners to ask for their shares. Refused with fewer than t.
    pub fn close_consistency(&mut self) -> Result<Vec<String>, SecAggError> {
        self.expect_phase(ServerPhase::CheckingConsistency, "close_consistency")?;
        self.quorum("consistency", self.signatures.len())?;
        self.phase = ServerPhase::CollectingReveals;
        Ok(self.ids(self.signatures.keys().copied()))
    }

    /// The signatures to relay to `partner` with its unmask request: those of the signers in
    /// its closed neighbourhood, the only ones it counts.
    pub fn signatures_for(&self, partner: &str) -> Result<Vec<SurvivorSignature>, SecAggError> {
        self.expect_phase(ServerPhase::CollectingReveals, "signatures_for")?;
        let i = self.params.require_index(partner)?;
        Ok(self
            .params
            .graph()
            .closed_neighbourhood(i)
            .into_iter()
            .filter_map(|j| self.signatures.get(&j).cloned())
            .collect())
    }

    /// The partners whose revealed shares were accepted, in cohort order.
    pub fn revealers(&self) -> Vec<String> {
        self.ids(self.revealers.iter().copied())
    }

    /// Records one survivor's revealed shares, checking each: its owner is a U2 partner in
    /// the revealer's closed neighbourhood and appears once, the kind is the self mask for a
    /// survivor and the mask key for a dropped partner, the point is the revealer's, and the
    /// value is well formed. The whole upload is refused if any is wrong.
    pub fn on_revealed(
        &mut self,
        from: &str,
        shares: Vec<RevealedShare>,
    ) -> Result<(), SecAggError> {
        self.expect_phase(ServerPhase::CollectingReveals, "on_revealed")?;
        let i = self.params.require_index(from)?;
        if !self.signatures.contains_key(&i) {
            return Err(SecAggError::UnexpectedSender(from.to_owned()));
        }
        if self.revealers.contains(&i) {
            return Err(SecAggError::DuplicateUpload(from.to_owned()));
        }
        let point = RoundParams::point(i);
        let mut owners = HashSet::with_capacity(shares.len());
        let mut parsed = Vec::with_capacity(shares.len());
        for s in shares {
            let owner = self.params.require_index(&s.owner)?;
            if !self.sharers.contains(&owner)
                || !self.params.graph().is_close(i, owner)
                || !owners.insert(owner)
            {
                return Err(SecAggError::UnexpectedShare {
                    from: from.to_owned(),
                    owner: s.owner,
                });
            }
            let expected = if self.survivors.contains(&owner) {
                ShareKind::SelfMask
            } else {
                ShareKind::MaskKey
            };
            if s.kind != expected {
                return Err(SecAggError::WrongShareKind {
                    from: from.to_owned(),
                    owner: s.owner,
                    kind: s.kind,
                });
            }
            if s.x != point {
                return Err(SecAggError::WrongSharePoint {
                    from: from.to_owned(),
                    expected: point,
                    got: s.x,
                });
            }
            let share =
                Share::from_value_bytes(s.x, &s.value).map_err(|source| SecAggError::BadShare {
                    owner: s.owner.clone(),
                    source,
                })?;
            parsed.push(((owner, s.kind), share));
        }
        for (key, share) in parsed {
            self.shares.entry(key).or_default().push(share);
        }
        self.revealers.insert(i);
        Ok(())
    }

    /// Removes every mask from `sum`, the wrapping sum of the masked inputs of exactly the
    /// survivors U3, leaving the plain sum of their inputs. If any secret cannot be
    /// reconstructed (fewer than t shares, inconsistent shares, a mask key that does not match
    /// its public key) it fails and leaves `sum` untouched.
    pub fn unmask(&self, sum: &mut [u32]) -> Result<(), SecAggError> {
        self.expect_phase(ServerPhase::CollectingReveals, "unmask")?;
        if sum.len() != self.params.vector_len() {
            return Err(SecAggError::VectorLength {
                expected: self.params.vector_len(),
                got: sum.len(),
            });
        }
        let round = *self.params.round();
        let t = self.params.threshold();
        let recover = |owner: usize, kind: ShareKind| -> Result<[u8; 32], SecAggError> {
            let shares = self
                .shares
                .get(&(owner, kind))
                .map_or(&[][..], Vec::as_slice);
            let id = self.params.id(owner).to_owned();
            if shares.len() < t {
                return Err(SecAggError::NotEnoughShares {
                    owner: id,
                    kind,
                    got: shares.len(),
                    need: t,
                });
            }
            reconstruct(shares, t).map_err(|source| SecAggError::BadShare { owner: id, source })
        };

        // Every secret first: nothing is removed unless everything can be.
        let mut self_seeds = Vec::with_capacity(self.survivors.len());
        // Survivor k added +PRG(s) if the dropped owner comes after it, else −PRG(s); those
        // come off the sum now with the opposite sign.
        let (mut pairs_added, mut pairs_subtracted) = (Vec::new(), Vec::new());
        for &owner in &self.sharers {
            if self.survivors.contains(&owner) {
                self_seeds.push(recover(owner, ShareKind::SelfMask)?);
                continue;
            }
            let key = StaticSecret::from(recover(owner, ShareKind::MaskKey)?);
            let id = self.params.id(owner);
            let advertised = self.keys.get(&owner).map(|k| k.keys.mask_public);
            if advertised != Some(public_of(&key)) {
                return Err(SecAggError::KeyMismatch(id.to_owned()));
            }
            for &k in self.params.graph().neighbours(owner) {
                let k = k as usize;
                let Some(their) = self.keys.get(&k).filter(|_| self.survivors.contains(&k)) else {
                    continue;
                };
                let seed = pairwise_secret(
                    Purpose::MaskSeed,
                    &round,
                    &key,
                    &their.keys.mask_public,
                    Party { index: owner, id },
                    Party {
                        index: k,
                        id: self.params.id(k),
                    },
                )?;
                if owner > k {
                    pairs_added.push(seed);
                } else {
                    pairs_subtracted.push(seed);
                }
            }
        }
        self_seeds.extend(pairs_added);
        apply_masks(sum, &pairs_subtracted, &self_seeds);
        Ok(())
    }
}
