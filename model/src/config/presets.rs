//! Named configurations.
//!
//! - llm-foundry's pretrain shapes (`scripts/train/yamls/pretrain/mpt-*.yaml` at commit 8c8dd48):
//!   only `d_model`, `n_heads`, `n_layers`, `expansion_ratio: 4`, `max_seq_len: 2048` and
//!   `vocab_size: 50368` are set there, so everything else is llm-foundry's default — learned
//!   position embeddings, biases everywhere, no ALiBi.
//! - The released Hugging Face checkpoints `mosaicml/mpt-7b`, `mpt-7b-8k`, `mpt-30b`: ALiBi,
//!   `no_bias`, vocab 50432.
//! - `tiny`: a d_model 64 ALiBi model for smoke tests (the quickstart writes its own, larger
//!   model config).

use super::*;

/// Every name [`by_name`] accepts.
pub(super) const NAMES: &[&str] = &[
    "mpt-125m",
    "mpt-350m",
    "mpt-760m",
    "mpt-1b",
    "mpt-3b",
    "mpt-13b",
    "mpt-70b",
    "pretrain/mpt-125m",
    "pretrain/mpt-350m",
    "pretrain/mpt-760m",
    "pretrain/mpt-1b",
    "pretrain/mpt-3b",
    "pretrain/mpt-7b",
    "pretrain/mpt-13b",
    "pretrain/mpt-30b",
    "pretrain/mpt-70b",
    "mpt-7b",
    "mpt-7b-8k",
    "mpt-30b",
    "tiny",
];

/// llm-foundry's `MPTConfig()` defaults with the given shape.
fn llm_foundry_defaults(d_model: usize, n_heads: usize, n_layers: usize) -> MptConfig {
    MptConfig {
        d_model,
        n_heads,
        n_layers,
        expansion_ratio: 4.0,
        max_seq_len: 2048,
        vocab_size: 50368,
        resid_pdrop: 0.0,
        emb_pdrop: 0.0,
        learned_pos_emb: true,
        attn_config: AttnConfig {
            attn_type: AttnType::MultiHead,
            kv_n_heads: n_heads,
            attn_pdrop: 0.0,
            qk_ln: false,
            qk_gn: false,
            clip_qkv: None,
            softmax_scale: None,
            attn_uses_sequence_id: false,
            alibi: false,
            alibi_bias_max: 8.0,
            rope: false,
            rope_theta: 10000.0,
            rope_impl: RopeImpl::Dail,
            rope_scaling_factor: 1.0,
            attn_logit_softcapping: None,
        },
        ffn_config: FfnConfig {
            ffn_type: FfnType::MptMlp,
            activation: Activation::Gelu,
            hidden_size: 4 * d_model,
        },
        init_config: InitConfig {
            name: InitName::KaimingNormal,
            fan_mode: FanMode::FanIn,
            nonlinearity: Nonlinearity::Relu,
            init_gain: 0.0,
            init_std: None,
            residual_div: ResidualDiv::SqrtTwoNLayers,
            emb_init: EmbInit::Scheme,
        },
        logit_scale: None,
        final_logit_softcapping: None,
        no_bias: false,
        attention_bias: true,
        embedding_fraction: 1.0,
        norm_type: NormType::LowPrecisionLayerNorm,
        norm_eps: 1e-5,
        tie_word_embeddings: true,
    }
}

/// The released MPT checkpoints' architecture: ALiBi, no biases, gpt-neox vocab padded to 50432.
fn released(d_model: usize, n_heads: usize, n_layers: usize, max_seq_len: usize) -> MptConfig {
    let mut c = llm_foundry_defaults(d_model, n_heads, n_layers);
    c.max_seq_len = max_seq_len;
    c.vocab_size = 50432;
    c.no_bias = true;
    c.attention_bias = false;
    c.learned_pos_emb = false;
    c.attn_config.alibi = true;
    c.init_config.init_std = Some(0.02);
    c
}

pub(super) fn by_name(name: &str) -> Result<MptConfig, ConfigError> {
    let shape = |n: &str| -> Option<(usize, usize, usize)> {
        Some(match n {
            "mpt-125m" => (768, 12, 12),
            "mpt-350m" => (1024, 16, 24),
            // n_heads reduced in the yamls so that head_dim is 128 for FlashAttention.
            "mpt-760m" => (1536, 12, 24),
            "mpt-1b" => (2048, 16, 24),
            "mpt-3b" => (2560, 20, 32),
            "mpt-7b" => (4096, 32, 32),
            "mpt-13b" => (5120, 40, 40),
            "mpt-30b" => (7168, 56, 48),
            "mpt-70b" => (8192, 64, 80),
            _ => return None,
        })
    };
    let config = match name {
        "mpt-7b" => released(4096, 32, 32, 2048),
        "mpt-7b-8k" => released(4096, 32, 32, 8192),
        "mpt-30b" => released(7168, 64, 48, 8192),
        "tiny" => {
            let mut c = released(64, 4, 2, 256);
            c.vocab_size = 50368;
            c.init_config.init_std = None;
            c
        }
        other => {
            let short = other.strip_prefix("pretrain/").unwrap_or(other);
            match shape(short) {
                Some((d, h, l))
                    if other.starts_with("pretrain/") || !matches!(short, "mpt-7b" | "mpt-30b") =>
                {
                    llm_foundry_defaults(d, h, l)
                }
                _ => {
                    return Err(ConfigError::UnknownPreset {
                        name: name.into(),
                        known: NAMES.join(", "),
                    });
                }
            }
        }
    };
    debug_assert!(config.validate().is_ok(), "preset {name} is invalid");
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_name_resolves_and_validates() {
        for name in NAMES {
            let c = by_name(name).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn released_and_pretrain_7b_differ() {
        let released = by_name("mpt-7b").unwrap();
        let pretrain = by_name("pretrain/mpt-7b").unwrap();
        assert!(released.attn_config.alibi && released.no_bias && released.vocab_size == 50432);
        assert!(!pretrain.attn_config.alibi && pretrain.learned_pos_emb && !pretrain.no_bias);
        assert_eq!(by_name("mpt-30b").unwrap().n_heads, 64);
        assert_eq!(by_name("pretrain/mpt-30b").unwrap().n_heads, 56);
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let e = by_name("mpt-9b").unwrap_err().to_string();
        assert!(e.contains("mpt-9b") && e.contains("mpt-7b-8k"), "{e}");
    }
}
