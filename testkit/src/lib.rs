//! Test support shared by every tessera crate.
//!
//! Two fixture folders exist:
//! - the **repo copy** (`fixtures/` at the workspace root): the generated fixtures that tests
//!   always need (MPT checkpoints, MDS datasets, HumanEval verdicts, a corpus slice);
//! - the **shared folder** (`$TESSERA_FIXTURES`, else `../shared/fixtures` beside the checkout):
//!   everything, including the gpt-neox tokenizer and llm-foundry's ICL files, which are never
//!   copied into the repo. Tests that need it are `#[ignore = "needs shared fixtures"]`.

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
///
/// Found at run time from `CARGO_MANIFEST_DIR`, which `cargo test` sets for the crate under
/// test: a build cache shared between checkouts (CI and a developer use one target dir) can
/// hand a test binary a testkit compiled in another checkout, whose compile-time path would
/// point at that other checkout's fixtures.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| is_workspace_root(dir))
        .unwrap_or_else(|| panic!("no workspace Cargo.toml above {}", start.display()))
        .to_path_buf()
}

fn is_workspace_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
}

/// The repo's own copy of the generated fixtures: `<root>/fixtures/<rel>`.
pub fn repo_fixture(rel: impl AsRef<Path>) -> PathBuf {
    workspace_root().join("fixtures").join(rel)
}

/// The shared fixture folder: `$TESSERA_FIXTURES` if set (relative paths are taken from the
/// workspace root), else `../shared/fixtures` beside the checkout.
///
/// # Panics
/// If the folder does not exist: a test that calls this is marked
/// `#[ignore = "needs shared fixtures"]`, so reaching here without the folder is a setup error
/// and must fail loudly rather than pass.
pub fn shared_fixtures() -> PathBuf {
    let dir = match std::env::var_os("TESSERA_FIXTURES") {
        Some(v) => {
            let p = PathBuf::from(v);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        None => workspace_root().join("../shared/fixtures"),
    };
    assert!(
        dir.is_dir(),
        "shared fixtures not found at {} (set TESSERA_FIXTURES to the folder)",
        dir.display()
    );
    dir
}

/// `shared_fixtures().join(rel)`.
pub fn shared_fixture(rel: impl AsRef<Path>) -> PathBuf {
    shared_fixtures().join(rel)
}

/// A `.npy` array read as `f32` values plus its shape (float32 or float64 files).
pub fn read_npy_f32(path: impl AsRef<Path>) -> (Vec<f32>, Vec<usize>) {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let values = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => {
            npy.into_vec::<f64>()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .into_iter()
                .map(|v| v as f32)
                .collect()
        }
        _ => npy
            .into_vec::<f32>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    };
    (values, shape)
}

/// A `.npy` integer array (int32 or int64) read as `i64` values plus its shape.
pub fn read_npy_i64(path: impl AsRef<Path>) -> (Vec<i64>, Vec<usize>) {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let values = match npy.dtype() {
        npyz::DType::Plain(t) if t.size_field() == 4 => npy
            .into_vec::<i32>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .into_iter()
            .map(i64::from)
            .collect(),
        _ => npy
            .into_vec::<i64>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    };
    (values, shape)
}
