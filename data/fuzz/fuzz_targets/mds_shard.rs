//! Shard parsing and sample decoding never panic on arbitrary bytes; errors name the file.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_data::mds::{Columns, Shard, ShardData, TokenSpec};

fuzz_target!(|data: &[u8]| {
    // The fixtures' mixed columns (every kind of payload), and a token-only layout.
    let layouts: [&[(&str, &str)]; 2] = [
        &[
            ("arr", "ndarray"),
            ("blob", "bytes"),
            ("emb", "ndarray:float32:2,3"),
            ("flag", "uint8"),
            ("id", "int"),
            ("label", "str_int"),
            ("meta", "json"),
            ("name", "str"),
            ("score", "float64"),
            ("tok", "ndarray:int16"),
        ],
        &[("tokens", "ndarray:int32")],
    ];
    for layout in layouts {
        let columns =
            Arc::new(Columns::new(layout.iter().copied(), Path::new("fuzz/index.json")).unwrap());
        let path = Path::new("fuzz/shard.00000.mds");
        match Shard::parse(ShardData::Owned(data.to_vec()), columns, None, path) {
            Err(e) => assert!(e.to_string().contains("fuzz/shard.00000.mds"), "{e}"),
            Ok(shard) => {
                let mut toks = Vec::new();
                for i in 0..shard.len() {
                    let _ = shard.get(i);
                    let _ = shard.tokens_into(i, &TokenSpec::default(), &mut toks);
                }
            }
        }
    }
});
