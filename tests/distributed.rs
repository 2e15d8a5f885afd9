//! Data-parallel training across processes, end to end through the binary: N `tessera train`
//! processes on 127.0.0.1 with composer's environment (RANK, WORLD_SIZE, MASTER_ADDR, …).
//!
//! - With `NO_SHARD`, `SHARD_GRAD_OP` and `FULL_SHARD`, 2 and 4 ranks reach the same per-step
//!   losses, gradient norms and final weights, bit for bit, as one process training the same
//!   global batch as that many microbatches.
//! - `HYBRID_SHARD` on 2 nodes of 2 ranks stays within f32 rounding of one process (its
//!   gradients are summed node by node), writes a checkpoint in 4 parts, and resumes on 1.
//! - A 4-rank run killed mid-run resumes on 2 ranks: every sample of the epoch is seen exactly
//!   once, and the losses continue the killed run's.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, sha256_file, tessera, write_token_dataset};

const STEPS: u64 = 20;

fn config(data: &Path, save: &Path, strategy: Option<&str>, microbatch: usize) -> String {
    let fsdp = strategy.map_or(String::new(), |s| {
        format!("fsdp_config:\n  sharding_strategy: {s}\n  mixed_precision: FULL\n")
    });
    format!(
        r#"
run_name: dist
seed: 11
max_seq_len: 32
model:
  name: mpt_causal_lm
  d_model: 64
  n_heads: 4
  n_layers: 2
  expansion_ratio: 4
  max_seq_len: 32
  vocab_size: 128
tokenizer:
  name: unused-by-training
train_loader:
  name: text
  dataset:
    local: {data}
    shuffle: true
    shuffle_seed: 5
    max_seq_len: 32
optimizer:
  name: decoupled_adamw
  lr: 3.0e-3
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 1.0e-4
scheduler:
  name: cosine_with_warmup
  t_warmup: 4ba
gradient_clipping:
  clipping_type: norm
  clipping_threshold: 1.0
max_duration: {STEPS}ba
eval_interval: 1000ba
global_train_batch_size: 8
device_train_microbatch_size: {microbatch}
precision: fp32
save_interval: 10ba
autoresume: true
save_folder: {save}
progress_bar: false
{fsdp}"#,
        data = data.display(),
        save = save.display(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `world` ranks of `tessera train yaml` in `dir`, on one node.
fn spawn_ranks(dir: &Path, yaml: &Path, world: usize, extra: &[&str]) -> Vec<Child> {
    spawn_ranks_on_nodes(dir, yaml, world, world, extra)
}

/// [`spawn_ranks`] with `per_node` ranks to a node, as a launcher on each of
/// `world / per_node` nodes would start them (here all on 127.0.0.1). Rank `r`'s output goes
/// to `dir/rank{r}.stdout`.
fn spawn_ranks_on_nodes(
    dir: &Path,
    yaml: &Path,
    world: usize,
    per_node: usize,
    extra: &[&str],
) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            let mut cmd: Command = tessera();
            cmd.current_dir(dir)
                .args(["train", yaml.to_str().unwrap()])
                .args(extra)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", (rank % per_node).to_string())
                .env("LOCAL_WORLD_SIZE", per_node.to_string())
                .env("NODE_RANK", (rank / per_node).to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(std::fs::File::create(dir.join(format!("rank{rank}.stdout"))).unwrap())
                .stderr(Stdio::piped());
            cmd.spawn().expect("starting a rank")
        })
        .collect()
}

/// Waits for every rank (killing them all after `limit`) and fails with their stderr if any
/// failed.
fn wait_all(children: Vec<Child>, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut failed = Vec::new();
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot
                && let Some(status) = c.try_wait().unwrap()
            {
                let out = slot.take().unwrap().wait_with_output().unwrap();
                if !status.success() {
                    failed.push(format!(
                        "rank {rank}: {status}\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
        if Instant::now() > deadline {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            panic!("ranks did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Per step: loss, lr and gradient norm as printed (bit-exact).
fn numbers(run: &Path) -> BTreeMap<u64, String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                format!("{} {} {}", v["loss"], v["lr"], v["grad_norm"]),
            )
        })
        .collect()
}

struct Run {
    _tmp: TempDir,
    run: PathBuf,
    save: PathBuf,
}

fn train(world: usize, strategy: Option<&str>, microbatch: usize, tag: &str) -> Run {
    let tmp = TempDir::new(&format!("dist-{tag}"));
    let data = tmp.path().join("data");
    write_token_dataset(&data, 256, 32, 128, 21);
    let save = tmp.path().join("ck");
    let yaml = tmp.path().join("dist.yaml");
    std::fs::write(&yaml, config(&data, &save, strategy, microbatch)).unwrap();
    if world == 1 {
        common::run_ok(
            tessera()
                .current_dir(tmp.path())
                .args(["train", yaml.to_str().unwrap()]),
        );
    } else {
        wait_all(
            spawn_ranks(tmp.path(), &yaml, world, &[]),
            Duration::from_secs(600),
        );
    }
    Run {
        run: tmp.path().join("runs/dist"),
        save,
        _tmp: tmp,
    }
}

fn final_weights(r: &Run) -> String {
    sha256_file(&r.save.join(format!("ba{STEPS}/model.safetensors")))
}

fn matches_one_process(world: usize, strategy: &str) {
    // One process, the global batch of 8 as `world` microbatches.
    let one = train(1, Some(strategy), 8 / world, &format!("one-{world}"));
    let many = train(
        world,
        Some(strategy),
        8 / world,
        &format!("{strategy}-{world}"),
    );
    let (a, b) = (numbers(&one.run), numbers(&many.run));
    assert_eq!(a.len() as u64, STEPS);
    assert_eq!(a, b, "{strategy} on {world} ranks: per-step numbers differ");
    assert_eq!(
        final_weights(&one),
        final_weights(&many),
        "{strategy} on {world} ranks: final weights differ"
    );
}

#[test]
fn no_shard_on_2_and_4_processes_matches_one_process_bit_for_bit() {
    matches_one_process(2, "NO_SHARD");
    matches_one_process(4, "NO_SHARD");
}

#[test]
fn shard_grad_op_on_2_and_4_processes_matches_one_process_bit_for_bit() {
    matches_one_process(2, "SHARD_GRAD_OP");
    matches_one_process(4, "SHARD_GRAD_OP");
}

#[test]
fn full_shard_on_2_and_4_processes_matches_one_process_bit_for_bit() {
    matches_one_process(2, "FULL_SHARD");
    matches_one_process(4, "FULL_SHARD");
}

/// The samples each step trained on, ids in rank order, from the lines logged by ranks of a
/// run with `world` ranks (`None`: any; a resumed run logs some steps a second time).
fn samples_by_step(log: &Path, world: Option<u64>) -> BTreeMap<u64, Vec<i64>> {
    let mut by_step: BTreeMap<u64, BTreeMap<u64, Vec<i64>>> = BTreeMap::new();
    for entry in std::fs::read_dir(log).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if world.is_some_and(|w| v["world"].as_u64() != Some(w)) {
                continue;
            }
            let ids: Vec<i64> = serde_json::from_value(v["ids"].clone()).unwrap();
            by_step
                .entry(v["step"].as_u64().unwrap())
                .or_default()
                .insert(v["rank"].as_u64().unwrap(), ids);
        }
    }
    by_step
        .into_iter()
        .map(|(s, ranks)| (s, ranks.into_values().flatten().collect()))
        .collect()
}

fn losses(run: &Path) -> BTreeMap<u64, f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_4_rank_run_killed_mid_run_resumes_on_2_ranks_seeing_every_sample_once() {
    const LONG: u64 = 40;
    let tmp = TempDir::new("dist-elastic");
    let data = tmp.path().join("data");
    write_token_dataset(&data, 2048, 32, 128, 21);
    // A global batch of 32: slow enough to kill mid-run.
    let yaml_for = |save: &Path| {
        config(&data, save, Some("SHARD_GRAD_OP"), 8)
            .replace(
                &format!("max_duration: {STEPS}ba"),
                &format!("max_duration: {LONG}ba"),
            )
            .replace("global_train_batch_size: 8", "global_train_batch_size: 32")
    };
    let yaml = tmp.path().join("dist.yaml");
    let save = tmp.path().join("ck");
    std::fs::write(&yaml, yaml_for(&save)).unwrap();
    let run = tmp.path().join("runs/dist");

    // The uninterrupted 4-rank run, for reference.
    let reference = TempDir::new("dist-elastic-ref");
    std::fs::write(
        reference.path().join("dist.yaml"),
        yaml_for(&reference.path().join("ck")),
    )
    .unwrap();
    let ref_log = reference.path().join("samples");
    wait_all(
        spawn_ranks(
            reference.path(),
            &reference.path().join("dist.yaml"),
            4,
            &["--sample-log", ref_log.to_str().unwrap()],
        ),
        Duration::from_secs(600),
    );
    let reference_samples = samples_by_step(&ref_log, None);
    let reference_losses = losses(&reference.path().join("runs/dist"));
    assert_eq!(reference_samples.len() as u64, LONG);

    // 4 ranks; rank 2 is killed (SIGKILL) once they are past the checkpoint at step 10. The
    // others must notice, name it and stop with the restart code.
    let log = tmp.path().join("samples");
    let mut ranks = spawn_ranks(
        tmp.path(),
        &yaml,
        4,
        &["--sample-log", log.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = losses_or_empty(&run).keys().max().copied().unwrap_or(0);
        if done >= 13 && save.join("ba10/manifest.json").exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 4-rank run never got past step 13"
        );
        if let Some(r) = ranks
            .iter_mut()
            .position(|c| c.try_wait().unwrap().is_some())
        {
            let c = ranks.remove(r);
            let out = c.wait_with_output().unwrap();
            panic!(
                "rank {r} ended before it was killed ({}; the run too short to kill mid-run?):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    ranks[2].kill().unwrap();
    let survivors: Vec<_> = ranks
        .into_iter()
        .enumerate()
        .filter(|(r, _)| *r != 2)
        .map(|(r, c)| (r, c.wait_with_output().unwrap()))
        .collect();
    for (r, out) in survivors {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "rank {r}: {err}");
        assert!(err.contains("rank 2"), "rank {r} should name rank 2: {err}");
    }

    // Resumed on 2 ranks, same global batch.
    wait_all(
        spawn_ranks(
            tmp.path(),
            &yaml,
            2,
            &["--sample-log", log.to_str().unwrap()],
        ),
        Duration::from_secs(600),
    );
    let incidents = std::fs::read_to_string(run.join("incidents.jsonl")).unwrap();
    let resume: serde_json::Value = incidents
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "resume")
        .expect("a resume incident");
    let resumed_at = resume["step"].as_u64().unwrap();
    assert!(resumed_at >= 10, "{resume}");

    // The steps the killed run made after its checkpoint were trained again by the 2-rank
    // run; up to the checkpoint, the 4-rank run's steps count.
    let (killed, resumed) = (
        samples_by_step(&log, Some(4)),
        samples_by_step(&log, Some(2)),
    );
    let mut seen: Vec<i64> = Vec::new();
    for step in 1..=LONG {
        let from = if step <= resumed_at {
            &killed
        } else {
            &resumed
        };
        let ids = from
            .get(&step)
            .unwrap_or_else(|| panic!("step {step} logged no samples"));
        assert_eq!(ids.len(), 32, "step {step}");
        // The same global batch, whatever the world size.
        assert_eq!(ids.len(), reference_samples[&step].len());
        seen.extend(ids);
    }
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "a sample was seen twice");
    let reference_set: std::collections::BTreeSet<i64> =
        reference_samples.values().flatten().copied().collect();
    let seen_set: std::collections::BTreeSet<i64> = seen.into_iter().collect();
    assert_eq!(
        seen_set, reference_set,
        "not the uninterrupted run's samples"
    );

    // The losses continue the run: identical up to the checkpoint, and close after it (2 ranks
    // sum the 4 microbatches' gradients in another order than 4 ranks do).
    let got = losses(&run);
    for step in 1..=LONG {
        let (a, b) = (got[&step], reference_losses[&step]);
        if step <= resumed_at {
            assert_eq!(a.to_bits(), b.to_bits(), "step {step}: {a} vs {b}");
        } else {
            assert!((a - b).abs() < 1e-3 * b.abs(), "step {step}: {a} vs {b}");
        }
    }
}

fn losses_or_empty(run: &Path) -> BTreeMap<u64, f64> {
    if run.join("metrics.jsonl").exists() {
        losses(run)
    } else {
        BTreeMap::new()
    }
}

#[test]
fn hybrid_shard_on_2_nodes_of_2_matches_one_process_and_resumes_on_1() {
    let tmp = TempDir::new("dist-hybrid");
    let data = tmp.path().join("data");
    write_token_dataset(&data, 256, 32, 128, 21);
    // The shuffle depends on the canonical node count, which defaults to the physical one:
    // fixed, one process and two nodes read the same global batches.
    let yaml_for = |save: &Path, strategy: &str, microbatch: usize| {
        config(&data, save, Some(strategy), microbatch).replace(
            "shuffle_seed: 5",
            "shuffle_seed: 5\n    num_canonical_nodes: 2",
        )
    };
    let one_dir = tmp.path().join("one");
    std::fs::create_dir_all(&one_dir).unwrap();
    let one_yaml = one_dir.join("dist.yaml");
    std::fs::write(&one_yaml, yaml_for(&one_dir.join("ck"), "FULL_SHARD", 2)).unwrap();
    common::run_ok(
        tessera()
            .current_dir(&one_dir)
            .args(["train", one_yaml.to_str().unwrap()]),
    );

    let save = tmp.path().join("ck");
    let yaml = tmp.path().join("dist.yaml");
    std::fs::write(&yaml, yaml_for(&save, "HYBRID_SHARD", 2)).unwrap();
    let ranks = spawn_ranks_on_nodes(tmp.path(), &yaml, 4, 2, &[]);
    wait_all(ranks, Duration::from_secs(600));
    let run = tmp.path().join("runs/dist");

    let log = std::fs::read_to_string(tmp.path().join("rank0.stdout")).unwrap();
    assert!(
        log.contains("HYBRID_SHARD (FSDP within each node, replicated over 2 nodes)"),
        "the run does not say it ran HYBRID_SHARD over 2 nodes:\n{log}"
    );
    // The same losses as one process to f32 rounding: the gradients are summed node by node,
    // (g0 + g1) + (g2 + g3), not in rank order.
    let (want, got) = (losses(&one_dir.join("runs/dist")), losses(&run));
    assert_eq!(got.len() as u64, STEPS);
    for (step, w) in &want {
        let g = got[step];
        assert!(
            (g - w).abs() <= 1e-4 * w.abs(),
            "step {step}: {g} vs one process's {w}"
        );
    }
    // Each of the 4 ranks wrote a quarter of the state, although it holds half of it.
    let last = save.join(format!("ba{STEPS}"));
    for r in 0..4 {
        let part = last.join(format!("rank{r:05}-of-00004.safetensors"));
        assert!(part.is_file(), "{} is missing", part.display());
    }
    assert!(last.join("model.safetensors").is_file());

    // One process resumes from the 4-part checkpoint of step 10 and repeats steps 11-20: the
    // same losses, to the same rounding.
    std::fs::remove_dir_all(&last).unwrap();
    std::fs::write(save.join("latest"), "ba10").unwrap();
    std::fs::rename(run.join("metrics.jsonl"), run.join("metrics.hybrid.jsonl")).unwrap();
    common::run_ok(
        tessera()
            .current_dir(tmp.path())
            .args(["train", yaml.to_str().unwrap()]),
    );
    let again = losses(&run);
    assert_eq!(
        again.keys().copied().collect::<Vec<_>>(),
        (11..=STEPS).collect::<Vec<_>>()
    );
    for step in 11..=STEPS {
        let (g, a) = (got[&step], again[&step]);
        assert!(
            (g - a).abs() <= 1e-4 * g.abs(),
            "step {step}: resumed {a} vs {g}"
        );
    }
    assert!(save.join(format!("ba{STEPS}/model.safetensors")).is_file());
}
