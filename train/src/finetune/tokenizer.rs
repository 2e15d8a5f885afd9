//! The tokenizer a fine-tuning run names (`tokenizer.name`: a `tokenizer.json` file or a folder
//! holding one), and whether it brings its own chat template.
//!
//! Hugging Face keeps a tokenizer's chat template in `tokenizer_config.json` (or in
//! `chat_template.jinja`), beside `tokenizer.json`. llm-foundry renders chat rows with that
//! template when there is one, else with its default ChatML template; so does tessera
//! ([`super::chat_template`]).

use std::path::{Path, PathBuf};

use tessera_data::tokenizer::Tokenizer;

use super::FinetuneError;
use super::chat_template::{self, JinjaTemplate};

/// How `{"messages": …}` rows become text.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// llm-foundry's default ChatML template, which it applies when the tokenizer has none.
    DefaultChatMl,
    /// The tokenizer's own Jinja template.
    Jinja(Box<JinjaTemplate>),
}

/// A tokenizer and the chat template that goes with it.
#[derive(Debug, Clone)]
pub struct FinetuneTokenizer {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// How chat rows are rendered to text before tokenizing.
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

    /// Loads `tokenizer.name`: a `tokenizer.json` file or a folder holding one, with the chat
    /// template beside it if there is one (compiled now, so a broken template fails here).
    pub fn load(name: &str) -> Result<Self, FinetuneError> {
        let file = tokenizer_file(name)?;
        let tokenizer = Tokenizer::from_file(&file)?;
        let config = file.with_file_name("tokenizer_config.json");
        let json =
            match std::fs::read_to_string(&config) {
                Ok(text) => Some(serde_json::from_str::<serde_json::Value>(&text).map_err(
                    |e| FinetuneError::Row {
                        path: config.clone(),
                        line: e.line(),
                        message: e.to_string(),
                    },
                )?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(FinetuneError::Io {
                        path: config,
                        source,
                    });
                }
            };
        let chat_template = match chat_template::find(&config, json.as_ref())? {
            Some(t) => ChatTemplate::Jinja(Box::new(t)),
            None => ChatTemplate::DefaultChatMl,
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
