//! The guards hold when a run diverges: a learning rate far too high drives a tiny run into
//! divergence under each spike action. The run must record what happened truthfully, escalate
//! (roll back, then stop with a "diverged" error and exit code 3), leave a complete
//! `report.md`, and resume from its checkpoints afterwards without tripping over its own files.

mod common;

use std::path::Path;

use common::{TempDir, tessera, write_token_dataset};

fn config(data: &Path, action: &str) -> String {
    format!(
        r#"
run_name: guards-{action}
seed: 7
max_seq_len: 32
model:
  name: mpt_causal_lm
  d_model: 32
  n_heads: 2
  n_layers: 2
  expansion_ratio: 2
  max_seq_len: 32
  vocab_size: 64
tokenizer:
  name: unused-by-training
train_loader:
  name: text
  dataset:
    local: {data}
    shuffle: true
    max_seq_len: 32
optimizer:
  name: decoupled_adamw
  lr: 6.0
  betas: [0.9, 0.95]
  weight_decay: 0.0
scheduler:
  name: linear_decay_with_warmup
  t_warmup: 0ba
  alpha_i: 0.001
  alpha_f: 1.0
  t_max: 200ba
max_duration: 200ba
eval_interval: 1000ba
global_train_batch_size: 4
device_train_microbatch_size: 4
precision: fp32
save_interval: 4ba
autoresume: true
progress_bar: false
guards:
  nan:
    max_consecutive: 3
  spike:
    window: 4
    factor: 1.5
    patience: 1
    action: {action}
    escalate_after: 4
  max_rollbacks: 2
"#,
        data = data.display()
    )
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Runs the config, expecting the guards to stop it as diverged; returns stderr.
fn run_to_divergence(dir: &Path, yaml: &Path) -> String {
    let out = tessera()
        .current_dir(dir)
        .args(["train", yaml.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(3),
        "a diverged run exits with 3\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("diverged at step"), "{stderr}");
    stderr
}

fn kinds(incidents: &[serde_json::Value], kind: &str) -> Vec<serde_json::Value> {
    incidents
        .iter()
        .filter(|i| i["kind"] == kind)
        .cloned()
        .collect()
}

fn diverge(action: &str) {
    let tmp = TempDir::new(&format!("guards-{action}"));
    let data = tmp.path().join("data");
    write_token_dataset(&data, 512, 32, 64, 3);
    let yaml = tmp.path().join("g.yaml");
    std::fs::write(&yaml, config(&data, action)).unwrap();
    let run = tmp.path().join(format!("runs/guards-{action}"));

    run_to_divergence(tmp.path(), &yaml);
    // Every record the trainer wrote reads back (skipped steps have null values).
    let metrics = lines(&run.join("metrics.jsonl"));
    assert!(metrics.len() > 20);
    let incidents = lines(&run.join("incidents.jsonl"));
    let diverged = kinds(&incidents, "diverged");
    assert_eq!(diverged.len(), 1, "{incidents:#?}");
    assert!(
        diverged[0]["detail"]
            .as_str()
            .unwrap()
            .contains("rollbacks in a row")
    );
    // Escalation rolled back, as far as the budget allows, each time losing real work.
    let rollbacks = kinds(&incidents, "rollback");
    assert_eq!(rollbacks.len(), 2, "{incidents:#?}");
    for r in &rollbacks {
        assert!(r["lost_steps"].as_u64().unwrap() > 0, "{r}");
        assert!(r["lost_tokens"].as_u64().unwrap() > 0, "{r}");
    }
    let spikes = kinds(&incidents, "loss_spike");
    match action {
        "log" => {
            // Consecutive spikes are counted, not each "1 in a row".
            let details: Vec<&str> = spikes
                .iter()
                .map(|s| s["detail"].as_str().unwrap())
                .collect();
            assert!(
                details.iter().any(|d| d.contains("(3 in a row)")),
                "{details:#?}"
            );
        }
        "skip" => {
            let skipped: Vec<_> = spikes
                .iter()
                .filter(|s| s["detail"].as_str().unwrap().ends_with("batch skipped"))
                .collect();
            assert!(skipped.len() >= 3, "{spikes:#?}");
            for s in skipped {
                assert_eq!(s["lost_steps"], 1, "{s}");
                assert!(s["lost_tokens"].as_u64().unwrap() > 0, "{s}");
            }
        }
        _ => {}
    }
    // A complete report that says why the run stopped.
    let report = std::fs::read_to_string(run.join("report.md")).expect("report.md");
    assert!(report.contains("| status | stopped"), "{report}");
    assert!(
        report.contains("| stopped because | diverged at step"),
        "{report}"
    );
    assert!(report.contains("## Incidents"), "{report}");

    // The stopped run resumes from its checkpoints (the report and metrics read back), trains,
    // and, its learning rate being what it is, is stopped again the same way.
    run_to_divergence(tmp.path(), &yaml);
    let incidents = lines(&run.join("incidents.jsonl"));
    assert_eq!(kinds(&incidents, "resume").len(), 1, "{incidents:#?}");
    assert_eq!(kinds(&incidents, "diverged").len(), 2);
    assert!(
        std::fs::read_to_string(run.join("report.md"))
            .unwrap()
            .contains("diverged")
    );
}

#[test]
fn a_diverging_run_with_spike_action_log_escalates_reports_and_resumes() {
    diverge("log");
}

#[test]
fn a_diverging_run_with_spike_action_skip_escalates_reports_and_resumes() {
    diverge("skip");
}

#[test]
fn a_diverging_run_with_spike_action_rollback_escalates_reports_and_resumes() {
    diverge("rollback");
}
