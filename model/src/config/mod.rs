//! MPT configuration: the resolved struct the model reads, its validation, and derived sizes.
//!
//! Two layers, as in candle: `wire` reads HF / llm-foundry `config.json` (every key optional,
//! the deliberately ignored transformers keys listed there) and `resolve` turns it, with
//! llm-foundry's defaults, into [`MptConfig`], which has a concrete value for every knob. `Option` remains
//! only where `None` means "feature off" (`clip_qkv`, `softmax_scale` = default, `logit_scale`).
//!
//! Field names and defaults are llm-foundry's (`llmfoundry/models/mpt/configuration_mpt.py`,
//! `llmfoundry/models/utils/config_defaults.py`).

mod export;
mod presets;
mod resolve;
mod validate;
mod wire;

use thiserror::Error;

/// Which normalisation layer the blocks, `norm_f` and `q_ln`/`k_ln` use.
///
/// `low_precision_*` differ from the plain kinds only under PyTorch autocast (they run the norm
/// in the input's low precision); burn has no autocast, so they compute the same thing here and
/// are kept apart only so a config round-trips unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormType {
    /// `torch.nn.LayerNorm`: weight, and a bias unless `no_bias`.
    LayerNorm,
    /// llm-foundry's `LPLayerNorm` (the MPT default).
    LowPrecisionLayerNorm,
    /// `torch.nn.RMSNorm`: weight only, never a bias.
    RmsNorm,
    /// llm-foundry's `LPRMSNorm`.
    LowPrecisionRmsNorm,
}

impl NormType {
    /// The llm-foundry registry name.
    pub fn as_str(self) -> &'static str {
        match self {
            NormType::LayerNorm => "layernorm",
            NormType::LowPrecisionLayerNorm => "low_precision_layernorm",
            NormType::RmsNorm => "rmsnorm",
            NormType::LowPrecisionRmsNorm => "low_precision_rmsnorm",
        }
    }

    /// True for the RMSNorm kinds (no mean subtraction, no bias).
    pub fn is_rms(self) -> bool {
        matches!(self, NormType::RmsNorm | NormType::LowPrecisionRmsNorm)
    }
}

/// llm-foundry's `attn_type`; it only decides the default number of key/value heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnType {
    /// `multihead_attention`: `kv_n_heads == n_heads`.
    MultiHead,
    /// `multiquery_attention`: `kv_n_heads == 1`.
    MultiQuery,
    /// `grouped_query_attention`: `kv_n_heads` given explicitly.
    GroupedQuery,
}

impl AttnType {
    /// The llm-foundry registry name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttnType::MultiHead => "multihead_attention",
            AttnType::MultiQuery => "multiquery_attention",
            AttnType::GroupedQuery => "grouped_query_attention",
        }
    }
}

/// Where RoPE positions come from (llm-foundry `rope_impl`). Both rotate the two halves of each
/// head (GPT-NeoX style, `interleaved=False`), so they give the same numbers; `hf` also allows
/// linear position scaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeImpl {
    /// flash-attn's `RotaryEmbedding` (llm-foundry's default).
    Dail,
    /// transformers' `LlamaRotaryEmbedding`.
    Hf,
}

/// `ffn_config.ffn_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnType {
    /// `down(act(up(x)))`.
    MptMlp,
    /// `down(act(gate(x)) * up(x))`.
    MptGlu,
}

/// `ffn_config.ffn_act_fn` (a `torch.nn.functional` name plus its keyword arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu` with `approximate: none` (exact, via erf): llm-foundry's default.
    Gelu,
    /// `gelu` with `approximate: tanh`.
    GeluTanh,
    /// `silu` (SwiGLU when used with `mptglu`).
    Silu,
    /// `relu`.
    Relu,
    /// llm-foundry's `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
}

/// `logit_scale`: multiplies the logits (PaLM uses `1/sqrt(d_model)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogitScale {
    /// A number.
    Value(f64),
    /// The string `inv_sqrt_d_model`.
    InvSqrtDModel,
}

/// `init_config.name`: llm-foundry's `param_init_fns` registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitName {
    /// `default_`: each torch module's own `reset_parameters`.
    Default,
    /// `baseline_`: normal with `init_std`.
    Baseline,
    /// `kaiming_uniform_`.
    KaimingUniform,
    /// `kaiming_normal_` (the default).
    KaimingNormal,
    /// `neox_init_`: `small_init_` with residual division `n_layers / sqrt(10)`.
    NeoxInit,
    /// `small_init_`: normal with std `sqrt(2 / (5 d_model))`.
    SmallInit,
    /// `xavier_uniform_` (note: llm-foundry's default `init_gain` 0 makes this all zeros).
    XavierUniform,
    /// `xavier_normal_` (same caveat).
    XavierNormal,
}

impl InitName {
    /// The llm-foundry registry name.
    pub fn as_str(self) -> &'static str {
        match self {
            InitName::Default => "default_",
            InitName::Baseline => "baseline_",
            InitName::KaimingUniform => "kaiming_uniform_",
            InitName::KaimingNormal => "kaiming_normal_",
            InitName::NeoxInit => "neox_init_",
            InitName::SmallInit => "small_init_",
            InitName::XavierUniform => "xavier_uniform_",
            InitName::XavierNormal => "xavier_normal_",
        }
    }
}

/// `init_config.fan_mode` for the kaiming schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// Scale by the number of inputs (columns of a `[out, in]` weight).
    FanIn,
    /// Scale by the number of outputs (rows; per fused slice for `Wqkv`).
    FanOut,
}

/// `init_config.init_nonlinearity`: picks the gain as `torch.nn.init.calculate_gain` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nonlinearity {
    /// gain 1.
    Linear,
    /// gain 1.
    Sigmoid,
    /// gain 5/3.
    Tanh,
    /// gain sqrt(2) (llm-foundry's default).
    Relu,
    /// gain sqrt(2 / (1 + a^2)) with `a = init_gain`.
    LeakyRelu,
    /// gain 3/4.
    Selu,
}

/// `init_config.init_div_is_residual`: what the residual projections (`out_proj`, `down_proj`)
/// are divided by after init.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResidualDiv {
    /// `false`: no division.
    Off,
    /// `true`: divide by `sqrt(2 * n_layers)` (GPT-2 / llm-foundry default).
    SqrtTwoNLayers,
    /// A number (or numeric string).
    Value(f64),
}

/// How the embeddings (`wte`, `wpe`) are initialised.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EmbInit {
    /// With the same scheme as the Linear layers (fan_in = `d_model`).
    Scheme,
    /// `emb_init_std`: normal with this std.
    Std(f64),
    /// `emb_init_uniform_lim`: uniform in `[lo, hi]` (a single number `x` means `[-x, x]`).
    Uniform(f64, f64),
}

/// `attn_config`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnConfig {
    /// Kind of attention (decides the default of `kv_n_heads`).
    pub attn_type: AttnType,
    /// Number of key/value heads: `n_heads` for MHA, 1 for MQA, given for GQA.
    pub kv_n_heads: usize,
    /// Dropout on the attention probabilities (training only).
    pub attn_pdrop: f64,
    /// LayerNorm on the full query and key vectors (`q_ln` over `d_model`, `k_ln` over
    /// `kv_n_heads * head_dim`).
    pub qk_ln: bool,
    /// Per-head norm on queries and keys (`q_ln`/`k_ln` over `head_dim`).
    pub qk_gn: bool,
    /// Clamp the fused `Wqkv` output to `[-clip_qkv, clip_qkv]` before the split.
    pub clip_qkv: Option<f64>,
    /// Softmax scale; `None` means `1 / sqrt(head_dim)`.
    pub softmax_scale: Option<f64>,
    /// Restrict attention to tokens with the same `sequence_id` (packed documents).
    pub attn_uses_sequence_id: bool,
    /// ALiBi additive bias instead of position embeddings.
    pub alibi: bool,
    /// ALiBi's maximum bias exponent (llm-foundry `alibi_bias_max`, default 8).
    pub alibi_bias_max: f64,
    /// Rotary position embeddings.
    pub rope: bool,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// RoPE implementation llm-foundry would use (same numbers, see [`RopeImpl`]).
    pub rope_impl: RopeImpl,
    /// Linear position scaling factor (`rope_hf_config` `type: linear`); 1 = none.
    pub rope_scaling_factor: f64,
    /// `attn_logit_softcapping`: `c * tanh(scores / c)` before the bias.
    pub attn_logit_softcapping: Option<f64>,
}

/// `ffn_config`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct FfnConfig {
    /// MLP or GLU.
    pub ffn_type: FfnType,
    /// Activation function.
    pub activation: Activation,
    /// Hidden width: `ffn_hidden_size`, else `d_model * expansion_ratio` (must be an integer).
    pub hidden_size: usize,
}

/// `init_config`, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct InitConfig {
    /// Which scheme.
    pub name: InitName,
    /// Kaiming fan mode.
    pub fan_mode: FanMode,
    /// Kaiming nonlinearity (gain).
    pub nonlinearity: Nonlinearity,
    /// `init_gain`: kaiming's negative slope `a`, or xavier's gain.
    pub init_gain: f64,
    /// `init_std` for `baseline_`.
    pub init_std: Option<f64>,
    /// Residual projection division.
    pub residual_div: ResidualDiv,
    /// Embedding init.
    pub emb_init: EmbInit,
}

/// A complete MPT configuration (llm-foundry `MPTConfig`, resolved and validated).
#[derive(Clone, Debug, PartialEq)]
pub struct MptConfig {
    /// Hidden size.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// FFN width multiplier (int or float in JSON).
    pub expansion_ratio: f64,
    /// Longest sequence (prompt + cache) the model accepts.
    pub max_seq_len: usize,
    /// Vocabulary size (rows of `wte`).
    pub vocab_size: usize,
    /// Dropout on each block's two residual branches (training only).
    pub resid_pdrop: f64,
    /// Dropout on the embeddings (training only).
    pub emb_pdrop: f64,
    /// Learned absolute position embeddings (`wpe`). llm-foundry forces this off when `alibi` or
    /// `rope` is on, and so does [`MptConfig::from_json_str`].
    pub learned_pos_emb: bool,
    /// Attention settings.
    pub attn_config: AttnConfig,
    /// FFN settings.
    pub ffn_config: FfnConfig,
    /// Initialisation settings.
    pub init_config: InitConfig,
    /// Multiply logits by this.
    pub logit_scale: Option<LogitScale>,
    /// `final_logit_softcapping`: `c * tanh(logits / c)` after `logit_scale`.
    pub final_logit_softcapping: Option<f64>,
    /// No bias in any Linear or LayerNorm.
    pub no_bias: bool,
    /// Bias in `Wqkv` (llm-foundry `attention_bias`, default `!no_bias`).
    pub attention_bias: bool,
    /// Fraction of the embedding gradient that flows (GLM-130B's stabiliser); forward unchanged.
    pub embedding_fraction: f64,
    /// Norm layer kind.
    pub norm_type: NormType,
    /// Norm epsilon (`norm_eps`, transformers' `layer_norm_epsilon`).
    pub norm_eps: f64,
    /// Unembedding shares `wte` (no `lm_head`).
    pub tie_word_embeddings: bool,
}

/// Errors from reading or validating a configuration. Every variant names the field.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not JSON, or a key has the wrong type.
    #[error("{origin}: {field}: {message}")]
    Parse {
        /// Where the config came from.
        origin: String,
        /// Dotted key path (`attn_config.clip_qkv`), or `.` for the whole document.
        field: String,
        /// What serde said.
        message: String,
    },
    /// A key tessera does not know and does not deliberately ignore.
    #[error("{origin}: unknown key `{field}` (not an llm-foundry/transformers MPT key)")]
    UnknownKey {
        /// Where the config came from.
        origin: String,
        /// Dotted key path.
        field: String,
    },
    /// A value is out of range or contradicts another one.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// Where the config came from (`"<config>"` for [`MptConfig::validate`]).
        origin: String,
        /// Dotted key path.
        field: String,
        /// What is wrong, with found and expected values.
        message: String,
    },
    /// A valid llm-foundry setting this crate does not implement.
    #[error("{origin}: {field}: {value} is not supported by tessera ({reason})")]
    Unsupported {
        /// Where the config came from.
        origin: String,
        /// Dotted key path.
        field: String,
        /// The value found.
        value: String,
        /// Why, or what is supported.
        reason: String,
    },
    /// [`MptConfig::preset`] got an unknown name.
    #[error("unknown preset `{name}` (known: {known})")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
}

impl MptConfig {
    /// Reads an HF or llm-foundry `config.json`.
    pub fn from_json_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses an HF or llm-foundry `config.json` text; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        resolve::parse(text, origin)
    }

    /// A transformers-loadable `config.json` (`model_type: mpt`, both `layer_norm_epsilon` and
    /// `norm_eps`, llm-foundry's `ffn_config`/`init_config` alongside). Reading it back with
    /// [`MptConfig::from_json_str`] gives an equal config.
    pub fn to_hf_json(&self) -> serde_json::Value {
        export::to_hf_json(self)
    }

    /// A named preset: the llm-foundry pretrain shapes `mpt-125m`, `mpt-350m`, `mpt-760m`,
    /// `mpt-1b`, `mpt-3b`, `mpt-13b`, `mpt-70b` (also as `pretrain/<name>`, which is the only
    /// spelling for `pretrain/mpt-7b` and `pretrain/mpt-30b`), the released checkpoints
    /// `mpt-7b`, `mpt-7b-8k`, `mpt-30b`, and `tiny` (a d_model 64 smoke-test model).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        presets::by_name(name)
    }

    /// Names accepted by [`MptConfig::preset`].
    pub fn preset_names() -> &'static [&'static str] {
        presets::NAMES
    }

    /// Dimension of each attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// The softmax scale actually used.
    pub fn softmax_scale(&self) -> f64 {
        self.attn_config
            .softmax_scale
            .unwrap_or(1.0 / (self.head_dim() as f64).sqrt())
    }

    /// The logit multiplier actually used (1 when `logit_scale` is unset).
    pub fn logit_scale_value(&self) -> f64 {
        match self.logit_scale {
            None => 1.0,
            Some(LogitScale::Value(v)) => v,
            Some(LogitScale::InvSqrtDModel) => 1.0 / (self.d_model as f64).sqrt(),
        }
    }

    /// Output width of the fused `Wqkv`: `(n_heads + 2 kv_n_heads) * head_dim`.
    pub fn qkv_dim(&self) -> usize {
        (self.n_heads + 2 * self.attn_config.kv_n_heads) * self.head_dim()
    }
}
