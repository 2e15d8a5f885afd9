//! Merging: `W' = W + scale · B A` on every adapted layer, which gives a plain model that
//! computes what base + adapter computed (up to rounding) and that transformers, vLLM or
//! `tessera generate` load without PEFT (PEFT's `merge_and_unload`).

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;

use super::LoraError;
use super::adapter::Adapter;
use super::attach::check_fits;
use crate::mpt::Mpt;

/// `model` with `adapter` merged into its weights. The sum is formed in f32 and stored in each
/// weight's own dtype. The result carries no adapter, and its parameters require gradients
/// again, as a freshly loaded model's.
///
/// Errors if `model` already carries an adapter (use [`Mpt::merge_adapter`]) or `adapter` was
/// made for another shape.
pub fn merge<B: Backend>(model: Mpt<B>, adapter: &Adapter<B>) -> Result<Mpt<B>, LoraError> {
    if model.has_adapter() {
        return Err(LoraError::Model {
            message: "the model carries an adapter already: merge that one with Mpt::merge_adapter"
                .into(),
        });
    }
    check_fits(adapter, model.config())?;
    let merged = model.map_block_linears(|i, t, mut linear| {
        if let Some(layer) = adapter.blocks[i].get(t) {
            let delta = layer.delta_weight(); // [d_out, d_in], f32
            // A new leaf: no autodiff history from the adapter is kept.
            linear.weight = linear.weight.map(|w| {
                let dtype = FloatDType::from(w.dtype());
                (w.cast(FloatDType::F32) + delta).cast(dtype).detach()
            });
        }
        linear
    });
    Ok(merged.map(&mut Unfreeze))
}

/// Sets `require_grad` on every parameter (a no-op on backends without autodiff).
struct Unfreeze;

impl<B: Backend> ModuleMapper<B> for Unfreeze {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

impl<B: Backend> Mpt<B> {
    /// The attached adapter merged into the weights ([`merge`]); a model without one is
    /// returned as it is.
    pub fn merge_adapter(self) -> Self {
        match self.without_adapter() {
            (model, Some(adapter)) => {
                merge(model, &adapter).expect("an attached adapter fits its model")
            }
            (model, None) => model,
        }
    }
}
