//! A tokenizer's own chat template: the Jinja program in `tokenizer_config.json`'s
//! `chat_template` (or in `chat_template.jinja` beside it, where newer transformers save it),
//! rendered with minijinja in the environment transformers gives templates
//! (`transformers.utils.chat_template_utils._compile_jinja_template`):
//! - `trim_blocks` and `lstrip_blocks` on;
//! - Python's string and dict methods (`.strip()`, `.startswith()`, `.items()`, …) through
//!   minijinja-contrib's `pycompat`, loop controls (`{% break %}`), `tojson`;
//! - `raise_exception(message)`, which fails the render with the template's message;
//! - the variables `messages`, `add_generation_prompt` and the tokenizer's special tokens
//!   (`bos_token`, `eos_token`, `unk_token`, `pad_token`, …), as `apply_chat_template` passes
//!   them.
//!
//! Deliberately left out, so that a prompt renders the same on every day and machine:
//! llm-foundry passes `date_string` (today's date) and transformers defines `strftime_now`;
//! templates that use them (Llama 3's) fall back to their own fixed default date when they are
//! undefined, and tessera leaves them undefined.
//!
//! One renderer for the fine-tuning loader (chat rows) and `tessera serve` (chat requests), so
//! a model is served with exactly the prompt format it was trained on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

/// The name the template is registered under.
const NAME: &str = "chat_template";

/// The special tokens of `tokenizer_config.json` a template may use.
const SPECIAL_TOKENS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
];

/// A template that could not be read or compiled, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ChatTemplateError {
    /// `tokenizer_config.json` or `chat_template.jinja`.
    pub path: PathBuf,
    /// What is wrong (it starts with `chat_template: ` when the template itself is at fault).
    pub message: String,
}

/// One message as the template sees it: `role`, `content` and an optional `name`.
#[derive(Clone, Debug)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// The participant's name, when given (OpenAI's `name`).
    pub name: Option<String>,
}

impl TemplateMessage {
    /// A message without a `name`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }
}

/// A compiled chat template and the special tokens it may use.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, … as strings (absent ones stay undefined in the template).
    special_tokens: BTreeMap<String, String>,
    /// Where the template came from (for messages).
    origin: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `template` (read from `origin`, which only names it in errors) with these
    /// special tokens (`("eos_token", "</s>")`, …). Syntax errors are reported here.
    pub fn new(
        template: &str,
        origin: &Path,
        special_tokens: BTreeMap<String, String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, template.to_string())
            .map_err(|e| ChatTemplateError {
                path: origin.to_path_buf(),
                message: format!(
                    "chat_template: not a valid Jinja template (it does not compile): {}",
                    describe(&e)
                ),
            })?;
        Ok(Self {
            env,
            special_tokens,
            origin: origin.to_path_buf(),
        })
    }

    /// [`ChatTemplate::new`] with the special tokens of the tokenizer config `config`
    /// (`bos_token` etc., as strings or as `{"content": …}` added-token objects).
    pub fn with_tokenizer_config(
        template: &str,
        origin: &Path,
        config: &Json,
    ) -> Result<Self, ChatTemplateError> {
        Self::new(template, origin, special_tokens(config))
    }

    /// The template a tokenizer brings, given its `tokenizer_config.json` path and parsed
    /// contents (`None`: there is no such file): `chat_template.jinja` beside it if present
    /// (transformers prefers it), else the config's `chat_template` (a string, or a list of
    /// `{"name", "template"}` from which the one named `default` is taken). `Ok(None)` when
    /// there is none.
    pub fn from_tokenizer_config(
        config_path: &Path,
        config: Option<&Json>,
    ) -> Result<Option<Self>, ChatTemplateError> {
        let empty = Json::Object(Default::default());
        let config = config.unwrap_or(&empty);
        let jinja = config_path.with_file_name("chat_template.jinja");
        match std::fs::read_to_string(&jinja) {
            Ok(text) => return Self::with_tokenizer_config(&text, &jinja, config).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ChatTemplateError {
                    path: jinja,
                    message: e.to_string(),
                });
            }
        }
        let bad = |message: String| ChatTemplateError {
            path: config_path.to_path_buf(),
            message: format!("chat_template: {message}"),
        };
        let template = match config.get("chat_template") {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(named)) => {
                let default = named
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
                match default
                    .and_then(|t| t.get("template"))
                    .and_then(Json::as_str)
                {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(bad(
                            "a list of templates without one named \"default\" (tessera renders the default template)".into(),
                        ));
                    }
                }
            }
            Some(other) => return Err(bad(format!("expected a template string, found {other}"))),
        };
        Self::with_tokenizer_config(&template, config_path, config).map(Some)
    }

    /// The template of the first folder in `dirs` that has one (`chat_template.jinja` or
    /// `tokenizer_config.json`'s `chat_template`, as [`ChatTemplate::from_tokenizer_config`]).
    /// `Ok(None)` when no folder has one.
    pub fn find(dirs: &[&Path]) -> Result<Option<Self>, ChatTemplateError> {
        for dir in dirs {
            let path = dir.join("tokenizer_config.json");
            let config =
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(serde_json::from_str::<Json>(&text).map_err(|e| {
                        ChatTemplateError {
                            path: path.clone(),
                            message: format!("invalid JSON: {e}"),
                        }
                    })?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(ChatTemplateError {
                            path,
                            message: e.to_string(),
                        });
                    }
                };
            if let Some(t) = Self::from_tokenizer_config(&path, config.as_ref())? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Where the template came from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`, or
    /// the template's error: a `raise_exception` message as the template wrote it, else
    /// minijinja's error with its line.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut ctx: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let mut fields = BTreeMap::from([
                    ("role".to_string(), Value::from(m.role.as_str())),
                    ("content".to_string(), Value::from(m.content.as_str())),
                ]);
                if let Some(name) = &m.name {
                    fields.insert("name".to_string(), Value::from(name.as_str()));
                }
                Value::from(fields)
            })
            .collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        template
            .render(Value::from(ctx))
            .map_err(|e| match e.kind() {
                // raise_exception's own text, without minijinja's decoration.
                ErrorKind::InvalidOperation => {
                    e.detail().map_or_else(|| describe(&e), String::from)
                }
                _ => describe(&e),
            })
    }
}

/// The special tokens a tokenizer config defines, as strings.
fn special_tokens(config: &Json) -> BTreeMap<String, String> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&key| {
            let text = match config.get(key)? {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
                _ => None,
            }?;
            Some((key.to_string(), text))
        })
        .collect()
}

/// minijinja's error with its line, when it knows one.
fn describe(e: &Error) -> String {
    match (e.detail(), e.line()) {
        (Some(detail), Some(line)) => format!("{} (template line {line}): {detail}", e.kind()),
        (Some(detail), None) => format!("{}: {detail}", e.kind()),
        (None, Some(line)) => format!("{} (template line {line})", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The ChatML template as transformers ships it for many models.
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// Zephyr's template (HuggingFaceH4/zephyr-7b-beta `tokenizer_config.json`), which uses
    /// `eos_token`, `loop.last` and the generation prompt.
    const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage::new(role, content)
    }

    fn tokens(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn chatml_and_zephyr_render_as_transformers_does() {
        let t = ChatTemplate::new(CHATML, Path::new("x"), BTreeMap::new()).unwrap();
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let t =
            ChatTemplate::new(ZEPHYR, Path::new("x"), tokens(&[("eos_token", "</s>")])).unwrap();
        let m = [
            msg("system", "be brief"),
            msg("user", "hi"),
            msg("assistant", "hello"),
        ];
        // What transformers 5.23's `render_jinja_template` (behind `apply_chat_template`) returns.
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<|system|>\nbe brief</s>\n<|user|>\nhi</s>\n<|assistant|>\nhello</s>\n"
        );
        assert_eq!(
            t.render(&m[..2], true).unwrap(),
            "<|system|>\nbe brief</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
        );
    }

    #[test]
    fn blocks_trim_python_methods_work_and_raise_exception_reports() {
        // lstrip/trim_blocks remove the indentation and newlines around block tags.
        let src = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.role.upper() }}] {{ m.content.strip() }}\n  {% else %}\n{{ raise_exception('only users may speak') }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::with_tokenizer_config(
            src,
            Path::new("tc.json"),
            &json!({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}),
        )
        .unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hello ")], true).unwrap(),
            "<s>\n[USER] hello\n"
        );
        let err = t.render(&[msg("assistant", "x")], true).unwrap_err();
        assert_eq!(err, "only users may speak");
        let e = ChatTemplate::new("{% for %}", Path::new("tc.json"), BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tc.json: chat_template: not a valid Jinja template"),
            "{e}"
        );
    }

    #[test]
    fn templates_are_found_in_tokenizer_config_or_a_jinja_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::find(&[dir.path()]).unwrap().is_none());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({
                "chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "{{ eos_token }}{{ messages|length }}"}],
                "eos_token": {"content": "<|endoftext|>", "special": true},
            })
            .to_string(),
        )
        .unwrap();
        let t = ChatTemplate::find(&[dir.path()]).unwrap().unwrap();
        assert_eq!(
            t.render(&[msg("user", "a")], true).unwrap(),
            "<|endoftext|>1"
        );
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "J{{ eos_token }}{% if add_generation_prompt %}G{% endif %}",
        )
        .unwrap();
        let t = ChatTemplate::find(&[dir.path()]).unwrap().unwrap();
        assert_eq!(
            t.render(&[], true).unwrap(),
            "J<|endoftext|>G",
            "the .jinja file wins"
        );
        assert!(t.origin().ends_with("chat_template.jinja"));
        std::fs::write(dir.path().join("chat_template.jinja"), "{% if %}").unwrap();
        let err = ChatTemplate::find(&[dir.path()]).unwrap_err().to_string();
        assert!(
            err.contains("chat_template.jinja") && err.contains("compile"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"chat_template": [{"name": "tool_use", "template": "T"}]}).to_string(),
        )
        .unwrap();
        let err = ChatTemplate::find(&[dir.path()]).unwrap_err().to_string();
        assert!(
            err.contains("tokenizer_config.json: chat_template: a list of templates without one named \"default\""),
            "{err}"
        );
    }
}
