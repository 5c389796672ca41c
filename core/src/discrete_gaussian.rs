//! Exact discrete Gaussian noise (Canonne, Kamath, Steinke, "The Discrete Gaussian for
//! Differential Privacy", NeurIPS 2020) for integer sums, and the Gaussian mechanism on a
//! fixed-point sum built from it.
//!
//! A floating-point Gaussian added to a floating-point sum is not exactly Gaussian (its
//! low-order bits depend on the input, Mironov 2012). Here everything is an integer: the
//! sampler draws from `N_Z(0, σ²)`, `P(x) ∝ exp(−x²/(2σ²))`, using only uniform integer draws
//! and exact rational arithmetic (`u128`), and the mechanism adds it to the integer sum that
//! secure aggregation produced. Its privacy is that of the continuous Gaussian in the Rényi
//! (concentrated) sense — an integer shift of L2 norm `Δ` gives `α Δ²/(2σ²)` at every order α
//! (CKS 2020, Theorem 14) — so it is accounted with the Gaussian's RDP; the privacy loss
//! distribution accountant is not used for it (its PLD is not the continuous one).
//!
//! The sampler supports `σ² ≤ MAX_SIGMA_SQ`. Larger noise in fixed-point units is drawn on a
//! coarser lattice `gZ` (see [`add_to_fixed_point_sum`]), which the sensitivity accounts for.

use rand::{Rng, RngExt};

/// Largest σ² the sampler takes: keeps every intermediate of the rational arithmetic well
/// inside `u128` for any draw with probability above 2^-100.
pub const MAX_SIGMA_SQ: u128 = 1 << 48;

/// Why discrete Gaussian noise could not be drawn.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscreteGaussianError {
    /// σ² outside `1..=MAX_SIGMA_SQ`.
    #[error("discrete Gaussian variance {0} must be in 1..=2^48")]
    Variance(u128),
    /// A noise multiplier, scale or sensitivity that is not positive and finite.
    #[error("{name} = {value} must be positive and finite")]
    Parameter {
        /// Which parameter.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

/// Bernoulli(`num`/`den`) from one uniform integer draw.
fn bernoulli<R: Rng + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    rng.random_range(0..den) < num
}

/// Bernoulli(exp(−`num`/`den`)), exactly (CKS 2020, Algorithm 1). `den > 0`.
pub fn bernoulli_exp_neg<R: Rng + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    let whole = num / den;
    for _ in 0..whole {
        if !bernoulli_exp_neg_unit(1, 1, rng) {
            return false;
        }
    }
    bernoulli_exp_neg_unit(num % den, den, rng)
}

/// Bernoulli(exp(−γ)) for γ = `num`/`den` ≤ 1: the parity of the first K with
/// Bernoulli(γ/K) false.
fn bernoulli_exp_neg_unit<R: Rng + ?Sized>(num: u128, den: u128, rng: &mut R) -> bool {
    let mut k: u128 = 1;
    loop {
        // γ/k ≤ 1/k: the loop ends after a few draws (E[K] ≤ e).
        let Some(scaled) = den.checked_mul(k) else {
            // Reached only after ~2^28 consecutive successes of probability ≤ 1/k.
            return k % 2 == 1;
        };
        if !bernoulli(num, scaled, rng) {
            return k % 2 == 1;
        }
        k += 1;
    }
}

/// One draw of the discrete Laplace distribution `P(y) ∝ exp(−|y|/t)`, `t ≥ 1` (CKS 2020,
/// Algorithm 2 with s = 1).
fn discrete_laplace<R: Rng + ?Sized>(t: u128, rng: &mut R) -> i128 {
    loop {
        let u = rng.random_range(0..t);
        if !bernoulli_exp_neg(u, t, rng) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_neg_unit(1, 1, rng) {
            v += 1;
        }
        let Some(x) = t.checked_mul(v).and_then(|tv| tv.checked_add(u)) else {
            continue;
        };
        let negative = rng.random::<bool>();
        if negative && x == 0 {
            continue;
        }
        let Ok(x) = i128::try_from(x) else {
            continue;
        };
        return if negative { -x } else { x };
    }
}

/// One draw of `N_Z(0, sigma_sq)`, the discrete Gaussian with variance parameter `sigma_sq`
/// (CKS 2020, Algorithm 3): a discrete Laplace proposal of scale `t = ⌊σ⌋ + 1`, accepted with
/// probability `exp(−(|y| − σ²/t)² / (2σ²))`.
pub fn sample<R: Rng + ?Sized>(sigma_sq: u128, rng: &mut R) -> Result<i64, DiscreteGaussianError> {
    if sigma_sq == 0 || sigma_sq > MAX_SIGMA_SQ {
        return Err(DiscreteGaussianError::Variance(sigma_sq));
    }
    let t = isqrt(sigma_sq) + 1;
    loop {
        let y = discrete_laplace(t, rng);
        // (|y| − σ²/t)² / (2σ²) = (|y|·t − σ²)² / (2σ²t²), all integers.
        let Some(yt) = y.unsigned_abs().checked_mul(t) else {
            continue;
        };
        let diff = yt.abs_diff(sigma_sq);
        let (Some(num), Some(den)) = (diff.checked_mul(diff), (2 * sigma_sq).checked_mul(t * t))
        else {
            // |y| > 2^40·σ: a proposal this far out is (all but) always rejected.
            continue;
        };
        if bernoulli_exp_neg(num, den, rng) {
            // |y| ≤ 2^64·σ-ish was checked above; anything beyond i64 is rejected too.
            if let Ok(y) = i64::try_from(y) {
                return Ok(y);
            }
        }
    }
}

/// ⌊√n⌋ for `n ≤ 2^48` (exact: starts from the float root and corrects).
fn isqrt(n: u128) -> u128 {
    let mut r = (n as f64).sqrt() as u128;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

/// What [`add_to_fixed_point_sum`] did: the lattice it noised on and the noise in real units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatticeNoise {
    /// Lattice step `g` in encoded units (a power of two).
    pub step: u64,
    /// L2 sensitivity of the rounded sum in lattice units.
    pub sensitivity: f64,
    /// σ in lattice units (`noise_multiplier` × `sensitivity`, rounded up).
    pub sigma: f64,
    /// Standard deviation of the added noise in real (decoded) units.
    pub std_real: f64,
}

/// The Gaussian mechanism on a sum of fixed-point vectors, in integers.
///
/// `values` is the decoded sum (encoded integer / `scale`, exact); each partner's encoded
/// vector has L2 norm at most `clip · scale + √d` (clipping, then stochastic rounding moves
/// each of the `d` coordinates by less than 1). The sum is rounded to the lattice `gZ^d`
/// (g = 1 unless σ would pass [`MAX_SIGMA_SQ`]; rounding to `g` adds at most `√d·g` to the
/// difference of two neighbouring sums), and `g · N_Z(0, σ_L²)` is added per coordinate with
/// `σ_L = noise_multiplier · Δ_L`. At every Rényi order this costs what the Gaussian
/// mechanism of the same noise multiplier costs, which is how it is charged.
pub fn add_to_fixed_point_sum<R: Rng + ?Sized>(
    values: &mut [f64],
    scale: f64,
    clip: f64,
    noise_multiplier: f64,
    rng: &mut R,
) -> Result<LatticeNoise, DiscreteGaussianError> {
    for (name, value) in [
        ("scale", scale),
        ("clip", clip),
        ("noise multiplier", noise_multiplier),
    ] {
        if !(value > 0.0 && value.is_finite()) {
            return Err(DiscreteGaussianError::Parameter { name, value });
        }
    }
    let root_d = (values.len() as f64).sqrt();
    let integer_sensitivity = clip * scale + root_d;
    let max_sigma = (MAX_SIGMA_SQ as f64).sqrt();
    let mut step: u64 = 1;
    let mut sensitivity = integer_sensitivity;
    while noise_multiplier * sensitivity > max_sigma && step < (1 << 62) {
        step *= 2;
        sensitivity = integer_sensitivity / step as f64 + root_d;
    }
    let sigma = noise_multiplier * sensitivity;
    let sigma_sq = (sigma * sigma).ceil();
    if !(sigma_sq >= 1.0 && sigma_sq <= MAX_SIGMA_SQ as f64) {
        return Err(DiscreteGaussianError::Parameter {
            name: "lattice sigma",
            value: sigma,
        });
    }
    let sigma_sq = sigma_sq as u128;
    let g = step as f64;
    for v in values.iter_mut() {
        let on_lattice = (*v * scale / g).round();
        let noise = sample(sigma_sq, rng)? as f64;
        *v = (on_lattice + noise) * g / scale;
    }
    Ok(LatticeNoise {
        step,
        sensitivity,
        sigma: (sigma_sq as f64).sqrt(),
        std_real: (sigma_sq as f64).sqrt() * g / scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The exact pmf of N_Z(0, σ²) on [−m, m], by brute-force normalisation over a range wide
    /// enough that the rest weighs below 1e-30.
    fn pmf(sigma_sq: f64, m: i64) -> Vec<f64> {
        let w = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma_sq)).exp();
        let reach = (40.0 * sigma_sq.sqrt()) as i64 + 10;
        let total: f64 = (-reach..=reach).map(w).sum();
        (-m..=m).map(|x| w(x) / total).collect()
    }

    /// Chi-square statistic of `counts` (cells −m..=m plus one tail cell) against `pmf`.
    fn chi_square(samples: &[i64], sigma_sq: f64, m: i64) -> (f64, usize) {
        let p = pmf(sigma_sq, m);
        let mut counts = vec![0u64; p.len() + 1];
        for &s in samples {
            if s.abs() <= m {
                counts[(s + m) as usize] += 1;
            } else {
                counts[p.len()] += 1;
            }
        }
        let n = samples.len() as f64;
        let tail = 1.0 - p.iter().sum::<f64>();
        let mut chi = 0.0;
        for (c, q) in counts.iter().zip(p.iter().chain(std::iter::once(&tail))) {
            let e = n * q;
            if e > 0.0 {
                chi += (*c as f64 - e).powi(2) / e;
            }
        }
        (chi, counts.len() - 1)
    }

    #[test]
    fn bernoulli_exp_neg_has_the_exact_frequency() {
        let mut rng = StdRng::seed_from_u64(1);
        let n = 200_000;
        for (num, den) in [(3u128, 10u128), (17, 10), (5, 3), (0, 7), (40, 10)] {
            let hits = (0..n)
                .filter(|_| bernoulli_exp_neg(num, den, &mut rng))
                .count() as f64;
            let p = (-(num as f64) / den as f64).exp();
            let sd = (p * (1.0 - p) / n as f64).sqrt().max(1e-9);
            // 5 standard deviations: a false alarm has probability below 1e-6.
            assert!(
                (hits / n as f64 - p).abs() <= 5.0 * sd,
                "{num}/{den}: {} vs {p}",
                hits / n as f64
            );
        }
    }

    /// The sampler against the brute-force pmf: chi-square with fixed seeds. With ~25 cells
    /// the 1e-6 critical value is about 80; a sampler off by a factor 1.1 in σ gives a
    /// statistic in the thousands at this sample size.
    #[test]
    fn samples_follow_the_discrete_gaussian_pmf() {
        for (sigma_sq, seed) in [(1u128, 2u64), (6, 3), (37, 4)] {
            let mut rng = StdRng::seed_from_u64(seed);
            let samples: Vec<i64> = (0..200_000)
                .map(|_| sample(sigma_sq, &mut rng).unwrap())
                .collect();
            let m = (3.0 * (sigma_sq as f64).sqrt()).ceil() as i64;
            let (chi, cells) = chi_square(&samples, sigma_sq as f64, m);
            assert!(
                chi < 80.0,
                "σ² = {sigma_sq}: chi-square {chi} over {cells} cells"
            );
        }
    }

    #[test]
    fn a_wrong_variance_is_detected_by_the_same_test() {
        // The test's power: σ² = 6 samples judged against σ² = 7.3 (σ off by 10 %).
        let mut rng = StdRng::seed_from_u64(3);
        let samples: Vec<i64> = (0..200_000).map(|_| sample(6, &mut rng).unwrap()).collect();
        let (chi, _) = chi_square(&samples, 7.26, 8);
        assert!(chi > 500.0, "chi-square {chi}");
    }

    #[test]
    fn large_variances_have_the_right_moments() {
        let sigma_sq: u128 = 1 << 40;
        let mut rng = StdRng::seed_from_u64(5);
        let n = 50_000;
        let xs: Vec<f64> = (0..n)
            .map(|_| sample(sigma_sq, &mut rng).unwrap() as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0);
        let s2 = sigma_sq as f64;
        // The discrete Gaussian's variance is σ² to within 1e-40 relative here; the sample
        // variance has a relative standard error of √(2/n) ≈ 0.63 %.
        assert!((var / s2 - 1.0).abs() < 0.04, "variance ratio {}", var / s2);
        assert!(mean.abs() < 5.0 * (s2 / n as f64).sqrt(), "mean {mean}");
    }

    #[test]
    fn out_of_range_variances_are_refused() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(sample(0, &mut rng), Err(DiscreteGaussianError::Variance(0)));
        assert!(sample(MAX_SIGMA_SQ + 1, &mut rng).is_err());
        assert!(sample(MAX_SIGMA_SQ, &mut rng).is_ok());
        let mut v = vec![0.0; 3];
        for (scale, clip, z) in [(0.0, 1.0, 1.0), (1.0, f64::NAN, 1.0), (1.0, 1.0, -1.0)] {
            assert!(add_to_fixed_point_sum(&mut v, scale, clip, z, &mut rng).is_err());
        }
    }

    #[test]
    fn isqrt_is_exact_at_squares_and_between() {
        for n in [1u128, 2, 3, 4, 15, 16, 17, (1 << 48) - 1, 1 << 48] {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "{n}");
        }
    }

    /// The mechanism on a fixed-point sum: the lattice keeps σ in range, the output stays on
    /// the lattice, and the noise in real units is `σ_mult · clip` to within the rounding
    /// terms (recomputed here from the definition, not read back from the result).
    #[test]
    fn fixed_point_mechanism_noise_has_the_planned_scale() {
        let mut rng = StdRng::seed_from_u64(6);
        let (scale, clip, z) = (2f64.powi(20), 1.0, 1.5);
        let d = 4000;
        let truth: Vec<f64> = (0..d).map(|i| (i as f64 - 2000.0) / scale).collect();
        let mut v = truth.clone();
        let noise = add_to_fixed_point_sum(&mut v, scale, clip, z, &mut rng).unwrap();
        // σ = 1.5 · (2^20 + √4000) ≈ 1.57e6 fits below 2^24: lattice step 1.
        assert_eq!(noise.step, 1);
        let expected_std = z * (clip * scale + (d as f64).sqrt()) / scale;
        assert!((noise.std_real / expected_std - 1.0).abs() < 1e-6);
        let diffs: Vec<f64> = v.iter().zip(&truth).map(|(a, b)| a - b).collect();
        let var = diffs.iter().map(|x| x * x).sum::<f64>() / d as f64;
        assert!(
            (var.sqrt() / expected_std - 1.0).abs() < 0.06,
            "{} vs {expected_std}",
            var.sqrt()
        );
        assert!(v.iter().all(|x| (x * scale).fract() == 0.0));

        // A scale that would need σ above 2^24: a coarser lattice, the same real noise.
        let big = 2f64.powi(40);
        let truth: Vec<f64> = (0..d).map(|i| i as f64 / 7.0).collect();
        let mut v = truth.clone();
        let noise = add_to_fixed_point_sum(&mut v, big, clip, z, &mut rng).unwrap();
        assert!(noise.step > 1 && noise.sigma <= (MAX_SIGMA_SQ as f64).sqrt());
        let g = noise.step as f64;
        assert!(v.iter().all(|x| (x * big / g).fract() == 0.0));
        let var = v
            .iter()
            .zip(&truth)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            / d as f64;
        assert!(
            (var.sqrt() / (z * clip) - 1.0).abs() < 0.06,
            "{} vs {}",
            var.sqrt(),
            z * clip
        );
    }
}
