//! Request bodies to engine work: parse the JSON, check every field against OpenAI's rules
//! and this model's limits, tokenize, and resolve the model name. Every failure is a 4xx
//! [`ApiError`] naming the field; nothing here can panic on input (the fuzz test in
//! `validation/tests.rs` throws arbitrary bytes and JSON at it).

use serde::de::DeserializeOwned;
use serde_json::Value;
use tessera_data::tokenizer::Tokenizer;

use crate::api::ApiError;
use crate::api::chat::{ChatCompletionRequest, ChatMessage};
use crate::api::completions::CompletionRequest;
use crate::engine::{AdapterId, Sampling, SequenceSpec};
use tessera_data::chat_template::{ChatTemplate, TemplateMessage};

/// OpenAI's limits on a request.
const MAX_N: i64 = 128;
const MAX_STOP: usize = 4;
const MAX_COMPLETION_LOGPROBS: i64 = 5;
const MAX_TOP_LOGPROBS: i64 = 20;
/// OpenAI's default `max_tokens` for legacy completions.
const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// The names a request's `model` field may take.
#[derive(Clone, Debug)]
pub struct ServedModels {
    /// The base model's name.
    pub base: String,
    /// Adapter names; adapter `i` is `AdapterId(i)`.
    pub adapters: Vec<String>,
}

impl ServedModels {
    /// Every servable name, base first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.base.clone())
            .chain(self.adapters.iter().cloned())
            .collect()
    }

    /// The adapter `name` selects (`None` for the base), or a 404.
    pub fn resolve(&self, name: &str) -> Result<Option<AdapterId>, ApiError> {
        if name == self.base {
            return Ok(None);
        }
        match self.adapters.iter().position(|a| a == name) {
            Some(i) => Ok(Some(AdapterId(i))),
            None => Err(ApiError::model_not_found(name, &self.names())),
        }
    }
}

/// What requests are checked against.
pub struct Context<'a> {
    /// Servable names.
    pub models: &'a ServedModels,
    /// The model's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The chat template, if the model has one.
    pub chat_template: Option<&'a ChatTemplate>,
    /// The model's context length (prompt plus completion).
    pub max_seq_len: usize,
    /// The model's vocabulary (token ids in prompts must be below it).
    pub vocab_size: usize,
    /// Most sequences one request may ask for (the engine's queue).
    pub max_sequences: usize,
}

/// A checked request, ready for the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The model name as requested (echoed in responses).
    pub model: String,
    /// The adapter it resolved to.
    pub adapter: Option<AdapterId>,
    /// Tokenized prompts (chat: the one rendered conversation).
    pub prompts: Vec<Vec<u32>>,
    /// New tokens at most, per prompt.
    pub max_tokens: Vec<usize>,
    /// Choices per prompt.
    pub n: usize,
    /// 0 is greedy.
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// The request's seed, if it gave one.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Server-sent events.
    pub stream: bool,
    /// A final usage chunk in the stream.
    pub include_usage: bool,
    /// `Some(k)`: chosen-token log-probabilities and the top `k`.
    pub logprobs: Option<usize>,
}

impl Job {
    /// The engine's sequences: prompt-major, `n` per prompt (choice `p * n + i`). Without a
    /// request seed, `seed` (random per request) keys the sampling.
    pub fn sequences(&self, seed: u64) -> Vec<SequenceSpec> {
        let seed = self.seed.unwrap_or(seed);
        self.prompts
            .iter()
            .zip(&self.max_tokens)
            .flat_map(|(prompt, &max_new_tokens)| {
                (0..self.n).map(move |i| SequenceSpec {
                    prompt: prompt.clone(),
                    max_new_tokens,
                    sampling: Sampling {
                        temperature: self.temperature,
                        top_p: self.top_p,
                        seed,
                        stream: i,
                    },
                    logprobs: self.logprobs,
                    adapter: self.adapter,
                })
            })
            .collect()
    }

    /// Prompt tokens, each prompt once.
    pub fn prompt_tokens(&self) -> usize {
        self.prompts.iter().map(Vec::len).sum()
    }
}

/// Checks a `POST /v1/completions` body.
pub fn completion(body: &[u8], ctx: &Context<'_>) -> Result<Job, ApiError> {
    let req: CompletionRequest = parse(body)?;
    let adapter = ctx.models.resolve(&req.model)?;
    let prompts = completion_prompts(&req.prompt, ctx)?;
    if req.echo == Some(true) {
        return Err(unsupported("echo", "echo is not supported"));
    }
    if req.suffix.is_some() {
        return Err(unsupported("suffix", "suffix (insertion) is not supported"));
    }
    if let Some(b) = req.best_of
        && b != req.n.unwrap_or(1)
    {
        return Err(unsupported(
            "best_of",
            "best_of must be absent or equal to n",
        ));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_COMPLETION_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid_param(
                "logprobs",
                format!("logprobs must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"),
            ));
        }
    };
    let common = Common {
        max_tokens: req.max_tokens.map(|v| ("max_tokens", v)),
        temperature: req.temperature,
        top_p: req.top_p,
        n: req.n,
        stream: req.stream,
        stream_options: req.stream_options,
        stop: req.stop.as_ref(),
        seed: req.seed,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        logit_bias: req.logit_bias.as_ref(),
    };
    job(
        req.model,
        adapter,
        prompts,
        common,
        DEFAULT_COMPLETION_TOKENS,
        logprobs,
        ctx,
    )
}

/// Checks a `POST /v1/chat/completions` body.
pub fn chat(body: &[u8], ctx: &Context<'_>) -> Result<Job, ApiError> {
    let req: ChatCompletionRequest = parse(body)?;
    let adapter = ctx.models.resolve(&req.model)?;
    let messages = template_messages(&req.messages)?;
    let template = ctx.chat_template.ok_or_else(|| {
        ApiError::invalid_param(
            "messages",
            format!(
                "model `{}` has no chat template (no `chat_template` in tokenizer_config.json \
                 and no chat_template.jinja beside its tokenizer); send a raw prompt to \
                 /v1/completions instead",
                req.model
            ),
        )
    })?;
    let text = template.render(&messages, true).map_err(|e| {
        ApiError::invalid_param(
            "messages",
            format!("the chat template of `{}`: {e}", req.model),
        )
    })?;
    let prompt = encode(ctx.tokenizer, &text, "messages")?;
    if req.max_tokens.is_some() && req.max_completion_tokens.is_some() {
        return Err(ApiError::invalid_param(
            "max_completion_tokens",
            "give max_tokens or max_completion_tokens, not both",
        ));
    }
    if let Some(format) = &req.response_format
        && format != &serde_json::json!({"type": "text"})
    {
        return Err(unsupported(
            "response_format",
            "only {\"type\": \"text\"} is supported",
        ));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ));
        }
        (true, None) => Some(0),
        (true, Some(k)) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Some(k as usize),
        (true, Some(k)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            ));
        }
    };
    let max_tokens = match (req.max_tokens, req.max_completion_tokens) {
        (Some(v), _) => Some(("max_tokens", v)),
        (None, Some(v)) => Some(("max_completion_tokens", v)),
        (None, None) => None,
    };
    let common = Common {
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        n: req.n,
        stream: req.stream,
        stream_options: req.stream_options,
        stop: req.stop.as_ref(),
        seed: req.seed,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        logit_bias: req.logit_bias.as_ref(),
    };
    job(
        req.model,
        adapter,
        vec![prompt],
        common,
        usize::MAX,
        logprobs,
        ctx,
    )
}

/// The fields both endpoints share.
struct Common<'a> {
    max_tokens: Option<(&'static str, i64)>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<crate::api::StreamOptions>,
    stop: Option<&'a Value>,
    seed: Option<i64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    logit_bias: Option<&'a serde_json::Map<String, Value>>,
}

fn job(
    model: String,
    adapter: Option<AdapterId>,
    prompts: Vec<Vec<u32>>,
    c: Common<'_>,
    default_max_tokens: usize,
    logprobs: Option<usize>,
    ctx: &Context<'_>,
) -> Result<Job, ApiError> {
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = match c.top_p {
        None => None,
        Some(p) if p > 0.0 && p <= 1.0 => Some(p as f32),
        Some(p) => {
            return Err(ApiError::invalid_param(
                "top_p",
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
    };
    let n = c.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid_param(
            "n",
            format!("n must be between 1 and {MAX_N}, got {n}"),
        ));
    }
    let n = n as usize;
    let sequences = n * prompts.len();
    if sequences > ctx.max_sequences {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "{sequences} sequences ({} prompts × n = {n}) exceed this server's limit of {}",
                prompts.len(),
                ctx.max_sequences
            ),
        ));
    }
    for (param, value) in [
        ("frequency_penalty", c.frequency_penalty),
        ("presence_penalty", c.presence_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(unsupported(
                param,
                &format!("{param} is not supported (only 0)"),
            ));
        }
    }
    if c.logit_bias.is_some_and(|b| !b.is_empty()) {
        return Err(unsupported("logit_bias", "logit_bias is not supported"));
    }
    let stream = c.stream.unwrap_or(false);
    if c.stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options is only allowed when stream is true",
        ));
    }
    let include_usage = c
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let stop = stop_strings(c.stop)?;
    let max_tokens = prompts
        .iter()
        .map(|p| max_tokens_for(p.len(), c.max_tokens, default_max_tokens, ctx.max_seq_len))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Job {
        model,
        adapter,
        prompts,
        max_tokens,
        n,
        temperature: temperature as f32,
        top_p,
        seed: c.seed.map(|s| s as u64),
        stop,
        stream,
        include_usage,
        logprobs,
    })
}

/// The completion budget of one prompt; an explicit `max_tokens` must fit the context.
fn max_tokens_for(
    prompt: usize,
    asked: Option<(&'static str, i64)>,
    default: usize,
    max_seq_len: usize,
) -> Result<usize, ApiError> {
    let too_long = |wanted: usize| {
        ApiError::invalid_param(
            "messages",
            format!(
                "This model's maximum context length is {max_seq_len} tokens. However, you \
                 requested {} tokens ({prompt} in the prompt, {wanted} for the completion). \
                 Please reduce the prompt or the completion length.",
                prompt + wanted
            ),
        )
        .with_code("context_length_exceeded")
    };
    let room = max_seq_len.saturating_sub(prompt);
    match asked {
        Some((param, v)) if v < 1 => Err(ApiError::invalid_param(
            param,
            format!("{param} must be at least 1, got {v}"),
        )),
        Some((param, v)) => {
            let v = usize::try_from(v).unwrap_or(usize::MAX);
            if v > room {
                let mut e = too_long(v);
                e.param = Some(param.into());
                return Err(e);
            }
            Ok(v)
        }
        None if room == 0 => Err(too_long(1)),
        None => Ok(default.min(room)),
    }
}

/// The prompts of a completion request, tokenized and checked.
fn completion_prompts(prompt: &Value, ctx: &Context<'_>) -> Result<Vec<Vec<u32>>, ApiError> {
    let shape_error = || {
        ApiError::invalid_param(
            "prompt",
            "prompt must be a string, an array of strings, an array of token ids, or an array \
             of arrays of token ids",
        )
    };
    let ids = |items: &[Value]| -> Result<Vec<u32>, ApiError> {
        items
            .iter()
            .map(|v| match v.as_u64() {
                Some(id) if (id as usize) < ctx.vocab_size => Ok(id as u32),
                _ => Err(ApiError::invalid_param(
                    "prompt",
                    format!(
                        "token {v} is not an id of this model's vocabulary (0 to {})",
                        ctx.vocab_size - 1
                    ),
                )),
            })
            .collect()
    };
    let prompts = match prompt {
        Value::String(s) => vec![encode(ctx.tokenizer, s, "prompt")?],
        Value::Array(items) if items.is_empty() => return Err(shape_error()),
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => encode(ctx.tokenizer, s, "prompt"),
                    _ => Err(shape_error()),
                })
                .collect::<Result<_, _>>()?,
            Value::Number(_) => vec![ids(items)?],
            Value::Array(_) => items
                .iter()
                .map(|v| match v {
                    Value::Array(inner) => ids(inner),
                    _ => Err(shape_error()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err(shape_error()),
        },
        _ => return Err(shape_error()),
    };
    if prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid_param(
            "prompt",
            "a prompt is empty: it needs at least one token",
        ));
    }
    Ok(prompts)
}

fn encode(tokenizer: &Tokenizer, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    let ids = tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid_param(param, format!("cannot tokenize: {e}")))?;
    Ok(ids)
}

/// `stop`: absent, a string, or up to 4 strings.
fn stop_strings(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "stop",
            format!("stop must be a string or an array of at most {MAX_STOP} strings"),
        )
    };
    match stop {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= MAX_STOP => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// The messages as the template sees them: text parts joined, roles checked.
fn template_messages(messages: &[ChatMessage]) -> Result<Vec<TemplateMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool"
            ) {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "role `{}` is not one of system, developer, user, assistant, tool",
                        m.role
                    ),
                ));
            }
            let param = format!("messages[{i}].content");
            let content = match &m.content {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text"), Some(text)) => Ok(text),
                        _ => Err(ApiError::invalid_param(
                            param.clone(),
                            "only text content parts ({\"type\": \"text\", \"text\": …}) are supported",
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .concat(),
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        param,
                        "content must be a string or an array of text parts",
                    ));
                }
            };
            Ok(TemplateMessage {
                role: m.role.clone(),
                content,
                name: m.name.clone(),
            })
        })
        .collect()
}

fn unsupported(param: &str, message: &str) -> ApiError {
    ApiError::invalid_param(param, message).with_code("unsupported_parameter")
}

/// Deserializes a body, turning serde's errors into OpenAI's messages: invalid JSON, an
/// unrecognized argument, or a field of the wrong type (named by its path).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let invalid_json = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .with_code("invalid_json")
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return invalid_json(inner);
        }
        let message = inner.to_string();
        // The path ends at the unknown field itself, or at the struct missing one.
        let at = |field: &str| match path.as_str() {
            "." | "" => field.to_string(),
            p if p == field || p.ends_with(&format!(".{field}")) => p.to_string(),
            p => format!("{p}.{field}"),
        };
        if let Some(field) = quoted_after(&message, "unknown field `") {
            let param = at(field);
            return ApiError::invalid_param(
                param.clone(),
                format!("Unrecognized request argument supplied: {param}"),
            );
        }
        if let Some(field) = quoted_after(&message, "missing field `") {
            let param = at(field);
            return ApiError::invalid_param(
                param.clone(),
                format!("Missing required parameter: '{param}'."),
            );
        }
        ApiError::invalid_param(
            path.clone(),
            format!("Invalid value for '{path}': {message}"),
        )
    })?;
    de.end().map_err(invalid_json)?;
    Ok(value)
}

/// The text between `prefix` and the next backtick in `message`.
fn quoted_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let start = message.find(prefix)? + prefix.len();
    let end = message[start..].find('`')? + start;
    Some(&message[start..end])
}

#[cfg(test)]
mod tests;
