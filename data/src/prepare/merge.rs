//! `tessera data merge DIR`: after every `--slice i/N` run into `DIR` has finished, merge each
//! split's slice indexes into `DIR/<split>/index.json` (mosaicml-streaming's `merge_index`
//! layout: shard basenames prefixed by the slice folder) and sum the slice reports into
//! `DIR/prepare.json`. A near-dedup run's slices wrote candidate documents instead of shards:
//! for those, the merge removes near-duplicates across slices and writes the shards itself
//! (`cross_slice`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::PrepareError;
use super::cross_slice;
use super::outdir::{TRAIN, VAL};
use super::report::PrepareReport;

/// Merges the finished slices in `out`. Refused while any slice of the run is unfinished or when
/// the slice reports come from different runs.
pub fn merge(out: &Path) -> Result<PrepareReport, PrepareError> {
    let err = |message: String| PrepareError::Merge {
        path: out.to_path_buf(),
        message,
    };
    let mut reports: BTreeMap<u32, (PathBuf, PrepareReport)> = BTreeMap::new();
    let entries = std::fs::read_dir(out).map_err(PrepareError::io(out))?;
    for entry in entries {
        let entry = entry.map_err(PrepareError::io(out))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("prepare-part-") && name.ends_with(".json")) {
            continue;
        }
        let report = PrepareReport::load(&entry.path())?;
        let slice = report
            .slice
            .ok_or_else(|| err(format!("{name} is not a slice report")))?;
        reports.insert(slice.index, (entry.path(), report));
    }
    let Some((_, (first_path, first))) = reports.iter().next() else {
        return Err(err(
            "no slice reports (prepare-part-*.json); run `prepare --slice i/N` first".into(),
        ));
    };
    let count = first.slice.map(|s| s.count).unwrap_or(0);
    for (path, r) in reports.values() {
        if r.run_fingerprint != first.run_fingerprint
            || r.slice.map(|s| s.count) != Some(count)
            || r.near_dup_pending != first.near_dup_pending
        {
            return Err(err(format!(
                "{} and {} come from different runs (settings, inputs or slice count differ)",
                first_path.display(),
                path.display()
            )));
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !reports.contains_key(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(err(format!(
            "slices not finished: {} (rerun them with --slice)",
            missing.join(", ")
        )));
    }
    let mut merged = PrepareReport {
        tessera_version: env!("CARGO_PKG_VERSION").to_string(),
        fingerprint: format!("merged-{}", first.run_fingerprint),
        run_fingerprint: first.run_fingerprint.clone(),
        slice: None,
        merged_slices: count,
        files: first.files,
        input_bytes: first.input_bytes,
        tokenizer: first.tokenizer.clone(),
        vocab_size: first.vocab_size,
        seq_len: first.seq_len,
        eos_id: first.eos_id,
        bos_id: first.bos_id,
        workers: first.workers,
        ..Default::default()
    };
    for (_, r) in reports.values() {
        merged.add(r);
    }
    if let Some(pending) = &first.near_dup_pending {
        // Near-dedup across slices, then packing: the slices wrote candidates, not shards.
        let slices: Vec<_> = reports.values().filter_map(|(_, r)| r.slice).collect();
        cross_slice::merge_candidates(out, &slices, pending, &mut merged)?;
        merged.save(&out.join("prepare.json"))?;
        return Ok(merged);
    }
    for split in [TRAIN, VAL] {
        if !merged.splits.contains_key(split) {
            continue;
        }
        let dir = out.join(split);
        let subs: Vec<String> = reports
            .values()
            .filter_map(|(_, r)| r.slice.map(|s| s.name()))
            .collect();
        crate::mds::merge_index(&dir, &subs).map_err(|e| err(e.to_string()))?;
    }
    merged.save(&out.join("prepare.json"))?;
    Ok(merged)
}
