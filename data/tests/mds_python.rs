//! Datasets tessera writes, read back by Python: the fixtures' independent
//! `fixtures/mds/reference_reader.py`, and mosaicml-streaming's own `StreamingDataset`
//! (`xtask/python/read_with_streaming.py`).
//!
//! Both are ignored by default because they need Python packages; CI runs them with
//! `--include-ignored` after `pip install numpy xxhash zstd mosaicml-streaming`. When run, a
//! missing interpreter or package FAILS the test (it never passes vacuously). The interpreter is
//! `$TESSERA_PYTHON`, else `python3`.

mod mds_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use mds_common::{expected, mixed_sample, sha256_int64le};
use serde_json::{Value as Json, json};
use tessera_data::mds::{
    Compression, HashAlgo, MdsDataset, MdsWriter, NdArray, Sample, Value, WriterOptions,
    merge_index,
};

fn python() -> String {
    std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `python args...`, failing the test with its output unless it exits 0.
fn run_python(args: &[&str]) -> String {
    let out = Command::new(python())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}` (set TESSERA_PYTHON): {e}", python()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        python(),
        args.join(" "),
        out.status,
        stdout.chars().take(4000).collect::<String>(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn options(compression: Option<&str>, hashes: &[&str], size_limit: u64) -> WriterOptions {
    WriterOptions {
        compression: compression.map(|c| Compression::parse(c, "test").unwrap()),
        hashes: hashes
            .iter()
            .map(|h| HashAlgo::parse(h, "test").unwrap())
            .collect(),
        size_limit: Some(size_limit),
        overwrite: false,
    }
}

/// Token sample `i` (a different closed form from the fixtures').
fn tokens(i: u64) -> Vec<u32> {
    let len = 3 + (i * 53) % 120;
    (0..len)
        .map(|j| ((i * 131 + j * 17) % 50_000) as u32)
        .collect()
}

/// Writes 150 token samples and an `expected.json` in the reference reader's format.
fn write_token_dataset(dir: &Path, column: &str, opts: WriterOptions) {
    let mut w = MdsWriter::create(dir, &[("tokens", column)], opts).unwrap();
    let mut samples = Vec::new();
    for i in 0..150 {
        let t = tokens(i);
        w.write_tokens(&t).unwrap();
        samples.push(json!({"length": t.len(), "sha256_int64le": sha256_int64le(&t)}));
    }
    w.finish().unwrap();
    let exp = json!({"num_samples": 150, "samples": samples});
    std::fs::write(dir.join("expected.json"), exp.to_string()).unwrap();
}

#[test]
#[ignore = "needs python3 with numpy, xxhash, zstd"]
fn tessera_datasets_pass_the_fixture_reference_reader() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // The reference reader knows zstd and the sha1/xxh64 hashes, as the fixtures use.
    write_token_dataset(
        &r.join("ndarray"),
        "ndarray:int32",
        options(None, &["sha1", "xxh64"], 6000),
    );
    write_token_dataset(
        &r.join("ndarray_zstd7"),
        "ndarray:int32",
        options(Some("zstd:7"), &["xxh64"], 5000),
    );
    write_token_dataset(
        &r.join("bytes_zstd"),
        "bytes",
        options(Some("zstd"), &[], 9000),
    );
    write_token_dataset(
        &r.join("uint16_dyn"),
        "ndarray:uint16",
        options(None, &["sha1"], 1 << 26),
    );
    // mixed_columns' samples, compressed and hashed, with the fixture's expected.json.
    let mixed = r.join("mixed");
    let cols = mds_common::mixed_columns();
    let cols: Vec<(&str, &str)> = cols.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut w = MdsWriter::create(
        &mixed,
        &cols,
        options(Some("zstd"), &["sha1", "xxh64"], 3000),
    )
    .unwrap();
    for e in expected("mixed_columns")["samples"].as_array().unwrap() {
        w.write(&mixed_sample(e)).unwrap();
    }
    w.finish().unwrap();
    std::fs::copy(
        mds_common::fixture("mixed_columns/expected.json"),
        mixed.join("expected.json"),
    )
    .unwrap();

    let script = mds_common::fixture("reference_reader.py");
    let dirs = [
        "ndarray",
        "ndarray_zstd7",
        "bytes_zstd",
        "uint16_dyn",
        "mixed",
    ]
    .map(|d| r.join(d));
    let mut args = vec![script.to_str().unwrap()];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    let out = run_python(&args);
    assert_eq!(
        out.lines().filter(|l| l.ends_with("OK")).count(),
        5,
        "{out}"
    );
}

/// A value in `read_with_streaming.py`'s output form.
fn canonical(v: &Value) -> Json {
    match v {
        Value::Bytes(b) => json!({"hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>()}),
        Value::Str(s) => json!(s),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::Decimal(d) => json!({"decimal": d}),
        Value::Json(j) => j.clone(),
        Value::NdArray(a) => {
            let values: Vec<Json> = match a.to_i64_vec() {
                Some(v) => v.into_iter().map(Json::from).collect(),
                None if a.dtype == tessera_data::mds::DType::U64 => a
                    .data
                    .chunks_exact(8)
                    .map(|c| json!(u64::from_le_bytes(c.try_into().unwrap())))
                    .collect(),
                None => a.to_f64_vec().into_iter().map(Json::from).collect(),
            };
            json!({"dtype": a.dtype.name(), "shape": a.shape, "values": values})
        }
    }
}

fn canonical_sample(s: &Sample) -> Json {
    Json::Object(
        s.iter()
            .map(|(k, v)| (k.to_string(), canonical(v)))
            .collect(),
    )
}

/// Checks that streaming reads each `(dir, validate_hash)` back as exactly what tessera reads
/// (one Python process for all, since importing streaming loads torch).
fn check_with_streaming(datasets: &[(PathBuf, Option<&str>)]) {
    let script = tessera_testkit::workspace_root().join("xtask/python/read_with_streaming.py");
    let mut args = vec![script.to_str().unwrap().to_string()];
    for (dir, algo) in datasets {
        let d = dir.to_str().unwrap();
        args.push(
            algo.map(|a| format!("{d}={a}"))
                .unwrap_or_else(|| d.to_string()),
        );
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python(&args);
    // Sections start at lines `# DIR`; sample lines are JSON objects, so never start with `#`.
    let mut sections: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in out.lines() {
        match line.strip_prefix("# ") {
            Some(dir) => sections.push((dir, Vec::new())),
            None => sections
                .last_mut()
                .expect("output starts with a `# DIR` line")
                .1
                .push(line),
        }
    }
    assert_eq!(sections.len(), datasets.len(), "{out}");
    for ((dir, _), (name, lines)) in datasets.iter().zip(&sections) {
        assert_eq!(Some(*name), dir.to_str());
        let ds = MdsDataset::open(dir).unwrap();
        assert_eq!(lines.len() as u64, ds.len(), "{}", dir.display());
        for (i, line) in lines.iter().enumerate() {
            let got: Json = serde_json::from_str(line).unwrap();
            let want = canonical_sample(&ds.get(i as u64).unwrap());
            assert_eq!(got, want, "{}: sample {i}", dir.display());
        }
    }
}

#[test]
#[ignore = "needs python3 with mosaicml-streaming"]
fn tessera_datasets_read_back_through_streamings_streaming_dataset() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // Every non-image encoding, zstd, several hashes (streaming verifies sha1 on load).
    let cols = [
        ("b", "bytes"),
        ("s", "str"),
        ("i", "int"),
        ("u8", "uint8"),
        ("u64", "uint64"),
        ("i16", "int16"),
        ("f16", "float16"),
        ("f32", "float32"),
        ("f64", "float64"),
        ("si", "str_int"),
        ("sf", "str_float"),
        ("sd", "str_decimal"),
        ("j", "json"),
        ("dyn", "ndarray"),
        ("fix", "ndarray:float32:2,2"),
        ("tokens", "ndarray:int32"),
    ];
    let all = r.join("all");
    let mut w = MdsWriter::create(
        &all,
        &cols,
        options(Some("zstd"), &["md5", "sha1", "xxh3_64", "xxh64"], 2000),
    )
    .unwrap();
    for k in 0..30i64 {
        w.write(&[
            ("b", Value::Bytes(vec![k as u8; 1 + k as usize % 4])),
            ("s", Value::Str(format!("s{k} ✓"))),
            ("i", Value::Int(-k * 99_999_999_999)),
            ("u8", Value::UInt(k as u64)),
            ("u64", Value::UInt(u64::MAX - k as u64)),
            ("i16", Value::Int(-k * 100)),
            ("f16", Value::Float(k as f64 * 0.5)),
            ("f32", Value::Float(k as f64 * 0.25)),
            ("f64", Value::Float(1.0 / (k as f64 + 7.0))),
            ("si", Value::Int(k * 12345)),
            ("sf", Value::Float(k as f64 * 1e-9)),
            ("sd", Value::Decimal(format!("-{k}.125"))),
            ("j", Value::Json(json!({"k": k, "v": [1.5, null, "é"]}))),
            (
                "dyn",
                Value::NdArray(
                    NdArray::new(
                        tessera_data::mds::DType::U16,
                        vec![1 + k as u64 % 3],
                        vec![7; 2 * (1 + k as usize % 3)],
                    )
                    .unwrap(),
                ),
            ),
            (
                "fix",
                Value::NdArray(
                    NdArray::new(
                        tessera_data::mds::DType::F32,
                        vec![2, 2],
                        [0.5f32, 1.0, 1.5, k as f32]
                            .iter()
                            .flat_map(|x| x.to_le_bytes())
                            .collect(),
                    )
                    .unwrap(),
                ),
            ),
            (
                "tokens",
                Value::NdArray(NdArray::from_i32(
                    &tokens(k as u64)
                        .iter()
                        .map(|&t| t as i32)
                        .collect::<Vec<_>>(),
                )),
            ),
        ])
        .unwrap();
    }
    w.finish().unwrap();
    let mut datasets = vec![(all, Some("sha1"))];

    // Each compression family streaming knows, on a token dataset.
    for c in ["gz", "bz2", "br", "snappy", "zstd:7"] {
        let d = r.join(format!("tok_{}", c.replace(':', "_")));
        write_token_dataset(&d, "ndarray:int32", options(Some(c), &["xxh64"], 4000));
        std::fs::remove_file(d.join("expected.json")).unwrap();
        datasets.push((d, Some("xxh64")));
    }

    // A merged index of two partitions.
    let merged = r.join("merged");
    write_token_dataset(
        &merged.join("part-0"),
        "ndarray:int32",
        options(None, &[], 3000),
    );
    write_token_dataset(
        &merged.join("part-1"),
        "bytes",
        options(Some("zstd"), &[], 3000),
    );
    for p in ["part-0", "part-1"] {
        std::fs::remove_file(merged.join(p).join("expected.json")).unwrap();
    }
    merge_index(&merged, &["part-0", "part-1"]).unwrap();
    datasets.push((merged, None));
    check_with_streaming(&datasets);
}
