//! `tessera eval CONFIG`: a checkpoint through the configured ICL tasks, the gauntlet and code
//! eval, with results written under the run's `eval/`. The trainer calls the same code at
//! `eval_interval` through [`EvalSuite`] and [`evaluate_model`], on the model in memory.
//!
//! The config is llm-foundry's eval YAML (`scripts/eval/yamls/hf_eval.yaml` shape):
//!
//! ```yaml
//! max_seq_len: 1024
//! device_eval_batch_size: 4
//! models:
//! - model_name: my-mpt
//!   load_path: runs/my-mpt/checkpoints/ba1000   # HF layout: config.json + model.safetensors
//!   tokenizer: {name: tokenizers/gpt-neox-20b/tokenizer.json}
//! icl_tasks: eval/yamls/tasks_v0.3.yaml          # a path, or the list inline
//! eval_gauntlet: eval/yamls/eval_gauntlet_v0.3.yaml
//! code_eval:                                     # tessera's addition (llm-foundry removed it)
//!   problems: HumanEval.jsonl.gz
//!   n: 1
//!   k: [1]
//!   allow_code_execution: true
//! ```
//!
//! Relative paths are looked up in the working directory, then next to the config file.
//! Keys llm-foundry uses for distributed or logging setup are accepted and listed in the
//! report's notes as ignored; any other unknown key is an error that names it.

mod code_eval;
mod config;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::Mpt;

use crate::code;
use crate::gauntlet::{self, BenchmarkResult, GauntletConfig, GauntletError};
use crate::icl::{self, IclError, IclTaskConfig, PreparedTask, TaskDefaults, TaskResult};
use crate::report::{EvalReport, ReportError, TaskSummary, WrittenReport, write_report};

pub use code_eval::{GeneratedSamples, generate_code_samples};
pub use config::{CodeEvalConfig, EvalConfig, ModelSpec};

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading, preparing or evaluating an ICL task failed.
    #[error(transparent)]
    Icl(#[from] IclError),
    /// The gauntlet definition could not be read or is invalid.
    #[error(transparent)]
    Gauntlet(#[from] GauntletError),
    /// Writing the report failed.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// Code evaluation failed (inputs, opt-in, sandbox).
    #[error(transparent)]
    Code(#[from] code::CodeError),
    /// The eval config is invalid.
    #[error("{origin}: {context}: {message}")]
    Config {
        /// The config file.
        origin: PathBuf,
        /// Where in it, e.g. `models[0]` or `code_eval`.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// A model or its tokenizer could not be loaded, or code-eval generation failed for it.
    #[error("model `{name}`: {message}")]
    Model {
        /// The model's name, or the code-eval task being generated for.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// ICL tasks prepared once (tokenized prompts) and the gauntlet, ready to evaluate any model
/// that shares the tokenizer: what a trainer builds at start-up and reuses every interval.
#[derive(Clone, Debug)]
pub struct EvalSuite {
    /// The ICL evaluators, tokenized (code-evaluation tasks left out).
    pub tasks: Vec<PreparedTask>,
    /// Applied to the task results when set.
    pub gauntlet: Option<GauntletConfig>,
    /// Pad and EOS ids, from the tokenizer.
    pub options: icl::EvalOptions,
    /// Remarks copied into every report (skipped tasks, subsetting).
    pub notes: Vec<String>,
}

impl EvalSuite {
    /// Prepares `icl_tasks` with `defaults`; `search_dirs` resolve relative dataset paths.
    /// `subset_num_batches` keeps only the first batches of each task.
    pub fn prepare(
        icl_tasks: &[IclTaskConfig],
        gauntlet: Option<GauntletConfig>,
        tok: &Tokenizer,
        defaults: &TaskDefaults,
        search_dirs: &[PathBuf],
        subset_num_batches: Option<usize>,
    ) -> Result<Self, EvalError> {
        let (mut tasks, code_tasks) = icl::prepare_tasks(icl_tasks, tok, defaults, search_dirs)?;
        let mut notes: Vec<String> = code_tasks
            .iter()
            .map(|t| {
                format!(
                    "`{}` (code_evaluation) skipped: configure `code_eval` instead",
                    t.label
                )
            })
            .collect();
        if let Some(n) = subset_num_batches {
            for t in &mut tasks {
                t.keep_first_batches(n);
            }
            notes.push(format!(
                "icl_subset_num_batches {n}: only the first batches of each task ran"
            ));
        }
        Ok(Self {
            tasks,
            gauntlet,
            options: icl::EvalOptions::for_tokenizer(tok),
            notes,
        })
    }

    /// The trainer's shortcut: a tasks YAML (and optional gauntlet YAML) with the run's
    /// `max_seq_len` and batch size; datasets are looked up next to the tasks file and in the
    /// working directory.
    pub fn from_files(
        tasks_yaml: &Path,
        gauntlet_yaml: Option<&Path>,
        tok: &Tokenizer,
        defaults: &TaskDefaults,
    ) -> Result<Self, EvalError> {
        let tasks = icl::load_task_file(tasks_yaml)?;
        let gauntlet = gauntlet_yaml.map(GauntletConfig::from_file).transpose()?;
        let mut dirs = vec![std::env::current_dir().unwrap_or_default()];
        dirs.extend(tasks_yaml.parent().map(Path::to_path_buf));
        Self::prepare(&tasks, gauntlet, tok, defaults, &dirs, None)
    }
}

/// Evaluates `model` on every task of `suite` and applies the gauntlet. Returns the report and
/// the per-example results.
pub fn evaluate_model<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    suite: &EvalSuite,
    model_name: &str,
    step: Option<u64>,
    device: &B::Device,
) -> Result<(EvalReport, Vec<TaskResult>), EvalError> {
    let start = Instant::now();
    let results = icl::evaluate_tasks(model, tok, &suite.tasks, &suite.options, device, |_| {})?;
    let bench: Vec<BenchmarkResult> = results
        .iter()
        .map(|r| BenchmarkResult {
            label: r.label.clone(),
            accuracy: r.accuracy,
            num_samples: r.n_examples,
        })
        .collect();
    let gauntlet = suite
        .gauntlet
        .as_ref()
        .and_then(|g| gauntlet::compute(g, &bench));
    let mut notes = suite.notes.clone();
    if let Some(g) = &gauntlet {
        notes.extend(g.dropped.iter().map(|(c, missing)| {
            format!(
                "gauntlet category `{c}` dropped: no result for {}",
                missing.join(", ")
            )
        }));
    }
    let report = EvalReport {
        model_name: model_name.to_string(),
        step,
        tasks: results.iter().map(TaskSummary::from).collect(),
        gauntlet,
        code: None,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((report, results))
}

/// [`evaluate_model`], then writes `results.json`, `results.md` and `examples.jsonl` into
/// `out_dir` (the trainer passes `<run>/eval/ba{step}`).
pub fn evaluate_and_write<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    suite: &EvalSuite,
    model_name: &str,
    step: Option<u64>,
    out_dir: &Path,
    device: &B::Device,
) -> Result<(EvalReport, WrittenReport), EvalError> {
    let (report, results) = evaluate_model(model, tok, suite, model_name, step, device)?;
    let written = write_report(out_dir, &report, Some(&results))?;
    Ok((report, written))
}

/// One model's outcome of [`run_config`].
#[derive(Clone, Debug)]
pub struct ModelOutcome {
    /// The model evaluated.
    pub model: ModelSpec,
    /// Its report.
    pub report: EvalReport,
    /// Where the report was written.
    pub written: WrittenReport,
}

/// `tessera eval CONFIG`: loads each model, evaluates it, writes its report into `out_dir`
/// (one sub-folder per model when there are several; default
/// [`EvalConfig::default_output_dir`]).
pub fn run_config<B: Backend>(
    cfg: &EvalConfig,
    out_dir: Option<&Path>,
    device: &B::Device,
    mut progress: impl FnMut(&str),
) -> Result<Vec<ModelOutcome>, EvalError> {
    // Refuse before any work: code execution must be an explicit decision.
    if cfg
        .code_eval
        .as_ref()
        .is_some_and(|c| !c.allow_code_execution)
    {
        return Err(code::CodeError::ExecutionNotAllowed(code::CODE_EXECUTION_REFUSED).into());
    }
    let mut outcomes = Vec::new();
    for spec in &cfg.models {
        let model_err = |message: String| EvalError::Model {
            name: spec.model_name.clone(),
            message,
        };
        let tok = Tokenizer::from_file(&spec.tokenizer).map_err(|e| model_err(e.to_string()))?;
        let (mcfg, model) = tessera_model::hf::load::<B>(&spec.load_path, device)
            .map_err(|e| model_err(e.to_string()))?;
        let mut notes = cfg.notes.clone();
        let max_seq_len = if cfg.max_seq_len > mcfg.max_seq_len {
            notes.push(format!(
                "max_seq_len {} exceeds the model's {}; the model's is used",
                cfg.max_seq_len, mcfg.max_seq_len
            ));
            mcfg.max_seq_len
        } else {
            cfg.max_seq_len
        };
        let defaults = TaskDefaults {
            max_seq_len,
            batch_size: cfg.device_eval_batch_size,
        };
        let mut suite = EvalSuite::prepare(
            &cfg.icl_tasks,
            cfg.eval_gauntlet.clone(),
            &tok,
            &defaults,
            &cfg.search_dirs,
            cfg.icl_subset_num_batches,
        )?;
        suite.notes.splice(0..0, notes);
        let dir = match out_dir {
            Some(d) if cfg.models.len() > 1 => d.join(sanitize(&spec.model_name)),
            Some(d) => d.to_path_buf(),
            None => cfg.default_output_dir(spec),
        };
        progress(&format!(
            "evaluating {} on {} ICL evaluators",
            spec.model_name,
            suite.tasks.len()
        ));
        let (mut report, results) =
            evaluate_model(&model, &tok, &suite, &spec.model_name, None, device)?;
        report.code = code_eval::run_code_eval(&model, &tok, cfg, &dir, device)?;
        let written = write_report(&dir, &report, Some(&results))?;
        progress(&format!("wrote {}", written.markdown.display()));
        outcomes.push(ModelOutcome {
            model: spec.clone(),
            report,
            written,
        });
    }
    Ok(outcomes)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
