//! Fused kernels behind backend-generic signatures: GELU, `softmax(x + bias)`,
//! LayerNorm/RMSNorm, attention (whole, and its head transpose), linear layers, the unembedding
//! with its cross-entropy and both gradients (`unembed.rs`, CPU only), and a matmul whose rows
//! do not depend on how many are computed together (for exact cached decoding).
//!
//! Each function here is what the model calls. On Flex and `Autodiff<Flex>` with f32 tensors it
//! runs one fused CPU kernel (and, under autodiff, one graph node with a hand-written backward:
//! see `rows.rs` for the arithmetic and `flex.rs` for the glue); on every other backend or dtype
//! it runs the composed tensor-op formulation below, which is the reference the fused kernels
//! are tested against. Attention, LayerNorm/RMSNorm and the unembedding loss's cross-entropy
//! also have CubeCL kernels for burn's wgpu and CUDA backends (`cube/`, with the `wgpu` or
//! `cuda` feature), wired the same way (`TESSERA_CUBE_KERNELS=0` turns them off). On CUDA, the
//! linear layers' products can go through cuBLASLt (`cuda/`, feature `cuda`; off unless
//! `TESSERA_CUBLASLT=1`, as it has not yet run on a GPU). The switches are in [`switches`].
//!
//! [`adam_block`] is the one kernel here that the model does not call: the optimizers' update,
//! run over the blocks [`zip_mut`] hands out.

mod adam;
mod check;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
#[cfg(feature = "cuda")]
mod cuda;
mod flash;
mod flex;
mod gemm;
mod rows;
mod simd;
pub mod switches;
mod unembed;

pub use adam::{AdamConsts, adam_block};
pub use check::{
    AttentionCase, AttentionCheck, LinearCheck, RowsCheck, check_attention, check_cross_entropy,
    check_linear, check_norm,
};
pub use unembed::block_rows;

use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation;
use burn::tensor::{IndexingUpdateOp, TensorPrimitive};

use crate::mask::AttnBias;

fn float<B: Backend, const D: usize>(p: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `a × b` (batched over leading axes), computed so that each output row does not depend on how
/// many rows are computed with it.
///
/// Why: cached decoding multiplies one new row at a time, the full forward all rows at once,
/// and the two must give the same logits. gemm (behind Flex) sums each output element in one
/// fixed order in its packed kernel, but it routes a single row to a matrix-vector kernel and
/// products of at most 256 outputs to a "horizontal" kernel, which sum in other orders. So on
/// plain Flex (inference; training never multiplies so few rows) a product with too few rows
/// is padded with zero rows (and a contraction of 1 or 2 with zero columns), computed, and cut
/// back: then every product takes the packed path and decoding reproduces the full forward bit
/// for bit (`incremental_decoding_matches_full_forward`). The padding is at most 256 / n rows
/// (2 for any matrix wider than 256); on other backends this is plain `a.matmul(b)`.
///
/// # Shapes
/// - `a`: `[..., rows, k]`, `b`: `[..., k, n]` -> `[..., rows, n]`
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let dims = a.dims();
    let (rows, k, n) = (dims[D - 2], dims[D - 1], b.dims()[D - 1]);
    // gemm: one row → matrix-vector kernel; rows · n ≤ 256 → horizontal kernel; k ≤ 2 → an
    // outer-product kernel.
    let min_rows = (256 / n.max(1) + 1).max(2);
    let small = rows < min_rows || k <= 2;
    if !small || rows == 0 || n == 0 || !flex::is_plain_flex::<B>() {
        return a.matmul(b);
    }
    // Zero rows of `a` add rows that are cut off again; zero columns of `a` against zero rows
    // of `b` add exact zeros to every sum.
    let a = pad_axis(a, D - 2, min_rows);
    let (a, b) = (pad_axis(a, D - 1, 3), pad_axis(b, D - 2, 3));
    a.matmul(b).narrow(D - 2, 0, rows)
}

/// `x` with zeros appended along `axis` up to `len` (unchanged if already that long).
fn pad_axis<B: Backend, const D: usize>(x: Tensor<B, D>, axis: usize, len: usize) -> Tensor<B, D> {
    let mut pad = x.dims();
    if pad[axis] >= len {
        return x;
    }
    pad[axis] = len - pad[axis];
    let zeros = Tensor::<B, D>::zeros(pad, &x.device()).cast(FloatDType::from(x.dtype()));
    Tensor::cat(vec![x, zeros], axis)
}

/// `x · wᵀ`, a linear layer's product (`w` in PyTorch's `[d_out, d_in]` layout).
///
/// When training on the CPU (`Autodiff<Flex>`, f32) this is one graph node whose forward and
/// backward products call gemm directly, writing into fresh buffers: Flex's matmul zero-fills
/// and then re-copies every output on one thread. On burn's CUDA backend with
/// `TESSERA_CUBLASLT=1` (feature `cuda`), bf16/f16 products (and f32 ones with
/// `TESSERA_TF32=1`) run through cuBLASLt, one graph node under autodiff (`cuda/`).
/// Elsewhere it is [`matmul`] of `x` and `wᵀ`.
///
/// # Shapes
/// - `x`: `[rows, d_in]`, `w`: `[d_out, d_in]` -> `[rows, d_out]`
pub fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    match fused_linear(x, w) {
        Ok(y) => y,
        Err((x, w)) => matmul(x, w.transpose()),
    }
}

/// The inputs of [`linear`] (`x`, `w`), handed back when no fused kernel takes them.
pub type LinearInputs<B> = (Tensor<B, 2>, Tensor<B, 2>);

/// [`linear`]'s fused paths alone (Flex's gemm, then cuBLASLt on CUDA): `Err` with the inputs
/// where none takes the call. For checks that must know which path ran.
///
/// # Shapes
/// - `x`: `[rows, d_in]`, `w`: `[d_out, d_in]` -> `[rows, d_out]`
pub fn fused_linear<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, LinearInputs<B>> {
    let (x, w) = match flex::linear::<B>(x.into_primitive().tensor(), w.into_primitive().tensor()) {
        Ok(y) => return Ok(float(y)),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let (x, w) = match cuda::linear::<B>(x, w) {
        Ok(y) => return Ok(float(y)),
        Err(inputs) => inputs,
    };
    Err((float(x), float(w)))
}

/// How many backward products of cuBLASLt linear nodes have fallen back to burn's matmul in
/// this process (a cuBLASLt failure after the forward had gone through it).
#[cfg(feature = "cuda")]
pub fn cublaslt_fallbacks() -> usize {
    cuda::fallbacks()
}

/// How many backward products of cuBLASLt linear nodes have fallen back to burn's matmul:
/// always 0 without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub fn cublaslt_fallbacks() -> usize {
    0
}

/// The backward products of a linear layer `y = x · wᵀ` for the upstream gradient `g`:
/// `(∂/∂x, ∂/∂w) = (g · w, gᵀ · x)`, as constants (no graph is built). For code that
/// differentiates a layer itself ([`crate::lm_loss`]); on Flex both products go straight
/// through gemm, and on CUDA through cuBLASLt, as [`linear`]'s do.
///
/// # Shapes
/// - `x`: `[rows, d_in]`, `w`: `[d_out, d_in]`, `g`: `[rows, d_out]`
/// - returns `([rows, d_in], [d_out, d_in])`
pub fn linear_backward<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    g: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let p = |t: Tensor<B, 2>| t.set_require_grad(false).into_primitive().tensor();
    let fused = flex::linear_backward::<B>(p(x), p(w), p(g));
    #[cfg(feature = "cuda")]
    let fused = fused.or_else(|(x, w, g)| cuda::linear_backward::<B>(x, w, g));
    match fused {
        Ok((dx, dw)) => (float(dx), float(dw)),
        Err((x, w, g)) => {
            let (x, w, g) = (float::<B, 2>(x), float::<B, 2>(w), float::<B, 2>(g));
            (g.clone().matmul(w), g.transpose().matmul(x))
        }
    }
}

/// Runs `f` over `N` f32 tensors of one shape in place: on plain Flex in parallel blocks (block
/// `i` of every tensor at once, as `[&mut [f32]; N]`), and `Ok` with the updated tensors;
/// elsewhere `Err` with the tensors untouched, and the caller runs its tensor-op formulation.
///
/// For element-wise updates that tensor ops would spell as a dozen full passes over memory,
/// each allocating, and each on one thread on Flex (an optimizer's update of a parameter and its
/// moments). `f` must treat every element alike: how the tensors are cut into blocks is not
/// part of the contract.
#[allow(clippy::type_complexity)]
pub fn zip_mut<B: Backend, const D: usize, const N: usize>(
    tensors: [Tensor<B, D>; N],
    f: impl Fn([&mut [f32]; N]) + Sync,
) -> Result<[Tensor<B, D>; N], [Tensor<B, D>; N]> {
    let prims = tensors.map(|t| t.into_primitive().tensor());
    flex::zip_mut::<B, N>(prims, f)
        .map(|ts| ts.map(float))
        .map_err(|ts| ts.map(float))
}

/// The inputs of [`attention`] (`q`, `k`, `v`), handed back when no fused kernel takes them.
pub type AttentionInputs<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

/// `softmax(scale · q kᵀ + bias) v` for every head, in the `[batch, seq, heads, head_dim]`
/// layout the projections produce, with grouped-query heads (query head `j` reads key/value
/// head `j / (heads / kv_heads)`) and the bias given by its parts (ALiBi slopes, causal, key
/// padding, `sequence_id`).
///
/// When training on the CPU (`Autodiff<Flex>`, f32) this is one graph node, a flash attention
/// (`flash`): tiled, with an online softmax, the bias computed inside from its parts, causal
/// tiles skipped, and a backward that recomputes the probabilities tile by tile, so no
/// `[batch, heads, s_q, s_k]` tensor exists (neither the bias nor the probabilities). On burn's
/// wgpu and CUDA backends (built with the `wgpu` / `cuda` feature, without burn's `fusion`) the
/// same function runs as CubeCL kernels (`cube`): one graph node under autodiff, the forward
/// alone without; f32, and f16/bf16 where the device has them; `TESSERA_CUBE_KERNELS=0` turns
/// them off. Elsewhere, or for inputs those kernels refuse, it hands the inputs back, and the
/// caller runs the composed path (head transposes, then [`crate::attention::attention`] with
/// [`AttnBias::dense`]), the reference the kernels are tested against. Plain Flex stays
/// composed because cached decoding relies on its row-independent products ([`matmul`]).
///
/// Under mixed precision (`compute`: the matmuls' dtype, bf16 or f16) the CubeCL kernels take
/// `q`, `k` and `v` in that dtype and accumulate in f32, as the composed path's half-precision
/// matmuls and f32 softmax do; the output comes back in `q`'s dtype. The CPU kernel is f32
/// only, so there mixed precision stays composed.
///
/// # Shapes
/// - `q`: `[batch, s_q, heads, head_dim]`; `k`, `v`: `[batch, s_k, kv_heads, head_dim]`
/// - returns `[batch, s_q, heads, head_dim]`
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: &AttnBias<B>,
    scale: f64,
    compute: Option<FloatDType>,
) -> Result<Tensor<B, 4>, AttentionInputs<B>> {
    let p = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let (q, k, v) = match compute {
        None => match flex::attention::<B>(p(q), p(k), p(v), bias, scale) {
            Ok(out) => return Ok(float(out)),
            Err((q, k, v)) => (float(q), float(k), float(v)),
        },
        Some(_) => (q, k, v),
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let (q, k, v) = {
        let s_k = k.dims()[1];
        match cube::Masks::of(bias, q.dims(), s_k) {
            Some(masks) if cube::enabled() => {
                let dtype = FloatDType::from(q.dtype());
                let cast = |t: &Tensor<B, 4>| match compute {
                    Some(dt) if dt != dtype => t.clone().cast(dt),
                    _ => t.clone(),
                };
                match cube::attention::<B>(p(cast(&q)), p(cast(&k)), p(cast(&v)), &masks, scale) {
                    Ok(out) => return Ok(float::<B, 4>(out).cast(dtype)),
                    Err(_) => (q, k, v),
                }
            }
            _ => (q, k, v),
        }
    };
    Err((q, k, v))
}

/// `x.swap_dims(1, 2)`, as a contiguous tensor on Flex: attention's head transposes.
///
/// On Flex a swapped view is cheap here but costly later: a matmul or reshape that needs it
/// contiguous (and, under autodiff, the backward of those reshapes) copies it element by element
/// on one thread. This copies whole rows in parallel instead, and its backward is the same copy.
/// Elsewhere it is the plain view.
///
/// # Shapes
/// - `[a, b, c, d]` -> `[a, c, b, d]`
pub fn swap_dims_12<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    match flex::swap_middle::<B>(x.into_primitive().tensor()) {
        Ok(y) => float(y),
        Err(x) => float::<B, 4>(x).swap_dims(1, 2),
    }
}

/// The exact (erf) GELU, `x · Φ(x)`.
///
/// # Shapes
/// - any shape, element-wise
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match flex::gelu::<B>(x.into_primitive().tensor()) {
        Ok(y) => float(y),
        Err(x) => activation::gelu(float(x)),
    }
}

/// `softmax(scale · x + bias)` over the last axis. The bias is broadcast over the leading axis
/// (a `[1, h, s_q, s_k]` ALiBi/causal bias against `[b, h, s_q, s_k]` scores) and receives a
/// gradient if it is tracked.
///
/// # Shapes
/// - `x`: `[b, ...]`; `bias`: `[b or 1, ...]` with `x`'s other axes; returns `x`'s shape
pub fn softmax_with_bias<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    bias: Option<Tensor<B, D>>,
    scale: f64,
) -> Tensor<B, D> {
    let (x, bias) = match flex::softmax::<B>(
        x.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        scale,
    ) {
        Ok(y) => return float(y),
        Err((x, b)) => (float::<B, D>(x), b.map(float::<B, D>)),
    };
    let x = if scale != 1.0 { x * scale } else { x };
    let scores = match bias {
        Some(bias)
            if bias.dims()[0] == 1 && x.dims()[0] > 1 && bias.dims()[1..] == x.dims()[1..] =>
        {
            // Broadcast over the batch as one shared row of values: the layout backends add
            // fastest (Flex's strided broadcast path is ~5x slower).
            let dims = x.dims();
            let n: usize = dims[1..].iter().product();
            (x.reshape([dims[0], n]) + bias.reshape([1, n])).reshape(dims)
        }
        Some(bias) => x + bias,
        None => x,
    };
    activation::softmax(scores, D - 1)
}

/// Per-row cross-entropy `logsumexp(x) - x[target]` of `logits` against `targets` (negative
/// = ignored: loss 0), and, with `grad`, its gradient `softmax(x) - onehot(target)` (zero rows
/// where ignored). No gradient flows through this function: it is the arithmetic of
/// [`crate::lm_loss`], which builds the backward path itself. One kernel on Flex and on the
/// CubeCL backends (f32 logits); the composed ops below elsewhere.
///
/// # Shapes
/// - `logits`: `[rows, v]`, `targets`: `[rows, 1]` -> `([rows, 1], Some([rows, v]))`
pub fn cross_entropy_rows<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    grad: bool,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let (x, t) = match fused_cross_entropy_rows(logits, targets, grad) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    let valid = t.clone().greater_equal_elem(0);
    let safe = t.clone().mask_fill(valid.clone().bool_not(), 0);
    let valid = valid.float();
    let logp = activation::log_softmax(x, 1);
    let loss = logp.clone().gather(1, safe.clone()).neg() * valid.clone();
    let g = grad.then(|| {
        logp.exp()
            .scatter(1, safe, valid.clone().neg(), IndexingUpdateOp::Add)
            * valid
    });
    (loss, g)
}

/// The loss and (with `grad`) the gradient of [`cross_entropy_rows`].
pub type CrossEntropyRows<B> = (Tensor<B, 2>, Option<Tensor<B, 2>>);

/// The inputs of [`cross_entropy_rows`] (logits, targets), handed back when no fused kernel
/// takes them.
pub type CrossEntropyInputs<B> = (Tensor<B, 2>, Tensor<B, 2, Int>);

/// [`cross_entropy_rows`]'s fused kernels alone (Flex, then CubeCL): `Err` with the inputs
/// where none takes the call. For checks that must know which path ran.
pub fn fused_cross_entropy_rows<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    grad: bool,
) -> Result<CrossEntropyRows<B>, CrossEntropyInputs<B>> {
    let logits = logits.set_require_grad(false);
    let (x, t) = match flex::cross_entropy::<B>(
        logits.into_primitive().tensor(),
        targets.into_primitive(),
        grad,
    ) {
        Ok((loss, g)) => return Ok((float(loss), g.map(float))),
        Err(inputs) => inputs,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let (x, t) = match cube::enabled() {
        true => match cube::cross_entropy::<B>(x, t, grad) {
            Ok((loss, g)) => return Ok((float(loss), g.map(float))),
            Err(inputs) => inputs,
        },
        false => (x, t),
    };
    Err((float(x), Tensor::from_primitive(t)))
}

/// The inputs of [`fused_unembed_cross_entropy`] (`h`, `w`, targets), handed back when no fused
/// kernel takes them.
pub type UnembedInputs<B> = (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2, Int>);

/// Per-row losses, `∂h` and `∂W` of [`fused_unembed_cross_entropy`].
pub type Unembedded<B> = (Tensor<B, 2>, Option<Tensor<B, 2>>, Option<Tensor<B, 2>>);

/// [`crate::lm_loss`]'s whole block loop as one CPU kernel (Flex and Autodiff<Flex>, f32): per
/// block of at most `max_elements / v` rows, the logits `scale · h Wᵀ`, their per-row
/// cross-entropy against `targets` (negative = ignored: loss 0), and the gradients of the
/// losses' sum asked for by `[grad_h, grad_w]`, returned as constants (no graph is built).
/// `Err` with the inputs elsewhere; the caller then runs the same arithmetic as tensor ops.
///
/// # Shapes
/// - `h`: `[n, d]`, `w`: `[v, d]`, `targets`: `[n, 1]` -> `([n, 1], Some([n, d]), Some([v, d]))`
///
/// # Panics
/// If a target is `>= v`.
pub fn fused_unembed_cross_entropy<B: Backend>(
    (h, w, targets): UnembedInputs<B>,
    scale: f64,
    grads: [bool; 2],
    max_elements: usize,
) -> Result<Unembedded<B>, UnembedInputs<B>> {
    let p = |t: Tensor<B, 2>| t.set_require_grad(false).into_primitive().tensor();
    let v = w.dims()[0];
    let block = block_rows(h.dims()[0], v, max_elements);
    let inputs = (p(h), p(w), targets.into_primitive());
    match flex::unembed_cross_entropy::<B>(inputs, scale as f32, grads, block) {
        Ok((losses, dh, dw)) => Ok((float(losses), dh.map(float), dw.map(float))),
        Err((h, w, t)) => Err((float(h), float(w), Tensor::from_primitive(t))),
    }
}

/// Whether `B` is burn's CPU backend (Flex, or Autodiff<Flex>), where reading a value back to
/// the host costs nothing. On a GPU backend it waits for every queued kernel, so code inside a
/// training step must not (see [`crate::lm_loss`]'s target check).
pub fn reads_back_for_free<B: Backend>() -> bool {
    flex::specialised::<B>()
}

/// Whether autodiff will carry a gradient back through `x`: `x` is a parameter that requires
/// one, or was computed from one. Unlike `Tensor::is_require_grad` (true for such parameters
/// only), this holds for intermediate results too, so code that differentiates by hand (see
/// [`crate::lm_loss`]) can tell a frozen input from a trainable one. Read from the graph on
/// Autodiff<Flex>; on other autodiff backends assumed whenever autodiff is enabled; false on
/// backends without autodiff.
pub fn is_tracked<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    let device = x.device();
    if !B::ad_enabled(&device) {
        return false;
    }
    let prim = x.clone().into_primitive().tensor();
    flex::is_tracked::<B>(&prim).unwrap_or(true)
}

/// `value` as a function of `a` and `b` whose gradients are the given constants `da`, `db`:
/// the result equals `value`, and backpropagating `c` from it adds `c · da` to `a`'s gradient
/// and `c · db` to `b`'s. `value` itself is taken as a constant (any graph it carries is
/// dropped, on every backend). This is how [`crate::lm_loss`] hands autodiff the cross-entropy's
/// gradient it computed itself.
///
/// On Flex this is one graph node. Elsewhere it is the surrogate
/// `value + (s - detach(s))` with `s = Σ a ⊙ da + Σ b ⊙ db`, whose value is exactly `value`
/// (for finite `s`) and whose gradient is the same.
///
/// # Shapes
/// - `value`: `[1]`; `da`, `db`: the shapes of `a`, `b`; returns `[1]`
pub fn attach_gradients<B: Backend>(
    value: Tensor<B, 1>,
    a: Tensor<B, 2>,
    da: Tensor<B, 2>,
    b: Tensor<B, 2>,
    db: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let p1 = |t: Tensor<B, 1>| t.into_primitive().tensor();
    let p2 = |t: Tensor<B, 2>| t.into_primitive().tensor();
    let constant = |t: Tensor<B, 2>| t.set_require_grad(false);
    let (value, a, da, b, db) = match flex::attach_gradients::<B>(
        p1(value),
        p2(a),
        p2(constant(da)),
        p2(b),
        p2(constant(db)),
    ) {
        Ok(v) => return float(v),
        Err((v, a, da, b, db)) => (
            float::<B, 1>(v),
            float::<B, 2>(a),
            float::<B, 2>(da),
            float::<B, 2>(b),
            float::<B, 2>(db),
        ),
    };
    let surrogate = (a * da).sum() + (b * db).sum();
    value.detach() + (surrogate.clone() - surrogate.detach())
}

/// LayerNorm (`rms = false`: two-pass, biased variance, as `torch.nn.functional.layer_norm`) or
/// RMSNorm (`rms = true`) over the last axis, times `weight`, plus `bias`.
///
/// One fused kernel (one graph node under autodiff) on Flex and on the CubeCL backends (wgpu,
/// CUDA: `cube/norm.rs`); the composed tensor ops below elsewhere.
///
/// # Shapes
/// - `x`: `[..., d]`; `weight`, `bias`: `[d]`; returns `x`'s shape
pub fn norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
    rms: bool,
) -> Tensor<B, D> {
    let (x, weight, bias) = match fused_norm(x, weight, bias, eps, rms) {
        Ok(y) => return y,
        Err(inputs) => inputs,
    };
    // Two-pass (centre, then variance) rather than a fused `E[x²] - E[x]²`, which loses digits
    // to cancellation (it cost parity with transformers: per-token loss off by 1.1e-5).
    let y = if rms {
        let ms = x.clone().square().mean_dim(D - 1);
        x * (ms + eps).sqrt().recip()
    } else {
        let centered = x.clone() - x.mean_dim(D - 1);
        let var = centered.clone().square().mean_dim(D - 1);
        centered * (var + eps).sqrt().recip()
    };
    let y = y * weight.unsqueeze::<D>();
    match bias {
        Some(b) => y + b.unsqueeze::<D>(),
        None => y,
    }
}

/// The inputs of [`norm`] (`x`, `weight`, `bias`), handed back when no fused kernel takes them.
pub type NormInputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, 1>, Option<Tensor<B, 1>>);

/// [`norm`]'s fused kernels alone (Flex, then CubeCL): `Err` with the inputs where none takes
/// the call. For checks that must know which path ran.
pub fn fused_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    bias: Option<Tensor<B, 1>>,
    eps: f64,
    rms: bool,
) -> Result<Tensor<B, D>, NormInputs<B, D>> {
    let prim = |t: Tensor<B, 1>| t.into_primitive().tensor();
    let (x, weight, bias) = match flex::norm::<B>(
        x.into_primitive().tensor(),
        prim(weight),
        bias.map(prim),
        eps,
        rms,
    ) {
        Ok(y) => return Ok(float(y)),
        Err(inputs) => inputs,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let (x, weight, bias) = match cube::enabled() {
        true => match cube::norm::<B>(x, weight, bias, eps, rms) {
            Ok(y) => return Ok(float(y)),
            Err(inputs) => inputs,
        },
        false => (x, weight, bias),
    };
    Err((float(x), float(weight), bias.map(float)))
}

/// The composed (non-fused) formulations, for tests that compare the two paths.
#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type AD = Autodiff<Flex>;

    /// A backend that is not Flex, so the generic path runs: Flex's own autodiff with a
    /// checkpointing strategy, which `flex.rs` does not specialise.
    type Generic =
        Autodiff<Flex, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;

    fn rand<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
        let dev = Default::default();
        Bk::seed(&dev, seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.5), &dev)
    }

    fn close<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>, tol: f64) {
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(tol));
    }

    #[test]
    fn a_products_rows_do_not_depend_on_how_many_rows_are_computed() {
        // [40, k] x [k, n] at once, and each row alone, for shapes that would take each of
        // gemm's special kernels (one row, few outputs, a contraction of 1 or 2), with `b`
        // contiguous (attention's `p v`) and transposed (every linear layer's `x wᵀ`).
        for (k, n) in [
            (96, 288),
            (288, 96),
            (16, 7),
            (16, 16),
            (16, 33),
            (1, 16),
            (2, 33),
        ] {
            for transposed in [false, true] {
                let a = rand::<Flex, 2>([40, k], 3);
                let b = if transposed {
                    rand::<Flex, 2>([n, k], 4).transpose()
                } else {
                    rand::<Flex, 2>([k, n], 4)
                };
                let all = matmul(a.clone(), b.clone())
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                let case = format!("k {k}, n {n}, transposed {transposed}");
                for r in [0, 1, 39] {
                    let one = matmul(a.clone().narrow(0, r, 1), b.clone());
                    let one = one.into_data().to_vec::<f32>().unwrap();
                    assert!(
                        one == all[r * n..(r + 1) * n],
                        "{case}, row {r}: not bit-equal"
                    );
                }
                // Batched, as attention's [b, h, s, d] products.
                let a3 = a.clone().reshape([2, 20, k]);
                let b3 = Tensor::stack::<3>(vec![b.clone(), b.clone()], 0);
                let one = matmul(a3.narrow(1, 5, 1), b3)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap();
                assert!(
                    one[..n] == all[5 * n..6 * n],
                    "{case}, batched: not bit-equal"
                );
                close(matmul(a.clone(), b.clone()), a.matmul(b), 1e-4);
            }
        }
    }

    /// Runs `f` on both backends from the same data, with a random cotangent, and compares the
    /// outputs and the gradients of every input.
    fn fused_matches_generic<const D: usize>(
        inputs: Vec<Tensor<Flex, D>>,
        f_fused: impl Fn(&[Tensor<AD, D>]) -> Tensor<AD, D>,
        f_generic: impl Fn(&[Tensor<Generic, D>]) -> Tensor<Generic, D>,
        tol: f64,
    ) {
        let dev = Default::default();
        let a: Vec<Tensor<AD, D>> = inputs
            .iter()
            .map(|t| Tensor::from_data(t.to_data(), &dev).require_grad())
            .collect();
        let g: Vec<Tensor<Generic, D>> = inputs
            .iter()
            .map(|t| Tensor::from_data(t.to_data(), &dev).require_grad())
            .collect();
        let ya = f_fused(&a);
        let yg = f_generic(&g);
        let cot = rand::<Flex, D>(ya.dims(), 99);
        let ga = (ya.clone() * Tensor::from_data(cot.to_data(), &dev))
            .sum()
            .backward();
        let gg = (yg.clone() * Tensor::from_data(cot.to_data(), &dev))
            .sum()
            .backward();
        close(
            ya.inner(),
            Tensor::from_data(yg.inner().into_data(), &dev),
            tol,
        );
        for (i, (ta, tg)) in a.iter().zip(&g).enumerate() {
            match (ta.grad(&ga), tg.grad(&gg)) {
                (Some(da), Some(dg)) => close(da, Tensor::from_data(dg.into_data(), &dev), tol),
                (None, None) => {}
                (da, dg) => panic!(
                    "input {i}: gradient present fused {} / generic {}",
                    da.is_some(),
                    dg.is_some()
                ),
            }
        }
    }

    #[test]
    fn linear_matches_the_matmul_and_its_gradients() {
        for (rows, d_in, d_out) in [(37, 24, 40), (1, 3, 5), (300, 200, 250)] {
            let x = rand::<Flex, 2>([rows, d_in], 11);
            let w = rand::<Flex, 2>([d_out, d_in], 12);
            fused_matches_generic(
                vec![x, w],
                |t| linear(t[0].clone(), t[1].clone()),
                |t| t[0].clone().matmul(t[1].clone().transpose()),
                1e-3,
            );
        }
        // A weight that is a row block of a larger one (the fused Wqkv's q, k and v).
        let x = rand::<Flex, 2>([9, 8], 13);
        let w = rand::<Flex, 2>([12, 8], 14);
        fused_matches_generic(
            vec![x, w],
            |t| linear(t[0].clone(), t[1].clone().narrow(0, 4, 4)),
            |t| {
                t[0].clone()
                    .matmul(t[1].clone().narrow(0, 4, 4).transpose())
            },
            1e-4,
        );
    }

    #[test]
    fn swap_dims_12_matches_the_view_and_its_gradient() {
        let x = rand::<Flex, 4>([2, 5, 3, 4], 5);
        fused_matches_generic(
            vec![x.clone()],
            |t| swap_dims_12(t[0].clone()) * 1.5,
            |t| t[0].clone().swap_dims(1, 2) * 1.5,
            0.0,
        );
        // Plain Flex, and a strided input.
        let y = swap_dims_12(x.clone().swap_dims(0, 3));
        close(y, x.swap_dims(0, 3).swap_dims(1, 2), 0.0);
    }

    /// The parts of an attention bias, built on either backend.
    #[derive(Clone)]
    struct BiasParts {
        batch: usize,
        heads: usize,
        seq: usize,
        alibi: bool,
        /// `[batch, seq]`, `true` for real tokens.
        key_mask: Option<Vec<bool>>,
        /// `[batch, seq]`.
        sequence_id: Option<Vec<i64>>,
    }

    impl BiasParts {
        fn build<Bk: Backend>(&self, dev: &Bk::Device) -> AttnBias<Bk> {
            let shape = [self.batch, self.seq];
            let key_mask = self
                .key_mask
                .clone()
                .map(|m| Tensor::<Bk, 2, Bool>::from_data(TensorData::new(m, shape), dev));
            let sequence_id = self
                .sequence_id
                .clone()
                .map(|s| Tensor::<Bk, 2, Int>::from_data(TensorData::new(s, shape), dev));
            let slopes = self
                .alibi
                .then(|| crate::alibi::gen_slopes(self.heads, 8.0));
            AttnBias::new(self.heads, slopes, self.seq, 0, key_mask, sequence_id, dev)
        }
    }

    /// Runs the fused kernel (`Autodiff<Flex>`) and the composed path with the dense bias
    /// (`Generic`) on the same inputs; compares the outputs and the three gradients.
    fn fused_attention_matches_composed(
        parts: &BiasParts,
        kv_heads: usize,
        head_dim: usize,
        seed: u64,
    ) {
        let (b, s, h) = (parts.batch, parts.seq, parts.heads);
        let q = rand::<Flex, 4>([b, s, h, head_dim], seed);
        let k = rand::<Flex, 4>([b, s, kv_heads, head_dim], seed + 1);
        let v = rand::<Flex, 4>([b, s, kv_heads, head_dim], seed + 2);
        let scale = 1.0 / (head_dim as f64).sqrt();
        fused_matches_generic(
            vec![q, k, v],
            |t| {
                let (q, k, v) = (t[0].clone(), t[1].clone(), t[2].clone());
                let bias = parts.build::<AD>(&t[0].device());
                let out = attention(q, k, v, &bias, scale, None);
                assert!(
                    !bias.dense_is_built(),
                    "the fused path built the dense bias"
                );
                out.unwrap_or_else(|_| panic!("Autodiff<Flex> takes the fused path"))
            },
            |t| {
                let (q, k, v) = (t[0].clone(), t[1].clone(), t[2].clone());
                let bias = parts.build::<Generic>(&t[0].device());
                assert!(attention(q.clone(), k.clone(), v.clone(), &bias, scale, None).is_err());
                let dense = bias.dense().expect("causal attention has a bias");
                check::composed_attention(q, k, v, Some(dense), scale)
            },
            5e-5,
        );
    }

    #[test]
    fn fused_attention_with_alibi_over_several_tiles_matches_the_composed_one() {
        // 150 queries: two whole 64-query tiles and a partial one. 6 heads: llm-foundry's
        // interleaved ALiBi slopes for a non-power-of-two count; 6 and 2 key/value heads.
        let parts = BiasParts {
            batch: 2,
            heads: 6,
            seq: 150,
            alibi: true,
            key_mask: None,
            sequence_id: None,
        };
        fused_attention_matches_composed(&parts, 6, 8, 21);
        fused_attention_matches_composed(&parts, 2, 8, 31);
        // Causal only, one tile plus one row.
        let parts = BiasParts {
            seq: 65,
            alibi: false,
            ..parts
        };
        fused_attention_matches_composed(&parts, 3, 4, 41);
    }

    #[test]
    fn fused_attention_with_padding_and_documents_matches_the_composed_one() {
        let (b, s) = (2, 100);
        // Element 0 is left-padded (its first 4 queries see no key); element 1 is right-padded
        // and has a padded key in the middle.
        let key_mask = (0..b * s)
            .map(|x| match (x / s, x % s) {
                (0, t) => t >= 4,
                (_, t) => t < 90 && t != 50,
            })
            .collect();
        let parts = BiasParts {
            batch: b,
            heads: 4,
            seq: s,
            alibi: true,
            key_mask: Some(key_mask),
            sequence_id: None,
        };
        fused_attention_matches_composed(&parts, 1, 6, 51);
        // Packed documents, boundaries inside and at the edge of a tile.
        let ids = (0..b * s)
            .map(|x| [0, 30, 64, 77].iter().filter(|&&at| x % s >= at).count() as i64)
            .collect();
        let parts = BiasParts {
            key_mask: None,
            sequence_id: Some(ids),
            ..parts
        };
        fused_attention_matches_composed(&parts, 2, 6, 61);
    }

    #[test]
    fn attention_is_fused_only_when_training_on_flex() {
        let dev = Default::default();
        let parts = BiasParts {
            batch: 1,
            heads: 1,
            seq: 2,
            alibi: true,
            key_mask: None,
            sequence_id: None,
        };
        let x = rand::<Flex, 4>([1, 2, 1, 3], 1);
        // Plain Flex (inference) stays composed.
        let bias = parts.build::<Flex>(&dev);
        assert!(attention(x.clone(), x.clone(), x, &bias, 1.0, None).is_err());
        // A bias whose parts do not fit the shapes is left to the composed path too.
        let x = rand::<AD, 4>([1, 2, 1, 3], 1);
        let wrong = BiasParts { heads: 2, ..parts }.build::<AD>(&dev);
        assert!(attention(x.clone(), x.clone(), x, &wrong, 1.0, None).is_err());
    }

    #[test]
    fn fused_gelu_matches_burns_gelu_and_its_gradient() {
        let x = rand::<Flex, 3>([3, 5, 70], 1);
        fused_matches_generic(
            vec![x],
            |t| gelu(t[0].clone()),
            |t| gelu(t[0].clone()),
            2e-6,
        );
    }

    #[test]
    fn fused_scaled_softmax_with_a_shared_bias_matches_the_composed_one() {
        let x = rand::<Flex, 4>([3, 2, 7, 7], 2);
        let bias = rand::<Flex, 4>([1, 2, 7, 7], 3);
        fused_matches_generic(
            vec![x.clone(), bias.clone()],
            |t| softmax_with_bias(t[0].clone(), Some(t[1].clone()), 0.3),
            |t| softmax_with_bias(t[0].clone(), Some(t[1].clone()), 0.3),
            1e-6,
        );
        fused_matches_generic(
            vec![x],
            |t| softmax_with_bias(t[0].clone(), None, 1.0),
            |t| softmax_with_bias(t[0].clone(), None, 1.0),
            1e-6,
        );
    }

    #[test]
    fn a_bias_shared_over_batch_and_heads_broadcasts_on_the_composed_path() {
        // [1, 1, s, s] against [2, 3, s, s] scores: the fused kernel declines this bias, and
        // the composed path must broadcast it rather than reshape it to the wrong size.
        let x = rand::<Flex, 4>([2, 3, 5, 5], 7);
        let bias = rand::<Flex, 4>([1, 1, 5, 5], 8);
        let got = softmax_with_bias(x.clone(), Some(bias.clone()), 1.0);
        let want = activation::softmax(x + bias, 3);
        close(got, want, 1e-6);
    }

    #[test]
    fn fused_layer_norm_and_rms_norm_match_the_composed_ones() {
        let x = rand::<Flex, 3>([2, 9, 40], 4);
        let w = rand::<Flex, 3>([1, 1, 40], 5);
        let b = rand::<Flex, 3>([1, 1, 40], 6);
        for rms in [false, true] {
            let run_ad = |t: &[Tensor<AD, 3>]| {
                let bias = (!rms).then(|| t[2].clone().reshape([40]));
                norm(t[0].clone(), t[1].clone().reshape([40]), bias, 1e-5, rms)
            };
            let run_g = |t: &[Tensor<Generic, 3>]| {
                let bias = (!rms).then(|| t[2].clone().reshape([40]));
                norm(t[0].clone(), t[1].clone().reshape([40]), bias, 1e-5, rms)
            };
            fused_matches_generic(vec![x.clone(), w.clone(), b.clone()], run_ad, run_g, 2e-5);
        }
    }

    #[test]
    fn fused_cross_entropy_rows_match_the_composed_ones() {
        let dev = Default::default();
        let x = rand::<Flex, 2>([5, 77], 8);
        let t = Tensor::<Flex, 2, Int>::from_ints([[3], [-100], [76], [0], [40]], &dev);
        let (l, g) = cross_entropy_rows(x.clone(), t.clone(), true);
        let (lg, gg) = cross_entropy_rows(
            Tensor::<Generic, 2>::from_data(x.to_data(), &dev),
            Tensor::<Generic, 2, Int>::from_data(t.to_data(), &dev),
            true,
        );
        close(l, Tensor::from_data(lg.inner().into_data(), &dev), 2e-6);
        close(
            g.unwrap(),
            Tensor::from_data(gg.unwrap().inner().into_data(), &dev),
            1e-6,
        );
    }

    #[test]
    fn attached_gradients_match_the_surrogate_and_scale_with_the_upstream_gradient() {
        fn run<Bk: burn::tensor::backend::AutodiffBackend>() -> (f32, Vec<f32>, Vec<f32>) {
            let dev = Default::default();
            let a = Tensor::<Bk, 2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &dev).require_grad();
            let b = Tensor::<Bk, 2>::from_floats([[0.5, -1.0, 2.0]], &dev).require_grad();
            let da = Tensor::<Bk, 2>::from_floats([[0.1, 0.2], [0.3, 0.4]], &dev);
            let db = Tensor::<Bk, 2>::from_floats([[1.0, 0.0, -1.0]], &dev);
            let value = Tensor::<Bk, 1>::from_floats([7.0], &dev);
            let out = attach_gradients(value, a.clone(), da, b.clone(), db);
            let v = out.clone().into_scalar().elem::<f32>();
            let grads = (out * 3.0).backward();
            let ga = a.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
            let gb = b.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
            (v, ga, gb)
        }
        let fused = run::<AD>();
        assert_eq!(fused, run::<Generic>());
        assert_eq!(fused.0, 7.0);
        assert_eq!(fused.1, vec![0.3f32 * 1.0, 0.6, 0.90000004, 1.2]);
        assert_eq!(fused.2, vec![3.0, 0.0, -3.0]);
    }

    #[test]
    fn zip_mut_updates_in_place_and_leaves_shared_copies_alone() {
        // More values than one block; `x` is also held by `held`, as a module holds a parameter
        // that the optimizer updates.
        let x = rand::<Flex, 1>([40_000], 1);
        let y = rand::<Flex, 1>([40_000], 2);
        let held = x.clone();
        let (x0, y0) = (x.to_data(), y.to_data());
        let [x, y] = zip_mut([x, y], |[a, b]| {
            for (a, b) in a.iter_mut().zip(b.iter_mut()) {
                *a += *b;
                *b = 0.0;
            }
        })
        .expect("plain Flex takes the fused path");
        let dev = Default::default();
        let want = Tensor::<Flex, 1>::from_data(x0.clone(), &dev) + Tensor::from_data(y0, &dev);
        close(x, want, 0.0);
        close(y, Tensor::zeros([40_000], &dev), 0.0);
        assert_eq!(held.to_data(), x0, "the shared copy changed");
        // Elsewhere the tensors come back untouched.
        let g = rand::<Generic, 1>([10], 3);
        let back = zip_mut([g.clone()], |[a]| a.fill(0.0)).expect_err("not plain Flex");
        assert_eq!(back[0].to_data(), g.to_data());
    }

    #[test]
    fn the_linear_check_passes_on_flex_and_names_the_path_that_ran() {
        // The GPU check's plumbing, on the CPU: f32 takes Flex's fused gemm, bf16 is refused
        // (Flex's kernels are f32) and compared composed against composed.
        let dev = Default::default();
        let full = check_linear::<AD>(7, 6, 5, FloatDType::F32, &dev);
        assert!(full.fused && full.passed(), "{full:?}");
        let half = check_linear::<AD>(7, 6, 5, FloatDType::BF16, &dev);
        assert!(!half.fused && half.passed(), "{half:?}");
        assert_eq!(cublaslt_fallbacks(), 0);
    }

    #[test]
    fn only_flex_and_its_default_autodiff_take_the_fused_path() {
        assert!(flex::specialised::<Flex>() && flex::specialised::<AD>());
        assert!(!flex::specialised::<Generic>());
        assert!(reads_back_for_free::<Flex>() && reads_back_for_free::<AD>());
        assert!(!reads_back_for_free::<Generic>());
    }

    #[test]
    fn kernels_on_plain_flex_match_the_autodiff_forward() {
        let dev = Default::default();
        let x = rand::<Flex, 2>([4, 33], 7);
        let y = gelu(x.clone());
        let z = gelu(Tensor::<Generic, 2>::from_data(x.to_data(), &dev)).inner();
        close(y, Tensor::from_data(z.into_data(), &dev), 2e-6);
    }
}
