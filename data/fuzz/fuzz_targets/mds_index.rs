//! `index.json` parsing never panics; any error names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tessera_data::mds::Index;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = Index::from_json_bytes(data, Path::new("fuzz/index.json")) {
        assert!(e.to_string().contains("fuzz/index.json"), "{e}");
    }
});
