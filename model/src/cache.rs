//! The KV cache: explicit inference state, passed to [`crate::Mpt::forward_cached`] as
//! `&mut`, never stored in the model (as llm-foundry's `past_key_values`).
//!
//! Per layer it holds the keys (after RoPE) and values of every token seen, before the GQA
//! repeat; plus the key padding mask of those tokens, so a left-padded prompt keeps masking
//! its padding during decoding. The next position is `len()`.

use burn::prelude::*;

use crate::attention::LayerKv;

mod rows;

/// Cached keys/values for a batch of sequences.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerKv<B>>>,
    /// `[batch, len]`, `true` = real token; `None` while nothing was padded.
    key_mask: Option<Tensor<B, 2, Bool>>,
    len: usize,
    batch: Option<usize>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `n_layers` blocks (see also `Mpt::new_cache`).
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
            key_mask: None,
            len: 0,
            batch: None,
        }
    }

    /// Tokens cached so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets everything (keeps the layer count).
    pub fn clear(&mut self) {
        let n = self.layers.len();
        *self = Self::new(n);
    }

    /// Checks that this forward fits the cache.
    pub(crate) fn begin(&mut self, n_layers: usize, batch: usize) {
        assert_eq!(
            self.layers.len(),
            n_layers,
            "KV cache was made for {} layers, model has {n_layers}",
            self.layers.len()
        );
        match self.batch {
            Some(b) => assert_eq!(b, batch, "KV cache holds batch size {b}, input has {batch}"),
            None => self.batch = Some(batch),
        }
    }

    /// Appends the new tokens' mask and returns the mask over all keys (`None` if none padded).
    pub(crate) fn extend_mask(
        &mut self,
        new: Option<Tensor<B, 2, Bool>>,
        batch: usize,
        s: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 2, Bool>> {
        let all_real = |n: usize| Tensor::<B, 2, Int>::ones([batch, n], device).bool();
        let full = match (self.key_mask.take(), new) {
            (None, None) => None,
            (Some(old), None) => Some(Tensor::cat(vec![old, all_real(s)], 1)),
            (None, Some(new)) if self.len == 0 => Some(new),
            (None, Some(new)) => Some(Tensor::cat(vec![all_real(self.len), new], 1)),
            (Some(old), Some(new)) => Some(Tensor::cat(vec![old, new], 1)),
        };
        self.key_mask = full.clone();
        full
    }

    /// The slot of layer `i`.
    pub(crate) fn layer(&mut self, i: usize) -> &mut Option<LayerKv<B>> {
        &mut self.layers[i]
    }

    /// Records that `s` tokens were added to every layer.
    pub(crate) fn advance(&mut self, s: usize) {
        self.len += s;
    }
}
