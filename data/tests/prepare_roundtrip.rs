//! The acceptance test of `prepare`: shards read back through the MDS reader are exactly the
//! tokenizer's encoding of the documents, joined with EOS and cut into `seq_len` pieces, as
//! computed independently here.

mod prepare_common;

use prepare_common::*;
use tessera_data::prepare::{self, TRAIN};

#[test]
fn shards_hold_the_documents_encoding_joined_with_eos() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(12);
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, &docs);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let out = dir.path().join("out");
    let mut cfg = config(vec![input], &tok, &out, 128, 2);
    cfg.shard_size = 1 << 14; // several shards
    let report = prepare::run(&cfg).unwrap();

    let got = read_samples(&out.join(TRAIN));
    let want = expected_samples(&tok, &docs, 128, 0);
    assert!(
        want.len() > 50,
        "the test needs many samples, got {}",
        want.len()
    );
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "sample {i}");
    }
    assert!(report.shards > 1, "shard_size must split the output");
    assert_eq!(report.docs_in, 12);
    assert_eq!(report.docs_out, 12);
    assert_eq!(report.samples, want.len() as u64);
    assert_eq!(report.tokens, report.samples * 128 + report.tokens_dropped);
    assert!(report.tokens_dropped < 128);
    assert_eq!(report.eos_id, Some(0));
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("prepare.json")).unwrap()).unwrap();
    assert_eq!(on_disk["samples"], report.samples);
}

#[test]
fn compressed_and_txt_inputs_give_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(4);
    let tok = tiny_tokenizer(dir.path(), &docs);
    // The same documents as .jsonl.zst (the repo slice format) and as one .txt per document.
    let zst = dir.path().join("d.jsonl.zst");
    let plain = dir.path().join("plain.jsonl");
    write_jsonl(&plain, &docs);
    std::fs::write(
        &zst,
        zstd::encode_all(&std::fs::read(&plain).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    let txt_dir = dir.path().join("txt");
    std::fs::create_dir(&txt_dir).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(txt_dir.join(format!("{i:03}.txt")), d).unwrap();
    }
    let want = expected_samples(&tok, &docs, 64, 0);
    for (name, input) in [("zst", zst), ("txt", txt_dir)] {
        let out = dir.path().join(format!("out-{name}"));
        prepare::run(&config(vec![input], &tok, &out, 64, 1)).unwrap();
        assert_eq!(read_samples(&out.join(TRAIN)), want, "{name}");
    }
}

#[test]
fn bos_and_explicit_eos_wrap_each_document() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<String> = vec![
        "alpha beta".into(),
        "gamma".into(),
        "delta epsilon zeta".into(),
    ];
    let tok = tiny_tokenizer(dir.path(), &corpus_docs(3));
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let out = dir.path().join("out");
    let mut cfg = config(vec![input], &tok, &out, 4, 1);
    cfg.bos_id = Some(5);
    cfg.eos_id = Some(7);
    prepare::run(&cfg).unwrap();
    let t = tokenizers::Tokenizer::from_file(&tok).unwrap();
    let mut all = Vec::new();
    for d in &docs {
        all.push(5);
        all.extend_from_slice(t.encode(d.as_str(), false).unwrap().get_ids());
        all.push(7);
    }
    let want: Vec<Vec<u32>> = all.chunks_exact(4).map(|c| c.to_vec()).collect();
    assert_eq!(read_samples(&out.join(TRAIN)), want);
}

#[test]
#[ignore = "needs shared fixtures"]
fn gpt_neox_shards_match_hf_encoding_of_the_corpus_slice() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(usize::MAX);
    let tok = tessera_testkit::shared_fixture("tokenizer/gpt-neox-20b/tokenizer.json");
    let out = dir.path().join("out");
    let input = tessera_testkit::repo_fixture("corpus/slice.jsonl.zst");
    let mut cfg = config(vec![input], &tok, &out, 2048, 0);
    cfg.compression = Some("zstd".into());
    let report = prepare::run(&cfg).unwrap();
    let want = expected_samples(&tok, &docs, 2048, 0);
    let got = read_samples(&out.join(TRAIN));
    assert_eq!(got.len(), want.len());
    assert!(got == want, "samples differ from the HF encoding");
    assert_eq!(report.docs_out as usize, docs.len());
}
