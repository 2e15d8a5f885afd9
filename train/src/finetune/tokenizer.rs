//! The tokenizer a fine-tuning run names (`tokenizer.name`: a `tokenizer.json` file or a folder
//! holding one), and whether it brings its own chat template.
//!
//! Hugging Face keeps a tokenizer's chat template in `tokenizer_config.json`, beside
//! `tokenizer.json`. llm-foundry renders chat rows with that template when there is one, else
//! with its default ChatML template. tessera renders only the default: a custom template is a
//! Jinja program, and formatting chat rows any other way than llm-foundry would silently train
//! on different text, so such rows are refused instead.

use std::path::{Path, PathBuf};

use tessera_data::tokenizer::Tokenizer;

use super::FinetuneError;

/// How `{"messages": …}` rows become text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// llm-foundry's default ChatML template, which it applies when the tokenizer has none.
    DefaultChatMl,
    /// The tokenizer's own Jinja template (in `source`), which tessera does not render: chat rows
    /// are refused rather than formatted differently from llm-foundry.
    Custom { source: PathBuf },
}

/// A tokenizer and the chat template that goes with it.
#[derive(Debug, Clone)]
pub struct FinetuneTokenizer {
    pub tokenizer: Tokenizer,
    pub chat_template: ChatTemplate,
}

impl FinetuneTokenizer {
    /// A tokenizer without a chat template of its own.
    pub fn new(tokenizer: Tokenizer) -> Self {
        Self {
            tokenizer,
            chat_template: ChatTemplate::DefaultChatMl,
        }
    }

    /// Loads `tokenizer.name`: a `tokenizer.json` file or a folder holding one. A
    /// `tokenizer_config.json` beside it with a `chat_template` marks the template as custom.
    pub fn load(name: &str) -> Result<Self, FinetuneError> {
        let file = tokenizer_file(name)?;
        let tokenizer = Tokenizer::from_file(&file)?;
        let config = file.with_file_name("tokenizer_config.json");
        let chat_template = match std::fs::read_to_string(&config) {
            Ok(text) => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| FinetuneError::Row {
                        path: config.clone(),
                        line: e.line(),
                        message: e.to_string(),
                    })?;
                match v.get("chat_template") {
                    None | Some(serde_json::Value::Null) => ChatTemplate::DefaultChatMl,
                    Some(_) => ChatTemplate::Custom { source: config },
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChatTemplate::DefaultChatMl,
            Err(source) => {
                return Err(FinetuneError::Io {
                    path: config,
                    source,
                });
            }
        };
        Ok(Self {
            tokenizer,
            chat_template,
        })
    }
}

/// The `tokenizer.json` that `tokenizer.name` designates (the file itself, or inside a folder).
pub fn tokenizer_file(name: &str) -> Result<PathBuf, FinetuneError> {
    let p = Path::new(name);
    let file = if p.is_dir() {
        p.join("tokenizer.json")
    } else {
        p.to_path_buf()
    };
    if !file.is_file() {
        return Err(FinetuneError::Config {
            key: "tokenizer.name".into(),
            message: format!(
                "{name:?} is neither a tokenizer.json file nor a folder holding one (tessera never downloads tokenizers)"
            ),
        });
    }
    Ok(file)
}
