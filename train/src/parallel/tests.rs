//! N ranks (threads, each with its own TCP communicator on 127.0.0.1) against one process that
//! runs the same global batch as N microbatches: the losses, norms and weights must be the same
//! bits under every sharding strategy, and a state saved by N ranks must resume on M.

use std::net::TcpListener;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use tessera_dist::{Communicator, EnvSource, RankEnv, RendezvousConfig};
use tessera_model::lora::{Adapter, LoraConfig, LoraInit, TargetModule};
use tessera_model::{Mpt, MptConfig};

use super::{Sharded, ShardingStrategy, Strategy};
use crate::batch::Example;
use crate::optim::{OptimizerConfig, OptimizerName};
use crate::step::{StepOutcome, StepSettings, unguarded_step};

type B = Autodiff<Flex>;

fn model_config() -> MptConfig {
    let json = r#"{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 64, "max_seq_len": 16,
                   "attn_config": {"alibi": true}}"#;
    MptConfig::from_json_str(json, "test").unwrap()
}

/// The test model; with `lora`, a frozen base carrying a random LoRA adapter on every layer.
fn model(lora: bool, device: &<B as burn::tensor::backend::BackendTypes>::Device) -> Mpt<B> {
    let cfg = model_config();
    let base = cfg.init::<B>(device, 9);
    if !lora {
        return base;
    }
    let lora = LoraConfig {
        r: 2,
        target_modules: TargetModule::ALL.to_vec(),
        init_lora_weights: LoraInit::Random,
        ..LoraConfig::default()
    };
    base.with_adapter(Adapter::init(&lora, &cfg, 5, device).unwrap())
        .unwrap()
}

fn optimizer() -> OptimizerConfig {
    OptimizerConfig {
        name: OptimizerName::DecoupledAdamw,
        lr: Some(3e-3),
        betas: None,
        eps: None,
        weight_decay: Some(1e-4),
    }
}

/// Step `t`'s global batch: `n` sequences.
fn batch(t: usize, n: usize) -> Vec<Example> {
    (0..n)
        .map(|r| {
            Example::packed(
                (0..12u32)
                    .map(|i| (i * 5 + r as u32 * 11 + t as u32 * 3) % 64)
                    .collect(),
                None,
            )
        })
        .collect()
}

const STEPS: usize = 4;

fn settings(t: usize) -> StepSettings {
    StepSettings {
        lr: 3e-3 * (1.0 + t as f64 / 4.0),
        clip_norm: Some(0.5),
        dropout_seed: t as u64,
    }
}

/// Weights of every parameter, by name, after the run.
type Weights = std::collections::BTreeMap<String, Vec<f32>>;

fn weights(s: &mut Sharded<B>) -> Weights {
    let model = s.full_model().unwrap();
    tessera_model::hf::named_parameters(&burn::module::AutodiffModule::valid(&model))
        .into_iter()
        .map(|(k, v)| (k, v.to_vec::<f32>().unwrap()))
        .collect()
}

/// One process, `micro` microbatches per step.
fn single(micro: usize, lora: bool) -> (Vec<StepOutcome>, Weights) {
    let device = Default::default();
    let mut s = Sharded::new(
        model(lora, &device),
        optimizer().build(),
        Strategy::SINGLE,
        Communicator::single(),
        &device,
    )
    .unwrap();
    let outs = (0..STEPS)
        .map(|t| {
            let m = crate::trainer::microbatches(batch(t, 2 * micro), 2);
            unguarded_step(&mut s, &m, settings(t), &device).unwrap()
        })
        .collect();
    (outs, weights(&mut s))
}

/// Rank `rank` of `world`, `per_node` ranks to a node (composer's numbering).
fn env(rank: usize, world: usize, per_node: usize, port: u16) -> RankEnv {
    RankEnv {
        rank,
        world_size: world,
        local_rank: rank % per_node,
        local_world_size: per_node,
        node_rank: rank / per_node,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        source: EnvSource::Composer,
    }
}

/// `world` ranks as threads; rank `r` gets microbatch `r` of each step's global batch.
fn ranks(world: usize, strategy: Strategy, lora: bool) -> Vec<(Vec<StepOutcome>, Weights)> {
    ranks_on_nodes(world, world, strategy, lora)
}

/// [`ranks`] with `per_node` ranks to a node.
fn ranks_on_nodes(
    world: usize,
    per_node: usize,
    strategy: Strategy,
    lora: bool,
) -> Vec<(Vec<StepOutcome>, Weights)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut listener = Some(listener);
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let l = if rank == 0 { listener.take() } else { None };
            std::thread::spawn(move || {
                let cfg = RendezvousConfig {
                    timeout: Duration::from_secs(60),
                    ..RendezvousConfig::new("parallel-test")
                };
                let env = env(rank, world, per_node, port);
                let comm = match l {
                    Some(l) => Communicator::connect_on(&env, &cfg, l),
                    None => Communicator::connect(&env, &cfg),
                }
                .unwrap();
                let device = Default::default();
                let mut s = Sharded::new(
                    model(lora, &device),
                    optimizer().build(),
                    strategy,
                    comm,
                    &device,
                )
                .unwrap();
                let outs: Vec<StepOutcome> = (0..STEPS)
                    .map(|t| {
                        let all = crate::trainer::microbatches(batch(t, 2 * world), 2);
                        let mine = vec![all[rank].clone()];
                        unguarded_step(&mut s, &mine, settings(t), &device).unwrap()
                    })
                    .collect();
                (outs, weights(&mut s))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn same_bits(a: &[StepOutcome], b: &[StepOutcome]) -> bool {
    a.iter().zip(b).all(|(x, y)| {
        x.loss.to_bits() == y.loss.to_bits()
            && x.grad_norm.to_bits() == y.grad_norm.to_bits()
            && x.applied == y.applied
    })
}

fn check(world: usize, sharding: ShardingStrategy) {
    check_model(world, sharding, false)
}

fn check_model(world: usize, sharding: ShardingStrategy, lora: bool) {
    let (want_outs, want_weights) = single(world, lora);
    for recompute in [false, true] {
        let strategy = Strategy {
            sharding,
            recompute,
            ..Strategy::SINGLE
        };
        for (rank, (outs, w)) in ranks(world, strategy, lora).into_iter().enumerate() {
            assert!(
                same_bits(&outs, &want_outs),
                "{sharding:?} (recompute {recompute}) rank {rank} of {world}: {outs:?} vs {want_outs:?}"
            );
            assert!(
                w == want_weights,
                "{sharding:?} (recompute {recompute}) rank {rank} of {world}: weights differ"
            );
        }
    }
}

#[test]
fn ddp_on_2_and_4_ranks_is_one_process_with_as_many_microbatches_bit_for_bit() {
    check(2, ShardingStrategy::NoShard);
    check(4, ShardingStrategy::NoShard);
}

#[test]
fn zero2_on_2_and_4_ranks_is_one_process_with_as_many_microbatches_bit_for_bit() {
    check(2, ShardingStrategy::ShardGradOp);
    check(4, ShardingStrategy::ShardGradOp);
}

#[test]
fn fsdp_on_2_and_4_ranks_is_one_process_with_as_many_microbatches_bit_for_bit() {
    check(2, ShardingStrategy::FullShard);
    check(4, ShardingStrategy::FullShard);
}

#[test]
fn fsdp_mixed_precision_gathers_and_reduces_in_bf16_and_stays_close_to_f32() {
    use burn::tensor::FloatDType;
    let (want, _) = single(2, false);
    let pure = Strategy {
        sharding: ShardingStrategy::FullShard,
        recompute: false,
        param_dtype: Some(FloatDType::BF16),
        reduce_dtype: Some(FloatDType::BF16),
        replicas: 1,
    };
    for (outs, _) in ranks(2, pure, false) {
        // The first step's loss is the same model's (bf16 rounding of the gathered weights
        // moves it a little); the later ones follow bf16-reduced gradients.
        assert!(!same_bits(&outs, &want), "bf16 travel must round something");
        for (a, b) in outs.iter().zip(&want) {
            assert!(
                (a.loss - b.loss).abs() < 0.02 * b.loss,
                "{} vs {}",
                a.loss,
                b.loss
            );
        }
    }
}

#[test]
fn a_lora_adapter_alone_trains_and_shards_bit_for_bit_under_every_strategy() {
    let device = Default::default();
    let initial = {
        let mut s = Sharded::new(
            model(true, &device),
            optimizer().build(),
            Strategy::SINGLE,
            Communicator::single(),
            &device,
        )
        .unwrap();
        // The training state is the adapter's: the frozen base is not in it.
        let names: Vec<&str> = s
            .layout
            .units
            .iter()
            .flat_map(|u| u.params.iter().map(|p| p.name.as_str()))
            .collect();
        assert!(!names.is_empty());
        assert!(names.iter().all(|n| n.contains(".lora.")), "{names:?}");
        weights(&mut s)
    };
    let (_, trained) = single(2, true);
    for (name, before) in &initial {
        let changed = trained[name] != *before;
        assert_eq!(
            changed,
            name.contains(".lora."),
            "{name}: only adapter weights may change"
        );
    }
    for sharding in [
        ShardingStrategy::NoShard,
        ShardingStrategy::ShardGradOp,
        ShardingStrategy::FullShard,
    ] {
        check_model(2, sharding, true);
    }
}

/// How far apart two runs' weights are: the largest difference, and the share of weights more
/// than `1e-5` apart.
fn weights_apart(a: &Weights, b: &Weights) -> (f32, f64) {
    let pairs = || a.iter().flat_map(|(k, x)| x.iter().zip(&b[k]));
    let largest = pairs().map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
    let far = pairs().filter(|(p, q)| (*p - *q).abs() > 1e-5).count();
    (largest, far as f64 / pairs().count() as f64)
}

#[test]
fn hybrid_shard_on_2_nodes_matches_one_process() {
    for recompute in [false, true] {
        let strategy = Strategy {
            sharding: ShardingStrategy::HybridShard,
            recompute,
            replicas: 2,
            ..Strategy::SINGLE
        };
        // 2 nodes of 1 rank: nothing is sharded, and the sum over the nodes is the rank-order
        // sum, so the run is one process's bit for bit.
        let (want_outs, want_weights) = single(2, false);
        for (rank, (outs, w)) in ranks_on_nodes(2, 1, strategy, false)
            .into_iter()
            .enumerate()
        {
            assert!(same_bits(&outs, &want_outs), "2x1 rank {rank}: {outs:?}");
            assert!(w == want_weights, "2x1 rank {rank}: weights differ");
        }
        // 2 nodes of 2 ranks: the state is sharded over a node's 2 ranks, and the gradient is
        // summed as (g0 + g1) + (g2 + g3) instead of ((g0 + g1) + g2) + g3, so it matches to
        // f32 rounding: every rank agrees bit for bit, and the losses and norms stay within 1e-5
        // of one process's.
        let (want_outs, want_weights) = single(4, false);
        let runs = ranks_on_nodes(4, 2, strategy, false);
        for (rank, (outs, w)) in runs.iter().enumerate() {
            assert!(
                same_bits(outs, &runs[0].0),
                "2x2 rank {rank} disagrees with rank 0"
            );
            assert!(
                *w == runs[0].1,
                "2x2 rank {rank}: weights differ from rank 0's"
            );
            for (a, b) in outs.iter().zip(&want_outs) {
                assert_eq!(a.applied, b.applied);
                assert!(
                    (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs(),
                    "{a:?} vs {b:?}"
                );
                assert!(
                    (a.grad_norm - b.grad_norm).abs() <= 1e-5 * b.grad_norm.abs(),
                    "{a:?} vs {b:?}"
                );
            }
            // AdamW divides by the gradient's running RMS, so a weight whose gradient is
            // near zero (sums that nearly cancel, where the order of addition decides the
            // sign of the residue) can move by up to about lr per step either way: the few
            // such weights stay within Σ lr of one process's, the rest within 1e-5.
            let (largest, far) = weights_apart(w, &want_weights);
            let lr_sum: f64 = (0..STEPS).map(|t| settings(t).lr).sum();
            assert!(
                f64::from(largest) <= lr_sum,
                "2x2 rank {rank}: {largest} apart"
            );
            assert!(
                far < 0.01,
                "2x2 rank {rank}: {:.2}% of weights apart",
                far * 100.0
            );
        }
    }
}
