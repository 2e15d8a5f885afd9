//! Parameter initialisation as llm-foundry's `param_init_fns.py`, deterministic from a seed.
//!
//! Values are drawn on the host and uploaded with `Tensor::from_data`, so every backend gets
//! bit-identical weights. Each tensor has its own ChaCha20 stream keyed by (seed, "init",
//! checkpoint name), split into fixed-size chunks with their own stream index, so the result
//! depends neither on construction order nor on the number of threads.
//!
//! What llm-foundry does, per module kind:
//! - Linear weights: the scheme's init function, applied per fused slice (`Wqkv` has one slice
//!   per head, which matters for `fan_out` and xavier); residual projections (`out_proj`,
//!   `down_proj`) are then divided by `init_div_is_residual` (default `sqrt(2 n_layers)`;
//!   `neox_init_` uses `n_layers / sqrt(10)`). Linear biases: zeros.
//! - Norms: weight ones, bias zeros.
//! - Embeddings (`wte`, `wpe`): `emb_init_std` (normal), else `emb_init_uniform_lim`
//!   (uniform), else the scheme's function with `fan_in = d_model`.
//! - `default_` is torch's own `reset_parameters`: Linear weight and bias uniform in
//!   `±1/sqrt(fan_in)`, embeddings standard normal, and no residual division.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::config::{
    ConfigError, EmbInit, FanMode, InitName, MptConfig, Nonlinearity, ResidualDiv,
};
use crate::mpt::Mpt;
use crate::spec::{ParamRole, ParamSpec};

/// Elements per independently seeded chunk.
const CHUNK: usize = 1 << 16;

/// A distribution to fill a tensor with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InitDist {
    /// All elements equal.
    Constant(f64),
    /// Normal with mean 0 and this std.
    Normal(f64),
    /// Uniform on `[lo, hi)`.
    Uniform(f64, f64),
}

impl MptConfig {
    /// A freshly initialised model, as llm-foundry would initialise it with this config, with
    /// weights determined by `seed` alone; an invalid config is an error (see
    /// [`MptConfig::validate`]) naming the field.
    pub fn try_init<B: Backend>(
        &self,
        device: &B::Device,
        seed: u64,
    ) -> Result<Mpt<B>, ConfigError> {
        self.validate()?;
        let mut source =
            |spec: &ParamSpec| TensorData::new(init_values(self, spec, seed), spec.shape.clone());
        Ok(Mpt::build(self, device, &mut source))
    }

    /// [`MptConfig::try_init`] for a config known to be valid (configs from JSON and presets
    /// always are).
    ///
    /// # Panics
    /// If the config is invalid, with [`MptConfig::validate`]'s message. Use
    /// [`MptConfig::try_init`] for a config built or edited in code.
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Mpt<B> {
        self.try_init(device, seed)
            .unwrap_or_else(|e| panic!("MptConfig::init on an invalid config: {e}"))
    }
}

/// `torch.nn.init.calculate_gain`.
fn gain(nonlinearity: Nonlinearity, a: f64) -> f64 {
    match nonlinearity {
        Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu => (2.0 / (1.0 + a * a)).sqrt(),
        Nonlinearity::Selu => 0.75,
    }
}

/// The scheme's function for a 2-D weight (or one fused slice of it) of `[fan_out, fan_in]`.
fn scheme_dist(cfg: &MptConfig, fan_out: usize, fan_in: usize) -> InitDist {
    let i = &cfg.init_config;
    let fan = match i.fan_mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    } as f64;
    let small_std = (2.0 / (5.0 * cfg.d_model as f64)).sqrt();
    match i.name {
        InitName::KaimingNormal => InitDist::Normal(gain(i.nonlinearity, i.init_gain) / fan.sqrt()),
        InitName::KaimingUniform => {
            let bound = gain(i.nonlinearity, i.init_gain) * (3.0 / fan).sqrt();
            InitDist::Uniform(-bound, bound)
        }
        InitName::XavierNormal => {
            InitDist::Normal(i.init_gain * (2.0 / (fan_in + fan_out) as f64).sqrt())
        }
        InitName::XavierUniform => {
            let a = i.init_gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
            InitDist::Uniform(-a, a)
        }
        InitName::Baseline => InitDist::Normal(i.init_std.unwrap_or(0.0)),
        InitName::SmallInit | InitName::NeoxInit => InitDist::Normal(small_std),
        InitName::Default => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            InitDist::Uniform(-bound, bound)
        }
    }
}

/// What the residual projections are divided by (1 = nothing).
pub fn residual_divisor(cfg: &MptConfig) -> f64 {
    match cfg.init_config.name {
        InitName::Default => 1.0,
        InitName::NeoxInit => cfg.n_layers as f64 / 10f64.sqrt(),
        _ => match cfg.init_config.residual_div {
            ResidualDiv::Off => 1.0,
            ResidualDiv::SqrtTwoNLayers => (2.0 * cfg.n_layers as f64).sqrt(),
            ResidualDiv::Value(v) => v,
        },
    }
}

/// The distribution of a parameter, and the divisor applied after drawing.
pub fn param_dist(cfg: &MptConfig, spec: &ParamSpec) -> (InitDist, f64) {
    match spec.role {
        ParamRole::LinearWeight {
            fused_rows,
            residual,
        } => {
            let (rows, cols) = (spec.shape[0], spec.shape[1]);
            // Every fused slice has the same shape, so one distribution serves them all.
            let fan_out = fused_rows.unwrap_or(rows);
            let div = if residual { residual_divisor(cfg) } else { 1.0 };
            (scheme_dist(cfg, fan_out, cols), div)
        }
        ParamRole::LinearBias { fan_in } => match cfg.init_config.name {
            InitName::Default => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                (InitDist::Uniform(-bound, bound), 1.0)
            }
            _ => (InitDist::Constant(0.0), 1.0),
        },
        ParamRole::NormWeight => (InitDist::Constant(1.0), 1.0),
        ParamRole::NormBias => (InitDist::Constant(0.0), 1.0),
        ParamRole::Embedding => {
            let dist = match cfg.init_config.emb_init {
                EmbInit::Std(s) => InitDist::Normal(s),
                EmbInit::Uniform(lo, hi) => InitDist::Uniform(lo, hi),
                EmbInit::Scheme if cfg.init_config.name == InitName::Default => {
                    InitDist::Normal(1.0)
                }
                EmbInit::Scheme => scheme_dist(cfg, spec.shape[0], spec.shape[1]),
            };
            (dist, 1.0)
        }
    }
}

/// FNV-1a, a fixed hash of the parameter name (std's hasher may change between releases).
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The initial values of one parameter (row-major, PyTorch layout).
pub fn init_values(cfg: &MptConfig, spec: &ParamSpec, seed: u64) -> Vec<f32> {
    let (dist, div) = param_dist(cfg, spec);
    let n = spec.numel();
    if let InitDist::Constant(c) = dist {
        return vec![(c / div) as f32; n];
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&fnv1a(&spec.name).to_le_bytes());
    key[16..24].copy_from_slice(b"mpt-init");
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = ChaCha20Rng::from_seed(key);
            rng.set_stream(i as u64);
            for v in chunk.iter_mut() {
                let x = match dist {
                    InitDist::Normal(std) => {
                        let z: f64 = StandardNormal.sample(&mut rng);
                        z * std
                    }
                    InitDist::Uniform(lo, hi) => lo + (hi - lo) * rng.random::<f64>(),
                    InitDist::Constant(c) => c,
                };
                *v = (x / div) as f32;
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::param_specs;

    fn stats(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    fn spec(cfg: &MptConfig, name: &str) -> ParamSpec {
        param_specs(cfg)
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
    }

    fn cfg() -> MptConfig {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.d_model = 128;
        c.n_heads = 4;
        c.n_layers = 8;
        c.ffn_config.hidden_size = 512;
        c.vocab_size = 1000;
        c
    }

    #[test]
    fn kaiming_fan_in_slice_and_residual_statistics() {
        let c = cfg();
        let wqkv = init_values(&c, &spec(&c, "transformer.blocks.0.attn.Wqkv.weight"), 7);
        let (m, s) = stats(&wqkv);
        let want = (2.0f64 / 128.0).sqrt();
        assert!(
            m.abs() < 0.003 && (s / want - 1.0).abs() < 0.02,
            "mean {m} std {s} want {want}"
        );
        // out_proj is residual: divided by sqrt(2 n_layers) = 4.
        let out = init_values(
            &c,
            &spec(&c, "transformer.blocks.3.attn.out_proj.weight"),
            7,
        );
        let (_, s) = stats(&out);
        assert!((s / (want / 4.0) - 1.0).abs() < 0.03, "std {s}");
        // down_proj: fan_in = hidden 512, residual.
        let down = init_values(
            &c,
            &spec(&c, "transformer.blocks.0.ffn.down_proj.weight"),
            7,
        );
        let (_, s) = stats(&down);
        assert!(
            (s / ((2.0f64 / 512.0).sqrt() / 4.0) - 1.0).abs() < 0.03,
            "std {s}"
        );
    }

    #[test]
    fn fan_out_uses_the_fused_slice_height() {
        let mut c = cfg();
        c.init_config.fan_mode = FanMode::FanOut;
        let wqkv = init_values(&c, &spec(&c, "transformer.blocks.0.attn.Wqkv.weight"), 1);
        let (_, s) = stats(&wqkv);
        // One slice per head: fan_out = head_dim 32, not 384.
        let want = (2.0f64 / 32.0).sqrt();
        assert!((s / want - 1.0).abs() < 0.02, "std {s} want {want}");
    }

    #[test]
    fn small_neox_baseline_and_embedding_overrides() {
        let mut c = cfg();
        c.init_config.name = InitName::NeoxInit;
        let (d, div) = param_dist(&c, &spec(&c, "transformer.blocks.0.attn.out_proj.weight"));
        assert_eq!(d, InitDist::Normal((2.0f64 / (5.0 * 128.0)).sqrt()));
        assert!((div - 8.0 / 10f64.sqrt()).abs() < 1e-12);
        c.init_config.name = InitName::Baseline;
        c.init_config.init_std = Some(0.02);
        c.init_config.emb_init = EmbInit::Uniform(-0.1, 0.1);
        let (d, _) = param_dist(&c, &spec(&c, "transformer.wte.weight"));
        assert_eq!(d, InitDist::Uniform(-0.1, 0.1));
        let wte = init_values(&c, &spec(&c, "transformer.wte.weight"), 3);
        assert!(wte.iter().all(|&x| (-0.1..0.1).contains(&x)));
        let (d, _) = param_dist(&c, &spec(&c, "transformer.blocks.0.ffn.up_proj.weight"));
        assert_eq!(d, InitDist::Normal(0.02));
    }

    #[test]
    fn norms_are_ones_and_biases_zeros() {
        let mut c = cfg();
        c.no_bias = false;
        c.attention_bias = true;
        assert!(
            init_values(&c, &spec(&c, "transformer.norm_f.weight"), 1)
                .iter()
                .all(|&x| x == 1.0)
        );
        assert!(
            init_values(&c, &spec(&c, "transformer.norm_f.bias"), 1)
                .iter()
                .all(|&x| x == 0.0)
        );
        assert!(
            init_values(&c, &spec(&c, "transformer.blocks.0.attn.Wqkv.bias"), 1)
                .iter()
                .all(|&x| x == 0.0)
        );
    }

    #[test]
    fn try_init_refuses_an_invalid_config_naming_the_field() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.n_heads = 3;
        let err = c
            .try_init::<burn::backend::Flex>(&Default::default(), 0)
            .expect_err("d_model is not a multiple of 3 heads")
            .to_string();
        assert!(
            err.contains("n_heads") && err.contains("divisible"),
            "{err}"
        );
    }

    #[test]
    fn try_init_builds_what_init_builds() {
        let c = MptConfig::preset("tiny").unwrap();
        let dev = Default::default();
        let a = c.try_init::<burn::backend::Flex>(&dev, 3).unwrap();
        let b = c.init::<burn::backend::Flex>(&dev, 3);
        let wte = |m: &Mpt<burn::backend::Flex>| m.wte.weight.val().into_data();
        assert_eq!(wte(&a), wte(&b));
    }

    #[test]
    #[should_panic(expected = "MptConfig::init on an invalid config")]
    fn init_panics_on_an_invalid_config() {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.vocab_size = 0;
        c.init::<burn::backend::Flex>(&Default::default(), 0);
    }

    #[test]
    fn init_is_deterministic_per_seed_and_name() {
        let c = cfg();
        let s = spec(&c, "transformer.wte.weight");
        assert_eq!(init_values(&c, &s, 5), init_values(&c, &s, 5));
        assert_ne!(init_values(&c, &s, 5), init_values(&c, &s, 6));
        let a = init_values(&c, &spec(&c, "transformer.blocks.0.ffn.up_proj.weight"), 5);
        let b = init_values(&c, &spec(&c, "transformer.blocks.1.ffn.up_proj.weight"), 5);
        assert_ne!(a, b);
    }
}
