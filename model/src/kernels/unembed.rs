//! The unembedding and its cross-entropy on the CPU, with both gradients: per block of rows,
//! `logits = scale · h Wᵀ`, the rows' losses and `G = softmax - onehot` in place, then
//! `∂h = scale · G W` into the block's rows and `∂W += scale · Gᵀ h`.
//!
//! Why one kernel and not [`crate::lm_loss`]'s tensor loop: with a large vocabulary every block
//! touches `W`-sized memory three times (two products pack all of `W`, and `∂W` is read and
//! written), whatever its row count. Built from tensor ops, each block also allocated a fresh
//! `[rows, vocab]` logits buffer, a fresh `∂W`-sized product and a third `W`-sized buffer for
//! the running sum, and the kernel faulted in every one of those pages anew. Here the logits
//! buffer is allocated once, `∂h` is written in place, and `∂W` is accumulated by the product
//! itself, so a block costs the products plus those three passes over `W`.

use super::gemm::{MatMut, MatRef, Threads, gemm};
use super::rows;

/// Rows per block: enough that the three `W`-sized passes per block stay small beside the
/// block's products (`2 · rows · d` FLOPs per element of `W` against three memory passes),
/// and a logits buffer of at most `max_elements`.
///
/// Measured at `d = 256`, vocabulary 50432, 2048 rows on a 2-core Xeon (BENCHMARKS.md): 83-row
/// blocks spent more time in the `W` passes than in the products.
pub fn block_rows(n: usize, v: usize, max_elements: usize) -> usize {
    (max_elements / v.max(1)).clamp(1, n.max(1))
}

/// The per-row losses (0 for ignored rows), and `∂/∂h` and `∂/∂W` of their sum when asked
/// for.
pub struct Unembedded {
    /// `[n]`
    pub losses: Vec<f32>,
    /// `[n, d]`
    pub dh: Option<Vec<f32>>,
    /// `[v, d]`
    pub dw: Option<Vec<f32>>,
}

/// `loss[r] = CE(scale · h[r] Wᵀ, targets[r])` for `h: [n, d]` and `W: [v, d]` (row-major),
/// with targets `< 0` ignored, in blocks of `block` rows.
///
/// # Panics
/// If the lengths disagree, or a target is `>= v`.
#[allow(clippy::too_many_arguments)]
pub fn unembed_cross_entropy(
    h: &[f32],
    w: &[f32],
    targets: &[i64],
    [n, d, v]: [usize; 3],
    scale: f32,
    grad_h: bool,
    grad_w: bool,
    block: usize,
) -> Unembedded {
    assert!(
        h.len() == n * d && w.len() == v * d && targets.len() == n && v > 0,
        "unembed_cross_entropy: h {} values, W {}, {} targets for [n {n}, d {d}, v {v}]",
        h.len(),
        w.len(),
        targets.len()
    );
    let block = block.clamp(1, n.max(1));
    let grad = grad_h || grad_w;
    let wt = MatRef::rows(w, v, d).t(); // [d, v]
    let mut logits = vec![0.0f32; block.min(n) * v];
    let mut losses = Vec::with_capacity(n);
    let mut dh = grad_h.then(|| vec![0.0f32; n * d]);
    let mut dw = grad_w.then(|| vec![0.0f32; v * d]);
    for start in (0..n).step_by(block) {
        let len = block.min(n - start);
        let hb = MatRef::new(h, start * d, [len, d], [d, 1]);
        let x = &mut logits[..len * v];
        gemm(MatMut::rows(x, len, v), hb, wt, scale, false, Threads::Pool);
        losses.extend(rows::cross_entropy(
            x,
            &targets[start..start + len],
            v,
            grad,
        ));
        if !grad {
            continue;
        }
        let g = MatRef::rows(x, len, v);
        if let Some(dh) = dh.as_mut() {
            let out = MatMut::new(dh, start * d, [len, d], [d, 1]);
            gemm(out, g, MatRef::rows(w, v, d), scale, false, Threads::Pool);
        }
        if let Some(dw) = dw.as_mut() {
            // The first block may overwrite: `dw` starts at zero either way.
            let out = MatMut::rows(dw, v, d);
            gemm(out, g.t(), hb, scale, start > 0, Threads::Pool);
        }
    }
    Unembedded { losses, dh, dw }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let r = ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000;
                (r as f32 / 500.0 - 1.0) * amp
            })
            .collect()
    }

    /// The textbook arithmetic, in f64: full logits, log-softmax, `softmax - onehot`.
    fn reference(
        h: &[f32],
        w: &[f32],
        t: &[i64],
        [n, d, v]: [usize; 3],
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut losses = vec![0.0; n];
        let mut dh = vec![0.0; n * d];
        let mut dw = vec![0.0; v * d];
        for r in 0..n {
            if t[r] < 0 {
                continue;
            }
            let z: Vec<f64> = (0..v)
                .map(|j| {
                    scale
                        * (0..d)
                            .map(|k| (h[r * d + k] * w[j * d + k]) as f64)
                            .sum::<f64>()
                })
                .collect();
            let m = z.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = z.iter().map(|x| (x - m).exp()).sum();
            losses[r] = m + s.ln() - z[t[r] as usize];
            for j in 0..v {
                let g = (z[j] - m).exp() / s - if j == t[r] as usize { 1.0 } else { 0.0 };
                for k in 0..d {
                    dh[r * d + k] += scale * g * w[j * d + k] as f64;
                    dw[j * d + k] += scale * g * h[r * d + k] as f64;
                }
            }
        }
        (losses, dh, dw)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn every_block_size_gives_the_textbook_losses_and_gradients() {
        let (n, d, v) = (13, 6, 37);
        let h = values(n * d, 1, 1.0);
        let w = values(v * d, 2, 0.7);
        let t: Vec<i64> = (0..n as i64)
            .map(|i| if i % 5 == 2 { -100 } else { i * 7 % v as i64 })
            .collect();
        let (losses, dh, dw) = reference(&h, &w, &t, [n, d, v], 1.5);
        for block in [1, 4, 5, 13, 100] {
            let out = unembed_cross_entropy(&h, &w, &t, [n, d, v], 1.5, true, true, block);
            let what = |s: &str| format!("{s}, blocks of {block}");
            close(&out.losses, &losses, &what("losses"));
            close(&out.dh.unwrap(), &dh, &what("dh"));
            close(&out.dw.unwrap(), &dw, &what("dw"));
        }
        // Only what is asked for is computed.
        let out = unembed_cross_entropy(&h, &w, &t, [n, d, v], 1.5, false, true, 4);
        assert!(out.dh.is_none());
        close(&out.dw.unwrap(), &dw, "dw alone");
        let out = unembed_cross_entropy(&h, &w, &t, [n, d, v], 1.5, false, false, 4);
        assert!(out.dh.is_none() && out.dw.is_none());
        close(&out.losses, &losses, "losses alone");
    }

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn a_target_past_the_vocabulary_is_refused() {
        let (n, d, v) = (2, 3, 4);
        unembed_cross_entropy(
            &values(n * d, 1, 1.0),
            &values(v * d, 2, 1.0),
            &[1, 4],
            [n, d, v],
            1.0,
            true,
            true,
            2,
        );
    }

    #[test]
    fn block_rows_bounds_the_logits_buffer() {
        assert_eq!(block_rows(2048, 50432, 1 << 22), 83);
        assert_eq!(block_rows(2048, 50432, 1 << 30), 2048);
        assert_eq!(block_rows(10, 1 << 30, 1 << 22), 1, "at least one row");
        assert_eq!(block_rows(0, 100, 1000), 1);
    }
}
