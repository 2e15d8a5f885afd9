#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod chat_template;
pub mod mds;
pub mod prepare;
pub mod remote;
pub mod stream;
pub mod tokenizer;
