//! A tiny random MPT and a word-level tokenizer for tests that must run without shared
//! fixtures.

#![allow(dead_code)]

use burn::backend::Flex;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::{Mpt, MptConfig};

pub const N_WORDS: usize = 60;

/// `<|endoftext|>` = 0, `<unk>` = 1, then `w0`..`w59`; whitespace pre-tokenizer, so `" w3"` is
/// one token (llm-foundry's prefix-space rule applies) and decoding joins words with spaces.
pub fn tokenizer() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), 0.into());
    vocab.insert("<unk>".into(), 1.into());
    for i in 0..N_WORDS {
        vocab.insert(format!("w{i}"), (i + 2).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    Tokenizer::from_bytes(json.to_string().as_bytes(), "word-level test tokenizer").unwrap()
}

pub fn model() -> Mpt<Flex> {
    let mut cfg = MptConfig::preset("tiny").unwrap();
    cfg.vocab_size = N_WORDS + 2;
    cfg.max_seq_len = 96;
    cfg.validate().unwrap();
    cfg.init::<Flex>(&Default::default(), 7)
}
