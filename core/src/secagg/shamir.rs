//! t-of-n Shamir secret sharing of 32-byte secrets, used to share each partner's self-mask
//! seed and mask secret key with its neighbours so that any t of them can recover one of the
//! two (never both) after a dropout.
//!
//! # Field
//!
//! Arithmetic is in GF(p) with the Mersenne prime p = 2^61 − 1: a product of two elements fits
//! in a `u128` and reduces with two shifts and adds, no big integers needed, and the field has
//! room for far more than the 2^32 evaluation points a cohort could use. A 32-byte secret is
//! split into five limbs of at most 7 bytes (56 bits < 61), and each limb is shared with its
//! own independent random polynomial of degree t − 1. A share is therefore five field elements,
//! [`SHARE_LEN`] = 40 bytes on the wire.
//!
//! The share of the partner at cohort index `i` is the polynomials' value at x = i + 1 (x = 0
//! holds the secret). Reconstruction interpolates at 0 (Lagrange) from the first t shares and
//! checks that the result is a well-formed secret (every limb below 2^56), which catches most
//! corrupted or mixed-up shares.
//!
//! Secrecy: for any t − 1 shares and any candidate secret there is exactly one polynomial of
//! degree t − 1 through them, so t − 1 shares are uniformly distributed whatever the secret.

use std::collections::HashSet;
use std::fmt;

use rand::CryptoRng;

/// Bytes in a shared secret.
pub const SECRET_LEN: usize = 32;
/// Bytes in one encoded share value (five little-endian `u64` field elements).
pub const SHARE_LEN: usize = LIMBS * 8;

/// The field modulus, 2^61 − 1.
const P: u64 = (1 << 61) - 1;
/// Limbs per secret.
const LIMBS: usize = 5;
/// Bytes per limb (the last limb holds the remaining 4).
const LIMB_BYTES: usize = 7;

/// Why a secret could not be shared or reconstructed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// A threshold of zero shares would publish the secret.
    #[error("threshold must be at least 1")]
    ZeroThreshold,
    /// More shares are needed than there are share holders.
    #[error("threshold {threshold} exceeds the number of shares {shares}")]
    ThresholdAboveShares {
        /// Threshold asked for.
        threshold: usize,
        /// Shares that would be made.
        shares: usize,
    },
    /// x = 0 is where the secret lives; no share may be evaluated there.
    #[error("share evaluation point x = 0 is reserved for the secret")]
    ZeroX,
    /// Two shares at the same point.
    #[error("duplicate share evaluation point x = {0}")]
    DuplicateX(u32),
    /// Fewer shares than the threshold.
    #[error("{got} shares given, {need} needed")]
    TooFewShares {
        /// Shares given.
        got: usize,
        /// Threshold.
        need: usize,
    },
    /// An encoded share value of the wrong size.
    #[error("share value must be {expected} bytes, got {got}")]
    ShareLength {
        /// [`SHARE_LEN`].
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// An encoded share value holds a number that is not a field element.
    #[error("share value limb {limb} is not below the field modulus")]
    NonCanonical {
        /// Index of the offending limb.
        limb: usize,
    },
    /// The shares interpolate to something that is not a 32-byte secret: they were corrupted
    /// or belong to different secrets.
    #[error("shares are inconsistent: they do not interpolate to a 32-byte secret")]
    Inconsistent,
}

/// An element of GF(2^61 − 1), always kept below the modulus.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fe(u64);

impl Fe {
    const ZERO: Fe = Fe(0);
    const ONE: Fe = Fe(1);

    /// Reduces any `u128` below 2^122 (e.g. a product of two elements).
    fn reduce(x: u128) -> Fe {
        // 2^61 ≡ 1 (mod p): fold the high bits onto the low ones twice.
        let s = (x as u64 & P) + (x >> 61) as u64; // < 2^62
        let s = (s & P) + (s >> 61); // ≤ p + 1
        Fe(if s >= P { s - P } else { s })
    }

    fn add(self, o: Fe) -> Fe {
        let s = self.0 + o.0;
        Fe(if s >= P { s - P } else { s })
    }

    fn sub(self, o: Fe) -> Fe {
        Fe(if self.0 >= o.0 {
            self.0 - o.0
        } else {
            self.0 + P - o.0
        })
    }

    fn mul(self, o: Fe) -> Fe {
        Fe::reduce(u128::from(self.0) * u128::from(o.0))
    }

    fn pow(self, mut e: u64) -> Fe {
        let mut base = self;
        let mut acc = Fe::ONE;
        while e > 0 {
            if e & 1 == 1 {
                acc = acc.mul(base);
            }
            base = base.mul(base);
            e >>= 1;
        }
        acc
    }

    /// Multiplicative inverse by Fermat; the inverse of zero is zero (callers never ask).
    fn inv(self) -> Fe {
        self.pow(P - 2)
    }

    /// A uniform element: 61 random bits, rejecting the single value p.
    fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Fe {
        loop {
            let v = rng.next_u64() >> 3;
            if v < P {
                return Fe(v);
            }
        }
    }
}

/// One share of one secret: the point x and the five limb polynomials' values there.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    x: u32,
    limbs: [Fe; LIMBS],
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print share values.
        f.debug_struct("Share")
            .field("x", &self.x)
            .finish_non_exhaustive()
    }
}

impl Share {
    /// The evaluation point.
    pub fn x(&self) -> u32 {
        self.x
    }

    /// The share value as [`SHARE_LEN`] bytes.
    pub fn value_bytes(&self) -> [u8; SHARE_LEN] {
        let mut out = [0u8; SHARE_LEN];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(&self.limbs) {
            chunk.copy_from_slice(&limb.0.to_le_bytes());
        }
        out
    }

    /// Reads a share value received at point `x`, checking its size and that every limb is a
    /// field element.
    pub fn from_value_bytes(x: u32, bytes: &[u8]) -> Result<Share, ShamirError> {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if bytes.len() != SHARE_LEN {
            return Err(ShamirError::ShareLength {
                expected: SHARE_LEN,
                got: bytes.len(),
            });
        }
        let mut limbs = [Fe::ZERO; LIMBS];
        for (limb, (chunk, out)) in bytes.chunks_exact(8).zip(limbs.iter_mut()).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let v = u64::from_le_bytes(word);
            if v >= P {
                return Err(ShamirError::NonCanonical { limb });
            }
            *out = Fe(v);
        }
        Ok(Share { x, limbs })
    }
}

fn secret_to_limbs(secret: &[u8; SECRET_LEN]) -> [Fe; LIMBS] {
    let mut limbs = [Fe::ZERO; LIMBS];
    for (chunk, limb) in secret.chunks(LIMB_BYTES).zip(limbs.iter_mut()) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        *limb = Fe(u64::from_le_bytes(word));
    }
    limbs
}

fn limbs_to_secret(limbs: &[Fe; LIMBS]) -> Result<[u8; SECRET_LEN], ShamirError> {
    let mut secret = [0u8; SECRET_LEN];
    for (chunk, limb) in secret.chunks_mut(LIMB_BYTES).zip(limbs) {
        if limb.0 >> (8 * chunk.len()) != 0 {
            return Err(ShamirError::Inconsistent);
        }
        chunk.copy_from_slice(&limb.0.to_le_bytes()[..chunk.len()]);
    }
    Ok(secret)
}

fn check_points(xs: impl Iterator<Item = u32>) -> Result<(), ShamirError> {
    let mut seen = HashSet::new();
    for x in xs {
        if x == 0 {
            return Err(ShamirError::ZeroX);
        }
        if !seen.insert(x) {
            return Err(ShamirError::DuplicateX(x));
        }
    }
    Ok(())
}

/// Splits `secret` into one share per point of `xs` (distinct and non-zero) such that any
/// `threshold` of them reconstruct it and fewer reveal nothing.
pub fn split<R: CryptoRng + ?Sized>(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    xs: &[u32],
    rng: &mut R,
) -> Result<Vec<Share>, ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if threshold > xs.len() {
        return Err(ShamirError::ThresholdAboveShares {
            threshold,
            shares: xs.len(),
        });
    }
    check_points(xs.iter().copied())?;
    // coefficients[l][k]: coefficient of x^k of limb l's polynomial; [l][0] is the secret limb.
    let constant = secret_to_limbs(secret);
    let coefficients: Vec<Vec<Fe>> = constant
        .iter()
        .map(|&c| {
            std::iter::once(c)
                .chain((1..threshold).map(|_| Fe::random(rng)))
                .collect()
        })
        .collect();
    Ok(xs
        .iter()
        .map(|&x| {
            let fx = Fe(u64::from(x));
            let mut limbs = [Fe::ZERO; LIMBS];
            for (limb, coeffs) in limbs.iter_mut().zip(&coefficients) {
                // Horner, highest degree first.
                *limb = coeffs
                    .iter()
                    .rev()
                    .fold(Fe::ZERO, |acc, &c| acc.mul(fx).add(c));
            }
            Share { x, limbs }
        })
        .collect())
}

/// Reconstructs a secret from at least `threshold` shares with distinct non-zero points, by
/// Lagrange interpolation at 0 over the first `threshold` of them.
pub fn reconstruct(shares: &[Share], threshold: usize) -> Result<[u8; SECRET_LEN], ShamirError> {
    if threshold == 0 {
        return Err(ShamirError::ZeroThreshold);
    }
    if shares.len() < threshold {
        return Err(ShamirError::TooFewShares {
            got: shares.len(),
            need: threshold,
        });
    }
    check_points(shares.iter().map(|s| s.x))?;
    let used = &shares[..threshold];
    let weights = lagrange_at_zero(used);
    let mut limbs = [Fe::ZERO; LIMBS];
    for (share, &w) in used.iter().zip(&weights) {
        for (acc, &y) in limbs.iter_mut().zip(&share.limbs) {
            *acc = acc.add(w.mul(y));
        }
    }
    limbs_to_secret(&limbs)
}

/// λ_i = Π_{j≠i} x_j / (x_j − x_i): the weights that evaluate the interpolating polynomial at
/// 0. The points must be distinct and non-zero.
fn lagrange_at_zero(shares: &[Share]) -> Vec<Fe> {
    shares
        .iter()
        .enumerate()
        .map(|(i, si)| {
            let xi = Fe(u64::from(si.x));
            let (num, den) = shares.iter().enumerate().filter(|&(j, _)| j != i).fold(
                (Fe::ONE, Fe::ONE),
                |(num, den), (_, sj)| {
                    let xj = Fe(u64::from(sj.x));
                    (num.mul(xj), den.mul(xj.sub(xi)))
                },
            );
            num.mul(den.inv())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{RngExt, SeedableRng};

    fn secret_from(rng: &mut StdRng) -> [u8; SECRET_LEN] {
        let mut s = [0u8; SECRET_LEN];
        rng.fill(&mut s[..]);
        s
    }

    #[test]
    fn field_arithmetic_matches_u128_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        let p = u128::from(P);
        let edge = [0, 1, 2, P - 2, P - 1, 1 << 60, (1 << 60) + 1];
        let mut values: Vec<u64> = edge.to_vec();
        values.extend((0..200).map(|_| Fe::random(&mut rng).0));
        for &a in &values {
            for &b in values.iter().step_by(7) {
                let (fa, fb) = (Fe(a), Fe(b));
                let (wa, wb) = (u128::from(a), u128::from(b));
                assert_eq!(u128::from(fa.add(fb).0), (wa + wb) % p);
                assert_eq!(u128::from(fa.sub(fb).0), (wa + p - wb) % p);
                assert_eq!(u128::from(fa.mul(fb).0), wa * wb % p);
            }
            if a != 0 {
                assert_eq!(Fe(a).mul(Fe(a).inv()), Fe::ONE, "inverse of {a}");
            }
        }
        // reduce handles the largest product and values just above p
        assert_eq!(
            Fe::reduce((p - 1) * (p - 1)).0 as u128,
            (p - 1) * (p - 1) % p
        );
        assert_eq!(Fe::reduce(p).0, 0);
        assert_eq!(Fe::reduce(p + 5).0, 5);
    }

    #[test]
    fn pow_matches_repeated_multiplication() {
        let a = Fe(123_456_789_012);
        let mut acc = Fe::ONE;
        for e in 0..100u64 {
            assert_eq!(a.pow(e), acc, "a^{e}");
            acc = acc.mul(a);
        }
    }

    #[test]
    fn limbs_round_trip_every_byte_position() {
        for pos in 0..SECRET_LEN {
            let mut s = [0u8; SECRET_LEN];
            s[pos] = 0xff;
            assert_eq!(limbs_to_secret(&secret_to_limbs(&s)), Ok(s));
        }
        assert_eq!(
            limbs_to_secret(&[Fe(1 << 56), Fe::ZERO, Fe::ZERO, Fe::ZERO, Fe::ZERO]),
            Err(ShamirError::Inconsistent)
        );
        assert_eq!(
            limbs_to_secret(&[Fe::ZERO, Fe::ZERO, Fe::ZERO, Fe::ZERO, Fe(1 << 32)]),
            Err(ShamirError::Inconsistent)
        );
    }

    #[test]
    fn share_value_bytes_round_trip_and_validation() {
        let mut rng = StdRng::seed_from_u64(1);
        let shares = split(&secret_from(&mut rng), 2, &[1, 2, 3], &mut rng).unwrap();
        let bytes = shares[1].value_bytes();
        assert_eq!(Share::from_value_bytes(2, &bytes), Ok(shares[1].clone()));
        assert_eq!(
            Share::from_value_bytes(2, &bytes[1..]),
            Err(ShamirError::ShareLength {
                expected: SHARE_LEN,
                got: SHARE_LEN - 1
            })
        );
        assert_eq!(Share::from_value_bytes(0, &bytes), Err(ShamirError::ZeroX));
        let mut bad = bytes;
        bad[16..24].copy_from_slice(&P.to_le_bytes());
        assert_eq!(
            Share::from_value_bytes(2, &bad),
            Err(ShamirError::NonCanonical { limb: 2 })
        );
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        let mut rng = StdRng::seed_from_u64(2);
        let s = secret_from(&mut rng);
        assert_eq!(
            split(&s, 0, &[1, 2], &mut rng),
            Err(ShamirError::ZeroThreshold)
        );
        assert_eq!(
            split(&s, 3, &[1, 2], &mut rng),
            Err(ShamirError::ThresholdAboveShares {
                threshold: 3,
                shares: 2
            })
        );
        assert_eq!(split(&s, 1, &[1, 0], &mut rng), Err(ShamirError::ZeroX));
        assert_eq!(
            split(&s, 1, &[4, 5, 4], &mut rng),
            Err(ShamirError::DuplicateX(4))
        );
        let shares = split(&s, 3, &[1, 2, 3, 4], &mut rng).unwrap();
        assert_eq!(
            reconstruct(&shares[..2], 3),
            Err(ShamirError::TooFewShares { got: 2, need: 3 })
        );
        let dup = vec![shares[0].clone(), shares[1].clone(), shares[0].clone()];
        assert_eq!(reconstruct(&dup, 3), Err(ShamirError::DuplicateX(1)));
        assert_eq!(reconstruct(&shares, 0), Err(ShamirError::ZeroThreshold));
    }

    #[test]
    fn a_corrupted_share_is_detected_or_changes_the_secret() {
        let mut rng = StdRng::seed_from_u64(3);
        let s = secret_from(&mut rng);
        let mut shares = split(&s, 3, &[1, 2, 3], &mut rng).unwrap();
        shares[1].limbs[0] = shares[1].limbs[0].add(Fe::ONE);
        assert_ne!(reconstruct(&shares, 3), Ok(s));
    }

    #[test]
    fn a_thousand_holders() {
        let mut rng = StdRng::seed_from_u64(4);
        let s = secret_from(&mut rng);
        let xs: Vec<u32> = (1..=1000).collect();
        let mut shares = split(&s, 667, &xs, &mut rng).unwrap();
        shares.shuffle(&mut rng);
        assert_eq!(reconstruct(&shares[..667], 667), Ok(s));
        // Wrong threshold (too low) interpolates a different polynomial.
        assert_ne!(reconstruct(&shares[..666], 666), Ok(s));
    }

    /// For any t − 1 shares and any candidate secret, some degree-(t − 1) polynomial passes
    /// through all of them: complete the t − 1 shares with the point (0, candidate) and
    /// evaluate that polynomial at a fresh x; the resulting t-th share together with the t − 1
    /// reconstructs the candidate.
    #[test]
    fn fewer_than_threshold_shares_are_consistent_with_every_secret() {
        let mut rng = StdRng::seed_from_u64(5);
        let t = 4;
        let secret = secret_from(&mut rng);
        let shares = split(&secret, t, &[3, 8, 9, 20, 21], &mut rng).unwrap();
        let known = &shares[..t - 1];
        for _ in 0..20 {
            let candidate = secret_from(&mut rng);
            let mut points = vec![Share {
                x: 0,
                limbs: secret_to_limbs(&candidate),
            }];
            points.extend(known.iter().cloned());
            let fresh = 77;
            let mut limbs = [Fe::ZERO; LIMBS];
            // Lagrange evaluation at `fresh` through `points`.
            for (i, pi) in points.iter().enumerate() {
                let xi = Fe(u64::from(pi.x));
                let mut w = Fe::ONE;
                for (j, pj) in points.iter().enumerate() {
                    if i != j {
                        let xj = Fe(u64::from(pj.x));
                        w = w.mul(Fe(fresh).sub(xj)).mul(xi.sub(xj).inv());
                    }
                }
                for (acc, &y) in limbs.iter_mut().zip(&pi.limbs) {
                    *acc = acc.add(w.mul(y));
                }
            }
            let mut forged = known.to_vec();
            forged.push(Share {
                x: fresh as u32,
                limbs,
            });
            assert_eq!(reconstruct(&forged, t), Ok(candidate));
        }
    }

    /// Statistically: one share of a 2-of-n sharing has the same distribution whether the
    /// secret is all zeros or all ones (chi-square over the top 4 bits of each limb).
    #[test]
    fn a_single_share_of_two_of_n_does_not_depend_on_the_secret() {
        let mut rng = StdRng::seed_from_u64(6);
        let buckets = 16;
        let samples = 4000;
        for secret in [[0u8; SECRET_LEN], [0xffu8; SECRET_LEN]] {
            let mut counts = vec![0u32; buckets];
            for _ in 0..samples {
                let shares = split(&secret, 2, &[5, 6], &mut rng).unwrap();
                for limb in &shares[0].limbs {
                    counts[(limb.0 >> 57) as usize] += 1;
                }
            }
            let n = f64::from(samples * LIMBS as u32);
            let expected = n / buckets as f64;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (f64::from(c) - expected).powi(2) / expected)
                .sum();
            // 15 degrees of freedom: P(chi2 > 37.7) = 0.001.
            assert!(chi2 < 37.7, "chi2 = {chi2} for {secret:?}");
        }
    }

    /// The low three bits of `Fe::random` are uniform: chi-square over their 8 values, 7
    /// degrees of freedom, n = 80,000 draws from a fixed seed. The critical value at
    /// α = 0.001 is 24.32 (a false alarm probability of 0.1 % for a uniform sampler). The top
    /// bit (2^60) is set about half the time, and every draw is below p.
    #[test]
    fn random_field_elements_are_uniform_in_the_low_and_high_bits() {
        let mut rng = StdRng::seed_from_u64(31);
        let n = 80_000;
        let mut low = [0u32; 8];
        let mut top = 0u32;
        for _ in 0..n {
            let v = Fe::random(&mut rng).0;
            assert!(v < P);
            low[(v & 7) as usize] += 1;
            top += u32::from(v >> 60 == 1);
        }
        let expected = f64::from(n) / 8.0;
        let chi2: f64 = low
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 24.32, "low bits {low:?}, chi2 {chi2}");
        // Binomial(n, 1/2): standard deviation √n/2 ≈ 141; allow 5 of them.
        let half = f64::from(n) / 2.0;
        assert!(
            (f64::from(top) - half).abs() < 5.0 * 141.5,
            "top bit set {top} times"
        );
    }

    /// A generator replaying fixed words, to reach the rejection branch of `Fe::random`.
    struct Replay(Vec<u64>);

    impl rand::TryRng for Replay {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            unreachable!("Fe::random reads u64 words")
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            assert!(
                !self.0.is_empty(),
                "Fe::random read past the replayed words"
            );
            Ok(self.0.remove(0))
        }
        fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), Self::Error> {
            unreachable!("Fe::random reads u64 words")
        }
    }

    impl rand::TryCryptoRng for Replay {}

    /// The one 61-bit value that is not a field element, p itself (all ones), is rejected
    /// and the next word used; p − 1 is accepted.
    #[test]
    fn random_rejects_exactly_p() {
        let mut rng = Replay(vec![u64::MAX, 5 << 3 | 7]);
        assert_eq!(Fe::random(&mut rng), Fe(5));
        assert!(rng.0.is_empty());
        let mut rng = Replay(vec![u64::MAX - 8, 0]);
        assert_eq!(Fe::random(&mut rng), Fe(P - 1));
        assert_eq!(rng.0, vec![0]);
    }

    #[test]
    fn shares_carry_their_own_points() {
        let mut rng = StdRng::seed_from_u64(4);
        let secret = secret_from(&mut rng);
        let xs = [2, 5, 9, 1000, u32::MAX];
        let shares = split(&secret, 3, &xs, &mut rng).unwrap();
        let got: Vec<u32> = shares.iter().map(Share::x).collect();
        assert_eq!(got, xs);
        for s in &shares {
            let back = Share::from_value_bytes(s.x(), &s.value_bytes()).unwrap();
            assert_eq!(back.x(), s.x());
            assert_eq!(&back, s);
        }
    }

    proptest! {
        /// Any t of n shares reconstruct the secret, whichever t and in any order.
        #[test]
        fn any_threshold_subset_reconstructs(n in 1usize..=16, t_frac in 0.0f64..1.0, seed in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let t = 1 + ((n - 1) as f64 * t_frac) as usize;
            let secret = secret_from(&mut rng);
            let mut xs: Vec<u32> = (1..=64).collect();
            xs.shuffle(&mut rng);
            xs.truncate(n);
            let mut shares = split(&secret, t, &xs, &mut rng).unwrap();
            shares.shuffle(&mut rng);
            let k = rng.random_range(t..=n);
            prop_assert_eq!(reconstruct(&shares[..k], t), Ok(secret));
        }
    }
}
