//! What the parties of a round send each other, as plain structs.
//!
//! The gRPC layers convert protobuf messages to and from these. Fixed-size fields are arrays,
//! so a value of these types always has the right sizes; the `from_slices`/`new` constructors
//! are the checked way in from variable-length wire bytes and return
//! [`SecAggError::WrongLength`] naming the field.

use super::error::SecAggError;
use super::keys::{ENVELOPE_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use super::shamir::SHARE_LEN;

/// A client's two public keys for one round, signed with its long-term identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAdvertisement {
    /// X25519 public key for encrypting shares to this client.
    pub cipher_public: [u8; PUBLIC_KEY_LEN],
    /// X25519 public key for agreeing pairwise mask seeds.
    pub mask_public: [u8; PUBLIC_KEY_LEN],
    /// Ed25519 signature over [`super::keys::key_signature_message`].
    pub signature: [u8; SIGNATURE_LEN],
}

fn array<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], SecAggError> {
    bytes.try_into().map_err(|_| SecAggError::WrongLength {
        field,
        expected: N,
        got: bytes.len(),
    })
}

impl KeyAdvertisement {
    /// Builds an advertisement from wire bytes, checking each field's length.
    pub fn from_slices(
        cipher_public: &[u8],
        mask_public: &[u8],
        signature: &[u8],
    ) -> Result<Self, SecAggError> {
        Ok(Self {
            cipher_public: array("cipher_public", cipher_public)?,
            mask_public: array("mask_public", mask_public)?,
            signature: array("signature", signature)?,
        })
    }
}

/// A key advertisement and the partner it claims to come from, as the coordinator relays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedKeys {
    /// The advertising partner.
    pub partner_id: String,
    /// Its keys and signature.
    pub keys: KeyAdvertisement,
}

/// A survivor's signature over the survivor set it was shown ([`super::keys::sign_survivors`]),
/// as the coordinator relays it in the consistency check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurvivorSignature {
    /// The signing partner.
    pub partner_id: String,
    /// Ed25519 signature over the set's [`super::keys::survivors_digest`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl SurvivorSignature {
    /// Builds a signature from wire bytes, checking its length.
    pub fn new(partner_id: String, signature: &[u8]) -> Result<Self, SecAggError> {
        Ok(Self {
            partner_id,
            signature: array("signature", signature)?,
        })
    }
}

/// One client's encrypted shares for one neighbour: a random 12-byte nonce followed by the
/// ChaCha20-Poly1305 ciphertext and tag ([`ENVELOPE_LEN`] bytes in all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender.
    pub from: String,
    /// Recipient.
    pub to: String,
    /// Nonce, ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// Builds an envelope from wire fields, checking the ciphertext length.
    pub fn new(from: String, to: String, ciphertext: Vec<u8>) -> Result<Self, SecAggError> {
        check_len("ciphertext", ENVELOPE_LEN, ciphertext.len())?;
        Ok(Self {
            from,
            to,
            ciphertext,
        })
    }
}

fn check_len(field: &'static str, expected: usize, got: usize) -> Result<(), SecAggError> {
    if got == expected {
        Ok(())
    } else {
        Err(SecAggError::WrongLength {
            field,
            expected,
            got,
        })
    }
}

/// Which of a partner's two secrets a share belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShareKind {
    /// The self-mask seed b, revealed for partners whose masked input is in the sum.
    SelfMask,
    /// The mask secret key, revealed for partners that dropped after sharing.
    MaskKey,
}

/// One share revealed by a survivor in the unmask phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealedShare {
    /// The partner whose secret this is a share of.
    pub owner: String,
    /// Which secret.
    pub kind: ShareKind,
    /// Evaluation point: the revealer's cohort index + 1.
    pub x: u32,
    /// The share value ([`SHARE_LEN`] bytes).
    pub value: Vec<u8>,
}

impl RevealedShare {
    /// Builds a revealed share from wire fields, checking the value length.
    pub fn new(
        owner: String,
        kind: ShareKind,
        x: u32,
        value: Vec<u8>,
    ) -> Result<Self, SecAggError> {
        check_len("share value", SHARE_LEN, value.len())?;
        Ok(Self {
            owner,
            kind,
            x,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked_at_the_boundary() {
        assert!(KeyAdvertisement::from_slices(&[0; 32], &[1; 32], &[2; 64]).is_ok());
        assert_eq!(
            KeyAdvertisement::from_slices(&[0; 32], &[1; 31], &[2; 64]),
            Err(SecAggError::WrongLength {
                field: "mask_public",
                expected: 32,
                got: 31
            })
        );
        assert_eq!(
            KeyAdvertisement::from_slices(&[0; 32], &[1; 32], &[2; 65]),
            Err(SecAggError::WrongLength {
                field: "signature",
                expected: 64,
                got: 65
            })
        );
        assert!(Envelope::new("a".into(), "b".into(), vec![0; ENVELOPE_LEN]).is_ok());
        assert!(matches!(
            Envelope::new("a".into(), "b".into(), vec![0; 3]),
            Err(SecAggError::WrongLength {
                field: "ciphertext",
                ..
            })
        ));
        assert!(RevealedShare::new("a".into(), ShareKind::MaskKey, 1, vec![0; SHARE_LEN]).is_ok());
        assert!(RevealedShare::new("a".into(), ShareKind::MaskKey, 1, vec![]).is_err());
    }
}
