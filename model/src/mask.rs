//! The additive attention bias of one forward: ALiBi, the causal mask, key padding and
//! `sequence_id` separation folded into one tensor, built once and shared by every layer
//! (llm-foundry's `MPTModel._attn_bias` does the same).
//!
//! [`AttnBias`] describes that bias by its parts (slopes, masks, positions). Fused kernels compute
//! it tile by tile from the parts; only the composed path expands it into the dense
//! `[batch or 1, heads, s_q, s_k]` tensor ([`AttnBias::dense`], built once, on first use), so a
//! long-sequence training step never holds that O(seq²) tensor.
//!
//! Masked entries hold half the dtype's most negative finite value rather than `-inf`: a fully
//! masked row (a left-padding query) then yields a uniform softmax instead of NaN, and NaN in a
//! padded row would reach real rows through `0 * NaN` in the next layer's value product. Half,
//! so that adding a score cannot overflow to `-inf` (llm-foundry uses `finfo.min` in fp32).

use std::sync::{Arc, OnceLock};

use burn::prelude::*;

use crate::alibi::alibi_bias;

/// The attention bias of one forward, by its parts: ALiBi slopes, the causal mask (always on:
/// query `i` sees keys up to its own position `past + i`), key padding and `sequence_id`
/// separation. Shared by every layer.
#[derive(Clone, Debug)]
pub struct AttnBias<B: Backend> {
    /// Query heads.
    pub n_heads: usize,
    /// ALiBi slopes, one per head (see [`crate::alibi::gen_slopes`]), or `None` without ALiBi.
    pub slopes: Option<Vec<f64>>,
    /// New queries.
    pub s_q: usize,
    /// Cached keys before them (the keys are `past + s_q`).
    pub past: usize,
    /// `[batch, past + s_q]`, `true` for real tokens (absent: all real).
    pub key_mask: Option<Tensor<B, 2, Bool>>,
    /// `[batch, s_q]` packed-document ids (only without a cache, `past == 0`).
    pub sequence_id: Option<Tensor<B, 2, Int>>,
    device: B::Device,
    /// [`attention_bias`] of the above, built on first use and shared by the clones (a block
    /// with its own per-row adapters gets a clone of the context).
    dense: Arc<OnceLock<Option<Tensor<B, 4>>>>,
}

impl<B: Backend> AttnBias<B> {
    /// The bias of `s_q` new queries of `n_heads` heads over `past + s_q` keys.
    ///
    /// # Panics
    /// If `sequence_id` is given with a cache (`past > 0`), where it is not defined.
    pub fn new(
        n_heads: usize,
        slopes: Option<Vec<f64>>,
        s_q: usize,
        past: usize,
        key_mask: Option<Tensor<B, 2, Bool>>,
        sequence_id: Option<Tensor<B, 2, Int>>,
        device: &B::Device,
    ) -> Self {
        assert!(
            sequence_id.is_none() || past == 0,
            "sequence_id masking is only defined without a KV cache"
        );
        Self {
            n_heads,
            slopes,
            s_q,
            past,
            key_mask,
            sequence_id,
            device: device.clone(),
            dense: Arc::new(OnceLock::new()),
        }
    }

    /// The bias as one tensor, `[batch or 1, n_heads, s_q, past + s_q]`, or `None` when nothing
    /// needs masking or biasing (see [`attention_bias`]). Built on the first call, then shared.
    pub fn dense(&self) -> Option<Tensor<B, 4>> {
        self.dense
            .get_or_init(|| {
                attention_bias(
                    self.n_heads,
                    self.slopes.as_deref(),
                    self.s_q,
                    self.past,
                    self.key_mask.clone(),
                    self.sequence_id.clone(),
                    &self.device,
                )
            })
            .clone()
    }

    /// Whether [`AttnBias::dense`] has built the tensor (tests check the fused path never does).
    #[cfg(test)]
    pub(crate) fn dense_is_built(&self) -> bool {
        self.dense.get().is_some()
    }
}

/// The value written into masked positions for a tensor of `dtype`.
pub(crate) fn mask_value(dtype: burn::tensor::DType) -> f64 {
    dtype
        .finfo()
        .map(|f| 0.5 * f.min)
        .unwrap_or(0.5 * f32::MIN as f64)
}

/// Builds the bias for `s_q` new queries of `n_heads` heads attending to `past + s_q` keys.
///
/// - `slopes`: ALiBi slopes, or `None` without ALiBi.
/// - `key_mask`: `[batch, past + s_q]`, `true` for real tokens (absent: all real).
/// - `sequence_id`: `[batch, s_q]` packed-document ids (only without a cache, `past == 0`).
///
/// Returns `None` when nothing needs masking or biasing (a single query with no padding and
/// no ALiBi).
///
/// The result always has all heads (`[batch or 1, n_heads, s_q, past + s_q]`, contiguous), so
/// that every layer's `scores + bias` is a same-shape or shared-row add.
///
/// # Shapes
/// - returns `[batch or 1, n_heads, s_q, past + s_q]`
pub(crate) fn attention_bias<B: Backend>(
    n_heads: usize,
    slopes: Option<&[f64]>,
    s_q: usize,
    past: usize,
    key_mask: Option<Tensor<B, 2, Bool>>,
    sequence_id: Option<Tensor<B, 2, Int>>,
    device: &B::Device,
) -> Option<Tensor<B, 4>> {
    let s_k = past + s_q;
    let batch = key_mask
        .as_ref()
        .map(|m| m.dims()[0])
        .or_else(|| sequence_id.as_ref().map(|s| s.dims()[0]))
        .unwrap_or(1);
    let shape = [batch, 1, s_q, s_k];

    let mut masked: Option<Tensor<B, 4, Bool>> = None;
    let mut add = |m: Tensor<B, 4, Bool>| {
        masked = Some(match masked.take() {
            Some(prev) => prev.bool_or(m),
            None => m,
        });
    };
    if s_q > 1 {
        // Query i (absolute position past + i) sees keys 0..=past + i.
        let rows =
            Tensor::<B, 1, Int>::arange(past as i64..s_k as i64, device).reshape([1, 1, s_q, 1]);
        let cols = Tensor::<B, 1, Int>::arange(0..s_k as i64, device).reshape([1, 1, 1, s_k]);
        add(cols.expand(shape).greater(rows.expand(shape)));
    }
    if let Some(m) = key_mask {
        add(m.bool_not().reshape([batch, 1, 1, s_k]).expand(shape));
    }
    if let Some(seq) = sequence_id {
        assert_eq!(
            past, 0,
            "sequence_id masking is only defined without a KV cache"
        );
        let q = seq.clone().reshape([batch, 1, s_q, 1]).expand(shape);
        let k = seq.reshape([batch, 1, 1, s_k]).expand(shape);
        add(q.not_equal(k));
    }

    let alibi = slopes.map(|s| alibi_bias::<B>(s, s_q, past, device));
    match (masked, alibi) {
        (None, None) => None,
        (None, Some(a)) => Some(a),
        (Some(m), alibi) => {
            let full = [batch, n_heads, s_q, s_k];
            let zeros = Tensor::<B, 4>::zeros(full, device);
            let fill = mask_value(zeros.dtype());
            let base = match alibi {
                Some(a) => zeros + a,
                None => zeros,
            };
            Some(base.mask_fill(m.expand(full), fill))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn is_masked(v: f32) -> bool {
        v < -1e30
    }

    #[test]
    fn causal_bias_masks_future_keys_with_a_cache_offset() {
        let dev = Default::default();
        let b = attention_bias::<Flex>(1, None, 2, 3, None, None, &dev).unwrap();
        assert_eq!(b.dims(), [1, 1, 2, 5]);
        let v = b.into_data().to_vec::<f32>().unwrap();
        let m: Vec<bool> = v.into_iter().map(is_masked).collect();
        assert_eq!(
            m,
            vec![
                false, false, false, false, true, false, false, false, false, false
            ]
        );
    }

    #[test]
    fn key_padding_and_sequence_ids_are_masked() {
        let dev = Default::default();
        let key_mask = Tensor::<Flex, 2, Bool>::from_data([[false, true, true]], &dev);
        let seq = Tensor::<Flex, 2, Int>::from_data([[0, 0, 1]], &dev);
        let b = attention_bias::<Flex>(1, None, 3, 0, Some(key_mask), Some(seq), &dev).unwrap();
        let m: Vec<bool> = b
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(is_masked)
            .collect();
        #[rustfmt::skip]
        let want = vec![
            true, true, true,   // query 0 sees only key 0, which is padding
            true, false, true,  // query 1: key 0 padded, key 2 in the future
            true, true, false,  // query 2: other document
        ];
        assert_eq!(m, want);
    }

    #[test]
    fn alibi_alone_is_returned_unmasked_for_one_query() {
        let dev = Default::default();
        let b = attention_bias::<Flex>(1, Some(&[0.5]), 1, 2, None, None, &dev).unwrap();
        assert_eq!(
            b.into_data().to_vec::<f32>().unwrap(),
            vec![-1.0, -0.5, 0.0]
        );
        assert!(attention_bias::<Flex>(1, None, 1, 2, None, None, &dev).is_none());
    }
}
