//! ICL task definitions: llm-foundry's `icl_tasks` YAML entries, with its key names and
//! defaults (`InContextLearningDataset.__init__` and `build_icl_evaluators`).
//!
//! ```yaml
//! icl_tasks:
//! - label: piqa
//!   dataset_uri: eval/local_data/commonsense_reasoning/piqa.jsonl
//!   num_fewshot: [0, 10]
//!   icl_task_type: multiple_choice
//!   continuation_delimiter: "\nAnswer: "
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::IclError;
use super::yaml::{check_keys, load_yaml_file};

/// The four ICL task families (plus `code_evaluation`, which the code-eval module runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IclTaskType {
    /// Correct when every continuation token is the argmax.
    LanguageModeling,
    /// Lowest mean per-token cross-entropy among the answer choices.
    MultipleChoice,
    /// Like multiple choice, but the *contexts* vary and the continuation is shared.
    Schema,
    /// Greedy generation, scored by prefix match against the answer and its aliases.
    GenerationTaskWithAnswers,
    /// HumanEval-style code generation, executed in the sandbox (`eval::code`).
    CodeEvaluation,
}

impl IclTaskType {
    /// The name used in YAML and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LanguageModeling => "language_modeling",
            Self::MultipleChoice => "multiple_choice",
            Self::Schema => "schema",
            Self::GenerationTaskWithAnswers => "generation_task_with_answers",
            Self::CodeEvaluation => "code_evaluation",
        }
    }

    /// llm-foundry's metric for this type (the name its logger keys carry).
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::LanguageModeling => "InContextLearningLMAccuracy",
            Self::MultipleChoice | Self::Schema => "InContextLearningMultipleChoiceAccuracy",
            Self::GenerationTaskWithAnswers => "InContextLearningGenerationExactMatchAccuracy",
            Self::CodeEvaluation => "InContextLearningCodeEvalAccuracy",
        }
    }
}

/// Every key an `icl_tasks` entry may carry. llm-foundry passes the entry's remaining keys to
/// the dataset constructor, so these are its parameters plus the builder's own keys.
pub const KNOWN_TASK_KEYS: &[&str] = &[
    "label",
    "dataset_uri",
    "num_fewshot",
    "icl_task_type",
    "metric_names",
    "max_seq_len",
    "batch_size",
    "has_categories",
    "prompt_string",
    "example_delimiter",
    "continuation_delimiter",
    "prelimiter",
    "question_prelimiter",
    "fewshot_random_seed",
    "context_key",
    "answer_key",
    "choices_key",
    "strip_dataset",
    "padding_size",
    "cot_delimiter",
    "early_stopping_criteria",
    "do_normalization",
    "generation_kwargs",
    "pass_at_k",
    "generations_per_sample",
    "destination_path",
    "hf_loading_vars",
    "hf_parsing_map",
];

/// Keys of `generation_kwargs` that tessera honours.
pub const KNOWN_GENERATION_KWARGS: &[&str] = &[
    "max_new_tokens",
    "use_cache",
    "pad_token_id",
    "eos_token_id",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
];

/// The wire form of one entry (llm-foundry names and defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskWire {
    label: String,
    dataset_uri: String,
    num_fewshot: OneOrMany,
    icl_task_type: IclTaskType,
    #[serde(default)]
    metric_names: Option<Vec<String>>,
    #[serde(default)]
    max_seq_len: Option<usize>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    has_categories: bool,
    #[serde(default)]
    prompt_string: String,
    #[serde(default = "newline")]
    example_delimiter: String,
    #[serde(default = "space")]
    continuation_delimiter: String,
    #[serde(default)]
    prelimiter: Option<String>,
    #[serde(default)]
    question_prelimiter: Option<String>,
    #[serde(default = "default_seed")]
    fewshot_random_seed: i64,
    #[serde(default)]
    context_key: Option<String>,
    #[serde(default)]
    answer_key: Option<String>,
    #[serde(default)]
    choices_key: Option<String>,
    #[serde(default = "yes")]
    strip_dataset: bool,
    #[serde(default)]
    padding_size: Option<usize>,
    #[serde(default)]
    cot_delimiter: String,
    #[serde(default)]
    early_stopping_criteria: Option<Vec<String>>,
    #[serde(default = "yes")]
    do_normalization: bool,
    #[serde(default)]
    generation_kwargs: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pass_at_k: Option<OneOrMany>,
    #[serde(default)]
    generations_per_sample: Option<usize>,
    /// llm-foundry's download location; files are read in place here.
    #[serde(default, rename = "destination_path")]
    _destination_path: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    hf_loading_vars: Option<Value>,
    #[serde(default)]
    hf_parsing_map: Option<Value>,
}

fn newline() -> String {
    "\n".into()
}
fn space() -> String {
    " ".into()
}
fn yes() -> bool {
    true
}
fn default_seed() -> i64 {
    1234
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(usize),
    Many(Vec<usize>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<usize> {
        match self {
            Self::One(n) => vec![n],
            Self::Many(v) => v,
        }
    }
}

/// One resolved `icl_tasks` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IclTaskConfig {
    /// Name used in results: `{label}/{num_fewshot}-shot`.
    pub label: String,
    /// The JSONL file (local path; relative paths are resolved by the caller's search dirs).
    pub dataset_uri: String,
    /// One evaluation per entry.
    pub num_fewshot: Vec<usize>,
    /// How examples are prompted and scored.
    pub icl_task_type: IclTaskType,
    /// Overrides the run's `max_seq_len` for this task.
    pub max_seq_len: Option<usize>,
    /// Overrides the run's `device_eval_batch_size` for this task.
    pub batch_size: Option<usize>,
    /// Split the file by its `category` field and evaluate each part separately.
    pub has_categories: bool,
    /// Text placed once before the few-shot examples.
    pub prompt_string: String,
    /// Placed before each example after the first (default `"\n"`).
    pub example_delimiter: String,
    /// Between context and answer (default `" "`).
    pub continuation_delimiter: String,
    /// Before each context (`question_prelimiter` is its older name).
    pub prelimiter: String,
    /// Seed of Python's `random.Random` that picks the few-shot examples.
    pub fewshot_random_seed: i64,
    /// Field names; `None` means the task type's default.
    pub context_key: Option<String>,
    /// The answer field; `None` means the task type's default.
    pub answer_key: Option<String>,
    /// The choices field; `None` means the task type's default.
    pub choices_key: Option<String>,
    /// `str.strip()` every top-level string field when loading (default true).
    pub strip_dataset: bool,
    /// Generation: text between chain of thought and answer.
    pub cot_delimiter: String,
    /// Generation: stop sequences.
    pub early_stopping_criteria: Vec<String>,
    /// Generation: TriviaQA normalisation before matching (default true).
    pub do_normalization: bool,
    /// Generation: overrides `max_new_tokens` (otherwise the longest tokenized answer).
    pub max_new_tokens: Option<usize>,
    /// Code evaluation: the `k`s of pass@k.
    pub pass_at_k: Vec<usize>,
    /// Code evaluation: samples per problem.
    pub generations_per_sample: Option<usize>,
}

impl IclTaskConfig {
    /// Resolves one entry; `context` names it in errors (e.g. `icl_tasks[3]`).
    pub fn from_value(v: &Value, context: &str, origin: &Path) -> Result<Self, IclError> {
        let err = |message: String| IclError::Config {
            origin: origin.to_path_buf(),
            context: context.to_string(),
            message,
        };
        let map = v
            .as_object()
            .ok_or_else(|| err(format!("expected a mapping, found {v}")))?;
        let context = match map.get("label").and_then(Value::as_str) {
            Some(label) => format!("{context} (label `{label}`)"),
            None => context.to_string(),
        };
        let err = |message: String| IclError::Config {
            origin: origin.to_path_buf(),
            context: context.clone(),
            message,
        };
        check_keys(map, KNOWN_TASK_KEYS, &context, origin)?;
        let w: TaskWire = serde_json::from_value(v.clone()).map_err(|e| err(e.to_string()))?;
        if w.prelimiter.is_some() && w.question_prelimiter.is_some() {
            return Err(err(
                "both `prelimiter` and `question_prelimiter` are set; they are the same setting"
                    .into(),
            ));
        }
        if w.dataset_uri.starts_with("hf://")
            || w.hf_loading_vars.is_some()
            || w.hf_parsing_map.is_some()
        {
            return Err(err(format!(
                "Hugging Face hub datasets (`hf://`, hf_loading_vars, hf_parsing_map) are not \
                 supported; convert `{}` to a local JSONL file",
                w.dataset_uri
            )));
        }
        if let Some(names) = &w.metric_names {
            let want = w.icl_task_type.metric_name();
            if names.iter().any(|n| n != want) {
                return Err(err(format!(
                    "metric_names {names:?}: tessera computes only `{want}` for {}",
                    w.icl_task_type.as_str()
                )));
            }
        }
        if let Some(p) = w.padding_size {
            return Err(err(format!(
                "padding_size {p}: set max_seq_len instead (padding_size is derived from it)"
            )));
        }
        let num_fewshot = w.num_fewshot.into_vec();
        if num_fewshot.is_empty() {
            return Err(err(
                "num_fewshot is empty; give at least one shot count, e.g. [0]".into(),
            ));
        }
        if w.batch_size == Some(0) || w.max_seq_len == Some(0) {
            return Err(err("batch_size and max_seq_len must be positive".into()));
        }
        let mut max_new_tokens = None;
        if let Some(kw) = &w.generation_kwargs {
            check_keys(
                kw,
                KNOWN_GENERATION_KWARGS,
                &format!("{context}.generation_kwargs"),
                origin,
            )?;
            if let Some(m) = kw.get("max_new_tokens") {
                max_new_tokens = Some(m.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                    err(format!(
                        "generation_kwargs.max_new_tokens: expected a positive integer, found {m}"
                    ))
                })? as usize);
            }
            if kw.get("do_sample").and_then(Value::as_bool) == Some(true) {
                return Err(err(
                    "generation_kwargs.do_sample: true is not supported; ICL generation is greedy"
                        .into(),
                ));
            }
        }
        Ok(Self {
            label: w.label,
            dataset_uri: w.dataset_uri,
            num_fewshot,
            icl_task_type: w.icl_task_type,
            max_seq_len: w.max_seq_len,
            batch_size: w.batch_size,
            has_categories: w.has_categories,
            prompt_string: w.prompt_string,
            example_delimiter: w.example_delimiter,
            continuation_delimiter: w.continuation_delimiter,
            prelimiter: w.prelimiter.or(w.question_prelimiter).unwrap_or_default(),
            fewshot_random_seed: w.fewshot_random_seed,
            context_key: w.context_key,
            answer_key: w.answer_key,
            choices_key: w.choices_key,
            strip_dataset: w.strip_dataset,
            cot_delimiter: w.cot_delimiter,
            early_stopping_criteria: w.early_stopping_criteria.unwrap_or_default(),
            do_normalization: w.do_normalization,
            max_new_tokens,
            pass_at_k: w.pass_at_k.map(OneOrMany::into_vec).unwrap_or_default(),
            generations_per_sample: w.generations_per_sample,
        })
    }

    /// A task of `icl_task_type` over `dataset_uri` with llm-foundry's defaults.
    pub fn new(
        label: &str,
        dataset_uri: &str,
        icl_task_type: IclTaskType,
        num_fewshot: Vec<usize>,
    ) -> Self {
        let v = serde_json::json!({
            "label": label, "dataset_uri": dataset_uri,
            "icl_task_type": icl_task_type.as_str(), "num_fewshot": num_fewshot,
        });
        // The literal above holds only known keys with valid types.
        Self::from_value(&v, "new", Path::new("<code>")).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

/// Parses an `icl_tasks` list (the value of the key, already interpolated).
pub fn parse_task_list(v: &Value, origin: &Path) -> Result<Vec<IclTaskConfig>, IclError> {
    let items = v.as_array().ok_or_else(|| IclError::Config {
        origin: origin.to_path_buf(),
        context: "icl_tasks".into(),
        message: format!("expected a list of tasks, found {v}"),
    })?;
    let tasks = items
        .iter()
        .enumerate()
        .map(|(i, t)| IclTaskConfig::from_value(t, &format!("icl_tasks[{i}]"), origin))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for t in &tasks {
        if !seen.insert(t.label.as_str()) {
            return Err(IclError::Config {
                origin: origin.to_path_buf(),
                context: "icl_tasks".into(),
                message: format!("label `{}` is used twice; results would collide", t.label),
            });
        }
    }
    Ok(tasks)
}

/// Loads a tasks file such as llm-foundry's `tasks_v0.3.yaml` (top-level `icl_tasks`).
pub fn load_task_file(path: &Path) -> Result<Vec<IclTaskConfig>, IclError> {
    let tree = load_yaml_file(path)?;
    let map = tree.as_object().ok_or_else(|| IclError::Config {
        origin: path.to_path_buf(),
        context: "top level".into(),
        message: "expected a mapping with `icl_tasks`".into(),
    })?;
    check_keys(map, &["icl_tasks", "variables"], "top level", path)?;
    let tasks = map.get("icl_tasks").ok_or_else(|| IclError::Config {
        origin: path.to_path_buf(),
        context: "top level".into(),
        message: "missing `icl_tasks`".into(),
    })?;
    parse_task_list(tasks, path)
}

/// Finds a task's data file: absolute paths as given, relative ones in each of `search_dirs`
/// in turn. The error lists every place tried.
pub fn resolve_dataset_path(uri: &str, search_dirs: &[PathBuf]) -> Result<PathBuf, IclError> {
    if uri.contains("://") {
        return Err(IclError::DatasetMissing {
            uri: uri.to_string(),
            tried: vec![],
            hint: "remote dataset URIs are not fetched by the evaluator; download the file first"
                .into(),
        });
    }
    let p = Path::new(uri);
    if p.is_absolute() {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(IclError::DatasetMissing {
                uri: uri.into(),
                tried: vec![p.to_path_buf()],
                hint: String::new(),
            })
        };
    }
    let tried: Vec<PathBuf> = search_dirs.iter().map(|d| d.join(p)).collect();
    tried
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| IclError::DatasetMissing {
            uri: uri.into(),
            tried,
            hint: String::new(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::icl::yaml::parse_yaml;

    fn tasks(s: &str) -> Result<Vec<IclTaskConfig>, IclError> {
        let p = Path::new("tasks.yaml");
        let v = parse_yaml(s, p)?;
        parse_task_list(&v["icl_tasks"], p)
    }

    #[test]
    fn defaults_follow_llm_foundry() {
        let t = tasks("icl_tasks:\n- label: lambada\n  dataset_uri: l.jsonl\n  num_fewshot: [0]\n  icl_task_type: language_modeling\n")
            .unwrap();
        let t = &t[0];
        assert_eq!(t.example_delimiter, "\n");
        assert_eq!(t.continuation_delimiter, " ");
        assert_eq!(t.prelimiter, "");
        assert_eq!(t.fewshot_random_seed, 1234);
        assert!(t.strip_dataset && t.do_normalization && !t.has_categories);
    }

    #[test]
    fn question_prelimiter_is_an_alias() {
        let t = tasks("icl_tasks:\n- label: g\n  dataset_uri: g.jsonl\n  num_fewshot: [5]\n  icl_task_type: generation_task_with_answers\n  question_prelimiter: 'Q: '\n  early_stopping_criteria: [\"\\n\\n\"]\n  cot_delimiter: 'The answer is '\n")
            .unwrap();
        assert_eq!(t[0].prelimiter, "Q: ");
        assert_eq!(t[0].early_stopping_criteria, vec!["\n\n".to_string()]);
        assert_eq!(t[0].cot_delimiter, "The answer is ");
    }

    #[test]
    fn unknown_key_is_named_with_the_label() {
        let e = tasks("icl_tasks:\n- label: piqa\n  dataset_uri: p.jsonl\n  num_fewshot: [0]\n  icl_task_type: multiple_choice\n  continuation_delimeter: x\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("continuation_delimeter") && e.contains("piqa"),
            "{e}"
        );
    }

    #[test]
    fn bad_task_type_and_duplicate_labels_are_errors() {
        let e = tasks("icl_tasks:\n- label: x\n  dataset_uri: p\n  num_fewshot: [0]\n  icl_task_type: ranking\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ranking"), "{e}");
        let dup = "icl_tasks:\n- {label: x, dataset_uri: p, num_fewshot: [0], icl_task_type: schema}\n- {label: x, dataset_uri: q, num_fewshot: [1], icl_task_type: schema}\n";
        assert!(tasks(dup).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    #[ignore = "needs shared fixtures"]
    fn every_llm_foundry_task_file_parses() {
        for f in ["tasks.yaml", "tasks_v0.3.yaml", "tasks_light.yaml"] {
            let path = tessera_testkit::shared_fixture(format!("icl/yamls/{f}"));
            let t = load_task_file(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(t.len() > 10, "{f}: {} tasks", t.len());
        }
    }

    #[test]
    fn dataset_resolution_lists_every_place_tried() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "{}\n").unwrap();
        let dirs = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        assert_eq!(
            resolve_dataset_path("a.jsonl", &dirs).unwrap(),
            dir.path().join("a.jsonl")
        );
        let e = resolve_dataset_path("b.jsonl", &dirs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/b.jsonl"), "{e}");
        assert!(resolve_dataset_path("s3://x/y", &dirs).is_err());
    }
}
