//! Every conversion between the wire types and `fedmark-core`'s protocol types, written once:
//! the coordinator, the partner and the fuzz targets all go through these, so what the fuzzers
//! exercise is what production runs. Conversions from the wire are checked (fixed-size fields
//! by length, enums for their unspecified value) and fail with the reason; conversions to the
//! wire cannot fail.

use fedmark_core::aggregate::RoundKind;
use fedmark_core::secagg::{
    Envelope, KeyAdvertisement, RevealedShare, RoundId, SecAggError, ShareKind, SignedKeys,
    SurvivorSignature,
};
use fedmark_core::shape::Announced;

use crate::v1;

/// A wire value that has no meaning for the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A round kind of 0 (unspecified) or unknown.
    #[error("round of unspecified kind")]
    UnspecifiedRoundKind,
}

impl From<RoundKind> for v1::RoundKind {
    fn from(kind: RoundKind) -> Self {
        match kind {
            RoundKind::Statistics => v1::RoundKind::Statistics,
            RoundKind::Training => v1::RoundKind::Training,
            RoundKind::Evaluation => v1::RoundKind::Evaluation,
        }
    }
}

impl TryFrom<v1::RoundKind> for RoundKind {
    type Error = WireError;

    fn try_from(kind: v1::RoundKind) -> Result<Self, WireError> {
        match kind {
            v1::RoundKind::Statistics => Ok(RoundKind::Statistics),
            v1::RoundKind::Training => Ok(RoundKind::Training),
            v1::RoundKind::Evaluation => Ok(RoundKind::Evaluation),
            v1::RoundKind::Unspecified => Err(WireError::UnspecifiedRoundKind),
        }
    }
}

impl v1::RoundStart {
    /// The round's kind ([`WireError::UnspecifiedRoundKind`] for 0 or an unknown value).
    pub fn round_kind(&self) -> Result<RoundKind, WireError> {
        self.kind().try_into()
    }

    /// What the start announces about the round's shape, for
    /// [`fedmark_core::shape::RoundShape::check`].
    pub fn announced(&self) -> Announced<'_> {
        Announced {
            secure: self.secure,
            vector_len: self.vector_len,
            model_len: self.model_len,
            threshold: u64::from(self.threshold),
            graph_degree: u64::from(self.graph_degree),
            graph_seed: &self.graph_seed,
        }
    }
}

impl From<&v1::RoundRef> for RoundId {
    fn from(r: &v1::RoundRef) -> Self {
        RoundId::new(&r.job_id, r.round, r.attempt)
    }
}

impl v1::KeyAdvertisement {
    /// A partner's advertisement of its round keys for round `round`.
    pub fn new(round: &v1::RoundRef, keys: &KeyAdvertisement) -> Self {
        Self {
            round: Some(round.clone()),
            cipher_public: keys.cipher_public.to_vec(),
            mask_public: keys.mask_public.to_vec(),
            signature: keys.signature.to_vec(),
        }
    }

    /// The advertised keys, each field checked for its length.
    pub fn keys(&self) -> Result<KeyAdvertisement, SecAggError> {
        KeyAdvertisement::from_slices(&self.cipher_public, &self.mask_public, &self.signature)
    }
}

impl From<SignedKeys> for v1::SignedKeys {
    fn from(k: SignedKeys) -> Self {
        Self {
            partner_id: k.partner_id,
            cipher_public: k.keys.cipher_public.to_vec(),
            mask_public: k.keys.mask_public.to_vec(),
            signature: k.keys.signature.to_vec(),
        }
    }
}

impl TryFrom<v1::SignedKeys> for SignedKeys {
    type Error = SecAggError;

    fn try_from(k: v1::SignedKeys) -> Result<Self, SecAggError> {
        Ok(SignedKeys {
            keys: KeyAdvertisement::from_slices(&k.cipher_public, &k.mask_public, &k.signature)?,
            partner_id: k.partner_id,
        })
    }
}

impl From<Envelope> for v1::Envelope {
    fn from(e: Envelope) -> Self {
        Self {
            from: e.from,
            to: e.to,
            ciphertext: e.ciphertext,
        }
    }
}

impl TryFrom<v1::Envelope> for Envelope {
    type Error = SecAggError;

    fn try_from(e: v1::Envelope) -> Result<Self, SecAggError> {
        Envelope::new(e.from, e.to, e.ciphertext)
    }
}

impl From<ShareKind> for v1::ShareKind {
    fn from(kind: ShareKind) -> Self {
        match kind {
            ShareKind::SelfMask => v1::ShareKind::SelfMask,
            ShareKind::MaskKey => v1::ShareKind::MaskKey,
        }
    }
}

impl From<RevealedShare> for v1::RevealedShare {
    fn from(s: RevealedShare) -> Self {
        Self {
            owner: s.owner,
            kind: v1::ShareKind::from(s.kind) as i32,
            x: s.x,
            value: s.value,
        }
    }
}

impl TryFrom<v1::RevealedShare> for RevealedShare {
    type Error = SecAggError;

    fn try_from(s: v1::RevealedShare) -> Result<Self, SecAggError> {
        let kind = match s.kind() {
            v1::ShareKind::SelfMask => ShareKind::SelfMask,
            v1::ShareKind::MaskKey => ShareKind::MaskKey,
            v1::ShareKind::Unspecified => {
                return Err(SecAggError::UnspecifiedShareKind { owner: s.owner });
            }
        };
        RevealedShare::new(s.owner, kind, s.x, s.value)
    }
}

impl From<SurvivorSignature> for v1::PartnerSignature {
    fn from(s: SurvivorSignature) -> Self {
        Self {
            partner_id: s.partner_id,
            signature: s.signature.to_vec(),
        }
    }
}

impl TryFrom<v1::PartnerSignature> for SurvivorSignature {
    type Error = SecAggError;

    fn try_from(s: v1::PartnerSignature) -> Result<Self, SecAggError> {
        SurvivorSignature::new(s.partner_id, &s.signature)
    }
}

/// Converts every item of a wire list, failing on the first that does not convert.
pub fn all<W, T: TryFrom<W>>(items: Vec<W>) -> Result<Vec<T>, T::Error> {
    items.into_iter().map(T::try_from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_kinds_round_trip_and_unspecified_is_refused() {
        for kind in [
            RoundKind::Statistics,
            RoundKind::Training,
            RoundKind::Evaluation,
        ] {
            assert_eq!(RoundKind::try_from(v1::RoundKind::from(kind)), Ok(kind));
        }
        let mut start = v1::RoundStart::default();
        assert_eq!(start.round_kind(), Err(WireError::UnspecifiedRoundKind));
        start.kind = 99; // unknown values decode as unspecified
        assert_eq!(start.round_kind(), Err(WireError::UnspecifiedRoundKind));
        start.kind = v1::RoundKind::Training as i32;
        assert_eq!(start.round_kind(), Ok(RoundKind::Training));
    }

    #[test]
    fn secagg_messages_round_trip_and_wrong_lengths_are_named() {
        let keys = KeyAdvertisement::from_slices(&[1; 32], &[2; 32], &[3; 64]).unwrap();
        let signed = SignedKeys {
            partner_id: "p".into(),
            keys: keys.clone(),
        };
        let wire = v1::SignedKeys::from(signed.clone());
        assert_eq!(SignedKeys::try_from(wire.clone()), Ok(signed));
        let mut short = wire;
        short.mask_public.pop();
        assert!(matches!(
            SignedKeys::try_from(short),
            Err(SecAggError::WrongLength {
                field: "mask_public",
                ..
            })
        ));
        let rref = v1::RoundRef {
            job_id: "j".into(),
            round: 3,
            attempt: 1,
        };
        let advert = v1::KeyAdvertisement::new(&rref, &keys);
        assert_eq!(advert.keys(), Ok(keys));
        assert_eq!(RoundId::from(&rref), RoundId::new("j", 3, 1));

        let len = fedmark_core::secagg::shamir::SHARE_LEN;
        let share = RevealedShare::new("o".into(), ShareKind::MaskKey, 4, vec![7; len]).unwrap();
        let wire = v1::RevealedShare::from(share.clone());
        assert_eq!(RevealedShare::try_from(wire.clone()), Ok(share));
        let mut unspecified = wire;
        unspecified.kind = 0;
        assert_eq!(
            RevealedShare::try_from(unspecified),
            Err(SecAggError::UnspecifiedShareKind { owner: "o".into() })
        );

        let sig = SurvivorSignature::new("s".into(), &[9; 64]).unwrap();
        let wire = v1::PartnerSignature::from(sig.clone());
        assert_eq!(SurvivorSignature::try_from(wire), Ok(sig));
        let bad = v1::Envelope {
            from: "a".into(),
            to: "b".into(),
            ciphertext: vec![0; 3],
        };
        let converted: Result<Vec<Envelope>, _> = all(vec![bad]);
        assert!(matches!(
            converted,
            Err(SecAggError::WrongLength {
                field: "ciphertext",
                ..
            })
        ));
    }
}
