//! A tessera-trained tokenizer on the repo corpus: deterministic file, padded vocabulary, and
//! loadable by HF's Python `tokenizers` with identical encodings (ignored test; CI runs it after
//! `pip install tokenizers==0.22.2`; `$TESSERA_PYTHON` picks the interpreter).

use std::io::Read;
use std::process::Command;

use tessera_data::tokenizer::{BpeTrainConfig, Tokenizer, train_bpe_from_inputs};

fn slice() -> String {
    tessera_testkit::repo_fixture("corpus/slice.jsonl.zst")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn corpus_training_is_byte_identical_across_runs_and_padded() {
    let cfg = BpeTrainConfig {
        vocab_size: 700,
        pad_to_multiple_of: Some(128),
        ..Default::default()
    };
    let (a, report) = train_bpe_from_inputs(&[slice()], "text", &cfg).unwrap();
    let (b, _) = train_bpe_from_inputs(&[slice()], "text", &cfg).unwrap();
    assert_eq!(
        a.inner().to_string(false).unwrap(),
        b.inner().to_string(false).unwrap()
    );
    assert_eq!(report.docs, 163);
    assert_eq!(report.learned_vocab, 700);
    assert_eq!(a.vocab_size(), 768);
    assert_eq!(a.token_to_id("<|endoftext|>"), Some(0));
}

#[test]
#[ignore = "needs python with the tokenizers package (pip install tokenizers==0.22.2)"]
fn hf_tokenizers_loads_the_trained_file_and_encodes_identically() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BpeTrainConfig {
        vocab_size: 600,
        pad_to_multiple_of: Some(128),
        ..Default::default()
    };
    let (tok, _) = train_bpe_from_inputs(&[slice()], "text", &cfg).unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let mut text = String::new();
    zstd::stream::read::Decoder::new(std::fs::File::open(slice()).unwrap())
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let docs: Vec<String> = text
        .lines()
        .take(10)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    let docs_path = dir.path().join("docs.json");
    std::fs::write(&docs_path, serde_json::to_vec(&docs).unwrap()).unwrap();
    let script = "import json,sys\nfrom tokenizers import Tokenizer\nt=Tokenizer.from_file(sys.argv[1])\n\
                  docs=json.load(open(sys.argv[2]))\nprint(json.dumps([t.encode(d).ids for d in docs]))";
    // A missing interpreter or package fails the test: it never passes vacuously.
    let python = std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .arg(&docs_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hf: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let back = Tokenizer::from_file(&path).unwrap();
    for (d, want) in docs.iter().zip(&hf) {
        assert_eq!(&back.encode(d).unwrap(), want);
    }
}
