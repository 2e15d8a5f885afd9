//! Many adapters on one base model, chosen per batch row, without merging (LoRAX's idea): the
//! serving path.
//!
//! An [`AdapterBank`] holds loaded adapters; [`RowAdapters`] says which one each row of a batch
//! uses (or none), and is passed to [`crate::Mpt::forward_with_adapters`] or
//! [`crate::Mpt::forward_cached_with_adapters`]. In each adapted layer, every adapter in use
//! gathers its rows of the input, computes its low-rank update `scale · B A x` on them (rank `r`
//! is small, so this is cheap next to the base product the whole batch shares), and adds it
//! back onto the same rows. Rows with no adapter get the base output unchanged.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::{FloatDType, IndexingUpdateOp};

use super::LoraError;
use super::adapter::{Adapter, LoraLayer};
use super::config::TargetModule;

/// Loaded adapters, addressed by their index (the order they were added).
#[derive(Clone, Debug, Default)]
pub struct AdapterBank<B: Backend> {
    adapters: Vec<(String, Arc<Adapter<B>>)>,
}

impl<B: Backend> AdapterBank<B> {
    /// An empty bank.
    pub fn new() -> Self {
        Self {
            adapters: Vec::new(),
        }
    }

    /// Adds `adapter` under `name` and returns its index.
    ///
    /// The adapter must have been made for the model it will run with (as
    /// [`super::peft::load`] checks against the model's config).
    pub fn add(&mut self, name: impl Into<String>, adapter: Adapter<B>) -> usize {
        self.adapters.push((name.into(), Arc::new(adapter)));
        self.adapters.len() - 1
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

/// Which adapter each row of one batch uses: the rows grouped by adapter, ready for a forward.
#[derive(Clone, Debug)]
pub struct RowAdapters<B: Backend> {
    batch: usize,
    groups: Vec<Group<B>>,
}

/// The rows that use one adapter.
#[derive(Clone, Debug)]
struct Group<B: Backend> {
    /// Row indices, `[n]`; `None` when the adapter serves every row (no gather needed).
    rows: Option<Tensor<B, 1, Int>>,
    adapter: Arc<Adapter<B>>,
}

impl<B: Backend> RowAdapters<B> {
    /// Row `i` of the batch uses adapter `selection[i]` of `bank`, or the base model for
    /// `None`. An index the bank does not hold is an error naming the row.
    pub fn new(
        bank: &AdapterBank<B>,
        selection: &[Option<usize>],
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        let mut by_adapter: Vec<Vec<i64>> = vec![Vec::new(); bank.len()];
        for (row, sel) in selection.iter().enumerate() {
            if let Some(k) = *sel {
                by_adapter
                    .get_mut(k)
                    .ok_or_else(|| LoraError::Model {
                        message: format!(
                            "row {row} selects adapter {k}, but the bank holds {}",
                            bank.len()
                        ),
                    })?
                    .push(row as i64);
            }
        }
        let batch = selection.len();
        let groups = by_adapter
            .into_iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(k, rows)| Group {
                rows: (rows.len() != batch).then(|| {
                    let n = rows.len();
                    Tensor::from_data(TensorData::new(rows, [n]), device)
                }),
                adapter: bank.adapters[k].1.clone(),
            })
            .collect();
        Ok(Self { batch, groups })
    }

    /// The batch size this selection was made for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The adapters of block `block`, for [`crate::attention::LayerContext::lora`].
    pub(crate) fn block(&self, block: usize) -> BlockRows<B> {
        BlockRows {
            groups: self.groups.clone(),
            block,
        }
    }
}

/// [`RowAdapters`] seen from one block.
#[derive(Clone, Debug)]
pub struct BlockRows<B: Backend> {
    groups: Vec<Group<B>>,
    block: usize,
}

/// The first products of one layer's per-row adapters (shared by the row blocks of a fused
/// `Wqkv`).
pub(crate) struct RowHidden<'a, B: Backend> {
    parts: Vec<HiddenPart<'a, B>>,
    seq: usize,
}

/// One adapter's rows and its first product on them.
struct HiddenPart<'a, B: Backend> {
    /// As [`Group::rows`].
    rows: Option<Tensor<B, 1, Int>>,
    /// `dropout(x) Aᵀ` of those rows, `[n · s, r]`.
    hidden: Tensor<B, 2>,
    layer: &'a LoraLayer<B>,
}

impl<B: Backend> BlockRows<B> {
    /// `dropout(x) Aᵀ` of every adapter in use on `target`, on its rows of `x`.
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
        let parts = self
            .groups
            .iter()
            .filter_map(|g| {
                let layer = g.adapter.blocks.get(self.block)?.get(target)?;
                let (xs, n) = match &g.rows {
                    Some(rows) => (x.clone().select(0, rows.clone()), rows.dims()[0]),
                    None => (x.clone(), b),
                };
                Some(HiddenPart {
                    rows: g.rows.clone(),
                    hidden: layer.down(xs.reshape([n * s, d_in]), compute),
                    layer,
                })
            })
            .collect();
        RowHidden { parts, seq: s }
    }
}

impl<B: Backend> RowHidden<'_, B> {
    /// `y` plus each adapter's `scale · h Bᵀ` on its rows (output features `start..start +
    /// len` when `rows` is given).
    ///
    /// # Shapes
    /// - `y`: `[batch, s, out]` -> `[batch, s, out]`
    pub(crate) fn add_to(
        &self,
        mut y: Tensor<B, 3>,
        rows: Option<(usize, usize)>,
        compute: Option<FloatDType>,
    ) -> Tensor<B, 3> {
        let out = y.dims()[2];
        for part in &self.parts {
            let n = part.hidden.dims()[0] / self.seq;
            let delta = part
                .layer
                .up(part.hidden.clone(), rows, compute)
                .reshape([n, self.seq, out]);
            y = match &part.rows {
                Some(idx) => y.select_assign(0, idx.clone(), delta, IndexingUpdateOp::Add),
                None => y + delta,
            };
        }
        y
    }
}
