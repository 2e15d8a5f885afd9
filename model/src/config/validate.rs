//! [`MptConfig::validate`]: the invariants the model relies on, each error naming its field.

use super::*;

fn invalid(field: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: "<config>".into(),
        field: field.into(),
        message,
    }
}

impl MptConfig {
    /// Checks every invariant the model relies on; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.attn_config;
        let positive = [
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
            ("max_seq_len", self.max_seq_len),
            ("vocab_size", self.vocab_size),
            ("attn_config.kv_n_heads", a.kv_n_heads),
            ("ffn_config.ffn_hidden_size", self.ffn_config.hidden_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(invalid(field, "must be positive, found 0".into()));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(invalid(
                "n_heads",
                format!(
                    "d_model ({}) must be divisible by n_heads ({})",
                    self.d_model, self.n_heads
                ),
            ));
        }
        if a.kv_n_heads > self.n_heads || !self.n_heads.is_multiple_of(a.kv_n_heads) {
            return Err(invalid(
                "attn_config.kv_n_heads",
                format!(
                    "n_heads ({}) must be a multiple of kv_n_heads ({})",
                    self.n_heads, a.kv_n_heads
                ),
            ));
        }
        match a.attn_type {
            AttnType::MultiHead if a.kv_n_heads != self.n_heads => {
                return Err(invalid(
                    "attn_config.kv_n_heads",
                    format!(
                        "multihead_attention needs kv_n_heads == n_heads ({}), found {}",
                        self.n_heads, a.kv_n_heads
                    ),
                ));
            }
            AttnType::MultiQuery if a.kv_n_heads != 1 => {
                return Err(invalid(
                    "attn_config.kv_n_heads",
                    format!(
                        "multiquery_attention needs kv_n_heads == 1, found {}",
                        a.kv_n_heads
                    ),
                ));
            }
            _ => {}
        }
        let probs = [
            ("attn_config.attn_pdrop", a.attn_pdrop),
            ("resid_pdrop", self.resid_pdrop),
            ("emb_pdrop", self.emb_pdrop),
        ];
        for (field, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(invalid(
                    field,
                    format!("a probability in [0, 1], found {p}"),
                ));
            }
        }
        if !(self.embedding_fraction > 0.0 && self.embedding_fraction <= 1.0) {
            return Err(invalid(
                "embedding_fraction",
                format!("must be in (0, 1], found {}", self.embedding_fraction),
            ));
        }
        let expected_hidden = self.d_model as f64 * self.expansion_ratio;
        if self.expansion_ratio <= 0.0 || !expected_hidden.is_finite() {
            return Err(invalid(
                "expansion_ratio",
                format!("must be positive, found {}", self.expansion_ratio),
            ));
        }
        if a.qk_ln && a.qk_gn {
            return Err(invalid(
                "attn_config.qk_gn",
                "qk_ln and qk_gn cannot both be true".into(),
            ));
        }
        if a.alibi && a.rope {
            return Err(invalid(
                "attn_config.rope",
                "alibi and rope cannot both be true".into(),
            ));
        }
        if self.learned_pos_emb && (a.alibi || a.rope) {
            return Err(invalid(
                "learned_pos_emb",
                "must be false when alibi or rope is on (llm-foundry forces it off)".into(),
            ));
        }
        if a.rope && !self.head_dim().is_multiple_of(2) {
            return Err(invalid(
                "attn_config.rope",
                format!("rope needs an even head_dim, found {}", self.head_dim()),
            ));
        }
        let positive_f = [
            ("attn_config.clip_qkv", a.clip_qkv),
            ("attn_config.softmax_scale", a.softmax_scale),
            (
                "attn_config.attn_logit_softcapping",
                a.attn_logit_softcapping,
            ),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_config.rope_theta", Some(a.rope_theta)),
            (
                "attn_config.rope_hf_config.factor",
                Some(a.rope_scaling_factor),
            ),
        ];
        for (field, v) in positive_f {
            if let Some(v) = v
                && !(v > 0.0 && v.is_finite())
            {
                return Err(invalid(
                    field,
                    format!("must be a positive number, found {v}"),
                ));
            }
        }
        if a.rope_impl == RopeImpl::Dail && a.rope_scaling_factor != 1.0 {
            return Err(invalid(
                "attn_config.rope_hf_config.factor",
                "position scaling needs rope_impl hf".into(),
            ));
        }
        if !(self.norm_eps >= 0.0 && self.norm_eps.is_finite()) {
            return Err(invalid(
                "norm_eps",
                format!("must be >= 0, found {}", self.norm_eps),
            ));
        }
        if self.init_config.name == InitName::Baseline && self.init_config.init_std.is_none() {
            return Err(invalid(
                "init_config.init_std",
                "baseline_ initialisation needs init_std".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field_for_indivisible_heads() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.n_heads = 5;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("n_heads") && e.contains("64"), "{e}");
    }

    #[test]
    fn validate_rejects_kv_heads_that_do_not_divide_heads() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.attn_config.attn_type = AttnType::GroupedQuery;
        c.attn_config.kv_n_heads = 3;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("attn_config.kv_n_heads"), "{e}");
    }

    #[test]
    fn validate_rejects_alibi_with_rope() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.attn_config.alibi = true;
        c.attn_config.rope = true;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("attn_config.rope"), "{e}");
    }

    #[test]
    fn validate_rejects_both_qk_norms_and_bad_probabilities() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.attn_config.qk_ln = true;
        c.attn_config.qk_gn = true;
        assert!(c.validate().unwrap_err().to_string().contains("qk_gn"));
        let mut c = MptConfig::preset("tiny").unwrap();
        c.resid_pdrop = 1.5;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("resid_pdrop")
        );
    }

    #[test]
    fn softmax_scale_defaults_to_inverse_sqrt_head_dim() {
        let c = MptConfig::preset("tiny").unwrap();
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.softmax_scale(), 0.25);
    }
}
