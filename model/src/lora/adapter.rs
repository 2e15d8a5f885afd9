//! The adapter's weights: one [`LoraLayer`] per adapted linear layer, grouped per block
//! ([`BlockLora`]), and a whole model's worth ([`Adapter`]), with PEFT's initialisation.
//!
//! A layer computes `y = W x + scale · B A dropout(x)` (PEFT's `lora.Linear.forward`:
//! `lora_B(lora_A(dropout(x))) * scaling`), with `A: [r, d_in]` and `B: [d_out, r]` in
//! PyTorch's layout, so they are stored exactly as PEFT's `lora_A.weight` / `lora_B.weight`.

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::FloatDType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::LoraError;
use super::config::{LoraConfig, LoraInit, TargetModule};
use crate::config::{FfnType, MptConfig};
use crate::linear::product;

/// One linear layer's adapter.
#[derive(Module, Debug)]
pub struct LoraLayer<B: Backend> {
    /// PEFT's `lora_A.weight`, `[r, d_in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// PEFT's `lora_B.weight`, `[d_out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `alpha / r` (or `alpha / √r`).
    pub scale: f64,
    /// Dropout on the adapter's input; active only on autodiff backends (training).
    pub dropout: f64,
}

impl<B: Backend> LoraLayer<B> {
    /// The first product, `dropout(x) Aᵀ`, which several row blocks of one layer can share
    /// (see [`crate::linear::Linear::forward_rows_in`]).
    ///
    /// # Shapes
    /// - `x`: `[rows, d_in]` -> `[rows, r]`
    pub fn down(&self, x: Tensor<B, 2>, compute: Option<FloatDType>) -> Tensor<B, 2> {
        let x = if self.dropout > 0.0 {
            Dropout { prob: self.dropout }.forward(x)
        } else {
            x
        };
        product(x, self.lora_a.val(), compute)
    }

    /// The second product, `scale · h Bᵀ`, for output features `start..start + len` when
    /// `rows` is given (one block of a fused `Wqkv`), else for all of them.
    ///
    /// # Shapes
    /// - `h`: `[rows, r]` -> `[rows, len or d_out]`
    pub fn up(
        &self,
        h: Tensor<B, 2>,
        rows: Option<(usize, usize)>,
        compute: Option<FloatDType>,
    ) -> Tensor<B, 2> {
        let b = match rows {
            Some((start, len)) => self.lora_b.val().narrow(0, start, len),
            None => self.lora_b.val(),
        };
        product(h, b, compute) * self.scale
    }

    /// The whole update, `scale · B A dropout(x)`.
    ///
    /// # Shapes
    /// - `x`: `[rows, d_in]` -> `[rows, d_out]`
    pub fn delta(&self, x: Tensor<B, 2>, compute: Option<FloatDType>) -> Tensor<B, 2> {
        self.up(self.down(x, compute), None, compute)
    }

    /// The update as a weight, `scale · B A` (what merging adds to `W`).
    ///
    /// # Shapes
    /// - returns `[d_out, d_in]`
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        self.lora_b.val().matmul(self.lora_a.val()) * self.scale
    }

    /// `(d_out, d_in)`.
    pub fn dims(&self) -> (usize, usize) {
        let [d_out, _] = self.lora_b.dims();
        let [_, d_in] = self.lora_a.dims();
        (d_out, d_in)
    }
}

/// The adapters of one block, by target (absent: not adapted).
#[derive(Module, Debug)]
pub struct BlockLora<B: Backend> {
    /// On `attn.Wqkv`.
    pub wqkv: Option<LoraLayer<B>>,
    /// On `attn.out_proj`.
    pub out_proj: Option<LoraLayer<B>>,
    /// On `ffn.up_proj`.
    pub up_proj: Option<LoraLayer<B>>,
    /// On `ffn.gate_proj`.
    pub gate_proj: Option<LoraLayer<B>>,
    /// On `ffn.down_proj`.
    pub down_proj: Option<LoraLayer<B>>,
}

impl<B: Backend> BlockLora<B> {
    /// The adapter on `target`, if any.
    pub fn get(&self, target: TargetModule) -> Option<&LoraLayer<B>> {
        match target {
            TargetModule::Wqkv => self.wqkv.as_ref(),
            TargetModule::OutProj => self.out_proj.as_ref(),
            TargetModule::UpProj => self.up_proj.as_ref(),
            TargetModule::GateProj => self.gate_proj.as_ref(),
            TargetModule::DownProj => self.down_proj.as_ref(),
        }
    }

    /// The slot of `target`.
    pub fn slot(&mut self, target: TargetModule) -> &mut Option<LoraLayer<B>> {
        match target {
            TargetModule::Wqkv => &mut self.wqkv,
            TargetModule::OutProj => &mut self.out_proj,
            TargetModule::UpProj => &mut self.up_proj,
            TargetModule::GateProj => &mut self.gate_proj,
            TargetModule::DownProj => &mut self.down_proj,
        }
    }

    /// No adapter anywhere.
    pub fn empty() -> Self {
        Self {
            wqkv: None,
            out_proj: None,
            up_proj: None,
            gate_proj: None,
            down_proj: None,
        }
    }
}

/// A LoRA adapter for a whole model: its settings and every block's layer adapters. What PEFT
/// saves as `adapter_config.json` + `adapter_model.safetensors` ([`super::peft`]).
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    /// One entry per block.
    pub blocks: Vec<BlockLora<B>>,
    /// The settings it was made with.
    pub config: LoraConfig,
}

/// `(d_out, d_in)` of `target` in `model`'s blocks, or `None` when the model has no such layer
/// (`gate_proj` without a GLU feed-forward).
pub fn target_dims(model: &MptConfig, target: TargetModule) -> Option<(usize, usize)> {
    let (d, h) = (model.d_model, model.ffn_config.hidden_size);
    match target {
        TargetModule::Wqkv => Some((model.qkv_dim(), d)),
        TargetModule::OutProj => Some((d, d)),
        TargetModule::UpProj => Some((h, d)),
        TargetModule::GateProj => (model.ffn_config.ffn_type == FfnType::MptGlu).then_some((h, d)),
        TargetModule::DownProj => Some((d, h)),
    }
}

/// The targets of `config` that `model` has (as PEFT, a listed name no layer carries is
/// skipped; none at all is an error).
pub(crate) fn present_targets(
    config: &LoraConfig,
    model: &MptConfig,
) -> Result<Vec<TargetModule>, LoraError> {
    let present: Vec<TargetModule> = config
        .target_modules
        .iter()
        .copied()
        .filter(|t| target_dims(model, *t).is_some())
        .collect();
    if present.is_empty() {
        let names: Vec<&str> = config.target_modules.iter().map(|t| t.name()).collect();
        return Err(LoraError::Model {
            message: format!("target_modules {names:?}: no such layer in this model"),
        });
    }
    Ok(present)
}

/// PEFT's tensor name of one factor: `base_model.model.transformer.blocks.{i}.attn.Wqkv.lora_A.weight`.
pub fn peft_name(block: usize, target: TargetModule, factor: Factor) -> String {
    format!(
        "base_model.model.transformer.blocks.{block}.{}.{}.weight",
        target.path(),
        factor.name()
    )
}

/// One of the two matrices of a layer's adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// `lora_A`, `[r, d_in]`.
    A,
    /// `lora_B`, `[d_out, r]`.
    B,
}

impl Factor {
    /// PEFT's module name.
    pub fn name(self) -> &'static str {
        match self {
            Factor::A => "lora_A",
            Factor::B => "lora_B",
        }
    }
}

impl<B: Backend> Adapter<B> {
    /// A new adapter for `model`, initialised as PEFT does (see [`LoraInit`]), with values
    /// determined by `seed` alone (one ChaCha20 stream per tensor, keyed by its PEFT name).
    pub fn init(
        config: &LoraConfig,
        model: &MptConfig,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        let targets = present_targets(config, model)?;
        let r = config.r;
        let blocks = (0..model.n_layers)
            .map(|i| {
                let mut block = BlockLora::empty();
                for &t in &targets {
                    let (d_out, d_in) = target_dims(model, t).expect("present target");
                    // `nn.Linear`'s default init: kaiming-uniform with a = √5, i.e. uniform in
                    // ±1/√fan_in. PEFT's default then zeroes B.
                    let a = uniform(seed, &peft_name(i, t, Factor::A), r * d_in, d_in);
                    let b = match config.init_lora_weights {
                        LoraInit::Standard => vec![0.0; d_out * r],
                        LoraInit::Random => {
                            uniform(seed, &peft_name(i, t, Factor::B), d_out * r, r)
                        }
                    };
                    *block.slot(t) = Some(LoraLayer {
                        lora_a: param(a, [r, d_in], device),
                        lora_b: param(b, [d_out, r], device),
                        scale: config.scale(),
                        dropout: config.lora_dropout,
                    });
                }
                block
            })
            .collect();
        Ok(Self {
            blocks,
            config: config.clone(),
        })
    }

    /// Every adapted layer: `(block, target, layer)`, in block then target order.
    pub fn layers(&self) -> impl Iterator<Item = (usize, TargetModule, &LoraLayer<B>)> {
        self.blocks.iter().enumerate().flat_map(|(i, b)| {
            TargetModule::ALL
                .into_iter()
                .filter_map(move |t| b.get(t).map(|l| (i, t, l)))
        })
    }
}

pub(crate) fn param<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 2],
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// `n` values uniform in `±1/√fan_in` from the stream of (`seed`, `name`).
fn uniform(seed: u64, name: &str, n: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&crate::init::fnv1a(name).to_le_bytes());
    key[16..24].copy_from_slice(b"lora-ini");
    let mut rng = ChaCha20Rng::from_seed(key);
    (0..n)
        .map(|_| (-bound + 2.0 * bound * rng.random::<f64>()) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn model_cfg(glu: bool) -> MptConfig {
        let ffn = if glu {
            r#", "ffn_config": {"ffn_type": "mptglu"}"#
        } else {
            ""
        };
        MptConfig::from_json_str(
            &format!(
                r#"{{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 64, "max_seq_len": 16{ffn}}}"#
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn standard_init_is_peft_kaiming_a_and_zero_b() {
        let cfg = LoraConfig {
            r: 4,
            target_modules: TargetModule::ALL.to_vec(),
            ..Default::default()
        };
        let dev = Default::default();
        let a = Adapter::<Flex>::init(&cfg, &model_cfg(false), 3, &dev).unwrap();
        // No GLU: gate_proj is skipped, as PEFT skips names no module carries.
        let targets: Vec<_> = a.layers().filter(|l| l.0 == 0).map(|l| l.1).collect();
        assert_eq!(
            targets,
            vec![
                TargetModule::Wqkv,
                TargetModule::OutProj,
                TargetModule::UpProj,
                TargetModule::DownProj
            ]
        );
        let down = a.blocks[1].down_proj.as_ref().unwrap();
        assert_eq!(down.lora_a.dims(), [4, 128]);
        assert_eq!(down.lora_b.dims(), [32, 4]);
        let av: Vec<f32> = down.lora_a.val().into_data().to_vec().unwrap();
        let bound = 1.0 / 128f32.sqrt();
        assert!(av.iter().all(|v| v.abs() <= bound));
        assert!(av.iter().any(|v| v.abs() > 0.8 * bound));
        let bv: Vec<f32> = down.lora_b.val().into_data().to_vec().unwrap();
        assert!(bv.iter().all(|v| *v == 0.0));
        // Same seed, same values; another seed, others.
        let again = Adapter::<Flex>::init(&cfg, &model_cfg(false), 3, &dev).unwrap();
        let other = Adapter::<Flex>::init(&cfg, &model_cfg(false), 4, &dev).unwrap();
        let first = |a: &Adapter<Flex>| -> Vec<f32> {
            a.blocks[1]
                .down_proj
                .as_ref()
                .unwrap()
                .lora_a
                .val()
                .into_data()
                .to_vec()
                .unwrap()
        };
        assert_eq!(first(&again), av);
        assert_ne!(first(&other), av);
    }

    #[test]
    fn random_init_draws_b_too_and_missing_targets_are_an_error() {
        let cfg = LoraConfig {
            r: 2,
            init_lora_weights: LoraInit::Random,
            target_modules: vec![TargetModule::GateProj],
            ..Default::default()
        };
        let dev = Default::default();
        let a = Adapter::<Flex>::init(&cfg, &model_cfg(true), 1, &dev).unwrap();
        let b: Vec<f32> = a.blocks[0]
            .gate_proj
            .as_ref()
            .unwrap()
            .lora_b
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        assert!(b.iter().all(|v| v.abs() <= 1.0 / 2f32.sqrt()) && b.iter().any(|v| *v != 0.0));
        let e = Adapter::<Flex>::init(&cfg, &model_cfg(false), 1, &dev).unwrap_err();
        assert!(e.to_string().contains("gate_proj"), "{e}");
    }

    #[test]
    fn delta_is_scaled_b_a_x() {
        let dev = Default::default();
        let layer = LoraLayer::<Flex> {
            lora_a: param(vec![1.0, 2.0], [1, 2], &dev),
            lora_b: param(vec![3.0, -1.0, 0.5], [3, 1], &dev),
            scale: 2.0,
            dropout: 0.0,
        };
        let x = Tensor::<Flex, 2>::from_floats([[1.0, 1.0], [0.0, -1.0]], &dev);
        // A x = [3, -2]; B (A x) = [[9, -3, 1.5], [-6, 2, -1]]; times 2.
        let y: Vec<f32> = layer.delta(x, None).into_data().to_vec().unwrap();
        assert_eq!(y, vec![18.0, -6.0, 3.0, -12.0, 4.0, -2.0]);
        let w: Vec<f32> = layer.delta_weight().into_data().to_vec().unwrap();
        assert_eq!(w, vec![6.0, 12.0, -2.0, -4.0, 1.0, 2.0]);
    }
}
