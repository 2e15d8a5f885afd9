//! Fine-tune a transformers MPT folder on prompt/response JSON lines, with a LoRA adapter
//! (`--lora`) or all weights, and save the result.
//!
//! `cargo run --example finetune -- MODEL_DIR ROWS.jsonl TOKENIZER_JSON OUT_DIR [--lora]`

use burn::backend::{Autodiff, Flex};
use tessera::data::stream::World;
use tessera::model::lora::{Adapter, LoraConfig, TargetModule};
use tessera::train::config::LoaderConfig;
use tessera::train::finetune::FinetuneTokenizer;
use tessera::train::optim::{OptimizerConfig, OptimizerName};
use tessera::train::trainer::data::Loader;
use tessera::train::trainer::{Control, Trainer};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, rows, tokenizer, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: finetune MODEL_DIR ROWS.jsonl TOKENIZER_JSON OUT_DIR [--lora]");
    };
    let device = Default::default();
    let mut trainer = Trainer::<Autodiff<Flex>>::from_pretrained(model_dir, &device)?;
    if rest.iter().any(|a| a == "--lora") {
        let lora = LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            target_modules: vec![TargetModule::Wqkv, TargetModule::OutProj],
            ..LoraConfig::default()
        };
        trainer = trainer.map_model(|m| {
            let adapter = Adapter::init(&lora, m.config(), 0, &device)?;
            m.with_adapter(adapter)
        })?;
    }
    // 8 sequences of at most 64 tokens per step, the loss on response tokens only.
    let tok = FinetuneTokenizer::load(tokenizer)?;
    let batches = Loader::open(
        "rows",
        &LoaderConfig::prompt_response(rows.as_str(), true),
        Some(&tok),
        64,
        8,
        World::new(0, 1, 1)?,
        None,
        None,
    )?;
    let summary = trainer
        .optimizer(OptimizerConfig::new(OptimizerName::DecoupledAdamw, 1e-3))
        .max_steps(20)
        .microbatch_size(4)
        .checkpoint_every(20, out)
        .on_step(|s| {
            println!("step {:>2}  loss {:.4}", s.step, s.outcome.loss);
            Control::Continue
        })
        .fit(batches, &device)?;
    println!("saved {}", summary.checkpoints.last().unwrap().display());
    Ok(())
}
