#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
//!
//! The `tessera` facade: the workspace crates under one name, plus the backend selection the
//! binary uses. Fine-tuners can depend on this crate alone.

pub use tessera_data as data;
pub use tessera_dist as dist;
pub use tessera_eval as eval;
pub use tessera_model as model;
pub use tessera_serve as serve;
pub use tessera_train as train;

pub mod device;
pub mod malloc;
