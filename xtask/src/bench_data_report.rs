//! The `data` section of BENCHMARKS.md: the measured runs of `cargo xtask bench data` as two
//! markdown tables, with the ≥ 10× goal verdicts and every caveat the numbers need.

use std::fmt::Write as _;

/// The speed-up the data goals ask for.
pub const GOAL: f64 = 10.0;

/// One converter configuration, fastest of its repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct PrepareRun {
    pub tool: String,
    pub workers: String,
    pub cleaning: String,
    pub samples: u64,
    /// Tokens written (samples × seq_len), the same definition for both tools.
    pub tokens: u64,
    pub seconds: f64,
    pub runs: Vec<f64>,
    pub note: Option<String>,
}

impl PrepareRun {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// One reader, fastest of its repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadRun {
    pub tool: String,
    pub samples: u64,
    pub dataset_samples: u64,
    pub tokens: u64,
    pub token_sum: u64,
    pub open_seconds: f64,
    pub seconds: f64,
    pub runs: Vec<f64>,
}

impl ReadRun {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// How tessera's output compares with llm-foundry's.
#[derive(Clone, Debug, PartialEq)]
pub enum MdsMatch {
    IdenticalShards { shards: usize, samples: u64 },
    SameSampleCount { samples: u64 },
    Different { a_samples: u64, b_samples: u64 },
}

/// Everything the section shows.
pub struct DataReport {
    pub input: String,
    pub seq_len: u64,
    /// tessera's runs; the first is 1 worker without cleaning, the second 2 workers.
    pub prepare: Vec<PrepareRun>,
    /// llm-foundry's run, or why there is none.
    pub foundry: Result<PrepareRun, String>,
    pub output_match: Option<MdsMatch>,
    pub tessera_read: ReadRun,
    pub streaming_read: Result<ReadRun, String>,
    pub batch: u64,
    pub epochs: u64,
    pub repeats: usize,
    pub machine: String,
    pub date: String,
    pub command: String,
    pub noise: String,
}

/// "met"/"NOT met" and the ratio, for one goal.
pub fn verdict(ratio: f64) -> &'static str {
    if ratio >= GOAL { "met" } else { "NOT met" }
}

fn secs(runs: &[f64]) -> String {
    runs.iter()
        .map(|s| format!("{s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataReport {
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        self.prepare_table(&mut md);
        md.push('\n');
        self.read_table(&mut md);
        let _ = write!(
            md,
            "\nMachine: {}. Date: {}. Command: `{}`.\n{}\n",
            self.machine, self.date, self.command, self.noise
        );
        md
    }

    fn prepare_table(&self, md: &mut String) {
        let base = self.foundry.as_ref().ok().map(PrepareRun::tokens_per_s);
        let _ = writeln!(
            md,
            "**Prepare** (JSONL → tokenized MDS): {}, gpt-neox-20b tokenizer, seq_len {}, documents \
             joined with EOS, wrapped, concatenated, uncompressed shards. Fastest of {} runs each.\n",
            self.input, self.seq_len, self.repeats
        );
        md.push_str("| tool | workers | cleaning | samples | seconds | tokens/s | × llm-foundry | runs (s) |\n");
        md.push_str("|:---|---:|:---|---:|---:|---:|---:|:---|\n");
        let rows = self.prepare.iter().chain(self.foundry.as_ref().ok());
        for r in rows {
            // A ratio only where both wrote the same data (not for the cleaning row).
            let ratio = match (&self.foundry, base) {
                (Ok(f), Some(b)) if f.samples == r.samples => {
                    format!("{:.1}×", r.tokens_per_s() / b)
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {:.0} | {} | {} |",
                r.tool,
                r.workers,
                r.cleaning,
                r.samples,
                r.seconds,
                r.tokens_per_s(),
                ratio,
                secs(&r.runs)
            );
        }
        md.push_str(
            "\ntokens/s = tokens written (samples × seq_len) / seconds. tessera's seconds are the \
             wall-clock time of the whole `tessera data prepare` process (start-up, tokenizer load, \
             read, tokenize, write, fsync); llm-foundry's are its `convert_dataset_json` call \
             (tokenizer load, JSON → Arrow load into an empty cache, tokenize, write), with Python \
             start-up and imports left out.",
        );
        for r in &self.prepare {
            if let Some(n) = &r.note {
                let _ = write!(
                    md,
                    " tessera, {} worker{}, cleaning {}: {n}.",
                    r.workers,
                    if r.workers == "1" { "" } else { "s" },
                    r.cleaning
                );
            }
        }
        if let Ok(f) = &self.foundry
            && let Some(n) = &f.note
        {
            let _ = write!(md, " llm-foundry: {n}.");
        }
        md.push('\n');
        match &self.output_match {
            Some(MdsMatch::IdenticalShards { shards, samples }) => {
                let _ = writeln!(
                    md,
                    "\nSame output: tessera's and llm-foundry's {shards} shard file(s) are byte-identical ({samples} samples)."
                );
            }
            Some(MdsMatch::SameSampleCount { samples }) => {
                let _ = writeln!(
                    md,
                    "\nBoth wrote {samples} samples; the shard files are not byte-identical."
                );
            }
            Some(MdsMatch::Different {
                a_samples,
                b_samples,
            }) => {
                let _ = writeln!(
                    md,
                    "\n**The outputs differ**: tessera wrote {a_samples} samples, llm-foundry {b_samples}."
                );
            }
            None => {}
        }
        let _ = writeln!(md, "\n{}", self.prepare_goal());
    }

    fn prepare_goal(&self) -> String {
        let head = format!("**Goal ≥ {GOAL:.0}× llm-foundry's convert:");
        let f = match &self.foundry {
            Ok(f) => f.tokens_per_s(),
            Err(why) => return format!("{head} not measured** — {why}."),
        };
        let ratio = |i: usize| self.prepare.get(i).map_or(0.0, |r| r.tokens_per_s() / f);
        let (w1, w2) = (ratio(0), ratio(1));
        if w1 >= GOAL {
            format!(
                "{head} met** — {w1:.1}× at 1 worker (the same parallelism as llm-foundry's single \
                 process), {w2:.1}× at 2 workers."
            )
        } else if w2 >= GOAL {
            format!(
                "{head} met only with both cores** — {w2:.1}× at 2 workers; {w1:.1}× at 1 worker \
                 (llm-foundry's JSON converter has no parallel mode)."
            )
        } else {
            format!("{head} NOT met** — {w1:.1}× at 1 worker, {w2:.1}× at 2 workers.")
        }
    }

    fn read_table(&self, md: &mut String) {
        let t = &self.tessera_read;
        let _ = writeln!(
            md,
            "**Read** (local MDS → token batches): the 1-worker prepare output above ({} samples of \
             {} tokens), shuffled (py1e, streaming's default block size, seed 9176), \
             num_canonical_nodes 1, batch {}, {} epochs per run, 1 process, no DataLoader. Fastest \
             of {} runs each.\n",
            t.dataset_samples, self.seq_len, self.batch, self.epochs, self.repeats
        );
        md.push_str(
            "| reader | samples read | seconds | tokens/s | × streaming | open (s) | runs (s) |\n",
        );
        md.push_str("|:---|---:|---:|---:|---:|---:|:---|\n");
        let base = self.streaming_read.as_ref().ok().map(ReadRun::tokens_per_s);
        for r in std::iter::once(t).chain(self.streaming_read.as_ref().ok()) {
            let ratio = base.map_or("-".into(), |b| format!("{:.1}×", r.tokens_per_s() / b));
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} | {:.0} | {} | {:.3} | {} |",
                r.tool,
                r.samples,
                r.seconds,
                r.tokens_per_s(),
                ratio,
                r.open_seconds,
                secs(&r.runs)
            );
        }
        md.push_str(
            "\nBoth readers sum every token they return (so neither can skip the data); seconds \
             cover iteration only, opening the dataset is shown apart.",
        );
        match &self.streaming_read {
            Ok(s) if s.samples == t.samples && s.token_sum == t.token_sum => {
                md.push_str(" Both returned the same samples (equal counts and token sums).\n");
            }
            Ok(s) => {
                let _ = writeln!(
                    md,
                    " Sample counts differ ({} vs {}): tessera drops each epoch's tail shorter than \
                     a batch (as `drop_last` does); streaming's iterator yields it.",
                    t.samples, s.samples
                );
            }
            Err(_) => md.push('\n'),
        }
        let head = format!("**Goal ≥ {GOAL:.0}× streaming's iteration:");
        let goal = match &self.streaming_read {
            Ok(s) => {
                let r = t.tokens_per_s() / s.tokens_per_s().max(1e-9);
                format!("{head} {}** — {r:.1}×.", verdict(r))
            }
            Err(why) => format!("{head} not measured** — {why}."),
        };
        let _ = writeln!(md, "\n{goal}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(tool: &str, workers: &str, tokens: u64, seconds: f64) -> PrepareRun {
        PrepareRun {
            tool: tool.into(),
            workers: workers.into(),
            cleaning: "none".into(),
            samples: tokens / 2048,
            tokens,
            seconds,
            runs: vec![seconds, seconds * 1.5],
            note: None,
        }
    }

    fn read(tool: &str, samples: u64, seconds: f64, token_sum: u64) -> ReadRun {
        ReadRun {
            tool: tool.into(),
            samples,
            dataset_samples: samples,
            tokens: samples * 2048,
            token_sum,
            open_seconds: 0.01,
            seconds,
            runs: vec![seconds],
        }
    }

    fn report(foundry_seconds: Option<f64>, streaming_seconds: Option<f64>) -> DataReport {
        let tokens = 2048 * 1000;
        DataReport {
            input: "corpus".into(),
            seq_len: 2048,
            prepare: vec![
                prep("tessera", "1", tokens, 2.0),
                prep("tessera", "2", tokens, 1.0),
            ],
            foundry: foundry_seconds
                .map(|s| prep("llm-foundry", "1 process", tokens, s))
                .ok_or_else(|| "pip failed".to_string()),
            output_match: foundry_seconds.map(|_| MdsMatch::IdenticalShards {
                shards: 1,
                samples: 1000,
            }),
            tessera_read: read("tessera", 1000, 0.1, 77),
            streaming_read: streaming_seconds
                .map(|s| read("streaming", 1000, s, 77))
                .ok_or_else(|| "no streaming".to_string()),
            batch: 8,
            epochs: 5,
            repeats: 3,
            machine: "test machine".into(),
            date: "2026-01-01".into(),
            command: "cargo xtask bench data".into(),
            noise: "noisy".into(),
        }
    }

    #[test]
    fn ratios_are_against_the_reference_rows() {
        // tessera 1 worker: 1.024M tokens/s; llm-foundry over 50 s: 40960 tokens/s → 25×.
        let mut r = report(Some(50.0), Some(2.0));
        let mut cleaned = prep("tessera", "2", 2048 * 400, 1.0);
        cleaned.cleaning = "`--clean-all`".into();
        cleaned.note = Some("kept 3 of 9 documents".into());
        r.prepare.push(cleaned);
        let md = r.to_markdown();
        assert!(md.contains("| 1024000 | 25.0× |"), "{md}");
        assert!(
            md.contains("| `--clean-all` | 400 | 1.00 | 819200 | - |"),
            "no ratio for other output: {md}"
        );
        assert!(
            md.contains("tessera, 2 workers, cleaning `--clean-all`: kept 3 of 9 documents."),
            "{md}"
        );
        assert!(md.contains("| 2048000 | 50.0× |"), "{md}");
        assert!(md.contains("| 40960 | 1.0× |"), "{md}");
        assert!(md.contains("| 2.00, 3.00 |"), "runs are listed: {md}");
        assert!(md.contains("met** — 25.0× at 1 worker"), "{md}");
        assert!(md.contains("streaming's iteration: met** — 20.0×"), "{md}");
        assert!(md.contains("byte-identical (1000 samples)"), "{md}");
        assert!(
            md.contains("same samples (equal counts and token sums)"),
            "{md}"
        );
        assert!(md.contains("Command: `cargo xtask bench data`"), "{md}");
    }

    #[test]
    fn missed_goals_say_so() {
        // 1 worker 6×, 2 workers 12×: met only with both cores; streaming 5×.
        let md = report(Some(12.0), Some(0.5)).to_markdown();
        assert!(
            md.contains("met only with both cores** — 12.0× at 2 workers; 6.0× at 1 worker"),
            "{md}"
        );
        assert!(
            md.contains("streaming's iteration: NOT met** — 5.0×"),
            "{md}"
        );
        let md = report(Some(4.0), Some(0.5)).to_markdown();
        assert!(
            md.contains("convert: NOT met** — 2.0× at 1 worker, 4.0× at 2 workers"),
            "{md}"
        );
    }

    #[test]
    fn missing_comparisons_carry_their_reason() {
        let md = report(None, None).to_markdown();
        assert!(md.contains("convert: not measured** — pip failed."), "{md}");
        assert!(
            md.contains("iteration: not measured** — no streaming."),
            "{md}"
        );
        assert!(
            md.contains("| tessera | 1 | none | 1000 | 2.00 | 1024000 | - |"),
            "{md}"
        );
        assert!(!md.contains("byte-identical"), "{md}");
    }

    #[test]
    fn differing_reads_are_explained() {
        let mut r = report(Some(50.0), Some(2.0));
        r.streaming_read = Ok(read("streaming", 1003, 2.0, 80));
        let md = r.to_markdown();
        assert!(md.contains("Sample counts differ (1000 vs 1003)"), "{md}");
        r.output_match = Some(MdsMatch::Different {
            a_samples: 1,
            b_samples: 2,
        });
        assert!(r.to_markdown().contains("**The outputs differ**"));
    }
}
