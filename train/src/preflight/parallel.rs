//! The parallelism check: can this build run the launch as configured?
//!
//! It refuses, naming the key or flag, what would otherwise fail on the cluster after the
//! allocation was granted (or, worse, run as something else):
//! - a backend this tessera was built without (`--device cuda` without the `cuda` feature);
//! - more devices per node than the node has;
//! - devices that do not split evenly over the nodes;
//! - `fsdp_config` settings tessera does not implement (`cpu_offload`,
//!   `activation_cpu_offload`).
//!
//! It says how `HYBRID_SHARD` splits the launch: sharded within each node, replicated across
//! the nodes (on one node, `FULL_SHARD`).
//!
//! A global batch that does not split over the devices fails the config check before this one
//! ([`super::checks::config_check`]).

use super::{Check, PARALLELISM, PreflightOptions, Status};
use crate::config::TrainConfig;
use crate::parallel::ShardingStrategy;
use crate::plan::step_time::strategy_name;

/// The verdict for `cfg` launched as `opts` describes.
pub fn parallel_check(cfg: &TrainConfig, opts: &PreflightOptions) -> Check {
    let fail = |detail: String| Check::new(PARALLELISM, Status::Fail, detail);
    let world = opts.world_size;
    let nodes = opts.nodes;
    if let Some(why) = &opts.backend_missing {
        return fail(why.clone());
    }
    if world == 0 || nodes == 0 {
        return fail(format!(
            "--devices {world} over --nodes {nodes}: both must be at least 1"
        ));
    }
    if !world.is_multiple_of(nodes) {
        return fail(format!(
            "--devices {world} do not split evenly over --nodes {nodes}"
        ));
    }
    let per_node = world / nodes;
    if let Some(have) = opts.devices_per_node
        && per_node > have
    {
        return fail(format!(
            "{per_node} devices per node requested, but {} has {have}",
            opts.device_label
        ));
    }
    let Some(f) = &cfg.fsdp_config else {
        return Check::new(
            PARALLELISM,
            Status::Pass,
            format!(
                "{world} rank(s) on {nodes} node(s); no fsdp_config: data parallel with replicated state (NO_SHARD)"
            ),
        );
    };
    if let Err((key, message)) = f.validate() {
        return fail(format!("fsdp_config.{key}: {message}"));
    }
    let mut detail = format!(
        "{world} rank(s) on {nodes} node(s); fsdp_config: {}, mixed_precision {:?}{}",
        strategy_name(f.sharding_strategy),
        f.mixed_precision,
        if f.activation_checkpointing {
            ", activation checkpointing"
        } else {
            ""
        }
    );
    if f.sharding_strategy == ShardingStrategy::HybridShard {
        detail += &if nodes > 1 {
            format!(
                "; HYBRID_SHARD: state sharded over each node's {per_node} ranks, replicated over {nodes} nodes"
            )
        } else {
            "; HYBRID_SHARD on one node runs as FULL_SHARD".to_string()
        };
    }
    let inert = f.inert_keys();
    if !inert.is_empty() {
        detail += &format!("; no effect here: {}", inert.join(", "));
    }
    Check::new(PARALLELISM, Status::Pass, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const BASE: &str = r#"
run_name: p
max_seq_len: 16
model: {name: mpt_causal_lm, d_model: 32, n_heads: 2, n_layers: 2, vocab_size: 64, max_seq_len: 32}
tokenizer: {name: unused}
train_loader: {name: text, dataset: {local: /nonexistent, max_seq_len: 16}}
optimizer: {name: decoupled_adamw, lr: 1.0e-3}
scheduler: {name: constant_with_warmup, t_warmup: 0ba}
max_duration: 20ba
global_train_batch_size: 8
device_train_microbatch_size: 2
precision: fp32
"#;

    fn cfg(fsdp: &str) -> TrainConfig {
        load_str(&format!("{BASE}{fsdp}"), "p.yaml", &[])
            .unwrap()
            .config
    }

    fn opts(world: usize, nodes: usize) -> PreflightOptions {
        PreflightOptions {
            world_size: world,
            nodes,
            ..PreflightOptions::default()
        }
    }

    fn verdict(c: &TrainConfig, o: &PreflightOptions) -> (Status, String) {
        let check = parallel_check(c, o);
        (check.status, check.detail)
    }

    #[test]
    fn a_supported_launch_passes_and_names_the_strategy() {
        let c = cfg("fsdp_config: {sharding_strategy: SHARD_GRAD_OP, mixed_precision: PURE}\n");
        let (st, d) = verdict(&c, &opts(4, 2));
        assert_eq!(st, Status::Pass, "{d}");
        assert!(d.contains("SHARD_GRAD_OP") && d.contains("Pure"), "{d}");
        let (st, d) = verdict(&cfg(""), &opts(2, 1));
        assert_eq!(st, Status::Pass);
        assert!(d.contains("NO_SHARD"), "{d}");
    }

    #[test]
    fn hybrid_shard_shards_within_nodes_and_within_one_node_is_full_shard() {
        let c = cfg("fsdp_config: {sharding_strategy: HYBRID_SHARD}\n");
        let (st, d) = verdict(&c, &opts(16, 2));
        assert_eq!(st, Status::Pass, "{d}");
        assert!(
            d.contains(
                "HYBRID_SHARD: state sharded over each node's 8 ranks, replicated over 2 nodes"
            ),
            "{d}"
        );
        let (st, d) = verdict(&c, &opts(8, 1));
        assert_eq!(st, Status::Pass);
        assert!(d.contains("runs as FULL_SHARD"), "{d}");
    }

    #[test]
    fn unimplemented_fsdp_settings_are_refused_by_key() {
        let (st, d) = verdict(&cfg("fsdp_config: {cpu_offload: true}\n"), &opts(2, 1));
        assert_eq!(st, Status::Fail);
        assert!(d.starts_with("fsdp_config.cpu_offload: "), "{d}");
        let (st, d) = verdict(
            &cfg("fsdp_config: {activation_cpu_offload: true}\n"),
            &opts(2, 1),
        );
        assert_eq!(st, Status::Fail);
        assert!(d.starts_with("fsdp_config.activation_cpu_offload: "), "{d}");
        // A key fsdp_config does not know never loads (so the config check fails first).
        let err = load_str(
            &format!("{BASE}fsdp_config: {{shard_everything: true}}\n"),
            "p.yaml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shard_everything"), "{err}");
        // Tuning knobs are accepted, and named as having no effect.
        let (st, d) = verdict(
            &cfg("fsdp_config: {limit_all_gathers: true, forward_prefetch: true}\n"),
            &opts(2, 1),
        );
        assert_eq!(st, Status::Pass);
        assert!(
            d.contains("no effect here: limit_all_gathers, forward_prefetch"),
            "{d}"
        );
    }

    #[test]
    fn devices_the_node_does_not_have_are_refused() {
        let o = PreflightOptions {
            devices_per_node: Some(1),
            device_label: "cuda:0".into(),
            ..opts(8, 1)
        };
        let (st, d) = verdict(&cfg(""), &o);
        assert_eq!(st, Status::Fail);
        assert_eq!(d, "8 devices per node requested, but cuda:0 has 1");
        // Spread over 8 nodes, one each, it fits.
        let o = PreflightOptions { nodes: 8, ..o };
        assert_eq!(verdict(&cfg(""), &o).0, Status::Pass);
        // Devices that do not split over the nodes.
        let (st, d) = verdict(&cfg(""), &opts(8, 3));
        assert_eq!(st, Status::Fail);
        assert_eq!(d, "--devices 8 do not split evenly over --nodes 3");
    }

    #[test]
    fn a_backend_missing_from_this_build_is_refused() {
        let o = PreflightOptions {
            backend_missing: Some(
                "--device cuda: this tessera was built without the `cuda` feature".into(),
            ),
            ..opts(1, 1)
        };
        let (st, d) = verdict(&cfg(""), &o);
        assert_eq!(st, Status::Fail);
        assert!(d.contains("without the `cuda` feature"), "{d}");
    }
}
