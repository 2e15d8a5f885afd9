//! One optimizer step: forward and backward over the microbatches, gradients accumulated and
//! weighted by loss-generating tokens, global-norm clipping, the NaN guard, the update.
//!
//! Weighting: each microbatch contributes `Σ CE / N`, with `N` the loss tokens of the *whole*
//! step, so the accumulated gradient is that of the mean loss over every token of the step, as
//! llm-foundry's `accumulate_train_batch_on_tokens`. A microbatch with more real tokens weighs
//! more.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use tessera_model::{Mpt, MptInput};

use crate::batch::{DeviceBatch, Example, IGNORE, to_device};
use crate::optim::TrainOptimizer;
use crate::optim::clip::{clip_grad_norm, grad_norm};

// `Mpt::loss_sum` ignores the targets marked with the model's ignore index: the batch's.
const _: () = assert!(IGNORE == tessera_model::loss::IGNORE_INDEX);

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean cross-entropy over the step's loss tokens.
    pub loss: f64,
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
    /// Loss-generating tokens.
    pub loss_tokens: usize,
    /// Input tokens (padding excluded).
    pub tokens: usize,
    /// False when the step was skipped (no loss tokens, or a non-finite loss or gradient); the
    /// model is then unchanged.
    pub applied: bool,
}

/// The inputs of one step that are not the model or the optimizer.
#[derive(Debug, Clone, Copy)]
pub struct StepSettings {
    /// Learning rate for this step (the schedule's value).
    pub lr: f64,
    /// Clip the global gradient norm to this, if set.
    pub clip_norm: Option<f64>,
    /// Seed of this step's dropout masks: a pure function of the run seed and the step, so a
    /// resumed run draws the same masks.
    pub dropout_seed: u64,
}

/// The accumulated gradient of one step, before the update.
pub struct StepGradients {
    pub grads: GradientsParams,
    /// Mean cross-entropy over the step's loss tokens.
    pub loss: f64,
    pub loss_tokens: usize,
    pub tokens: usize,
}

/// Forward and backward over every microbatch of a step; `None` when the step has no loss
/// tokens at all.
pub fn forward_backward<B: AutodiffBackend>(
    model: &Mpt<B>,
    micro: &[Vec<Example>],
    dropout_seed: u64,
    device: &B::Device,
) -> Option<StepGradients> {
    let total_loss_tokens: usize = micro.iter().flatten().map(Example::loss_tokens).sum();
    if total_loss_tokens == 0 {
        return None;
    }
    let mut accumulator = GradientsAccumulator::<Mpt<B>>::new();
    let mut loss_sum = 0.0f64;
    let mut tokens = 0;
    for (i, examples) in micro.iter().enumerate() {
        B::seed(device, mix(dropout_seed, i as u64));
        let batch: DeviceBatch<B> = to_device(examples, device);
        tokens += batch.tokens;
        // Σ CE with the unembedding fused in (the [b, s, vocab] logits are never held).
        let input = MptInput {
            input_ids: batch.input_ids,
            attention_mask: batch.attention_mask,
            sequence_id: batch.sequence_id,
        };
        let ce_sum = model.loss_sum(input, batch.targets);
        let grads = (ce_sum.clone() / total_loss_tokens as f64).backward();
        // Host sync: the microbatch's loss.
        loss_sum += f64::from(ce_sum.into_scalar().elem::<f32>());
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    Some(StepGradients {
        grads: accumulator.grads(),
        loss: loss_sum / total_loss_tokens as f64,
        loss_tokens: total_loss_tokens,
        tokens,
    })
}

/// Clips the gradient (if asked), then applies the update unless the loss or the gradient norm
/// is not finite. Returns the model and the norm before clipping.
pub fn apply_update<B: AutodiffBackend>(
    model: Mpt<B>,
    optim: &mut TrainOptimizer<Mpt<B>, B>,
    mut step: StepGradients,
    lr: f64,
    clip_norm: Option<f64>,
) -> (Mpt<B>, f64, bool) {
    // Host sync: the global gradient norm (one read of every tensor's Σg²).
    let norm = match clip_norm {
        Some(max) => clip_grad_norm(&model, &mut step.grads, max),
        None => grad_norm(&model, &step.grads),
    };
    if !step.loss.is_finite() || !norm.is_finite() {
        return (model, norm, false);
    }
    (optim.step(lr, model, step.grads), norm, true)
}

/// [`forward_backward`] then [`apply_update`]: one whole step.
pub fn train_step<B: AutodiffBackend>(
    model: Mpt<B>,
    optim: &mut TrainOptimizer<Mpt<B>, B>,
    micro: &[Vec<Example>],
    settings: StepSettings,
    device: &B::Device,
) -> (Mpt<B>, StepOutcome) {
    let Some(step) = forward_backward(&model, micro, settings.dropout_seed, device) else {
        let outcome = StepOutcome {
            loss: 0.0,
            grad_norm: 0.0,
            loss_tokens: 0,
            tokens: 0,
            applied: false,
        };
        return (model, outcome);
    };
    let (loss, loss_tokens, tokens) = (step.loss, step.loss_tokens, step.tokens);
    let (model, grad_norm, applied) =
        apply_update(model, optim, step, settings.lr, settings.clip_norm);
    (
        model,
        StepOutcome {
            loss,
            grad_norm,
            loss_tokens,
            tokens,
            applied,
        },
    )
}

/// Mean loss of `examples` under `model` without gradients: `(Σ CE, loss tokens)`.
pub fn eval_loss<B: Backend>(
    model: &Mpt<B>,
    examples: &[Example],
    device: &B::Device,
) -> (f64, usize) {
    let batch: DeviceBatch<B> = to_device(examples, device);
    let input = MptInput {
        input_ids: batch.input_ids,
        attention_mask: batch.attention_mask,
        sequence_id: batch.sequence_id,
    };
    // Host sync: the loss.
    let sum = f64::from(
        model
            .loss_sum(input, batch.targets)
            .into_scalar()
            .elem::<f32>(),
    );
    (sum, batch.loss_tokens)
}

/// SplitMix64 of `a` and `b`: derives per-purpose, per-position seeds from the run seed.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(0x6a09_e667_f3bc_c909);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The inference copy of a training model (dropout off, no autodiff graph).
pub fn inference_model<B: AutodiffBackend>(model: &Mpt<B>) -> Mpt<B::InnerBackend> {
    model.valid()
}

use burn::tensor::ElementConversion as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{OptimizerConfig, OptimizerName};
    use burn::backend::{Autodiff, Flex};
    use tessera_model::MptConfig;

    type B = Autodiff<Flex>;

    fn tiny() -> MptConfig {
        let json =
            r#"{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 64, "max_seq_len": 16}"#;
        MptConfig::from_json_str(json, "test").unwrap()
    }

    fn examples(n: usize, seq: usize, offset: u32) -> Vec<Example> {
        (0..n)
            .map(|r| {
                Example::packed(
                    (0..seq as u32)
                        .map(|t| (t * 7 + r as u32 * 3 + offset) % 64)
                        .collect(),
                    None,
                )
            })
            .collect()
    }

    fn sgd_like() -> OptimizerConfig {
        OptimizerConfig {
            name: OptimizerName::Adamw,
            lr: Some(1e-2),
            betas: None,
            eps: None,
            weight_decay: Some(0.0),
        }
    }

    #[test]
    fn accumulating_microbatches_equals_one_big_batch() {
        let device = Default::default();
        let cfg = tiny();
        let all = examples(4, 12, 1);
        let settings = StepSettings {
            lr: 1e-2,
            clip_norm: None,
            dropout_seed: 5,
        };

        let mut opt_a = sgd_like().init::<B, Mpt<B>>();
        let (a, out_a) = train_step(
            cfg.init::<B>(&device, 3),
            &mut opt_a,
            std::slice::from_ref(&all),
            settings,
            &device,
        );
        let mut opt_b = sgd_like().init::<B, Mpt<B>>();
        let micro = vec![all[..1].to_vec(), all[1..].to_vec()];
        let (b, out_b) = train_step(
            cfg.init::<B>(&device, 3),
            &mut opt_b,
            &micro,
            settings,
            &device,
        );

        assert!(out_a.applied && out_b.applied);
        assert!(
            (out_a.loss - out_b.loss).abs() < 1e-5,
            "{} vs {}",
            out_a.loss,
            out_b.loss
        );
        assert!((out_a.grad_norm - out_b.grad_norm).abs() < 1e-4 * out_a.grad_norm);
        let wa = a.wte.weight.val().into_data().to_vec::<f32>().unwrap();
        let wb = b.wte.weight.val().into_data().to_vec::<f32>().unwrap();
        let max = wa
            .iter()
            .zip(&wb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-5, "weights differ by {max}");
    }

    #[test]
    fn microbatches_are_weighted_by_loss_tokens() {
        // A microbatch with one loss token and one with many: the step's loss is the token mean,
        // not the mean of the two microbatch means.
        let device = Default::default();
        let cfg = tiny();
        let mut short = examples(1, 12, 2);
        for t in short[0].targets.iter_mut().skip(1) {
            *t = IGNORE;
        }
        let long = examples(1, 12, 9);
        let model = cfg.init::<B>(&device, 4);
        let inner = model.valid();
        let (s1, n1) = eval_loss(&inner, &short, &device);
        let (s2, n2) = eval_loss(&inner, &long, &device);
        assert_eq!((n1, n2), (1, 11));
        let mut opt = sgd_like().init::<B, Mpt<B>>();
        let settings = StepSettings {
            lr: 1e-2,
            clip_norm: None,
            dropout_seed: 0,
        };
        let (_, out) = train_step(model, &mut opt, &[short, long], settings, &device);
        let expected = (s1 + s2) / 12.0;
        assert!(
            (out.loss - expected).abs() < 1e-5,
            "{} vs {expected}",
            out.loss
        );
        assert_eq!(out.loss_tokens, 12);
    }

    #[test]
    fn clipping_reports_the_norm_before_clipping() {
        let device = Default::default();
        let cfg = tiny();
        let ex = examples(2, 12, 3);
        let mut opt = sgd_like().init::<B, Mpt<B>>();
        let free = StepSettings {
            lr: 1e-2,
            clip_norm: None,
            dropout_seed: 0,
        };
        let (_, unclipped) = train_step(
            cfg.init::<B>(&device, 6),
            &mut opt,
            std::slice::from_ref(&ex),
            free,
            &device,
        );
        let mut opt = sgd_like().init::<B, Mpt<B>>();
        let clipped = StepSettings {
            clip_norm: Some(1e-3),
            ..free
        };
        let (_, out) = train_step(
            cfg.init::<B>(&device, 6),
            &mut opt,
            std::slice::from_ref(&ex),
            clipped,
            &device,
        );
        assert!((out.grad_norm - unclipped.grad_norm).abs() < 1e-6 * unclipped.grad_norm.max(1.0));
        assert!(out.grad_norm > 1e-3);
    }

    #[test]
    fn a_step_without_loss_tokens_changes_nothing() {
        let device = Default::default();
        let cfg = tiny();
        let mut ex = examples(1, 8, 0);
        ex[0].targets = vec![IGNORE; 8];
        let model = cfg.init::<B>(&device, 1);
        let before = model.wte.weight.val().into_data();
        let mut opt = sgd_like().init::<B, Mpt<B>>();
        let settings = StepSettings {
            lr: 1.0,
            clip_norm: None,
            dropout_seed: 0,
        };
        let (after, out) = train_step(model, &mut opt, &[ex], settings, &device);
        assert!(!out.applied);
        assert_eq!(after.wte.weight.val().into_data(), before);
    }

    #[test]
    fn an_amp_bf16_step_runs_on_flex_and_keeps_weights_and_optimizer_state_f32() {
        use burn::optim::Optimizer;
        use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
        use burn::tensor::{DType, FloatDType};

        use crate::optim::OptimState;

        fn state_dtypes<Bk: Backend, const D: usize>(s: &OptimState<Bk, D>) -> Vec<DType> {
            match s {
                OptimState::Adam(a) => vec![a.exp_avg.dtype(), a.exp_avg_sq.dtype()],
                OptimState::Lion(_) => panic!("AdamW was configured"),
            }
        }
        let device = Default::default();
        let model = tiny()
            .init::<B>(&device, 3)
            .with_compute_dtype(Some(FloatDType::BF16));
        let mut opt = sgd_like().init::<B, Mpt<B>>();
        let settings = StepSettings {
            lr: 1e-2,
            clip_norm: Some(1.0),
            dropout_seed: 0,
        };
        let ex = examples(2, 12, 5);
        let (after, out) = train_step(
            model,
            &mut opt,
            std::slice::from_ref(&ex),
            settings,
            &device,
        );
        assert!(
            out.applied && out.loss.is_finite() && out.grad_norm > 0.0,
            "{out:?}"
        );
        assert_eq!(after.compute_dtype(), Some(FloatDType::BF16));
        assert_eq!(after.wte.weight.val().dtype(), DType::F32);
        let record = opt.to_record();
        assert!(!record.is_empty());
        for r in record.values() {
            let AdaptorRecord::V1(v1) = r;
            let dtypes = match v1 {
                AdaptorRecordV1::Rank1(s) => state_dtypes(s),
                AdaptorRecordV1::Rank2(s) => state_dtypes(s),
                _ => panic!("MPT parameters are vectors and matrices"),
            };
            assert!(
                dtypes.iter().all(|d| *d == DType::F32),
                "optimizer state {dtypes:?}"
            );
        }
        // And the step moved the loss the way an f32 step does.
        let (_, f32_out) = train_step(
            tiny().init::<B>(&device, 3),
            &mut sgd_like().init::<B, Mpt<B>>(),
            &[ex],
            settings,
            &device,
        );
        assert!(
            (out.loss - f32_out.loss).abs() < 0.05 * f32_out.loss,
            "{} vs {}",
            out.loss,
            f32_out.loss
        );
    }

    #[test]
    fn seeds_differ_by_purpose_and_position() {
        assert_ne!(mix(17, 0), mix(17, 1));
        assert_ne!(mix(17, 1), mix(18, 1));
        assert_eq!(mix(17, 1), mix(17, 1));
    }
}
