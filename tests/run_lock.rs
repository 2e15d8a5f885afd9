//! One trainer per run folder: a second `tessera train` on a busy run folder is refused with a
//! message naming the holder's pid and host; once the holder is gone (here: SIGKILL), the next
//! trainer takes the stale lock over and records whose it was.

mod common;

use std::time::{Duration, Instant};

use common::{TempDir, tessera, write_token_dataset};

#[test]
fn a_second_trainer_is_refused_and_a_stale_lock_is_taken_over() {
    let tmp = TempDir::new("run-lock");
    let data = tmp.path().join("data");
    write_token_dataset(&data, 64, 16, 32, 1);
    let yaml = tmp.path().join("busy.yaml");
    let config = |steps: u64| {
        format!(
            r#"
run_name: busy
max_seq_len: 16
model: {{name: mpt_causal_lm, d_model: 16, n_heads: 2, n_layers: 1, max_seq_len: 16, vocab_size: 32}}
tokenizer: {{name: unused}}
train_loader: {{name: text, dataset: {{local: {data}, max_seq_len: 16}}}}
optimizer: {{name: decoupled_adamw, lr: 1.0e-3}}
scheduler: {{name: constant_with_warmup, t_warmup: 0ba}}
max_duration: {steps}ba
global_train_batch_size: 2
save_interval: 1000ba
autoresume: true
progress_bar: false
"#,
            data = data.display()
        )
    };
    std::fs::write(&yaml, config(1_000_000)).unwrap();
    let mut first = tessera()
        .current_dir(tmp.path())
        .args(["train", yaml.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first trainer is stepping (it has written a metrics line).
    let metrics = tmp.path().join("runs/busy/metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&metrics).map_or(true, |m| m.len() == 0) {
        assert!(Instant::now() < deadline, "the first trainer never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = tessera()
        .current_dir(tmp.path())
        .args(["train", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    let holder = format!("pid {}", first.id());
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("in use by another trainer") && stderr.contains(&holder),
        "{stderr}"
    );

    // The holder died without cleaning up: the next trainer takes over and says so.
    std::fs::write(&yaml, config(3)).unwrap();
    let third = tessera()
        .current_dir(tmp.path())
        .args(["train", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let incidents = std::fs::read_to_string(tmp.path().join("runs/busy/incidents.jsonl")).unwrap();
    assert!(
        incidents.contains("lock_takeover") && incidents.contains(&holder),
        "{incidents}"
    );
}
