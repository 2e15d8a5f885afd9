//! Server-sent events as OpenAI streams them: one `data: <json>` event per chunk, and a final
//! `data: [DONE]`. An error after the stream has started is sent as a `data: {"error": …}`
//! event (the HTTP status is already 200 by then), followed by `[DONE]`.

use axum::response::sse::Event;
use serde::Serialize;

/// A chunk as one event.
pub fn json_event(chunk: &impl Serialize) -> Event {
    let json = serde_json::to_string(chunk).expect("API chunks serialise");
    Event::default().data(json)
}

/// The end-of-stream marker OpenAI's clients wait for.
pub fn done() -> Event {
    Event::default().data("[DONE]")
}
