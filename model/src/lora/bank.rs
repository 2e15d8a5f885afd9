//! Many adapters on one base model, chosen per batch row, without merging (LoRAX's idea): the
//! serving path.
//!
//! An [`AdapterBank`] holds loaded adapters; [`RowAdapters`] says which one each row of a batch
//! uses (or none), and is passed to [`crate::Mpt::forward_with_adapters`] or
//! [`crate::Mpt::forward_cached_with_adapters`].
//!
//! The bank keeps, for every adapted layer, the factors of all its adapters side by side:
//! `A_all = [A_1; A_2; …]` (`[R, d_in]`, `R = Σ r_k`) and `B_all = [s_1 B_1, s_2 B_2, …]`
//! (`[d_out, R]`, each scale folded in), with zeros where an adapter leaves the layer alone. A
//! batch then needs two products per layer whatever the mix: `h = x A_allᵀ` (`[rows, R]`),
//! `h` times a per-row mask that keeps only the columns of the row's own adapter (all zeros for
//! a base row), and `Δ = h B_allᵀ` added to the base output. `R` is small (4 adapters of rank
//! 8: 32), so computing every adapter's first product for every row costs far less than
//! gathering each adapter's rows and running its products apart (what S-LoRA's and Punica's
//! kernels avoid on GPUs too). Row `i` gets exactly `s_k B_k A_k x_i`: the other adapters'
//! columns are multiplied by exact zeros.
//!
//! Adapter dropout, a training-time regulariser, does not apply here.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::FloatDType;

use super::LoraError;
use super::adapter::Adapter;
use super::config::TargetModule;
use crate::linear::product;

/// Loaded adapters, addressed by their index (the order they were added).
#[derive(Clone, Debug, Default)]
pub struct AdapterBank<B: Backend> {
    adapters: Vec<(String, Arc<Adapter<B>>)>,
    /// Every adapter's factors side by side, per block (rebuilt by [`AdapterBank::add`]).
    stacks: Arc<Vec<BlockStack<B>>>,
}

/// One block's stacked factors, by target (`None`: no adapter touches that layer).
#[derive(Clone, Debug)]
struct BlockStack<B: Backend> {
    targets: Vec<(TargetModule, Stack<B>)>,
}

/// One layer's stacked factors.
#[derive(Clone, Debug)]
struct Stack<B: Backend> {
    /// `[R, d_in]`: each adapter's `A` in turn (zeros for an adapter without this layer).
    a: Tensor<B, 2>,
    /// `[d_out, R]`: each adapter's `scale · B` in turn (zeros likewise).
    b: Tensor<B, 2>,
}

impl<B: Backend> BlockStack<B> {
    fn get(&self, target: TargetModule) -> Option<&Stack<B>> {
        self.targets
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, s)| s)
    }
}

impl<B: Backend> AdapterBank<B> {
    /// An empty bank.
    pub fn new() -> Self {
        Self {
            adapters: Vec::new(),
            stacks: Arc::new(Vec::new()),
        }
    }

    /// Adds `adapter` under `name` and returns its index.
    ///
    /// The adapter must have been made for the model it will run with (as
    /// [`super::peft::load`] checks against the model's config), and for the same model as
    /// the adapters already in the bank.
    pub fn add(&mut self, name: impl Into<String>, adapter: Adapter<B>) -> usize {
        self.adapters.push((name.into(), Arc::new(adapter)));
        self.stacks = Arc::new(self.stack());
        self.adapters.len() - 1
    }

    /// Every block's stacked factors (see the module docs).
    fn stack(&self) -> Vec<BlockStack<B>> {
        let blocks = self
            .adapters
            .iter()
            .map(|(_, a)| a.blocks.len())
            .max()
            .unwrap_or(0);
        (0..blocks)
            .map(|i| BlockStack {
                targets: TargetModule::ALL
                    .into_iter()
                    .filter_map(|t| self.stack_layer(i, t).map(|s| (t, s)))
                    .collect(),
            })
            .collect()
    }

    /// The stacked factors of `target` in block `i`, if any adapter has that layer.
    fn stack_layer(&self, i: usize, target: TargetModule) -> Option<Stack<B>> {
        let layers: Vec<_> = self
            .adapters
            .iter()
            .map(|(_, a)| a.blocks.get(i).and_then(|b| b.get(target)))
            .collect();
        let (d_out, d_in) = layers.iter().flatten().next()?.dims();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for ((_, adapter), layer) in self.adapters.iter().zip(&layers) {
            match layer {
                Some(l) => {
                    a.push(l.lora_a.val().cast(FloatDType::F32));
                    b.push(l.lora_b.val().cast(FloatDType::F32) * l.scale);
                }
                None => {
                    let r = adapter.config.r;
                    let device = adapter_device(adapter);
                    a.push(Tensor::zeros([r, d_in], &device));
                    b.push(Tensor::zeros([d_out, r], &device));
                }
            }
        }
        Some(Stack {
            a: Tensor::cat(a, 0),
            b: Tensor::cat(b, 1),
        })
    }

    /// The column range of adapter `k` in the stacks: `(start, r)`.
    fn columns(&self, k: usize) -> (usize, usize) {
        let start = self.adapters[..k].iter().map(|(_, a)| a.config.r).sum();
        (start, self.adapters[k].1.config.r)
    }

    /// The index of the adapter called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.adapters.iter().position(|(n, _)| n == name)
    }

    /// The adapter at `index`.
    pub fn get(&self, index: usize) -> Option<&Adapter<B>> {
        self.adapters.get(index).map(|(_, a)| a.as_ref())
    }

    /// Adapter names, by index.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.adapters.iter().map(|(n, _)| n.as_str())
    }

    /// How many adapters are loaded.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// True when no adapter is loaded.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }
}

/// The device of an adapter's weights.
fn adapter_device<B: Backend>(adapter: &Adapter<B>) -> B::Device {
    adapter
        .blocks
        .iter()
        .flat_map(|b| TargetModule::ALL.into_iter().filter_map(|t| b.get(t)))
        .map(|l| l.lora_a.val().device())
        .next()
        .expect("an adapter has at least one layer")
}

/// Which adapter each row of one batch uses, ready for a forward: the per-row column mask.
#[derive(Clone, Debug)]
pub struct RowAdapters<B: Backend> {
    batch: usize,
    /// `[batch, R]`: 1 on the columns of the row's adapter, 0 elsewhere; `None` when no row
    /// uses an adapter.
    mask: Option<Tensor<B, 2>>,
    stacks: Arc<Vec<BlockStack<B>>>,
}

impl<B: Backend> RowAdapters<B> {
    /// Row `i` of the batch uses adapter `selection[i]` of `bank`, or the base model for
    /// `None`. An index the bank does not hold is an error naming the row.
    pub fn new(
        bank: &AdapterBank<B>,
        selection: &[Option<usize>],
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        let width: usize = bank.adapters.iter().map(|(_, a)| a.config.r).sum();
        let mut mask = vec![0f32; selection.len() * width];
        for (row, sel) in selection.iter().enumerate() {
            if let Some(k) = *sel {
                if k >= bank.len() {
                    return Err(LoraError::Model {
                        message: format!(
                            "row {row} selects adapter {k}, but the bank holds {}",
                            bank.len()
                        ),
                    });
                }
                let (start, r) = bank.columns(k);
                mask[row * width + start..row * width + start + r].fill(1.0);
            }
        }
        let batch = selection.len();
        let mask = selection
            .iter()
            .any(Option::is_some)
            .then(|| Tensor::from_data(TensorData::new(mask, [batch, width]), device));
        Ok(Self {
            batch,
            mask,
            stacks: bank.stacks.clone(),
        })
    }

    /// The batch size this selection was made for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The adapters of block `block`, for [`crate::attention::LayerContext::lora`].
    pub(crate) fn block(&self, block: usize) -> BlockRows<B> {
        BlockRows {
            mask: self.mask.clone(),
            stacks: self.stacks.clone(),
            block,
        }
    }
}

/// [`RowAdapters`] seen from one block.
#[derive(Clone, Debug)]
pub struct BlockRows<B: Backend> {
    mask: Option<Tensor<B, 2>>,
    stacks: Arc<Vec<BlockStack<B>>>,
    block: usize,
}

/// The first product of one layer's per-row adapters, masked (shared by the row blocks of a
/// fused `Wqkv`).
pub(crate) struct RowHidden<'a, B: Backend> {
    /// `h`, `[batch · s, R]`, and the layer's stacked factors; `None`: nothing to add.
    hidden: Option<(Tensor<B, 2>, &'a Stack<B>)>,
    batch: usize,
    seq: usize,
}

impl<B: Backend> BlockRows<B> {
    /// `x A_allᵀ` on `target`, each row keeping only its own adapter's columns.
    ///
    /// # Shapes
    /// - `x`: `[batch, s, d_in]`
    pub(crate) fn down(
        &self,
        target: TargetModule,
        x: &Tensor<B, 3>,
        compute: Option<FloatDType>,
    ) -> RowHidden<'_, B> {
        let [b, s, d_in] = x.dims();
        let stack = self.stacks.get(self.block).and_then(|blk| blk.get(target));
        let hidden = match (stack, &self.mask) {
            (Some(stack), Some(mask)) => {
                let width = mask.dims()[1];
                let h = product(x.clone().reshape([b * s, d_in]), stack.a.clone(), compute);
                let mask = mask.clone().cast(FloatDType::from(h.dtype()));
                let h = (h.reshape([b, s, width]) * mask.reshape([b, 1, width]))
                    .reshape([b * s, width]);
                Some((h, stack))
            }
            _ => None,
        };
        RowHidden {
            hidden,
            batch: b,
            seq: s,
        }
    }
}

impl<B: Backend> RowHidden<'_, B> {
    /// `y` plus `h B_allᵀ` (output features `start..start + len` when `rows` is given).
    ///
    /// # Shapes
    /// - `y`: `[batch, s, out]` -> `[batch, s, out]`
    pub(crate) fn add_to(
        &self,
        y: Tensor<B, 3>,
        rows: Option<(usize, usize)>,
        compute: Option<FloatDType>,
    ) -> Tensor<B, 3> {
        let Some((h, stack)) = &self.hidden else {
            return y;
        };
        let out = y.dims()[2];
        let b = match rows {
            Some((start, len)) => stack.b.clone().narrow(0, start, len),
            None => stack.b.clone(),
        };
        let dtype = FloatDType::from(y.dtype());
        let delta = product(h.clone(), b, compute).reshape([self.batch, self.seq, out]);
        y + delta.cast(dtype)
    }
}
