//! The `bench dist` table from measured runs: predicted against measured per-rank peak memory,
//! step time, communication time, and the scaling efficiency of 2 ranks against 1.
//!
//! **Fixed overhead.** A rank's peak RSS holds, besides what training allocates, the binary, the
//! allocator's arenas, the thread pools and the data loader. `tessera plan --memory` predicts
//! only the training allocations, so each world size is also run with a tiny model (d_model 16,
//! one layer, the same data and batch) whose training allocations are a few MB: its measured
//! peak minus its own prediction is that world size's overhead. The table compares
//! `prediction + overhead` with the measured peak, and also `prediction` with
//! `measured − overhead` (the part the plan models).
//!
//! **Training, not saving.** The plan models a training step. The run's final checkpoint save
//! (which every run ends with) allocates its own buffers, so the measured training peak is each
//! rank's `VmHWM` read once the run has logged its next-to-last step; the whole process's
//! `ru_maxrss`, save included, is shown beside it.

use std::fmt::Write as _;

/// One rank count × strategy, as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub world: usize,
    /// `NO_SHARD`, `SHARD_GRAD_OP`, `FULL_SHARD`.
    pub strategy: String,
    /// Each rank's peak RSS during training (bytes), rank order: `VmHWM` once the run has
    /// logged its next-to-last step, before the final checkpoint save.
    pub train_peak: Vec<u64>,
    /// Each rank's peak RSS over the whole process (`ru_maxrss`), the final save included.
    pub peak_rss: Vec<u64>,
    /// Seconds per step after the warm-up steps.
    pub step_s: f64,
    /// Tokens per second over the same steps (whole job).
    pub tokens_per_s: f64,
    /// Mean seconds per step in collectives (rank 0's `comm_s`).
    pub comm_s: f64,
}

impl Measured {
    /// The largest rank's training peak (the one that decides whether a run fits).
    pub fn max_peak(&self) -> u64 {
        self.train_peak.iter().copied().max().unwrap_or(0)
    }

    /// The largest rank's peak including the final checkpoint save.
    pub fn max_peak_with_save(&self) -> u64 {
        self.peak_rss.iter().copied().max().unwrap_or(0)
    }
}

/// What `tessera plan --memory` predicted for a run, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Predicted {
    pub total: f64,
    /// Master weights + optimizer moments (the terms that fall as 1/N when sharded).
    pub state: f64,
    /// Parameters held besides the master weights.
    pub params: f64,
}

/// One row: a run, its prediction, and the overhead measured at its world size.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub measured: Measured,
    pub predicted: Predicted,
    /// Fixed per-rank overhead at this world size (tiny model: measured − predicted).
    pub overhead: f64,
}

impl Row {
    /// (predicted + overhead) / measured − 1.
    pub fn error(&self) -> f64 {
        (self.predicted.total + self.overhead) / self.measured.max_peak() as f64 - 1.0
    }

    /// predicted / (measured − overhead) − 1: the error on what the plan models.
    pub fn modelled_error(&self) -> f64 {
        let modelled = self.measured.max_peak() as f64 - self.overhead;
        if modelled <= 0.0 {
            return f64::NAN;
        }
        self.predicted.total / modelled - 1.0
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct DistReport {
    pub rows: Vec<Row>,
    /// Shape line, e.g. "d_model 256, 6 layers, seq 128, global batch 16, microbatch 4".
    pub shape: String,
    pub params: u64,
    pub machine: String,
    pub date: String,
    pub command: String,
    /// `uptime` before the runs.
    pub uptime: String,
    pub noise: String,
    /// Threads per rank.
    pub threads: String,
}

/// tokens/s on 2 ranks ÷ (2 × tokens/s on 1), for the same strategy and global batch.
pub fn scaling_efficiency(rows: &[Row], strategy: &str) -> Option<f64> {
    let tps = |w: usize| {
        rows.iter()
            .find(|r| r.measured.world == w && r.measured.strategy == strategy)
            .map(|r| r.measured.tokens_per_s)
    };
    let (one, two) = (tps(1)?, tps(2)?);
    (one > 0.0).then(|| two / (2.0 * one))
}

fn mib(b: f64) -> String {
    format!("{:.0}", b / (1u64 << 20) as f64)
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.1}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

impl DistReport {
    /// The worst |error| over every row.
    pub fn worst_error(&self) -> f64 {
        self.rows
            .iter()
            .map(|r| r.error().abs())
            .fold(0.0, f64::max)
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Real multi-process CPU training (`tessera train` ranks on 127.0.0.1 with composer's environment, TCP collectives), \
             {} ({:.2}M parameters), fp32, `mixed_precision: FULL`, AdamW; the `+ LoRA r8` rows train only a rank-8 adapter on Wqkv, out_proj, up_proj and down_proj (`model.peft_config`), the base frozen. Training peak is each rank's `VmHWM` once the next-to-last step is logged (before the final \
             checkpoint save), the largest rank shown, or the process's `ru_maxrss` for a rank that had already exited by then (the bench prints which); \"with save\" is the process's `ru_maxrss` (wait4). \
             Overhead: the same run with a d_model-16, 1-layer model, measured minus its own plan. Threads per rank: {}.\n",
            self.shape,
            self.params as f64 / 1e6,
            self.threads,
        );
        md.push_str(
            "| ranks | strategy | training peak/rank (MiB) | with save | overhead (MiB) | plan (MiB) | plan + overhead | error | plan vs measured − overhead | plan: master+moments (MiB) | step (s) | comm/step (s) | tokens/s |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let m = &r.measured;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.0} |",
                m.world,
                m.strategy,
                mib(m.max_peak() as f64),
                mib(m.max_peak_with_save() as f64),
                mib(r.overhead),
                mib(r.predicted.total),
                mib(r.predicted.total + r.overhead),
                pct(r.error()),
                pct(r.modelled_error()),
                mib(r.predicted.state),
                m.step_s,
                m.comm_s,
                m.tokens_per_s,
            );
        }
        let _ = writeln!(
            md,
            "\nWorst |error| of plan + overhead against the measured peak: {:.1}% (goal: within 15%: {}).",
            100.0 * self.worst_error(),
            if self.worst_error() <= 0.15 {
                "met"
            } else {
                "not met"
            }
        );
        md.push_str("\nScaling efficiency, 2 CPU ranks against 1 at the same global batch (tokens/s ratio / 2):");
        for s in ["NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD"] {
            match scaling_efficiency(&self.rows, s) {
                Some(e) => {
                    let _ = write!(md, " {s} {:.0}%;", 100.0 * e);
                }
                None => {
                    let _ = write!(md, " {s} not measured;");
                }
            }
        }
        md.push_str(
            " on a 2-core machine the two ranks share the cores the single rank had, so this \
             measures the cost of the collectives and the split, not added hardware.\n",
        );
        let _ = writeln!(
            md,
            "\nMachine: {}. `uptime` before: {}. {} Date: {}. Command: `{}`.",
            self.machine, self.uptime, self.noise, self.date, self.command
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn row(world: usize, strategy: &str, peak_mib: u64, plan_mib: f64, tps: f64) -> Row {
        Row {
            measured: Measured {
                world,
                strategy: strategy.into(),
                train_peak: vec![peak_mib * MIB - 5 * MIB, peak_mib * MIB],
                peak_rss: vec![peak_mib * MIB + 30 * MIB, peak_mib * MIB],
                step_s: 1.0,
                tokens_per_s: tps,
                comm_s: 0.1,
            },
            predicted: Predicted {
                total: plan_mib * MIB as f64,
                state: 90.0 * MIB as f64 / world as f64,
                params: 0.0,
            },
            overhead: 100.0 * MIB as f64,
        }
    }

    #[test]
    fn errors_compare_plan_plus_overhead_with_the_largest_rank() {
        let r = row(2, "NO_SHARD", 400, 280.0, 1000.0);
        assert_eq!(r.measured.max_peak(), 400 * MIB);
        // (280 + 100) / 400 − 1 = −5%.
        assert!((r.error() + 0.05).abs() < 1e-12);
        // 280 / (400 − 100) − 1 = −6.67%.
        assert!((r.modelled_error() - (280.0 / 300.0 - 1.0)).abs() < 1e-12);
    }

    #[test]
    fn scaling_efficiency_is_the_tokens_per_second_ratio_over_two() {
        let rows = vec![
            row(1, "NO_SHARD", 400, 300.0, 1000.0),
            row(2, "NO_SHARD", 380, 280.0, 1600.0),
            row(1, "FULL_SHARD", 300, 200.0, 900.0),
        ];
        assert_eq!(scaling_efficiency(&rows, "NO_SHARD"), Some(0.8));
        assert_eq!(scaling_efficiency(&rows, "FULL_SHARD"), None);
    }

    #[test]
    fn the_table_shows_each_row_the_verdict_and_the_machine() {
        let report = DistReport {
            rows: vec![
                row(1, "NO_SHARD", 400, 300.0, 1000.0),
                row(2, "NO_SHARD", 380, 280.0, 1500.0),
            ],
            shape: "d_model 256".into(),
            params: 5_770_000,
            machine: "AMD EPYC, 2 cores".into(),
            date: "2026-12-07".into(),
            command: "cargo xtask bench dist".into(),
            uptime: "load average: 1.00".into(),
            noise: "noisy.".into(),
            threads: "2 / N".into(),
        };
        let md = report.to_markdown();
        assert!(
            md.contains("| 1 | NO_SHARD | 400 | 430 | 100 | 300 | 400 | +0.0% | +0.0% | 90 | 1.00 | 0.100 | 1000 |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | NO_SHARD | 380 | 410 | 100 | 280 | 380 | +0.0% |"),
            "{md}"
        );
        assert!(md.contains("within 15%: met"), "{md}");
        assert!(md.contains("NO_SHARD 75%;"), "{md}");
        assert!(md.contains("SHARD_GRAD_OP not measured;"), "{md}");
        assert!(md.contains("`uptime` before: load average: 1.00"), "{md}");
        // A 20% miss is reported as such.
        let mut bad = report.clone();
        bad.rows[0].predicted.total = 380.0 * MIB as f64;
        assert!((bad.worst_error() - 0.2).abs() < 1e-12);
        assert!(bad.to_markdown().contains("not met"));
    }
}
