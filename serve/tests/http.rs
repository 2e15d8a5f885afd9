//! The OpenAI HTTP API against a server on 127.0.0.1: completions and chat, whole and
//! streamed, equal to `generate`'s greedy output; every kind of bad input answered with an
//! OpenAI error body while the server keeps serving; API keys; a full queue; a client that
//! disconnects; the request time limit; /v1/models, /health and /metrics.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Options, TestServer};
use serde_json::{Value, json};
use tessera_serve::{EngineConfig, ServerConfig};

#[test]
fn completions_equal_generate_and_report_usage() {
    let s = TestServer::start(Options::default());
    let r = s.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello world", "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let (want, n) = s.greedy_text("hello world", 12);
    assert_eq!(body["choices"][0]["text"], want);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "tiny");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    let prompt_tokens = s.tokenizer.encode("hello world").unwrap().len();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n})
    );

    // Two prompts (one as token ids), two choices each, with logprobs.
    let ids = s.tokenizer.encode("the lazy dog").unwrap();
    let r = s.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": [ids.clone(), s.tokenizer.encode("def").unwrap()],
                "n": 2, "max_tokens": 5, "temperature": 0, "logprobs": 2}),
    );
    let body = r.json();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    let (want, _) = s.greedy_ids_text(&ids, 5);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let lp = &c["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 5, "{lp}");
        assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2, "{lp}");
        assert!(lp["token_logprobs"][0].as_f64().unwrap() <= 0.0);
    }
    assert_eq!(choices[0]["text"], want);
    assert_eq!(choices[1]["text"], want, "greedy choices agree");
}

#[test]
fn chat_uses_the_template_and_streams_the_same_text() {
    let s = TestServer::start(Options::default());
    let messages =
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]);
    let r = s.post(
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": messages, "max_tokens": 10, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n";
    let (want, _) = s.greedy_text(rendered, 10);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], want);

    let events = s.stream(
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": messages, "max_tokens": 10, "temperature": 0,
                "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(text, want);
    assert_eq!(finish.as_deref(), Some("length"));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
}

#[test]
fn completion_streams_add_up_and_stop_strings_cut_the_text() {
    let s = TestServer::start(Options::default());
    let (want, _) = s.greedy_text("hello", 20);
    let events = s.stream(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello", "max_tokens": 20, "temperature": 0, "stream": true}),
    );
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, want);

    // A stop string taken from the middle of the greedy text.
    let chars: Vec<char> = want.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &want[..want.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 20, "temperature": 0,
                          "stop": [stop], "stream": stream});
        let (text, finish) = if stream {
            let events = s.stream("/v1/completions", &body);
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
                .collect();
            (
                text,
                chunks.last().unwrap()["choices"][0]["finish_reason"].clone(),
            )
        } else {
            let b = s.post("/v1/completions", &body).json();
            (
                b["choices"][0]["text"].as_str().unwrap().to_string(),
                b["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, cut, "stream: {stream}, stop {stop:?}");
        assert_eq!(finish, "stop");
    }
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let s = TestServer::start(Options {
        max_seq_len: 32,
        ..Options::default()
    });
    let post_raw = |body: &str| {
        let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
        write!(
            stream,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    };
    let raw = post_raw("{\"model\": \"tiny\", \"prompt\": ");
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("invalid_json"), "{raw}");

    let e = s
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", "best": 1}),
        )
        .error(400);
    assert_eq!(e["param"], "best");
    let e = s
        .post("/v1/completions", &json!({"model": "nope", "prompt": "x"}))
        .error(404);
    assert_eq!(e["code"], "model_not_found");
    let e = s
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", "max_tokens": 0}),
        )
        .error(400);
    assert_eq!(e["param"], "max_tokens");
    let long = "hello world ".repeat(40);
    let e = s
        .post("/v1/completions", &json!({"model": "tiny", "prompt": long}))
        .error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    let e = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": "hi"}),
        )
        .error(400);
    assert_eq!(e["param"], "messages");
    let e = s.get("/v1/nothing", None).error(404);
    assert!(e["message"].as_str().unwrap().contains("/v1/nothing"));
    s.get("/v1/completions", None).error(405);

    let ok = s.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello", "max_tokens": 3}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text);
    // Four of the 400s above were completions (the fifth was chat).
    assert_eq!(
        s.metric("tessera_requests_total{endpoint=\"completions\",status=\"400\"}"),
        Some(4.0)
    );
}

#[test]
fn without_a_chat_template_chat_is_a_400_naming_the_model() {
    let s = TestServer::start(Options {
        chat_template: false,
        ..Options::default()
    });
    let e = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .error(400);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("`tiny` has no chat template"),
        "{e}"
    );
}

#[test]
fn an_api_key_guards_everything_but_health() {
    let s = TestServer::start(Options {
        server: ServerConfig {
            api_key: Some("sesame".into()),
            ..ServerConfig::default()
        },
        ..Options::default()
    });
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 2});
    let e = s.post("/v1/completions", &body).error(401);
    assert_eq!(e["code"], "invalid_api_key");
    s.post_with("/v1/completions", &body, Some("wrong"))
        .error(401);
    assert_eq!(
        s.post_with("/v1/completions", &body, Some("sesame")).status,
        200
    );
    s.get("/v1/models", None).error(401);
    s.get("/metrics", Some("nope")).error(401);
    assert_eq!(s.get("/health", None).status, 200);
    let models = s.get("/v1/models", Some("sesame")).json();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["max_model_len"], 128);
}

#[test]
fn past_the_queue_requests_get_429_with_retry_after() {
    // Long generations (2000 tokens), so the first request surely still runs while the
    // others arrive.
    let s = TestServer::start(Options {
        max_seq_len: 2048,
        engine: EngineConfig {
            max_batch: 1,
            max_queue: 1,
            ..EngineConfig::default()
        },
        ..Options::default()
    });
    let long = json!({"model": "tiny", "prompt": "hello", "max_tokens": 2000, "stream": true});
    // The first request holds the only batch place while its stream is open.
    let mut first = ureq::post(s.url("/v1/completions"))
        .send(long.to_string())
        .unwrap()
        .into_body()
        .into_reader();
    let mut byte = [0u8; 1];
    first.read_exact(&mut byte).unwrap();
    // The second waits in the queue...
    let url = s.url("/v1/completions");
    let second = std::thread::spawn(move || {
        ureq::post(&url)
            .send(json!({"model": "tiny", "prompt": "hi", "max_tokens": 2}).to_string())
            .map(|r| r.status().as_u16())
    });
    s.wait_for_metric("tessera_queue_depth", |v| v == 1.0);
    // ... so the third finds it full.
    let r = s.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "x", "max_tokens": 2}),
    );
    let e = r.error(429);
    assert_eq!(e["code"], "queue_full");
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    drop(first); // the first client leaves; the second gets its place
    assert_eq!(second.join().unwrap().unwrap(), 200);
}

#[test]
fn a_client_that_disconnects_is_cancelled() {
    let s = TestServer::start(Options {
        max_seq_len: 2048,
        ..Options::default()
    });
    for stream in [true, false] {
        let body =
            json!({"model": "tiny", "prompt": "hello", "max_tokens": 2000, "stream": stream})
                .to_string();
        let before = s.metric("tessera_cancelled_sequences_total").unwrap_or(0.0);
        let mut conn = std::net::TcpStream::connect(s.addr).unwrap();
        write!(
            conn,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        s.wait_for_metric("tessera_running_sequences", |v| v == 1.0);
        drop(conn);
        s.wait_for_metric("tessera_cancelled_sequences_total", |v| v == before + 1.0);
        s.wait_for_metric("tessera_running_sequences", |v| v == 0.0);
        let steps = s.metric("tessera_decode_steps_total").unwrap();
        assert!(
            steps < 2000.0,
            "stream {stream}: cancelled early ({steps} steps)"
        );
    }
}

#[test]
fn the_time_limit_ends_a_request_with_408_or_an_error_event() {
    let s = TestServer::start(Options {
        max_seq_len: 512,
        server: ServerConfig {
            request_timeout: Duration::from_millis(1),
            ..ServerConfig::default()
        },
        ..Options::default()
    });
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 400});
    let e = s.post("/v1/completions", &body).error(408);
    assert_eq!(e["code"], "timeout");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = s.stream("/v1/completions", &streamed);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["error"]["code"], "timeout", "{last}");
}

#[test]
fn health_models_and_metrics_describe_the_server() {
    let s = TestServer::start(Options::default());
    assert_eq!(s.get("/health", None).json(), json!({"status": "ok"}));
    let models = s.get("/v1/models", None).json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["owned_by"], "tessera");
    let r = s.post(
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200);
    let metrics = s.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    for name in [
        "tessera_time_to_first_token_seconds_count 1",
        "tessera_time_per_output_token_seconds_count 1",
        "tessera_generation_tokens_total 4",
        "tessera_queue_depth 0",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == name),
            "{name} in:\n{}",
            metrics.text
        );
    }
}
