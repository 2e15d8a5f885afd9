//! The arithmetic of the fused CPU kernels, on plain `f32` slices: GELU, softmax (with an
//! additive bias) and LayerNorm/RMSNorm, each forward and backward.
//!
//! Why these exist: under burn's autodiff, a softmax or a norm written with tensor ops becomes
//! five to ten graph nodes, each a full pass over memory and a fresh allocation, and Flex's GELU
//! calls a scalar `erff` per element. Here each op is one pass over its rows, with the arithmetic
//! written so that LLVM vectorises it (branch-free bodies, lane-wise accumulators instead of
//! serial float reductions), compiled three times: for AVX-512 and for AVX2+FMA (picked at run
//! time) and for the baseline target (`multiversion!`, in `simd.rs`). Rows are split
//! over rayon's threads in fixed-size blocks, and every reduction runs in a fixed order, so
//! results do not depend on the thread count.
//!
//! Numerics: `exp` is Cephes' `expf` (range reduction by `ln 2`, degree-6 polynomial; within
//! 2 ulp); `erf` is Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), the same
//! approximation PyTorch's vectorised CPU `erf` uses. Everything else is exact f32 arithmetic.

use rayon::prelude::*;

use super::simd::multiversion;

/// Elements per parallel block of an element-wise kernel.
pub(crate) const BLOCK: usize = 1 << 14;
/// Lanes of the lane-wise accumulators (two AVX2 registers).
const LANES: usize = 16;

/// `e^x`, branch-free (Cephes `expf`). Inputs below -87.33 give exactly 0 (so masked attention
/// scores vanish); inputs above 88 are clamped to `e^88`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const MIN: f32 = -87.336_55; // ln(2^-126): the smallest normal result
    // clamp (not max/min) so that a NaN stays NaN.
    let xc = x.clamp(MIN, 88.0);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    // r = x - n ln 2, with ln 2 split in two for precision.
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < MIN { 0.0 } else { y * scale }
}

/// `erf(z)` given `e = exp(-z²)` (Abramowitz & Stegun 7.1.26).
#[inline(always)]
fn erf_with(z: f32, e: f32) -> f32 {
    let a = z.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * e).copysign(z)
}

/// `erf(z)` (the tests check [`erf_with`] through it).
#[cfg(test)]
#[inline(always)]
pub fn erf(z: f32) -> f32 {
    erf_with(z, exp(-z * z))
}

/// A new buffer of `len` values, computed in parallel blocks of `block` by `fill(i, out)` for
/// block `i`, and what each call returned, in block order. Each block is zeroed just before, by
/// the thread that fills it.
///
/// Why: a kernel's output allocated as `vec![0.0; len]` is zeroed in one pass on the calling
/// thread while the other cores wait (glibc's calloc clears recycled memory); zeroed block by
/// block in the parallel loop, the clearing is spread over the threads and the block is still in
/// cache when `fill` overwrites it.
pub fn par_fill<T: Send>(
    len: usize,
    block: usize,
    fill: impl Fn(usize, &mut [f32]) -> T + Sync,
) -> (Vec<f32>, Vec<T>) {
    let mut out = Vec::<f32>::with_capacity(len);
    let results = out.spare_capacity_mut()[..len]
        .par_chunks_mut(block.max(1))
        .enumerate()
        .map(|(i, chunk)| fill(i, zeroed(chunk)))
        .collect();
    // SAFETY: every one of the `len` values was initialised by `zeroed` above.
    unsafe { out.set_len(len) };
    (out, results)
}

/// `chunk` set to zeros, as initialised values.
pub fn zeroed(chunk: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    for v in chunk.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element was just initialised, and `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

multiversion! {
    /// `y = x · Φ(x)`, the exact (erf) GELU, on a block.
    pub fn gelu_block(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let z = x * std::f32::consts::FRAC_1_SQRT_2;
            *y = 0.5 * x * (1.0 + erf_with(z, exp(-z * z)));
        }
    }
}

multiversion! {
    /// `g ← g · (Φ(x) + x φ(x))`: the GELU derivative times the incoming gradient, in place.
    pub fn gelu_backward_block(x: &[f32], g: &mut [f32]) {
        // 1 / sqrt(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for (g, &x) in g.iter_mut().zip(x) {
            let z = x * std::f32::consts::FRAC_1_SQRT_2;
            let e = exp(-z * z); // also e^(-x²/2), the Gaussian's kernel
            let cdf = 0.5 * (1.0 + erf_with(z, e));
            *g *= cdf + x * e * INV_SQRT_2PI;
        }
    }
}

/// GELU over a whole buffer, in parallel blocks.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    par_fill(x.len(), BLOCK, |i, y| {
        gelu_block(&x[i * BLOCK..i * BLOCK + y.len()], y)
    })
    .0
}

/// The GELU backward over a whole buffer: `g` (the incoming gradient) becomes `∂/∂x`.
///
/// # Panics
/// If the lengths differ.
pub fn gelu_backward(x: &[f32], g: &mut [f32]) {
    assert_eq!(x.len(), g.len(), "gelu_backward: lengths");
    g.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(g, x)| gelu_backward_block(x, g));
}

multiversion! {
    /// `x ← c · x` on a block.
    pub fn scale_block(x: &mut [f32], c: f32) {
        x.iter_mut().for_each(|v| *v *= c);
    }
}

/// `[a, b, c, d]` → `[a, c, b, d]` (the two middle axes swapped), in parallel: one output block
/// of `b · d` values per `(i, k)`, gathered as `b` rows of `d`. Attention's head transposes
/// (`[batch, seq, heads, head_dim]` ↔ `[batch, heads, seq, head_dim]`); the operation is its own
/// inverse, so it is its own backward too.
///
/// # Panics
/// If `x` does not hold `a · b · c · d` values.
pub fn swap_middle(x: &[f32], [a, b, c, d]: [usize; 4]) -> Vec<f32> {
    assert_eq!(x.len(), a * b * c * d, "swap_middle: length");
    if x.is_empty() {
        return Vec::new();
    }
    par_fill(x.len(), b * d, |ik, block| {
        let (i, k) = (ik / c, ik % c);
        for (j, row) in block.chunks_exact_mut(d).enumerate() {
            let src = ((i * b + j) * c + k) * d;
            row.copy_from_slice(&x[src..src + d]);
        }
    })
    .0
}

/// `x ← c · x`, in parallel blocks.
pub fn scale(x: &mut [f32], c: f32) {
    x.par_chunks_mut(BLOCK).for_each(|x| scale_block(x, c));
}

/// Σ x, in a fixed lane-wise order (vectorisable): element `i` goes to lane `i % LANES`, the
/// tail too. So trailing zeros change nothing, and a softmax row that a causal mask ends in
/// zeros sums exactly like the same row without them: cached decoding reproduces the full
/// forward's probabilities bit for bit.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (a, &t) in acc.iter_mut().zip(tail) {
        *a += t;
    }
    acc.iter().sum::<f32>()
}

/// Σ x in f64, in a fixed lane-wise order.
#[inline(always)]
fn sum64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES / 2];
    let chunks = x.chunks_exact(LANES / 2);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES / 2 {
            acc[l] += c[l] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| v as f64).sum::<f64>()
}

/// Σ x² in f64, in a fixed lane-wise order.
#[inline(always)]
fn sumsq64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES / 2];
    let chunks = x.chunks_exact(LANES / 2);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES / 2 {
            let v = c[l] as f64;
            acc[l] += v * v;
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
}

/// Σ a·b, in a fixed lane-wise order.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max x (`-inf` for an empty row).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

multiversion! {
    /// `x ← softmax(scale · x + bias)` over rows of `n`, in place, where row `r` uses bias row
    /// `r % bias_rows`.
    pub fn softmax_block(x: &mut [f32], bias: Option<&[f32]>, n: usize, scale: f32, first_row: usize) {
        for (i, y) in x.chunks_exact_mut(n).enumerate() {
            match bias {
                Some(b) => {
                    let rows = b.len() / n;
                    let r = (first_row + i) % rows;
                    for (y, &b) in y.iter_mut().zip(&b[r * n..(r + 1) * n]) {
                        *y = *y * scale + b;
                    }
                }
                None if scale != 1.0 => y.iter_mut().for_each(|y| *y *= scale),
                None => {}
            }
            let m = max(y);
            for v in y.iter_mut() {
                *v = exp(*v - m);
            }
            let inv = 1.0 / sum(y);
            for v in y.iter_mut() {
                *v *= inv;
            }
        }
    }
}

multiversion! {
    /// `g ← y ⊙ (g - Σ g ⊙ y)` over rows of `n`: the softmax backward (before the input scale),
    /// in place.
    pub fn softmax_backward_block(y: &[f32], g: &mut [f32], n: usize) {
        for (g, y) in g.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
            let s = dot(g, y);
            for (g, &y) in g.iter_mut().zip(y) {
                *g = y * (*g - s);
            }
        }
    }
}

/// Rows per parallel block for rows of `n` elements (about [`BLOCK`] elements, at least 1 row).
fn rows_per_block(n: usize) -> usize {
    (BLOCK / n.max(1)).max(1)
}

/// `x ← softmax(scale · x + bias)` along rows of `n`, in place; `bias` (if any) holds a whole
/// number of rows and row `r` of `x` uses its row `r % bias_rows` (a bias shared across the
/// batch).
///
/// # Panics
/// If `n` is 0 or does not divide the lengths.
pub fn softmax(x: &mut [f32], bias: Option<&[f32]>, n: usize, scale: f32) {
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "softmax: rows of {n} in {}",
        x.len()
    );
    if let Some(b) = bias {
        assert!(
            !b.is_empty() && b.len() % n == 0,
            "softmax: bias rows of {n} in {}",
            b.len()
        );
    }
    let rows = rows_per_block(n);
    x.par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(i, x)| softmax_block(x, bias, n, scale, i * rows));
}

/// The softmax backward along rows of `n`, from the forward's output `y`: `g` (the incoming
/// gradient) becomes the gradient of the pre-scale input `scale · x + bias` (multiply by
/// `scale` for `x`'s).
///
/// # Panics
/// If the lengths differ or `n` does not divide them.
pub fn softmax_backward(y: &[f32], g: &mut [f32], n: usize) {
    assert!(
        n > 0 && y.len() == g.len() && y.len().is_multiple_of(n),
        "softmax_backward: lengths"
    );
    let rows = rows_per_block(n);
    g.par_chunks_mut(rows * n)
        .zip(y.par_chunks(rows * n))
        .for_each(|(g, y)| softmax_backward_block(y, g, n));
}

multiversion! {
    /// Cross-entropy of rows of `n` logits against `targets` (negative = ignored), in place:
    /// `loss[r] = logsumexp(x_r) - x_r[t_r]`, and with `grad` the rows become
    /// `softmax(x_r) - onehot(t_r)` (zero for ignored rows).
    pub fn xent_block(x: &mut [f32], targets: &[i64], n: usize, grad: bool, loss: &mut [f32]) {
        for ((x, &t), loss) in x.chunks_exact_mut(n).zip(targets).zip(loss.iter_mut()) {
            if t < 0 {
                *loss = 0.0;
                if grad {
                    x.fill(0.0);
                }
                continue;
            }
            let t = t as usize;
            let picked = x[t];
            let m = max(x);
            let s = if grad {
                for v in x.iter_mut() {
                    *v = exp(*v - m);
                }
                sum(x)
            } else {
                let mut acc = [0.0f32; LANES];
                let chunks = x.chunks_exact(LANES);
                let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - m)).sum();
                for c in chunks {
                    for l in 0..LANES {
                        acc[l] += exp(c[l] - m);
                    }
                }
                acc.iter().sum::<f32>() + tail
            };
            // ln in f64 (one per row): the loss is then off by the f32 sum's rounding only.
            *loss = (m as f64 + (s as f64).ln() - picked as f64) as f32;
            if grad {
                let inv = 1.0 / s;
                for v in x.iter_mut() {
                    *v *= inv;
                }
                x[t] -= 1.0;
            }
        }
    }
}

/// Per-row cross-entropy of `x` (rows of `n` logits) against `targets` (one per row; negative =
/// ignored, loss 0). With `grad`, `x` is overwritten with `∂loss/∂x = softmax - onehot` (zero
/// rows where ignored); otherwise its contents are unspecified afterwards.
///
/// # Panics
/// If a target is `>= n`, or the lengths disagree.
pub fn cross_entropy(x: &mut [f32], targets: &[i64], n: usize, grad: bool) -> Vec<f32> {
    assert!(
        n > 0 && x.len() == targets.len() * n,
        "cross_entropy: {} targets for {} logits of rows of {n}",
        targets.len(),
        x.len()
    );
    if let Some(&t) = targets.iter().find(|&&t| t >= n as i64) {
        panic!("cross_entropy: target {t} is outside the vocabulary of {n}");
    }
    let mut loss = vec![0.0; targets.len()];
    let rows = rows_per_block(n);
    x.par_chunks_mut(rows * n)
        .zip(targets.par_chunks(rows).zip(loss.par_chunks_mut(rows)))
        .for_each(|(x, (t, l))| xent_block(x, t, n, grad, l));
    loss
}

/// What a norm's forward keeps for its backward: per-row mean (0 for RMSNorm) and 1/σ.
#[derive(Clone, Debug)]
pub struct NormStats {
    /// Per-row mean (zeros for RMSNorm).
    pub mean: Vec<f32>,
    /// Per-row `1 / sqrt(var + eps)` (or `1 / sqrt(mean(x²) + eps)` for RMSNorm).
    pub rstd: Vec<f32>,
}

multiversion! {
    /// Normalises rows of `n = w.len()`: LayerNorm (two-pass, biased variance) or RMSNorm.
    pub fn norm_block(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, rms: bool, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) {
        let n = w.len();
        for (((y, x), mean), rstd) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(mean.iter_mut()).zip(rstd.iter_mut()) {
            // Statistics in f64 (then rounded once), so the result is the correctly rounded
            // normalisation up to the final products: the f32 sums' rounding noise alone moved
            // the parity fixtures' loss by 1e-5.
            let m = if rms { 0.0 } else { (sum64(x) / n as f64) as f32 };
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - m;
            }
            let var = sumsq64(y) / n as f64;
            let r = (1.0 / (var + eps as f64).sqrt()) as f32;
            match b {
                Some(b) => {
                    for ((y, &w), &b) in y.iter_mut().zip(w).zip(b) {
                        *y = *y * r * w + b;
                    }
                }
                None => {
                    for (y, &w) in y.iter_mut().zip(w) {
                        *y = *y * r * w;
                    }
                }
            }
            *mean = m;
            *rstd = r;
        }
    }
}

multiversion! {
    /// The norm backward on a block of rows: `g` becomes `∂/∂x` in place, and this block's
    /// `Σ g·x̂` and `Σ g` are added into `dw`, `db`.
    pub fn norm_backward_block(x: &[f32], g: &mut [f32], w: &[f32], mean: &[f32], rstd: &[f32], rms: bool, dw: &mut [f32], db: &mut [f32]) {
        let n = w.len();
        let rows = g.chunks_exact_mut(n).zip(x.chunks_exact(n));
        for ((g, x), (&m, &r)) in rows.zip(mean.iter().zip(rstd)) {
            let mut c1 = [0.0f32; LANES]; // Σ g w x̂
            let mut c2 = [0.0f32; LANES]; // Σ g w
            let full = n / LANES * LANES;
            for j in (0..full).step_by(LANES) {
                for l in 0..LANES {
                    let gw = g[j + l] * w[j + l];
                    c1[l] += gw * ((x[j + l] - m) * r);
                    c2[l] += gw;
                }
            }
            let (mut s1, mut s2) = (c1.iter().sum::<f32>(), c2.iter().sum::<f32>());
            for j in full..n {
                let gw = g[j] * w[j];
                s1 += gw * ((x[j] - m) * r);
                s2 += gw;
            }
            let (c1, c2) = (s1 / n as f32, if rms { 0.0 } else { s2 / n as f32 });
            for ((g, (&x, &w)), (dw, db)) in g.iter_mut().zip(x.iter().zip(w)).zip(dw.iter_mut().zip(db.iter_mut())) {
                let h = (x - m) * r;
                *dw += *g * h;
                *db += *g;
                *g = r * (*g * w - c2 - h * c1);
            }
        }
    }
}

/// LayerNorm (`rms = false`) or RMSNorm (`rms = true`) of rows of `w.len()`:
/// `y = (x - mean) / sqrt(var + eps) · w + b`, returning `y` and what the backward needs.
///
/// # Panics
/// If `w` is empty, `b` has another length, or `w.len()` does not divide `x.len()`.
pub fn norm(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, rms: bool) -> (Vec<f32>, NormStats) {
    let n = w.len();
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "norm: rows of {n} in {}",
        x.len()
    );
    assert!(b.is_none_or(|b| b.len() == n), "norm: bias length");
    let per = rows_per_block(n);
    let (y, stats) = par_fill(x.len(), per * n, |i, y| {
        let rows = y.len() / n;
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        let x = &x[i * per * n..i * per * n + y.len()];
        norm_block(x, w, b, eps, rms, y, &mut mean, &mut rstd);
        (mean, rstd)
    });
    let (mean, rstd): (Vec<_>, Vec<_>) = stats.into_iter().unzip();
    let (mean, rstd) = (mean.concat(), rstd.concat());
    (y, NormStats { mean, rstd })
}

/// The norm backward: `g` (the incoming gradient) becomes `∂/∂x` in place; returns `(dw, db)`,
/// summed over fixed blocks of rows, then over blocks in order (so independent of threads).
///
/// # Panics
/// If the lengths disagree.
pub fn norm_backward(
    x: &[f32],
    g: &mut [f32],
    w: &[f32],
    stats: &NormStats,
    rms: bool,
) -> (Vec<f32>, Vec<f32>) {
    let n = w.len();
    assert!(
        n > 0 && x.len() == g.len() && x.len() == stats.mean.len() * n,
        "norm_backward: lengths"
    );
    let per = rows_per_block(n);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = g
        .par_chunks_mut(per * n)
        .zip(x.par_chunks(per * n))
        .zip(stats.mean.par_chunks(per).zip(stats.rstd.par_chunks(per)))
        .map(|((g, x), (mean, rstd))| {
            let (mut dw, mut db) = (vec![0.0; n], vec![0.0; n]);
            norm_backward_block(x, g, w, mean, rstd, rms, &mut dw, &mut db);
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0.0; n], vec![0.0; n]);
    for (pw, pb) in &partials {
        for j in 0..n {
            dw[j] += pw[j];
            db[j] += pb[j];
        }
    }
    (dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64: its Taylor series (accurate to ~1e-11 for |v| <= 4), and ±1 beyond, where
    /// erf differs from ±1 by less than 2e-8.
    fn erf64(v: f64) -> f64 {
        if v.abs() > 4.0 {
            return v.signum();
        }
        let mut sum = 0.0;
        let mut term = v;
        for n in 0..120 {
            sum += term / (2 * n + 1) as f64;
            term *= -v * v / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_is_within_two_ulp_and_underflows_to_zero() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 2.5e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(-3.0e38), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0, "a masked score vanishes");
        assert!(exp(f32::NAN).is_nan(), "a NaN is never hidden");
    }

    #[test]
    fn erf_is_within_abramowitz_stegun_error() {
        // 7.1.26 is within 1.5e-7 in exact arithmetic; evaluated in f32 (as PyTorch does) the
        // worst case is 4.1e-7 (measured in numpy float32 over [-5, 5]).
        for i in -400..=400 {
            let z = i as f32 * 0.01;
            let err = (erf(z) as f64 - erf64(z as f64)).abs();
            assert!(err < 5e-7, "erf({z}): error {err}");
        }
        assert!((erf(6.0) - 1.0).abs() < 1e-7 && (erf(-9.0) + 1.0).abs() < 1e-7);
    }

    #[test]
    fn gelu_and_its_derivative_match_closed_forms() {
        let x: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.003).collect();
        let g: Vec<f32> = x.iter().map(|v| 1.0 + 0.1 * v).collect();
        let y = gelu(&x);
        let mut dx = g.clone();
        gelu_backward(&x, &mut dx);
        for i in 0..x.len() {
            let v = x[i] as f64;
            let cdf = 0.5 * (1.0 + erf64(v / 2f64.sqrt()));
            assert!((y[i] as f64 - v * cdf).abs() < 2e-6, "gelu({v})");
            let d = cdf + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((dx[i] as f64 - g[i] as f64 * d).abs() < 3e-6, "gelu'({v})");
        }
    }

    #[test]
    fn softmax_scales_adds_a_broadcast_bias_and_its_backward_matches_finite_differences() {
        let n = 37; // not a multiple of the lane count
        let scale = 0.37f32;
        let x: Vec<f32> = (0..4 * n)
            .map(|i| ((i * 7919) % 23) as f32 * 0.3 - 3.0)
            .collect();
        let bias: Vec<f32> = (0..2 * n)
            .map(|i| if i % 5 == 0 { -1e30 } else { i as f32 * 0.01 })
            .collect();
        let run = |x: &[f32]| {
            let mut y = x.to_vec();
            softmax(&mut y, Some(&bias), n, scale);
            y
        };
        let y = run(&x);
        for r in 0..4 {
            let b = &bias[(r % 2) * n..(r % 2 + 1) * n];
            let s: Vec<f64> = (0..n)
                .map(|j| (x[r * n + j] * scale + b[j]) as f64)
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            for j in 0..n {
                let want = (s[j] - m).exp() / z;
                assert!((y[r * n + j] as f64 - want).abs() < 1e-6, "row {r} col {j}");
            }
        }
        // Backward of L = Σ c ⊙ softmax(scale · x + b), against central differences in f64.
        let c: Vec<f32> = (0..4 * n).map(|i| ((i * 31) % 11) as f32 * 0.1).collect();
        let mut dx = c.clone();
        softmax_backward(&y, &mut dx, n);
        let loss = |x: &[f32]| -> f64 {
            run(x)
                .iter()
                .zip(&c)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        for k in [0, 3, n + 1, 3 * n + 36] {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += 1e-2;
            xm[k] -= 1e-2;
            let fd = (loss(&xp) - loss(&xm)) / 2e-2;
            assert!(
                (scale as f64 * dx[k] as f64 - fd).abs() < 2e-3,
                "dx[{k}] = {} vs {fd}",
                dx[k]
            );
        }
    }

    #[test]
    fn cross_entropy_rows_match_log_softmax_and_its_gradient() {
        let n = 45;
        let x: Vec<f32> = (0..3 * n)
            .map(|i| ((i * 7) % 19) as f32 * 0.7 - 5.0)
            .collect();
        let targets = [4i64, -100, 44];
        let mut g = x.clone();
        let loss = cross_entropy(&mut g, &targets, n, true);
        let mut no_grad = x.clone();
        assert_eq!(cross_entropy(&mut no_grad, &targets, n, false), loss);
        for (r, &t) in targets.iter().enumerate() {
            let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            if t < 0 {
                assert_eq!(loss[r], 0.0);
                assert!(g[r * n..(r + 1) * n].iter().all(|&v| v == 0.0));
                continue;
            }
            assert!(
                (loss[r] as f64 - (lse - row[t as usize])).abs() < 2e-6,
                "row {r}"
            );
            for j in 0..n {
                let want = (row[j] - lse).exp() - if j == t as usize { 1.0 } else { 0.0 };
                assert!((g[r * n + j] as f64 - want).abs() < 1e-6, "row {r} col {j}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn cross_entropy_rejects_a_target_past_the_vocabulary() {
        cross_entropy(&mut [0.0; 4], &[4], 4, false);
    }

    #[test]
    fn layer_norm_and_rms_norm_match_closed_forms_and_finite_differences() {
        let n = 21;
        let rows = 5;
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 37) % 17) as f32 * 0.25 - 2.0)
            .collect();
        let w: Vec<f32> = (0..n).map(|j| 0.5 + j as f32 * 0.05).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * -0.01).collect();
        for rms in [false, true] {
            let bias = (!rms).then_some(b.as_slice());
            let (y, stats) = norm(&x, &w, bias, 1e-5, rms);
            for r in 0..rows {
                let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
                let m = if rms {
                    0.0
                } else {
                    row.iter().sum::<f64>() / n as f64
                };
                let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n as f64;
                for j in 0..n {
                    let want = (row[j] - m) / (var + 1e-5).sqrt() * w[j] as f64
                        + bias.map_or(0.0, |b| b[j] as f64);
                    assert!(
                        (y[r * n + j] as f64 - want).abs() < 2e-6,
                        "rms={rms} {r},{j}"
                    );
                }
            }
            let c: Vec<f32> = (0..rows * n)
                .map(|i| ((i * 13) % 7) as f32 * 0.2 - 0.5)
                .collect();
            let mut dx = c.clone();
            let (dw, db) = norm_backward(&x, &mut dx, &w, &stats, rms);
            let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
                let bias = (!rms).then_some(b);
                norm(x, w, bias, 1e-5, rms)
                    .0
                    .iter()
                    .zip(&c)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum()
            };
            let h = 1e-2;
            for k in [0, 5, n + 2, rows * n - 1] {
                let (mut p, mut m) = (x.clone(), x.clone());
                p[k] += h;
                m[k] -= h;
                let fd = (loss(&p, &w, &b) - loss(&m, &w, &b)) / (2.0 * h as f64);
                assert!(
                    (dx[k] as f64 - fd).abs() < 2e-3,
                    "rms={rms} dx[{k}] {} vs {fd}",
                    dx[k]
                );
            }
            for j in [0, 7, n - 1] {
                let (mut p, mut m) = (w.clone(), w.clone());
                p[j] += h;
                m[j] -= h;
                let fd = (loss(&x, &p, &b) - loss(&x, &m, &b)) / (2.0 * h as f64);
                assert!(
                    (dw[j] as f64 - fd).abs() < 2e-3,
                    "rms={rms} dw[{j}] {} vs {fd}",
                    dw[j]
                );
                let want_db: f64 = (0..rows).map(|r| c[r * n + j] as f64).sum();
                assert!((db[j] as f64 - want_db).abs() < 1e-5);
            }
        }
    }
}
