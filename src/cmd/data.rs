//! `tessera data …`: tokenizer training, the prepare pipeline, merging slices, and looking
//! inside MDS datasets.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tessera::data::mds::{self, MdsDataset, SampleRange, TokenSpec};
use tessera::data::prepare::{self, CleanConfig, NearDupConfig, PrepareConfig, Slice, Utf8Mode};
use tessera::data::tokenizer::{BpeTrainConfig, train_bpe_from_inputs};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Clean, deduplicate, tokenize and pack raw text into MDS shards (llm-foundry's
    /// `tokens: ndarray:int32`, read by mosaicml-streaming and tessera).
    Prepare(PrepareArgs),
    /// Train a byte-level BPE tokenizer (GPT-2/NeoX style) and save it as tokenizer.json.
    TrainTokenizer(TrainTokenizerArgs),
    /// Merge the indexes of `prepare --slice i/N` runs (mosaicml-streaming's merge_index).
    Merge {
        /// The --out folder the slices were written into.
        dir: PathBuf,
    },
    /// Columns, samples, shards, tokens and compression of an MDS dataset.
    Inspect {
        dir: PathBuf,
        /// Skip counting tokens (reads only index.json).
        #[arg(long)]
        no_tokens: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print samples as JSON lines (ndarrays as lists, bytes as base64).
    Dump {
        dir: PathBuf,
        /// Samples to print: `A..B`, `A..`, `..B` or `N`.
        #[arg(long, default_value = "..")]
        range: String,
    },
}

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Input files, globs or folders (.jsonl, .jsonl.gz, .jsonl.zst, .txt, .parquet).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<String>,
    /// tokenizer.json to encode with.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output folder (train/, val/, prepare.json).
    #[arg(long)]
    out: PathBuf,
    /// JSON field or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Tokens per sample.
    #[arg(long, default_value_t = prepare::DEFAULT_SEQ_LEN)]
    seq_len: usize,
    /// Token after every document (default: the tokenizer's EOS).
    #[arg(long)]
    eos_id: Option<u32>,
    /// Token before every document (default: none).
    #[arg(long)]
    bos_id: Option<u32>,
    /// Do not carry a document's tokens over a sample boundary (llm-foundry's --no_wrap).
    #[arg(long)]
    no_wrap: bool,
    /// Shard compression: zstd, zstd:7, gz, bz2, br, snappy.
    #[arg(long)]
    compression: Option<String>,
    /// Hashes to record per shard: sha1, md5, sha256, xxh32, xxh64, xxh3_64, xxh128.
    #[arg(long, value_delimiter = ',')]
    hashes: Vec<String>,
    /// Shard size limit in bytes.
    #[arg(long, default_value_t = prepare::DEFAULT_SHARD_SIZE)]
    shard_size: u64,
    /// Worker threads (0 = every core). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Fraction of documents to route into val/.
    #[arg(long, default_value_t = 0.0)]
    val_fraction: f64,
    /// Seed of the routing and MinHash hashes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fail on the first bad input line instead of counting it.
    #[arg(long)]
    strict: bool,
    /// Replace an existing, different dataset in --out.
    #[arg(long)]
    overwrite: bool,
    /// Process one deterministic slice `i/N` (0-based) into its own subfolder; then `merge`.
    #[arg(long)]
    slice: Option<String>,
    /// Drop documents with invalid UTF-8 instead of repairing them.
    #[arg(long)]
    drop_invalid_utf8: bool,
    /// Remove control characters other than tab and newlines.
    #[arg(long)]
    strip_control: bool,
    /// Drop exact duplicates (after normalising case and whitespace).
    #[arg(long)]
    exact_dedup: bool,
    /// Drop near-duplicates (MinHash LSH over 5-gram shingles).
    #[arg(long)]
    near_dedup: bool,
    /// MinHash LSH bands.
    #[arg(long, default_value_t = NearDupConfig::default().bands)]
    near_dedup_bands: usize,
    /// MinHash LSH rows per band.
    #[arg(long, default_value_t = NearDupConfig::default().rows)]
    near_dedup_rows: usize,
    /// Jaccard similarity at which documents are near-duplicates.
    #[arg(long, default_value_t = NearDupConfig::default().threshold)]
    near_dedup_threshold: f64,
    /// Replace e-mails, phone numbers, IP addresses and card numbers with placeholders.
    #[arg(long)]
    pii: bool,
    /// Gopher-style quality and repetition filters.
    #[arg(long)]
    quality: bool,
    /// Every cleaning stage on, with default parameters.
    #[arg(long)]
    clean_all: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct TrainTokenizerArgs {
    /// Training text: files, globs or folders, in any format `prepare` reads.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<String>,
    /// Where to write tokenizer.json.
    #[arg(long)]
    out: PathBuf,
    /// Vocabulary size to learn (byte symbols and special tokens included).
    #[arg(long, default_value_t = 32_000)]
    vocab_size: usize,
    /// Pad the vocabulary with reserved tokens to a multiple of this (e.g. 128).
    #[arg(long)]
    pad_to_multiple_of: Option<usize>,
    /// Pairs seen fewer times are never merged.
    #[arg(long, default_value_t = 2)]
    min_frequency: u64,
    /// JSON field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Prepare(args) => prepare_cmd(args),
        Command::TrainTokenizer(args) => train_tokenizer(args),
        Command::Merge { dir } => {
            let report =
                prepare::merge(&dir).with_context(|| format!("merging {}", dir.display()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Inspect {
            dir,
            no_tokens,
            json,
        } => {
            let spec = TokenSpec::default();
            let summary = mds::summarize(&dir, (!no_tokens).then_some(&spec))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(())
        }
        Command::Dump { dir, range } => {
            let range = SampleRange::parse(&range).context("--range")?;
            let ds = MdsDataset::open(&dir)?;
            let end = range.end.unwrap_or(ds.len()).min(ds.len());
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            mds::dump_jsonl(&ds, range.start..end, &mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

fn prepare_cmd(a: PrepareArgs) -> anyhow::Result<()> {
    let mut cfg = PrepareConfig::new(a.input, &a.tokenizer, &a.out);
    cfg.text_field = a.text_field;
    cfg.seq_len = a.seq_len;
    cfg.eos_id = a.eos_id;
    cfg.bos_id = a.bos_id;
    cfg.wrap = !a.no_wrap;
    cfg.compression = a.compression;
    cfg.hashes = a.hashes;
    cfg.shard_size = a.shard_size;
    cfg.workers = a.workers;
    cfg.val_fraction = a.val_fraction;
    cfg.seed = a.seed;
    cfg.strict = a.strict;
    cfg.overwrite = a.overwrite;
    cfg.progress = !a.quiet;
    cfg.slice = match a.slice {
        Some(s) => Some(
            s.parse::<Slice>()
                .map_err(|e| anyhow::anyhow!("--slice {s:?}: {e}"))?,
        ),
        None => None,
    };
    let mut clean = if a.clean_all {
        CleanConfig::all()
    } else {
        CleanConfig::default()
    };
    if a.drop_invalid_utf8 {
        clean.utf8 = Utf8Mode::Drop;
    }
    clean.strip_control |= a.strip_control;
    clean.exact_dedup |= a.exact_dedup;
    if a.near_dedup || clean.near_dedup.is_some() {
        clean.near_dedup = Some(NearDupConfig {
            bands: a.near_dedup_bands,
            rows: a.near_dedup_rows,
            threshold: a.near_dedup_threshold,
            ..NearDupConfig::default()
        });
    }
    if a.pii && clean.pii.is_none() {
        clean.pii = Some(Default::default());
    }
    if a.quality && clean.quality.is_none() {
        clean.quality = Some(Default::default());
    }
    cfg.clean = clean;
    let report = prepare::run(&cfg)?;
    if report.bad_lines > 0 {
        eprintln!(
            "warning: {} bad input lines were skipped (e.g. {}); all are counted in prepare.json",
            report.bad_lines,
            report
                .bad_line_examples
                .first()
                .map(String::as_str)
                .unwrap_or("-")
        );
    }
    println!(
        "{} docs in, {} out, {} tokens in {} samples; report: {}",
        report.docs_in,
        report.docs_out,
        report.tokens,
        report.samples,
        a.out.join("prepare.json").display()
    );
    Ok(())
}

fn train_tokenizer(a: TrainTokenizerArgs) -> anyhow::Result<()> {
    if a.vocab_size < 257 {
        bail!(
            "--vocab-size {}: a byte-level BPE needs at least 257 (256 bytes + <|endoftext|>)",
            a.vocab_size
        );
    }
    let cfg = BpeTrainConfig {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
        pad_to_multiple_of: a.pad_to_multiple_of,
        ..BpeTrainConfig::default()
    };
    let (tok, report) = train_bpe_from_inputs(&a.input, &a.text_field, &cfg)?;
    tok.save(&a.out)?;
    println!(
        "trained on {} documents: {} merges, vocab {} ({} reserved); wrote {}",
        report.docs,
        report.merges,
        report.vocab_size,
        report.reserved,
        a.out.display()
    );
    Ok(())
}
