//! Helpers shared by the `mds_*` integration tests: fixture paths and turning a fixture's
//! `expected.json` back into samples.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use tessera_data::mds::{DType, NdArray, Value};

/// `fixtures/mds/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    tessera_testkit::repo_fixture(Path::new("mds").join(name))
}

/// A fixture's parsed `expected.json`.
pub fn expected(name: &str) -> Json {
    let p = fixture(name).join("expected.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// sha256 of token ids as little-endian int64, as `expected.json` records them.
pub fn sha256_int64le(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| (t as i64).to_le_bytes())
        .collect();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ndarray from expected.json's `{dtype, shape, values}`.
pub fn ndarray_from_expected(e: &Json) -> NdArray {
    let dtype = DType::from_name(e["dtype"].as_str().unwrap()).unwrap();
    let shape: Vec<u64> = e["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut data = Vec::new();
    for v in e["values"].as_array().unwrap() {
        let bytes: Vec<u8> = match dtype {
            DType::F16 => half::f16::from_f64(v.as_f64().unwrap())
                .to_le_bytes()
                .to_vec(),
            DType::F32 => (v.as_f64().unwrap() as f32).to_le_bytes().to_vec(),
            DType::F64 => v.as_f64().unwrap().to_le_bytes().to_vec(),
            DType::U64 => v.as_u64().unwrap().to_le_bytes().to_vec(),
            d => v.as_i64().unwrap().to_le_bytes()[..d.size()].to_vec(),
        };
        data.extend(bytes);
    }
    NdArray::new(dtype, shape, data).unwrap()
}

/// Lowercase hex to bytes.
pub fn hex_to_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

/// One `mixed_columns` sample from its expected.json entry; `meta` is given as a
/// `serde_json::Value` (so its keys are written sorted, unlike the Python original).
pub fn mixed_sample(e: &Json) -> Vec<(&'static str, Value)> {
    vec![
        ("id", Value::Int(e["id"].as_i64().unwrap())),
        ("name", Value::Str(e["name"].as_str().unwrap().into())),
        ("meta", Value::Json(e["meta"].clone())),
        (
            "blob",
            Value::Bytes(hex_to_bytes(e["blob_hex"].as_str().unwrap())),
        ),
        ("emb", Value::NdArray(ndarray_from_expected(&e["emb"]))),
        ("tok", Value::NdArray(ndarray_from_expected(&e["tok"]))),
        ("arr", Value::NdArray(ndarray_from_expected(&e["arr"]))),
        ("score", Value::Float(e["score"].as_f64().unwrap())),
        ("flag", Value::UInt(e["flag"].as_u64().unwrap())),
        ("label", Value::Int(e["label"].as_i64().unwrap())),
    ]
}

/// The columns of `mixed_columns`, as `(name, encoding)`.
pub fn mixed_columns() -> Vec<(String, String)> {
    expected("mixed_columns")["columns"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}
