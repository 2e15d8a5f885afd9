//! Where instruction-tuning rows come from, and what a row may hold.
//!
//! llm-foundry's `finetuning` loader reads a Hugging Face dataset named by `hf_name` (+ `split`).
//! tessera never downloads at run time, so `hf_name` must be local:
//! - a JSON-lines file (`.jsonl`, or `.json` holding one object per line);
//! - a folder: with `split`, `<folder>/<split>/` (every JSON-lines file in it), else the files
//!   directly in the folder whose name starts with the split followed by `-`, `.`, `_`, ` ` or a
//!   digit (`train.jsonl`, `train-00000-of-00002.jsonl`), as Hugging Face's `load_dataset`
//!   infers splits; without `split`, every JSON-lines file in the folder;
//! - `json` with `hf_kwargs.data_files` (a path, a list of paths, or `{split: path(s)}`), the
//!   spelling llm-foundry YAMLs use for local files.
//!
//! Files are read in sorted path order. A row is an object with exactly the keys llm-foundry's
//! `_get_example_type` accepts (`llmfoundry/data/finetuning/tasks.py`): `prompt` plus `response`
//! (or `completion`), or `messages` alone. Anything else is an error naming `file:line`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::FinetuneError;
use crate::config::DatasetConfig;

/// A chat role llm-foundry allows (`_ALLOWED_ROLES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `system`.
    System,
    /// `user`.
    User,
    /// `assistant`.
    Assistant,
    /// `tool`.
    Tool,
}

impl Role {
    /// The role as the chat template writes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
}

/// The content of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// `{"prompt": …, "response" | "completion": …}`.
    PromptResponse {
        /// The prompt text.
        prompt: String,
        /// The response (or completion) text.
        response: String,
    },
    /// `{"messages": [{"role": …, "content": …}, …]}`, already validated as llm-foundry's
    /// `_validate_chat_formatted_example` does.
    Chat(Vec<Message>),
}

/// A row and where it was read (an index into [`Rows::files`] and a 1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    /// Index into [`Rows::files`].
    pub file: usize,
    /// 1-based line in that file.
    pub line: usize,
    /// The row's content.
    pub row: Row,
}

/// Every row of a dataset, in file then line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    /// The data files, in the order read.
    pub files: Vec<PathBuf>,
    /// Every row of every file.
    pub rows: Vec<SourceRow>,
}

impl Rows {
    /// `path:line` of a row, for errors.
    pub fn location(&self, r: &SourceRow) -> (PathBuf, usize) {
        (self.files[r.file].clone(), r.line)
    }
}

const JSON_EXTENSIONS: [&str; 2] = ["jsonl", "json"];

/// The files a finetuning loader's `dataset:` block names (`key` names the loader in errors).
pub fn data_files(key: &str, ds: &DatasetConfig) -> Result<Vec<PathBuf>, FinetuneError> {
    let config = |field: &str, message: String| FinetuneError::Config {
        key: format!("{key}.dataset.{field}"),
        message,
    };
    if ds.local.is_some() || ds.remote.is_some() || ds.streams.is_some() {
        let field = if ds.streams.is_some() {
            "streams"
        } else if ds.local.is_some() {
            "local"
        } else {
            "remote"
        };
        return Err(config(
            field,
            "fine-tuning from pre-tokenized MDS shards is not supported; name a local JSON-lines file or folder with `hf_name`".into(),
        ));
    }
    let Some(name) = ds.hf_name.as_deref().filter(|n| !n.trim().is_empty()) else {
        return Err(config(
            "hf_name",
            "required: a local JSON-lines file or folder of prompt/response rows".into(),
        ));
    };
    let kwargs = ds.hf_kwargs.clone().unwrap_or_default();
    if let Some(other) = kwargs.keys().find(|k| k.as_str() != "data_files") {
        return Err(config(
            &format!("hf_kwargs.{other}"),
            "is not supported (tessera reads local JSON-lines files; only `data_files` is understood)".into(),
        ));
    }
    let mut files = match kwargs.get("data_files") {
        Some(spec) => {
            if name != "json" {
                return Err(config(
                    "hf_name",
                    format!("{name:?} with hf_kwargs.data_files: expected `json`"),
                ));
            }
            from_data_files(key, spec, ds.split.as_deref())?
        }
        None => from_path(key, Path::new(name), ds.split.as_deref())?,
    };
    files.sort();
    files.dedup();
    for f in &files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !JSON_EXTENSIONS.contains(&ext) {
            return Err(config(
                "hf_name",
                format!(
                    "{}: only JSON-lines files (.jsonl, .json) are read; convert CSV or Parquet first",
                    f.display()
                ),
            ));
        }
    }
    Ok(files)
}

fn from_path(key: &str, path: &Path, split: Option<&str>) -> Result<Vec<PathBuf>, FinetuneError> {
    let config = |message: String| FinetuneError::Config {
        key: format!("{key}.dataset.hf_name"),
        message,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(config(format!(
            "{} is not a local file or folder (tessera never downloads hub datasets; download it and point hf_name at the files)",
            path.display()
        )));
    }
    let json_files = |dir: &Path| -> Result<Vec<PathBuf>, FinetuneError> {
        let rd = std::fs::read_dir(dir).map_err(|source| FinetuneError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in rd {
            let p = entry
                .map_err(|source| FinetuneError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?
                .path();
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            if p.is_file() && JSON_EXTENSIONS.contains(&ext) {
                out.push(p);
            }
        }
        Ok(out)
    };
    let files = match split {
        Some(split) if path.join(split).is_dir() => json_files(&path.join(split))?,
        Some(split) => json_files(path)?
            .into_iter()
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.strip_prefix(split)
                    .and_then(|rest| rest.chars().next())
                    .is_some_and(|c| matches!(c, '-' | '.' | '_' | ' ') || c.is_ascii_digit())
            })
            .collect(),
        None => json_files(path)?,
    };
    if files.is_empty() {
        let what = split
            .map(|s| format!(" for split {s:?}"))
            .unwrap_or_default();
        return Err(config(format!(
            "{} holds no JSON-lines files{what}",
            path.display()
        )));
    }
    Ok(files)
}

fn from_data_files(
    key: &str,
    spec: &Value,
    split: Option<&str>,
) -> Result<Vec<PathBuf>, FinetuneError> {
    let bad = |message: String| FinetuneError::Config {
        key: format!("{key}.dataset.hf_kwargs.data_files"),
        message,
    };
    let paths = |v: &Value| -> Result<Vec<PathBuf>, FinetuneError> {
        match v {
            Value::String(s) => Ok(vec![PathBuf::from(s)]),
            Value::Array(items) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(PathBuf::from)
                        .ok_or_else(|| bad(format!("expected file paths, found {i}")))
                })
                .collect(),
            other => Err(bad(format!(
                "expected a path or a list of paths, found {other}"
            ))),
        }
    };
    let files = match spec {
        Value::Object(by_split) => {
            let split = split.unwrap_or("train");
            let v = by_split.get(split).ok_or_else(|| {
                let have: Vec<&str> = by_split.keys().map(String::as_str).collect();
                bad(format!("has no entry for split {split:?} (found {have:?})"))
            })?;
            paths(v)?
        }
        other => paths(other)?,
    };
    for f in &files {
        if !f.is_file() {
            return Err(bad(format!("{} is not a local file", f.display())));
        }
    }
    Ok(files)
}

/// Reads every row of `files`. Blank lines are skipped; any other line that is not a valid row
/// is an error naming its file and line.
pub fn read_rows(files: &[PathBuf]) -> Result<Rows, FinetuneError> {
    let mut rows = Vec::new();
    for (i, path) in files.iter().enumerate() {
        let text = std::fs::read_to_string(path).map_err(|source| FinetuneError::Io {
            path: path.clone(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = parse_row(line).map_err(|message| FinetuneError::Row {
                path: path.clone(),
                line: n + 1,
                message,
            })?;
            rows.push(SourceRow {
                file: i,
                line: n + 1,
                row,
            });
        }
    }
    Ok(Rows {
        files: files.to_vec(),
        rows,
    })
}

/// One JSON line as a row, or what is wrong with it.
pub fn parse_row(line: &str) -> Result<Row, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| {
        let hint = if line.trim_start().starts_with('[') {
            " (expected one JSON object per line, not an array)"
        } else {
            ""
        };
        format!("invalid JSON: {e}{hint}")
    })?;
    let Value::Object(obj) = v else {
        return Err(format!("expected a JSON object, found {}", kind(&v)));
    };
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    if keys == ["messages"] {
        return chat(&obj["messages"]).map(Row::Chat);
    }
    let response_key = ["response", "completion"]
        .into_iter()
        .find(|k| obj.contains_key(*k));
    match (obj.len(), obj.get("prompt"), response_key) {
        (2, Some(prompt), Some(rk)) => {
            let prompt = string(prompt, "prompt")?;
            let response = string(&obj[rk], rk)?;
            Ok(Row::PromptResponse { prompt, response })
        }
        _ => Err(format!(
            "expected the keys \"prompt\" and \"response\" (or \"completion\"), or \"messages\" alone; found {keys:?}"
        )),
    }
}

fn string(v: &Value, field: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "\"{field}\" must be a string, found {}",
            kind(other)
        )),
    }
}

/// llm-foundry's `_validate_chat_formatted_example`: at least two messages, each exactly
/// `role` + `content`, known roles, no role twice in a row, the last from the assistant.
fn chat(v: &Value) -> Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!("\"messages\" must be a list, found {}", kind(v)));
    };
    if items.len() < 2 {
        return Err(format!(
            "\"messages\" needs at least two messages, found {}",
            items.len()
        ));
    }
    let mut out: Vec<Message> = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!(
                "messages[{i}] must be an object, found {}",
                kind(m)
            ));
        };
        let message = message(m).map_err(|e| format!("messages[{i}]: {e}"))?;
        if let Some(prev) = out.last()
            && prev.role == message.role
        {
            return Err(format!(
                "messages[{i}]: role {:?} repeats the previous message's role",
                message.role.as_str()
            ));
        }
        out.push(message);
    }
    if out.last().map(|m| m.role) != Some(Role::Assistant) {
        return Err(
            "the last message must have role \"assistant\" (it is the response trained on)".into(),
        );
    }
    Ok(out)
}

fn message(m: &Map<String, Value>) -> Result<Message, String> {
    if m.len() != 2 || !m.contains_key("role") || !m.contains_key("content") {
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        return Err(format!(
            "expected exactly the keys \"role\" and \"content\", found {keys:?}"
        ));
    }
    let role = match m["role"].as_str() {
        Some("system") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        _ => {
            return Err(format!(
                "role {} is not one of \"system\", \"user\", \"assistant\", \"tool\"",
                m["role"]
            ));
        }
    };
    let content = match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(_) => {
            return Err(
                "multimodal (list) content is not supported; content must be a string".into(),
            );
        }
        other => {
            return Err(format!(
                "\"content\" must be a string, found {}",
                kind(other)
            ));
        }
    };
    Ok(Message { role, content })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ds(hf_name: &str, split: Option<&str>) -> DatasetConfig {
        DatasetConfig {
            hf_name: Some(hf_name.into()),
            split: split.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn prompt_response_and_completion_rows_parse() {
        let r = parse_row(r#"{"prompt": "a", "response": "b"}"#).unwrap();
        assert_eq!(
            r,
            Row::PromptResponse {
                prompt: "a".into(),
                response: "b".into()
            }
        );
        let r = parse_row(r#"{"completion": "y", "prompt": "x"}"#).unwrap();
        assert_eq!(
            r,
            Row::PromptResponse {
                prompt: "x".into(),
                response: "y".into()
            }
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "{\"prompt\": \"a\", \"response\": \"b\"}\n\n{not json}\n",
                3,
                "invalid JSON",
            ),
            ("{\"prompt\": \"a\"}\n", 1, "found [\"prompt\"]"),
            (
                "{\"prompt\": 3, \"response\": \"b\"}\n",
                1,
                "\"prompt\" must be a string, found a number",
            ),
            (
                "{\"prompt\": \"a\", \"response\": null}\n",
                1,
                "\"response\" must be a string, found null",
            ),
            (
                "{\"prompt\": \"a\", \"response\": \"b\", \"id\": 1}\n",
                1,
                "\"id\"",
            ),
            ("[1, 2]\n", 1, "expected a JSON object, found an array"),
        ];
        for (i, (text, line, needle)) in cases.iter().enumerate() {
            let p = write(dir.path(), &format!("case{i}.jsonl"), text);
            let err = read_rows(std::slice::from_ref(&p)).unwrap_err().to_string();
            let loc = format!("{}:{line}:", p.display());
            assert!(err.starts_with(&loc), "{err} should start with {loc}");
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn chat_rows_are_validated_like_llm_foundry() {
        let ok = r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}"#;
        let Row::Chat(m) = parse_row(ok).unwrap() else {
            panic!("not chat")
        };
        assert_eq!(
            m.iter().map(|m| m.role).collect::<Vec<_>>(),
            vec![Role::System, Role::User, Role::Assistant]
        );
        let bad = [
            (
                r#"{"messages": [{"role": "assistant", "content": "a"}]}"#,
                "at least two",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"}, {"role": "assistant", "content": "a"}]}"#,
                "repeats",
            ),
            (
                r#"{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]}"#,
                "last message",
            ),
            (
                r#"{"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "u"}]}"#,
                "not one of",
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "u"}]}"#,
                "multimodal",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "u", "name": "x"}, {"role": "assistant", "content": "u"}]}"#,
                "exactly the keys",
            ),
        ];
        for (line, needle) in bad {
            let e = parse_row(line).unwrap_err();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn folders_are_split_by_file_name_like_load_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let train = write(dir.path(), "train.jsonl", "");
        let shard = write(dir.path(), "train-00001.jsonl", "");
        write(dir.path(), "test.jsonl", "");
        write(dir.path(), "trainer_notes.txt", "");
        let found = data_files(
            "train_loader",
            &ds(dir.path().to_str().unwrap(), Some("train")),
        )
        .unwrap();
        assert_eq!(found, vec![shard, train]);
        let err = data_files(
            "train_loader",
            &ds(dir.path().to_str().unwrap(), Some("validation")),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no JSON-lines files for split \"validation\""),
            "{err}"
        );
        let sub = write(dir.path(), "val/part0.jsonl", "");
        assert_eq!(
            data_files(
                "eval_loader",
                &ds(dir.path().to_str().unwrap(), Some("val"))
            )
            .unwrap(),
            vec![sub]
        );
    }

    #[test]
    fn data_files_kwargs_pick_the_split_and_hub_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "x.jsonl", "");
        let mut d = ds("json", Some("train"));
        let mut kw = Map::new();
        kw.insert(
            "data_files".into(),
            serde_json::json!({"train": f.to_str().unwrap()}),
        );
        d.hf_kwargs = Some(kw);
        assert_eq!(data_files("train_loader", &d).unwrap(), vec![f]);
        let err =
            data_files("train_loader", &ds("mosaicml/dolly_hhrlhf", Some("train"))).unwrap_err();
        assert!(
            err.to_string().starts_with("train_loader.dataset.hf_name:"),
            "{err}"
        );
        assert!(err.to_string().contains("never downloads"), "{err}");
        let mut mds = ds("x", None);
        mds.local = Some("/data/mds".into());
        assert!(
            data_files("train_loader", &mds)
                .unwrap_err()
                .to_string()
                .contains("MDS")
        );
    }
}
