//! Near-dedup across slices: a prepare in 3 slices, merged, keeps the same documents and writes
//! the same shards as a prepare in one process.

mod prepare_common;

use prepare_common::*;
use tessera_data::prepare::{self, CleanConfig, TRAIN, VAL};

#[test]
fn three_slices_merged_keep_the_documents_and_shards_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = corpus_docs(24);
    // Eight near-duplicates (one line added): their texts differ, so hash slicing puts most of
    // them in another slice than their original, where a per-slice LSH never sees the pair.
    for i in 0..8 {
        let mut near = docs[i * 2].clone();
        near.push_str(&format!("\n# one more line at the end, {i}\n"));
        docs.push(near);
    }
    docs.push(docs[3].clone()); // and an exact duplicate
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let clean = CleanConfig {
        quality: None,
        ..CleanConfig::all()
    };
    let run = |out: &std::path::Path, slice: Option<&str>| {
        let mut cfg = config(vec![input.clone()], &tok, out, 64, 2);
        cfg.clean = clean.clone();
        cfg.val_fraction = 0.25;
        cfg.shard_size = 1 << 12;
        cfg.slice = slice.map(|s| s.parse().unwrap());
        prepare::run(&cfg).unwrap()
    };

    let one = dir.path().join("one");
    let whole = run(&one, None);
    assert_eq!(whole.dropped["exact_dup"], 1);
    assert!(
        whole.dropped["near_dup"] >= 6,
        "most added lines leave a near-duplicate: {:?}",
        whole.dropped
    );

    let sliced = dir.path().join("sliced");
    let parts: Vec<_> = (0..3)
        .map(|i| run(&sliced, Some(&format!("{i}/3"))))
        .collect();
    // The slices leave near-dups to the merge: none is dropped yet, no shard written.
    assert!(parts.iter().all(|r| !r.dropped.contains_key("near_dup")));
    assert!(parts.iter().all(|r| r.near_dup_pending.is_some()));
    assert!(parts.iter().all(|r| r.shards == 0));
    let kept_by_slices: u64 = parts.iter().map(|r| r.docs_out).sum();
    assert!(
        parts.iter().filter(|r| r.docs_out > 0).count() >= 2,
        "hash slicing spreads the documents"
    );

    let merged = prepare::merge(&sliced).unwrap();
    assert_eq!(
        kept_by_slices - merged.docs_out,
        whole.dropped["near_dup"],
        "the merge removes the near-duplicates"
    );
    assert_eq!(merged.docs_out, whole.docs_out);
    assert_eq!(merged.dropped, whole.dropped);
    assert_eq!(merged.tokens, whole.tokens);
    assert_eq!(merged.samples, whole.samples);
    assert_eq!(merged.splits, whole.splits);
    for split in [TRAIN, VAL] {
        let (a, b) = (dir_files(&one.join(split)), dir_files(&sliced.join(split)));
        assert!(a.len() > 2, "{split}: several shards");
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{split}"
        );
        for (name, bytes) in &a {
            assert!(bytes == &b[name], "{split}/{name} differs");
        }
        assert_eq!(
            read_samples(&one.join(split)),
            read_samples(&sliced.join(split))
        );
    }

    // The candidates are the merge's input: a second merge writes the same again.
    let again = prepare::merge(&sliced).unwrap();
    assert_eq!(again.splits, merged.splits);
    assert_eq!(dir_files(&one.join(TRAIN)), dir_files(&sliced.join(TRAIN)));
}
