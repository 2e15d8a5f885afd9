//! The parameter table: every tensor of an MPT, with its checkpoint name, shape and init role,
//! derived from the config. This is the one place the checkpoint layout is written down; model
//! construction ([`crate::mpt`]), initialisation ([`crate::init`]), HF import/export
//! ([`crate::hf`]) and the parameter count ([`crate::counts`]) all read it.
//!
//! Names are transformers' (`MptForCausalLM` state dict): `transformer.` + the module path, with
//! the fused projection spelled `Wqkv`; the untied unembedding is `lm_head.weight`.

use std::collections::HashMap;

use burn::module::Param;
use burn::prelude::*;

use crate::config::{FfnType, MptConfig};
use crate::linear::{Embedding, Linear};
use crate::norm::Norm;

/// How a parameter is initialised (llm-foundry `param_init_fns.py` module kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// A Linear weight `[out, in]`.
    LinearWeight {
        /// The rows are independent slices of this many rows, each initialised as its own
        /// tensor (llm-foundry's `_fused` attribute on `Wqkv`: one slice per head).
        fused_rows: Option<usize>,
        /// A residual projection (`out_proj`, `down_proj`): divided by the residual factor.
        residual: bool,
    },
    /// A Linear bias: zeros (uniform in `±1/sqrt(fan_in)` under `default_`).
    LinearBias {
        /// Input width of the Linear layer.
        fan_in: usize,
    },
    /// A norm weight: ones.
    NormWeight,
    /// A norm bias: zeros.
    NormBias,
    /// An embedding table `[rows, d_model]` (`wte`, `wpe`).
    Embedding,
}

/// One parameter of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Checkpoint (transformers) name.
    pub name: String,
    /// Shape, PyTorch layout.
    pub shape: Vec<usize>,
    /// Init role.
    pub role: ParamRole,
}

impl ParamSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// All parameters of an MPT with this config, in checkpoint order.
pub fn param_specs(cfg: &MptConfig) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    let d = cfg.d_model;
    let hd = cfg.head_dim();
    let has_norm_bias = !cfg.no_bias && !cfg.norm_type.is_rms();
    let mut push = |name: String, shape: Vec<usize>, role: ParamRole| {
        out.push(ParamSpec { name, shape, role })
    };
    let norm = |push: &mut dyn FnMut(String, Vec<usize>, ParamRole), prefix: &str, width: usize| {
        push(
            format!("{prefix}.weight"),
            vec![width],
            ParamRole::NormWeight,
        );
        if has_norm_bias {
            push(format!("{prefix}.bias"), vec![width], ParamRole::NormBias);
        }
    };
    let linear = |push: &mut dyn FnMut(String, Vec<usize>, ParamRole),
                  prefix: &str,
                  out_f: usize,
                  in_f: usize,
                  bias: bool,
                  fused_rows: Option<usize>,
                  residual: bool| {
        push(
            format!("{prefix}.weight"),
            vec![out_f, in_f],
            ParamRole::LinearWeight {
                fused_rows,
                residual,
            },
        );
        if bias {
            push(
                format!("{prefix}.bias"),
                vec![out_f],
                ParamRole::LinearBias { fan_in: in_f },
            );
        }
    };

    push(
        "transformer.wte.weight".into(),
        vec![cfg.vocab_size, d],
        ParamRole::Embedding,
    );
    if cfg.learned_pos_emb {
        push(
            "transformer.wpe.weight".into(),
            vec![cfg.max_seq_len, d],
            ParamRole::Embedding,
        );
    }
    let a = &cfg.attn_config;
    for i in 0..cfg.n_layers {
        let p = format!("transformer.blocks.{i}");
        norm(&mut push, &format!("{p}.norm_1"), d);
        linear(
            &mut push,
            &format!("{p}.attn.Wqkv"),
            cfg.qkv_dim(),
            d,
            cfg.attention_bias,
            Some(hd),
            false,
        );
        if a.qk_ln || a.qk_gn {
            let (q, k) = if a.qk_gn {
                (hd, hd)
            } else {
                (d, a.kv_n_heads * hd)
            };
            norm(&mut push, &format!("{p}.attn.q_ln"), q);
            norm(&mut push, &format!("{p}.attn.k_ln"), k);
        }
        linear(
            &mut push,
            &format!("{p}.attn.out_proj"),
            d,
            d,
            !cfg.no_bias,
            None,
            true,
        );
        norm(&mut push, &format!("{p}.norm_2"), d);
        let h = cfg.ffn_config.hidden_size;
        linear(
            &mut push,
            &format!("{p}.ffn.up_proj"),
            h,
            d,
            !cfg.no_bias,
            None,
            false,
        );
        if cfg.ffn_config.ffn_type == FfnType::MptGlu {
            linear(
                &mut push,
                &format!("{p}.ffn.gate_proj"),
                h,
                d,
                !cfg.no_bias,
                None,
                false,
            );
        }
        linear(
            &mut push,
            &format!("{p}.ffn.down_proj"),
            d,
            h,
            !cfg.no_bias,
            None,
            true,
        );
    }
    norm(&mut push, "transformer.norm_f", d);
    if !cfg.tie_word_embeddings {
        linear(&mut push, "lm_head", cfg.vocab_size, d, false, None, false);
    }
    out
}

/// The checkpoint name of a burn module path (`blocks.0.attn.wqkv.weight` ->
/// `transformer.blocks.0.attn.Wqkv.weight`).
pub fn hf_name(path: &str) -> String {
    if path.starts_with("lm_head.") {
        return path.to_string();
    }
    let renamed: Vec<&str> = path
        .split('.')
        .map(|p| if p == "wqkv" { "Wqkv" } else { p })
        .collect();
    format!("transformer.{}", renamed.join("."))
}

/// Builds modules from the parameter table, asking `source` for each tensor's data.
///
/// The source must return exactly the spec's shape (callers check shapes first).
pub(crate) struct Builder<'a, B: Backend> {
    specs: HashMap<String, ParamSpec>,
    source: &'a mut dyn FnMut(&ParamSpec) -> TensorData,
    device: B::Device,
}

impl<'a, B: Backend> Builder<'a, B> {
    pub(crate) fn new(
        cfg: &MptConfig,
        device: &B::Device,
        source: &'a mut dyn FnMut(&ParamSpec) -> TensorData,
    ) -> Self {
        let specs = param_specs(cfg)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        Self {
            specs,
            source,
            device: device.clone(),
        }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }

    fn data(&mut self, name: &str) -> TensorData {
        let spec = self
            .specs
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the parameter table"));
        let data = (self.source)(spec);
        assert_eq!(
            data.shape.as_slice(),
            spec.shape.as_slice(),
            "source returned the wrong shape for {name}"
        );
        data
    }

    pub(crate) fn param2(&mut self, name: &str) -> Param<Tensor<B, 2>> {
        let data = self.data(name);
        Param::from_tensor(Tensor::from_data(data, &self.device))
    }

    pub(crate) fn param1(&mut self, name: &str) -> Param<Tensor<B, 1>> {
        let data = self.data(name);
        Param::from_tensor(Tensor::from_data(data, &self.device))
    }

    fn opt1(&mut self, name: &str) -> Option<Param<Tensor<B, 1>>> {
        self.has(name).then(|| self.param1(name))
    }

    pub(crate) fn linear(&mut self, prefix: &str) -> Linear<B> {
        Linear {
            weight: self.param2(&format!("{prefix}.weight")),
            bias: self.opt1(&format!("{prefix}.bias")),
            lora: None,
        }
    }

    pub(crate) fn embedding(&mut self, prefix: &str) -> Embedding<B> {
        Embedding {
            weight: self.param2(&format!("{prefix}.weight")),
        }
    }

    pub(crate) fn norm(&mut self, prefix: &str, cfg: &MptConfig) -> Norm<B> {
        Norm {
            weight: self.param1(&format!("{prefix}.weight")),
            bias: self.opt1(&format!("{prefix}.bias")),
            eps: cfg.norm_eps,
            rms: cfg.norm_type.is_rms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_name_maps_module_paths_to_checkpoint_names() {
        assert_eq!(hf_name("wte.weight"), "transformer.wte.weight");
        assert_eq!(
            hf_name("blocks.3.attn.wqkv.bias"),
            "transformer.blocks.3.attn.Wqkv.bias"
        );
        assert_eq!(hf_name("lm_head.weight"), "lm_head.weight");
    }

    #[test]
    fn fixture_like_config_has_transformers_tensor_list() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.vocab_size = 512;
        let names: Vec<String> = param_specs(&c).into_iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 1 + 2 * 6 + 1);
        assert_eq!(names[0], "transformer.wte.weight");
        assert_eq!(names[2], "transformer.blocks.0.attn.Wqkv.weight");
        assert_eq!(names.last().unwrap(), "transformer.norm_f.weight");
    }
}
