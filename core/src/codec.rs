//! Fixed-point encodings into Z_(2^32), the ring secure aggregation sums in.
//!
//! Two encodings, both chosen so that the wrapping sum of up to `parties` encoded values never
//! wraps, which makes the sum decode to the true sum:
//!
//! - [`FixedPoint`] for model updates: a value clipped to `[-bound, bound]` is scaled, rounded
//!   stochastically (unbiased: E[decode(encode(v))] = v) and stored as a centred `i32`. The
//!   scale is the largest that keeps `parties · max |encoded|` within `i32::MAX`, so precision
//!   falls only as log2(parties · bound) grows; the scale is recorded with each round.
//! - [`WideInt`] for statistics (counts, sums, sums of squares, loss sums) that need more than
//!   32 bits: a value becomes an 80-bit-or-wider two's-complement integer split into limbs of
//!   `32 − ⌈log2 parties⌉` bits, one per `u32` word, so limb sums cannot carry out of a word.
//!   After summing, the limbs recombine (with carries) into the exact integer sum.

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Why an encoding could not be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The range to cover is so wide for this many parties that a unit of the encoding would
    /// be coarser than the values themselves.
    #[error(
        "fixed-point precision too low: {parties} parties with values up to {bound} leave a scale of {scale:.3} (< 1); lower training.clip_norm or training.max_weight"
    )]
    PrecisionTooLow {
        /// Parties summed.
        parties: usize,
        /// Largest absolute value per party.
        bound: f64,
        /// The scale that would result.
        scale: f64,
    },
    /// No parties, or more than the encodings support.
    #[error("cannot encode for {0} parties (supported: 1..=65536)")]
    Parties(usize),
}

/// Most parties one sum may have: limbs keep at least 16 bits.
pub const MAX_PARTIES: usize = 1 << 16;

fn check_parties(parties: usize) -> Result<(), CodecError> {
    if parties == 0 || parties > MAX_PARTIES {
        Err(CodecError::Parties(parties))
    } else {
        Ok(())
    }
}

/// Centred fixed point with stochastic rounding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Encoded units per unit of value.
    pub scale: f64,
    /// Largest absolute value accepted; larger ones are clamped.
    pub bound: f64,
    /// Largest absolute encoded integer one party may contribute.
    pub max_int: i64,
}

impl FixedPoint {
    /// The finest encoding under which `parties` values in `[-bound, bound]` sum without wrap.
    pub fn for_sum(parties: usize, bound: f64) -> Result<Self, CodecError> {
        check_parties(parties)?;
        let max_int = i64::from(i32::MAX) / parties as i64;
        let scale = max_int as f64 / bound;
        if !scale.is_finite() || scale < 1.0 {
            return Err(CodecError::PrecisionTooLow {
                parties,
                bound,
                scale,
            });
        }
        Ok(Self {
            scale,
            bound,
            max_int,
        })
    }

    /// Encodes one value.
    pub fn encode<R: Rng + ?Sized>(&self, v: f64, rng: &mut R) -> u32 {
        let v = if v.is_finite() {
            v.clamp(-self.bound, self.bound)
        } else {
            0.0
        };
        let x = v * self.scale;
        let floor = x.floor();
        let up = rng.random::<f64>() < x - floor;
        let i = (floor as i64 + i64::from(up)).clamp(-self.max_int, self.max_int);
        (i as i32) as u32
    }

    /// Decodes a (summed) word.
    pub fn decode(&self, word: u32) -> f64 {
        f64::from(word as i32) / self.scale
    }
}

/// Multi-limb integers for exact sums of statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WideInt {
    /// Bits per limb.
    pub limb_bits: u32,
    /// Limbs (u32 words) per value.
    pub limbs: usize,
    /// Encoded units per unit of value (a power of two).
    pub scale: f64,
}

/// Fractional bits of statistics: loss sums keep ~6e-8 resolution per row.
const WIDE_FRACTION_BITS: i32 = 24;
/// Minimum total width: values up to 2^55 (≈ 3.6e16) at 24 fractional bits.
const WIDE_MIN_BITS: u32 = 80;

impl WideInt {
    /// The encoding for sums over up to `parties` parties.
    pub fn for_sum(parties: usize) -> Result<Self, CodecError> {
        check_parties(parties)?;
        let carry_bits = usize::BITS - (parties - 1).leading_zeros(); // ⌈log2 parties⌉
        let limb_bits = (32 - carry_bits).min(31);
        let limbs = WIDE_MIN_BITS.div_ceil(limb_bits) as usize;
        Ok(Self {
            limb_bits,
            limbs,
            scale: 2f64.powi(WIDE_FRACTION_BITS),
        })
    }

    fn total_bits(&self) -> u32 {
        self.limb_bits * self.limbs as u32
    }

    /// Encodes one value into `self.limbs` words appended to `out`.
    pub fn encode_into(&self, v: f64, out: &mut Vec<u32>) {
        let total = self.total_bits();
        let limit = (1i128 << (total - 2)) as f64;
        let x = if v.is_finite() {
            (v * self.scale).round().clamp(-limit, limit)
        } else {
            0.0
        };
        let modulus_mask = (1u128 << total) - 1;
        let u = (x as i128 as u128) & modulus_mask;
        let limb_mask = (1u128 << self.limb_bits) - 1;
        for k in 0..self.limbs {
            out.push(((u >> (k as u32 * self.limb_bits)) & limb_mask) as u32);
        }
    }

    /// Decodes the summed limbs of one value.
    pub fn decode(&self, words: &[u32]) -> f64 {
        let total = self.total_bits();
        let mut acc: u128 = 0;
        for (k, &w) in words.iter().enumerate().take(self.limbs) {
            acc = acc.wrapping_add(u128::from(w) << (k as u32 * self.limb_bits));
        }
        let modulus = 1u128 << total;
        let u = acc & (modulus - 1);
        let signed = if u >= modulus >> 1 {
            u as i128 - modulus as i128
        } else {
            u as i128
        };
        signed as f64 / self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn fixed_point_scale_from_parties_and_bound() -> Result<(), CodecError> {
        let f = FixedPoint::for_sum(4, 10.0)?;
        assert_eq!(f.max_int, 536_870_911);
        assert!((f.scale - 53_687_091.1).abs() < 1e-6);
        assert!(matches!(
            FixedPoint::for_sum(1000, 1e9),
            Err(CodecError::PrecisionTooLow { .. })
        ));
        assert_eq!(FixedPoint::for_sum(0, 1.0), Err(CodecError::Parties(0)));
        Ok(())
    }

    #[test]
    fn stochastic_rounding_is_unbiased() -> Result<(), CodecError> {
        let f = FixedPoint {
            scale: 1.0,
            bound: 10.0,
            max_int: 100,
        };
        let mut rng = StdRng::seed_from_u64(9);
        let n = 200_000;
        let mean: f64 = (0..n)
            .map(|_| f.decode(f.encode(0.3, &mut rng)))
            .sum::<f64>()
            / n as f64;
        // the encoded value is 0 or 1; its mean must be 0.3 (std of the mean ≈ 0.001)
        assert!((mean - 0.3).abs() < 0.005, "{mean}");
        Ok(())
    }

    proptest! {
        /// The wrapping u32 sum of encodings decodes to the sum of the values within
        /// parties/scale, at the extremes of the range too.
        #[test]
        fn fixed_point_sum_never_wraps(parties in 1usize..300, seed in any::<u64>(), bound in 0.01f64..1e4) {
            let f = FixedPoint::for_sum(parties, bound).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let values: Vec<f64> = (0..parties).map(|i| if i % 3 == 0 { bound } else { rng.random_range(-bound..=bound) }).collect();
            let sum = values.iter().fold(0u32, |acc, &v| acc.wrapping_add(f.encode(v, &mut rng)));
            let exact: f64 = values.iter().sum();
            prop_assert!((f.decode(sum) - exact).abs() <= parties as f64 / f.scale + 1e-9);
        }

        /// Wide integers sum exactly (to 2^-24) whatever the signs and magnitudes.
        #[test]
        fn wide_sum_is_exact(parties in 1usize..2000, seed in any::<u64>()) {
            let w = WideInt::for_sum(parties).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let values: Vec<f64> = (0..parties).map(|_| {
                let mag = 10f64.powi(rng.random_range(0..13));
                (rng.random_range(-1.0..1.0) * mag * 64.0).round() / 64.0
            }).collect();
            let mut sum = vec![0u32; w.limbs];
            for &v in &values {
                let mut enc = Vec::new();
                w.encode_into(v, &mut enc);
                for (s, e) in sum.iter_mut().zip(&enc) { *s = s.wrapping_add(*e); }
            }
            let exact: f64 = values.iter().sum();
            prop_assert!((w.decode(&sum) - exact).abs() <= 1e-6 * exact.abs().max(1.0));
        }
    }

    /// Stochastic rounding is unbiased on both sides of zero and for values above 1, where
    /// `x − floor(x)` and `x + floor(x)` differ: the mean of many encodings (scale 1, so the
    /// encoded integer is ⌊x⌋ or ⌊x⌋ + 1) is within 0.01 of x. The standard error of each mean
    /// is at most 0.5/√n ≈ 0.0016, so 0.01 is over 6 standard errors.
    #[test]
    fn stochastic_rounding_mean_is_the_value() {
        let f = FixedPoint {
            scale: 1.0,
            bound: 10.0,
            max_int: 100,
        };
        let mut rng = StdRng::seed_from_u64(21);
        let n = 100_000;
        for x in [0.1, 0.5, -0.3, 2.75, -4.6] {
            let floor = f64::floor(x);
            let mut total = 0.0;
            for _ in 0..n {
                let v = f.decode(f.encode(x, &mut rng));
                assert!(v == floor || v == floor + 1.0, "{x} encoded as {v}");
                total += v;
            }
            let mean = total / f64::from(n);
            assert!((mean - x).abs() < 0.01, "{x}: mean {mean}");
        }
    }

    /// Values past the wide encoding's range saturate at ±2^(total − 2) units instead of
    /// wrapping, and the bounds themselves encode exactly.
    #[test]
    fn wide_values_out_of_range_saturate() -> Result<(), CodecError> {
        for parties in [1, 5, 300] {
            let w = WideInt::for_sum(parties)?;
            let total = w.limb_bits * w.limbs as u32;
            let limit = 2f64.powi(total as i32 - 2) / w.scale;
            let round_trip = |v: f64| {
                let mut enc = Vec::new();
                w.encode_into(v, &mut enc);
                assert_eq!(enc.len(), w.limbs);
                w.decode(&enc)
            };
            assert_eq!(round_trip(limit), limit, "{parties} parties");
            assert_eq!(round_trip(-limit), -limit, "{parties} parties");
            // The neighbouring f64 just inside the bound is unchanged.
            let inside = limit.next_down();
            assert_eq!(round_trip(inside), inside, "{parties} parties");
            for past in [
                limit.next_up(),
                limit * 1.5,
                limit * 2.0,
                limit * 4.0,
                1e300,
            ] {
                assert_eq!(round_trip(past), limit, "{parties} parties, {past}");
                assert_eq!(round_trip(-past), -limit, "{parties} parties, -{past}");
            }
        }
        Ok(())
    }

    #[test]
    fn exactly_max_parties_are_supported() -> Result<(), CodecError> {
        assert_eq!(MAX_PARTIES, 65_536);
        let f = FixedPoint::for_sum(MAX_PARTIES, 1.0)?;
        assert_eq!(f.max_int, i64::from(i32::MAX) / 65_536);
        assert_eq!(WideInt::for_sum(MAX_PARTIES)?.limb_bits, 16);
        assert_eq!(
            FixedPoint::for_sum(MAX_PARTIES + 1, 1.0),
            Err(CodecError::Parties(MAX_PARTIES + 1))
        );
        assert_eq!(
            WideInt::for_sum(MAX_PARTIES + 1),
            Err(CodecError::Parties(MAX_PARTIES + 1))
        );
        assert_eq!(WideInt::for_sum(0), Err(CodecError::Parties(0)));
        Ok(())
    }

    #[test]
    fn wide_limb_sizes() -> Result<(), CodecError> {
        assert_eq!(WideInt::for_sum(1)?.limb_bits, 31);
        assert_eq!(WideInt::for_sum(5)?.limb_bits, 29);
        assert_eq!(WideInt::for_sum(256)?.limb_bits, 24);
        assert_eq!(WideInt::for_sum(257)?.limb_bits, 23);
        let w = WideInt::for_sum(5)?;
        assert!(w.limb_bits * w.limbs as u32 >= 80);
        Ok(())
    }
}
