//! A server on 127.0.0.1 (port 0) in this process, around a tiny random MPT and a BPE
//! tokenizer trained here, and a blocking HTTP client for it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use tessera_data::tokenizer::{BpeTrainConfig, Tokenizer, train_bpe};
use tessera_model::{GenerationConfig, Mpt, MptConfig, generate};
use tessera_serve::{
    ChatTemplate, Engine, EngineConfig, ModelLimits, ServedModels, Server, ServerConfig,
};

pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub fn tokenizer() -> Tokenizer {
    let docs = [
        "def add(a, b):\n    return a + b\n",
        "the quick brown fox jumps over the lazy dog",
        "hello world, hello server, hello batch",
    ];
    let cfg = BpeTrainConfig {
        vocab_size: 320,
        min_frequency: 1,
        ..BpeTrainConfig::default()
    };
    train_bpe(docs.iter(), &cfg)
        .expect("training a tokenizer")
        .0
}

pub fn model(max_seq_len: usize) -> Mpt<Flex> {
    let mut c = MptConfig::preset("tiny").unwrap();
    c.vocab_size = 320;
    c.max_seq_len = max_seq_len;
    c.init::<Flex>(&Default::default(), 5)
}

/// What the test server runs with.
pub struct Options {
    pub max_seq_len: usize,
    pub engine: EngineConfig,
    pub server: ServerConfig,
    pub chat_template: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_seq_len: 128,
            engine: EngineConfig::default(),
            server: ServerConfig::default(),
            chat_template: true,
        }
    }
}

/// A running server; dropping it shuts it down gracefully and joins its thread.
pub struct TestServer {
    pub addr: SocketAddr,
    pub model: Mpt<Flex>,
    pub tokenizer: Tokenizer,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(opts: Options) -> Self {
        let model = model(opts.max_seq_len);
        let tokenizer = tokenizer();
        let template = opts.chat_template.then(|| {
            ChatTemplate::new(CHATML.into(), String::new(), String::new(), "test".into()).unwrap()
        });
        let engine = Engine::start(model.clone(), Default::default(), opts.engine);
        let server = Server::new(
            engine,
            tokenizer.clone(),
            template,
            ServedModels {
                base: "tiny".into(),
                adapters: Vec::new(),
            },
            ModelLimits {
                max_seq_len: opts.max_seq_len,
                vocab_size: 320,
            },
            opts.server,
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .serve(listener, async move {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server starts");
        Self {
            addr,
            model,
            tokenizer,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs JSON; returns the status, the headers' Retry-After and the body as JSON.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.post_with(path, body, None)
    }

    pub fn post_with(&self, path: &str, body: &serde_json::Value, key: Option<&str>) -> Reply {
        self.send(ureq::post(self.url(path)), Some(body.to_string()), key)
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.send_get(path, key)
    }

    fn send_get(&self, path: &str, key: Option<&str>) -> Reply {
        let mut req = ureq::get(self.url(path));
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        reply(req.config().http_status_as_error(false).build().call())
    }

    fn send(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: Option<String>,
        key: Option<&str>,
    ) -> Reply {
        let mut req = req.header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Authorization", &format!("Bearer {k}"));
        }
        let req = req.config().http_status_as_error(false).build();
        reply(req.send(body.unwrap_or_default()))
    }

    /// A streamed request: every `data:` payload in order (the last is `[DONE]`).
    pub fn stream(&self, path: &str, body: &serde_json::Value) -> Vec<String> {
        let resp = ureq::post(self.url(path))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("a streamed response");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let reader = BufReader::new(resp.into_body().into_reader());
        let mut data = Vec::new();
        for line in reader.lines() {
            let line = line.expect("reading the stream");
            if let Some(payload) = line.strip_prefix("data: ") {
                data.push(payload.to_string());
                if payload == "[DONE]" {
                    break;
                }
            }
        }
        data
    }

    /// The value of one metric line (`name{labels} value`) in /metrics.
    pub fn metric(&self, line_start: &str) -> Option<f64> {
        let text = self.get("/metrics", None).text;
        text.lines()
            .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Polls `metric` until `ok` holds (at most 30 s).
    pub fn wait_for_metric(&self, line_start: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.metric(line_start).filter(|v| ok(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{line_start} never got there");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `tessera_model::generate`'s greedy text for a text prompt (the oracle).
    pub fn greedy_text(&self, prompt: &str, max_new_tokens: usize) -> (String, usize) {
        let ids = self.tokenizer.encode(prompt).unwrap();
        self.greedy_ids_text(&ids, max_new_tokens)
    }

    pub fn greedy_ids_text(&self, ids: &[u32], max_new_tokens: usize) -> (String, usize) {
        let cfg = GenerationConfig {
            max_new_tokens,
            eos_ids: Vec::new(),
            ..GenerationConfig::default()
        };
        let out = generate(
            &self.model,
            &[ids.to_vec()],
            &cfg,
            None,
            &Default::default(),
        )
        .unwrap();
        let text = self.tokenizer.decode(&out[0].ids, true).unwrap();
        (text, out[0].ids.len())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts an OpenAI error body with this status and returns it.
    pub fn error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        let e = &body["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{body}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "{body}"
        );
        e.clone()
    }
}

fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut resp = result.expect("the request reaches the server");
    Reply {
        status: resp.status().as_u16(),
        retry_after: resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string()),
        text: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}
