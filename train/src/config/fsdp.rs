//! `fsdp_config:`, llm-foundry's (and composer's) keys for how data-parallel training shards
//! its state (see [`crate::parallel`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::parallel::ShardingStrategy;

/// composer's FSDP `mixed_precision`: the dtype parameters are gathered in and gradients reduced
/// in, when the run computes in a 16-bit type (`precision: amp_bf16` or `amp_fp16`). Under
/// `precision: fp32` everything stays f32 whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum FsdpPrecision {
    /// Parameters gathered and gradients reduced in the 16-bit type.
    #[serde(rename = "PURE")]
    Pure,
    /// Parameters gathered in the 16-bit type, gradients reduced in f32 (composer's default).
    #[default]
    #[serde(rename = "DEFAULT")]
    Default,
    /// Everything in f32.
    #[serde(rename = "FULL")]
    Full,
}

/// How checkpoints hold the weights (composer's `state_dict_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateDictType {
    /// Every checkpoint also holds the consolidated, transformers-loadable `model.safetensors`.
    #[default]
    Full,
    /// Only the per-rank shards, except the run's last checkpoint, which is always consolidated.
    Sharded,
}

/// The `fsdp_config:` block.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsdpConfig {
    /// `sharding_strategy`: how parameters, gradients and optimizer state are split over ranks.
    #[serde(default)]
    pub sharding_strategy: ShardingStrategy,
    /// `mixed_precision`: the dtype parameters are gathered and gradients reduced in.
    #[serde(default)]
    pub mixed_precision: FsdpPrecision,
    /// Recompute each block's forward during the backward instead of keeping its activations.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// `state_dict_type`: whether checkpoints also hold the consolidated weights.
    #[serde(default)]
    pub state_dict_type: StateDictType,
    /// Not implemented: refused when true.
    #[serde(default)]
    pub cpu_offload: bool,
    /// Not implemented: refused when true.
    #[serde(default)]
    pub activation_cpu_offload: bool,
    /// PyTorch tuning knobs with nothing to tune here (tessera gathers one unit at a time, in
    /// order, without reentrant autograd or module-state syncing): accepted and named in the
    /// start-up warning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_checkpointing_reentrant: Option<bool>,
    /// PyTorch's `limit_all_gathers`: accepted, no effect (see [`Self::inert_keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_all_gathers: Option<bool>,
    /// PyTorch's `forward_prefetch`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_prefetch: Option<bool>,
    /// PyTorch's `backward_prefetch` (any value): accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backward_prefetch: Option<Value>,
    /// PyTorch's `sync_module_states`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_module_states: Option<bool>,
    /// PyTorch's `use_orig_params`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_orig_params: Option<bool>,
    /// composer's `verbose`: accepted, no effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbose: Option<bool>,
}

impl FsdpConfig {
    /// `(key, message)` for the first setting tessera cannot honour.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (key, on) in [
            ("cpu_offload", self.cpu_offload),
            ("activation_cpu_offload", self.activation_cpu_offload),
        ] {
            if on {
                return Err((
                    key.into(),
                    "offloading to the CPU is not implemented; shard more ways (more ranks, \
                     FULL_SHARD) or use activation_checkpointing instead"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The tuning keys that were set and change nothing here.
    pub fn inert_keys(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.activation_checkpointing_reentrant.is_some() {
            v.push("activation_checkpointing_reentrant");
        }
        if self.limit_all_gathers.is_some() {
            v.push("limit_all_gathers");
        }
        if self.forward_prefetch.is_some() {
            v.push("forward_prefetch");
        }
        if self.backward_prefetch.is_some() {
            v.push("backward_prefetch");
        }
        if self.sync_module_states.is_some() {
            v.push("sync_module_states");
        }
        if self.use_orig_params.is_some() {
            v.push("use_orig_params");
        }
        if self.verbose.is_some() {
            v.push("verbose");
        }
        v
    }
}
