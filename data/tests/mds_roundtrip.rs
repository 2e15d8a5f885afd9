//! Writer -> reader round trips over every encoding, compression and hash, plus the
//! `inspect`/`dump` helpers and merged datasets.

use std::path::Path;

use tessera_data::mds::{
    Compression, DType, HashAlgo, MdsDataset, MdsWriter, NdArray, ReadOptions, SampleRange, Shard,
    TokenSpec, Value, WriterOptions, dump_jsonl, merge_index, summarize,
};

const COLUMNS: [(&str, &str); 20] = [
    ("b", "bytes"),
    ("s", "str"),
    ("i", "int"),
    ("u8", "uint8"),
    ("u16", "uint16"),
    ("u32", "uint32"),
    ("u64", "uint64"),
    ("i8", "int8"),
    ("i16", "int16"),
    ("i32", "int32"),
    ("i64", "int64"),
    ("f16", "float16"),
    ("f32", "float32"),
    ("f64", "float64"),
    ("si", "str_int"),
    ("sf", "str_float"),
    ("sd", "str_decimal"),
    ("j", "json"),
    ("img", "jpeg"),
    ("tokens", "ndarray:int32"),
];

/// Sample `k`: every column with values that depend on `k`.
fn sample(k: i64) -> Vec<(&'static str, Value)> {
    let extra = [
        (
            "a_dyn",
            Value::NdArray(
                NdArray::new(
                    DType::U16,
                    vec![2, 1 + k as u64 % 3],
                    vec![k as u8; 4 * (1 + k as usize % 3)],
                )
                .unwrap(),
            ),
        ),
        (
            "a_fix",
            Value::NdArray(NdArray::from_f32(&[k as f32 * 0.5, -1.0, 3.25])),
        ),
    ];
    let mut v = vec![
        ("b", Value::Bytes(vec![k as u8; k as usize % 5])),
        ("s", Value::Str(format!("sample {k} ✓"))),
        ("i", Value::Int(-k * 1_000_000_007)),
        ("u8", Value::UInt(k as u64 % 256)),
        ("u16", Value::UInt(65535 - k as u64)),
        ("u32", Value::UInt(4_000_000_000 + k as u64)),
        ("u64", Value::UInt(u64::MAX - k as u64)),
        ("i8", Value::Int(-(k % 128))),
        ("i16", Value::Int(-30000 + k)),
        ("i32", Value::Int(-2_000_000_000 + k)),
        ("i64", Value::Int(i64::MIN + k)),
        ("f16", Value::Float(0.25 * k as f64)),
        ("f32", Value::Float(1.5 * k as f64)),
        ("f64", Value::Float(1.0 / (k as f64 + 3.0))),
        ("si", Value::Int(k * -77)),
        ("sf", Value::Float(1e-7 * k as f64)),
        ("sd", Value::Decimal(format!("{k}.50"))),
        (
            "j",
            Value::Json(
                serde_json::json!({"k": k, "list": [1.5, null, "x"], "nested": {"ok": k % 2 == 0}}),
            ),
        ),
        ("img", Value::Bytes(vec![0xff, 0xd8, k as u8])),
        (
            "tokens",
            Value::NdArray(NdArray::from_i32(
                &(0..(1 + k as i32 % 17))
                    .map(|t| t * 3 + k as i32)
                    .collect::<Vec<_>>(),
            )),
        ),
    ];
    v.extend(extra);
    v
}

fn all_columns() -> Vec<(&'static str, &'static str)> {
    let mut c = COLUMNS.to_vec();
    c.push(("a_dyn", "ndarray"));
    c.push(("a_fix", "ndarray:float32:3"));
    c
}

fn write(dir: &Path, compression: Option<&str>, n: i64) -> tessera_data::mds::Index {
    let opts = WriterOptions {
        compression: compression.map(|c| Compression::parse(c, "test").unwrap()),
        hashes: HashAlgo::ALL.to_vec(),
        size_limit: Some(4000),
        overwrite: false,
    };
    let mut w = MdsWriter::create(dir, &all_columns(), opts).unwrap();
    for k in 0..n {
        w.write(&sample(k)).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn every_encoding_compression_and_hash_round_trips() {
    for compression in [
        None,
        Some("zstd"),
        Some("zstd:7"),
        Some("gz"),
        Some("bz2:1"),
        Some("br:4"),
        Some("snappy"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let index = write(dir.path(), compression, 40);
        assert!(
            index.shards.len() > 2,
            "{compression:?}: size_limit should split"
        );
        let ds = MdsDataset::open_with(
            dir.path(),
            ReadOptions {
                verify_hashes: true,
                mmap: true,
            },
        )
        .unwrap();
        ds.verify().unwrap();
        assert_eq!(ds.len(), 40);
        for k in 0..40 {
            let got = ds.get(k as u64).unwrap();
            for (name, want) in sample(k) {
                assert_eq!(
                    got.get(name),
                    Some(&want),
                    "{compression:?} sample {k} column {name}"
                );
            }
        }
        // The shard-level API over the raw file bytes agrees with the dataset.
        let info = &index.shards[1];
        let bytes = std::fs::read(dir.path().join(&info.file_on_disk().basename)).unwrap();
        let shard = Shard::from_file_bytes(
            bytes,
            info,
            &dir.path().join("index.json"),
            Path::new("x"),
            true,
        )
        .unwrap();
        let start = ds.shard_starts()[1];
        assert_eq!(shard.get(0).unwrap(), ds.get(start).unwrap());
    }
}

#[test]
fn mmap_and_read_modes_agree_and_tokens_match_the_values() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), None, 30);
    let mapped = MdsDataset::open(dir.path()).unwrap();
    let read = MdsDataset::open_with(
        dir.path(),
        ReadOptions {
            verify_hashes: false,
            mmap: false,
        },
    )
    .unwrap();
    let mut toks = Vec::new();
    for k in 0..30u64 {
        assert_eq!(mapped.get(k).unwrap(), read.get(k).unwrap());
        toks.clear();
        mapped
            .tokens_into(k, &TokenSpec::default(), &mut toks)
            .unwrap();
        let Some(Value::NdArray(a)) = mapped.get(k).unwrap().get("tokens").cloned() else {
            panic!()
        };
        assert_eq!(
            toks.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            a.to_i64_vec().unwrap()
        );
    }
}

#[test]
fn summary_and_dump_describe_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let index = write(dir.path(), Some("zstd"), 25);
    let s = summarize(dir.path(), Some(&TokenSpec::default())).unwrap();
    assert_eq!((s.samples, s.shards), (25, index.shards.len()));
    assert_eq!(s.columns.len(), 22);
    assert_eq!(s.compression, vec!["zstd".to_string()]);
    assert_eq!(s.hashes.len(), HashAlgo::ALL.len());
    let want_tokens: u64 = (0..25).map(|k| 1 + k % 17).sum();
    let t = s.tokens.as_ref().unwrap();
    assert_eq!(
        (t.total, t.min_per_sample, t.max_per_sample),
        (want_tokens, 1, 17)
    );
    let text = s.to_string();
    assert!(text.contains("samples      25"), "{text}");
    assert!(
        text.contains(&format!("tokens       {want_tokens} in `tokens`")),
        "{text}"
    );

    let ds = MdsDataset::open(dir.path()).unwrap();
    let mut out = Vec::new();
    let range = SampleRange::parse("3..6").unwrap().resolve(ds.len());
    assert_eq!(dump_jsonl(&ds, range, &mut out).unwrap(), 3);
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["i"], serde_json::json!(-3_000_000_021i64));
    assert_eq!(lines[0]["b"], serde_json::json!("AwMD")); // base64 of [3, 3, 3]
    assert_eq!(lines[0]["a_dyn"].as_array().unwrap().len(), 2);
    assert_eq!(
        lines[2]["tokens"],
        serde_json::json!((0..6).map(|t| t * 3 + 5).collect::<Vec<_>>())
    );
}

#[test]
fn merged_partitions_read_back_as_one_dataset() {
    let root = tempfile::tempdir().unwrap();
    write(&root.path().join("slice-00000"), Some("zstd"), 12);
    write(&root.path().join("slice-00001"), None, 9);
    let index = merge_index(root.path(), &["slice-00000", "slice-00001"]).unwrap();
    assert!(
        index
            .shards
            .iter()
            .all(|s| s.file_on_disk().basename.starts_with("slice-0000"))
    );
    let ds = MdsDataset::open_with(
        root.path(),
        ReadOptions {
            verify_hashes: true,
            mmap: true,
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 21);
    assert_eq!(
        ds.get(11).unwrap().get("i"),
        Some(&Value::Int(-11 * 1_000_000_007))
    );
    assert_eq!(ds.get(12).unwrap().get("i"), Some(&Value::Int(0)));
    let s = summarize(root.path(), None).unwrap();
    assert_eq!(
        s.sub_folders,
        vec!["slice-00000".to_string(), "slice-00001".to_string()]
    );
    assert_eq!(s.compression, vec!["zstd".to_string(), "none".to_string()]);
}
