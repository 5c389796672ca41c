//! Local training and server optimisers.
//!
//! A partner runs [`train_local`] (minibatch SGD with L2 weight decay and an optional FedProx
//! proximal term) from the global model; the difference is its update. The coordinator feeds
//! the example-weighted average of the updates to a [`ServerOptimizer`].

use rand::Rng;
use rand::seq::SliceRandom;

use crate::alloc::AllocError;
use crate::matrix::Dataset;
use crate::model::Model;
use crate::spec::{JobSpec, ServerOptimizerName};

/// Settings of one partner's local training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalTraining {
    /// Passes over the data.
    pub epochs: u32,
    /// Minibatch size.
    pub batch_size: usize,
    /// SGD step size.
    pub learning_rate: f64,
    /// L2 strength on weights.
    pub l2: f64,
    /// FedProx μ: pulls the local model towards the global one.
    pub prox_mu: f64,
}

impl LocalTraining {
    /// The settings a spec declares.
    pub fn from_spec(spec: &JobSpec) -> Self {
        Self {
            epochs: spec.training.local_epochs,
            batch_size: spec.training.batch_size as usize,
            learning_rate: spec.training.learning_rate,
            l2: spec.model.l2,
            prox_mu: spec.training.fedprox_mu,
        }
    }
}

/// Trains `model` in place on `data` and returns the mean minibatch loss of the last epoch.
pub fn train_local<R: Rng + ?Sized>(
    model: &mut Model,
    data: &Dataset,
    cfg: &LocalTraining,
    rng: &mut R,
) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let anchor = (cfg.prox_mu > 0.0).then(|| model.params.clone());
    let decay = model.decay_ranges();
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut grad = vec![0.0; model.params.len()];
    let mut last_epoch_loss = 0.0;
    for _ in 0..cfg.epochs {
        order.shuffle(rng);
        let mut loss = 0.0;
        for batch in order.chunks(cfg.batch_size.max(1)) {
            grad.iter_mut().for_each(|g| *g = 0.0);
            loss += model.accumulate_gradient(data, batch, &mut grad);
            apply_step(
                model,
                &grad,
                cfg.learning_rate / batch.len() as f64,
                cfg,
                &decay,
                anchor.as_deref(),
            );
        }
        last_epoch_loss = loss / data.len() as f64;
    }
    last_epoch_loss
}

/// DP-SGD settings: each step samples every row independently with probability `q`, clips
/// each sampled example's gradient to L2 norm `clip`, adds Gaussian noise of standard
/// deviation `noise_multiplier · clip` to their sum, and divides by the expected batch `q · n`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSgd {
    /// Poisson sampling rate per step.
    pub q: f64,
    /// Per-example clipping norm C.
    pub clip: f64,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
}

/// Trains `model` with DP-SGD for `cfg.epochs × ⌈1/q⌉` steps (the count the accountant
/// charges) and returns the mean clipped loss of the sampled examples. L2 decay and the
/// FedProx pull do not touch the data, so they are applied as in [`train_local`].
pub fn train_dp_sgd<R: Rng + ?Sized>(
    model: &mut Model,
    data: &Dataset,
    cfg: &LocalTraining,
    dp: &DpSgd,
    rng: &mut R,
) -> Result<f64, crate::dp::DpError> {
    use rand::RngExt;
    let n = data.len();
    if n == 0 {
        return Ok(0.0);
    }
    let anchor = (cfg.prox_mu > 0.0).then(|| model.params.clone());
    let decay = model.decay_ranges();
    let steps = u64::from(cfg.epochs) * (1.0 / dp.q).ceil() as u64;
    let expected_batch = dp.q * n as f64;
    let p = model.params.len();
    let mut sum = vec![0.0; p];
    let mut example = vec![0.0; p];
    let mut loss = 0.0;
    let mut seen = 0usize;
    for _ in 0..steps {
        sum.iter_mut().for_each(|g| *g = 0.0);
        for r in 0..n {
            if !rng.random_bool(dp.q) {
                continue;
            }
            example.iter_mut().for_each(|g| *g = 0.0);
            loss += model.accumulate_gradient(data, &[r], &mut example);
            seen += 1;
            crate::dp::clip_l2(&mut example, dp.clip)?;
            for (s, e) in sum.iter_mut().zip(&example) {
                *s += e;
            }
        }
        // σ = 0 (no noise) is allowed here for tests of the clipping; specs require σ > 0.
        if dp.noise_multiplier > 0.0 {
            crate::dp::add_gaussian_noise(&mut sum, dp.noise_multiplier, dp.clip, rng)?;
        }
        apply_step(
            model,
            &sum,
            cfg.learning_rate / expected_batch,
            cfg,
            &decay,
            anchor.as_deref(),
        );
    }
    Ok(if seen > 0 { loss / seen as f64 } else { 0.0 })
}

/// One SGD step `w −= step · grad`, then L2 weight decay and the FedProx pull towards
/// `anchor`. Decay and pull act on every parameter they cover, so they are applied as separate
/// passes rather than through the (sparse) data gradient.
fn apply_step(
    model: &mut Model,
    grad: &[f64],
    step: f64,
    cfg: &LocalTraining,
    decay: &[std::ops::Range<usize>],
    anchor: Option<&[f64]>,
) {
    for (w, g) in model.params.iter_mut().zip(grad) {
        *w -= step * g;
    }
    if cfg.l2 > 0.0 {
        let shrink = 1.0 - cfg.learning_rate * cfg.l2;
        for range in decay {
            model.params[range.clone()]
                .iter_mut()
                .for_each(|w| *w *= shrink);
        }
    }
    if let Some(anchor) = anchor {
        let k = cfg.learning_rate * cfg.prox_mu;
        for (w, a) in model.params.iter_mut().zip(anchor) {
            *w -= k * (*w - a);
        }
    }
}

/// Scales `v` down to L2 norm at most `bound`; returns the norm before clipping.
pub fn clip_l2(v: &mut [f64], bound: f64) -> f64 {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > bound && norm > 0.0 {
        let s = bound / norm;
        v.iter_mut().for_each(|x| *x *= s);
    }
    norm
}

/// The coordinator's optimiser over averaged partner deltas.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerOptimizer {
    /// `w += lr · Δ̄` (lr = 1 is plain federated averaging).
    FedAvg {
        /// Server step size.
        lr: f64,
    },
    /// Adam on `Δ̄` as a pseudo-gradient (Reddi et al. 2021), with adaptivity `tau`.
    FedAdam {
        /// Server step size.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Adaptivity (the ε of Adam; larger is closer to momentum SGD).
        tau: f64,
        /// First moment.
        m: Vec<f64>,
        /// Second moment.
        v: Vec<f64>,
    },
}

impl ServerOptimizer {
    /// The optimiser a spec declares, for a model of `params` parameters.
    pub fn from_spec(spec: &JobSpec, params: usize) -> Self {
        let lr = spec.training.server_lr();
        match spec.training.server_optimizer {
            ServerOptimizerName::Fedavg => ServerOptimizer::FedAvg { lr },
            ServerOptimizerName::Fedadam => ServerOptimizer::FedAdam {
                lr,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
                m: vec![0.0; params],
                v: vec![0.0; params],
            },
        }
    }

    /// [`Self::from_spec`], or an error if its state does not fit in memory.
    pub fn try_from_spec(spec: &JobSpec, params: usize) -> Result<Self, AllocError> {
        Ok(match Self::from_spec(spec, 0) {
            ServerOptimizer::FedAdam {
                lr,
                beta1,
                beta2,
                tau,
                ..
            } => ServerOptimizer::FedAdam {
                lr,
                beta1,
                beta2,
                tau,
                m: crate::alloc::filled(params, 0.0, "the server optimiser's moments")?,
                v: crate::alloc::filled(params, 0.0, "the server optimiser's moments")?,
            },
            fedavg => fedavg,
        })
    }

    /// The optimiser's state beyond the spec (FedAdam's moments, concatenated `m ++ v`), for a
    /// checkpoint; empty for FedAvg.
    pub fn state(&self) -> Vec<f64> {
        match self {
            ServerOptimizer::FedAvg { .. } => Vec::new(),
            ServerOptimizer::FedAdam { m, v, .. } => m.iter().chain(v).copied().collect(),
        }
    }

    /// Restores what [`Self::state`] returned; false (and no change) if its length does not
    /// fit this optimiser.
    pub fn restore(&mut self, state: &[f64]) -> bool {
        match self {
            ServerOptimizer::FedAvg { .. } => state.is_empty(),
            ServerOptimizer::FedAdam { m, v, .. } => {
                if state.len() != m.len() + v.len() {
                    return false;
                }
                let (sm, sv) = state.split_at(m.len());
                m.copy_from_slice(sm);
                v.copy_from_slice(sv);
                true
            }
        }
    }

    /// Applies one server step with the averaged delta.
    pub fn step(&mut self, params: &mut [f64], delta: &[f64]) {
        match self {
            ServerOptimizer::FedAvg { lr } => {
                for (p, d) in params.iter_mut().zip(delta) {
                    *p += *lr * d;
                }
            }
            ServerOptimizer::FedAdam {
                lr,
                beta1,
                beta2,
                tau,
                m,
                v,
            } => {
                for i in 0..params.len() {
                    m[i] = *beta1 * m[i] + (1.0 - *beta1) * delta[i];
                    v[i] = *beta2 * v[i] + (1.0 - *beta2) * delta[i] * delta[i];
                    params[i] += *lr * m[i] / (v[i].sqrt() + *tau);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::CsrMatrix;
    use crate::model::Architecture;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn separable() -> Dataset {
        let mut x = CsrMatrix::with_capacity(2, 200, 400);
        let mut y = Vec::new();
        for i in 0..200 {
            let v = (i as f64 / 100.0) - 1.0;
            x.push_row(&[(0, v), (1, 1.0)]);
            y.push(if v > 0.0 { 1.0 } else { 0.0 });
        }
        Dataset { x, y }
    }

    #[test]
    fn optimizer_state_round_trips() {
        let spec = JobSpec::from_toml(
            "[job]\nname = \"x\"\npurpose = \"p\"\nrounds = 1\n[label]\ncolumn = \"y\"\npositive = \"1\"\n\
             [features]\nnumeric = [\"a\"]\n[model]\nkind = \"logistic\"\n[training]\n\
             local_epochs = 1\nbatch_size = 8\nlearning_rate = 0.1\nserver_optimizer = \"fedadam\"\n",
        )
        .unwrap();
        let mut a = ServerOptimizer::from_spec(&spec, 3);
        let mut p = vec![0.0; 3];
        a.step(&mut p, &[0.5, -1.0, 2.0]);
        let mut b = ServerOptimizer::from_spec(&spec, 3);
        assert!(b.restore(&a.state()));
        assert_eq!(a, b);
        assert!(!b.restore(&[1.0]), "a state of the wrong length is refused");
        let fedavg = ServerOptimizer::FedAvg { lr: 1.0 };
        assert!(fedavg.state().is_empty());
    }

    #[test]
    fn sgd_decreases_the_objective() {
        let data = separable();
        let mut m = Model::zeros(Architecture::Logistic, 2);
        let before = m.objective(&data, 0.0).0;
        let cfg = LocalTraining {
            epochs: 5,
            batch_size: 16,
            learning_rate: 0.5,
            l2: 0.0,
            prox_mu: 0.0,
        };
        train_local(&mut m, &data, &cfg, &mut StdRng::seed_from_u64(1));
        assert!(m.objective(&data, 0.0).0 < 0.5 * before);
        assert!(m.params[0] > 1.0, "learns the positive slope");
    }

    #[test]
    fn prox_term_keeps_the_model_closer_to_the_anchor() {
        let data = separable();
        let run = |mu| {
            let mut m = Model::zeros(Architecture::Logistic, 2);
            let cfg = LocalTraining {
                epochs: 3,
                batch_size: 8,
                learning_rate: 0.5,
                l2: 0.0,
                prox_mu: mu,
            };
            train_local(&mut m, &data, &cfg, &mut StdRng::seed_from_u64(2));
            m.params.iter().map(|p| p * p).sum::<f64>()
        };
        assert!(run(1.0) < run(0.0));
    }

    #[test]
    fn dp_sgd_bounds_every_example_contribution() {
        // One step (q = 1), no noise, no decay: the update is −lr/n · Σ clipped gradients, so
        // with one example of a huge gradient it has norm exactly lr · C / n · n = lr · C.
        let mut x = CsrMatrix::with_capacity(2, 1, 2);
        x.push_row(&[(0, 1000.0), (1, -500.0)]);
        let data = Dataset { x, y: vec![1.0] };
        let mut m = Model::zeros(Architecture::Logistic, 2);
        let cfg = LocalTraining {
            epochs: 1,
            batch_size: 1,
            learning_rate: 0.5,
            l2: 0.0,
            prox_mu: 0.0,
        };
        let dp = DpSgd {
            q: 1.0,
            clip: 0.25,
            noise_multiplier: 0.0,
        };
        train_dp_sgd(&mut m, &data, &cfg, &dp, &mut StdRng::seed_from_u64(3)).unwrap();
        let norm = m.params.iter().map(|p| p * p).sum::<f64>().sqrt();
        assert!((norm - 0.5 * 0.25).abs() < 1e-12, "{norm}");
        // Many examples: the clipped sum over n examples divided by n never exceeds lr · C.
        let data = separable();
        let mut m = Model::zeros(Architecture::Logistic, 2);
        train_dp_sgd(
            &mut m,
            &data,
            &cfg,
            &DpSgd {
                q: 1.0,
                clip: 0.1,
                noise_multiplier: 0.0,
            },
            &mut StdRng::seed_from_u64(4),
        )
        .unwrap();
        assert!(m.params.iter().map(|p| p * p).sum::<f64>().sqrt() <= 0.5 * 0.1 + 1e-12);
    }

    #[test]
    fn dp_sgd_with_modest_noise_still_learns() {
        let data = separable();
        let mut m = Model::zeros(Architecture::Logistic, 2);
        let cfg = LocalTraining {
            epochs: 3,
            batch_size: 1,
            learning_rate: 0.5,
            l2: 0.0,
            prox_mu: 0.0,
        };
        let dp = DpSgd {
            q: 0.2,
            clip: 1.0,
            noise_multiplier: 1.0,
        };
        train_dp_sgd(&mut m, &data, &cfg, &dp, &mut StdRng::seed_from_u64(5)).unwrap();
        assert!(
            m.params[0] > 0.5,
            "learns the positive slope: {:?}",
            m.params
        );
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut v = vec![3.0, 4.0];
        assert_eq!(clip_l2(&mut v, 1.0), 5.0);
        assert!((v[0] - 0.6).abs() < 1e-12 && (v[1] - 0.8).abs() < 1e-12);
        let mut w = vec![0.3, 0.4];
        clip_l2(&mut w, 1.0);
        assert_eq!(w, vec![0.3, 0.4]);
    }

    #[test]
    fn fedadam_first_step_is_sign_like() {
        // With zero moments, Adam's first step is lr · Δ / (|Δ| + τ/(1-β1)·...) — computed by
        // hand: m = 0.1Δ, v = 0.01Δ², step = lr · 0.1Δ / (0.1|Δ| + τ).
        let mut opt = ServerOptimizer::FedAdam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
            m: vec![0.0; 2],
            v: vec![0.0; 2],
        };
        let mut p = vec![0.0, 0.0];
        opt.step(&mut p, &[2.0, -0.5]);
        let expect = |d: f64| 0.1 * 0.1 * d / ((0.01f64 * d * d).sqrt() + 1e-3);
        assert!((p[0] - expect(2.0)).abs() < 1e-12);
        assert!((p[1] - expect(-0.5)).abs() < 1e-12);
    }
}
