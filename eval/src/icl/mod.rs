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
    /// Reading a config or dataset file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A YAML file did not parse, or a `${...}` interpolation in it did not resolve.
    #[error("{path}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A task list or task entry is malformed (unknown key, wrong type, conflicting settings).
    #[error("{origin}: {context}: {message}")]
    Config {
        /// The file the entry came from.
        origin: PathBuf,
        /// Which entry, e.g. `icl_tasks[3]`, with its label when it has one.
        context: String,
        /// What is wrong with it.
        message: String,
    },
    /// A task's `dataset_uri` is remote or is not found in any search folder.
    #[error("dataset `{uri}` not found{}{}", fmt_tried(.tried), fmt_hint(.hint))]
    DatasetMissing {
        /// The URI as configured.
        uri: String,
        /// The local paths looked at.
        tried: Vec<PathBuf>,
        /// What to do about it; may be empty.
        hint: String,
    },
    /// A dataset line is invalid for its task type.
    #[error("{path}:{line}: {message}")]
    Dataset {
        /// The JSONL file.
        path: PathBuf,
        /// 1-based line number; 0 for the file as a whole.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer could not be loaded, or failed to encode or decode.
    #[error("tokenizer failed on {what}: {message}")]
    Tokenizer {
        /// The input (or file) it failed on.
        what: String,
        /// The tokenizer's error.
        message: String,
    },
    /// A prompt or continuation cannot be built as the task needs (e.g. it does not fit).
    #[error("{what}: {message}")]
    Prompt {
        /// The task or text concerned.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// Loading or running the model failed, or its inputs do not fit it (length, vocabulary,
    /// batch size).
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
