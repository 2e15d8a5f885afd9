//! Shared by the ICL cross-check tests: llm-foundry's reference results and prompts
//! (`icl/reference_results.json`, `icl/reference_prompts.jsonl`) and the task settings they
//! were produced with.

#![allow(dead_code)]

use std::collections::HashMap;

use serde_json::Value;
use tessera_data::tokenizer::Tokenizer;
use tessera_eval::icl::{IclTaskConfig, IclTaskType, PreparedTask, TaskDefaults, prepare_task};

/// The parsed reference results file.
pub fn reference_results() -> Value {
    let p = tessera_testkit::shared_fixture("icl/reference_results.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("reference_results.json is JSON")
}

/// `(task label, index) -> prompt record`.
pub fn reference_prompts() -> HashMap<(String, usize), Value> {
    let p = tessera_testkit::shared_fixture("icl/reference_prompts.jsonl");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("prompt line is JSON");
            (
                (
                    v["task"].as_str().unwrap().to_string(),
                    v["index"].as_u64().unwrap() as usize,
                ),
                v,
            )
        })
        .collect()
}

pub fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(tessera_testkit::shared_fixture(
        "tokenizer/gpt-neox-20b/tokenizer.json",
    ))
    .expect("gpt-neox tokenizer loads")
}

fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v}"))
        .to_string()
}

/// The task config a reference task ran with (its `effective_settings`).
pub fn task_config(t: &Value) -> IclTaskConfig {
    let s = &t["effective_settings"];
    let ty: IclTaskType = serde_json::from_value(t["icl_task_type"].clone()).unwrap();
    let file = tessera_testkit::shared_fixture(format!("icl/{}", str_of(&t["file"])));
    let mut c = IclTaskConfig::new(
        &str_of(&t["task"]),
        &file.to_string_lossy(),
        ty,
        vec![t["num_fewshot"].as_u64().unwrap() as usize],
    );
    c.prompt_string = str_of(&s["prompt_string"]);
    c.example_delimiter = str_of(&s["example_delimiter"]);
    c.continuation_delimiter = str_of(&s["continuation_delimiter"]);
    c.prelimiter = str_of(&s["prelimiter"]);
    c.fewshot_random_seed = s["fewshot_random_seed"].as_i64().unwrap();
    c.max_seq_len = Some(s["max_seq_len"].as_u64().unwrap() as usize);
    c.batch_size = Some(s["batch_size"].as_u64().unwrap() as usize);
    c.strip_dataset = s["strip_dataset"].as_bool().unwrap();
    if ty == IclTaskType::GenerationTaskWithAnswers {
        c.cot_delimiter = str_of(&s["cot_delimiter"]);
        c.do_normalization = s["do_normalization"].as_bool().unwrap();
        c.early_stopping_criteria = match &s["early_stopping_criteria"] {
            Value::Array(a) => a.iter().map(str_of).collect(),
            _ => vec![],
        };
    }
    c
}

/// Prepares a reference task; exactly one evaluator (no categories in these files).
pub fn prepare(t: &Value, tok: &Tokenizer) -> PreparedTask {
    let cfg = task_config(t);
    let defaults = TaskDefaults {
        max_seq_len: 2048,
        batch_size: 4,
    };
    let mut tasks =
        prepare_task(&cfg, tok, &defaults, &[]).unwrap_or_else(|e| panic!("{}: {e}", t["label"]));
    assert_eq!(tasks.len(), 1);
    let task = tasks.remove(0);
    assert_eq!(task.label, str_of(&t["label"]));
    task
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, found {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    usizes(v).into_iter().map(|x| x as u32).collect()
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(str_of).collect()
}

/// Collects mismatch descriptions, printing the first few.
#[derive(Default)]
pub struct Mismatches {
    pub list: Vec<String>,
}

impl Mismatches {
    pub fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: impl FnOnce() -> String,
        got: T,
        want: T,
    ) {
        if got != want {
            self.list
                .push(format!("{}: got {got:?}, want {want:?}", what()));
        }
    }

    pub fn assert_none(&self) {
        if !self.list.is_empty() {
            let head: Vec<&String> = self.list.iter().take(20).collect();
            panic!(
                "{} mismatches, first ones:\n{}",
                self.list.len(),
                head.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}
