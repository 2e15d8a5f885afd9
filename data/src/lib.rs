//! tessera-data: MDS shards byte-compatible with mosaicml-streaming, HF tokenizers, the prepare
//! pipeline (clean, dedup, tokenize, pack, write) and the deterministic streaming loader.
//!
//! This crate knows nothing of the model, the trainer or evaluation.

pub mod mds;
pub mod prepare;
pub mod remote;
pub mod stream;
pub mod tokenizer;
