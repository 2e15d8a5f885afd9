//! ICL throughput (examples per second), for `cargo xtask bench eval`.
//!
//! [`bench_fixture`] runs the four task families on the shared fixture model (`icl_model/`,
//! d_model 32 with the full 50k gpt-neox vocabulary) with llm-foundry's `tasks_v0.3.yaml`
//! settings: lambada_openai 0-shot, piqa 0-shot, winograd 3-shot and triviaqa_sm_sub 3-shot.
//! Prompt building is timed apart from the model work, since a trainer prepares once and
//! evaluates many times.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::Mpt;

use super::IclError;
use super::config::load_task_file;
use super::evaluate::{EvalOptions, evaluate_task};
use super::task::{PreparedTask, TaskDefaults, prepare_task};

/// One task's timing.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskTiming {
    /// The task's result label.
    pub label: String,
    /// Examples evaluated.
    pub examples: usize,
    /// Sequences scored (choices count separately) or generations made.
    pub sequences: usize,
    /// Wall time of the evaluation (model work; prompts were built beforehand).
    pub seconds: f64,
    /// The task's accuracy.
    pub accuracy: f64,
}

/// A throughput measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct IclBench {
    /// One timing per task, in order.
    pub tasks: Vec<TaskTiming>,
    /// Reading files, building and tokenizing prompts.
    pub prepare_seconds: f64,
}

impl IclBench {
    /// Examples per second over all tasks (model work only).
    pub fn examples_per_second(&self) -> f64 {
        let n: usize = self.tasks.iter().map(|t| t.examples).sum();
        let s: f64 = self.tasks.iter().map(|t| t.seconds).sum();
        if s > 0.0 { n as f64 / s } else { 0.0 }
    }

    /// A markdown table for BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from(
            "| task | examples | sequences | seconds | examples/s | accuracy |\n|:---|---:|---:|---:|---:|---:|\n",
        );
        for t in &self.tasks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.1} | {:.3} |",
                t.label,
                t.examples,
                t.sequences,
                t.seconds,
                t.examples as f64 / t.seconds.max(1e-9),
                t.accuracy
            );
        }
        let _ = writeln!(
            md,
            "| **all** | {} | {} | {:.2} | **{:.1}** | |\n\nPrompt preparation (read, few-shot, tokenize): {:.2} s.",
            self.tasks.iter().map(|t| t.examples).sum::<usize>(),
            self.tasks.iter().map(|t| t.sequences).sum::<usize>(),
            self.tasks.iter().map(|t| t.seconds).sum::<f64>(),
            self.examples_per_second(),
            self.prepare_seconds
        );
        md
    }
}

/// Times the evaluation of already-prepared tasks.
pub fn measure<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    tasks: &[PreparedTask],
    device: &B::Device,
) -> Result<IclBench, IclError> {
    let opts = EvalOptions::for_tokenizer(tok);
    let mut timings = Vec::with_capacity(tasks.len());
    for t in tasks {
        let start = Instant::now();
        let r = evaluate_task(model, tok, t, &opts, device)?;
        let sequences = t
            .encoded
            .iter()
            .map(|e| match e {
                super::EncodedExample::Choices { sequences, .. } => sequences.len(),
                _ => 1,
            })
            .sum();
        timings.push(TaskTiming {
            label: t.label.clone(),
            examples: r.n_examples,
            sequences,
            seconds: start.elapsed().as_secs_f64(),
            accuracy: r.accuracy,
        });
    }
    Ok(IclBench {
        tasks: timings,
        prepare_seconds: 0.0,
    })
}

/// The benchmark tasks from the shared fixtures folder (`fixtures` holds `icl/` and
/// `tokenizer/`), with `tasks_v0.3.yaml`'s definitions pointed at the local files.
pub fn fixture_tasks(
    fixtures: &Path,
    tok: &Tokenizer,
    batch_size: usize,
) -> Result<Vec<PreparedTask>, IclError> {
    let icl = fixtures.join("icl");
    let defs = load_task_file(&icl.join("yamls").join("tasks_v0.3.yaml"))?;
    let wanted = [
        ("lambada_openai", "lambada_openai.jsonl"),
        ("piqa", "piqa.jsonl"),
        ("winograd", "winograd_wsc.jsonl"),
        ("triviaqa_sm_sub", "triviaqa_sm_sub.jsonl"),
    ];
    let defaults = TaskDefaults {
        max_seq_len: 512,
        batch_size,
    };
    let mut tasks = Vec::new();
    for (label, file) in wanted {
        let mut cfg = defs
            .iter()
            .find(|d| d.label == label)
            .cloned()
            .ok_or_else(|| IclError::Config {
                origin: icl.join("yamls").join("tasks_v0.3.yaml"),
                context: label.into(),
                message: "task missing from the file".into(),
            })?;
        cfg.dataset_uri = icl.join(file).to_string_lossy().into_owned();
        tasks.extend(prepare_task(&cfg, tok, &defaults, &[])?);
    }
    Ok(tasks)
}

/// Loads the fixture model and tokenizer and measures ICL throughput on them.
pub fn bench_fixture<B: Backend>(
    fixtures: &Path,
    batch_size: usize,
    device: &B::Device,
) -> Result<IclBench, IclError> {
    let (_, model) =
        tessera_model::hf::load::<B>(fixtures.join("icl_model"), device).map_err(|e| {
            IclError::Model(format!(
                "loading {}: {e}",
                fixtures.join("icl_model").display()
            ))
        })?;
    let tok_path = fixtures
        .join("tokenizer")
        .join("gpt-neox-20b")
        .join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path).map_err(|e| IclError::Tokenizer {
        what: tok_path.display().to_string(),
        message: e.to_string(),
    })?;
    let start = Instant::now();
    let tasks = fixture_tasks(fixtures, &tok, batch_size)?;
    let prepare_seconds = start.elapsed().as_secs_f64();
    let mut bench = measure(&model, &tok, &tasks, device)?;
    bench.prepare_seconds = prepare_seconds;
    Ok(bench)
}
