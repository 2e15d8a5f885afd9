//! Robustness of the MDS parsers (issue item 6): arbitrary or damaged bytes never panic and
//! every error names the file; truncated and bit-flipped shards are detected (by hashes when the
//! index has them, otherwise by the offset table and the per-sample size headers).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use tessera_data::mds::{
    Index, MdsDataset, MdsError, ReadOptions, Shard, ShardData, ShardInfo, TokenSpec,
};

fn fixture(name: &str) -> PathBuf {
    tessera_testkit::repo_fixture(Path::new("mds").join(name))
}

/// Index, first shard's info and its file bytes of a fixture dataset.
fn first_shard(name: &str) -> (PathBuf, ShardInfo, Vec<u8>) {
    let dir = fixture(name);
    let index = Index::load(&dir).unwrap();
    let info = index.shards[0].clone();
    let bytes = std::fs::read(dir.join(&info.file_on_disk().basename)).unwrap();
    (dir.join("index.json"), info, bytes)
}

const SHARD_PATH: &str = "some/dir/shard.00000.mds";

/// Opens `bytes` as the file of `info` and, if that works, decodes every sample and its tokens.
/// Returns the first error.
fn open_and_read_all(
    info: &ShardInfo,
    index_path: &Path,
    bytes: Vec<u8>,
    verify: bool,
) -> Result<(), MdsError> {
    let shard = Shard::from_file_bytes(bytes, info, index_path, Path::new(SHARD_PATH), verify)?;
    let spec = TokenSpec::default();
    let mut toks = Vec::new();
    for i in 0..shard.len() {
        shard.get(i)?;
        if shard.columns().position("tokens").is_some() {
            shard.tokens_into(i, &spec, &mut toks)?;
        }
    }
    Ok(())
}

fn assert_names_file(e: &MdsError, file: &str) {
    let msg = e.to_string();
    assert!(msg.contains(file), "error does not name {file}: {msg}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_index_json_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = Index::from_json_bytes(&bytes, Path::new("ds/index.json")) {
            assert_names_file(&e, "ds/index.json");
        }
    }

    #[test]
    fn damaged_index_json_never_panics_and_names_the_file(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = std::fs::read(fixture("mixed_columns").join("index.json")).unwrap();
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        match Index::from_json_bytes(&bytes, Path::new("ds/index.json")) {
            Err(e) => assert_names_file(&e, "ds/index.json"),
            // A surviving index must still be safe to open (its basenames stay in the folder).
            Ok(index) => {
                for s in &index.shards {
                    prop_assert!(!s.raw_data.basename.contains(".."));
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_shard_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (index_path, info, _) = first_shard("mixed_columns");
        let columns = Arc::new(info.columns(&index_path).unwrap());
        match Shard::parse(ShardData::Owned(bytes), columns, None, Path::new(SHARD_PATH)) {
            Err(e) => assert_names_file(&e, SHARD_PATH),
            Ok(shard) => {
                for i in 0..shard.len() {
                    if let Err(e) = shard.get(i) {
                        assert_names_file(&e, SHARD_PATH);
                    }
                }
            }
        }
    }

    #[test]
    fn damaged_shards_never_panic_and_errors_name_the_file(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let name = ["mixed_columns", "tokens_ndarray_int32", "tokens_bytes_int64_zstd", "tokens_ndarray_int32_zstd"][which];
        let (index_path, info, mut bytes) = first_shard(name);
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Err(e) = open_and_read_all(&info, &index_path, bytes, false) {
            assert_names_file(&e, SHARD_PATH);
        }
    }
}

/// Every strict prefix of a shard is rejected, with and without hashes.
#[test]
fn truncated_shards_are_detected() {
    for name in [
        "tokens_ndarray_int32",
        "tokens_bytes_int64",
        "mixed_columns",
        "tokens_ndarray_int32_zstd",
    ] {
        let (index_path, info, bytes) = first_shard(name);
        for cut in (0..bytes.len()).step_by(3) {
            let r = open_and_read_all(&info, &index_path, bytes[..cut].to_vec(), false);
            assert!(r.is_err(), "{name}: prefix of {cut} bytes accepted");
        }
        // Even with a lying index (sizes matching the truncated file), the offsets catch it.
        let columns = Arc::new(info.columns(&index_path).unwrap());
        for cut in (0..bytes.len()).step_by(3) {
            if info.zip_data.is_none() {
                let r = Shard::parse(
                    ShardData::Owned(bytes[..cut].to_vec()),
                    columns.clone(),
                    None,
                    Path::new(SHARD_PATH),
                );
                assert!(r.is_err(), "{name}: prefix of {cut} bytes parsed");
            }
        }
    }
}

/// With hashes (tokens_ndarray_int32 records sha1 and xxh64), a flipped bit anywhere is caught.
#[test]
fn bit_flips_anywhere_are_detected_when_hashes_exist() {
    let (index_path, info, bytes) = first_shard("tokens_ndarray_int32");
    assert!(!info.raw_data.hashes.is_empty());
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 1 << (i % 8);
        let e = open_and_read_all(&info, &index_path, b, true).expect_err("flip not detected");
        assert_names_file(&e, SHARD_PATH);
    }
    open_and_read_all(&info, &index_path, bytes, true).unwrap();
}

/// Without hashes, a flipped bit in the sample count, the offset table or any sample's size
/// header is caught by the bounds and size checks.
#[test]
fn bit_flips_in_offsets_and_size_headers_are_detected_without_hashes() {
    for name in ["tokens_bytes_int64", "mixed_columns"] {
        let (index_path, info, bytes) = first_shard(name);
        assert!(info.raw_data.hashes.is_empty());
        let columns = info.columns(&index_path).unwrap();
        let n = info.samples as usize;
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        // Sample count and offset table.
        let mut positions: Vec<usize> = (0..4 * (n + 2)).collect();
        // Every sample's u32 size header.
        for i in 0..n {
            positions.extend(word(4 + 4 * i)..word(4 + 4 * i) + 4 * columns.num_variable());
        }
        for at in positions {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[at] ^= 1 << bit;
                let r = open_and_read_all(&info, &index_path, b, false);
                assert!(
                    r.is_err(),
                    "{name}: flip of bit {bit} at byte {at} not detected"
                );
            }
        }
    }
}

/// A damaged file on disk is reported through the dataset API with its path.
#[test]
fn dataset_open_reports_the_damaged_shard_file() {
    let src = fixture("tokens_ndarray_int32");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let victim = dir.path().join("shard.00002.mds");
    let mut b = std::fs::read(&victim).unwrap();
    let mid = b.len() - 10;
    b[mid] ^= 0x40;
    std::fs::write(&victim, &b).unwrap();
    // Without verification the payload flip goes unnoticed structurally; with it, it is caught.
    let ds = MdsDataset::open_with(
        dir.path(),
        ReadOptions {
            verify_hashes: true,
            mmap: true,
        },
    )
    .unwrap();
    let (s, _) = ds.locate(ds.shard_starts()[2]).unwrap();
    let e = ds.shard(s).unwrap_err();
    assert!(matches!(e, MdsError::HashMismatch { .. }), "{e}");
    assert_names_file(&e, "shard.00002.mds");
    assert!(ds.verify().is_err());
    // Truncating the file is caught by the size check even without verification.
    std::fs::write(&victim, &b[..b.len() - 1]).unwrap();
    let ds = MdsDataset::open(dir.path()).unwrap();
    let e = ds.get(ds.shard_starts()[2]).unwrap_err();
    assert!(matches!(e, MdsError::ShardSize { .. }), "{e}");
    assert_names_file(&e, "shard.00002.mds");
}
