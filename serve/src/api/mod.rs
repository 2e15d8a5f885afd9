//! The OpenAI HTTP API's types: requests, responses, stream chunks and errors, with OpenAI's
//! field names. No logic lives here beyond serde.

pub mod chat;
pub mod completions;
pub mod error;
pub mod sse;

use serde::{Deserialize, Serialize};

pub use error::ApiError;

/// Token counts of a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, each prompt counted once whatever `n` is.
    pub prompt_tokens: usize,
    /// Generated tokens over every choice.
    pub completion_tokens: usize,
    /// The sum of the two.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts from the prompt and completion totals.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// `stream_options`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    pub include_usage: Option<bool>,
}

/// `GET /v1/models`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The base model first, then its adapters.
    pub data: Vec<ModelCard>,
}

/// One servable model name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelCard {
    /// The name a request's `model` field takes.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds when the server started.
    pub created: u64,
    /// Always `tessera`.
    pub owned_by: String,
    /// For an adapter, the base model it applies to (vLLM's field); `null` for the base.
    pub parent: Option<String>,
    /// The longest prompt plus completion, in tokens.
    pub max_model_len: usize,
}
