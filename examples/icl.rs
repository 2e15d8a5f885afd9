//! Evaluate a model on llm-foundry ICL tasks from code.
//!
//! `cargo run --example icl -- MODEL_DIR TOKENIZER_JSON TASKS_YAML`

use burn::backend::Flex;
use tessera::data::tokenizer::Tokenizer;
use tessera::eval::icl::TaskDefaults;
use tessera::eval::run::{EvalSuite, evaluate_model};
use tessera::model::hf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, tokenizer, tasks] = args.as_slice() else {
        anyhow::bail!("usage: icl MODEL_DIR TOKENIZER_JSON TASKS_YAML");
    };
    let device = Default::default();
    let (_, model) = hf::load::<Flex>(model_dir, &device)?;
    let tok = Tokenizer::from_file(tokenizer)?;
    let defaults = TaskDefaults {
        max_seq_len: model.config().max_seq_len,
        batch_size: 4,
    };
    let suite = EvalSuite::from_files(tasks.as_ref(), None, &tok, &defaults)?;
    let (report, _) = evaluate_model(&model, &tok, &suite, model_dir, None, &device)?;
    for task in &report.tasks {
        println!(
            "{:<24} accuracy {:.3} on {} examples",
            task.label, task.accuracy, task.n_examples
        );
    }
    Ok(())
}
