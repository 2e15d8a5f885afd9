//! `index.json`: parsing with field-precise errors, and writing streaming's exact bytes.
//!
//! Streaming writes `json.dump({"version": 2, "shards": [...]}, f, sort_keys=True)`, each shard
//! being `{column_encodings, column_names, column_sizes, compression, format, hashes, raw_data,
//! samples, size_limit, version, zip_data}` (`format/base/writer.py`, `flush_shard`). A merged
//! index (`util.py`, `merge_index`) is the same shards with `dir/` prefixed to the basenames,
//! written without `sort_keys` as `{"version": 2, "shards": [...]}`.
//!
//! Parsing rejects anything the reader could later trip on: a basename that leaves the dataset
//! folder, sizes over the u32 offset limit, `column_sizes` that disagree with the encodings, a
//! compressed shard without `zip_data`. Unknown extra keys are ignored.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde_json::{Map, Value as Json, json};

use super::atomic::write_atomic;
use super::columns::Columns;
use super::compression::Compression;
use super::error::{MdsError, Result};
use super::pyjson;

/// The index file's name in a dataset folder.
pub const INDEX_BASENAME: &str = "index.json";

/// One file of a shard: `raw_data` (decompressed) or `zip_data` (the compressed file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the dataset folder: `shard.00000.mds[.zstd]`, or `sub/shard...` in a
    /// merged index.
    pub basename: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Hash name -> hex digest.
    pub hashes: BTreeMap<String, String>,
}

/// One shard's entry in `index.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Each column's encoding string, in column order.
    pub column_encodings: Vec<String>,
    /// The column names.
    pub column_names: Vec<String>,
    /// Each column's fixed payload size, `None` for variable-size columns.
    pub column_sizes: Vec<Option<u64>>,
    /// The shard file's compression, if any.
    pub compression: Option<Compression>,
    /// Hash algorithms recorded for the shard files.
    pub hashes: Vec<String>,
    /// The uncompressed shard.
    pub raw_data: FileInfo,
    /// Samples in the shard.
    pub samples: u64,
    /// The writer's shard size limit in bytes.
    pub size_limit: Option<u64>,
    /// The compressed file, when compressed.
    pub zip_data: Option<FileInfo>,
}

/// A parsed `index.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// The shards, in sample order.
    pub shards: Vec<ShardInfo>,
}

impl ShardInfo {
    /// The file that is on disk: `zip_data` when compressed, else `raw_data`.
    pub fn file_on_disk(&self) -> &FileInfo {
        self.zip_data.as_ref().unwrap_or(&self.raw_data)
    }

    /// This shard's columns; `index_path` is named in errors (`pkl` is refused here).
    pub fn columns(&self, index_path: &Path) -> Result<Columns> {
        Columns::new(
            self.column_names
                .iter()
                .map(String::as_str)
                .zip(self.column_encodings.iter().map(String::as_str)),
            index_path,
        )
    }

    /// The shard's JSON object with streaming's keys (the embedded config plus `samples`,
    /// `raw_data` and `zip_data`).
    pub fn to_json(&self) -> Json {
        json!({
            "column_encodings": self.column_encodings,
            "column_names": self.column_names,
            "column_sizes": self.column_sizes,
            "compression": self.compression.map(|c| c.to_string()),
            "format": "mds",
            "hashes": self.hashes,
            "raw_data": file_json(&self.raw_data),
            "samples": self.samples,
            "size_limit": self.size_limit,
            "version": 2,
            "zip_data": self.zip_data.as_ref().map(file_json),
        })
    }
}

fn file_json(f: &FileInfo) -> Json {
    json!({"basename": f.basename, "bytes": f.bytes, "hashes": f.hashes})
}

impl Index {
    /// Reads and parses `dir/index.json`.
    pub fn load(dir: &Path) -> Result<Index> {
        let path = dir.join(INDEX_BASENAME);
        let bytes = std::fs::read(&path).map_err(|e| MdsError::io(&path, "reading", e))?;
        Index::from_json_bytes(&bytes, &path)
    }

    /// Parses index JSON; `path` is named in every error.
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<Index> {
        let root: Json = serde_json::from_slice(bytes).map_err(|e| MdsError::InvalidIndex {
            path: path.to_path_buf(),
            field: "<file>".into(),
            found: format!("invalid JSON ({e})"),
            expected: "a JSON object".into(),
        })?;
        let p = Parser { path };
        let obj = p.object(&root, "<root>")?;
        p.version(obj.get("version"), "version")?;
        let shards = p.array(obj.get("shards"), "shards")?;
        let shards = shards
            .iter()
            .enumerate()
            .map(|(i, s)| p.shard(s, &format!("shards[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Index { shards })
    }

    /// Total samples over every shard.
    pub fn total_samples(&self) -> u64 {
        self.shards.iter().map(|s| s.samples).sum()
    }

    /// The index as streaming's writer writes it: `json.dump(obj, sort_keys=True)`.
    pub fn to_json_string(&self) -> String {
        let shards: Vec<Json> = self.shards.iter().map(ShardInfo::to_json).collect();
        pyjson::dumps_sorted(&json!({"version": 2, "shards": shards}))
    }

    /// The index as streaming's `merge_index` writes it: `{"version": 2, "shards": [...]}`,
    /// top-level keys unsorted, each shard's keys sorted (as the partition indexes had them).
    pub fn to_merged_json_string(&self) -> String {
        let mut out = String::from("{\"version\": 2, \"shards\": [");
        for (i, s) in self.shards.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            pyjson::write_value(&mut out, &s.to_json(), true);
        }
        out.push_str("]}");
        out
    }

    /// Writes `dir/index.json` atomically with [`Index::to_json_string`].
    pub fn write_atomic(&self, dir: &Path) -> Result<()> {
        write_atomic(dir, INDEX_BASENAME, self.to_json_string().as_bytes())
    }
}

/// Walks the parsed JSON, naming the field on every error.
struct Parser<'a> {
    path: &'a Path,
}

impl Parser<'_> {
    fn bad(&self, field: &str, found: impl Into<String>, expected: impl Into<String>) -> MdsError {
        MdsError::InvalidIndex {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            found: found.into(),
            expected: expected.into(),
        }
    }

    fn describe(v: Option<&Json>) -> String {
        match v {
            None => "nothing (key missing)".into(),
            Some(v) => {
                let s = v.to_string();
                if s.chars().count() > 60 {
                    format!("{}...", s.chars().take(60).collect::<String>())
                } else {
                    s
                }
            }
        }
    }

    fn object<'j>(&self, v: &'j Json, field: &str) -> Result<&'j Map<String, Json>> {
        v.as_object()
            .ok_or_else(|| self.bad(field, Self::describe(Some(v)), "an object"))
    }

    fn array<'j>(&self, v: Option<&'j Json>, field: &str) -> Result<&'j Vec<Json>> {
        v.and_then(Json::as_array)
            .ok_or_else(|| self.bad(field, Self::describe(v), "an array"))
    }

    fn string<'j>(&self, v: Option<&'j Json>, field: &str) -> Result<&'j str> {
        v.and_then(Json::as_str)
            .ok_or_else(|| self.bad(field, Self::describe(v), "a string"))
    }

    fn uint(&self, v: Option<&Json>, field: &str, max: u64) -> Result<u64> {
        match v.and_then(Json::as_u64) {
            Some(n) if n <= max => Ok(n),
            _ => Err(self.bad(field, Self::describe(v), format!("an integer in 0..={max}"))),
        }
    }

    fn version(&self, v: Option<&Json>, field: &str) -> Result<()> {
        if v.and_then(Json::as_u64) == Some(2) {
            Ok(())
        } else {
            Err(self.bad(field, Self::describe(v), "2 (MDS v2)"))
        }
    }

    fn strings(&self, v: Option<&Json>, field: &str) -> Result<Vec<String>> {
        let arr = self.array(v, field)?;
        arr.iter()
            .enumerate()
            .map(|(i, x)| {
                self.string(Some(x), &format!("{field}[{i}]"))
                    .map(str::to_string)
            })
            .collect()
    }

    fn shard(&self, v: &Json, field: &str) -> Result<ShardInfo> {
        let o = self.object(v, field)?;
        let f = |k: &str| format!("{field}.{k}");
        self.version(o.get("version"), &f("version"))?;
        let format = self.string(o.get("format"), &f("format"))?;
        if format != "mds" {
            return Err(self.bad(
                &f("format"),
                format!("`{format}`"),
                "`mds` (tessera reads only MDS)",
            ));
        }
        let names = self.strings(o.get("column_names"), &f("column_names"))?;
        let encodings = self.strings(o.get("column_encodings"), &f("column_encodings"))?;
        let sizes_json = self.array(o.get("column_sizes"), &f("column_sizes"))?;
        if encodings.len() != names.len() || sizes_json.len() != names.len() {
            return Err(self.bad(
                field,
                format!(
                    "{} column_names, {} column_encodings, {} column_sizes",
                    names.len(),
                    encodings.len(),
                    sizes_json.len()
                ),
                "the same number of each",
            ));
        }
        let mut sizes = Vec::with_capacity(names.len());
        for (i, s) in sizes_json.iter().enumerate() {
            let fi = format!("{field}.column_sizes[{i}]");
            sizes.push(if s.is_null() {
                None
            } else {
                Some(self.uint(Some(s), &fi, u32::MAX as u64)?)
            });
        }
        // Parsing the columns checks the encodings; pkl is tolerated here (so `inspect` can show
        // it) and refused when a reader builds the shard's columns.
        for (i, (name, enc)) in names.iter().zip(&encodings).enumerate() {
            let fixed = match super::encoding::Encoding::parse(enc) {
                Ok(e) => e.fixed_size(),
                Err(super::encoding::EncodingError::Unsafe) => None,
                Err(super::encoding::EncodingError::Unknown(reason)) => {
                    return Err(MdsError::UnknownEncoding {
                        origin: format!("{}: {field}", self.path.display()),
                        column: name.clone(),
                        encoding: enc.clone(),
                        reason,
                    });
                }
            };
            if fixed != sizes[i] {
                return Err(self.bad(
                    &format!("{field}.column_sizes[{i}]"),
                    format!("{:?}", sizes[i]),
                    format!("{fixed:?}, the size of `{enc}` (column `{name}`)"),
                ));
            }
        }
        let compression = match o.get("compression") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(Compression::parse(
                s,
                &format!("{}: {}", self.path.display(), f("compression")),
            )?),
            other => {
                return Err(self.bad(&f("compression"), Self::describe(other), "null or a string"));
            }
        };
        let hashes = match o.get("hashes") {
            None | Some(Json::Null) => Vec::new(),
            h => self.strings(h, &f("hashes"))?,
        };
        let raw_data = self.file(o.get("raw_data"), &f("raw_data"))?;
        let zip_data = match o.get("zip_data") {
            None | Some(Json::Null) => None,
            z => Some(self.file(z, &f("zip_data"))?),
        };
        if compression.is_some() != zip_data.is_some() {
            return Err(self.bad(
                &f("zip_data"),
                Self::describe(o.get("zip_data")),
                "an object exactly when `compression` is set",
            ));
        }
        let samples = self.uint(o.get("samples"), &f("samples"), u32::MAX as u64)?;
        // The offset table alone needs 4 * (samples + 2) bytes.
        if raw_data.bytes < 4 * (samples + 2) {
            return Err(self.bad(
                &f("raw_data.bytes"),
                raw_data.bytes.to_string(),
                format!("at least {} for {samples} samples", 4 * (samples + 2)),
            ));
        }
        let size_limit = match o.get("size_limit") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(bytes_to_int(s).ok_or_else(|| {
                self.bad(
                    &f("size_limit"),
                    format!("`{s}`"),
                    "bytes, e.g. 67108864 or \"64mb\"",
                )
            })?),
            v => Some(self.uint(v, &f("size_limit"), u64::MAX)?),
        };
        Ok(ShardInfo {
            column_encodings: encodings,
            column_names: names,
            column_sizes: sizes,
            compression,
            hashes,
            raw_data,
            samples,
            size_limit,
            zip_data,
        })
    }

    fn file(&self, v: Option<&Json>, field: &str) -> Result<FileInfo> {
        let o = match v {
            Some(v) => self.object(v, field)?,
            None => return Err(self.bad(field, "nothing (key missing)", "an object")),
        };
        let basename = self.string(o.get("basename"), &format!("{field}.basename"))?;
        check_basename(basename)
            .map_err(|why| self.bad(&format!("{field}.basename"), format!("`{basename}`"), why))?;
        let bytes = self.uint(o.get("bytes"), &format!("{field}.bytes"), u32::MAX as u64)?;
        let mut hashes = BTreeMap::new();
        match o.get("hashes") {
            None | Some(Json::Null) => {}
            Some(Json::Object(m)) => {
                for (k, h) in m {
                    let hf = format!("{field}.hashes.{k}");
                    hashes.insert(k.clone(), self.string(Some(h), &hf)?.to_string());
                }
            }
            other => {
                return Err(self.bad(
                    &format!("{field}.hashes"),
                    Self::describe(other),
                    "an object",
                ));
            }
        }
        Ok(FileInfo {
            basename: basename.to_string(),
            bytes,
            hashes,
        })
    }
}

/// A basename must stay inside the dataset folder: a file name, or `dir/file` as written by
/// `merge_index` (one folder component), with no `..`, root, or empty parts.
fn check_basename(b: &str) -> Result<(), &'static str> {
    const WHY: &str =
        "a relative file name, optionally under one sub-folder (`sub/shard.00000.mds`)";
    if b.is_empty() || b.contains('\\') || b.contains('\0') {
        return Err(WHY);
    }
    let parts: Vec<Component> = Path::new(b).components().collect();
    let all_normal = parts.iter().all(|c| matches!(c, Component::Normal(_)));
    if !all_normal || parts.is_empty() || parts.len() > 2 || b.ends_with('/') || b.contains("//") {
        return Err(WHY);
    }
    Ok(())
}

/// streaming's `bytes_to_int` for a byte count written as a string (`size_limit`, a loader's
/// `cache_limit`): an integer with an optional `b`, or a number with `kb` … `eb` in powers of
/// 1024 (`"100kb"`, `"1.5 mb"`, `"123"`). `None` for anything else or a count past `u64`.
pub fn bytes_to_int(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let units = [
        ("kb", 1u64 << 10),
        ("mb", 1 << 20),
        ("gb", 1 << 30),
        ("tb", 1 << 40),
        ("pb", 1 << 50),
        ("eb", 1 << 60),
    ];
    for (suffix, mult) in units {
        if let Some(num) = t.strip_suffix(suffix) {
            let v: f64 = num.trim().parse().ok()?;
            return (v >= 0.0 && (v * mult as f64) < u64::MAX as f64)
                .then_some((v * mult as f64) as u64);
        }
    }
    t.strip_suffix('b').unwrap_or(&t).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_SHARD: &str = r#"{"shards": [{"column_encodings": ["ndarray:int32"], "column_names": ["tokens"], "column_sizes": [null], "compression": "zstd", "format": "mds", "hashes": ["sha1"], "raw_data": {"basename": "shard.00000.mds", "bytes": 100, "hashes": {"sha1": "ab"}}, "samples": 3, "size_limit": 6000, "version": 2, "zip_data": {"basename": "shard.00000.mds.zstd", "bytes": 50, "hashes": {}}}], "version": 2}"#;

    fn parse(s: &str) -> Result<Index> {
        Index::from_json_bytes(s.as_bytes(), Path::new("ds/index.json"))
    }

    #[test]
    fn index_round_trips_to_streamings_exact_bytes() {
        let idx = parse(ONE_SHARD).unwrap();
        assert_eq!(idx.total_samples(), 3);
        assert_eq!(
            idx.shards[0].file_on_disk().basename,
            "shard.00000.mds.zstd"
        );
        assert_eq!(idx.to_json_string(), ONE_SHARD);
    }

    #[test]
    fn reader_rejects_unknown_version_and_format_naming_the_field() {
        let e = parse(&ONE_SHARD.replace(
            "\"version\": 2, \"zip_data\"",
            "\"version\": 3, \"zip_data\"",
        ))
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ds/index.json") && msg.contains("shards[0].version") && msg.contains('3'),
            "{msg}"
        );
        let e = parse(&ONE_SHARD.replace("\"mds\"", "\"json\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shards[0].format") && e.contains("json"), "{e}");
    }

    #[test]
    fn basenames_that_escape_the_folder_are_rejected() {
        for bad in [
            "../x.mds",
            "/etc/passwd",
            "a/b/c.mds",
            "",
            "a//b",
            "./x",
            "a/../b",
        ] {
            let s = ONE_SHARD.replace("\"shard.00000.mds.zstd\"", &format!("\"{bad}\""));
            assert!(parse(&s).is_err(), "{bad}");
        }
        let merged =
            ONE_SHARD.replace("\"shard.00000.mds.zstd\"", "\"part1/shard.00000.mds.zstd\"");
        assert!(parse(&merged).is_ok());
    }

    #[test]
    fn inconsistent_shard_entries_are_rejected() {
        // column_sizes disagreeing with the encoding, missing zip_data, too-small raw size.
        assert!(parse(&ONE_SHARD.replace("[null]", "[4]")).is_err());
        assert!(
            parse(&ONE_SHARD.replace("\"compression\": \"zstd\"", "\"compression\": null"))
                .is_err()
        );
        assert!(parse(&ONE_SHARD.replace("\"bytes\": 100", "\"bytes\": 19")).is_err());
        assert!(parse(&ONE_SHARD.replace("\"samples\": 3", "\"samples\": -3")).is_err());
        assert!(parse(&ONE_SHARD.replace("\"ndarray:int32\"", "\"ndarray:int99\"")).is_err());
        assert!(parse("[]").is_err());
        assert!(parse("{\"version\": 2}").is_err());
    }

    #[test]
    fn size_limit_accepts_streamings_human_readable_form() {
        assert_eq!(bytes_to_int("100kb"), Some(102400));
        assert_eq!(bytes_to_int("64MB"), Some(64 << 20));
        assert_eq!(bytes_to_int("123b"), Some(123));
        assert_eq!(bytes_to_int("123"), Some(123));
        assert_eq!(bytes_to_int("12xb"), None);
    }
}
