//! [`Sharded`]: the model, this rank's shard of the training state, and the step that trains
//! them at any world size.

use std::time::{Duration, Instant};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Tensor};
use tessera_dist::Communicator;
use tessera_model::{Mpt, MptInput};

use super::ShardingStrategy;
use super::blockwise;
use super::flat::{load_units, unit_grad, unit_values};
use super::layout::FlatLayout;
use super::shard::{ShardState, chunk_sumsq, clip_coefficient, norm_of};
use crate::batch::{DeviceBatch, Example, to_device};
use crate::optim::Optim;
use crate::step::mix;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// One flat vector on the inner backend (a unit's gradient or shard).
type Flat<B> = Tensor<Inner<B>, 1>;

/// Each microbatch's `Σ CE` (still on the device) and this rank's gradient shard of every unit.
type LocalGrads<B> = (Vec<Flat<B>>, Vec<Flat<B>>);

/// How the state is split (resolved from `fsdp_config` and the world size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    /// `fsdp_config.sharding_strategy`: what is split over the ranks.
    pub sharding: ShardingStrategy,
    /// Recompute each block's forward in its backward (`activation_checkpointing`).
    pub recompute: bool,
    /// The dtype parameters travel in when they are all-gathered (FSDP's `param_dtype`);
    /// `None`: f32.
    pub param_dtype: Option<FloatDType>,
    /// The dtype gradients are reduced in (FSDP's `reduce_dtype`); `None`: f32.
    pub reduce_dtype: Option<FloatDType>,
    /// `HYBRID_SHARD`'s replicas: the state is sharded within groups of `world / replicas`
    /// consecutive ranks (a node) and replicated across the groups. 1 everywhere else.
    pub replicas: usize,
}

impl Strategy {
    /// One process, nothing sharded, the whole backward at once, everything in f32.
    pub const SINGLE: Strategy = Strategy {
        sharding: ShardingStrategy::NoShard,
        recompute: false,
        param_dtype: None,
        reduce_dtype: None,
        replicas: 1,
    };

    /// Whether optimizer state and master weights are split across ranks.
    pub fn shards_state(&self) -> bool {
        !matches!(self.sharding, ShardingStrategy::NoShard)
    }

    /// Whether parameters are split between steps (gathered per block when used).
    pub fn shards_params(&self) -> bool {
        matches!(
            self.sharding,
            ShardingStrategy::FullShard | ShardingStrategy::HybridShard
        )
    }

    /// Whether the backward runs block by block ([`blockwise`]).
    pub fn blockwise(&self) -> bool {
        self.recompute || self.shards_params()
    }
}

/// A step's gradients, synced over ranks, before the update: what the guards judge.
pub struct StepGradients<B: AutodiffBackend> {
    /// Mean loss over every loss token of the step, the same on every rank (NaN when the step
    /// has no loss tokens).
    pub loss: f64,
    /// Loss tokens over every rank.
    pub loss_tokens: u64,
    /// Input tokens (padding excluded) over every rank.
    pub tokens: u64,
    /// This rank's shard of every unit's gradient (empty when there are no loss tokens).
    shards: Vec<Tensor<Inner<B>, 1>>,
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    /// Global gradient norm before clipping (NaN when there was no gradient).
    pub grad_norm: f64,
    /// False when the update was skipped: no gradient, or a non-finite loss or norm.
    pub applied: bool,
}

/// `HYBRID_SHARD`'s two groups (torchtitan's `dp_shard` and `dp_replicate` meshes).
struct HybridGroups {
    /// The ranks of this node: the state is sharded over them.
    shard: Communicator,
    /// The ranks holding the same shard on every node: gradients are summed over them.
    replica: Communicator,
}

/// Which ranks a collective runs among.
#[derive(Clone, Copy)]
enum Among {
    /// Every rank of the job.
    All,
    /// The ranks the state is sharded over (all of them, except under `HYBRID_SHARD`).
    Shards,
    /// `HYBRID_SHARD`'s replicas of this rank's shard.
    Replicas,
}

/// The model and this rank's shard of its training state.
pub struct Sharded<B: AutodiffBackend> {
    /// The model the forward runs on. Under `FULL_SHARD` its trainable parameters are empty
    /// between uses; everywhere else they are the current weights.
    pub model: Mpt<B>,
    /// How the trainable parameters are flattened into units and split over the ranks.
    pub layout: FlatLayout,
    /// This rank's master weights and optimizer state.
    pub state: ShardState<Inner<B>>,
    /// The optimizer the updates use.
    pub optim: Optim,
    /// How the state is split.
    pub strategy: Strategy,
    /// The communicator to every other rank of the job.
    pub comm: Communicator,
    /// `HYBRID_SHARD` across nodes: the shard and replica groups.
    groups: Option<HybridGroups>,
    comm_time: Duration,
}

impl<B: AutodiffBackend> Sharded<B> {
    /// Wraps `model` (whose current weights become the master weights) for this rank. Every
    /// rank must call it (sharded states gather once, and `HYBRID_SHARD` splits the
    /// communicator into its groups).
    pub fn new(
        model: Mpt<B>,
        optim: Optim,
        strategy: Strategy,
        mut comm: Communicator,
        device: &B::Device,
    ) -> Result<Self, tessera_dist::DistError> {
        let groups = hybrid_groups(&mut comm, strategy)?;
        let (shards, rank) = match (&groups, strategy.shards_state()) {
            (_, false) => (1, 0),
            (Some(g), true) => (g.shard.world_size(), g.shard.rank()),
            (None, true) => (comm.world_size(), comm.rank()),
        };
        // Padded for the whole job even when sharded over a node, so that each of the job's
        // ranks can write an equal part of a checkpoint (`RankSnapshot`), as under NO_SHARD.
        let layout = FlatLayout::of_mpt(&model, comm.world_size()).regroup(shards);
        let inner_device = inner_device::<B>(device);
        let units: Vec<_> = (0..layout.units.len())
            .map(|u| unit_values::<B, _>(&model, &layout, u, &inner_device))
            .collect();
        let state = ShardState::from_units(&layout, rank, units);
        let mut s = Sharded {
            model,
            layout,
            state,
            optim,
            strategy,
            comm,
            groups,
            comm_time: Duration::ZERO,
        };
        if strategy.shards_params() {
            s.model = blockwise::free_all(s.model.clone(), &s.layout);
        } else {
            // The model's parameters become views of the master weights (or, sharded, of their
            // gathered copy), so the weights the model was built with are not held twice.
            s.refresh_params()?;
        }
        Ok(s)
    }

    /// This rank's index among the shards (0 when the state is replicated).
    pub fn shard_rank(&self) -> usize {
        match (&self.groups, self.strategy.shards_state()) {
            (_, false) => 0,
            (Some(g), true) => g.shard.rank(),
            (None, true) => self.comm.rank(),
        }
    }

    /// Which part of a checkpoint this rank writes, of `world_size` equal parts: the part of
    /// the state it holds that is its own. That is its rank, except under `HYBRID_SHARD`, where
    /// node `n` writes piece `n` of the shard it holds (and its replicas the other pieces).
    pub fn checkpoint_part(&self) -> usize {
        match &self.groups {
            None => self.comm.rank(),
            Some(g) => g.shard.rank() * g.replica.world_size() + g.replica.rank(),
        }
    }

    /// Runs a collective among `among`, counting its time.
    fn timed<T>(
        &mut self,
        among: Among,
        f: impl FnOnce(&mut Communicator) -> Result<T, tessera_dist::DistError>,
    ) -> Result<T, tessera_dist::DistError> {
        let comm = match (among, &mut self.groups) {
            (Among::Shards, Some(g)) => &mut g.shard,
            (Among::Replicas, Some(g)) => &mut g.replica,
            _ => &mut self.comm,
        };
        let t = Instant::now();
        let r = f(comm);
        self.comm_time += t.elapsed();
        r
    }

    /// How many ranks the state is sharded over (1 when it is replicated).
    fn shard_count(&self) -> usize {
        self.layout.shards
    }

    /// Forward and backward over this rank's `micro`batches, and the gradient sync.
    ///
    /// `first_micro` is the global index of this rank's first microbatch (dropout seeds derive
    /// from it, so a microbatch draws the same masks whichever rank runs it).
    pub fn forward_backward(
        &mut self,
        micro: &[Vec<Example>],
        first_micro: usize,
        dropout_seed: u64,
        device: &B::Device,
    ) -> Result<StepGradients<B>, tessera_dist::DistError> {
        // The loss is normalised by the loss tokens of the whole step, over every rank.
        let mut counts = [
            micro
                .iter()
                .flatten()
                .map(Example::loss_tokens)
                .sum::<usize>() as u64,
            micro
                .iter()
                .flatten()
                .map(|e| e.tokens() as u64)
                .sum::<u64>(),
        ];
        self.timed(Among::All, |c| c.all_reduce(&mut counts))?;
        let [loss_tokens, tokens] = counts;
        if loss_tokens == 0 {
            return Ok(StepGradients {
                loss: f64::NAN,
                loss_tokens,
                tokens,
                shards: Vec::new(),
            });
        }
        let (losses, shards) = if self.strategy.blockwise() {
            self.forward_backward_blockwise(micro, first_micro, loss_tokens, dropout_seed, device)?
        } else {
            self.forward_backward_whole(micro, first_micro, loss_tokens, dropout_seed, device)?
        };
        let mut loss_sum = host_sum(losses);
        self.timed(Among::All, |c| {
            c.all_reduce(std::slice::from_mut(&mut loss_sum))
        })?;
        Ok(StepGradients {
            loss: loss_sum / loss_tokens as f64,
            loss_tokens,
            tokens,
            shards,
        })
    }

    /// The update: the global gradient norm (summed chunk by chunk in the same order at any
    /// world size), clipping to `clip`, the optimizer on this rank's shards, and the new weights
    /// back into the model. Skipped (nothing changes) when the loss or the norm is not finite.
    pub fn apply(
        &mut self,
        grads: StepGradients<B>,
        lr: f64,
        clip: Option<f64>,
    ) -> Result<Applied, tessera_dist::DistError> {
        if grads.shards.is_empty() {
            return Ok(Applied {
                grad_norm: f64::NAN,
                applied: false,
            });
        }
        let mut sums: Vec<f64> = grads.shards.iter().flat_map(chunk_sumsq).collect();
        if self.shard_count() > 1 {
            sums = self.gather_chunk_sums(&sums)?;
        }
        let grad_norm = norm_of(&sums);
        if !grads.loss.is_finite() || !grad_norm.is_finite() {
            return Ok(Applied {
                grad_norm,
                applied: false,
            });
        }
        let shards = match clip.map(|max| clip_coefficient(grad_norm, max)) {
            Some(c) if c < 1.0 => grads.shards.into_iter().map(|g| g.mul_scalar(c)).collect(),
            _ => grads.shards,
        };
        self.state.step(&self.optim, lr, shards);
        self.refresh_params()?;
        Ok(Applied {
            grad_norm,
            applied: true,
        })
    }

    /// Replaces this rank's training state (a resume or a rollback) and the model's weights.
    pub fn set_state(
        &mut self,
        state: ShardState<Inner<B>>,
    ) -> Result<(), tessera_dist::DistError> {
        self.state = state;
        self.refresh_params()
    }

    /// Starts counting collective time afresh (the loop does at each step).
    pub fn reset_comm_time(&mut self) {
        self.comm_time = Duration::ZERO;
    }

    /// Forward and backward of every microbatch through the whole graph at once; returns each
    /// microbatch's `Σ CE` (still on the device) and this rank's (synced) gradient shard of
    /// every unit.
    fn forward_backward_whole(
        &mut self,
        micro: &[Vec<Example>],
        first_micro: usize,
        loss_tokens: u64,
        dropout_seed: u64,
        device: &B::Device,
    ) -> Result<LocalGrads<B>, tessera_dist::DistError> {
        let mut accumulator = GradientsAccumulator::<Mpt<B>>::new();
        let mut losses = Vec::with_capacity(micro.len());
        for (i, examples) in micro.iter().enumerate() {
            B::seed(device, mix(dropout_seed, (first_micro + i) as u64));
            let batch: DeviceBatch<B> = to_device(examples, device);
            let input = MptInput {
                input_ids: batch.input_ids,
                attention_mask: batch.attention_mask,
                sequence_id: batch.sequence_id,
            };
            let ce_sum = self.model.loss_sum(input, batch.targets);
            let grads = (ce_sum.clone() / loss_tokens as f64).backward();
            losses.push(ce_sum.inner());
            accumulator.accumulate(&self.model, GradientsParams::from_grads(grads, &self.model));
        }
        let mut grads = accumulator.grads();
        let inner_device = inner_device::<B>(device);
        let mut shards = Vec::with_capacity(self.layout.units.len());
        for u in 0..self.layout.units.len() {
            let flat = unit_grad::<B>(&self.layout, u, &mut grads, &inner_device);
            shards.push(self.sync_unit_grad(flat)?);
        }
        Ok((losses, shards))
    }

    /// The block-by-block forward and backward ([`blockwise`]).
    fn forward_backward_blockwise(
        &mut self,
        micro: &[Vec<Example>],
        first_micro: usize,
        loss_tokens: u64,
        dropout_seed: u64,
        device: &B::Device,
    ) -> Result<LocalGrads<B>, tessera_dist::DistError> {
        let mut losses = Vec::with_capacity(micro.len());
        let mut acc: Vec<Option<Tensor<Inner<B>, 1>>> = vec![None; self.layout.units.len()];
        for (i, examples) in micro.iter().enumerate() {
            let seed = mix(dropout_seed, (first_micro + i) as u64);
            let (l, unit_grads) =
                blockwise::forward_backward(self, examples, loss_tokens, seed, device)?;
            losses.push(l);
            for (u, g) in unit_grads {
                acc[u] = Some(match acc[u].take() {
                    Some(a) => a.add(g),
                    None => g,
                });
            }
        }
        let inner_device = inner_device::<B>(device);
        let mut shards = Vec::with_capacity(acc.len());
        for (u, g) in acc.into_iter().enumerate() {
            let g = g.unwrap_or_else(|| Tensor::zeros([self.layout.shard_len(u)], &inner_device));
            // FSDP reduce-scattered each unit's gradient as soon as it was made; the others sync
            // the accumulated full gradient now.
            shards.push(if self.strategy.shards_params() {
                g
            } else {
                self.sync_unit_grad(g)?
            });
        }
        Ok((losses, shards))
    }

    /// A unit's full local gradient → this rank's shard of the sum over ranks (reduced in
    /// `reduce_dtype` when one is set, and back to f32). Under `HYBRID_SHARD` the shard is
    /// reduce-scattered within the node, then all-reduced over the nodes: the sum is the same,
    /// added in another order (node by node) than the job's rank order.
    pub(crate) fn sync_unit_grad(
        &mut self,
        flat: Tensor<Inner<B>, 1>,
    ) -> Result<Tensor<Inner<B>, 1>, tessera_dist::DistError> {
        if self.comm.world_size() == 1 {
            return Ok(flat);
        }
        let dtype = self.strategy.reduce_dtype;
        let flat = travel(flat, dtype);
        let mut synced = if self.strategy.shards_state() {
            self.timed(Among::Shards, |c| c.reduce_scatter_tensor(flat))?
        } else {
            self.timed(Among::All, |c| c.all_reduce_tensor(flat))?
        };
        if self.groups.is_some() {
            synced = self.timed(Among::Replicas, |c| c.all_reduce_tensor(synced))?;
        }
        Ok(arrive(synced, dtype))
    }

    /// Every shard's chunk sums, reordered unit by unit (and within a unit, shard by shard).
    fn gather_chunk_sums(&mut self, mine: &[f64]) -> Result<Vec<f64>, tessera_dist::DistError> {
        let world = self.shard_count();
        let mut all = vec![0.0f64; mine.len() * world];
        self.timed(Among::Shards, |c| c.all_gather(mine, &mut all))?;
        let per_unit: Vec<usize> = (0..self.layout.units.len())
            .map(|u| self.layout.shard_len(u) / super::layout::CHUNK)
            .collect();
        let mut ordered = Vec::with_capacity(all.len());
        let mut unit_start = 0;
        for n in per_unit {
            for r in 0..world {
                let base = r * mine.len() + unit_start;
                ordered.extend_from_slice(&all[base..base + n]);
            }
            unit_start += n;
        }
        Ok(ordered)
    }

    /// Puts the master weights back into the model (all-gathering them when they are sharded
    /// and the model holds full parameters; under `FULL_SHARD` they stay sharded).
    fn refresh_params(&mut self) -> Result<(), tessera_dist::DistError> {
        if self.strategy.shards_params() {
            return Ok(());
        }
        let mut units = Vec::with_capacity(self.layout.units.len());
        for u in 0..self.layout.units.len() {
            units.push((u, self.gather_unit(u)?));
        }
        self.model = load_units(self.model.clone(), &self.layout, &units);
        Ok(())
    }

    /// Unit `u`'s full weights on this rank: all-gathered (in `param_dtype` when one is set,
    /// back to f32) when the state is sharded.
    pub fn gather_unit(
        &mut self,
        u: usize,
    ) -> Result<Tensor<Inner<B>, 1>, tessera_dist::DistError> {
        let shard = self.state.master[u].clone();
        if self.shard_count() == 1 {
            return Ok(shard);
        }
        let dtype = self.strategy.param_dtype;
        let shard = travel(shard, dtype);
        let full = self.timed(Among::Shards, |c| c.all_gather_tensor(shard))?;
        Ok(arrive(full, dtype))
    }

    /// The full model for evaluation or export: under `FULL_SHARD` every unit is gathered (a
    /// collective: every rank must call it); otherwise the model as it is.
    pub fn full_model(&mut self) -> Result<Mpt<B>, tessera_dist::DistError> {
        if !self.strategy.shards_params() {
            return Ok(self.model.clone());
        }
        let mut units = Vec::with_capacity(self.layout.units.len());
        for u in 0..self.layout.units.len() {
            units.push((u, self.gather_unit(u)?));
        }
        Ok(load_units(self.model.clone(), &self.layout, &units))
    }

    /// Seconds spent in collectives since the step began.
    pub fn comm_seconds(&self) -> f64 {
        self.comm_time.as_secs_f64()
    }
}

/// `HYBRID_SHARD`'s groups, when the strategy asks for replicas: node `n` is ranks
/// `n·L .. (n+1)·L` (composer's numbering, which the rank environment checks), so the shard
/// group is a rank's node and the replica group its local rank on every node.
fn hybrid_groups(
    comm: &mut Communicator,
    strategy: Strategy,
) -> Result<Option<HybridGroups>, tessera_dist::DistError> {
    let replicas = strategy.replicas.max(1);
    if replicas == 1 {
        return Ok(None);
    }
    let world = comm.world_size();
    if strategy.sharding != ShardingStrategy::HybridShard || !world.is_multiple_of(replicas) {
        return Err(tessera_dist::DistError::Env(format!(
            "{replicas} replicas (nodes) need HYBRID_SHARD and a world size that is a multiple \
             of them, not {:?} on {world} ranks",
            strategy.sharding
        )));
    }
    let per_node = world / replicas;
    let rank = comm.rank();
    let shard = comm.split(rank / per_node)?;
    let replica = comm.split(rank % per_node)?;
    Ok(Some(HybridGroups { shard, replica }))
}

/// `t` in the dtype it travels in.
fn travel<B: burn::tensor::backend::Backend>(
    t: Tensor<B, 1>,
    dtype: Option<FloatDType>,
) -> Tensor<B, 1> {
    match dtype {
        Some(d) => t.cast(d),
        None => t,
    }
}

/// A tensor that travelled in `dtype`, back in f32.
fn arrive<B: burn::tensor::backend::Backend>(
    t: Tensor<B, 1>,
    dtype: Option<FloatDType>,
) -> Tensor<B, 1> {
    match dtype {
        Some(_) => t.cast(FloatDType::F32),
        None => t,
    }
}

/// The sum of the microbatches' loss sums, in microbatch order, read back from the device in
/// one transfer per step: a read per microbatch would make the host wait for the device after
/// each one (the device queue runs dry), and the order keeps the sum the same at any world size.
fn host_sum<B: Backend>(losses: Vec<Tensor<B, 1>>) -> f64 {
    if losses.is_empty() {
        return 0.0;
    }
    // Host sync: once per step.
    let data = Tensor::cat(losses, 0).into_data();
    data.iter::<f32>().map(f64::from).sum()
}

/// The inner backend's device for `device` (an autodiff backend shares its inner one's).
pub(crate) fn inner_device<B: AutodiffBackend>(device: &B::Device) -> B::Device {
    device.clone()
}
