//! `report.md`: the run's training log in one page, written at the end (and after an abort).
//!
//! It is built from what the run directory already holds (`metrics.jsonl`, `incidents.jsonl`)
//! plus a few facts only the trainer knows, so a report can also be regenerated after the fact.

use std::fmt::Write as _;
use std::path::Path;

use super::jsonl::{EvalRecord, Incident, MetricsRecord, TrainRecord};
use super::{MetricsError, atomic_write};

/// Facts about the run that the metrics files do not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    /// Run name.
    pub run_name: String,
    /// Model description (`MPT, 125M parameters, d_model 768, 12 layers`).
    pub model: String,
    /// Device description (`1× NVIDIA H100 (cuda)`, `CPU (flex), 16 threads`).
    pub device: String,
    /// `fp32`, `amp_bf16`…
    pub precision: String,
    /// Planned optimizer steps.
    pub max_steps: u64,
    /// Wall-clock seconds, resumes included.
    pub wall_s: f64,
    /// Did the run reach `max_steps`?
    pub completed: bool,
    /// Why the run stopped early (the error), when it did.
    pub stop_reason: Option<String>,
    /// Where the final checkpoint is, if one was written.
    pub final_checkpoint: Option<String>,
}

/// Renders the report.
pub fn render_report(
    facts: &RunFacts,
    metrics: &[MetricsRecord],
    incidents: &[Incident],
) -> String {
    let train: Vec<&TrainRecord> = metrics
        .iter()
        .filter_map(|m| {
            if let MetricsRecord::Train(t) = m {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    let evals: Vec<&EvalRecord> = metrics
        .iter()
        .filter_map(|m| {
            if let MetricsRecord::Eval(e) = m {
                Some(e)
            } else {
                None
            }
        })
        .collect();
    let mut s = String::new();
    let _ = writeln!(s, "# Training report: {}\n", facts.run_name);
    let status = match (&facts.stop_reason, facts.completed) {
        (Some(_), _) => "stopped",
        (None, true) => "completed",
        (None, false) => "stopped early",
    };
    let last = train.last();
    let steps = last.map(|t| t.step).unwrap_or(0);
    let tokens = last.map(|t| t.tokens).unwrap_or(0);
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| status | {status} ({steps} of {} steps) |",
        facts.max_steps
    );
    if let Some(why) = &facts.stop_reason {
        let _ = writeln!(s, "| stopped because | {} |", why.replace('|', "\\|"));
    }
    let _ = writeln!(s, "| model | {} |", facts.model);
    let _ = writeln!(s, "| device | {} |", facts.device);
    let _ = writeln!(s, "| precision | {} |", facts.precision);
    let _ = writeln!(s, "| tokens | {} |", human(tokens as f64));
    let _ = writeln!(s, "| wall time | {} |", duration(facts.wall_s));
    let rates: Vec<f64> = train.iter().filter_map(|t| t.tokens_per_s).collect();
    if !rates.is_empty() {
        let tps = rates.iter().sum::<f64>() / rates.len() as f64;
        let _ = writeln!(s, "| mean throughput | {} tokens/s |", human(tps));
    }
    if !train.is_empty() {
        let mfus: Vec<f64> = train.iter().filter_map(|t| t.mfu).collect();
        if !mfus.is_empty() {
            let _ = writeln!(
                s,
                "| mean MFU | {:.1}% |",
                100.0 * mfus.iter().sum::<f64>() / mfus.len() as f64
            );
        }
    }
    if let Some(c) = &facts.final_checkpoint {
        let _ = writeln!(s, "| final checkpoint | `{c}` |");
    }
    let _ = writeln!(s, "\n## Loss\n\n![loss](loss.png)\n");
    if let (Some(first), Some(last)) = (train.first(), train.last()) {
        let min = train
            .iter()
            .filter(|t| t.loss.is_finite())
            .min_by(|a, b| a.loss.total_cmp(&b.loss));
        let _ = writeln!(s, "- first step ({}): {:.4}", first.step, first.loss);
        let _ = writeln!(s, "- last step ({}): {:.4}", last.step, last.loss);
        if let Some(m) = min {
            let _ = writeln!(s, "- lowest: {:.4} at step {}", m.loss, m.step);
        }
        if first.loss.is_finite() && last.loss.is_finite() && first.loss > 0.0 {
            let _ = writeln!(
                s,
                "- change: {:+.1}%",
                100.0 * (last.loss - first.loss) / first.loss
            );
        }
    } else {
        let _ = writeln!(s, "No training steps were recorded.");
    }
    if !evals.is_empty() {
        let _ = writeln!(
            s,
            "\n## Evaluations\n\n| step | tokens | set | loss | perplexity |\n|---:|---:|---|---:|---:|"
        );
        for e in &evals {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.4} | {:.2} |",
                e.step,
                human(e.tokens as f64),
                e.label,
                e.loss,
                e.perplexity
            );
        }
    }
    let _ = writeln!(s, "\n## Incidents\n");
    if incidents.is_empty() {
        let _ = writeln!(s, "None.");
    } else {
        let lost: u64 = incidents.iter().map(|i| i.lost_steps).sum();
        let _ = writeln!(
            s,
            "{} incidents; {} steps of work lost in total.\n",
            incidents.len(),
            lost
        );
        let _ = writeln!(
            s,
            "| step | kind | lost steps | detail |\n|---:|---|---:|---|"
        );
        for i in incidents {
            let kind = serde_json::to_value(i.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                i.step,
                kind,
                i.lost_steps,
                i.detail.replace('|', "\\|").replace('\n', " ")
            );
        }
    }
    let _ = writeln!(
        s,
        "\n## Files\n\n- `config.yaml`: the resolved config\n- `metrics.jsonl`: one line per step and eval\n- `incidents.jsonl`: resumes, skips, spikes, corrupt checkpoints\n- `tb/`: TensorBoard events (`tensorboard --logdir tb`)\n- `checkpoints/`: resumable checkpoints with HF-named weights"
    );
    s
}

/// Renders and writes the report atomically.
pub fn write_report(
    path: &Path,
    facts: &RunFacts,
    metrics: &[MetricsRecord],
    incidents: &[Incident],
) -> Result<(), MetricsError> {
    atomic_write(path, render_report(facts, metrics, incidents).as_bytes())
}

/// 1234567 → `1.23M`.
pub fn human(x: f64) -> String {
    let a = x.abs();
    if a >= 1e12 {
        format!("{:.2}T", x / 1e12)
    } else if a >= 1e9 {
        format!("{:.2}B", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::jsonl::IncidentKind;

    fn facts() -> RunFacts {
        RunFacts {
            run_name: "quick".into(),
            model: "MPT, 6.8M parameters".into(),
            device: "CPU (flex)".into(),
            precision: "fp32".into(),
            max_steps: 3,
            wall_s: 125.0,
            completed: true,
            stop_reason: None,
            final_checkpoint: Some("checkpoints/ba3".into()),
        }
    }

    fn step(step: u64, loss: f64) -> MetricsRecord {
        MetricsRecord::Train(TrainRecord {
            step,
            tokens: step * 2048,
            loss,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_s: Some(1000.0),
            mfu: Some(0.2),
            comm_s: None,
            elapsed_s: 0.0,
        })
    }

    #[test]
    fn report_summarises_loss_evals_and_incidents() {
        let m = vec![
            step(1, 8.0),
            step(2, 6.0),
            MetricsRecord::Eval(EvalRecord {
                step: 2,
                tokens: 4096,
                label: "eval".into(),
                loss: 6.5,
                perplexity: 6.5f64.exp(),
            }),
            step(3, 4.0),
        ];
        let mut inc = Incident::now(2, IncidentKind::Resume, "resumed from ba1 | after SIGKILL");
        inc.lost_steps = 1;
        let r = render_report(&facts(), &m, &[inc]);
        assert!(r.contains("| status | completed (3 of 3 steps) |"), "{r}");
        assert!(r.contains("- first step (1): 8.0000"));
        assert!(r.contains("- last step (3): 4.0000"));
        assert!(r.contains("- change: -50.0%"));
        assert!(r.contains("| 2 | 4.1k | eval | 6.5000 | 665.14 |"), "{r}");
        assert!(
            r.contains("| 2 | resume | 1 | resumed from ba1 \\| after SIGKILL |"),
            "{r}"
        );
        assert!(r.contains("mean MFU | 20.0%"));
        assert!(r.contains("| wall time | 2m 05s |"));
    }

    #[test]
    fn empty_run_still_reports() {
        let r = render_report(
            &RunFacts {
                completed: false,
                stop_reason: None,
                ..facts()
            },
            &[],
            &[],
        );
        assert!(r.contains("stopped early (0 of 3 steps)"));
        assert!(r.contains("No training steps were recorded."));
        assert!(r.contains("## Incidents\n\nNone."));
    }

    #[test]
    fn written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.md");
        write_report(&p, &facts(), &[step(1, 2.0)], &[]).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .starts_with("# Training report: quick")
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
