//! Per-example and per-task ICL results. Field names follow `icl/reference_results.json`
//! (llm-foundry's own per-example values), so the two can be compared field by field.

use serde::{Deserialize, Serialize};

use super::config::IclTaskType;

/// The numbers behind one example's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExampleDetail {
    /// Language modeling: correct when every argmax equals its continuation token.
    LanguageModeling {
        /// Context tokens after truncation (= first continuation position).
        context_len: usize,
        /// The continuation's tokens.
        continuation_ids: Vec<u32>,
        /// Argmax of the logits predicting each continuation token.
        argmax_ids: Vec<u32>,
        /// Mean token cross-entropy of the continuation.
        continuation_mean_ce: f64,
        /// Smallest gap between the top two logits over the continuation positions: how
        /// close the verdict came to flipping.
        min_top2_gap: f64,
        /// Context tokens cut from the left to fit.
        truncated_tokens: usize,
    },
    /// Multiple choice and schema.
    Choices {
        /// Index of the correct choice.
        gold: usize,
        /// Index of the choice with the lowest mean CE (first on ties).
        selected: usize,
        /// Mean token cross-entropy of each choice's continuation.
        choice_mean_ce: Vec<f64>,
        /// Continuation tokens of each choice.
        choice_cont_len: Vec<usize>,
        /// Context tokens of each choice, after truncation.
        choice_context_len: Vec<usize>,
        /// Context tokens cut from the left of each choice.
        choice_truncated_tokens: Vec<usize>,
        /// Second-smallest minus smallest mean CE.
        ce_margin: f64,
    },
    /// Generation: correct when the cleaned output matches one of the labels.
    Generation {
        /// Decoded new tokens (special tokens skipped, no space clean-up).
        output: String,
        /// The answer part after stop/CoT handling and normalisation.
        cleaned_output: String,
        /// Answer and aliases, sorted.
        labels: Vec<String>,
        /// New tokens, cut after EOS.
        generated_ids: Vec<u32>,
        /// Whether generation ended with EOS rather than at `max_new_tokens`.
        stopped_at_eos: bool,
        /// Prompt tokens after truncation.
        input_len: usize,
        /// The generation budget.
        max_new_tokens: usize,
        /// Prompt tokens cut from the left to fit.
        truncated_tokens: usize,
    },
}

/// One example's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    /// Row in the (category's) dataset.
    pub index: usize,
    /// 0-based line in the file.
    pub line: usize,
    /// The verdict.
    pub correct: bool,
    /// Few-shot examples in prompt order (empty for 0-shot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fewshot_idxs: Vec<usize>,
    /// The numbers behind the verdict, flattened into the same JSON object.
    #[serde(flatten)]
    pub detail: ExampleDetail,
}

/// One evaluator's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// `"{label}/{n}-shot"` or `"{label}/{n}-shot/{category}"`.
    pub label: String,
    /// The task's YAML `label`, without shot count or category.
    pub benchmark: String,
    /// Few-shot examples per prompt.
    pub num_fewshot: usize,
    /// The category, for one part of a `has_categories` task.
    pub category: Option<String>,
    /// How the task was prompted and scored.
    pub icl_task_type: IclTaskType,
    /// llm-foundry's metric name for the task type.
    pub metric: String,
    /// Examples evaluated.
    pub n_examples: usize,
    /// Examples judged correct.
    pub n_correct: usize,
    /// `n_correct / n_examples`.
    pub accuracy: f64,
    /// Examples whose context was cut to fit.
    pub n_truncated: usize,
    /// Per-example verdicts, in dataset order.
    pub examples: Vec<ExampleResult>,
}

impl TaskResult {
    /// Builds the summary counts from per-example results.
    pub fn from_examples(
        label: String,
        benchmark: String,
        num_fewshot: usize,
        category: Option<String>,
        icl_task_type: IclTaskType,
        examples: Vec<ExampleResult>,
    ) -> Self {
        let n_examples = examples.len();
        let n_correct = examples.iter().filter(|e| e.correct).count();
        let n_truncated = examples
            .iter()
            .filter(|e| match &e.detail {
                ExampleDetail::LanguageModeling {
                    truncated_tokens, ..
                }
                | ExampleDetail::Generation {
                    truncated_tokens, ..
                } => *truncated_tokens > 0,
                ExampleDetail::Choices {
                    choice_truncated_tokens,
                    ..
                } => choice_truncated_tokens.iter().any(|&t| t > 0),
            })
            .count();
        let accuracy = if n_examples == 0 {
            0.0
        } else {
            n_correct as f64 / n_examples as f64
        };
        Self {
            label,
            benchmark,
            num_fewshot,
            category,
            icl_task_type,
            metric: icl_task_type.metric_name().to_string(),
            n_examples,
            n_correct,
            accuracy,
            n_truncated,
            examples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_json_uses_reference_field_names() {
        let e = ExampleResult {
            index: 3,
            line: 3,
            correct: true,
            fewshot_idxs: vec![],
            detail: ExampleDetail::Choices {
                gold: 1,
                selected: 1,
                choice_mean_ce: vec![2.0, 1.0],
                choice_cont_len: vec![3, 3],
                choice_context_len: vec![5, 6],
                choice_truncated_tokens: vec![0, 0],
                ce_margin: 1.0,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["selected"], 1);
        assert!(v.get("fewshot_idxs").is_none());
        let back: ExampleResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn summary_counts_correct_and_truncated_examples() {
        let ex = |correct, truncated_tokens| ExampleResult {
            index: 0,
            line: 0,
            correct,
            fewshot_idxs: vec![],
            detail: ExampleDetail::LanguageModeling {
                context_len: 1,
                continuation_ids: vec![1],
                argmax_ids: vec![1],
                continuation_mean_ce: 0.1,
                min_top2_gap: 1.0,
                truncated_tokens,
            },
        };
        let r = TaskResult::from_examples(
            "t/0-shot".into(),
            "t".into(),
            0,
            None,
            IclTaskType::LanguageModeling,
            vec![ex(true, 0), ex(false, 2), ex(true, 0), ex(false, 0)],
        );
        assert_eq!((r.n_correct, r.n_truncated), (2, 1));
        assert_eq!(r.accuracy, 0.5);
        assert_eq!(r.metric, "InContextLearningLMAccuracy");
    }
}
