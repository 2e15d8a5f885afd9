//! Running a prepared task through a model and applying llm-foundry's metric to each example.
//!
//! - language_modeling (`InContextLearningLMAccuracy`): correct iff every continuation token
//!   is the argmax of the logits before it.
//! - multiple_choice / schema (`InContextLearningMultipleChoiceAccuracy`): the choice with the
//!   lowest `exp(mean token cross-entropy)` (float32, first index on ties) is selected; correct
//!   iff it is gold.
//! - generation_task_with_answers (`InContextLearningGenerationExactMatchAccuracy`): greedy
//!   decoding, EOS and stop sequences end a row; correct iff the cleaned output starts with a
//!   cleaned label.

use burn::prelude::*;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::{GenerationConfig, Mpt, generate};

use super::IclError;
use super::config::IclTaskType;
use super::decide::{ce_margin, lm_correct, select_lowest_perplexity};
use super::normalize::contains_stop;
use super::prompt::{EncodedExample, ScoredSequence};
use super::results::{ExampleDetail, ExampleResult, TaskResult};
use super::score::{ScoreOptions, score_sequences};
use super::task::PreparedTask;

/// Run-wide knobs of ICL evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Padding token id (llm-foundry: the tokenizer's pad token, else EOS).
    pub pad_id: u32,
    /// End-of-sequence id that stops a generation.
    pub eos_id: u32,
}

impl EvalOptions {
    /// llm-foundry's choice: pad with the tokenizer's EOS (MPT's gpt-neox tokenizer has no pad
    /// token), id 0 when the tokenizer names none.
    pub fn for_tokenizer(tok: &Tokenizer) -> Self {
        let eos = tok.eos_id().unwrap_or(0);
        Self {
            pad_id: eos,
            eos_id: eos,
        }
    }
}

/// Evaluates one prepared task.
pub fn evaluate_task<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    task: &PreparedTask,
    opts: &EvalOptions,
    device: &B::Device,
) -> Result<TaskResult, IclError> {
    let score_opts = ScoreOptions {
        batch_size: task.batch_size,
        pad_id: opts.pad_id,
        argmax: task.task_type == IclTaskType::LanguageModeling,
    };
    let details = match task.task_type {
        IclTaskType::LanguageModeling => {
            let seqs: Vec<&ScoredSequence> = task
                .encoded
                .iter()
                .map(|e| match e {
                    EncodedExample::LanguageModeling(s) => Ok(s),
                    _ => Err(mismatch(task)),
                })
                .collect::<Result<_, _>>()?;
            let scores = score_sequences(model, &seqs, &score_opts, device)?;
            seqs.iter()
                .zip(scores)
                .map(|(s, sc)| {
                    let correct = lm_correct(&sc.argmax, s.continuation());
                    let detail = ExampleDetail::LanguageModeling {
                        context_len: s.context_len,
                        continuation_ids: s.continuation().to_vec(),
                        argmax_ids: sc.argmax.clone(),
                        continuation_mean_ce: sc.mean_ce(),
                        min_top2_gap: sc.min_top2_gap,
                        truncated_tokens: s.truncated,
                    };
                    (correct, detail)
                })
                .collect::<Vec<_>>()
        }
        IclTaskType::MultipleChoice | IclTaskType::Schema => {
            let mut flat: Vec<&ScoredSequence> = Vec::new();
            for e in &task.encoded {
                match e {
                    EncodedExample::Choices { sequences, .. } => flat.extend(sequences),
                    _ => return Err(mismatch(task)),
                }
            }
            let mut scores = score_sequences(model, &flat, &score_opts, device)?.into_iter();
            let mut out = Vec::with_capacity(task.encoded.len());
            for e in &task.encoded {
                let EncodedExample::Choices { sequences, gold } = e else {
                    return Err(mismatch(task));
                };
                let ces: Vec<f64> = scores
                    .by_ref()
                    .take(sequences.len())
                    .map(|s| s.mean_ce())
                    .collect();
                let selected = select_lowest_perplexity(&ces);
                let ce_margin = ce_margin(&ces);
                out.push((
                    selected == *gold,
                    ExampleDetail::Choices {
                        gold: *gold,
                        selected,
                        choice_mean_ce: ces,
                        choice_cont_len: sequences.iter().map(|s| s.continuation().len()).collect(),
                        choice_context_len: sequences.iter().map(|s| s.context_len).collect(),
                        choice_truncated_tokens: sequences.iter().map(|s| s.truncated).collect(),
                        ce_margin,
                    },
                ));
            }
            out
        }
        IclTaskType::GenerationTaskWithAnswers => generate_answers(model, tok, task, opts, device)?,
        IclTaskType::CodeEvaluation => return Err(mismatch(task)),
    };
    let examples = details
        .into_iter()
        .enumerate()
        .map(|(i, (correct, detail))| ExampleResult {
            index: i,
            line: task.dataset.lines[i],
            correct,
            fewshot_idxs: task.prompts[i].fewshot_idxs.clone(),
            detail,
        })
        .collect();
    Ok(TaskResult::from_examples(
        task.label.clone(),
        task.benchmark.clone(),
        task.num_fewshot,
        task.category.clone(),
        task.task_type,
        examples,
    ))
}

fn mismatch(task: &PreparedTask) -> IclError {
    IclError::Prompt {
        what: task.label.clone(),
        message: "encoded examples do not match the task type".into(),
    }
}

/// Greedy generation for every example of a generation task, then answer scoring.
fn generate_answers<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    task: &PreparedTask,
    opts: &EvalOptions,
    device: &B::Device,
) -> Result<Vec<(bool, ExampleDetail)>, IclError> {
    let settings = task.generation.as_ref().ok_or_else(|| mismatch(task))?;
    let mut prompts: Vec<(&Vec<u32>, usize, &Vec<String>)> = Vec::with_capacity(task.encoded.len());
    for e in &task.encoded {
        match e {
            EncodedExample::Generation {
                prompt,
                truncated,
                labels,
            } => prompts.push((prompt, *truncated, labels)),
            _ => return Err(mismatch(task)),
        }
    }
    let cfg = GenerationConfig {
        max_new_tokens: settings.max_new_tokens,
        temperature: 0.0,
        top_k: None,
        top_p: None,
        seed: 0,
        eos_ids: vec![opts.eos_id],
        use_cache: true,
        pad_id: opts.pad_id,
    };
    let max_seq_len = model.config().max_seq_len;
    if let Some((p, _, _)) = prompts
        .iter()
        .find(|(p, _, _)| p.len() + settings.max_new_tokens > max_seq_len)
    {
        return Err(IclError::Model(format!(
            "{}: a prompt of {} tokens plus {} new tokens exceeds the model's max_seq_len \
             {max_seq_len}; lower the task's max_seq_len",
            task.label,
            p.len(),
            settings.max_new_tokens
        )));
    }
    let stops = &settings.scoring.stop_sequences;
    // Similar lengths share a left-padded batch.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].0.len()));
    let mut generated: Vec<Option<Vec<u32>>> = vec![None; prompts.len()];
    for chunk in order.chunks(task.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].0.clone()).collect();
        let stop_fn = |_row: usize, new_ids: &[u32]| -> bool {
            !stops.is_empty()
                && tok
                    .decode(new_ids, true)
                    .is_ok_and(|t| contains_stop(&t, stops))
        };
        let stop: Option<tessera_model::generate::StopFn<'_>> = if stops.is_empty() {
            None
        } else {
            Some(&stop_fn)
        };
        let gens = generate(model, &batch, &cfg, stop, device)
            .map_err(|e| IclError::Model(format!("{}: {e}", task.label)))?;
        if gens.len() != chunk.len() {
            return Err(IclError::Model(format!(
                "generate returned {} rows for {}",
                gens.len(),
                chunk.len()
            )));
        }
        for (&i, g) in chunk.iter().zip(gens) {
            generated[i] = Some(g.ids);
        }
    }
    prompts
        .iter()
        .zip(generated)
        .map(|((prompt, truncated, labels), ids)| {
            let mut ids = ids.unwrap_or_default();
            let stopped_at_eos = match ids.iter().position(|&t| t == opts.eos_id) {
                Some(p) => {
                    ids.truncate(p + 1);
                    true
                }
                None => false,
            };
            let output = tok.decode(&ids, true).map_err(|e| IclError::Tokenizer {
                what: format!("generated ids {ids:?}"),
                message: e.to_string(),
            })?;
            let verdict = settings.scoring.score(&output, labels);
            Ok((
                verdict.correct,
                ExampleDetail::Generation {
                    output,
                    cleaned_output: verdict.cleaned_output,
                    labels: (*labels).clone(),
                    generated_ids: ids,
                    stopped_at_eos,
                    input_len: prompt.len(),
                    max_new_tokens: settings.max_new_tokens,
                    truncated_tokens: *truncated,
                },
            ))
        })
        .collect()
}

/// Evaluates every prepared task in order; `on_done` sees each result as it completes (for
/// progress output).
pub fn evaluate_tasks<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    tasks: &[PreparedTask],
    opts: &EvalOptions,
    device: &B::Device,
    mut on_done: impl FnMut(&TaskResult),
) -> Result<Vec<TaskResult>, IclError> {
    tasks
        .iter()
        .map(|t| {
            let r = evaluate_task(model, tok, t, opts, device)?;
            on_done(&r);
            Ok(r)
        })
        .collect()
}
