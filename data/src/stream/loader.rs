//! Reading one rank's plan: [`TokenLoader`] yields token samples or whole per-device batches,
//! epoch after epoch, and its [`StreamState`] after any batch resumes at exactly the next one.
//!
//! The hot loop is: look up the sample's shard (binary search), reuse the shard's memory map
//! from a small handle table, append the token ids to a caller-owned buffer. No per-sample
//! allocation on the `*_into` paths; shards are prepared ahead by the prefetch pool.

use std::sync::Arc;

use crate::mds::Shard;

use super::cache::Cache;
use super::dataset::Inner;
use super::error::{Result, StreamError};
use super::prefetch::Prefetcher;
use super::state::StreamState;

/// Open shard handles, least-recently-used ones closed past `max_open`.
pub(crate) struct Handles {
    slots: Vec<Option<(Arc<Shard>, u64)>>,
    open: usize,
    max_open: usize,
    tick: u64,
}

impl Handles {
    pub(crate) fn new(num_shards: usize, max_open: usize) -> Handles {
        Handles {
            slots: vec![None; num_shards],
            open: 0,
            max_open: max_open.max(1),
            tick: 0,
        }
    }

    /// The open shard `i`, opening it (and preparing its file) if needed.
    pub(crate) fn get(&mut self, cache: &Cache, i: usize) -> Result<&Shard> {
        self.tick += 1;
        if self.slots[i].is_none() {
            if self.open >= self.max_open {
                self.close_oldest();
            }
            self.slots[i] = Some((Arc::new(cache.open(i)?), 0));
            self.open += 1;
        }
        let tick = self.tick;
        self.slots[i]
            .as_mut()
            .map(|(shard, used)| {
                *used = tick;
                &**shard
            })
            .ok_or_else(|| StreamError::Prefetch(format!("shard {i} handle was not kept open")))
    }

    fn is_open(&self, i: usize) -> bool {
        self.slots[i].is_some()
    }

    fn close_oldest(&mut self) {
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|(_, t)| (*t, i)))
            .min();
        if let Some((_, i)) = oldest {
            self.slots[i] = None;
            self.open -= 1;
        }
    }
}

/// One rank's reader: samples in plan order, batches of `batch_size`, across epochs.
pub struct TokenLoader {
    inner: Arc<Inner>,
    state: StreamState,
    plan: Vec<i64>,
    pos: usize,
    handles: Handles,
    prefetch: Option<Prefetcher>,
    predownload: usize,
    requested_upto: usize,
    /// Global sample ids of the last batch [`next_batch_into`](Self::next_batch_into) returned.
    last_batch_ids: Vec<i64>,
}

impl TokenLoader {
    pub(crate) fn new(inner: Arc<Inner>, state: StreamState) -> Result<TokenLoader> {
        let plan = inner.plan(&state)?;
        let prefetch = inner
            .needs_prefetch
            .then(|| Prefetcher::new(inner.cache.clone(), inner.config.prefetch_threads));
        let predownload = inner
            .config
            .predownload
            .unwrap_or((8 * inner.config.batch_size).max(64)) as usize;
        let handles = Handles::new(inner.cache.shards.len(), inner.max_open);
        Ok(TokenLoader {
            inner,
            state,
            plan,
            pos: 0,
            handles,
            prefetch,
            predownload,
            requested_upto: 0,
            last_batch_ids: Vec::new(),
        })
    }

    /// The resume point after everything returned so far.
    pub fn state(&self) -> StreamState {
        self.state
    }

    /// Samples left in the current epoch for this rank.
    pub fn remaining_in_epoch(&self) -> usize {
        self.plan.len() - self.pos
    }

    /// The remaining global sample ids of the current epoch, in order.
    pub fn remaining_ids(&self) -> &[i64] {
        &self.plan[self.pos..]
    }

    /// Append the next sample of the current epoch to `out`; `Ok(None)` at the epoch's end
    /// (call [`next_epoch`](Self::next_epoch) to go on). Returns the global sample id.
    pub fn next_sample_into(&mut self, out: &mut Vec<u32>) -> Result<Option<i64>> {
        let Some(&id) = self.plan.get(self.pos) else {
            return Ok(None);
        };
        self.request_ahead();
        let (shard, index) = self.inner.locate(id as u64);
        let opened_now = !self.handles.is_open(shard);
        let s = self.handles.get(&self.inner.cache, shard)?;
        s.tokens_into(index, &self.inner.spec, out)?;
        if opened_now && let Some(p) = &mut self.prefetch {
            p.opened(shard);
        }
        self.pos += 1;
        // Every rank consumes one sample per step of this loop.
        self.state.sample_in_epoch += self.inner.world.world_size;
        Ok(Some(id))
    }

    /// Move to the start of the next epoch (dropping what is left of this one).
    pub fn next_epoch(&mut self) -> Result<()> {
        self.state.epoch += 1;
        self.state.sample_in_epoch = 0;
        self.plan = self.inner.plan(&self.state)?;
        self.pos = 0;
        self.requested_upto = 0;
        Ok(())
    }

    /// The next per-device batch, flattened: token ids appended to `tokens`, one length per
    /// sample appended to `lengths`. An epoch's tail shorter than a batch is dropped (as with
    /// `drop_last`) and the next epoch begins, so every rank stays in step.
    pub fn next_batch_into(
        &mut self,
        tokens: &mut Vec<u32>,
        lengths: &mut Vec<usize>,
    ) -> Result<()> {
        let bs = self.inner.config.batch_size as usize;
        if self.remaining_in_epoch() < bs {
            let before = self.state;
            self.next_epoch()?;
            if self.plan.len() < bs {
                return Err(StreamError::Config {
                    field: "batch_size".into(),
                    found: bs.to_string(),
                    expected: format!(
                        "at most the {} samples each rank reads per epoch (epoch {} after epoch {})",
                        self.plan.len(),
                        self.state.epoch,
                        before.epoch
                    ),
                });
            }
        }
        self.last_batch_ids.clear();
        for _ in 0..bs {
            let start = tokens.len();
            if let Some(id) = self.next_sample_into(tokens)? {
                self.last_batch_ids.push(id);
            }
            lengths.push(tokens.len() - start);
        }
        Ok(())
    }

    /// The global sample ids of the last batch returned, in order (which samples a step saw).
    pub fn last_batch_ids(&self) -> &[i64] {
        &self.last_batch_ids
    }

    /// The next per-device batch, one `Vec<u32>` per sample (see
    /// [`next_batch_into`](Self::next_batch_into)).
    pub fn next_batch(&mut self) -> Result<Vec<Vec<u32>>> {
        let (mut tokens, mut lengths) = (Vec::new(), Vec::new());
        self.next_batch_into(&mut tokens, &mut lengths)?;
        let mut out = Vec::with_capacity(lengths.len());
        let mut at = 0;
        for n in lengths {
            out.push(tokens[at..at + n].to_vec());
            at += n;
        }
        Ok(out)
    }

    /// The rest of the current epoch as an iterator of token samples.
    pub fn epoch_samples(&mut self) -> EpochSamples<'_> {
        EpochSamples { loader: self }
    }

    fn request_ahead(&mut self) {
        let Some(p) = &mut self.prefetch else { return };
        let target = (self.pos + self.predownload).min(self.plan.len());
        while self.requested_upto < target {
            let (shard, _) = self.inner.locate(self.plan[self.requested_upto] as u64);
            if !self.handles.is_open(shard) {
                p.request(shard);
            }
            self.requested_upto += 1;
        }
    }
}

/// Iterator over the rest of a loader's current epoch.
pub struct EpochSamples<'a> {
    loader: &'a mut TokenLoader,
}

impl Iterator for EpochSamples<'_> {
    type Item = Result<Vec<u32>>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut out = Vec::new();
        match self.loader.next_sample_into(&mut out) {
            Ok(Some(_)) => Some(Ok(out)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}
