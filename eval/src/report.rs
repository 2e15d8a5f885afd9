//! Eval reports: the JSON summary, per-example JSON Lines and a markdown table, written
//! atomically into a run's `eval/` directory.
//!
//! The markdown table has llm-foundry's columns (`calculate_markdown_results` in
//! `llmfoundry/command_utils/eval.py`): Category, Benchmark, Subtask, Accuracy, Number few
//! shot, Model; a benchmark split into categories gets an "Average" row plus one per
//! subtask. The gauntlet's category scores and averages follow, with dropped categories named.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gauntlet::GauntletReport;
use crate::icl::TaskResult;

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating the folder or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Serialising to JSON failed.
    #[error("serialising {what}: {source}")]
    Json {
        /// What was being serialised: the report, or a task's label.
        what: String,
        /// The serde error.
        source: serde_json::Error,
    },
}

/// One evaluator's headline numbers (no per-example detail).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// As [`TaskResult::label`].
    pub label: String,
    /// As [`TaskResult::benchmark`].
    pub benchmark: String,
    /// As [`TaskResult::num_fewshot`].
    pub num_fewshot: usize,
    /// As [`TaskResult::category`].
    pub category: Option<String>,
    /// The task type's YAML name, e.g. `multiple_choice`.
    pub icl_task_type: String,
    /// As [`TaskResult::metric`].
    pub metric: String,
    /// As [`TaskResult::n_examples`].
    pub n_examples: usize,
    /// As [`TaskResult::n_correct`].
    pub n_correct: usize,
    /// As [`TaskResult::accuracy`].
    pub accuracy: f64,
    /// As [`TaskResult::n_truncated`].
    pub n_truncated: usize,
}

impl From<&TaskResult> for TaskSummary {
    fn from(r: &TaskResult) -> Self {
        Self {
            label: r.label.clone(),
            benchmark: r.benchmark.clone(),
            num_fewshot: r.num_fewshot,
            category: r.category.clone(),
            icl_task_type: r.icl_task_type.as_str().to_string(),
            metric: r.metric.clone(),
            n_examples: r.n_examples,
            n_correct: r.n_correct,
            accuracy: r.accuracy,
            n_truncated: r.n_truncated,
        }
    }
}

/// Everything one evaluation of one model produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The model's name, as in the eval config.
    pub model_name: String,
    /// Training step, when evaluated from inside a run.
    pub step: Option<u64>,
    /// One summary per evaluator, in evaluation order.
    pub tasks: Vec<TaskSummary>,
    /// The gauntlet's scores, when a gauntlet was configured and there were results.
    pub gauntlet: Option<GauntletReport>,
    /// Code-eval results (pass@k per task), when code evaluation ran.
    pub code: Option<serde_json::Value>,
    /// Things the reader should know: ignored config keys, skipped tasks, dropped categories.
    pub notes: Vec<String>,
    /// Wall time of the evaluation.
    pub seconds: f64,
}

impl EvalReport {
    /// `{label: accuracy}` (llm-foundry's `metrics/{label}/{metric}` values).
    pub fn accuracies(&self) -> BTreeMap<String, f64> {
        self.tasks
            .iter()
            .map(|t| (t.label.clone(), t.accuracy))
            .collect()
    }
}

/// The markdown report: a results table in llm-foundry's layout, then the gauntlet.
pub fn render_markdown(report: &EvalReport) -> String {
    let mut md = String::new();
    let step = report
        .step
        .map(|s| format!(" at step {s}"))
        .unwrap_or_default();
    let _ = writeln!(md, "# Evaluation: {}{step}\n", report.model_name);
    // benchmark -> gauntlet category, for the Category column.
    let mut taxonomy: BTreeMap<String, String> = BTreeMap::new();
    if let Some(g) = &report.gauntlet {
        for c in &g.categories {
            for (key, _, _) in &c.benchmarks {
                let name = key.split('/').next().unwrap_or(key).to_string();
                taxonomy.entry(name).or_insert_with(|| c.name.clone());
            }
        }
    }
    if !report.tasks.is_empty() {
        let _ = writeln!(
            md,
            "| Category | Benchmark | Subtask | Accuracy | Number few shot | Model |"
        );
        let _ = writeln!(md, "|:---|:---|:---|---:|:---|:---|");
        // Group categories of one benchmark/shot under an Average row, in first-seen order.
        let mut groups: Vec<((String, usize), Vec<&TaskSummary>)> = Vec::new();
        for t in &report.tasks {
            let key = (t.benchmark.clone(), t.num_fewshot);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(t),
                None => groups.push((key, vec![t])),
            }
        }
        for ((bench, shots), members) in &groups {
            let cat = taxonomy.get(bench).map(String::as_str).unwrap_or("");
            let row = |md: &mut String, sub: &str, acc: f64| {
                let _ = writeln!(
                    md,
                    "| {cat} | {bench} | {sub} | {acc:.4} | {shots}-shot | {} |",
                    report.model_name
                );
            };
            if members.len() == 1 && members[0].category.is_none() {
                row(&mut md, "", members[0].accuracy);
            } else {
                let mean = members.iter().map(|t| t.accuracy).sum::<f64>() / members.len() as f64;
                row(&mut md, "Average", mean);
                for t in members {
                    row(&mut md, t.category.as_deref().unwrap_or(""), t.accuracy);
                }
            }
        }
        md.push('\n');
    }
    if let Some(g) = &report.gauntlet {
        let _ = writeln!(md, "## Eval gauntlet\n\n| Category | Score |\n|:---|---:|");
        for (name, score) in &g.averages {
            let _ = writeln!(md, "| **{name}** | {score:.4} |");
        }
        for c in &g.categories {
            match c.score {
                Some(s) => {
                    let _ = writeln!(md, "| {} | {s:.4} |", c.name);
                }
                None => {
                    let _ = writeln!(md, "| {} | dropped |", c.name);
                }
            }
        }
        if !g.dropped.is_empty() {
            let _ = writeln!(md, "\nDropped categories (a benchmark had no result):\n");
            for (name, missing) in &g.dropped {
                let _ = writeln!(md, "- {name}: missing {}", missing.join(", "));
            }
        }
        md.push('\n');
    }
    if let Some(code) = &report.code {
        let _ = writeln!(
            md,
            "## Code evaluation\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(code).unwrap_or_default()
        );
    }
    if !report.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &report.notes {
            let _ = writeln!(md, "- {n}");
        }
        md.push('\n');
    }
    let _ = writeln!(md, "Evaluated in {:.1} s.", report.seconds);
    md
}

/// Writes `bytes` to `path` atomically and durably (creating the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ReportError::Io { path: p, source }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    tessera_fs::atomic_write(path, bytes).map_err(io(path))
}

/// Paths of a written report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenReport {
    /// `results.json`.
    pub json: PathBuf,
    /// `results.md`.
    pub markdown: PathBuf,
    /// `examples.jsonl`, when per-example results were written.
    pub examples: Option<PathBuf>,
}

/// Writes `results.json`, `results.md` and (when `examples` is given) `examples.jsonl` — one
/// line per example with its task label — into `dir`.
pub fn write_report(
    dir: &Path,
    report: &EvalReport,
    examples: Option<&[TaskResult]>,
) -> Result<WrittenReport, ReportError> {
    let json_path = dir.join("results.json");
    let json = serde_json::to_vec_pretty(report).map_err(|source| ReportError::Json {
        what: "report".into(),
        source,
    })?;
    write_atomic(&json_path, &json)?;
    let md_path = dir.join("results.md");
    write_atomic(&md_path, render_markdown(report).as_bytes())?;
    let examples_path = match examples {
        Some(results) => {
            let mut buf = Vec::new();
            for r in results {
                for e in &r.examples {
                    let mut v = serde_json::to_value(e).map_err(|source| ReportError::Json {
                        what: r.label.clone(),
                        source,
                    })?;
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("task".into(), r.label.clone().into());
                    }
                    serde_json::to_writer(&mut buf, &v).map_err(|source| ReportError::Json {
                        what: r.label.clone(),
                        source,
                    })?;
                    buf.push(b'\n');
                }
            }
            let p = dir.join("examples.jsonl");
            write_atomic(&p, &buf)?;
            Some(p)
        }
        None => None,
    };
    Ok(WrittenReport {
        json: json_path,
        markdown: md_path,
        examples: examples_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gauntlet::{BenchmarkResult, GauntletConfig, compute};

    fn summary(label: &str, bench: &str, cat: Option<&str>, acc: f64) -> TaskSummary {
        TaskSummary {
            label: label.into(),
            benchmark: bench.into(),
            num_fewshot: 0,
            category: cat.map(str::to_string),
            icl_task_type: "multiple_choice".into(),
            metric: "InContextLearningMultipleChoiceAccuracy".into(),
            n_examples: 10,
            n_correct: (acc * 10.0) as usize,
            accuracy: acc,
            n_truncated: 0,
        }
    }

    fn report() -> EvalReport {
        let g = GauntletConfig::from_value(
            &serde_json::json!({"categories": [
                {"name": "cr", "benchmarks": [{"name": "piqa", "num_fewshot": 0, "random_baseline": 0.5}]},
                {"name": "wk", "benchmarks": [{"name": "mmlu", "num_fewshot": 0, "random_baseline": 0.25}]},
                {"name": "rc", "benchmarks": [{"name": "squad", "num_fewshot": 3, "random_baseline": 0.0}]}]}),
            Path::new("g.yaml"),
        )
        .unwrap();
        let tasks = vec![
            summary("piqa/0-shot", "piqa", None, 0.6),
            summary("mmlu/0-shot/anatomy", "mmlu", Some("anatomy"), 0.5),
            summary("mmlu/0-shot/law", "mmlu", Some("law"), 0.3),
        ];
        let results: Vec<BenchmarkResult> = tasks
            .iter()
            .map(|t| BenchmarkResult {
                label: t.label.clone(),
                accuracy: t.accuracy,
                num_samples: t.n_examples,
            })
            .collect();
        EvalReport {
            model_name: "tiny".into(),
            step: Some(100),
            gauntlet: compute(&g, &results),
            tasks,
            code: None,
            notes: vec!["fsdp_config ignored".into()],
            seconds: 1.5,
        }
    }

    #[test]
    fn markdown_groups_subtasks_under_an_average_row() {
        let md = render_markdown(&report());
        assert!(
            md.contains("| cr | piqa |  | 0.6000 | 0-shot | tiny |"),
            "{md}"
        );
        assert!(
            md.contains("| wk | mmlu | Average | 0.4000 | 0-shot | tiny |"),
            "{md}"
        );
        assert!(md.contains("| wk | mmlu | law | 0.3000 |"), "{md}");
        assert!(
            md.contains("| rc | dropped |") && md.contains("rc: missing squad/3-shot"),
            "{md}"
        );
        assert!(md.contains("at step 100") && md.contains("fsdp_config ignored"));
    }

    #[test]
    fn written_report_round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = report();
        let w = write_report(&dir.path().join("eval"), &r, Some(&[])).unwrap();
        let back: EvalReport = serde_json::from_slice(&std::fs::read(&w.json).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(
            std::fs::read_to_string(&w.markdown)
                .unwrap()
                .starts_with("# Evaluation: tiny")
        );
        let names: Vec<String> = std::fs::read_dir(dir.path().join("eval"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
        assert_eq!(names.len(), 3);
    }
}
