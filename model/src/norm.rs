//! LayerNorm and RMSNorm over the last axis (llm-foundry `llmfoundry/models/layers/norm.py`).
//!
//! `low_precision_layernorm` is LayerNorm computed in the input's precision under autocast; burn
//! has no autocast, so all LayerNorm kinds share one path, as do the RMSNorm kinds.

use burn::module::{Module, Param};
use burn::prelude::*;

/// A LayerNorm (weight and optional bias) or an RMSNorm (weight only).
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// `[d]`, initialised to ones.
    pub weight: Param<Tensor<B, 1>>,
    /// `[d]`; LayerNorm only, absent under `no_bias`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Added to the variance (or mean square) before the square root.
    pub eps: f64,
    /// RMSNorm: no mean subtraction.
    pub rms: bool,
}

impl<B: Backend> Norm<B> {
    /// Normalises the last axis.
    ///
    /// # Shapes
    /// - `x`: `[..., d]` -> `[..., d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // Two-pass statistics (centre, then variance), fused into one kernel on Flex; see
        // `kernels::norm`.
        crate::kernels::norm(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            self.eps,
            self.rms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn norm(rms: bool, bias: bool) -> Norm<Flex> {
        let dev = Default::default();
        Norm {
            weight: Param::from_tensor(Tensor::from_floats([1.0, 2.0, 0.5, 1.0], &dev)),
            bias: bias
                .then(|| Param::from_tensor(Tensor::from_floats([0.0, 1.0, 0.0, -1.0], &dev))),
            eps: 1e-5,
            rms,
        }
    }

    #[test]
    fn layer_norm_matches_closed_form() {
        let x = Tensor::<Flex, 2>::from_floats([[1.0, 2.0, 3.0, 6.0]], &Default::default());
        let got = norm(false, true)
            .forward(x)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let (mean, var) = (3.0f64, (4.0 + 1.0 + 0.0 + 9.0) / 4.0);
        let w = [1.0, 2.0, 0.5, 1.0];
        let b = [0.0, 1.0, 0.0, -1.0];
        for (i, v) in [1.0, 2.0, 3.0, 6.0].iter().enumerate() {
            let want = (v - mean) / (var + 1e-5f64).sqrt() * w[i] + b[i];
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                got[i]
            );
        }
    }

    #[test]
    fn rms_norm_matches_closed_form() {
        let x = Tensor::<Flex, 2>::from_floats([[1.0, -2.0, 3.0, 0.0]], &Default::default());
        let got = norm(true, false)
            .forward(x)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let ms = (1.0 + 4.0 + 9.0) / 4.0f64;
        let w = [1.0, 2.0, 0.5, 1.0];
        for (i, v) in [1.0, -2.0, 3.0, 0.0].iter().enumerate() {
            let want = v / (ms + 1e-5).sqrt() * w[i];
            assert!((got[i] as f64 - want).abs() < 1e-5);
        }
    }
}
