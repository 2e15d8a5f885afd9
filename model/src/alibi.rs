//! ALiBi (Press et al. 2022, <https://arxiv.org/abs/2108.12409>) as llm-foundry builds it
//! (`gen_slopes` and `build_alibi_bias` in `llmfoundry/models/layers/attention.py`).
//!
//! llm-foundry adds `slope_h * (k - (s_k - 1))` to every query row; under the causal mask that
//! equals `slope_h * (k - q)` up to a per-row constant, which the softmax ignores. tessera adds
//! `slope_h * (k - q)` itself (see [`alibi_bias`]).

use burn::prelude::*;

/// llm-foundry's head slopes: `1 / 2^(8 i / n)` for `n` the next power of two of `n_heads`; for
/// a non-power-of-two head count the odd-indexed slopes come first, then the even ones, cut to
/// `n_heads` (so 6 heads give `[1/4, 1/16, 1/64, 1/256, 1/2, 1/8]`).
pub fn gen_slopes(n_heads: usize, alibi_bias_max: f64) -> Vec<f64> {
    let n = n_heads.next_power_of_two();
    let slopes: Vec<f64> = (1..=n)
        .map(|i| 1.0 / 2f64.powf(i as f64 * (alibi_bias_max / n as f64)))
        .collect();
    if n == n_heads {
        return slopes;
    }
    let odd = slopes.iter().skip(1).step_by(2);
    let even = slopes.iter().step_by(2);
    odd.chain(even).copied().take(n_heads).collect()
}

/// The additive ALiBi bias `slope_h * (k - q)` for `s_q` queries at absolute positions
/// `past..past + s_q` over `past + s_q` keys.
///
/// Relative distances (rather than llm-foundry's row-constant `k - (s_k - 1)`, equal after the
/// softmax) make a query's bias independent of how many tokens the same forward holds, so
/// cached decoding reproduces the full forward's scores bit for bit.
///
/// # Shapes
/// - returns `[1, n_heads, s_q, past + s_q]`
pub fn alibi_bias<B: Backend>(
    slopes: &[f64],
    s_q: usize,
    past: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let h = slopes.len();
    let s_k = past + s_q;
    // Slopes are rounded to f32 once, as llm-foundry's float32 `gen_slopes`; the distances are
    // small integers, exact in f32, so the product rounds exactly once as there.
    let slopes: Vec<f32> = slopes.iter().map(|&s| s as f32).collect();
    let slopes = Tensor::<B, 1>::from_data(TensorData::new(slopes, [h]), device);
    let rows = Tensor::<B, 1, Int>::arange(past as i64..s_k as i64, device).reshape([s_q, 1]);
    let cols = Tensor::<B, 1, Int>::arange(0..s_k as i64, device).reshape([1, s_k]);
    let dist = (cols.expand([s_q, s_k]) - rows.expand([s_q, s_k])).float();
    slopes
        .reshape([h, 1, 1])
        .mul(dist.unsqueeze_dim::<3>(0))
        .unsqueeze_dim(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn slopes_match_reference_for_power_of_two_heads() {
        assert_eq!(gen_slopes(4, 8.0), vec![0.25, 0.0625, 0.015625, 0.00390625]);
        let s8 = gen_slopes(8, 8.0);
        assert_eq!(s8[0], 0.5);
        assert_eq!(s8[7], 1.0 / 256.0);
    }

    #[test]
    fn alibi_slopes_match_reference_for_non_power_of_two_heads() {
        // llm-foundry's interleave for 6 heads (index.json of the h6_ffn3 fixture).
        assert_eq!(
            gen_slopes(6, 8.0),
            vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
        );
        // 12 heads: next power 16, exponents i/2; odd-indexed first.
        let s = gen_slopes(12, 8.0);
        let want = |i: i32| 1.0 / 2f64.powf(i as f64 * 0.5);
        assert_eq!(s.len(), 12);
        assert_eq!(s[0], want(2));
        assert_eq!(s[7], want(16));
        assert_eq!(s[8], want(1));
        assert_eq!(s[11], want(7));
    }

    #[test]
    fn bias_is_slope_times_key_minus_query_position() {
        let b = alibi_bias::<Flex>(&[0.5, 0.25], 2, 1, &Default::default());
        assert_eq!(b.dims(), [1, 2, 2, 3]);
        let v = b.into_data().to_vec::<f32>().unwrap();
        // Head 0: queries at positions 1, 2 over keys 0..3.
        assert_eq!(&v[..6], &[-0.5, 0.0, 0.5, -1.0, -0.5, 0.0]);
        assert_eq!(&v[6..], &[-0.25, 0.0, 0.25, -0.5, -0.25, 0.0]);
    }
}
