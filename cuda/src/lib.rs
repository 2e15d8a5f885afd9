#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod error;
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod lt;
#[cfg(feature = "cuda")]
pub mod memory;

pub use error::CudaError;
