//! Training a byte-level BPE tokenizer, GPT-2 / GPT-NeoX style (`tessera data train-tokenizer`).
//!
//! The result has the same pipeline as MPT's gpt-neox-20b `tokenizer.json`: NFC normalizer,
//! ByteLevel pre-tokenizer (GPT-2 regex, no prefix space), BPE without unknown token (the 256
//! byte symbols are always in the alphabet, so every input encodes), ByteLevel post-processor and
//! decoder, and the special tokens first (`<|endoftext|>` = id 0). Training is the `tokenizers`
//! crate's `BpeTrainer`, so HF loads the file as is.
//!
//! Determinism: the trainer sums word counts (order-free), seeds its alphabet sorted and breaks
//! ties between equally frequent pairs by token ids, and the vocabulary is serialized by id, so the
//! same corpus gives the same bytes whatever the thread count or hash seeds.
//!
//! Padding: with `pad_to_multiple_of = Some(m)`, reserved special tokens `<|reserved_N|>` fill
//! the vocabulary up to the next multiple of `m` (128 suits GPU matmul tiles, as MPT pads
//! gpt-neox's 50277 to 50432). The learned part stays exactly what `vocab_size` asked for.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, Model, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerImpl,
};

use super::{Tokenizer, TokenizerError};
use crate::prepare::input::{BatchLimits, expand_inputs, read_batches};
use crate::prepare::record::extract_text;

/// The end-of-text token every tessera-trained tokenizer has, at id 0.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Settings of a BPE training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BpeTrainConfig {
    /// Vocabulary size to learn, special tokens and the 256 byte symbols included.
    pub vocab_size: usize,
    /// Pairs seen fewer times than this are never merged (HF's `min_frequency`).
    pub min_frequency: u64,
    /// Special tokens, given ids 0, 1, … in this order; `<|endoftext|>` first by default.
    pub special_tokens: Vec<String>,
    /// Fill the vocabulary with reserved tokens up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
    /// Longest token, in characters (`None`: unlimited).
    pub max_token_length: Option<usize>,
}

impl Default for BpeTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32_000,
            min_frequency: 2,
            special_tokens: vec![ENDOFTEXT.to_string()],
            pad_to_multiple_of: None,
            max_token_length: None,
        }
    }
}

/// What training produced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// Documents seen.
    pub docs: u64,
    /// Merges learned.
    pub merges: usize,
    /// Vocabulary learned (special + alphabet + merges); below `vocab_size` when the corpus ran
    /// out of pairs at `min_frequency`.
    pub learned_vocab: usize,
    /// Reserved tokens added by padding.
    pub reserved: usize,
    /// The final vocabulary size.
    pub vocab_size: usize,
}

/// Errors from training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A training setting is invalid.
    #[error("train-tokenizer: {field}: {message}")]
    Config {
        /// The setting at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Reading the training inputs failed.
    #[error(transparent)]
    Input(#[from] crate::prepare::PrepareError),
    /// The trainer failed.
    #[error("train-tokenizer: {0}")]
    Train(String),
    /// The trained tokenizer could not be built or saved.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn validate(cfg: &BpeTrainConfig) -> Result<(), TrainError> {
    let bad = |field, message: String| Err(TrainError::Config { field, message });
    let specials: HashSet<&String> = cfg.special_tokens.iter().collect();
    if specials.len() != cfg.special_tokens.len() || cfg.special_tokens.iter().any(|s| s.is_empty())
    {
        return bad(
            "special_tokens",
            format!("{:?} has an empty or repeated token", cfg.special_tokens),
        );
    }
    let floor = 256 + cfg.special_tokens.len();
    if cfg.vocab_size < floor {
        return bad(
            "vocab_size",
            format!(
                "{} is below the 256 byte symbols plus {} special tokens ({floor})",
                cfg.vocab_size,
                cfg.special_tokens.len()
            ),
        );
    }
    if cfg.pad_to_multiple_of == Some(0) {
        return bad("pad_to_multiple_of", "must be positive".into());
    }
    Ok(())
}

/// Trains a tokenizer on `texts` (each one document).
pub fn train_bpe<I, S>(
    texts: I,
    cfg: &BpeTrainConfig,
) -> Result<(Tokenizer, TrainReport), TrainError>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    validate(cfg)?;
    let specials: Vec<AddedToken> = cfg
        .special_tokens
        .iter()
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .max_token_length(cfg.max_token_length)
        .show_progress(false)
        .build();
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(BPE::default());
    tk.with_normalizer(Some(NFC));
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_post_processor(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    let docs = Arc::new(AtomicU64::new(0));
    let counter = docs.clone();
    let counted = texts.inspect(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    tk.train(&mut trainer, counted)
        .map_err(|e| TrainError::Train(e.to_string()))?;
    let merges = tk.get_model().get_vocab_size() - 256 - cfg.special_tokens.len();
    let mut tokenizer = tokenizers::Tokenizer::from(tk);
    let learned_vocab = tokenizer.get_vocab_size(true);
    let mut reserved = 0;
    if let Some(m) = cfg.pad_to_multiple_of {
        let target = learned_vocab.div_ceil(m) * m;
        let extra: Vec<AddedToken> = (0..target - learned_vocab)
            .map(|i| AddedToken::from(format!("<|reserved_{i}|>"), true))
            .collect();
        reserved = tokenizer.add_special_tokens(&extra);
    }
    let vocab_size = tokenizer.get_vocab_size(true);
    let report = TrainReport {
        docs: docs.load(std::sync::atomic::Ordering::Relaxed),
        merges,
        learned_vocab,
        reserved,
        vocab_size,
    };
    Ok((Tokenizer::from_inner(tokenizer), report))
}

/// Trains on the documents of `inputs` (files, globs or directories in any format `prepare`
/// reads, the text in `text_field`). Bad lines are skipped, as `prepare` counts them.
pub fn train_bpe_from_inputs(
    inputs: &[String],
    text_field: &str,
    cfg: &BpeTrainConfig,
) -> Result<(Tokenizer, TrainReport), TrainError> {
    validate(cfg)?;
    let files = expand_inputs(inputs)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1024);
    let read_bytes = Arc::new(AtomicU64::new(0));
    let (files, read_bytes) = (&files, &read_bytes);
    std::thread::scope(|s| {
        // `tx` moves into the reader so the channel closes (ending training's input) when the
        // reader is done.
        let reader = s.spawn(move || {
            let limits = BatchLimits {
                bytes: 1 << 22,
                docs: 4096,
            };
            read_batches(files, text_field, limits, read_bytes, |batch| {
                for r in &batch.records {
                    let bytes = batch.bytes(r);
                    let text = if r.null {
                        continue;
                    } else if r.json {
                        match extract_text(bytes, text_field) {
                            Ok(t) => t.into_owned(),
                            Err(_) => continue,
                        }
                    } else {
                        String::from_utf8_lossy(bytes).into_owned()
                    };
                    if tx.send(text).is_err() {
                        return false;
                    }
                }
                true
            })
        });
        let trained = train_bpe(rx.into_iter(), cfg);
        let read = reader
            .join()
            .map_err(|_| TrainError::Train("input reader thread panicked".into()))?;
        read?;
        trained
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..200)
            .map(|i| {
                format!(
                    "def function_{i}(x):\n    return x * {i} + the_value  # comment {}\n",
                    i % 7
                )
            })
            .collect()
    }

    #[test]
    fn trains_to_the_requested_size_with_endoftext_first() {
        let cfg = BpeTrainConfig {
            vocab_size: 300,
            ..Default::default()
        };
        let (tok, report) = train_bpe(corpus().iter(), &cfg).unwrap();
        assert_eq!(tok.vocab_size(), 300);
        assert_eq!(report.learned_vocab, 300);
        assert_eq!(report.merges, 300 - 257);
        assert_eq!(report.docs, 200);
        assert_eq!(tok.token_to_id(ENDOFTEXT), Some(0));
        assert_eq!(tok.eos_id(), Some(0));
        // Every byte encodes (no unknown token) and text round-trips.
        let text = "def f(x):\n    return 😀 ünïcode\t\u{0}";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert!(ids.iter().all(|&i| (i as usize) < 300));
    }

    #[test]
    fn padding_fills_to_a_multiple_with_reserved_tokens() {
        let cfg = BpeTrainConfig {
            vocab_size: 300,
            pad_to_multiple_of: Some(128),
            ..Default::default()
        };
        let (tok, report) = train_bpe(corpus().iter(), &cfg).unwrap();
        assert_eq!(tok.vocab_size(), 384);
        assert_eq!(report.reserved, 84);
        assert_eq!(tok.token_to_id("<|reserved_83|>"), Some(383));
        // Reserved tokens never come out of ordinary text.
        let ids = tok.encode(&corpus()[3]).unwrap();
        assert!(ids.iter().all(|&i| i < 300));
    }

    #[test]
    fn same_corpus_gives_identical_json() {
        let cfg = BpeTrainConfig {
            vocab_size: 320,
            ..Default::default()
        };
        let a = train_bpe(corpus().iter(), &cfg).unwrap().0;
        let b = train_bpe(corpus().iter().rev(), &cfg).unwrap().0;
        let json = |t: &Tokenizer| t.inner().to_string(false).unwrap();
        assert_eq!(
            json(&a),
            json(&b),
            "document order and hash seeds must not matter"
        );
    }

    #[test]
    fn saved_file_loads_back_with_the_same_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = BpeTrainConfig {
            vocab_size: 290,
            ..Default::default()
        };
        let (tok, _) = train_bpe(corpus().iter(), &cfg).unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        for doc in corpus().iter().take(5) {
            assert_eq!(back.encode(doc).unwrap(), tok.encode(doc).unwrap());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
        assert_eq!(json["normalizer"]["type"], "NFC");
        assert_eq!(json["added_tokens"][0]["content"], ENDOFTEXT);
    }

    #[test]
    fn bad_settings_name_the_field() {
        let small = BpeTrainConfig {
            vocab_size: 100,
            ..Default::default()
        };
        assert!(
            train_bpe(corpus().iter(), &small)
                .unwrap_err()
                .to_string()
                .contains("vocab_size")
        );
        let dup = BpeTrainConfig {
            special_tokens: vec!["a".into(), "a".into()],
            ..Default::default()
        };
        assert!(
            train_bpe(corpus().iter(), &dup)
                .unwrap_err()
                .to_string()
                .contains("special_tokens")
        );
    }

    #[test]
    fn trains_from_jsonl_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let lines: Vec<String> = corpus()
            .iter()
            .map(|t| serde_json::json!({ "text": t }).to_string())
            .collect();
        std::fs::write(&path, lines.join("\n") + "\nnot json\n").unwrap();
        let cfg = BpeTrainConfig {
            vocab_size: 300,
            ..Default::default()
        };
        let (from_files, report) =
            train_bpe_from_inputs(&[path.to_string_lossy().into_owned()], "text", &cfg).unwrap();
        assert_eq!(report.docs, 200);
        let (direct, _) = train_bpe(corpus().iter(), &cfg).unwrap();
        assert_eq!(
            from_files.inner().to_string(false).unwrap(),
            direct.inner().to_string(false).unwrap()
        );
    }
}
