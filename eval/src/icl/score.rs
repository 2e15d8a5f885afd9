//! Batched scoring of continuations: one forward pass per batch, then, for every continuation
//! token, its log-probability, cross-entropy and the argmax of the logits predicting it.
//!
//! Attention masks come from sequence lengths. llm-foundry instead masks every position whose
//! id equals the pad id (its pad is EOS for gpt-neox), which also hides an EOS token that
//! appears as text inside a prompt; results differ only for such prompts.
//!
//! Sequences are right-padded to the longest in their batch rather than to `max_seq_len` as
//! llm-foundry does. Under a causal mask a position never attends to later ones, and ALiBi is
//! relative, so trailing padding cannot change any real position's logits; padding less only
//! saves work (the README's "results do not depend on batching beyond float noise"). Sorting
//! by length before batching keeps padding small.
//!
//! The unembedding runs only on the hidden states that predict continuation tokens
//! (`Mpt::forward_features`, then `Mpt::logits` on the selected rows): with a 50k vocabulary
//! the full `[batch, seq, vocab]` logits would dominate both time and memory. The
//! log-softmax, argmax and top-two gap of those rows are computed on the device in float32
//! (as `torch.nn.functional.cross_entropy` does) and only four numbers per token are read back.

use burn::prelude::*;
use burn::tensor::TensorData;
use tessera_model::{Mpt, MptInput};

use super::IclError;
use super::prompt::ScoredSequence;

/// Batching limits for scoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreOptions {
    /// Sequences per forward pass (`device_eval_batch_size`).
    pub batch_size: usize,
    /// Token id placed in padding positions (never scored).
    pub pad_id: u32,
    /// Also compute each position's argmax and top-two gap (language modeling and
    /// `is_greedy` need them; multiple choice needs only log-probabilities, and skipping them
    /// saves two passes over `[tokens, vocab]`).
    pub argmax: bool,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            batch_size: 4,
            pad_id: 0,
            argmax: true,
        }
    }
}

/// What the model says about one sequence's continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinuationScore {
    /// `log p(token)` of each continuation token.
    pub logprobs: Vec<f64>,
    /// Argmax of the logits that predict each continuation token (first index on ties);
    /// empty unless [`ScoreOptions::argmax`] was set.
    pub argmax: Vec<u32>,
    /// Smallest gap between the top two logits over the continuation positions (NaN unless
    /// [`ScoreOptions::argmax`] was set).
    pub min_top2_gap: f64,
}

impl ContinuationScore {
    /// Mean per-token cross-entropy (what multiple choice compares).
    pub fn mean_ce(&self) -> f64 {
        -self.logprobs.iter().sum::<f64>() / self.logprobs.len() as f64
    }

    /// Sum of log-probabilities (lm-eval-harness's loglikelihood).
    pub fn sum_logprob(&self) -> f64 {
        self.logprobs.iter().sum()
    }

    /// Whether every continuation token is the argmax (`is_greedy`; LM accuracy).
    pub fn is_greedy(&self, continuation: &[u32]) -> bool {
        self.argmax.as_slice() == continuation
    }
}

/// Scores every sequence's continuation, batched. Results are in the order of `seqs`.
pub fn score_sequences<B: Backend>(
    model: &Mpt<B>,
    seqs: &[&ScoredSequence],
    opts: &ScoreOptions,
    device: &B::Device,
) -> Result<Vec<ContinuationScore>, IclError> {
    if opts.batch_size == 0 {
        return Err(IclError::Model("batch size must be positive".into()));
    }
    let max_seq_len = model.config().max_seq_len;
    if let Some(long) = seqs.iter().find(|q| q.tokens.len() > max_seq_len + 1) {
        return Err(IclError::Model(format!(
            "a sequence of {} tokens needs {} positions but the model has max_seq_len {max_seq_len}; \
             lower the task's max_seq_len",
            long.tokens.len(),
            long.tokens.len() - 1
        )));
    }
    // Longest first: batches hold similar lengths and the first batch shows the peak memory.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].tokens.len()));

    let mut out: Vec<Option<ContinuationScore>> = vec![None; seqs.len()];
    for chunk in order.chunks(opts.batch_size) {
        let batch: Vec<&ScoredSequence> = chunk.iter().map(|&i| seqs[i]).collect();
        for (&i, score) in chunk.iter().zip(score_batch(model, &batch, opts, device)?) {
            out[i] = Some(score);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// One forward pass over `batch` (right-padded), returning each continuation's scores.
fn score_batch<B: Backend>(
    model: &Mpt<B>,
    batch: &[&ScoredSequence],
    opts: &ScoreOptions,
    device: &B::Device,
) -> Result<Vec<ContinuationScore>, IclError> {
    let pad_id = opts.pad_id;
    let b = batch.len();
    let s = batch
        .iter()
        .map(|q| q.tokens.len().saturating_sub(1))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut ids = vec![i64::from(pad_id); b * s];
    let mut wanted = Vec::new(); // flat [b*s] positions whose logits predict a continuation token
    for (r, q) in batch.iter().enumerate() {
        if q.context_len == 0 || q.context_len >= q.tokens.len() {
            return Err(IclError::Model(format!(
                "sequence of {} tokens has context length {}; need at least one of each",
                q.tokens.len(),
                q.context_len
            )));
        }
        let input = &q.tokens[..q.tokens.len() - 1];
        for (p, &t) in input.iter().enumerate() {
            ids[r * s + p] = i64::from(t);
        }
        wanted.extend((q.context_len - 1..q.tokens.len() - 1).map(|p| (r * s + p) as i64));
    }
    let input_ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, s]), device);
    // [b, s, d]
    let hidden = model.forward_features(MptInput::new(input_ids));
    let [_, _, d] = hidden.dims();
    let n = wanted.len();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(wanted, [n]), device);
    // [n, d] -> [n, v]: unembed only the rows that predict continuation tokens.
    let logits = model.logits(
        hidden
            .reshape([b * s, d])
            .select(0, index)
            .reshape([1, n, d]),
    );
    let [_, _, v] = logits.dims();
    let logits = logits.reshape([n, v]);
    let targets: Vec<i64> = batch
        .iter()
        .flat_map(|q| q.continuation().iter().map(|&t| i64::from(t)))
        .collect();
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(IclError::Model(format!(
            "token {t} is outside the model's vocabulary of {v}"
        )));
    }
    let stats = row_stats(logits, targets, opts.argmax, device)?;

    let mut results = Vec::with_capacity(b);
    let mut row = 0;
    for q in batch {
        let k = q.continuation().len();
        let range = row..row + k;
        row += k;
        results.push(ContinuationScore {
            logprobs: stats.logprob[range.clone()]
                .iter()
                .map(|&x| f64::from(x))
                .collect(),
            argmax: stats
                .argmax
                .get(range.clone())
                .map(<[u32]>::to_vec)
                .unwrap_or_default(),
            min_top2_gap: match stats.top2_gap.get(range) {
                Some(gaps) => gaps.iter().fold(f64::INFINITY, |m, &g| m.min(f64::from(g))),
                None => f64::NAN,
            },
        });
    }
    Ok(results)
}

/// Per-row statistics of `[n, vocab]` logits, computed on the device so that only `4n`
/// numbers cross to the host.
struct RowStats {
    /// `log_softmax(row)[target]` (float32, as `torch.nn.functional.cross_entropy`).
    logprob: Vec<f32>,
    /// First index of the row's maximum (`torch.argmax`).
    argmax: Vec<u32>,
    /// Largest minus second-largest logit.
    top2_gap: Vec<f32>,
}

/// # Shapes
/// - `logits`: `[n, vocab]`; `targets`: `n` ids
fn row_stats<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Vec<i64>,
    with_argmax: bool,
    device: &B::Device,
) -> Result<RowStats, IclError> {
    let [n, v] = logits.dims();
    let floats = |t: Tensor<B, 2>| -> Result<Vec<f32>, IclError> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| IclError::Model(format!("reading scores: {e:?}")))
    };
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
    if !with_argmax {
        let max = logits.clone().max_dim(1); // [n, 1]
        let lse = (logits.clone() - max.clone().expand([n, v]))
            .exp()
            .sum_dim(1)
            .log()
            + max; // [n, 1]
        let logprob = logits.gather(1, targets) - lse; // [n, 1]
        return Ok(RowStats {
            logprob: floats(logprob)?,
            argmax: Vec::new(),
            top2_gap: Vec::new(),
        });
    }
    let (max, argmax) = logits.clone().max_dim_with_indices(1); // [n, 1] each
    let lse = (logits.clone() - max.clone().expand([n, v]))
        .exp()
        .sum_dim(1)
        .log()
        + max.clone(); // [n, 1]
    let logprob = logits.clone().gather(1, targets) - lse; // [n, 1]
    // Second largest: the maximum once the argmax position is masked out.
    let positions = Tensor::<B, 1, Int>::arange(0..v as i64, device)
        .reshape([1, v])
        .expand([n, v]);
    let is_argmax = positions.equal(argmax.clone().expand([n, v])); // [n, v]
    let second = logits.mask_fill(is_argmax, f32::NEG_INFINITY).max_dim(1); // [n, 1]
    let gap = max - second;
    let argmax: Vec<u32> = argmax
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .map_err(|e| IclError::Model(format!("reading argmax: {e:?}")))?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    Ok(RowStats {
        logprob: floats(logprob)?,
        argmax,
        top2_gap: floats(gap)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn row_stats_is_a_log_softmax_with_first_index_argmax() {
        let dev = Default::default();
        let logits =
            Tensor::<Flex, 2>::from_floats([[1.0, 3.0, 3.0, -2.0], [0.5, -1.0, 0.25, 0.0]], &dev);
        let r = row_stats(logits.clone(), vec![1, 3], true, &dev).unwrap();
        let z0: f64 = [1.0f64, 3.0, 3.0, -2.0].iter().map(|x| x.exp()).sum();
        let z1: f64 = [0.5f64, -1.0, 0.25, 0.0].iter().map(|x| x.exp()).sum();
        assert!((f64::from(r.logprob[0]) - (3.0 - z0.ln())).abs() < 1e-6);
        assert!((f64::from(r.logprob[1]) - (0.0 - z1.ln())).abs() < 1e-6);
        assert_eq!(r.argmax, vec![1, 0]);
        assert_eq!(r.top2_gap, vec![0.0, 0.25]);
        let quick = row_stats(logits, vec![1, 3], false, &dev).unwrap();
        assert_eq!(quick.logprob, r.logprob);
        assert!(quick.argmax.is_empty() && quick.top2_gap.is_empty());
    }

    #[test]
    fn mean_ce_and_greedy_follow_the_logprobs() {
        let s = ContinuationScore {
            logprobs: vec![-1.0, -3.0],
            argmax: vec![5, 6],
            min_top2_gap: 0.5,
        };
        assert_eq!(s.mean_ce(), 2.0);
        assert_eq!(s.sum_logprob(), -4.0);
        assert!(s.is_greedy(&[5, 6]));
        assert!(!s.is_greedy(&[5, 7]));
    }
}
