//! A task made ready to evaluate: its examples read, few-shot prompts built and tokenized once,
//! so that a trainer can re-run it at every `eval_interval` without redoing that work.
//!
//! One [`IclTaskConfig`] gives one [`PreparedTask`] per `num_fewshot` entry, and, with
//! `has_categories`, per category (labels `piqa/0-shot`, `mmlu/5-shot/anatomy`, as
//! llm-foundry names its evaluators).

use std::path::PathBuf;

use tessera_data::tokenizer::Tokenizer;

use super::IclError;
use super::config::{IclTaskConfig, IclTaskType, resolve_dataset_path};
use super::dataset::{IclDataset, load_datasets};
use super::normalize::AnswerScoring;
use super::prompt::{EncodedExample, PromptEncoder, PromptFormat, PromptText, build_prompt_texts};

/// Settings a task inherits from the run unless its YAML entry overrides them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDefaults {
    /// `max_seq_len` of the eval config.
    pub max_seq_len: usize,
    /// `device_eval_batch_size` of the eval config.
    pub batch_size: usize,
}

/// Generation-task settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerationSettings {
    /// New tokens per answer: the longest tokenized answer (+10 with a CoT delimiter), or
    /// `generation_kwargs.max_new_tokens`.
    pub max_new_tokens: usize,
    /// The longest tokenized answer; prompts are cut to `max_seq_len` minus this.
    pub max_answer_length: usize,
    /// How a generated answer is cleaned and matched.
    pub scoring: AnswerScoring,
}

/// One evaluator's worth of work, tokenized.
#[derive(Clone, Debug)]
pub struct PreparedTask {
    /// `"{label}/{n}-shot"`, plus `"/{category}"` for a category.
    pub label: String,
    /// The YAML entry's `label`.
    pub benchmark: String,
    /// Few-shot examples per prompt.
    pub num_fewshot: usize,
    /// The category, for one part of a `has_categories` task.
    pub category: Option<String>,
    /// How the task is prompted and scored.
    pub task_type: IclTaskType,
    /// The test examples (also the pool few-shot examples are drawn from).
    pub dataset: IclDataset,
    /// The task's formatting settings.
    pub format: PromptFormat,
    /// Prompt strings per example (what llm-foundry tokenizes).
    pub prompts: Vec<PromptText>,
    /// Model inputs per example.
    pub encoded: Vec<EncodedExample>,
    /// The task's `max_seq_len`, or the run's.
    pub max_seq_len: usize,
    /// Sequence budget after truncation: `max_seq_len`, or `max_seq_len - max_answer_length`
    /// for generation.
    pub padding_size: usize,
    /// Sequences (or generations) per forward batch.
    pub batch_size: usize,
    /// Whether continuations got a leading space (the tokenizer's prefix-space rule).
    pub prefix_space: bool,
    /// Set for generation tasks only.
    pub generation: Option<GenerationSettings>,
}

impl PreparedTask {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    /// Whether the task has no examples.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// Keeps the examples of the first `n` batches (llm-foundry's `icl_subset_num_batches`).
    /// A multiple-choice batch holds `max(batch_size, n_choices) / n_choices` questions, as
    /// llm-foundry's `get_effective_batch_size`.
    pub fn keep_first_batches(&mut self, n: usize) {
        let per_batch = match self.encoded.first() {
            Some(EncodedExample::Choices { sequences, .. }) if !sequences.is_empty() => {
                self.batch_size.max(sequences.len()) / sequences.len()
            }
            _ => self.batch_size,
        };
        let keep = n.saturating_mul(per_batch).min(self.len());
        self.encoded.truncate(keep);
        self.prompts.truncate(keep);
        self.dataset.examples.truncate(keep);
        self.dataset.lines.truncate(keep);
    }
}

/// Prepares every shot count (and category) of `cfg`. `search_dirs` resolve a relative
/// `dataset_uri`.
pub fn prepare_task(
    cfg: &IclTaskConfig,
    tok: &Tokenizer,
    defaults: &TaskDefaults,
    search_dirs: &[PathBuf],
) -> Result<Vec<PreparedTask>, IclError> {
    if cfg.icl_task_type == IclTaskType::CodeEvaluation {
        return Err(IclError::Prompt {
            what: cfg.label.clone(),
            message: "code_evaluation tasks run through the code-eval module (tessera eval code)"
                .into(),
        });
    }
    let path = resolve_dataset_path(&cfg.dataset_uri, search_dirs)?;
    let datasets = load_datasets(&path, cfg)?;
    let encoder = PromptEncoder::new(tok)?;
    let format = PromptFormat {
        prompt_string: cfg.prompt_string.clone(),
        example_delimiter: cfg.example_delimiter.clone(),
        continuation_delimiter: cfg.continuation_delimiter.clone(),
        prelimiter: cfg.prelimiter.clone(),
        cot_delimiter: cfg.cot_delimiter.clone(),
        strip: cfg.strip_dataset,
    };
    let max_seq_len = cfg.max_seq_len.unwrap_or(defaults.max_seq_len);
    let batch_size = cfg.batch_size.unwrap_or(defaults.batch_size).max(1);
    let mut out = Vec::new();
    for &num_fewshot in &cfg.num_fewshot {
        for ds in &datasets {
            let mut label = format!("{}/{num_fewshot}-shot", cfg.label);
            if let Some(c) = &ds.category {
                label = format!("{label}/{c}");
            }
            let (padding_size, generation) =
                if cfg.icl_task_type == IclTaskType::GenerationTaskWithAnswers {
                    let max_answer_length = encoder.max_answer_length(ds, &format)?;
                    let settings = GenerationSettings {
                        max_new_tokens: cfg.max_new_tokens.unwrap_or(max_answer_length.max(1)),
                        max_answer_length,
                        scoring: AnswerScoring {
                            stop_sequences: cfg.early_stopping_criteria.clone(),
                            cot_delimiter: cfg.cot_delimiter.clone(),
                            do_normalization: cfg.do_normalization,
                        },
                    };
                    (
                        max_seq_len.saturating_sub(max_answer_length),
                        Some(settings),
                    )
                } else {
                    (max_seq_len, None)
                };
            let prompts = build_prompt_texts(ds, &format, num_fewshot, cfg.fewshot_random_seed);
            let encoded = ds
                .examples
                .iter()
                .zip(&prompts)
                .enumerate()
                .map(|(i, (ex, p))| {
                    let what = format!(
                        "{label} example {i} ({}:{})",
                        ds.path.display(),
                        ds.lines[i] + 1
                    );
                    encoder.encode_example(ex, p, &format, padding_size, &what)
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push(PreparedTask {
                label,
                benchmark: cfg.label.clone(),
                num_fewshot,
                category: ds.category.clone(),
                task_type: cfg.icl_task_type,
                dataset: ds.clone(),
                format: format.clone(),
                prompts,
                encoded,
                max_seq_len,
                padding_size,
                batch_size,
                prefix_space: encoder.prefix_space,
                generation,
            });
        }
    }
    Ok(out)
}

/// Prepares every task of a list; `code_evaluation` entries are skipped (they belong to the
/// code-eval module) and returned by label in the second element.
pub fn prepare_tasks(
    cfgs: &[IclTaskConfig],
    tok: &Tokenizer,
    defaults: &TaskDefaults,
    search_dirs: &[PathBuf],
) -> Result<(Vec<PreparedTask>, Vec<IclTaskConfig>), IclError> {
    let mut tasks = Vec::new();
    let mut code = Vec::new();
    for cfg in cfgs {
        if cfg.icl_task_type == IclTaskType::CodeEvaluation {
            code.push(cfg.clone());
        } else {
            tasks.extend(prepare_task(cfg, tok, defaults, search_dirs)?);
        }
    }
    Ok((tasks, code))
}
