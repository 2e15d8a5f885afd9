//! Resolution of the `config.json` wire structs into [`MptConfig`]: llm-foundry's defaults for
//! absent keys, named errors for wrong or unsupported values.

use serde_json::Value;

use super::wire::*;
use super::*;

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
            ConfigError::UnknownKey {
                origin: origin.into(),
                field,
            }
        } else {
            ConfigError::Parse {
                origin: origin.into(),
                field,
                message: inner,
            }
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
    let ffn = resolve_ffn(
        w.ffn_config.unwrap_or_default(),
        d_model,
        expansion_ratio,
        cx,
    )?;
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
    Ok(FfnConfig {
        ffn_type,
        activation,
        hidden_size,
    })
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
        assert_eq!(
            (c.d_model, c.n_heads, c.n_layers, c.vocab_size),
            (64, 4, 2, 512)
        );
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
        assert!(
            s.contains("attn_config.alibbi") && s.contains("cfg.json"),
            "{s}"
        );
        let e = MptConfig::from_json_str(r#"{"d_modle": 4}"#, "c")
            .unwrap_err()
            .to_string();
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
        let e = MptConfig::from_json_str(
            r#"{"d_model": 64, "n_heads": 4, "expansion_ratio": 1.01}"#,
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("expansion_ratio") && e.contains("64.64"), "{e}");
        let c = MptConfig::from_json_str(
            r#"{"d_model": 64, "n_heads": 4, "expansion_ratio": 2.5}"#,
            "c",
        )
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
            (
                r#"{"attn_config": {"alibi": true, "rope": true}}"#,
                "attn_config.rope",
            ),
            (
                r#"{"norm_eps": 1e-5, "layer_norm_epsilon": 1e-6}"#,
                "norm_eps",
            ),
            (r#"{"logit_scale": "sqrt"}"#, "logit_scale"),
            (r#"{"embedding_fraction": 0}"#, "embedding_fraction"),
            (r#"{"model_type": "llama"}"#, "model_type"),
            (
                r#"{"attn_config": {"sliding_window_size": 128}}"#,
                "attn_config.sliding_window_size",
            ),
            (
                r#"{"ffn_config": {"ffn_type": "mb_moe"}}"#,
                "ffn_config.ffn_type",
            ),
            (
                r#"{"init_config": {"name": "baseline_"}}"#,
                "init_config.init_std",
            ),
        ];
        for (text, field) in cases {
            let e = MptConfig::from_json_str(text, "c").unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn logit_scale_accepts_number_and_name() {
        let c = MptConfig::from_json_str(
            r#"{"d_model": 64, "n_heads": 4, "logit_scale": "inv_sqrt_d_model"}"#,
            "c",
        )
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
}
