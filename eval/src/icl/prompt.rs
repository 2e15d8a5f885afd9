//! Prompt construction, exactly as llm-foundry's ICL datasets build them
//! (`InContextLearningDataset._prep_example` and its subclasses, llm-foundry 0.22.0).
//!
//! Strings:
//! - preamble = `prompt_string` + one block per few-shot example. LM / MC / generation blocks
//!   are `[example_delimiter if preamble so far non-empty] + prelimiter + context +
//!   continuation_delimiter + answer` (no space added before the answer); schema blocks are
//!   `prelimiter + [example_delimiter if non-empty] + context_options[gold] +
//!   continuation_delimiter + continuation`.
//! - test context (LM / MC / generation): `[example_delimiter if preamble non-empty] +
//!   prelimiter + context + continuation_delimiter`, right-stripped when `strip_dataset` (so a
//!   `"\nAnswer: "` delimiter ends the prompt as `"\nAnswer:"`). Schema: one context per
//!   option, `prelimiter + example_delimiter + option + continuation_delimiter.rstrip()` after a
//!   non-empty preamble, else `prelimiter + option`.
//!
//! Tokens: `tok(preamble) + tok(context)`, two separate encodes (BPE never merges across the
//! boundary). Continuations are encoded alone with a leading space added when the tokenizer
//! needs one (`tok(" a")` is one token) and the text does not already start with a space.
//! When context + continuation exceed the padding size, the context is cut from the left.

use tessera_data::tokenizer::Tokenizer;

use super::IclError;
use super::dataset::{IclDataset, IclExample};
use super::fewshot::fewshot_indices_for_dataset;
use super::pytext::py_rstrip;

/// The formatting settings of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptFormat {
    /// Text placed once before the few-shot examples.
    pub prompt_string: String,
    /// Placed before each example when the preamble so far is not empty.
    pub example_delimiter: String,
    /// Between context and answer.
    pub continuation_delimiter: String,
    /// Before each context.
    pub prelimiter: String,
    /// Generation with chain of thought: placed between the thought and the answer.
    pub cot_delimiter: String,
    /// `strip_dataset`: also right-strips test contexts (and schema's delimiter).
    pub strip: bool,
}

impl Default for PromptFormat {
    fn default() -> Self {
        Self {
            prompt_string: String::new(),
            example_delimiter: "\n".into(),
            continuation_delimiter: " ".into(),
            prelimiter: String::new(),
            cot_delimiter: String::new(),
            strip: true,
        }
    }
}

/// The test part of a prompt: one context, or one per option for schema tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptContext {
    /// Language modeling, multiple choice and generation.
    Single(String),
    /// Schema: one context per option, in option order.
    PerOption(Vec<String>),
}

/// The strings llm-foundry tokenizes for one example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptText {
    /// `prompt_string` plus the few-shot block.
    pub preamble: String,
    /// The test context(s), before the right-strip applied at tokenization.
    pub context: PromptContext,
    /// The few-shot examples, in prompt order.
    pub fewshot_idxs: Vec<usize>,
}

/// The answer text of an example when it appears as a few-shot demonstration.
fn in_context_answer(ex: &IclExample, fmt: &PromptFormat) -> String {
    match ex {
        IclExample::LanguageModeling { continuation, .. } => continuation.clone(),
        IclExample::MultipleChoice { choices, gold, .. } => choices[*gold].clone(),
        IclExample::Schema { continuation, .. } => continuation.clone(),
        IclExample::Generation {
            answer,
            chain_of_thought: Some(cot),
            ..
        } => {
            format!("{cot}{}{answer}", fmt.cot_delimiter)
        }
        IclExample::Generation { answer, .. } => answer.clone(),
    }
}

fn context_text(ex: &IclExample) -> &str {
    match ex {
        IclExample::LanguageModeling { context, .. } | IclExample::Generation { context, .. } => {
            context
        }
        IclExample::MultipleChoice { query, .. } => query,
        IclExample::Schema {
            context_options,
            gold,
            ..
        } => &context_options[*gold],
    }
}

/// One few-shot block (`construct_context(..., add_answer=True)`).
fn fewshot_block(ex: &IclExample, preceding: &str, fmt: &PromptFormat) -> String {
    let delim = if preceding.is_empty() {
        ""
    } else {
        fmt.example_delimiter.as_str()
    };
    let answer = in_context_answer(ex, fmt);
    match ex {
        IclExample::Schema { .. } => format!(
            "{}{delim}{}{}{answer}",
            fmt.prelimiter,
            context_text(ex),
            fmt.continuation_delimiter
        ),
        _ => format!(
            "{delim}{}{}{}{answer}",
            fmt.prelimiter,
            context_text(ex),
            fmt.continuation_delimiter
        ),
    }
}

/// The test context(s) of `ex` after `preamble`.
fn test_context(ex: &IclExample, preamble: &str, fmt: &PromptFormat) -> PromptContext {
    match ex {
        IclExample::Schema {
            context_options, ..
        } => {
            let opts = if preamble.is_empty() {
                context_options
                    .iter()
                    .map(|c| format!("{}{c}", fmt.prelimiter))
                    .collect()
            } else {
                let cd = if fmt.strip {
                    py_rstrip(&fmt.continuation_delimiter)
                } else {
                    fmt.continuation_delimiter.as_str()
                };
                context_options
                    .iter()
                    .map(|c| format!("{}{}{c}{cd}", fmt.prelimiter, fmt.example_delimiter))
                    .collect()
            };
            PromptContext::PerOption(opts)
        }
        _ => {
            let delim = if preamble.is_empty() {
                ""
            } else {
                fmt.example_delimiter.as_str()
            };
            PromptContext::Single(format!(
                "{delim}{}{}{}",
                fmt.prelimiter,
                context_text(ex),
                fmt.continuation_delimiter
            ))
        }
    }
}

/// Prompt strings for every example of `ds`, few-shot examples drawn with `seed` as
/// llm-foundry draws them (one generator per dataset, consumed in example order).
pub fn build_prompt_texts(
    ds: &IclDataset,
    fmt: &PromptFormat,
    num_fewshot: usize,
    seed: i64,
) -> Vec<PromptText> {
    let fewshot = fewshot_indices_for_dataset(ds.examples.len(), num_fewshot, seed);
    ds.examples
        .iter()
        .zip(fewshot)
        .map(|(ex, idxs)| {
            let mut preamble = fmt.prompt_string.clone();
            for &j in &idxs {
                let block = fewshot_block(&ds.examples[j], &preamble, fmt);
                preamble.push_str(&block);
            }
            let context = test_context(ex, &preamble, fmt);
            PromptText {
                preamble,
                context,
                fewshot_idxs: idxs,
            }
        })
        .collect()
}

/// A context + continuation token sequence scored by one forward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoredSequence {
    /// Context (after left truncation) followed by the continuation.
    pub tokens: Vec<u32>,
    /// Number of context tokens = position of the first continuation token.
    pub context_len: usize,
    /// Context tokens cut from the left to fit the padding size.
    pub truncated: usize,
}

impl ScoredSequence {
    /// The continuation tokens.
    pub fn continuation(&self) -> &[u32] {
        &self.tokens[self.context_len..]
    }
}

/// The model inputs for one example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodedExample {
    /// Context and continuation as one sequence.
    LanguageModeling(ScoredSequence),
    /// Multiple choice and schema: one sequence per choice.
    Choices {
        /// One sequence per choice, in choice order.
        sequences: Vec<ScoredSequence>,
        /// Index of the correct choice.
        gold: usize,
    },
    /// A prompt to generate from and the answers that count as correct.
    Generation {
        /// Prompt tokens after left truncation to the padding size
        /// (`max_seq_len - max_answer_length`).
        prompt: Vec<u32>,
        /// Prompt tokens cut from the left.
        truncated: usize,
        /// The accepted answers ([`IclExample::labels`]).
        labels: Vec<String>,
    },
}

/// Turns prompt strings into tokens with llm-foundry's rules.
pub struct PromptEncoder<'a> {
    tok: &'a Tokenizer,
    /// Whether continuations get a leading space (`tok(" a")` is a single token).
    pub prefix_space: bool,
    eos: Option<u32>,
}

fn tok_err(what: &str) -> impl Fn(tessera_data::tokenizer::TokenizerError) -> IclError + '_ {
    move |e| IclError::Tokenizer {
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl<'a> PromptEncoder<'a> {
    /// Probes the tokenizer for the prefix-space rule (`tokenizer_needs_prefix_space`).
    pub fn new(tok: &'a Tokenizer) -> Result<Self, IclError> {
        let prefix_space = tok.encode(" a").map_err(tok_err("\" a\""))?.len() == 1;
        Ok(Self {
            tok,
            prefix_space,
            eos: tok.eos_id(),
        })
    }

    /// Encodes `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, IclError> {
        self.tok.encode(text).map_err(tok_err(text))
    }

    /// The preamble's tokens; a trailing EOS is dropped when there are others
    /// (`_fix_eos_on_preamble`).
    fn preamble(&self, text: &str) -> Result<Vec<u32>, IclError> {
        let mut ids = self.encode(text)?;
        if ids.len() > 1 && self.eos.is_some() && ids.last().copied() == self.eos {
            ids.pop();
        }
        Ok(ids)
    }

    /// The continuation's tokens with the leading-space rule.
    pub fn continuation(&self, text: &str) -> Result<Vec<u32>, IclError> {
        if self.prefix_space && !text.starts_with(' ') {
            self.encode(&format!(" {text}"))
        } else {
            self.encode(text)
        }
    }

    /// Longest tokenized answer (any label, with its chain of thought when the file has one),
    /// plus 10 tokens of slack when a `cot_delimiter` is set (`_get_max_answer_length`).
    pub fn max_answer_length(
        &self,
        ds: &IclDataset,
        fmt: &PromptFormat,
    ) -> Result<usize, IclError> {
        let mut longest = 0;
        for ex in &ds.examples {
            let cot = match ex {
                IclExample::Generation {
                    chain_of_thought: Some(c),
                    ..
                } => Some(c.as_str()),
                _ => None,
            };
            for label in ex.labels() {
                let response = match cot {
                    Some(c) => format!("{c}{}{label}", fmt.cot_delimiter),
                    None => label,
                };
                longest = longest.max(self.encode(&response)?.len());
            }
        }
        Ok(longest + if fmt.cot_delimiter.is_empty() { 0 } else { 10 })
    }

    /// Encodes one example. `padding_size` is `max_seq_len` for scored tasks and
    /// `max_seq_len - max_new_tokens` for generation; `what` names the example in errors.
    pub fn encode_example(
        &self,
        ex: &IclExample,
        prompt: &PromptText,
        fmt: &PromptFormat,
        padding_size: usize,
        what: &str,
    ) -> Result<EncodedExample, IclError> {
        let pre = self.preamble(&prompt.preamble)?;
        let join = |ctx: &str| -> Result<Vec<u32>, IclError> {
            let ctx = if fmt.strip { py_rstrip(ctx) } else { ctx };
            let mut ids = pre.clone();
            ids.extend(self.encode(ctx)?);
            Ok(ids)
        };
        let scored = |ctx: Vec<u32>, cont: Vec<u32>| trim(ctx, cont, padding_size, what);
        Ok(match (ex, &prompt.context) {
            (IclExample::LanguageModeling { continuation, .. }, PromptContext::Single(c)) => {
                EncodedExample::LanguageModeling(scored(
                    join(c)?,
                    self.continuation(continuation)?,
                )?)
            }
            (IclExample::MultipleChoice { choices, gold, .. }, PromptContext::Single(c)) => {
                let ctx = join(c)?;
                let sequences = choices
                    .iter()
                    .map(|ch| scored(ctx.clone(), self.continuation(ch)?))
                    .collect::<Result<_, _>>()?;
                EncodedExample::Choices {
                    sequences,
                    gold: *gold,
                }
            }
            (
                IclExample::Schema {
                    continuation, gold, ..
                },
                PromptContext::PerOption(opts),
            ) => {
                let cont = self.continuation(continuation)?;
                // Schema contexts are not right-stripped (llm-foundry encodes them as built).
                let sequences = opts
                    .iter()
                    .map(|o| {
                        let mut ids = pre.clone();
                        ids.extend(self.encode(o)?);
                        scored(ids, cont.clone())
                    })
                    .collect::<Result<_, _>>()?;
                EncodedExample::Choices {
                    sequences,
                    gold: *gold,
                }
            }
            (IclExample::Generation { .. }, PromptContext::Single(c)) => {
                let ctx = join(c)?;
                let keep = ctx.len().min(padding_size);
                if keep == 0 {
                    return Err(IclError::Prompt {
                        what: what.to_string(),
                        message: format!("no room for a prompt: padding size is {padding_size}"),
                    });
                }
                let truncated = ctx.len() - keep;
                EncodedExample::Generation {
                    prompt: ctx[truncated..].to_vec(),
                    truncated,
                    labels: ex.labels(),
                }
            }
            _ => {
                return Err(IclError::Prompt {
                    what: what.to_string(),
                    message: "prompt shape does not match the example's task type".into(),
                });
            }
        })
    }
}

/// `trim_context`: keeps the last `padding_size - len(cont)` context tokens when the pair is
/// too long. A continuation that leaves no context token is an error (llm-foundry would fail
/// later, or index position -1).
fn trim(
    ctx: Vec<u32>,
    cont: Vec<u32>,
    padding_size: usize,
    what: &str,
) -> Result<ScoredSequence, IclError> {
    if cont.is_empty() {
        return Err(IclError::Prompt {
            what: what.into(),
            message: "the continuation encodes to no tokens".into(),
        });
    }
    let room = padding_size.saturating_sub(cont.len());
    if room == 0 || ctx.is_empty() {
        return Err(IclError::Prompt {
            what: what.into(),
            message: format!(
                "continuation of {} tokens leaves no context within {padding_size} tokens",
                cont.len()
            ),
        });
    }
    let truncated = ctx.len().saturating_sub(room);
    let mut tokens = ctx[truncated..].to_vec();
    let context_len = tokens.len();
    tokens.extend(cont);
    Ok(ScoredSequence {
        tokens,
        context_len,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn ds(examples: Vec<IclExample>) -> IclDataset {
        let n = examples.len();
        IclDataset {
            path: PathBuf::from("t"),
            category: None,
            examples,
            lines: (0..n).collect(),
            has_cot: false,
        }
    }

    fn lm(c: &str, k: &str) -> IclExample {
        IclExample::LanguageModeling {
            context: c.into(),
            continuation: k.into(),
        }
    }

    #[test]
    fn lm_blocks_use_delimiters_and_no_answer_space() {
        let d = ds(vec![lm("a", "1"), lm("b", "2")]);
        let fmt = PromptFormat {
            continuation_delimiter: " = ".into(),
            prompt_string: "P:".into(),
            ..Default::default()
        };
        let p = build_prompt_texts(&d, &fmt, 1, 1234);
        assert_eq!(p[0].fewshot_idxs, vec![1]);
        assert_eq!(p[0].preamble, "P:\nb = 2");
        assert_eq!(p[0].context, PromptContext::Single("\na = ".into()));
    }

    #[test]
    fn zero_shot_context_has_no_leading_delimiter() {
        let d = ds(vec![lm("a", "1")]);
        let p = build_prompt_texts(&d, &PromptFormat::default(), 0, 1234);
        assert_eq!(p[0].preamble, "");
        assert_eq!(p[0].context, PromptContext::Single("a ".into()));
    }

    #[test]
    fn schema_contexts_put_prelimiter_before_the_delimiter() {
        let sch = |g| IclExample::Schema {
            context_options: vec!["X1".into(), "X2".into()],
            continuation: "end".into(),
            gold: g,
        };
        let d = ds(vec![sch(0), sch(1)]);
        let fmt = PromptFormat {
            prelimiter: "> ".into(),
            continuation_delimiter: " | ".into(),
            ..Default::default()
        };
        let p = build_prompt_texts(&d, &fmt, 1, 1234);
        assert_eq!(p[0].preamble, "> X2 | end");
        assert_eq!(
            p[0].context,
            PromptContext::PerOption(vec!["> \nX1 |".into(), "> \nX2 |".into()])
        );
        let zero = build_prompt_texts(&d, &fmt, 0, 1234);
        assert_eq!(
            zero[0].context,
            PromptContext::PerOption(vec!["> X1".into(), "> X2".into()])
        );
    }

    #[test]
    fn generation_fewshot_answer_includes_chain_of_thought() {
        let g = |c: &str, a: &str| IclExample::Generation {
            context: c.into(),
            answer: a.into(),
            aliases: vec![],
            chain_of_thought: Some(format!("because {a}")),
        };
        let d = ds(vec![g("q1", "1"), g("q2", "2")]);
        let fmt = PromptFormat {
            cot_delimiter: " so ".into(),
            ..Default::default()
        };
        let p = build_prompt_texts(&d, &fmt, 1, 1234);
        assert_eq!(p[0].preamble, "q2 because 2 so 2");
    }

    #[test]
    fn truncation_keeps_the_rightmost_context() {
        let s = trim(vec![1, 2, 3, 4, 5], vec![9, 9], 5, "x").unwrap();
        assert_eq!(s.tokens, vec![3, 4, 5, 9, 9]);
        assert_eq!((s.context_len, s.truncated), (3, 2));
        assert_eq!(s.continuation(), &[9, 9]);
        let fits = trim(vec![1, 2], vec![9], 5, "x").unwrap();
        assert_eq!((fits.context_len, fits.truncated), (2, 0));
        assert!(trim(vec![1], vec![9, 9], 2, "x").is_err());
    }
}
