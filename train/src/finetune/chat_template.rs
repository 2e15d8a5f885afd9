//! A tokenizer's own chat template: the Jinja program in `tokenizer_config.json`'s
//! `chat_template` (or in `chat_template.jinja` beside it, where newer transformers save it),
//! rendered with minijinja in the environment transformers gives templates
//! (`transformers.utils.chat_template_utils._compile_jinja_template`):
//! - `trim_blocks` and `lstrip_blocks` on;
//! - Python's string and dict methods (`.strip()`, `.startswith()`, `.items()`, …) through
//!   minijinja-contrib's `pycompat`, loop controls (`{% break %}`), `tojson`;
//! - `raise_exception(message)`, which fails the row with the template's message;
//! - the variables `messages`, `add_generation_prompt` and the tokenizer's special tokens
//!   (`bos_token`, `eos_token`, `unk_token`, `pad_token`), as `apply_chat_template` passes them.
//!
//! Deliberately left out, so that a dataset renders the same on every day and machine:
//! llm-foundry passes `date_string` (today's date) and transformers defines `strftime_now`;
//! templates that use them (Llama 3's) fall back to their own fixed default date when they are
//! undefined, and tessera leaves them undefined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, Error, ErrorKind, Value};
use serde_json::Value as Json;

use super::FinetuneError;
use super::source::Message;

/// The name the template is registered under.
const NAME: &str = "chat_template";

/// A compiled chat template and the special tokens it may use.
#[derive(Debug, Clone)]
pub struct JinjaTemplate {
    env: Environment<'static>,
    /// Where the template came from (for errors).
    pub source: PathBuf,
    /// `bos_token`, `eos_token`, … as strings.
    special_tokens: BTreeMap<String, String>,
}

impl JinjaTemplate {
    /// Compiles `template` (read from `source`) with the special tokens of the tokenizer config
    /// `config` (`bos_token` etc., as strings or as `{"content": …}` added-token objects).
    pub fn new(template: &str, source: &Path, config: &Json) -> Result<Self, FinetuneError> {
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
            .map_err(|e| FinetuneError::Config {
                key: format!("{}: chat_template", source.display()),
                message: format!("not a valid Jinja template: {}", describe(&e)),
            })?;
        let mut special_tokens = BTreeMap::new();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            let text = match config.get(key) {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(String::from),
                _ => None,
            };
            if let Some(t) = text {
                special_tokens.insert(key.to_string(), t);
            }
        }
        Ok(Self {
            env,
            source: source.to_path_buf(),
            special_tokens,
        })
    }

    /// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`, or
    /// the template's error (a `raise_exception` message, an undefined call…).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role".to_string(), Value::from(m.role.as_str())),
                    ("content".to_string(), Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let mut ctx: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let template = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        template.render(Value::from(ctx)).map_err(|e| describe(&e))
    }
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

/// The template a tokenizer folder brings: `chat_template.jinja` if present (transformers
/// prefers it), else `tokenizer_config.json`'s `chat_template` (a string, or a list of
/// `{"name", "template"}` from which the one named `default` is taken). `None` when it has none.
pub fn find(
    config_path: &Path,
    config: Option<&Json>,
) -> Result<Option<JinjaTemplate>, FinetuneError> {
    let empty = Json::Object(Default::default());
    let config = config.unwrap_or(&empty);
    let jinja = config_path.with_file_name("chat_template.jinja");
    if jinja.is_file() {
        let text = std::fs::read_to_string(&jinja).map_err(|source| FinetuneError::Io {
            path: jinja.clone(),
            source,
        })?;
        return JinjaTemplate::new(&text, &jinja, config).map(Some);
    }
    let bad = |message: String| FinetuneError::Config {
        key: format!("{}: chat_template", config_path.display()),
        message,
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
    JinjaTemplate::new(&template, config_path, config).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::source::Role;
    use serde_json::json;

    fn msgs(pairs: &[(Role, &str)]) -> Vec<Message> {
        pairs
            .iter()
            .map(|(role, content)| Message {
                role: *role,
                content: content.to_string(),
            })
            .collect()
    }

    /// Zephyr's template (HuggingFaceH4/zephyr-7b-beta `tokenizer_config.json`), which uses
    /// `eos_token`, `loop.last` and the generation prompt.
    const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

    #[test]
    fn zephyr_renders_as_transformers_does() {
        let t = JinjaTemplate::new(ZEPHYR, Path::new("tc.json"), &json!({"eos_token": "</s>"}))
            .unwrap();
        let m = msgs(&[
            (Role::System, "be brief"),
            (Role::User, "hi"),
            (Role::Assistant, "hello"),
        ]);
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
    fn python_methods_raise_exception_and_added_token_objects_work() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system role, please') }}{% endif %}[{{ m.role.upper() }}] {{ m['content'].strip() }}\n{% endfor %}";
        let t = JinjaTemplate::new(
            src,
            Path::new("tc.json"),
            &json!({"bos_token": {"content": "<s>", "lstrip": false}}),
        )
        .unwrap();
        let m = msgs(&[(Role::User, "  hi  "), (Role::Assistant, "yo")]);
        assert_eq!(
            t.render(&m, false).unwrap(),
            "<s>[USER] hi\n[ASSISTANT] yo\n"
        );
        let e = t.render(&msgs(&[(Role::System, "x")]), false).unwrap_err();
        assert!(e.contains("no system role, please"), "{e}");
        let e = JinjaTemplate::new("{% for %}", Path::new("tc.json"), &json!({})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tc.json: chat_template: not a valid Jinja template"),
            "{e}"
        );
    }

    #[test]
    fn templates_are_found_beside_the_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tokenizer_config.json");
        assert!(find(&cfg, Some(&json!({}))).unwrap().is_none());
        let named = json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}]});
        let t = find(&cfg, Some(&named)).unwrap().unwrap();
        assert_eq!(t.render(&msgs(&[(Role::User, "a")]), false).unwrap(), "D1");
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "J{% if add_generation_prompt %}G{% endif %}",
        )
        .unwrap();
        let t = find(&cfg, Some(&named)).unwrap().unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "JG");
    }
}
