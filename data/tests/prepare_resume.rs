//! Re-running `prepare` on an existing output: done runs are recognised, interrupted runs are
//! redone, anything else needs `overwrite`; slices merge into one streaming-readable dataset.

mod prepare_common;

use prepare_common::*;
use tessera_data::mds::MdsDataset;
use tessera_data::prepare::{self, PrepareError, TRAIN, VAL};

#[test]
fn rerun_with_same_settings_is_a_no_op_and_other_settings_need_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(5);
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let out = dir.path().join("out");
    let cfg = config(vec![input.clone()], &tok, &out, 64, 2);
    let first = prepare::run(&cfg).unwrap();
    assert!(!first.resumed);
    let files = dir_files(&out.join(TRAIN));

    let again = prepare::run(&prepare::PrepareConfig {
        workers: 1,
        ..cfg.clone()
    })
    .unwrap();
    assert!(again.resumed, "same settings: nothing to redo");
    assert_eq!(again.samples, first.samples);
    assert_eq!(dir_files(&out.join(TRAIN)), files);

    let other = prepare::PrepareConfig {
        seq_len: 32,
        ..cfg.clone()
    };
    match prepare::run(&other) {
        Err(e @ PrepareError::OutDir { .. }) => {
            assert!(e.to_string().contains("--overwrite"), "{e}")
        }
        r => panic!("different settings must be refused, got {r:?}"),
    }
    let replaced = prepare::run(&prepare::PrepareConfig {
        overwrite: true,
        ..other
    })
    .unwrap();
    assert!(!replaced.resumed);
    assert_eq!(
        read_samples(&out.join(TRAIN)),
        expected_samples(&tok, &docs, 32, 0)
    );
}

#[test]
fn an_interrupted_run_is_redone_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(5);
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let out = dir.path().join("out");
    let mut cfg = config(vec![input], &tok, &out, 64, 2);
    cfg.shard_size = 1 << 12;
    let fingerprint = prepare::run(&cfg).unwrap().fingerprint;
    let complete = dir_files(&out.join(TRAIN));
    // Simulate a crash after the shards: no index.json, no prepare.json, a start marker left.
    std::fs::remove_file(out.join(TRAIN).join("index.json")).unwrap();
    std::fs::remove_file(out.join("prepare.json")).unwrap();
    let marker = out.join(".prepare-all.started");
    // A marker from other settings does not license deleting the folder...
    std::fs::write(
        &marker,
        serde_json::json!({"fingerprint": "other"}).to_string(),
    )
    .unwrap();
    assert!(matches!(
        prepare::run(&cfg),
        Err(PrepareError::OutDir { .. })
    ));
    // ...the one a run of these settings leaves does.
    std::fs::write(
        &marker,
        serde_json::json!({ "fingerprint": fingerprint }).to_string(),
    )
    .unwrap();
    let redone = prepare::run(&cfg).unwrap();
    assert!(!redone.resumed);
    assert_eq!(dir_files(&out.join(TRAIN)), complete);
    assert!(!marker.exists());
}

#[test]
fn slices_cover_every_document_once_and_merge_for_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(12);
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let out = dir.path().join("out");
    let mut reports = Vec::new();
    for i in 0..3 {
        let mut cfg = config(vec![input.clone()], &tok, &out, 16, 2);
        cfg.slice = Some(format!("{i}/3").parse().unwrap());
        cfg.val_fraction = 0.2;
        if i == 1 {
            // Merging before every slice has finished is refused, naming the missing ones.
            let err = prepare::merge(&out).unwrap_err().to_string();
            assert!(err.contains("1/3") && err.contains("2/3"), "{err}");
        }
        reports.push(prepare::run(&cfg).unwrap());
    }
    let docs_in: u64 = reports.iter().map(|r| r.docs_in).sum();
    assert_eq!(docs_in, 12, "each document lands in exactly one slice");
    assert!(reports.iter().all(|r| r.docs_read == 12));
    assert!(
        reports.iter().filter(|r| r.docs_in > 0).count() >= 2,
        "hash slicing spreads documents"
    );

    let merged = prepare::merge(&out).unwrap();
    assert_eq!(merged.merged_slices, 3);
    assert_eq!(merged.docs_in, 12);
    for split in [TRAIN, VAL] {
        let ds = MdsDataset::open(out.join(split)).unwrap();
        let want: u64 = reports.iter().map(|r| r.splits[split].samples).sum();
        assert_eq!(
            ds.len(),
            want,
            "{split}: the merged index covers every slice's samples"
        );
        // The merged index reads the same samples as the slices, in slice order.
        let mut concat = Vec::new();
        for r in &reports {
            concat.extend(read_samples(&out.join(split).join(r.slice.unwrap().name())));
        }
        assert_eq!(read_samples(&out.join(split)), concat, "{split}");
    }
    // Every document's tokens are in exactly one split: token totals add up.
    let tokens: u64 = merged.splits.values().map(|s| s.tokens).sum();
    let t = tokenizers::Tokenizer::from_file(&tok).unwrap();
    let all: u64 = docs
        .iter()
        .map(|d| t.encode(d.as_str(), false).unwrap().get_ids().len() as u64 + 1)
        .sum();
    assert_eq!(tokens, all);
    // A slice re-run after the merge is recognised as done.
    let mut cfg = config(vec![input], &tok, &out, 16, 1);
    cfg.slice = Some("0/3".parse().unwrap());
    cfg.val_fraction = 0.2;
    assert!(prepare::run(&cfg).unwrap().resumed);
}
