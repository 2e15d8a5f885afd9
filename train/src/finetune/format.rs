//! Rows to token sequences with loss targets, as llm-foundry's finetuning path builds them
//! (`tasks.py`: `_slice_chat_formatted_example`, `_tokenize_with_bos_removal`,
//! `is_valid_ift_example`; `collator.py`: `stitch_turns_decoder_only` and the truncation in
//! `_process_and_batch_decoder_only`).
//!
//! - Each turn's prompt and response are tokenized separately. Prompt/response rows take the
//!   tokenizer's own special tokens (Hugging Face's `add_special_tokens=True` default), and a BOS
//!   that both sides start with is removed from the response; chat turns take none (the
//!   template writes them).
//! - The last turn's response ends with EOS (appended unless it already ends with it).
//! - Labels (the unshifted targets, as Hugging Face writes them) are the tokens where the policy
//!   says so and [`IGNORE`] elsewhere: `target_prompts` `none` (default), `all` or `length>=N`;
//!   `target_responses` `last` (default) or `all`.
//! - **Truncation**: the stitched sequence keeps its first `max_seq_len` tokens, so a long
//!   response loses its end and a prompt of `max_seq_len` tokens or more leaves no response.
//!   An example is **dropped** (and counted) when a turn's prompt or response is empty, or when
//!   no target survives truncation — llm-foundry's `is_valid_ift_example` filter. tessera also
//!   drops the rare example whose only target is its first token (no position predicts it).

use tessera_data::tokenizer::{Tokenizer, TokenizerError};

use super::source::{Message, Role, Row};
use super::tokenizer::ChatTemplate;
use crate::batch::IGNORE;

/// Which prompt tokens are targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPrompts {
    /// No prompt tokens (`target_prompts: none`, the default).
    None,
    /// Every prompt token (`target_prompts: all`).
    All,
    /// Prompts of at least this many tokens.
    MinLength(usize),
}

/// Which responses are targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetResponses {
    /// Only the last response (`target_responses: last`, the default).
    Last,
    /// Every response (`target_responses: all`).
    All,
}

/// The loss policy of a loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// `target_prompts`: which prompt tokens are targets.
    pub prompts: TargetPrompts,
    /// `target_responses`: which responses are targets.
    pub responses: TargetResponses,
}

impl Targets {
    /// llm-foundry's `validate_target_settings` (values are lower-cased first, as there).
    pub fn parse(prompts: Option<&str>, responses: Option<&str>) -> Result<Self, (String, String)> {
        let p = prompts.unwrap_or("none").to_lowercase();
        let prompts = match p.as_str() {
            "none" => TargetPrompts::None,
            "all" => TargetPrompts::All,
            other => match other.strip_prefix("length>=").map(str::parse::<usize>) {
                Some(Ok(n)) if n > 0 => TargetPrompts::MinLength(n),
                _ => {
                    return Err((
                        "target_prompts".into(),
                        format!(
                            "{other:?} is not \"none\", \"all\" or \"length>=N\" with N a positive integer"
                        ),
                    ));
                }
            },
        };
        let r = responses.unwrap_or("last").to_lowercase();
        let responses = match r.as_str() {
            "last" => TargetResponses::Last,
            "all" => TargetResponses::All,
            other => {
                return Err((
                    "target_responses".into(),
                    format!("{other:?} is not \"last\" or \"all\""),
                ));
            }
        };
        Ok(Self { prompts, responses })
    }
}

/// One prompt and its response, tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// The response's token ids.
    pub response: Vec<u32>,
}

/// llm-foundry's `_DEFAULT_CHAT_TEMPLATE` (ChatML), applied when the tokenizer has no template
/// of its own: each message is `<|im_start|>{role}\n{content}<|im_end|>\n`, and the generation
/// prompt is `<|im_start|>assistant\n`.
fn chatml(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(m.role.as_str());
        s.push('\n');
        s.push_str(&m.content);
        s.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        s.push_str("<|im_start|>assistant\n");
    }
    s
}

/// `_slice_chat_formatted_example`: one (prompt, response) text per assistant message, from a
/// chat template `render(messages, add_generation_prompt)`. The prompt is everything since the
/// previous response (history included in the first turn) up to the generation prompt; the
/// response is the assistant message as the template writes it, end marker included.
///
/// As llm-foundry, the template must render each conversation as an extension of the previous
/// turn's, and the prompt with the generation prompt as a prefix of the full conversation;
/// otherwise the turns cannot be cut apart and the row is an error (as is any template error).
pub fn chat_turns(
    messages: &[Message],
    render: impl Fn(&[Message], bool) -> Result<String, String>,
) -> Result<Vec<(String, String)>, String> {
    let mut turns = Vec::new();
    let mut so_far = String::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        let full = render(&messages[..=i], false)?;
        let prompt_with_history = render(&messages[..i], true)?;
        if !full.starts_with(&so_far) {
            return Err(format!(
                "the chat template renders messages[..={i}] as {full:?}, which does not start with the conversation through the previous turn {so_far:?}"
            ));
        }
        if !prompt_with_history.starts_with(&so_far) {
            return Err(format!(
                "the chat template renders the prompt of messages[{i}] as {prompt_with_history:?}, which does not start with the conversation through the previous turn {so_far:?}"
            ));
        }
        if !full.starts_with(&prompt_with_history) {
            return Err(format!(
                "the chat template's prompt for messages[{i}] ({prompt_with_history:?}, with the generation prompt) is not the start of the conversation {full:?}"
            ));
        }
        let prompt = prompt_with_history[so_far.len()..].to_string();
        let response = full[prompt_with_history.len()..].to_string();
        so_far.push_str(&prompt);
        so_far.push_str(&response);
        turns.push((prompt, response));
    }
    Ok(turns)
}

/// Why a row's turns could not be made.
#[derive(Debug)]
pub enum TurnError {
    /// The tokenizer failed.
    Tokenize(TokenizerError),
    /// The chat template failed, or rendered turns that cannot be cut apart.
    Template(String),
}

/// Tokenizes rows the way llm-foundry's `tokenize_formatted_example` does.
pub struct Encoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Renders chat rows.
    template: &'a ChatTemplate,
    /// Whether the tokenizer's post-processor adds special tokens (a BOS, say); probed once.
    adds_specials: bool,
}

impl<'a> Encoder<'a> {
    /// An encoder for `tokenizer`, rendering chat rows with `template`.
    pub fn new(tokenizer: &'a Tokenizer, template: &'a ChatTemplate) -> Self {
        let probe = |add: bool| {
            tokenizer
                .inner()
                .encode_fast("a", add)
                .map(|e| e.get_ids().to_vec())
                .ok()
        };
        let adds_specials = probe(true) != probe(false);
        Self {
            tokenizer,
            template,
            adds_specials,
        }
    }

    /// The row's turns, tokenized.
    pub fn turns(&self, row: &Row) -> Result<Vec<Turn>, TurnError> {
        match row {
            Row::PromptResponse { prompt, response } => {
                let tokenize = |t: &str| self.with_specials(t).map_err(TurnError::Tokenize);
                let (p, mut r) = (tokenize(prompt)?, tokenize(response)?);
                // `_tokenize_with_bos_removal`: drop the response's BOS when both sides start
                // with the same special token.
                if let (Some(&a), Some(&b)) = (p.first(), r.first())
                    && a == b
                    && self.is_special(a)
                {
                    r.remove(0);
                }
                Ok(vec![Turn {
                    prompt: p,
                    response: r,
                }])
            }
            Row::Chat(messages) => {
                let turns = match self.template {
                    ChatTemplate::DefaultChatMl => chat_turns(messages, |m, g| Ok(chatml(m, g))),
                    ChatTemplate::Jinja(t) => chat_turns(messages, |m, g| t.render(m, g)),
                }
                .map_err(TurnError::Template)?;
                // No special tokens added: the template wrote them (llm-foundry's
                // `_tokenize_chat_formatted_example`).
                let encode = |t: &str| self.tokenizer.encode(t).map_err(TurnError::Tokenize);
                turns
                    .into_iter()
                    .map(|(p, r)| {
                        Ok(Turn {
                            prompt: encode(&p)?,
                            response: encode(&r)?,
                        })
                    })
                    .collect()
            }
        }
    }

    fn with_specials(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if !self.adds_specials {
            return self.tokenizer.encode(text);
        }
        let enc = self
            .tokenizer
            .inner()
            .encode_fast(text, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn is_special(&self, id: u32) -> bool {
        self.tokenizer
            .inner()
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }
}

/// `stitch_turns_decoder_only`: the concatenated tokens and their unshifted labels.
pub fn stitch(turns: &[Turn], targets: Targets, eos: Option<u32>) -> (Vec<u32>, Vec<i64>) {
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        let last = i + 1 == turns.len();
        let mut response = turn.response.clone();
        if last
            && let Some(e) = eos
            && response.last() != Some(&e)
        {
            response.push(e);
        }
        let prompt_is_target = match targets.prompts {
            TargetPrompts::None => false,
            TargetPrompts::All => true,
            TargetPrompts::MinLength(n) => turn.prompt.len() >= n,
        };
        let response_is_target = last || targets.responses == TargetResponses::All;
        for (part, is_target) in [
            (&turn.prompt, prompt_is_target),
            (&response, response_is_target),
        ] {
            ids.extend_from_slice(part);
            labels.extend(
                part.iter()
                    .map(|&t| if is_target { i64::from(t) } else { IGNORE }),
            );
        }
    }
    (ids, labels)
}

/// Why an example was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A prompt or a response tokenized to nothing.
    Empty,
    /// No target left after truncation to `max_seq_len` (the prompt filled it).
    NoTargets,
}

/// A trainable example: at most `max_seq_len` tokens and their unshifted labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The token ids.
    pub ids: Vec<u32>,
    /// One label per id: the id where it is a target, [`IGNORE`] elsewhere.
    pub labels: Vec<i64>,
    /// Tokens cut off the end by truncation.
    pub truncated: usize,
}

/// The example llm-foundry would train on, or why it would filter it out.
pub fn prepare(
    turns: &[Turn],
    targets: Targets,
    eos: Option<u32>,
    max_seq_len: usize,
) -> Result<Tokenized, Dropped> {
    if turns.is_empty()
        || turns
            .iter()
            .any(|t| t.prompt.is_empty() || t.response.is_empty())
    {
        return Err(Dropped::Empty);
    }
    // `is_valid_ift_example` stitches without the EOS.
    let (_, plain) = stitch(turns, targets, None);
    if plain.iter().take(max_seq_len).all(|&l| l == IGNORE) {
        return Err(Dropped::NoTargets);
    }
    let (mut ids, mut labels) = stitch(turns, targets, eos);
    let truncated = ids.len().saturating_sub(max_seq_len);
    ids.truncate(max_seq_len);
    labels.truncate(max_seq_len);
    // The first label is never predicted (targets are labels shifted left by one).
    if labels.iter().skip(1).all(|&l| l == IGNORE) {
        return Err(Dropped::NoTargets);
    }
    Ok(Tokenized {
        ids,
        labels,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(prompt: &[u32], response: &[u32]) -> Turn {
        Turn {
            prompt: prompt.to_vec(),
            response: response.to_vec(),
        }
    }

    const NONE_LAST: Targets = Targets {
        prompts: TargetPrompts::None,
        responses: TargetResponses::Last,
    };

    #[test]
    fn labels_cover_the_response_and_its_eos_only() {
        let (ids, labels) = stitch(&[t(&[5, 6, 7], &[8, 9])], NONE_LAST, Some(0));
        assert_eq!(ids, vec![5, 6, 7, 8, 9, 0]);
        assert_eq!(labels, vec![IGNORE, IGNORE, IGNORE, 8, 9, 0]);
        // A response already ending in EOS is not given a second one.
        let (ids, _) = stitch(&[t(&[5], &[8, 0])], NONE_LAST, Some(0));
        assert_eq!(ids, vec![5, 8, 0]);
    }

    #[test]
    fn target_policies_follow_llm_foundry() {
        let turns = [t(&[1, 2, 3], &[4]), t(&[5], &[6, 7])];
        let all_all = Targets {
            prompts: TargetPrompts::All,
            responses: TargetResponses::All,
        };
        assert_eq!(
            stitch(&turns, all_all, Some(0)).1,
            vec![1, 2, 3, 4, 5, 6, 7, 0]
        );
        let (_, last) = stitch(&turns, NONE_LAST, Some(0));
        assert_eq!(last, vec![IGNORE, IGNORE, IGNORE, IGNORE, IGNORE, 6, 7, 0]);
        let long_prompts = Targets {
            prompts: TargetPrompts::MinLength(2),
            responses: TargetResponses::Last,
        };
        assert_eq!(
            stitch(&turns, long_prompts, None).1,
            vec![1, 2, 3, IGNORE, IGNORE, 6, 7]
        );
        assert_eq!(
            Targets::parse(Some("LENGTH>=3"), Some("All"))
                .unwrap()
                .prompts,
            TargetPrompts::MinLength(3)
        );
        assert!(Targets::parse(Some("length>=0"), None).is_err());
        assert_eq!(
            Targets::parse(None, Some("first")).unwrap_err().0,
            "target_responses"
        );
    }

    #[test]
    fn truncation_keeps_the_start_and_drops_prompts_that_fill_the_window() {
        let turns = [t(&[1, 2, 3], &[4, 5, 6])];
        let ex = prepare(&turns, NONE_LAST, Some(0), 5).unwrap();
        assert_eq!(ex.ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(ex.labels, vec![IGNORE, IGNORE, IGNORE, 4, 5]);
        assert_eq!(ex.truncated, 2);
        assert_eq!(
            prepare(&turns, NONE_LAST, Some(0), 3),
            Err(Dropped::NoTargets)
        );
        // With prompts as targets the same example survives.
        let all = Targets {
            prompts: TargetPrompts::All,
            responses: TargetResponses::Last,
        };
        assert_eq!(prepare(&turns, all, Some(0), 3).unwrap().ids, vec![1, 2, 3]);
        assert_eq!(
            prepare(&[t(&[], &[4])], NONE_LAST, Some(0), 8),
            Err(Dropped::Empty)
        );
        assert_eq!(
            prepare(&[t(&[1], &[])], NONE_LAST, Some(0), 8),
            Err(Dropped::Empty)
        );
    }

    #[test]
    fn a_bos_both_sides_start_with_is_removed_from_the_response() {
        let mut json: serde_json::Value =
            serde_json::from_str(&crate::finetune::tests::tokenizer_json(&["<|bos|>"])).unwrap();
        json["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [50], "tokens": ["<|bos|>"]}}
        });
        let tok = Tokenizer::from_bytes(json.to_string().as_bytes(), "bos").unwrap();
        let row = Row::PromptResponse {
            prompt: "w2 w3".into(),
            response: "w4".into(),
        };
        let chatml = ChatTemplate::DefaultChatMl;
        assert_eq!(
            Encoder::new(&tok, &chatml).turns(&row).unwrap(),
            vec![t(&[50, 2, 3], &[4])]
        );
        // Chat turns take no special tokens: the template writes them.
        let chat = Row::Chat(vec![
            Message {
                role: Role::User,
                content: "w2".into(),
            },
            Message {
                role: Role::Assistant,
                content: "w4".into(),
            },
        ]);
        assert!(
            Encoder::new(&tok, &chatml)
                .turns(&chat)
                .unwrap()
                .iter()
                .all(|t| !t.prompt.contains(&50))
        );
        let plain = crate::finetune::tests::word_tokenizer().tokenizer;
        assert_eq!(
            Encoder::new(&plain, &chatml).turns(&row).unwrap(),
            vec![t(&[2, 3], &[4])]
        );
    }

    #[test]
    fn chat_turns_slice_the_default_template_at_each_assistant_message() {
        let m = |role, content: &str| Message {
            role,
            content: content.into(),
        };
        let msgs = [
            m(Role::System, "be nice"),
            m(Role::User, "hi"),
            m(Role::Assistant, "hello"),
            m(Role::User, "bye"),
            m(Role::Assistant, "ciao"),
        ];
        let turns = chat_turns(&msgs, |m, g| Ok(chatml(m, g))).unwrap();
        assert_eq!(
            turns,
            vec![
                (
                    "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n".to_string(),
                    "hello<|im_end|>\n".to_string()
                ),
                ("<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n".to_string(), "ciao<|im_end|>\n".to_string()),
            ]
        );
        // Concatenated, the turns are exactly the rendered conversation.
        let joined: String = turns
            .iter()
            .flat_map(|(p, r)| [p.as_str(), r.as_str()])
            .collect();
        assert_eq!(joined, chatml(&msgs, false));
    }
}
