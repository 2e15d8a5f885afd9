//! The streaming loader: mosaicml-streaming's `StreamingDataset`, deterministic, resumable and
//! fast, over MDS shards in local folders or remote stores.
//!
//! # Guarantees
//! - **Order.** An epoch's global sample order is a pure function of
//!   `(shuffle_seed, epoch, num_canonical_nodes, shuffle_algo, shuffle_block_size)` and the
//!   shard sizes, computed with a bit-exact port of NumPy's `default_rng`, so it equals
//!   mosaicml-streaming's own order (tested against orders streaming 0.13 produced, for py1e,
//!   py1s, py1br, py2s and naive).
//! - **Partitioning.** Ranks read disjoint interleaved slices of that order (streaming's
//!   `orig`/`relaxed` partition). Their union is the whole epoch; padding repeats a handful of
//!   samples only when the epoch does not divide evenly (see [`partition`]). Every world size
//!   the canonical nodes allow consumes the same global order (elastic determinism).
//! - **Resumption.** [`StreamState`] `{epoch, sample_in_epoch, seed, num_canonical_nodes}`
//!   after any batch resumes with exactly the samples that remain, on any compatible world.
//! - **Mixing.** Streams are weighted by `proportion`, `repeat` or `choose`, with streaming's
//!   rules and draws ([`mixing`]).
//! - **Cache.** Remote shards download on demand, are size- and hash-checked, decompressed,
//!   and written atomically under per-shard file locks, so runs sharing a cache folder never
//!   corrupt each other; a background pool prefetches upcoming shards, and an optional
//!   `cache_limit` evicts least recently used shards.
//!
//! # Use
//! ```no_run
//! use tessera_data::stream::{StreamingConfig, StreamingDataset, World};
//! let mut cfg = StreamingConfig::local("data/train");
//! cfg.shuffle = true;
//! cfg.batch_size = 8;
//! let ds = StreamingDataset::new(cfg, World::new(0, 1, 1)?)?;
//! let mut loader = ds.loader(ds.initial_state())?;
//! let batch: Vec<Vec<u32>> = loader.next_batch()?;
//! let resume_here = loader.state(); // store in the checkpoint
//! # Ok::<(), tessera_data::stream::StreamError>(())
//! ```

mod cache;
mod config;
mod dataset;
mod error;
mod loader;
pub mod mixing;
pub mod numpy_rng;
pub mod partition;
mod prefetch;
pub mod shuffle;
mod source;
mod state;

pub use config::{StreamConfig, StreamingConfig};
pub use dataset::StreamingDataset;
pub use error::{Result, StreamError};
pub use loader::{EpochSamples, TokenLoader};
pub use mixing::{SamplingMethod, Weight};
pub use partition::{PartitionAlgo, World};
pub use shuffle::ShuffleAlgo;
pub use state::StreamState;
