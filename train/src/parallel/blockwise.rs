//! The block-by-block forward and backward, for `FULL_SHARD` and `activation_checkpointing`.
//!
//! burn's `backward()` builds every gradient of a graph at once, and a graph holds every tensor
//! its backward needs, gathered parameters included. So the model is run in pieces
//! ([`Mpt::embed`], each block, [`Mpt::head_loss_sum`]):
//!
//! 1. forward without a graph (the parameters do not require gradients for it, so nothing is
//!    recorded; it runs the same kernels as the training forward, so the values are the same
//!    bits), keeping only each block's input;
//! 2. the head with autodiff, whose backward gives the gradient at the last block's output;
//! 3. for each block from the last: its forward again with autodiff from the kept input, and a
//!    backward seeded with the gradient at its output (`Σ y ⊙ g`, whose gradient with respect
//!    to `y` is exactly `g`), giving the block's parameter gradients and the gradient at its
//!    input;
//! 4. the embeddings' backward, seeded the same way.
//!
//! Under `FULL_SHARD` a unit's parameters are all-gathered just before each use and freed right
//! after, and its gradient is reduce-scattered as soon as it exists, so at any moment a rank
//! holds the full parameters and gradient of one block, plus its shards.

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use tessera_dist::DistError;
use tessera_model::{Mpt, MptInput};

use super::flat::{load_units, unit_grad};
use super::layout::FlatLayout;
use super::sharded::{Sharded, inner_device};
use crate::batch::{DeviceBatch, Example, to_device};
use crate::step::mix;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// Gradients by unit: `(unit, flat gradient)`.
type UnitGrads<B> = Vec<(usize, Tensor<Inner<B>, 1>)>;

/// Forward and backward of one microbatch block by block. Returns the microbatch's `Σ CE` (on
/// the device) and
/// every unit's gradient: this rank's reduce-scattered shard under `FULL_SHARD`, the full local
/// gradient otherwise.
pub(crate) fn forward_backward<B: AutodiffBackend>(
    s: &mut Sharded<B>,
    examples: &[Example],
    loss_tokens: u64,
    seed: u64,
    device: &B::Device,
) -> Result<(Tensor<Inner<B>, 1>, UnitGrads<B>), DistError> {
    let gather = s.strategy.shards_params();
    let inner_dev = inner_device::<B>(device);
    let batch: DeviceBatch<B> = to_device(examples, device);
    let input = MptInput {
        input_ids: batch.input_ids,
        attention_mask: batch.attention_mask,
        sequence_id: batch.sequence_id,
    };
    let blocks = s.model.blocks.len();
    let root = 0;
    let unit_of_block = |i: usize| 1 + i;

    // 1. Forward, keeping each block's input.
    if gather {
        bring_in(s, root)?;
    }
    B::seed(device, mix(seed, 0));
    let (x0, ctx) = s.model.embed(input);
    let mut h = x0.clone().detach();
    let mut inputs = Vec::with_capacity(blocks);
    for i in 0..blocks {
        if gather {
            bring_in(s, unit_of_block(i))?;
        }
        inputs.push(h.clone());
        B::seed(device, mix(seed, 1 + i as u64));
        h = s.model.blocks[i].clone().no_grad().forward(h, &ctx, None);
        if gather {
            release(s, unit_of_block(i));
        }
    }

    // 2. The head: the loss, and the gradient at the last block's output.
    let last = h.require_grad();
    let ce_sum = s.model.head_loss_sum(last.clone(), batch.targets);
    let mut grads = (ce_sum.clone() / loss_tokens as f64).backward();
    let loss = ce_sum.inner();
    let mut g = last
        .grad_remove(&mut grads)
        .expect("the head's input requires a gradient");
    let mut head = GradientsParams::from_grads(grads, &s.model);

    // 3. Each block again, with autodiff, from the last.
    let mut out = Vec::with_capacity(blocks + 1);
    for i in (0..blocks).rev() {
        let u = unit_of_block(i);
        if gather {
            bring_in(s, u)?;
        }
        let x = inputs.pop().expect("one input per block").require_grad();
        B::seed(device, mix(seed, 1 + i as u64));
        let y = s.model.blocks[i].forward(x.clone(), &ctx, None);
        let mut grads = (y * Tensor::from_inner(g)).sum().backward();
        g = x
            .grad_remove(&mut grads)
            .expect("the block's input requires a gradient");
        let mut params = GradientsParams::from_grads(grads, &s.model);
        let flat = unit_grad::<B>(&s.layout, u, &mut params, &inner_dev);
        out.push((u, finish_unit(s, flat)?));
        if gather {
            release(s, u);
        }
    }

    // 4. The embeddings; the root's gradient is the head's plus theirs.
    let grads = (x0 * Tensor::from_inner(g)).sum().backward();
    let mut embed = GradientsParams::from_grads(grads, &s.model);
    let flat = unit_grad::<B>(&s.layout, root, &mut head, &inner_dev)
        .add(unit_grad::<B>(&s.layout, root, &mut embed, &inner_dev));
    out.push((root, finish_unit(s, flat)?));
    if gather {
        release(s, root);
    }
    Ok((loss, out))
}

/// Under `FULL_SHARD`, a unit's gradient is reduce-scattered at once; otherwise it is kept
/// whole until every microbatch is done.
fn finish_unit<B: AutodiffBackend>(
    s: &mut Sharded<B>,
    flat: Tensor<Inner<B>, 1>,
) -> Result<Tensor<Inner<B>, 1>, DistError> {
    if s.strategy.shards_params() {
        s.sync_unit_grad(flat)
    } else {
        Ok(flat)
    }
}

/// All-gathers unit `u` and puts its parameters into the model.
fn bring_in<B: AutodiffBackend>(s: &mut Sharded<B>, u: usize) -> Result<(), DistError> {
    let full = s.gather_unit(u)?;
    s.model = load_units(s.model.clone(), &s.layout, &[(u, full)]);
    Ok(())
}

/// Frees unit `u`'s parameters in the model.
fn release<B: AutodiffBackend>(s: &mut Sharded<B>, u: usize) {
    s.model = free_units(s.model.clone(), &s.layout, |k| k == u);
}

/// `model` with every trainable parameter freed (sharded between uses).
pub fn free_all<B: AutodiffBackend>(model: Mpt<B>, layout: &FlatLayout) -> Mpt<B> {
    free_units(model, layout, |_| true)
}

/// `model` with the parameters of the units `which` selects replaced by empty tensors (their
/// memory is released; they are gathered again before their next use).
fn free_units<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    layout: &FlatLayout,
    which: impl Fn(usize) -> bool,
) -> M {
    struct Free<'a, F: Fn(usize) -> bool> {
        layout: &'a FlatLayout,
        which: F,
    }
    impl<B: AutodiffBackend, F: Fn(usize) -> bool> ModuleMapper<B> for Free<'_, F> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, value, mapper) = param.consume();
            let value = match self.layout.find(id) {
                Some((u, _)) if (self.which)(u) => Tensor::<B, D>::empty([0; D], &value.device()),
                _ => value,
            };
            Param::from_mapped_value(id, value, mapper)
        }
    }
    module.map(&mut Free { layout, which })
}
