//! `tessera serve` end to end, as a process on 127.0.0.1: a bounded load test whose every
//! answer must equal `tessera generate`'s greedy output, LoRA adapters picked by `model` (each
//! answer equal to `tessera generate` on the merged model, base and adapters mixed in one
//! batch), graceful shutdown on SIGTERM, the bind-safety and adapter flags, and the official
//! `openai` Python package as a client.
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
    let err = fails(&["--model", "m", "--adapter", "sql"]);
    assert!(err.contains("--adapter sql: expected NAME=DIR"), "{err}");
    let err = fails(&["--model", "m", "--adapter", "a=x", "--adapter", "a=y"]);
    assert!(err.contains("`a` is given twice"), "{err}");
    let err = fails(&["--model", "/nonexistent/model"]);
    assert!(err.contains("/nonexistent/model"), "{err}");
    let err = fails(&["--model", "m", "--max-batch", "0"]);
    assert!(err.contains("--max-batch"), "{err}");
}

/// A random LoRA adapter (non-zero B, so it changes the output) for `model`, written by
/// `tessera init-lora` with the lora module's PEFT writer.
fn init_lora(model: &Path, out: &Path, seed: u64) {
    run_ok(
        tessera()
            .arg("init-lora")
            .arg("--model")
            .arg(model)
            .arg("--out")
            .arg(out)
            .args(["--r", "4", "--seed", &seed.to_string()]),
    );
}

/// `model` with the adapter in `adapter` merged, by `tessera convert --merge-lora` (f32).
fn merged(model: &Path, adapter: &Path, out: &Path) -> PathBuf {
    run_ok(
        tessera()
            .arg("convert")
            .arg("--model")
            .arg(model)
            .arg("--out")
            .arg(out)
            .arg("--merge-lora")
            .arg(adapter)
            .args(["--dtype", "f32"]),
    );
    out.to_path_buf()
}

#[test]
fn adapters_picked_by_name_answer_as_the_merged_models_even_in_one_batch() {
    const MAX_TOKENS: usize = 16;
    let tmp = TempDir::new("serve-lora");
    let model = model_dir(tmp.path());
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let names = ["tiny", "sql", "poem"];
    let mut oracles_of: Vec<PathBuf> = vec![model.clone()];
    for (k, name) in names[1..].iter().enumerate() {
        let dir = tmp.path().join(name);
        init_lora(&model, &dir, 10 + k as u64);
        oracles_of.push(merged(
            &model,
            &dir,
            &tmp.path().join(format!("{name}-merged")),
        ));
    }
    let prompts = [
        "def add(a, b):",
        "the quick brown fox",
        "import os\nprint(1)",
    ];
    // oracle[m][p]: `tessera generate` on model m's merged checkpoint (the base for m = 0).
    let oracle: Vec<Vec<(String, usize)>> = oracles_of
        .iter()
        .map(|m| {
            prompts
                .iter()
                .map(|p| generate_text(m, &tok, p, MAX_TOKENS))
                .collect()
        })
        .collect();
    for m in 1..names.len() {
        assert_ne!(
            oracle[m], oracle[0],
            "adapter {} changes the greedy output",
            names[m]
        );
    }

    let sql = format!("sql={}", tmp.path().join("sql").display());
    let poem = format!("poem={}", tmp.path().join("poem").display());
    let server = Served::start(&model, &["--adapter", &sql, "--adapter", &poem]);
    let mut r = ureq::get(server.url("/v1/models")).call().unwrap();
    let list: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, names, "{list}");
    assert_eq!(list["data"][0]["parent"], Value::Null, "{list}");
    assert_eq!(list["data"][1]["parent"], "tiny", "{list}");

    // The base and both adapters at once, each client in its own thread: the engine decodes
    // their rows together, and every answer must be its own model's.
    let url = Arc::new(server.url("/v1/completions"));
    let oracle = Arc::new(oracle);
    let clients: Vec<_> = (0..names.len() * 2)
        .map(|c| {
            let (url, oracle) = (url.clone(), oracle.clone());
            std::thread::spawn(move || {
                let m = c % names.len();
                for (p, prompt) in prompts.iter().enumerate() {
                    let stream = (c + p) % 2 == 0;
                    let body = json!({"model": names[m], "prompt": prompt,
                                      "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream});
                    let (want, n) = &oracle[m][p];
                    if stream {
                        let (text, _) = streamed_text(&url, &body);
                        assert_eq!(&text, want, "client {c}, model {}, prompt {p}", names[m]);
                    } else {
                        let mut r = ureq::post(url.as_str()).send(body.to_string()).unwrap();
                        let v: Value =
                            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                        assert_eq!(v["model"], names[m]);
                        assert_eq!(v["choices"][0]["text"], *want, "client {c}, {}", names[m]);
                        assert_eq!(v["usage"]["completion_tokens"], *n);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let metrics = server.metrics();
    let ok = format!(
        "tessera_requests_total{{endpoint=\"completions\",status=\"200\"}} {}",
        names.len() * 2 * prompts.len()
    );
    assert!(metrics.lines().any(|l| l == ok), "{ok} in:\n{metrics}");

    // An adapter name the server does not have: OpenAI's 404.
    let r = ureq::post(url.as_str())
        .config()
        .http_status_as_error(false)
        .build()
        .send(json!({"model": "nope", "prompt": "x", "max_tokens": 1}).to_string())
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = serde_json::from_str(&r.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    assert_eq!(body["error"]["param"], "model", "{body}");
}

#[test]
fn a_bad_adapter_folder_stops_the_server_at_start_naming_the_file() {
    let tmp = TempDir::new("serve-bad-lora");
    let model = model_dir(tmp.path());
    let fails = |adapter: &Path| {
        let out = tessera()
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .args(["--port", "0", "--served-model-name", "tiny"])
            .arg("--adapter")
            .arg(format!("bad={}", adapter.display()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}: {err}", adapter.display());
        assert!(
            err.starts_with("error: --adapter bad=") && !err.contains("panicked"),
            "{err}"
        );
        err
    };
    let config = |dir: &Path| dir.join("adapter_config.json");
    let weights = |dir: &Path| dir.join("adapter_model.safetensors").display().to_string();
    let edit_config = |dir: &Path, key: &str, value: Value| {
        let mut c: Value =
            serde_json::from_str(&std::fs::read_to_string(config(dir)).unwrap()).unwrap();
        c[key] = value;
        std::fs::write(config(dir), c.to_string()).unwrap();
    };

    // No such folder.
    let missing = tmp.path().join("missing");
    let err = fails(&missing);
    assert!(
        err.contains(&config(&missing).display().to_string()),
        "{err}"
    );

    // The config says rank 8, the tensors are rank 4.
    let rank = tmp.path().join("rank");
    init_lora(&model, &rank, 1);
    edit_config(&rank, "r", json!(8));
    let err = fails(&rank);
    assert!(
        err.contains(&weights(&rank)) && err.contains("expected [8, 64] (r = 8)"),
        "{err}"
    );

    // The config targets Wqkv only; the file also holds the other three modules.
    let targets = tmp.path().join("targets");
    init_lora(&model, &targets, 2);
    edit_config(&targets, "target_modules", json!(["Wqkv"]));
    let err = fails(&targets);
    assert!(
        err.contains(&weights(&targets))
            && err.contains(
                "unexpected base_model.model.transformer.blocks.0.attn.out_proj.lora_A.weight"
            ),
        "{err}"
    );

    // An adapter made for another base (d_model 32, not 64).
    let other_base = tmp.path().join("other-base");
    std::fs::create_dir_all(&other_base).unwrap();
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    c["d_model"] = json!(32);
    std::fs::write(other_base.join("config.json"), c.to_string()).unwrap();
    let shape = tmp.path().join("shape");
    init_lora(&other_base, &shape, 3);
    let err = fails(&shape);
    assert!(
        err.contains(&weights(&shape)) && err.contains("shape [4, 32], expected [4, 64]"),
        "{err}"
    );

    // An adapter may not take the base model's name.
    let good = tmp.path().join("good");
    init_lora(&model, &good, 4);
    let out = tessera()
        .arg("serve")
        .arg("--model")
        .arg(&model)
        .args(["--port", "0", "--served-model-name", "tiny"])
        .arg("--adapter")
        .arg(format!("tiny={}", good.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`tiny` is also the base model's name"),
        "{err}"
    );
}

#[test]
#[ignore = "needs Python with the openai package"]
fn the_openai_python_client_drives_the_server() {
    let python =
        std::env::var("TESSERA_PYTHON").expect("TESSERA_PYTHON names a Python with openai");
    let tmp = TempDir::new("serve-openai");
    let model = model_dir(tmp.path());
    let tok = Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let adapter = tmp.path().join("sql");
    init_lora(&model, &adapter, 7);
    let flag = format!("sql={}", adapter.display());
    let server = Served::start(&model, &["--api-key", "sesame", "--adapter", &flag]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(format!("http://{}/v1", server.addr))
        .args(["tiny", "sesame", "sql"])
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
    let merged = merged(&model, &adapter, &tmp.path().join("sql-merged"));
    let (want, _) = generate_text(&merged, &tok, "def add(a, b):", 16);
    assert_eq!(report["adapter_text"], want, "{report}");
}
