#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod mds;
pub mod prepare;
pub mod remote;
pub mod stream;
pub mod tokenizer;
