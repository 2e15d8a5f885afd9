//! `POST /v1/chat/completions`: messages in, one assistant message out per choice, whole or
//! streamed as `chat.completion.chunk` deltas, with OpenAI's field names.
//!
//! The messages are rendered into one prompt with the model's chat template (see
//! [`crate::chat_template`]).

use serde::{Deserialize, Serialize};

use super::Usage;

/// The request body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    /// A served model or adapter name.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// New tokens per choice (default: what fits the context).
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`; give one or the other.
    pub max_completion_tokens: Option<i64>,
    /// 0 is greedy; at most 2.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: Option<f64>,
    /// Choices.
    pub n: Option<i64>,
    /// Send server-sent events as tokens are generated.
    pub stream: Option<bool>,
    /// `{"include_usage": true}`: a last chunk with the token counts.
    pub stream_options: Option<super::StreamOptions>,
    /// Up to 4 strings; generation stops before the first one the text contains.
    pub stop: Option<serde_json::Value>,
    /// Makes sampling reproducible.
    pub seed: Option<i64>,
    /// Return the chosen tokens' log-probabilities.
    pub logprobs: Option<bool>,
    /// With `logprobs`: also the this many most likely tokens at each step (0 to 20).
    pub top_logprobs: Option<i64>,
    /// Must be 0: penalties are not implemented.
    pub frequency_penalty: Option<f64>,
    /// Must be 0: penalties are not implemented.
    pub presence_penalty: Option<f64>,
    /// Must be empty: logit biases are not implemented.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// Only `{"type": "text"}`.
    pub response_format: Option<serde_json::Value>,
    /// A caller's id for its own end users; accepted and ignored.
    pub user: Option<String>,
}

/// One message of the conversation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, or a list of `{"type": "text", "text": …}` parts.
    pub content: Option<serde_json::Value>,
    /// An optional participant name, passed to the template.
    pub name: Option<String>,
}

/// A whole chat response (`stream: false`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`, or `chat.completion.chunk` in a stream.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The requested model name.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<ChatChoice>,
    /// Token counts; absent on stream chunks except the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice (`message`) or its increment in a stream chunk (`delta`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatChoice {
    /// The choice's number.
    pub index: usize,
    /// The whole answer (responses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    /// The new part of the answer (chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    /// Present when the request asked for `logprobs`.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`; `null` in chunks before the last.
    pub finish_reason: Option<String>,
}

/// The assistant's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The generated text.
    pub content: String,
}

/// A stream chunk's increment: the role in the first chunk, then text.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant`, in the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Chat log-probabilities: one entry per generated token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChatLogprobs {
    /// The chosen tokens.
    pub content: Vec<TokenLogprob>,
}

/// A token, its log-probability and, for chosen tokens, the most likely alternatives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Natural-log probability under the model (temperature 1).
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token can hold part of a character).
    pub bytes: Vec<u8>,
    /// The most likely tokens at this step.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One of the most likely tokens at a step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Natural-log probability under the model (temperature 1).
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
}
