//! A self check of the fused attention ([`super::attention`]) on any backend, against the
//! composed path run on the CPU in f32: the output and the gradients of `q`, `k` and `v`. The
//! same for the row kernels ([`check_norm`], [`check_cross_entropy`]) and for the linear
//! layers' fused products ([`check_linear`], against burn's matmul on the same device).
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

/// Deterministic values in `[-1.5, 1.5]` (the same on every backend; the kernel tests use them
/// too).
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
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

/// Attention composed as the model does without a fused kernel: head transposes, the
/// grouped-query expansion, then [`crate::attention::attention`] with the dense `bias`. The
/// reference every fused attention is checked against (here and in the kernels' tests).
pub(crate) fn composed_attention<Bk: Backend>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    bias: Option<Tensor<Bk, 4>>,
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
    crate::attention::attention(q.swap_dims(1, 2), expand(k), expand(v), bias, &opts)
        .swap_dims(1, 2)
}

/// `max |a − b| / max(1, max |b|)` (infinite where `a` has a NaN).
pub(crate) fn relative_error(a: &[f32], b: &[f32]) -> f32 {
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
        match super::attention(q.clone(), k.clone(), v.clone(), &bias, scale, None) {
            Ok(out) => (true, out),
            Err((q, k, v)) => (false, composed_attention(q, k, v, bias.dense(), scale)),
        }
    } else {
        (
            false,
            composed_attention(q.clone(), k.clone(), v.clone(), bias.dense(), scale),
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

/// What [`check_norm`] or [`check_cross_entropy`] measured: one row-wise kernel against the
/// composed path on the CPU in f32, from the same (rounded) inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct RowsCheck {
    /// What ran, e.g. `layer_norm 4096x1024 bias` or `cross_entropy 512x50432`.
    pub what: String,
    /// The dtype of the inputs and outputs.
    pub dtype: FloatDType,
    /// Whether a fused kernel took the call.
    pub fused: bool,
    /// `max |fused − reference| / max(1, max |reference|)` per compared tensor, by name.
    pub errors: Vec<(&'static str, f32)>,
}

impl RowsCheck {
    /// As [`AttentionCheck::tolerance`]: the kernels accumulate in f32, so only the rounding of
    /// their inputs' dtype is seen.
    pub fn tolerance(&self) -> f32 {
        match self.dtype {
            FloatDType::F32 => 1e-4,
            FloatDType::F16 => 4e-3,
            _ => 2e-2,
        }
    }

    /// Whether every error is within [`RowsCheck::tolerance`].
    pub fn passed(&self) -> bool {
        !self.errors.is_empty() && self.errors.iter().all(|(_, e)| *e <= self.tolerance())
    }
}

fn floats<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.cast(FloatDType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// `values(n, seed)` rounded to `dtype` (what the kernel sees), as f32 data of `shape`.
fn rounded<const D: usize>(
    n: usize,
    seed: u64,
    shape: [usize; D],
    dtype: FloatDType,
) -> TensorData {
    let t =
        Tensor::<Flex, D>::from_data(TensorData::new(values(n, seed), shape), &Default::default());
    t.cast(dtype).cast(FloatDType::F32).into_data()
}

/// LayerNorm (or RMSNorm) of `rows × d` values in `dtype`, with or without a bias, through
/// [`super::fused_norm`] on `B`'s `device` (the composed path if no kernel takes it) and
/// through the composed path on the CPU: the output and the gradients of `x`, the weight and
/// the bias for a fixed cotangent.
pub fn check_norm<B: AutodiffBackend>(
    rows: usize,
    d: usize,
    dtype: FloatDType,
    rms: bool,
    bias: bool,
    device: &B::Device,
) -> RowsCheck {
    let data = [
        rounded(rows * d, 11, [rows, d], dtype),
        rounded(d, 12, [d], dtype),
        rounded(d, 13, [d], dtype),
        rounded(rows * d, 14, [rows, d], dtype),
    ];
    fn run<Bk: AutodiffBackend>(
        data: &[TensorData; 4],
        dtype: FloatDType,
        rms: bool,
        bias: bool,
        fused: bool,
        dev: &Bk::Device,
    ) -> (bool, [Vec<f32>; 4]) {
        let x = Tensor::<Bk, 2>::from_data(data[0].clone(), dev)
            .cast(dtype)
            .detach()
            .require_grad();
        let leaf = |d: &TensorData| {
            Tensor::<Bk, 1>::from_data(d.clone(), dev)
                .cast(dtype)
                .detach()
                .require_grad()
        };
        let (w, b) = (leaf(&data[1]), bias.then(|| leaf(&data[2])));
        let (took, y) = if fused {
            match super::fused_norm(x.clone(), w.clone(), b.clone(), 1e-5, rms) {
                Ok(y) => (true, y),
                Err((x, w, b)) => (false, super::norm(x, w, b, 1e-5, rms)),
            }
        } else {
            (
                false,
                super::norm(x.clone(), w.clone(), b.clone(), 1e-5, rms),
            )
        };
        let cot = Tensor::<Bk, 2>::from_data(data[3].clone(), dev).cast(dtype);
        let g = (y.clone() * cot).sum().backward();
        let grad =
            |t: Option<Tensor<Bk, 1>>| t.and_then(|t| t.grad(&g)).map(floats).unwrap_or_default();
        let dx = x.grad(&g).map(floats).unwrap_or_default();
        (took, [floats(y.inner()), dx, grad(Some(w)), grad(b)])
    }
    let (fused, got) = run::<B>(&data, dtype, rms, bias, true, device);
    let (_, want) = run::<Reference>(
        &data,
        FloatDType::F32,
        rms,
        bias,
        false,
        &Default::default(),
    );
    let names = ["y", "dx", "dweight", "dbias"];
    let errors = (0..if bias { 4 } else { 3 })
        .map(|i| (names[i], relative_error(&got[i], &want[i])))
        .collect();
    let kind = if rms { "rms_norm" } else { "layer_norm" };
    RowsCheck {
        what: format!("{kind} {rows}x{d}{}", if bias { " bias" } else { "" }),
        dtype,
        fused,
        errors,
    }
}

/// The unembedding loss's per-row cross-entropy of `rows × v` f32 logits (every seventh
/// target ignored) through [`super::fused_cross_entropy_rows`] on `B`'s `device` and through
/// the composed path on the CPU: the losses and the gradient.
pub fn check_cross_entropy<B: Backend>(rows: usize, v: usize, device: &B::Device) -> RowsCheck {
    let logits = TensorData::new(
        values(rows * v, 21).iter().map(|x| 4.0 * x).collect(),
        [rows, v],
    );
    let targets: Vec<i64> = (0..rows)
        .map(|i| {
            if i % 7 == 3 {
                -100
            } else {
                ((i * 7919) % v) as i64
            }
        })
        .collect();
    let targets = TensorData::new(targets, [rows, 1]);
    fn run<Bk: Backend>(
        logits: &TensorData,
        targets: &TensorData,
        fused: bool,
        dev: &Bk::Device,
    ) -> (bool, [Vec<f32>; 2]) {
        let x = Tensor::<Bk, 2>::from_data(logits.clone(), dev);
        let t = Tensor::<Bk, 2, Int>::from_data(targets.clone(), dev);
        let (took, (loss, g)) = if fused {
            match super::fused_cross_entropy_rows(x, t, true) {
                Ok(out) => (true, out),
                Err((x, t)) => (false, super::cross_entropy_rows(x, t, true)),
            }
        } else {
            (false, super::cross_entropy_rows(x, t, true))
        };
        (took, [floats(loss), g.map(floats).unwrap_or_default()])
    }
    let (fused, got) = run::<B>(&logits, &targets, true, device);
    let (_, want) = run::<Reference>(&logits, &targets, false, &Default::default());
    RowsCheck {
        what: format!("cross_entropy {rows}x{v}"),
        dtype: FloatDType::F32,
        fused,
        errors: vec![
            ("loss", relative_error(&got[0], &want[0])),
            ("grad", relative_error(&got[1], &want[1])),
        ],
    }
}

/// What [`check_linear`] measured: `y = x · wᵀ` and its two gradients through
/// [`super::fused_linear`] against burn's matmul on the same device.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearCheck {
    /// `x` is `[rows, d_in]`, `w` is `[d_out, d_in]`.
    pub rows: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// The dtype of `x`, `w`, the output and the gradients.
    pub dtype: FloatDType,
    /// Whether a fused product (cuBLASLt on CUDA, gemm on Flex) took the forward and both
    /// backward products.
    pub fused: bool,
    /// `max |fused − reference| / max(1, max |reference|)` of `y`, `dx` and `dw`.
    pub errors: [f32; 3],
    /// Wall time of one forward and backward through [`super::fused_linear`] (after one
    /// warm-up), including the read-back, in milliseconds.
    pub fused_ms: f64,
    /// The same through burn's matmul in the same dtype on the same device, in milliseconds.
    pub composed_ms: f64,
}

impl LinearCheck {
    /// The largest error allowed. The reference is burn's matmul in f32 from the same rounded
    /// inputs: exact products of bf16/f16 values (TF32, which burn's CUDA matmul uses for f32,
    /// holds them exactly), so only the fused path's output rounding and summation order show.
    /// In f32 both sides round their inputs through TF32 (10-bit mantissas).
    pub fn tolerance(&self) -> f32 {
        match self.dtype {
            FloatDType::F32 => 2e-3,
            FloatDType::F16 => 4e-3,
            _ => 2e-2,
        }
    }

    /// Whether every error is within [`LinearCheck::tolerance`].
    pub fn passed(&self) -> bool {
        self.errors.iter().all(|&e| e <= self.tolerance())
    }
}

/// `x · wᵀ` for `x` `[rows, d_in]` and `w` `[d_out, d_in]` in `dtype` on `B`'s `device`,
/// through [`super::fused_linear`] (burn's matmul where it is refused), and through burn's
/// matmul in f32 on the same device from the same rounded inputs: the output and the gradients
/// of `x` and `w` for a fixed cotangent. A backward product that fell back to burn's matmul
/// ([`super::cublaslt_fallbacks`]) counts as refused.
pub fn check_linear<B: AutodiffBackend>(
    rows: usize,
    d_in: usize,
    d_out: usize,
    dtype: FloatDType,
    device: &B::Device,
) -> LinearCheck {
    let data = [
        rounded(rows * d_in, 31, [rows, d_in], dtype),
        rounded(d_out * d_in, 32, [d_out, d_in], dtype),
        rounded(rows * d_out, 33, [rows, d_out], dtype),
    ];
    fn run<Bk: AutodiffBackend>(
        data: &[TensorData; 3],
        dtype: FloatDType,
        fused: bool,
        dev: &Bk::Device,
    ) -> (bool, [Vec<f32>; 3]) {
        let leaf = |d: &TensorData| {
            Tensor::<Bk, 2>::from_data(d.clone(), dev)
                .cast(dtype)
                .detach()
                .require_grad()
        };
        let (x, w) = (leaf(&data[0]), leaf(&data[1]));
        let fallbacks = super::cublaslt_fallbacks();
        let composed = |x: Tensor<Bk, 2>, w: Tensor<Bk, 2>| x.matmul(w.transpose());
        let (took, y) = if fused {
            match super::fused_linear(x.clone(), w.clone()) {
                Ok(y) => (true, y),
                Err((x, w)) => (false, composed(x, w)),
            }
        } else {
            (false, composed(x.clone(), w.clone()))
        };
        // d(sum(y ⊙ cot))/dy = cot: the upstream gradient is exactly the cotangent.
        let cot = Tensor::<Bk, 2>::from_data(data[2].clone(), dev).cast(dtype);
        let g = (y.clone() * cot).sum().backward();
        let grad = |t: &Tensor<Bk, 2>| t.grad(&g).map(floats).unwrap_or_default();
        let (dx, dw) = (grad(&x), grad(&w));
        let took = took && super::cublaslt_fallbacks() == fallbacks;
        (took, [floats(y.inner()), dx, dw])
    }
    let timed = |fused: bool| {
        run::<B>(&data, dtype, fused, device);
        let t0 = Instant::now();
        let result = run::<B>(&data, dtype, fused, device);
        (result, t0.elapsed().as_secs_f64() * 1e3)
    };
    let ((fused, got), fused_ms) = timed(true);
    let (_, composed_ms) = timed(false);
    let (_, want) = run::<B>(&data, FloatDType::F32, false, device);
    LinearCheck {
        rows,
        d_in,
        d_out,
        dtype,
        fused,
        errors: std::array::from_fn(|i| relative_error(&got[i], &want[i])),
        fused_ms,
        composed_ms,
    }
}
