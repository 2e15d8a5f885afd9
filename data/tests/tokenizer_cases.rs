//! The gpt-neox-20b tokenizer (MPT's) against the shared `tokenizer/cases.json`: every case's
//! encode and both decodes, and every decode-only case, exactly as HF `tokenizers` 0.22.2 gave.

use tessera_data::tokenizer::Tokenizer;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
#[ignore = "needs shared fixtures"]
fn every_gpt_neox_case_encodes_and_decodes_like_hf() {
    let tok = Tokenizer::from_file(tessera_testkit::shared_fixture(
        "tokenizer/gpt-neox-20b/tokenizer.json",
    ))
    .unwrap();
    let cases: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tessera_testkit::shared_fixture("tokenizer/cases.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        tok.vocab_size(),
        cases["vocab_size_with_added"].as_u64().unwrap() as usize
    );
    assert_eq!(tok.eos_id(), Some(0));
    let list = cases["cases"].as_array().unwrap();
    assert_eq!(list.len(), cases["n_cases"].as_u64().unwrap() as usize);
    let mut failures = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!("case {i} {text:?}: encode {got:?} != {want:?}"));
            continue;
        }
        for (skip, key) in [(false, "decoded"), (true, "decoded_skip_special")] {
            let d = tok.decode(&want, skip).unwrap();
            if d != c[key].as_str().unwrap() {
                failures.push(format!("case {i} {text:?}: {key} {d:?} != {:?}", c[key]));
            }
        }
        if c["roundtrip_exact"].as_bool().unwrap() && tok.decode(&got, false).unwrap() != text {
            failures.push(format!("case {i} {text:?}: does not round-trip"));
        }
    }
    let decode_only = cases["decode_only"].as_array().unwrap();
    assert!(!decode_only.is_empty());
    for (i, c) in decode_only.iter().enumerate() {
        let d = tok.decode(&ids(&c["ids"]), false).unwrap();
        if d != c["decoded"].as_str().unwrap() {
            failures.push(format!(
                "decode_only {i} ({}): {d:?} != {:?}",
                c["note"], c["decoded"]
            ));
        }
        if let Some(s) = c.get("decoded_skip_special").and_then(|v| v.as_str()) {
            let d = tok.decode(&ids(&c["ids"]), true).unwrap();
            if d != s {
                failures.push(format!("decode_only {i} skip_special: {d:?} != {s:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs shared fixtures"]
fn fast_path_equals_hf_on_the_whole_shared_corpus() {
    use std::io::Read;
    let tok = Tokenizer::from_file(tessera_testkit::shared_fixture(
        "tokenizer/gpt-neox-20b/tokenizer.json",
    ))
    .unwrap();
    assert!(tok.has_fast_encoder(), "gpt-neox must take the fast path");
    let mut text = String::new();
    let file =
        std::fs::File::open(tessera_testkit::shared_fixture("corpus/corpus.jsonl.zst")).unwrap();
    zstd::stream::read::Decoder::new(file)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let mut docs = 0;
    for line in text.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        let d = doc["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(d).unwrap(),
            tok.encode_hf(d).unwrap(),
            "document {docs}"
        );
        docs += 1;
    }
    assert!(docs > 1000);
    // And the cases, through both paths.
    let cases: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tessera_testkit::shared_fixture("tokenizer/cases.json")).unwrap(),
    )
    .unwrap();
    for c in cases["cases"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(t).unwrap(), tok.encode_hf(t).unwrap(), "{t:?}");
    }
}
