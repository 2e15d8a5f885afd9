//! One sequence inside the engine: its prompt, how far its prefill got, its sampler, and the
//! channel its tokens go out on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use rand_chacha::ChaCha20Rng;
use tessera_model::generate::{pick, row_rng};
use tessera_model::{GenerationConfig, KvCache};
use tokio::sync::mpsc::UnboundedSender;

use super::{AdapterId, Event, FinishReason, SequenceSpec, TokenLogprobs};

/// A sequence from admission to its last token.
pub(super) struct Sequence<B: Backend> {
    /// Its index in its submission (the `seq` of its events).
    pub index: usize,
    pub prompt: Vec<u32>,
    /// Prompt tokens already in its KV cache.
    pub prefilled: usize,
    /// Its own cache while its prompt is being prefilled in chunks; once it joins the decode
    /// batch its rows live in the batch's cache.
    pub cache: Option<KvCache<B>>,
    /// The token to feed at the next decode step (the last one sampled).
    pub next_input: u32,
    pub generated: usize,
    pub max_new_tokens: usize,
    pub logprobs: Option<usize>,
    pub adapter: Option<AdapterId>,
    /// `generate`'s sampling settings (temperature, top-p), so the token choice is its `pick`.
    sampling: GenerationConfig,
    rng: ChaCha20Rng,
    events: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
}

impl<B: Backend> Sequence<B> {
    pub fn new(
        index: usize,
        spec: SequenceSpec,
        events: UnboundedSender<Event>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        let sampling = GenerationConfig {
            temperature: spec.sampling.temperature,
            top_p: spec.sampling.top_p,
            seed: spec.sampling.seed,
            ..GenerationConfig::default()
        };
        Self {
            index,
            rng: row_rng(spec.sampling.seed, spec.sampling.stream),
            prompt: spec.prompt,
            prefilled: 0,
            cache: None,
            next_input: 0,
            generated: 0,
            max_new_tokens: spec.max_new_tokens,
            logprobs: spec.logprobs,
            adapter: spec.adapter,
            sampling,
            events,
            cancel,
        }
    }

    /// Prompt tokens not yet prefilled.
    pub fn remaining_prompt(&self) -> usize {
        self.prompt.len() - self.prefilled
    }

    /// The client dropped its ticket or cancelled this sequence.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }

    /// Samples the next token from this sequence's logits row, sends it, and says whether
    /// the sequence is now finished (then its `Finished` event is sent too).
    pub fn accept(
        &mut self,
        logits: &[f32],
        eos_ids: &[u32],
        max_seq_len: usize,
    ) -> Option<FinishReason> {
        let token = pick(logits, &self.sampling, &mut self.rng);
        let logprobs = self.logprobs.map(|k| token_logprobs(logits, token, k));
        self.generated += 1;
        self.next_input = token;
        // A closed channel means the client left; the next sweep drops the sequence.
        let _ = self.events.send(Event::Token {
            seq: self.index,
            token,
            logprobs,
        });
        let reason = if eos_ids.contains(&token) {
            Some(FinishReason::Eos)
        } else if self.generated >= self.max_new_tokens
            || self.prompt.len() + self.generated >= max_seq_len
        {
            Some(FinishReason::Length)
        } else {
            None
        };
        if let Some(reason) = reason {
            let _ = self.events.send(Event::Finished {
                seq: self.index,
                reason,
            });
        }
        reason
    }
}

/// The log-softmax of `logits` at `token`, and the `k` most likely tokens (most likely first,
/// lower id first on ties).
pub(super) fn token_logprobs(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_total = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln();
    let logprob = |v: f32| (v as f64 - max - log_total) as f32;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (id, &v) in logits.iter().enumerate() {
        if v.is_nan() || (top.len() == k && top.last().is_none_or(|&(_, w)| v <= w)) {
            continue;
        }
        let at = top.partition_point(|&(_, w)| w >= v);
        top.insert(at, (id as u32, v));
        top.truncate(k);
    }
    TokenLogprobs {
        logprob: logprob(logits[token as usize]),
        top: top.into_iter().map(|(id, v)| (id, logprob(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_tokens_in_order() {
        // softmax([ln 1, ln 2, ln 5, ln 2]) = [0.1, 0.2, 0.5, 0.2]
        let logits = [0f32, 2f32.ln(), 5f32.ln(), 2f32.ln()];
        let lp = token_logprobs(&logits, 1, 3);
        assert!((lp.logprob - 0.2f32.ln()).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![2, 1, 3], "ties keep the lower id first");
        assert!((lp.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        assert!(token_logprobs(&logits, 0, 0).top.is_empty());
    }
}
