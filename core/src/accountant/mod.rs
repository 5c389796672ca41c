//! Rényi-DP privacy accounting: what a job has spent, in (ε, δ).
//!
//! Every noisy release fedmark makes is one of two mechanisms, and both have closed-form or
//! quickly computable Rényi differential privacy (RDP) curves `order ↦ rdp(order)`:
//!
//! - the **Poisson-subsampled Gaussian mechanism** (DP-SGD steps in `record` mode; the
//!   coordinator's Gaussian noise in `partner-central` mode, unsubsampled when every partner
//!   takes part), under add/remove-one adjacency, following Mironov, Talwar and Zhang (2019),
//!   "Rényi Differential Privacy of the Sampled Gaussian Mechanism". Integer orders use the
//!   exact binomial expansion, fractional orders the two-sided series of §3.3 of that paper,
//!   both summed in log space;
//! - the **Skellam mechanism** (integer noise added by the partners before masking in
//!   `partner-distributed` mode), following Agarwal, Kairouz and Liu (2021), "The Skellam
//!   Mechanism for Differentially Private Federated Learning".
//!
//! RDP composes by addition per order, so an [`Accountant`] keeps one running sum per order
//! over any mix of events and converts to (ε, δ) on demand, minimising over its orders:
//!
//! ```text
//! ε(δ) = min_α max(0, rdp(α) + ln((α−1)/α) − (ln δ + ln α)/(α−1))
//! ```
//!
//! which is Canonne, Kamath and Steinke (2020), Prop. 12 (also Asoodeh et al. 2021), tighter
//! than the classic `rdp(α) + ln(1/δ)/(α−1)` of Mironov (2017) for every α > 1. The
//! Bretagnolle–Huber bound `TV ≤ √(1 − e^(−KL))` with `KL ≤ rdp(α)` gives ε = 0 when
//! `1 − e^(−rdp(α)) ≤ δ²`.
//!
//! The orders tracked by default ([`default_orders`]) are 1.1, 1.2, …, 10.9 (step 0.1), every
//! integer 11..=64, then 128, 256, 512 and 1024: the shape of the grid of Google's
//! `dp-accounting`, a little denser. Any order gives a valid bound, so a denser grid only
//! tightens ε; large orders matter when ε is small.
//!
//! Beside the RDP sums, an [`Accountant`] keeps the list of the events it was charged
//! ([`Event`]: mechanism, parameters, count; merged when the parameters are identical). When
//! every event is a (subsampled) Gaussian, [`Accountant::epsilon`] also composes their
//! privacy loss distribution ([`crate::pld`]) and reports the smaller of the two ε's, both
//! valid upper bounds, saying which one it was ([`Bound`]); in practice PLD, 5–90 % below
//! RDP. Skellam events, and ledgers serialised before events were recorded, are accounted by
//! RDP alone.
//!
//! [`calibrate_noise_multiplier`] inverts the accountant: the smallest noise multiplier whose
//! composed ε stays within a target, by the tightest accountant (PLD; RDP on request with
//! [`calibrate_noise_multiplier_with`]).
//!
//! Everything here is pure arithmetic on `f64`: no I/O, no randomness.

use serde::{Deserialize, Serialize};

pub mod pld;

use pld::{ComposedPld, GaussianEvent};

/// Why a privacy computation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountantError {
    /// A Poisson sampling rate outside (0, 1], or NaN.
    #[error("sampling rate q = {0} is outside (0, 1]")]
    SamplingRate(f64),
    /// A noise multiplier (noise standard deviation over L2 sensitivity) that is not a
    /// positive finite number.
    #[error("noise multiplier sigma = {0} must be positive and finite")]
    NoiseMultiplier(f64),
    /// A δ outside (0, 1), or NaN.
    #[error("delta = {0} is outside (0, 1)")]
    Delta(f64),
    /// An ε that is negative, infinite or NaN (or, as a calibration target, not positive).
    #[error("epsilon = {0} must be a positive finite number")]
    Epsilon(f64),
    /// An event composed zero times: almost always a caller bug, so it is refused rather
    /// than silently charging nothing.
    #[error("steps = 0: an event must be composed at least once")]
    ZeroSteps,
    /// A Rényi order that is not finite, not above 1, or above [`MAX_ORDER`].
    #[error("rdp order {0} must be finite, > 1 and <= {MAX_ORDER}")]
    Order(f64),
    /// No orders at all, or orders and RDP values of different lengths.
    #[error("orders: {0}")]
    Orders(&'static str),
    /// A Skellam-mechanism parameter (sensitivity or noise variance) that is not a positive
    /// finite number.
    #[error("skellam {name} = {value} must be positive and finite")]
    Skellam {
        /// Which parameter: `l2_sensitivity`, `l1_sensitivity` or `variance`.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// An RDP value that is negative or NaN (only from a corrupted ledger).
    #[error("rdp value {0} at some order is negative or NaN")]
    RdpValue(f64),
    /// A privacy loss distribution would need more grid points than
    /// [`pld::MAX_POINTS`] (only for absurd parameters, e.g. ε in the millions).
    #[error("privacy loss distribution needs {points} grid points, more than the limit")]
    PldGrid {
        /// Grid points needed.
        points: u64,
    },
    /// One release planned beside the others spends more than the whole budget by itself.
    #[error(
        "{release} alone spends epsilon {epsilon:.4}, above the budget of {budget}: raise its noise or the budget"
    )]
    ReleaseOverBudget {
        /// Which release.
        release: &'static str,
        /// Its ε at the job's δ.
        epsilon: f64,
        /// The budget.
        budget: f64,
    },
    /// No noise multiplier up to [`MAX_NOISE_MULTIPLIER`] meets the target.
    #[error(
        "target epsilon = {target_epsilon} is unreachable at delta = {delta}, q = {q}, steps = {steps} with noise multiplier <= {MAX_NOISE_MULTIPLIER}"
    )]
    Unreachable {
        /// The target ε.
        target_epsilon: f64,
        /// The δ.
        delta: f64,
        /// The sampling rate.
        q: f64,
        /// The number of composed steps.
        steps: u64,
    },
}

/// Largest Rényi order accepted. Integer orders cost O(order) to evaluate.
pub const MAX_ORDER: f64 = 65_536.0;

/// Largest noise multiplier [`calibrate_noise_multiplier`] will try.
pub const MAX_NOISE_MULTIPLIER: f64 = 1.0e6;

/// Orders below this are skipped by the (ε, δ) conversion, whose formula is numerically
/// unstable as α → 1 and useless there anyway (as in `dp-accounting`).
const MIN_CONVERSION_ORDER: f64 = 1.01;

/// A series term below `exp(SERIES_CUTOFF)` (the sums are ≥ 1) no longer matters.
const SERIES_CUTOFF: f64 = -30.0;

/// Hard cap on terms of the fractional-order series, in case it fails to converge.
const MAX_SERIES_TERMS: usize = 100_000;

/// The orders an [`Accountant`] tracks by default, ascending: 1.1, 1.2, …, 10.9 (step 0.1),
/// then every integer 11..=64, then 128, 256, 512, 1024.
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (11..=109).map(|k| f64::from(k) / 10.0).collect();
    orders.extend((11..=64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

pub(crate) fn check_q(q: f64) -> Result<(), AccountantError> {
    if q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(AccountantError::SamplingRate(q))
    }
}

pub(crate) fn check_sigma(sigma: f64) -> Result<(), AccountantError> {
    if sigma > 0.0 && sigma.is_finite() {
        Ok(())
    } else {
        Err(AccountantError::NoiseMultiplier(sigma))
    }
}

pub(crate) fn check_delta(delta: f64) -> Result<(), AccountantError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountantError::Delta(delta))
    }
}

fn check_order(order: f64) -> Result<(), AccountantError> {
    if order > 1.0 && order <= MAX_ORDER {
        Ok(())
    } else {
        Err(AccountantError::Order(order))
    }
}

fn check_positive(name: &'static str, value: f64) -> Result<(), AccountantError> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(AccountantError::Skellam { name, value })
    }
}

/// RDP at `order` of the Gaussian mechanism with noise multiplier `sigma`
/// (noise standard deviation / L2 sensitivity): exactly `order / (2 sigma²)`.
pub fn rdp_gaussian(sigma: f64, order: f64) -> Result<f64, AccountantError> {
    check_sigma(sigma)?;
    check_order(order)?;
    Ok(order / (2.0 * sigma * sigma))
}

/// RDP at `order` of one step of the Poisson-subsampled Gaussian mechanism: each record is
/// included independently with probability `q`, the sum of the included (clipped) records
/// gets Gaussian noise of standard deviation `sigma` × the clip norm. Add/remove adjacency.
///
/// `q = 1` is the plain Gaussian mechanism, `order / (2 sigma²)`. Otherwise this is
/// `ln A_α / (α − 1)` with `A_α = E_{z∼N(0,σ²)}[((1 − q) + q·e^{(2z−1)/(2σ²)})^α]`
/// (Mironov et al. 2019), computed exactly for integer orders and by a convergent series for
/// fractional ones. RDP is non-decreasing in the order, so a fractional-order value that is
/// not finite or falls below the value at `⌊order⌋` betrays a numerical failure of the series;
/// the value at `⌈order⌉`, a valid (larger) bound, is returned instead.
pub fn rdp_subsampled_gaussian(q: f64, sigma: f64, order: f64) -> Result<f64, AccountantError> {
    check_q(q)?;
    check_sigma(sigma)?;
    check_order(order)?;
    if q == 1.0 {
        return Ok(order / (2.0 * sigma * sigma));
    }
    if order.fract() == 0.0 {
        return Ok(rdp_from_log_a(log_a_integer(q, sigma, order), order));
    }
    let ceil = || rdp_from_log_a(log_a_integer(q, sigma, order.ceil()), order.ceil());
    let Some(log_a) = log_a_fractional(q, sigma, order) else {
        return Ok(ceil());
    };
    let rdp = rdp_from_log_a(log_a, order);
    let floor = order.floor();
    if floor >= 2.0 && rdp < rdp_from_log_a(log_a_integer(q, sigma, floor), floor) * (1.0 - 1e-9) {
        return Ok(ceil());
    }
    Ok(rdp)
}

/// `ln A_α / (α − 1)`. A_α ≥ 1 by Jensen; rounding may push `ln A_α` a hair below 0.
fn rdp_from_log_a(log_a: f64, alpha: f64) -> f64 {
    (log_a / (alpha - 1.0)).max(0.0)
}

/// `ln A_α` for an integer `alpha`: `ln Σ_i C(α,i) (1−q)^{α−i} q^i e^{(i²−i)/(2σ²)}`.
fn log_a_integer(q: f64, sigma: f64, alpha: f64) -> f64 {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let mut log_binom = 0.0; // ln C(α, 0)
    let mut acc = f64::NEG_INFINITY;
    let mut i = 0.0;
    while i <= alpha {
        if i > 0.0 {
            log_binom += (alpha - i + 1.0).ln() - i.ln();
        }
        let term = log_binom + i * log_q + (alpha - i) * log_1mq + (i * i - i) / two_var;
        acc = log_add(acc, term);
        i += 1.0;
    }
    acc
}

/// `ln A_α` for a fractional `alpha` (Mironov et al. 2019, §3.3). The integral is split at
/// `z0`, where the two mixture components have equal weight, and each side is expanded in
/// the binomial series that converges there:
///
/// ```text
/// A_α = Σ_i C(α,i) q^i (1−q)^{α−i} e^{(i²−i)/(2σ²)} · ½ erfc((i − z0)/(√2 σ))
///     + Σ_i C(α,i) q^{α−i} (1−q)^i e^{(j²−j)/(2σ²)} · ½ erfc((z0 − j)/(√2 σ)),  j = α − i
/// z0 = σ² ln(1/q − 1) + ½
/// ```
///
/// `C(α, i)` changes sign for `i > α`, so terms are accumulated with their signs. Returns
/// `None` if the series does not settle or the sum is not a positive finite number.
fn log_a_fractional(q: f64, sigma: f64, alpha: f64) -> Option<f64> {
    let log_q = q.ln();
    let log_1mq = (-q).ln_1p();
    let two_var = 2.0 * sigma * sigma;
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let erfc_scale = std::f64::consts::SQRT_2 * sigma;
    let log_half = -std::f64::consts::LN_2;

    let mut sum0 = SignedLog::ZERO;
    let mut sum1 = SignedLog::ZERO;
    // ln |C(α, i)| and its sign, updated by C(α, i) = C(α, i−1) (α − i + 1) / i.
    let mut log_binom = 0.0;
    let mut positive = true;
    for n in 0..MAX_SERIES_TERMS {
        let i = n as f64;
        if n > 0 {
            let factor = alpha - i + 1.0;
            if factor < 0.0 {
                positive = !positive;
            }
            log_binom += factor.abs().ln() - i.ln();
        }
        let j = alpha - i;
        let log_t0 = log_binom + i * log_q + j * log_1mq;
        let log_t1 = log_binom + j * log_q + i * log_1mq;
        let log_e0 = log_half + log_erfc((i - z0) / erfc_scale);
        let log_e1 = log_half + log_erfc((z0 - j) / erfc_scale);
        let log_s0 = log_t0 + (i * i - i) / two_var + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_var + log_e1;
        sum0 = sum0.add(SignedLog::new(log_s0, positive));
        sum1 = sum1.add(SignedLog::new(log_s1, positive));
        if log_s0.max(log_s1) < SERIES_CUTOFF && i > alpha {
            let total = sum0.add(sum1);
            return (total.positive && total.log_abs.is_finite()).then_some(total.log_abs);
        }
        if log_s0.is_nan() || log_s1.is_nan() {
            return None;
        }
    }
    None
}

/// A real number as (ln |x|, sign), for sums of terms of mixed sign in log space.
#[derive(Debug, Clone, Copy)]
struct SignedLog {
    log_abs: f64,
    positive: bool,
}

impl SignedLog {
    const ZERO: Self = Self {
        log_abs: f64::NEG_INFINITY,
        positive: true,
    };

    fn new(log_abs: f64, positive: bool) -> Self {
        Self { log_abs, positive }
    }

    fn add(self, other: Self) -> Self {
        if self.positive == other.positive {
            Self::new(log_add(self.log_abs, other.log_abs), self.positive)
        } else if self.log_abs > other.log_abs {
            Self::new(log_sub(self.log_abs, other.log_abs), self.positive)
        } else if other.log_abs > self.log_abs {
            Self::new(log_sub(other.log_abs, self.log_abs), other.positive)
        } else {
            Self::ZERO
        }
    }
}

/// `ln(e^a + e^b)` without overflow.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    hi + (lo - hi).exp().ln_1p()
}

/// `ln(e^a − e^b)` for `a > b`.
fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        return a;
    }
    a + (-(b - a).exp_m1()).ln()
}

/// `ln erfc(x)` accurate to a few ulps for every `x`, including far into the upper tail
/// where `erfc(x)` itself underflows (it is about `−x²` there).
///
/// - `x < 0`: `erfc(x) = 2 − erfc(−x) ∈ (1, 2]`, no cancellation.
/// - `0 ≤ x < 1.5`: `1 − erf(x)` with erf from its all-positive power series
///   `erf(x) = 2/√π · e^{−x²} Σ_n 2^n x^{2n+1} / (2n+1)!!`; at most ~1.5 digits lost to
///   the subtraction.
/// - `1.5 ≤ x < 10`: Laplace's continued fraction
///   `erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))`
///   by the modified Lentz method, kept in log space.
/// - `x ≥ 10`: the asymptotic expansion
///   `erfc(x) ≈ e^{−x²}/(x√π) · Σ_n (−1)^n (2n−1)!! / (2x²)^n`, truncated once the terms
///   fall below 1e-17 (or, never reached for x ≥ 10, start to grow).
pub(crate) fn log_erfc(x: f64) -> f64 {
    const CF_FROM: f64 = 1.5;
    const ASYMPTOTIC_FROM: f64 = 10.0;
    let half_ln_pi = 0.5 * std::f64::consts::PI.ln();
    if x.is_nan() {
        x
    } else if x < 0.0 {
        (2.0 - log_erfc(-x).exp()).ln()
    } else if x < CF_FROM {
        (-erf_series(x)).ln_1p()
    } else if x < ASYMPTOTIC_FROM {
        -x * x - half_ln_pi - erfc_continued_fraction_denominator(x).ln()
    } else {
        let inv_two_x2 = 1.0 / (2.0 * x * x);
        let mut sum = 1.0;
        let mut term: f64 = 1.0;
        let mut n = 1.0;
        loop {
            let next = -term * (2.0 * n - 1.0) * inv_two_x2;
            if next.abs() >= term.abs() || next.abs() < 1e-17 {
                break;
            }
            sum += next;
            term = next;
            n += 1.0;
        }
        -x * x - x.ln() - half_ln_pi + sum.ln()
    }
}

/// erf(x) for `0 ≤ x` small, from the positive series `2/√π e^{−x²} Σ 2^n x^{2n+1}/(2n+1)!!`.
fn erf_series(x: f64) -> f64 {
    let two_x2 = 2.0 * x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 1.0;
    while term > 1e-17 * sum {
        term *= two_x2 / (2.0 * n + 1.0);
        sum += term;
        n += 1.0;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

/// The denominator `x + (1/2)/(x + 1/(x + (3/2)/(x + …)))` of Laplace's continued fraction
/// for erfc, by the modified Lentz method. Converges for every `x > 0`, quickly for `x ≥ 1.5`.
fn erfc_continued_fraction_denominator(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = f;
    let mut d = 0.0;
    for n in 1..10_000 {
        let a = f64::from(n) / 2.0;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        d = 1.0 / d;
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    f
}

/// RDP at `order` of one release of the Skellam mechanism (Agarwal, Kairouz and Liu 2021,
/// Thm. 3.5): an integer vector with L2 sensitivity `l2_sensitivity` and L1 sensitivity
/// `l1_sensitivity` (both in integer units, i.e. after fixed-point scaling and rounding)
/// gets, per coordinate, independent noise `Poisson(λ) − Poisson(λ)` of total
/// **`variance` = 2λ** (the paper's μ). For integer α > 1:
///
/// ```text
/// rdp(α) = α Δ2² / (2 var) + min( ((2α − 1) Δ2² + 6 Δ1) / (4 var²),  3 Δ1 / (2 var) )
/// ```
///
/// The first term is the Gaussian mechanism's at the same variance; the second is the price
/// of discreteness and vanishes as the variance grows. Fractional orders are charged the
/// value at `⌈order⌉` (valid, as RDP is non-decreasing in the order).
///
/// With `t` partners each adding `Poisson(λ_k) − Poisson(λ_k)`, the sum carries
/// `variance = 2 Σ λ_k` (Skellam noise is closed under summation); charge only the noise of
/// the partners guaranteed to survive. For integer vectors `Δ1 ≤ min(Δ2², √d · Δ2)`.
pub fn rdp_skellam(
    l2_sensitivity: f64,
    l1_sensitivity: f64,
    variance: f64,
    order: f64,
) -> Result<f64, AccountantError> {
    check_positive("l2_sensitivity", l2_sensitivity)?;
    check_positive("l1_sensitivity", l1_sensitivity)?;
    check_positive("variance", variance)?;
    check_order(order)?;
    let alpha = order.ceil();
    let l2_sq = l2_sensitivity * l2_sensitivity;
    let gaussian = alpha * l2_sq / (2.0 * variance);
    let discrete = (((2.0 * alpha - 1.0) * l2_sq + 6.0 * l1_sensitivity)
        / (4.0 * variance * variance))
        .min(3.0 * l1_sensitivity / (2.0 * variance));
    Ok(gaussian + discrete)
}

/// The smallest ε (clamped at 0) such that a mechanism with RDP curve `rdp` over `orders`
/// is (ε, `delta`)-DP, and the order that attains it. See the module doc for the bound used.
/// ε is `+∞` if no order gives a finite bound.
pub fn epsilon_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    delta: f64,
) -> Result<(f64, f64), AccountantError> {
    check_delta(delta)?;
    check_curve(orders, rdp)?;
    let log_delta = delta.ln();
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            // 1 − e^{−r} < δ²: the Bretagnolle–Huber bound already gives TV ≤ δ.
            0.0
        } else if a > MIN_CONVERSION_ORDER {
            r + (-1.0 / a).ln_1p() - (log_delta + a.ln()) / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// The smallest δ such that a mechanism with RDP curve `rdp` over `orders` is
/// (`epsilon`, δ)-DP, and the order that attains it: the inverse of [`epsilon_from_rdp`],
/// also using the Bretagnolle–Huber bound `δ ≤ √(1 − e^{−rdp})`.
pub fn delta_from_rdp(
    orders: &[f64],
    rdp: &[f64],
    epsilon: f64,
) -> Result<(f64, f64), AccountantError> {
    if !(epsilon >= 0.0 && epsilon.is_finite()) {
        return Err(AccountantError::Epsilon(epsilon));
    }
    check_curve(orders, rdp)?;
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        let mut log_delta = if r == 0.0 {
            f64::NEG_INFINITY
        } else {
            0.5 * (-(-r).exp_m1()).ln()
        };
        if a > MIN_CONVERSION_ORDER {
            let bound = (a - 1.0) * (r - epsilon + (-1.0 / a).ln_1p()) - a.ln();
            log_delta = log_delta.min(bound);
        }
        if log_delta < best.0 {
            best = (log_delta, a);
        }
    }
    Ok((best.0.exp().min(1.0), best.1))
}

fn check_curve(orders: &[f64], rdp: &[f64]) -> Result<(), AccountantError> {
    if orders.is_empty() {
        return Err(AccountantError::Orders("no orders"));
    }
    if orders.len() != rdp.len() {
        return Err(AccountantError::Orders(
            "orders and rdp values differ in length",
        ));
    }
    for &a in orders {
        check_order(a)?;
    }
    for &r in rdp {
        if r.is_nan() || r < 0.0 {
            return Err(AccountantError::RdpValue(r));
        }
    }
    Ok(())
}

/// Most distinct events a ledger lists; past that it forgets the list and accounts by RDP
/// alone (the list only grows when parameters keep changing, which fedmark's plans do not).
pub const MAX_EVENTS: usize = 256;

/// A composed mechanism in a ledger's event list, with how many times it was charged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mechanism", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The Gaussian mechanism on a Poisson sample (`sampling_rate` = 1: the plain Gaussian
    /// mechanism); see [`rdp_subsampled_gaussian`].
    SubsampledGaussian {
        /// Poisson sampling rate q.
        sampling_rate: f64,
        /// Noise multiplier σ.
        noise_multiplier: f64,
        /// Times composed.
        count: u64,
    },
    /// The discrete Gaussian mechanism on an integer sum
    /// ([`crate::discrete_gaussian`]): charged with the Gaussian's RDP at the same noise
    /// multiplier (CKS 2020, Theorem 14); it has no PLD here.
    DiscreteGaussian {
        /// Noise multiplier σ/Δ.
        noise_multiplier: f64,
        /// Times composed.
        count: u64,
    },
    /// The Skellam mechanism; see [`rdp_skellam`].
    Skellam {
        /// L2 sensitivity (integer units).
        l2_sensitivity: f64,
        /// L1 sensitivity (integer units).
        l1_sensitivity: f64,
        /// Total noise variance per coordinate.
        variance: f64,
        /// Times composed.
        count: u64,
    },
}

impl Event {
    fn count(&self) -> u64 {
        match *self {
            Event::SubsampledGaussian { count, .. }
            | Event::DiscreteGaussian { count, .. }
            | Event::Skellam { count, .. } => count,
        }
    }

    fn count_mut(&mut self) -> &mut u64 {
        match self {
            Event::SubsampledGaussian { count, .. }
            | Event::DiscreteGaussian { count, .. }
            | Event::Skellam { count, .. } => count,
        }
    }

    /// Whether `self` and `other` are the same mechanism with the same parameters.
    fn same_mechanism(&self, other: &Event) -> bool {
        let mut a = *self;
        *a.count_mut() = other.count();
        a == *other
    }

    fn validate(&self) -> Result<(), AccountantError> {
        match *self {
            Event::SubsampledGaussian {
                sampling_rate,
                noise_multiplier,
                ..
            } => {
                check_q(sampling_rate)?;
                check_sigma(noise_multiplier)?;
            }
            Event::DiscreteGaussian {
                noise_multiplier, ..
            } => check_sigma(noise_multiplier)?,
            Event::Skellam {
                l2_sensitivity,
                l1_sensitivity,
                variance,
                ..
            } => {
                check_positive("l2_sensitivity", l2_sensitivity)?;
                check_positive("l1_sensitivity", l1_sensitivity)?;
                check_positive("variance", variance)?;
            }
        }
        if self.count() == 0 {
            return Err(AccountantError::ZeroSteps);
        }
        Ok(())
    }
}

/// Which accountant to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Privacy loss distributions ([`crate::pld`]) where every event has one, taking the
    /// smaller of that and the RDP bound; RDP otherwise. The tightest available.
    #[default]
    Pld,
    /// Rényi DP only.
    Rdp,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Pld => "pld",
            Method::Rdp => "rdp",
        })
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pld" => Ok(Method::Pld),
            "rdp" => Ok(Method::Rdp),
            other => Err(format!("unknown accountant `{other}` (pld or rdp)")),
        }
    }
}

/// Which accountant gave a reported ε (or δ).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// The privacy loss distribution, on a grid with this discretisation interval.
    Pld {
        /// The grid's spacing in privacy loss.
        discretisation: f64,
    },
    /// Rényi DP, minimised at this order.
    Rdp {
        /// The Rényi order that gave the bound.
        order: f64,
    },
}

impl Bound {
    /// The method that gave this bound.
    pub fn method(&self) -> Method {
        match self {
            Bound::Pld { .. } => Method::Pld,
            Bound::Rdp { .. } => Method::Rdp,
        }
    }
}

/// A privacy ledger: the RDP spent so far at each tracked order, composed over any mix of
/// events, and the list of those events (for PLD accounting). Serialisable, so a ledger can
/// be persisted with the release it pays for; deserialisation re-validates the orders,
/// values and events. A ledger serialised before events were recorded (no `events` field)
/// still loads, and is accounted by RDP alone from then on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "LedgerState")]
pub struct Accountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
    /// Every event charged, merged by identical parameters; `None` once unknown (an older
    /// ledger, or more than [`MAX_EVENTS`] distinct events).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
}

/// The unvalidated serialised form of an [`Accountant`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerState {
    orders: Vec<f64>,
    // serde_json writes +inf (an order at which the RDP diverges) as `null`.
    #[serde(deserialize_with = "inf_if_null")]
    rdp: Vec<f64>,
    #[serde(default)]
    events: Option<Vec<Event>>,
}

fn inf_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let values = Vec::<Option<f64>>::deserialize(d)?;
    Ok(values
        .into_iter()
        .map(|v| v.unwrap_or(f64::INFINITY))
        .collect())
}

impl TryFrom<LedgerState> for Accountant {
    type Error = AccountantError;

    fn try_from(state: LedgerState) -> Result<Self, Self::Error> {
        check_curve(&state.orders, &state.rdp)?;
        if let Some(events) = &state.events {
            if events.len() > MAX_EVENTS {
                return Err(AccountantError::Orders("more events than a ledger keeps"));
            }
            for e in events {
                e.validate()?;
            }
        }
        Ok(Self {
            orders: state.orders,
            rdp: state.rdp,
            events: state.events,
        })
    }
}

impl Default for Accountant {
    fn default() -> Self {
        Self::new()
    }
}

impl Accountant {
    /// An empty ledger over [`default_orders`].
    pub fn new() -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        Self {
            orders,
            rdp,
            events: Some(Vec::new()),
        }
    }

    /// An empty ledger over the given orders (each finite, > 1 and ≤ [`MAX_ORDER`]).
    pub fn with_orders(orders: &[f64]) -> Result<Self, AccountantError> {
        let rdp = vec![0.0; orders.len()];
        check_curve(orders, &rdp)?;
        Ok(Self {
            orders: orders.to_vec(),
            rdp,
            events: Some(Vec::new()),
        })
    }

    /// Whether nothing has been charged (zero RDP at every order).
    pub fn is_empty(&self) -> bool {
        self.rdp.iter().all(|&r| r == 0.0)
    }

    /// The tracked orders.
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The RDP spent so far, one value per order in [`Accountant::orders`].
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// The events charged so far, merged by identical parameters, or `None` if the ledger
    /// does not know them (restored from an older ledger, or too many distinct events).
    pub fn events(&self) -> Option<&[Event]> {
        self.events.as_deref()
    }

    /// The events as Gaussian events, if the list is known and every event is a
    /// (subsampled) Gaussian: what [`crate::pld`] can account.
    pub fn gaussian_events(&self) -> Option<Vec<GaussianEvent>> {
        self.events
            .as_ref()?
            .iter()
            .map(|e| match *e {
                Event::SubsampledGaussian {
                    sampling_rate,
                    noise_multiplier,
                    count,
                } => Some(GaussianEvent {
                    sampling_rate,
                    noise_multiplier,
                    count,
                }),
                Event::DiscreteGaussian { .. } | Event::Skellam { .. } => None,
            })
            .collect()
    }

    /// Adds `event` to the list, merging it with an identical mechanism.
    fn record(&mut self, event: Event) {
        let Some(events) = &mut self.events else {
            return;
        };
        if let Some(known) = events.iter_mut().find(|e| e.same_mechanism(&event)) {
            match known.count().checked_add(event.count()) {
                Some(total) => *known.count_mut() = total,
                None => self.events = None,
            }
        } else if events.len() < MAX_EVENTS {
            events.push(event);
        } else {
            self.events = None;
        }
    }

    /// Charges `steps` steps of the Poisson-subsampled Gaussian mechanism (sampling rate
    /// `q`, noise multiplier `sigma`); see [`rdp_subsampled_gaussian`].
    pub fn compose_subsampled_gaussian(
        &mut self,
        q: f64,
        sigma: f64,
        steps: u64,
    ) -> Result<(), AccountantError> {
        check_q(q)?;
        check_sigma(sigma)?;
        self.compose_with(steps, |order| rdp_subsampled_gaussian(q, sigma, order))?;
        self.record(Event::SubsampledGaussian {
            sampling_rate: q,
            noise_multiplier: sigma,
            count: steps,
        });
        Ok(())
    }

    /// Charges `count` releases of the Gaussian mechanism with noise multiplier `sigma`.
    pub fn compose_gaussian(&mut self, sigma: f64, count: u64) -> Result<(), AccountantError> {
        check_sigma(sigma)?;
        self.compose_with(count, |order| rdp_gaussian(sigma, order))?;
        self.record(Event::SubsampledGaussian {
            sampling_rate: 1.0,
            noise_multiplier: sigma,
            count,
        });
        Ok(())
    }

    /// Charges `count` releases of the discrete Gaussian mechanism with noise multiplier
    /// `sigma` ([`crate::discrete_gaussian`]): the Gaussian's RDP, and no PLD (a ledger with
    /// such an event is accounted by RDP).
    pub fn compose_discrete_gaussian(
        &mut self,
        sigma: f64,
        count: u64,
    ) -> Result<(), AccountantError> {
        check_sigma(sigma)?;
        self.compose_with(count, |order| rdp_gaussian(sigma, order))?;
        self.record(Event::DiscreteGaussian {
            noise_multiplier: sigma,
            count,
        });
        Ok(())
    }

    /// Charges `count` releases of the Skellam mechanism; see [`rdp_skellam`] for the
    /// parameters (sensitivities in integer units, `variance` = total per-coordinate noise
    /// variance = 2 × the Poisson mean).
    pub fn compose_skellam(
        &mut self,
        l2_sensitivity: f64,
        l1_sensitivity: f64,
        variance: f64,
        count: u64,
    ) -> Result<(), AccountantError> {
        self.compose_with(count, |order| {
            rdp_skellam(l2_sensitivity, l1_sensitivity, variance, order)
        })?;
        self.record(Event::Skellam {
            l2_sensitivity,
            l1_sensitivity,
            variance,
            count,
        });
        Ok(())
    }

    /// Adds `times` × `rdp_at(order)` at every order, or changes nothing on error.
    fn compose_with(
        &mut self,
        times: u64,
        rdp_at: impl Fn(f64) -> Result<f64, AccountantError>,
    ) -> Result<(), AccountantError> {
        if times == 0 {
            return Err(AccountantError::ZeroSteps);
        }
        let added = self
            .orders
            .iter()
            .map(|&order| rdp_at(order))
            .collect::<Result<Vec<_>, _>>()?;
        for (total, one) in self.rdp.iter_mut().zip(added) {
            *total += times as f64 * one;
        }
        Ok(())
    }

    /// Charges everything recorded in `other` (which must track the same orders).
    pub fn compose_ledger(&mut self, other: &Accountant) -> Result<(), AccountantError> {
        if self.orders != other.orders {
            return Err(AccountantError::Orders("ledgers track different orders"));
        }
        for (total, &one) in self.rdp.iter_mut().zip(&other.rdp) {
            *total += one;
        }
        match &other.events {
            Some(events) => {
                for &e in events {
                    self.record(e);
                }
            }
            None => self.events = None,
        }
        Ok(())
    }

    /// Parallel composition over disjoint sets of records: a ledger whose RDP at each order
    /// is the largest of `sides`' (which must track the same orders). Adding or removing
    /// one record changes what only one side releases, so at every order the whole release
    /// diverges by at most that side's RDP. The event list is dropped (the maximum of two
    /// privacy loss distributions is not one here): the result is accounted by RDP alone.
    pub fn parallel(sides: &[&Accountant]) -> Result<Accountant, AccountantError> {
        let Some(first) = sides.first() else {
            return Err(AccountantError::Orders("no ledgers to compose in parallel"));
        };
        let mut out = Accountant {
            orders: first.orders.clone(),
            rdp: first.rdp.clone(),
            events: None,
        };
        for side in &sides[1..] {
            if side.orders != out.orders {
                return Err(AccountantError::Orders("ledgers track different orders"));
            }
            for (total, &one) in out.rdp.iter_mut().zip(&side.rdp) {
                *total = total.max(one);
            }
        }
        Ok(out)
    }

    /// Charges the growth of one item of a sum of ledgers: adds `after − before` at every
    /// order (an item, such as one job's [`Accountant::parallel`] envelope, that only grows),
    /// each step rounded up so the total never falls below the exact sum. Forgets the event
    /// list: the total is accounted by RDP alone.
    pub fn compose_growth(
        &mut self,
        before: &Accountant,
        after: &Accountant,
    ) -> Result<(), AccountantError> {
        if self.orders != before.orders || self.orders != after.orders {
            return Err(AccountantError::Orders("ledgers track different orders"));
        }
        for ((total, &b), &a) in self.rdp.iter_mut().zip(&before.rdp).zip(&after.rdp) {
            let growth = (a - b).max(0.0);
            if growth > 0.0 {
                // Each float operation rounds to nearest: one step up covers its error.
                *total = (*total + growth.next_up()).next_up();
            }
        }
        self.events = None;
        Ok(())
    }

    /// The ε spent at `delta` by the tightest accountant available ([`Method::Pld`]), and
    /// which one gave it.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, Bound), AccountantError> {
        self.epsilon_with(Method::Pld, delta)
    }

    /// The ε spent at `delta` by `method`, and which accountant gave it: for
    /// [`Method::Pld`], the smaller of the PLD and RDP bounds when every event has a PLD,
    /// the RDP bound otherwise.
    pub fn epsilon_with(
        &self,
        method: Method,
        delta: f64,
    ) -> Result<(f64, Bound), AccountantError> {
        let (rdp, order) = self.epsilon_rdp(delta)?;
        let rdp = (rdp, Bound::Rdp { order });
        if method == Method::Rdp {
            return Ok(rdp);
        }
        match self.epsilon_pld(delta)? {
            Some((eps, discretisation)) if eps <= rdp.0 => Ok((eps, Bound::Pld { discretisation })),
            _ => Ok(rdp),
        }
    }

    /// The ε spent at `delta` by RDP alone, and the order that gives it; see
    /// [`epsilon_from_rdp`].
    pub fn epsilon_rdp(&self, delta: f64) -> Result<(f64, f64), AccountantError> {
        epsilon_from_rdp(&self.orders, &self.rdp, delta)
    }

    /// The ε spent at `delta` by the privacy loss distribution alone, and its
    /// discretisation interval; `None` if some event has no PLD here (or the list is
    /// unknown, or the parameters are too extreme for the grid).
    pub fn epsilon_pld(&self, delta: f64) -> Result<Option<(f64, f64)>, AccountantError> {
        check_delta(delta)?;
        let Some(pld) = self.pld()? else {
            return Ok(None);
        };
        Ok(Some((pld.epsilon(delta)?, pld.discretisation())))
    }

    /// The composed privacy loss distribution, when there is one.
    fn pld(&self) -> Result<Option<ComposedPld>, AccountantError> {
        let Some(events) = self.gaussian_events() else {
            return Ok(None);
        };
        match ComposedPld::new(&events) {
            Ok(pld) => Ok(Some(pld)),
            Err(AccountantError::PldGrid { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The δ spent at `epsilon` by the tightest accountant available, and which one gave it.
    pub fn delta(&self, epsilon: f64) -> Result<(f64, Bound), AccountantError> {
        let (rdp, order) = self.delta_rdp(epsilon)?;
        if let Some(pld) = self.pld()? {
            let d = pld.delta(epsilon)?;
            if d <= rdp {
                return Ok((
                    d,
                    Bound::Pld {
                        discretisation: pld.discretisation(),
                    },
                ));
            }
        }
        Ok((rdp, Bound::Rdp { order }))
    }

    /// The δ spent at `epsilon` by RDP alone, and the order that gives it; see
    /// [`delta_from_rdp`].
    pub fn delta_rdp(&self, epsilon: f64) -> Result<(f64, f64), AccountantError> {
        delta_from_rdp(&self.orders, &self.rdp, epsilon)
    }
}

/// The smallest noise multiplier σ (to a relative tolerance of 1e-5, rounded up) for which
/// `steps` steps of the Poisson-subsampled Gaussian mechanism at sampling rate `q` stay
/// within (`target_epsilon`, `delta`)-DP under the default [`Accountant`], by the tightest
/// accountant ([`Method::Pld`]). See [`calibrate_noise_multiplier_with`].
pub fn calibrate_noise_multiplier(
    target_epsilon: f64,
    delta: f64,
    q: f64,
    steps: u64,
) -> Result<f64, AccountantError> {
    calibrate_noise_multiplier_with(Method::Pld, target_epsilon, delta, q, steps)
}

/// As [`calibrate_noise_multiplier`], by `method`: the σ for which a fresh [`Accountant`]
/// charged `steps` steps reports, by [`Accountant::epsilon_with`] and `method`, at most
/// `target_epsilon` — the very computation a ledger charged the same steps makes, so a plan
/// calibrated here spends its budget exactly.
///
/// ε is non-increasing in σ, so a bracket is grown by doubling or halving from σ = 1 and
/// then bisected; the returned σ always meets the target. Pure and deterministic: the same
/// arguments give the same σ to the last bit (on the same platform).
pub fn calibrate_noise_multiplier_with(
    method: Method,
    target_epsilon: f64,
    delta: f64,
    q: f64,
    steps: u64,
) -> Result<f64, AccountantError> {
    calibrate_noise_multiplier_after(&Accountant::new(), method, target_epsilon, delta, q, steps)
}

/// Like [`calibrate_noise_multiplier_with`], for `steps` steps composed after what `base`
/// already holds (for instance a fixed release planned beside training): the smallest σ with
/// which `base` plus the steps stays within the target.
pub fn calibrate_noise_multiplier_after(
    base: &Accountant,
    method: Method,
    target_epsilon: f64,
    delta: f64,
    q: f64,
    steps: u64,
) -> Result<f64, AccountantError> {
    const RELATIVE_TOLERANCE: f64 = 1e-5;
    const MIN_NOISE_MULTIPLIER: f64 = 1e-6;
    if !(target_epsilon > 0.0 && target_epsilon.is_finite()) {
        return Err(AccountantError::Epsilon(target_epsilon));
    }
    check_delta(delta)?;
    check_q(q)?;
    if steps == 0 {
        return Err(AccountantError::ZeroSteps);
    }
    let epsilon_at = |sigma: f64| -> Result<f64, AccountantError> {
        let mut ledger = base.clone();
        ledger.compose_subsampled_gaussian(q, sigma, steps)?;
        Ok(ledger.epsilon_with(method, delta)?.0)
    };
    let meets = |sigma: f64| epsilon_at(sigma).map(|eps| eps <= target_epsilon);

    // Bracket: `lo` fails the target, `hi` meets it.
    let (mut lo, mut hi) = (1.0, 1.0);
    if meets(hi)? {
        loop {
            lo = hi / 2.0;
            if lo < MIN_NOISE_MULTIPLIER {
                return Ok(hi);
            }
            if !meets(lo)? {
                break;
            }
            hi = lo;
        }
    } else {
        loop {
            hi *= 2.0;
            if hi > MAX_NOISE_MULTIPLIER {
                return Err(AccountantError::Unreachable {
                    target_epsilon,
                    delta,
                    q,
                    steps,
                });
            }
            if meets(hi)? {
                break;
            }
            lo = hi;
        }
    }
    while hi - lo > RELATIVE_TOLERANCE * hi {
        let mid = 0.5 * (lo + hi);
        if meets(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parallel composition takes the larger RDP at each order, recomputed here from the
    /// closed form of the Gaussian (α/(2σ²)) and the subsampled Gaussian's own function; the
    /// result has no PLD, and a sum of envelopes grown job by job is never below the exact sum.
    #[test]
    fn parallel_composition_is_the_pointwise_maximum_and_growth_never_under_counts() {
        let mut training = Accountant::new();
        training
            .compose_subsampled_gaussian(0.01, 1.1, 500)
            .unwrap();
        let mut holdout = Accountant::new();
        holdout.compose_gaussian(2.0, 1).unwrap();
        let env = Accountant::parallel(&[&training, &holdout]).unwrap();
        assert!(env.events().is_none());
        let mut holdout_wins = 0;
        for (i, &a) in env.orders().iter().enumerate() {
            let t = 500.0 * rdp_subsampled_gaussian(0.01, 1.1, a).unwrap();
            let h = a / (2.0 * 4.0);
            assert!(
                (env.rdp()[i] - t.max(h)).abs() <= 1e-12 * t.max(h).max(1.0),
                "α = {a}"
            );
            holdout_wins += usize::from(h > t);
        }
        // Both sides decide some orders, so the test sees a real maximum.
        assert!(holdout_wins > 0 && holdout_wins < env.orders().len());
        // Its ε is the larger side's at δ's best order, never more than the sequential one.
        let (par, _) = env.epsilon_rdp(1e-5).unwrap();
        let mut sequential = training.clone();
        sequential.compose_ledger(&holdout).unwrap();
        assert!(par < sequential.epsilon_rdp(1e-5).unwrap().0);
        assert!(par >= training.epsilon_rdp(1e-5).unwrap().0);

        // Two jobs grown round by round: the total is the sum of their envelopes, rounded up.
        let mut total = Accountant::new();
        let mut jobs: [(Accountant, Accountant); 2] = Default::default();
        for step in 0..6 {
            let (tr, ho) = &mut jobs[step % 2];
            let before = Accountant::parallel(&[tr, ho]).unwrap();
            if step >= 4 {
                ho.compose_gaussian(2.0, 1).unwrap();
            } else {
                tr.compose_subsampled_gaussian(0.01, 1.1, 100).unwrap();
            }
            let after = Accountant::parallel(&[tr, ho]).unwrap();
            total.compose_growth(&before, &after).unwrap();
        }
        for (i, &a) in total.orders().iter().enumerate() {
            let t = 200.0 * rdp_subsampled_gaussian(0.01, 1.1, a).unwrap();
            let exact = 2.0 * t.max(a / 8.0);
            assert!(
                total.rdp()[i] >= exact,
                "α = {a}: {} < {exact}",
                total.rdp()[i]
            );
            assert!(total.rdp()[i] <= exact * (1.0 + 1e-12) + 1e-300, "α = {a}");
        }
        assert!(total.events().is_none());
        let other = Accountant::with_orders(&[2.0, 4.0]).unwrap();
        assert!(Accountant::parallel(&[&training, &other]).is_err());
        assert!(total.compose_growth(&other, &other).is_err());
    }

    /// The discrete Gaussian is charged at the Gaussian's RDP (recomputed here from
    /// α/(2σ²)), and a ledger holding it is never accounted by the PLD (whose continuous
    /// Gaussian would not be its privacy loss).
    #[test]
    fn discrete_gaussian_is_charged_by_rdp_alone() {
        let sigma = 1.7;
        let mut acc = Accountant::new();
        acc.compose_discrete_gaussian(sigma, 3).unwrap();
        for (order, rdp) in acc.orders().iter().zip(acc.rdp()) {
            let expected = 3.0 * order / (2.0 * sigma * sigma);
            assert!((rdp - expected).abs() <= 1e-12 * expected, "order {order}");
        }
        assert!(acc.gaussian_events().is_none());
        let (eps, bound) = acc.epsilon(1e-5).unwrap();
        assert_eq!(bound.method(), Method::Rdp);
        assert_eq!(eps, acc.epsilon_rdp(1e-5).unwrap().0);
        assert!(acc.compose_discrete_gaussian(0.0, 1).is_err());
    }

    const REFERENCE_CSV: &str = include_str!("../../testdata/dp_epsilon_sample.csv");

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs())
    }

    #[test]
    fn log_erfc_matches_known_values() {
        // erfc values from high-precision tables (mpmath).
        let cases = [
            (-3.0, 1.9999779095030015),
            (-0.5, 1.5204998778130465),
            (0.0, 1.0),
            (0.1, 0.8875370839817152),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (1.49, 0.03510213515679579),
            (2.0, 0.004677734981047266),
            (3.0, 2.209049699858544e-05),
            (5.0, 1.537459794428035e-12),
            (9.9, 1.5431200214053184e-44),
            (10.0, 2.088487583762545e-45),
            (20.0, 5.395865611607901e-176),
        ];
        for (x, erfc) in cases {
            let got = log_erfc(x);
            let want: f64 = f64::ln(erfc);
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "log_erfc({x}) = {got}, want {want}"
            );
        }
        // Far tail, where erfc underflows (mpmath: ln erfc(100) = −10005.177585122664333).
        assert!(close(log_erfc(100.0), -10_005.177_585_122_664, 1e-15));
        assert!(log_erfc(1e200).is_infinite() && log_erfc(1e200) < 0.0);
        assert!(close(log_erfc(-1e200), std::f64::consts::LN_2, 1e-15));
    }

    #[test]
    fn log_erfc_branches_agree_at_their_boundaries() {
        for x in [1.5f64, 10.0] {
            let series_side = log_erfc(x - 1e-9);
            let other_side = log_erfc(x);
            assert!(
                (series_side - other_side).abs() < 1e-7,
                "discontinuity at {x}: {series_side} vs {other_side}"
            );
        }
        // The continued fraction and the asymptotic expansion agree well inside both ranges.
        let x: f64 = 12.0;
        let cf =
            -x * x - 0.5 * std::f64::consts::PI.ln() - erfc_continued_fraction_denominator(x).ln();
        assert!(close(cf, log_erfc(x), 1e-14));
    }

    #[test]
    fn gaussian_rdp_is_order_over_two_sigma_squared() {
        for sigma in [0.5, 0.8, 1.0, 3.7] {
            for order in [1.25, 2.0, 4.5, 64.0, 1024.0] {
                let want = order / (2.0 * sigma * sigma);
                assert_eq!(rdp_gaussian(sigma, order).unwrap(), want);
                assert_eq!(rdp_subsampled_gaussian(1.0, sigma, order).unwrap(), want);
            }
        }
        let mut ledger = Accountant::new();
        ledger.compose_gaussian(2.0, 10).unwrap();
        for (&a, &r) in ledger.orders().iter().zip(ledger.rdp()) {
            assert!(close(r, 10.0 * a / 8.0, 1e-15));
        }
    }

    /// `ln A_α` by brute-force quadrature (composite Simpson) of
    /// `∫ φ_σ(z) ((1 − q) + q e^{(2z−1)/(2σ²)})^α dz`, integrand in log space.
    fn log_a_by_quadrature(q: f64, sigma: f64, alpha: f64) -> f64 {
        let lo = -15.0 * sigma;
        let hi = alpha + 15.0 * sigma;
        let n = 200_000usize; // even
        let h = (hi - lo) / n as f64;
        let log_integrand = |z: f64| {
            let log_phi =
                -z * z / (2.0 * sigma * sigma) - (sigma * (2.0 * std::f64::consts::PI).sqrt()).ln();
            let log_ratio = log_add(
                (-q).ln_1p(),
                q.ln() + (2.0 * z - 1.0) / (2.0 * sigma * sigma),
            );
            log_phi + alpha * log_ratio
        };
        let logs: Vec<f64> = (0..=n).map(|k| log_integrand(lo + k as f64 * h)).collect();
        let peak = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logs
            .iter()
            .enumerate()
            .map(|(k, &l)| {
                let w = if k == 0 || k == n {
                    1.0
                } else if k % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                w * (l - peak).exp()
            })
            .sum();
        peak + (sum * h / 3.0).ln()
    }

    #[test]
    fn integer_orders_match_numerical_integration() {
        for (q, sigma, alpha) in [
            (0.1, 1.0, 8.0),
            (0.01, 2.0, 20.0),
            (0.5, 0.8, 3.0),
            (0.2, 1.5, 2.0),
        ] {
            let want = log_a_by_quadrature(q, sigma, alpha) / (alpha - 1.0);
            let got = rdp_subsampled_gaussian(q, sigma, alpha).unwrap();
            assert!(
                close(got, want, 1e-8),
                "q={q} sigma={sigma} alpha={alpha}: {got} vs {want}"
            );
        }
    }

    /// A small RDP value well above δ² (but below 2δ) is converted by the RDP bound of the
    /// module doc, not zeroed by Bretagnolle–Huber, which needs 1 − e^(−rdp) ≤ δ².
    #[test]
    fn small_rdp_above_delta_squared_is_not_zeroed() {
        let (a, r, delta): (f64, f64, f64) = (32.0, 1e-6, 1e-5);
        // ε = rdp + ln((α−1)/α) − (ln δ + ln α)/(α−1), straight from the module doc.
        let want = r + ((a - 1.0) / a).ln() - (delta.ln() + a.ln()) / (a - 1.0);
        assert!((want - 0.227_839_061_755).abs() < 1e-9, "{want}");
        let (eps, order) = epsilon_from_rdp(&[a], &[r], delta).unwrap();
        assert!(close(eps, want, 1e-12), "{eps} vs {want}");
        assert_eq!(order, a);
        // Just below δ² the conversion does give 0, and just above it does not.
        let (eps, _) = epsilon_from_rdp(&[2.0], &[0.9e-10], delta).unwrap();
        assert_eq!(eps, 0.0);
        let (eps, _) = epsilon_from_rdp(&[2.0], &[1.1e-10], delta).unwrap();
        assert!(eps > 0.0);
    }

    /// Where the fractional-order series fails, the value at the next integer order (a valid,
    /// larger bound) is returned. With σ = 10^7 and q = 1/2, A_α − 1 ≈ q² α(α−1)/2 · 1/σ² is
    /// about 1e-14, below what the series resolves: at α = 1.05 it does not settle at all, and
    /// at α = 2.5 it lands below the value at α = 2 (RDP is non-decreasing in α).
    #[test]
    fn failing_fractional_series_falls_back_to_the_next_integer_order() {
        let (q, sigma) = (0.5, 1e7);
        // The series fails outright (the `None` branch) …
        assert!(log_a_fractional(q, sigma, 1.05).is_none());
        let at_2 = rdp_subsampled_gaussian(q, sigma, 2.0).unwrap();
        assert_eq!(rdp_subsampled_gaussian(q, sigma, 1.05).unwrap(), at_2);
        // … or comes out below the floor order's value.
        let series = rdp_from_log_a(log_a_fractional(q, sigma, 2.5).unwrap(), 2.5);
        assert!(series < at_2, "{series} vs {at_2}");
        let at_3 = rdp_subsampled_gaussian(q, sigma, 3.0).unwrap();
        assert_eq!(rdp_subsampled_gaussian(q, sigma, 2.5).unwrap(), at_3);
        // Exact values: A_2 − 1 = q²(e^(1/σ²) − 1), A_3 − 1 = 3q²(e^(1/σ²) − 1) (for q = 1/2),
        // so rdp(2) ≈ 2.5e-15 and rdp(3) ≈ 3.75e-15; the series' rounding is ~1e-16.
        assert!(close(at_2, 2.5e-15, 0.05), "{at_2}");
        assert!(close(at_3, 3.75e-15, 0.05), "{at_3}");
    }

    #[test]
    fn fractional_orders_match_numerical_integration() {
        for (q, sigma, alpha) in [
            (0.1, 1.0, 2.5),
            (0.01, 4.0, 4.5),
            (0.2, 1.5, 1.25),
            (0.5, 0.8, 1.75),
            (0.9, 1.0, 3.5),
            // The optimal orders of reference rows 2, 3 and 4.
            (0.1, 1.0, 4.7),
            (0.01, 1.0, 7.8),
            (0.1, 1.1, 3.6),
            (0.05, 0.9, 10.9),
        ] {
            let want = log_a_by_quadrature(q, sigma, alpha) / (alpha - 1.0);
            let got = rdp_subsampled_gaussian(q, sigma, alpha).unwrap();
            assert!(
                close(got, want, 1e-8),
                "q={q} sigma={sigma} alpha={alpha}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn fractional_orders_interpolate_between_integers() {
        for (q, sigma) in [(0.01, 1.0), (0.1, 1.1), (0.3, 2.0), (0.001, 0.7)] {
            let orders = [2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5, 5.0];
            let rdp: Vec<f64> = orders
                .iter()
                .map(|&a| rdp_subsampled_gaussian(q, sigma, a).unwrap())
                .collect();
            // RDP is non-decreasing in the order …
            for w in rdp.windows(2) {
                assert!(w[0] <= w[1] * (1.0 + 1e-12), "q={q} sigma={sigma}: {rdp:?}");
            }
            // … and (α − 1)·rdp(α) = ln A_α is convex in α (Van Erven & Harremoës 2014).
            let g: Vec<f64> = orders
                .iter()
                .zip(&rdp)
                .map(|(a, r)| (a - 1.0) * r)
                .collect();
            for k in 1..orders.len() - 1 {
                let (a0, a1, a2) = (orders[k - 1], orders[k], orders[k + 1]);
                let t = (a1 - a0) / (a2 - a0);
                let chord = (1.0 - t) * g[k - 1] + t * g[k + 1];
                assert!(
                    g[k] <= chord * (1.0 + 1e-9) + 1e-15,
                    "q={q} sigma={sigma} at {a1}"
                );
            }
        }
    }

    #[test]
    fn rdp_is_monotone_over_the_default_grid() {
        let orders = default_orders();
        for q in [1e-4, 1e-3, 0.01, 0.05, 0.2, 0.5, 0.9, 0.999] {
            for sigma in [0.3, 0.5, 0.8, 1.0, 2.0, 5.0, 20.0, 100.0] {
                let rdp: Vec<f64> = orders
                    .iter()
                    .map(|&a| rdp_subsampled_gaussian(q, sigma, a).unwrap())
                    .collect();
                for (k, w) in rdp.windows(2).enumerate() {
                    assert!(
                        w[0] <= w[1] * (1.0 + 1e-9) + 1e-300,
                        "q={q} sigma={sigma}: rdp({}) = {} > rdp({}) = {}",
                        orders[k],
                        w[0],
                        orders[k + 1],
                        w[1]
                    );
                }
                // Never above the unsubsampled Gaussian.
                for (&a, &r) in orders.iter().zip(&rdp) {
                    assert!(r <= a / (2.0 * sigma * sigma) * (1.0 + 1e-9));
                }
            }
        }
    }

    #[test]
    #[ignore = "slow sweep; run by hand"]
    fn fractional_orders_sweep_against_quadrature() {
        // Compares ln A_α, with an absolute floor for the quadrature's rounding near A_α = 1.
        let mut worst: f64 = 0.0;
        for q in [1e-3, 0.01, 0.1, 0.5, 0.9] {
            for sigma in [0.5, 0.8, 1.0, 2.0, 5.0] {
                for alpha in [1.1, 1.5, 2.3, 3.7, 5.5, 7.9, 10.9] {
                    let want = log_a_by_quadrature(q, sigma, alpha);
                    let got = rdp_subsampled_gaussian(q, sigma, alpha).unwrap() * (alpha - 1.0);
                    let err = (got - want).abs() / (want.abs() + 1e-6);
                    worst = worst.max(err);
                    assert!(
                        err < 1e-7,
                        "q={q} sigma={sigma} alpha={alpha}: {got} vs {want}"
                    );
                }
            }
        }
        eprintln!("worst error {worst:e}");
    }

    fn reference_rows() -> Vec<(f64, f64, u64, f64, f64, f64)> {
        REFERENCE_CSV
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                assert_eq!(f[0], "poisson_subsampled_gaussian");
                (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].parse().unwrap(),
                    f[6].parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn reference_rows_lie_between_pld_and_dp_accounting_rdp() {
        let rows = reference_rows();
        assert_eq!(rows.len(), 6);
        for (sigma, q, steps, delta, eps_rdp, eps_pld) in rows {
            let mut ledger = Accountant::new();
            ledger.compose_subsampled_gaussian(q, sigma, steps).unwrap();
            let (eps, order) = ledger.epsilon_rdp(delta).unwrap();
            eprintln!(
                "sigma={sigma} q={q} steps={steps} delta={delta}: eps={eps:.6} (order {order}), pld={eps_pld}, dp-accounting rdp={eps_rdp}"
            );
            assert!(
                eps >= eps_pld * (1.0 - 1e-3),
                "below pld: {eps} < {eps_pld}"
            );
            assert!(eps <= eps_rdp * 1.02, "too loose: {eps} > {eps_rdp}");
        }
    }

    #[test]
    fn dp_sgd_mnist_setting() {
        // dp-accounting: PLD 0.947, RDP 1.035.
        let mut ledger = Accountant::new();
        ledger
            .compose_subsampled_gaussian(0.01, 4.0, 10_000)
            .unwrap();
        let (eps, _) = ledger.epsilon(1e-5).unwrap();
        assert!((0.946..=1.06).contains(&eps), "eps = {eps}");
    }

    #[test]
    fn improved_conversion_is_tighter_than_classic() {
        let mut ledger = Accountant::new();
        ledger.compose_subsampled_gaussian(0.01, 1.0, 1000).unwrap();
        let delta: f64 = 1e-5;
        let (eps, _) = ledger.epsilon_rdp(delta).unwrap();
        let classic = ledger
            .orders()
            .iter()
            .zip(ledger.rdp())
            .map(|(a, r)| r + (1.0 / delta).ln() / (a - 1.0))
            .fold(f64::INFINITY, f64::min);
        assert!(eps < classic, "{eps} vs classic {classic}");
    }

    #[test]
    fn delta_inverts_epsilon() {
        let mut ledger = Accountant::new();
        ledger.compose_subsampled_gaussian(0.05, 1.2, 500).unwrap();
        for delta in [1e-3, 1e-5, 1e-8] {
            let (eps, order) = ledger.epsilon_rdp(delta).unwrap();
            let (back, back_order) = ledger.delta_rdp(eps).unwrap();
            assert!(
                close(back, delta, 1e-9),
                "delta {delta} -> eps {eps} -> {back}"
            );
            assert_eq!(order, back_order);
        }
        // Nothing spent: ε = 0 and δ = 0.
        let empty = Accountant::new();
        assert_eq!(empty.epsilon(1e-5).unwrap().0, 0.0);
        assert_eq!(empty.delta(0.0).unwrap().0, 0.0);
    }

    #[test]
    fn composition_adds_heterogeneous_events() {
        let mut a = Accountant::new();
        a.compose_subsampled_gaussian(0.02, 1.1, 300).unwrap();
        let mut b = Accountant::new();
        b.compose_gaussian(5.0, 3).unwrap();
        b.compose_skellam(1000.0, 30_000.0, 4.0e6, 2).unwrap();
        let mut both = a.clone();
        both.compose_ledger(&b).unwrap();
        for k in 0..both.orders().len() {
            let a_order = a.orders()[k];
            let want = 300.0 * rdp_subsampled_gaussian(0.02, 1.1, a_order).unwrap()
                + 3.0 * rdp_gaussian(5.0, a_order).unwrap()
                + 2.0 * rdp_skellam(1000.0, 30_000.0, 4.0e6, a_order).unwrap();
            assert!(close(both.rdp()[k], want, 1e-12));
        }
        let (eps_a, _) = a.epsilon(1e-5).unwrap();
        let (eps_both, _) = both.epsilon(1e-5).unwrap();
        assert!(eps_both > eps_a);
    }

    #[test]
    fn skellam_rdp_approaches_gaussian_as_variance_grows() {
        let l2: f64 = 100.0;
        let l1 = l2 * l2; // the integer-vector bound Δ1 ≤ Δ2²
        let mut previous_gap = f64::INFINITY;
        for variance in [1e4, 1e5, 1e6, 1e7, 1e8] {
            for order in [2.0, 8.0, 64.0] {
                let gaussian = order * l2 * l2 / (2.0 * variance);
                let skellam = rdp_skellam(l2, l1, variance, order).unwrap();
                assert!(skellam >= gaussian);
            }
            let gaussian = 8.0 * l2 * l2 / (2.0 * variance);
            let gap = rdp_skellam(l2, l1, variance, 8.0).unwrap() / gaussian - 1.0;
            assert!(gap < previous_gap);
            previous_gap = gap;
        }
        assert!(previous_gap < 1e-3, "relative gap {previous_gap}");
        // Fractional orders are charged at the next integer.
        assert_eq!(
            rdp_skellam(l2, l1, 1e6, 2.25).unwrap(),
            rdp_skellam(l2, l1, 1e6, 3.0).unwrap()
        );
    }

    #[test]
    fn calibration_round_trips() {
        for (target, delta, q, steps) in [
            (1.0, 1e-5, 0.01, 10_000u64),
            (3.0, 1e-6, 0.1, 10),
            (8.0, 1e-5, 1.0, 10),
            (0.2, 1e-5, 0.01, 1000),
        ] {
            let sigma = calibrate_noise_multiplier(target, delta, q, steps).unwrap();
            let eps_at = |s: f64| {
                let mut l = Accountant::new();
                l.compose_subsampled_gaussian(q, s, steps).unwrap();
                l.epsilon(delta).unwrap().0
            };
            assert!(
                eps_at(sigma) <= target,
                "sigma {sigma}: {} > {target}",
                eps_at(sigma)
            );
            assert!(
                eps_at(0.99 * sigma) > target,
                "sigma {sigma} is not the smallest"
            );
        }
    }

    #[test]
    fn calibration_reports_unreachable_targets() {
        let err = calibrate_noise_multiplier(1e-9, 1e-12, 1.0, u64::MAX).unwrap_err();
        assert!(matches!(err, AccountantError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn invalid_arguments_are_typed_errors() {
        use AccountantError as E;
        assert_eq!(
            rdp_subsampled_gaussian(0.0, 1.0, 2.0),
            Err(E::SamplingRate(0.0))
        );
        assert_eq!(
            rdp_subsampled_gaussian(1.5, 1.0, 2.0),
            Err(E::SamplingRate(1.5))
        );
        assert!(matches!(
            rdp_subsampled_gaussian(f64::NAN, 1.0, 2.0),
            Err(E::SamplingRate(_))
        ));
        assert_eq!(
            rdp_subsampled_gaussian(0.1, 0.0, 2.0),
            Err(E::NoiseMultiplier(0.0))
        );
        assert_eq!(
            rdp_subsampled_gaussian(0.1, -1.0, 2.0),
            Err(E::NoiseMultiplier(-1.0))
        );
        assert!(matches!(
            rdp_gaussian(f64::NAN, 2.0),
            Err(E::NoiseMultiplier(_))
        ));
        assert_eq!(rdp_gaussian(1.0, 1.0), Err(E::Order(1.0)));
        assert!(matches!(rdp_gaussian(1.0, f64::INFINITY), Err(E::Order(_))));
        let ledger = Accountant::new();
        assert_eq!(ledger.epsilon(0.0), Err(E::Delta(0.0)));
        assert_eq!(ledger.epsilon(1.0), Err(E::Delta(1.0)));
        assert!(matches!(ledger.epsilon(f64::NAN), Err(E::Delta(_))));
        assert_eq!(ledger.delta(-1.0), Err(E::Epsilon(-1.0)));
        let mut ledger = Accountant::new();
        assert_eq!(
            ledger.compose_subsampled_gaussian(0.1, 1.0, 0),
            Err(E::ZeroSteps)
        );
        assert_eq!(
            ledger.compose_skellam(1.0, 1.0, 0.0, 1),
            Err(E::Skellam {
                name: "variance",
                value: 0.0
            })
        );
        assert_eq!(ledger, Accountant::new(), "a refused event charges nothing");
        assert_eq!(
            calibrate_noise_multiplier(0.0, 1e-5, 0.1, 10),
            Err(E::Epsilon(0.0))
        );
        assert_eq!(
            calibrate_noise_multiplier(1.0, 1e-5, 0.1, 0),
            Err(E::ZeroSteps)
        );
        assert!(Accountant::with_orders(&[]).is_err());
        assert!(Accountant::with_orders(&[0.5]).is_err());
        // Messages are lower-case and name the argument.
        assert_eq!(
            E::SamplingRate(2.0).to_string(),
            "sampling rate q = 2 is outside (0, 1]"
        );
        assert_eq!(E::Delta(0.0).to_string(), "delta = 0 is outside (0, 1)");
        assert!(
            E::NoiseMultiplier(0.0)
                .to_string()
                .starts_with("noise multiplier sigma = 0")
        );
    }

    #[test]
    fn gaussian_ledgers_report_pld_and_merge_identical_events() {
        let mut ledger = Accountant::new();
        for _ in 0..10 {
            ledger.compose_subsampled_gaussian(0.01, 1.0, 100).unwrap();
        }
        ledger.compose_gaussian(5.0, 2).unwrap();
        assert_eq!(
            ledger.events().unwrap(),
            &[
                Event::SubsampledGaussian {
                    sampling_rate: 0.01,
                    noise_multiplier: 1.0,
                    count: 1000
                },
                Event::SubsampledGaussian {
                    sampling_rate: 1.0,
                    noise_multiplier: 5.0,
                    count: 2
                },
            ]
        );
        let (eps, bound) = ledger.epsilon(1e-5).unwrap();
        let (rdp, order) = ledger.epsilon_rdp(1e-5).unwrap();
        assert!(matches!(bound, Bound::Pld { discretisation } if discretisation > 0.0));
        assert!(eps < rdp, "pld {eps} vs rdp {rdp}");
        assert_eq!(
            ledger.epsilon_with(Method::Rdp, 1e-5).unwrap(),
            (rdp, Bound::Rdp { order })
        );
        // δ(ε) by the same PLD inverts it, pessimistically.
        let (back, bound) = ledger.delta(eps).unwrap();
        assert_eq!(bound.method(), Method::Pld);
        assert!(back <= 1e-5 * (1.0 + 1e-9) && back > 0.99e-5, "{back}");
        // Merging ledgers merges their events.
        let mut twice = ledger.clone();
        twice.compose_ledger(&ledger).unwrap();
        assert_eq!(twice.events().unwrap().len(), 2);
        assert!(matches!(
            twice.events().unwrap()[0],
            Event::SubsampledGaussian { count: 2000, .. }
        ));
    }

    #[test]
    fn skellam_events_fall_back_to_rdp() {
        let mut ledger = Accountant::new();
        ledger.compose_subsampled_gaussian(0.01, 1.0, 100).unwrap();
        ledger.compose_skellam(1000.0, 1e6, 4.0e6, 3).unwrap();
        assert!(ledger.gaussian_events().is_none());
        assert_eq!(ledger.epsilon_pld(1e-5).unwrap(), None);
        let (eps, bound) = ledger.epsilon(1e-5).unwrap();
        assert_eq!(bound.method(), Method::Rdp);
        assert_eq!(eps, ledger.epsilon_rdp(1e-5).unwrap().0);
    }

    #[test]
    fn ledgers_without_an_event_list_still_load_and_use_rdp() {
        // A ledger as serialised before events were recorded.
        let mut old = Accountant::new();
        old.compose_subsampled_gaussian(0.01, 1.0, 100).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&old).unwrap();
        json.as_object_mut().unwrap().remove("events");
        let restored: Accountant = serde_json::from_value(json).unwrap();
        assert_eq!(restored.events(), None);
        assert_eq!(restored.rdp(), old.rdp());
        let (eps, bound) = restored.epsilon(1e-5).unwrap();
        assert_eq!(bound.method(), Method::Rdp);
        assert_eq!(eps, old.epsilon_rdp(1e-5).unwrap().0);
        // New charges add to the RDP sums; the history stays unknown, so still RDP.
        let mut restored = restored;
        restored
            .compose_subsampled_gaussian(0.01, 1.0, 100)
            .unwrap();
        assert_eq!(restored.events(), None);
        assert_eq!(restored.epsilon(1e-5).unwrap().1.method(), Method::Rdp);
        // And it still serialises in the old shape.
        let text = serde_json::to_string(&restored).unwrap();
        assert!(!text.contains("events"), "{text}");
        // Merging an unknown history into a known one makes it unknown.
        let mut known = Accountant::new();
        known.compose_ledger(&restored).unwrap();
        assert_eq!(known.events(), None);
    }

    #[test]
    fn events_round_trip_through_serde_and_are_validated() {
        let mut ledger = Accountant::new();
        ledger.compose_subsampled_gaussian(0.02, 1.3, 700).unwrap();
        ledger.compose_skellam(10.0, 100.0, 1e4, 1).unwrap();
        let json = serde_json::to_string(&ledger).unwrap();
        assert!(
            json.contains(r#""mechanism":"subsampled_gaussian""#),
            "{json}"
        );
        let back: Accountant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.events(), ledger.events());
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["events"][0]["sampling_rate"] = serde_json::json!(1.5);
        assert!(serde_json::from_value::<Accountant>(value.clone()).is_err());
        value["events"][0]["sampling_rate"] = serde_json::json!(0.02);
        value["events"][0]["count"] = serde_json::json!(0);
        assert!(serde_json::from_value::<Accountant>(value).is_err());
    }

    #[test]
    fn calibration_on_rdp_needs_more_noise_than_on_pld() {
        let pld = calibrate_noise_multiplier(1.0, 1e-5, 0.01, 10_000).unwrap();
        let rdp = calibrate_noise_multiplier_with(Method::Rdp, 1.0, 1e-5, 0.01, 10_000).unwrap();
        assert!(pld < rdp && pld > 0.8 * rdp, "pld {pld} rdp {rdp}");
        assert_eq!(
            calibrate_noise_multiplier(1.0, 1e-5, 0.01, 10_000)
                .unwrap()
                .to_bits(),
            pld.to_bits(),
            "deterministic"
        );
    }

    #[test]
    fn ledger_round_trips_through_serde_and_is_validated() {
        let mut ledger = Accountant::new();
        ledger.compose_subsampled_gaussian(0.01, 1.0, 100).unwrap();
        let json = serde_json::to_string(&ledger).unwrap();
        let back: Accountant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.orders(), ledger.orders());
        // serde_json without `float_roundtrip` may move the last bit.
        for (b, l) in back.rdp().iter().zip(ledger.rdp()) {
            assert!(close(*b, *l, 1e-15));
        }
        let bad = r#"{"orders":[2.0,3.0],"rdp":[0.1]}"#;
        assert!(serde_json::from_str::<Accountant>(bad).is_err());
        let negative = r#"{"orders":[2.0],"rdp":[-0.1]}"#;
        assert!(serde_json::from_str::<Accountant>(negative).is_err());
    }
}
