//! One optimizer step, the one the trainer runs: forward and backward over the microbatches,
//! gradients accumulated and weighted by loss-generating tokens and synced over ranks, then
//! global-norm clipping and the update (see [`crate::parallel::Sharded`], which does the work),
//! with the guards' verdict in between.
//!
//! Weighting: each microbatch contributes `Σ CE / N`, with `N` the loss tokens of the *whole*
//! step over every rank, so the accumulated gradient is that of the mean loss over every token
//! of the step, as llm-foundry's `accumulate_train_batch_on_tokens`. A microbatch with more real
//! tokens weighs more.

use burn::tensor::backend::{AutodiffBackend, Backend};
use tessera_model::{Mpt, MptInput};

use crate::batch::{DeviceBatch, Example, IGNORE, to_device};
use crate::parallel::Sharded;

// `Mpt::loss_sum` ignores the targets marked with the model's ignore index: the batch's.
const _: () = assert!(IGNORE == tessera_model::loss::IGNORE_INDEX);

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean cross-entropy over the step's loss tokens (over every rank).
    pub loss: f64,
    /// Global L2 norm of the gradient before clipping (NaN when there was none).
    pub grad_norm: f64,
    /// Loss-generating tokens (over every rank).
    pub loss_tokens: u64,
    /// Input tokens, padding excluded (over every rank).
    pub tokens: u64,
    /// False when the step was skipped (no loss tokens, or a non-finite loss or gradient); the
    /// model is then unchanged.
    pub applied: bool,
    /// Seconds spent in collectives.
    pub comm_s: f64,
}

/// The inputs of one step that are not the model or its state.
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

/// What the guards decide about a step from its loss, before its update.
#[derive(Debug)]
pub enum Verdict<H> {
    /// Apply the update.
    Apply,
    /// Leave the model as it is; `H` says what to do instead (skip the batch, roll back…).
    Hold(H),
}

/// One whole step: [`Sharded::forward_backward`] over this rank's microbatches `micro`, then
/// `judge` sees the step's loss and its tokens (padding excluded), then [`Sharded::apply`] unless it held the
/// update. Every training loop in tessera runs this function.
pub fn train_step<B: AutodiffBackend, H, E: From<tessera_dist::DistError>>(
    sharded: &mut Sharded<B>,
    micro: &[Vec<Example>],
    settings: StepSettings,
    device: &B::Device,
    judge: impl FnOnce(f64, u64) -> Result<Verdict<H>, E>,
) -> Result<(StepOutcome, Option<H>), E> {
    sharded.reset_comm_time();
    let first_micro = sharded.comm.rank() * micro.len();
    let grads = sharded.forward_backward(micro, first_micro, settings.dropout_seed, device)?;
    let (loss, loss_tokens, tokens) = (grads.loss, grads.loss_tokens, grads.tokens);
    let (grad_norm, applied, held) = match judge(loss, tokens)? {
        Verdict::Apply => {
            let applied = sharded.apply(grads, settings.lr, settings.clip_norm)?;
            (applied.grad_norm, applied.applied, None)
        }
        Verdict::Hold(h) => (f64::NAN, false, Some(h)),
    };
    let outcome = StepOutcome {
        loss,
        grad_norm,
        loss_tokens,
        tokens,
        applied,
        comm_s: sharded.comm_seconds(),
    };
    Ok((outcome, held))
}

/// [`train_step`] with no guard in between: the update is always offered to the optimizer
/// (which still skips a non-finite one).
pub fn unguarded_step<B: AutodiffBackend>(
    sharded: &mut Sharded<B>,
    micro: &[Vec<Example>],
    settings: StepSettings,
    device: &B::Device,
) -> Result<StepOutcome, tessera_dist::DistError> {
    let apply = |_, _| Ok::<_, tessera_dist::DistError>(Verdict::<()>::Apply);
    Ok(train_step(sharded, micro, settings, device, apply)?.0)
}

/// The seed of the dropout masks of the step that follows `done` steps: a pure function of
/// the run seed and the step, so a resumed run draws the same masks.
pub fn dropout_seed(seed: u64, done: u64) -> u64 {
    /// The purpose of this derived random stream.
    const DROPOUT: u64 = 0xd20;
    mix(mix(seed, DROPOUT), done)
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

use burn::tensor::ElementConversion as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{OptimizerConfig, OptimizerName};
    use crate::parallel::Strategy;
    use burn::backend::{Autodiff, Flex};
    use tessera_dist::Communicator;
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

    fn sharded(cfg: &MptConfig, seed: u64, strategy: Strategy) -> Sharded<B> {
        let device = Default::default();
        Sharded::new(
            cfg.init::<B>(&device, seed),
            sgd_like().build(),
            strategy,
            Communicator::single(),
            &device,
        )
        .unwrap()
    }

    fn weights(s: &Sharded<B>) -> Vec<f32> {
        s.model
            .wte
            .weight
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    }

    const SETTINGS: StepSettings = StepSettings {
        lr: 1e-2,
        clip_norm: None,
        dropout_seed: 5,
    };

    #[test]
    fn accumulating_microbatches_equals_one_big_batch() {
        let device = Default::default();
        let cfg = tiny();
        let all = examples(4, 12, 1);
        let mut a = sharded(&cfg, 3, Strategy::SINGLE);
        let out_a = unguarded_step(&mut a, std::slice::from_ref(&all), SETTINGS, &device).unwrap();
        let mut b = sharded(&cfg, 3, Strategy::SINGLE);
        let micro = vec![all[..1].to_vec(), all[1..].to_vec()];
        let out_b = unguarded_step(&mut b, &micro, SETTINGS, &device).unwrap();

        assert!(out_a.applied && out_b.applied);
        assert!(
            (out_a.loss - out_b.loss).abs() < 1e-5,
            "{} vs {}",
            out_a.loss,
            out_b.loss
        );
        assert!((out_a.grad_norm - out_b.grad_norm).abs() < 1e-4 * out_a.grad_norm);
        let max = weights(&a)
            .iter()
            .zip(&weights(&b))
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-5, "weights differ by {max}");
    }

    #[test]
    fn the_blockwise_backward_gives_the_whole_backwards_step_bit_for_bit() {
        // Activation checkpointing (and FSDP, which runs the same block loop) changes where
        // memory goes, not the arithmetic.
        let device = Default::default();
        let cfg = tiny();
        let micro = vec![examples(2, 12, 4), examples(2, 12, 9)];
        let mut whole = sharded(&cfg, 8, Strategy::SINGLE);
        let mut blocks = sharded(
            &cfg,
            8,
            Strategy {
                recompute: true,
                ..Strategy::SINGLE
            },
        );
        for _ in 0..3 {
            let a = unguarded_step(&mut whole, &micro, SETTINGS, &device).unwrap();
            let b = unguarded_step(&mut blocks, &micro, SETTINGS, &device).unwrap();
            assert_eq!(a.loss.to_bits(), b.loss.to_bits());
            assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
        }
        assert!(weights(&whole) == weights(&blocks));
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
        let mut s = sharded(&cfg, 4, Strategy::SINGLE);
        let inner = burn::module::AutodiffModule::valid(&s.model);
        let (s1, n1) = eval_loss(&inner, &short, &device);
        let (s2, n2) = eval_loss(&inner, &long, &device);
        assert_eq!((n1, n2), (1, 11));
        let out = unguarded_step(&mut s, &[short, long], SETTINGS, &device).unwrap();
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
        let mut free = sharded(&cfg, 6, Strategy::SINGLE);
        let unclipped =
            unguarded_step(&mut free, std::slice::from_ref(&ex), SETTINGS, &device).unwrap();
        let mut clipped = sharded(&cfg, 6, Strategy::SINGLE);
        let settings = StepSettings {
            clip_norm: Some(1e-3),
            ..SETTINGS
        };
        let out =
            unguarded_step(&mut clipped, std::slice::from_ref(&ex), settings, &device).unwrap();
        assert!((out.grad_norm - unclipped.grad_norm).abs() < 1e-6 * unclipped.grad_norm.max(1.0));
        assert!(out.grad_norm > 1e-3);
        assert!(weights(&free) != weights(&clipped));
    }

    #[test]
    fn a_step_without_loss_tokens_changes_nothing() {
        let device = Default::default();
        let cfg = tiny();
        let mut ex = examples(1, 8, 0);
        ex[0].targets = vec![IGNORE; 8];
        let mut s = sharded(&cfg, 1, Strategy::SINGLE);
        let before = weights(&s);
        let settings = StepSettings {
            lr: 1.0,
            ..SETTINGS
        };
        let out = unguarded_step(&mut s, &[ex], settings, &device).unwrap();
        assert!(!out.applied);
        assert_eq!(weights(&s), before);
    }

    #[test]
    fn an_amp_bf16_step_runs_on_flex_and_keeps_weights_and_optimizer_state_f32() {
        use burn::tensor::{DType, FloatDType};

        use crate::optim::OptimState;

        let device = Default::default();
        let cfg = tiny();
        let mut s = sharded(&cfg, 3, Strategy::SINGLE);
        s.model = s.model.clone().with_compute_dtype(Some(FloatDType::BF16));
        let settings = StepSettings {
            clip_norm: Some(1.0),
            ..SETTINGS
        };
        let ex = examples(2, 12, 5);
        let out = unguarded_step(&mut s, std::slice::from_ref(&ex), settings, &device).unwrap();
        assert!(
            out.applied && out.loss.is_finite() && out.grad_norm > 0.0,
            "{out:?}"
        );
        assert_eq!(s.model.compute_dtype(), Some(FloatDType::BF16));
        assert_eq!(s.model.wte.weight.val().dtype(), DType::F32);
        for (master, state) in s.state.master.iter().zip(&s.state.optim) {
            assert_eq!(master.dtype(), DType::F32);
            match state {
                Some(OptimState::Adam(a)) => {
                    assert_eq!(a.exp_avg.dtype(), DType::F32);
                    assert_eq!(a.exp_avg_sq.dtype(), DType::F32);
                }
                other => panic!("AdamW state expected, found {}", other.is_some()),
            }
        }
        // And the step moved the loss the way an f32 step does.
        let mut f32_run = sharded(&cfg, 3, Strategy::SINGLE);
        let f32_out = unguarded_step(&mut f32_run, &[ex], settings, &device).unwrap();
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
