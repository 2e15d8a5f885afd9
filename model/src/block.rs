//! One pre-norm MPT block (llm-foundry `MPTBlock`):
//! `a = x + drop(attn(norm_1(x)))`, `out = a + drop(ffn(norm_2(a)))`.

use burn::module::Module;
use burn::nn::Dropout;
use burn::prelude::*;

use crate::attention::{Attention, LayerContext, LayerKv};
use crate::ffn::Ffn;
use crate::norm::Norm;

/// A transformer block.
#[derive(Module, Debug)]
pub struct MptBlock<B: Backend> {
    /// Norm before attention.
    pub norm_1: Norm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the FFN.
    pub norm_2: Norm<B>,
    /// Feed-forward layer.
    pub ffn: Ffn<B>,
    /// Dropout on both residual branches (`resid_pdrop`; training only).
    pub resid_pdrop: f64,
}

impl<B: Backend> MptBlock<B> {
    /// # Shapes
    /// - `x`: `[batch, s, d_model]` -> `[batch, s, d_model]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerContext<B>,
        kv: Option<&mut Option<LayerKv<B>>>,
    ) -> Tensor<B, 3> {
        let drop = Dropout {
            prob: self.resid_pdrop,
        };
        let a = x.clone() + drop.forward(self.attn.forward(self.norm_1.forward(x), ctx, kv));
        let m = self.norm_2.forward(a.clone());
        a + drop.forward(self.ffn.forward_ctx(m, ctx))
    }
}
