#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("tessera-dist sends buffers in memory order and assumes a little-endian host");

mod communicator;
mod element;
pub mod env;
mod error;
pub mod hostlist;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod rendezvous;
mod shard;
mod tcp;
pub mod tensor;
mod wire;

pub use communicator::{Communicator, DEFAULT_TIMEOUT};
pub use element::Element;
pub use env::{EnvSource, RankEnv};
pub use error::{DistError, Op};
pub use rendezvous::RendezvousConfig;
pub use shard::shard_range;
pub use tensor::TensorPath;
