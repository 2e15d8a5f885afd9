//! `tessera quickstart`: the whole pipeline on a built-in corpus, with nothing to download.
//!
//! 1. the corpus slice that ships with tessera (CPython stdlib and docs, PSF licence) is written
//!    to the run folder;
//! 2. a byte-level BPE tokenizer is trained on it;
//! 3. `data prepare` packs it into MDS shards (train and val);
//! 4. a ~6M-parameter MPT trains on the CPU, with evals, from an llm-foundry-style YAML that is
//!    written into the run folder (so the run can be repeated with `tessera train`);
//! 5. a sample is generated from the final model;
//! 6. with `--lora`, a LoRA adapter fine-tunes that model on a built-in instruction set
//!    (Python REPL questions, see [`instruction_rows`]), and the command that serves it is
//!    printed.
//!
//! Re-running resumes (or just re-reports) the same run: every stage is idempotent.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::AutodiffBackend;
use tessera::data::prepare::{self, PrepareConfig};
use tessera::data::tokenizer::{BpeTrainConfig, Tokenizer, train_bpe_from_inputs};
use tessera::device::{DeviceSpec, Job};
use tessera::model::{GenerationConfig, generate, hf};
use tessera::train::config;
use tessera::train::metrics::jsonl::read_jsonl;
use tessera::train::trainer::{TrainOptions, train};

/// The corpus slice (first 163 documents of the fixture corpus; see fixtures/corpus/LICENSE.md).
const CORPUS: &[u8] = include_bytes!("../../fixtures/corpus/slice.jsonl.zst");

#[derive(clap::Args)]
pub struct Args {
    /// Where everything goes.
    #[arg(long, default_value = "runs/quickstart")]
    run_dir: PathBuf,
    /// Optimizer steps (batches of 16 sequences of 128 tokens).
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Model width.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Model depth.
    #[arg(long, default_value_t = 6)]
    n_layers: usize,
    /// Tokenizer vocabulary (before padding to a multiple of 128).
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Prompt for the sample printed at the end.
    #[arg(long, default_value = "def ")]
    prompt: String,
    /// Then fine-tune the model with a LoRA adapter on a built-in instruction set.
    #[arg(long)]
    lora: bool,
    /// Optimizer steps of the LoRA fine-tune (batches of 16).
    #[arg(long, default_value_t = 120)]
    lora_steps: u64,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    device.run(Quickstart(args))
}

struct Quickstart(Args);

const SEQ: usize = 128;
const BATCH: usize = 16;

impl Job for Quickstart {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let a = self.0;
        let dir = &a.run_dir;
        let stages = if a.lora { 6 } else { 5 };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        println!(
            "[1/{stages}] corpus: {} KB of CPython code and docs (PSF licence), built in",
            CORPUS.len() / 1024
        );
        let corpus = dir.join("corpus.jsonl.zst");
        if !corpus.exists() {
            write_atomic(&corpus, CORPUS)?;
        }

        let tok_path = dir.join("tokenizer.json");
        if tok_path.exists() {
            println!("[2/{stages}] tokenizer: reusing {}", tok_path.display());
        } else {
            println!(
                "[2/{stages}] tokenizer: training a byte-level BPE with {} tokens",
                a.vocab_size
            );
            let cfg = BpeTrainConfig {
                vocab_size: a.vocab_size,
                pad_to_multiple_of: Some(128),
                ..BpeTrainConfig::default()
            };
            let (tok, report) =
                train_bpe_from_inputs(&[corpus.display().to_string()], "text", &cfg)?;
            tok.save(&tok_path)?;
            println!(
                "      {} merges on {} documents, vocab {}",
                report.merges, report.docs, report.vocab_size
            );
        }
        let tokenizer = Tokenizer::from_file(&tok_path)?;

        println!("[3/{stages}] data: packing into MDS shards of {SEQ}-token samples (5% held out)");
        let data = dir.join("data");
        let mut prep = PrepareConfig::new(vec![corpus.display().to_string()], &tok_path, &data);
        prep.seq_len = SEQ;
        prep.val_fraction = 0.05;
        prep.progress = false;
        let report = prepare::run(&prep)?;
        println!(
            "      {} documents → {} tokens in {} samples",
            report.docs_out, report.tokens, report.samples
        );

        let yaml_path = dir.join("quickstart.yaml");
        write_atomic(
            &yaml_path,
            yaml(&a, tokenizer.vocab_size(), &tok_path, &data).as_bytes(),
        )?;
        let params = {
            let loaded = config::load_file(&yaml_path, &[])?;
            loaded
                .config
                .mpt_config()?
                .map(|c| c.num_params())
                .unwrap_or(0)
        };
        println!(
            "[4/{stages}] train: a {:.1}M-parameter MPT for {} steps on {} (config: {})",
            params as f64 / 1e6,
            a.steps,
            super::device_label(spec),
            yaml_path.display()
        );
        let loaded = config::load_file(&yaml_path, &[])?;
        let opts = train_options(&yaml_path, &dir.join("run"), spec);
        let summary = train::<B>(&loaded, &opts, None, &device)?;

        println!("[5/{stages}] sample (temperature 0.8, top-k 40):");
        let ckpt = summary
            .final_checkpoint
            .clone()
            .context("the run wrote no checkpoint")?;
        let (_, model) = hf::load::<B::InnerBackend>(&ckpt, &device)?;
        let prompt_ids = tokenizer.encode(&a.prompt)?;
        let gen_cfg = GenerationConfig {
            max_new_tokens: 80,
            temperature: 0.8,
            top_k: Some(40),
            seed: 0,
            eos_ids: tokenizer.eos_id().into_iter().collect(),
            ..GenerationConfig::default()
        };
        let out = generate(
            &model,
            std::slice::from_ref(&prompt_ids),
            &gen_cfg,
            None,
            &device,
        )?;
        let text = tokenizer.decode(&out[0].ids, true)?;
        println!("----\n{}{}\n----", a.prompt, text);

        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |l| format!("{l:.3}"));
        println!(
            "train loss {} → {}",
            fmt(summary.first_loss),
            fmt(summary.last_loss)
        );
        for (label, loss) in &summary.eval {
            println!("{label} loss {loss:.3} (perplexity {:.1})", loss.exp());
        }
        println!("report: {}", summary.report.display());
        println!(
            "model:  {} (HF format: `tessera generate --model {}`)",
            ckpt.display(),
            ckpt.display()
        );
        if a.lora {
            lora_stage::<B>(&a, &ckpt, &tok_path, &device, spec)?;
        }
        Ok(())
    }
}

/// Stage 6: a LoRA fine-tune of the quickstart model, from an llm-foundry-style YAML with
/// `model.peft_config`, reporting the held-out loss before and after.
fn lora_stage<B: AutodiffBackend>(
    a: &Args,
    base: &Path,
    tok_path: &Path,
    device: &B::Device,
    spec: DeviceSpec,
) -> anyhow::Result<()> {
    let dir = a.run_dir.join("lora");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (train_rows, held_rows) = instruction_rows();
    let rows_file = |name: &str, rows: &[(String, String)]| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        let text: String = rows
            .iter()
            .map(|(p, r)| format!("{}\n", serde_json::json!({"prompt": p, "response": r})))
            .collect();
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    };
    let train_file = rows_file("train.jsonl", &train_rows)?;
    let held_file = rows_file("heldout.jsonl", &held_rows)?;
    let yaml_path = dir.join("lora.yaml");
    write_atomic(
        &yaml_path,
        lora_yaml(a, base, tok_path, &train_file, &held_file).as_bytes(),
    )?;
    println!(
        "[6/6] LoRA: r=8 adapters on every linear layer of the frozen model, {} steps on {} \
         instruction rows ({} held out; config: {})",
        a.lora_steps,
        train_rows.len(),
        held_rows.len(),
        yaml_path.display()
    );
    let loaded = config::load_file(&yaml_path, &[])?;
    let run_dir = dir.join("run");
    let opts = train_options(&yaml_path, &run_dir, spec);
    let summary = train::<B>(&loaded, &opts, None, device)?;
    let held = eval_losses(&run_dir.join("metrics.jsonl"))?;
    if let (Some(first), Some(last)) = (held.first(), held.last()) {
        println!("held-out loss {first:.3} → {last:.3} (response tokens only)");
    }
    let adapter = summary
        .final_checkpoint
        .context("the LoRA run wrote no checkpoint")?;
    println!("adapter: {} (PEFT format)", adapter.display());
    println!(
        "serve it: tessera serve --model {} --tokenizer {} --adapter repl={}",
        base.display(),
        tok_path.display(),
        adapter.display()
    );
    println!(
        "          then POST /v1/completions with {{\"model\": \"repl\", \"prompt\": \">>> 3 + 4\\n\"}}"
    );
    Ok(())
}

/// How both stages train: one process, on `spec`, into `run_dir`.
fn train_options(yaml_path: &Path, run_dir: &Path, spec: DeviceSpec) -> TrainOptions {
    TrainOptions {
        config_path: Some(yaml_path.to_path_buf()),
        run_dir: Some(run_dir.to_path_buf()),
        device_label: super::device_label(spec),
        peak_flops: None,
        ranks: None,
        sample_log: None,
        device_memory: spec.memory_bytes(),
        on_stall: None,
    }
}

/// Every eval loss of a run, in order, from its `metrics.jsonl`.
fn eval_losses(metrics: &Path) -> anyhow::Result<Vec<f64>> {
    let rows: Vec<serde_json::Value> = read_jsonl(metrics)?;
    Ok(rows
        .iter()
        .filter(|v| v["kind"] == "eval")
        .filter_map(|v| v["loss"].as_f64())
        .collect())
}

/// Prompt/response pairs.
type Rows = Vec<(String, String)>;

/// A small instruction set the quickstart model has never seen answered: Python REPL
/// questions (`>>> 12 + 7`, `>>> len("spam")`, …) with the REPL's answers. Deterministic; every
/// eighth row is held out.
fn instruction_rows() -> (Rows, Rows) {
    const WORDS: [&str; 16] = [
        "spam", "eggs", "python", "list", "tuple", "dict", "lambda", "yield", "class", "import",
        "print", "range", "string", "bytes", "float", "object",
    ];
    let mut rows = Vec::new();
    for i in 0..480usize {
        let (a, b) = ((i * 7 + 3) % 50, (i * 13 + 5) % 30);
        let w = WORDS[(i * 5) % WORDS.len()];
        let (prompt, response) = match i % 4 {
            0 => (format!(">>> {a} + {b}\n"), format!("{}", a + b)),
            1 => (format!(">>> len(\"{w}\")\n"), format!("{}", w.len())),
            2 => (
                format!(">>> \"{w}\".upper()\n"),
                format!("'{}'", w.to_uppercase()),
            ),
            _ => (format!(">>> max({a}, {b})\n"), format!("{}", a.max(b))),
        };
        rows.push((prompt, response));
    }
    let held = rows.iter().skip(7).step_by(8).cloned().collect();
    let train = rows
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 8 != 7)
        .map(|(_, r)| r)
        .collect();
    (train, held)
}

/// The LoRA fine-tune's config, in llm-foundry's keys.
fn lora_yaml(a: &Args, base: &Path, tokenizer: &Path, train: &Path, held: &Path) -> String {
    let steps = a.lora_steps;
    let eval_every = (steps / 4).max(1);
    format!(
        r#"# Written by `tessera quickstart --lora`; rerun it with `tessera train {yaml}`.
run_name: quickstart-lora
seed: 17
max_seq_len: 32
model:
  pretrained: {base}
  peft_config:
    peft_type: LORA
    task_type: CAUSAL_LM
    r: 8
    lora_alpha: 16
    lora_dropout: 0.0
    target_modules: [Wqkv, out_proj, up_proj, down_proj]
tokenizer:
  name: {tok}
train_loader:
  name: finetuning
  dataset:
    hf_name: {train}
    shuffle: true
    max_seq_len: 32
eval_loader:
  name: finetuning
  dataset:
    hf_name: {held}
    max_seq_len: 32
optimizer:
  name: decoupled_adamw
  lr: 3.0e-3
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 0.0
scheduler:
  name: cosine_with_warmup
  t_warmup: {warmup}ba
  alpha_f: 0.1
gradient_clipping:
  clipping_type: norm
  clipping_threshold: 1.0
max_duration: {steps}ba
eval_interval: {eval_every}ba
eval_first: true
global_train_batch_size: {BATCH}
device_train_microbatch_size: {BATCH}
device_eval_batch_size: {BATCH}
precision: fp32
save_interval: {eval_every}ba
save_num_checkpoints_to_keep: 2
autoresume: true
progress_bar: true
"#,
        yaml = a.run_dir.join("lora/lora.yaml").display(),
        base = base.display(),
        tok = tokenizer.display(),
        train = train.display(),
        held = held.display(),
        warmup = (steps / 10).max(1),
    )
}

/// The quickstart's training config, in llm-foundry's keys.
fn yaml(a: &Args, vocab: usize, tokenizer: &Path, data: &Path) -> String {
    let eval_every = (a.steps / 4).max(1);
    let save_every = (a.steps / 2).max(1);
    let warmup = (a.steps / 10).max(1);
    let n_heads = (a.d_model / 64).max(1);
    format!(
        r#"# Written by `tessera quickstart`; rerun it with `tessera train {yaml}`.
run_name: quickstart
seed: 17
max_seq_len: {SEQ}
model:
  name: mpt_causal_lm
  d_model: {d}
  n_heads: {n_heads}
  n_layers: {l}
  expansion_ratio: 4
  max_seq_len: {SEQ}
  vocab_size: {vocab}
  no_bias: true
  attn_config:
    alibi: true
tokenizer:
  name: {tok}
train_loader:
  name: text
  dataset:
    local: {data}
    split: train
    shuffle: true
    max_seq_len: {SEQ}
  drop_last: true
eval_loader:
  name: text
  dataset:
    local: {data}
    split: val
    max_seq_len: {SEQ}
optimizer:
  name: decoupled_adamw
  lr: 2.0e-3
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 1.0e-5
scheduler:
  name: cosine_with_warmup
  t_warmup: {warmup}ba
  alpha_f: 0.1
gradient_clipping:
  clipping_type: norm
  clipping_threshold: 1.0
max_duration: {steps}ba
eval_interval: {eval_every}ba
eval_subset_num_batches: 8
global_train_batch_size: {BATCH}
device_train_microbatch_size: {BATCH}
device_eval_batch_size: {BATCH}
precision: fp32
save_interval: {save_every}ba
save_num_checkpoints_to_keep: 2
autoresume: true
progress_bar: true
"#,
        yaml = a.run_dir.join("quickstart.yaml").display(),
        d = a.d_model,
        l = a.n_layers,
        tok = tokenizer.display(),
        data = data.display(),
        steps = a.steps,
    )
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    tessera_fs::atomic_write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
