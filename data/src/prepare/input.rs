//! Finding the input files and streaming their documents in a fixed order.
//!
//! `--input` takes files, globs and directories. The document order — and therefore the output —
//! is: inputs in the order given; within a glob or directory, paths sorted bytewise; within a file,
//! line (or row) order. One reader thread streams the files (decompressing on the fly) into
//! batches of raw records; workers parse and clean them in parallel, so JSON parsing is never the
//! single-threaded bottleneck.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::PrepareError;

/// The formats `prepare` reads, chosen by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// `.jsonl`: one JSON object per line.
    Jsonl,
    /// `.jsonl.gz`.
    JsonlGz,
    /// `.jsonl.zst`.
    JsonlZst,
    /// `.txt`: the whole file is one document.
    Txt,
    /// `.parquet`: one document per row of the text column.
    Parquet,
}

impl InputFormat {
    /// The format of `path` from its name, if supported.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        [
            (".jsonl", Self::Jsonl),
            (".jsonl.gz", Self::JsonlGz),
            (".jsonl.zst", Self::JsonlZst),
            (".jsonl.zstd", Self::JsonlZst),
            (".txt", Self::Txt),
            (".parquet", Self::Parquet),
        ]
        .into_iter()
        .find(|(ext, _)| name.ends_with(ext))
        .map(|(_, f)| f)
    }
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The file.
    pub path: PathBuf,
    /// How it is read, from its name.
    pub format: InputFormat,
    /// Size on disk, for the progress bar and the run fingerprint.
    pub bytes: u64,
}

const SUPPORTED: &str = ".jsonl, .jsonl.gz, .jsonl.zst, .txt or .parquet";

/// Why a `.parquet` input fails in a build without the `parquet` feature.
pub(crate) const PARQUET_OFF: &str = "reading .parquet inputs needs tessera-data's `parquet` \
     feature, which this build turned off";

/// The error for a `.parquet` input in a build without the `parquet` feature.
#[cfg_attr(feature = "parquet", allow(dead_code))]
pub(crate) fn parquet_off(path: &Path) -> PrepareError {
    PrepareError::Parquet {
        path: path.to_path_buf(),
        message: PARQUET_OFF.into(),
    }
}

/// Expands files, globs and directories into the ordered list of input files. A glob or
/// directory that yields nothing, a missing file or an unsupported name is an error; a file named
/// twice is read once, at its first position.
pub fn expand_inputs(specs: &[String]) -> Result<Vec<InputFile>, PrepareError> {
    let mut out: Vec<InputFile> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for spec in specs {
        let path = Path::new(spec);
        let found: Vec<PathBuf> = if path.is_dir() {
            let mut files = Vec::new();
            walk_dir(path, &mut files)?;
            files.retain(|p| InputFormat::from_path(p).is_some());
            if files.is_empty() {
                return Err(PrepareError::NoInputs {
                    spec: spec.clone(),
                    why: format!("the directory has no {SUPPORTED} files"),
                });
            }
            files
        } else if spec.contains(['*', '?', '[']) {
            // Hidden files are skipped, as in directories.
            let options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..Default::default()
            };
            let paths = glob::glob_with(spec, options).map_err(|e| PrepareError::NoInputs {
                spec: spec.clone(),
                why: format!("bad glob: {e}"),
            })?;
            let mut files = Vec::new();
            for p in paths {
                let p = p.map_err(|e| PrepareError::Io {
                    path: e.path().to_path_buf(),
                    source: e.into(),
                })?;
                if p.is_file() && InputFormat::from_path(&p).is_some() {
                    files.push(p);
                }
            }
            files.sort();
            if files.is_empty() {
                return Err(PrepareError::NoInputs {
                    spec: spec.clone(),
                    why: format!("the glob matches no {SUPPORTED} file"),
                });
            }
            files
        } else if path.is_file() {
            if InputFormat::from_path(path).is_none() {
                return Err(PrepareError::UnsupportedInput {
                    path: path.to_path_buf(),
                    expected: SUPPORTED,
                });
            }
            vec![path.to_path_buf()]
        } else {
            return Err(PrepareError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file, directory or glob match",
                ),
            });
        };
        for p in found {
            let canonical = p.canonicalize().unwrap_or_else(|_| p.clone());
            if !seen.insert(canonical) {
                continue;
            }
            let bytes = std::fs::metadata(&p)
                .map_err(|e| PrepareError::Io {
                    path: p.clone(),
                    source: e,
                })?
                .len();
            let format =
                InputFormat::from_path(&p).ok_or_else(|| PrepareError::UnsupportedInput {
                    path: p.clone(),
                    expected: SUPPORTED,
                })?;
            if format == InputFormat::Parquet && !cfg!(feature = "parquet") {
                return Err(parquet_off(&p));
            }
            out.push(InputFile {
                path: p,
                format,
                bytes,
            });
        }
    }
    if out.is_empty() {
        return Err(PrepareError::NoInputs {
            spec: specs.join(" "),
            why: "no input given".into(),
        });
    }
    Ok(out)
}

/// All files below `dir`, sorted, skipping hidden entries (`.git`, editor temp files).
fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PrepareError> {
    let io = |e| PrepareError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if p.is_dir() {
            walk_dir(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// One document's raw bytes inside a [`RawBatch`].
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Index into the input file list.
    pub file: u32,
    /// 1-based line (JSONL) or row (Parquet) number; 1 for a `.txt` file.
    pub line: u64,
    /// Byte range in [`RawBatch::buf`].
    pub range: Range<usize>,
    /// A JSON line (the text field must be extracted) rather than the text itself.
    pub json: bool,
    /// A Parquet null in the text column: a bad line.
    pub null: bool,
}

/// A batch of consecutive documents, in input order.
#[derive(Debug, Default)]
pub struct RawBatch {
    pub buf: Vec<u8>,
    pub records: Vec<RawRecord>,
}

impl RawBatch {
    /// The bytes of record `r`.
    pub fn bytes(&self, r: &RawRecord) -> &[u8] {
        &self.buf[r.range.clone()]
    }

    fn push(&mut self, file: u32, line: u64, bytes: &[u8], json: bool, null: bool) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.records.push(RawRecord {
            file,
            line,
            range: start..self.buf.len(),
            json,
            null,
        });
    }
}

/// How big a batch grows before it is handed to the workers.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub bytes: usize,
    pub docs: usize,
}

/// Counts the bytes read from disk (compressed bytes for compressed files) for the progress bar.
struct CountingReader<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Streams every document of `files` into batches, calling `sink` for each full batch (and the
/// last one). `sink` returns false to stop early (the consumer failed). `read_bytes` counts disk
/// bytes read.
pub fn read_batches(
    files: &[InputFile],
    text_field: &str,
    limits: BatchLimits,
    read_bytes: &Arc<AtomicU64>,
    mut sink: impl FnMut(RawBatch) -> bool,
) -> Result<(), PrepareError> {
    let mut batch = RawBatch::default();
    let full = |b: &RawBatch| b.buf.len() >= limits.bytes || b.records.len() >= limits.docs;
    for (fi, f) in files.iter().enumerate() {
        let fi = fi as u32;
        let io = |e: std::io::Error| PrepareError::Io {
            path: f.path.clone(),
            source: e,
        };
        match f.format {
            InputFormat::Parquet => {
                let mut stopped = false;
                super::parquet::read_text_column(&f.path, text_field, |row, value| {
                    match value {
                        Some(v) => batch.push(fi, row, v, false, false),
                        None => batch.push(fi, row, &[], false, true),
                    }
                    if full(&batch) && !sink(std::mem::take(&mut batch)) {
                        stopped = true;
                        return false;
                    }
                    true
                })?;
                read_bytes.fetch_add(f.bytes, Ordering::Relaxed);
                if stopped {
                    return Ok(());
                }
            }
            InputFormat::Txt => {
                let bytes = std::fs::read(&f.path).map_err(io)?;
                read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                batch.push(fi, 1, &bytes, false, false);
                if full(&batch) && !sink(std::mem::take(&mut batch)) {
                    return Ok(());
                }
            }
            InputFormat::Jsonl | InputFormat::JsonlGz | InputFormat::JsonlZst => {
                let file = File::open(&f.path).map_err(io)?;
                let counted = CountingReader {
                    inner: file,
                    counter: read_bytes.clone(),
                };
                let reader: Box<dyn Read> = match f.format {
                    InputFormat::JsonlGz => Box::new(flate2::read::MultiGzDecoder::new(
                        BufReader::with_capacity(1 << 16, counted),
                    )),
                    InputFormat::JsonlZst => {
                        Box::new(zstd::stream::read::Decoder::new(counted).map_err(io)?)
                    }
                    _ => Box::new(counted),
                };
                let mut reader = BufReader::with_capacity(1 << 20, reader);
                let mut line = Vec::new();
                let mut lineno = 0u64;
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                        break;
                    }
                    lineno += 1;
                    // Blank lines separate nothing in JSONL: skipped, not bad.
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    batch.push(fi, lineno, &line, true, false);
                    if full(&batch) && !sink(std::mem::take(&mut batch)) {
                        return Ok(());
                    }
                }
            }
        }
    }
    if !batch.records.is_empty() {
        sink(batch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn formats_come_from_the_file_name() {
        assert_eq!(
            InputFormat::from_path(Path::new("a/b.JSONL")),
            Some(InputFormat::Jsonl)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("x.jsonl.zst")),
            Some(InputFormat::JsonlZst)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("x.jsonl.gz")),
            Some(InputFormat::JsonlGz)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("x.parquet")),
            Some(InputFormat::Parquet)
        );
        assert_eq!(InputFormat::from_path(Path::new("x.json")), None);
    }

    #[test]
    fn directories_and_globs_expand_sorted_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sub")).unwrap();
        for name in [
            "b.jsonl",
            "a.txt",
            "sub/c.jsonl",
            "notes.md",
            ".hidden.jsonl",
        ] {
            write(&d.join(name), b"{}\n");
        }
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        let files = expand_inputs(&[s(d.to_path_buf()), s(d.join("b.jsonl"))]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.path.strip_prefix(d).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            vec![
                PathBuf::from("a.txt"),
                "b.jsonl".into(),
                "sub/c.jsonl".into()
            ]
        );
        let globbed = expand_inputs(&[s(d.join("*.jsonl"))]).unwrap();
        assert_eq!(globbed.len(), 1);
        assert!(matches!(
            expand_inputs(&[s(d.join("*.parquet"))]),
            Err(PrepareError::NoInputs { .. })
        ));
        assert!(matches!(
            expand_inputs(&[s(d.join("notes.md"))]),
            Err(PrepareError::UnsupportedInput { .. })
        ));
        let err = expand_inputs(&[s(d.join("missing.jsonl"))]).unwrap_err();
        assert!(err.to_string().contains("missing.jsonl"), "{err}");
    }

    #[cfg(not(feature = "parquet"))]
    #[test]
    fn without_the_parquet_feature_a_parquet_input_is_refused_naming_the_feature() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        write(&path, b"PAR1");
        let err = expand_inputs(&[path.to_string_lossy().into_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.parquet") && err.contains("`parquet` feature"),
            "{err}"
        );
    }

    #[test]
    fn compressed_jsonl_streams_the_same_records_as_plain() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let body = b"{\"text\": \"one\"}\n\n  \n{\"text\": \"two\"}\n{\"text\": \"three\"}";
        write(&d.join("p.jsonl"), body);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body).unwrap();
        write(&d.join("g.jsonl.gz"), &gz.finish().unwrap());
        write(
            &d.join("z.jsonl.zst"),
            &zstd::encode_all(&body[..], 3).unwrap(),
        );
        for name in ["p.jsonl", "g.jsonl.gz", "z.jsonl.zst"] {
            let files = expand_inputs(&[d.join(name).to_string_lossy().into_owned()]).unwrap();
            let mut batches = Vec::new();
            let counter = Arc::new(AtomicU64::new(0));
            read_batches(
                &files,
                "text",
                BatchLimits {
                    bytes: 1 << 20,
                    docs: 2,
                },
                &counter,
                |b| {
                    batches.push(b);
                    true
                },
            )
            .unwrap();
            assert_eq!(batches.len(), 2, "{name}: batches of at most 2 docs");
            let recs: Vec<(u64, String)> = batches
                .iter()
                .flat_map(|b| {
                    b.records.iter().map(move |r| {
                        (
                            r.line,
                            String::from_utf8_lossy(b.bytes(r)).trim().to_string(),
                        )
                    })
                })
                .collect();
            assert_eq!(recs[0], (1, "{\"text\": \"one\"}".to_string()), "{name}");
            assert_eq!(
                recs[1].0, 4,
                "{name}: blank lines are skipped but still counted"
            );
            assert_eq!(recs[2].0, 5, "{name}");
            assert_eq!(
                counter.load(Ordering::Relaxed),
                std::fs::metadata(d.join(name)).unwrap().len()
            );
        }
    }
}
