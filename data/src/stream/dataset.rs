//! [`StreamingDataset`]: streams opened, mixed and planned; the per-epoch sample plan of one
//! rank is `small_per_big[shuffle[rank_slots]]`, exactly streaming's `generate_work`
//! (`batching/random.py`) for that rank.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::mds::{INDEX_BASENAME, Index, Sample, TokenSpec};
use crate::remote::RemoteOptions;

use super::cache::{Cache, CacheOptions, CachedShard, StreamFiles, write_atomic};
use super::config::StreamingConfig;
use super::error::{Result, StreamError};
use super::loader::{Handles, TokenLoader};
use super::mixing::{self, Resampled, StreamShards};
use super::partition::{self, PartitionParams, World};
use super::shuffle::default_block_size;
use super::source::{Source, default_cache_dir, local_path};
use super::state::StreamState;

/// Everything the loaders share (behind an `Arc`).
#[derive(Clone)]
pub(crate) struct Inner {
    pub config: StreamingConfig,
    pub world: World,
    pub cache: Arc<Cache>,
    pub spec: TokenSpec,
    /// `shard_offsets[s]` = global id of shard `s`'s first sample; one extra entry at the end.
    pub shard_offsets: Vec<u64>,
    pub samples_per_shard: Vec<u64>,
    /// Per stream: first shard, shard count, first sample.
    pub stream_shards: Vec<(usize, usize, u64)>,
    pub choose_per_stream: Vec<u64>,
    pub epoch_size: u64,
    pub num_canonical_nodes: u64,
    /// Whether any shard needs fetching or decompressing (else no prefetch threads).
    pub needs_prefetch: bool,
    pub max_open: usize,
}

impl Inner {
    /// The shard holding global sample `id`, and the sample's index in it.
    #[inline]
    pub(crate) fn locate(&self, id: u64) -> (usize, usize) {
        let s = self.shard_offsets.partition_point(|&o| o <= id) - 1;
        (s, (id - self.shard_offsets[s]) as usize)
    }

    fn resample(&self, seed: u64, epoch: u64) -> Resampled {
        let streams: Vec<StreamShards<'_>> = self
            .stream_shards
            .iter()
            .zip(&self.choose_per_stream)
            .map(|(&(first, count, offset), &choose)| StreamShards {
                samples_per_shard: &self.samples_per_shard[first..first + count],
                sample_offset: offset,
                choose,
            })
            .collect();
        let c = &self.config;
        mixing::resample(
            &streams,
            c.sampling_granularity,
            seed,
            epoch,
            c.sampling_method,
            c.shuffle,
        )
    }

    /// This rank's remaining samples of `state.epoch`, in order.
    pub(crate) fn plan(&self, state: &StreamState) -> Result<Vec<i64>> {
        let c = &self.config;
        let resampled = self.resample(state.seed, state.epoch);
        let params = PartitionParams {
            num_samples: self.epoch_size,
            num_canonical_nodes: state.num_canonical_nodes,
            num_nodes: self.world.num_nodes(),
            ranks_per_node: self.world.ranks_per_node,
            workers_per_rank: 1,
            batch_size: c.batch_size,
            drop_first: state.sample_in_epoch,
            initial_physical_nodes: state.initial_physical_nodes,
        };
        let mut ids = partition::rank_samples(c.partition_algo, &params, &self.world)?;
        if c.shuffle {
            let block = c
                .shuffle_block_size
                .unwrap_or_else(|| default_block_size(state.num_canonical_nodes));
            let order = c.shuffle_algo.shuffle(
                &resampled.shuffle_units,
                state.num_canonical_nodes,
                state.seed,
                state.epoch,
                block,
            )?;
            for id in ids.iter_mut() {
                *id = order[*id as usize];
            }
        }
        if resampled.small_per_big.is_some() {
            for id in ids.iter_mut() {
                *id = resampled.small(*id);
            }
        }
        Ok(ids)
    }
}

/// A mosaicml-streaming `StreamingDataset`: one or more MDS streams (local or remote), mixed,
/// shuffled and partitioned for one rank, readable as token ids.
///
/// The order of samples is a pure function of the config, the epoch and the resume state;
/// see the `stream` module docs for the guarantees.
pub struct StreamingDataset {
    pub(crate) inner: Arc<Inner>,
    /// Random-access handles for [`tokens`](Self::tokens) and the burn `Dataset` impl.
    handles: Mutex<Handles>,
    /// Epoch 0's plan, built on first use by the burn `Dataset` impl.
    #[cfg(feature = "burn-dataset")]
    burn_plan: std::sync::OnceLock<Vec<i64>>,
}

impl StreamingDataset {
    /// Open every stream's index (downloading it for remotes), derive the mix, and prepare the
    /// cache. No shard is read yet.
    pub fn new(config: StreamingConfig, world: World) -> Result<StreamingDataset> {
        config.validate()?;
        let verify_default = |remote: bool| config.validate_hash.unwrap_or(remote);
        let mut streams = Vec::new();
        let mut shards = Vec::new();
        let mut stream_shards = Vec::new();
        let mut samples_per_stream = Vec::new();
        let mut weights = Vec::new();
        let mut any_remote = false;
        let mut total = 0u64;
        for (i, s) in config.streams.iter().enumerate() {
            weights.push(s.weight(i)?);
            let split = s.split.as_deref().filter(|x| !x.is_empty());
            let (files, index) = match &s.remote {
                Some(url) => {
                    any_remote = true;
                    let remote_url = match split {
                        Some(sp) => format!("{}/{sp}", url.trim_end_matches('/')),
                        None => url.clone(),
                    };
                    let dir = match &s.local {
                        Some(l) => split.map_or_else(|| l.clone(), |sp| l.join(sp)),
                        None => default_cache_dir(url, split),
                    };
                    let options = RemoteOptions {
                        timeout: std::time::Duration::from_secs_f64(config.download_timeout),
                        retries: config.download_retry,
                    };
                    let Source::Remote(remote) = Source::parse_with(&remote_url, options)? else {
                        return Err(StreamError::Location {
                            location: remote_url,
                            reason: "a remote needs a URL scheme (s3://, gs://, az://, https://, file://)".into(),
                        });
                    };
                    let bytes = remote.fetch(INDEX_BASENAME, config.download_retry)?;
                    let index_path = dir.join(INDEX_BASENAME);
                    write_atomic(&index_path, &bytes)?;
                    let index = Index::from_json_bytes(&bytes, &index_path)?;
                    (
                        StreamFiles {
                            dir,
                            remote: Some(remote),
                            index_path,
                        },
                        index,
                    )
                }
                None => {
                    let base = s.local.clone().unwrap_or_default();
                    let dir = split.map_or_else(|| base.clone(), |sp| base.join(sp));
                    let index = Index::load(&dir)?;
                    (
                        StreamFiles {
                            index_path: dir.join(INDEX_BASENAME),
                            dir,
                            remote: None,
                        },
                        index,
                    )
                }
            };
            let n = index.total_samples();
            if n == 0 {
                return Err(StreamError::EmptyStream {
                    stream: i,
                    location: files.index_path.display().to_string(),
                });
            }
            stream_shards.push((shards.len(), index.shards.len(), total));
            for info in index.shards {
                let columns = Arc::new(info.columns(&files.index_path)?);
                shards.push(CachedShard {
                    stream: i,
                    info,
                    columns,
                });
            }
            samples_per_stream.push(n);
            total += n;
            streams.push(files);
        }

        let choose_per_stream = mixing::choose_per_stream(
            &weights,
            &samples_per_stream,
            config.epoch_size,
            config.shuffle_seed,
        )?;
        let epoch_size: u64 = choose_per_stream.iter().sum();
        if epoch_size == 0 {
            return Err(StreamError::Config {
                field: "streams".into(),
                found: "weights that choose no samples".into(),
                expected: "an epoch of at least one sample".into(),
            });
        }
        let samples_per_shard: Vec<u64> = shards.iter().map(|s| s.info.samples).collect();
        let mut shard_offsets = Vec::with_capacity(shards.len() + 1);
        let mut acc = 0;
        for &n in &samples_per_shard {
            shard_offsets.push(acc);
            acc += n;
        }
        shard_offsets.push(acc);

        let max_raw = shards
            .iter()
            .map(|s| s.info.raw_data.bytes)
            .max()
            .unwrap_or(0);
        if let Some(limit) = config.cache_limit
            && any_remote
            && limit < 2 * max_raw
        {
            return Err(StreamError::CacheLimit {
                limit,
                reason: format!("it must hold at least two of the largest shard ({max_raw} bytes)"),
            });
        }
        let max_open = match config.cache_limit {
            Some(limit) if any_remote => (limit / max_raw.max(1)).max(2) as usize,
            _ => 4096,
        };
        let needs_prefetch = any_remote || shards.iter().any(|s| s.info.zip_data.is_some());
        let opts = CacheOptions {
            limit: config.cache_limit,
            verify_hashes: verify_default(any_remote),
            retries: config.download_retry,
        };
        let spec = TokenSpec::new(&config.token_column, &config.token_encoding_type)?;
        let num_canonical_nodes = config.num_canonical_nodes.unwrap_or_else(|| {
            config
                .shuffle_algo
                .default_num_canonical_nodes(world.num_nodes())
        });
        let inner = Inner {
            cache: Arc::new(Cache::new(streams, shards, opts)),
            world,
            spec,
            shard_offsets,
            samples_per_shard,
            stream_shards,
            choose_per_stream,
            epoch_size,
            num_canonical_nodes,
            needs_prefetch,
            max_open,
            config,
        };
        Ok(StreamingDataset {
            handles: Mutex::new(Handles::new(inner.cache.shards.len(), inner.max_open)),
            inner: Arc::new(inner),
            #[cfg(feature = "burn-dataset")]
            burn_plan: std::sync::OnceLock::new(),
        })
    }

    /// Samples each rank reads per epoch, as streaming's `__len__`:
    /// `ceil(epoch_size / world_size)`.
    pub fn len(&self) -> usize {
        self.inner.epoch_size.div_ceil(self.inner.world.world_size) as usize
    }

    /// Whether the epoch is empty (never, for a dataset that opened).
    pub fn is_empty(&self) -> bool {
        self.inner.epoch_size == 0
    }

    /// Samples per epoch over all ranks, after mixing.
    pub fn epoch_size(&self) -> u64 {
        self.inner.epoch_size
    }

    /// Underlying samples over all streams (global sample ids are `0..this`).
    pub fn num_samples(&self) -> u64 {
        *self.inner.shard_offsets.last().unwrap_or(&0)
    }

    /// Samples each stream contributes per epoch.
    pub fn choose_per_stream(&self) -> &[u64] {
        &self.inner.choose_per_stream
    }

    /// The canonical node count this dataset uses by default.
    pub fn num_canonical_nodes(&self) -> u64 {
        self.inner.num_canonical_nodes
    }

    /// This process's place in the world.
    pub fn world(&self) -> World {
        self.inner.world
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &StreamingConfig {
        &self.inner.config
    }

    /// The state at the start of a run.
    pub fn initial_state(&self) -> StreamState {
        StreamState {
            initial_physical_nodes: Some(self.inner.world.num_nodes()),
            ..StreamState::start(
                self.inner.config.shuffle_seed,
                self.inner.num_canonical_nodes,
            )
        }
    }

    /// This rank's remaining samples (global sample ids) of `state.epoch`, in reading order.
    /// The state's seed and canonical node count rule, as in streaming's `load_state_dict`.
    pub fn rank_samples(&self, state: &StreamState) -> Result<Vec<i64>> {
        self.inner.plan(state)
    }

    /// The world-independent global order of an epoch: what one rank alone would read
    /// (canonical-node padding included).
    pub fn global_order(&self, epoch: u64) -> Result<Vec<i64>> {
        let single = Inner {
            world: World::SINGLE,
            ..(*self.inner).clone()
        };
        single.plan(&StreamState {
            epoch,
            ..self.initial_state()
        })
    }

    /// A loader for this rank that resumes at `state` (use [`initial_state`](Self::initial_state)
    /// to start).
    pub fn loader(&self, state: StreamState) -> Result<TokenLoader> {
        TokenLoader::new(self.inner.clone(), state)
    }

    /// Append global sample `id`'s token ids to `out` (random access; fetches its shard).
    pub fn tokens(&self, id: u64, out: &mut Vec<u32>) -> Result<usize> {
        self.check_id(id)?;
        let (shard, index) = self.inner.locate(id);
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let s = handles.get(&self.inner.cache, shard)?;
        Ok(s.tokens_into(index, &self.inner.spec, out)?)
    }

    /// Global sample `id`, every column decoded.
    pub fn sample(&self, id: u64) -> Result<Sample> {
        self.check_id(id)?;
        let (shard, index) = self.inner.locate(id);
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let s = handles.get(&self.inner.cache, shard)?;
        Ok(s.get(index)?)
    }

    fn check_id(&self, id: u64) -> Result<()> {
        if id >= self.num_samples() {
            return Err(StreamError::Config {
                field: "sample id".into(),
                found: id.to_string(),
                expected: format!("< {}", self.num_samples()),
            });
        }
        Ok(())
    }

    /// Where a local stream's data, or a remote stream's cache, lives.
    pub fn stream_dir(&self, stream: usize) -> Option<PathBuf> {
        self.inner.cache.streams.get(stream).map(|s| s.dir.clone())
    }

    /// Where shard `shard`'s decompressed file is (or will be) on local disk.
    pub fn shard_path(&self, shard: usize) -> Option<PathBuf> {
        let s = self.inner.cache.shards.get(shard)?;
        Some(local_path(
            &self.inner.cache.streams[s.stream].dir,
            &s.info.raw_data.basename,
        ))
    }
}

/// burn's random-access view: item `i` is the `i`-th sample this rank reads in epoch 0.
/// (For other epochs, iterate a [`TokenLoader`].) An item that fails to load is `None`.
/// With the `burn-dataset` feature (a default one).
#[cfg(feature = "burn-dataset")]
impl burn_dataset::Dataset<Vec<u32>> for StreamingDataset {
    fn get(&self, index: usize) -> Option<Vec<u32>> {
        let plan = self.burn_plan_ref()?;
        let id = *plan.get(index)?;
        let mut out = Vec::new();
        self.tokens(id as u64, &mut out).ok()?;
        Some(out)
    }

    fn len(&self) -> usize {
        self.burn_plan_ref().map_or(0, Vec::len)
    }
}

#[cfg(feature = "burn-dataset")]
impl StreamingDataset {
    fn burn_plan_ref(&self) -> Option<&Vec<i64>> {
        if let Some(p) = self.burn_plan.get() {
            return Some(p);
        }
        let plan = self.inner.plan(&self.initial_state()).ok()?;
        Some(self.burn_plan.get_or_init(|| plan))
    }
}
