//! `POST /v1/completions` and `POST /v1/chat/completions`: validate, submit to the engine,
//! then turn its token events into one response or a stream of server-sent events.
//!
//! A request ends when every choice has finished: EOS or length (from the engine), or a stop
//! string (found here, which cancels the sequence in the engine). If the client goes away,
//! the response (or stream) is dropped, which drops the engine ticket, and the engine drops
//! the sequences at its next step. Past the time limit the request ends the same way, with
//! a 408 or, once streaming, an error event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::time::timeout_at;

use super::AppState;
use crate::api::chat::{
    AssistantMessage, ChatChoice, ChatCompletionResponse, ChatLogprobs, Delta, TokenLogprob,
    TopLogprob,
};
use crate::api::completions::{CompletionChoice, CompletionLogprobs, CompletionResponse};
use crate::api::{ApiError, Usage, sse};
use crate::detokenize::ChoiceText;
use crate::engine::{Event, FinishReason, SubmitError, Ticket, TokenLogprobs};
use crate::validation::{self, Job};

/// Which API shape the request and its answer take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Completion => "completions",
            Kind::Chat => "chat_completions",
        }
    }
}

pub(super) async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Kind::Completion, body).await
}

pub(super) async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(state, Kind::Chat, body).await
}

async fn handle(state: Arc<AppState>, kind: Kind, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let result = start(&state, kind, body);
    let (job, ticket) = match result {
        Ok(ok) => ok,
        Err(e) => {
            state.metrics.request(kind.endpoint(), e.status.as_u16());
            return e.into_response();
        }
    };
    let run = Run::new(state.clone(), kind, job, ticket, started);
    if run.job.stream {
        state.metrics.request(kind.endpoint(), 200);
        return Sse::new(run.into_events())
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
            .into_response();
    }
    let response = run.into_response().await;
    state
        .metrics
        .request(kind.endpoint(), response.status().as_u16());
    response
}

/// Validation and submission: everything that can still answer with a 4xx/5xx status.
fn start(
    state: &AppState,
    kind: Kind,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Job, Ticket), ApiError> {
    let body = body.map_err(|rejection| {
        let mut e = ApiError::bad_request(rejection.body_text());
        e.status = rejection.status();
        e
    })?;
    let ctx = state.context();
    let job = match kind {
        Kind::Completion => validation::completion(&body, &ctx)?,
        Kind::Chat => validation::chat(&body, &ctx)?,
    };
    let ticket = state
        .engine
        .submit(job.sequences(rand::random()))
        .map_err(|e| match e {
            SubmitError::QueueFull { .. } => ApiError::overloaded(e.to_string(), 1),
            SubmitError::Stopped => ApiError::unavailable(e.to_string()),
        })?;
    Ok((job, ticket))
}

/// One choice's progress.
struct Choice {
    text: ChoiceText,
    tokens: usize,
    finish: Option<&'static str>,
    /// Log-probabilities of the tokens not yet sent (streams) or of all (whole responses).
    logprobs: Vec<TokenEntry>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

/// A generated token as the response reports it.
struct TokenEntry {
    text: String,
    offset: usize,
    logprobs: TokenLogprobs,
}

/// A request in flight: its engine ticket and its choices.
struct Run {
    state: Arc<AppState>,
    kind: Kind,
    job: Job,
    ticket: Ticket,
    choices: Vec<Choice>,
    started: Instant,
    deadline: tokio::time::Instant,
    first_token: Option<Instant>,
    id: String,
    created: u64,
    /// Choices whose first stream chunk (the chat role) is out.
    announced: Vec<bool>,
}

/// What the next event changed.
enum Update {
    /// New text (maybe empty) and the tokens behind it, for one choice.
    Text {
        choice: usize,
        delta: String,
        tokens: Vec<TokenEntry>,
    },
    /// The choice is over.
    Finished { choice: usize, reason: &'static str },
}

impl Run {
    fn new(state: Arc<AppState>, kind: Kind, job: Job, ticket: Ticket, started: Instant) -> Self {
        let count = job.prompts.len() * job.n;
        let choices = (0..count)
            .map(|_| Choice {
                text: ChoiceText::new(&job.stop),
                tokens: 0,
                finish: None,
                logprobs: Vec::new(),
                first_at: None,
                last_at: None,
            })
            .collect();
        let deadline = tokio::time::Instant::from_std(started + state.config.request_timeout);
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        Self {
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: super::unix_now(),
            announced: vec![false; count],
            state,
            kind,
            job,
            ticket,
            choices,
            started,
            deadline,
            first_token: None,
        }
    }

    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// Waits for the engine's next event and applies it. `Ok(None)` once every choice is
    /// over; an error when the time limit passes or the engine stops.
    async fn next(&mut self) -> Result<Option<Vec<Update>>, ApiError> {
        if self.done() {
            return Ok(None);
        }
        let event = match timeout_at(self.deadline, self.ticket.events.recv()).await {
            Err(_) => {
                return Err(ApiError::timed_out(
                    self.state.config.request_timeout.as_secs_f64(),
                ));
            }
            Ok(None) => {
                return Err(ApiError::internal(
                    "the model thread stopped before the request finished",
                ));
            }
            Ok(Some(event)) => event,
        };
        Ok(Some(self.apply(event)))
    }

    fn apply(&mut self, event: Event) -> Vec<Update> {
        let tokenizer = &self.state.tokenizer;
        let mut updates = Vec::new();
        match event {
            Event::Token {
                seq,
                token,
                logprobs,
            } => {
                let Some(choice) = self.choices.get_mut(seq) else {
                    return updates;
                };
                if choice.finish.is_some() {
                    return updates; // a token the engine sampled before it saw the cancel
                }
                let now = Instant::now();
                self.first_token.get_or_insert(now);
                choice.first_at.get_or_insert(now);
                choice.last_at = Some(now);
                choice.tokens += 1;
                let step = choice.text.push(tokenizer, token);
                let entry = logprobs.map(|lp| TokenEntry {
                    text: tokenizer.decode(&[token], false).unwrap_or_default(),
                    offset: step.offset,
                    logprobs: lp,
                });
                updates.push(Update::Text {
                    choice: seq,
                    delta: step.delta,
                    tokens: entry.into_iter().collect(),
                });
                if step.stopped {
                    choice.finish = Some("stop");
                    self.ticket.cancel(seq);
                    updates.push(Update::Finished {
                        choice: seq,
                        reason: "stop",
                    });
                }
            }
            Event::Finished { seq, reason } => {
                let Some(choice) = self.choices.get_mut(seq) else {
                    return updates;
                };
                if choice.finish.is_some() {
                    return updates;
                }
                let rest = choice.text.finish(tokenizer);
                if !rest.is_empty() {
                    updates.push(Update::Text {
                        choice: seq,
                        delta: rest,
                        tokens: Vec::new(),
                    });
                }
                let reason = match reason {
                    FinishReason::Eos => "stop",
                    FinishReason::Length => "length",
                };
                choice.finish = Some(reason);
                updates.push(Update::Finished {
                    choice: seq,
                    reason,
                });
            }
        }
        updates
    }

    fn usage(&self) -> Usage {
        Usage::new(
            self.job.prompt_tokens(),
            self.choices.iter().map(|c| c.tokens).sum(),
        )
    }

    /// Waits for every choice, then answers with the whole response.
    async fn into_response(mut self) -> Response {
        loop {
            match self.next().await {
                Ok(Some(updates)) => {
                    for u in updates {
                        if let Update::Text { choice, tokens, .. } = u {
                            self.choices[choice].logprobs.extend(tokens);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => return e.into_response(),
            }
        }
        let usage = Some(self.usage());
        let body = match self.kind {
            Kind::Completion => serde_json::to_value(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.job.model.clone(),
                choices: (0..self.choices.len())
                    .map(|i| CompletionChoice {
                        text: self.choices[i].text.text().to_string(),
                        index: i,
                        logprobs: self.completion_logprobs(i),
                        finish_reason: self.choices[i].finish.map(str::to_string),
                    })
                    .collect(),
                usage,
            }),
            Kind::Chat => serde_json::to_value(ChatCompletionResponse {
                id: self.id.clone(),
                object: "chat.completion".into(),
                created: self.created,
                model: self.job.model.clone(),
                choices: (0..self.choices.len())
                    .map(|i| ChatChoice {
                        index: i,
                        message: Some(AssistantMessage {
                            role: "assistant".into(),
                            content: self.choices[i].text.text().to_string(),
                        }),
                        delta: None,
                        logprobs: self.chat_logprobs(i),
                        finish_reason: self.choices[i].finish.map(str::to_string),
                    })
                    .collect(),
                usage,
            }),
        };
        axum::Json(body.expect("responses serialise")).into_response()
    }

    /// The stream of server-sent events: chunks as tokens come, then usage (if asked) and
    /// `[DONE]`; an error event if the request fails midway.
    fn into_events(
        self,
    ) -> impl Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>> {
        stream::unfold(Some(self), |run| async move {
            let mut run = run?;
            let events = match run.next().await {
                Ok(Some(updates)) => {
                    let chunks: Vec<_> = updates
                        .into_iter()
                        .filter_map(|u| run.chunk(u))
                        .map(|c| sse::json_event(&c))
                        .collect();
                    return Some((stream::iter(chunks), Some(run)));
                }
                Ok(None) => {
                    let mut tail = Vec::new();
                    if run.job.include_usage {
                        tail.push(sse::json_event(&run.usage_chunk()));
                    }
                    tail.push(sse::done());
                    tail
                }
                Err(e) => vec![sse::json_event(&e.body()), sse::done()],
            };
            Some((stream::iter(events), None))
        })
        .flatten()
        .map(Ok)
    }

    /// A stream chunk for an update (`None` when it carries nothing to send).
    fn chunk(&mut self, update: Update) -> Option<serde_json::Value> {
        let (choice, delta, tokens, finish) = match update {
            Update::Text {
                choice,
                delta,
                tokens,
            } => {
                if delta.is_empty() && tokens.is_empty() && self.announced[choice] {
                    return None;
                }
                (choice, delta, tokens, None)
            }
            Update::Finished { choice, reason } => {
                (choice, String::new(), Vec::new(), Some(reason))
            }
        };
        self.choices[choice].logprobs = tokens;
        let value = match self.kind {
            Kind::Completion => serde_json::to_value(CompletionResponse {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.job.model.clone(),
                choices: vec![CompletionChoice {
                    text: delta,
                    index: choice,
                    logprobs: self.completion_logprobs(choice),
                    finish_reason: finish.map(str::to_string),
                }],
                usage: None,
            }),
            Kind::Chat => {
                let first = !self.announced[choice];
                let delta = Delta {
                    role: first.then(|| "assistant".to_string()),
                    content: (first || !delta.is_empty() || finish.is_none()).then_some(delta),
                };
                serde_json::to_value(ChatCompletionResponse {
                    id: self.id.clone(),
                    object: "chat.completion.chunk".into(),
                    created: self.created,
                    model: self.job.model.clone(),
                    choices: vec![ChatChoice {
                        index: choice,
                        message: None,
                        delta: Some(delta),
                        logprobs: self.chat_logprobs(choice),
                        finish_reason: finish.map(str::to_string),
                    }],
                    usage: None,
                })
            }
        };
        self.announced[choice] = true;
        Some(value.expect("chunks serialise"))
    }

    /// The last chunk of a stream with `include_usage`: no choices, the token counts.
    fn usage_chunk(&self) -> serde_json::Value {
        let object = match self.kind {
            Kind::Completion => "text_completion",
            Kind::Chat => "chat.completion.chunk",
        };
        serde_json::json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.job.model,
            "choices": [],
            "usage": self.usage(),
        })
    }

    fn completion_logprobs(&self, i: usize) -> Option<CompletionLogprobs> {
        self.job.logprobs?;
        let tokenizer = &self.state.tokenizer;
        let mut out = CompletionLogprobs::default();
        for t in &self.choices[i].logprobs {
            out.tokens.push(t.text.clone());
            out.token_logprobs.push(t.logprobs.logprob);
            out.text_offset.push(t.offset);
            out.top_logprobs.push(
                t.logprobs
                    .top
                    .iter()
                    .map(|&(id, lp)| {
                        let text = tokenizer.decode(&[id], false).unwrap_or_default();
                        (text, serde_json::json!(lp))
                    })
                    .collect(),
            );
        }
        Some(out)
    }

    fn chat_logprobs(&self, i: usize) -> Option<ChatLogprobs> {
        self.job.logprobs?;
        let tokenizer = &self.state.tokenizer;
        let content = self.choices[i]
            .logprobs
            .iter()
            .map(|t| TokenLogprob {
                token: t.text.clone(),
                logprob: t.logprobs.logprob,
                bytes: t.text.as_bytes().to_vec(),
                top_logprobs: t
                    .logprobs
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = tokenizer.decode(&[id], false).unwrap_or_default();
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            })
            .collect();
        Some(ChatLogprobs { content })
    }
}

impl Drop for Run {
    /// However the request ended (done, client gone, timed out), its figures are recorded;
    /// dropping the ticket cancels whatever still runs in the engine.
    fn drop(&mut self) {
        let m = &self.state.metrics;
        let generated: usize = self.choices.iter().map(|c| c.tokens).sum();
        m.generation(
            self.job.prompt_tokens(),
            generated,
            self.started.elapsed().as_secs_f64(),
        );
        if let Some(first) = self.first_token {
            m.first_token((first - self.started).as_secs_f64());
        }
        for c in &self.choices {
            if let (Some(a), Some(b)) = (c.first_at, c.last_at)
                && c.tokens > 1
            {
                m.per_output_token((b - a).as_secs_f64() / (c.tokens - 1) as f64);
            }
        }
    }
}
