//! Next-token cross-entropy as llm-foundry computes it (`torch.nn.CrossEntropyLoss` with
//! `ignore_index=-100`, `reduction='none'`), plus the target shift.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// llm-foundry's `CROSS_ENTROPY_IGNORE_INDEX`.
pub const IGNORE_INDEX: i64 = -100;

/// Per-token cross-entropy `-log softmax(logits)[target]`, 0 where `target == ignore_index`.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`, `targets`: `[batch, seq]` -> `[batch, seq]`
pub fn token_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    ignore_index: i64,
) -> Tensor<B, 2> {
    let [b, s, _] = logits.dims();
    let ignored = targets.clone().equal_elem(ignore_index);
    let safe = targets.mask_fill(ignored.clone(), 0);
    let logp = log_softmax(logits, 2);
    let picked = logp.gather(2, safe.reshape([b, s, 1])).reshape([b, s]);
    picked.neg().mask_fill(ignored, 0.0)
}

/// Mean of [`token_cross_entropy`] over the non-ignored tokens (0 when all are ignored, as
/// llm-foundry's `compute_loss_from_logits`).
///
/// # Shapes
/// - returns `[1]`
pub fn mean_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    ignore_index: i64,
) -> Tensor<B, 1> {
    let count = targets
        .clone()
        .not_equal_elem(ignore_index)
        .int()
        .sum()
        .float()
        .clamp_min(1.0);
    token_cross_entropy(logits, targets, ignore_index).sum() / count
}

/// Targets for next-token prediction: `targets[:, t] = input_ids[:, t + 1]`, with
/// [`IGNORE_INDEX`] at the last position and wherever the target token is padding
/// (llm-foundry's `get_targets`, which rolls the labels left).
///
/// # Shapes
/// - `input_ids`, `attention_mask`: `[batch, seq]` -> `[batch, seq]`
pub fn next_token_targets<B: Backend>(
    input_ids: Tensor<B, 2, Int>,
    attention_mask: Option<Tensor<B, 2, Bool>>,
) -> Tensor<B, 2, Int> {
    let [b, s] = input_ids.dims();
    let device = input_ids.device();
    let ignore = Tensor::<B, 2, Int>::full([b, 1], IGNORE_INDEX, &device);
    let mut targets = input_ids.narrow(1, 1, s - 1);
    if let Some(mask) = attention_mask {
        targets = targets.mask_fill(mask.narrow(1, 1, s - 1).bool_not(), IGNORE_INDEX);
    }
    Tensor::cat(vec![targets, ignore], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn cross_entropy_matches_closed_form_and_ignores() {
        let dev = Default::default();
        let logits = Tensor::<Flex, 3>::from_floats([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]], &dev);
        let targets = Tensor::<Flex, 2, Int>::from_ints([[1, -100]], &dev);
        let l = token_cross_entropy(logits.clone(), targets.clone(), IGNORE_INDEX)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let lse = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
        assert!((l[0] as f64 - (lse - 2.0)).abs() < 1e-6);
        assert_eq!(l[1], 0.0);
        let m = mean_cross_entropy(logits, targets, IGNORE_INDEX).into_scalar();
        assert!((m as f64 - (lse - 2.0)).abs() < 1e-6);
    }

    #[test]
    fn targets_shift_left_and_ignore_padding() {
        let dev = Default::default();
        let ids = Tensor::<Flex, 2, Int>::from_ints([[5, 6, 7, 0], [1, 2, 3, 4]], &dev);
        let mask = Tensor::<Flex, 2, Bool>::from_data([[true, true, true, false], [true; 4]], &dev);
        let t = next_token_targets(ids, Some(mask))
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        assert_eq!(t, vec![6, 7, -100, -100, 2, 3, 4, -100]);
    }
}
