//! Parameter and FLOP counts, as llm-foundry reports them (`mpt_param_count.py` and
//! `ComposerMPTCausalLM.flops_per_batch`).

use crate::config::MptConfig;
use crate::spec::param_specs;

impl MptConfig {
    /// Number of parameters (`sum(p.numel())`; a tied `lm_head` is not counted twice).
    pub fn num_params(&self) -> u64 {
        param_specs(self).iter().map(|s| s.numel() as u64).sum()
    }

    /// Parameters that cost matmul FLOPs (llm-foundry's `n_active_params`): all of them, except
    /// that an untied `wte` is a pure lookup and is left out.
    pub fn num_flop_params(&self) -> u64 {
        let wte = (self.vocab_size * self.d_model) as u64;
        if self.tie_word_embeddings {
            self.num_params()
        } else {
            self.num_params() - wte
        }
    }

    /// FLOPs for one sequence of `seq_len` tokens: `2 N S + 4 L d S^2` for a forward (the
    /// second term is the two attention matmuls), times 3 with the backward.
    pub fn flops_per_sequence(&self, seq_len: usize, training: bool) -> f64 {
        let s = seq_len as f64;
        let params = 2.0 * self.num_flop_params() as f64 * s;
        let attn = 4.0 * self.n_layers as f64 * self.d_model as f64 * s * s;
        (params + attn) * if training { 3.0 } else { 1.0 }
    }

    /// [`MptConfig::flops_per_sequence`] divided by `seq_len`.
    pub fn flops_per_token(&self, seq_len: usize, training: bool) -> f64 {
        self.flops_per_sequence(seq_len, training) / seq_len.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_checkpoints_have_their_published_sizes() {
        assert_eq!(
            MptConfig::preset("mpt-7b").unwrap().num_params(),
            6_649_286_656
        );
        assert_eq!(
            MptConfig::preset("mpt-7b-8k").unwrap().num_params(),
            6_649_286_656
        );
        assert_eq!(
            MptConfig::preset("mpt-30b").unwrap().num_params(),
            29_957_200_896
        );
    }

    /// llm-foundry's default MPT (learned positions, biases, LayerNorm with bias, tied):
    /// `V d + S d + L (12 d^2 + 13 d) + 2 d` — per block: two LayerNorms `4d`, `Wqkv`
    /// `3d^2 + 3d`, `out_proj` `d^2 + d`, `up_proj` `4d^2 + 4d`, `down_proj` `4d^2 + d`;
    /// then `norm_f` `2d`.
    fn pretrain_count(d: u64, l: u64) -> u64 {
        let (v, s) = (50368, 2048);
        v * d + s * d + l * (12 * d * d + 13 * d) + 2 * d
    }

    #[test]
    fn pretrain_presets_match_the_closed_form() {
        let cases = [
            ("mpt-125m", 768, 12, 125_311_488),
            ("mpt-350m", 1024, 24, 355_985_408),
            ("mpt-760m", 1536, 24, 760_470_528),
            ("mpt-1b", 2048, 24, 1_315_950_592),
            ("mpt-3b", 2560, 32, 2_651_837_440),
            ("pretrain/mpt-7b", 4096, 32, 6_658_859_008),
            ("mpt-13b", 5120, 40, 12_853_954_560),
            ("pretrain/mpt-30b", 7168, 48, 29_975_214_080),
            ("mpt-70b", 8192, 80, 64_862_437_376),
        ];
        for (name, d, l, literal) in cases {
            let got = MptConfig::preset(name).unwrap().num_params();
            assert_eq!(got, pretrain_count(d, l), "{name}");
            assert_eq!(got, literal, "{name}");
        }
    }

    #[test]
    fn flops_follow_llm_foundry_formula() {
        let c = MptConfig::preset("mpt-7b").unwrap();
        let n = 6_649_286_656f64;
        let want = 3.0 * (2.0 * n * 2048.0 + 4.0 * 32.0 * 4096.0 * 2048.0 * 2048.0);
        assert_eq!(c.flops_per_sequence(2048, true), want);
        assert_eq!(c.flops_per_sequence(2048, false), want / 3.0);
        let mut untied = c.clone();
        untied.tie_word_embeddings = false;
        // lm_head added, wte excluded: the FLOP parameter count is unchanged.
        assert_eq!(untied.num_flop_params(), c.num_params());
        assert_eq!(untied.num_params(), c.num_params() + 50432 * 4096);
    }
}
