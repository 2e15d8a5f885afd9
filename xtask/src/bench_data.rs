//! `cargo xtask bench data`: prepare throughput (JSONL → tokenized MDS) and shuffled read
//! throughput (MDS → token batches), each against the tool tessera replaces — llm-foundry's
//! `convert_dataset_json` and mosaicml-streaming's `StreamingDataset` — on the same data, the
//! same tokenizer, the same machine, in one run.
//!
//! The read comparison is like for like: tessera's batched read against streaming fed through a
//! torch `DataLoader` (the way llm-foundry feeds training) with the same shuffle, the same batch
//! size and the last partial batch dropped on both sides, at `num_workers` 0 and 2 (and the core
//! count, where there are more than 2 cores); the headline ratio is against the fastest of those.
//!
//! Every side is run `--repeats` times and the fastest run counts (the CI machine is shared, so
//! the fastest run is the one least disturbed). The table, the goal verdicts (≥ 10× each) and the
//! reasons for any missing comparison go to the `data` section of BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::bench_data_report::{DataReport, MdsMatch, PrepareRun, ReadRun, StreamingRead};
use crate::bench_env::{self, Scratch};
use crate::{markdown, pyenv, util};

/// Tokens per sample, for both converters.
const SEQ_LEN: u64 = 2048;
const CORPUS: &str = "corpus/corpus.jsonl.zst";
const TOKENIZER: &str = "tokenizer/gpt-neox-20b/tokenizer.json";

#[derive(clap::Args, Clone, Copy)]
pub struct Args {
    /// Runs of each measurement; the fastest counts.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Samples per batch in the read benchmark (both readers).
    #[arg(long, default_value_t = 8)]
    pub batch: u64,
    /// Epochs per read run (each with its own shuffle).
    #[arg(long, default_value_t = 5)]
    pub epochs: u64,
    /// Do not create the llm-foundry or the mosaicml-streaming venv when missing (that comparison
    /// is then reported as not measured, with the reason).
    #[arg(long)]
    pub no_install: bool,
}

impl Args {
    fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask bench data --repeats {} --batch {} --epochs {}",
            self.repeats, self.batch, self.epochs
        );
        if self.no_install {
            s.push_str(" --no-install");
        }
        s
    }
}

/// The subset of `prepare.json` the table needs.
#[derive(Deserialize)]
struct PrepareJson {
    samples: u64,
    docs_in: u64,
    docs_out: u64,
    tokens_per_sec: f64,
}

/// `tessera bench-stream` and `streaming_iter_bench.py` print the same fields (the script adds
/// the time to its first batch and versions).
#[derive(Deserialize)]
struct ReadJson {
    samples: u64,
    tokens: u64,
    token_sum: u64,
    dataset_samples: u64,
    open_seconds: f64,
    seconds: f64,
    #[serde(default)]
    first_batch_seconds: Option<f64>,
    #[serde(default)]
    batch_shape: Option<Vec<u64>>,
    #[serde(default)]
    batch_dtype: Option<String>,
    #[serde(default)]
    torch: Option<String>,
}

/// The DataLoader `num_workers` settings the streaming side runs with: none (the main process
/// reads), 2, and every core where there are more.
fn loader_workers(cores: usize) -> Vec<usize> {
    let mut w = vec![0, 2];
    if cores > 2 {
        w.push(cores);
    }
    w
}

/// `llmfoundry_convert_bench.py`'s output.
#[derive(Deserialize)]
struct FoundryJson {
    seconds: f64,
    runs: Vec<f64>,
    import_seconds: f64,
    samples: u64,
    out: PathBuf,
    llmfoundry: String,
    transformers: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.repeats == 0 || args.batch == 0 || args.epochs == 0 {
        bail!("--repeats, --batch and --epochs must each be at least 1");
    }
    let fixtures = bench_env::shared_fixtures(&[CORPUS, TOKENIZER])?;
    let tokenizer = fixtures.join(TOKENIZER);
    let load_before = bench_env::load_average();
    let bin = util::build_tessera(&[])?;
    let scratch = Scratch::new("data")?;

    let jsonl = scratch.join("corpus.jsonl");
    decompress(&fixtures.join(CORPUS), &jsonl)?;
    let input_mb = std::fs::metadata(&jsonl).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;

    let mut prepare = Vec::new();
    for (workers, clean) in [(1, false), (2, false), (2, true)] {
        let run = tessera_prepare(
            &bin,
            &jsonl,
            &tokenizer,
            &scratch.path,
            workers,
            clean,
            args.repeats,
        )?;
        println!(
            "tessera prepare, {workers} worker(s){}: {:.0} tokens/s",
            if clean { ", --clean-all" } else { "" },
            run.0.tokens_per_s()
        );
        prepare.push(run);
    }
    let dataset = prepare[0].1.join("train");

    let foundry = pyenv::llmfoundry(!args.no_install).and_then(|py| {
        let v = foundry_convert(
            &py.exe,
            &jsonl,
            &tokenizer,
            &scratch.join("foundry"),
            args.repeats,
        )?;
        let matched =
            compare_mds(&dataset, &v.out).map_err(|e| format!("comparing outputs: {e:#}"))?;
        let run = PrepareRun {
            tool: format!(
                "llm-foundry {} `convert_dataset_json` (transformers {})",
                v.llmfoundry, v.transformers
            ),
            workers: "1 process".into(),
            cleaning: "none".into(),
            samples: v.samples,
            tokens: v.samples * SEQ_LEN,
            seconds: v.seconds,
            runs: v.runs,
            note: Some(format!(
                "{:.0} s of Python imports not counted",
                v.import_seconds
            )),
        };
        Ok((run, matched))
    });
    match &foundry {
        Ok((r, _)) => println!("llm-foundry convert: {:.0} tokens/s", r.tokens_per_s()),
        Err(why) => println!("llm-foundry comparison missing: {why}"),
    }

    let tessera_read = best_read(args.repeats, || {
        let mut cmd = Command::new(&bin);
        cmd.arg("bench-stream").arg(&dataset).arg("--shuffle");
        cmd.args([
            "--batch",
            &args.batch.to_string(),
            "--epochs",
            &args.epochs.to_string(),
        ]);
        cmd.args(["--num-canonical-nodes", "1"]);
        json_line::<ReadJson>(&util::output(&mut cmd)?)
    })?;
    let streaming_python = pyenv::streaming(!args.no_install);
    let streaming_reads: Vec<StreamingRead> = loader_workers(cores())
        .into_iter()
        .map(|n| {
            let run = match &streaming_python {
                Ok(py) => streaming_read(&py.exe, &dataset, &args, n).map_err(|e| format!("{e:#}")),
                Err(why) => Err(why.clone()),
            };
            match &run {
                Ok(r) => println!(
                    "streaming + DataLoader, num_workers {n}: {:.0} tokens/s",
                    r.tokens_per_s()
                ),
                Err(why) => println!("streaming + DataLoader, num_workers {n}, missing: {why}"),
            }
            StreamingRead {
                num_workers: n,
                run,
            }
        })
        .collect();

    let report = DataReport {
        input: format!(
            "`corpus/corpus.jsonl.zst` decompressed ({input_mb:.1} MB of JSONL, CPython stdlib code and Python docs prose)"
        ),
        seq_len: SEQ_LEN,
        prepare: prepare.into_iter().map(|(r, _)| r).collect(),
        foundry: foundry
            .as_ref()
            .map(|(r, _)| r.clone())
            .map_err(Clone::clone),
        output_match: foundry.as_ref().ok().map(|(_, m)| m.clone()),
        tessera_read: read_run(
            "tessera `TokenLoader::next_batch_into`",
            "1 thread",
            tessera_read,
        ),
        streaming_reads,
        batch: args.batch,
        epochs: args.epochs,
        repeats: args.repeats,
        machine: util::machine(),
        date: util::today(),
        command: args.command_line(),
        noise: bench_env::noise_note(cores(), load_before, bench_env::load_average()),
    };
    markdown::publish(
        "data",
        "Data: prepare and read throughput",
        &report.to_markdown(),
    )
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// One streaming + DataLoader configuration, fastest of `args.repeats` runs (each its own
/// process, so streaming's shared memory starts clean).
fn streaming_read(
    python: &Path,
    dataset: &Path,
    args: &Args,
    num_workers: usize,
) -> anyhow::Result<ReadRun> {
    let run = best_read(args.repeats, || {
        let mut cmd = Command::new(python);
        cmd.arg(util::root().join("xtask/python/streaming_iter_bench.py"))
            .arg(dataset)
            .arg("--shuffle");
        cmd.args([
            "--batch",
            &args.batch.to_string(),
            "--epochs",
            &args.epochs.to_string(),
            "--num-workers",
            &num_workers.to_string(),
        ]);
        cmd.args(["--num-canonical-nodes", "1"]);
        let out = util::output(&mut cmd)?;
        if let Some(why) = skipped(&out) {
            bail!("{why}");
        }
        json_line::<ReadJson>(&out)
    })?;
    let streaming_version =
        pyenv::version_of(python, "mosaicml-streaming").unwrap_or_else(|| "?".into());
    let torch = run.0.torch.clone().unwrap_or_else(|| "?".into());
    let mut note = Vec::new();
    if let (Some(shape), Some(dtype)) = (&run.0.batch_shape, &run.0.batch_dtype) {
        let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
        note.push(format!("batches are {dtype} [{}]", dims.join(", ")));
    }
    if let Some(first) = run.0.first_batch_seconds {
        note.push(format!(
            "first batch after {first:.3} s of the fastest run{}",
            if num_workers > 0 {
                " (worker start-up)"
            } else {
                ""
            }
        ));
    }
    let mut r = read_run(
        &format!(
            "mosaicml-streaming {streaming_version} `StreamingDataset` + torch {torch} `DataLoader`"
        ),
        &StreamingRead::workers_label(num_workers),
        run,
    );
    r.note = (!note.is_empty()).then(|| note.join(", "));
    Ok(r)
}

fn read_run(tool: &str, workers: &str, (r, runs): (ReadJson, Vec<f64>)) -> ReadRun {
    ReadRun {
        tool: tool.into(),
        workers: workers.into(),
        samples: r.samples,
        dataset_samples: r.dataset_samples,
        tokens: r.tokens,
        token_sum: r.token_sum,
        open_seconds: r.open_seconds,
        seconds: r.seconds,
        runs,
        note: None,
    }
}

/// `zstd -dc`: both converters read the same plain JSONL.
fn decompress(src: &Path, dest: &Path) -> anyhow::Result<()> {
    util::run(
        Command::new("zstd")
            .args(["-d", "-q", "-f"])
            .arg(src)
            .arg("-o")
            .arg(dest),
    )
    .context("decompressing the corpus needs the zstd command (apt-get install zstd)")
}

/// Runs `tessera data prepare` `repeats` times into fresh folders; the fastest wall-clock run
/// counts. Returns the run and the first run's output folder (kept for the read benchmark).
fn tessera_prepare(
    bin: &Path,
    jsonl: &Path,
    tokenizer: &Path,
    scratch: &Path,
    workers: usize,
    clean: bool,
    repeats: usize,
) -> anyhow::Result<(PrepareRun, PathBuf)> {
    let tag = format!("tessera-w{workers}{}", if clean { "-clean" } else { "" });
    let mut runs = Vec::new();
    let mut report = None;
    for n in 0..repeats {
        let out = scratch.join(format!("{tag}-{n}"));
        let mut cmd = Command::new(bin);
        cmd.args(["data", "prepare", "--input"])
            .arg(jsonl)
            .arg("--tokenizer")
            .arg(tokenizer);
        cmd.arg("--out").arg(&out);
        cmd.args([
            "--workers",
            &workers.to_string(),
            "--seq-len",
            &SEQ_LEN.to_string(),
            "--quiet",
        ]);
        if clean {
            cmd.arg("--clean-all");
        }
        let t = Instant::now();
        util::output(&mut cmd)?;
        runs.push(t.elapsed().as_secs_f64());
        let path = out.join("prepare.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let r: PrepareJson =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if n > 0 {
            std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
        }
        report = Some(r);
    }
    let r = report.context("no prepare run")?;
    let seconds = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let run = PrepareRun {
        tool: "tessera `data prepare`".into(),
        workers: workers.to_string(),
        cleaning: if clean {
            "`--clean-all`".into()
        } else {
            "none".into()
        },
        samples: r.samples,
        tokens: r.samples * SEQ_LEN,
        seconds,
        runs,
        note: Some(if clean {
            format!(
                "kept {} of {} documents; in-process rate {:.0} tokens/s",
                r.docs_out, r.docs_in, r.tokens_per_sec
            )
        } else {
            format!("in-process rate {:.0} tokens/s", r.tokens_per_sec)
        }),
    };
    Ok((run, scratch.join(format!("{tag}-0"))))
}

/// llm-foundry's converter through `llmfoundry_convert_bench.py` (its own repeats).
fn foundry_convert(
    python: &Path,
    jsonl: &Path,
    tokenizer: &Path,
    out: &Path,
    repeats: usize,
) -> Result<FoundryJson, String> {
    let mut cmd = Command::new(python);
    cmd.arg(util::root().join("xtask/python/llmfoundry_convert_bench.py"));
    cmd.arg("--jsonl")
        .arg(jsonl)
        .arg("--tokenizer")
        .arg(tokenizer)
        .arg("--out")
        .arg(out);
    cmd.args([
        "--seq-len",
        &SEQ_LEN.to_string(),
        "--repeats",
        &repeats.to_string(),
    ]);
    let text = util::output(&mut cmd).map_err(|e| format!("llm-foundry run failed: {e:#}"))?;
    if let Some(why) = skipped(&text) {
        return Err(why);
    }
    json_line(&text).map_err(|e| format!("{e:#}"))
}

/// Runs `measure` `repeats` times; the fastest counts. Returns it and every run's seconds.
fn best_read(
    repeats: usize,
    mut measure: impl FnMut() -> anyhow::Result<ReadJson>,
) -> anyhow::Result<(ReadJson, Vec<f64>)> {
    let mut best: Option<ReadJson> = None;
    let mut runs = Vec::new();
    for _ in 0..repeats {
        let r = measure()?;
        runs.push(r.seconds);
        if best.as_ref().is_none_or(|b| r.seconds < b.seconds) {
            best = Some(r);
        }
    }
    Ok((best.context("no read run")?, runs))
}

/// The last line of `out` that is a JSON object, parsed.
pub fn json_line<T: serde::de::DeserializeOwned>(out: &str) -> anyhow::Result<T> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("no JSON line in the benchmark output: {out:?}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing benchmark output line {line:?}"))
}

/// The reason in a `{"skipped": "..."}` line, if the helper printed one.
pub fn skipped(out: &str) -> Option<String> {
    let v: serde_json::Value = json_line(out).ok()?;
    v.get("skipped")?.as_str().map(str::to_string)
}

/// Whether two MDS folders hold the same data: identical shard files, or at least the same
/// number of samples.
pub fn compare_mds(a: &Path, b: &Path) -> anyhow::Result<MdsMatch> {
    let (sa, sb) = (shards(a)?, shards(b)?);
    let count = |s: &[(String, u64)]| s.iter().map(|(_, n)| n).sum::<u64>();
    let (na, nb) = (count(&sa), count(&sb));
    if na != nb {
        return Ok(MdsMatch::Different {
            a_samples: na,
            b_samples: nb,
        });
    }
    if sa.len() == sb.len() {
        let mut same = true;
        for ((fa, _), (fb, _)) in sa.iter().zip(&sb) {
            let ra = std::fs::read(a.join(fa))
                .with_context(|| format!("reading {}", a.join(fa).display()))?;
            let rb = std::fs::read(b.join(fb))
                .with_context(|| format!("reading {}", b.join(fb).display()))?;
            same &= ra == rb;
        }
        if same {
            return Ok(MdsMatch::IdenticalShards {
                shards: sa.len(),
                samples: na,
            });
        }
    }
    Ok(MdsMatch::SameSampleCount { samples: na })
}

/// (shard file, samples) per shard of `dir/index.json`: the compressed file where there is one.
fn shards(dir: &Path) -> anyhow::Result<Vec<(String, u64)>> {
    let path = dir.join("index.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let list = v["shards"]
        .as_array()
        .with_context(|| format!("{}: no shards list", path.display()))?;
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            let file = s["zip_data"]["basename"]
                .as_str()
                .or_else(|| s["raw_data"]["basename"].as_str());
            let samples = s["samples"].as_u64();
            match (file, samples) {
                (Some(f), Some(n)) => Ok((f.to_string(), n)),
                _ => bail!(
                    "{}: shard {i} lacks a file name or sample count",
                    path.display()
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_mds(dir: &Path, shards: &[(&str, u64, &[u8])]) {
        std::fs::create_dir_all(dir).unwrap();
        let list: Vec<serde_json::Value> = shards
            .iter()
            .map(|(name, n, bytes)| {
                std::fs::write(dir.join(name), bytes).unwrap();
                serde_json::json!({"raw_data": {"basename": name, "bytes": bytes.len()}, "samples": n, "zip_data": null})
            })
            .collect();
        let index = serde_json::json!({"shards": list, "version": 2});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }

    #[test]
    fn mds_folders_compare_by_bytes_then_by_count() {
        let root = std::env::temp_dir().join(format!("xtask-mds-{}", std::process::id()));
        let (a, b, c, d) = (
            root.join("a"),
            root.join("b"),
            root.join("c"),
            root.join("d"),
        );
        write_mds(
            &a,
            &[("shard.00000.mds", 3, b"abc"), ("shard.00001.mds", 1, b"d")],
        );
        write_mds(
            &b,
            &[("shard.00000.mds", 3, b"abc"), ("shard.00001.mds", 1, b"d")],
        );
        write_mds(&c, &[("shard.00000.mds", 4, b"abcX")]);
        write_mds(&d, &[("shard.00000.mds", 5, b"abcde")]);
        assert_eq!(
            compare_mds(&a, &b).unwrap(),
            MdsMatch::IdenticalShards {
                shards: 2,
                samples: 4
            }
        );
        assert_eq!(
            compare_mds(&a, &c).unwrap(),
            MdsMatch::SameSampleCount { samples: 4 }
        );
        assert_eq!(
            compare_mds(&a, &d).unwrap(),
            MdsMatch::Different {
                a_samples: 4,
                b_samples: 5
            }
        );
        std::fs::write(b.join("shard.00001.mds"), b"e").unwrap();
        assert_eq!(
            compare_mds(&a, &b).unwrap(),
            MdsMatch::SameSampleCount { samples: 4 }
        );
        let err = compare_mds(&a, &root.join("missing")).unwrap_err();
        assert!(format!("{err:#}").contains("missing/index.json"), "{err:#}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn json_line_takes_the_last_object_and_skips_are_read() {
        let out = "progress\n{\"samples\": 1}\nnoise\n{\"samples\": 2, \"tokens\": 4, \"token_sum\": 9, \
                   \"dataset_samples\": 2, \"open_seconds\": 0.1, \"seconds\": 0.5}\n";
        let r: ReadJson = json_line(out).unwrap();
        assert_eq!((r.samples, r.tokens, r.token_sum), (2, 4, 9));
        assert!(json_line::<ReadJson>("no json here").is_err());
        assert!(json_line::<ReadJson>("{\"samples\": \"x\"}").is_err());
        assert_eq!(
            skipped("{\"skipped\": \"no torch\"}\n").as_deref(),
            Some("no torch")
        );
        assert_eq!(skipped(out), None);
        // The DataLoader script's line adds the batch, the first batch's time and versions.
        let r: ReadJson = json_line(
            "{\"samples\": 16, \"tokens\": 32768, \"token_sum\": 5, \"batches\": 2, \
             \"batch_shape\": [8, 2048], \"batch_dtype\": \"torch.int64\", \
             \"dataset_samples\": 17, \"num_workers\": 2, \"open_seconds\": 0.01, \
             \"first_batch_seconds\": 1.5, \"seconds\": 2.0, \"torch\": \"2.7.0+cpu\"}",
        )
        .unwrap();
        assert_eq!(r.batch_shape.as_deref(), Some(&[8, 2048][..]));
        assert_eq!(r.batch_dtype.as_deref(), Some("torch.int64"));
        assert_eq!(r.first_batch_seconds, Some(1.5));
        assert_eq!(r.torch.as_deref(), Some("2.7.0+cpu"));
    }

    #[test]
    fn the_dataloader_runs_with_0_and_2_workers_and_every_core() {
        assert_eq!(loader_workers(1), [0, 2]);
        assert_eq!(loader_workers(2), [0, 2]);
        assert_eq!(loader_workers(16), [0, 2, 16]);
    }

    #[test]
    fn the_recorded_command_repeats_the_flags() {
        let a = Args {
            repeats: 2,
            batch: 4,
            epochs: 3,
            no_install: true,
        };
        assert_eq!(
            a.command_line(),
            "cargo xtask bench data --repeats 2 --batch 4 --epochs 3 --no-install"
        );
    }
}
