//! Hidden `tessera bench-stream`: reads a local MDS dataset epoch by epoch through
//! [`TokenLoader::next_batch_into`] — the trainer's read path — and prints the throughput as one
//! JSON line. `cargo xtask bench data` runs it against mosaicml-streaming's `StreamingDataset`
//! on the same folder, with the same shuffle, canonical node count and batch size.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use tessera::data::stream::{StreamingConfig, StreamingDataset, World};

#[derive(clap::Args)]
pub struct Args {
    /// Local MDS folder (holding index.json).
    dir: PathBuf,
    /// Shuffle as streaming does (py1e, its default block size).
    #[arg(long)]
    shuffle: bool,
    /// Samples per batch (per device; the epoch's tail shorter than a batch is dropped).
    #[arg(long, default_value_t = 8)]
    batch: u64,
    /// Epochs to read; each has its own shuffle. The rate is over all of them.
    #[arg(long, default_value_t = 1)]
    epochs: u64,
    /// Canonical nodes (streaming's `num_canonical_nodes`).
    #[arg(long, default_value_t = 1)]
    num_canonical_nodes: u64,
    /// Shuffle seed (streaming's default).
    #[arg(long, default_value_t = 9176)]
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    println!("{}", measure(&args)?);
    Ok(())
}

/// Reads the epochs and returns the figures `run` prints.
fn measure(args: &Args) -> anyhow::Result<serde_json::Value> {
    if args.epochs == 0 {
        bail!("--epochs 0: read at least one epoch");
    }
    let opened = Instant::now();
    let mut config = StreamingConfig::local(&args.dir);
    config.shuffle = args.shuffle;
    config.batch_size = args.batch;
    config.num_canonical_nodes = Some(args.num_canonical_nodes);
    config.shuffle_seed = args.seed;
    let ds = StreamingDataset::new(config, World::SINGLE)
        .with_context(|| format!("opening {}", args.dir.display()))?;
    let mut loader = ds.loader(ds.initial_state())?;
    let open_seconds = opened.elapsed().as_secs_f64();

    let bs = args.batch as usize;
    let (mut tokens, mut lengths) = (Vec::new(), Vec::new());
    let (mut samples, mut total_tokens, mut batches, mut checksum) = (0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    for epoch in 0..args.epochs {
        if epoch > 0 {
            loader.next_epoch()?;
        }
        while loader.remaining_in_epoch() >= bs {
            tokens.clear();
            lengths.clear();
            loader.next_batch_into(&mut tokens, &mut lengths)?;
            batches += 1;
            samples += lengths.len() as u64;
            total_tokens += tokens.len() as u64;
            // Touches every token, as a consumer would, so no read can be skipped.
            checksum = tokens
                .iter()
                .fold(checksum, |acc, &t| acc.wrapping_add(u64::from(t)));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if samples == 0 {
        bail!(
            "{}: no full batch of {} samples in an epoch ({} samples in the dataset)",
            args.dir.display(),
            args.batch,
            ds.num_samples()
        );
    }
    Ok(serde_json::json!({
        "dir": args.dir.display().to_string(),
        "shuffle": args.shuffle,
        "batch": args.batch,
        "epochs": args.epochs,
        "num_canonical_nodes": args.num_canonical_nodes,
        "dataset_samples": ds.num_samples(),
        "samples": samples,
        "batches": batches,
        "tokens": total_tokens,
        "token_sum": checksum,
        "open_seconds": open_seconds,
        "seconds": seconds,
        "samples_per_s": samples as f64 / seconds.max(1e-9),
        "tokens_per_s": total_tokens as f64 / seconds.max(1e-9),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera::data::mds::{MdsDataset, TokenSpec};

    fn args(shuffle: bool, batch: u64, epochs: u64) -> Args {
        Args {
            dir: tessera_testkit::repo_fixture("mds/tokens_ndarray_int32"),
            shuffle,
            batch,
            epochs,
            num_canonical_nodes: 1,
            seed: 9176,
        }
    }

    /// Sum of every token of the fixture, per sample, read directly (not through the loader).
    fn sample_sums() -> Vec<u64> {
        let ds =
            MdsDataset::open(tessera_testkit::repo_fixture("mds/tokens_ndarray_int32")).unwrap();
        let spec = TokenSpec::new("tokens", "int32").unwrap();
        (0..ds.len())
            .map(|i| {
                let mut out = Vec::new();
                ds.tokens_into(i, &spec, &mut out).unwrap();
                out.iter().map(|&t| u64::from(t)).sum()
            })
            .collect()
    }

    #[test]
    fn every_epoch_reads_each_sample_once() {
        let full: u64 = sample_sums().iter().sum();
        for shuffle in [false, true] {
            let v = measure(&args(shuffle, 4, 3)).unwrap();
            assert_eq!(v["dataset_samples"], 120);
            assert_eq!(v["samples"], 360, "shuffle {shuffle}: {v}");
            assert_eq!(v["batches"], 90);
            assert_eq!(v["token_sum"], 3 * full, "shuffle {shuffle}: {v}");
            assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
        }
    }

    #[test]
    fn an_epoch_tail_shorter_than_a_batch_is_dropped() {
        // 120 samples in batches of 7: 17 batches, the last sample of the (unshuffled) order is
        // left out of each epoch.
        let sums = sample_sums();
        let v = measure(&args(false, 7, 2)).unwrap();
        assert_eq!(v["samples"], 2 * 119);
        assert_eq!(v["token_sum"], 2 * sums[..119].iter().sum::<u64>(), "{v}");
        let shuffled = measure(&args(true, 7, 2)).unwrap();
        assert_eq!(shuffled["samples"], 2 * 119);
    }

    #[test]
    fn bad_settings_are_errors_not_empty_results() {
        let err = measure(&args(true, 500, 1)).unwrap_err();
        assert!(format!("{err:#}").contains("batch"), "{err:#}");
        let err = measure(&args(true, 4, 0)).unwrap_err();
        assert!(format!("{err:#}").contains("--epochs 0"), "{err:#}");
        let mut missing = args(false, 1, 1);
        missing.dir = "/nonexistent/mds".into();
        let err = measure(&missing).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/mds"), "{err:#}");
    }
}
