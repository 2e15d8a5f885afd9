//! Loading ICL task files (llm-foundry's JSONL formats) into typed examples.
//!
//! | type | keys (defaults) |
//! | --- | --- |
//! | language_modeling | `context`, `continuation` |
//! | multiple_choice | `query`, `choices` (list), `gold` (index) |
//! | schema | `context_options` (list), `continuation`, `gold` |
//! | generation_task_with_answers | `context`, `answer`, `aliases` (optional list), `chain_of_thought` (optional) |
//!
//! As llm-foundry's `strip_data`, every *top-level* string field is `str.strip()`ped (lists such
//! as `choices` are left alone). With `has_categories` the file is split by its `category`
//! field into one dataset per category, in sorted order, each sampled for few-shot examples on
//! its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::IclError;
use super::config::{IclTaskConfig, IclTaskType};
use super::pytext::py_strip;

/// One test example.
#[derive(Clone, Debug, PartialEq)]
pub enum IclExample {
    /// Correct when the model's greedy tokens reproduce `continuation` after `context`.
    LanguageModeling {
        /// The text the model is given.
        context: String,
        /// The text it should continue with.
        continuation: String,
    },
    /// One question, several answers; the gold answer should score best.
    MultipleChoice {
        /// The question.
        query: String,
        /// The candidate answers, each scored as a continuation of `query`.
        choices: Vec<String>,
        /// Index of the correct choice.
        gold: usize,
    },
    /// Several contexts, one continuation; the gold context should make it most likely.
    Schema {
        /// The candidate contexts.
        context_options: Vec<String>,
        /// The continuation scored after each context.
        continuation: String,
        /// Index of the correct context.
        gold: usize,
    },
    /// A generated answer matched against `answer` and its aliases.
    Generation {
        /// The prompt the model continues.
        context: String,
        /// The expected answer.
        answer: String,
        /// Other accepted answers (may repeat `answer`).
        aliases: Vec<String>,
        /// Present when the file has a `chain_of_thought` column.
        chain_of_thought: Option<String>,
    },
}

impl IclExample {
    /// The labels a generated answer is matched against: the answer and its aliases, sorted
    /// and deduplicated (llm-foundry uses `set([answer] + aliases)`).
    pub fn labels(&self) -> Vec<String> {
        match self {
            Self::Generation {
                answer, aliases, ..
            } => {
                let mut all: Vec<String> =
                    std::iter::once(answer).chain(aliases).cloned().collect();
                all.sort();
                all.dedup();
                all
            }
            _ => Vec::new(),
        }
    }
}

/// The examples of one task file (or of one category of it).
#[derive(Clone, Debug)]
pub struct IclDataset {
    /// The file the examples came from.
    pub path: PathBuf,
    /// `Some(name)` for one category of a `has_categories` file.
    pub category: Option<String>,
    /// The examples, in file order.
    pub examples: Vec<IclExample>,
    /// 0-based line of each example in the file.
    pub lines: Vec<usize>,
    /// Whether the file has a `chain_of_thought` column (generation only).
    pub has_cot: bool,
}

/// Field names per task type, from the config or llm-foundry's defaults.
struct Keys<'a> {
    context: &'a str,
    answer: &'a str,
    choices: &'a str,
}

impl<'a> Keys<'a> {
    fn for_task(t: &'a IclTaskConfig) -> Self {
        let (context, answer, choices) = match t.icl_task_type {
            IclTaskType::LanguageModeling => ("context", "continuation", ""),
            IclTaskType::MultipleChoice => ("query", "answer", "choices"),
            IclTaskType::Schema => ("context_options", "continuation", "context_options"),
            IclTaskType::GenerationTaskWithAnswers | IclTaskType::CodeEvaluation => {
                ("context", "answer", "")
            }
        };
        Self {
            context: t.context_key.as_deref().unwrap_or(context),
            answer: t.answer_key.as_deref().unwrap_or(answer),
            choices: t.choices_key.as_deref().unwrap_or(choices),
        }
    }
}

/// Reads `path` for `task`: one dataset, or one per category (sorted) with `has_categories`.
pub fn load_datasets(path: &Path, task: &IclTaskConfig) -> Result<Vec<IclDataset>, IclError> {
    let text = std::fs::read_to_string(path).map_err(|source| IclError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (line, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let err = |message: String| IclError::Dataset {
            path: path.to_path_buf(),
            line: line + 1,
            message,
        };
        let v: Value = serde_json::from_str(raw).map_err(|e| err(format!("not JSON: {e}")))?;
        let Value::Object(mut obj) = v else {
            return Err(err("expected a JSON object".into()));
        };
        if task.strip_dataset {
            for value in obj.values_mut() {
                if let Value::String(s) = value {
                    let stripped = py_strip(s);
                    if stripped.len() != s.len() {
                        *s = stripped.to_string();
                    }
                }
            }
        }
        rows.push((line, obj));
    }
    if rows.is_empty() {
        return Err(IclError::Dataset {
            path: path.to_path_buf(),
            line: 0,
            message: "the file holds no examples".into(),
        });
    }
    let has_cot = task.icl_task_type == IclTaskType::GenerationTaskWithAnswers
        && rows.iter().any(|(_, o)| o.contains_key("chain_of_thought"));

    // category (None without has_categories) -> (0-based line, row)
    type Rows = Vec<(usize, Map<String, Value>)>;
    let mut groups: BTreeMap<Option<String>, Rows> = BTreeMap::new();
    for (line, obj) in rows {
        let category = if task.has_categories {
            match obj.get("category") {
                Some(Value::String(c)) => Some(c.clone()),
                other => {
                    return Err(IclError::Dataset {
                        path: path.to_path_buf(),
                        line: line + 1,
                        message: format!(
                            "has_categories is set but `category` is {}",
                            other.map_or("missing".to_string(), |v| format!("{v}, not a string"))
                        ),
                    });
                }
            }
        } else {
            None
        };
        groups.entry(category).or_default().push((line, obj));
    }

    let keys = Keys::for_task(task);
    groups
        .into_iter()
        .map(|(category, rows)| {
            let mut examples = Vec::with_capacity(rows.len());
            let mut lines = Vec::with_capacity(rows.len());
            for (line, obj) in rows {
                let parse = ExampleParser {
                    path,
                    line: line + 1,
                    obj: &obj,
                };
                examples.push(parse.example(task.icl_task_type, &keys, has_cot)?);
                lines.push(line);
            }
            Ok(IclDataset {
                path: path.to_path_buf(),
                category,
                examples,
                lines,
                has_cot,
            })
        })
        .collect()
}

struct ExampleParser<'a> {
    path: &'a Path,
    line: usize,
    obj: &'a Map<String, Value>,
}

impl ExampleParser<'_> {
    fn err(&self, message: String) -> IclError {
        IclError::Dataset {
            path: self.path.to_path_buf(),
            line: self.line,
            message,
        }
    }

    fn string(&self, key: &str) -> Result<String, IclError> {
        match self.obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.err(format!("`{key}` should be a string, found {other}"))),
            None => Err(self.err(format!(
                "missing `{key}` (keys present: {})",
                self.obj.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    fn strings(&self, key: &str, required: bool) -> Result<Vec<String>, IclError> {
        match self.obj.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.err(format!("`{key}` should hold strings, found {v}")))
                })
                .collect(),
            None | Some(Value::Null) if !required => Ok(Vec::new()),
            Some(other) => Err(self.err(format!(
                "`{key}` should be a list of strings, found {other}"
            ))),
            None => Err(self.err(format!("missing `{key}`"))),
        }
    }

    fn gold(&self, n_choices: usize, what: &str) -> Result<usize, IclError> {
        let g = self
            .obj
            .get("gold")
            .ok_or_else(|| self.err("missing `gold`".into()))?;
        let gold = g
            .as_u64()
            .ok_or_else(|| self.err(format!("`gold` should be an index, found {g}")))?
            as usize;
        if n_choices == 0 {
            return Err(self.err(format!("`{what}` is empty")));
        }
        if gold >= n_choices {
            return Err(self.err(format!(
                "`gold` is {gold} but there are only {n_choices} {what}"
            )));
        }
        Ok(gold)
    }

    fn example(
        &self,
        ty: IclTaskType,
        keys: &Keys<'_>,
        has_cot: bool,
    ) -> Result<IclExample, IclError> {
        Ok(match ty {
            IclTaskType::LanguageModeling => IclExample::LanguageModeling {
                context: self.string(keys.context)?,
                continuation: self.string(keys.answer)?,
            },
            IclTaskType::MultipleChoice => {
                let choices = self.strings(keys.choices, true)?;
                let gold = self.gold(choices.len(), keys.choices)?;
                IclExample::MultipleChoice {
                    query: self.string(keys.context)?,
                    choices,
                    gold,
                }
            }
            IclTaskType::Schema => {
                let context_options = self.strings(keys.choices, true)?;
                let gold = self.gold(context_options.len(), keys.choices)?;
                IclExample::Schema {
                    context_options,
                    continuation: self.string("continuation")?,
                    gold,
                }
            }
            IclTaskType::GenerationTaskWithAnswers => IclExample::Generation {
                context: self.string(keys.context)?,
                answer: self.string(keys.answer)?,
                aliases: self.strings("aliases", false)?,
                chain_of_thought: if has_cot {
                    // llm-foundry would format a missing value as the text "None".
                    Some(self.string("chain_of_thought").map_err(|_| {
                        self.err("other rows have `chain_of_thought` but this one lacks it".into())
                    })?)
                } else {
                    None
                },
            },
            IclTaskType::CodeEvaluation => {
                return Err(self.err(
                    "code_evaluation tasks are run by the code-eval module, not as ICL examples"
                        .into(),
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        (dir, p)
    }

    #[test]
    fn top_level_strings_are_stripped_but_lists_are_not() {
        let (_d, p) = write(&[r#"{"query": " Q? \n", "choices": [" a ", "b"], "gold": 1}"#]);
        let t = IclTaskConfig::new("mc", "t.jsonl", IclTaskType::MultipleChoice, vec![0]);
        let ds = load_datasets(&p, &t).unwrap();
        assert_eq!(
            ds[0].examples[0],
            IclExample::MultipleChoice {
                query: "Q?".into(),
                choices: vec![" a ".into(), "b".into()],
                gold: 1
            }
        );
    }

    #[test]
    fn categories_split_in_sorted_order_with_their_lines() {
        let (_d, p) = write(&[
            r#"{"context": "a", "continuation": "b", "category": "zoo"}"#,
            "",
            r#"{"context": "c", "continuation": "d", "category": "art"}"#,
        ]);
        let mut t = IclTaskConfig::new("lm", "t.jsonl", IclTaskType::LanguageModeling, vec![0]);
        t.has_categories = true;
        let ds = load_datasets(&p, &t).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0].category.as_deref(), Some("art"));
        assert_eq!(ds[0].lines, vec![2]);
        assert_eq!(ds[1].category.as_deref(), Some("zoo"));
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let (_d, p) =
            write(&[r#"{"context_options": ["x", "y"], "continuation": "z", "gold": 2}"#]);
        let t = IclTaskConfig::new("s", "t.jsonl", IclTaskType::Schema, vec![0]);
        let e = load_datasets(&p, &t).unwrap_err().to_string();
        assert!(
            e.contains("t.jsonl") && e.contains(":1") && e.contains("gold"),
            "{e}"
        );

        let (_d, p) = write(&["{\"context\": \"x\"}"]);
        let t = IclTaskConfig::new(
            "g",
            "t.jsonl",
            IclTaskType::GenerationTaskWithAnswers,
            vec![0],
        );
        let e = load_datasets(&p, &t).unwrap_err().to_string();
        assert!(e.contains("missing `answer`"), "{e}");
    }

    #[test]
    fn generation_labels_are_answer_and_aliases_deduplicated() {
        let (_d, p) = write(&[
            r#"{"context": "Q", "answer": "Onion", "aliases": ["Onions", "Onion"], "chain_of_thought": "think"}"#,
        ]);
        let t = IclTaskConfig::new(
            "g",
            "t.jsonl",
            IclTaskType::GenerationTaskWithAnswers,
            vec![0],
        );
        let ds = load_datasets(&p, &t).unwrap();
        assert!(ds[0].has_cot);
        assert_eq!(
            ds[0].examples[0].labels(),
            vec!["Onion".to_string(), "Onions".to_string()]
        );
    }
}
