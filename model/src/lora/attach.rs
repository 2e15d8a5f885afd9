//! An adapter inside a model, for training: [`Mpt::with_adapter`] puts one [`LoraLayer`] into
//! each targeted [`Linear`] and freezes every base parameter, so autodiff computes gradients
//! for the adapters only, and an optimizer (which keeps state only for parameters that got a
//! gradient) holds state for them only.
//!
//! The frozen base may be held in bf16 ([`Mpt::with_base_dtype`]): its matrices (every linear
//! weight and the embedding) are stored in bf16, multiplied in bf16 and never copied up, while
//! the adapters, norms, residual stream and loss stay f32, as PEFT on a `torch_dtype=bfloat16`
//! model.

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::FloatDType;

use super::LoraError;
use super::adapter::{Adapter, BlockLora, LoraLayer, target_dims};
use super::config::{LoraConfig, TargetModule};
use crate::linear::Linear;
use crate::mpt::Mpt;

/// A parameter the optimizer should update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainableParam {
    /// Module path (`blocks.0.attn.wqkv.lora.lora_a`), the name the trainer's checkpoints key
    /// optimizer state by.
    pub path: String,
    /// burn's id of the parameter (what optimizer state is keyed by in memory).
    pub id: ParamId,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// The parameters that train: the adapter's when one is attached, else all of them.
///
/// The base parameters of a model with an adapter do not require gradients (see
/// [`Mpt::with_adapter`]), so burn's optimizers already skip them; this list is for sizing
/// optimizer state, logging and checks.
pub fn trainable_params<B: Backend>(model: &Mpt<B>) -> Vec<TrainableParam> {
    struct Collect {
        path: Vec<String>,
        adapter_only: bool,
        out: Vec<TrainableParam>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if !self.adapter_only || self.path.iter().any(|p| p == "lora") {
                self.out.push(TrainableParam {
                    path: self.path.join("."),
                    id: param.id,
                    shape: param.dims().to_vec(),
                });
            }
        }
    }
    let mut c = Collect {
        path: Vec::new(),
        adapter_only: model.lora_config.is_some(),
        out: Vec::new(),
    };
    model.visit(&mut c);
    c.out
}

/// Sets `require_grad` to false on every parameter it maps.
struct Freeze;

impl<B: Backend> ModuleMapper<B> for Freeze {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(false)
    }
}

impl<B: Backend> Mpt<B> {
    /// The model with `adapter` attached and every base parameter frozen (no gradient, so no
    /// optimizer state). The adapter's parameters require gradients.
    ///
    /// Errors if the model already carries an adapter, or if the adapter was made for another
    /// shape (block count, or a layer's `d_in`/`d_out`).
    pub fn with_adapter(self, adapter: Adapter<B>) -> Result<Self, LoraError> {
        if self.lora_config.is_some() {
            return Err(LoraError::Model {
                message: "the model already carries an adapter (merge or detach it first)".into(),
            });
        }
        check_fits(&adapter, self.config())?;
        let Adapter { blocks, config } = adapter;
        let mut blocks: Vec<BlockLora<B>> = blocks;
        let mut model = self.map(&mut Freeze).map_block_linears(|i, t, mut linear| {
            linear.lora = blocks[i].slot(t).take().map(|l| LoraLayer {
                lora_a: l.lora_a.set_require_grad(true),
                lora_b: l.lora_b.set_require_grad(true),
                ..l
            });
            linear
        });
        model.lora_config = Some(config);
        Ok(model)
    }

    /// A copy of the attached adapter (its tensors are shared, not copied), if any.
    pub fn adapter(&self) -> Option<Adapter<B>> {
        let config = self.lora_config.clone()?;
        let mut blocks: Vec<BlockLora<B>> =
            self.blocks.iter().map(|_| BlockLora::empty()).collect();
        self.for_each_block_linear(|i, t, linear| *blocks[i].slot(t) = linear.lora.clone());
        Some(Adapter { blocks, config })
    }

    /// The model without its adapter, and the adapter. The base stays frozen (on an autodiff
    /// backend its parameters still require no gradient).
    pub fn without_adapter(mut self) -> (Self, Option<Adapter<B>>) {
        let Some(config) = self.lora_config.take() else {
            return (self, None);
        };
        let mut blocks: Vec<BlockLora<B>> =
            self.blocks.iter().map(|_| BlockLora::empty()).collect();
        let model = self.map_block_linears(|i, t, mut linear| {
            *blocks[i].slot(t) = linear.lora.take();
            linear
        });
        (model, Some(Adapter { blocks, config }))
    }

    /// Whether an adapter is attached.
    pub fn has_adapter(&self) -> bool {
        self.lora_config.is_some()
    }

    /// The settings of the attached adapter, if any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora_config.as_ref()
    }

    /// The frozen base's matrices (linear weights, the token embedding and an untied
    /// unembedding) stored in `dtype`, halving their memory in bf16; norms, biases, the learned
    /// position table and the adapter stay f32. Products with a bf16 weight run in bf16.
    ///
    /// Only a model with an adapter has a frozen base; casting trainable weights would put
    /// their optimizer state in bf16 too, so that is an error.
    pub fn with_base_dtype(self, dtype: FloatDType) -> Result<Self, LoraError> {
        if !self.has_adapter() {
            return Err(LoraError::Model {
                message: "only a frozen base (a model with an adapter attached) can be stored in another dtype".into(),
            });
        }
        let (mut model, adapter) = self.without_adapter();
        let cast = |p: Param<Tensor<B, 2>>| p.map(|t| t.cast(dtype)).set_require_grad(false);
        model.wte.weight = cast(model.wte.weight);
        if let Some(head) = model.lm_head.take() {
            model.lm_head = Some(Linear {
                weight: cast(head.weight),
                ..head
            });
        }
        let model = model.map_block_linears(|_, _, l| Linear {
            weight: cast(l.weight),
            ..l
        });
        model.with_adapter(adapter.expect("has_adapter was checked"))
    }

    /// Rebuilds every linear layer of the blocks through `f(block, target, layer)`.
    pub(crate) fn map_block_linears(
        mut self,
        mut f: impl FnMut(usize, TargetModule, Linear<B>) -> Linear<B>,
    ) -> Self {
        self.blocks = std::mem::take(&mut self.blocks)
            .into_iter()
            .enumerate()
            .map(|(i, mut b)| {
                b.attn.wqkv = f(i, TargetModule::Wqkv, b.attn.wqkv);
                b.attn.out_proj = f(i, TargetModule::OutProj, b.attn.out_proj);
                b.ffn.up_proj = f(i, TargetModule::UpProj, b.ffn.up_proj);
                b.ffn.gate_proj = b.ffn.gate_proj.map(|g| f(i, TargetModule::GateProj, g));
                b.ffn.down_proj = f(i, TargetModule::DownProj, b.ffn.down_proj);
                b
            })
            .collect();
        self
    }

    /// Calls `f(block, target, layer)` for every linear layer of the blocks.
    pub(crate) fn for_each_block_linear(&self, mut f: impl FnMut(usize, TargetModule, &Linear<B>)) {
        for (i, b) in self.blocks.iter().enumerate() {
            f(i, TargetModule::Wqkv, &b.attn.wqkv);
            f(i, TargetModule::OutProj, &b.attn.out_proj);
            f(i, TargetModule::UpProj, &b.ffn.up_proj);
            if let Some(g) = &b.ffn.gate_proj {
                f(i, TargetModule::GateProj, g);
            }
            f(i, TargetModule::DownProj, &b.ffn.down_proj);
        }
    }
}

/// Checks that `adapter` was made for a model of this shape.
pub(crate) fn check_fits<B: Backend>(
    adapter: &Adapter<B>,
    model: &crate::MptConfig,
) -> Result<(), LoraError> {
    if adapter.blocks.len() != model.n_layers {
        return Err(LoraError::Model {
            message: format!(
                "the adapter has {} blocks, the model {}",
                adapter.blocks.len(),
                model.n_layers
            ),
        });
    }
    for (i, t, layer) in adapter.layers() {
        let found = layer.dims();
        match target_dims(model, t) {
            None => {
                return Err(LoraError::Model {
                    message: format!("block {i}: the model has no {} to adapt", t.path()),
                });
            }
            Some(want) if want != found => {
                return Err(LoraError::Model {
                    message: format!(
                        "block {i}: {} is [{}, {}] in the model, the adapter is for [{}, {}]",
                        t.path(),
                        want.0,
                        want.1,
                        found.0,
                        found.1
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}
