//! llm-foundry's `DecoupledLionW` (`llmfoundry/optim/lion.py`): Lion (Chen et al. 2023,
//! "Symbolic Discovery of Optimization Algorithms") with composer's decoupled weight decay.
//!
//! Per parameter and step:
//! ```text
//! p ← p · (1 − (lr_t / initial_lr) · wd)           # as DecoupledAdamW; 1 − wd if initial_lr = 0
//! p ← p − lr_t · sign(lerp(m, g, 1 − β1))          # lerp(a, b, w) = a + w·(b − a)
//! m ← lerp(m, g, 1 − β2)
//! ```
//! `m` starts at zero and `sign(0) = 0`. Defaults: β = (0.9, 0.99), wd = 0. Lion keeps one moment
//! instead of Adam's two, which is why llm-foundry offers it for large runs.

use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::record::Record;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::decoupled_adamw::decay_factor;

/// Lion's per-parameter state: the momentum.
#[derive(Record, Clone)]
pub struct LionState<B: Backend, const D: usize> {
    /// Momentum `m` (`exp_avg`).
    pub exp_avg: Tensor<B, D>,
}

/// llm-foundry's DecoupledLionW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoupledLionW {
    /// The optimizer's configured lr; the step's lr divided by this scales the decay.
    pub initial_lr: f64,
    /// (β1 for the update's interpolation, β2 for the momentum's).
    pub betas: (f64, f64),
    /// Decoupled weight decay per step at the initial lr.
    pub weight_decay: f64,
}

impl DecoupledLionW {
    /// llm-foundry's defaults with this lr.
    pub fn new(initial_lr: f64) -> Self {
        DecoupledLionW {
            initial_lr,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
        }
    }

    /// This optimizer for a whole module: `optim.step(lr, model, grads)`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

/// torch.lerp: `a + w·(b − a)` (not `(1−w)·a + w·b`, which rounds differently).
fn lerp<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, w: f64) -> Tensor<B, D> {
    a.clone().add(b.sub(a).mul_scalar(w))
}

impl<B: Backend> SimpleOptimizer<B> for DecoupledLionW {
    type State<const D: usize> = LionState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let (b1, b2) = self.betas;
        let tensor = if self.weight_decay != 0.0 {
            tensor.mul_scalar(1.0 - decay_factor(lr, self.initial_lr) * self.weight_decay)
        } else {
            tensor
        };
        let exp_avg = match state {
            Some(s) => s.exp_avg,
            None => grad.zeros_like(),
        };
        let update = lerp(exp_avg.clone(), grad.clone(), 1.0 - b1).sign();
        let tensor = tensor.sub(update.mul_scalar(lr));
        let exp_avg = lerp(exp_avg, grad, 1.0 - b2);
        (tensor, Some(LionState { exp_avg }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        LionState {
            exp_avg: state.exp_avg.to_device(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_util::run_steps;

    /// llm-foundry's `lionw`, as scalar arithmetic.
    fn reference(p0: &[f64], grads: &[Vec<f64>], lrs: &[f64], o: DecoupledLionW) -> Vec<f64> {
        let mut p = p0.to_vec();
        let mut m = vec![0.0; p.len()];
        let sign = |x: f64| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        };
        for (g, lr) in grads.iter().zip(lrs) {
            for i in 0..p.len() {
                p[i] *= 1.0 - (lr / o.initial_lr) * o.weight_decay;
                p[i] -= lr * sign(m[i] + (1.0 - o.betas.0) * (g[i] - m[i]));
                m[i] += (1.0 - o.betas.1) * (g[i] - m[i]);
            }
        }
        p
    }

    #[test]
    fn matches_llm_foundry_over_several_steps() {
        let o = DecoupledLionW {
            initial_lr: 1e-3,
            betas: (0.9, 0.99),
            weight_decay: 0.2,
        };
        let p0 = [0.5, -0.5, 1.0];
        // Step 3 flips the first gradient's sign: the momentum (β1-weighted) must decide it.
        let grads = vec![
            vec![1.0, -2.0, 0.0],
            vec![0.5, -0.1, 0.3],
            vec![-0.05, 0.4, -0.2],
            vec![-3.0, 0.0, 0.1],
        ];
        let lrs = [1e-3, 8e-4, 5e-4, 2e-4];
        let got = run_steps(o, &p0, &grads, &lrs);
        let want = reference(&p0, &grads, &lrs, o);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "got {got:?} want {want:?}");
        }
    }

    #[test]
    fn update_is_sign_sized_and_zero_gradient_does_not_move() {
        let o = DecoupledLionW {
            initial_lr: 0.1,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
        };
        let got = run_steps(o, &[0.0, 0.0, 0.0], &[vec![5.0, -1e-4, 0.0]], &[0.1]);
        assert_eq!(got, vec![-0.1f64 as f32 as f64, 0.1f64 as f32 as f64, 0.0]);
    }

    #[test]
    fn momentum_carries_the_update_after_the_gradient_vanishes() {
        // Step 1: g = 1 → m = 0.01. Step 2: g = 0 → lerp(m, 0, 0.1) = 0.009 > 0 → still −lr.
        let o = DecoupledLionW {
            initial_lr: 0.1,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
        };
        let got = run_steps(o, &[0.0], &[vec![1.0], vec![0.0]], &[0.1, 0.1]);
        assert!((got[0] + 0.2).abs() < 1e-6, "{got:?}");
    }
}
