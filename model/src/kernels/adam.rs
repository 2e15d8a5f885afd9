//! The Adam(W) update of a block of parameters, as one fused pass for the optimizers.
//!
//! An optimizer written with tensor ops spends about fifteen full passes over memory per
//! parameter and step, each allocating. Its element-wise arithmetic lives here instead, compiled
//! for the CPU's widest SIMD (`simd.rs`), so an optimizer can run it over parallel blocks of a
//! parameter, its gradient and its moments ([`super::zip_mut`]). This is arithmetic only: the
//! optimizer owns its state, its schedule and its decay rule.

use super::simd::multiversion;

/// The per-step scalars of [`adam_block`], in f32 (what tensor ops would convert them to).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConsts {
    /// β1, the first moment's decay.
    pub b1: f32,
    /// β2, the second moment's decay.
    pub b2: f32,
    /// `1 − β1`.
    pub c1: f32,
    /// `1 − β2`.
    pub c2: f32,
    /// The first moment's bias correction, `1 − β1^step`.
    pub bias1: f32,
    /// The square root of the second moment's, `√(1 − β2^step)`.
    pub bias2_sqrt: f32,
    /// ε, added to the denominator.
    pub eps: f32,
    /// The factor the parameter is multiplied by first (`1 − lr·wd` for AdamW), when it is
    /// not 1.
    pub keep: Option<f32>,
    /// The learning rate.
    pub lr: f32,
}

multiversion! {
    /// One Adam(W) step over a block: with `m`, `v` the moments of parameter `p` and `g` its
    /// gradient, `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`, then
    /// `p ← keep·p − lr · m / (√v / bias2_sqrt + ε) / bias1`, in this order, as PyTorch's
    /// tensor ops compute it (so a fused and a tensor-op optimizer agree exactly).
    ///
    /// # Panics
    /// If the four slices differ in length.
    pub fn adam_block(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamConsts) {
        assert!(
            g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
            "adam_block: lengths {} (p), {} (g), {} (m), {} (v)",
            p.len(),
            g.len(),
            m.len(),
            v.len()
        );
        let keep = c.keep.unwrap_or(1.0);
        let decays = c.keep.is_some();
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * c.b1 + g * c.c1;
            *v = *v * c.b2 + g * g * c.c2;
            let direction = *m / (v.sqrt() / c.bias2_sqrt + c.eps) / c.bias1;
            let kept = if decays { *p * keep } else { *p };
            *p = kept - direction * c.lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consts(keep: Option<f32>) -> AdamConsts {
        let (b1, b2, step) = (0.9f64, 0.95f64, 3);
        AdamConsts {
            b1: b1 as f32,
            b2: b2 as f32,
            c1: (1.0 - b1) as f32,
            c2: (1.0 - b2) as f32,
            bias1: (1.0 - b1.powi(step)) as f32,
            bias2_sqrt: (1.0 - b2.powi(step)).sqrt() as f32,
            eps: 1e-8,
            keep,
            lr: 1e-2,
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 201) as f32 / 100.0 - 1.0)
            .collect()
    }

    #[test]
    fn adam_block_is_the_update_written_element_by_element() {
        // 1000 values: whole vectors and a remainder at every SIMD width.
        for keep in [None, Some(0.999)] {
            let c = consts(keep);
            let n = 1000;
            let (mut p, g) = (values(n, 1), values(n, 2));
            let (mut m, mut v) = (
                values(n, 3),
                values(n, 4).iter().map(|x| x * x).collect::<Vec<f32>>(),
            );
            let (mut p2, mut m2, mut v2): (Vec<f32>, Vec<f32>, Vec<f32>) =
                (p.clone(), m.clone(), v.clone());
            for i in 0..n {
                m2[i] = m2[i] * c.b1 + g[i] * c.c1;
                v2[i] = v2[i] * c.b2 + g[i] * g[i] * c.c2;
                let d = m2[i] / (v2[i].sqrt() / c.bias2_sqrt + c.eps) / c.bias1;
                p2[i] = p2[i] * keep.unwrap_or(1.0) - d * c.lr;
            }
            adam_block(&mut p, &g, &mut m, &mut v, &c);
            assert_eq!(m, m2, "{keep:?}");
            assert_eq!(v, v2, "{keep:?}");
            assert_eq!(p, p2, "{keep:?}");
            assert!(p.iter().zip(values(n, 1)).any(|(a, b)| a != &b));
        }
    }

    #[test]
    #[should_panic(expected = "adam_block: lengths")]
    fn adam_block_refuses_slices_of_different_lengths() {
        let (mut p, mut m, mut v) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 4]);
        adam_block(&mut p, &[0.0; 3], &mut m, &mut v, &consts(None));
    }
}
