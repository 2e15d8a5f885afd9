//! `tessera serve` end to end, as a process on 127.0.0.1: a bounded load test whose every
//! answer must equal `tessera generate`'s greedy output, graceful shutdown on SIGTERM, the
//! bind-safety and adapter flags, and the official `openai` Python package as a client.
//!
//! The model is the `tiny_alibi_h4` fixture (written by transformers) with a byte-level BPE
//! trained here (its 512-token vocabulary has room for it) and a ChatML template.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TempDir, run_ok, tessera};
use serde_json::{Value, json};
use tessera::data::tokenizer::{BpeTrainConfig, Tokenizer, train_bpe};
use tessera_testkit::repo_fixture;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The fixture checkpoint with a tokenizer and a chat template, in `dir`.
fn model_dir(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    std::fs::create_dir_all(&model).unwrap();
    let fixture = repo_fixture("mpt/tiny_alibi_h4");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    let docs = [
        "def add(a, b):\n    return a + b\n\nclass Point:\n    pass\n",
        "the quick brown fox jumps over the lazy dog. hello world, hello server.",
        "import os\nimport sys\nprint(os.getcwd())\n",
    ];
    let cfg = BpeTrainConfig {
        vocab_size: 400,
        min_frequency: 1,
        ..BpeTrainConfig::default()
    };
    let (tok, _) = train_bpe(docs.iter(), &cfg).unwrap();
    assert!(tok.vocab_size() <= 512);
    tok.save(model.join("tokenizer.json")).unwrap();
    std::fs::write(
        model.join("tokenizer_config.json"),
        json!({"chat_template": CHATML, "eos_token": "<|endoftext|>"}).to_string(),
    )
    .unwrap();
    model
}

/// A `tessera serve` process; killed (if still running) when dropped.
struct Served {
    child: Child,
    addr: String,
    _stdout: std::thread::JoinHandle<()>,
}

impl Served {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = tessera()
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--port", "0", "--served-model-name", "tiny"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tessera serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("tessera serve prints its address");
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .trim()
            .to_string();
        Self {
            child,
            addr,
            _stdout: reader,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn metrics(&self) -> String {
        ureq::get(self.url("/metrics"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Waits for the process to exit on its own.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tessera serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tessera generate`'s greedy text and token count for `prompt` (the oracle).
fn generate_text(
    model: &Path,
    tok: &Tokenizer,
    prompt: &str,
    max_new_tokens: usize,
) -> (String, usize) {
    let out = run_ok(tessera().arg("generate").arg("--model").arg(model).args([
        "--prompt",
        prompt,
        "--max-new-tokens",
        &max_new_tokens.to_string(),
        "--json",
    ]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u32> = v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    (tok.decode(&ids, true).unwrap(), ids.len())
}

/// Concatenated `text` of a streamed completion, read until `[DONE]`.
fn streamed_text(url: &str, body: &Value) -> (String, Option<String>) {
    let resp = ureq::post(url).send(body.to_string()).unwrap();
    let mut text = String::new();
    let mut finish = None;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return (text, finish);
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or(""));
        if let Some(f) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    panic!("the stream ended without [DONE]");
}

#[test]
fn load_test_32_clients_every_answer_equals_generate() {
    const CLIENTS: usize = 32;
    const PER_CLIENT: usize = 3;
    const MAX_TOKENS: usize = 24;
    let tmp = TempDir::new("serve-load");
    let model = model_dir(tmp.path());
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let prompts: Vec<String> = (0..16)
        .map(|i| match i % 4 {
            0 => format!("def add{i}(a, b):"),
            1 => format!("the quick brown fox {i}"),
            2 => format!("import os\nprint({i})"),
            _ => format!("hello {}", "world ".repeat(i % 7 + 1)),
        })
        .collect();
    let oracle: Vec<(String, usize)> = prompts
        .iter()
        .map(|p| generate_text(&model, &tok, p, MAX_TOKENS))
        .collect();
    let oracle_tokens: usize = oracle.iter().map(|(_, n)| n).sum();
    assert!(
        oracle_tokens > prompts.len() * MAX_TOKENS / 2,
        "the oracle's answers are long enough to compare ({oracle_tokens} tokens)"
    );

    let server = Served::start(&model, &["--max-batch", "16", "--max-queue", "64"]);
    let url = Arc::new(server.url("/v1/completions"));
    let prompts = Arc::new(prompts);
    let oracle = Arc::new(oracle);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (url, prompts, oracle) = (url.clone(), prompts.clone(), oracle.clone());
            std::thread::spawn(move || {
                let mut answered = 0;
                for k in 0..PER_CLIENT {
                    let i = (c * PER_CLIENT + k) % prompts.len();
                    let stream = (c + k) % 2 == 0;
                    let body = json!({"model": "tiny", "prompt": prompts[i], "max_tokens": MAX_TOKENS,
                                      "temperature": 0, "stream": stream});
                    let (want, n) = &oracle[i];
                    if stream {
                        let (text, finish) = streamed_text(&url, &body);
                        assert_eq!(&text, want, "client {c}, prompt {i}, streamed");
                        assert!(finish.is_some(), "client {c}: the stream has a finish_reason");
                    } else {
                        let mut r = ureq::post(url.as_str()).send(body.to_string()).unwrap();
                        let v: Value =
                            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                        assert_eq!(v["choices"][0]["text"], *want, "client {c}, prompt {i}");
                        assert_eq!(v["usage"]["completion_tokens"], *n, "client {c}, prompt {i}");
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, CLIENTS * PER_CLIENT, "no request lost");
    let metrics = server.metrics();
    let ok = format!(
        "tessera_requests_total{{endpoint=\"completions\",status=\"200\"}} {}",
        CLIENTS * PER_CLIENT
    );
    assert!(metrics.lines().any(|l| l == ok), "{ok} in:\n{metrics}");
    assert!(metrics.contains("tessera_queue_depth 0"), "{metrics}");
}

#[test]
fn sigterm_finishes_the_requests_in_flight_then_exits() {
    let tmp = TempDir::new("serve-term");
    let model = model_dir(tmp.path());
    let mut server = Served::start(&model, &[]);
    let body = json!({"model": "tiny", "prompt": "def add(a, b):", "max_tokens": 100,
                      "temperature": 0, "stream": true});
    let resp = ureq::post(server.url("/v1/completions"))
        .send(body.to_string())
        .unwrap();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    // SIGTERM while the request runs.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let all = first + &rest;
    let chunks: Vec<Value> = all
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(all.trim_end().ends_with("data: [DONE]"), "{all}");
    let finish = chunks.last().unwrap()["choices"][0]["finish_reason"].clone();
    assert!(finish == "length" || finish == "stop", "{finish}");
    let status = server.wait(Duration::from_secs(30));
    assert!(status.success(), "tessera serve exited with {status}");
    assert!(
        std::net::TcpStream::connect(&server.addr).is_err(),
        "nothing listens after the exit"
    );
}

#[test]
fn a_public_address_needs_a_key_or_insecure() {
    let fails = |args: &[&str]| {
        let out = tessera().arg("serve").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && !err.contains("panicked"),
            "{err}"
        );
        err
    };
    let err = fails(&["--model", "m", "--host", "0.0.0.0"]);
    assert!(
        err.contains("--api-key") && err.contains("--insecure"),
        "{err}"
    );
    let err = fails(&["--model", "m", "--adapter", "sql=/tmp/sql"]);
    assert!(
        err.contains("--adapter sql=/tmp/sql") && err.contains("LoRA"),
        "{err}"
    );
    let err = fails(&["--model", "/nonexistent/model"]);
    assert!(err.contains("/nonexistent/model"), "{err}");
    let err = fails(&["--model", "m", "--max-batch", "0"]);
    assert!(err.contains("--max-batch"), "{err}");
}

#[test]
#[ignore = "needs Python with the openai package"]
fn the_openai_python_client_drives_the_server() {
    let python =
        std::env::var("TESSERA_PYTHON").expect("TESSERA_PYTHON names a Python with openai");
    let tmp = TempDir::new("serve-openai");
    let model = model_dir(tmp.path());
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let server = Served::start(&model, &["--api-key", "sesame"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(format!("http://{}/v1", server.addr))
        .args(["tiny", "sesame"])
        .output()
        .expect("running the openai client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let (want, _) = generate_text(&model, &tok, "def add(a, b):", 16);
    assert_eq!(report["completion_text"], want, "{report}");
}
