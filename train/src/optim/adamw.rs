//! AdamW with PyTorch's semantics (`torch.optim.AdamW`), and the Adam moment update that
//! composer's `DecoupledAdamW` shares with it.
//!
//! PyTorch, per parameter and step `t` (counted from 1):
//! ```text
//! p ← p · (1 − lr·wd)                       # decoupled decay, scaled by the *current* lr
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
//! ```
//! Defaults are PyTorch's (β = (0.9, 0.999), ε = 1e-8, wd = 1e-2), not burn's `AdamWConfig`
//! (ε = 1e-5, wd = 1e-4), which would silently change a ported recipe.

use burn::module::AutodiffModule;
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::record::Record;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use tessera_model::kernels::{AdamConsts, adam_block};

/// Adam's per-parameter state: the step count and both moment estimates.
#[derive(Record, Clone)]
pub struct AdamState<B: Backend, const D: usize> {
    /// Steps taken with this parameter (PyTorch's `state['step']`), from 1.
    pub step: u64,
    /// First moment `m` (`exp_avg`).
    pub exp_avg: Tensor<B, D>,
    /// Second moment `v` (`exp_avg_sq`).
    pub exp_avg_sq: Tensor<B, D>,
}

impl<B: Backend, const D: usize> AdamState<B, D> {
    /// Moves both moments to `device`.
    pub fn to_device(self, device: &B::Device) -> Self {
        AdamState {
            step: self.step,
            exp_avg: self.exp_avg.to_device(device),
            exp_avg_sq: self.exp_avg_sq.to_device(device),
        }
    }
}

/// Updates the moments with `grad` and returns the bias-corrected step direction
/// `m / (1 − β1^t) / (√v / √(1 − β2^t) + ε)` (to be multiplied by `lr`), plus the new state.
///
/// The bias corrections are computed in f64 on the host, as PyTorch does (`step.item()`).
pub(crate) fn adam_direction<B: Backend, const D: usize>(
    grad: Tensor<B, D>,
    state: Option<AdamState<B, D>>,
    betas: (f64, f64),
    eps: f64,
) -> (Tensor<B, D>, AdamState<B, D>) {
    let (b1, b2) = betas;
    let (step, exp_avg, exp_avg_sq) = match state {
        Some(s) => (
            s.step + 1,
            s.exp_avg
                .mul_scalar(b1)
                .add(grad.clone().mul_scalar(1.0 - b1)),
            s.exp_avg_sq
                .mul_scalar(b2)
                .add(grad.square().mul_scalar(1.0 - b2)),
        ),
        // Zero-initialised moments after one update.
        None => (
            1,
            grad.clone().mul_scalar(1.0 - b1),
            grad.square().mul_scalar(1.0 - b2),
        ),
    };
    let bias1 = 1.0 - b1.powf(step as f64);
    let bias2 = 1.0 - b2.powf(step as f64);
    let denom = exp_avg_sq
        .clone()
        .sqrt()
        .div_scalar(bias2.sqrt())
        .add_scalar(eps);
    let direction = exp_avg.clone().div(denom).div_scalar(bias1);
    (
        direction,
        AdamState {
            step,
            exp_avg,
            exp_avg_sq,
        },
    )
}

/// One whole Adam(W) step of a parameter: `p ← keep · p − lr · m̂ / (√v̂ + ε)` with the moments
/// updated first, where `keep` is the optimizer's decay factor (1 − lr·wd for AdamW).
///
/// On the CPU (plain Flex, f32) this is one parallel pass over the parameter, its gradient and
/// both moments ([`tessera_model::kernels::zip_mut`]) instead of ~15 tensor ops, each a full
/// pass and an allocation on one thread (the quickstart step went from 548 to 515 ms with it,
/// BENCHMARKS.md). The arithmetic is the tensor ops' own, in their order, so both paths give
/// the same values.
pub(crate) fn adam_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<AdamState<B, D>>,
    betas: (f64, f64),
    eps: f64,
    keep: f64,
    lr: f64,
) -> (Tensor<B, D>, AdamState<B, D>) {
    let step = state.as_ref().map_or(1, |s| s.step + 1);
    let (exp_avg, exp_avg_sq) = match &state {
        Some(s) => (s.exp_avg.clone(), s.exp_avg_sq.clone()),
        None => (grad.zeros_like(), grad.zeros_like()),
    };
    let c = AdamConsts {
        b1: betas.0 as f32,
        b2: betas.1 as f32,
        c1: (1.0 - betas.0) as f32,
        c2: (1.0 - betas.1) as f32,
        bias1: (1.0 - betas.0.powf(step as f64)) as f32,
        bias2_sqrt: (1.0 - betas.1.powf(step as f64)).sqrt() as f32,
        eps: eps as f32,
        keep: (keep != 1.0).then_some(keep as f32),
        lr: lr as f32,
    };
    let update = |[p, g, m, v]: [&mut [f32]; 4]| adam_block(p, g, m, v, &c);
    match tessera_model::kernels::zip_mut([param, grad, exp_avg, exp_avg_sq], update) {
        Ok([param, _, exp_avg, exp_avg_sq]) => (
            param,
            AdamState {
                step,
                exp_avg,
                exp_avg_sq,
            },
        ),
        Err([param, grad, ..]) => {
            let param = if keep != 1.0 {
                param.mul_scalar(keep)
            } else {
                param
            };
            let (direction, state) = adam_direction(grad, state, betas, eps);
            (param.sub(direction.mul_scalar(lr)), state)
        }
    }
}

/// PyTorch's AdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// (β1, β2).
    pub betas: (f64, f64),
    /// ε added to the denominator.
    pub eps: f64,
    /// Weight decay, multiplied by the current lr each step.
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamW {
    /// This optimizer for a whole module: `optim.step(lr, model, grads)`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }
}

impl<B: Backend> SimpleOptimizer<B> for AdamW {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let keep = 1.0 - lr * self.weight_decay;
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
    use crate::optim::test_util::{TB, params, run_steps};

    /// Scalar PyTorch AdamW, written out from the formula in the module docs.
    fn reference(p0: &[f64], grads: &[Vec<f64>], lrs: &[f64], o: AdamW) -> Vec<f64> {
        let mut p = p0.to_vec();
        let mut m = vec![0.0; p.len()];
        let mut v = vec![0.0; p.len()];
        for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
            let t = (t + 1) as f64;
            for i in 0..p.len() {
                p[i] *= 1.0 - lr * o.weight_decay;
                m[i] = o.betas.0 * m[i] + (1.0 - o.betas.0) * g[i];
                v[i] = o.betas.1 * v[i] + (1.0 - o.betas.1) * g[i] * g[i];
                let denom = v[i].sqrt() / (1.0 - o.betas.1.powf(t)).sqrt() + o.eps;
                p[i] -= lr / (1.0 - o.betas.0.powf(t)) * m[i] / denom;
            }
        }
        p
    }

    #[test]
    fn matches_pytorch_formula_over_several_steps() {
        let o = AdamW {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let p0 = [0.5, -1.0, 2.0];
        let grads = vec![
            vec![0.1, -0.2, 0.3],
            vec![-0.4, 0.1, 0.0],
            vec![0.2, 0.2, -0.5],
            vec![1.0, -3.0, 0.25],
        ];
        let lrs = [1e-2, 5e-3, 2e-2, 1e-3];
        let got = run_steps::<AdamW>(o, &p0, &grads, &lrs);
        let want = reference(&p0, &grads, &lrs, o);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "got {got:?} want {want:?}");
        }
    }

    #[test]
    fn the_fused_cpu_update_equals_the_tensor_op_one_bit_for_bit() {
        // Plain Flex runs `adam_update`'s one-pass kernel; Autodiff<Flex> (not plain Flex) its
        // tensor ops. 40 000 values: more than one parallel block.
        let n = 40_000;
        let p0: Vec<f64> = (0..n)
            .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
            .collect();
        let grads: Vec<Vec<f64>> = (0..3)
            .map(|t| {
                (0..n)
                    .map(|i| ((i * 13 + t * 7) % 89) as f64 / 40.0 - 1.1)
                    .collect()
            })
            .collect();
        let lrs = [1e-2, 3e-3, 5e-3];
        let o = AdamW {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let fused = run_steps::<AdamW>(o, &p0, &grads, &lrs);
        let composed = crate::optim::test_util::run_steps_on::<TB2, AdamW>(o, &p0, &grads, &lrs);
        assert!(fused == composed, "fused and composed AdamW differ");
        assert!(fused != p0, "the parameters moved");
    }

    /// A backend other than plain Flex, so the tensor-op path runs.
    type TB2 = burn::backend::Autodiff<TB>;

    #[test]
    fn first_step_moves_each_weight_by_lr_times_sign() {
        // With bias correction, step one is lr·g/(|g| + ε/…) ≈ lr·sign(g), independent of |g|.
        let o = AdamW {
            weight_decay: 0.0,
            ..AdamW::default()
        };
        let got = run_steps::<AdamW>(o, &[0.0, 0.0], &[vec![3.0, -1e-3]], &[0.1]);
        assert!(
            (got[0] + 0.1).abs() < 1e-5 && (got[1] - 0.1).abs() < 1e-4,
            "{got:?}"
        );
    }

    #[test]
    fn state_counts_steps_from_one() {
        let device = Default::default();
        let (p, g) = params::<TB>(&[1.0], &[0.5], &device);
        let (_, s) = SimpleOptimizer::<TB>::step(&AdamW::default(), 0.1, p, g, None);
        assert_eq!(s.map(|s| s.step), Some(1));
    }
}
