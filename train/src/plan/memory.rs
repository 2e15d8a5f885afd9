//! `tessera plan --memory`: the bytes one rank allocates, term by term, under each sharding
//! strategy, as [`crate::parallel`] does it (not as PyTorch's FSDP does it).
//!
//! P trainable parameters are laid out as units (the root: embeddings and final norm; one per
//! block), each padded to a multiple of `N × CHUNK` for N ranks ([`crate::parallel::layout`]).
//! U is the largest unit, S the number of state shards (1 under `NO_SHARD`, the L ranks of a
//! node under `HYBRID_SHARD`, N otherwise; the table's N is S). All master weights, gradients
//! and moments are f32.
//!
//! **LoRA**: P counts the adapter's parameters, which are all that trains, shards and has
//! moments. The frozen base is held whole on every rank, its matrices in bf16 under `amp_bf16`
//! (f32 otherwise) and its norms and biases in f32 ([`tessera_model::lora::training_memory`]):
//! a resident `frozen base` term.
//!
//! | term | `NO_SHARD` | `SHARD_GRAD_OP` | `FULL_SHARD` |
//! |---|---|---|---|
//! | master weights | 4P | 4P/N | 4P/N |
//! | model parameters besides the master | 0 (views of the master) | 4P (the gathered copy) | 4U + the travel copy of U (one gathered unit) |
//! | optimizer moments (Adam; Lion half) | 8P | 8P/N | 8P/N |
//! | gradients at the backward's peak | 4P | 4P | 4P/N + 2·4U (a unit's gradient and its flat copy) |
//! | update transient | 4P (the old master the model still views) | 4P (the new gathered parameters) | 4U/N |
//!
//! With `activation_checkpointing` (or under `FULL_SHARD`, which always runs block by block)
//! the gradients of the replicated strategies are the flat per-unit accumulators (4P) plus one
//! unit's gradient and its flat copy (2·4U). With more than one microbatch per step, the
//! gradient term (without the unit in flight) counts twice: the running sum and the current
//! microbatch's gradients exist together.
//!
//! **Activations** (what burn's autodiff keeps for the backward, counted from the kernels'
//! saved state in `tessera-model`): per block, for T = b·s tokens of width h and a heads, the
//! norms' inputs (2·T·h), the Wqkv input (T·h), q, k and v (3·T·h), the attention output (T·h),
//! the FFN's input (T·h), its up-projection and GELU output (2·4·T·h): 16·T·h elements, plus the
//! attention probabilities a·b·s² (the composed attention on CUDA and wgpu materialises them,
//! in f32; CPU training's flash kernel does not, so there the term overstates). The head
//! keeps the final norm's input and output and the gradient at its input (3·T·h), plus one
//! block of logits and its softmax gradient (the fused unembedding loss computes the logits in
//! blocks of 4 Mi elements). Elements are 4 bytes under `fp32`, 2 under `amp_*` (the probability
//! matrix stays f32). Without recomputation every block's activations are kept; with it, each
//! block's input (T·h) and one block's activations.
//!
//! On one rank nothing is gathered: a unit's "gathered" copy is its master shard, which the
//! model views, so the parameter term is 0 whatever the strategy.
//!
//! The peak is `resident + max(backward, update)`: master, parameters and moments are resident;
//! the backward's gradients and activations and the update's transients come and go.

use tessera_model::lora::{LoraConfig, LoraError};

use crate::config::{AdapterSource, FsdpPrecision, Precision};
use crate::parallel::ShardingStrategy;
use crate::parallel::layout::CHUNK;

/// Which optimizer's state to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerStateKind {
    /// Two fp32 moments per parameter (both AdamW variants).
    Adam,
    /// One fp32 moment per parameter.
    Lion,
}

impl OptimizerStateKind {
    /// The state optimizer `name` keeps.
    pub fn of(name: crate::optim::OptimizerName) -> Self {
        match name {
            crate::optim::OptimizerName::DecoupledLionw => OptimizerStateKind::Lion,
            _ => OptimizerStateKind::Adam,
        }
    }
}

fn adapter_error(key: &'static str, e: LoraError) -> crate::trainer::TrainError {
    crate::trainer::TrainError::Adapter {
        key,
        source: Box::new(e),
    }
}

/// What [`memory_estimate`] needs about the model and the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryInput {
    /// Trainable parameters P.
    pub params: u64,
    /// Parameters of the root unit (embeddings, final norm, an untied `lm_head`).
    pub root_params: u64,
    /// Parameters of one block.
    pub block_params: u64,
    /// Blocks.
    pub n_layers: usize,
    /// Hidden size h.
    pub d_model: usize,
    /// Attention heads a.
    pub n_heads: usize,
    /// Vocabulary V.
    pub vocab_size: usize,
    /// Sequence length s.
    pub seq_len: usize,
    /// Sequences per microbatch b.
    pub microbatch: usize,
    /// Microbatches per optimizer step on this rank (above 1, gradients accumulate).
    pub microbatches_per_step: usize,
    /// Activation precision.
    pub precision: Precision,
    /// Optimizer state size.
    pub optimizer: OptimizerStateKind,
    /// Ranks.
    pub world_size: usize,
    /// Nodes the ranks are spread over (`HYBRID_SHARD` shards within each).
    pub nodes: usize,
    /// `fsdp_config.sharding_strategy`.
    pub sharding: ShardingStrategy,
    /// `fsdp_config.activation_checkpointing`.
    pub recompute: bool,
    /// `fsdp_config.mixed_precision`: the dtype parameters travel in when gathered.
    pub mixed_precision: FsdpPrecision,
    /// Bytes of a frozen base every rank holds whole (a LoRA run; 0 otherwise).
    pub frozen_bytes: f64,
}

impl MemoryInput {
    /// The shape fields from an MPT config; `sharded` picks `FULL_SHARD` over `NO_SHARD`, with
    /// no recomputation and composer's `DEFAULT` mixed precision (refine with
    /// [`MemoryInput::with_strategy`]).
    pub fn from_mpt(
        cfg: &tessera_model::MptConfig,
        seq_len: usize,
        microbatch: usize,
        precision: Precision,
        optimizer: OptimizerStateKind,
        world_size: usize,
        sharded: bool,
    ) -> Self {
        let params = cfg.num_params();
        let in_blocks: u64 = tessera_model::spec::param_specs(cfg)
            .iter()
            .filter(|s| s.name.contains(".blocks."))
            .map(|s| s.numel() as u64)
            .sum();
        let layers = cfg.n_layers.max(1) as u64;
        MemoryInput {
            params,
            root_params: params - in_blocks,
            block_params: in_blocks / layers,
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            vocab_size: cfg.vocab_size,
            seq_len,
            microbatch,
            microbatches_per_step: 1,
            precision,
            optimizer,
            world_size: world_size.max(1),
            nodes: 1,
            sharding: if sharded {
                ShardingStrategy::FullShard
            } else {
                ShardingStrategy::NoShard
            },
            recompute: false,
            mixed_precision: FsdpPrecision::Default,
            frozen_bytes: 0.0,
        }
    }

    /// The same run training a LoRA adapter on the base: P becomes the adapter's parameters
    /// (all in the blocks), and the base, frozen, is held whole in `base_dtype` on every rank.
    pub fn with_lora(
        self,
        model: &tessera_model::MptConfig,
        lora: &tessera_model::lora::LoraConfig,
        base_dtype: burn::tensor::FloatDType,
    ) -> Result<Self, tessera_model::lora::LoraError> {
        let m = tessera_model::lora::training_memory(model, Some(lora), base_dtype)?;
        let adapter = m.trainable_params;
        let layers = self.n_layers.max(1) as u64;
        Ok(MemoryInput {
            params: adapter,
            root_params: 0,
            block_params: adapter.div_ceil(layers),
            frozen_bytes: (m.weight_bytes - 4 * adapter) as f64,
            ..self
        })
    }

    /// The same input under `fsdp_config`'s strategy, recomputation and mixed precision.
    pub fn with_strategy(
        self,
        sharding: ShardingStrategy,
        recompute: bool,
        mixed_precision: FsdpPrecision,
    ) -> Self {
        MemoryInput {
            sharding,
            recompute,
            mixed_precision,
            ..self
        }
    }

    /// A training config's run on `world_size` ranks over `nodes` nodes: its shape, batch
    /// split, precision, optimizer, `fsdp_config` and LoRA adapter, resolved as the trainer
    /// resolves them (no `fsdp_config`: replicated state; `HYBRID_SHARD`: sharded within each
    /// node; `auto` microbatch: the whole device batch; a LoRA base in bf16 under `amp_bf16`).
    /// Fails only when a `pretrained_lora_id_or_path` adapter's config cannot be read.
    pub fn from_train_config(
        cfg: &crate::config::TrainConfig,
        model: &tessera_model::MptConfig,
        world_size: usize,
        nodes: usize,
    ) -> Result<Self, crate::trainer::TrainError> {
        let world = world_size.max(1);
        let device_batch = (cfg.global_train_batch_size / world).max(1);
        let microbatch = match cfg.device_train_microbatch_size {
            crate::config::MicroBatchSize::Fixed(m) => m.clamp(1, device_batch),
            crate::config::MicroBatchSize::Auto => device_batch,
        };
        let optimizer = OptimizerStateKind::of(cfg.optimizer.name);
        let base = MemoryInput {
            microbatches_per_step: device_batch.div_ceil(microbatch),
            nodes: nodes.max(1),
            ..Self::from_mpt(
                model,
                cfg.max_seq_len,
                microbatch,
                cfg.precision,
                optimizer,
                world,
                false,
            )
        };
        let run = match &cfg.fsdp_config {
            None => base.with_strategy(ShardingStrategy::NoShard, false, FsdpPrecision::Full),
            Some(f) => base.with_strategy(
                f.sharding_strategy,
                f.activation_checkpointing,
                f.mixed_precision,
            ),
        };
        let (key, lora) = match &cfg.model.adapter {
            None => return Ok(run),
            Some(AdapterSource::New { config, .. }) => ("model.peft_config", config.clone()),
            Some(AdapterSource::Pretrained(dir)) => {
                let key = "model.pretrained_lora_id_or_path";
                let path = std::path::Path::new(dir).join(tessera_model::lora::peft::CONFIG_FILE);
                let text = std::fs::read_to_string(&path).map_err(|source| {
                    crate::trainer::TrainError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                let lora = LoraConfig::from_adapter_config(&text, &path.display().to_string())
                    .map_err(|e| adapter_error(key, e))?;
                (key, lora)
            }
        };
        let base_dtype = match cfg.precision {
            Precision::AmpBf16 => burn::tensor::FloatDType::BF16,
            _ => burn::tensor::FloatDType::F32,
        };
        run.with_lora(model, &lora, base_dtype)
            .map_err(|e| adapter_error(key, e))
    }

    /// Ranks the master weights and moments are split over: none, every rank, or under
    /// `HYBRID_SHARD` the ranks of one node.
    fn state_shards(&self) -> f64 {
        let world = self.world_size.max(1);
        match self.sharding {
            ShardingStrategy::NoShard => 1.0,
            ShardingStrategy::HybridShard => (world / self.nodes.clamp(1, world)) as f64,
            _ => world as f64,
        }
    }

    fn shards_params(&self) -> bool {
        matches!(
            self.sharding,
            ShardingStrategy::FullShard | ShardingStrategy::HybridShard
        )
    }

    /// `n` rounded up to the unit padding (a multiple of `world_size × CHUNK`, whatever the
    /// strategy: each rank writes an equal part of a checkpoint).
    fn padded(&self, n: u64) -> f64 {
        let step = (self.world_size.max(1) as u64) * CHUNK as u64;
        (n.div_ceil(step) * step) as f64
    }

    /// P with every unit's padding.
    fn padded_params(&self) -> f64 {
        self.padded(self.root_params) + self.n_layers as f64 * self.padded(self.block_params)
    }

    /// The largest unit, padded.
    fn largest_unit(&self) -> f64 {
        self.padded(self.root_params)
            .max(self.padded(self.block_params))
    }
}

/// Bytes per rank, by kind (see the module docs for each term).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// f32 master weights (this rank's shard).
    pub master: f64,
    /// Parameters the model holds besides the master weights (gathered copies).
    pub params: f64,
    /// Optimizer moments (this rank's shard).
    pub optimizer: f64,
    /// Gradients held at the backward's peak.
    pub grads: f64,
    /// Saved activations of one microbatch, and the logits block.
    pub activations: f64,
    /// What the update holds beyond the resident state (gradient shards and the transient copy).
    pub update: f64,
    /// A LoRA run's frozen base, held whole (0 otherwise).
    pub frozen: f64,
}

impl MemoryEstimate {
    /// Held all the time: master weights, parameters, moments and a frozen base.
    pub fn resident(&self) -> f64 {
        self.master + self.params + self.optimizer + self.frozen
    }

    /// The peak: resident state plus the larger of the backward and the update.
    pub fn total(&self) -> f64 {
        self.resident() + (self.grads + self.activations).max(self.update)
    }

    /// A small table, in MiB.
    pub fn render(&self) -> String {
        let m = |b: f64| b / (1u64 << 20) as f64;
        let phase = if self.grads + self.activations >= self.update {
            "backward"
        } else {
            "update"
        };
        let frozen = if self.frozen > 0.0 {
            format!("  frozen base     {:>10.1}\n", m(self.frozen))
        } else {
            String::new()
        };
        format!(
            "per-rank memory (MiB)\n{frozen}  master weights  {:>10.1}\n  parameters      {:>10.1}\n  optimizer       {:>10.1}\n  gradients       {:>10.1}\n  activations     {:>10.1}\n  update          {:>10.1}\n  peak            {:>10.1}  (resident + the {phase})\n",
            m(self.master),
            m(self.params),
            m(self.optimizer),
            m(self.grads),
            m(self.activations),
            m(self.update),
            m(self.total()),
        )
    }
}

/// Estimates one rank's training memory (see the module docs for the formulas).
pub fn memory_estimate(m: &MemoryInput) -> MemoryEstimate {
    let shards = m.state_shards();
    let p = m.padded_params();
    let unit = m.largest_unit();
    let half = !matches!(m.precision, Precision::Fp32);
    // Bytes a gathered parameter travels in (then cast back to f32 in the model).
    let travel = match (half, m.mixed_precision) {
        (true, FsdpPrecision::Pure | FsdpPrecision::Default) => 2.0,
        _ => 0.0,
    };
    let moments = match m.optimizer {
        OptimizerStateKind::Adam => 8.0,
        OptimizerStateKind::Lion => 4.0,
    };
    let accumulating = m.microbatches_per_step > 1;
    let blockwise = m.recompute || m.shards_params();

    let master = 4.0 * p / shards;
    // Unsharded (one rank, or HYBRID_SHARD with one rank per node), a "gathered" unit is the
    // master shard itself: the model views it.
    let alone = shards <= 1.0;
    let params = match m.sharding {
        _ if alone => 0.0,
        ShardingStrategy::NoShard => 0.0,
        ShardingStrategy::ShardGradOp => 4.0 * p,
        _ => (4.0 + travel) * unit,
    };
    // Accumulating over microbatches, the running sum and the current microbatch's gradients
    // exist together (the whole-graph accumulator; block by block, the summed unit gradients
    // and the microbatch's list of them).
    let copies = if accumulating { 2.0 } else { 1.0 };
    let grads = if m.shards_params() {
        copies * 4.0 * p / shards + 2.0 * 4.0 * unit
    } else if blockwise {
        copies * 4.0 * p + 2.0 * 4.0 * unit
    } else {
        copies * 4.0 * p
    };
    let update_copy = match m.sharding {
        ShardingStrategy::NoShard | ShardingStrategy::ShardGradOp => 4.0 * p,
        _ => 4.0 * unit / shards,
    };

    let e = if half { 2.0 } else { 4.0 };
    let (s, b, h, a) = (
        m.seq_len as f64,
        m.microbatch as f64,
        m.d_model as f64,
        m.n_heads as f64,
    );
    let t = s * b;
    let per_block = 16.0 * t * h * e + a * b * s * s * 4.0;
    let v = m.vocab_size as f64;
    let logits_rows = tessera_model::lm_loss::logits_block_rows(t as usize, v as usize) as f64;
    let head = 3.0 * t * h * e + 2.0 * logits_rows * v * 4.0;
    let layers = m.n_layers as f64;
    let blocks = if blockwise {
        layers * t * h * e + per_block
    } else {
        layers * per_block
    };
    MemoryEstimate {
        master,
        params,
        optimizer: moments * p / shards,
        grads,
        activations: blocks + head,
        update: 4.0 * p / shards + update_copy,
        frozen: m.frozen_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1B-ish: root 100M, 24 blocks of 37.5M, 8 ranks.
    fn input(sharding: ShardingStrategy, world: usize) -> MemoryInput {
        MemoryInput {
            params: 1_000_000_000,
            root_params: 100_000_000,
            block_params: 37_500_000,
            n_layers: 24,
            d_model: 2048,
            n_heads: 16,
            vocab_size: 50_000,
            seq_len: 2048,
            microbatch: 1,
            microbatches_per_step: 1,
            precision: Precision::Fp32,
            optimizer: OptimizerStateKind::Adam,
            world_size: world,
            nodes: 1,
            sharding,
            recompute: false,
            mixed_precision: FsdpPrecision::Full,
            frozen_bytes: 0.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn a_lora_run_trains_and_shards_only_the_adapter_and_holds_the_base_whole() {
        let yaml = |precision: &str, adapter: bool| {
            let peft = if adapter {
                "\n  peft_config: {peft_type: LORA, r: 8, lora_alpha: 16, target_modules: [Wqkv, out_proj, up_proj, down_proj]}"
            } else {
                ""
            };
            format!(
                "run_name: l\nmax_seq_len: 64\n\
                 model:\n  name: mpt_causal_lm\n  d_model: 128\n  n_heads: 4\n  n_layers: 4\n  \
                 vocab_size: 1000\n  max_seq_len: 64{peft}\n\
                 tokenizer: {{name: unused}}\n\
                 train_loader: {{name: text, dataset: {{local: /nonexistent, max_seq_len: 64}}}}\n\
                 optimizer: {{name: decoupled_adamw, lr: 1.0e-3}}\n\
                 scheduler: {{name: constant_with_warmup, t_warmup: 0ba}}\n\
                 max_duration: 10ba\nglobal_train_batch_size: 8\ndevice_train_microbatch_size: 2\n\
                 precision: {precision}\nfsdp_config: {{sharding_strategy: FULL_SHARD}}\n"
            )
        };
        let load = |text: &str| crate::config::load_str(text, "l.yaml", &[]).unwrap().config;
        let full_cfg = load(&yaml("amp_bf16", false));
        let lora_cfg = load(&yaml("amp_bf16", true));
        let model = crate::trainer::setup::resolve_model(&full_cfg).unwrap();
        let full = MemoryInput::from_train_config(&full_cfg, &model, 4, 1).unwrap();
        let lora = MemoryInput::from_train_config(&lora_cfg, &model, 4, 1).unwrap();
        let Some(crate::config::AdapterSource::New { config, .. }) = &lora_cfg.model.adapter else {
            panic!("the YAML has a peft_config");
        };
        let mem = tessera_model::lora::training_memory(
            &model,
            Some(config),
            burn::tensor::FloatDType::BF16,
        )
        .unwrap();
        // The adapter: r·(d_in + d_out) per target per block.
        let per_block = 8 * ((128 + 384) + (128 + 128) + (128 + 512) + (512 + 128));
        assert_eq!(lora.params, 4 * per_block);
        assert_eq!(lora.params, mem.trainable_params);
        assert_eq!(lora.root_params, 0);
        assert_eq!(full.frozen_bytes, 0.0);
        // The base: bf16 matrices plus f32 norms, held whole on each of the 4 ranks.
        assert_eq!(
            lora.frozen_bytes,
            (mem.weight_bytes - 4 * mem.trainable_params) as f64
        );
        let (e_full, e_lora) = (memory_estimate(&full), memory_estimate(&lora));
        assert_eq!(e_lora.frozen, lora.frozen_bytes);
        assert_eq!(e_lora.master, 4.0 * lora.padded_params() / 4.0);
        assert_eq!(e_lora.optimizer, 8.0 * lora.padded_params() / 4.0);
        assert!(e_lora.master < e_full.master / 10.0);
        // Activations do not depend on what trains.
        assert_eq!(e_lora.activations, e_full.activations);
        // Under fp32 the base stays f32: twice the bf16 matrices.
        let fp32 = load(&yaml("fp32", true));
        let lora32 = MemoryInput::from_train_config(&fp32, &model, 4, 1).unwrap();
        assert!(lora32.frozen_bytes > 1.9 * lora.frozen_bytes);
    }

    #[test]
    fn hybrid_shard_shards_the_state_over_a_node_only() {
        // 16 ranks on 2 nodes: the state is split 8 ways, like FULL_SHARD on 8 ranks, with
        // the padding of 16.
        let hybrid = MemoryInput {
            nodes: 2,
            ..input(ShardingStrategy::HybridShard, 16)
        };
        let e = memory_estimate(&hybrid);
        let p = hybrid.padded_params();
        assert_eq!(e.master, 4.0 * p / 8.0);
        assert_eq!(e.optimizer, 8.0 * p / 8.0);
        let full16 = memory_estimate(&input(ShardingStrategy::FullShard, 16));
        assert_eq!(e.master, 2.0 * full16.master);
        // On one node it is FULL_SHARD.
        let one_node = input(ShardingStrategy::HybridShard, 16);
        assert_eq!(memory_estimate(&one_node).master, full16.master);
        // One rank per node: nothing is sharded, and the model views the master weights.
        let per_rank = MemoryInput {
            nodes: 16,
            ..input(ShardingStrategy::HybridShard, 16)
        };
        let e = memory_estimate(&per_rank);
        assert_eq!(e.master, 4.0 * per_rank.padded_params());
        assert_eq!(e.params, 0.0);
    }

    #[test]
    fn no_shard_replicates_everything_and_the_model_views_the_master() {
        let m = input(ShardingStrategy::NoShard, 8);
        let e = memory_estimate(&m);
        let p = m.padded_params();
        // Padding is at most 8 CHUNKs per unit here (a multiple of world × CHUNK).
        assert!(p >= 1e9 && p < 1e9 + 25.0 * 8.0 * CHUNK as f64);
        assert_eq!(e.master, 4.0 * p);
        assert_eq!(e.params, 0.0);
        assert_eq!(e.optimizer, 8.0 * p);
        assert_eq!(e.grads, 4.0 * p);
        assert_eq!(e.update, 8.0 * p);
        // Accumulating keeps the accumulator and the new microbatch's gradients.
        let acc = memory_estimate(&MemoryInput {
            microbatches_per_step: 4,
            ..m
        });
        assert_eq!(acc.grads, 8.0 * p);
        // Lion keeps one moment.
        let lion = memory_estimate(&MemoryInput {
            optimizer: OptimizerStateKind::Lion,
            ..m
        });
        assert_eq!(lion.optimizer, 4.0 * p);
    }

    #[test]
    fn shard_grad_op_splits_master_and_moments_but_gathers_the_parameters() {
        let one = memory_estimate(&input(ShardingStrategy::ShardGradOp, 1));
        for n in [2usize, 4, 8] {
            let m = input(ShardingStrategy::ShardGradOp, n);
            let e = memory_estimate(&m);
            let p = m.padded_params();
            assert!(close(e.master, 4.0 * p / n as f64));
            assert!(close(e.optimizer, 8.0 * p / n as f64));
            // The moments fall as 1/N (up to the padding to n × CHUNK per unit).
            let ratio = one.optimizer / e.optimizer;
            assert!((ratio / n as f64 - 1.0).abs() < 1e-3, "{n}: {ratio}");
            // The full parameters and gradients stay.
            assert_eq!(e.params, 4.0 * p);
            assert_eq!(e.grads, 4.0 * p);
        }
    }

    #[test]
    fn full_shard_splits_parameters_and_keeps_one_gathered_unit() {
        let one = memory_estimate(&input(ShardingStrategy::FullShard, 1));
        let m = input(ShardingStrategy::FullShard, 8);
        let e = memory_estimate(&m);
        let p = m.padded_params();
        let unit = m.largest_unit();
        // The root (100M) is the largest unit, padded to 8 × 4096.
        assert_eq!(unit, (100_000_000u64.div_ceil(8 * 4096) * 8 * 4096) as f64);
        assert!(close(e.master, p / 2.0));
        assert!(close(e.optimizer, p));
        assert_eq!(e.params, 4.0 * unit);
        assert!(close(e.grads, p / 2.0 + 8.0 * unit));
        // Resident state falls as 1/N, apart from the one gathered unit.
        let shard = |e: &MemoryEstimate| e.master + e.optimizer;
        assert!((shard(&one) / shard(&e) / 8.0 - 1.0).abs() < 1e-3);
        // Always block by block: each block's input and one block's activations.
        let (t, h) = (2048.0, 2048.0);
        let per_block = 16.0 * t * h * 4.0 + 16.0 * 2048.0 * 2048.0 * 4.0;
        let rows = (tessera_model::lm_loss::LOGITS_BLOCK_ELEMENTS / 50_000) as f64;
        let head = 3.0 * t * h * 4.0 + 2.0 * rows * 50_000.0 * 4.0;
        assert_eq!(e.activations, 24.0 * t * h * 4.0 + per_block + head);
    }

    #[test]
    fn pure_mixed_precision_adds_a_sixteen_bit_travel_copy_and_halves_activations() {
        let full = input(ShardingStrategy::FullShard, 8);
        let pure = MemoryInput {
            precision: Precision::AmpBf16,
            mixed_precision: FsdpPrecision::Pure,
            ..full
        };
        let (f, p) = (memory_estimate(&full), memory_estimate(&pure));
        assert_eq!(p.params, 6.0 * full.largest_unit());
        assert_eq!(f.params, 4.0 * full.largest_unit());
        assert!(p.activations < f.activations);
        // FULL keeps f32 on the wire even under amp.
        let amp_full = memory_estimate(&MemoryInput {
            mixed_precision: FsdpPrecision::Full,
            ..pure
        });
        assert_eq!(amp_full.params, f.params);
    }

    #[test]
    fn recomputation_keeps_block_inputs_instead_of_every_block() {
        let m = input(ShardingStrategy::NoShard, 1);
        let whole = memory_estimate(&m);
        let re = memory_estimate(&MemoryInput {
            recompute: true,
            ..m
        });
        let (t, h) = (2048.0, 2048.0);
        let per_block = 16.0 * t * h * 4.0 + 16.0 * 2048.0 * 2048.0 * 4.0;
        assert_eq!(
            whole.activations - re.activations,
            23.0 * per_block - 24.0 * t * h * 4.0
        );
        // Block-wise gradients: the flat accumulators plus one unit in flight.
        assert_eq!(re.grads, 4.0 * m.padded_params() + 8.0 * m.largest_unit());
        // Accumulating, the sum and the microbatch's gradients coexist (FSDP: shards of both).
        let acc = memory_estimate(&MemoryInput {
            recompute: true,
            microbatches_per_step: 2,
            ..m
        });
        assert_eq!(acc.grads, 8.0 * m.padded_params() + 8.0 * m.largest_unit());
        let fsdp = input(ShardingStrategy::FullShard, 8);
        let fsdp_acc = memory_estimate(&MemoryInput {
            microbatches_per_step: 2,
            ..fsdp
        });
        assert!(close(
            fsdp_acc.grads,
            8.0 * fsdp.padded_params() / 8.0 + 8.0 * fsdp.largest_unit()
        ));
    }

    #[test]
    fn the_peak_is_resident_plus_the_larger_phase() {
        let e = memory_estimate(&input(ShardingStrategy::NoShard, 1));
        assert_eq!(
            e.total(),
            e.master + e.params + e.optimizer + (e.grads + e.activations).max(e.update)
        );
        assert!(e.render().contains("peak"));
    }

    #[test]
    fn from_mpt_splits_root_and_blocks() {
        let cfg = tessera_model::MptConfig::preset("mpt-7b").unwrap();
        let m = MemoryInput::from_mpt(
            &cfg,
            2048,
            8,
            Precision::AmpBf16,
            OptimizerStateKind::Adam,
            8,
            true,
        );
        assert_eq!(m.root_params + 32 * m.block_params, m.params);
        // A 7B block: 12·h² weights plus norms.
        assert!(m.block_params >= 12 * 4096 * 4096);
        assert_eq!(m.root_params, 50_432 * 4096 + 4096);
    }
}
