//! Chat templates: the Jinja template in a tokenizer's `tokenizer_config.json`
//! (`chat_template`) or `chat_template.jinja`, rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` and `lstrip_blocks` on, loop controls,
//! Python string/dict methods (`.strip()`, `.items()`, via minijinja-contrib's pycompat),
//! `raise_exception`, the `bos_token`/`eos_token` strings and `add_generation_prompt`.
//!
//! A template that raises (e.g. "roles must alternate") is the client's error, answered 400.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::ServeError;

const NAME: &str = "chat_template";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Where it came from (for messages).
    pub origin: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

/// One message as the template sees it: `role`, `content` (a string) and an optional `name`.
#[derive(Clone, Debug, Serialize)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant`, … .
    pub role: String,
    /// The text.
    pub content: String,
    /// The participant's name, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatTemplate {
    /// The template of the first folder in `dirs` that has one: `chat_template.jinja`, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or transformers' list of named
    /// templates, of which `default` is used). `Ok(None)` when no folder has one.
    pub fn find(dirs: &[&Path]) -> Result<Option<Self>, ServeError> {
        for dir in dirs {
            let config = read_json(&dir.join("tokenizer_config.json"))?;
            let jinja = dir.join("chat_template.jinja");
            let source = match std::fs::read_to_string(&jinja) {
                Ok(text) => Some((text, jinja)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(template_error(&jinja, e.to_string())),
            };
            let path = dir.join("tokenizer_config.json");
            let source = match (source, &config) {
                (Some(found), _) => Some(found),
                (None, Some(cfg)) => template_in_config(cfg, &path)?.map(|t| (t, path.clone())),
                (None, None) => None,
            };
            if let Some((text, origin)) = source {
                let token = |key: &str| config.as_ref().and_then(|c| token_string(&c[key]));
                return Self::new(
                    text,
                    token("bos_token").unwrap_or_default(),
                    token("eos_token").unwrap_or_default(),
                    origin,
                )
                .map(Some);
            }
        }
        Ok(None)
    }

    /// Compiles `source` (syntax errors are reported here, at startup).
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
        origin: PathBuf,
    ) -> Result<Self, ServeError> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
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
        env.add_template_owned(NAME, source).map_err(|e| {
            template_error(&origin, format!("the chat template does not compile: {e}"))
        })?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            origin,
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opening
    /// (`add_generation_prompt`). The error is the template's message.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, String> {
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| match e.kind() {
                // raise_exception's own text, without minijinja's location decoration.
                ErrorKind::InvalidOperation => e.detail().unwrap_or("template error").to_string(),
                _ => e.to_string(),
            })
    }
}

fn template_error(path: &Path, message: String) -> ServeError {
    ServeError::ChatTemplate {
        path: path.to_path_buf(),
        message,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, ServeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| template_error(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(template_error(path, e.to_string())),
    }
}

/// `chat_template` as a string, or the `default` entry of a list of `{name, template}`.
fn template_in_config(cfg: &serde_json::Value, path: &Path) -> Result<Option<String>, ServeError> {
    match &cfg["chat_template"] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Array(list) => {
            let default = list.iter().find(|t| t["name"] == "default");
            match default.and_then(|t| t["template"].as_str()) {
                Some(t) => Ok(Some(t.to_string())),
                None => Err(template_error(
                    path,
                    "chat_template: a list of templates needs one named \"default\"".into(),
                )),
            }
        }
        _ => Err(template_error(
            path,
            "chat_template: expected a string or a list of {name, template}".into(),
        )),
    }
}

/// A special token as tokenizer_config.json writes it: a string, or `{"content": …}`.
fn token_string(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .or_else(|| v["content"].as_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ChatML template as transformers ships it for many models.
    pub(crate) const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }

    #[test]
    fn chatml_renders_as_transformers_does() {
        let t = ChatTemplate::new(CHATML.into(), String::new(), String::new(), "x".into()).unwrap();
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn blocks_trim_and_python_methods_work_and_raise_exception_reports() {
        // lstrip/trim_blocks remove the indentation and newlines around block tags.
        let src = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'user' %}\n[U] {{ m.content.strip() }}\n  {% else %}\n{{ raise_exception('only users may speak') }}\n  {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src.into(), "<s>".into(), "</s>".into(), "x".into()).unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hello ")]).unwrap(),
            "<s>\n[U] hello\n"
        );
        let err = t.render(&[msg("assistant", "x")]).unwrap_err();
        assert_eq!(err, "only users may speak");
    }

    #[test]
    fn templates_are_found_in_tokenizer_config_or_a_jinja_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::find(&[dir.path()]).unwrap().is_none());
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            serde_json::json!({
                "chat_template": [{"name": "default", "template": "{{ eos_token }}"}],
                "eos_token": {"content": "<|endoftext|>", "special": true},
            })
            .to_string(),
        )
        .unwrap();
        let t = ChatTemplate::find(&[dir.path()]).unwrap().unwrap();
        assert_eq!(t.render(&[]).unwrap(), "<|endoftext|>");
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ eos_token }}").unwrap();
        let t = ChatTemplate::find(&[dir.path()]).unwrap().unwrap();
        assert_eq!(
            t.render(&[]).unwrap(),
            "J<|endoftext|>",
            "the .jinja file wins"
        );
        std::fs::write(dir.path().join("chat_template.jinja"), "{% if %}").unwrap();
        let err = ChatTemplate::find(&[dir.path()]).unwrap_err().to_string();
        assert!(
            err.contains("chat_template.jinja") && err.contains("compile"),
            "{err}"
        );
    }
}
