//! The MPT causal language model (llm-foundry `MPTForCausalLM` / `MPTModel`).
//!
//! `forward` runs embeddings -> blocks -> `norm_f` -> unembedding. Everything that depends only
//! on the input's shape and masks (ALiBi + causal + padding + sequence_id bias, RoPE tables,
//! position ids) is built once per forward and shared by all layers.

use burn::module::Module;
use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::alibi::gen_slopes;
use crate::attention::{Attention, LayerContext};
use crate::block::MptBlock;
use crate::cache::KvCache;
use crate::config::{FfnType, MptConfig};
use crate::ffn::Ffn;
use crate::linear::{Embedding, Linear, matmul_in, stored_below};
use crate::lm_loss::unembed_cross_entropy_sum;
use crate::lora::{LoraConfig, RowAdapters};
use crate::loss::{IGNORE_INDEX, token_cross_entropy};
use crate::mask::attention_bias;
use crate::norm::Norm;
use crate::rope::Rotary;
use crate::spec::{Builder, ParamSpec};

/// Input of a full (uncached) forward.
#[derive(Clone, Debug)]
pub struct MptInput<B: Backend> {
    /// Token ids, `[batch, seq]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, `true` = real token. Padded keys are never attended to, and position
    /// ids (learned or RoPE) count only real tokens, so left padding changes no real row.
    pub attention_mask: Option<Tensor<B, 2, Bool>>,
    /// `[batch, seq]` packed-document ids; used only when `attn_uses_sequence_id` is set, and
    /// then tokens attend only within their own document.
    pub sequence_id: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> MptInput<B> {
    /// Ids only: no padding, one document per row.
    pub fn new(input_ids: Tensor<B, 2, Int>) -> Self {
        Self {
            input_ids,
            attention_mask: None,
            sequence_id: None,
        }
    }
}

/// The model. Field names are the checkpoint's (see [`crate::spec`]).
#[derive(Module, Debug)]
pub struct Mpt<B: Backend> {
    /// Token embedding `[vocab, d_model]`; also the unembedding when tied.
    pub wte: Embedding<B>,
    /// Learned position embedding `[max_seq_len, d_model]` (`learned_pos_emb`).
    pub wpe: Option<Embedding<B>>,
    /// The transformer blocks.
    pub blocks: Vec<MptBlock<B>>,
    /// Final norm.
    pub norm_f: Norm<B>,
    /// Untied unembedding `[vocab, d_model]`.
    pub lm_head: Option<Linear<B>>,
    config: MptConfig,
    /// Mixed precision (see [`Mpt::with_compute_dtype`]); not a parameter, never saved.
    compute_dtype: Option<FloatDType>,
    /// The settings of the attached LoRA adapter (see [`crate::lora`]); the adapter's weights
    /// live in the linear layers.
    pub(crate) lora_config: Option<LoraConfig>,
}

impl<B: Backend> Mpt<B> {
    /// Builds the model, taking every tensor from `source` (which must return each spec's
    /// shape). Used by `init` and `hf::load`.
    pub(crate) fn build(
        config: &MptConfig,
        device: &B::Device,
        source: &mut dyn FnMut(&ParamSpec) -> TensorData,
    ) -> Self {
        let mut b = Builder::<B>::new(config, device, source);
        let c = config;
        let a = &c.attn_config;
        let blocks = (0..c.n_layers)
            .map(|i| {
                let p = format!("transformer.blocks.{i}");
                let has_qk = a.qk_ln || a.qk_gn;
                MptBlock {
                    norm_1: b.norm(&format!("{p}.norm_1"), c),
                    attn: Attention {
                        wqkv: b.linear(&format!("{p}.attn.Wqkv")),
                        q_ln: has_qk.then(|| b.norm(&format!("{p}.attn.q_ln"), c)),
                        k_ln: has_qk.then(|| b.norm(&format!("{p}.attn.k_ln"), c)),
                        out_proj: b.linear(&format!("{p}.attn.out_proj")),
                        n_heads: c.n_heads,
                        kv_n_heads: a.kv_n_heads,
                        head_dim: c.head_dim(),
                        clip_qkv: a.clip_qkv,
                        qk_gn: a.qk_gn,
                        softmax_scale: c.softmax_scale(),
                        softcap: a.attn_logit_softcapping,
                        attn_pdrop: a.attn_pdrop,
                    },
                    norm_2: b.norm(&format!("{p}.norm_2"), c),
                    ffn: Ffn {
                        up_proj: b.linear(&format!("{p}.ffn.up_proj")),
                        gate_proj: (c.ffn_config.ffn_type == FfnType::MptGlu)
                            .then(|| b.linear(&format!("{p}.ffn.gate_proj"))),
                        down_proj: b.linear(&format!("{p}.ffn.down_proj")),
                        activation: c.ffn_config.activation,
                    },
                    resid_pdrop: c.resid_pdrop,
                }
            })
            .collect();
        // Order of the calls is irrelevant; they follow the checkpoint order for readability.
        let wte = b.embedding("transformer.wte");
        let wpe = c.learned_pos_emb.then(|| b.embedding("transformer.wpe"));
        let norm_f = b.norm("transformer.norm_f", c);
        let lm_head = (!c.tie_word_embeddings).then(|| b.linear("lm_head"));
        Self {
            wte,
            wpe,
            blocks,
            norm_f,
            lm_head,
            config: config.clone(),
            compute_dtype: None,
            lora_config: None,
        }
    }

    /// Mixed precision: every matmul (forward and backward) runs in `dtype` (bf16 or f16) while
    /// the parameters, the residual stream, norms, softmax and loss stay f32, as under PyTorch
    /// autocast with fp32 master weights. `None` or f32: everything in f32.
    ///
    /// This is run-time configuration, not part of the model: it is not in the record, so a
    /// checkpoint is the same whatever precision trained it, and a model loaded from one
    /// computes in f32 until this is called again.
    pub fn with_compute_dtype(mut self, dtype: Option<FloatDType>) -> Self {
        self.compute_dtype = dtype.filter(|d| *d != FloatDType::F32);
        self
    }

    /// The dtype matmuls run in, if not f32 (see [`Mpt::with_compute_dtype`]).
    pub fn compute_dtype(&self) -> Option<FloatDType> {
        self.compute_dtype
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &MptConfig {
        &self.config
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.n_layers)
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - `input.input_ids`: `[batch, seq]` -> `[batch, seq, vocab_size]`
    ///
    /// # Panics
    /// If `seq > max_seq_len`, or the mask / sequence_id shapes differ from the ids'.
    pub fn forward(&self, input: MptInput<B>) -> Tensor<B, 3> {
        self.logits(self.forward_features(input))
    }

    /// The normalised final hidden states (`norm_f` output), before the unembedding; with
    /// [`Mpt::logits`] this lets a trainer compute the loss in chunks.
    ///
    /// # Shapes
    /// - returns `[batch, seq, d_model]`
    pub fn forward_features(&self, input: MptInput<B>) -> Tensor<B, 3> {
        self.run(
            input.input_ids,
            input.attention_mask,
            input.sequence_id,
            None,
            None,
            None,
        )
    }

    /// [`Mpt::forward`] where each batch row also gets the LoRA adapter `adapters` picks for it
    /// (or none), unmerged: many adapters served from one base in one batch (see
    /// [`crate::lora::bank`]).
    ///
    /// # Shapes
    /// - `input.input_ids`: `[batch, seq]` -> `[batch, seq, vocab_size]`
    ///
    /// # Panics
    /// As [`Mpt::forward`]; also if `adapters` was made for another batch size.
    pub fn forward_with_adapters(
        &self,
        input: MptInput<B>,
        adapters: &RowAdapters<B>,
    ) -> Tensor<B, 3> {
        let x = self.run(
            input.input_ids,
            input.attention_mask,
            input.sequence_id,
            None,
            None,
            Some(adapters),
        );
        self.logits(x)
    }

    /// Transformers' `output_hidden_states`: the embeddings, the output of each block but the
    /// last, and `norm_f` of the last block's output (`n_layers + 1` tensors).
    ///
    /// # Shapes
    /// - each `[batch, seq, d_model]`
    pub fn forward_hidden_states(&self, input: MptInput<B>) -> Vec<Tensor<B, 3>> {
        let mut hidden = Vec::with_capacity(self.config.n_layers + 1);
        let last = self.run(
            input.input_ids,
            input.attention_mask,
            input.sequence_id,
            None,
            Some(&mut hidden),
            None,
        );
        hidden.push(last);
        hidden
    }

    /// Incremental decoding: logits for the new tokens, attending also to everything in
    /// `cache`, which is then extended. Positions continue from `cache.len()`.
    ///
    /// `attention_mask` covers the new tokens only (`true` = real); the cache remembers earlier
    /// masks, so a left-padded prompt can be decoded with no mask afterwards.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, s]` -> `[batch, s, vocab_size]`
    ///
    /// # Panics
    /// If `cache.len() + s > max_seq_len`, the cache belongs to another model or batch size.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let x = self.run(input_ids, attention_mask, None, Some(cache), None, None);
        self.logits(x)
    }

    /// [`Mpt::forward_cached`] with a LoRA adapter (or none) per batch row, as
    /// [`Mpt::forward_with_adapters`]. The cache holds what each row's own adapter computed, so
    /// a row must keep its adapter for the life of the cache.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, s]` -> `[batch, s, vocab_size]`
    ///
    /// # Panics
    /// As [`Mpt::forward_cached`]; also if `adapters` was made for another batch size.
    pub fn forward_cached_with_adapters(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
        cache: &mut KvCache<B>,
        adapters: &RowAdapters<B>,
    ) -> Tensor<B, 3> {
        let x = self.run(
            input_ids,
            attention_mask,
            None,
            Some(cache),
            None,
            Some(adapters),
        );
        self.logits(x)
    }

    /// Unembedding, `logit_scale` and `final_logit_softcapping`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` -> `[batch, seq, vocab_size]`
    pub fn logits(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let mut logits = match &self.lm_head {
            Some(head) => head.forward_in(x, self.compute_dtype),
            None => {
                let [b, s, d] = x.dims();
                let w = self.wte.weight.val(); // [vocab, d]
                let v = w.dims()[0];
                // A bf16 table (frozen base under LoRA) multiplies in bf16.
                let compute = self.compute_dtype.or_else(|| stored_below(&w, &x));
                matmul_in(x.reshape([b * s, d]), w.transpose(), compute).reshape([b, s, v])
            }
        };
        let scale = self.config.logit_scale_value();
        if scale != 1.0 {
            logits = logits * scale;
        }
        if let Some(c) = self.config.final_logit_softcapping {
            logits = (logits / c).tanh() * c;
        }
        logits
    }

    /// `Σ` over the non-ignored targets ([`IGNORE_INDEX`]) of the next-token cross-entropy of
    /// [`Mpt::forward`]'s logits: `token_cross_entropy(self.forward(input), targets).sum()`,
    /// without ever holding the `[batch, seq, vocab]` logits or their gradient (see
    /// [`crate::lm_loss`]). The trainer's loss; with `final_logit_softcapping` or an
    /// `lm_head` bias it falls back to exactly that expression.
    ///
    /// # Shapes
    /// - `input.input_ids`, `targets`: `[batch, seq]` -> `[1]`
    ///
    /// # Panics
    /// As [`Mpt::forward`]; also if `targets` is not `[batch, seq]`.
    pub fn loss_sum(&self, input: MptInput<B>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        self.features_loss_sum(self.forward_features(input), targets)
    }

    /// [`Mpt::loss_sum`] from the normalised final hidden states `h`.
    fn features_loss_sum(&self, h: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        let fusable = self.config.final_logit_softcapping.is_none()
            && self
                .lm_head
                .as_ref()
                .is_none_or(|l| l.bias.is_none() && l.lora.is_none());
        if !fusable {
            return token_cross_entropy(self.logits(h), targets, IGNORE_INDEX).sum();
        }
        let w = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.wte.weight.val(),
        };
        let compute = self.compute_dtype.or_else(|| stored_below(&w, &h));
        unembed_cross_entropy_sum(
            h,
            w,
            targets,
            IGNORE_INDEX,
            self.config.logit_scale_value(),
            compute,
        )
    }

    /// The first step of a full forward done in steps: the embeddings (the input of block 0)
    /// and the context every block shares (attention bias, RoPE tables, compute dtype).
    ///
    /// `loss_sum(input, targets)` is `head_loss_sum(b_{n-1}(…b_0(x, ctx)…), targets)` with
    /// `(x, ctx) = embed(input)` and `b_i = blocks[i].forward(·, &ctx, None)`. A trainer that
    /// shards parameters or recomputes activations drives that block loop itself (FSDP,
    /// activation checkpointing); the model needs to know nothing about it.
    ///
    /// # Shapes
    /// - `input.input_ids`: `[batch, seq]` -> `[batch, seq, d_model]`
    pub fn embed(&self, input: MptInput<B>) -> (Tensor<B, 3>, LayerContext<B>) {
        self.prepare(
            input.input_ids,
            input.attention_mask,
            input.sequence_id,
            None,
        )
    }

    /// The last step of a forward done in steps (see [`Mpt::embed`]): `norm_f`, then
    /// [`Mpt::loss_sum`]'s loss, from the last block's output.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `targets`: `[batch, seq]` -> `[1]`
    pub fn head_loss_sum(&self, x: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        self.features_loss_sum(self.norm_f.forward(x), targets)
    }

    fn run(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
        sequence_id: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
        mut hidden: Option<&mut Vec<Tensor<B, 3>>>,
        row_lora: Option<&RowAdapters<B>>,
    ) -> Tensor<B, 3> {
        if let Some(r) = row_lora {
            let batch = ids.dims()[0];
            assert_eq!(
                r.batch(),
                batch,
                "the adapter selection covers {} rows, the input has {batch}",
                r.batch()
            );
        }
        let (mut x, ctx) = self.prepare(ids, attention_mask, sequence_id, cache.as_deref_mut());
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(h) = hidden.as_deref_mut() {
                h.push(x.clone());
            }
            let kv = cache.as_deref_mut().map(|k| k.layer(i));
            x = match row_lora {
                Some(rows) => {
                    let block_ctx = LayerContext {
                        lora: Some(rows.block(i)),
                        ..ctx.clone()
                    };
                    block.forward(x, &block_ctx, kv)
                }
                None => block.forward(x, &ctx, kv),
            };
        }
        if let Some(k) = cache {
            let [_, s, _] = x.dims();
            k.advance(s);
        }
        self.norm_f.forward(x)
    }

    /// Embeddings plus everything that depends only on the input's shape and masks.
    fn prepare(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Bool>>,
        sequence_id: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> (Tensor<B, 3>, LayerContext<B>) {
        let c = &self.config;
        let device = ids.device();
        let [batch, s] = ids.dims();
        let past = cache.as_ref().map_or(0, |k| k.len());
        assert!(
            past + s <= c.max_seq_len,
            "cannot forward {s} tokens after {past} cached: max_seq_len is {}",
            c.max_seq_len
        );
        if let Some(m) = &attention_mask {
            assert_eq!(
                m.dims(),
                [batch, s],
                "attention_mask must have the ids' shape"
            );
        }
        if let Some(k) = cache.as_deref_mut() {
            k.begin(c.n_layers, batch);
        }
        // Key mask over all keys (cached + new); `None` when nothing is padded.
        let key_mask = match cache {
            Some(k) => k.extend_mask(attention_mask.clone(), batch, s, &device),
            None => attention_mask.clone(),
        };

        let mut x = self.wte.forward(ids);
        let needs_positions = self.wpe.is_some() || c.attn_config.rope;
        let positions = match (&key_mask, needs_positions) {
            (_, false) => None,
            // Shared positions past..past + s.
            (None, true) => Some(Positions::Range(past)),
            (Some(full), true) => {
                // Real tokens before each new token: cumsum over the full mask, minus itself.
                let full = full.clone().int();
                let new = full.clone().narrow(1, past, s);
                Some(Positions::PerToken(full.cumsum(1).narrow(1, past, s) - new))
            }
        };
        if let Some(wpe) = &self.wpe {
            x = x + match positions
                .as_ref()
                .expect("positions are built when wpe exists")
            {
                Positions::Range(start) => {
                    wpe.weight.val().narrow(0, *start, s).unsqueeze_dim::<3>(0)
                }
                Positions::PerToken(p) => wpe.forward(p.clone()),
            };
        }
        let frac = c.embedding_fraction;
        if frac != 1.0 {
            // GLM-130B's embedding gradient shrink: same forward, 1-frac of the gradient cut.
            x = x.clone() * frac + x.detach() * (1.0 - frac);
        }
        x = Dropout { prob: c.emb_pdrop }.forward(x);

        let a = &c.attn_config;
        let rotary = a.rope.then(|| {
            let hd = c.head_dim();
            match positions.as_ref().expect("positions are built with rope") {
                Positions::Range(start) => {
                    Rotary::range(*start, s, hd, a.rope_theta, a.rope_scaling_factor, &device)
                }
                Positions::PerToken(p) => {
                    Rotary::new(p.clone().float(), hd, a.rope_theta, a.rope_scaling_factor)
                }
            }
        });
        let slopes = a.alibi.then(|| gen_slopes(c.n_heads, a.alibi_bias_max));
        let sequence_id = sequence_id.filter(|_| a.attn_uses_sequence_id);
        if let Some(seq) = &sequence_id {
            assert_eq!(
                seq.dims(),
                [batch, s],
                "sequence_id must have the ids' shape"
            );
        }
        let bias = attention_bias::<B>(
            c.n_heads,
            slopes.as_deref(),
            s,
            past,
            key_mask,
            sequence_id,
            &device,
        );
        let ctx = LayerContext {
            bias,
            rotary,
            compute: self.compute_dtype,
            lora: None,
        };
        (x, ctx)
    }
}

/// Position ids of the new tokens.
enum Positions<B: Backend> {
    /// `start..start + s` for every row.
    Range(usize),
    /// `[batch, s]`, counting only real tokens.
    PerToken(Tensor<B, 2, Int>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::token_cross_entropy;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::DType;

    type AD = Autodiff<Flex>;

    fn tiny<Bk: Backend>() -> Mpt<Bk> {
        let json = r#"{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 96, "max_seq_len": 16,
                       "attn_config": {"alibi": true}, "no_bias": true}"#;
        MptConfig::from_json_str(json, "test")
            .unwrap()
            .init::<Bk>(&Default::default(), 5)
    }

    fn batch<Bk: Backend>() -> (Tensor<Bk, 2, Int>, Tensor<Bk, 2, Int>) {
        let dev = Default::default();
        let ids: Vec<i64> = (0..2 * 12).map(|i| (i * 37 % 96) as i64).collect();
        let mut targets: Vec<i64> = (0..2 * 12).map(|i| ((i + 1) * 37 % 96) as i64).collect();
        targets[11] = IGNORE_INDEX;
        targets[23] = IGNORE_INDEX;
        (
            Tensor::from_data(TensorData::new(ids, [2, 12]), &dev),
            Tensor::from_data(TensorData::new(targets, [2, 12]), &dev),
        )
    }

    /// Collects the dtype of every parameter.
    struct Dtypes(Vec<DType>);
    impl<Bk: Backend> ModuleVisitor<Bk> for Dtypes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
            self.0.push(param.val().dtype());
        }
    }

    #[test]
    fn the_forward_in_steps_is_the_forward_bit_for_bit_values_and_gradients() {
        let (ids, targets) = batch::<AD>();
        let model = tiny::<AD>();
        let whole = model.loss_sum(MptInput::new(ids.clone()), targets.clone());
        let (mut x, ctx) = model.embed(MptInput::new(ids));
        for block in &model.blocks {
            x = block.forward(x, &ctx, None);
        }
        let steps = model.head_loss_sum(x, targets);
        assert_eq!(
            whole.clone().into_data().to_vec::<f32>().unwrap(),
            steps.clone().into_data().to_vec::<f32>().unwrap()
        );
        let (g1, g2) = (whole.backward(), steps.backward());
        let grad = |g: &<AD as burn::tensor::backend::AutodiffBackend>::Gradients| {
            let w = model.blocks[1].ffn.up_proj.weight.grad(g).unwrap();
            w.into_data().to_vec::<f32>().unwrap()
        };
        assert_eq!(grad(&g1), grad(&g2));
    }

    #[test]
    fn loss_sum_equals_summed_token_cross_entropy() {
        let model = tiny::<Flex>();
        let (ids, targets) = batch::<Flex>();
        let logits = model.forward(MptInput::new(ids.clone()));
        let want = token_cross_entropy(logits, targets.clone(), IGNORE_INDEX)
            .sum()
            .into_scalar();
        let got = model.loss_sum(MptInput::new(ids), targets).into_scalar();
        assert!((got - want).abs() < 1e-5 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn bf16_compute_stays_close_to_f32() {
        let model = tiny::<Flex>();
        let (ids, _) = batch::<Flex>();
        let f32_logits = model.forward(MptInput::new(ids.clone()));
        let bf16 = model.with_compute_dtype(Some(FloatDType::BF16));
        assert_eq!(bf16.compute_dtype(), Some(FloatDType::BF16));
        let bf16_logits = bf16.forward(MptInput::new(ids));
        assert_eq!(bf16_logits.dtype(), DType::F32, "logits come back in f32");
        let scale = f32_logits.clone().abs().max().into_scalar();
        let diff = (bf16_logits - f32_logits).abs().max().into_scalar();
        // bf16 keeps 8 bits of mantissa: 2^-8 relative per product, a few products deep.
        assert!(diff > 0.0, "the bf16 path must actually round");
        assert!(
            diff < 0.05 * scale,
            "bf16 logits off by {diff} (scale {scale})"
        );
    }

    #[test]
    fn bf16_gradients_land_on_f32_parameters_close_to_f32_gradients() {
        let (ids, targets) = batch::<AD>();
        let run = |dtype: Option<FloatDType>| {
            let model = tiny::<AD>().with_compute_dtype(dtype);
            let loss = model.loss_sum(MptInput::new(ids.clone()), targets.clone());
            let grads = loss.backward();
            let g = model.wte.weight.grad(&grads).expect("wte gradient");
            let up = model.blocks[0]
                .ffn
                .up_proj
                .weight
                .grad(&grads)
                .expect("up_proj gradient");
            let mut dtypes = Dtypes(Vec::new());
            model.visit(&mut dtypes);
            (g, up, dtypes.0)
        };
        let (g32, up32, _) = run(None);
        let (g16, up16, dtypes) = run(Some(FloatDType::BF16));
        assert!(
            dtypes.iter().all(|d| *d == DType::F32),
            "parameters stay f32: {dtypes:?}"
        );
        assert_eq!(g16.dtype(), DType::F32);
        assert_eq!(up16.dtype(), DType::F32);
        for (a, b) in [(g16, g32), (up16, up32)] {
            let scale = b.clone().abs().max().into_scalar();
            let diff = (a - b).abs().max().into_scalar();
            assert!(
                diff < 0.05 * scale,
                "bf16 gradient off by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn compute_dtype_is_not_part_of_the_record() {
        let model = tiny::<Flex>().with_compute_dtype(Some(FloatDType::BF16));
        let fresh = tiny::<Flex>();
        let reloaded = fresh.load_record(model.clone().into_record());
        assert_eq!(reloaded.compute_dtype(), None);
        assert_eq!(
            model
                .clone()
                .with_compute_dtype(Some(FloatDType::F32))
                .compute_dtype(),
            None
        );
    }
}
