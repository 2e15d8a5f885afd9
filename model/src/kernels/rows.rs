//! The arithmetic of the fused CPU kernels, on plain `f32` slices: GELU, softmax (with an
//! additive bias) and LayerNorm/RMSNorm, each forward and backward.
//!
//! Why these exist: under burn's autodiff, a softmax or a norm written with tensor ops becomes
//! five to ten graph nodes, each a full pass over memory and a fresh allocation, and Flex's GELU
//! calls a scalar `erff` per element. Here each op is one pass over its rows, with the arithmetic
//! written so that LLVM vectorises it (branch-free bodies, lane-wise accumulators instead of
//! serial float reductions), compiled twice: for AVX2+FMA (picked at run time) and for the
//! baseline target. Rows are split over rayon's threads in fixed-size blocks, and every
//! reduction runs in a fixed order, so results do not depend on the thread count.
//!
//! Numerics: `exp` is Cephes' `expf` (range reduction by `ln 2`, degree-6 polynomial; within
//! 2 ulp); `erf` is Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), the same
//! approximation PyTorch's vectorised CPU `erf` uses. Everything else is exact f32 arithmetic.

use rayon::prelude::*;

/// Elements per parallel block of an element-wise kernel.
const BLOCK: usize = 1 << 14;
/// Lanes of the lane-wise accumulators (two AVX2 registers).
const LANES: usize = 16;

/// Runs `body` compiled for AVX2+FMA when the CPU has them, else for the baseline target.
macro_rules! multiversion {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) { generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// `e^x`, branch-free (Cephes `expf`). Inputs below -87.33 give exactly 0 (so masked attention
/// scores vanish); inputs above 88 are clamped to `e^88`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 · 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const MIN: f32 = -87.336_55; // ln(2^-126): the smallest normal result
    let xc = x.max(MIN).min(88.0);
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

/// `erf(z)`.
#[inline(always)]
pub fn erf(z: f32) -> f32 {
    erf_with(z, exp(-z * z))
}

multiversion! {
    /// `y = x · Φ(x)`, the exact (erf) GELU, on a block.
    fn gelu_block(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let z = x * std::f32::consts::FRAC_1_SQRT_2;
            *y = 0.5 * x * (1.0 + erf_with(z, exp(-z * z)));
        }
    }
}

multiversion! {
    /// `dx = g · (Φ(x) + x φ(x))`, the GELU derivative times the incoming gradient, on a block.
    fn gelu_backward_block(x: &[f32], g: &[f32], dx: &mut [f32]) {
        // 1 / sqrt(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            let z = x * std::f32::consts::FRAC_1_SQRT_2;
            let e = exp(-z * z); // also e^(-x²/2), the Gaussian's kernel
            let cdf = 0.5 * (1.0 + erf_with(z, e));
            *dx = g * (cdf + x * e * INV_SQRT_2PI);
        }
    }
}

/// GELU over a whole buffer, in parallel blocks.
pub fn gelu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK))
        .for_each(|(y, x)| gelu_block(x, y));
    y
}

/// The GELU backward over a whole buffer.
pub fn gelu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(BLOCK)
        .zip(x.par_chunks(BLOCK).zip(g.par_chunks(BLOCK)))
        .for_each(|(dx, (x, g))| gelu_backward_block(x, g, dx));
    dx
}

/// Σ x, in a fixed lane-wise order (vectorisable).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Σ a·b, in a fixed lane-wise order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// max x (`-inf` for an empty row).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

multiversion! {
    /// `y = softmax(x + bias)` over rows of `n`, where row `r` uses bias row `r % bias_rows`.
    fn softmax_block(x: &[f32], bias: Option<&[f32]>, n: usize, first_row: usize, y: &mut [f32]) {
        for (i, (y, x)) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)).enumerate() {
            match bias {
                Some(b) => {
                    let rows = b.len() / n;
                    let r = (first_row + i) % rows;
                    for ((y, &x), &b) in y.iter_mut().zip(x).zip(&b[r * n..(r + 1) * n]) {
                        *y = x + b;
                    }
                }
                None => y.copy_from_slice(x),
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
    /// `dx = y ⊙ (g - Σ g ⊙ y)` over rows of `n`: the softmax backward.
    fn softmax_backward_block(y: &[f32], g: &[f32], n: usize, dx: &mut [f32]) {
        for ((dx, y), g) in dx.chunks_exact_mut(n).zip(y.chunks_exact(n)).zip(g.chunks_exact(n)) {
            let s = dot(g, y);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = y * (g - s);
            }
        }
    }
}

/// Rows per parallel block for rows of `n` elements (about [`BLOCK`] elements, at least 1 row).
fn rows_per_block(n: usize) -> usize {
    (BLOCK / n.max(1)).max(1)
}

/// `softmax(x + bias)` along rows of `n`; `bias` (if any) holds a whole number of rows and row
/// `r` of `x` uses its row `r % bias_rows` (a bias shared across the batch).
///
/// # Panics
/// If `n` is 0 or does not divide the lengths.
pub fn softmax(x: &[f32], bias: Option<&[f32]>, n: usize) -> Vec<f32> {
    assert!(n > 0 && x.len() % n == 0, "softmax: rows of {n} in {}", x.len());
    if let Some(b) = bias {
        assert!(!b.is_empty() && b.len() % n == 0, "softmax: bias rows of {n} in {}", b.len());
    }
    let mut y = vec![0.0; x.len()];
    let rows = rows_per_block(n);
    y.par_chunks_mut(rows * n)
        .zip(x.par_chunks(rows * n))
        .enumerate()
        .for_each(|(i, (y, x))| softmax_block(x, bias, n, i * rows, y));
    y
}

/// The softmax backward along rows of `n`, from the forward's output `y` and the gradient `g`.
pub fn softmax_backward(y: &[f32], g: &[f32], n: usize) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    let rows = rows_per_block(n);
    dx.par_chunks_mut(rows * n)
        .zip(y.par_chunks(rows * n).zip(g.par_chunks(rows * n)))
        .for_each(|(dx, (y, g))| softmax_backward_block(y, g, n, dx));
    dx
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
    fn norm_block(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, rms: bool, y: &mut [f32], mean: &mut [f32], rstd: &mut [f32]) {
        let n = w.len();
        for (((y, x), mean), rstd) in y.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(mean.iter_mut()).zip(rstd.iter_mut()) {
            let m = if rms { 0.0 } else { sum(x) / n as f32 };
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x - m;
            }
            let var = dot(y, y) / n as f32;
            let r = 1.0 / (var + eps).sqrt();
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
    /// The norm backward on a block of rows: writes `dx` and adds this block's `Σ g·x̂` and
    /// `Σ g` into `dw`, `db`.
    fn norm_backward_block(x: &[f32], g: &[f32], w: &[f32], mean: &[f32], rstd: &[f32], rms: bool, dx: &mut [f32], dw: &mut [f32], db: &mut [f32]) {
        let n = w.len();
        let rows = dx.chunks_exact_mut(n).zip(x.chunks_exact(n)).zip(g.chunks_exact(n));
        for (((dx, x), g), (&m, &r)) in rows.zip(mean.iter().zip(rstd)) {
            // dx holds x̂ first, then the gradient.
            for (h, &x) in dx.iter_mut().zip(x) {
                *h = (x - m) * r;
            }
            let mut c1 = [0.0f32; LANES]; // Σ g w x̂
            let mut c2 = [0.0f32; LANES]; // Σ g w
            let full = n / LANES * LANES;
            for j in (0..full).step_by(LANES) {
                for l in 0..LANES {
                    let gw = g[j + l] * w[j + l];
                    c1[l] += gw * dx[j + l];
                    c2[l] += gw;
                }
            }
            let (mut s1, mut s2) = (c1.iter().sum::<f32>(), c2.iter().sum::<f32>());
            for j in full..n {
                let gw = g[j] * w[j];
                s1 += gw * dx[j];
                s2 += gw;
            }
            let (c1, c2) = (s1 / n as f32, if rms { 0.0 } else { s2 / n as f32 });
            for (((dx, &g), &w), (dw, db)) in dx.iter_mut().zip(g).zip(w).zip(dw.iter_mut().zip(db.iter_mut())) {
                let h = *dx;
                *dw += g * h;
                *db += g;
                *dx = r * (g * w - c2 - h * c1);
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
    assert!(n > 0 && x.len() % n == 0, "norm: rows of {n} in {}", x.len());
    assert!(b.is_none_or(|b| b.len() == n), "norm: bias length");
    let rows = x.len() / n;
    let mut y = vec![0.0; x.len()];
    let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
    let per = rows_per_block(n);
    y.par_chunks_mut(per * n)
        .zip(x.par_chunks(per * n))
        .zip(mean.par_chunks_mut(per).zip(rstd.par_chunks_mut(per)))
        .for_each(|((y, x), (mean, rstd))| norm_block(x, w, b, eps, rms, y, mean, rstd));
    (y, NormStats { mean, rstd })
}

/// The norm backward: `(dx, dw, db)` from the forward's input `x`, its stats and the gradient
/// `g`. `dw`/`db` are summed over fixed blocks of rows, then over blocks in order.
pub fn norm_backward(x: &[f32], g: &[f32], w: &[f32], stats: &NormStats, rms: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = w.len();
    let mut dx = vec![0.0; x.len()];
    let per = rows_per_block(n);
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(per * n)
        .zip(x.par_chunks(per * n).zip(g.par_chunks(per * n)))
        .zip(stats.mean.par_chunks(per).zip(stats.rstd.par_chunks(per)))
        .map(|((dx, (x, g)), (mean, rstd))| {
            let (mut dw, mut db) = (vec![0.0; n], vec![0.0; n]);
            norm_backward_block(x, g, w, mean, rstd, rms, dx, &mut dw, &mut db);
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
    (dx, dw, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf64(v: f64) -> f64 {
        // Taylor series for |v| <= 3, continued fraction-free asymptotic beyond.
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
            assert!(((got - want) / want).abs() < 2.5e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(-3.0e38), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_is_within_abramowitz_stegun_error() {
        for i in -500..=500 {
            let z = i as f32 * 0.01;
            let err = (erf(z) as f64 - erf64(z as f64)).abs();
            assert!(err < 3e-7, "erf({z}): error {err}");
        }
    }

    #[test]
    fn gelu_and_its_derivative_match_closed_forms() {
        let x: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.003).collect();
        let g: Vec<f32> = x.iter().map(|v| 1.0 + 0.1 * v).collect();
        let y = gelu(&x);
        let dx = gelu_backward(&x, &g);
        for i in 0..x.len() {
            let v = x[i] as f64;
            let cdf = 0.5 * (1.0 + erf64(v / 2f64.sqrt()));
            assert!((y[i] as f64 - v * cdf).abs() < 2e-6, "gelu({v})");
            let d = cdf + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((dx[i] as f64 - g[i] as f64 * d).abs() < 3e-6, "gelu'({v})");
        }
    }

    #[test]
    fn softmax_adds_a_broadcast_bias_and_its_backward_matches_finite_differences() {
        let n = 37; // not a multiple of the lane count
        let x: Vec<f32> = (0..4 * n).map(|i| ((i * 7919) % 23) as f32 * 0.3 - 3.0).collect();
        let bias: Vec<f32> = (0..2 * n).map(|i| if i % 5 == 0 { -1e30 } else { i as f32 * 0.01 }).collect();
        let y = softmax(&x, Some(&bias), n);
        for r in 0..4 {
            let row = &y[r * n..(r + 1) * n];
            let b = &bias[(r % 2) * n..(r % 2 + 1) * n];
            let m = (0..n).map(|j| x[r * n + j] + b[j]).fold(f32::MIN, f32::max) as f64;
            let z: f64 = (0..n).map(|j| ((x[r * n + j] + b[j]) as f64 - m).exp()).sum();
            for j in 0..n {
                let want = (((x[r * n + j] + b[j]) as f64 - m).exp()) / z;
                assert!((row[j] as f64 - want).abs() < 1e-6, "row {r} col {j}");
            }
        }
        // Backward of L = Σ c ⊙ softmax(x), against central differences in f64.
        let c: Vec<f32> = (0..4 * n).map(|i| ((i * 31) % 11) as f32 * 0.1).collect();
        let dx = softmax_backward(&y, &c, n);
        let loss = |x: &[f32]| -> f64 {
            softmax(x, Some(&bias), n).iter().zip(&c).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
        };
        for k in [0, 3, n + 1, 3 * n + 36] {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += 1e-2;
            xm[k] -= 1e-2;
            let fd = (loss(&xp) - loss(&xm)) / 2e-2;
            assert!((dx[k] as f64 - fd).abs() < 2e-3, "dx[{k}] = {} vs {fd}", dx[k]);
        }
    }

    #[test]
    fn layer_norm_and_rms_norm_match_closed_forms_and_finite_differences() {
        let n = 21;
        let rows = 5;
        let x: Vec<f32> = (0..rows * n).map(|i| ((i * 37) % 17) as f32 * 0.25 - 2.0).collect();
        let w: Vec<f32> = (0..n).map(|j| 0.5 + j as f32 * 0.05).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 * -0.01).collect();
        for rms in [false, true] {
            let bias = (!rms).then_some(b.as_slice());
            let (y, stats) = norm(&x, &w, bias, 1e-5, rms);
            for r in 0..rows {
                let row: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
                let m = if rms { 0.0 } else { row.iter().sum::<f64>() / n as f64 };
                let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n as f64;
                for j in 0..n {
                    let want = (row[j] - m) / (var + 1e-5).sqrt() * w[j] as f64
                        + bias.map_or(0.0, |b| b[j] as f64);
                    assert!((y[r * n + j] as f64 - want).abs() < 2e-6, "rms={rms} {r},{j}");
                }
            }
            let c: Vec<f32> = (0..rows * n).map(|i| ((i * 13) % 7) as f32 * 0.2 - 0.5).collect();
            let (dx, dw, db) = norm_backward(&x, &c, &w, &stats, rms);
            let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
                let bias = (!rms).then_some(b);
                norm(x, w, bias, 1e-5, rms).0.iter().zip(&c).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let h = 1e-2;
            for k in [0, 5, n + 2, rows * n - 1] {
                let (mut p, mut m) = (x.clone(), x.clone());
                p[k] += h;
                m[k] -= h;
                let fd = (loss(&p, &w, &b) - loss(&m, &w, &b)) / (2.0 * h as f64);
                assert!((dx[k] as f64 - fd).abs() < 2e-3, "rms={rms} dx[{k}] {} vs {fd}", dx[k]);
            }
            for j in [0, 7, n - 1] {
                let (mut p, mut m) = (w.clone(), w.clone());
                p[j] += h;
                m[j] -= h;
                let fd = (loss(&x, &p, &b) - loss(&x, &m, &b)) / (2.0 * h as f64);
                assert!((dw[j] as f64 - fd).abs() < 2e-3, "rms={rms} dw[{j}] {} vs {fd}", dw[j]);
                let want_db: f64 = (0..rows).map(|r| c[r * n + j] as f64).sum();
                assert!((db[j] as f64 - want_db).abs() < 1e-5);
            }
        }
    }
}
