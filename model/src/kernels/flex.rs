//! The fused kernels on burn's Flex backend, with and without autodiff.
//!
//! A model generic over `B: Backend` cannot name Flex's tensor type, so each entry point checks
//! at run time whether `B` is `Flex` or `Autodiff<Flex>` (a `TypeId` comparison) and whether
//! the tensors are f32, and only then moves the primitives across through `Any` (safe, and
//! free). Anything else is handed back unchanged and the caller takes the generic path.
//!
//! On `Autodiff<Flex>` each kernel is one graph node with a hand-written backward
//! ([`rows`](super::rows)), registered through burn-autodiff's public `Backward` API. Only the
//! default `NoCheckpointing` strategy is specialised (that is the type `Autodiff<Flex>` names).

use std::any::{Any, TypeId};

use rayon::prelude::*;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Bytes, DType, Shape, TensorMetadata};

use super::flash;
use super::gemm::{MatRef, Threads, product};
use super::rows::{self, NormStats};
use super::unembed;
use crate::mask::AttnBias;

type AdFlex = Autodiff<Flex>;
type AdTensor = FloatTensor<AdFlex>;
/// A float primitive of backend `B`.
type Prim<B> = FloatTensor<B>;

/// Which of the specialised backends `B` is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Flex,
    AutodiffFlex,
    Other,
}

fn which<B: Backend>() -> Which {
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Which::Flex
    } else if id == TypeId::of::<AdFlex>() {
        Which::AutodiffFlex
    } else {
        Which::Other
    }
}

/// Whether `B` is plain `Flex` (inference on the CPU, no autodiff).
pub(super) fn is_plain_flex<B: Backend>() -> bool {
    which::<B>() == Which::Flex
}

/// Whether `B` gets the fused kernels at all (for f32 tensors): Flex or Autodiff<Flex>, whose
/// tensors live in host memory.
pub(super) fn specialised<B: Backend>() -> bool {
    which::<B>() != Which::Other
}

/// Whether autodiff tracks `t` (a parameter that requires a gradient, or a result computed
/// from one) on Autodiff<Flex>; `None` on every other backend.
pub(super) fn is_tracked<B: Backend>(t: &Prim<B>) -> Option<bool> {
    if which::<B>() != Which::AutodiffFlex {
        return None;
    }
    (t as &dyn Any)
        .downcast_ref::<AdTensor>()
        .map(|t| !t.node.requirement.is_none())
}

/// Moves `value` to type `T`, which the caller has established it is (via [`which`]).
fn give<S: 'static, T: 'static>(value: S) -> T {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
        .expect("kernels::flex: the primitive type was checked by `which`")
}

/// `t` with contiguous f32 storage (a copy only when it is a strided view).
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// `t` laid out so that its whole buffer is exactly its elements, ready for
/// [`FlexTensor::storage_mut`] (which then copies only if the buffer is shared).
fn exact(t: FlexTensor) -> FlexTensor {
    let n = t.shape().num_elements();
    if t.is_contiguous() && t.layout().start_offset() == 0 && t.bytes().len() == n * 4 {
        t
    } else {
        t.to_contiguous()
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("kernel inputs are made contiguous f32 first")
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// The gradient flowing into `ops.node`, ready to be overwritten in place.
fn grad_of<S, const N: usize>(ops: &Ops<S, N>, grads: &mut Gradients) -> FlexTensor {
    exact(grads.consume::<Flex>(&ops.node))
}

// ---------------------------------------------------------------------------------------------
// GELU (exact, erf form)

fn gelu_flex(x: &FlexTensor) -> FlexTensor {
    tensor(rows::gelu(slice(x)), x.shape())
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut g = grad_of(&ops, grads);
        if let [Some(node)] = &ops.parents {
            rows::gelu_backward(slice(&ops.state), g.storage_mut::<f32>());
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// GELU on an f32 Flex / Autodiff<Flex> tensor; `Err(x)` otherwise.
pub(super) fn gelu<B: Backend>(x: Prim<B>) -> Result<Prim<B>, Prim<B>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    match which::<B>() {
        Which::Flex => Ok(give(gelu_flex(&contiguous(give(x))))),
        Which::AutodiffFlex => {
            let t: AdTensor = give(x);
            let input = contiguous(t.primitive);
            let out = match GeluBackward
                .prepare::<NoCheckpointing>([t.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = gelu_flex(&input);
                    prep.finish(input, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(gelu_flex(&input)),
            };
            Ok(give(out))
        }
        Which::Other => Err(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layers: x · wᵀ, straight through gemm

/// A contiguous f32 matrix tensor as a gemm view.
fn mat(t: &FlexTensor) -> MatRef<'_> {
    let shape = t.shape();
    MatRef::rows(slice(t), shape[0], shape[1])
}

/// `lhs · rhs` into a new `[m, n]` tensor.
///
/// Why not Flex's matmul: Flex allocates every product's output zero-filled as bytes and then
/// copies it once more into an aligned buffer, both on the calling thread while the other cores
/// wait; in a CPU training step of the quickstart model that was ~6% of all CPU time, serial.
/// Here gemm writes straight into fresh memory (which burn takes as it is).
fn gemm_new(lhs: MatRef, rhs: MatRef) -> FlexTensor {
    let shape = Shape::from(vec![lhs.shape()[0], rhs.shape()[1]]);
    tensor(product(lhs, rhs, 1.0, Threads::Pool), shape)
}

/// `∂/∂x = g · w` of a linear layer `y = x · wᵀ` for the upstream gradient `g` (contiguous).
fn input_grad(g: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    gemm_new(mat(g), mat(w))
}

/// `∂/∂w = gᵀ · x` of a linear layer `y = x · wᵀ` for the upstream gradient `g` (contiguous).
fn weight_grad(g: &FlexTensor, x: &FlexTensor) -> FlexTensor {
    gemm_new(mat(g).t(), mat(x))
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// `x` ([rows, d_in]) and `w` ([d_out, d_in]), contiguous.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node)); // [rows, d_out]
        let (x, w) = &ops.state;
        let [x_node, w_node] = &ops.parents;
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, input_grad(&g, w));
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, weight_grad(&g, x));
        }
    }
}

/// `x · wᵀ` for `x: [rows, d_in]` and `w: [d_out, d_in]` (f32) on Autodiff<Flex>, as one node
/// whose forward and both backward products call gemm directly; `Err` otherwise (plain Flex
/// keeps Flex's matmul, whose row-count behaviour `kernels::matmul` relies on).
pub(super) fn linear<B: Backend>(x: Prim<B>, w: Prim<B>) -> Result<Prim<B>, (Prim<B>, Prim<B>)> {
    let f32_matrices = [&x, &w]
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.shape().num_dims() == 2);
    if !f32_matrices || which::<B>() != Which::AutodiffFlex {
        return Err((x, w));
    }
    let (x, w): (AdTensor, AdTensor) = (give(x), give(w));
    let (xp, wp) = (contiguous(x.primitive), contiguous(w.primitive));
    let y = gemm_new(mat(&xp), mat(&wp).t());
    let out = match LinearBackward
        .prepare::<NoCheckpointing>([x.node, w.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((xp, wp), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(give(out))
}

/// A linear layer's [`input_grad`] and [`weight_grad`] for f32 Flex / Autodiff<Flex> matrices,
/// as constants (no graph); `Err` with the inputs otherwise.
#[allow(clippy::type_complexity)]
pub(super) fn linear_backward<B: Backend>(
    x: Prim<B>,
    w: Prim<B>,
    g: Prim<B>,
) -> Result<(Prim<B>, Prim<B>), (Prim<B>, Prim<B>, Prim<B>)> {
    let f32_matrices = [&x, &w, &g]
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.shape().num_dims() == 2);
    if !f32_matrices || which::<B>() == Which::Other {
        return Err((x, w, g));
    }
    let [x, w, g] = [x, w, g].map(|t| contiguous(raw::<B>(t)));
    Ok((
        wrap::<B>(input_grad(&g, &w)),
        wrap::<B>(weight_grad(&g, &x)),
    ))
}

// ---------------------------------------------------------------------------------------------
// [a, b, c, d] -> [a, c, b, d]

fn swap_middle_flex(x: &FlexTensor) -> FlexTensor {
    let shape = x.shape();
    let [a, b, c, d] = [shape[0], shape[1], shape[2], shape[3]];
    tensor(
        rows::swap_middle(slice(x), [a, b, c, d]),
        Shape::from(vec![a, c, b, d]),
    )
}

#[derive(Debug)]
struct SwapMiddleBackward;

impl Backward<Flex, 1> for SwapMiddleBackward {
    type State = ();

    fn backward(self, ops: Ops<(), 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grad_of(&ops, grads);
        if let [Some(node)] = &ops.parents {
            grads.register::<Flex>(node.id, swap_middle_flex(&g));
        }
    }
}

/// `x.swap_dims(1, 2)` of a 4-D f32 Flex / Autodiff<Flex> tensor, materialised; `Err(x)`
/// otherwise.
pub(super) fn swap_middle<B: Backend>(x: Prim<B>) -> Result<Prim<B>, Prim<B>> {
    if x.dtype() != DType::F32 || x.shape().num_dims() != 4 {
        return Err(x);
    }
    match which::<B>() {
        Which::Flex => Ok(give(swap_middle_flex(&contiguous(give(x))))),
        Which::AutodiffFlex => {
            let t: AdTensor = give(x);
            let y = swap_middle_flex(&contiguous(t.primitive));
            // A copy, but registered as compute-bound: nothing to recompute it from under the
            // (only specialised) no-checkpointing strategy.
            let out = SwapMiddleBackward
                .prepare::<NoCheckpointing>([t.node])
                .compute_bound()
                .stateless(y);
            Ok(give(out))
        }
        Which::Other => Err(x),
    }
}

// ---------------------------------------------------------------------------------------------
// Attention: softmax(scale · q kᵀ + bias) v, in the [batch, seq, heads, head_dim] layout

/// What the attention backward keeps: the sizes, the mask, the inputs, the output, the rows'
/// log-sum-exps and the scale (no probabilities: the backward recomputes them).
#[derive(Clone, Debug)]
struct FlashState {
    dims: flash::Dims,
    mask: flash::Mask,
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: Vec<f32>,
    scale: f32,
}

#[derive(Debug)]
struct FlashBackward;

impl Backward<Flex, 3> for FlashBackward {
    type State = FlashState;

    fn backward(self, ops: Ops<FlashState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = contiguous(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let saved = flash::Saved {
            q: slice(&s.q),
            k: slice(&s.k),
            v: slice(&s.v),
            out: slice(&s.out),
            lse: &s.lse,
        };
        let g = flash::backward(&s.dims, saved, slice(&d_out), &s.mask, s.scale);
        for (node, (values, like)) in
            ops.parents
                .iter()
                .zip([(g.q, &s.q), (g.k, &s.k), (g.v, &s.v)])
        {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(values, like.shape()));
            }
        }
    }
}

/// The sizes of an attention call if the shapes fit the kernel: `q` `[b, s_q, h, hd]`, `k` and
/// `v` `[b, s_k, kvh, hd]` with `kvh` dividing `h`, at least as many keys as queries, and
/// nothing empty.
fn flash_dims(q: &Shape, k: &Shape, v: &Shape) -> Option<flash::Dims> {
    if q.num_dims() != 4 || k.num_dims() != 4 || k != v {
        return None;
    }
    let d = flash::Dims {
        batch: q[0],
        seq_q: q[1],
        seq_k: k[1],
        heads: q[2],
        kv_heads: k[2],
        head_dim: q[3],
    };
    let fits = k[0] == d.batch
        && k[3] == d.head_dim
        && d.kv_heads > 0
        && d.heads.is_multiple_of(d.kv_heads)
        && d.seq_k >= d.seq_q
        && [d.batch, d.seq_q, d.head_dim].iter().all(|&n| n > 0);
    fits.then_some(d)
}

/// `t`'s values as i64s on the host (masks are `[batch, seq]`: a small copy).
fn host_ints<B: Backend, K>(t: burn::tensor::Tensor<B, 2, K>) -> Vec<i64>
where
    K: burn::tensor::BasicOps<B>,
{
    t.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("converted to i64 just above")
}

/// `bias` for the flash kernel, if its parts fit the sizes: one slope per head, a key mask of
/// `[batch, s_k]`, sequence ids of `[batch, s_q]` without a cached prefix.
fn flash_mask<B: Backend>(bias: &AttnBias<B>, d: &flash::Dims) -> Option<flash::Mask> {
    let fits = bias.n_heads == d.heads
        && bias.s_q == d.seq_q
        && bias.past + bias.s_q == d.seq_k
        && bias.slopes.as_ref().is_none_or(|s| s.len() == d.heads)
        && bias
            .key_mask
            .as_ref()
            .is_none_or(|m| m.dims() == [d.batch, d.seq_k])
        && bias
            .sequence_id
            .as_ref()
            .is_none_or(|s| s.dims() == [d.batch, d.seq_q] && bias.past == 0);
    if !fits {
        return None;
    }
    Some(flash::Mask {
        slopes: bias
            .slopes
            .as_ref()
            .map(|s| s.iter().map(|&x| x as f32).collect()),
        causal: true,
        key_mask: bias
            .key_mask
            .clone()
            .map(|m| host_ints(m.int()).into_iter().map(|x| x != 0).collect()),
        sequence_id: bias.sequence_id.clone().map(host_ints),
    })
}

/// Attention as one graph node on `Autodiff<Flex>` (f32), with the bias computed from its parts
/// inside the kernel ([`flash`]); `Err` with the inputs otherwise. Plain Flex is left to the
/// composed path, whose row-independent products cached decoding relies on (see
/// `kernels::matmul`).
#[allow(clippy::type_complexity)]
pub(super) fn attention<B: Backend>(
    q: Prim<B>,
    k: Prim<B>,
    v: Prim<B>,
    bias: &AttnBias<B>,
    scale: f64,
) -> Result<Prim<B>, (Prim<B>, Prim<B>, Prim<B>)> {
    let f32s = [&q, &k, &v].iter().all(|t| t.dtype() == DType::F32);
    let dims = flash_dims(&q.shape(), &k.shape(), &v.shape());
    let (Some(dims), true, Which::AutodiffFlex) = (dims, f32s, which::<B>()) else {
        return Err((q, k, v));
    };
    let Some(mask) = flash_mask(bias, &dims) else {
        return Err((q, k, v));
    };
    let (q, k, v): (AdTensor, AdTensor, AdTensor) = (give(q), give(k), give(v));
    let (qp, kp, vp) = (
        contiguous(q.primitive),
        contiguous(k.primitive),
        contiguous(v.primitive),
    );
    let scale = scale as f32;
    let (out, lse) = flash::forward(&dims, slice(&qp), slice(&kp), slice(&vp), &mask, scale);
    let out = tensor(out, qp.shape());
    let out = match FlashBackward
        .prepare::<NoCheckpointing>([q.node, k.node, v.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = FlashState {
                dims,
                mask,
                q: qp,
                k: kp,
                v: vp,
                out: out.clone(),
                lse,
                scale,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Ok(give(out))
}

// ---------------------------------------------------------------------------------------------
// softmax(x + bias) over the last axis

/// `softmax(scale · x + bias)`, in `x`'s buffer when nothing else holds it.
fn softmax_flex(x: FlexTensor, bias: Option<&FlexTensor>, scale: f64) -> FlexTensor {
    let mut y = exact(x);
    let shape = y.shape();
    let n = shape[shape.num_dims() - 1];
    rows::softmax(y.storage_mut::<f32>(), bias.map(slice), n, scale as f32);
    y
}

/// `N` = 1 (scores) or 2 (scores, bias).
#[derive(Debug)]
struct SoftmaxBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for SoftmaxBackward<N> {
    /// The output (the probabilities), the scale and the bias shape.
    type State = (FlexTensor, f64, Shape);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut g = grad_of(&ops, grads);
        let (y, scale, bias_shape) = ops.state;
        let mut parents = ops.parents.into_iter();
        let (x_node, bias_node) = (parents.next().flatten(), parents.next().flatten());
        let shape = y.shape();
        let n = shape[shape.num_dims() - 1];
        // g becomes the gradient of `scale · x + bias`: the bias's (summed over the batch it
        // was broadcast over), and `scale` times it for x.
        rows::softmax_backward(slice(&y), g.storage_mut::<f32>(), n);
        if let Some(node) = bias_node {
            let len = bias_shape.num_elements();
            let mut db = vec![0.0f32; len];
            for c in slice(&g).chunks(len) {
                db.iter_mut().zip(c).for_each(|(a, v)| *a += v);
            }
            grads.register::<Flex>(node.id, tensor(db, bias_shape));
        }
        if let Some(node) = x_node {
            if scale != 1.0 {
                let s = scale as f32;
                g.storage_mut::<f32>().iter_mut().for_each(|v| *v *= s);
            }
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// `softmax(scale · x + bias)` over the last axis for f32 Flex / Autodiff<Flex> tensors whose
/// bias (if any) has `x`'s trailing axes and a leading axis of 1 or `x`'s; `Err` with the
/// inputs otherwise.
#[allow(clippy::type_complexity)]
pub(super) fn softmax<B: Backend>(
    x: Prim<B>,
    bias: Option<Prim<B>>,
    scale: f64,
) -> Result<Prim<B>, (Prim<B>, Option<Prim<B>>)> {
    let fits = |b: &Prim<B>| {
        let (xs, bs) = (x.shape(), b.shape());
        b.dtype() == DType::F32
            && xs.num_dims() == bs.num_dims()
            && xs.as_slice()[1..] == bs.as_slice()[1..]
            && (bs[0] == 1 || bs[0] == xs[0])
    };
    if x.dtype() != DType::F32 || x.shape().num_dims() < 2 || !bias.as_ref().is_none_or(fits) {
        return Err((x, bias));
    }
    match which::<B>() {
        Which::Flex => {
            let b = bias.map(|b| contiguous(give(b)));
            Ok(give(softmax_flex(give(x), b.as_ref(), scale)))
        }
        Which::AutodiffFlex => {
            let t: AdTensor = give(x);
            let out = match bias.map(give::<_, AdTensor>) {
                None => {
                    let y = softmax_flex(t.primitive, None, scale);
                    match SoftmaxBackward::<1>
                        .prepare::<NoCheckpointing>([t.node])
                        .compute_bound()
                        .stateful()
                    {
                        OpsKind::Tracked(prep) => {
                            prep.finish((y.clone(), scale, Shape::new([1])), y)
                        }
                        OpsKind::UnTracked(prep) => prep.finish(y),
                    }
                }
                Some(b) => {
                    let bias = contiguous(b.primitive);
                    let y = softmax_flex(t.primitive, Some(&bias), scale);
                    match SoftmaxBackward::<2>
                        .prepare::<NoCheckpointing>([t.node, b.node])
                        .compute_bound()
                        .stateful()
                    {
                        OpsKind::Tracked(prep) => prep.finish((y.clone(), scale, bias.shape()), y),
                        OpsKind::UnTracked(prep) => prep.finish(y),
                    }
                }
            };
            Ok(give(out))
        }
        Which::Other => Err((x, bias)),
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm / RMSNorm over the last axis

fn norm_flex(
    x: &FlexTensor,
    w: &FlexTensor,
    b: Option<&FlexTensor>,
    eps: f64,
    rms: bool,
) -> (FlexTensor, NormStats) {
    let (y, stats) = rows::norm(slice(x), slice(w), b.map(slice), eps as f32, rms);
    (tensor(y, x.shape()), stats)
}

/// `N` = 2 (x, weight) or 3 (x, weight, bias).
#[derive(Debug)]
struct NormBackward<const N: usize>;

/// What the norm backward keeps: input, weight, per-row stats, RMS or not.
#[derive(Clone, Debug)]
struct NormState {
    x: FlexTensor,
    w: FlexTensor,
    stats: NormStats,
    rms: bool,
}

impl<const N: usize> Backward<Flex, N> for NormBackward<N> {
    type State = NormState;

    fn backward(self, ops: Ops<NormState, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mut g = grad_of(&ops, grads);
        let s = ops.state;
        let (dw, db) = rows::norm_backward(
            slice(&s.x),
            g.storage_mut::<f32>(),
            slice(&s.w),
            &s.stats,
            s.rms,
        );
        let mut parents = ops.parents.into_iter();
        let (x_node, w_node, b_node) = (
            parents.next().flatten(),
            parents.next().flatten(),
            parents.next().flatten(),
        );
        if let Some(node) = b_node {
            grads.register::<Flex>(node.id, tensor(db, s.w.shape()));
        }
        if let Some(node) = w_node {
            grads.register::<Flex>(node.id, tensor(dw, s.w.shape()));
        }
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// LayerNorm (or RMSNorm) of the last axis for f32 Flex / Autodiff<Flex> tensors; `Err` with
/// the inputs otherwise.
#[allow(clippy::type_complexity)]
pub(super) fn norm<B: Backend>(
    x: Prim<B>,
    w: Prim<B>,
    b: Option<Prim<B>>,
    eps: f64,
    rms: bool,
) -> Result<Prim<B>, (Prim<B>, Prim<B>, Option<Prim<B>>)> {
    let d = w.shape().num_elements();
    let ok = x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.shape().as_slice().last() == Some(&d)
        && b.as_ref()
            .is_none_or(|b| b.dtype() == DType::F32 && b.shape().num_elements() == d);
    if !ok {
        return Err((x, w, b));
    }
    match which::<B>() {
        Which::Flex => {
            let b = b.map(|b| contiguous(give(b)));
            let (y, _) = norm_flex(
                &contiguous(give(x)),
                &contiguous(give(w)),
                b.as_ref(),
                eps,
                rms,
            );
            Ok(give(y))
        }
        Which::AutodiffFlex => {
            let (x, w): (AdTensor, AdTensor) = (give(x), give(w));
            let b: Option<AdTensor> = b.map(give);
            let (xi, wi) = (contiguous(x.primitive), contiguous(w.primitive));
            let bi = b.as_ref().map(|b| contiguous(b.primitive.clone()));
            let (y, stats) = norm_flex(&xi, &wi, bi.as_ref(), eps, rms);
            let state = NormState {
                x: xi,
                w: wi,
                stats,
                rms,
            };
            let out = match b {
                None => match NormBackward::<2>
                    .prepare::<NoCheckpointing>([x.node, w.node])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                },
                Some(b) => match NormBackward::<3>
                    .prepare::<NoCheckpointing>([x.node, w.node, b.node])
                    .compute_bound()
                    .stateful()
                {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                },
            };
            Ok(give(out))
        }
        Which::Other => Err((x, w, b)),
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy rows (no graph node: the caller builds the gradient path)

/// The primitive's raw Flex tensor when `B` is Flex or `Autodiff<Flex>` (dropping any graph).
fn raw<B: Backend>(x: Prim<B>) -> FlexTensor {
    match which::<B>() {
        Which::Flex => give(x),
        Which::AutodiffFlex => give::<_, AdTensor>(x).primitive,
        Which::Other => unreachable!("raw() is only called on specialised backends"),
    }
}

/// A raw Flex result as `B`'s primitive (untracked under autodiff).
fn wrap<B: Backend>(t: FlexTensor) -> Prim<B> {
    match which::<B>() {
        Which::Flex => give(t),
        Which::AutodiffFlex => give(<AdFlex as AutodiffBackend>::from_inner(t)),
        Which::Other => unreachable!("wrap() is only called on specialised backends"),
    }
}

/// An int tensor's values as `i64` (i64 or i32 storage); `Err` with the tensor otherwise.
fn target_ids(t: FlexTensor) -> Result<Vec<i64>, FlexTensor> {
    let t = if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    };
    match (t.as_slice::<i64>(), t.as_slice::<i32>()) {
        (Some(v), _) => Ok(v.to_vec()),
        (None, Some(v)) => Ok(v.iter().map(|&x| x as i64).collect()),
        _ => Err(t),
    }
}

/// Per-row cross-entropy `[rows, 1]` of f32 Flex / Autodiff<Flex> logits `[rows, v]` against
/// `targets` `[rows, 1]` (negative = ignored), and with `grad` also `softmax - onehot`
/// `[rows, v]`, computed in place in the logits' buffer when it is not shared.
#[allow(clippy::type_complexity)]
pub(super) fn cross_entropy<B: Backend>(
    logits: Prim<B>,
    targets: IntTensor<B>,
    grad: bool,
) -> Result<(Prim<B>, Option<Prim<B>>), (Prim<B>, IntTensor<B>)> {
    if logits.dtype() != DType::F32
        || logits.shape().num_dims() != 2
        || which::<B>() == Which::Other
    {
        return Err((logits, targets));
    }
    let ids = match target_ids(give(targets)) {
        Ok(ids) => ids,
        Err(t) => return Err((logits, give(t))),
    };
    let mut x = raw::<B>(logits);
    let shape = x.shape();
    assert_eq!(
        ids.len(),
        shape[0],
        "cross_entropy_rows: {} targets for {} rows of logits",
        ids.len(),
        shape[0]
    );
    let n = shape[1];
    if !x.is_contiguous() || x.layout().start_offset() != 0 {
        x = x.to_contiguous();
    }
    // In place when `x` is not shared (the usual case: a fresh matmul output); else a copy.
    let loss = rows::cross_entropy(&mut x.storage_mut::<f32>()[..ids.len() * n], &ids, n, grad);
    let rows = ids.len();
    let loss = wrap::<B>(tensor(loss, Shape::new([rows, 1])));
    Ok((loss, grad.then(|| wrap::<B>(x))))
}

// ---------------------------------------------------------------------------------------------
// In-place element-wise updates of several tensors

/// `t`'s values in a contiguous buffer that nothing else holds, so that writing to it in place
/// changes no other tensor. A shared buffer (an optimizer's parameter is usually still held by
/// the module) is copied in parallel blocks, not by Flex's serial copy-on-write.
fn owned(t: FlexTensor) -> FlexTensor {
    let t = exact(t);
    if t.is_unique() {
        return t;
    }
    let src = slice(&t);
    let (values, _) = rows::par_fill(src.len(), rows::BLOCK, |i, out| {
        out.copy_from_slice(&src[i * rows::BLOCK..i * rows::BLOCK + out.len()]);
    });
    tensor(values, t.shape())
}

/// Runs `f` on aligned blocks of `N` f32 tensors of one shape on plain Flex, in place and in
/// parallel; `Err` with the tensors otherwise.
pub(super) fn zip_mut<B: Backend, const N: usize>(
    tensors: [Prim<B>; N],
    f: impl Fn([&mut [f32]; N]) + Sync,
) -> Result<[Prim<B>; N], [Prim<B>; N]> {
    let Some(first) = tensors.first() else {
        return Ok(tensors);
    };
    let shape = first.shape();
    let fits = tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.shape() == shape);
    if !fits || which::<B>() != Which::Flex {
        return Err(tensors);
    }
    // Each buffer made its own (copied only if shared), then split into the same blocks.
    let mut flex: [FlexTensor; N] = tensors.map(|t| owned(give(t)));
    let blocks = shape.num_elements().div_ceil(rows::BLOCK);
    let mut chunks = flex
        .each_mut()
        .map(|t| t.storage_mut::<f32>().chunks_mut(rows::BLOCK));
    let per_block: Vec<[&mut [f32]; N]> = (0..blocks)
        .map(|_| std::array::from_fn(|i| chunks[i].next().unwrap_or_default()))
        .collect();
    per_block.into_par_iter().for_each(&f);
    Ok(flex.map(give))
}

// ---------------------------------------------------------------------------------------------
// A scalar with precomputed gradients

/// Backward of [`attach_gradients`]: the upstream scalar times each stored gradient.
#[derive(Debug)]
struct AttachBackward;

impl Backward<Flex, 2> for AttachBackward {
    /// `∂value/∂a`, `∂value/∂b`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<Flex>(&ops.node);
        let c = slice(&contiguous(g))[0];
        let (da, db) = ops.state;
        for (node, d) in ops.parents.into_iter().zip([da, db]) {
            if let Some(node) = node {
                let mut d = exact(d);
                if c != 1.0 {
                    rows::scale(d.storage_mut::<f32>(), c);
                }
                grads.register::<Flex>(node.id, d);
            }
        }
    }
}

/// `value` (a constant `[1]`) as one graph node whose gradients with respect to `a` and `b` are
/// `da`, `db`, for f32 Flex / Autodiff<Flex> tensors; `Err` with the inputs otherwise. (On plain
/// Flex there is no graph: `value` is returned.)
#[allow(clippy::type_complexity)]
pub(super) fn attach_gradients<B: Backend>(
    value: Prim<B>,
    a: Prim<B>,
    da: Prim<B>,
    b: Prim<B>,
    db: Prim<B>,
) -> Result<Prim<B>, (Prim<B>, Prim<B>, Prim<B>, Prim<B>, Prim<B>)> {
    let f32s = [&value, &a, &da, &b, &db]
        .iter()
        .all(|t| t.dtype() == DType::F32);
    if !f32s
        || a.shape() != da.shape()
        || b.shape() != db.shape()
        || value.shape().num_elements() != 1
    {
        return Err((value, a, da, b, db));
    }
    match which::<B>() {
        Which::Flex => Ok(value),
        Which::AutodiffFlex => {
            let (a, b): (AdTensor, AdTensor) = (give(a), give(b));
            let (da, db): (AdTensor, AdTensor) = (give(da), give(db));
            let value = give::<_, AdTensor>(value).primitive;
            let out = match AttachBackward
                .prepare::<NoCheckpointing>([a.node, b.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((da.primitive, db.primitive), value),
                OpsKind::UnTracked(prep) => prep.finish(value),
            };
            Ok(give(out))
        }
        Which::Other => Err((value, a, da, b, db)),
    }
}

// ---------------------------------------------------------------------------------------------
// The unembedding and its cross-entropy, with both gradients

/// The inputs of [`unembed_cross_entropy`] (`h`, `w`, targets), handed back.
pub(super) type UnembedInputs<B> = (Prim<B>, Prim<B>, IntTensor<B>);
/// Per-row losses `[n, 1]`, `∂h` `[n, d]` and `∂W` `[v, d]` (constants).
pub(super) type Unembedded<B> = (Prim<B>, Option<Prim<B>>, Option<Prim<B>>);

/// [`unembed::unembed_cross_entropy`] for f32 Flex / Autodiff<Flex> matrices `h: [n, d]` and
/// `w: [v, d]` against `targets: [n, 1]` (negative = ignored), in blocks of `block` rows,
/// with the gradients asked for as constants (no graph); `Err` with the inputs otherwise.
pub(super) fn unembed_cross_entropy<B: Backend>(
    (h, w, targets): UnembedInputs<B>,
    scale: f32,
    [grad_h, grad_w]: [bool; 2],
    block: usize,
) -> Result<Unembedded<B>, UnembedInputs<B>> {
    let f32_matrices = [&h, &w]
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.shape().num_dims() == 2);
    if !f32_matrices || which::<B>() == Which::Other {
        return Err((h, w, targets));
    }
    let ids = match target_ids(give(targets)) {
        Ok(ids) => ids,
        Err(t) => return Err((h, w, give(t))),
    };
    let [h, w] = [h, w].map(|t| contiguous(raw::<B>(t)));
    let ([n, d], v) = ([h.shape()[0], h.shape()[1]], w.shape()[0]);
    let out = unembed::unembed_cross_entropy(
        slice(&h),
        slice(&w),
        &ids,
        [n, d, v],
        scale,
        grad_h,
        grad_w,
        block,
    );
    let t = |values: Vec<f32>, shape: [usize; 2]| wrap::<B>(tensor(values, Shape::new(shape)));
    Ok((
        t(out.losses, [n, 1]),
        out.dh.map(|g| t(g, [n, d])),
        out.dw.map(|g| t(g, [v, d])),
    ))
}
