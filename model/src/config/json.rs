//! `config.json` in and out: the serde wire structs (HF transformers and llm-foundry keys), their
//! resolution into [`MptConfig`] with llm-foundry's defaults, and the transformers-loadable export.
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
use serde_json::{Value, json};

use super::*;

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Wire {
    d_model: Option<usize>,
    n_heads: Option<usize>,
    n_layers: Option<usize>,
    head_dim: Option<usize>,
    expansion_ratio: Option<f64>,
    max_seq_len: Option<usize>,
    vocab_size: Option<usize>,
    resid_pdrop: Option<f64>,
    emb_pdrop: Option<f64>,
    learned_pos_emb: Option<bool>,
    attn_config: Option<WireAttn>,
    ffn_config: Option<WireFfn>,
    init_config: Option<WireInit>,
    logit_scale: Option<WireLogitScale>,
    no_bias: Option<bool>,
    attention_bias: Option<bool>,
    embedding_fraction: Option<f64>,
    norm_type: Option<String>,
    norm_eps: Option<f64>,
    layer_norm_epsilon: Option<f64>,
    tie_word_embeddings: Option<bool>,
    fc_type: Option<Value>,
    final_logit_softcapping: Option<f64>,
    block_overrides: Option<Value>,
    model_type: Option<String>,
    // Deliberately ignored (see the module docs).
    use_pad_tok_in_ffn: Option<IgnoredAny>,
    architectures: Option<IgnoredAny>,
    auto_map: Option<IgnoredAny>,
    torch_dtype: Option<IgnoredAny>,
    dtype: Option<IgnoredAny>,
    transformers_version: Option<IgnoredAny>,
    #[serde(rename = "_name_or_path")]
    name_or_path: Option<IgnoredAny>,
    initializer_range: Option<IgnoredAny>,
    use_cache: Option<IgnoredAny>,
    verbose: Option<IgnoredAny>,
    init_device: Option<IgnoredAny>,
    tokenizer_name: Option<IgnoredAny>,
    bos_token_id: Option<IgnoredAny>,
    eos_token_id: Option<IgnoredAny>,
    pad_token_id: Option<IgnoredAny>,
    return_dict: Option<IgnoredAny>,
    output_hidden_states: Option<IgnoredAny>,
    output_attentions: Option<IgnoredAny>,
    torchscript: Option<IgnoredAny>,
    name: Option<IgnoredAny>,
    loss_fn: Option<IgnoredAny>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireAttn {
    attn_type: Option<String>,
    attn_pdrop: Option<f64>,
    kv_n_heads: Option<usize>,
    qk_ln: Option<bool>,
    qk_gn: Option<bool>,
    fused_qkv: Option<bool>,
    clip_qkv: Option<f64>,
    softmax_scale: Option<f64>,
    attn_uses_sequence_id: Option<bool>,
    sliding_window_size: Option<i64>,
    attn_logit_softcapping: Option<f64>,
    alibi: Option<bool>,
    alibi_bias_max: Option<f64>,
    rope: Option<bool>,
    nope: Option<bool>,
    rope_theta: Option<f64>,
    rope_impl: Option<String>,
    rope_dail_config: Option<WireRopeDail>,
    rope_hf_config: Option<WireRopeHf>,
    attn_temperature_tuning: Option<WireTemperature>,
    kv_dim: Option<usize>,
    prefix_lm: Option<bool>,
    seq_parallel_world_size: Option<usize>,
    reuse_kv_layer_idx: Option<i64>,
    reuse_kv_x_layer_idx: Option<i64>,
    // Deliberately ignored.
    attn_impl: Option<IgnoredAny>,
    model_type: Option<IgnoredAny>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireRopeDail {
    #[serde(rename = "type")]
    kind: Option<String>,
    pos_idx_in_fp32: Option<IgnoredAny>,
    xpos_scale_base: Option<IgnoredAny>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireRopeHf {
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireTemperature {
    floor_scale: Option<IgnoredAny>,
    attn_scale: Option<f64>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireFfn {
    ffn_type: Option<String>,
    ffn_act_fn: Option<WireAct>,
    ffn_hidden_size: Option<usize>,
    fc_type: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireAct {
    name: String,
    approximate: Option<String>,
}

// `IgnoredAny` fields exist only so that their keys are accepted.
#[allow(dead_code)]
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WireInit {
    name: Option<String>,
    fan_mode: Option<String>,
    init_nonlinearity: Option<String>,
    init_div_is_residual: Option<WireResidual>,
    emb_init_std: Option<f64>,
    emb_init_uniform_lim: Option<WireLim>,
    init_std: Option<f64>,
    init_gain: Option<f64>,
    verbose: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireLogitScale {
    Number(f64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireResidual {
    Bool(bool),
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireLim {
    Symmetric(f64),
    Range(Vec<f64>),
}

struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn unsupported(&self, field: &str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
        ConfigError::Unsupported {
            origin: self.origin.into(),
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

pub(super) fn parse(text: &str, origin: &str) -> Result<MptConfig, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let wire: Wire = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.inner().to_string();
        if let Some(rest) = inner.strip_prefix("unknown field `") {
            let key = rest.split('`').next().unwrap_or_default();
            let field = if field == "." || field.is_empty() {
                key.to_string()
            } else {
                // serde_path_to_error already appends the unknown key to the path.
                field
            };
            ConfigError::UnknownKey { origin: origin.into(), field }
        } else {
            ConfigError::Parse { origin: origin.into(), field, message: inner }
        }
    })?;
    resolve(wire, &Ctx { origin })
}

fn resolve(w: Wire, cx: &Ctx) -> Result<MptConfig, ConfigError> {
    if let Some(mt) = &w.model_type
        && mt != "mpt"
    {
        return Err(cx.invalid("model_type", format!("expected \"mpt\", found {mt:?}")));
    }
    if let Some(b) = &w.block_overrides
        && !b.is_null()
    {
        return Err(cx.unsupported("block_overrides", "a value", "per-layer overrides"));
    }
    check_fc_type("fc_type", w.fc_type.as_ref(), cx)?;

    let d_model = w.d_model.unwrap_or(2048);
    let n_heads = w.n_heads.unwrap_or(16);
    if n_heads == 0 {
        return Err(cx.invalid("n_heads", "must be positive, found 0"));
    }
    if let Some(hd) = w.head_dim
        && hd * n_heads != d_model
    {
        return Err(cx.unsupported(
            "head_dim",
            hd,
            "only head_dim == d_model / n_heads is implemented",
        ));
    }
    let expansion_ratio = w.expansion_ratio.unwrap_or(4.0);
    let no_bias = w.no_bias.unwrap_or(false);
    let attn = resolve_attn(w.attn_config.unwrap_or_default(), n_heads, cx)?;
    let ffn = resolve_ffn(w.ffn_config.unwrap_or_default(), d_model, expansion_ratio, cx)?;
    let init = resolve_init(w.init_config.unwrap_or_default(), cx)?;

    let norm_type = match w.norm_type.as_deref().unwrap_or("low_precision_layernorm") {
        "layernorm" => NormType::LayerNorm,
        "low_precision_layernorm" => NormType::LowPrecisionLayerNorm,
        "rmsnorm" => NormType::RmsNorm,
        "low_precision_rmsnorm" => NormType::LowPrecisionRmsNorm,
        other => {
            return Err(cx.unsupported(
                "norm_type",
                other,
                "expected layernorm, low_precision_layernorm, rmsnorm or low_precision_rmsnorm",
            ));
        }
    };
    let norm_eps = match (w.norm_eps, w.layer_norm_epsilon) {
        (Some(a), Some(b)) if a != b => {
            return Err(cx.invalid(
                "norm_eps",
                format!("norm_eps ({a}) and layer_norm_epsilon ({b}) disagree"),
            ));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => 1e-5,
    };
    let logit_scale = match w.logit_scale {
        None => None,
        Some(WireLogitScale::Number(v)) => Some(LogitScale::Value(v)),
        Some(WireLogitScale::Name(s)) if s == "inv_sqrt_d_model" => Some(LogitScale::InvSqrtDModel),
        Some(WireLogitScale::Name(s)) => {
            return Err(cx.invalid(
                "logit_scale",
                format!("expected a number or \"inv_sqrt_d_model\", found {s:?}"),
            ));
        }
    };
    // llm-foundry's MPTConfig.__init__ turns learned position embeddings off under alibi/rope.
    let learned_pos_emb = w.learned_pos_emb.unwrap_or(true) && !attn.alibi && !attn.rope;

    let cfg = MptConfig {
        d_model,
        n_heads,
        n_layers: w.n_layers.unwrap_or(24),
        expansion_ratio,
        max_seq_len: w.max_seq_len.unwrap_or(2048),
        vocab_size: w.vocab_size.unwrap_or(50368),
        resid_pdrop: w.resid_pdrop.unwrap_or(0.0),
        emb_pdrop: w.emb_pdrop.unwrap_or(0.0),
        learned_pos_emb,
        attn_config: attn,
        ffn_config: ffn,
        init_config: init,
        logit_scale,
        final_logit_softcapping: w.final_logit_softcapping,
        no_bias,
        attention_bias: w.attention_bias.unwrap_or(!no_bias),
        embedding_fraction: w.embedding_fraction.unwrap_or(1.0),
        norm_type,
        norm_eps,
        tie_word_embeddings: w.tie_word_embeddings.unwrap_or(true),
    };
    cfg.validate().map_err(|e| match e {
        ConfigError::Invalid { field, message, .. } => cx.invalid(&field, message),
        other => other,
    })?;
    Ok(cfg)
}

fn check_fc_type(field: &str, v: Option<&Value>, cx: &Ctx) -> Result<(), ConfigError> {
    let name = match v {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(m)) => match m.get("name") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(cx.invalid(&format!("{field}.name"), "expected a string")),
        },
        Some(other) => {
            return Err(cx.invalid(field, format!("expected a string or object, found {other}")));
        }
    };
    // TransformerEngine's Linear stores the same `weight`/`bias` as torch's and computes the
    // same product, so a `te` checkpoint loads as plain Linear layers.
    match name {
        "torch" | "te" => Ok(()),
        other => Err(cx.unsupported(field, other, "expected torch or te")),
    }
}

fn resolve_attn(a: WireAttn, n_heads: usize, cx: &Ctx) -> Result<AttnConfig, ConfigError> {
    let attn_type = match a.attn_type.as_deref().unwrap_or("multihead_attention") {
        "multihead_attention" => AttnType::MultiHead,
        "multiquery_attention" => AttnType::MultiQuery,
        "grouped_query_attention" => AttnType::GroupedQuery,
        other => {
            return Err(cx.unsupported(
                "attn_config.attn_type",
                other,
                "expected multihead_attention, multiquery_attention or grouped_query_attention",
            ));
        }
    };
    let kv_n_heads = match (attn_type, a.kv_n_heads) {
        (AttnType::MultiHead, kv) => kv.unwrap_or(n_heads),
        (AttnType::MultiQuery, kv) => kv.unwrap_or(1),
        (AttnType::GroupedQuery, Some(kv)) => kv,
        (AttnType::GroupedQuery, None) => {
            return Err(cx.invalid(
                "attn_config.kv_n_heads",
                "grouped_query_attention needs kv_n_heads",
            ));
        }
    };
    if a.fused_qkv == Some(false) {
        return Err(cx.unsupported("attn_config.fused_qkv", false, "only the fused Wqkv exists"));
    }
    if let Some(w) = a.sliding_window_size
        && w != -1
    {
        return Err(cx.unsupported("attn_config.sliding_window_size", w, "only -1 (off)"));
    }
    if a.nope == Some(true) {
        return Err(cx.unsupported("attn_config.nope", true, "no-position layers"));
    }
    if a.prefix_lm == Some(true) {
        return Err(cx.unsupported("attn_config.prefix_lm", true, "only causal LMs"));
    }
    if let Some(k) = a.kv_dim {
        return Err(cx.unsupported("attn_config.kv_dim", k, "cross-attention"));
    }
    if let Some(n) = a.seq_parallel_world_size
        && n > 1
    {
        return Err(cx.unsupported("attn_config.seq_parallel_world_size", n, "only 1"));
    }
    if let Some(i) = a.reuse_kv_layer_idx.or(a.reuse_kv_x_layer_idx) {
        return Err(cx.unsupported("attn_config.reuse_kv_layer_idx", i, "KV reuse"));
    }
    if let Some(t) = &a.attn_temperature_tuning
        && t.attn_scale.unwrap_or(0.0) != 0.0
    {
        return Err(cx.unsupported(
            "attn_config.attn_temperature_tuning.attn_scale",
            t.attn_scale.unwrap_or(0.0),
            "only 0 (off)",
        ));
    }
    let rope_impl = match a.rope_impl.as_deref().unwrap_or("dail") {
        "dail" => RopeImpl::Dail,
        "hf" => RopeImpl::Hf,
        other => {
            return Err(cx.invalid(
                "attn_config.rope_impl",
                format!("expected dail or hf, found {other:?}"),
            ));
        }
    };
    let mut rope_scaling_factor = 1.0;
    let rope = a.rope.unwrap_or(false);
    if rope {
        match rope_impl {
            RopeImpl::Dail => {
                let kind = a.rope_dail_config.and_then(|c| c.kind);
                if let Some(k) = kind.filter(|k| k != "original") {
                    return Err(cx.unsupported(
                        "attn_config.rope_dail_config.type",
                        k,
                        "only original",
                    ));
                }
            }
            RopeImpl::Hf => {
                let hf = a.rope_hf_config.unwrap_or_default();
                match hf.kind.as_deref().unwrap_or("no_scaling") {
                    "no_scaling" => {}
                    "linear" => rope_scaling_factor = hf.factor.unwrap_or(1.0),
                    other => {
                        return Err(cx.unsupported(
                            "attn_config.rope_hf_config.type",
                            other,
                            "only no_scaling and linear",
                        ));
                    }
                }
            }
        }
    }
    Ok(AttnConfig {
        attn_type,
        kv_n_heads,
        attn_pdrop: a.attn_pdrop.unwrap_or(0.0),
        qk_ln: a.qk_ln.unwrap_or(false),
        qk_gn: a.qk_gn.unwrap_or(false),
        clip_qkv: a.clip_qkv.filter(|&c| c != 0.0),
        softmax_scale: a.softmax_scale,
        attn_uses_sequence_id: a.attn_uses_sequence_id.unwrap_or(false),
        alibi: a.alibi.unwrap_or(false),
        alibi_bias_max: a.alibi_bias_max.unwrap_or(8.0),
        rope,
        rope_theta: a.rope_theta.unwrap_or(10000.0),
        rope_impl,
        rope_scaling_factor,
        attn_logit_softcapping: a.attn_logit_softcapping,
    })
}

fn resolve_ffn(
    f: WireFfn,
    d_model: usize,
    expansion_ratio: f64,
    cx: &Ctx,
) -> Result<FfnConfig, ConfigError> {
    check_fc_type("ffn_config.fc_type", f.fc_type.as_ref(), cx)?;
    let ffn_type = match f.ffn_type.as_deref().unwrap_or("mptmlp") {
        "mptmlp" => FfnType::MptMlp,
        "mptglu" => FfnType::MptGlu,
        other => {
            return Err(cx.unsupported(
                "ffn_config.ffn_type",
                other,
                "expected mptmlp or mptglu (MoE and TransformerEngine FFNs are not implemented)",
            ));
        }
    };
    let activation = match f.ffn_act_fn {
        None => Activation::Gelu,
        Some(act) => match (act.name.as_str(), act.approximate.as_deref()) {
            ("gelu", None | Some("none")) => Activation::Gelu,
            ("gelu", Some("tanh")) => Activation::GeluTanh,
            ("silu", None) => Activation::Silu,
            ("relu", None) => Activation::Relu,
            ("quick_gelu", None) => Activation::QuickGelu,
            (name, approx) => {
                let shown = match approx {
                    Some(a) => format!("{name} (approximate {a})"),
                    None => name.to_string(),
                };
                return Err(cx.unsupported(
                    "ffn_config.ffn_act_fn.name",
                    shown,
                    "expected gelu (approximate none|tanh), silu, relu or quick_gelu",
                ));
            }
        },
    };
    let hidden_size = match f.ffn_hidden_size {
        Some(h) => h,
        None => {
            let exact = d_model as f64 * expansion_ratio;
            if exact.fract() != 0.0 || exact < 0.0 {
                return Err(cx.invalid(
                    "expansion_ratio",
                    format!(
                        "d_model * expansion_ratio must be an integer, found {d_model} * \
                         {expansion_ratio} = {exact}"
                    ),
                ));
            }
            exact as usize
        }
    };
    Ok(FfnConfig { ffn_type, activation, hidden_size })
}

fn resolve_init(i: WireInit, cx: &Ctx) -> Result<InitConfig, ConfigError> {
    let name = match i.name.as_deref().unwrap_or("kaiming_normal_") {
        "default_" => InitName::Default,
        "baseline_" => InitName::Baseline,
        "kaiming_uniform_" => InitName::KaimingUniform,
        "kaiming_normal_" => InitName::KaimingNormal,
        "neox_init_" => InitName::NeoxInit,
        "small_init_" => InitName::SmallInit,
        "xavier_uniform_" => InitName::XavierUniform,
        "xavier_normal_" => InitName::XavierNormal,
        other => {
            return Err(cx.unsupported("init_config.name", other, "not an llm-foundry init"));
        }
    };
    let fan_mode = match i.fan_mode.as_deref().unwrap_or("fan_in") {
        "fan_in" => FanMode::FanIn,
        "fan_out" => FanMode::FanOut,
        other => {
            return Err(cx.invalid(
                "init_config.fan_mode",
                format!("expected fan_in or fan_out, found {other:?}"),
            ));
        }
    };
    let nonlinearity = match i.init_nonlinearity.as_deref().unwrap_or("relu") {
        "linear" | "conv1d" | "conv2d" | "conv3d" | "conv_transpose1d" | "conv_transpose2d"
        | "conv_transpose3d" => Nonlinearity::Linear,
        "sigmoid" => Nonlinearity::Sigmoid,
        "tanh" => Nonlinearity::Tanh,
        "relu" => Nonlinearity::Relu,
        "leaky_relu" => Nonlinearity::LeakyRelu,
        "selu" => Nonlinearity::Selu,
        other => {
            return Err(cx.invalid(
                "init_config.init_nonlinearity",
                format!("not a torch.nn.init.calculate_gain name: {other:?}"),
            ));
        }
    };
    let residual_div = match i.init_div_is_residual {
        None | Some(WireResidual::Bool(true)) => ResidualDiv::SqrtTwoNLayers,
        Some(WireResidual::Bool(false)) => ResidualDiv::Off,
        Some(WireResidual::Number(v)) => ResidualDiv::Value(v),
        Some(WireResidual::Text(s)) => match s.parse::<f64>() {
            Ok(v) => ResidualDiv::Value(v),
            Err(_) => {
                return Err(cx.invalid(
                    "init_config.init_div_is_residual",
                    format!("expected a boolean or a number, found {s:?}"),
                ));
            }
        },
    };
    if let ResidualDiv::Value(v) = residual_div
        && !(v > 0.0 && v.is_finite())
    {
        return Err(cx.invalid(
            "init_config.init_div_is_residual",
            format!("must be positive, found {v}"),
        ));
    }
    let emb_init = match (i.emb_init_std, i.emb_init_uniform_lim) {
        (Some(_), Some(_)) => {
            return Err(cx.invalid(
                "init_config.emb_init_uniform_lim",
                "emb_init_std and emb_init_uniform_lim are mutually exclusive",
            ));
        }
        (Some(std), None) => EmbInit::Std(std),
        (None, Some(WireLim::Symmetric(x))) => EmbInit::Uniform(-x, x),
        (None, Some(WireLim::Range(v))) if v.len() == 2 => EmbInit::Uniform(v[0], v[1]),
        (None, Some(WireLim::Range(v))) => {
            return Err(cx.invalid(
                "init_config.emb_init_uniform_lim",
                format!("expected a number or [min, max], found {} values", v.len()),
            ));
        }
        (None, None) => EmbInit::Scheme,
    };
    Ok(InitConfig {
        name,
        fan_mode,
        nonlinearity,
        init_gain: i.init_gain.unwrap_or(0.0),
        init_std: i.init_std,
        residual_div,
        emb_init,
    })
}

/// A float that is integral is written as a JSON integer (transformers 5 types some of these
/// fields as `int` and rejects `0.0`).
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 { json!(v as i64) } else { json!(v) }
}

pub(super) fn to_hf_json(c: &MptConfig) -> Value {
    let a = &c.attn_config;
    let mut attn = json!({
        "attn_type": a.attn_type.as_str(),
        "attn_pdrop": num(a.attn_pdrop),
        "attn_impl": "torch",
        "clip_qkv": a.clip_qkv,
        "softmax_scale": a.softmax_scale,
        "prefix_lm": false,
        "qk_ln": a.qk_ln,
        "attn_uses_sequence_id": a.attn_uses_sequence_id,
        "alibi": a.alibi,
        "alibi_bias_max": num(a.alibi_bias_max),
    });
    // llm-foundry-only keys, written only when they differ from llm-foundry's defaults so that
    // the transformers subset stays exactly what transformers itself writes.
    let extra = attn.as_object_mut().expect("json! object");
    if a.attn_type == AttnType::GroupedQuery {
        extra.insert("kv_n_heads".into(), json!(a.kv_n_heads));
    }
    if a.qk_gn {
        extra.insert("qk_gn".into(), json!(true));
    }
    if a.rope {
        extra.insert("rope".into(), json!(true));
        extra.insert("rope_theta".into(), num(a.rope_theta));
        let imp = match a.rope_impl {
            RopeImpl::Dail => "dail",
            RopeImpl::Hf => "hf",
        };
        extra.insert("rope_impl".into(), json!(imp));
        if a.rope_scaling_factor != 1.0 {
            extra.insert(
                "rope_hf_config".into(),
                json!({"type": "linear", "factor": a.rope_scaling_factor}),
            );
        }
    }
    if let Some(s) = a.attn_logit_softcapping {
        extra.insert("attn_logit_softcapping".into(), json!(s));
    }

    let act = match c.ffn_config.activation {
        Activation::Gelu => json!({"name": "gelu", "approximate": "none"}),
        Activation::GeluTanh => json!({"name": "gelu", "approximate": "tanh"}),
        Activation::Silu => json!({"name": "silu"}),
        Activation::Relu => json!({"name": "relu"}),
        Activation::QuickGelu => json!({"name": "quick_gelu"}),
    };
    let ffn = json!({
        "ffn_type": match c.ffn_config.ffn_type { FfnType::MptMlp => "mptmlp", FfnType::MptGlu => "mptglu" },
        "ffn_act_fn": act,
        "ffn_hidden_size": c.ffn_config.hidden_size,
    });
    let i = &c.init_config;
    let (emb_std, emb_lim) = match i.emb_init {
        EmbInit::Scheme => (Value::Null, Value::Null),
        EmbInit::Std(s) => (json!(s), Value::Null),
        EmbInit::Uniform(lo, hi) => (Value::Null, json!([lo, hi])),
    };
    let init = json!({
        "name": i.name.as_str(),
        "fan_mode": match i.fan_mode { FanMode::FanIn => "fan_in", FanMode::FanOut => "fan_out" },
        "init_nonlinearity": match i.nonlinearity {
            Nonlinearity::Linear => "linear",
            Nonlinearity::Sigmoid => "sigmoid",
            Nonlinearity::Tanh => "tanh",
            Nonlinearity::Relu => "relu",
            Nonlinearity::LeakyRelu => "leaky_relu",
            Nonlinearity::Selu => "selu",
        },
        "init_div_is_residual": match i.residual_div {
            ResidualDiv::Off => json!(false),
            ResidualDiv::SqrtTwoNLayers => json!(true),
            ResidualDiv::Value(v) => json!(v),
        },
        "emb_init_std": emb_std,
        "emb_init_uniform_lim": emb_lim,
        "init_std": i.init_std,
        "init_gain": i.init_gain,
    });
    let logit_scale = match c.logit_scale {
        None => Value::Null,
        Some(LogitScale::Value(v)) => json!(v),
        Some(LogitScale::InvSqrtDModel) => json!("inv_sqrt_d_model"),
    };
    let mut out = json!({
        "architectures": ["MptForCausalLM"],
        "model_type": "mpt",
        "d_model": c.d_model,
        "n_heads": c.n_heads,
        "n_layers": c.n_layers,
        "expansion_ratio": num(c.expansion_ratio),
        "max_seq_len": c.max_seq_len,
        "vocab_size": c.vocab_size,
        "resid_pdrop": c.resid_pdrop,
        "emb_pdrop": c.emb_pdrop,
        "learned_pos_emb": c.learned_pos_emb,
        "attn_config": attn,
        "ffn_config": ffn,
        "init_config": init,
        "init_device": "cpu",
        "logit_scale": logit_scale,
        "no_bias": c.no_bias,
        "embedding_fraction": c.embedding_fraction,
        "norm_type": c.norm_type.as_str(),
        "layer_norm_epsilon": c.norm_eps,
        "norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "use_cache": false,
    });
    let top = out.as_object_mut().expect("json! object");
    if c.attention_bias == c.no_bias {
        top.insert("attention_bias".into(), json!(c.attention_bias));
    }
    if let Some(s) = c.final_logit_softcapping {
        top.insert("final_logit_softcapping".into(), json!(s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HF_FIXTURE_LIKE: &str = r#"{
      "architectures": ["MptForCausalLM"],
      "attn_config": {"alibi": true, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
        "attn_type": "multihead_attention", "attn_uses_sequence_id": false, "clip_qkv": 1.0,
        "model_type": "", "prefix_lm": false, "qk_ln": false, "softmax_scale": 0.35},
      "d_model": 64, "dtype": "float32", "emb_pdrop": 0.0, "embedding_fraction": 1.0,
      "expansion_ratio": 4, "init_device": "cpu", "initializer_range": 0.02,
      "layer_norm_epsilon": 0.0001, "learned_pos_emb": false, "logit_scale": null,
      "max_seq_len": 128, "model_type": "mpt", "n_heads": 4, "n_layers": 2, "no_bias": true,
      "norm_type": "low_precision_layernorm", "resid_pdrop": 0.0,
      "transformers_version": "4.57.6", "use_cache": false, "verbose": 0, "vocab_size": 512
    }"#;

    #[test]
    fn transformers_config_resolves_with_its_values() {
        let c = MptConfig::from_json_str(HF_FIXTURE_LIKE, "t").unwrap();
        assert_eq!((c.d_model, c.n_heads, c.n_layers, c.vocab_size), (64, 4, 2, 512));
        assert_eq!(c.norm_eps, 1e-4);
        assert_eq!(c.attn_config.clip_qkv, Some(1.0));
        assert_eq!(c.softmax_scale(), 0.35);
        assert!(c.attn_config.alibi && !c.learned_pos_emb && c.no_bias && !c.attention_bias);
        assert_eq!(c.attn_config.kv_n_heads, 4);
        assert_eq!(c.ffn_config.hidden_size, 256);
    }

    #[test]
    fn missing_keys_take_llm_foundry_defaults() {
        let c = MptConfig::from_json_str("{}", "t").unwrap();
        assert_eq!((c.d_model, c.n_heads, c.n_layers), (2048, 16, 24));
        assert_eq!((c.max_seq_len, c.vocab_size), (2048, 50368));
        assert!(c.learned_pos_emb && !c.no_bias && !c.attn_config.alibi);
        assert_eq!(c.norm_type, NormType::LowPrecisionLayerNorm);
        assert_eq!(c.init_config.name, InitName::KaimingNormal);
        assert_eq!(c.init_config.residual_div, ResidualDiv::SqrtTwoNLayers);
        assert_eq!(c.attn_config.alibi_bias_max, 8.0);
    }

    #[test]
    fn alibi_turns_learned_pos_emb_off_like_llm_foundry() {
        let c = MptConfig::from_json_str(
            r#"{"learned_pos_emb": true, "attn_config": {"alibi": true}}"#,
            "t",
        )
        .unwrap();
        assert!(!c.learned_pos_emb);
    }

    #[test]
    fn unknown_key_error_names_its_path() {
        let e = MptConfig::from_json_str(r#"{"attn_config": {"alibbi": true}}"#, "cfg.json")
            .unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{s}");
        assert!(s.contains("attn_config.alibbi") && s.contains("cfg.json"), "{s}");
        let e = MptConfig::from_json_str(r#"{"d_modle": 4}"#, "c").unwrap_err().to_string();
        assert!(e.contains("d_modle"), "{e}");
    }

    #[test]
    fn wrong_type_error_names_its_path() {
        let e = MptConfig::from_json_str(r#"{"attn_config": {"clip_qkv": "big"}}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("attn_config.clip_qkv"), "{e}");
    }

    #[test]
    fn non_integer_ffn_hidden_size_is_an_error_naming_expansion_ratio() {
        let e = MptConfig::from_json_str(r#"{"d_model": 64, "n_heads": 4, "expansion_ratio": 1.01}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expansion_ratio") && e.contains("64.64"), "{e}");
        let c = MptConfig::from_json_str(r#"{"d_model": 64, "n_heads": 4, "expansion_ratio": 2.5}"#, "c")
            .unwrap();
        assert_eq!(c.ffn_config.hidden_size, 160);
    }

    #[test]
    fn inconsistent_values_name_the_field() {
        let cases = [
            (r#"{"d_model": 64, "n_heads": 5}"#, "n_heads"),
            (
                r#"{"d_model": 64, "n_heads": 4, "attn_config": {"attn_type": "grouped_query_attention", "kv_n_heads": 3}}"#,
                "attn_config.kv_n_heads",
            ),
            (r#"{"attn_config": {"alibi": true, "rope": true}}"#, "attn_config.rope"),
            (r#"{"norm_eps": 1e-5, "layer_norm_epsilon": 1e-6}"#, "norm_eps"),
            (r#"{"logit_scale": "sqrt"}"#, "logit_scale"),
            (r#"{"embedding_fraction": 0}"#, "embedding_fraction"),
            (r#"{"model_type": "llama"}"#, "model_type"),
            (r#"{"attn_config": {"sliding_window_size": 128}}"#, "attn_config.sliding_window_size"),
            (r#"{"ffn_config": {"ffn_type": "mb_moe"}}"#, "ffn_config.ffn_type"),
            (r#"{"init_config": {"name": "baseline_"}}"#, "init_config.init_std"),
        ];
        for (text, field) in cases {
            let e = MptConfig::from_json_str(text, "c").unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn logit_scale_accepts_number_and_name() {
        let c = MptConfig::from_json_str(r#"{"d_model": 64, "n_heads": 4, "logit_scale": "inv_sqrt_d_model"}"#, "c")
            .unwrap();
        assert_eq!(c.logit_scale_value(), 0.125);
        let c = MptConfig::from_json_str(r#"{"logit_scale": 0.5}"#, "c").unwrap();
        assert_eq!(c.logit_scale_value(), 0.5);
    }

    #[test]
    fn init_config_variants_parse() {
        let c = MptConfig::from_json_str(
            r#"{"init_config": {"name": "small_init_", "init_div_is_residual": "2.5",
                "emb_init_uniform_lim": 0.1, "fan_mode": "fan_out", "verbose": 0}}"#,
            "c",
        )
        .unwrap();
        assert_eq!(c.init_config.residual_div, ResidualDiv::Value(2.5));
        assert_eq!(c.init_config.emb_init, EmbInit::Uniform(-0.1, 0.1));
        assert_eq!(c.init_config.fan_mode, FanMode::FanOut);
        let e = MptConfig::from_json_str(
            r#"{"init_config": {"emb_init_std": 0.1, "emb_init_uniform_lim": [0, 1]}}"#,
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("emb_init_uniform_lim"), "{e}");
    }

    #[test]
    fn hf_json_round_trips_every_preset_and_feature_mix() {
        let mut configs: Vec<MptConfig> =
            MptConfig::preset_names().iter().map(|n| MptConfig::preset(n).unwrap()).collect();
        let mut c = MptConfig::preset("tiny").unwrap();
        c.attn_config.alibi = false;
        c.attn_config.rope = true;
        c.attn_config.rope_impl = RopeImpl::Hf;
        c.attn_config.rope_scaling_factor = 2.0;
        c.attn_config.attn_type = AttnType::GroupedQuery;
        c.attn_config.kv_n_heads = 2;
        c.attn_config.qk_gn = true;
        c.ffn_config.ffn_type = FfnType::MptGlu;
        c.ffn_config.activation = Activation::Silu;
        c.logit_scale = Some(LogitScale::InvSqrtDModel);
        c.tie_word_embeddings = false;
        c.no_bias = false;
        c.attention_bias = false;
        c.norm_type = NormType::RmsNorm;
        c.init_config.emb_init = EmbInit::Uniform(-0.5, 0.25);
        c.init_config.residual_div = ResidualDiv::Off;
        configs.push(c);
        for c in configs {
            let text = serde_json::to_string_pretty(&c.to_hf_json()).unwrap();
            let back = MptConfig::from_json_str(&text, "roundtrip").unwrap();
            assert_eq!(back, c, "{text}");
        }
    }

    #[test]
    fn hf_json_writes_integral_attn_pdrop_as_integer() {
        let v = MptConfig::preset("tiny").unwrap().to_hf_json();
        assert_eq!(v["attn_config"]["attn_pdrop"], json!(0));
        assert_eq!(v["model_type"], json!("mpt"));
        assert!(v["attn_config"].get("kv_n_heads").is_none());
    }
}
