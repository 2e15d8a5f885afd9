//! No silent stalls: a run whose data lives on a server that accepts connections and never
//! answers must stop within the time it was given, with an error that names the URL and the
//! exit code launchers retry (75), whether the request's own time limit or the watchdog is the
//! shorter.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::{TempDir, tessera};

/// Accepts connections and holds them without a byte of answer, until dropped.
struct SilentServer {
    addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok((s, _)) = listener.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        SilentServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn config(remote: &str, local: &str, download_timeout: f64, watchdog_s: f64) -> String {
    format!(
        r#"
run_name: silent
max_seq_len: 16
model:
  name: mpt_causal_lm
  d_model: 16
  n_heads: 2
  n_layers: 1
  max_seq_len: 16
  vocab_size: 32
tokenizer:
  name: unused
train_loader:
  name: text
  dataset:
    remote: {remote}
    local: {local}
    max_seq_len: 16
    download_timeout: {download_timeout}
    download_retry: 1
optimizer:
  name: decoupled_adamw
  lr: 1.0e-3
scheduler:
  name: constant_with_warmup
  t_warmup: 0ba
max_duration: 4ba
global_train_batch_size: 2
progress_bar: false
guards:
  watchdog:
    timeout_s: {watchdog_s}
"#
    )
}

/// Runs against the silent server; returns (seconds taken, stderr).
fn stalled_run(download_timeout: f64, watchdog_s: f64) -> (f64, String) {
    let server = SilentServer::start();
    let tmp = TempDir::new("silent-remote");
    let remote = format!("http://{}/data", server.addr);
    let local = tmp.path().join("cache");
    let yaml = tmp.path().join("silent.yaml");
    std::fs::write(
        &yaml,
        config(
            &remote,
            local.to_str().unwrap(),
            download_timeout,
            watchdog_s,
        ),
    )
    .unwrap();
    let t = Instant::now();
    let out = tessera()
        .current_dir(tmp.path())
        .args(["train", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains(&format!("{remote}/index.json")), "{stderr}");
    (took, stderr)
}

#[test]
fn a_silent_remote_stops_the_run_at_the_request_time_limit() {
    // Two attempts of 2 s, plus the backoff and the process start.
    let (took, stderr) = stalled_run(2.0, 600.0);
    assert!(took < 20.0, "took {took:.1} s\n{stderr}");
    assert!(
        stderr.contains("timed out") || stderr.contains("no answer within 2 s"),
        "{stderr}"
    );
}

#[test]
fn a_silent_remote_stops_the_run_at_the_watchdog_limit() {
    // The request would wait 10 minutes; the watchdog gives it 7 s, the wait is announced on
    // the way (after 5 s), and the run stops.
    let (took, stderr) = stalled_run(600.0, 7.0);
    assert!(took < 20.0, "took {took:.1} s\n{stderr}");
    assert!(stderr.contains("stalled"), "{stderr}");
    assert!(stderr.contains("waiting on http://"), "{stderr}");
}
