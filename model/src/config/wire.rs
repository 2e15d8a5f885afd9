//! The `config.json` schema: serde structs for every key of transformers' `MptConfig` and
//! llm-foundry's `MPTConfig`, all optional ([`super::resolve`] fills in llm-foundry's defaults).
//!
//! Keys tessera reads but deliberately ignores (they change nothing numerically):
//! `architectures`, `auto_map`, `torch_dtype`, `dtype`, `transformers_version`, `_name_or_path`,
//! `initializer_range` (transformers' own init, unused by MPT's forward), `use_cache`, `verbose`,
//! `init_device`, `tokenizer_name`, `bos_token_id`, `eos_token_id`, `pad_token_id`,
//! `return_dict`, `output_hidden_states`, `output_attentions`, `torchscript`, `name`, `loss_fn`,
//! `use_pad_tok_in_ffn` (speed only), `attn_config.attn_impl`, `attn_config.model_type`,
//! `attn_config.rope_dail_config.{pos_idx_in_fp32,xpos_scale_base}` and `init_config.verbose`.
//! `model_type`, if present, must be `mpt`. Any other key is an error naming its path.
//!
//! Settings llm-foundry has but tessera does not implement (`fused_qkv: false`,
//! `sliding_window_size`, `block_overrides`, `prefix_lm: true`, MoE / TransformerEngine FFNs,
//! xpos and dynamic-NTK RoPE, `kv_dim`, `nope`, temperature tuning, a `head_dim` other than
//! `d_model / n_heads`) are reported as [`ConfigError::Unsupported`], never silently dropped.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Wire {
    pub(super) d_model: Option<usize>,
    pub(super) n_heads: Option<usize>,
    pub(super) n_layers: Option<usize>,
    pub(super) head_dim: Option<usize>,
    pub(super) expansion_ratio: Option<f64>,
    pub(super) max_seq_len: Option<usize>,
    pub(super) vocab_size: Option<usize>,
    pub(super) resid_pdrop: Option<f64>,
    pub(super) emb_pdrop: Option<f64>,
    pub(super) learned_pos_emb: Option<bool>,
    pub(super) attn_config: Option<WireAttn>,
    pub(super) ffn_config: Option<WireFfn>,
    pub(super) init_config: Option<WireInit>,
    pub(super) logit_scale: Option<WireLogitScale>,
    pub(super) no_bias: Option<bool>,
    pub(super) attention_bias: Option<bool>,
    pub(super) embedding_fraction: Option<f64>,
    pub(super) norm_type: Option<String>,
    pub(super) norm_eps: Option<f64>,
    pub(super) layer_norm_epsilon: Option<f64>,
    pub(super) tie_word_embeddings: Option<bool>,
    pub(super) fc_type: Option<Value>,
    pub(super) final_logit_softcapping: Option<f64>,
    pub(super) block_overrides: Option<Value>,
    pub(super) model_type: Option<String>,
    // Deliberately ignored (see the module docs).
    pub(super) use_pad_tok_in_ffn: Option<IgnoredAny>,
    pub(super) architectures: Option<IgnoredAny>,
    pub(super) auto_map: Option<IgnoredAny>,
    pub(super) torch_dtype: Option<IgnoredAny>,
    pub(super) dtype: Option<IgnoredAny>,
    pub(super) transformers_version: Option<IgnoredAny>,
    #[serde(rename = "_name_or_path")]
    pub(super) name_or_path: Option<IgnoredAny>,
    pub(super) initializer_range: Option<IgnoredAny>,
    pub(super) use_cache: Option<IgnoredAny>,
    pub(super) verbose: Option<IgnoredAny>,
    pub(super) init_device: Option<IgnoredAny>,
    pub(super) tokenizer_name: Option<IgnoredAny>,
    pub(super) bos_token_id: Option<IgnoredAny>,
    pub(super) eos_token_id: Option<IgnoredAny>,
    pub(super) pad_token_id: Option<IgnoredAny>,
    pub(super) return_dict: Option<IgnoredAny>,
    pub(super) output_hidden_states: Option<IgnoredAny>,
    pub(super) output_attentions: Option<IgnoredAny>,
    pub(super) torchscript: Option<IgnoredAny>,
    pub(super) name: Option<IgnoredAny>,
    pub(super) loss_fn: Option<IgnoredAny>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct WireAttn {
    pub(super) attn_type: Option<String>,
    pub(super) attn_pdrop: Option<f64>,
    pub(super) kv_n_heads: Option<usize>,
    pub(super) qk_ln: Option<bool>,
    pub(super) qk_gn: Option<bool>,
    pub(super) fused_qkv: Option<bool>,
    pub(super) clip_qkv: Option<f64>,
    pub(super) softmax_scale: Option<f64>,
    pub(super) attn_uses_sequence_id: Option<bool>,
    pub(super) sliding_window_size: Option<i64>,
    pub(super) attn_logit_softcapping: Option<f64>,
    pub(super) alibi: Option<bool>,
    pub(super) alibi_bias_max: Option<f64>,
    pub(super) rope: Option<bool>,
    pub(super) nope: Option<bool>,
    pub(super) rope_theta: Option<f64>,
    pub(super) rope_impl: Option<String>,
    pub(super) rope_dail_config: Option<WireRopeDail>,
    pub(super) rope_hf_config: Option<WireRopeHf>,
    pub(super) attn_temperature_tuning: Option<WireTemperature>,
    pub(super) kv_dim: Option<usize>,
    pub(super) prefix_lm: Option<bool>,
    pub(super) seq_parallel_world_size: Option<usize>,
    pub(super) reuse_kv_layer_idx: Option<i64>,
    pub(super) reuse_kv_x_layer_idx: Option<i64>,
    // Deliberately ignored.
    pub(super) attn_impl: Option<IgnoredAny>,
    pub(super) model_type: Option<IgnoredAny>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct WireRopeDail {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) pos_idx_in_fp32: Option<IgnoredAny>,
    pub(super) xpos_scale_base: Option<IgnoredAny>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct WireRopeHf {
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) factor: Option<f64>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct WireTemperature {
    pub(super) floor_scale: Option<IgnoredAny>,
    pub(super) attn_scale: Option<f64>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct WireFfn {
    pub(super) ffn_type: Option<String>,
    pub(super) ffn_act_fn: Option<WireAct>,
    pub(super) ffn_hidden_size: Option<usize>,
    pub(super) fc_type: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireAct {
    pub(super) name: String,
    pub(super) approximate: Option<String>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct WireInit {
    pub(super) name: Option<String>,
    pub(super) fan_mode: Option<String>,
    pub(super) init_nonlinearity: Option<String>,
    pub(super) init_div_is_residual: Option<WireResidual>,
    pub(super) emb_init_std: Option<f64>,
    pub(super) emb_init_uniform_lim: Option<WireLim>,
    pub(super) init_std: Option<f64>,
    pub(super) init_gain: Option<f64>,
    pub(super) verbose: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum WireLogitScale {
    Number(f64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum WireResidual {
    Bool(bool),
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum WireLim {
    Symmetric(f64),
    Range(Vec<f64>),
}
