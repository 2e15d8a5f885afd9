//! What training holds in memory besides activations, full fine-tuning against LoRA: the
//! weights, their gradients and AdamW's two moments, all f32 except a base stored in bf16.
//! `tessera bench-lora` measures the same quantities on a CPU shape to check this arithmetic.

use burn::tensor::FloatDType;

use super::LoraError;
use super::adapter::{present_targets, target_dims};
use super::config::LoraConfig;
use crate::config::MptConfig;

/// Parameter counts and bytes of one training setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainingMemory {
    /// Parameters of the base model.
    pub base_params: u64,
    /// Parameters that get gradients and optimizer state (all of them without LoRA).
    pub trainable_params: u64,
    /// Base (in its storage dtype) plus adapters (f32).
    pub weight_bytes: u64,
    /// One f32 gradient per trainable parameter.
    pub grad_bytes: u64,
    /// AdamW's first and second moments, f32, per trainable parameter.
    pub optimizer_bytes: u64,
}

impl TrainingMemory {
    /// Weights, gradients and optimizer state together.
    pub fn total_bytes(&self) -> u64 {
        self.weight_bytes + self.grad_bytes + self.optimizer_bytes
    }
}

/// Parameters of `lora`'s adapter on `model`.
pub fn adapter_params(model: &MptConfig, lora: &LoraConfig) -> Result<u64, LoraError> {
    let per_block: u64 = present_targets(lora, model)?
        .into_iter()
        .map(|t| {
            let (d_out, d_in) = target_dims(model, t).expect("present target");
            (lora.r * (d_in + d_out)) as u64
        })
        .sum();
    Ok(per_block * model.n_layers as u64)
}

/// The memory of full fine-tuning (`lora` None: f32 weights, all trainable) or of LoRA with the
/// frozen base's matrices stored in `base_dtype` (norms and biases stay f32, as
/// [`crate::Mpt::with_base_dtype`] keeps them).
pub fn training_memory(
    model: &MptConfig,
    lora: Option<&LoraConfig>,
    base_dtype: FloatDType,
) -> Result<TrainingMemory, LoraError> {
    let base = model.num_params();
    let Some(lora) = lora else {
        return Ok(TrainingMemory {
            base_params: base,
            trainable_params: base,
            weight_bytes: 4 * base,
            grad_bytes: 4 * base,
            optimizer_bytes: 8 * base,
        });
    };
    // The matrices: every linear weight and the embeddings; what remains is norms and biases.
    let matrices: u64 = crate::spec::param_specs(model)
        .iter()
        .filter(|s| s.shape.len() == 2 && s.name != "transformer.wpe.weight")
        .map(|s| s.numel() as u64)
        .sum();
    let low = match base_dtype {
        FloatDType::F32 => 4,
        FloatDType::F64 => 8,
        _ => 2,
    };
    let adapter = adapter_params(model, lora)?;
    Ok(TrainingMemory {
        base_params: base,
        trainable_params: adapter,
        weight_bytes: low * matrices + 4 * (base - matrices) + 4 * adapter,
        grad_bytes: 4 * adapter,
        optimizer_bytes: 8 * adapter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::TargetModule;

    #[test]
    fn mpt_7b_fits_one_80gb_gpu_only_with_lora() {
        let cfg = MptConfig::preset("mpt-7b").unwrap();
        let full = training_memory(&cfg, None, FloatDType::F32).unwrap();
        let lora = LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            target_modules: vec![
                TargetModule::Wqkv,
                TargetModule::OutProj,
                TargetModule::UpProj,
                TargetModule::DownProj,
            ],
            ..Default::default()
        };
        let bf16 = training_memory(&cfg, Some(&lora), FloatDType::BF16).unwrap();
        // 6.65e9 parameters; r 8 on the four layers: 8 · (4096 + 12288 + 4096 + 4096 +
        // 4096 + 16384 + 16384 + 4096) = 524,288 per block, 32 blocks.
        assert_eq!(bf16.trainable_params, 524_288 * 32);
        assert!(full.total_bytes() > 80_000_000_000, "{full:?}");
        assert!(bf16.total_bytes() < 14_000_000_000, "{bf16:?}");
    }
}
