//! Load a transformers MPT folder and generate from a prompt.
//!
//! `cargo run --example generate -- MODEL_DIR TOKENIZER_JSON "def fib(n):"`

use anyhow::Context;
use burn::backend::Flex;
use tessera::data::tokenizer::Tokenizer;
use tessera::model::{GenerationConfig, generate, hf};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, tokenizer, prompt] = args.as_slice() else {
        anyhow::bail!("usage: generate MODEL_DIR TOKENIZER_JSON PROMPT");
    };
    let device = Default::default();
    let (_, model) = hf::load::<Flex>(model_dir, &device).context("loading the model")?;
    let tok = Tokenizer::from_file(tokenizer)?;
    let prompt_ids = tok.encode(prompt)?;
    let config = GenerationConfig {
        max_new_tokens: 16,
        eos_ids: tok.eos_id().into_iter().collect(),
        ..GenerationConfig::default() // greedy
    };
    let out = generate(&model, &[prompt_ids], &config, None, &device)?;
    println!("{prompt}{}", tok.decode(&out[0].ids, true)?);
    Ok(())
}
