//! Autoregressive generation: greedy, temperature, top-k and top-p sampling from a seed; EOS
//! and a caller's stop test; batches of prompts of different lengths, left-padded.
//!
//! Each row samples from its own ChaCha20 stream keyed by (seed, "generate", row), so a row's
//! tokens depend on its prompt, the seed and its index, never on the other rows. Left padding
//! is masked and position ids skip it, so a padded row generates what it would alone.
//! Sampling runs on the host from the last position's logits (one device sync per step).

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::mpt::{Mpt, MptInput};

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on new tokens per row.
    pub max_new_tokens: usize,
    /// 0 (or less) = greedy argmax; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// Seed of the sampling streams.
    pub seed: u64,
    /// A row stops after emitting any of these (the EOS token is kept in its output).
    pub eos_ids: Vec<u32>,
    /// Decode incrementally with a KV cache (otherwise re-run the whole sequence each step;
    /// same result, slower).
    pub use_cache: bool,
    /// Token used for left padding and for rows that have finished.
    pub pad_id: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            eos_ids: Vec::new(),
            use_cache: true,
            pad_id: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It emitted an EOS id (the last token of `ids`).
    Eos,
    /// The stop callback returned true.
    Stop,
    /// It produced `max_new_tokens` tokens.
    MaxNewTokens,
    /// The sequence reached the model's `max_seq_len`.
    MaxSeqLen,
}

/// One row's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// New tokens only.
    pub ids: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Invalid generation requests.
#[derive(Debug, Error)]
pub enum GenerateError {
    /// A prompt has no tokens.
    #[error("prompt {row} is empty")]
    EmptyPrompt {
        /// Row index.
        row: usize,
    },
    /// A prompt does not fit the model.
    #[error("prompt {row} has {len} tokens; the model's max_seq_len is {max_seq_len}")]
    PromptTooLong {
        /// Row index.
        row: usize,
        /// Its length.
        len: usize,
        /// The model's limit.
        max_seq_len: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("prompt {row} has token id {id}, outside the vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// Row index.
        row: usize,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A sampling setting is out of range.
    #[error("{field}: {message}")]
    BadSetting {
        /// `top_k`, `top_p` or `temperature`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The caller's stop test: `(row, new ids so far) -> stop now?` (e.g. a stop string seen in
/// the decoded text). Called after each token a row emits.
pub type StopFn<'a> = &'a dyn Fn(usize, &[u32]) -> bool;

/// Generates continuations of `prompts` (a left-padded batch).
pub fn generate<B: Backend>(
    model: &Mpt<B>,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    stop: Option<StopFn<'_>>,
    device: &B::Device,
) -> Result<Vec<Generation>, GenerateError> {
    let mc = model.config();
    validate(prompts, cfg, mc.max_seq_len, mc.vocab_size)?;
    let rows = prompts.len();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let budget = cfg.max_new_tokens.min(mc.max_seq_len - width);
    let padded = prompts.iter().any(|p| p.len() < width);

    // Left-padded ids and mask, [rows, width].
    let mut seqs: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            std::iter::repeat_n(cfg.pad_id, width - p.len())
                .chain(p.iter().copied())
                .collect()
        })
        .collect();
    let mut real: Vec<Vec<bool>> = prompts
        .iter()
        .map(|p| {
            std::iter::repeat_n(false, width - p.len())
                .chain(std::iter::repeat_n(true, p.len()))
                .collect()
        })
        .collect();

    let mut rngs: Vec<ChaCha20Rng> = (0..rows).map(|r| row_rng(cfg.seed, r)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut finish: Vec<Option<FinishReason>> = vec![None; rows];
    let mut cache = cfg.use_cache.then(|| model.new_cache());

    // Logits of the last position, [rows, vocab].
    let mut last = {
        let ids = ids_tensor::<B>(&seqs, device);
        let mask = padded.then(|| mask_tensor::<B>(&real, device));
        let logits = match cache.as_mut() {
            Some(c) => model.forward_cached(ids, mask, c),
            None => model.forward(MptInput {
                input_ids: ids,
                attention_mask: mask,
                sequence_id: None,
            }),
        };
        last_position(logits)
    };
    for step in 0..budget {
        let vocab = mc.vocab_size;
        let host = last
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32 logits");
        let mut next = Vec::with_capacity(rows);
        for r in 0..rows {
            if finish[r].is_some() {
                next.push(cfg.pad_id);
                continue;
            }
            let tok = pick(&host[r * vocab..(r + 1) * vocab], cfg, &mut rngs[r]);
            out[r].push(tok);
            next.push(tok);
            if cfg.eos_ids.contains(&tok) {
                finish[r] = Some(FinishReason::Eos);
            } else if stop.is_some_and(|f| f(r, &out[r])) {
                finish[r] = Some(FinishReason::Stop);
            }
        }
        if finish.iter().all(Option::is_some) || step + 1 == budget {
            break;
        }
        last = match cache.as_mut() {
            Some(c) => {
                let ids = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(next.iter().map(|&t| t as i64).collect::<Vec<_>>(), [rows]),
                    device,
                );
                last_position(model.forward_cached(ids.reshape([rows, 1]), None, c))
            }
            None => {
                for (r, t) in next.iter().enumerate() {
                    seqs[r].push(*t);
                    real[r].push(true);
                }
                let ids = ids_tensor::<B>(&seqs, device);
                let mask = padded.then(|| mask_tensor::<B>(&real, device));
                last_position(model.forward(MptInput {
                    input_ids: ids,
                    attention_mask: mask,
                    sequence_id: None,
                }))
            }
        };
    }
    Ok(out
        .into_iter()
        .zip(finish)
        .map(|(ids, f)| {
            let finish = f.unwrap_or(if ids.len() < cfg.max_new_tokens {
                FinishReason::MaxSeqLen
            } else {
                FinishReason::MaxNewTokens
            });
            Generation { ids, finish }
        })
        .collect())
}

fn validate(
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    max_seq_len: usize,
    vocab_size: usize,
) -> Result<(), GenerateError> {
    for (row, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(GenerateError::EmptyPrompt { row });
        }
        if p.len() > max_seq_len {
            return Err(GenerateError::PromptTooLong {
                row,
                len: p.len(),
                max_seq_len,
            });
        }
        if let Some(&id) = p.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(GenerateError::TokenOutOfVocab {
                row,
                id,
                vocab_size,
            });
        }
    }
    if cfg.top_k == Some(0) {
        return Err(GenerateError::BadSetting {
            field: "top_k",
            message: "must be at least 1".into(),
        });
    }
    if let Some(p) = cfg.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(GenerateError::BadSetting {
            field: "top_p",
            message: format!("must be in (0, 1], found {p}"),
        });
    }
    if !cfg.temperature.is_finite() {
        return Err(GenerateError::BadSetting {
            field: "temperature",
            message: "must be finite".into(),
        });
    }
    if cfg.pad_id as usize >= vocab_size {
        return Err(GenerateError::BadSetting {
            field: "pad_id",
            message: format!("{} is outside the vocabulary of {vocab_size}", cfg.pad_id),
        });
    }
    Ok(())
}

/// The sampling stream of batch row `row` under `seed`. Public so that a server sampling one
/// sequence at a time draws exactly the tokens `generate` draws for that row.
pub fn row_rng(seed: u64, row: usize) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(b"generate");
    key[16..24].copy_from_slice(&(row as u64).to_le_bytes());
    ChaCha20Rng::from_seed(key)
}

fn ids_tensor<B: Backend>(seqs: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2, Int> {
    let (r, w) = (seqs.len(), seqs[0].len());
    let flat: Vec<i64> = seqs.iter().flatten().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(flat, [r, w]), device)
}

fn mask_tensor<B: Backend>(real: &[Vec<bool>], device: &B::Device) -> Tensor<B, 2, Bool> {
    let (r, w) = (real.len(), real[0].len());
    let flat: Vec<bool> = real.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [r, w]), device)
}

/// `[rows, s, vocab]` -> `[rows, vocab]` at the last position.
fn last_position<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [r, s, v] = logits.dims();
    logits.narrow(1, s - 1, 1).reshape([r, v])
}

/// Chooses the next token from one row of logits.
pub fn pick(logits: &[f32], cfg: &GenerationConfig, rng: &mut impl Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    // Candidates sorted by logit, descending (ties: lower id first, as a stable sort).
    let mut cand: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &v)| (i as u32, v as f64 / cfg.temperature as f64))
        .collect();
    cand.sort_by(|a, b| b.1.total_cmp(&a.1));
    if let Some(k) = cfg.top_k {
        cand.truncate(k.max(1));
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|&(_, v)| (v - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = cfg.top_p {
        // Keep the smallest prefix whose mass reaches p (always at least one token).
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            mass += q;
            if mass >= p as f64 {
                keep = i + 1;
                break;
            }
        }
        cand.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, q) in probs.iter().enumerate() {
        if u < *q {
            return cand[i].0;
        }
        u -= q;
    }
    cand[cand.len() - 1].0
}

/// Index of the largest logit; the first on ties (as `torch.argmax`); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn sampled(cfg: &GenerationConfig, logits: &[f32], n: usize) -> Vec<usize> {
        let mut rng = row_rng(cfg.seed, 0);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[pick(logits, cfg, &mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, f32::NAN]), 1);
    }

    #[test]
    fn temperature_sampling_follows_softmax_frequencies() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            seed: 3,
            ..Default::default()
        };
        let logits = [0.0f32, (2f32).ln(), (5f32).ln()]; // probabilities 1/8, 2/8, 5/8
        let c = sampled(&cfg, &logits, 8000);
        for (i, want) in [1000.0, 2000.0, 5000.0].iter().enumerate() {
            assert!((c[i] as f64 - want).abs() < 200.0, "{c:?}");
        }
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let k = GenerationConfig {
            temperature: 1.0,
            top_k: Some(2),
            ..Default::default()
        };
        let c = sampled(&k, &logits, 500);
        assert_eq!((c[0], c[1]), (0, 0));
        assert!(c[2] > 0 && c[3] > 0);
        // softmax([0,1,2,3]) = [.032, .087, .237, .644]: top_p 0.6 keeps only token 3.
        let p = GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.6),
            ..Default::default()
        };
        assert_eq!(sampled(&p, &logits, 200)[3], 200);
        // 0.85 keeps tokens 3 and 2.
        let p = GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.85),
            ..Default::default()
        };
        let c = sampled(&p, &logits, 500);
        assert_eq!((c[0], c[1]), (0, 0));
    }

    #[test]
    fn sampling_is_reproducible_per_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = GenerationConfig {
            temperature: 0.8,
            seed: 11,
            ..Default::default()
        };
        assert_eq!(sampled(&cfg, &logits, 100), sampled(&cfg, &logits, 100));
        let other = GenerationConfig {
            seed: 12,
            ..cfg.clone()
        };
        assert_ne!(sampled(&cfg, &logits, 100), sampled(&other, &logits, 100));
    }

    fn tiny() -> Mpt<Flex> {
        let mut c = crate::MptConfig::preset("tiny").unwrap();
        c.vocab_size = 64;
        c.max_seq_len = 16;
        c.init::<Flex>(&Default::default(), 1)
    }

    #[test]
    fn eos_stop_callback_and_length_limits_end_rows() {
        let model = tiny();
        let dev = Default::default();
        let free = generate(
            &model,
            &[vec![1, 2, 3]],
            &GenerationConfig {
                max_new_tokens: 5,
                ..Default::default()
            },
            None,
            &dev,
        )
        .unwrap();
        assert_eq!(free[0].ids.len(), 5);
        assert_eq!(free[0].finish, FinishReason::MaxNewTokens);
        let first = free[0].ids[0];
        let eos = GenerationConfig {
            max_new_tokens: 5,
            eos_ids: vec![first],
            ..Default::default()
        };
        let g = generate(&model, &[vec![1, 2, 3]], &eos, None, &dev).unwrap();
        assert_eq!(
            (g[0].ids.clone(), g[0].finish),
            (vec![first], FinishReason::Eos)
        );
        let stop = |_row: usize, ids: &[u32]| ids.len() == 2;
        let g = generate(
            &model,
            &[vec![1, 2, 3]],
            &GenerationConfig {
                max_new_tokens: 5,
                ..Default::default()
            },
            Some(&stop),
            &dev,
        )
        .unwrap();
        assert_eq!((g[0].ids.len(), g[0].finish), (2, FinishReason::Stop));
        // 14-token prompt, max_seq_len 16: two new tokens at most.
        let long: Vec<u32> = (0..14).collect();
        let g = generate(
            &model,
            &[long],
            &GenerationConfig {
                max_new_tokens: 5,
                ..Default::default()
            },
            None,
            &dev,
        )
        .unwrap();
        assert_eq!((g[0].ids.len(), g[0].finish), (2, FinishReason::MaxSeqLen));
    }

    #[test]
    fn bad_requests_are_errors() {
        let model = tiny();
        let dev = Default::default();
        let cfg = GenerationConfig::default();
        assert!(matches!(
            generate(&model, &[vec![]], &cfg, None, &dev),
            Err(GenerateError::EmptyPrompt { row: 0 })
        ));
        assert!(matches!(
            generate(&model, &[vec![1, 99]], &cfg, None, &dev),
            Err(GenerateError::TokenOutOfVocab { id: 99, .. })
        ));
        let long: Vec<u32> = (0..17).map(|i| i % 10).collect();
        assert!(matches!(
            generate(&model, &[long], &cfg, None, &dev),
            Err(GenerateError::PromptTooLong { .. })
        ));
        let bad = GenerationConfig {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(
            generate(&model, &[vec![1]], &bad, None, &dev)
                .unwrap_err()
                .to_string()
                .contains("top_p")
        );
    }
}
