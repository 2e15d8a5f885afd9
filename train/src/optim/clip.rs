//! Global-norm gradient clipping over all parameters at once, as `torch.nn.utils.clip_grad_norm_`
//! (which composer's `gradient_clipping: {clipping_type: norm}` calls).
//!
//! burn's `GradientClippingConfig::Norm` clips each tensor by its own norm, which changes the
//! direction of the update; GPT/MPT recipes clip the concatenation of all gradients:
//! ```text
//! n = √(Σ_params Σ g²)        coef = min(1, max_norm / (n + 1e-6))        g ← coef · g
//! ```
//! Each tensor's Σg² stays on its device; one host sync reads them all and sums in f64.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// The `gradient_clipping:` block (`algorithms.gradient_clipping` in llm-foundry YAMLs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradientClippingConfig {
    /// Only `norm` (composer's `adaptive` and `value` are not implemented).
    pub clipping_type: String,
    /// The maximum global L2 norm.
    pub clipping_threshold: f64,
}

impl GradientClippingConfig {
    /// `(key, message)` for the first bad field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.clipping_type != "norm" {
            return Err((
                "clipping_type".into(),
                format!(
                    "{:?} is not supported (expected `norm`; composer's `adaptive` and `value` are not implemented)",
                    self.clipping_type
                ),
            ));
        }
        if !(self.clipping_threshold.is_finite() && self.clipping_threshold > 0.0) {
            return Err((
                "clipping_threshold".into(),
                format!("{} must be a positive number", self.clipping_threshold),
            ));
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients of `module`'s parameters present in `grads`.
/// Non-finite if any gradient holds a NaN or an infinity.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    struct SumSq<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        parts: Vec<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SumSq<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                self.parts.push(g.square().sum());
            }
        }
    }
    let mut v = SumSq::<B> {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut v);
    let Some(first) = v.parts.first() else {
        return 0.0;
    };
    let device = first.device();
    let parts: Vec<_> = v.parts.into_iter().map(|t| t.to_device(&device)).collect();
    // Host sync: one read of every tensor's Σg².
    let data = Tensor::cat(parts, 0).into_data();
    let sum: f64 = match data.convert::<f32>().to_vec::<f32>() {
        Ok(v) => v.iter().map(|x| f64::from(*x)).sum(),
        Err(_) => f64::NAN,
    };
    sum.sqrt()
}

/// Clips all gradients to a global L2 norm of at most `max_norm` and returns the norm *before*
/// clipping (what llm-foundry logs as `l2_norm/grad_norm`).
///
/// When the norm is not finite the gradients are left as they are (PyTorch would multiply them
/// by NaN); the NaN guard sees the returned norm and skips the step.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm(module, grads);
    if !norm.is_finite() {
        return norm;
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale_grads(module, grads, coef);
    }
    norm
}

/// Multiplies every gradient of `module` in `grads` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    factor: f64,
) {
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    module.visit(&mut Scale { grads, factor });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::test_util::AB;
    use burn::module::Module;
    use burn::tensor::TensorData;
    use burn::tensor::backend::Backend;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 2>>,
    }

    /// Loss = Σ ca·a + Σ cb·b, so the gradients are exactly ca and cb.
    fn grads_for(ca: &[f32], cb: [[f32; 2]; 2]) -> (Two<AB>, GradientsParams) {
        let device = Default::default();
        let m = Two::<AB> {
            a: Param::from_tensor(Tensor::zeros([ca.len()], &device).require_grad()),
            b: Param::from_tensor(Tensor::zeros([2, 2], &device).require_grad()),
        };
        let ta = Tensor::<AB, 1>::from_data(TensorData::new(ca.to_vec(), [ca.len()]), &device);
        let tb = Tensor::<AB, 2>::from_data(TensorData::from(cb), &device);
        let loss = (m.a.val() * ta).sum() + (m.b.val() * tb).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        (m, grads)
    }

    fn values<const D: usize>(g: &GradientsParams, p: &Param<Tensor<AB, D>>) -> Vec<f32> {
        g.get::<burn::backend::Flex, D>(p.id)
            .map(|t| t.into_data().to_vec::<f32>().unwrap_or_default())
            .unwrap_or_default()
    }

    #[test]
    fn global_norm_spans_all_tensors() {
        // 3² + 4² + (1² + 2² + 2² + 0²) = 34.
        let (m, g) = grads_for(&[3.0, 4.0], [[1.0, 2.0], [2.0, 0.0]]);
        assert!((grad_norm(&m, &g) - 34f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_every_tensor_by_one_factor() {
        let (m, mut g) = grads_for(&[3.0, 4.0], [[0.0, 0.0], [0.0, 0.0]]);
        let pre = clip_grad_norm(&m, &mut g, 1.0);
        assert!((pre - 5.0).abs() < 1e-6);
        let a = values(&g, &m.a);
        let coef = 1.0 / (5.0 + 1e-6);
        assert!(
            (a[0] as f64 - 3.0 * coef).abs() < 1e-6 && (a[1] as f64 - 4.0 * coef).abs() < 1e-6,
            "{a:?}"
        );
        assert!((grad_norm(&m, &g) - 1.0).abs() < 1e-5);
        // Per-tensor clipping would have left `b` alone here too, but would scale a lone large
        // tensor differently: check direction is preserved across tensors.
        let (m, mut g) = grads_for(&[6.0, 0.0], [[0.0, 8.0], [0.0, 0.0]]);
        clip_grad_norm(&m, &mut g, 2.0);
        let (a, b) = (values(&g, &m.a), values(&g, &m.b));
        assert!((a[0] / b[1] - 0.75).abs() < 1e-6, "{a:?} {b:?}");
    }

    #[test]
    fn small_gradients_are_untouched() {
        let (m, mut g) = grads_for(&[0.3, 0.4], [[0.0, 0.0], [0.0, 0.0]]);
        let pre = clip_grad_norm(&m, &mut g, 1.0);
        assert!((pre - 0.5).abs() < 1e-6);
        assert_eq!(values(&g, &m.a), vec![0.3, 0.4]);
    }

    #[test]
    fn non_finite_norm_is_reported_and_grads_kept() {
        let (m, mut g) = grads_for(&[f32::NAN, 1.0], [[0.0, 0.0], [0.0, 0.0]]);
        assert!(clip_grad_norm(&m, &mut g, 1.0).is_nan());
        assert_eq!(values(&g, &m.a)[1], 1.0);
        let (m, mut g) = grads_for(&[f32::INFINITY, 1.0], [[0.0, 0.0], [0.0, 0.0]]);
        assert!(!clip_grad_norm(&m, &mut g, 1.0).is_finite());
    }

    #[test]
    fn config_accepts_only_norm_with_positive_threshold() {
        let ok = GradientClippingConfig {
            clipping_type: "norm".into(),
            clipping_threshold: 1.0,
        };
        assert!(ok.validate().is_ok());
        let e = GradientClippingConfig {
            clipping_type: "value".into(),
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "clipping_type");
        let e = GradientClippingConfig {
            clipping_threshold: 0.0,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.0, "clipping_threshold");
    }
}
