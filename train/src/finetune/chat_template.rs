//! A tokenizer's own chat template, for chat rows: tessera-data's renderer
//! ([`tessera_data::chat_template`], shared with `tessera serve`, so a model is served with the
//! prompt format it was fine-tuned on), seen through the fine-tuning loader's types
//! ([`Message`], [`FinetuneError`]).

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tessera_data::chat_template::{ChatTemplate, ChatTemplateError, TemplateMessage};

use super::FinetuneError;
use super::source::Message;

/// A compiled chat template and the special tokens it may use.
#[derive(Debug, Clone)]
pub struct JinjaTemplate {
    template: ChatTemplate,
    /// Where the template came from (for errors).
    pub source: PathBuf,
}

impl JinjaTemplate {
    /// Compiles `template` (read from `source`) with the special tokens of the tokenizer config
    /// `config` (`bos_token` etc., as strings or as `{"content": …}` added-token objects).
    pub fn new(template: &str, source: &Path, config: &Json) -> Result<Self, FinetuneError> {
        ChatTemplate::with_tokenizer_config(template, source, config)
            .map(Self::from)
            .map_err(config_error)
    }

    /// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`, or
    /// the template's error (a `raise_exception` message, an undefined call…).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let messages: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage::new(m.role.as_str(), m.content.as_str()))
            .collect();
        self.template.render(&messages, add_generation_prompt)
    }
}

impl From<ChatTemplate> for JinjaTemplate {
    fn from(template: ChatTemplate) -> Self {
        Self {
            source: template.origin().to_path_buf(),
            template,
        }
    }
}

/// The data crate's error as the loader reports config errors: `{file}: chat_template: …`.
fn config_error(e: ChatTemplateError) -> FinetuneError {
    let path = e.path.display().to_string();
    match e.message.strip_prefix("chat_template: ") {
        Some(message) => FinetuneError::Config {
            key: format!("{path}: chat_template"),
            message: message.to_string(),
        },
        None => FinetuneError::Config {
            key: path,
            message: e.message,
        },
    }
}

/// The template a tokenizer folder brings: `chat_template.jinja` if present (transformers
/// prefers it), else `tokenizer_config.json`'s `chat_template` (a string, or a list of
/// `{"name", "template"}` from which the one named `default` is taken). `None` when it has none.
pub fn find(
    config_path: &Path,
    config: Option<&Json>,
) -> Result<Option<JinjaTemplate>, FinetuneError> {
    ChatTemplate::from_tokenizer_config(config_path, config)
        .map(|t| t.map(JinjaTemplate::from))
        .map_err(config_error)
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
