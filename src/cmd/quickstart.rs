//! `tessera quickstart`: the whole pipeline on a built-in corpus, with nothing to download.
//!
//! 1. the corpus slice that ships with tessera (CPython stdlib and docs, PSF licence) is written
//!    to the run folder;
//! 2. a byte-level BPE tokenizer is trained on it;
//! 3. `data prepare` packs it into MDS shards (train and val);
//! 4. a ~6M-parameter MPT trains on the CPU, with evals, from an llm-foundry-style YAML that is
//!    written into the run folder (so the run can be repeated with `tessera train`);
//! 5. a sample is generated from the final model.
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
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        println!(
            "[1/5] corpus: {} KB of CPython code and docs (PSF licence), built in",
            CORPUS.len() / 1024
        );
        let corpus = dir.join("corpus.jsonl.zst");
        if !corpus.exists() {
            write_atomic(&corpus, CORPUS)?;
        }

        let tok_path = dir.join("tokenizer.json");
        if tok_path.exists() {
            println!("[2/5] tokenizer: reusing {}", tok_path.display());
        } else {
            println!(
                "[2/5] tokenizer: training a byte-level BPE with {} tokens",
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

        println!("[3/5] data: packing into MDS shards of {SEQ}-token samples (5% held out)");
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
            "[4/5] train: a {:.1}M-parameter MPT for {} steps on {} (config: {})",
            params as f64 / 1e6,
            a.steps,
            super::device_label(spec),
            yaml_path.display()
        );
        let loaded = config::load_file(&yaml_path, &[])?;
        let opts = TrainOptions {
            config_path: Some(yaml_path.clone()),
            run_dir: Some(dir.join("run")),
            device_label: super::device_label(spec),
            peak_flops: None,
            ranks: None,
            sample_log: None,
            device_memory: spec.memory_bytes(),
            on_stall: None,
        };
        let summary = train::<B>(&loaded, &opts, None, &device)?;

        println!("[5/5] sample (temperature 0.8, top-k 40):");
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
        Ok(())
    }
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
