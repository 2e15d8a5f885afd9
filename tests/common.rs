//! Helpers shared by the end-to-end tests: the binary, tiny datasets and configs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tessera::data::mds::{MdsWriter, WriterOptions};

/// The `tessera` binary cargo built for these tests.
pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// Runs the binary and returns its output, failing the test with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("starting tessera");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tessera data train-tokenizer` on the `text` of the JSON lines in `dir/input`, writing
/// `dir/tokenizer.json` with `vocab` tokens.
pub fn train_tokenizer(dir: &Path, input: &str, vocab: usize) {
    run_ok(tessera().current_dir(dir).args([
        "data",
        "train-tokenizer",
        "--input",
        input,
        "--out",
        "tokenizer.json",
        "--vocab-size",
        &vocab.to_string(),
    ]));
}

/// A packed token dataset: `samples` rows of `seq` tokens from a small vocabulary, with enough
/// structure (a repeating pattern with noise) that a tiny model's loss falls.
pub fn write_token_dataset(dir: &Path, samples: usize, seq: usize, vocab: u32, seed: u64) {
    let opts = WriterOptions {
        size_limit: Some(1 << 14),
        ..WriterOptions::default()
    };
    let mut w =
        MdsWriter::create(dir, &[("tokens", "ndarray:int32")], opts).expect("creating the dataset");
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..samples {
        let start = (next() % u64::from(vocab)) as u32;
        let stride = 1 + (next() % 3) as u32;
        let row: Vec<u32> = (0..seq as u32)
            .map(|i| {
                if next() % 8 == 0 {
                    (next() % u64::from(vocab)) as u32
                } else {
                    (start + i * stride) % vocab
                }
            })
            .collect();
        w.write_tokens(&row).expect("writing a sample");
    }
    w.finish().expect("finishing the dataset");
}

/// A temporary folder that is removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tessera-e2e-{tag}-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
