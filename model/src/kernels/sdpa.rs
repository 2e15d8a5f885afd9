//! Scaled dot-product attention, `softmax(scale · q kᵀ + bias) v`, forward and backward, on
//! plain f32 slices in the layout the projections produce: `[batch, seq, heads, head_dim]`.
//!
//! Why: composed from tensor ops, attention is four head transposes, two batched matmuls (each
//! output zero-filled and copied once more by Flex) and a softmax node, and its backward as
//! many again. Here each batch element is one task: per head, the scores go into that head's
//! slice of the saved probabilities, the softmax runs over them in cache, and gemm reads the
//! head's queries, keys and values where they lie (strided) and writes the output (or the
//! gradients) straight into place. Grouped-query attention is handled by index: query head `j`
//! uses key/value head `j / (heads / kv_heads)`, as llm-foundry's `repeat_kv_for_gqa`.
//!
//! Batch elements run in parallel when there are at least as many as threads; otherwise one at
//! a time, each product and softmax spread over the threads instead. Neither choice changes
//! the arithmetic (gemm splits outputs, not sums), so results do not depend on the thread count.

use rayon::prelude::*;

use super::gemm::{MatMut, MatRef, Threads, gemm};
use super::rows;

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
    fn probs_len(&self) -> usize {
        self.heads * self.seq_q * self.seq_k
    }
    /// Where head `i` lies in one batch element's `[seq, heads · head_dim]` buffer: its
    /// offset, shape and strides.
    fn head(&self, seq: usize, heads: usize, i: usize) -> (usize, [usize; 2], [usize; 2]) {
        let d = self.head_dim;
        (i * d, [seq, d], [heads * d, 1])
    }
    /// Query head `j` of batch element `data` (`[seq_q, heads · head_dim]`).
    fn q_head<'a>(&self, data: &'a [f32], j: usize) -> MatRef<'a> {
        let (offset, shape, strides) = self.head(self.seq_q, self.heads, j);
        MatRef::new(data, offset, shape, strides)
    }
    /// Key/value head `g` of batch element `data` (`[seq_k, kv_heads · head_dim]`).
    fn kv_head<'a>(&self, data: &'a [f32], g: usize) -> MatRef<'a> {
        let (offset, shape, strides) = self.head(self.seq_k, self.kv_heads, g);
        MatRef::new(data, offset, shape, strides)
    }
    fn q_head_mut<'a>(&self, data: &'a mut [f32], j: usize) -> MatMut<'a> {
        let (offset, shape, strides) = self.head(self.seq_q, self.heads, j);
        MatMut::new(data, offset, shape, strides)
    }
    fn kv_head_mut<'a>(&self, data: &'a mut [f32], g: usize) -> MatMut<'a> {
        let (offset, shape, strides) = self.head(self.seq_k, self.kv_heads, g);
        MatMut::new(data, offset, shape, strides)
    }
    /// The key/value head that query head `j` reads.
    fn group(&self, j: usize) -> usize {
        j / (self.heads / self.kv_heads)
    }
    /// Whether query head `j` is the first of its group (it overwrites the group's key/value
    /// gradients; the others add to them).
    fn first_in_group(&self, j: usize) -> bool {
        j.is_multiple_of(self.heads / self.kv_heads)
    }
    fn check(&self, q: &[f32], k: &[f32], v: &[f32]) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads),
            "sdpa: {} query heads over {} key/value heads",
            self.heads,
            self.kv_heads
        );
        assert_eq!(q.len(), self.batch * self.q_len(), "sdpa: queries");
        assert_eq!(k.len(), self.batch * self.kv_len(), "sdpa: keys");
        assert_eq!(v.len(), self.batch * self.kv_len(), "sdpa: values");
    }
}

/// An additive bias `[batch or 1, heads or 1, seq_q, seq_k]` (ALiBi and masks), contiguous.
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    /// The values.
    pub values: &'a [f32],
    /// 1 (shared by the batch) or the batch size.
    pub batch: usize,
    /// 1 (shared by the heads) or the number of heads.
    pub heads: usize,
}

impl Bias<'_> {
    /// The `[seq_q, seq_k]` block for batch element `b`, head `j`.
    fn block(&self, d: &Dims, b: usize, j: usize) -> &[f32] {
        let n = d.seq_q * d.seq_k;
        let b = if self.batch == 1 { 0 } else { b };
        let j = if self.heads == 1 { 0 } else { j };
        let i = b * self.heads + j;
        &self.values[i * n..(i + 1) * n]
    }
}

/// Runs `task(b, [b's chunk of each output], threads)` for every batch element `b` and returns
/// the outputs, `batch` chunks of `lens[i]` values each: in parallel when there are at least as
/// many elements as threads, else in order with each product spread over the threads. Each
/// chunk is zeroed by the task's thread just before the task (see [`rows::par_fill`]).
fn for_each_batch<const N: usize>(
    batch: usize,
    lens: [usize; N],
    task: impl Fn(usize, [&mut [f32]; N], Threads) + Sync,
) -> [Vec<f32>; N] {
    let mut outputs: [Vec<f32>; N] = lens.map(|len| Vec::with_capacity(batch * len));
    {
        let mut lens_iter = lens.into_iter();
        let mut chunks = outputs.each_mut().map(|out| {
            let len = lens_iter.next().unwrap_or(0);
            out.spare_capacity_mut()[..batch * len].chunks_mut(len.max(1))
        });
        let per_batch: Vec<[_; N]> = (0..batch)
            .map(|_| std::array::from_fn(|i| chunks[i].next().unwrap_or_default()))
            .collect();
        let run = |b: usize, c: [&mut [std::mem::MaybeUninit<f32>]; N], threads| {
            task(b, c.map(rows::zeroed), threads)
        };
        if batch >= rayon::current_num_threads() {
            per_batch
                .into_par_iter()
                .enumerate()
                .for_each(|(b, c)| run(b, c, Threads::One));
        } else {
            for (b, c) in per_batch.into_iter().enumerate() {
                run(b, c, Threads::Pool);
            }
        }
    }
    for (out, len) in outputs.iter_mut().zip(lens) {
        // SAFETY: the chunks above cover the first `batch · len` values, and `rows::zeroed`
        // initialised each one.
        unsafe { out.set_len(batch * len) };
    }
    outputs
}

/// `softmax(scale · x + bias)` over rows of `n`, in place (in parallel with `Threads::Pool`).
fn softmax(x: &mut [f32], bias: &[f32], n: usize, scale: f32, threads: Threads) {
    let bias = (!bias.is_empty()).then_some(bias);
    match threads {
        Threads::One => rows::softmax_block(x, bias, n, scale, 0),
        Threads::Pool => rows::softmax(x, bias, n, scale),
    }
}

/// The softmax backward over rows of `n`, in place (see [`rows::softmax_backward`]).
fn softmax_backward(y: &[f32], g: &mut [f32], n: usize, threads: Threads) {
    match threads {
        Threads::One => rows::softmax_backward_block(y, g, n),
        Threads::Pool => rows::softmax_backward(y, g, n),
    }
}

/// The forward: returns the output `[batch, seq_q, heads, head_dim]` and the probabilities
/// `[batch, heads, seq_q, seq_k]` (what [`backward`] needs).
///
/// `q` is `[batch, seq_q, heads, head_dim]`, `k` and `v` `[batch, seq_k, kv_heads, head_dim]`,
/// all contiguous.
///
/// # Panics
/// If the lengths do not match `d`, or the bias's.
pub fn forward(
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<Bias>,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    d.check(q, k, v);
    if let Some(bias) = &bias {
        assert!(
            (bias.batch == 1 || bias.batch == d.batch)
                && (bias.heads == 1 || bias.heads == d.heads)
                && bias.values.len() == bias.batch * bias.heads * d.seq_q * d.seq_k,
            "sdpa: a bias of {} values for [{}, {}, {}, {}]",
            bias.values.len(),
            bias.batch,
            bias.heads,
            d.seq_q,
            d.seq_k
        );
    }
    let block = d.seq_q * d.seq_k;
    let lens = [d.q_len(), d.probs_len()];
    let [out, probs] = for_each_batch(d.batch, lens, |b, [out, probs], threads| {
        let (q, k, v) = (
            &q[b * d.q_len()..(b + 1) * d.q_len()],
            &k[b * d.kv_len()..(b + 1) * d.kv_len()],
            &v[b * d.kv_len()..(b + 1) * d.kv_len()],
        );
        for (j, p) in probs.chunks_exact_mut(block.max(1)).enumerate() {
            let g = d.group(j);
            let s = MatMut::rows(p, d.seq_q, d.seq_k);
            gemm(s, d.q_head(q, j), d.kv_head(k, g).t(), 1.0, false, threads);
            let bias = bias.as_ref().map_or(&[][..], |bias| bias.block(d, b, j));
            softmax(p, bias, d.seq_k, scale, threads);
            let p = MatRef::rows(p, d.seq_q, d.seq_k);
            gemm(
                d.q_head_mut(out, j),
                p,
                d.kv_head(v, g),
                1.0,
                false,
                threads,
            );
        }
    });
    (out, probs)
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

/// The backward, from the forward's inputs, its probabilities and the output's gradient
/// `d_out` (`[batch, seq_q, heads, head_dim]`). The bias is a constant (no gradient).
///
/// Per head: `dP = dO vᵀ`; `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (the softmax backward);
/// `dq = scale · dS k`, `dk = scale · dSᵀ q`, `dv = Pᵀ dO`, the last two summed over the query
/// heads that share a key/value head.
///
/// # Panics
/// If the lengths do not match `d`.
pub fn backward(
    d: &Dims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d_out: &[f32],
    scale: f32,
) -> Grads {
    d.check(q, k, v);
    assert_eq!(probs.len(), d.batch * d.probs_len(), "sdpa: probabilities");
    assert_eq!(d_out.len(), d.batch * d.q_len(), "sdpa: output gradient");
    let block = d.seq_q * d.seq_k;
    let lens = [d.q_len(), d.kv_len(), d.kv_len()];
    let [dq, dk, dv] = for_each_batch(d.batch, lens, |b, [dq, dk, dv], threads| {
        let (q, k, v, d_out) = (
            &q[b * d.q_len()..(b + 1) * d.q_len()],
            &k[b * d.kv_len()..(b + 1) * d.kv_len()],
            &v[b * d.kv_len()..(b + 1) * d.kv_len()],
            &d_out[b * d.q_len()..(b + 1) * d.q_len()],
        );
        let probs = &probs[b * d.probs_len()..(b + 1) * d.probs_len()];
        let mut ds = vec![0.0f32; block];
        for (j, p) in probs.chunks_exact(block.max(1)).enumerate() {
            let (g, add) = (d.group(j), !d.first_in_group(j));
            let p_mat = MatRef::rows(p, d.seq_q, d.seq_k);
            let d_o = d.q_head(d_out, j);
            let dp = MatMut::rows(&mut ds, d.seq_q, d.seq_k);
            gemm(dp, d_o, d.kv_head(v, g).t(), 1.0, false, threads);
            softmax_backward(p, &mut ds, d.seq_k, threads);
            let ds_mat = MatRef::rows(&ds, d.seq_q, d.seq_k);
            gemm(d.kv_head_mut(dv, g), p_mat.t(), d_o, 1.0, add, threads);
            gemm(
                d.q_head_mut(dq, j),
                ds_mat,
                d.kv_head(k, g),
                scale,
                false,
                threads,
            );
            gemm(
                d.kv_head_mut(dk, g),
                ds_mat.t(),
                d.q_head(q, j),
                scale,
                add,
                threads,
            );
        }
    });
    Grads {
        q: dq,
        k: dk,
        v: dv,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Attention and its gradients by the definition, in f64, one element at a time.
    #[allow(clippy::type_complexity)]
    fn reference(
        d: &Dims,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        bias: Option<&Bias>,
        scale: f64,
        d_out: &[f32],
    ) -> (Vec<f64>, [Vec<f64>; 3]) {
        let (sq, sk, h, kvh, hd) = (d.seq_q, d.seq_k, d.heads, d.kv_heads, d.head_dim);
        let qi = |b: usize, i: usize, j: usize, c: usize| ((b * sq + i) * h + j) * hd + c;
        let ki = |b: usize, t: usize, g: usize, c: usize| ((b * sk + t) * kvh + g) * hd + c;
        let mut out = vec![0.0f64; q.len()];
        let (mut dq, mut dk, mut dv) = (
            vec![0.0f64; q.len()],
            vec![0.0f64; k.len()],
            vec![0.0f64; v.len()],
        );
        for b in 0..d.batch {
            for j in 0..h {
                let g = j / (h / kvh);
                let bias_block = bias.map(|bias| bias.block(d, b, j));
                for i in 0..sq {
                    let s: Vec<f64> = (0..sk)
                        .map(|t| {
                            let dot: f64 = (0..hd)
                                .map(|c| q[qi(b, i, j, c)] as f64 * k[ki(b, t, g, c)] as f64)
                                .sum();
                            scale * dot + bias_block.map_or(0.0, |bb| bb[i * sk + t] as f64)
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                    for c in 0..hd {
                        out[qi(b, i, j, c)] =
                            (0..sk).map(|t| p[t] * v[ki(b, t, g, c)] as f64).sum();
                    }
                    // dP, then the softmax backward.
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
                (*g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        // Plain heads with a per-head bias shared by the batch (ALiBi + causal), grouped-query
        // heads with a per-batch bias shared by the heads, and no bias with more keys than
        // queries.
        let cases = [
            (
                Dims {
                    batch: 3,
                    seq_q: 7,
                    seq_k: 7,
                    heads: 2,
                    kv_heads: 2,
                    head_dim: 5,
                },
                Some((1, 2)),
            ),
            (
                Dims {
                    batch: 2,
                    seq_q: 6,
                    seq_k: 6,
                    heads: 4,
                    kv_heads: 2,
                    head_dim: 3,
                },
                Some((2, 1)),
            ),
            (
                Dims {
                    batch: 1,
                    seq_q: 3,
                    seq_k: 9,
                    heads: 3,
                    kv_heads: 1,
                    head_dim: 4,
                },
                None,
            ),
        ];
        for (n, (d, bias_shape)) in cases.into_iter().enumerate() {
            let seed = 10 * n as u64;
            let q = values(d.batch * d.q_len(), seed + 1);
            let k = values(d.batch * d.kv_len(), seed + 2);
            let v = values(d.batch * d.kv_len(), seed + 3);
            let d_out = values(d.batch * d.q_len(), seed + 4);
            let bias_values = bias_shape.map(|(bb, bh)| {
                let mut b = values(bb * bh * d.seq_q * d.seq_k, seed + 5);
                // A causal mask, as `mask.rs` writes it.
                for (i, x) in b.iter_mut().enumerate() {
                    let (row, col) = ((i / d.seq_k) % d.seq_q, i % d.seq_k);
                    if col > row {
                        *x = 0.5 * f32::MIN;
                    }
                }
                b
            });
            let bias = bias_shape
                .zip(bias_values.as_deref())
                .map(|((batch, heads), values)| Bias {
                    values,
                    batch,
                    heads,
                });
            let scale = 0.37;
            let (out, probs) = forward(&d, &q, &k, &v, bias, scale);
            let g = backward(&d, &q, &k, &v, &probs, &d_out, scale);
            let (want, [dq, dk, dv]) =
                reference(&d, &q, &k, &v, bias.as_ref(), scale as f64, &d_out);
            let case = format!("case {n}");
            assert_close(&out, &want, &format!("{case}: output"));
            assert_close(&g.q, &dq, &format!("{case}: dq"));
            assert_close(&g.k, &dk, &format!("{case}: dk"));
            assert_close(&g.v, &dv, &format!("{case}: dv"));
        }
    }

    #[test]
    fn results_do_not_depend_on_how_the_batch_is_split_over_threads() {
        // Four elements together run one per task (on this pool of at most 4 threads... or one
        // at a time with threaded products); each alone runs the other way. Bit for bit equal.
        let d = Dims {
            batch: 4,
            seq_q: 40,
            seq_k: 40,
            heads: 2,
            kv_heads: 1,
            head_dim: 16,
        };
        let one = Dims { batch: 1, ..d };
        let q = values(d.batch * d.q_len(), 1);
        let k = values(d.batch * d.kv_len(), 2);
        let v = values(d.batch * d.kv_len(), 3);
        let d_out = values(d.batch * d.q_len(), 4);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (out, probs, g) = pool.install(|| {
            let (out, probs) = forward(&d, &q, &k, &v, None, 0.25);
            let g = backward(&d, &q, &k, &v, &probs, &d_out, 0.25);
            (out, probs, g)
        });
        for b in 0..d.batch {
            let (ql, kl) = (one.q_len(), one.kv_len());
            let (qb, kb, vb) = (
                &q[b * ql..(b + 1) * ql],
                &k[b * kl..(b + 1) * kl],
                &v[b * kl..(b + 1) * kl],
            );
            let (o1, p1) = pool.install(|| forward(&one, qb, kb, vb, None, 0.25));
            let g1 = pool
                .install(|| backward(&one, qb, kb, vb, &p1, &d_out[b * ql..(b + 1) * ql], 0.25));
            assert!(o1 == out[b * ql..(b + 1) * ql], "output of element {b}");
            assert!(p1 == probs[b * one.probs_len()..(b + 1) * one.probs_len()]);
            assert!(g1.q == g.q[b * ql..(b + 1) * ql], "dq of element {b}");
            assert!(g1.k == g.k[b * kl..(b + 1) * kl], "dk of element {b}");
            assert!(g1.v == g.v[b * kl..(b + 1) * kl], "dv of element {b}");
        }
    }
}
