//! Flash attention in CubeCL for burn's CubeCL backends (wgpu, CUDA): the same function as the
//! CPU kernel ([`super::flash`]), forward and backward, one autodiff graph node.
//!
//! Why: on the GPU the composed path materialises the `[batch, heads, s_q, s_k]` scores, the
//! dense bias and the probabilities (kept for the backward). Here, as FlashAttention-2 (Dao
//! 2023, <https://arxiv.org/abs/2307.08691>) does it:
//! - the forward ([`flash_fwd`]) walks each block of queries over tiles of keys with an online
//!   softmax in f32 and keeps only the output and each row's log-sum-exp;
//! - the backward ([`flash_bwd`]) recomputes each tile's probabilities from the log-sum-exp:
//!   one kernel for `dQ` (and `D = rowsum(dO ⊙ O)`), one for `dK` and `dV`;
//! - the bias is computed in the kernels from its parts: ALiBi `slope[h] · (key − query
//!   position)` from a `[heads]` tensor of slopes (any head count), the causal mask with a
//!   cached prefix (query `i` sits at position `s_k − s_q + i`), key padding `[batch, s_k]` and
//!   `sequence_id` `[batch, s_q]`; key tiles wholly after a query block (and query tiles wholly
//!   before a key block) are skipped under the causal mask;
//! - grouped-query heads by index (query head `j` reads key/value head `j / (heads /
//!   kv_heads)`), any scale, f32, f16 and bf16 inputs (where the runtime has the type) with
//!   f32 accumulation;
//! - a row whose keys are all masked is uniform over all keys, as [`super::flash`] and the
//!   materialised formulation make it.
//!
//! Tiling: one cube per (query block, head, batch element) with one unit per query row (the
//! forward and `dQ`), or per (key block, key/value head, batch element) with one unit per key
//! row (`dK`, `dV`); the other side's tiles go through shared memory, `block` rows of
//! `head_dim` f32 values (32 rows, fewer where the device's shared memory is small). Each unit
//! keeps its own rows and accumulators (up to four of `head_dim` f32s) in local arrays.
//!
//! Not optimised yet (correctness first; tuning needs a real GPU): no tensor cores (`cmma`), no
//! plane (warp) reductions, no vectorised loads, one unit per row (so long rows of
//! `head_dim = 128` live in local memory on CUDA), no split over the key axis for short query
//! counts. Refused, so the caller runs the composed path: other backends (Fusion included),
//! dtypes other than f32/f16/bf16 or not supported by the device, `head_dim` above 256, mixed
//! dtypes, biases whose parts do not fit the shapes, and, on wgpu only, calls whose units would
//! loop more than lavapipe allows ([`loop_iterations`] over 60,000: about
//! `group × s_q × (2 + 6 · head_dim / 16)`, so a sequence of 2048 with `head_dim` 64 passes for
//! one query head per key/value head and not for more; a real GPU through wgpu is held to it
//! too, as the adapter cannot be told apart here). Soft-capping, dropout, RoPE, a KV
//! cache and mixed-precision compute never reach [`super::attention`] (the model keeps those
//! composed).

mod flash_bwd;
mod flash_fwd;
mod norm;
mod norm_kernels;

pub(crate) use norm::{cross_entropy, norm};

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, IntDType, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{CubeCount, CubeDim, StorageType};

/// Whether the kernels are used: unless `TESSERA_CUBE_KERNELS` is `0`
/// ([`super::switches::CUBE_KERNELS`]).
pub(crate) fn enabled() -> bool {
    super::switches::cube_kernels()
}

/// A float primitive of backend `B`.
type Prim<B> = FloatTensor<B>;

/// The widest head the kernels take: each unit keeps up to four rows of `head_dim` f32s.
const MAX_HEAD_DIM: usize = 256;
/// Rows per tile (and units per cube) when the device's shared memory allows it.
const BLOCK: usize = 32;
/// Mesa's llvmpipe (lavapipe, wgpu's adapter where there is no GPU) ends every loop of an
/// invocation once it has iterated 65535 times in all, silently: a kernel then writes partial
/// sums. On wgpu the kernels are refused beyond this many (see [`loop_iterations`]).
#[cfg(feature = "wgpu")]
const WGPU_LOOP_BUDGET: usize = 60_000;

/// The bias of an attention call by its parts, as [`attention`] takes it: [`AttnBias`]'s
/// parts, with the causal mask optional (the model's bias is always causal; the tests also
/// run without it).
///
/// [`AttnBias`]: crate::mask::AttnBias
#[derive(Clone, Debug)]
pub(crate) struct Masks<B: Backend> {
    /// ALiBi slopes, one per query head.
    pub slopes: Option<Vec<f64>>,
    /// Whether query `i` sees only keys up to its position `s_k − s_q + i`.
    pub causal: bool,
    /// `[batch, s_k]`, `true` for real tokens.
    pub key_mask: Option<Tensor<B, 2, Bool>>,
    /// `[batch, s_q]` document ids (only with `s_q == s_k`).
    pub sequence_id: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> Masks<B> {
    /// `bias`'s parts if they fit `q` `[b, s_q, h, hd]` over `s_k` keys.
    pub(crate) fn of(bias: &crate::mask::AttnBias<B>, q: [usize; 4], s_k: usize) -> Option<Self> {
        let fits = bias.n_heads == q[2] && bias.s_q == q[1] && bias.past + bias.s_q == s_k;
        fits.then(|| Self {
            slopes: bias.slopes.clone(),
            causal: true,
            key_mask: bias.key_mask.clone(),
            sequence_id: bias.sequence_id.clone(),
        })
    }

    /// Whether the parts fit the sizes.
    fn fit(&self, d: &Dims) -> bool {
        self.slopes.as_ref().is_none_or(|s| s.len() == d.heads)
            && self
                .key_mask
                .as_ref()
                .is_none_or(|m| m.dims() == [d.batch, d.seq_k])
            && self
                .sequence_id
                .as_ref()
                .is_none_or(|s| s.dims() == [d.batch, d.seq_q] && d.seq_q == d.seq_k)
    }
}

/// The sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    seq_q: usize,
    seq_k: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    /// The sizes if the shapes fit the kernels: `q` `[b, s_q, h, hd]`, `k` and `v`
    /// `[b, s_k, kvh, hd]` with `kvh` dividing `h`, at least as many keys as queries, and
    /// nothing empty.
    fn of(
        q: &burn::tensor::Shape,
        k: &burn::tensor::Shape,
        v: &burn::tensor::Shape,
    ) -> Option<Self> {
        if q.num_dims() != 4 || k.num_dims() != 4 || k != v {
            return None;
        }
        let d = Self {
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
            && d.head_dim <= MAX_HEAD_DIM
            && [d.batch, d.seq_q, d.head_dim].iter().all(|&n| n > 0)
            // The grid's axes are u32, and positions stay exact in f32.
            && d.heads <= u16::MAX as usize
            && d.batch <= u16::MAX as usize
            && d.seq_k < 1 << 24;
        fits.then_some(d)
    }
}

/// What the kernels are compiled for (one kernel per distinct value).
#[derive(Clone, Copy, Debug)]
struct Config {
    head_dim: usize,
    /// The steps of each loop over `head_dim` that are unrolled (divides it).
    chunk: usize,
    block: usize,
    causal: bool,
    alibi: bool,
    has_key_mask: bool,
    has_sequence_id: bool,
    scale: f32,
}

/// The bias's parts on the device: slopes `[heads]` (f32), key mask `[batch, s_k]` and
/// sequence ids `[batch, s_q]` (i32); an absent part is a one-value placeholder the kernels
/// never read.
#[derive(Clone, Debug)]
struct Parts<R: CubeRuntime> {
    slopes: CubeTensor<R>,
    key_mask: CubeTensor<R>,
    sequence_id: CubeTensor<R>,
}

/// Moves `value` to type `T`, which the caller has established it is (a `TypeId` check).
fn give<S: 'static, T: 'static>(value: S) -> T {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
        .expect("kernels::cube: the primitive type was checked by its TypeId")
}

/// Attention on a CubeCL backend: one graph node on `Autodiff<CubeBackend<R, ..>>` (with
/// [`backward`]), the forward alone on plain `CubeBackend<R, ..>`, for the runtimes built in
/// (`wgpu`, `cuda` features); `Err` with the inputs on every other backend or input the kernels
/// do not cover (see the module docs).
#[allow(clippy::type_complexity)]
pub(crate) fn attention<B: Backend>(
    q: Prim<B>,
    k: Prim<B>,
    v: Prim<B>,
    masks: &Masks<B>,
    scale: f64,
) -> Result<Prim<B>, (Prim<B>, Prim<B>, Prim<B>)> {
    #[cfg(feature = "wgpu")]
    let (q, k, v) = match on::<B, burn::backend::wgpu::WgpuRuntime, f32, i32, u32>(
        q,
        k,
        v,
        masks,
        scale,
        Some(WGPU_LOOP_BUDGET),
    ) {
        Ok(out) => return Ok(out),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let (q, k, v) =
        match on::<B, cubecl::cuda::CudaRuntime, f32, i32, u8>(q, k, v, masks, scale, None) {
            Ok(out) => return Ok(out),
            Err(inputs) => inputs,
        };
    Err((q, k, v))
}

/// Whether `B` is `CubeBackend<R, F, I, BT>` or its default autodiff.
fn is_cube<B: Backend, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>()
-> (bool, bool) {
    let id = TypeId::of::<B>();
    (
        id == TypeId::of::<CubeBackend<R, F, I, BT>>(),
        id == TypeId::of::<Autodiff<CubeBackend<R, F, I, BT>>>(),
    )
}

/// [`attention`] for one concrete backend `CubeBackend<R, F, I, BT>` (and its autodiff).
#[allow(clippy::type_complexity)]
fn on<B: Backend, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: Prim<B>,
    k: Prim<B>,
    v: Prim<B>,
    masks: &Masks<B>,
    scale: f64,
    loop_budget: Option<usize>,
) -> Result<Prim<B>, (Prim<B>, Prim<B>, Prim<B>)> {
    type Inner<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let (plain, tracked) = is_cube::<B, R, F, I, BT>();
    let dtype = q.dtype();
    let same = k.dtype() == dtype && v.dtype() == dtype;
    let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    let dims = Dims::of(&q.shape(), &k.shape(), &v.shape());
    let (Some(d), true, true, true) = (dims, plain || tracked, same, float) else {
        return Err((q, k, v));
    };
    if !masks.fit(&d) {
        return Err((q, k, v));
    }
    // The device's limits: the dtype, and shared memory for two tiles of `block` rows.
    let device: R::Device = give(B::float_device(&q));
    let client = R::client(&device);
    let props = client.properties();
    let supported = props.supports_type(StorageType::from(dtype));
    let shared = props.hardware.max_shared_memory_size;
    let block = [BLOCK, 16, 8]
        .into_iter()
        .find(|&n| n * (2 * d.head_dim + 2) * 4 <= shared);
    let (true, Some(block)) = (supported, block) else {
        return Err((q, k, v));
    };
    if loop_budget.is_some_and(|most| loop_iterations(&d, block) > most) {
        return Err((q, k, v));
    }
    let cfg = Config {
        head_dim: d.head_dim,
        chunk: chunk(d.head_dim),
        block,
        causal: masks.causal,
        alibi: masks.slopes.is_some(),
        has_key_mask: masks.key_mask.is_some(),
        has_sequence_id: masks.sequence_id.is_some(),
        scale: scale as f32,
    };
    let parts = upload::<B, Inner<R, F, I, BT>, R>(masks, &device);

    if plain {
        let (q, k, v): (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) = (give(q), give(k), give(v));
        let (out, _lse) = forward(&d, &cfg, &parts, q, k, v);
        return Ok(give(out));
    }
    type Tracked<R, F, I, BT> = FloatTensor<Autodiff<Inner<R, F, I, BT>>>;
    let (q, k, v): (
        Tracked<R, F, I, BT>,
        Tracked<R, F, I, BT>,
        Tracked<R, F, I, BT>,
    ) = (give(q), give(k), give(v));
    let (qp, kp, vp) = (
        into_contiguous(q.primitive),
        into_contiguous(k.primitive),
        into_contiguous(v.primitive),
    );
    let (out, lse) = forward(&d, &cfg, &parts, qp.clone(), kp.clone(), vp.clone());
    let prep = <FlashBackward as Backward<Inner<R, F, I, BT>, 3>>::prepare::<NoCheckpointing>(
        FlashBackward,
        [q.node, k.node, v.node],
    );
    let out = match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = State {
                dims: d,
                cfg,
                parts,
                q: qp,
                k: kp,
                v: vp,
                out: out.clone(),
                lse,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Ok(give(out))
}

/// The bias's parts as device tensors of the inner backend `BI` (whose primitives are
/// `CubeTensor<R>`; `B` is `BI` or its autodiff, which share the int and bool primitives).
fn upload<B: Backend, BI: Backend, R: CubeRuntime>(
    masks: &Masks<B>,
    device: &R::Device,
) -> Parts<R> {
    let dev: BI::Device = give(device.clone());
    let ints = |t: Option<Tensor<B, 2, Int>>| -> CubeTensor<R> {
        match t {
            Some(t) => give(t.cast(IntDType::I32).into_primitive()),
            None => give(
                Tensor::<BI, 1, Int>::zeros([1], &dev)
                    .cast(IntDType::I32)
                    .into_primitive(),
            ),
        }
    };
    let slopes = masks
        .slopes
        .as_ref()
        .map_or_else(|| vec![0.0f32], |s| s.iter().map(|&x| x as f32).collect());
    let n = slopes.len();
    let slopes = Tensor::<BI, 1>::from_data(TensorData::new(slopes, [n]), &dev)
        .cast(burn::tensor::FloatDType::F32)
        .into_primitive()
        .tensor();
    Parts {
        slopes: give(slopes),
        key_mask: ints(masks.key_mask.clone().map(|m| m.int())),
        sequence_id: ints(masks.sequence_id.clone()),
    }
}

/// The steps of a loop over `head_dim` unrolled at a time: the largest of 16, 8, 4, 2, 1 that
/// divides it.
fn chunk(head_dim: usize) -> usize {
    [16, 8, 4, 2, 1]
        .into_iter()
        .find(|&n| head_dim.is_multiple_of(n))
        .unwrap_or(1)
}

/// A bound on the loop iterations of one unit of any of the three kernels, where each loop over
/// `head_dim` counts `head_dim / chunk`: the forward and `dQ` walk the keys (two such loops per
/// key, and, for a wholly masked row, all keys once more); `dK`/`dV` walk every query row of the
/// group's heads (three such loops per row, and once more for wholly masked rows before the
/// block), loading two tiles per block of rows.
fn loop_iterations(d: &Dims, block: usize) -> usize {
    let group = d.heads / d.kv_heads;
    let per_row = d.head_dim / chunk(d.head_dim);
    let per_tile = 2 * per_row + 1;
    let query_side = d.seq_k * (3 + 3 * per_row) + d.seq_k.div_ceil(block) * per_tile;
    let key_side = group * (d.seq_q * (2 + 6 * per_row) + d.seq_q.div_ceil(block) * per_tile);
    query_side.max(key_side) + 4 * per_row
}

/// The grid of the query-side kernels (forward, `dQ`): (query blocks, heads, batch).
fn query_grid(d: &Dims, block: usize) -> CubeCount {
    CubeCount::Static(
        d.seq_q.div_ceil(block) as u32,
        d.heads as u32,
        d.batch as u32,
    )
}

/// Runs the forward kernel: the output (`q`'s shape and dtype) and the log-sum-exps
/// `[batch, heads, s_q]` (f32).
fn forward<R: CubeRuntime>(
    d: &Dims,
    cfg: &Config,
    parts: &Parts<R>,
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let client = q.client.clone();
    let out = empty_device_dtype(client.clone(), q.device.clone(), q.shape(), q.dtype);
    let lse_shape = burn::tensor::Shape::new([d.batch, d.heads, d.seq_q]);
    let lse = empty_device_dtype(client.clone(), q.device.clone(), lse_shape, DType::F32);
    let dtype = StorageType::from(q.dtype);
    flash_fwd::flash_forward::launch::<R>(
        &client,
        query_grid(d, cfg.block),
        CubeDim::new_1d(cfg.block as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        parts.slopes.clone().into_tensor_arg(),
        parts.key_mask.clone().into_tensor_arg(),
        parts.sequence_id.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        cfg.scale,
        cfg.head_dim,
        cfg.chunk,
        cfg.block,
        cfg.causal,
        cfg.alibi,
        cfg.has_key_mask,
        cfg.has_sequence_id,
        dtype,
    );
    (out, lse)
}

/// What the backward keeps: the inputs, the output and the log-sum-exps (no probabilities).
#[derive(Clone, Debug)]
struct State<R: CubeRuntime> {
    dims: Dims,
    cfg: Config,
    parts: Parts<R>,
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    lse: CubeTensor<R>,
}

/// Runs the two backward kernels: the gradients of `q`, `k` and `v` for `d_out`.
fn backward<R: CubeRuntime>(
    s: &State<R>,
    d_out: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (d, cfg) = (&s.dims, &s.cfg);
    let d_out = into_contiguous(d_out);
    let client = s.q.client.clone();
    let device = s.q.device.clone();
    let dtype = s.q.dtype;
    let empty = |like: &CubeTensor<R>| {
        empty_device_dtype(client.clone(), device.clone(), like.shape(), dtype)
    };
    let (dq, dk, dv) = (empty(&s.q), empty(&s.k), empty(&s.v));
    let delta = empty_device_dtype(client.clone(), device.clone(), s.lse.shape(), DType::F32);
    let storage = StorageType::from(dtype);
    let arg = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
    flash_bwd::flash_backward_dq::launch::<R>(
        &client,
        query_grid(d, cfg.block),
        CubeDim::new_1d(cfg.block as u32),
        arg(&s.q),
        arg(&s.k),
        arg(&s.v),
        arg(&s.out),
        arg(&d_out),
        arg(&s.lse),
        arg(&s.parts.slopes),
        arg(&s.parts.key_mask),
        arg(&s.parts.sequence_id),
        arg(&dq),
        arg(&delta),
        cfg.scale,
        cfg.head_dim,
        cfg.chunk,
        cfg.block,
        cfg.causal,
        cfg.alibi,
        cfg.has_key_mask,
        cfg.has_sequence_id,
        storage,
    );
    let key_grid = CubeCount::Static(
        d.seq_k.div_ceil(cfg.block) as u32,
        d.kv_heads as u32,
        d.batch as u32,
    );
    flash_bwd::flash_backward_dkv::launch::<R>(
        &client,
        key_grid,
        CubeDim::new_1d(cfg.block as u32),
        arg(&s.q),
        arg(&s.k),
        arg(&s.v),
        arg(&d_out),
        arg(&s.lse),
        arg(&delta),
        arg(&s.parts.slopes),
        arg(&s.parts.key_mask),
        arg(&s.parts.sequence_id),
        arg(&dk),
        arg(&dv),
        cfg.scale,
        cfg.head_dim,
        cfg.chunk,
        cfg.block,
        cfg.causal,
        cfg.alibi,
        cfg.has_key_mask,
        cfg.has_sequence_id,
        storage,
    );
    (dq, dk, dv)
}

#[derive(Debug)]
struct FlashBackward;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>
    Backward<CubeBackend<R, F, I, BT>, 3> for FlashBackward
{
    type State = State<R>;

    fn backward(self, ops: Ops<State<R>, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = grads.consume::<CubeBackend<R, F, I, BT>>(&ops.node);
        let d_out = if d_out.dtype == ops.state.q.dtype {
            d_out
        } else {
            burn_cubecl::kernel::cast(d_out, ops.state.q.dtype)
        };
        let (dq, dk, dv) = backward(&ops.state, d_out);
        for (node, g) in ops.parents.iter().zip([dq, dk, dv]) {
            if let Some(node) = node {
                grads.register::<CubeBackend<R, F, I, BT>>(node.id, g);
            }
        }
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod norm_tests;
#[cfg(all(test, feature = "wgpu"))]
mod tests;
