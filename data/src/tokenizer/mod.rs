//! HF `tokenizer.json` tokenizers, loaded and used through the `tokenizers` crate (the same code
//! the Python `tokenizers` package binds, so ids match transformers exactly).
//!
//! [`Tokenizer`] is a thin wrapper that turns the crate's boxed errors into [`TokenizerError`]s
//! naming the file, and fixes the conventions tessera uses everywhere: encode never adds special
//! tokens (MPT's gpt-neox tokenizer adds none), ids are `u32`.

use std::path::{Path, PathBuf};

pub mod fast;
pub mod train;

pub use fast::FastBpe;
pub use train::{BpeTrainConfig, TrainError, TrainReport, train_bpe, train_bpe_from_inputs};

/// Errors from loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer file could not be read or parsed.
    #[error("{path}: cannot load tokenizer: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer could not encode a text.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// The tokenizer could not decode ids.
    #[error("cannot decode ids: {0}")]
    Decode(String),
    /// A tokenizer could not be written.
    #[error("{path}: cannot save tokenizer: {message}")]
    Save {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A loaded HF tokenizer.
///
/// `encode` goes through [`FastBpe`] when the tokenizer is a byte-level BPE it reproduces
/// exactly (gpt-neox, GPT-2, tessera-trained), else through `tokenizers`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    fast: Option<std::sync::Arc<FastBpe>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self::from_inner(inner))
    }

    /// Parses a `tokenizer.json` document held in memory (`origin` names it in errors).
    pub fn from_bytes(bytes: &[u8], origin: impl Into<PathBuf>) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| TokenizerError::Load {
            path: origin.into(),
            message: e.to_string(),
        })?;
        Ok(Self::from_inner(inner))
    }

    /// Wraps an already-built `tokenizers::Tokenizer`.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let fast = FastBpe::from_tokenizer(&inner).map(std::sync::Arc::new);
        Self { inner, fast }
    }

    /// True when `encode` uses the fast path.
    pub fn has_fast_encoder(&self) -> bool {
        self.fast.is_some()
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`, without adding special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.fast {
            Some(fast) => Ok(fast.encode(text)),
            None => self.encode_hf(text),
        }
    }

    /// Token ids of `text` computed by the `tokenizers` crate itself (the reference the fast
    /// path is tested against).
    pub fn encode_hf(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes many texts (in parallel inside `tokenizers` when it is built with rayon).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// The text of `ids`; `skip_special` drops special tokens such as `<|endoftext|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The number of ids the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (`"<|endoftext|>"`), if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id, if it exists.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The end-of-sequence id: `<|endoftext|>` (GPT-2 / gpt-neox / tessera-trained), else `</s>`,
    /// else `<eos>`.
    pub fn eos_id(&self) -> Option<u32> {
        ["<|endoftext|>", "</s>", "<eos>"]
            .iter()
            .find_map(|t| self.token_to_id(t))
    }

    /// Writes the tokenizer as `tokenizer.json`, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        let err = |message: String| TokenizerError::Save {
            path: path.to_path_buf(),
            message,
        };
        let json = self.inner.to_string(true).map_err(|e| err(e.to_string()))?;
        tessera_fs::atomic_write(path, json.as_bytes()).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_error_names_the_file() {
        let err = Tokenizer::from_file("/nonexistent/tok.json").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tok.json"), "{err}");
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        let err = Tokenizer::from_bytes(b"{ not json", "inline").unwrap_err();
        assert!(err.to_string().starts_with("inline:"), "{err}");
    }
}
