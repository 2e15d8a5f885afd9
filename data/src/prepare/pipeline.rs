//! `prepare::run`: the read → clean → dedup → tokenize → pack → write pipeline.
//!
//! Threads: one reader streams raw records in input order; a pool of `workers` threads analyzes
//! (and, without dedup, tokenizes) each batch in parallel; the calling thread makes the
//! order-dependent dedup decisions and, with dedup, has the pool tokenize the survivors; one
//! writer thread packs and writes shards. Batches flow through bounded channels, so reading,
//! processing and writing overlap and memory stays bounded.
//!
//! Why the output is identical for any worker count: parallel work only ever computes pure
//! per-document results that are collected back in input order; every decision that depends on
//! earlier documents (dedup, packing, sharding) is made by one thread in that order.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use super::PrepareError;
use super::clean::is_val;
use super::config::PrepareConfig;
use super::cross_slice::{Candidate, CandidateWriter, PendingNearDup, candidates_path};
use super::input::{BatchLimits, InputFile, RawBatch, expand_inputs, read_batches};
use super::minhash::{LshIndex, MinHasher};
use super::outdir::{Start, TRAIN, UnitLayout, VAL, claim, complete};
use super::pii::PiiScrubber;
use super::progress::Progress;
use super::report::{MAX_BAD_LINE_EXAMPLES, PrepareReport};
use super::sink::{SinkOptions, SplitSink};
use super::stages::{Analyzed, Edits, Stages};
use crate::mds::{Compression, HashAlgo};
use crate::tokenizer::Tokenizer;

/// Batch size handed to the workers: large enough to keep every core busy, small enough that a
/// few batches in flight stay in the tens of MiB.
const BATCH: BatchLimits = BatchLimits {
    bytes: 4 << 20,
    docs: 8192,
};

/// A kept document: its split, its ids, and (only when near-dedup waits for `merge`, see
/// `cross_slice`) its input position and signature.
struct Kept {
    split: u8,
    ids: Vec<u32>,
    at: (u32, u64),
    sig: Option<Vec<u32>>,
}

/// Documents routed to a split, in order.
type Routed = Vec<Kept>;

/// Runs `prepare` as configured; see the module docs of `prepare` for layout and resume.
pub fn run(cfg: &PrepareConfig) -> Result<PrepareReport, PrepareError> {
    let started = Instant::now();
    cfg.validate()?;
    let files = expand_inputs(&cfg.inputs)?;
    let tok_bytes = std::fs::read(&cfg.tokenizer).map_err(PrepareError::io(&cfg.tokenizer))?;
    let tokenizer = Tokenizer::from_bytes(&tok_bytes, &cfg.tokenizer)?;
    let vocab = tokenizer.vocab_size();
    let eos = match cfg.eos_id {
        Some(id) => id,
        None => tokenizer.eos_id().ok_or_else(|| PrepareError::NoEos {
            path: cfg.tokenizer.clone(),
        })?,
    };
    for (field, id) in [("eos_id", Some(eos)), ("bos_id", cfg.bos_id)] {
        if let Some(id) = id.filter(|&id| id as usize >= vocab || id > i32::MAX as u32) {
            return Err(PrepareError::TokenId { field, id, vocab });
        }
    }
    let mds_err = |field: &'static str| {
        move |e: crate::mds::MdsError| PrepareError::Config {
            field,
            message: e.to_string(),
        }
    };
    let compression = cfg
        .compression
        .as_deref()
        .map(|c| Compression::parse(c, "compression"))
        .transpose()
        .map_err(mds_err("compression"))?;
    let hashes = cfg
        .hashes
        .iter()
        .map(|h| HashAlgo::parse(h, "hashes"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(mds_err("hashes"))?;

    let (fingerprint, run_fingerprint) = fingerprints(cfg, &files, &tok_bytes);
    let unit = UnitLayout::new(&cfg.out, cfg.slice);
    if let Start::Done(mut report) = claim(&unit, &fingerprint, cfg.overwrite)? {
        report.resumed = true;
        return Ok(*report);
    }

    let workers = cfg.worker_count();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("prepare-{i}"))
        .build()
        .map_err(|e| PrepareError::Workers {
            workers,
            message: e.to_string(),
        })?;
    let clean_cfg = &cfg.clean;
    let stages = Stages {
        cfg,
        files: &files,
        tokenizer: &tokenizer,
        scrubber: clean_cfg.pii.as_ref().map(PiiScrubber::new),
        minhasher: clean_cfg
            .near_dedup
            .as_ref()
            .map(|c| MinHasher::new(c, cfg.seed)),
        tokenize_early: !clean_cfg.needs_sequential_pass(),
    };
    let sink_options = SinkOptions {
        seq_len: cfg.seq_len,
        bos: cfg.bos_id,
        eos: Some(eos),
        wrap: cfg.wrap,
        compression,
        hashes,
        shard_size: cfg.shard_size,
    };
    // A slice of a near-dedup run hands its documents to `merge` instead of packing them.
    let pending = match (cfg.slice, &clean_cfg.near_dedup) {
        (Some(slice), Some(near_dup)) if near_dedup_in_merge(cfg) => Some((
            slice,
            PendingNearDup {
                near_dup: near_dup.clone(),
                val: cfg.val_fraction > 0.0,
                wrap: cfg.wrap,
                compression: cfg.compression.clone(),
                hashes: cfg.hashes.clone(),
                shard_size: cfg.shard_size,
            },
        )),
        _ => None,
    };
    let mut output = match &pending {
        Some((slice, _)) => {
            Output::Candidates(CandidateWriter::create(candidates_path(&cfg.out, *slice))?)
        }
        None => {
            let mut sinks = vec![SplitSink::create(
                TRAIN,
                unit.split_dir(TRAIN),
                &sink_options,
            )?];
            if cfg.val_fraction > 0.0 {
                sinks.push(SplitSink::create(VAL, unit.split_dir(VAL), &sink_options)?);
            }
            Output::Shards(sinks)
        }
    };

    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let read_bytes = Arc::new(AtomicU64::new(0));
    let progress = Progress::new(cfg.progress, total_bytes);
    let mut decide = Decider::new(cfg, pending.is_none());

    let outcome = std::thread::scope(|s| {
        let (raw_tx, raw_rx) = sync_channel::<RawBatch>(2);
        let reader = s.spawn(|| {
            read_batches(&files, &cfg.text_field, BATCH, &read_bytes, move |b| {
                raw_tx.send(b).is_ok()
            })
        });
        let (out_tx, out_rx) = sync_channel::<Routed>(2);
        let writer = s.spawn(move || -> Result<Output, PrepareError> {
            for routed in out_rx {
                for kept in routed {
                    output.push(kept)?;
                }
            }
            Ok(output)
        });
        let processed = (|| -> Result<(), PrepareError> {
            for batch in raw_rx {
                let routed = process_batch(&batch, &stages, &mut decide, &pool)?;
                decide.tokens += routed.iter().map(|k| k.ids.len() as u64).sum::<u64>();
                progress.update(
                    read_bytes.load(Ordering::Relaxed),
                    decide.docs_in,
                    decide.tokens,
                );
                if out_tx.send(routed).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(())
        })();
        drop(out_tx);
        let written = writer.join().map_err(|_| PrepareError::Workers {
            workers,
            message: "writer thread panicked".into(),
        })?;
        let read = reader.join().map_err(|_| PrepareError::Workers {
            workers,
            message: "reader thread panicked".into(),
        })?;
        processed?;
        let sinks = written?;
        read?;
        Ok::<_, PrepareError>(sinks)
    });
    let output = outcome?;
    progress.finish();

    let mut report = PrepareReport {
        tessera_version: env!("CARGO_PKG_VERSION").to_string(),
        fingerprint,
        run_fingerprint,
        slice: cfg.slice,
        merged_slices: 0,
        files: files.len(),
        input_bytes: total_bytes,
        tokenizer: cfg.tokenizer.display().to_string(),
        vocab_size: vocab,
        seq_len: cfg.seq_len,
        eos_id: Some(eos),
        bos_id: cfg.bos_id,
        workers,
        ..Default::default()
    };
    decide.fill(&mut report);
    report.near_dup_pending = pending.map(|(_, p)| p);
    let sinks = match output {
        Output::Shards(sinks) => sinks,
        Output::Candidates(w) => {
            w.finish()?;
            Vec::new()
        }
    };
    for sink in sinks {
        let (name, split) = sink.finish()?;
        report.tokens += split.tokens;
        report.samples += split.samples;
        report.tokens_dropped += split.tokens_dropped;
        report.shards += split.shards;
        report.splits.insert(name.to_string(), split);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.set_rates();
    complete(&unit, &report)?;
    Ok(report)
}

/// The order-dependent state: dedup sets and every counter.
struct Decider<'a> {
    cfg: &'a PrepareConfig,
    exact: HashSet<u128>,
    lsh: Option<LshIndex>,
    docs_read: u64,
    docs_in: u64,
    docs_out: u64,
    tokens: u64,
    dropped: BTreeMap<String, u64>,
    bad_lines: u64,
    bad_examples: Vec<String>,
    edits: EditCounts,
}

#[derive(Default)]
struct EditCounts {
    utf8_repaired: u64,
    control_stripped: u64,
    pii: super::pii::PiiCounts,
    pii_docs: u64,
}

impl EditCounts {
    fn add(&mut self, e: &Edits) {
        self.utf8_repaired += e.utf8_repaired as u64;
        self.control_stripped += e.control_stripped as u64;
        self.pii.add(&e.pii);
        self.pii_docs += (e.pii.total() > 0) as u64;
    }
}

impl<'a> Decider<'a> {
    /// `near_dedup_here`: false when `merge` decides near-duplicates (see `cross_slice`).
    fn new(cfg: &'a PrepareConfig, near_dedup_here: bool) -> Self {
        Self {
            cfg,
            exact: HashSet::new(),
            lsh: (cfg.clean.near_dedup.as_ref())
                .filter(|_| near_dedup_here)
                .map(LshIndex::new),
            docs_read: 0,
            docs_in: 0,
            docs_out: 0,
            tokens: 0,
            dropped: BTreeMap::new(),
            bad_lines: 0,
            bad_examples: Vec::new(),
            edits: EditCounts::default(),
        }
    }

    fn drop_doc(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// Where a document goes (`Some(split)`) or `None` if dedup drops it.
    fn route(&mut self, key: u128, sig: Option<&[u32]>) -> Option<u8> {
        if self.cfg.clean.exact_dedup && !self.exact.insert(key) {
            self.drop_doc("exact_dup");
            return None;
        }
        if let (Some(lsh), Some(sig)) = (self.lsh.as_mut(), sig)
            && lsh.check_and_insert(sig)
        {
            self.drop_doc("near_dup");
            return None;
        }
        self.docs_out += 1;
        Some(is_val(key, self.cfg.seed, self.cfg.val_fraction) as u8)
    }

    fn fill(&self, r: &mut PrepareReport) {
        r.docs_read = self.docs_read;
        r.docs_in = self.docs_in;
        r.docs_out = self.docs_out;
        r.dropped = self.dropped.clone();
        r.bad_lines = self.bad_lines;
        r.bad_line_examples = self.bad_examples.clone();
        r.utf8_repaired = self.edits.utf8_repaired;
        r.control_stripped = self.edits.control_stripped;
        r.pii = self.edits.pii;
        r.pii_docs = self.edits.pii_docs;
    }
}

/// Processes one batch; returns its kept documents' ids with their split, in input order.
fn process_batch(
    batch: &RawBatch,
    stages: &Stages,
    decide: &mut Decider,
    pool: &rayon::ThreadPool,
) -> Result<Routed, PrepareError> {
    let analyzed: Vec<Analyzed> = pool.install(|| {
        batch
            .records
            .par_iter()
            .map(|r| stages.analyze(batch, r))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut kept = Vec::new();
    for a in analyzed {
        match a {
            Analyzed::Bad { file, line, reason } => {
                let path = &stages.files[file as usize].path;
                if stages.cfg.strict {
                    return Err(PrepareError::BadLine {
                        path: path.clone(),
                        line,
                        reason,
                    });
                }
                decide.bad_lines += 1;
                if decide.bad_examples.len() < MAX_BAD_LINE_EXAMPLES {
                    decide
                        .bad_examples
                        .push(format!("{}:{line}: {reason}", path.display()));
                }
            }
            Analyzed::OtherSlice => decide.docs_read += 1,
            Analyzed::Dropped { reason, edits } => {
                decide.docs_read += 1;
                decide.docs_in += 1;
                decide.edits.add(&edits);
                decide.drop_doc(reason);
            }
            Analyzed::Doc(doc) => {
                decide.docs_read += 1;
                decide.docs_in += 1;
                if let Some(split) = decide.route(doc.key, doc.sig.as_deref()) {
                    decide.edits.add(&doc.edits);
                    kept.push((split, doc));
                }
            }
        }
    }
    // The signature travels on only when `merge` decides near-duplicates.
    let hand_over = near_dedup_in_merge(stages.cfg);
    let kept_doc = |split: u8, d: &mut super::stages::Doc, ids: Vec<u32>| Kept {
        split,
        ids,
        at: (d.file, d.line),
        sig: if hand_over { d.sig.take() } else { None },
    };
    if stages.tokenize_early {
        return Ok(kept
            .into_iter()
            .map(|(s, mut d)| {
                let ids = d.ids.take().unwrap_or_default();
                kept_doc(s, &mut d, ids)
            })
            .collect());
    }
    pool.install(|| {
        kept.into_par_iter()
            .map(|(s, mut d)| {
                let ids = stages.encode(&d.text, d.file, d.line)?;
                Ok(kept_doc(s, &mut d, ids))
            })
            .collect::<Result<Routed, PrepareError>>()
    })
}

/// Whether near-duplicates are decided by `merge` rather than here: in a slice of a run with
/// near-dedup (see `cross_slice`).
fn near_dedup_in_merge(cfg: &PrepareConfig) -> bool {
    cfg.slice.is_some() && cfg.clean.near_dedup.is_some()
}

/// Where kept documents go: packed into shards, or handed to `merge` as candidates.
enum Output {
    Shards(Vec<SplitSink>),
    Candidates(CandidateWriter),
}

impl Output {
    fn push(&mut self, kept: Kept) -> Result<(), PrepareError> {
        match self {
            Output::Shards(sinks) => sinks[kept.split as usize].push(&kept.ids),
            Output::Candidates(w) => w.push(&Candidate {
                file: kept.at.0,
                line: kept.at.1,
                split: kept.split,
                sig: kept.sig.unwrap_or_default(),
                ids: kept.ids,
            }),
        }
    }
}

/// Everything that decides the output bytes, hashed: with and without the slice.
fn fingerprints(cfg: &PrepareConfig, files: &[InputFile], tokenizer: &[u8]) -> (String, String) {
    #[derive(Serialize)]
    struct Key<'a> {
        files: &'a [InputFile],
        tokenizer: String,
        text_field: &'a str,
        seq_len: usize,
        eos_id: Option<u32>,
        bos_id: Option<u32>,
        wrap: bool,
        compression: &'a Option<String>,
        hashes: &'a [String],
        shard_size: u64,
        val_fraction: f64,
        seed: u64,
        clean: &'a super::config::CleanConfig,
        slice: Option<super::config::Slice>,
    }
    let mut key = Key {
        files,
        tokenizer: format!("{:032x}", xxh3_128(tokenizer)),
        text_field: &cfg.text_field,
        seq_len: cfg.seq_len,
        eos_id: cfg.eos_id,
        bos_id: cfg.bos_id,
        wrap: cfg.wrap,
        compression: &cfg.compression,
        hashes: &cfg.hashes,
        shard_size: cfg.shard_size,
        val_fraction: cfg.val_fraction,
        seed: cfg.seed,
        clean: &cfg.clean,
        slice: cfg.slice,
    };
    let hash = |k: &Key| {
        format!(
            "{:032x}",
            xxh3_128(&serde_json::to_vec(k).unwrap_or_default())
        )
    };
    let with_slice = hash(&key);
    key.slice = None;
    (with_slice, hash(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_tracks_output_settings_but_not_workers() {
        let files = vec![InputFile {
            path: "a.jsonl".into(),
            format: super::super::input::InputFormat::Jsonl,
            bytes: 10,
        }];
        let base = PrepareConfig::new(vec!["a.jsonl".into()], "t.json", "out");
        let (fp, run) = fingerprints(&base, &files, b"tok");
        let more_workers = PrepareConfig {
            workers: 7,
            progress: false,
            ..base.clone()
        };
        assert_eq!(fingerprints(&more_workers, &files, b"tok").0, fp);
        assert_ne!(
            fingerprints(
                &PrepareConfig {
                    seq_len: 7,
                    ..base.clone()
                },
                &files,
                b"tok"
            )
            .0,
            fp
        );
        assert_ne!(fingerprints(&base, &files, b"other tokenizer").0, fp);
        let sliced = PrepareConfig {
            slice: Some("1/2".parse().unwrap()),
            ..base.clone()
        };
        let (sfp, srun) = fingerprints(&sliced, &files, b"tok");
        assert_ne!(sfp, fp);
        assert_eq!(srun, run, "slices of one run share the run fingerprint");
    }
}
