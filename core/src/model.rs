//! Models: L2-regularised logistic regression and a one-hidden-layer MLP, both with a sigmoid
//! output and binary cross-entropy loss.
//!
//! Parameters live in one flat `Vec<f64>` so that the same code encodes, clips, masks and
//! averages them whatever the architecture. Layouts:
//! - logistic: `w[d]`, `b`;
//! - MLP with `h` hidden units: `W1[d×h]` (row `j` holds input `j`'s weights to every hidden
//!   unit, so a sparse input touches contiguous memory), `b1[h]`, `w2[h]`, `b2`.
//!
//! L2 applies to weights, never biases; [`Model::decay_ranges`] says where they are.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut2};
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::alloc::AllocError;
use crate::matrix::{CsrMatrix, Dataset};
use crate::spec::{JobSpec, ModelKindName};

/// Model family and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Logistic regression.
    Logistic,
    /// One hidden ReLU layer of this many units.
    Mlp {
        /// Hidden units.
        hidden: usize,
    },
}

impl Architecture {
    /// The architecture a spec declares.
    pub fn from_spec(spec: &JobSpec) -> Self {
        match spec.model.kind {
            ModelKindName::Logistic => Architecture::Logistic,
            ModelKindName::Mlp => Architecture::Mlp {
                hidden: spec.model.hidden.unwrap_or(1) as usize,
            },
            // A gbdt job has no architecture of weights: the words of its round state travel in
            // a model's place (`gbdt::wire`), and every use of the architecture (training,
            // export, scoring) branches on `spec.is_gbdt()` first.
            ModelKindName::Gbdt => Architecture::Logistic,
        }
    }

    /// Number of parameters for `dim` inputs.
    pub fn num_params(self, dim: usize) -> usize {
        match self {
            Architecture::Logistic => dim + 1,
            Architecture::Mlp { hidden } => dim * hidden + 2 * hidden + 1,
        }
    }
}

/// A model: architecture, input dimension and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Family and shape.
    pub arch: Architecture,
    /// Number of inputs.
    pub dim: usize,
    /// Flat parameters (see the module doc for the layout).
    pub params: Vec<f64>,
}

/// Numerically stable logistic function.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Binary cross-entropy of a logit `z` against label `y` (0 or 1), stable for any `z`.
pub fn bce_from_logit(z: f64, y: f64) -> f64 {
    z.max(0.0) - y * z + (-z.abs()).exp().ln_1p()
}

impl Model {
    /// A model with all parameters zero.
    pub fn zeros(arch: Architecture, dim: usize) -> Self {
        Self {
            arch,
            dim,
            params: vec![0.0; arch.num_params(dim)],
        }
    }

    /// A model of `arch` on `dim` inputs with these parameters, or `None` if their number is
    /// not the architecture's.
    pub fn from_params(arch: Architecture, dim: usize, params: Vec<f64>) -> Option<Self> {
        (params.len() == arch.num_params(dim)).then_some(Self { arch, dim, params })
    }

    /// [`Model::zeros`], or an error if its parameters do not fit in memory (a size the spec
    /// decides: use this wherever the spec came from someone else).
    pub fn try_zeros(arch: Architecture, dim: usize) -> Result<Self, AllocError> {
        Ok(Self {
            arch,
            dim,
            params: crate::alloc::filled(arch.num_params(dim), 0.0, "the model's parameters")?,
        })
    }

    /// A freshly initialised model: zeros for logistic regression; for the MLP, He-normal
    /// first-layer weights (scaled for sparse one-hot inputs) and small output weights.
    pub fn init<R: Rng + ?Sized>(arch: Architecture, dim: usize, rng: &mut R) -> Self {
        let mut m = Self::zeros(arch, dim);
        m.initialise(rng);
        m
    }

    /// [`Model::init`], or an error if its parameters do not fit in memory.
    pub fn try_init<R: Rng + ?Sized>(
        arch: Architecture,
        dim: usize,
        rng: &mut R,
    ) -> Result<Self, AllocError> {
        let mut m = Self::try_zeros(arch, dim)?;
        m.initialise(rng);
        Ok(m)
    }

    fn initialise<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let (arch, dim) = (self.arch, self.dim);
        let m = self;
        if let Architecture::Mlp { hidden } = arch {
            let w1 = Normal::new(0.0, (2.0 / dim.max(1) as f64).sqrt().max(0.05)).ok();
            let w2 = Normal::new(0.0, (1.0 / hidden as f64).sqrt()).ok();
            if let (Some(w1), Some(w2)) = (w1, w2) {
                for p in &mut m.params[..dim * hidden] {
                    *p = w1.sample(rng);
                }
                let o = dim * hidden + hidden;
                for p in &mut m.params[o..o + hidden] {
                    *p = w2.sample(rng);
                }
            }
        }
    }

    /// Ranges of `params` that are weights (regularised), as opposed to biases.
    pub fn decay_ranges(&self) -> Vec<Range<usize>> {
        match self.arch {
            Architecture::Logistic => std::iter::once(0..self.dim).collect(),
            Architecture::Mlp { hidden } => {
                let o = self.dim * hidden + hidden;
                vec![0..self.dim * hidden, o..o + hidden]
            }
        }
    }

    /// The output logit for row `r` of `x`.
    pub fn logit(&self, x: &CsrMatrix, r: usize) -> f64 {
        match self.arch {
            Architecture::Logistic => {
                x.dot_row(r, &self.params[..self.dim]) + self.params[self.dim]
            }
            Architecture::Mlp { hidden } => {
                let mut pre = vec![0.0; hidden];
                self.mlp_forward(x, r, hidden, &mut pre)
            }
        }
    }

    /// Predicted probability of the positive class for row `r`.
    pub fn predict(&self, x: &CsrMatrix, r: usize) -> f64 {
        sigmoid(self.logit(x, r))
    }

    /// Predicted probabilities for every row.
    pub fn predict_all(&self, x: &CsrMatrix) -> Vec<f64> {
        (0..x.rows()).map(|r| self.predict(x, r)).collect()
    }

    fn mlp_parts(
        &self,
        hidden: usize,
    ) -> (
        ArrayView2<'_, f64>,
        ArrayView1<'_, f64>,
        ArrayView1<'_, f64>,
        f64,
    ) {
        let d = self.dim;
        let p = &self.params;
        let w1 = ArrayView2::from_shape((d, hidden), &p[..d * hidden]);
        let b1 = ArrayView1::from(&p[d * hidden..d * hidden + hidden]);
        let w2 = ArrayView1::from(&p[d * hidden + hidden..d * hidden + 2 * hidden]);
        let b2 = p[d * hidden + 2 * hidden];
        match w1 {
            Ok(w1) => (w1, b1, w2, b2),
            // The layout is fixed by `num_params`, so the shape always fits.
            Err(_) => unreachable!("parameter vector shorter than the architecture"),
        }
    }

    /// Fills `pre` with hidden pre-activations and returns the output logit.
    fn mlp_forward(&self, x: &CsrMatrix, r: usize, hidden: usize, pre: &mut [f64]) -> f64 {
        let (w1, b1, w2, b2) = self.mlp_parts(hidden);
        pre.copy_from_slice(b1.as_slice().unwrap_or(&[]));
        let (idx, val) = x.row(r);
        for (&j, &v) in idx.iter().zip(val) {
            let row = w1.row(j as usize);
            for (p, w) in pre.iter_mut().zip(row.iter()) {
                *p += v * w;
            }
        }
        pre.iter()
            .zip(w2.iter())
            .map(|(&p, &w)| p.max(0.0) * w)
            .sum::<f64>()
            + b2
    }

    /// Adds the gradient of the summed data loss over `rows` into `grad` and returns the
    /// summed loss. Regularisation is not included (see [`Model::objective`]).
    pub fn accumulate_gradient(&self, data: &Dataset, rows: &[usize], grad: &mut [f64]) -> f64 {
        let mut loss = 0.0;
        match self.arch {
            Architecture::Logistic => {
                let d = self.dim;
                for &r in rows {
                    let z = self.logit(&data.x, r);
                    let y = data.y[r];
                    loss += bce_from_logit(z, y);
                    let dz = sigmoid(z) - y;
                    data.x.add_row_scaled(r, dz, &mut grad[..d]);
                    grad[d] += dz;
                }
            }
            Architecture::Mlp { hidden } => {
                let d = self.dim;
                let mut pre = vec![0.0; hidden];
                let mut dh = vec![0.0; hidden];
                let w2: Vec<f64> =
                    self.params[d * hidden + hidden..d * hidden + 2 * hidden].to_vec();
                for &r in rows {
                    let z = self.mlp_forward(&data.x, r, hidden, &mut pre);
                    let y = data.y[r];
                    loss += bce_from_logit(z, y);
                    let dz = sigmoid(z) - y;
                    for k in 0..hidden {
                        let active = pre[k] > 0.0;
                        dh[k] = if active { dz * w2[k] } else { 0.0 };
                        grad[d * hidden + hidden + k] += dz * pre[k].max(0.0);
                        grad[d * hidden + k] += dh[k];
                    }
                    grad[d * hidden + 2 * hidden] += dz;
                    let (gw1, _) = grad.split_at_mut(d * hidden);
                    if let Ok(mut gw1) = ArrayViewMut2::from_shape((d, hidden), gw1) {
                        let (idx, val) = data.x.row(r);
                        for (&j, &v) in idx.iter().zip(val) {
                            let mut g = gw1.row_mut(j as usize);
                            g.zip_mut_with(&ArrayView1::from(&dh[..]), |g, &h| *g += v * h);
                        }
                    }
                }
            }
        }
        loss
    }

    /// Mean loss over `data` plus `l2/2 · ‖weights‖²`, with its gradient. Used to check the
    /// training gradient and to report training loss; SGD uses the cheaper per-batch path.
    pub fn objective(&self, data: &Dataset, l2: f64) -> (f64, Vec<f64>) {
        let rows: Vec<usize> = (0..data.len()).collect();
        let mut grad = vec![0.0; self.params.len()];
        let n = data.len().max(1) as f64;
        let mut loss = self.accumulate_gradient(data, &rows, &mut grad) / n;
        for g in &mut grad {
            *g /= n;
        }
        for range in self.decay_ranges() {
            for i in range {
                loss += 0.5 * l2 * self.params[i] * self.params[i];
                grad[i] += l2 * self.params[i];
            }
        }
        (loss, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn toy(rng: &mut StdRng, rows: usize, dim: usize) -> Dataset {
        let mut x = CsrMatrix::with_capacity(dim, rows, rows * 3);
        let mut y = Vec::new();
        for _ in 0..rows {
            let a = rng.random_range(0..dim) as u32;
            let b = rng.random_range(0..dim) as u32;
            let mut e = vec![(a, rng.random_range(-2.0..2.0))];
            if b != a {
                e.push((b, 1.0));
            }
            e.sort_by_key(|p| p.0);
            x.push_row(&e);
            y.push(if rng.random_bool(0.4) { 1.0 } else { 0.0 });
        }
        Dataset { x, y }
    }

    fn check_gradient(arch: Architecture) {
        let mut rng = StdRng::seed_from_u64(11);
        let data = toy(&mut rng, 40, 6);
        let mut m = Model::init(arch, 6, &mut rng);
        for p in &mut m.params {
            *p += rng.random_range(-0.5..0.5);
        }
        let l2 = 0.3;
        let (_, grad) = m.objective(&data, l2);
        let h = 1e-6;
        for (i, &analytic) in grad.iter().enumerate() {
            let mut plus = m.clone();
            plus.params[i] += h;
            let mut minus = m.clone();
            minus.params[i] -= h;
            let fd = (plus.objective(&data, l2).0 - minus.objective(&data, l2).0) / (2.0 * h);
            assert!(
                (fd - analytic).abs() < 1e-6 * (1.0 + fd.abs()),
                "{arch:?} param {i}: analytic {analytic} vs finite difference {fd}"
            );
        }
    }

    #[test]
    fn logistic_gradient_matches_finite_differences() {
        check_gradient(Architecture::Logistic);
    }

    #[test]
    fn mlp_gradient_matches_finite_differences() {
        check_gradient(Architecture::Mlp { hidden: 5 });
    }

    #[test]
    fn bce_is_stable_and_correct() {
        for &(z, y) in &[(0.3, 1.0), (-2.0, 0.0), (5.0, 0.0)] {
            let p: f64 = sigmoid(z);
            let direct = -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            assert!((bce_from_logit(z, y) - direct).abs() < 1e-12);
        }
        assert!(bce_from_logit(800.0, 0.0).is_finite());
        assert!((bce_from_logit(-800.0, 1.0) - 800.0).abs() < 1e-9);
    }
}
