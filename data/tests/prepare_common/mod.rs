//! Helpers shared by the `prepare_*` integration tests: corpus documents, a tiny trained
//! tokenizer, reading shards back, and an independent computation of the expected samples.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use tessera_data::mds::{MdsDataset, TokenSpec};
use tessera_data::prepare::PrepareConfig;
use tessera_data::tokenizer::{BpeTrainConfig, train_bpe};

/// The first `n` documents of the repo's corpus slice (`fixtures/corpus/slice.jsonl.zst`),
/// parsed with serde_json independently of `prepare`'s reader.
pub fn corpus_docs(n: usize) -> Vec<String> {
    let path = tessera_testkit::repo_fixture("corpus/slice.jsonl.zst");
    let file = std::fs::File::open(&path).unwrap();
    let mut text = String::new();
    zstd::stream::read::Decoder::new(file)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .take(n)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Writes `docs` as JSONL (`{"text": …}` plus an id field to skip).
pub fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| serde_json::json!({"id": i, "text": d, "meta": {"n": [i]}}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Trains a small byte-level BPE on `docs` and saves it as `dir/tokenizer.json`.
pub fn tiny_tokenizer(dir: &Path, docs: &[String]) -> PathBuf {
    let cfg = BpeTrainConfig {
        vocab_size: 400,
        ..Default::default()
    };
    let (tok, _) = train_bpe(docs.iter(), &cfg).unwrap();
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    path
}

/// A quiet config with the given workers.
pub fn config(
    inputs: Vec<PathBuf>,
    tokenizer: &Path,
    out: &Path,
    seq_len: usize,
    workers: usize,
) -> PrepareConfig {
    let mut cfg = PrepareConfig::new(
        inputs
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        tokenizer,
        out,
    );
    cfg.seq_len = seq_len;
    cfg.workers = workers;
    cfg.progress = false;
    cfg
}

/// Every sample's tokens, read back through the MDS reader.
pub fn read_samples(dir: &Path) -> Vec<Vec<u32>> {
    let ds = MdsDataset::open(dir).unwrap();
    let spec = TokenSpec::default();
    (0..ds.len())
        .map(|i| {
            let mut v = Vec::new();
            ds.tokens_into(i, &spec, &mut v).unwrap();
            v
        })
        .collect()
}

/// What llm-foundry's `ConcatTokensDataset` yields for `docs`: the HF-tokenizers encoding of
/// each document (loaded straight from the file with the `tokenizers` crate), EOS after each,
/// concatenated and cut into `seq_len` pieces, the partial tail dropped.
pub fn expected_samples(
    tokenizer: &Path,
    docs: &[String],
    seq_len: usize,
    eos: u32,
) -> Vec<Vec<u32>> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer).unwrap();
    let mut all: Vec<u32> = Vec::new();
    for d in docs {
        all.extend_from_slice(tok.encode(d.as_str(), false).unwrap().get_ids());
        all.push(eos);
    }
    all.chunks_exact(seq_len).map(|c| c.to_vec()).collect()
}

/// Every file below `dir` (relative path → bytes).
pub fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}
