//! The transformers-loadable `config.json` written by [`MptConfig::to_hf_json`].

use serde_json::{Value, json};

use super::*;

/// A float that is integral is written as a JSON integer (transformers 5 types some of these
/// fields as `int` and rejects `0.0`).
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
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

    #[test]
    fn hf_json_round_trips_every_preset_and_feature_mix() {
        let mut configs: Vec<MptConfig> = MptConfig::preset_names()
            .iter()
            .map(|n| MptConfig::preset(n).unwrap())
            .collect();
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
