#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
#[cfg(feature = "cuda")]
pub mod memory;

pub use error::CudaError;
