//! The decision rules of llm-foundry's ICL metrics, given the model's numbers
//! (`llmfoundry/eval/metrics/nlp.py`). Kept apart from the model code so that they can be
//! checked against recorded reference outputs without running a model.

/// `InContextLearningLMAccuracy`: correct iff every continuation token is the argmax of the
/// logits that predict it.
pub fn lm_correct(argmax_ids: &[u32], continuation_ids: &[u32]) -> bool {
    argmax_ids == continuation_ids
}

/// `InContextLearningMultipleChoiceAccuracy`: the choice with the lowest perplexity
/// `exp(mean CE)`, computed in float32, first index on ties.
pub fn select_lowest_perplexity(mean_ces: &[f64]) -> usize {
    let ppl: Vec<f32> = mean_ces.iter().map(|&ce| (ce as f32).exp()).collect();
    let mut best = 0;
    for (i, &p) in ppl.iter().enumerate() {
        if p < ppl[best] {
            best = i;
        }
    }
    best
}

/// Second-smallest minus smallest mean CE (how close the decision was); infinite with fewer
/// than two choices.
pub fn ce_margin(mean_ces: &[f64]) -> f64 {
    let mut sorted = mean_ces.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.len() > 1 {
        sorted[1] - sorted[0]
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_perplexity_takes_first_index_on_ties() {
        assert_eq!(select_lowest_perplexity(&[2.0, 1.0, 1.0]), 1);
        assert_eq!(select_lowest_perplexity(&[0.5]), 0);
        // Mean CEs that differ below float32 resolution tie after exp, as in llm-foundry.
        assert_eq!(select_lowest_perplexity(&[13.0 + 1e-9, 13.0]), 0);
    }

    #[test]
    fn margin_and_lm_rule() {
        assert_eq!(ce_margin(&[3.0, 1.0, 1.5]), 0.5);
        assert!(ce_margin(&[1.0]).is_infinite());
        assert!(lm_correct(&[1, 2], &[1, 2]));
        assert!(!lm_correct(&[1, 2], &[1, 3]));
    }
}
