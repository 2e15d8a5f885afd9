//! The running decode batch (one KV cache whose rows are the running sequences) and the
//! forwards the engine runs: a prefill of one or several prompts, and a decode step.
//!
//! Both go through [`forward_rows`], the one place where the model is called.

use burn::prelude::*;
use tessera_model::{KvCache, Mpt};

use super::AdapterId;
use super::sequence::Sequence;

/// **The adapter seam.** Runs `model` on `ids` with `cache`, each row with its own adapter
/// (`adapters[row]`, `None` = the base model), and returns the logits.
///
/// Today every row runs the base model: `tessera serve` refuses `--adapter` until
/// tessera-model has LoRA (issue #13, item 1), so no sequence carries an adapter. When it
/// lands, this function passes the per-row selection to the model's batched adapter forward;
/// nothing else in the engine changes.
///
/// # Shapes
/// - `ids`: `[rows, s]`, `mask`: `[rows, s]` -> `[rows, s, vocab]`
///
/// # Panics
/// If a row asks for an adapter (not reachable: the server has none to offer).
pub(super) fn forward_rows<B: Backend>(
    model: &Mpt<B>,
    ids: Tensor<B, 2, Int>,
    mask: Option<Tensor<B, 2, Bool>>,
    cache: &mut KvCache<B>,
    adapters: &[Option<AdapterId>],
) -> Tensor<B, 3> {
    assert!(
        adapters.iter().all(Option::is_none),
        "adapters are not available in this build"
    );
    model.forward_cached(ids, mask, cache)
}

/// The running sequences, in the order of their rows in `cache`.
pub(super) struct DecodeBatch<B: Backend> {
    pub rows: Vec<Sequence<B>>,
    cache: KvCache<B>,
}

impl<B: Backend> DecodeBatch<B> {
    pub fn new(model: &Mpt<B>) -> Self {
        Self {
            rows: Vec::new(),
            cache: model.new_cache(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Appends sequences whose prompts are prefilled, with their cache rows (in order).
    pub fn join(&mut self, seqs: Vec<Sequence<B>>, cache: KvCache<B>) {
        debug_assert_eq!(seqs.len(), cache.batch_size());
        self.rows.extend(seqs);
        self.cache.append_rows(cache);
    }

    /// Keeps the rows for which `keep` is true, in order; returns how many left.
    pub fn retain(&mut self, keep: &[bool]) -> usize {
        let kept: Vec<usize> = (0..self.rows.len()).filter(|&r| keep[r]).collect();
        let left = self.rows.len() - kept.len();
        if left > 0 {
            self.cache.retain_rows(&kept);
            let mut flags = keep.iter();
            self.rows
                .retain(|_| *flags.next().expect("one flag per row"));
        }
        left
    }

    /// One decode step: every row feeds its last token. Returns the logits, `[rows * vocab]`
    /// on the host (one device sync).
    pub fn step(&mut self, model: &Mpt<B>, device: &B::Device) -> Vec<f32> {
        let tokens: Vec<i64> = self.rows.iter().map(|s| s.next_input as i64).collect();
        let n = tokens.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [n, 1]), device);
        let adapters: Vec<Option<AdapterId>> = self.rows.iter().map(|s| s.adapter).collect();
        let logits = forward_rows(model, ids, None, &mut self.cache, &adapters);
        host_rows(logits)
    }
}

/// Prefills the whole prompts of `seqs` in one left-padded forward of `width` columns.
/// Returns their joint cache (row `i` is `seqs[i]`) and the logits of each prompt's last token.
pub(super) fn prefill_group<B: Backend>(
    model: &Mpt<B>,
    seqs: &[Sequence<B>],
    width: usize,
    device: &B::Device,
) -> (KvCache<B>, Vec<f32>) {
    let rows = seqs.len();
    let mut ids = Vec::with_capacity(rows * width);
    let mut real = Vec::with_capacity(rows * width);
    for s in seqs {
        let pad = width - s.prompt.len();
        ids.extend(std::iter::repeat_n(0i64, pad));
        ids.extend(s.prompt.iter().map(|&t| t as i64));
        real.extend(std::iter::repeat_n(false, pad));
        real.extend(std::iter::repeat_n(true, s.prompt.len()));
    }
    let padded = real.iter().any(|r| !r);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, width]), device);
    let mask = padded
        .then(|| Tensor::<B, 2, Bool>::from_data(TensorData::new(real, [rows, width]), device));
    let adapters: Vec<Option<AdapterId>> = seqs.iter().map(|s| s.adapter).collect();
    let mut cache = model.new_cache();
    let logits = forward_rows(model, ids, mask, &mut cache, &adapters);
    (cache, host_rows(logits))
}

/// Feeds the next `tokens` prompt tokens of one sequence into its own cache. Returns the
/// logits of the prompt's last token once the prompt is complete.
pub(super) fn prefill_chunk<B: Backend>(
    model: &Mpt<B>,
    seq: &mut Sequence<B>,
    tokens: usize,
    device: &B::Device,
) -> Option<Vec<f32>> {
    let chunk: Vec<i64> = seq.prompt[seq.prefilled..seq.prefilled + tokens]
        .iter()
        .map(|&t| t as i64)
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(chunk, [1, tokens]), device);
    let mut cache = seq.cache.take().unwrap_or_else(|| model.new_cache());
    let logits = forward_rows(model, ids, None, &mut cache, &[seq.adapter]);
    seq.cache = Some(cache);
    seq.prefilled += tokens;
    (seq.prefilled == seq.prompt.len()).then(|| host_rows(logits))
}

/// `[rows, s, vocab]` -> the last position's logits of every row, flat on the host.
fn host_rows<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    let [rows, s, vocab] = logits.dims();
    logits
        .narrow(1, s - 1, 1)
        .reshape([rows, vocab])
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 logits")
}
