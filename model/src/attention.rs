//! MPT self-attention (llm-foundry `GroupedQueryAttention` with `attn_impl: torch`): one fused
//! `Wqkv`, `clip_qkv` on its output before the split, optional `qk_ln`/`qk_gn`, RoPE, GQA/MQA,
//! and [`attention`], the composed computation that [`kernels::attention`] fuses where it can.

use burn::module::Module;
use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::kernels;
use crate::linear::{Linear, matmul_in};
use crate::lora::{BlockRows, TargetModule};
use crate::mask::AttnBias;
use crate::norm::Norm;
use crate::rope::Rotary;

/// Scalar settings of [`attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttnOptions {
    /// Multiplies `q k^T` (llm-foundry `softmax_scale`).
    pub scale: f64,
    /// `c * tanh(scores / c)` before the bias (`attn_logit_softcapping`).
    pub softcap: Option<f64>,
    /// Dropout on the probabilities; active only on autodiff backends (training).
    pub dropout: f64,
    /// Mixed precision: the dtype of the two products (the softmax stays f32).
    pub compute: Option<FloatDType>,
}

/// `softmax(q k^T * scale + bias) v`, the whole attention computation.
///
/// `bias` already holds ALiBi and every mask (see [`crate::mask`]); this is the function a
/// fused (flash) kernel replaces. The materialised path here works on every backend and under
/// autodiff, and is what llm-foundry's `scaled_multihead_dot_product_attention` computes.
///
/// # Shapes
/// - `q`: `[batch, heads, s_q, head_dim]`
/// - `k`, `v`: `[batch, heads, s_k, head_dim]`
/// - `bias`: broadcastable to `[batch, heads, s_q, s_k]`
/// - returns `[batch, heads, s_q, head_dim]`
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    opts: &AttnOptions,
) -> Tensor<B, 4> {
    // The scale is applied to the scores (as llm-foundry and transformers do), inside the fused
    // softmax when there is no soft-capping.
    let scores = matmul_in(q, k.swap_dims(2, 3), opts.compute);
    let probs = match opts.softcap {
        Some(c) => {
            let capped = ((scores * opts.scale) / c).tanh() * c;
            crate::kernels::softmax_with_bias(capped, bias, 1.0)
        }
        // One fused node on Flex (scale, bias add, softmax); the composed ops elsewhere.
        None => crate::kernels::softmax_with_bias(scores, bias, opts.scale),
    };
    let probs = if opts.dropout > 0.0 {
        Dropout { prob: opts.dropout }.forward(probs)
    } else {
        probs
    };
    matmul_in(probs, v, opts.compute)
}

/// Per-forward inputs shared by every layer.
#[derive(Clone, Debug)]
pub struct LayerContext<B: Backend> {
    /// The attention bias (ALiBi + masks) by its parts; [`AttnBias::dense`] is the tensor
    /// `[batch or 1, heads, s_q, s_k]` the composed path adds.
    pub bias: AttnBias<B>,
    /// RoPE tables for the new tokens.
    pub rotary: Option<Rotary<B>>,
    /// Mixed precision: the dtype every matmul runs in (`None`: f32 throughout).
    pub compute: Option<FloatDType>,
    /// Per-row LoRA adapters of this block (serving many adapters in one batch; see
    /// [`crate::lora::RowAdapters`]); `None`: only the adapters attached to the layers.
    pub lora: Option<BlockRows<B>>,
}

impl<B: Backend> LayerContext<B> {
    /// `y = layer(x)` plus the per-row adapters' updates on `target`, if any.
    ///
    /// # Shapes
    /// - `x`: `[batch, s, d_in]`, `y`: `[batch, s, d_out]` -> `[batch, s, d_out]`
    pub(crate) fn add_row_lora(
        &self,
        target: TargetModule,
        x: &Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match &self.lora {
            Some(rows) => rows
                .down(target, x, self.compute)
                .add_to(y, None, self.compute),
            None => y,
        }
    }
}

/// Keys and values of one layer for the tokens seen so far (after RoPE, before GQA repeat).
#[derive(Clone, Debug)]
pub struct LayerKv<B: Backend> {
    /// `[batch, kv_heads, seen, head_dim]`.
    pub k: Tensor<B, 4>,
    /// `[batch, kv_heads, seen, head_dim]`.
    pub v: Tensor<B, 4>,
}

/// The attention sub-layer of an MPT block.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Fused query/key/value projection (checkpoint name `Wqkv`), `[(h + 2 kv) hd, d_model]`.
    pub wqkv: Linear<B>,
    /// Query norm (`qk_ln`: over `d_model`; `qk_gn`: over `head_dim`).
    pub q_ln: Option<Norm<B>>,
    /// Key norm (`qk_ln`: over `kv_heads * head_dim`; `qk_gn`: over `head_dim`).
    pub k_ln: Option<Norm<B>>,
    /// Output projection, `[d_model, d_model]` (a residual projection for init).
    pub out_proj: Linear<B>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub kv_n_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Clamp bound for the fused projection's output.
    pub clip_qkv: Option<f64>,
    /// The q/k norms are per head (`qk_gn`) rather than over the full vector (`qk_ln`).
    pub qk_gn: bool,
    /// Softmax scale.
    pub softmax_scale: f64,
    /// Attention logit soft-capping.
    pub softcap: Option<f64>,
    /// Attention-probability dropout.
    pub attn_pdrop: f64,
}

impl<B: Backend> Attention<B> {
    /// Attends over the new tokens and, when `kv` holds earlier ones, over those too; `kv` is
    /// then extended with the new keys and values.
    ///
    /// # Shapes
    /// - `x`: `[batch, s, d_model]` (already normalised) -> `[batch, s, d_model]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &LayerContext<B>,
        kv: Option<&mut Option<LayerKv<B>>>,
    ) -> Tensor<B, 3> {
        let [b, s, d_model] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.kv_n_heads, self.head_dim);
        // LoRA: each adapter's first product, computed once for the three blocks below.
        let own_lora = self.wqkv.lora.as_ref().map(|l| {
            l.down(x.clone().reshape([b * s, d_model]), ctx.compute) // [b s, r]
        });
        let row_lora = ctx
            .lora
            .as_ref()
            .map(|rows| rows.down(TargetModule::Wqkv, &x, ctx.compute));
        // The fused Wqkv is applied as three products over row blocks of its weight, so q, k
        // and v come out contiguous and their gradients need no `[b, s, (h + 2 kvh) hd]`
        // scatter (the backward of narrowing one big output).
        let project = |start: usize, len: usize| {
            let y = self
                .wqkv
                .forward_rows_in(x.clone(), start, len, ctx.compute, own_lora.clone()); // [b, s, len]
            let y = match &row_lora {
                Some(r) => r.add_to(y, Some((start, len)), ctx.compute),
                None => y,
            };
            // After the adapters, as transformers clamps the (PEFT-wrapped) Wqkv's output.
            match self.clip_qkv {
                Some(c) => y.clamp(-c, c),
                None => y,
            }
        };
        let q = project(0, h * hd);
        let k = project(h * hd, kvh * hd);
        let v = project((h + kvh) * hd, kvh * hd);
        let (q, k, v) = match (&self.q_ln, &self.k_ln) {
            // qk_ln normalises the whole query / key vector, before the split into heads.
            (Some(qn), Some(kn)) if !self.qk_gn => (
                qn.forward(q).reshape([b, s, h, hd]),
                kn.forward(k).reshape([b, s, kvh, hd]),
                v.reshape([b, s, kvh, hd]),
            ),
            (qn, kn) => {
                let q = q.reshape([b, s, h, hd]);
                let k = k.reshape([b, s, kvh, hd]);
                // qk_gn: one norm per head, over head_dim.
                let q = match qn {
                    Some(n) => n.forward(q),
                    None => q,
                };
                let k = match kn {
                    Some(n) => n.forward(k),
                    None => k,
                };
                (q, k, v.reshape([b, s, kvh, hd]))
            }
        };
        // Training: the whole attention as one fused kernel, in this layout.
        let plain = ctx.rotary.is_none()
            && kv.is_none()
            && self.softcap.is_none()
            && self.attn_pdrop == 0.0;
        let (q, k, v) = if plain {
            match kernels::attention(q, k, v, &ctx.bias, self.softmax_scale, ctx.compute) {
                Ok(out) => return self.project_out(out.reshape([b, s, h * hd]), ctx),
                Err(inputs) => inputs,
            }
        } else {
            (q, k, v)
        };
        // [b, heads, s, hd], contiguous on the CPU (see `kernels::swap_dims_12`)
        let mut q = kernels::swap_dims_12(q);
        let mut k = kernels::swap_dims_12(k);
        let mut v = kernels::swap_dims_12(v);
        if let Some(rot) = &ctx.rotary {
            q = rot.apply(q);
            k = rot.apply(k);
        }
        if let Some(slot) = kv {
            if let Some(past) = slot.take() {
                k = Tensor::cat(vec![past.k, k], 2);
                v = Tensor::cat(vec![past.v, v], 2);
            }
            *slot = Some(LayerKv {
                k: k.clone(),
                v: v.clone(),
            });
        }
        if kvh != h {
            // GQA/MQA: query head j uses kv head j / (h / kvh), as llm-foundry's
            // repeat_kv_for_gqa. [b, kvh, s_k, hd] -> [b, h, s_k, hd]
            let rep = h / kvh;
            let s_k = k.dims()[2];
            k = k
                .unsqueeze_dim::<5>(2)
                .expand([b, kvh, rep, s_k, hd])
                .reshape([b, h, s_k, hd]);
            v = v
                .unsqueeze_dim::<5>(2)
                .expand([b, kvh, rep, s_k, hd])
                .reshape([b, h, s_k, hd]);
        }
        let opts = AttnOptions {
            scale: self.softmax_scale,
            softcap: self.softcap,
            dropout: self.attn_pdrop,
            compute: ctx.compute,
        };
        let out = attention(q, k, v, ctx.bias.dense(), &opts); // [b, h, s, hd]
        self.project_out(kernels::swap_dims_12(out).reshape([b, s, h * hd]), ctx)
    }

    /// `out_proj` of the heads' concatenated outputs, with any per-row adapters.
    ///
    /// # Shapes
    /// - `heads`: `[batch, s, d_model]` -> `[batch, s, d_model]`
    fn project_out(&self, heads: Tensor<B, 3>, ctx: &LayerContext<B>) -> Tensor<B, 3> {
        let y = self.out_proj.forward_in(heads.clone(), ctx.compute);
        ctx.add_row_lora(TargetModule::OutProj, &heads, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn attention_matches_hand_computed_softmax() {
        let dev = Default::default();
        // One head, two keys; q = [1, 0], k = [[1, 0], [0, 1]], v = [[1, 2], [3, 4]].
        let q = Tensor::<Flex, 4>::from_floats([[[[1.0, 0.0]]]], &dev);
        let k = Tensor::<Flex, 4>::from_floats([[[[1.0, 0.0], [0.0, 1.0]]]], &dev);
        let v = Tensor::<Flex, 4>::from_floats([[[[1.0, 2.0], [3.0, 4.0]]]], &dev);
        let bias = Tensor::<Flex, 4>::from_floats([[[[0.0, 0.5]]]], &dev);
        let opts = AttnOptions {
            scale: 2.0,
            softcap: None,
            dropout: 0.0,
            compute: None,
        };
        let out = attention(q, k, v, Some(bias), &opts)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        // scores = [2, 0.5]
        let (e0, e1) = (2f64.exp(), 0.5f64.exp());
        let (p0, p1) = (e0 / (e0 + e1), e1 / (e0 + e1));
        assert!((out[0] as f64 - (p0 + 3.0 * p1)).abs() < 1e-6);
        assert!((out[1] as f64 - (2.0 * p0 + 4.0 * p1)).abs() < 1e-6);
    }

    #[test]
    fn attention_agrees_with_burns_fused_op() {
        // burn's own attention op (the fused-kernel interface) with the same bias must agree.
        let dev = Default::default();
        <Flex as Backend>::seed(&dev, 7);
        let shape = [2, 3, 5, 4];
        let q =
            Tensor::<Flex, 4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let k =
            Tensor::<Flex, 4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let v =
            Tensor::<Flex, 4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let bias = crate::mask::attention_bias::<Flex>(
            3,
            Some(&[0.5, 0.25, 0.125]),
            5,
            0,
            None,
            None,
            &dev,
        );
        let opts = AttnOptions {
            scale: 0.3,
            softcap: None,
            dropout: 0.0,
            compute: None,
        };
        let ours = attention(q.clone(), k.clone(), v.clone(), bias.clone(), &opts);
        let fused = burn::tensor::module::attention(
            q,
            k,
            v,
            None,
            bias,
            burn::tensor::ops::AttentionModuleOptions {
                scale: Some(0.3),
                softcap: None,
                is_causal: false,
            },
        );
        let diff = (ours - fused).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }
}
