//! `x · wᵀ` through cuBLASLt on burn-cuda, as one autodiff node whose backward runs
//! `∂x = g · w` and `∂w = gᵀ · x` through cuBLASLt too.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{TensorMetadata, TensorPrimitive};
use burn_cubecl::CubeBackend;
use cubecl::cuda::CudaRuntime;
use tessera_cuda::lt;
use tessera_cuda::memory::CudaTensor;

use super::report;
use crate::kernels::switches;

/// burn-cuda without fusion: the backend whose float primitive is a [`CudaTensor`].
type Inner = CubeBackend<CudaRuntime, f32, i32, u8>;
/// Its default autodiff.
type Tracked = Autodiff<Inner>;
/// A float primitive of backend `B`.
type Prim<B> = FloatTensor<B>;

/// Which of the two specialised backends `B` is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Plain,
    Tracked,
    Other,
}

fn which<B: Backend>() -> Which {
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Inner>() {
        Which::Plain
    } else if id == TypeId::of::<Tracked>() {
        Which::Tracked
    } else {
        Which::Other
    }
}

/// Moves `value` to type `T`, which the caller has established it is (a `TypeId` check).
fn give<S: 'static, T: 'static>(value: S) -> T {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
        .expect("kernels::cuda: the backend was checked by its TypeId")
}

/// Whether the cuBLASLt path takes `a` and `b` (before any work): switched on, one of the two
/// backends, 2-D matrices of one dtype it computes (bf16, f16; f32 with TF32 opted in).
fn takes<B: Backend>(a: &Prim<B>, b: &Prim<B>) -> bool {
    switches::cublaslt()
        && which::<B>() != Which::Other
        && a.shape().num_dims() == 2
        && b.shape().num_dims() == 2
        && a.dtype() == b.dtype()
        && lt::gemm_type(a.dtype(), switches::tf32()).is_some()
}

/// `C = op(A) · op(B)` through cuBLASLt (see `tessera_cuda::lt::matmul`), reporting a fault.
fn gemm(a: &CudaTensor, trans_a: bool, b: &CudaTensor, trans_b: bool) -> Option<CudaTensor> {
    lt::matmul(a, trans_a, b, trans_b, switches::tf32())
        .inspect_err(report)
        .ok()
}

/// `x · wᵀ` (`x`: `[rows, d_in]`, `w`: `[d_out, d_in]`) through cuBLASLt: one graph node on
/// `Autodiff<Inner>`, the product alone on `Inner`; `Err` with the inputs untouched elsewhere,
/// for inputs it does not take, or when cuBLASLt fails.
pub(crate) fn linear<B: Backend>(x: Prim<B>, w: Prim<B>) -> Result<Prim<B>, (Prim<B>, Prim<B>)> {
    if !takes::<B>(&x, &w) || x.shape()[1] != w.shape()[1] {
        return Err((x, w));
    }
    if which::<B>() == Which::Plain {
        let (x, w): (CudaTensor, CudaTensor) = (give(x), give(w));
        return match gemm(&x, false, &w, true) {
            Some(y) => Ok(give(y)),
            None => Err((give(x), give(w))),
        };
    }
    let (x, w): (Prim<Tracked>, Prim<Tracked>) = (give(x), give(w));
    let Some(y) = gemm(&x.primitive, false, &w.primitive, true) else {
        return Err((give(x), give(w)));
    };
    let prep = <LinearBackward as Backward<Inner, 2>>::prepare::<NoCheckpointing>(
        LinearBackward,
        [x.node, w.node],
    );
    let out = match prep.compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Ok(give(out))
}

/// A linear layer's backward products `(g · w, gᵀ · x)` through cuBLASLt, as constants (no
/// graph is built); `Err` with the inputs untouched as for [`linear`].
#[allow(clippy::type_complexity)]
pub(crate) fn linear_backward<B: Backend>(
    x: Prim<B>,
    w: Prim<B>,
    g: Prim<B>,
) -> Result<(Prim<B>, Prim<B>), (Prim<B>, Prim<B>, Prim<B>)> {
    let fits = takes::<B>(&x, &w) && g.dtype() == x.dtype() && g.shape().num_dims() == 2;
    if !fits {
        return Err((x, w, g));
    }
    // The raw CUDA tensors; under autodiff, their values (nothing here is tracked).
    let plain = which::<B>() == Which::Plain;
    let raw = |t: Prim<B>| -> CudaTensor {
        if plain {
            give(t)
        } else {
            <Tracked as AutodiffBackend>::inner(give(t))
        }
    };
    let wrap = |t: CudaTensor| -> Prim<B> {
        if plain {
            give(t)
        } else {
            give(<Tracked as AutodiffBackend>::from_inner(t))
        }
    };
    let (xr, wr, gr) = (raw(x), raw(w), raw(g));
    match (gemm(&gr, false, &wr, false), gemm(&gr, true, &xr, false)) {
        (Some(dx), Some(dw)) => Ok((wrap(dx), wrap(dw))),
        _ => Err((wrap(xr), wrap(wr), wrap(gr))),
    }
}

/// How many backward products of [`linear`]'s nodes fell back to burn's matmul after the
/// forward had run through cuBLASLt (a cuBLASLt failure in the backward, which cannot return
/// an error). `tessera kernel-check` fails when it grows.
pub(crate) fn fallbacks() -> usize {
    FALLBACKS.load(Ordering::Relaxed)
}

static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

/// `op(A) · op(B)` through cuBLASLt, else (counted in [`fallbacks`]) through burn's matmul.
fn gemm_or_matmul(a: &CudaTensor, trans_a: bool, b: &CudaTensor, trans_b: bool) -> CudaTensor {
    if let Some(c) = gemm(a, trans_a, b, trans_b) {
        return c;
    }
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    let t = |p: &CudaTensor, trans: bool| {
        let t = Tensor::<Inner, 2>::from_primitive(TensorPrimitive::Float(p.clone()));
        if trans { t.transpose() } else { t }
    };
    t(a, trans_a)
        .matmul(t(b, trans_b))
        .into_primitive()
        .tensor()
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Inner, 2> for LinearBackward {
    /// `x` (`[rows, d_in]`) and `w` (`[d_out, d_in]`).
    type State = (CudaTensor, CudaTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w) = &ops.state;
        let g = grads.consume::<Inner>(&ops.node); // [rows, d_out]
        let g = if g.dtype == x.dtype {
            g
        } else {
            burn_cubecl::kernel::cast(g, x.dtype)
        };
        let [x_node, w_node] = &ops.parents;
        if let Some(node) = x_node {
            grads.register::<Inner>(node.id, gemm_or_matmul(&g, false, w, false));
        }
        if let Some(node) = w_node {
            grads.register::<Inner>(node.id, gemm_or_matmul(&g, true, x, false));
        }
    }
}
