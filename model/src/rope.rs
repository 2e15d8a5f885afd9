//! Rotary position embeddings (Su et al. 2021, <https://arxiv.org/abs/2104.09864>), GPT-NeoX
//! style: each head's two halves are rotated as pairs `(x_i, x_{i + d/2})`. That is what both of
//! llm-foundry's implementations compute (flash-attn's `RotaryEmbedding` with
//! `interleaved=False`, and transformers' `apply_rotary_pos_emb`).
//!
//! The tables are built once per forward, on the device, for exactly the positions in use.
//! Positions are per token, so left-padded rows get the same angles as unpadded ones.

use burn::prelude::*;

/// `cos` and sign-folded `sin` tables for one forward.
#[derive(Clone, Debug)]
pub struct Rotary<B: Backend> {
    /// `[batch or 1, 1, seq, head_dim]`: `cos(p * f_i)` repeated for both halves.
    cos: Tensor<B, 4>,
    /// `[batch or 1, 1, seq, head_dim]`: `[-sin, +sin]`, so that rotating is
    /// `x * cos + swap_halves(x) * sin`.
    sin: Tensor<B, 4>,
}

/// Inverse frequencies `theta^(-2i/d)` for `i < d/2`.
fn inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
        .collect()
}

impl<B: Backend> Rotary<B> {
    /// Tables for the given positions.
    ///
    /// `scaling` divides the positions (transformers' linear RoPE scaling; 1 = none).
    ///
    /// # Shapes
    /// - `positions`: `[batch or 1, seq]` (float, exact integers)
    pub fn new(positions: Tensor<B, 2>, head_dim: usize, theta: f64, scaling: f64) -> Self {
        let device = positions.device();
        let [b, s] = positions.dims();
        let half = head_dim / 2;
        let freq =
            Tensor::<B, 1>::from_data(TensorData::new(inv_freq(head_dim, theta), [half]), &device);
        let positions = if scaling != 1.0 {
            positions / scaling
        } else {
            positions
        };
        // [b, s, 1] * [1, 1, d/2] -> [b, s, d/2]
        let angles = positions.reshape([b, s, 1]) * freq.reshape([1, 1, half]);
        let cos = angles.clone().cos();
        let sin = angles.sin();
        let cos = Tensor::cat(vec![cos.clone(), cos], 2).reshape([b, 1, s, head_dim]);
        let sin = Tensor::cat(vec![sin.clone().neg(), sin], 2).reshape([b, 1, s, head_dim]);
        Self { cos, sin }
    }

    /// Tables for positions `start..start + len`, shared by every row.
    pub fn range(
        start: usize,
        len: usize,
        head_dim: usize,
        theta: f64,
        scaling: f64,
        device: &B::Device,
    ) -> Self {
        let pos = Tensor::<B, 1, Int>::arange(start as i64..(start + len) as i64, device).float();
        Self::new(pos.reshape([1, len]), head_dim, theta, scaling)
    }

    /// Rotates queries or keys.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]` -> same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = x.dims()[3];
        let half = d / 2;
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        x * self.cos.clone() + swapped * self.sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn rotation_matches_closed_form_and_keeps_norm() {
        let dev = Default::default();
        let x =
            Tensor::<Flex, 4>::from_floats([[[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]]], &dev);
        let rot = Rotary::<Flex>::range(0, 2, 4, 10000.0, 1.0, &dev);
        let y = rot.apply(x).into_data().to_vec::<f32>().unwrap();
        // Position 0: identity.
        assert_eq!(&y[..4], &[1.0, 2.0, 3.0, 4.0]);
        // Position 1: pairs (x0, x2) rotated by 1 rad, (x1, x3) by 1/100 rad.
        let (c0, s0) = (1f64.cos(), 1f64.sin());
        let (c1, s1) = (0.01f64.cos(), 0.01f64.sin());
        let want = [
            1.0 * c0 - 3.0 * s0,
            2.0 * c1 - 4.0 * s1,
            3.0 * c0 + 1.0 * s0,
            4.0 * c1 + 2.0 * s1,
        ];
        for i in 0..4 {
            assert!(
                (y[4 + i] as f64 - want[i]).abs() < 1e-5,
                "{i}: {} vs {}",
                y[4 + i],
                want[i]
            );
        }
    }

    #[test]
    fn linear_scaling_divides_positions() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::from_floats([[[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]], &dev);
        let scaled = Rotary::<Flex>::range(0, 3, 2, 10000.0, 2.0, &dev).apply(x.clone());
        let pos = Tensor::<Flex, 2>::from_floats([[0.0, 0.5, 1.0]], &dev);
        let direct = Rotary::<Flex>::new(pos, 2, 10000.0, 1.0).apply(x);
        let a = scaled.into_data().to_vec::<f32>().unwrap();
        let b = direct.into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
