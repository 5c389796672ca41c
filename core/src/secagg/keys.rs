//! Key material: long-term identities and the roster that names them, the round id, the
//! per-round X25519 key pairs, the key derivations from their agreements, the signatures that
//! bind round keys to identities, and the AEAD that carries shares between partners.
//!
//! - **Identity.** Each partner holds a long-term Ed25519 signing key; the [`Roster`] every
//!   party keeps maps partner ids to the verifying halves. Round keys are only trusted when
//!   signed by the roster key of the partner that claims them, so a coordinator cannot insert
//!   keys of its own.
//! - **Round keys.** Per round, each client makes two fresh X25519 key pairs: one to encrypt
//!   shares (`cipher`), one to agree mask seeds (`mask`). Keeping them apart means revealing a
//!   dropped partner's mask key (to remove its pairwise masks) never exposes the envelopes
//!   that carried its shares.
//! - **Derivation.** HKDF-SHA256 turns an X25519 shared secret into a 32-byte secret, with the
//!   round id as salt and, as info, a purpose label plus the two partners' cohort indices and
//!   ids in index order, so seeds differ per round, per pair and per purpose, and both
//!   partners derive the same one.
//! - **Envelopes.** ChaCha20-Poly1305 with a random 12-byte nonce prepended; the associated
//!   data binds the round id, sender and recipient, so an envelope cannot be replayed into
//!   another round or passed off as coming from or going to someone else.
//!
//! All byte strings hashed, signed or bound here are length-prefixed (u64 little endian) after
//! a versioned domain label, so no two distinct inputs encode alike.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use super::error::SecAggError;
use super::message::{SignedKeys, SurvivorSignature};
use super::shamir::SHARE_LEN;

/// Bytes of an X25519 or Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of an AEAD nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Plaintext of an envelope: the share of the self-mask seed, then of the mask secret key.
pub const ENVELOPE_PLAINTEXT_LEN: usize = 2 * SHARE_LEN;
/// Bytes of an envelope's ciphertext field (nonce, ciphertext, tag).
pub const ENVELOPE_LEN: usize = NONCE_LEN + ENVELOPE_PLAINTEXT_LEN + TAG_LEN;

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Identifies one attempt at one round of one job: SHA-256 over the job id, the round number
/// and the attempt number. Everything a round signs, derives or encrypts is bound to it, so
/// nothing carries over between rounds or retries.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoundId([u8; 32]);

impl RoundId {
    /// The id of attempt `attempt` of round `round` of job `job_id`.
    pub fn new(job_id: &str, round: u64, attempt: u32) -> Self {
        let mut msg = Vec::with_capacity(64 + job_id.len());
        put(&mut msg, b"fedmark/secagg/round-id/v1");
        put(&mut msg, job_id.as_bytes());
        msg.extend_from_slice(&round.to_le_bytes());
        msg.extend_from_slice(&attempt.to_le_bytes());
        Self(Sha256::digest(&msg).into())
    }

    /// This id bound to round parameters the protocol does not otherwise carry (`label`,
    /// `value`): everything signed, sealed or seeded with the bound id — key advertisements
    /// above all — is valid only for members that were shown the same parameters.
    pub fn bound_to(&self, label: &str, value: &[u8]) -> Self {
        let mut msg = Vec::with_capacity(96 + label.len() + value.len());
        put(&mut msg, b"fedmark/secagg/round-id/bound/v1");
        msg.extend_from_slice(&self.0);
        put(&mut msg, label.as_bytes());
        put(&mut msg, value);
        Self(Sha256::digest(&msg).into())
    }

    /// A round id received as bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoundId({self})")
    }
}

/// Why a hex-encoded key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexKeyError {
    /// Not hexadecimal.
    #[error("not hexadecimal at character {position}")]
    BadHex {
        /// Offset of the first bad character (or the odd length).
        position: usize,
    },
    /// Hexadecimal of the wrong length.
    #[error("key must be {expected} hex characters, got {got}")]
    WrongLength {
        /// Expected characters.
        expected: usize,
        /// Characters given.
        got: usize,
    },
    /// 32 bytes that are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// A small-order public key, for which signatures prove nothing.
    #[error("weak (small-order) Ed25519 public key")]
    WeakKey,
}

fn from_hex32(s: &str) -> Result<[u8; 32], HexKeyError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(HexKeyError::WrongLength {
            expected: 64,
            got: s.chars().count(),
        });
    }
    let mut out = [0u8; 32];
    let digits = s.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let nibble = |k: usize| {
            char::from(digits[k])
                .to_digit(16)
                .ok_or(HexKeyError::BadHex { position: k })
        };
        *byte = u8::try_from(nibble(2 * i)? * 16 + nibble(2 * i + 1)?)
            .map_err(|_| HexKeyError::BadHex { position: 2 * i })?;
    }
    Ok(out)
}

/// Partner ids are short and plain so they are safe in logs, file names and reports; every
/// side (roster, client config, coordinator sessions) applies this one rule.
pub fn valid_partner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Makes a new long-term identity key.
pub fn generate_identity<R: CryptoRng + ?Sized>(rng: &mut R) -> SigningKey {
    SigningKey::generate(rng)
}

/// The public half of an identity, as the 64 hex characters a roster entry holds.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    to_hex(key.as_bytes())
}

/// Reads a roster's hex public key, refusing invalid and weak keys.
pub fn parse_public_key(hex: &str) -> Result<VerifyingKey, HexKeyError> {
    let bytes = from_hex32(hex)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| HexKeyError::InvalidKey)?;
    if key.is_weak() {
        return Err(HexKeyError::WeakKey);
    }
    Ok(key)
}

/// The secret half of an identity as 64 hex characters, for a key file readable only by the
/// partner.
pub fn signing_key_hex(key: &SigningKey) -> String {
    to_hex(key.as_bytes())
}

/// Reads an identity key written by [`signing_key_hex`].
pub fn parse_signing_key(hex: &str) -> Result<SigningKey, HexKeyError> {
    Ok(SigningKey::from_bytes(&from_hex32(hex)?))
}

/// Why a roster could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// Not valid TOML, or not the roster's shape.
    #[error("roster is not valid: {0}")]
    Toml(String),
    /// An entry with an empty id.
    #[error("roster entry {0} has an empty id")]
    EmptyId(usize),
    /// Two entries with one id.
    #[error("partner {0:?} appears twice in the roster")]
    DuplicateId(String),
    /// An id that is not 1-64 letters, digits, `_`, `-`, `.`.
    #[error("partner id {0:?} must be 1-64 characters of letters, digits, `_`, `-`, `.`")]
    BadId(String),
    /// An entry whose public key cannot be read.
    #[error("public_key of partner {partner:?}: {source}")]
    Key {
        /// The entry's id.
        partner: String,
        /// What is wrong with the key.
        source: HexKeyError,
    },
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    #[serde(default)]
    partner: Vec<RosterEntry>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RosterEntry {
    id: String,
    public_key: String,
}

/// The partners a party knows: id → long-term Ed25519 verifying key.
///
/// Read from TOML:
///
/// ```toml
/// [[partner]]
/// id = "bank"
/// public_key = "<64 hex characters>"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    partners: BTreeMap<String, VerifyingKey>,
}

impl Roster {
    /// An empty roster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and validates a roster file's text.
    pub fn from_toml(text: &str) -> Result<Self, RosterError> {
        let file: RosterFile =
            toml::from_str(text).map_err(|e| RosterError::Toml(e.to_string()))?;
        let mut roster = Self::new();
        for (i, entry) in file.partner.into_iter().enumerate() {
            if entry.id.is_empty() {
                return Err(RosterError::EmptyId(i));
            }
            let key = parse_public_key(&entry.public_key).map_err(|source| RosterError::Key {
                partner: entry.id.clone(),
                source,
            })?;
            roster.insert(entry.id, key)?;
        }
        Ok(roster)
    }

    /// The roster as TOML text that [`Roster::from_toml`] reads back.
    pub fn to_toml(&self) -> Result<String, RosterError> {
        let file = RosterFile {
            partner: self
                .partners
                .iter()
                .map(|(id, key)| RosterEntry {
                    id: id.clone(),
                    public_key: public_key_hex(key),
                })
                .collect(),
        };
        toml::to_string(&file).map_err(|e| RosterError::Toml(e.to_string()))
    }

    /// Adds a partner, refusing a second entry for one id.
    pub fn insert(&mut self, id: String, key: VerifyingKey) -> Result<(), RosterError> {
        if id.is_empty() {
            return Err(RosterError::EmptyId(self.partners.len()));
        }
        if !valid_partner_id(&id) {
            return Err(RosterError::BadId(id));
        }
        if self.partners.contains_key(&id) {
            return Err(RosterError::DuplicateId(id));
        }
        self.partners.insert(id, key);
        Ok(())
    }

    /// The verifying key of a partner.
    pub fn get(&self, id: &str) -> Option<&VerifyingKey> {
        self.partners.get(id)
    }

    /// Number of partners.
    pub fn len(&self) -> usize {
        self.partners.len()
    }

    /// True with no partners.
    pub fn is_empty(&self) -> bool {
        self.partners.is_empty()
    }

    /// Partners in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &VerifyingKey)> {
        self.partners.iter().map(|(id, k)| (id.as_str(), k))
    }
}

/// The bytes a partner signs to vouch for its round keys: a domain label, the round id, its
/// own id and both public keys.
pub fn key_signature_message(
    round: &RoundId,
    partner_id: &str,
    cipher_public: &[u8; PUBLIC_KEY_LEN],
    mask_public: &[u8; PUBLIC_KEY_LEN],
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(200);
    put(&mut msg, b"fedmark/secagg/round-keys/v1");
    put(&mut msg, round.as_bytes());
    put(&mut msg, partner_id.as_bytes());
    put(&mut msg, cipher_public);
    put(&mut msg, mask_public);
    msg
}

/// Signs round keys with an identity key.
pub fn sign_keys(
    identity: &SigningKey,
    round: &RoundId,
    partner_id: &str,
    cipher_public: &[u8; PUBLIC_KEY_LEN],
    mask_public: &[u8; PUBLIC_KEY_LEN],
) -> [u8; SIGNATURE_LEN] {
    identity
        .sign(&key_signature_message(
            round,
            partner_id,
            cipher_public,
            mask_public,
        ))
        .to_bytes()
}

/// Checks that `signed` carries a valid signature, for this round, by the roster key of the
/// partner it names.
pub fn verify_keys(
    roster: &Roster,
    round: &RoundId,
    signed: &SignedKeys,
) -> Result<(), SecAggError> {
    let key = roster
        .get(&signed.partner_id)
        .ok_or_else(|| SecAggError::UnknownPartner(signed.partner_id.clone()))?;
    let msg = key_signature_message(
        round,
        &signed.partner_id,
        &signed.keys.cipher_public,
        &signed.keys.mask_public,
    );
    key.verify_strict(&msg, &Signature::from_bytes(&signed.keys.signature))
        .map_err(|_| SecAggError::BadSignature(signed.partner_id.clone()))
}

/// The digest of a survivor set that survivors sign in the consistency check: SHA-256 over a
/// domain label, the round id (which binds the job, round, attempt, cohort, graph and
/// threshold, see [`super::params::RoundParams::round`]) and the survivor set U3 in cohort
/// order. A partner signs one set per round and reveals shares only for a set that at least t
/// of its own neighbourhood signed. Computed once per set, so each of the many verifications
/// a partner makes hashes 32 bytes, not the whole list.
pub fn survivors_digest(round: &RoundId, survivors: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut put_h = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put_h(b"fedmark/secagg/survivors/v1");
    put_h(round.as_bytes());
    h.update((survivors.len() as u64).to_le_bytes());
    for id in survivors {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    h.finalize().into()
}

/// The bytes a survivor signs: a domain label and the set's [`survivors_digest`].
fn survivors_signature_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(80);
    put(&mut msg, b"fedmark/secagg/survivors-signature/v1");
    put(&mut msg, digest);
    msg
}

/// Signs a survivor set (its [`survivors_digest`]) with an identity key.
pub fn sign_survivors(identity: &SigningKey, digest: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
    identity
        .sign(&survivors_signature_message(digest))
        .to_bytes()
}

/// Checks a partner's signature over a survivor set (its [`survivors_digest`]) against its
/// roster key.
pub fn verify_survivors(
    roster: &Roster,
    digest: &[u8; 32],
    signed: &SurvivorSignature,
) -> Result<(), SecAggError> {
    let key = roster
        .get(&signed.partner_id)
        .ok_or_else(|| SecAggError::UnknownPartner(signed.partner_id.clone()))?;
    key.verify_strict(
        &survivors_signature_message(digest),
        &Signature::from_bytes(&signed.signature),
    )
    .map_err(|_| SecAggError::BadSurvivorSignature(signed.partner_id.clone()))
}

/// A client's two X25519 key pairs for one round.
pub(crate) struct RoundKeyPairs {
    pub(crate) cipher: StaticSecret,
    pub(crate) mask: StaticSecret,
}

impl RoundKeyPairs {
    pub(crate) fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self {
            cipher: StaticSecret::random_from_rng(rng),
            mask: StaticSecret::random_from_rng(rng),
        }
    }
}

/// The public key of an X25519 secret.
pub(crate) fn public_of(secret: &StaticSecret) -> [u8; PUBLIC_KEY_LEN] {
    PublicKey::from(secret).to_bytes()
}

/// What a pairwise secret is for; each purpose has its own HKDF label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    /// The seed s_ij of a pairwise mask.
    MaskSeed,
    /// The AEAD key of the envelopes between a pair.
    ShareKey,
}

/// One end of a pairwise agreement: cohort index and id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Party<'a> {
    pub(crate) index: usize,
    pub(crate) id: &'a str,
}

/// Agrees a pairwise secret for `purpose` between `me` (holding `secret`) and `them` (with
/// public key `their_public`); both ends derive the same 32 bytes.
pub(crate) fn pairwise_secret(
    purpose: Purpose,
    round: &RoundId,
    secret: &StaticSecret,
    their_public: &[u8; PUBLIC_KEY_LEN],
    me: Party<'_>,
    them: Party<'_>,
) -> Result<[u8; 32], SecAggError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*their_public));
    if !shared.was_contributory() {
        return Err(SecAggError::DegenerateKey(them.id.to_owned()));
    }
    let (lo, hi) = if me.index <= them.index {
        (me, them)
    } else {
        (them, me)
    };
    let mut info = Vec::with_capacity(96);
    put(
        &mut info,
        match purpose {
            Purpose::MaskSeed => b"fedmark/secagg/mask-seed/v1",
            Purpose::ShareKey => b"fedmark/secagg/share-key/v1",
        },
    );
    for p in [lo, hi] {
        info.extend_from_slice(&(p.index as u64).to_le_bytes());
        put(&mut info, p.id.as_bytes());
    }
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(Some(round.as_bytes()), shared.as_bytes())
        .expand(&info, &mut out)
        .map_err(|_| SecAggError::Kdf)?;
    Ok(out)
}

fn envelope_aad(round: &RoundId, from: &str, to: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96);
    put(&mut aad, b"fedmark/secagg/envelope/v1");
    put(&mut aad, round.as_bytes());
    put(&mut aad, from.as_bytes());
    put(&mut aad, to.as_bytes());
    aad
}

/// Encrypts an envelope's plaintext from `from` to `to` under `key`: nonce ‖ ciphertext ‖ tag.
pub(crate) fn seal<R: CryptoRng + ?Sized>(
    key: &[u8; 32],
    round: &RoundId,
    from: &str,
    to: &str,
    plaintext: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, SecAggError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = envelope_aad(round, from, to);
    let ct = ChaCha20Poly1305::new(&(*key).into())
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| SecAggError::Encrypt(to.to_owned()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts and authenticates an envelope sealed by [`seal`] with the same binding.
pub(crate) fn open(
    key: &[u8; 32],
    round: &RoundId,
    from: &str,
    to: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, SecAggError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(SecAggError::Decrypt(from.to_owned()));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    let aad = envelope_aad(round, from, to);
    ChaCha20Poly1305::new(&(*key).into())
        .decrypt(&n.into(), Payload { msg: ct, aad: &aad })
        .map_err(|_| SecAggError::Decrypt(from.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::message::KeyAdvertisement;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(42)
    }

    #[test]
    fn round_id_is_length_prefixed() {
        let a = RoundId::new("job", 1, 0);
        assert_eq!(a, RoundId::new("job", 1, 0));
        assert_ne!(a, RoundId::new("job", 1, 1));
        assert_ne!(a, RoundId::new("job", 2, 0));
        assert_ne!(a, RoundId::new("jo", 1, 0));
        assert_ne!(RoundId::new("a", 0x62, 0), RoundId::new("ab", 0, 0));
        assert_eq!(a.to_string().len(), 64);
        assert_eq!(RoundId::from_bytes(*a.as_bytes()), a);
    }

    #[test]
    fn identity_hex_round_trips() {
        let key = generate_identity(&mut rng());
        let hex = public_key_hex(&key.verifying_key());
        assert_eq!(hex.len(), 64);
        assert_eq!(parse_public_key(&hex), Ok(key.verifying_key()));
        assert_eq!(
            parse_public_key(&hex.to_uppercase()),
            Ok(key.verifying_key())
        );
        let back = parse_signing_key(&signing_key_hex(&key)).unwrap();
        assert_eq!(back.verifying_key(), key.verifying_key());
    }

    #[test]
    fn hex_errors_are_typed() {
        assert_eq!(
            parse_public_key("abcd"),
            Err(HexKeyError::WrongLength {
                expected: 64,
                got: 4
            })
        );
        let mut bad = "0".repeat(64);
        bad.replace_range(10..11, "g");
        assert_eq!(
            parse_public_key(&bad),
            Err(HexKeyError::BadHex { position: 10 })
        );
        // The identity point is small-order.
        let mut identity = "00".repeat(32);
        identity.replace_range(0..2, "01");
        assert_eq!(parse_public_key(&identity), Err(HexKeyError::WeakKey));
        let non_ascii = "é".repeat(32);
        assert!(parse_public_key(&non_ascii).is_err());
    }

    fn roster_text(entries: &[(&str, String)]) -> String {
        entries
            .iter()
            .map(|(id, k)| format!("[[partner]]\nid = \"{id}\"\npublic_key = \"{k}\"\n"))
            .collect()
    }

    #[test]
    fn roster_parses_and_round_trips() {
        let mut r = rng();
        let a = generate_identity(&mut r).verifying_key();
        let b = generate_identity(&mut r).verifying_key();
        let text = roster_text(&[("bank", public_key_hex(&a)), ("shop", public_key_hex(&b))]);
        let roster = Roster::from_toml(&text).unwrap();
        assert_eq!(roster.len(), 2);
        assert_eq!(roster.get("bank"), Some(&a));
        assert_eq!(roster.get("nobody"), None);
        assert_eq!(
            Roster::from_toml(&roster.to_toml().unwrap()),
            Ok(roster.clone())
        );
        // An id no client or coordinator would accept is refused by the roster too.
        let mut odd = Roster::new();
        assert_eq!(
            odd.insert("quote\"and\u{7}bell".into(), a),
            Err(RosterError::BadId("quote\"and\u{7}bell".into()))
        );
        assert!(Roster::from_toml("").unwrap().is_empty());
    }

    #[test]
    fn roster_errors_name_the_partner() {
        let key = public_key_hex(&generate_identity(&mut rng()).verifying_key());
        assert_eq!(
            Roster::from_toml(&roster_text(&[
                ("bank", key.clone()),
                ("bank", key.clone())
            ])),
            Err(RosterError::DuplicateId("bank".into()))
        );
        assert_eq!(
            Roster::from_toml(&roster_text(&[("bank", key[..62].to_owned())])),
            Err(RosterError::Key {
                partner: "bank".into(),
                source: HexKeyError::WrongLength {
                    expected: 64,
                    got: 62
                }
            })
        );
        assert!(matches!(
            Roster::from_toml(&roster_text(&[("shop", format!("zz{}", &key[2..]))])),
            Err(RosterError::Key { partner, source: HexKeyError::BadHex { position: 0 } }) if partner == "shop"
        ));
        assert_eq!(
            Roster::from_toml(&roster_text(&[("a b", key.clone())])),
            Err(RosterError::BadId("a b".into())),
            "ids with spaces are refused at the roster, as by clients and the coordinator"
        );
        assert_eq!(
            Roster::from_toml(&roster_text(&[("", key.clone())])),
            Err(RosterError::EmptyId(0))
        );
        assert!(matches!(
            Roster::from_toml("[[partner]]\nid = \"x\"\n"),
            Err(RosterError::Toml(_))
        ));
        assert!(matches!(
            Roster::from_toml(&format!("{}colour = \"red\"\n", roster_text(&[("a", key)]))),
            Err(RosterError::Toml(_))
        ));
    }

    #[test]
    fn signatures_bind_round_partner_and_keys() {
        let mut r = rng();
        let id = generate_identity(&mut r);
        let other = generate_identity(&mut r);
        let mut roster = Roster::new();
        roster.insert("bank".into(), id.verifying_key()).unwrap();
        roster.insert("shop".into(), other.verifying_key()).unwrap();
        let round = RoundId::new("job", 3, 0);
        let (c, m) = ([1u8; 32], [2u8; 32]);
        let signed = SignedKeys {
            partner_id: "bank".into(),
            keys: KeyAdvertisement {
                cipher_public: c,
                mask_public: m,
                signature: sign_keys(&id, &round, "bank", &c, &m),
            },
        };
        assert_eq!(verify_keys(&roster, &round, &signed), Ok(()));
        let other_round = RoundId::new("job", 4, 0);
        assert_eq!(
            verify_keys(&roster, &other_round, &signed),
            Err(SecAggError::BadSignature("bank".into()))
        );
        let mut swapped = signed.clone();
        swapped.keys.mask_public = c;
        swapped.keys.cipher_public = m;
        assert!(verify_keys(&roster, &round, &swapped).is_err());
        let mut renamed = signed.clone();
        renamed.partner_id = "shop".into();
        assert_eq!(
            verify_keys(&roster, &round, &renamed),
            Err(SecAggError::BadSignature("shop".into()))
        );
        renamed.partner_id = "ghost".into();
        assert_eq!(
            verify_keys(&roster, &round, &renamed),
            Err(SecAggError::UnknownPartner("ghost".into()))
        );
    }

    #[test]
    fn pairwise_secrets_agree_and_are_separated() {
        let mut r = rng();
        let a = RoundKeyPairs::generate(&mut r);
        let b = RoundKeyPairs::generate(&mut r);
        let round = RoundId::new("job", 1, 0);
        let pa = Party { index: 0, id: "a" };
        let pb = Party { index: 5, id: "b" };
        let ab = pairwise_secret(
            Purpose::MaskSeed,
            &round,
            &a.mask,
            &public_of(&b.mask),
            pa,
            pb,
        )
        .unwrap();
        let ba = pairwise_secret(
            Purpose::MaskSeed,
            &round,
            &b.mask,
            &public_of(&a.mask),
            pb,
            pa,
        )
        .unwrap();
        assert_eq!(ab, ba);
        let key = pairwise_secret(
            Purpose::ShareKey,
            &round,
            &a.mask,
            &public_of(&b.mask),
            pa,
            pb,
        )
        .unwrap();
        assert_ne!(ab, key, "purposes separate");
        let later = RoundId::new("job", 2, 0);
        let ab2 = pairwise_secret(
            Purpose::MaskSeed,
            &later,
            &a.mask,
            &public_of(&b.mask),
            pa,
            pb,
        )
        .unwrap();
        assert_ne!(ab, ab2, "rounds separate");
        let pc = Party { index: 5, id: "c" };
        let ac = pairwise_secret(
            Purpose::MaskSeed,
            &round,
            &a.mask,
            &public_of(&b.mask),
            pa,
            pc,
        )
        .unwrap();
        assert_ne!(ab, ac, "ids bound");
        assert_eq!(
            pairwise_secret(Purpose::MaskSeed, &round, &a.mask, &[0u8; 32], pa, pb),
            Err(SecAggError::DegenerateKey("b".into()))
        );
    }

    #[test]
    fn envelopes_are_bound_to_round_and_parties() {
        let mut r = rng();
        let key = [7u8; 32];
        let round = RoundId::new("job", 1, 0);
        let pt = [9u8; ENVELOPE_PLAINTEXT_LEN];
        let sealed = seal(&key, &round, "a", "b", &pt, &mut r).unwrap();
        assert_eq!(sealed.len(), ENVELOPE_LEN);
        assert_eq!(open(&key, &round, "a", "b", &sealed).unwrap(), pt);
        let err = Err(SecAggError::Decrypt("a".into()));
        assert_eq!(open(&key, &round, "a", "c", &sealed), err);
        assert_eq!(
            open(&key, &RoundId::new("job", 1, 1), "a", "b", &sealed),
            err
        );
        assert_eq!(open(&[8u8; 32], &round, "a", "b", &sealed), err);
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(open(&key, &round, "a", "b", &tampered), err);
        assert_eq!(open(&key, &round, "a", "b", &sealed[..10]), err);
        assert_ne!(
            seal(&key, &round, "a", "b", &pt, &mut r).unwrap(),
            sealed,
            "fresh nonce"
        );
    }
}
