//! Data-parallel training at any world size: DDP, ZeRO-2 and FSDP over one model that knows
//! nothing of ranks.
//!
//! torchtitan's shape: the model is built first, then parallelism is applied around it. The
//! trainable parameters are laid out as flat units ([`layout`]: the root and one per block),
//! each rank keeps the f32 master weights and optimizer moments of its shard of every unit
//! ([`shard`]), and one step is [`Sharded::forward_backward`] (forward and backward over this
//! rank's microbatches, gradient sync, the global loss), the guards' verdict on that loss, then
//! [`Sharded::apply`] (the global norm and clipping, the update of this rank's shards, the
//! parameters brought back into the model).
//! At world size 1 the same code runs with collectives that do nothing.
//!
//! `fsdp_config.sharding_strategy` decides what is sharded:
//!
//! | strategy | gradients | master weights + optimizer state | parameters between steps |
//! |---|---|---|---|
//! | `NO_SHARD` (DDP) | all-reduced | replicated | replicated |
//! | `SHARD_GRAD_OP` (ZeRO-2) | reduce-scattered | 1/N per rank | replicated (all-gathered after the update) |
//! | `FULL_SHARD` (FSDP) | reduce-scattered per block | 1/N per rank | 1/N per rank; each block all-gathered for its forward and again for its backward, then freed |
//! | `HYBRID_SHARD` | reduce-scattered per block within the node, then all-reduced across nodes | 1/L per rank (L ranks per node) | 1/L per rank, gathered within the node |
//!
//! `HYBRID_SHARD` keeps the all-gathers, the frequent and latency-bound traffic, on a node's
//! fast links (NVLink); only the gradient all-reduce, 1/L of the model per rank, crosses nodes.
//! Its gradient sums are added node by node, so its results match one process to rounding, not
//! bit for bit.
//!
//! `FULL_SHARD` and `activation_checkpointing` run the block loop here ([`blockwise`]): the
//! forward keeps only each block's input, and the backward recomputes one block at a time, so a
//! block's gathered parameters and its gradient exist only while it is being worked on.

pub mod blockwise;
pub mod flat;
pub mod layout;
pub mod shard;
mod sharded;
#[cfg(test)]
mod tests;

pub use sharded::{Applied, Sharded, StepGradients, Strategy};

use serde::{Deserialize, Serialize};

/// `fsdp_config.sharding_strategy`, with PyTorch's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ShardingStrategy {
    /// DDP.
    #[serde(rename = "NO_SHARD")]
    NoShard,
    /// ZeRO-2.
    #[serde(rename = "SHARD_GRAD_OP")]
    ShardGradOp,
    /// FSDP (llm-foundry's default).
    #[default]
    #[serde(rename = "FULL_SHARD")]
    FullShard,
    /// FULL_SHARD within a node, replicated across nodes.
    #[serde(rename = "HYBRID_SHARD")]
    HybridShard,
}

impl ShardingStrategy {
    /// What the strategy does on one node: `HYBRID_SHARD` is `FULL_SHARD` there (across nodes
    /// it shards within each node and replicates across them, [`Strategy::replicas`]).
    pub fn within_one_node(self) -> Self {
        match self {
            ShardingStrategy::HybridShard => ShardingStrategy::FullShard,
            s => s,
        }
    }
}
