//! Flash attention on the CPU (FlashAttention-2, Dao 2023, <https://arxiv.org/abs/2307.08691>):
//! `softmax(scale · q kᵀ + bias) v`, forward and backward, on plain f32 slices in the layout the
//! projections produce, `[batch, seq, heads, head_dim]`.
//!
//! Why: the `[batch, heads, seq_q, seq_k]` probabilities of the materialised formulation are
//! O(seq²) memory (at seq 2048, 16 MiB per head and batch element, per layer, kept for the
//! backward). Here the scores exist one `BLOCK_Q × BLOCK_K` tile at a time:
//! - the forward walks each block of queries over the key blocks with an online softmax (a
//!   running row maximum and sum that rescale the partial output), and keeps only the output and
//!   each row's log-sum-exp;
//! - the backward recomputes each tile's probabilities from the log-sum-exp;
//! - under the causal mask, key blocks wholly after a query block are never visited (about
//!   half the work at long sequences);
//! - the bias is never a tensor: ALiBi is `slope · (key − query position)` from the per-head
//!   slopes, and the causal, key-padding and `sequence_id` masks are tested per element
//!   ([`Mask`]).
//!
//! Grouped-query attention is by index: query head `j` reads key/value head
//! `j / (heads / kv_heads)`, as llm-foundry's `repeat_kv_for_gqa`.
//!
//! Determinism: every output value is computed by one task, in an order fixed by the shapes
//! alone (the forward: one task per batch element, head and query block; the backward: one per
//! batch element and key/value head, which owns that head's key and value gradients and its
//! query heads' query gradients). gemm runs on the task's thread. So the results do not depend
//! on the thread count.
//!
//! A row whose keys are all masked (a left-padding query under a key mask) gets what the
//! materialised formulation gives it: every score there is the same mask value, so its softmax
//! is uniform over all keys. The tiled passes leave such a row empty and a last pass fills it.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::{MatMut, MatRef, Threads, gemm};
use super::rows;
use super::simd::multiversion;

/// Queries per tile. 64 × 64 tiles keep a tile's scores (16 KiB) and the blocks of queries,
/// keys and values it reads in the L1/L2 caches, and leave enough blocks under the causal
/// diagonal to skip.
const BLOCK_Q: usize = 64;
/// Keys per tile.
const BLOCK_K: usize = 64;
const BWD_Q: usize = 64;
const BWD_K: usize = 64;

/// The sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch elements.
    pub batch: usize,
    /// Queries per element.
    pub seq_q: usize,
    /// Keys (and values) per element.
    pub seq_k: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Dims {
    fn q_len(&self) -> usize {
        self.seq_q * self.heads * self.head_dim
    }
    fn kv_len(&self) -> usize {
        self.seq_k * self.kv_heads * self.head_dim
    }
    /// Query heads per key/value head.
    fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Rows `start..start + n` of query head `j` in one batch element's queries (or output,
    /// or output gradient), `[seq_q, heads · head_dim]`.
    fn q_rows<'a>(&self, x: &'a [f32], j: usize, start: usize, n: usize) -> MatRef<'a> {
        let (h, hd) = (self.heads, self.head_dim);
        MatRef::new(x, start * h * hd + j * hd, [n, hd], [h * hd, 1])
    }
    /// Rows `start..start + n` of key/value head `g` in one batch element's keys or values,
    /// `[seq_k, kv_heads · head_dim]`.
    fn kv_rows<'a>(&self, x: &'a [f32], g: usize, start: usize, n: usize) -> MatRef<'a> {
        let (h, hd) = (self.kv_heads, self.head_dim);
        MatRef::new(x, start * h * hd + g * hd, [n, hd], [h * hd, 1])
    }
    /// How far the query positions are shifted against the keys: the queries are the last
    /// `seq_q` of `seq_k` positions (a decoder's cached prefix).
    fn offset(&self) -> usize {
        self.seq_k - self.seq_q
    }
    fn check(&self, q: &[f32], k: &[f32], v: &[f32], mask: &Mask) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "flash: {} query heads over {} key/value heads",
            self.heads,
            self.kv_heads
        );
        assert!(
            self.seq_k >= self.seq_q && self.head_dim > 0,
            "flash: {} queries over {} keys of width {}",
            self.seq_q,
            self.seq_k,
            self.head_dim
        );
        assert_eq!(q.len(), self.batch * self.q_len(), "flash: queries");
        assert_eq!(k.len(), self.batch * self.kv_len(), "flash: keys");
        assert_eq!(v.len(), self.batch * self.kv_len(), "flash: values");
        if let Some(s) = &mask.slopes {
            assert_eq!(s.len(), self.heads, "flash: ALiBi slopes");
        }
        if let Some(m) = &mask.key_mask {
            assert_eq!(m.len(), self.batch * self.seq_k, "flash: key mask");
        }
        if let Some(ids) = &mask.sequence_id {
            assert!(
                self.seq_q == self.seq_k && ids.len() == self.batch * self.seq_q,
                "flash: {} sequence ids for {} × {} queries over {} keys",
                ids.len(),
                self.batch,
                self.seq_q,
                self.seq_k
            );
        }
    }
}

/// What is added to the scores before the softmax, in structured form.
///
/// Query `i` of a batch element sits at position `i + seq_k − seq_q` among the keys. Its score
/// against key `t` becomes `scale · q·k + slope · (t − position)` (the ALiBi term as
/// [`crate::alibi::alibi_bias`] writes it) where the key is visible, and is masked (its
/// probability is 0) where the key is in the future (`causal`), padding (`key_mask`) or of
/// another document (`sequence_id`), as [`crate::mask::attention_bias`] builds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mask {
    /// The ALiBi slope of each query head (`heads` values), rounded to f32 as llm-foundry's.
    pub slopes: Option<Vec<f32>>,
    /// Whether keys after a query's position are hidden from it.
    pub causal: bool,
    /// `[batch, seq_k]`: `false` marks a padding key, which no query sees.
    pub key_mask: Option<Vec<bool>>,
    /// `[batch, seq_q]` document ids (with `seq_q == seq_k`): a query sees only the keys of its
    /// own document.
    pub sequence_id: Option<Vec<i64>>,
}

/// One batch element's view of a [`Mask`].
#[derive(Clone, Copy)]
struct RowMask<'a> {
    causal: bool,
    offset: usize,
    key_mask: Option<&'a [bool]>,
    sequence_id: Option<&'a [i64]>,
}

impl Mask {
    fn batch_element(&self, d: &Dims, b: usize) -> RowMask<'_> {
        RowMask {
            causal: self.causal,
            offset: d.offset(),
            key_mask: self
                .key_mask
                .as_ref()
                .map(|m| &m[b * d.seq_k..(b + 1) * d.seq_k]),
            sequence_id: self
                .sequence_id
                .as_ref()
                .map(|s| &s[b * d.seq_q..(b + 1) * d.seq_q]),
        }
    }
    fn slope(&self, j: usize) -> f32 {
        self.slopes.as_ref().map_or(0.0, |s| s[j])
    }
}

impl RowMask<'_> {
    /// The keys query `i` may see lie before this one.
    fn key_end(&self, i: usize, seq_k: usize) -> usize {
        if self.causal {
            (i + self.offset + 1).min(seq_k)
        } else {
            seq_k
        }
    }

    /// Turns query `i`'s raw dot products with keys `k0..k0 + s.len()` into biased, scaled
    /// scores, with `-inf` where the key is masked.
    fn scores(&self, s: &mut [f32], i: usize, k0: usize, scale: f32, slope: f32) {
        let pos = i + self.offset;
        let visible = self.key_end(i, k0 + s.len()).saturating_sub(k0);
        let (seen, hidden) = s.split_at_mut(visible.min(s.len()));
        // The distance of key `k0 + c` from the query, as an exact small integer.
        let first = k0 as i64 - pos as i64;
        assert!(
            first.unsigned_abs() < 1 << 24 && seen.len() < 1 << 24,
            "flash: positions beyond f32's exact integers"
        );
        scale_and_alibi(seen, scale, slope, first as i32);
        hidden.fill(f32::NEG_INFINITY);
        if let Some(m) = self.key_mask {
            for (x, &real) in s.iter_mut().zip(&m[k0..]) {
                if !real {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        if let Some(ids) = self.sequence_id {
            let own = ids[i];
            for (x, &id) in s.iter_mut().zip(&ids[k0..]) {
                if id != own {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
}

multiversion! {
    /// `s[c] ← s[c] · scale + slope · (first + c)`: the scale and the ALiBi term, rounded as
    /// the materialised path rounds them (one product each, then the sum).
    fn scale_and_alibi(s: &mut [f32], scale: f32, slope: f32, first: i32) {
        for (c, x) in s.iter_mut().enumerate() {
            let dist = (first + c as i32) as f32;
            *x = *x * scale + slope * dist;
        }
    }
}

multiversion! {
    /// `s ← exp(s − base)`, and `sum ← Σ s`.
    fn exp_shifted(s: &mut [f32], base: f32, sum: &mut f32) {
        for x in s.iter_mut() {
            *x = rows::exp(*x - base);
        }
        *sum = rows::sum(s);
    }
}

multiversion! {
    /// `ds ← p ⊙ (dp − d)` (the softmax backward of one row, with `d = Σ p ⊙ dp`), where
    /// `ds` holds `dp` on entry.
    fn softmax_grad(p: &[f32], ds: &mut [f32], d: f32) {
        for (g, &p) in ds.iter_mut().zip(p) {
            *g = p * (*g - d);
        }
    }
}

multiversion! {
    /// `x ← c · x`.
    fn scale_row(x: &mut [f32], c: f32) {
        x.iter_mut().for_each(|v| *v *= c);
    }
}

/// Batch element `b` of `x`, whose elements are `len` values each.
fn element(x: &[f32], b: usize, len: usize) -> &[f32] {
    &x[b * len..(b + 1) * len]
}

/// `n` uninitialised chunks of `len` values at the front of `buf`'s spare capacity.
fn spare_chunks(buf: &mut Vec<f32>, n: usize, len: usize) -> Vec<&mut [MaybeUninit<f32>]> {
    split(
        &mut buf.spare_capacity_mut()[..n * len],
        std::iter::repeat_n(len, n),
    )
}

/// Chunks of the given sizes, cut in order from the front of `buf`.
fn split<T>(mut buf: &mut [T], sizes: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    for n in sizes {
        let (head, tail) = buf.split_at_mut(n);
        out.push(head);
        buf = tail;
    }
    out
}

/// The forward: returns the output `[batch, seq_q, heads, head_dim]` and each row's
/// log-sum-exp of its scores, `[batch, heads, seq_q]` (what [`backward`] needs; `+inf` marks a
/// row with every key masked).
///
/// `q` is `[batch, seq_q, heads, head_dim]`, `k` and `v` `[batch, seq_k, kv_heads, head_dim]`,
/// all contiguous.
///
/// # Panics
/// If the lengths do not match `d` (or the mask's), if `kv_heads` does not divide `heads`, if
/// there are fewer keys than queries, or if `head_dim` is 0.
pub fn forward(
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &Mask,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    d.check(q, k, v, mask);
    let (b, h, sq, hd) = (d.batch, d.heads, d.seq_q, d.head_dim);
    // The output is written as [batch, heads, seq_q, head_dim], one contiguous run per task,
    // then transposed into place.
    let (out_len, lse_len) = (b * h * sq * hd, b * h * sq);
    let mut out = Vec::<f32>::with_capacity(out_len);
    let mut lse = Vec::<f32>::with_capacity(lse_len);
    {
        let blocks = sq.div_ceil(BLOCK_Q);
        let rows_of = |qb: usize| BLOCK_Q.min(sq - qb * BLOCK_Q);
        let tasks = (0..b * h).flat_map(|bj| (0..blocks).map(move |qb| (bj, qb)));
        let sizes = tasks.clone().map(|(_, qb)| rows_of(qb));
        let outs = split(
            &mut out.spare_capacity_mut()[..out_len],
            sizes.clone().map(|n| n * hd),
        );
        let lses = split(&mut lse.spare_capacity_mut()[..lse_len], sizes);
        let work: Vec<_> = tasks.zip(outs).zip(lses).collect();
        work.into_par_iter().for_each(|(((bj, qb), o), l)| {
            let (bi, j) = (bj / h, bj % h);
            let block = QueryBlock {
                d,
                j,
                q0: qb * BLOCK_Q,
                n: rows_of(qb),
                mask: mask.batch_element(d, bi),
                slope: mask.slope(j),
                scale,
            };
            block.forward(
                element(q, bi, d.q_len()),
                element(k, bi, d.kv_len()),
                element(v, bi, d.kv_len()),
                rows::zeroed(o),
                rows::zeroed(l),
            );
        });
    }
    // SAFETY: the chunks above cover the first `out_len` and `lse_len` values (one per query
    // row and head of each batch element), and `rows::zeroed` initialised every one.
    unsafe {
        out.set_len(out_len);
        lse.set_len(lse_len);
    }
    (rows::swap_middle(&out, [b, h, sq, hd]), lse)
}

/// One task of the forward: `n` queries from `q0` of query head `j` in one batch element.
struct QueryBlock<'a> {
    d: &'a Dims,
    j: usize,
    q0: usize,
    n: usize,
    mask: RowMask<'a>,
    slope: f32,
    scale: f32,
}

impl QueryBlock<'_> {
    /// Writes the block's output rows (`[n, head_dim]`, zeroed on entry) and log-sum-exps.
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
        let (d, n, hd) = (self.d, self.n, self.d.head_dim);
        let g = self.j / d.group_size();
        let q_blk = d.q_rows(q, self.j, self.q0, n);
        // Running row maximum and sum of exponentials; `out` accumulates the unnormalised
        // output, rescaled whenever the maximum grows.
        let mut max = vec![f32::NEG_INFINITY; n];
        let mut sum = vec![0.0f32; n];
        let mut s = vec![0.0f32; n * BLOCK_K];
        let key_end = self.mask.key_end(self.q0 + n - 1, d.seq_k);
        for k0 in (0..key_end).step_by(BLOCK_K) {
            let kc = BLOCK_K.min(key_end - k0);
            let s = &mut s[..n * kc];
            let k_blk = d.kv_rows(k, g, k0, kc);
            gemm(
                MatMut::rows(s, n, kc),
                q_blk,
                k_blk.t(),
                1.0,
                false,
                Threads::One,
            );
            for (r, row) in s.chunks_exact_mut(kc).enumerate() {
                self.mask
                    .scores(row, self.q0 + r, k0, self.scale, self.slope);
                let m = max[r].max(rows::max(row));
                // All masked so far: the row stays empty (exp(-inf) = 0) until a visible key.
                let base = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let mut row_sum = 0.0;
                exp_shifted(row, base, &mut row_sum);
                let rescale = rows::exp(max[r] - base);
                if rescale != 1.0 {
                    scale_row(&mut out[r * hd..(r + 1) * hd], rescale);
                }
                sum[r] = sum[r] * rescale + row_sum;
                max[r] = m;
            }
            let p = MatRef::rows(s, n, kc);
            let v_blk = d.kv_rows(v, g, k0, kc);
            gemm(MatMut::rows(out, n, hd), p, v_blk, 1.0, true, Threads::One);
        }
        let mut uniform: Option<Vec<f32>> = None;
        for r in 0..n {
            let row = &mut out[r * hd..(r + 1) * hd];
            // Exactly 0 only when every key was masked (a NaN score keeps the sum NaN, and the
            // NaN goes on to the output).
            if sum[r] != 0.0 {
                scale_row(row, 1.0 / sum[r]);
                lse[r] = max[r] + sum[r].ln();
            } else {
                // Every key masked: the uniform average of all values.
                let mean = uniform.get_or_insert_with(|| mean_row(d, v, g));
                row.copy_from_slice(mean);
                lse[r] = f32::INFINITY;
            }
        }
    }
}

/// The mean of key/value head `g`'s values over all keys, `[head_dim]`.
fn mean_row(d: &Dims, v: &[f32], g: usize) -> Vec<f32> {
    let p = 1.0 / d.seq_k as f32;
    let mut mean = vec![0.0f32; d.head_dim];
    for t in 0..d.seq_k {
        let at = (t * d.kv_heads + g) * d.head_dim;
        for (m, &x) in mean.iter_mut().zip(&v[at..at + d.head_dim]) {
            *m += p * x;
        }
    }
    mean
}

/// Gradients of the queries, keys and values, in their forward layouts.
#[derive(Debug)]
pub struct Grads {
    /// `[batch, seq_q, heads, head_dim]`.
    pub q: Vec<f32>,
    /// `[batch, seq_k, kv_heads, head_dim]`.
    pub k: Vec<f32>,
    /// `[batch, seq_k, kv_heads, head_dim]`.
    pub v: Vec<f32>,
}

/// The inputs of [`backward`] besides the sizes and the mask: the forward's inputs and
/// outputs, and the output's gradient.
#[derive(Clone, Copy, Debug)]
pub struct Saved<'a> {
    /// `[batch, seq_q, heads, head_dim]`.
    pub q: &'a [f32],
    /// `[batch, seq_k, kv_heads, head_dim]`.
    pub k: &'a [f32],
    /// `[batch, seq_k, kv_heads, head_dim]`.
    pub v: &'a [f32],
    /// The forward's output, `[batch, seq_q, heads, head_dim]`.
    pub out: &'a [f32],
    /// The forward's log-sum-exps, `[batch, heads, seq_q]`.
    pub lse: &'a [f32],
}

/// The backward: the gradients of `q`, `k` and `v` for the output gradient `d_out`
/// (`[batch, seq_q, heads, head_dim]`). The bias is a constant.
///
/// Per tile: `P = exp(S − lse)` recomputed from the scores; `dP = dO vᵀ`;
/// `dS = P ⊙ (dP − D)` with `D = rowsum(dO ⊙ O)` (equal to `rowsum(dP ⊙ P)`);
/// `dq += scale · dS k`, `dk += scale · dSᵀ q`, `dv += Pᵀ dO`.
///
/// # Panics
/// As [`forward`], and if the saved lengths do not match `d`.
pub fn backward(d: &Dims, x: Saved, d_out: &[f32], mask: &Mask, scale: f32) -> Grads {
    d.check(x.q, x.k, x.v, mask);
    assert_eq!(x.out.len(), d.batch * d.q_len(), "flash: output");
    assert_eq!(d_out.len(), d.batch * d.q_len(), "flash: output gradient");
    assert_eq!(
        x.lse.len(),
        d.batch * d.heads * d.seq_q,
        "flash: log-sum-exps"
    );
    let (b, kvh, rep, hd) = (d.batch, d.kv_heads, d.group_size(), d.head_dim);
    // Written as [batch, kv_heads, seq, group · head_dim], one contiguous run per task, then
    // transposed into place.
    let dq_len = d.seq_q * rep * hd;
    let dkv_len = d.seq_k * hd;
    let mut dq = Vec::<f32>::with_capacity(b * kvh * dq_len);
    let mut dk = Vec::<f32>::with_capacity(b * kvh * dkv_len);
    let mut dv = Vec::<f32>::with_capacity(b * kvh * dkv_len);
    {
        let work: Vec<_> = spare_chunks(&mut dq, b * kvh, dq_len)
            .into_iter()
            .zip(spare_chunks(&mut dk, b * kvh, dkv_len))
            .zip(spare_chunks(&mut dv, b * kvh, dkv_len))
            .enumerate()
            .collect();
        work.into_par_iter().for_each(|(bg, ((dq, dk), dv))| {
            let (bi, g) = (bg / kvh, bg % kvh);
            let at = element;
            let (ql, kl, ll) = (d.q_len(), d.kv_len(), d.heads * d.seq_q);
            let task = KvHead {
                d,
                g,
                mask,
                row_mask: mask.batch_element(d, bi),
                scale,
                x: Saved {
                    q: at(x.q, bi, ql),
                    k: at(x.k, bi, kl),
                    v: at(x.v, bi, kl),
                    out: at(x.out, bi, ql),
                    lse: at(x.lse, bi, ll),
                },
                d_out: at(d_out, bi, ql),
            };
            task.backward(rows::zeroed(dq), rows::zeroed(dk), rows::zeroed(dv));
        });
    }
    // SAFETY: the chunks above cover every value of the three buffers, and `rows::zeroed`
    // initialised each one.
    unsafe {
        dq.set_len(b * kvh * dq_len);
        dk.set_len(b * kvh * dkv_len);
        dv.set_len(b * kvh * dkv_len);
    }
    Grads {
        q: rows::swap_middle(&dq, [b, kvh, d.seq_q, rep * hd]),
        k: rows::swap_middle(&dk, [b, kvh, d.seq_k, hd]),
        v: rows::swap_middle(&dv, [b, kvh, d.seq_k, hd]),
    }
}

/// One task of the backward: key/value head `g` of one batch element, with its query heads.
struct KvHead<'a> {
    d: &'a Dims,
    g: usize,
    mask: &'a Mask,
    row_mask: RowMask<'a>,
    scale: f32,
    /// This batch element's slices.
    x: Saved<'a>,
    d_out: &'a [f32],
}

impl KvHead<'_> {
    /// Fills `dq` (`[seq_q, group · head_dim]`: the group's query heads side by side), `dk` and
    /// `dv` (`[seq_k, head_dim]`), all zeroed on entry.
    fn backward(&self, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
        let (d, g, hd) = (self.d, self.g, self.d.head_dim);
        let (sq, rep) = (d.seq_q, d.group_size());
        // D = rowsum(dO ⊙ O) for each query row of each head in the group.
        let heads = g * rep..(g + 1) * rep;
        let dd: Vec<Vec<f32>> = heads
            .clone()
            .map(|j| {
                (0..sq)
                    .map(|i| {
                        let at = (i * d.heads + j) * hd;
                        rows::dot(&self.d_out[at..at + hd], &self.x.out[at..at + hd])
                    })
                    .collect()
            })
            .collect();
        let mut p = vec![0.0f32; BWD_Q * BWD_K];
        let mut ds = vec![0.0f32; BWD_Q * BWD_K];
        for (r, j) in heads.clone().enumerate() {
            let lse = &self.x.lse[j * sq..(j + 1) * sq];
            let slope = self.mask.slope(j);
            for q0 in (0..sq).step_by(BWD_Q) {
                let n = BWD_Q.min(sq - q0);
                let q_blk = d.q_rows(self.x.q, j, q0, n);
                let do_blk = d.q_rows(self.d_out, j, q0, n);
                // Keys after the block's last query are hidden from all of it: never visited.
                let key_end = self.row_mask.key_end(q0 + n - 1, d.seq_k);
                for k0 in (0..key_end).step_by(BWD_K) {
                    let kc = BWD_K.min(key_end - k0);
                    let (p, ds) = (&mut p[..n * kc], &mut ds[..n * kc]);
                    let k_blk = d.kv_rows(self.x.k, g, k0, kc);
                    let v_blk = d.kv_rows(self.x.v, g, k0, kc);
                    gemm(
                        MatMut::rows(p, n, kc),
                        q_blk,
                        k_blk.t(),
                        1.0,
                        false,
                        Threads::One,
                    );
                    gemm(
                        MatMut::rows(ds, n, kc),
                        do_blk,
                        v_blk.t(),
                        1.0,
                        false,
                        Threads::One,
                    );
                    let rows = p.chunks_exact_mut(kc).zip(ds.chunks_exact_mut(kc));
                    for (i, (p_row, ds_row)) in (q0..).zip(rows) {
                        self.row_mask.scores(p_row, i, k0, self.scale, slope);
                        // P = exp(s − lse); +inf (a wholly masked row) gives 0 here.
                        let mut unused = 0.0;
                        exp_shifted(p_row, lse[i], &mut unused);
                        softmax_grad(p_row, ds_row, dd[r][i]);
                    }
                    let (p, ds) = (MatRef::rows(p, n, kc), MatRef::rows(ds, n, kc));
                    let dv_blk = MatMut::new(dv, k0 * hd, [kc, hd], [hd, 1]);
                    gemm(dv_blk, p.t(), do_blk, 1.0, true, Threads::One);
                    let dk_blk = MatMut::new(dk, k0 * hd, [kc, hd], [hd, 1]);
                    gemm(dk_blk, ds.t(), q_blk, self.scale, true, Threads::One);
                    let dq_blk = MatMut::new(dq, (q0 * rep + r) * hd, [n, hd], [rep * hd, 1]);
                    gemm(dq_blk, ds, k_blk, self.scale, true, Threads::One);
                }
            }
        }
        for (r, j) in heads.enumerate() {
            let lse = &self.x.lse[j * sq..(j + 1) * sq];
            for i in (0..sq).filter(|&i| lse[i] == f32::INFINITY) {
                self.uniform_row_backward(j, r, i, dd[r][i], dq, dk, dv);
            }
        }
    }

    /// The backward of a wholly masked row `i` of query head `j` (the `r`-th of the group):
    /// its probabilities are `1 / seq_k` for every key.
    #[allow(clippy::too_many_arguments)]
    fn uniform_row_backward(
        &self,
        j: usize,
        r: usize,
        i: usize,
        dd: f32,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let (d, hd) = (self.d, self.d.head_dim);
        let p = 1.0 / d.seq_k as f32;
        let at_q = (i * d.heads + j) * hd;
        let (q_row, do_row) = (&self.x.q[at_q..at_q + hd], &self.d_out[at_q..at_q + hd]);
        let dq_at = (i * d.group_size() + r) * hd;
        for t in 0..d.seq_k {
            let at_k = (t * d.kv_heads + self.g) * hd;
            let (k_row, v_row) = (&self.x.k[at_k..at_k + hd], &self.x.v[at_k..at_k + hd]);
            let ds = p * (rows::dot(do_row, v_row) - dd) * self.scale;
            for c in 0..hd {
                dq[dq_at + c] += ds * k_row[c];
                dk[t * hd + c] += ds * q_row[c];
                dv[t * hd + c] += p * do_row[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::check::values;

    /// Attention and its gradients by the definition, in f64, one row at a time, with the
    /// mask applied as `mask::attention_bias` builds it (a wholly masked row is uniform).
    #[allow(clippy::type_complexity)]
    fn reference(
        d: &Dims,
        [q, k, v]: [&[f32]; 3],
        mask: &Mask,
        scale: f64,
        d_out: &[f32],
    ) -> (Vec<f64>, [Vec<f64>; 3]) {
        let (sq, sk, h, kvh, hd) = (d.seq_q, d.seq_k, d.heads, d.kv_heads, d.head_dim);
        let qi = |b: usize, i: usize, j: usize, c: usize| ((b * sq + i) * h + j) * hd + c;
        let ki = |b: usize, t: usize, g: usize, c: usize| ((b * sk + t) * kvh + g) * hd + c;
        let mut out = vec![0.0f64; q.len()];
        let mut dq = vec![0.0f64; q.len()];
        let (mut dk, mut dv) = (vec![0.0f64; k.len()], vec![0.0f64; v.len()]);
        for b in 0..d.batch {
            for j in 0..h {
                let g = j / (h / kvh);
                for i in 0..sq {
                    let pos = i + sk - sq;
                    let visible = |t: usize| {
                        !(mask.causal && t > pos)
                            && mask.key_mask.as_ref().is_none_or(|m| m[b * sk + t])
                            && mask
                                .sequence_id
                                .as_ref()
                                .is_none_or(|s| s[b * sq + i] == s[b * sk + t])
                    };
                    let s: Vec<Option<f64>> = (0..sk)
                        .map(|t| {
                            visible(t).then(|| {
                                let dot: f64 = (0..hd)
                                    .map(|c| q[qi(b, i, j, c)] as f64 * k[ki(b, t, g, c)] as f64)
                                    .sum();
                                let slope = mask.slopes.as_ref().map_or(0.0, |s| s[j] as f64);
                                scale * dot + slope * (t as f64 - pos as f64)
                            })
                        })
                        .collect();
                    let p: Vec<f64> = if s.iter().all(Option::is_none) {
                        vec![1.0 / sk as f64; sk]
                    } else {
                        let m = s
                            .iter()
                            .flatten()
                            .cloned()
                            .fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> =
                            s.iter().map(|x| x.map_or(0.0, |x| (x - m).exp())).collect();
                        let z: f64 = e.iter().sum();
                        e.iter().map(|x| x / z).collect()
                    };
                    for c in 0..hd {
                        out[qi(b, i, j, c)] =
                            (0..sk).map(|t| p[t] * v[ki(b, t, g, c)] as f64).sum();
                    }
                    let dp: Vec<f64> = (0..sk)
                        .map(|t| {
                            (0..hd)
                                .map(|c| d_out[qi(b, i, j, c)] as f64 * v[ki(b, t, g, c)] as f64)
                                .sum()
                        })
                        .collect();
                    let rowdot: f64 = (0..sk).map(|t| dp[t] * p[t]).sum();
                    for t in 0..sk {
                        let ds = p[t] * (dp[t] - rowdot) * scale;
                        for c in 0..hd {
                            dq[qi(b, i, j, c)] += ds * k[ki(b, t, g, c)] as f64;
                            dk[ki(b, t, g, c)] += ds * q[qi(b, i, j, c)] as f64;
                            dv[ki(b, t, g, c)] += p[t] * d_out[qi(b, i, j, c)] as f64;
                        }
                    }
                }
            }
        }
        (out, [dq, dk, dv])
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 2e-5 + 2e-5 * w.abs(),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn dims(
        batch: usize,
        seq_q: usize,
        seq_k: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Dims {
        Dims {
            batch,
            seq_q,
            seq_k,
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// Runs the kernel and the definition on random inputs and compares all four results.
    fn check_against_definition(case: &str, d: Dims, mask: &Mask, seed: u64) {
        let q = values(d.batch * d.q_len(), seed + 1);
        let k = values(d.batch * d.kv_len(), seed + 2);
        let v = values(d.batch * d.kv_len(), seed + 3);
        let d_out = values(d.batch * d.q_len(), seed + 4);
        let scale = 0.37;
        let (out, lse) = forward(&d, &q, &k, &v, mask, scale);
        let saved = Saved {
            q: &q,
            k: &k,
            v: &v,
            out: &out,
            lse: &lse,
        };
        let g = backward(&d, saved, &d_out, mask, scale);
        let (want, [dq, dk, dv]) = reference(&d, [&q, &k, &v], mask, scale as f64, &d_out);
        assert_close(&out, &want, &format!("{case}: output"));
        assert_close(&g.q, &dq, &format!("{case}: dq"));
        assert_close(&g.k, &dk, &format!("{case}: dk"));
        assert_close(&g.v, &dv, &format!("{case}: dv"));
    }

    #[test]
    fn causal_alibi_over_several_tiles_matches_the_definition() {
        // 150 = two whole 64-blocks and a partial one; 3 heads (a non-power-of-two ALiBi
        // count: llm-foundry's interleaved slopes).
        let slopes: Vec<f32> = crate::alibi::gen_slopes(3, 8.0)
            .iter()
            .map(|&s| s as f32)
            .collect();
        let mask = Mask {
            slopes: Some(slopes),
            causal: true,
            ..Mask::default()
        };
        check_against_definition("alibi", dims(2, 150, 150, 3, 3, 8), &mask, 0);
        // Exactly one tile, and a tile plus one row.
        check_against_definition("64", dims(1, 64, 64, 3, 3, 5), &mask, 10);
        check_against_definition("65", dims(1, 65, 65, 3, 1, 5), &mask, 20);
    }

    #[test]
    fn grouped_heads_key_padding_and_documents_match_the_definition() {
        let (b, s) = (2, 130);
        let slopes = vec![0.5f32, 0.25, 0.125, 0.0625];
        // Element 0: left padding (its first 5 queries see no key at all); element 1: right
        // padding and a padded key in the middle.
        let key_mask: Vec<bool> = (0..b * s)
            .map(|x| {
                let (e, t) = (x / s, x % s);
                if e == 0 { t >= 5 } else { t < 120 && t != 70 }
            })
            .collect();
        let mask = Mask {
            slopes: Some(slopes),
            causal: true,
            key_mask: Some(key_mask),
            sequence_id: None,
        };
        check_against_definition("padding", dims(b, s, s, 4, 2, 6), &mask, 30);
        // Packed documents: boundaries inside and at the edge of tiles.
        let ids: Vec<i64> = (0..b * s)
            .map(|x| {
                let t = x % s;
                [0, 30, 64, 100].iter().filter(|&&start| t >= start).count() as i64
            })
            .collect();
        let mask = Mask {
            sequence_id: Some(ids),
            key_mask: None,
            ..mask
        };
        check_against_definition("documents", dims(b, s, s, 4, 1, 6), &mask, 40);
    }

    #[test]
    fn fewer_queries_than_keys_and_no_mask_match_the_definition() {
        // The last 70 of 200 positions (a cached prefix), causal, with ALiBi.
        let mask = Mask {
            slopes: Some(vec![0.5, 0.125]),
            causal: true,
            ..Mask::default()
        };
        check_against_definition("offset", dims(1, 70, 200, 2, 2, 4), &mask, 50);
        // No bias at all.
        check_against_definition("plain", dims(2, 40, 130, 2, 1, 7), &Mask::default(), 60);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let d = dims(3, 140, 140, 4, 2, 16);
        let mask = Mask {
            slopes: Some(vec![0.5, 0.25, 0.125, 0.0625]),
            causal: true,
            key_mask: Some((0..3 * 140).map(|x| x % 140 >= 3).collect()),
            sequence_id: None,
        };
        let q = values(d.batch * d.q_len(), 1);
        let k = values(d.batch * d.kv_len(), 2);
        let v = values(d.batch * d.kv_len(), 3);
        let d_out = values(d.batch * d.q_len(), 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (out, lse) = forward(&d, &q, &k, &v, &mask, 0.25);
                let saved = Saved {
                    q: &q,
                    k: &k,
                    v: &v,
                    out: &out,
                    lse: &lse,
                };
                let g = backward(&d, saved, &d_out, &mask, 0.25);
                (out, lse, g.q, g.k, g.v)
            })
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert!(run(threads) == one, "{threads} threads differ from one");
        }
    }

    #[test]
    fn a_nan_input_reaches_the_output() {
        let d = dims(1, 3, 3, 1, 1, 2);
        let mut q = values(6, 1);
        q[2] = f32::NAN; // query 1
        let (k, v) = (values(6, 2), values(6, 3));
        let mask = Mask {
            causal: true,
            ..Mask::default()
        };
        let (out, _) = forward(&d, &q, &k, &v, &mask, 1.0);
        assert!(
            out[0].is_finite() && out[2].is_nan() && out[3].is_nan(),
            "{out:?}"
        );
    }
}
