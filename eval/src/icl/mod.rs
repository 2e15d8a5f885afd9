//! In-context learning evaluation: llm-foundry's ICL tasks, reproduced example for example.
//!
//! The pipeline follows the data:
//! [`config`] (task YAML) → [`dataset`] (JSONL → typed examples) → [`fewshot`] (Python's RNG
//! and set order, via [`pyrandom`] and [`pyset`]) → [`prompt`] (strings and tokens) →
//! scoring with the model, batched → per-example verdicts and accuracy.
//!
//! llm-foundry (`llmfoundry/eval/datasets/in_context_learning_evaluation.py`,
//! `llmfoundry/eval/metrics/nlp.py`) is the reference: the cross-check test replays its own
//! per-example results for a tiny model and matches every verdict.

pub mod bench;
pub mod config;
pub mod dataset;
pub mod decide;
pub mod evaluate;
pub mod fewshot;
pub mod loglikelihood;
pub mod normalize;
pub mod prompt;
pub mod pyrandom;
pub mod pyset;
pub mod pytext;
pub mod results;
pub mod score;
pub mod task;
pub mod yaml;

use std::path::PathBuf;

pub use config::{IclTaskConfig, IclTaskType, load_task_file, parse_task_list};
pub use dataset::{IclDataset, IclExample, load_datasets};
pub use evaluate::{EvalOptions, evaluate_task, evaluate_tasks};
pub use loglikelihood::{Loglikelihood, LoglikelihoodRequest, loglikelihood};
pub use normalize::{AnswerScoring, normalize_answer};
pub use prompt::{
    EncodedExample, PromptContext, PromptEncoder, PromptFormat, PromptText, ScoredSequence,
};
pub use results::{ExampleDetail, ExampleResult, TaskResult};
pub use task::{GenerationSettings, PreparedTask, TaskDefaults, prepare_task, prepare_tasks};

/// Errors of ICL evaluation; each names the file, task or example concerned.
#[derive(Debug, thiserror::Error)]
pub enum IclError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{origin}: {context}: {message}")]
    Config {
        origin: PathBuf,
        context: String,
        message: String,
    },
    #[error("dataset `{uri}` not found{}{}", fmt_tried(.tried), fmt_hint(.hint))]
    DatasetMissing {
        uri: String,
        tried: Vec<PathBuf>,
        hint: String,
    },
    #[error("{path}:{line}: {message}")]
    Dataset {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("tokenizer failed on {what}: {message}")]
    Tokenizer { what: String, message: String },
    #[error("{what}: {message}")]
    Prompt { what: String, message: String },
    #[error("model: {0}")]
    Model(String),
}

fn fmt_tried(tried: &[PathBuf]) -> String {
    if tried.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        format!(" (tried {})", list.join(", "))
    }
}

fn fmt_hint(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(": {hint}")
    }
}
