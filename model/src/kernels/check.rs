//! A self check of the fused attention ([`super::attention`]) on any backend, against the
//! composed path run on the CPU in f32: the output and the gradients of `q`, `k` and `v`.
//!
//! Why: the fused kernels' unit tests run on the CPU (Flex) and on lavapipe (wgpu, f32); the
//! CUDA build, f16 and bf16 can only be checked on a GPU, by the binary
//! (`tessera kernel-check`, a step of `xtask/scripts/gpu-check.sh`). The reference takes the
//! same inputs as the kernel (rounded to the checked dtype, then widened to f32), so only the
//! kernel's own rounding is measured; and it runs on the CPU because CUDA's f32 matmuls round
//! through TF32.

use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;

use crate::mask::AttnBias;

/// The composed reference: Flex's autodiff with a checkpointing strategy, which no fused CPU
/// kernel specialises.
type Reference = Autodiff<Flex, BalancedCheckpointing>;

/// One shape of the check. The bias is the model's: causal, with ALiBi when asked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionCase {
    /// Batch elements.
    pub batch: usize,
    /// Queries (and keys) per element.
    pub seq: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// The dtype of `q`, `k`, `v`, the output and the gradients.
    pub dtype: FloatDType,
    /// ALiBi slopes (`gen_slopes(heads, 8)`).
    pub alibi: bool,
    /// The first batch element's first 3 tokens are padding (rows that see no key).
    pub padding: bool,
}

/// What [`check_attention`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionCheck {
    /// The case.
    pub case: AttentionCase,
    /// Whether a fused kernel took the call (else it ran the composed path, and the errors
    /// compare the composed path with itself).
    pub fused: bool,
    /// `max |fused − reference| / max(1, max |reference|)` of the output, `dq`, `dk`, `dv`.
    pub errors: [f32; 4],
    /// Wall time of one forward and backward through [`super::attention`] (after one
    /// warm-up), including the read-back of the gradients, in milliseconds.
    pub fused_ms: f64,
    /// The same for the composed path on the same device (dense bias), in milliseconds.
    pub composed_ms: f64,
}

impl AttentionCheck {
    /// The largest error allowed for the case's dtype: the kernel accumulates in f32, so only
    /// its output rounding (and, in the backward, that of the output gradient) is seen.
    pub fn tolerance(&self) -> f32 {
        match self.case.dtype {
            FloatDType::F32 => 1e-4,
            FloatDType::F16 => 4e-3,
            _ => 2e-2,
        }
    }

    /// Whether every error is within [`AttentionCheck::tolerance`].
    pub fn passed(&self) -> bool {
        self.errors.iter().all(|&e| e <= self.tolerance())
    }
}

/// Deterministic values in `[-1.5, 1.5]`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 3001) as f32 / 1000.0 - 1.5
        })
        .collect()
}

/// The model's bias for the case on backend `Bk`.
fn bias<Bk: Backend>(c: &AttentionCase, dev: &Bk::Device) -> AttnBias<Bk> {
    let key_mask = c.padding.then(|| {
        let real = (0..c.batch * c.seq).map(|x| x >= 3).collect::<Vec<_>>();
        Tensor::<Bk, 2, Bool>::from_data(TensorData::new(real, [c.batch, c.seq]), dev)
    });
    let slopes = c.alibi.then(|| crate::alibi::gen_slopes(c.heads, 8.0));
    AttnBias::new(c.heads, slopes, c.seq, 0, key_mask, None, dev)
}

/// Attention composed as the model does without a fused kernel.
fn composed<Bk: Backend>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    bias: &AttnBias<Bk>,
    scale: f64,
) -> Tensor<Bk, 4> {
    let [b, s_k, kvh, hd] = k.dims();
    let h = q.dims()[2];
    let expand = |t: Tensor<Bk, 4>| {
        t.swap_dims(1, 2)
            .unsqueeze_dim::<5>(2)
            .expand([b, kvh, h / kvh, s_k, hd])
            .reshape([b, h, s_k, hd])
    };
    let opts = crate::attention::AttnOptions {
        scale,
        softcap: None,
        dropout: 0.0,
        compute: None,
    };
    crate::attention::attention(q.swap_dims(1, 2), expand(k), expand(v), bias.dense(), &opts)
        .swap_dims(1, 2)
}

/// `max |a − b| / max(1, max |b|)` (infinite where `a` has a NaN).
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    if diff.is_nan() || a.len() != b.len() {
        f32::INFINITY
    } else {
        diff / scale
    }
}

fn to_f32<Bk: Backend>(t: Tensor<Bk, 4>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// One forward and backward on `B`: the output and the three gradients, as f32 values, and
/// whether the fused kernel ran.
fn run<B: AutodiffBackend>(
    c: &AttentionCase,
    data: &[TensorData; 4],
    dev: &B::Device,
    fused: bool,
) -> (bool, [Vec<f32>; 4]) {
    let leaf = |d: &TensorData| {
        Tensor::<B, 4>::from_data(d.clone(), dev)
            .cast(c.dtype)
            .detach()
            .require_grad()
    };
    let (q, k, v) = (leaf(&data[0]), leaf(&data[1]), leaf(&data[2]));
    let scale = 1.0 / (c.head_dim as f64).sqrt();
    let bias = bias::<B>(c, dev);
    let (took, out) = if fused {
        match super::attention(q.clone(), k.clone(), v.clone(), &bias, scale) {
            Ok(out) => (true, out),
            Err((q, k, v)) => (false, composed(q, k, v, &bias, scale)),
        }
    } else {
        (
            false,
            composed(q.clone(), k.clone(), v.clone(), &bias, scale),
        )
    };
    let cot = Tensor::<B, 4>::from_data(data[3].clone(), dev).cast(c.dtype);
    let grads = (out.clone() * cot).sum().backward();
    let grad = |t: &Tensor<B, 4>| t.grad(&grads).map(to_f32).unwrap_or_default();
    (took, [to_f32(out.inner()), grad(&q), grad(&k), grad(&v)])
}

/// Runs `case` through [`super::attention`] on `B`'s `device` and through the composed path on
/// the CPU in f32 from the same (rounded) inputs; also times the fused and composed paths on
/// `device`.
pub fn check_attention<B: AutodiffBackend>(
    case: AttentionCase,
    device: &B::Device,
) -> AttentionCheck {
    let c = case;
    let q = [c.batch, c.seq, c.heads, c.head_dim];
    let kv = [c.batch, c.seq, c.kv_heads, c.head_dim];
    let n = |s: [usize; 4]| s.iter().product::<usize>();
    // The inputs rounded to the checked dtype, so the reference sees what the kernel sees.
    let rounded = |vals: Vec<f32>, shape: [usize; 4]| {
        let t = Tensor::<Flex, 4>::from_data(TensorData::new(vals, shape), &Default::default());
        t.cast(c.dtype).cast(FloatDType::F32).into_data()
    };
    let data = [
        rounded(values(n(q), 1), q),
        rounded(values(n(kv), 2), kv),
        rounded(values(n(kv), 3), kv),
        rounded(values(n(q), 4), q),
    ];
    let timed = |fused: bool| {
        run::<B>(&c, &data, device, fused);
        let t0 = Instant::now();
        let result = run::<B>(&c, &data, device, fused);
        (result, t0.elapsed().as_secs_f64() * 1e3)
    };
    let ((took, got), fused_ms) = timed(true);
    let (_, composed_ms) = timed(false);
    let reference_case = AttentionCase {
        dtype: FloatDType::F32,
        ..c
    };
    let (_, want) = run::<Reference>(&reference_case, &data, &Default::default(), false);
    let errors = std::array::from_fn(|i| relative_error(&got[i], &want[i]));
    AttentionCheck {
        case,
        fused: took,
        errors,
        fused_ms,
        composed_ms,
    }
}
