//! `POST /v1/completions`: the legacy text-completion request and its responses, whole and
//! streamed, with OpenAI's field names.
//!
//! Unknown fields are refused (OpenAI answers "Unrecognized request argument supplied"), and
//! numbers are read wide (`i64`, `f64`) so that an out-of-range value gets a message naming
//! its limit rather than a type error. [`crate::validation`] turns this into engine work.

use serde::{Deserialize, Serialize};

use super::Usage;

/// The request body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// A served model or adapter name (`GET /v1/models`).
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of lists of token ids.
    pub prompt: serde_json::Value,
    /// New tokens per choice (OpenAI's default: 16).
    pub max_tokens: Option<i64>,
    /// 0 is greedy; at most 2.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: Option<f64>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Send server-sent events as tokens are generated.
    pub stream: Option<bool>,
    /// `{"include_usage": true}`: a last chunk with the token counts.
    pub stream_options: Option<super::StreamOptions>,
    /// Up to 4 strings; generation stops before the first one the text contains.
    pub stop: Option<serde_json::Value>,
    /// Makes sampling reproducible.
    pub seed: Option<i64>,
    /// Log-probabilities of the chosen token and of the `logprobs` most likely ones (0 to 5).
    pub logprobs: Option<i64>,
    /// Must be false: tessera does not echo the prompt.
    pub echo: Option<bool>,
    /// Must be absent or equal to `n`: tessera does not rank extra samples.
    pub best_of: Option<i64>,
    /// Must be 0: penalties are not implemented.
    pub frequency_penalty: Option<f64>,
    /// Must be 0: penalties are not implemented.
    pub presence_penalty: Option<f64>,
    /// Must be empty: logit biases are not implemented.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Must be absent: insertion (fill-in-the-middle) is not implemented.
    pub suffix: Option<String>,
    /// A caller's id for its own end users; accepted and ignored.
    pub user: Option<String>,
}

/// A whole completion response (`stream: false`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The requested model name.
    pub model: String,
    /// One per prompt and `n`, ordered by `index` (prompt-major).
    pub choices: Vec<CompletionChoice>,
    /// Token counts; absent only on stream chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice, or its increment in a stream chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// The generated text (in a chunk: the new text only).
    pub text: String,
    /// `prompt_index * n + i`.
    pub index: usize,
    /// Present when the request asked for `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` (EOS or a stop string) or `length`; `null` in chunks before the last.
    pub finish_reason: Option<String>,
}

/// Legacy completions' log-probabilities, one entry per generated token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Natural-log probability of each chosen token under the model (temperature 1).
    pub token_logprobs: Vec<f32>,
    /// The most likely tokens at each step, text to log-probability.
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Byte offset of each token's text within the choice's text.
    pub text_offset: Vec<usize>,
}
