//! MDS against mosaicml-streaming's own output (`fixtures/mds`, written by `streaming.MDSWriter`):
//! every dataset reads back equal to its `expected.json`, and re-writing the same samples with the
//! same options reproduces every file byte for byte (index, shards, zstd frames).

mod mds_common;

use std::path::Path;

use mds_common::{
    expected, fixture, hex_to_bytes, mixed_sample, ndarray_from_expected, sha256_int64le,
};
use serde_json::Value as Json;
use tessera_data::mds::{
    Compression, DType, HashAlgo, INDEX_BASENAME, MdsDataset, MdsWriter, NdArray, ReadOptions,
    TokenSpec, Value, WriterOptions, pyjson,
};

const DATASETS: [&str; 5] = [
    "tokens_ndarray_int32",
    "tokens_ndarray_int32_zstd",
    "tokens_bytes_int64",
    "tokens_bytes_int64_zstd",
    "mixed_columns",
];

/// The closed-form token sequence of sample `i` (the shared fixtures README, "mds/").
fn closed_form_tokens(generator: &Json, i: u64) -> Vec<u32> {
    let g = |k: &str| generator[k].as_u64().unwrap();
    let len = g("min_len") + (i * g("len_mul")) % g("len_mod");
    (i * g("stride")..i * g("stride") + len)
        .map(|t| (t % g("vocab")) as u32)
        .collect()
}

#[test]
fn every_fixture_dataset_reads_back_equal_to_expected_json() {
    for name in DATASETS {
        let exp = expected(name);
        // Hashes are verified where the index has them (tokens_ndarray_int32: sha1 + xxh64).
        let ds = MdsDataset::open_with(
            fixture(name),
            ReadOptions {
                verify_hashes: true,
                mmap: true,
            },
        )
        .unwrap();
        assert_eq!(ds.len(), exp["num_samples"].as_u64().unwrap(), "{name}");
        let shard_counts: Vec<u64> = ds.index().shards.iter().map(|s| s.samples).collect();
        let want_counts: Vec<u64> = exp["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["samples"].as_u64().unwrap())
            .collect();
        assert_eq!(shard_counts, want_counts, "{name}");
        let samples = exp["samples"].as_array().unwrap();
        if name.starts_with("tokens") {
            check_token_dataset(name, &ds, samples);
        } else {
            check_mixed_dataset(&ds, samples);
        }
    }
}

fn check_token_dataset(name: &str, ds: &MdsDataset, samples: &[Json]) {
    let spec = TokenSpec::default();
    let mut toks = Vec::new();
    for (i, e) in samples.iter().enumerate() {
        toks.clear();
        let n = ds.tokens_into(i as u64, &spec, &mut toks).unwrap();
        assert_eq!(n as u64, e["length"].as_u64().unwrap(), "{name} sample {i}");
        assert_eq!(
            toks.iter().map(|&t| t as u64).sum::<u64>(),
            e["sum"].as_u64().unwrap()
        );
        let first: Vec<u64> = e["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            toks[..3].iter().map(|&t| t as u64).collect::<Vec<_>>(),
            first
        );
        assert_eq!(*toks.last().unwrap() as u64, e["last"].as_u64().unwrap());
        assert_eq!(
            sha256_int64le(&toks),
            e["sha256_int64le"].as_str().unwrap(),
            "{name} sample {i}"
        );
        // The generic decode path agrees with the token fast path.
        let value = ds.get(i as u64).unwrap().get("tokens").unwrap().clone();
        let via_value: Vec<i64> = match value {
            Value::NdArray(a) => {
                assert_eq!(
                    (a.dtype, a.shape.clone()),
                    (DType::I32, vec![toks.len() as u64])
                );
                a.to_i64_vec().unwrap()
            }
            Value::Bytes(b) => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            other => panic!("{name}: tokens decoded as {other:?}"),
        };
        assert_eq!(
            via_value,
            toks.iter().map(|&t| t as i64).collect::<Vec<_>>()
        );
    }
}

fn check_mixed_dataset(ds: &MdsDataset, samples: &[Json]) {
    for (i, e) in samples.iter().enumerate() {
        let s = ds.get(i as u64).unwrap();
        let get = |k: &str| {
            s.get(k)
                .unwrap_or_else(|| panic!("sample {i}: no column {k}"))
        };
        assert_eq!(
            get("id"),
            &Value::Int(e["id"].as_i64().unwrap()),
            "sample {i}"
        );
        assert_eq!(get("name"), &Value::Str(e["name"].as_str().unwrap().into()));
        assert_eq!(get("meta"), &Value::Json(e["meta"].clone()));
        assert_eq!(
            get("blob"),
            &Value::Bytes(hex_to_bytes(e["blob_hex"].as_str().unwrap()))
        );
        assert_eq!(get("score"), &Value::Float(e["score"].as_f64().unwrap()));
        assert_eq!(get("flag"), &Value::UInt(e["flag"].as_u64().unwrap()));
        assert_eq!(get("label"), &Value::Int(e["label"].as_i64().unwrap()));
        for k in ["emb", "tok", "arr"] {
            let Value::NdArray(a) = get(k) else {
                panic!("sample {i}: {k} is not an ndarray")
            };
            let want: Vec<f64> = e[k]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(
                a.dtype.name(),
                e[k]["dtype"].as_str().unwrap(),
                "sample {i} {k}"
            );
            assert_eq!(a.to_f64_vec(), want, "sample {i} {k}");
            assert_eq!(a, &ndarray_from_expected(&e[k]), "sample {i} {k}");
        }
    }
}

/// JSON kept in document order, so a `json` column can be re-serialised with Python's key order
/// (serde_json's map sorts keys).
enum OrderedJson {
    Scalar(Json),
    Array(Vec<OrderedJson>),
    Object(Vec<(String, OrderedJson)>),
}

impl<'de> serde::Deserialize<'de> for OrderedJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar(Json::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar(Json::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar(Json::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar(Json::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar(Json::String(v.into())))
            }
            fn visit_unit<E>(self) -> Result<OrderedJson, E> {
                Ok(OrderedJson::Scalar(Json::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<OrderedJson, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(OrderedJson::Array(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<OrderedJson, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry()? {
                    v.push((k, x));
                }
                Ok(OrderedJson::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Python `json.dumps` of document-ordered JSON.
fn py_dumps(v: &OrderedJson, out: &mut String) {
    match v {
        OrderedJson::Scalar(j) => pyjson::write_value(out, j, false),
        OrderedJson::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_dumps(x, out);
            }
            out.push(']');
        }
        OrderedJson::Object(items) => {
            out.push('{');
            for (i, (k, x)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                pyjson::write_str(out, k);
                out.push_str(": ");
                py_dumps(x, out);
            }
            out.push('}');
        }
    }
}

fn writer_options(exp: &Json) -> WriterOptions {
    let args = &exp["writer_args"];
    WriterOptions {
        compression: args["compression"]
            .as_str()
            .map(|c| Compression::parse(c, "test").unwrap()),
        hashes: args["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| HashAlgo::parse(h.as_str().unwrap(), "test").unwrap())
            .collect(),
        size_limit: args["size_limit"].as_u64(),
        overwrite: false,
    }
}

/// Re-writes fixture `name` from its expected.json into `out`.
fn rewrite(name: &str, out: &Path) {
    let exp = expected(name);
    let columns: Vec<(String, String)> = exp["columns"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let cols: Vec<(&str, &str)> = columns
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let mut w = MdsWriter::create(out, &cols, writer_options(&exp)).unwrap();
    let n = exp["num_samples"].as_u64().unwrap();
    if name.starts_with("tokens") {
        for i in 0..n {
            let toks = closed_form_tokens(&exp["generator"], i);
            if i % 2 == 0 {
                w.write_tokens(&toks).unwrap();
            } else {
                let v = if name.contains("ndarray") {
                    Value::NdArray(NdArray::from_i32(
                        &toks.iter().map(|&t| t as i32).collect::<Vec<_>>(),
                    ))
                } else {
                    Value::Bytes(
                        toks.iter()
                            .flat_map(|&t| (t as i64).to_le_bytes())
                            .collect(),
                    )
                };
                w.write(&[("tokens", v)]).unwrap();
            }
        }
    } else {
        // The `meta` column's text, in the original key order, straight from expected.json.
        let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
        #[derive(serde::Deserialize)]
        struct Doc {
            samples: Vec<Meta>,
        }
        #[derive(serde::Deserialize)]
        struct Meta {
            meta: OrderedJson,
        }
        let metas: Doc = serde_json::from_str(&text).unwrap();
        for (e, m) in exp["samples"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&metas.samples)
        {
            let mut meta = String::new();
            py_dumps(&m.meta, &mut meta);
            let mut fields = mixed_sample(e);
            for f in fields.iter_mut().filter(|f| f.0 == "meta") {
                f.1 = Value::Str(meta.clone());
            }
            w.write(&fields).unwrap();
        }
    }
    w.finish().unwrap();
}

#[test]
fn rewriting_each_fixture_reproduces_streamings_files_byte_for_byte() {
    for name in DATASETS {
        let out = tempfile::tempdir().unwrap();
        rewrite(name, out.path());
        let src = fixture(name);
        let index = std::fs::read(src.join(INDEX_BASENAME)).unwrap();
        let ours = std::fs::read(out.path().join(INDEX_BASENAME)).unwrap();
        assert!(
            index == ours,
            "{name}: index.json differs:\nstreaming: {}\ntessera:   {}",
            String::from_utf8_lossy(&index),
            String::from_utf8_lossy(&ours)
        );
        let ds = MdsDataset::open(&src).unwrap();
        for s in &ds.index().shards {
            let b = &s.file_on_disk().basename;
            let want = std::fs::read(src.join(b)).unwrap();
            let got =
                std::fs::read(out.path().join(b)).unwrap_or_else(|e| panic!("{name}: {b}: {e}"));
            let first_diff = want.iter().zip(&got).position(|(a, b)| a != b);
            assert!(
                want == got,
                "{name}: {b} differs ({} vs {} bytes, first difference at byte {first_diff:?})",
                want.len(),
                got.len()
            );
        }
        // Nothing else was written (no stray temp files).
        let mut files: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let mut want_files: Vec<String> = ds
            .index()
            .shards
            .iter()
            .map(|s| s.file_on_disk().basename.clone())
            .collect();
        want_files.push(INDEX_BASENAME.into());
        want_files.sort();
        assert_eq!(files, want_files, "{name}");
    }
}
