//! composer's `DecoupledAdamW` (`composer/optim/decoupled_weight_decay.py`), the optimizer of
//! llm-foundry's MPT recipes.
//!
//! It is PyTorch's AdamW except for the decay term. composer records the lr the optimizer was
//! built with (`initial_lr`) and decays by the *schedule's fraction* of it, not by lr itself:
//! ```text
//! p ← p · (1 − (lr_t / initial_lr) · wd)     # wd = 1e-5 means "shrink 1e-5 per step at peak lr"
//! ```
//! (and `1 − wd` when `initial_lr` is 0). The Adam part is `adamw::adam_update`'s. So `weight_decay`
//! values are ~lr× smaller than AdamW's for the same effect, and decay follows warmup and decay
//! of the schedule instead of being multiplied by it twice.

use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::adamw::{AdamState, adam_update};

/// composer's DecoupledAdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoupledAdamW {
    /// The optimizer's configured lr; the step's lr divided by this scales the decay.
    pub initial_lr: f64,
    /// (β1, β2); composer's default is (0.9, 0.95).
    pub betas: (f64, f64),
    /// ε added to the denominator (1e-8).
    pub eps: f64,
    /// Decoupled weight decay per step at the initial lr (composer's default 1e-5).
    pub weight_decay: f64,
}

impl DecoupledAdamW {
    /// composer's defaults with this lr.
    pub fn new(initial_lr: f64) -> Self {
        DecoupledAdamW {
            initial_lr,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 1e-5,
        }
    }

    /// This optimizer for a whole module: `optim.step(lr, model, grads)`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

/// `lr_t / initial_lr`, or 1 when `initial_lr` is 0 (composer's guard against dividing by 0).
pub(crate) fn decay_factor(lr: f64, initial_lr: f64) -> f64 {
    if initial_lr != 0.0 {
        lr / initial_lr
    } else {
        1.0
    }
}

impl<B: Backend> SimpleOptimizer<B> for DecoupledAdamW {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let keep = 1.0 - decay_factor(lr, self.initial_lr) * self.weight_decay;
        let (tensor, state) = adam_update(tensor, grad, state, self.betas, self.eps, keep, lr);
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_util::run_steps;

    /// composer's `DecoupledAdamW.adamw`, as scalar arithmetic.
    fn reference(p0: &[f64], grads: &[Vec<f64>], lrs: &[f64], o: DecoupledAdamW) -> Vec<f64> {
        let mut p = p0.to_vec();
        let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
        for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
            let t = (t + 1) as f64;
            for i in 0..p.len() {
                p[i] *= 1.0 - (lr / o.initial_lr) * o.weight_decay;
                m[i] = o.betas.0 * m[i] + (1.0 - o.betas.0) * g[i];
                v[i] = o.betas.1 * v[i] + (1.0 - o.betas.1) * g[i] * g[i];
                let denom = (v[i].sqrt() / (1.0 - o.betas.1.powf(t)).sqrt()) + o.eps;
                p[i] -= (lr / (1.0 - o.betas.0.powf(t))) * m[i] / denom;
            }
        }
        p
    }

    #[test]
    fn matches_composer_over_a_warmup_and_decay() {
        let o = DecoupledAdamW {
            initial_lr: 6e-4,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.05,
        };
        let p0 = [1.5, -0.25, 0.75, 3.0];
        let grads = vec![
            vec![0.3, -0.1, 0.0, 2.0],
            vec![-0.2, 0.05, 0.4, -1.0],
            vec![0.1, 0.1, -0.3, 0.5],
            vec![0.0, -0.7, 0.2, 0.1],
            vec![0.25, 0.25, 0.25, -0.25],
        ];
        // Warmup to the peak, then decay: the decay term follows lr/initial_lr.
        let lrs = [0.0, 3e-4, 6e-4, 4e-4, 1e-4];
        let got = run_steps(o, &p0, &grads, &lrs);
        let want = reference(&p0, &grads, &lrs, o);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "got {got:?} want {want:?}");
        }
    }

    #[test]
    fn decay_is_relative_to_initial_lr_not_lr() {
        // Zero gradient: Adam's direction is 0, so only the decay moves the weight.
        let o = DecoupledAdamW {
            initial_lr: 1e-3,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let got = run_steps(o, &[2.0], &[vec![0.0]], &[5e-4]);
        // Half the peak lr → half the decay: 2 · (1 − 0.5·0.1) = 1.9. AdamW would give 2·(1 − 5e-5).
        assert!((got[0] - 1.9).abs() < 1e-6, "{got:?}");
        // initial_lr 0: decay by wd itself.
        let o0 = DecoupledAdamW {
            initial_lr: 0.0,
            ..o
        };
        let got = run_steps(o0, &[2.0], &[vec![0.0]], &[5e-4]);
        assert!((got[0] - 1.8).abs() < 1e-6, "{got:?}");
    }
}
