//! Row surgery on a batched [`KvCache`], for continuous batching: a server keeps one cache for
//! its running decode batch, appends the rows of sequences that finished their prefill, and
//! drops the rows of sequences that finished (or whose client went away), at any step.
//!
//! Every row keeps its tokens right-aligned, with masked padding on the left, which is the
//! layout [`crate::Mpt::forward_cached`] already decodes for a left-padded batch: keys are
//! masked by the cache's key mask, position ids count only real tokens, and ALiBi depends only
//! on `k - q`. A row therefore decodes what it would decode alone, whichever rows share its
//! batch (`batch_rows_decode_like_single_rows` below checks it against separate caches).

use burn::prelude::*;

use super::KvCache;
use crate::attention::LayerKv;

impl<B: Backend> KvCache<B> {
    /// The number of rows (sequences) held; 0 before the first forward.
    pub fn batch_size(&self) -> usize {
        self.batch.unwrap_or(0)
    }

    /// Appends the rows of `other` after this cache's rows (row `i` of `other` becomes row
    /// `self.batch_size() + i`). The cache with fewer tokens is left-padded with masked keys to
    /// the other's length. An empty `self` simply becomes `other`.
    ///
    /// # Panics
    /// If the two caches were made for different layer counts, or if either has a layer that
    /// was never filled while it holds tokens (not possible through `forward_cached`).
    pub fn append_rows(&mut self, mut other: KvCache<B>) {
        assert_eq!(
            self.layers.len(),
            other.layers.len(),
            "cannot join KV caches of {} and {} layers",
            self.layers.len(),
            other.layers.len()
        );
        if other.batch_size() == 0 {
            return;
        }
        if self.batch_size() == 0 {
            *self = other;
            return;
        }
        let width = self.len.max(other.len);
        self.pad_left(width - self.len);
        other.pad_left(width - other.len);
        let (rows, other_rows) = (self.batch_size(), other.batch_size());
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            let (a, b) = (
                mine.take().expect("a filled cache has every layer"),
                theirs.expect("a filled cache has every layer"),
            );
            // [rows + other_rows, kv_heads, width, head_dim]
            *mine = Some(LayerKv {
                k: Tensor::cat(vec![a.k, b.k], 0),
                v: Tensor::cat(vec![a.v, b.v], 0),
            });
        }
        self.key_mask = match (self.key_mask.take(), other.key_mask) {
            (None, None) => None,
            (mine, theirs) => {
                let device = self.device().expect("a filled cache has a device");
                let real = |m: Option<Tensor<B, 2, Bool>>, n: usize| {
                    m.unwrap_or_else(|| Tensor::<B, 2, Int>::ones([n, width], &device).bool())
                };
                Some(Tensor::cat(
                    vec![real(mine, rows), real(theirs, other_rows)],
                    0,
                ))
            }
        };
        self.batch = Some(rows + other_rows);
    }

    /// Keeps the rows `keep` (indices into this cache, in that order) and forgets the others,
    /// then drops the leading key columns that are padding in every kept row, so the cache is
    /// as short as its longest row. Keeping no row empties the cache.
    ///
    /// Reads the key mask back from the device (one small transfer) when there is padding.
    ///
    /// # Panics
    /// If an index in `keep` is out of range.
    pub fn retain_rows(&mut self, keep: &[usize]) {
        let rows = self.batch_size();
        if let Some(&bad) = keep.iter().find(|&&r| r >= rows) {
            panic!("row {bad} is out of range: the KV cache holds {rows} rows");
        }
        if keep.is_empty() {
            self.clear();
            return;
        }
        if keep.len() == rows && keep.iter().enumerate().all(|(i, &r)| i == r) {
            return;
        }
        let device = self.device().expect("a filled cache has a device");
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                keep.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [keep.len()],
            ),
            &device,
        );
        for layer in self.layers.iter_mut().flatten() {
            layer.k = layer.k.clone().select(0, index.clone());
            layer.v = layer.v.clone().select(0, index.clone());
        }
        // Through Int: burn-flex 0.21's `select` on a Bool tensor returns U8 storage, which
        // the next `cat` with a native Bool mask refuses.
        self.key_mask = self
            .key_mask
            .take()
            .map(|m| m.int().select(0, index).bool());
        self.batch = Some(keep.len());
        self.trim_padding();
    }

    /// Left-pads every row with `cols` masked key columns.
    fn pad_left(&mut self, cols: usize) {
        if cols == 0 || self.batch_size() == 0 {
            return;
        }
        let rows = self.batch_size();
        let device = self.device().expect("a filled cache has a device");
        for layer in self.layers.iter_mut().flatten() {
            let pad = |t: Tensor<B, 4>| {
                let [b, h, _, d] = t.dims();
                let zeros = Tensor::<B, 4>::zeros([b, h, cols, d], (&device, t.dtype()));
                Tensor::cat(vec![zeros, t], 2) // [b, h, cols + len, d]
            };
            layer.k = pad(layer.k.clone());
            layer.v = pad(layer.v.clone());
        }
        let padding = Tensor::<B, 2, Int>::zeros([rows, cols], &device).bool();
        let real = self
            .key_mask
            .take()
            .unwrap_or_else(|| Tensor::<B, 2, Int>::ones([rows, self.len], &device).bool());
        self.key_mask = Some(Tensor::cat(vec![padding, real], 1));
        self.len += cols;
    }

    /// Drops the leading columns that no row attends to; forgets the mask once nothing is
    /// padded (so an unpadded batch decodes exactly as `forward_cached` with no mask does).
    fn trim_padding(&mut self) {
        let Some(mask) = &self.key_mask else {
            return;
        };
        let [rows, len] = mask.dims();
        let host = mask
            .clone()
            .into_data()
            .convert::<bool>()
            .into_vec::<bool>()
            .expect("a bool key mask");
        let leading = (0..rows)
            .map(|r| {
                host[r * len..(r + 1) * len]
                    .iter()
                    .take_while(|real| !**real)
                    .count()
            })
            .min()
            .unwrap_or(0);
        if leading > 0 {
            let keep = len - leading;
            for layer in self.layers.iter_mut().flatten() {
                layer.k = layer.k.clone().narrow(2, leading, keep);
                layer.v = layer.v.clone().narrow(2, leading, keep);
            }
            self.key_mask = Some(mask.clone().narrow(1, leading, keep));
            self.len = keep;
        }
        let all_real = (0..rows).all(|r| {
            host[r * len + leading..(r + 1) * len]
                .iter()
                .all(|real| *real)
        });
        if all_real {
            self.key_mask = None;
        }
    }

    fn device(&self) -> Option<B::Device> {
        self.layers.iter().flatten().next().map(|l| l.k.device())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::prelude::*;

    use crate::{KvCache, Mpt, MptConfig};

    fn tiny(rope: bool) -> Mpt<Flex> {
        let mut c = MptConfig::preset("tiny").unwrap();
        c.vocab_size = 64;
        c.max_seq_len = 32;
        if rope {
            c.attn_config.alibi = false;
            c.attn_config.rope = true;
            c.learned_pos_emb = false;
        }
        c.init::<Flex>(&Default::default(), 3)
    }

    fn ids(rows: &[&[u32]]) -> Tensor<Flex, 2, Int> {
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&t| t as i64))
            .collect();
        Tensor::from_data(
            TensorData::new(flat, [rows.len(), rows[0].len()]),
            &Default::default(),
        )
    }

    fn prefill(model: &Mpt<Flex>, prompt: &[u32]) -> KvCache<Flex> {
        let mut cache = model.new_cache();
        model.forward_cached(ids(&[prompt]), None, &mut cache);
        cache
    }

    fn decode(model: &Mpt<Flex>, tokens: &[u32], cache: &mut KvCache<Flex>) -> Vec<Vec<f32>> {
        let rows: Vec<&[u32]> = tokens.chunks(1).collect();
        let logits = model.forward_cached(ids(&rows), None, cache); // [n, 1, vocab]
        let [n, _, v] = logits.dims();
        let flat = logits.into_data().to_vec::<f32>().unwrap();
        (0..n).map(|r| flat[r * v..(r + 1) * v].to_vec()).collect()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{what}: logits differ by {diff}");
    }

    #[test]
    fn batch_rows_decode_like_single_rows() {
        for rope in [false, true] {
            let model = tiny(rope);
            let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5, 6, 7], &[9, 8], &[4, 4, 4, 4]];
            let mut alone: Vec<KvCache<Flex>> =
                prompts.iter().map(|p| prefill(&model, p)).collect();
            // Rows join one at a time, the longest in the middle, so both sides get padded.
            let mut batch = model.new_cache();
            batch.append_rows(prefill(&model, prompts[1]));
            batch.append_rows(prefill(&model, prompts[0]));
            batch.append_rows(prefill(&model, prompts[2]));
            assert_eq!((batch.batch_size(), batch.len()), (3, 7));
            let order = [1, 0, 2];

            for step in 0..3u32 {
                let tokens: Vec<u32> = order.iter().map(|&i| 10 + i as u32 + step).collect();
                let together = decode(&model, &tokens, &mut batch);
                for (row, &i) in order.iter().enumerate() {
                    let single = decode(&model, &tokens[row..row + 1], &mut alone[i]);
                    assert_close(
                        &together[row],
                        &single[0],
                        &format!("rope {rope}, row {row}"),
                    );
                }
            }

            // The longest row leaves: the padding it forced on the others is trimmed away.
            batch.retain_rows(&[0, 2]);
            assert_eq!((batch.batch_size(), batch.len()), (2, 4 + 3));
            let together = decode(&model, &[30, 31], &mut batch);
            for (row, i) in [(0, 1), (1, 2)] {
                let single = decode(&model, &[30 + row as u32], &mut alone[i]);
                assert_close(
                    &together[row],
                    &single[0],
                    &format!("rope {rope}, after retain"),
                );
            }
        }
    }

    #[test]
    fn retaining_rows_of_equal_length_forgets_the_mask() {
        let model = tiny(false);
        let mut batch = prefill(&model, &[1, 2, 3]);
        batch.append_rows(prefill(&model, &[5, 6, 7, 8, 9]));
        batch.append_rows(prefill(&model, &[4, 4, 4]));
        assert!(batch.key_mask.is_some());
        batch.retain_rows(&[2, 0]);
        assert_eq!((batch.batch_size(), batch.len()), (2, 3));
        assert!(batch.key_mask.is_none(), "no row is padded any more");
        batch.retain_rows(&[]);
        assert!(batch.is_empty());
        assert_eq!(batch.batch_size(), 0);
    }

    #[test]
    #[should_panic(expected = "row 2 is out of range")]
    fn retaining_a_missing_row_is_a_programmer_error() {
        let model = tiny(false);
        let mut batch = prefill(&model, &[1, 2, 3]);
        batch.append_rows(prefill(&model, &[5]));
        batch.retain_rows(&[2]);
    }
}
