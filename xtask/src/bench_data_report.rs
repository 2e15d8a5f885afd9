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
    /// The parallelism, as the table shows it ("1 thread", "num_workers 2 (+ main process)").
    pub workers: String,
    pub samples: u64,
    pub dataset_samples: u64,
    pub tokens: u64,
    pub token_sum: u64,
    pub open_seconds: f64,
    pub seconds: f64,
    pub runs: Vec<f64>,
    /// A remark for the text under the table (e.g. the time to the first batch).
    pub note: Option<String>,
}

impl ReadRun {
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// One mosaicml-streaming + torch DataLoader configuration: its run, or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamingRead {
    pub num_workers: usize,
    pub run: Result<ReadRun, String>,
}

impl StreamingRead {
    /// The workers cell: the DataLoader's setting and what it means.
    pub fn workers_label(num_workers: usize) -> String {
        if num_workers == 0 {
            "num_workers 0 (main process only)".into()
        } else {
            format!("num_workers {num_workers} (+ main process)")
        }
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
    /// tessera's batched read (one thread).
    pub tessera_read: ReadRun,
    /// mosaicml-streaming through a torch DataLoader, one entry per `num_workers`.
    pub streaming_reads: Vec<StreamingRead>,
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

    /// The fastest streaming row that was measured.
    pub fn best_streaming(&self) -> Option<&ReadRun> {
        self.streaming_reads
            .iter()
            .filter_map(|s| s.run.as_ref().ok())
            .max_by(|a, b| a.tokens_per_s().total_cmp(&b.tokens_per_s()))
    }

    fn read_table(&self, md: &mut String) {
        let t = &self.tessera_read;
        let _ = writeln!(
            md,
            "**Read** (local MDS → batches of token ids, like for like): the 1-worker prepare output \
             above ({} samples of {} tokens), shuffled (py1e, streaming's default block size, seed \
             9176), num_canonical_nodes 1, batches of {} × {} token ids with each epoch's last \
             partial batch dropped, {} epochs per run. Fastest of {} runs each.\n",
            t.dataset_samples, self.seq_len, self.batch, self.seq_len, self.epochs, self.repeats
        );
        md.push_str(
            "| reader | workers | samples read | seconds | tokens/s | × fastest streaming | open (s) | runs (s) |\n",
        );
        md.push_str("|:---|:---|---:|---:|---:|---:|---:|:---|\n");
        let base = self.best_streaming().map(ReadRun::tokens_per_s);
        let row = |md: &mut String, r: &ReadRun| {
            let ratio = base.map_or("-".into(), |b| format!("{:.1}×", r.tokens_per_s() / b));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.0} | {} | {:.3} | {} |",
                r.tool,
                r.workers,
                r.samples,
                r.seconds,
                r.tokens_per_s(),
                ratio,
                r.open_seconds,
                secs(&r.runs)
            );
        };
        row(md, t);
        for s in &self.streaming_reads {
            match &s.run {
                Ok(r) => row(md, r),
                Err(why) => {
                    let _ = writeln!(
                        md,
                        "| mosaicml-streaming `StreamingDataset` + torch `DataLoader` | {} | - | - | - | - | - | not measured: {} |",
                        StreamingRead::workers_label(s.num_workers),
                        why.replace('|', "\\|")
                    );
                }
            }
        }
        let _ = write!(
            md,
            "\nWhat each side does. **tessera**: one thread, no worker processes or threads: \
             `StreamingDataset::loader`, then per batch `TokenLoader::next_batch_into`, which copies \
             the batch's {b} × {n} token ids out of the memory-mapped shards into one reused \
             `Vec<u32>` (and the {b} sample lengths). tessera has no parallel reader for local, \
             uncompressed shards (its prefetch threads only download or decompress shards), so there \
             is no tessera row at the DataLoader's parallelism. **streaming**: a `StreamingDataset` \
             whose `__getitem__` returns the sample's `tokens` as an int64 tensor (what llm-foundry's \
             `StreamingTextDataset` does for pre-tokenized samples), fed to \
             `torch.utils.data.DataLoader(batch_size={b}, num_workers=N, drop_last=True, \
             persistent_workers=N > 0)`, the way llm-foundry feeds training; the default collate \
             stacks each batch into a LongTensor [{b}, {n}]. With workers, each worker process reads \
             and collates whole batches and hands them to the main process. **Both**: the consuming \
             (main) thread sums every token id of every batch, so neither side can skip the data; \
             seconds cover iterating all the epochs (each epoch's reshuffle included, and for \
             streaming the start of its worker processes); opening the dataset (and building the \
             DataLoader) is timed apart, in the open column. The shards are in the page cache for \
             both (streaming reads a fresh copy of the folder, made before its clock starts).",
            b = self.batch,
            n = self.seq_len
        );
        for s in &self.streaming_reads {
            let Ok(r) = &s.run else { continue };
            let same = if r.samples == t.samples && r.token_sum == t.token_sum {
                "the same samples as tessera (equal counts and token sums)".to_string()
            } else if r.samples == t.samples {
                format!(
                    "as many samples as tessera but a different token sum ({} vs tessera's {})",
                    r.token_sum, t.token_sum
                )
            } else {
                format!(
                    "{} samples to tessera's {} (each DataLoader worker drops its own last partial \
                     batch)",
                    r.samples, t.samples
                )
            };
            let note = r.note.as_ref().map_or(String::new(), |n| format!("; {n}"));
            let _ = write!(md, " Streaming, {}: {same}{note}.", r.workers);
        }
        md.push('\n');
        let head = format!("**Goal ≥ {GOAL:.0}× streaming's iteration (like for like):");
        let goal = match self.best_streaming() {
            Some(s) => {
                let r = t.tokens_per_s() / s.tokens_per_s().max(1e-9);
                format!(
                    "{head} {}** — {r:.1}×: tessera's single-threaded batch read against the \
                     fastest streaming + DataLoader row ({}).",
                    verdict(r),
                    s.workers
                )
            }
            None => {
                let mut why: Vec<String> = self
                    .streaming_reads
                    .iter()
                    .filter_map(|s| s.run.as_ref().err())
                    .cloned()
                    .collect();
                why.dedup();
                let why = if why.is_empty() {
                    "no streaming configuration was run".to_string()
                } else {
                    why.join("; ")
                };
                format!("{head} not measured** — {why}.")
            }
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

    fn read(tool: &str, workers: &str, samples: u64, seconds: f64, token_sum: u64) -> ReadRun {
        ReadRun {
            tool: tool.into(),
            workers: workers.into(),
            samples,
            dataset_samples: samples,
            tokens: samples * 2048,
            token_sum,
            open_seconds: 0.01,
            seconds,
            runs: vec![seconds],
            note: None,
        }
    }

    /// streaming through a DataLoader with `num_workers` 0 over `seconds`, and with 2 workers
    /// twice as fast; or both missing.
    fn streaming(seconds: Option<f64>) -> Vec<StreamingRead> {
        [0, 2]
            .into_iter()
            .map(|n| StreamingRead {
                num_workers: n,
                run: seconds
                    .map(|s| {
                        let s = if n == 0 { s } else { s / 2.0 };
                        read("streaming", &StreamingRead::workers_label(n), 1000, s, 77)
                    })
                    .ok_or_else(|| "no streaming".to_string()),
            })
            .collect()
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
            tessera_read: read("tessera", "1 thread", 1000, 0.1, 77),
            streaming_reads: streaming(streaming_seconds),
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
        let mut r = report(Some(50.0), Some(4.0));
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
        assert!(md.contains("byte-identical (1000 samples)"), "{md}");
        assert!(md.contains("Command: `cargo xtask bench data`"), "{md}");
    }

    #[test]
    fn the_read_headline_is_against_the_fastest_dataloader_row() {
        // tessera 20.48M tokens/s; streaming 0 workers 0.512M (4 s), 2 workers 1.024M (2 s).
        let md = report(Some(50.0), Some(4.0)).to_markdown();
        assert!(
            md.contains("| tessera | 1 thread | 1000 | 0.100 | 20480000 | 20.0× | 0.010 | 0.10 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| streaming | num_workers 0 (main process only) | 1000 | 4.000 | 512000 | 0.5× |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| streaming | num_workers 2 (+ main process) | 1000 | 2.000 | 1024000 | 1.0× |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "streaming's iteration (like for like): met** — 20.0×: tessera's single-threaded \
                 batch read against the fastest streaming + DataLoader row (num_workers 2 (+ main \
                 process))."
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "Streaming, num_workers 0 (main process only): the same samples as tessera \
                 (equal counts and token sums)."
            ),
            "{md}"
        );
        assert!(
            md.contains("DataLoader(batch_size=8, num_workers=N"),
            "{md}"
        );
        assert!(md.contains("LongTensor [8, 2048]"), "{md}");
    }

    #[test]
    fn missed_goals_say_so() {
        // 1 worker 6×, 2 workers 12×: met only with both cores; streaming (2 workers) 5×.
        let md = report(Some(12.0), Some(1.0)).to_markdown();
        assert!(
            md.contains("met only with both cores** — 12.0× at 2 workers; 6.0× at 1 worker"),
            "{md}"
        );
        assert!(
            md.contains("streaming's iteration (like for like): NOT met** — 5.0×"),
            "{md}"
        );
        let md = report(Some(4.0), Some(1.0)).to_markdown();
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
            md.contains("iteration (like for like): not measured** — no streaming."),
            "{md}"
        );
        assert!(
            md.contains("| tessera | 1 | none | 1000 | 2.00 | 1024000 | - |"),
            "{md}"
        );
        assert!(!md.contains("byte-identical"), "{md}");
        // Each missing row is in the table with its reason; tessera's row has no ratio.
        assert!(
            md.contains(
                "| mosaicml-streaming `StreamingDataset` + torch `DataLoader` | num_workers 2 (+ \
                 main process) | - | - | - | - | - | not measured: no streaming |"
            ),
            "{md}"
        );
        assert!(md.contains("| 20480000 | - |"), "{md}");
        // Nothing measured is never a verdict, met or not.
        assert!(!md.contains(" met**"), "{md}");
        // Different reasons are all given, the same reason once.
        let mut r = report(None, None);
        r.streaming_reads[1].run = Err("worker crashed".into());
        let md = r.to_markdown();
        assert!(
            md.contains(
                "iteration (like for like): not measured** — no streaming; worker crashed."
            ),
            "{md}"
        );
        // No configuration run at all still says why.
        r.streaming_reads.clear();
        let md = r.to_markdown();
        assert!(
            md.contains("not measured** — no streaming configuration was run."),
            "{md}"
        );
        // One row measured, one not: the headline is against the measured one, and the missing
        // row keeps its reason in the table.
        let mut r = report(None, Some(4.0));
        r.streaming_reads[1].run = Err("a | b".into());
        let md = r.to_markdown();
        assert!(md.contains("not measured: a \\| b |"), "{md}");
        assert!(
            md.contains(
                "iteration (like for like): met** — 40.0×: tessera's single-threaded batch read \
                 against the fastest streaming + DataLoader row (num_workers 0 (main process only))."
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| streaming | num_workers 0 (main process only) | 1000 | 4.000 | 512000 | 1.0× |"
            ),
            "{md}"
        );
    }

    #[test]
    fn workers_slower_than_the_main_process_leave_the_headline_on_the_main_process() {
        // 0 workers over 2 s (1.024M tokens/s), 2 workers over 8 s: the headline is 20×, not 80×.
        let mut r = report(Some(50.0), Some(2.0));
        r.streaming_reads[1].run = Ok(read(
            "streaming",
            &StreamingRead::workers_label(2),
            1000,
            8.0,
            77,
        ));
        let md = r.to_markdown();
        assert_eq!(r.best_streaming().map(|b| b.seconds), Some(2.0));
        assert!(md.contains("met** — 20.0×"), "{md}");
        assert!(md.contains("(num_workers 0 (main process only))."), "{md}");
        assert!(
            md.contains(
                "| streaming | num_workers 2 (+ main process) | 1000 | 8.000 | 256000 | 0.2× |"
            ),
            "{md}"
        );
        assert!(!md.contains("80.0×"), "{md}");
    }

    #[test]
    fn differing_reads_are_explained() {
        let mut r = report(Some(50.0), Some(2.0));
        r.streaming_reads[1].run = Ok(read("streaming", "num_workers 2", 992, 2.0, 80));
        r.streaming_reads[0].run = Ok(read("streaming", "num_workers 0", 1000, 2.0, 78));
        let md = r.to_markdown();
        assert!(
            md.contains("Streaming, num_workers 2: 992 samples to tessera's 1000"),
            "{md}"
        );
        assert!(
            md.contains(
                "as many samples as tessera but a different token sum (78 vs tessera's 77)"
            ),
            "{md}"
        );
        r.output_match = Some(MdsMatch::Different {
            a_samples: 1,
            b_samples: 2,
        });
        assert!(r.to_markdown().contains("**The outputs differ**"));
    }
}
