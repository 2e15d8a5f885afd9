//! The eval YAML: llm-foundry's `EvalConfig` keys, checked once at load with errors that name
//! the key, plus tessera's `code_eval` block.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::EvalError;
use crate::gauntlet::GauntletConfig;
use crate::icl::yaml::{check_keys, load_yaml_file};
use crate::icl::{self, IclTaskConfig};

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
    /// The name used in reports and in per-model output folders.
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
    /// Nucleus sampling: sample only among the most likely tokens whose probability reaches
    /// `top_p`.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Generation budget per completion (default 512).
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
    /// The models to evaluate, in order; never empty.
    pub models: Vec<ModelSpec>,
    /// Default sequence length for tasks (capped at each model's own).
    pub max_seq_len: usize,
    /// Default sequences per forward batch for tasks.
    pub device_eval_batch_size: usize,
    /// The ICL tasks, from a tasks file or inline.
    pub icl_tasks: Vec<IclTaskConfig>,
    /// Where relative `dataset_uri`s are looked for.
    pub search_dirs: Vec<PathBuf>,
    /// The gauntlet, from a file or inline.
    pub eval_gauntlet: Option<GauntletConfig>,
    /// Evaluate only this many batches of each task (llm-foundry's `icl_subset_num_batches`).
    pub icl_subset_num_batches: Option<usize>,
    /// Run seed that code-eval sampling seeds derive from (default 17).
    pub seed: u64,
    /// Names the default output folder when the checkpoint is not inside a run.
    pub run_name: Option<String>,
    /// The `code_eval` block, when present.
    pub code_eval: Option<CodeEvalConfig>,
    /// Ignored keys and similar remarks for the report.
    pub notes: Vec<String>,
}

fn find_file(p: &str, dirs: &[PathBuf]) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    dirs.iter()
        .map(|d| d.join(path))
        .find(|c| c.exists())
        .unwrap_or_else(|| path.to_path_buf())
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
        let map = tree
            .as_object()
            .ok_or_else(|| err("top level", "expected a mapping".into()))?;
        let all: Vec<&str> = USED_KEYS
            .iter()
            .chain(IGNORED_KEYS)
            .chain(UNSUPPORTED_KEYS)
            .copied()
            .collect();
        check_keys(map, &all, "top level", origin)?;
        if let Some(k) = UNSUPPORTED_KEYS
            .iter()
            .find(|k| map.get(**k).is_some_and(|v| !v.is_null()))
        {
            return Err(err(
                k,
                "not supported by tessera's evaluator (ICL tasks, gauntlet and code eval only)"
                    .into(),
            ));
        }
        let notes: Vec<String> = IGNORED_KEYS
            .iter()
            .filter(|k| map.contains_key(**k))
            .map(|k| {
                format!("`{k}` ignored: single-process evaluation in the backend's float type")
            })
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
                return Err(err(
                    "icl_tasks",
                    format!("expected a list or a path, found {other}"),
                ));
            }
        };
        let eval_gauntlet = match (map.get("eval_gauntlet"), map.get("eval_gauntlet_str")) {
            (Some(Value::String(p)), _) | (None, Some(Value::String(p))) => {
                Some(GauntletConfig::from_file(&find_file(p, &dirs))?)
            }
            (Some(v @ Value::Object(_)), _) => Some(GauntletConfig::from_value(v, origin)?),
            _ => None,
        };
        let code_eval = match map.get("code_eval") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let mut c: CodeEvalConfig = serde_json::from_value(v.clone())
                    .map_err(|e| err("code_eval", e.to_string()))?;
                c.problems = find_file(&c.problems.to_string_lossy(), &dirs);
                if c.n == 0 || c.k.iter().any(|&k| k == 0 || k > c.n) {
                    return Err(err(
                        "code_eval",
                        format!("need n >= 1 and every k in 1..=n (n {}, k {:?})", c.n, c.k),
                    ));
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
            icl_subset_num_batches: map
                .get("icl_subset_num_batches")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
            seed: map.get("seed").and_then(Value::as_u64).unwrap_or(17),
            run_name: map
                .get("run_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            code_eval,
            notes,
        })
    }

    /// `<run>/eval`: the run that holds the checkpoint (`…/<run>/checkpoints/…`), else
    /// `runs/<run_name or config file stem>/eval`.
    pub fn default_output_dir(&self, model: &ModelSpec) -> PathBuf {
        let run = model
            .load_path
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "checkpoints"));
        if let Some(run) = run.and_then(Path::parent) {
            return run.join("eval");
        }
        let name = self.run_name.clone().unwrap_or_else(|| {
            self.origin
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "eval".into())
        });
        PathBuf::from("runs").join(name).join("eval")
    }
}

fn parse_model(
    v: &Value,
    context: &str,
    origin: &Path,
    dirs: &[PathBuf],
) -> Result<ModelSpec, EvalError> {
    let err = |message: String| EvalError::Config {
        origin: origin.to_path_buf(),
        context: context.into(),
        message,
    };
    let m = v
        .as_object()
        .ok_or_else(|| err("expected a mapping".into()))?;
    check_keys(
        m,
        &["model_name", "model", "tokenizer", "load_path"],
        context,
        origin,
    )?;
    let model_name = m
        .get("model_name")
        .and_then(Value::as_str)
        .ok_or_else(|| err("missing `model_name`".into()))?;
    let load = m
        .get("load_path")
        .and_then(Value::as_str)
        .or_else(|| {
            m.get("model")
                .and_then(|x| x.get("pretrained_model_name_or_path"))
                .and_then(Value::as_str)
        })
        .ok_or_else(|| {
            err("missing `load_path` (a directory with config.json and model.safetensors)".into())
        })?;
    let load_path = find_file(load, dirs);
    let tokenizer = match m
        .get("tokenizer")
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str)
    {
        Some(name) => {
            let p = find_file(name, dirs);
            if p.is_dir() {
                p.join("tokenizer.json")
            } else {
                p
            }
        }
        None => load_path.join("tokenizer.json"),
    };
    Ok(ModelSpec {
        model_name: model_name.to_string(),
        load_path,
        tokenizer,
    })
}
