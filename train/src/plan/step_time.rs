//! `tessera plan --step-time`: one optimizer step on G GPUs, as compute plus communication.
//!
//! **Compute**: `6·N·tokens` FLOPs per step (the global batch), spread over G devices at an MFU
//! against the device's dense peak.
//!
//! **Communication**, per rank per step, for ring collectives over G ranks moving a buffer of
//! P parameters of `b` bytes each (NCCL's ring: every rank sends and receives `(G-1)/G` of the
//! buffer for a reduce-scatter or an all-gather, twice that for an all-reduce):
//!
//! | strategy | collectives per step | bytes per rank |
//! |---|---|---|
//! | `NO_SHARD` (DDP) | one all-reduce of the gradients | `2·(G-1)/G·P·b_reduce` |
//! | `SHARD_GRAD_OP` (ZeRO-2) | reduce-scatter of the gradients, all-gather of the parameters | `(G-1)/G·P·(b_reduce + b_param)` |
//! | `FULL_SHARD` (FSDP) | per unit and per microbatch: all-gather (forward), all-gather (backward), reduce-scatter | `k·(G-1)/G·P·(2·b_param + b_reduce)` |
//! | `HYBRID_SHARD` | `FULL_SHARD`'s within each node of L GPUs, then an all-reduce of each gradient shard over the n nodes | NVLink: `k·(L-1)/L·P·(2·b_param + b_reduce)`; InfiniBand: `2·(n-1)/n·P/L·b_reduce` |
//!
//! k is the microbatches per step on one rank: tessera's FSDP gathers and reduce-scatters every
//! unit once per microbatch, while DDP and ZeRO-2 sync once per step, after accumulation.
//! `b_param` and `b_reduce` are 2 bytes under `PURE` (bf16), `b_param` = 2 and `b_reduce` = 4
//! under `DEFAULT`, both 4 under `FULL`.
//!
//! **Bandwidth**: within one node (G ≤ GPUs per node) the ring runs over NVLink, across nodes
//! it is limited by each GPU's InfiniBand link (a ring through every GPU crosses a node boundary
//! at each node, and every GPU's own NIC carries its share). `HYBRID_SHARD` uses both: its two
//! parts are timed on their own links and added. The figures are the datasheets'
//! times an efficiency the caller states (see docs/distributed.md for the sources).
//!
//! **Overlap**: tessera runs collectives between kernels, not alongside them, so the step is
//! `compute + communication`. The overlapped bound `max(compute, communication)` is printed too,
//! as what prefetching would give at best.

use std::fmt::Write as _;

use crate::config::FsdpPrecision;
use crate::parallel::ShardingStrategy;

/// The links a ring crosses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interconnect {
    /// GPUs per node (joined by NVLink).
    pub gpus_per_node: usize,
    /// NVLink bandwidth per GPU per direction, bytes/s (H100 SXM: 900 GB/s bidirectional, 450
    /// one way).
    pub nvlink_bytes_per_s: f64,
    /// InfiniBand bandwidth per GPU per direction, bytes/s (NDR: 400 Gb/s = 50 GB/s).
    pub ib_bytes_per_s: f64,
    /// The share of the link rate a collective reaches (bus bandwidth / link rate).
    pub efficiency: f64,
}

impl Interconnect {
    /// An HGX H100 node: 8 GPUs, NVLink 4 at 900 GB/s bidirectional per GPU, one 400 Gb/s NDR
    /// InfiniBand adapter per GPU; 80% of the link rate reached by NCCL's rings.
    pub const H100_NDR: Interconnect = Interconnect {
        gpus_per_node: 8,
        nvlink_bytes_per_s: 450e9,
        ib_bytes_per_s: 50e9,
        efficiency: 0.8,
    };

    /// The effective bandwidth a ring over `gpus` reaches, bytes/s per rank.
    pub fn ring_bytes_per_s(&self, gpus: usize) -> f64 {
        let link = if gpus <= self.gpus_per_node {
            self.nvlink_bytes_per_s
        } else {
            self.ib_bytes_per_s
        };
        link * self.efficiency
    }
}

/// What [`step_time`] needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimeInput {
    /// Parameters N.
    pub params: f64,
    /// Training FLOPs per token (`6·N` plus attention; see `MptConfig::flops_per_token`).
    pub flops_per_token: f64,
    /// Tokens per optimizer step, over every rank (global batch × sequence length).
    pub tokens_per_step: f64,
    /// Microbatches per step on one rank.
    pub microbatches_per_rank: usize,
    /// GPUs G.
    pub gpus: usize,
    /// Dense peak FLOP/s of one GPU in the compute precision.
    pub peak_flops: f64,
    /// Model FLOPs utilisation of the compute (0–1).
    pub mfu: f64,
    /// `fsdp_config.sharding_strategy`: which collectives a step runs.
    pub sharding: ShardingStrategy,
    /// `fsdp_config.mixed_precision`: the bytes per element gathered and reduced.
    pub mixed_precision: FsdpPrecision,
    /// The links the rings cross.
    pub interconnect: Interconnect,
}

/// The modelled step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimeModel {
    /// What the model was computed from.
    pub input: StepTimeInput,
    /// Seconds of compute.
    pub compute_s: f64,
    /// Bytes each rank sends (and receives) per step.
    pub comm_bytes: f64,
    /// Effective ring bandwidth, bytes/s.
    pub bandwidth: f64,
    /// Seconds of communication.
    pub comm_s: f64,
}

impl StepTimeModel {
    /// tessera today: no overlap.
    pub fn step_s(&self) -> f64 {
        self.compute_s + self.comm_s
    }

    /// With communication hidden behind compute, at best.
    pub fn overlapped_s(&self) -> f64 {
        self.compute_s.max(self.comm_s)
    }

    /// Tokens per second over the whole job, without overlap.
    pub fn tokens_per_s(&self) -> f64 {
        self.input.tokens_per_step / self.step_s()
    }
}

/// Bytes a gathered parameter and a reduced gradient travel in.
pub fn wire_bytes(mixed: FsdpPrecision) -> (f64, f64) {
    match mixed {
        FsdpPrecision::Pure => (2.0, 2.0),
        FsdpPrecision::Default => (2.0, 4.0),
        FsdpPrecision::Full => (4.0, 4.0),
    }
}

/// Models one step (see the module docs).
pub fn step_time(i: StepTimeInput) -> StepTimeModel {
    let g = i.gpus.max(1) as f64;
    let compute_s = i.flops_per_token * i.tokens_per_step / (g * i.mfu * i.peak_flops);
    let ring = (g - 1.0) / g;
    let (bp, br) = wire_bytes(i.mixed_precision);
    let p = i.params;
    let k = i.microbatches_per_rank.max(1) as f64;
    let per_node = i.interconnect.gpus_per_node.max(1);
    if i.sharding == ShardingStrategy::HybridShard && i.gpus > per_node {
        let (l, n) = (per_node as f64, (i.gpus / per_node).max(1) as f64);
        let within = k * (l - 1.0) / l * p * (2.0 * bp + br);
        let across = 2.0 * (n - 1.0) / n * (p / l) * br;
        let comm_s = within / i.interconnect.ring_bytes_per_s(per_node)
            + across / i.interconnect.ring_bytes_per_s(i.gpus);
        let comm_bytes = within + across;
        return StepTimeModel {
            input: i,
            compute_s,
            comm_bytes,
            bandwidth: comm_bytes / comm_s,
            comm_s,
        };
    }
    let comm_bytes = match i.sharding {
        ShardingStrategy::NoShard => 2.0 * ring * p * br,
        ShardingStrategy::ShardGradOp => ring * p * (br + bp),
        ShardingStrategy::FullShard | ShardingStrategy::HybridShard => {
            k * ring * p * (2.0 * bp + br)
        }
    };
    let bandwidth = i.interconnect.ring_bytes_per_s(i.gpus);
    StepTimeModel {
        input: i,
        compute_s,
        comm_bytes,
        bandwidth,
        comm_s: comm_bytes / bandwidth,
    }
}

impl StepTimeModel {
    /// One table row: `| GPUs | strategy | compute | bytes | link | comm | step | overlapped |`.
    pub fn row(&self) -> String {
        let i = &self.input;
        let link = if i.gpus <= i.interconnect.gpus_per_node {
            "NVLink"
        } else if i.sharding == ShardingStrategy::HybridShard {
            "NVLink+IB"
        } else {
            "IB"
        };
        let mut s = String::new();
        let _ = write!(
            s,
            "| {} | {} | {:.2} s | {:.1} GB | {link} {:.0} GB/s | {:.2} s | {:.2} s | {:.2} s | {:.0} |",
            i.gpus,
            strategy_name(i.sharding),
            self.compute_s,
            self.comm_bytes / 1e9,
            self.bandwidth / 1e9,
            self.comm_s,
            self.step_s(),
            self.overlapped_s(),
            self.tokens_per_s(),
        );
        s
    }

    /// The table's header.
    pub fn header() -> &'static str {
        "| GPUs | strategy | compute | bytes/rank | link (effective) | comm | step (no overlap) | overlapped bound | tokens/s |\n|---|---|---|---|---|---|---|---|---|"
    }
}

/// fsdp_config's name for a strategy.
pub fn strategy_name(s: ShardingStrategy) -> &'static str {
    match s {
        ShardingStrategy::NoShard => "NO_SHARD",
        ShardingStrategy::ShardGradOp => "SHARD_GRAD_OP",
        ShardingStrategy::FullShard => "FULL_SHARD",
        ShardingStrategy::HybridShard => "HYBRID_SHARD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(sharding: ShardingStrategy, gpus: usize) -> StepTimeInput {
        StepTimeInput {
            params: 7e9,
            flops_per_token: 6.0 * 7e9,
            tokens_per_step: 1024.0 * 2048.0,
            microbatches_per_rank: 1,
            gpus,
            peak_flops: 989e12,
            mfu: 0.4,
            sharding,
            mixed_precision: FsdpPrecision::Pure,
            interconnect: Interconnect::H100_NDR,
        }
    }

    #[test]
    fn compute_is_six_n_d_over_the_devices() {
        let m = step_time(input(ShardingStrategy::NoShard, 8));
        let want = 6.0 * 7e9 * 1024.0 * 2048.0 / (8.0 * 0.4 * 989e12);
        assert!((m.compute_s - want).abs() < 1e-9);
        // 64 GPUs: an eighth of it.
        let m64 = step_time(input(ShardingStrategy::NoShard, 64));
        assert!((m64.compute_s * 8.0 - want).abs() < 1e-9);
    }

    #[test]
    fn each_strategy_moves_its_bytes() {
        let p = 7e9;
        let ddp = step_time(input(ShardingStrategy::NoShard, 8));
        assert_eq!(ddp.comm_bytes, 2.0 * 7.0 / 8.0 * p * 2.0);
        let z2 = step_time(input(ShardingStrategy::ShardGradOp, 8));
        assert_eq!(z2.comm_bytes, 7.0 / 8.0 * p * 4.0);
        let fsdp = step_time(input(ShardingStrategy::FullShard, 8));
        assert_eq!(fsdp.comm_bytes, 7.0 / 8.0 * p * 6.0);
        // FSDP gathers again for every microbatch.
        let mut i = input(ShardingStrategy::FullShard, 8);
        i.microbatches_per_rank = 4;
        assert_eq!(step_time(i).comm_bytes, 4.0 * fsdp.comm_bytes);
        // DEFAULT reduces in f32.
        i.microbatches_per_rank = 1;
        i.mixed_precision = FsdpPrecision::Default;
        assert_eq!(step_time(i).comm_bytes, 7.0 / 8.0 * p * 8.0);
        // One GPU moves nothing.
        assert_eq!(step_time(input(ShardingStrategy::FullShard, 1)).comm_s, 0.0);
    }

    #[test]
    fn nodes_beyond_one_use_infiniband_and_nothing_overlaps() {
        let one = step_time(input(ShardingStrategy::FullShard, 8));
        let many = step_time(input(ShardingStrategy::FullShard, 64));
        assert_eq!(one.bandwidth, 450e9 * 0.8);
        assert_eq!(many.bandwidth, 50e9 * 0.8);
        assert_eq!(many.step_s(), many.compute_s + many.comm_s);
        assert_eq!(many.overlapped_s(), many.compute_s.max(many.comm_s));
        assert!(
            many.row().starts_with("| 64 | FULL_SHARD |"),
            "{}",
            many.row()
        );
    }

    #[test]
    fn hybrid_shard_gathers_on_nvlink_and_sends_only_a_shard_over_infiniband() {
        let p = 7e9;
        // On one node it is FULL_SHARD.
        let one = step_time(input(ShardingStrategy::HybridShard, 8));
        assert_eq!(
            one.comm_bytes,
            step_time(input(ShardingStrategy::FullShard, 8)).comm_bytes
        );
        // 64 GPUs = 8 nodes of 8: FSDP within the node, then an all-reduce of P/8 (PURE: bf16)
        // over the 8 nodes.
        let m = step_time(input(ShardingStrategy::HybridShard, 64));
        let within = 7.0 / 8.0 * p * 6.0;
        let across = 2.0 * 7.0 / 8.0 * (p / 8.0) * 2.0;
        assert_eq!(m.comm_bytes, within + across);
        let want_s = within / (450e9 * 0.8) + across / (50e9 * 0.8);
        assert!((m.comm_s - want_s).abs() < 1e-12 * want_s);
        // Less time on the wire than FULL_SHARD's ring over InfiniBand.
        assert!(m.comm_s < step_time(input(ShardingStrategy::FullShard, 64)).comm_s / 4.0);
        assert!(m.row().contains("NVLink+IB"), "{}", m.row());
    }
}
