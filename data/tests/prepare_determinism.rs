//! The output of `prepare` is byte-identical for any worker count, with and without the
//! order-dependent cleaning stages.

mod prepare_common;

use prepare_common::*;
use tessera_data::prepare::{self, CleanConfig, TRAIN, VAL};

fn run_with(
    workers: usize,
    clean: CleanConfig,
    tag: &str,
    dir: &std::path::Path,
    input: &std::path::Path,
    tok: &std::path::Path,
) -> std::path::PathBuf {
    let out = dir.join(format!("out-{tag}-{workers}"));
    let mut cfg = config(vec![input.to_path_buf()], tok, &out, 96, workers);
    cfg.clean = clean;
    cfg.val_fraction = 0.25;
    cfg.shard_size = 1 << 13;
    cfg.compression = Some("zstd".into());
    cfg.hashes = vec!["sha1".into(), "xxh3_64".into()];
    let report = prepare::run(&cfg).unwrap();
    assert!(
        report.shards > 2,
        "{tag}: want several shards, got {}",
        report.shards
    );
    out
}

#[test]
fn one_and_three_workers_write_identical_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut docs = corpus_docs(16);
    // Exact and near duplicates so the dedup stages have decisions to make.
    docs.push(docs[2].clone());
    docs.push(docs[5].to_uppercase());
    let mut near = docs[7].clone();
    near.push_str("\n# one more line at the end\n");
    docs.push(near);
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let all = CleanConfig {
        quality: None,
        ..CleanConfig::all()
    };
    for (tag, clean) in [("plain", CleanConfig::default()), ("clean", all)] {
        let a = run_with(1, clean.clone(), tag, dir.path(), &input, &tok);
        let b = run_with(3, clean.clone(), tag, dir.path(), &input, &tok);
        for split in [TRAIN, VAL] {
            let (fa, fb) = (dir_files(&a.join(split)), dir_files(&b.join(split)));
            assert!(fa.len() > 1, "{tag}/{split}: expected shards");
            assert_eq!(
                fa.keys().collect::<Vec<_>>(),
                fb.keys().collect::<Vec<_>>(),
                "{tag}/{split}"
            );
            for (name, bytes) in &fa {
                assert!(
                    bytes == &fb[name],
                    "{tag}/{split}/{name} differs between 1 and 3 workers"
                );
            }
        }
        let ra: serde_json::Value =
            serde_json::from_slice(&std::fs::read(a.join("prepare.json")).unwrap()).unwrap();
        let rb: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("prepare.json")).unwrap()).unwrap();
        for key in [
            "docs_in",
            "docs_out",
            "dropped",
            "tokens",
            "samples",
            "splits",
            "fingerprint",
        ] {
            assert_eq!(ra[key], rb[key], "{tag}: report {key}");
        }
        if tag == "clean" {
            assert_eq!(
                ra["dropped"]["exact_dup"], 2,
                "the copy and the upper-cased copy"
            );
            assert_eq!(ra["dropped"]["near_dup"], 1, "the copy with one extra line");
        }
    }
}
