//! Differential-privacy noise and clipping: what a partner (or the coordinator) does to data
//! before it leaves, so that the [`accountant`](crate::accountant) can charge for it.
//!
//! - [`clip_l2`]: per-example (DP-SGD, `record` mode) or per-update (`partner-*` modes)
//!   clipping to an L2 norm, which bounds the sensitivity the noise is calibrated to.
//! - [`add_gaussian_noise`]: N(0, (σ·C)²) per coordinate on real vectors (`record` and
//!   `partner-central` modes), σ the noise multiplier and C the clip norm.
//! - [`add_skellam_noise`]: integer noise `Poisson(μ) − Poisson(μ)` (variance 2μ) per word of
//!   a fixed-point vector from [`codec`](crate::codec), with wrapping arithmetic in Z_(2^32)
//!   (`partner-distributed` mode). Skellam noise is closed under summation, so partners each
//!   adding `μ_k` give the masked sum noise `Poisson(Σμ_k) − Poisson(Σμ_k)`.
//! - [`skellam_tail_bound`] and [`skellam_wrap_probability`]: how likely that noise pushes a
//!   32-bit fixed-point sum across the wrap-around, so the encoding can leave enough headroom.
//!
//! The random generator is always passed in. Production callers must pass a cryptographically
//! secure one (`ChaCha`, `SysRng`): a predictable generator makes the noise removable. The
//! Gaussian sampler is the usual floating-point one, subject to the known caveat that
//! floating-point noise is not exactly Gaussian (Mironov 2012); the integer Skellam path does
//! not have that issue once the inputs are integers.

use rand::Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};

/// Why noise could not be added or a vector clipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DpError {
    /// A noise multiplier that is not a positive finite number.
    #[error("noise multiplier sigma = {0} must be positive and finite")]
    NoiseMultiplier(f64),
    /// A clip norm that is not a positive finite number.
    #[error("clip norm = {0} must be positive and finite")]
    ClipNorm(f64),
    /// A Skellam Poisson mean that is not positive, not finite or above [`MAX_SKELLAM_MU`].
    #[error("skellam mu = {0} must be positive and at most {MAX_SKELLAM_MU}")]
    SkellamMu(f64),
}

/// Largest Poisson mean accepted by [`add_skellam_noise`]: draws stay exact integers in `f64`.
pub const MAX_SKELLAM_MU: f64 = 9_007_199_254_740_992.0; // 2^53

/// The L2 norm of `v`, computed with scaling so that it neither overflows nor underflows
/// for finite entries. NaN if any entry is NaN, `+∞` if any is infinite.
pub fn l2_norm(v: &[f64]) -> f64 {
    let scale = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if v.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    if scale == 0.0 || !scale.is_finite() {
        return scale;
    }
    let sum: f64 = v.iter().map(|x| (x / scale) * (x / scale)).sum();
    scale * sum.sqrt()
}

/// Scales `gradient` down, if needed, so that its L2 norm ([`l2_norm`]) is at most
/// `clip_norm`, and returns its norm before clipping. A vector already within the bound is
/// left untouched; a longer one keeps its direction.
///
/// A gradient with a NaN or infinite entry has no meaningful direction and would break the
/// sensitivity bound, so it is zeroed (contributing nothing) and its non-finite norm returned
/// for the caller to count or report.
pub fn clip_l2(gradient: &mut [f64], clip_norm: f64) -> Result<f64, DpError> {
    if !(clip_norm > 0.0 && clip_norm.is_finite()) {
        return Err(DpError::ClipNorm(clip_norm));
    }
    let norm = l2_norm(gradient);
    if !norm.is_finite() {
        gradient.fill(0.0);
        return Ok(norm);
    }
    if norm <= clip_norm {
        return Ok(norm);
    }
    // One rescale normally suffices; rounding can leave the norm an ulp or so above the
    // bound, which a second, slightly stronger rescale removes.
    let mut factor = clip_norm / norm;
    for _ in 0..8 {
        gradient.iter_mut().for_each(|g| *g *= factor);
        let now = l2_norm(gradient);
        if now <= clip_norm {
            return Ok(norm);
        }
        factor = clip_norm / now * (1.0 - 4.0 * f64::EPSILON);
    }
    // Not reached in practice; never let an over-long gradient through.
    gradient.fill(0.0);
    Ok(norm)
}

/// Adds independent N(0, (`noise_multiplier` · `clip_norm`)²) noise to every entry of
/// `values`: the Gaussian mechanism for a sum of vectors each clipped to `clip_norm`.
pub fn add_gaussian_noise<R: Rng + ?Sized>(
    values: &mut [f64],
    noise_multiplier: f64,
    clip_norm: f64,
    rng: &mut R,
) -> Result<(), DpError> {
    if !(noise_multiplier > 0.0 && noise_multiplier.is_finite()) {
        return Err(DpError::NoiseMultiplier(noise_multiplier));
    }
    if !(clip_norm > 0.0 && clip_norm.is_finite()) {
        return Err(DpError::ClipNorm(clip_norm));
    }
    let std_dev = noise_multiplier * clip_norm;
    for v in values.iter_mut() {
        let z: f64 = StandardNormal.sample(rng);
        *v += std_dev * z;
    }
    Ok(())
}

/// Adds independent Skellam noise `Poisson(mu) − Poisson(mu)` (mean 0, variance `2·mu`) to
/// every word of a fixed-point vector, read as `i32` two's complement and added with
/// wrapping, i.e. in Z_(2^32) like everything secure aggregation sums.
///
/// In the accountant's terms ([`rdp_skellam`](crate::accountant::rdp_skellam)) the noise
/// variance is `2·mu`; for the masked sum of `t` partners it is `2 Σ mu_k`.
pub fn add_skellam_noise<R: Rng + ?Sized>(
    words: &mut [u32],
    mu: f64,
    rng: &mut R,
) -> Result<(), DpError> {
    if !(mu > 0.0 && mu <= MAX_SKELLAM_MU) {
        return Err(DpError::SkellamMu(mu));
    }
    let poisson = Poisson::new(mu).map_err(|_| DpError::SkellamMu(mu))?;
    for w in words.iter_mut() {
        let plus = poisson.sample(rng) as i64;
        let minus = poisson.sample(rng) as i64;
        // Truncating the i64 to 32 bits is reduction mod 2^32: exactly two's complement.
        *w = w.wrapping_add((plus - minus) as u32);
    }
    Ok(())
}

/// An upper bound on `P(|X| ≥ margin)` for Skellam noise `X = Poisson(mu_total) −
/// Poisson(mu_total)` (variance `2·mu_total`), e.g. the total noise on one coordinate of a
/// masked sum.
///
/// The Chernoff bound: `E[e^{tX}] = exp(2μ(cosh t − 1))`, so for `m > 0`
/// `P(X ≥ m) ≤ exp(2μ(cosh t − 1) − t m)`, minimised at `sinh t = m/(2μ)`. With
/// `r = m/(2μ)` and symmetry:
///
/// ```text
/// P(|X| ≥ m) ≤ 2 · exp(2μ(√(1 + r²) − 1) − m · asinh r)
/// ```
///
/// For `m ≪ μ` this is the Gaussian tail `2 exp(−m²/(4μ))`; for `m ≫ μ` it decays like
/// `(eμ/m)^m`, faster than any exponential (X is sub-exponential, in fact lighter-tailed).
/// Returns 1 for `margin ≤ 0` or NaN arguments (no information), 0 for `mu_total = 0`.
pub fn skellam_tail_bound(mu_total: f64, margin: f64) -> f64 {
    if margin.is_nan() || mu_total.is_nan() || margin <= 0.0 || mu_total < 0.0 {
        return 1.0;
    }
    if mu_total == 0.0 {
        return 0.0;
    }
    let r = margin / (2.0 * mu_total);
    // √(1 + r²) − 1 written without cancellation.
    let cosh_minus_one = r * r / ((1.0 + r * r).sqrt() + 1.0);
    let exponent = 2.0 * mu_total * cosh_minus_one - margin * r.asinh();
    (2.0 * exponent.exp()).min(1.0)
}

/// An upper bound on the probability that Skellam noise with total Poisson mean `mu_total`
/// per coordinate makes a 32-bit fixed-point sum wrap in any of `dim` coordinates, when every
/// coordinate of the noiseless sum satisfies `|sum| ≤ signal_bound` (in encoded units).
///
/// A coordinate cannot wrap while `|noise| ≤ 2^31 − 1 − signal_bound`, so the bound is
/// `min(1, dim · skellam_tail_bound(mu_total, 2^31 − signal_bound))` (union bound). An
/// encoding that uses the whole `i32` range for the signal, like
/// [`FixedPoint::for_sum`](crate::codec::FixedPoint::for_sum) does, leaves no margin: size it
/// for a smaller bound or more parties so that this probability is negligible (say < 1e-9).
pub fn skellam_wrap_probability(mu_total: f64, signal_bound: u64, dim: usize) -> f64 {
    let limit: u64 = 1 << 31;
    if dim == 0 {
        return 0.0;
    }
    if signal_bound >= limit {
        return 1.0;
    }
    let margin = (limit - signal_bound) as f64;
    (dim as f64 * skellam_tail_bound(mu_total, margin)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Sample mean and (unbiased) variance.
    fn moments(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn gaussian_noise_has_the_target_variance() {
        let (sigma, clip) = (1.5, 2.0);
        let n = 200_000;
        let mut v = vec![0.0; n];
        add_gaussian_noise(&mut v, sigma, clip, &mut StdRng::seed_from_u64(7)).unwrap();
        let (mean, var) = moments(&v);
        let target: f64 = (sigma * clip) * (sigma * clip);
        // Standard errors: mean √(var/n); variance var·√(2/(n−1)) for a Gaussian.
        let se_mean = (target / n as f64).sqrt();
        let se_var = target * (2.0 / (n as f64 - 1.0)).sqrt();
        assert!(mean.abs() < 5.0 * se_mean, "mean {mean} (se {se_mean})");
        assert!(
            (var - target).abs() < 5.0 * se_var,
            "var {var} vs {target} (se {se_var})"
        );
    }

    fn check_skellam_moments(mu: f64, n: usize, seed: u64) {
        let mut words = vec![0u32; n];
        add_skellam_noise(&mut words, mu, &mut StdRng::seed_from_u64(seed)).unwrap();
        let xs: Vec<f64> = words.iter().map(|&w| f64::from(w as i32)).collect();
        let (mean, var) = moments(&xs);
        let target = 2.0 * mu;
        // Cumulants of Poisson(μ) − Poisson(μ): κ2 = κ4 = 2μ, so the fourth central moment
        // is 2μ + 3(2μ)² and the sample variance has standard error √((m4 − var²)/n).
        let m4 = target + 3.0 * target * target;
        let se_var = ((m4 - target * target) / n as f64).sqrt();
        let se_mean = (target / n as f64).sqrt();
        assert!(
            mean.abs() < 5.0 * se_mean,
            "mu {mu}: mean {mean} (se {se_mean})"
        );
        assert!(
            (var - target).abs() < 5.0 * se_var,
            "mu {mu}: var {var} vs {target} (se {se_var})"
        );
    }

    #[test]
    fn skellam_noise_has_the_target_variance() {
        check_skellam_moments(3.7, 200_000, 11); // Poisson by inversion
        check_skellam_moments(2.5e5, 100_000, 12); // Poisson by rejection
    }

    #[test]
    fn skellam_noise_wraps_in_two_complement() {
        let signal: Vec<i32> = vec![0, 1, -1, i32::MAX, i32::MIN, 123_456, -987_654];
        let mut noised: Vec<u32> = signal.iter().map(|&s| s as u32).collect();
        let mut noise_only = vec![0u32; signal.len()];
        add_skellam_noise(&mut noised, 50.0, &mut StdRng::seed_from_u64(3)).unwrap();
        add_skellam_noise(&mut noise_only, 50.0, &mut StdRng::seed_from_u64(3)).unwrap();
        for ((&s, &w), &z) in signal.iter().zip(&noised).zip(&noise_only) {
            assert_eq!(w, (s as u32).wrapping_add(z));
            assert_eq!((w as i32).wrapping_sub(s), z as i32);
        }
        // Small noise around 0 reads back as small signed values.
        assert!(noise_only.iter().all(|&z| (z as i32).abs() < 100));
    }

    #[test]
    fn invalid_noise_parameters_are_refused() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut v = vec![0.0; 3];
        assert_eq!(
            add_gaussian_noise(&mut v, 0.0, 1.0, &mut rng),
            Err(DpError::NoiseMultiplier(0.0))
        );
        assert_eq!(
            add_gaussian_noise(&mut v, 1.0, -1.0, &mut rng),
            Err(DpError::ClipNorm(-1.0))
        );
        assert!(matches!(
            add_gaussian_noise(&mut v, f64::NAN, 1.0, &mut rng),
            Err(DpError::NoiseMultiplier(_))
        ));
        assert_eq!(v, vec![0.0; 3]);
        let mut w = vec![5u32; 3];
        assert_eq!(
            add_skellam_noise(&mut w, 0.0, &mut rng),
            Err(DpError::SkellamMu(0.0))
        );
        assert!(add_skellam_noise(&mut w, f64::INFINITY, &mut rng).is_err());
        assert_eq!(w, vec![5; 3]);
        assert_eq!(clip_l2(&mut v, 0.0), Err(DpError::ClipNorm(0.0)));
        assert_eq!(
            DpError::ClipNorm(0.0).to_string(),
            "clip norm = 0 must be positive and finite"
        );
    }

    #[test]
    fn clipping_returns_the_pre_clip_norm() {
        let mut g = vec![3.0, 4.0];
        assert_eq!(clip_l2(&mut g, 1.0).unwrap(), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-15 && (g[1] - 0.8).abs() < 1e-15);
        let mut short = vec![0.3, 0.4];
        assert_eq!(clip_l2(&mut short, 1.0).unwrap(), 0.5);
        assert_eq!(short, vec![0.3, 0.4]);
        // Huge but finite entries: no overflow in the norm.
        let mut huge = vec![1e300, 1e300];
        let norm = clip_l2(&mut huge, 1.0).unwrap();
        assert!((norm / (1e300 * 2f64.sqrt()) - 1.0).abs() < 1e-15);
        assert!(l2_norm(&huge) <= 1.0);
        // Non-finite gradients are dropped.
        let mut bad = vec![1.0, f64::NAN, 2.0];
        assert!(clip_l2(&mut bad, 1.0).unwrap().is_nan());
        assert_eq!(bad, vec![0.0; 3]);
        let mut inf = vec![1.0, f64::NEG_INFINITY];
        assert_eq!(clip_l2(&mut inf, 1.0).unwrap(), f64::INFINITY);
        assert_eq!(inf, vec![0.0; 2]);
    }

    /// Standard normal CDF via Abramowitz & Stegun 7.1.26 for erf (absolute error < 1.5e-7,
    /// far below the Kolmogorov–Smirnov critical value used with it).
    fn normal_cdf(x: f64) -> f64 {
        let z = x.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * z);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erf = 1.0 - poly * (-z * z).exp();
        if x >= 0.0 {
            0.5 * (1.0 + erf)
        } else {
            0.5 * (1.0 - erf)
        }
    }

    /// The noise, divided by σ·C, follows N(0, 1): one-sample Kolmogorov–Smirnov with
    /// n = 20,000. The critical value at α = 0.001 is 1.949/√n ≈ 0.0138 (a false alarm
    /// probability of 0.1 % for a correct sampler; the seed is fixed, so the run is
    /// deterministic).
    #[test]
    fn gaussian_noise_passes_kolmogorov_smirnov() {
        let (sigma, clip) = (0.7, 3.0);
        let n = 20_000;
        let base: Vec<f64> = (0..n).map(|k| f64::from(k % 5) - 2.0).collect();
        let mut v = base.clone();
        add_gaussian_noise(&mut v, sigma, clip, &mut StdRng::seed_from_u64(17)).unwrap();
        let mut z: Vec<f64> = v
            .iter()
            .zip(&base)
            .map(|(x, b)| (x - b) / (sigma * clip))
            .collect();
        z.sort_by(f64::total_cmp);
        let nf = n as f64;
        let d = z
            .iter()
            .enumerate()
            .map(|(k, &x)| {
                let cdf = normal_cdf(x);
                (cdf - k as f64 / nf).max((k + 1) as f64 / nf - cdf)
            })
            .fold(0.0, f64::max);
        let critical = 1.949 / nf.sqrt();
        assert!(d < critical, "KS D = {d} >= {critical}");
        let (mean, var) = moments(&z);
        // Standard errors 1/√n ≈ 0.007 and √(2/n) ≈ 0.01.
        assert!(mean.abs() < 0.035, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }

    #[test]
    fn zero_clip_norm_is_refused_everywhere() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut v = vec![1.0, 2.0];
        assert_eq!(
            add_gaussian_noise(&mut v, 1.0, 0.0, &mut rng),
            Err(DpError::ClipNorm(0.0))
        );
        assert_eq!(
            add_gaussian_noise(&mut v, 1.0, f64::INFINITY, &mut rng),
            Err(DpError::ClipNorm(f64::INFINITY))
        );
        assert_eq!(clip_l2(&mut v, 0.0), Err(DpError::ClipNorm(0.0)));
        assert_eq!(clip_l2(&mut v, -0.0), Err(DpError::ClipNorm(-0.0)));
        assert!(matches!(
            clip_l2(&mut v, f64::NAN),
            Err(DpError::ClipNorm(_))
        ));
        assert_eq!(v, vec![1.0, 2.0]);
    }

    /// Above 2^53 a Poisson draw is no longer an exact integer in f64; `rand_distr` itself
    /// accepts means up to about 1.8e19, so the bound must be checked here.
    #[test]
    fn skellam_mu_above_two_to_the_53_is_refused() {
        let mut rng = StdRng::seed_from_u64(1);
        for mu in [MAX_SKELLAM_MU.next_up(), 2.0 * MAX_SKELLAM_MU, 1e18, 1.8e19] {
            let mut w = vec![7u32; 2];
            assert_eq!(
                add_skellam_noise(&mut w, mu, &mut rng),
                Err(DpError::SkellamMu(mu))
            );
            assert_eq!(w, vec![7; 2]);
        }
        let mut w = vec![0u32; 2];
        add_skellam_noise(&mut w, MAX_SKELLAM_MU, &mut rng).unwrap();
    }

    #[test]
    fn skellam_tail_bound_without_margin_is_one() {
        assert_eq!(skellam_tail_bound(0.0, 0.0), 1.0);
        assert_eq!(skellam_tail_bound(5.0, -40.0), 1.0);
        assert_eq!(skellam_tail_bound(5.0, 0.0), 1.0);
        assert_eq!(skellam_tail_bound(0.0, -1.0), 1.0);
        assert_eq!(skellam_tail_bound(-1.0, 3.0), 1.0);
        assert_eq!(skellam_tail_bound(5.0, f64::NAN), 1.0);
    }

    #[test]
    fn clipping_halves_a_vector_of_twice_the_norm_exactly() {
        // Norm 2 (exactly, all entries ±1) clipped to 1: exactly v/2.
        let mut v = vec![1.0, -1.0, 1.0, -1.0];
        assert_eq!(clip_l2(&mut v, 1.0).unwrap(), 2.0);
        assert_eq!(v, vec![0.5, -0.5, 0.5, -0.5]);
        // Norm 10 clipped to 5.
        let mut v = vec![6.0, -8.0];
        assert_eq!(clip_l2(&mut v, 5.0).unwrap(), 10.0);
        assert_eq!(v, vec![3.0, -4.0]);
        // Norm C/2 and norm exactly C: untouched.
        let mut v = vec![1.5, 2.0];
        assert_eq!(clip_l2(&mut v, 5.0).unwrap(), 2.5);
        assert_eq!(v, vec![1.5, 2.0]);
        let mut v = vec![-3.0, 4.0];
        assert_eq!(clip_l2(&mut v, 5.0).unwrap(), 5.0);
        assert_eq!(v, vec![-3.0, 4.0]);
    }

    proptest! {
        #[test]
        fn clipped_norm_never_exceeds_the_bound(
            mut g in prop::collection::vec(-1e6f64..1e6, 0..200),
            clip in 1e-6f64..1e3,
        ) {
            let before = g.clone();
            let norm = clip_l2(&mut g, clip).unwrap();
            prop_assert!(l2_norm(&g) <= clip);
            prop_assert_eq!(norm, l2_norm(&before));
            if norm <= clip {
                prop_assert_eq!(&g, &before);
            } else {
                // Same direction: g = c · before with c = clip / norm (up to rounding).
                let c = clip / norm;
                for (x, y) in g.iter().zip(&before) {
                    prop_assert!((x - c * y).abs() <= 1e-12 * clip);
                }
            }
        }
    }

    /// Exact `P(|X| ≥ m)` for `X = Poisson(mu) − Poisson(mu)`, by summing the joint pmf.
    fn skellam_tail_exact(mu: f64, m: i64) -> f64 {
        let k_max = (mu + 40.0 * mu.sqrt() + 60.0) as usize;
        let mut pmf = vec![(-mu).exp(); k_max + 1];
        for k in 1..=k_max {
            pmf[k] = pmf[k - 1] * mu / k as f64;
        }
        let mut tail = 0.0;
        for (a, &pa) in pmf.iter().enumerate() {
            for (b, &pb) in pmf.iter().enumerate() {
                if (a as i64 - b as i64).abs() >= m {
                    tail += pa * pb;
                }
            }
        }
        tail
    }

    #[test]
    fn skellam_tail_bound_dominates_the_exact_tail() {
        for mu in [0.5, 2.0, 5.0, 10.0] {
            for m in 1..=40 {
                let exact = skellam_tail_exact(mu, m);
                let bound = skellam_tail_bound(mu, m as f64);
                assert!(
                    bound >= exact,
                    "mu {mu}, m {m}: bound {bound} < exact {exact}"
                );
                // Chernoff is loose only by a polynomial factor in m (measured: < 1.9·m here).
                if exact > 1e-250 {
                    assert!(
                        bound <= 1.0 && bound <= 3.0 * (m as f64) * exact,
                        "mu {mu}, m {m}: bound {bound} vs exact {exact}"
                    );
                }
            }
        }
        assert_eq!(skellam_tail_bound(5.0, 0.0), 1.0);
        assert_eq!(skellam_tail_bound(0.0, 1.0), 0.0);
        assert_eq!(skellam_tail_bound(f64::NAN, 1.0), 1.0);
    }

    #[test]
    fn wrap_probability_of_a_fixed_point_sum() {
        // 100 partners at mu 1e6 each: std ≈ √(2e8) ≈ 14142; a margin of 2^20 is ~74 std.
        let p = skellam_wrap_probability(1e8, (1 << 31) - (1 << 20), 1_000_000);
        assert!(p < 1e-100, "{p}");
        // No margin at all: certain failure by the bound.
        assert_eq!(skellam_wrap_probability(1e8, 1 << 31, 10), 1.0);
        // A margin of about one standard deviation is useless.
        assert_eq!(skellam_wrap_probability(1e8, (1 << 31) - 14_000, 10), 1.0);
        assert_eq!(skellam_wrap_probability(1e8, 0, 0), 0.0);
    }
}
