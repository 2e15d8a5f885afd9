//! MPT feed-forward layers (llm-foundry `MPTMLP` and `MPTGLU` in `llmfoundry/models/layers/ffn.py`).

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation;

use crate::attention::LayerContext;
use crate::config::Activation;
use crate::linear::Linear;
use crate::lora::TargetModule;

/// `down(act(up(x)))`, or with `gate_proj` present `down(act(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Ffn<B: Backend> {
    /// `[hidden, d_model]`.
    pub up_proj: Linear<B>,
    /// `[hidden, d_model]`, GLU only.
    pub gate_proj: Option<Linear<B>>,
    /// `[d_model, hidden]` (a residual projection for init).
    pub down_proj: Linear<B>,
    /// The activation.
    pub activation: Activation,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            // Fused on Flex (one vectorised pass, one autodiff node); burn's gelu elsewhere.
            Activation::Gelu => crate::kernels::gelu(x),
            Activation::GeluTanh => activation::gelu_approximate(x),
            Activation::Silu => activation::silu(x),
            Activation::Relu => activation::relu(x),
            Activation::QuickGelu => x.clone() * activation::sigmoid(x * 1.702),
        }
    }
}

impl<B: Backend> Ffn<B> {
    /// # Shapes
    /// - `x`: `[batch, s, d_model]` -> `[batch, s, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_in(x, None)
    }

    /// [`Ffn::forward`] with the projections in `compute` (mixed precision); the activation
    /// runs on their f32 outputs.
    ///
    /// # Shapes
    /// - `x`: `[batch, s, d_model]` -> `[batch, s, d_model]`
    pub fn forward_in(&self, x: Tensor<B, 3>, compute: Option<FloatDType>) -> Tensor<B, 3> {
        let h = match &self.gate_proj {
            Some(gate) => {
                self.activation.apply(gate.forward_in(x.clone(), compute))
                    * self.up_proj.forward_in(x, compute)
            }
            None => self.activation.apply(self.up_proj.forward_in(x, compute)),
        };
        self.down_proj.forward_in(h, compute)
    }

    /// [`Ffn::forward_in`] in `ctx.compute`, with `ctx`'s per-row adapters when it has any.
    ///
    /// # Shapes
    /// - `x`: `[batch, s, d_model]` -> `[batch, s, d_model]`
    pub fn forward_ctx(&self, x: Tensor<B, 3>, ctx: &LayerContext<B>) -> Tensor<B, 3> {
        if ctx.lora.is_none() {
            return self.forward_in(x, ctx.compute);
        }
        let layer = |l: &Linear<B>, target, x: Tensor<B, 3>| {
            let y = l.forward_in(x.clone(), ctx.compute);
            ctx.add_row_lora(target, &x, y)
        };
        let h = match &self.gate_proj {
            Some(gate) => {
                self.activation
                    .apply(layer(gate, TargetModule::GateProj, x.clone()))
                    * layer(&self.up_proj, TargetModule::UpProj, x)
            }
            None => self
                .activation
                .apply(layer(&self.up_proj, TargetModule::UpProj, x)),
        };
        layer(&self.down_proj, TargetModule::DownProj, h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn activations_match_closed_forms() {
        let dev = Default::default();
        let xs = [-2.0f64, -0.5, 0.0, 0.7, 3.0];
        let x = Tensor::<Flex, 1>::from_floats([-2.0, -0.5, 0.0, 0.7, 3.0], &dev);
        let erf = |v: f64| {
            // High-precision erf via its Taylor series (|v| <= 3 / sqrt 2).
            let mut sum = 0.0;
            let mut term = v;
            for n in 0..60 {
                sum += term / (2 * n + 1) as f64;
                term *= -v * v / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        type Reference = Box<dyn Fn(f64) -> f64>;
        let cases: [(Activation, Reference); 4] = [
            (
                Activation::Gelu,
                Box::new(move |v| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()))),
            ),
            (Activation::Silu, Box::new(|v| v / (1.0 + (-v).exp()))),
            (Activation::Relu, Box::new(|v| v.max(0.0))),
            (
                Activation::QuickGelu,
                Box::new(|v| v / (1.0 + (-1.702 * v).exp())),
            ),
        ];
        for (kind, f) in cases {
            let got = kind.apply(x.clone()).into_data().to_vec::<f32>().unwrap();
            for (g, &v) in got.iter().zip(&xs) {
                assert!(
                    (*g as f64 - f(v)).abs() < 2e-6,
                    "{kind:?}({v}) = {g}, want {}",
                    f(v)
                );
            }
        }
    }
}
