//! Privacy-loss-distribution (PLD) accounting for the Poisson-subsampled Gaussian mechanism:
//! a tighter (ε, δ) than Rényi DP, and still an upper bound.
//!
//! # The method
//!
//! A mechanism's privacy loss against a pair of adjacent datasets is the random variable
//! `L = ln(P(o)/Q(o))`, `o ∼ P`. Its hockey-stick divergence
//! `δ(ε) = E_P[(1 − e^{ε−L})₊]` (plus the mass where `L = +∞`) is exactly the δ at which the
//! mechanism is (ε, δ)-DP for that pair, and the loss of a composition is the sum of the
//! independent losses of its parts, so its distribution is the convolution of theirs.
//!
//! For one step of the Gaussian mechanism with noise multiplier σ, Poisson-subsampled at rate
//! q, under add/remove-one adjacency, there are two pairs (both with sensitivity 1):
//!
//! - **remove**: `P = (1 − q)·N(0, σ²) + q·N(1, σ²)`, `Q = N(0, σ²)`, loss
//!   `L(x) = ln(1 − q + q·e^{(2x−1)/(2σ²)})`, unbounded above, at least `ln(1 − q)`;
//! - **add**: `P = N(0, σ²)`, `Q = (1 − q)·N(0, σ²) + q·N(1, σ²)`, loss
//!   `L(x) = −ln(1 − q + q·e^{(2x−1)/(2σ²)})`, at most `−ln(1 − q)`.
//!
//! Both are composed separately and the reported ε is the larger of the two ε's (the reported
//! δ the larger δ), as `dp-accounting` does. At q = 1 (the plain Gaussian) they coincide and
//! only one is computed.
//!
//! Each step's loss is discretised on the grid `{i·h}` by **connect the dots** (Doroshenko,
//! Ghazi, Kamath, Kumar and Manurangsi, "Connect the Dots: Tighter Discrete Approximations of
//! Privacy Loss Distributions", PETS 2022): the P-mass of each interval `(i·h, (i+1)·h]` is
//! split between its two ends so that both its P-mass and its Q-mass (`E_P[e^{−L}]`) are
//! kept. The discrete distribution's δ(ε) then equals the true one at every grid point and,
//! between grid points, is the chord of the true curve in `e^ε`, which lies above it because
//! δ is convex in `e^ε`. The P-mass below the lowest grid point (11 σ below the Gaussian
//! components) is moved up to it, and the P-mass above the highest is moved to `L = +∞`; both
//! only raise δ(ε) everywhere. The highest point is set per event so that what goes to `+∞`
//! adds at most [`TAIL_MASS`] to the composition's δ ([`upper_z`]).
//!
//! The T-fold (and mixed) composition is one FFT per distinct event: the step's discrete
//! distribution is transformed once, raised pointwise to the power of its count, the
//! products of all events are transformed back. Both pairs share one complex FFT (one in the
//! real part, one in the imaginary part). The cyclic convolution covers a window
//! `[lo, hi]` chosen by Chernoff bounds on the discrete distributions themselves so that the
//! composed mass above `hi` and below `lo` are each at most [`TAIL_MASS`]; the mass above is
//! charged to `L = +∞` (it adds [`TAIL_MASS`] to δ), the mass below only matters for ε below
//! `lo` (never reported: ε is then `max(lo, 0)`), and what wraps around the cycle lands
//! inside the window as extra, non-negative mass. FFT round-off is clamped at zero.
//!
//! Every step of this is pessimistic: the δ(ε) of the computed distribution is at least the
//! true δ(ε) of the composed mechanism at every ε, up to floating-point round-off, so the ε
//! reported for a δ is an upper bound on the true ε. Monotonicity carries through
//! composition because the δ of a composition is `E_{b}[δ_A(ε − b)]`, increasing in δ_A.
//!
//! # The discretisation interval
//!
//! The grid spacing h is chosen per composition and reported with every answer
//! ([`ComposedPld::discretisation`]):
//!
//! - the composition's Chernoff window (sized on a rough discretisation) divided by
//!   [`TARGET_POINTS`] (2¹⁸), so the composed distribution has about 2¹⁸ grid points;
//! - but at most 1/20 of the standard deviation of one step's loss: connect the dots adds up to
//!   h²/4 to the variance of every step's loss (and up to h²/8 to its mean, a Jensen gap over
//!   one interval), so T steps over-state the loss by about T·h²/8 and spread it by a factor
//!   `√(1 + h²/(4·var))` ≤ 1.0003. Small q with many steps needs this: at q = 1e-4, σ = 0.8,
//!   T = 10⁵ the window is ~10 wide but one step's loss spreads by only 2e-4;
//! - a single release (one event, count 1) needs no FFT and uses [`SINGLE_POINTS`] (2¹⁶) over
//!   its range;
//! - a composition needing more than [`MAX_POINTS`] (2²¹) points gets a coarser grid (looser,
//!   still an upper bound); one whose window cannot be represented at all is refused with
//!   [`AccountantError::PldGrid`] and accounted by RDP instead.
//!
//! For the 10⁵ DP-SGD steps of q = 0.01, σ = 1, h ≈ 2.9e-4 (ε ≈ 25.6 at δ = 1e-5, excess
//! below 1e-3); against dp-accounting at a fine grid the result is within +0.015 % on the
//! reference grid of `core/testdata/pld_reference.csv`.
//!
//! # What goes to RDP
//!
//! Only the (subsampled) Gaussian has a PLD here. The Skellam mechanism (distributed noise)
//! and ledgers restored from before events were recorded are accounted by Rényi DP
//! ([`crate::accountant`]); a ledger of Gaussian events reports the smaller of the two
//! bounds, both valid.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

use super::{AccountantError, check_delta, check_q, check_sigma};

/// Grid points the composed distribution is spread over: the discretisation interval is the
/// composition's Chernoff window divided by this.
pub const TARGET_POINTS: usize = 1 << 18;

/// Grid points of a single release's distribution (no composition: no FFT).
pub const SINGLE_POINTS: usize = 1 << 16;

/// Most grid points a composition may use (the FFT length).
pub const MAX_POINTS: usize = 1 << 21;

/// Bound on the composed mass cut off above the window (charged to δ) and below it.
pub const TAIL_MASS: f64 = 1e-18;

/// Each step's distribution covers `TAIL_Z` standard deviations of its Gaussian components
/// below their means; the P-mass further down (under 2e-28) is moved up to the lowest grid
/// point, which costs nothing in δ. Above, the cut-off is [`upper_z`]'s.
const TAIL_Z: f64 = 11.0;

/// How many standard deviations above its means a step's distribution covers when its event
/// is composed `count` times among `events` events: the fewest (to 1/64) whose one-sided
/// Gaussian tail is at most `TAIL_MASS / (count · events)`. The P-mass above is moved to
/// `L = +∞`, where it adds to δ at every ε; over the whole composition that is at most
/// [`TAIL_MASS`] (at T = 10⁵ about 9.9 σ, where a fixed 11 σ would cost 12 % more points for
/// nothing).
fn upper_z(count: u64, events: usize) -> f64 {
    let budget = TAIL_MASS / (count as f64 * events.max(1) as f64);
    let tail = |z: f64| 0.5 * libm::erfc(z / std::f64::consts::SQRT_2);
    // The tail is decreasing; it underflows past z ≈ 38, the most ever needed.
    let (mut lo, mut hi) = (0.0_f64, 38.0_f64);
    if tail(hi) > budget {
        return hi;
    }
    while hi - lo > 1.0 / 64.0 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) <= budget {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Grid points per standard deviation of one step's loss, at least.
const STD_POINTS: f64 = 20.0;

/// Grid points of the rough discretisation used to size the window.
const COARSE_POINTS: f64 = 2048.0;

/// Grid points summed per `exp` in the moment generating functions ([`log_mgf`]).
const MGF_CHUNK: usize = 64;

/// Golden-section steps of the Chernoff search over `ln λ ∈ [−15, 25]`.
const SEARCH_STEPS: usize = 30;

/// Half-width (in `ln λ`) of the Chernoff search around a coarser grid's optimum, and its
/// steps: the bracket shrinks to 0.02.
const HINT_SPAN: f64 = 1.0;
const HINTED_STEPS: usize = 10;

/// `steps` releases of the Gaussian mechanism with noise multiplier `noise_multiplier`,
/// each on a Poisson sample at rate `sampling_rate` (1 = the whole dataset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianEvent {
    /// Poisson sampling rate q in (0, 1].
    pub sampling_rate: f64,
    /// Noise multiplier σ (noise standard deviation over the L2 sensitivity).
    pub noise_multiplier: f64,
    /// Number of composed releases.
    pub count: u64,
}

impl GaussianEvent {
    fn validate(&self) -> Result<(), AccountantError> {
        check_q(self.sampling_rate)?;
        check_sigma(self.noise_multiplier)?;
        if self.count == 0 {
            return Err(AccountantError::ZeroSteps);
        }
        Ok(())
    }
}

/// Which of the two adjacent-dataset pairs of add/remove adjacency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Remove,
    Add,
}

/// One direction's pair (P, Q) as mixtures of N(0, σ²) and N(1, σ²) on a line along which
/// the loss increases. The add pair is reflected (`x ↦ 1 − x`) so that it does too: its
/// P is then N(1, σ²) and its Q `q·N(0, σ²) + (1 − q)·N(1, σ²)`.
#[derive(Debug, Clone, Copy)]
struct Pair {
    q: f64,
    sigma: f64,
    direction: Direction,
    /// Standard deviations covered above the components' means ([`upper_z`]).
    upper_z: f64,
}

/// Means of the two Gaussian components.
const MEANS: [f64; 2] = [0.0, 1.0];

impl Pair {
    /// P's weights on the components.
    fn p_weights(&self) -> [f64; 2] {
        match self.direction {
            Direction::Remove => [1.0 - self.q, self.q],
            Direction::Add => [0.0, 1.0],
        }
    }

    /// `w^P_m − e^ε·w^Q_m` per component: what each component's mass in an interval adds to
    /// `ΔP − e^ε·ΔQ`, written to avoid cancellation near ε = 0.
    fn split_coefficients(&self, eps: f64) -> [f64; 2] {
        let q = self.q;
        match self.direction {
            Direction::Remove => [-(eps.exp_m1() + q), q],
            Direction::Add => {
                let y = eps.exp();
                [-y * q, -eps.exp_m1() + y * q]
            }
        }
    }

    /// The x range beyond which P has negligible mass.
    fn x_range(&self) -> (f64, f64) {
        let w = self.p_weights();
        let s = self.sigma;
        let lo = if w[0] > 0.0 {
            -TAIL_Z * s
        } else {
            1.0 - TAIL_Z * s
        };
        let hi = if w[1] > 0.0 {
            1.0 + self.upper_z * s
        } else {
            self.upper_z * s
        };
        (lo, hi)
    }

    /// The standard deviation of one step's privacy loss under P, by the trapezoid rule over
    /// [`Pair::x_range`] (accurate to a few digits, which is all the grid sizing needs).
    fn loss_std(&self) -> f64 {
        const STEPS: usize = 4096;
        let (lo, hi) = self.x_range();
        let w = self.p_weights();
        let dx = (hi - lo) / STEPS as f64;
        let (mut m0, mut m1, mut m2) = (0.0, 0.0, 0.0);
        for k in 0..=STEPS {
            let x = lo + k as f64 * dx;
            let density: f64 = MEANS
                .iter()
                .zip(w)
                .map(|(m, w)| w * (-0.5 * ((x - m) / self.sigma).powi(2)).exp())
                .sum();
            let weight = if k == 0 || k == STEPS { 0.5 } else { 1.0 } * density;
            let l = self.loss(x);
            m0 += weight;
            m1 += weight * l;
            m2 += weight * l * l;
        }
        let mean = m1 / m0;
        (m2 / m0 - mean * mean).max(0.0).sqrt()
    }

    /// The privacy loss at `x` (increasing in `x`).
    fn loss(&self, x: f64) -> f64 {
        let t = (2.0 * x - 1.0) / (2.0 * self.sigma * self.sigma);
        match self.direction {
            Direction::Remove => log_mix(self.q, t),
            Direction::Add => -log_mix(self.q, -t),
        }
    }

    /// The `x` at which the loss is `loss`: −∞ below the support, +∞ above.
    fn x_at(&self, loss: f64) -> f64 {
        let s2 = self.sigma * self.sigma;
        match self.direction {
            Direction::Remove => 0.5 + s2 * log_unmix(self.q, loss),
            Direction::Add => 0.5 - s2 * log_unmix(self.q, -loss),
        }
    }
}

/// `ln(1 − q + q·e^t)`.
fn log_mix(q: f64, t: f64) -> f64 {
    if t <= 0.0 {
        (q * t.exp_m1()).ln_1p()
    } else {
        t + (q + (1.0 - q) * (-t).exp()).ln()
    }
}

/// The `t` with `log_mix(q, t) = l`, or −∞ if `l ≤ ln(1 − q)`.
fn log_unmix(q: f64, l: f64) -> f64 {
    let log_num = if l > 1.0 {
        l + (-(1.0 - q) * (-l).exp()).ln_1p()
    } else {
        let u = l.exp_m1() + q;
        if u <= 0.0 {
            return f64::NEG_INFINITY;
        }
        u.ln()
    };
    log_num - q.ln()
}

/// The CDF and survival function of N(`mean`, σ²) at `x`, the smaller one computed directly
/// so that it keeps its relative precision in the tail.
#[derive(Debug, Clone, Copy)]
struct Tails {
    x: f64,
    cdf: f64,
    sf: f64,
}

impl Tails {
    fn at(x: f64, mean: f64, sigma: f64) -> Self {
        let t = (x - mean) / (sigma * std::f64::consts::SQRT_2);
        if t >= 0.0 {
            let sf = 0.5 * libm::erfc(t);
            Self {
                x,
                cdf: 1.0 - sf,
                sf,
            }
        } else {
            let cdf = 0.5 * libm::erfc(-t);
            Self {
                x,
                cdf,
                sf: 1.0 - cdf,
            }
        }
    }

    /// The mass of `(self.x, upper.x]`, from the two values that are accurate there.
    fn mass_to(self, upper: Self, mean: f64) -> f64 {
        let m = if upper.x <= mean {
            upper.cdf - self.cdf
        } else if self.x >= mean {
            self.sf - upper.sf
        } else {
            1.0 - upper.sf - self.cdf
        };
        m.max(0.0)
    }
}

/// One step's loss distribution on the grid: mass `pmf[k]` at loss `(min_index + k)·h`, and
/// `infinity` at `+∞`.
#[derive(Debug, Clone)]
struct Discrete {
    min_index: i64,
    pmf: Vec<f64>,
    infinity: f64,
}

fn grid_error(points: f64) -> AccountantError {
    AccountantError::PldGrid {
        points: if points.is_finite() {
            points as u64
        } else {
            u64::MAX
        },
    }
}

/// Connect-the-dots discretisation of one pair at spacing `h` (see the module doc).
fn discretise(pair: Pair, h: f64) -> Result<Discrete, AccountantError> {
    let (x_lo, x_hi) = pair.x_range();
    let i_lo = (pair.loss(x_lo) / h).floor();
    let i_hi = (pair.loss(x_hi) / h).ceil().max(i_lo + 1.0);
    let points = i_hi - i_lo + 1.0;
    if points.is_nan() || points > MAX_POINTS as f64 {
        return Err(grid_error(points));
    }
    let n = points as usize;
    let min_index = i_lo as i64;
    let w = pair.p_weights();
    let sigma = pair.sigma;
    let tails_at = |k: usize| -> [Tails; 2] {
        let x = pair.x_at((min_index + k as i64) as f64 * h);
        [Tails::at(x, MEANS[0], sigma), Tails::at(x, MEANS[1], sigma)]
    };
    // Moving a point up by h keeps (1 − e^{−h}) of the gap ΔP − e^{ε_j}ΔQ at its lower end.
    let one_minus_e_minus_h = -(-h).exp_m1();
    let mut pmf = vec![0.0; n];
    let mut lower = tails_at(0);
    // P-mass at or below the lowest grid point: moved up to it.
    pmf[0] = w[0] * lower[0].cdf + w[1] * lower[1].cdf;
    for k in 0..n - 1 {
        let upper = tails_at(k + 1);
        let m0 = lower[0].mass_to(upper[0], MEANS[0]);
        let m1 = lower[1].mass_to(upper[1], MEANS[1]);
        let dp = w[0] * m0 + w[1] * m1;
        let c = pair.split_coefficients((min_index + k as i64) as f64 * h);
        let gap = c[0] * m0 + c[1] * m1; // ΔP − e^{ε_k}·ΔQ ≥ 0
        let up = (gap / one_minus_e_minus_h).clamp(0.0, dp);
        pmf[k] += dp - up;
        pmf[k + 1] += up;
        lower = upper;
    }
    let infinity = w[0] * lower[0].sf + w[1] * lower[1].sf;
    Ok(Discrete {
        min_index,
        pmf,
        infinity,
    })
}

/// A composed loss distribution on the grid: mass `pmf[k]` at loss `(lo_index + k)·h`,
/// `infinity` at `+∞`. Masses below the grid are not represented (see
/// [`Grid::epsilon`]).
#[derive(Debug, Clone)]
struct Grid {
    lo_index: i64,
    pmf: Vec<f64>,
    infinity: f64,
    /// Whether mass below the grid was cut off (so that ε below the grid is not certified).
    windowed: bool,
}

impl Grid {
    /// The smallest ε ≥ 0 with δ(ε) ≤ `delta` (+∞ if none).
    fn epsilon(&self, h: f64, delta: f64) -> f64 {
        if self.infinity > delta {
            return f64::INFINITY;
        }
        let n = self.pmf.len();
        let loss = |k: usize| (self.lo_index + k as i64) as f64 * h;
        let e_minus_h = (-h).exp();
        // Going down from the top point j: s = Σ_{k>j} p_k, d = Σ_{k>j} p_k·e^{ℓ_j − ℓ_k}, and
        // on (ℓ_j, ℓ_{j+1}] δ(ε) = infinity + s − e^{ε − ℓ_j}·d.
        let (mut s, mut d) = (0.0, 0.0);
        for j in (0..n.saturating_sub(1)).rev() {
            let p = self.pmf[j + 1];
            s += p;
            d = e_minus_h * (d + p);
            let at_j = self.infinity + s - d;
            if at_j > delta {
                let eps = loss(j) + ((self.infinity + s - delta) / d).ln();
                return eps.clamp(loss(j), loss(j + 1)).max(0.0);
            }
        }
        // δ(ℓ_0) ≤ delta. Below the grid, only an uncut distribution can go on.
        let floor = if n == 0 { 0.0 } else { loss(0) };
        if self.windowed || n == 0 {
            return floor.max(0.0);
        }
        s += self.pmf[0];
        d += self.pmf[0];
        if self.infinity + s <= delta {
            return 0.0;
        }
        let eps = floor + ((self.infinity + s - delta) / d).ln();
        eps.min(floor).max(0.0)
    }

    /// δ(`epsilon`).
    fn delta(&self, h: f64, epsilon: f64) -> f64 {
        let mut total = self.infinity;
        for (k, &p) in self.pmf.iter().enumerate() {
            let loss = (self.lo_index + k as i64) as f64 * h;
            if loss > epsilon {
                total += p * -(epsilon - loss).exp_m1();
            }
        }
        if self.windowed && epsilon < self.lo_index as f64 * h {
            total += TAIL_MASS;
        }
        total.min(1.0)
    }
}

/// The privacy loss distribution of a composition of (subsampled) Gaussian events, ready to
/// answer ε(δ) and δ(ε) queries. See the module doc for the method.
#[derive(Debug, Clone)]
pub struct ComposedPld {
    h: f64,
    /// One grid per direction (one only when every event has q = 1).
    grids: Vec<Grid>,
}

impl ComposedPld {
    /// Composes `events` (in any order; an empty list is no privacy loss).
    pub fn new(events: &[GaussianEvent]) -> Result<Self, AccountantError> {
        for e in events {
            e.validate()?;
        }
        if events.is_empty() {
            return Ok(Self {
                h: 0.0,
                grids: Vec::new(),
            });
        }
        let directions: &[Direction] = if events.iter().all(|e| e.sampling_rate == 1.0) {
            &[Direction::Remove]
        } else {
            &[Direction::Remove, Direction::Add]
        };
        let pairs: Vec<Vec<Pair>> = events
            .iter()
            .map(|e| {
                directions
                    .iter()
                    .map(|&direction| Pair {
                        q: e.sampling_rate,
                        sigma: e.noise_multiplier,
                        direction,
                        upper_z: upper_z(e.count, events.len()),
                    })
                    .collect()
            })
            .collect();
        let single = events.len() == 1 && events[0].count == 1;
        let ranges: Vec<f64> = pairs
            .iter()
            .flatten()
            .map(|p| {
                let (lo, hi) = p.x_range();
                p.loss(hi) - p.loss(lo)
            })
            .collect();
        let max_range = ranges.iter().copied().fold(0.0, f64::max);
        let min_range = ranges.iter().copied().fold(f64::INFINITY, f64::min);
        // The coarse pass's optimal Chernoff parameters, to bracket the fine pass's search.
        let mut hints: Option<Vec<[f64; 2]>> = None;
        let mut h = if single {
            max_range / SINGLE_POINTS as f64
        } else {
            // Size the window on a rough discretisation, then spread it over the target.
            let h0 = (min_range / COARSE_POINTS).max(max_range / (16.0 * COARSE_POINTS));
            let coarse = discretise_all(&pairs, h0)?;
            let (coarse_windows, optima) = chernoff_windows(events, &coarse, h0, None);
            hints = Some(optima);
            let width = coarse_windows
                .iter()
                .map(|(lo, hi)| (hi - lo + 1.0) * h0)
                .fold(0.0, f64::max);
            // Fine enough for the whole window, and to resolve each step's own spread: the
            // grid adds up to h²/4 to the variance of every step's loss.
            let min_std = pairs
                .iter()
                .flatten()
                .map(Pair::loss_std)
                .fold(f64::INFINITY, f64::min);
            (width / TARGET_POINTS as f64).min(min_std / STD_POINTS)
        };
        if !(h > 0.0 && h.is_finite()) {
            return Err(grid_error(f64::INFINITY));
        }
        for _ in 0..8 {
            let fine = discretise_all(&pairs, h)?;
            if single {
                let grids = fine
                    .into_iter()
                    .flatten()
                    .map(|d| Grid {
                        lo_index: d.min_index,
                        pmf: d.pmf,
                        infinity: d.infinity,
                        windowed: false,
                    })
                    .collect();
                return Ok(Self { h, grids });
            }
            let (windows, _) = chernoff_windows(events, &fine, h, hints.as_deref());
            let widest = windows
                .iter()
                .map(|(lo, hi)| hi - lo + 1.0)
                .fold(0.0, f64::max);
            if !widest.is_finite() {
                return Err(grid_error(widest));
            }
            if widest > MAX_POINTS as f64 {
                h *= 2.0 * widest / MAX_POINTS as f64;
                continue;
            }
            let windows = windows
                .into_iter()
                .map(window_indices)
                .collect::<Result<Vec<_>, _>>()?;
            let n = fft_len(widest as usize);
            let grids = fft_compose(events, &fine, &windows, n);
            return Ok(Self { h, grids });
        }
        Err(grid_error(f64::INFINITY))
    }

    /// The discretisation interval h of the loss grid (0 for an empty composition).
    pub fn discretisation(&self) -> f64 {
        self.h
    }

    /// The smallest ε ≥ 0 for which the composition is (ε, `delta`)-DP under add/remove
    /// adjacency by this (pessimistic) distribution: an upper bound on the true ε.
    pub fn epsilon(&self, delta: f64) -> Result<f64, AccountantError> {
        check_delta(delta)?;
        Ok(self
            .grids
            .iter()
            .map(|g| g.epsilon(self.h, delta))
            .fold(0.0, f64::max))
    }

    /// The δ at which the composition is (`epsilon`, δ)-DP: an upper bound on the true δ.
    pub fn delta(&self, epsilon: f64) -> Result<f64, AccountantError> {
        if !(epsilon >= 0.0 && epsilon.is_finite()) {
            return Err(AccountantError::Epsilon(epsilon));
        }
        Ok(self
            .grids
            .iter()
            .map(|g| g.delta(self.h, epsilon))
            .fold(0.0, f64::max))
    }
}

/// The ε at `delta` of the composition of `events`, and the discretisation interval used.
pub fn epsilon_for_events(
    events: &[GaussianEvent],
    delta: f64,
) -> Result<(f64, f64), AccountantError> {
    check_delta(delta)?;
    let pld = ComposedPld::new(events)?;
    Ok((pld.epsilon(delta)?, pld.discretisation()))
}

/// Discretises every event's pairs at spacing `h`, the two directions on two threads.
fn discretise_all(pairs: &[Vec<Pair>], h: f64) -> Result<Vec<Vec<Discrete>>, AccountantError> {
    let directions = pairs.first().map_or(0, Vec::len);
    let per_direction: Vec<Result<Vec<Discrete>, AccountantError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..directions)
            .map(|d| s.spawn(move || pairs.iter().map(|p| discretise(p[d], h)).collect()))
            .collect();
        let mut out = vec![pairs.iter().map(|p| discretise(p[0], h)).collect()];
        for handle in handles {
            out.push(
                handle
                    .join()
                    .unwrap_or_else(|_| Err(grid_error(f64::INFINITY))),
            );
        }
        out
    });
    let mut per_direction = per_direction
        .into_iter()
        .collect::<Result<Vec<Vec<Discrete>>, _>>()?;
    // Transpose to per event, per direction.
    let mut out: Vec<Vec<Discrete>> = (0..pairs.len()).map(|_| Vec::new()).collect();
    for column in &mut per_direction {
        for (event, d) in out.iter_mut().zip(column.drain(..)) {
            event.push(d);
        }
    }
    Ok(out)
}

/// `ln Σ_k p_k·e^{λ·ℓ_k}` over the finite part of a step's distribution (`ℓ_k` its grid
/// losses): its log moment generating function at λ, exactly. Within chunks of
/// [`MGF_CHUNK`] points the sum is a polynomial in `r = e^{λh}`, summed by Horner's rule, and
/// the chunks are combined in log space, so one `exp` serves a whole chunk. An underestimate
/// would make the Chernoff window too narrow, so no term may be lost to overflow or underflow:
/// chunks where that could happen are summed in log space.
fn log_mgf(d: &Discrete, h: f64, lambda: f64) -> f64 {
    let step = lambda * h;
    let chunked = step.abs() * MGF_CHUNK as f64 <= 600.0;
    let r = step.exp();
    let r_run = r.powi(MGF_RUN as i32);
    let terms = d
        .pmf
        .chunks(MGF_CHUNK)
        .enumerate()
        .filter_map(|(c, chunk)| {
            let first = (d.min_index + (c * MGF_CHUNK) as i64) as f64 * h;
            let sum = if chunked {
                horner(chunk, r, r_run)
            } else {
                0.0
            };
            // Past 1e-290 an underflowed term is below 1e-18 of the sum; short of it (or when
            // λ is so large that r^64 would overflow), the chunk is summed in log space.
            let log_sum = if sum >= 1e-290 {
                Some(sum.ln())
            } else {
                log_sum_terms(chunk, step)
            };
            log_sum.map(|l| l + lambda * first)
        });
    let terms: Vec<f64> = terms.collect();
    let peak = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !peak.is_finite() {
        return peak;
    }
    peak + terms.iter().map(|t| (t - peak).exp()).sum::<f64>().ln()
}

/// `ln Σ_k p_k·e^{step·k}` over one chunk, term by term in log space (no overflow or
/// underflow), or `None` if every `p_k` is 0.
fn log_sum_terms(chunk: &[f64], step: f64) -> Option<f64> {
    let term = |(k, &p): (usize, &f64)| (p > 0.0).then(|| p.ln() + step * k as f64);
    let peak = chunk
        .iter()
        .enumerate()
        .filter_map(term)
        .fold(f64::NEG_INFINITY, f64::max);
    if peak == f64::NEG_INFINITY {
        return None;
    }
    let rest: f64 = chunk
        .iter()
        .enumerate()
        .filter_map(term)
        .map(|t| (t - peak).exp())
        .sum();
    Some(peak + rest.ln())
}

/// Length of each of the four runs of a full [`MGF_CHUNK`] summed by [`horner`].
const MGF_RUN: usize = MGF_CHUNK / 4;

/// `Σ_k p_k·r^k` over one chunk. A full chunk is split into four runs summed by four
/// independent Horner chains (one chain is bound by the latency of its multiply-adds), then
/// joined with `r_run = r^MGF_RUN`.
fn horner(chunk: &[f64], r: f64, r_run: f64) -> f64 {
    if chunk.len() != MGF_CHUNK {
        return chunk.iter().rev().fold(0.0, |acc, &p| acc * r + p);
    }
    let mut acc = [0.0; 4];
    for j in (0..MGF_RUN).rev() {
        for (b, a) in acc.iter_mut().enumerate() {
            *a = *a * r + chunk[MGF_RUN * b + j];
        }
    }
    ((acc[3] * r_run + acc[2]) * r_run + acc[1]) * r_run + acc[0]
}

/// [`chernoff_window`] for every direction, on one thread each; also returns each
/// direction's optimal `ln λ` per side, which brackets the search at a finer grid (`hints`).
fn chernoff_windows(
    events: &[GaussianEvent],
    discrete: &[Vec<Discrete>],
    h: f64,
    hints: Option<&[[f64; 2]]>,
) -> (Vec<(f64, f64)>, Vec<[f64; 2]>) {
    let directions = discrete.first().map_or(0, Vec::len);
    let hint = |d: usize| hints.and_then(|all| all.get(d)).copied();
    let results: Vec<((f64, f64), [f64; 2])> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..directions)
            .map(|d| s.spawn(move || chernoff_window(events, discrete, d, h, hint(d))))
            .collect();
        let mut out = Vec::with_capacity(directions);
        if directions > 0 {
            out.push(chernoff_window(events, discrete, 0, h, hint(0)));
        }
        for (d, handle) in (1..directions).zip(handles) {
            // A panicked search (it has no panicking path) is redone on this thread.
            out.push(
                handle
                    .join()
                    .unwrap_or_else(|_| chernoff_window(events, discrete, d, h, None)),
            );
        }
        out
    });
    results.into_iter().unzip()
}

/// Grid indices `[lo, hi]` (integers, as floats) outside which the composition of `events`
/// (direction `d` of `discrete`) has at most [`TAIL_MASS`] on each side, by the Chernoff
/// bound `P(L ≥ t) ≤ exp(−λt + Σ count·K(λ))` optimised over λ; and the optimal `ln λ` of
/// each side (upper, lower).
///
/// Every λ > 0 gives a valid bound, so the search only decides how tight the window is: with
/// a `hint` (the optimum at a coarser grid of the same distributions) it searches ±[`HINT_SPAN`]
/// around it with fewer steps.
fn chernoff_window(
    events: &[GaussianEvent],
    discrete: &[Vec<Discrete>],
    d: usize,
    h: f64,
    hint: Option<[f64; 2]>,
) -> ((f64, f64), [f64; 2]) {
    let log_beta = TAIL_MASS.ln();
    // For side = +1, the tightest t with P(L ≥ t) ≤ β is min_λ (Σ count·K(λ) − ln β)/λ; for
    // side = −1, −min_λ (Σ count·K(−λ) − ln β)/λ. The objective is unimodal in λ.
    let bound = |side: f64, hint: Option<f64>| -> (f64, f64) {
        let objective = |u: f64| {
            let lambda = u.exp();
            let k: f64 = events
                .iter()
                .zip(discrete)
                .map(|(e, per_dir)| e.count as f64 * log_mgf(&per_dir[d], h, side * lambda))
                .sum();
            (k - log_beta) / lambda
        };
        let (value, arg) = match hint {
            Some(u) if u.is_finite() => {
                golden_section_min(objective, u - HINT_SPAN, u + HINT_SPAN, HINTED_STEPS)
            }
            _ => golden_section_min(objective, -15.0, 25.0, SEARCH_STEPS),
        };
        (side * value, arg)
    };
    let (upper, u_hi) = bound(1.0, hint.map(|h| h[0]));
    let (lower, u_lo) = bound(-1.0, hint.map(|h| h[1]));
    let hi = (upper / h).ceil();
    let lo = (lower / h).floor();
    ((lo, hi.max(lo + 1.0)), [u_hi, u_lo])
}

/// A window's grid indices as integers, if it is small enough to compute.
fn window_indices((lo, hi): (f64, f64)) -> Result<(i64, i64), AccountantError> {
    const LIMIT: f64 = (1u64 << 60) as f64;
    let points = hi - lo + 1.0;
    if points <= MAX_POINTS as f64 && lo.abs() < LIMIT && hi.abs() < LIMIT {
        Ok((lo as i64, hi as i64))
    } else {
        Err(grid_error(points))
    }
}

/// The minimum of a unimodal function on `[a, b]` by golden-section search in `steps`
/// steps, and the argument where it was found.
fn golden_section_min(f: impl Fn(f64) -> f64, mut a: f64, mut b: f64, steps: usize) -> (f64, f64) {
    let ratio = (5.0_f64.sqrt() - 1.0) / 2.0;
    let mut c = b - ratio * (b - a);
    let mut e = a + ratio * (b - a);
    let (mut fc, mut fe) = (f(c), f(e));
    let mut best = if fc <= fe { (fc, c) } else { (fe, e) };
    for _ in 0..steps {
        if fc <= fe {
            b = e;
            e = c;
            fe = fc;
            c = b - ratio * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = e;
            fc = fe;
            e = a + ratio * (b - a);
            fe = f(e);
        }
        // A NaN never replaces a number.
        for (value, arg) in [(fc, c), (fe, e)] {
            if value < best.0 || best.0.is_nan() {
                best = (value, arg);
            }
        }
    }
    best
}

/// Raising to a fixed power `count`, 0 once the modulus underflows.
#[derive(Debug, Clone, Copy)]
struct Power {
    count: u64,
    /// `|z|² < this` ⇔ `|z|^count < e^{−745}`, below the smallest subnormal.
    min_norm_sqr: f64,
}

impl Power {
    fn new(count: u64) -> Self {
        Self {
            count,
            min_norm_sqr: (-1490.0 / count as f64).exp(),
        }
    }

    /// `z^count`: by repeated squaring for moderate counts, by the polar form beyond.
    fn of(self, z: Complex64) -> Complex64 {
        let norm_sqr = z.norm_sqr();
        if self.count == 1 {
            return z;
        }
        if norm_sqr < self.min_norm_sqr || norm_sqr == 0.0 {
            return Complex64::new(0.0, 0.0);
        }
        if self.count < 1 << 20 {
            let (mut base, mut e, mut acc) = (z, self.count, Complex64::new(1.0, 0.0));
            while e > 0 {
                if e & 1 == 1 {
                    acc *= base;
                }
                e >>= 1;
                if e > 0 {
                    base *= base;
                }
            }
            return acc;
        }
        let c = self.count as f64;
        Complex64::from_polar((0.5 * norm_sqr.ln() * c).exp(), z.im.atan2(z.re) * c)
    }
}

/// The smallest FFT-friendly length (2^a times 1, 9/8, 5/4 or 3/2) of at least `n`.
fn fft_len(n: usize) -> usize {
    let p = n.next_power_of_two().max(8);
    [p / 2 + p / 16, p / 2 + p / 8, p / 2 + p / 4, p]
        .into_iter()
        .find(|&m| m >= n)
        .unwrap_or(p)
}

/// FFT plans are cached across calls (calibration asks for the same lengths repeatedly).
fn fft_plans(n: usize) -> (Arc<dyn Fft<f64>>, Arc<dyn Fft<f64>>) {
    static PLANNER: OnceLock<Mutex<FftPlanner<f64>>> = OnceLock::new();
    let planner = PLANNER.get_or_init(|| Mutex::new(FftPlanner::new()));
    let mut planner = planner.lock().unwrap_or_else(PoisonError::into_inner);
    (planner.plan_fft_forward(n), planner.plan_fft_inverse(n))
}

/// Composes every event `count` times by one length-`n` FFT (both directions packed into
/// the real and imaginary parts), and reads each direction off its window.
fn fft_compose(
    events: &[GaussianEvent],
    discrete: &[Vec<Discrete>],
    windows: &[(i64, i64)],
    n: usize,
) -> Vec<Grid> {
    let directions = windows.len();
    let (forward, inverse) = fft_plans(n);
    let zero = Complex64::new(0.0, 0.0);
    let one = Complex64::new(1.0, 0.0);
    let mut buffer = vec![zero; n];
    if let ([event], [per_dir]) = (events, discrete) {
        // One event: raise its spectrum to the power, on two threads, no product buffer.
        fill(&mut buffer, per_dir);
        forward.process(&mut buffer);
        let power = Power::new(event.count);
        let half = n / 2;
        if directions == 1 {
            // Each frequency on its own: in place, half the spectrum per thread.
            let (low, high) = buffer.split_at_mut(half);
            std::thread::scope(|s| {
                s.spawn(|| high.iter_mut().for_each(|x| *x = power.of(*x)));
                low.iter_mut().for_each(|x| *x = power.of(*x));
            });
            inverse.process(&mut buffer);
            return read_grids(events, discrete, windows, &buffer);
        }
        // With two directions packed, frequency k's result needs k and n − k: unpack both
        // directions' spectra there, raise them, pack them again. Each output is independent.
        let spectrum = &buffer;
        let raised = |k: usize| -> Complex64 {
            let x = spectrum[k];
            let yc = spectrum[(n - k) % n].conj();
            let a = power.of((x + yc) * 0.5);
            let b = power.of((x - yc) * Complex64::new(0.0, -0.5));
            a + Complex64::new(0.0, 1.0) * b
        };
        let mut out = vec![zero; n];
        let (low, high) = out.split_at_mut(half);
        std::thread::scope(|s| {
            s.spawn(|| {
                for (i, slot) in high.iter_mut().enumerate() {
                    *slot = raised(half + i);
                }
            });
            for (k, slot) in low.iter_mut().enumerate() {
                *slot = raised(k);
            }
        });
        inverse.process(&mut out);
        return read_grids(events, discrete, windows, &out);
    }
    let mut product = vec![[one; 2]; n];
    for (event, per_dir) in events.iter().zip(discrete) {
        buffer.fill(zero);
        fill(&mut buffer, per_dir);
        forward.process(&mut buffer);
        let power = Power::new(event.count);
        let spectrum = &buffer;
        // Pointwise powers on two threads, half the frequencies each.
        let multiply = |first: usize, accs: &mut [[Complex64; 2]]| {
            for (i, acc) in accs.iter_mut().enumerate() {
                let k = first + i;
                let x = spectrum[k];
                if directions == 1 {
                    acc[0] *= power.of(x);
                } else {
                    // Unpack the two real sequences' spectra from the packed one.
                    let xc = spectrum[(n - k) % n].conj();
                    acc[0] *= power.of((x + xc) * 0.5);
                    acc[1] *= power.of((x - xc) * Complex64::new(0.0, -0.5));
                }
            }
        };
        let half = n / 2;
        let (low, high) = product.split_at_mut(half);
        std::thread::scope(|s| {
            s.spawn(|| multiply(half, high));
            multiply(0, low);
        });
    }
    for (slot, acc) in buffer.iter_mut().zip(&product) {
        *slot = if directions == 1 {
            acc[0]
        } else {
            acc[0] + Complex64::new(0.0, 1.0) * acc[1]
        };
    }
    drop(product);
    inverse.process(&mut buffer);
    read_grids(events, discrete, windows, &buffer)
}

/// Places one event's distributions (direction 0 in the real parts, 1 in the imaginary
/// parts) from the start of `buffer`, wrapping around.
fn fill(buffer: &mut [Complex64], per_dir: &[Discrete]) {
    let n = buffer.len();
    for (d, dist) in per_dir.iter().enumerate() {
        for (k, &p) in dist.pmf.iter().enumerate() {
            let slot = &mut buffer[k % n];
            if d == 0 {
                slot.re += p;
            } else {
                slot.im += p;
            }
        }
    }
}

/// Reads each direction's composed distribution off the inverse FFT, from its window.
fn read_grids(
    events: &[GaussianEvent],
    discrete: &[Vec<Discrete>],
    windows: &[(i64, i64)],
    buffer: &[Complex64],
) -> Vec<Grid> {
    let n = buffer.len();
    let scale = 1.0 / n as f64;
    (0..windows.len())
        .map(|d| {
            // Index of the composed loss grid where each event's first point sits, summed.
            let offset: i128 = events
                .iter()
                .zip(discrete)
                .map(|(e, per_dir)| i128::from(e.count) * i128::from(per_dir[d].min_index))
                .sum();
            let lo = windows[d].0;
            let start = (i128::from(lo) - offset).rem_euclid(n as i128) as usize;
            let pmf = buffer[start..]
                .iter()
                .chain(&buffer[..start])
                .map(|v| (if d == 0 { v.re } else { v.im } * scale).max(0.0))
                .collect();
            // 1 − Π (1 − p∞)^count, plus the Chernoff bound on the mass above the window.
            let log_finite: f64 = events
                .iter()
                .zip(discrete)
                .map(|(e, per_dir)| e.count as f64 * (-per_dir[d].infinity).ln_1p())
                .sum();
            Grid {
                lo_index: lo,
                pmf,
                infinity: (-log_finite.exp_m1() + TAIL_MASS).min(1.0),
                windowed: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(q: f64, sigma: f64, count: u64) -> GaussianEvent {
        GaussianEvent {
            sampling_rate: q,
            noise_multiplier: sigma,
            count,
        }
    }

    fn eps(q: f64, sigma: f64, count: u64, delta: f64) -> f64 {
        epsilon_for_events(&[event(q, sigma, count)], delta)
            .unwrap()
            .0
    }

    /// Standard normal CDF.
    fn phi(x: f64) -> f64 {
        0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
    }

    /// The exact ε of T releases of the Gaussian mechanism (σ, sensitivity 1): μ-GDP with
    /// μ = √T/σ, whose δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Balle and Wang 2018),
    /// inverted by bisection.
    fn exact_gaussian_epsilon(sigma: f64, steps: u64, delta: f64) -> f64 {
        let mu = (steps as f64).sqrt() / sigma;
        let log_phi = |x: f64| {
            -std::f64::consts::LN_2 + super::super::log_erfc(-x / std::f64::consts::SQRT_2)
        };
        let delta_at = |e: f64| phi(-e / mu + mu / 2.0) - (e + log_phi(-e / mu - mu / 2.0)).exp();
        let (mut lo, mut hi) = (0.0, 1.0);
        while delta_at(hi) > delta {
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if delta_at(mid) > delta {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    #[test]
    fn gaussian_compositions_are_upper_bounds_within_a_hair_of_the_exact_epsilon() {
        for (sigma, steps, delta) in [
            (0.8, 1, 1e-6),
            (2.0, 10, 1e-5),
            (5.0, 1000, 1e-8),
            (20.0, 100_000, 1e-5),
            (0.5, 100_000, 1e-5), // ε ≈ 2e5: a coarse grid, still an upper bound
            (1.0, 3, 1e-3),
        ] {
            let exact = exact_gaussian_epsilon(sigma, steps, delta);
            let got = eps(1.0, sigma, steps, delta);
            assert!(
                got >= exact * (1.0 - 1e-12) && got <= exact * (1.0 + 1e-3),
                "sigma={sigma} T={steps} delta={delta}: {got} vs exact {exact}"
            );
        }
    }

    #[test]
    fn epsilon_and_delta_invert_each_other_pessimistically() {
        let pld = ComposedPld::new(&[event(0.05, 1.2, 500)]).unwrap();
        for delta in [1e-3, 1e-5, 1e-8] {
            let e = pld.epsilon(delta).unwrap();
            let back = pld.delta(e).unwrap();
            assert!(back <= delta * (1.0 + 1e-9), "{delta} -> {e} -> {back}");
            assert!(back >= delta * (1.0 - 1e-6), "{delta} -> {e} -> {back}");
            // A little less ε costs more than δ.
            assert!(pld.delta(e * 0.999).unwrap() > delta);
        }
    }

    #[test]
    fn more_noise_fewer_steps_and_more_delta_never_cost_more() {
        let base = eps(0.01, 1.0, 1000, 1e-5);
        assert!(eps(0.01, 1.1, 1000, 1e-5) < base);
        assert!(eps(0.01, 1.0, 900, 1e-5) < base);
        assert!(eps(0.01, 1.0, 1000, 1e-4) < base);
        assert!(eps(0.005, 1.0, 1000, 1e-5) < base);
    }

    #[test]
    fn heterogeneous_events_compose_in_any_order() {
        let a = event(0.02, 1.1, 300);
        let b = event(1.0, 5.0, 3);
        let ab = epsilon_for_events(&[a, b], 1e-5).unwrap().0;
        let ba = epsilon_for_events(&[b, a], 1e-5).unwrap().0;
        assert!((ab - ba).abs() <= 1e-6 * ab, "{ab} vs {ba}");
        let alone = eps(0.02, 1.1, 300, 1e-5);
        assert!(ab > alone);
        // Splitting one event's count in two changes nothing but round-off.
        let split = epsilon_for_events(&[event(0.02, 1.1, 100), event(0.02, 1.1, 200)], 1e-5)
            .unwrap()
            .0;
        assert!((split - alone).abs() <= 1e-3 * alone, "{split} vs {alone}");
    }

    #[test]
    fn the_issue_setting_is_tight() {
        // q = 0.01, σ = 5, T = 1, δ = 1e-5: dp-accounting's PLD gives 0.0057, RDP 0.0449.
        let e = eps(0.01, 5.0, 1, 1e-5);
        assert!((0.0057..0.0058).contains(&e), "{e}");
    }

    #[test]
    fn no_events_is_no_loss_and_bad_events_are_refused() {
        let empty = ComposedPld::new(&[]).unwrap();
        assert_eq!(empty.epsilon(1e-5).unwrap(), 0.0);
        assert_eq!(empty.delta(0.0).unwrap(), 0.0);
        assert_eq!(
            ComposedPld::new(&[event(0.0, 1.0, 1)]).unwrap_err(),
            AccountantError::SamplingRate(0.0)
        );
        assert_eq!(
            ComposedPld::new(&[event(0.1, f64::NAN, 1)])
                .unwrap_err()
                .to_string(),
            AccountantError::NoiseMultiplier(f64::NAN).to_string()
        );
        assert_eq!(
            ComposedPld::new(&[event(0.1, 1.0, 0)]).unwrap_err(),
            AccountantError::ZeroSteps
        );
        assert!(matches!(empty.epsilon(0.0), Err(AccountantError::Delta(_))));
        assert!(matches!(
            empty.delta(-1.0),
            Err(AccountantError::Epsilon(_))
        ));
        // Absurd compositions are refused with a typed error, not a huge allocation.
        assert!(matches!(
            ComposedPld::new(&[event(1.0, 1e-3, u64::MAX)]),
            Err(AccountantError::PldGrid { .. })
        ));
    }

    #[test]
    fn moment_generating_function_matches_a_term_by_term_sum() {
        // Lengths around the chunk and run sizes, λ of both signs and of the size where the
        // chunked path gives way to term by term.
        let h = 1e-3;
        for len in [1, 15, 16, 63, 64, 65, 128, 1000] {
            let pmf: Vec<f64> = (0..len).map(|k| 1.0 + ((k * 7919) % 13) as f64).collect();
            let d = Discrete {
                min_index: -(len as i64) / 3,
                pmf,
                infinity: 0.0,
            };
            for lambda in [-2e4, -50.0, -1.0, 0.0, 0.5, 3.0, 200.0, 2e4] {
                let terms: Vec<f64> = d
                    .pmf
                    .iter()
                    .enumerate()
                    .map(|(k, p)| p.ln() + lambda * (d.min_index + k as i64) as f64 * h)
                    .collect();
                let peak = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let direct = peak + terms.iter().map(|t| (t - peak).exp()).sum::<f64>().ln();
                let got = log_mgf(&d, h, lambda);
                assert!(
                    (got - direct).abs() <= 1e-12 * direct.abs().max(1.0),
                    "len {len}, λ {lambda}: {got} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn moment_generating_function_keeps_terms_a_tilt_would_underflow() {
        // All of the first chunk's mass sits on its last point, at 1e-300: tilted by λ < 0 it
        // is below the smallest double, yet it is the largest term of the sum.
        let mut pmf = vec![0.0; 128];
        pmf[63] = 1e-300;
        pmf[127] = 1e-300;
        let d = Discrete {
            min_index: 0,
            pmf,
            infinity: 0.0,
        };
        let (h, lambda) = (1.0, -9.0);
        let direct = (1e-300_f64).ln() + lambda * 63.0 + (1.0 + (lambda * 64.0).exp()).ln();
        let got = log_mgf(&d, h, lambda);
        assert!((got - direct).abs() < 1e-9, "{got} vs {direct}");
    }

    #[test]
    fn golden_section_finds_the_minimum_and_where() {
        let (value, arg) = golden_section_min(|u| (u - 1.7).powi(2) + 3.0, -15.0, 25.0, 40);
        assert!((arg - 1.7).abs() < 1e-6 && (value - 3.0).abs() < 1e-12);
        // A bracket that misses the minimum ends at its nearer end.
        let (_, arg) = golden_section_min(|u| (u - 5.0).powi(2), 0.0, 2.0, 30);
        assert!(arg > 1.999, "{arg}");
    }

    #[test]
    fn the_top_of_the_grid_costs_at_most_the_tail_budget() {
        // Standard normal tails (Python's math.erfc): Q(9.95) = 1.2609e-23, Q(10) = 7.6199e-24.
        // At T = 10⁵ of one event the budget is 1e-18 / 10⁵ = 1e-23, so the cut is in (9.95, 10].
        let z = upper_z(100_000, 1);
        assert!(z > 9.95 && z <= 10.0, "{z}");
        // Two events halve each one's budget; more steps need more.
        assert!(upper_z(100_000, 2) > z && upper_z(10_000_000, 1) > z);
        assert!(upper_z(1, 1) < z);
        // What a step sends to +∞, times its count, stays within the budget.
        for (q, sigma, count) in [(0.001, 0.8, 100_000), (0.3, 2.0, 50), (1.0, 1.0, 1)] {
            for direction in [Direction::Remove, Direction::Add] {
                let pair = Pair {
                    q,
                    sigma,
                    direction,
                    upper_z: upper_z(count, 1),
                };
                let d = discretise(pair, 1e-3).unwrap();
                assert!(
                    d.infinity * count as f64 <= TAIL_MASS,
                    "{q} {sigma} {count} {direction:?}: {}",
                    d.infinity
                );
            }
        }
    }

    #[test]
    fn discretisation_keeps_both_masses_and_rounds_up() {
        for direction in [Direction::Remove, Direction::Add] {
            let pair = Pair {
                q: 0.1,
                sigma: 1.0,
                direction,
                upper_z: upper_z(1, 1),
            };
            let h = 1e-3;
            let d = discretise(pair, h).unwrap();
            let total: f64 = d.pmf.iter().sum::<f64>() + d.infinity;
            assert!((total - 1.0).abs() < 1e-12, "{direction:?}: mass {total}");
            // E_P[e^{−L}] = Q's mass (1), up to the tails moved to the ends of the grid.
            let q_mass: f64 = d
                .pmf
                .iter()
                .enumerate()
                .map(|(k, p)| p * (-((d.min_index + k as i64) as f64) * h).exp())
                .sum();
            assert!(
                (q_mass - 1.0).abs() < 1e-9,
                "{direction:?}: Q mass {q_mass}"
            );
        }
    }
}
