//! LayerNorm/RMSNorm (one autodiff graph node, forward and backward) and the per-row
//! cross-entropy of the unembedding loss, as CubeCL kernels for burn's wgpu and CUDA backends.
//!
//! Why: composed, a LayerNorm is about ten tensor ops under autodiff (mean, centre, square,
//! mean, add, sqrt, reciprocal, two products, a sum), each a kernel launch and a full pass over
//! the activations, several of them kept for the backward. Here the forward is one kernel that
//! keeps two f32 values per row (the mean and `1/sqrt(var + eps)`), and the backward two: the
//! input's gradient row by row, and the weight's and bias's as column sums per chunk of rows,
//! whose chunks are then added in order. The cross-entropy's composed path builds the log-softmax
//! and a scattered one-hot over the whole `[rows, vocab]` block; the kernel reads the logits
//! three times and writes the loss and the gradient once.
//!
//! Arithmetic in f32 whatever the input dtype (f32, f16, bf16 where the device has it), sums in
//! a fixed tree order. Refused (the caller runs the composed path): other backends, mixed
//! dtypes, and shapes the kernels do not cover (an empty row, a weight that is not `[d]`).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, IntDType, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::{CubeCount, CubeDim, StorageType};

use super::norm_kernels;
use super::{give, is_cube};

/// Units per cube (a power of two: the shared-memory sums halve it).
const UNITS: usize = 128;
/// Rows per partial column sum in the weight's gradient.
const CHUNK: usize = 256;
/// The most cubes on one grid axis.
const MAX_AXIS: usize = 65_535;

/// A grid of one cube per row (see [`norm_kernels::row_index`]).
fn row_grid(rows: usize) -> CubeCount {
    let x = rows.clamp(1, MAX_AXIS);
    CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1)
}

/// The norm's settings.
#[derive(Clone, Copy, Debug)]
struct NormConfig {
    rows: usize,
    d: usize,
    eps: f32,
    rms: bool,
}

/// [`crate::kernels::norm`] on a CubeCL backend: one graph node on
/// `Autodiff<CubeBackend<R, ..>>`, the forward alone on plain `CubeBackend<R, ..>`; `Err` with
/// the inputs elsewhere.
#[allow(clippy::type_complexity)]
pub(crate) fn norm<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    eps: f64,
    rms: bool,
) -> Result<FloatTensor<B>, (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>)> {
    #[cfg(feature = "wgpu")]
    let (x, weight, bias) = match norm_on::<B, burn::backend::wgpu::WgpuRuntime, f32, i32, u32>(
        x, weight, bias, eps, rms,
    ) {
        Ok(y) => return Ok(y),
        Err(inputs) => inputs,
    };
    #[cfg(feature = "cuda")]
    let (x, weight, bias) =
        match norm_on::<B, cubecl::cuda::CudaRuntime, f32, i32, u8>(x, weight, bias, eps, rms) {
            Ok(y) => return Ok(y),
            Err(inputs) => inputs,
        };
    Err((x, weight, bias))
}

#[allow(clippy::type_complexity)]
fn norm_on<B: Backend, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    eps: f64,
    rms: bool,
) -> Result<FloatTensor<B>, (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>)> {
    type Inner<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let (plain, tracked) = is_cube::<B, R, F, I, BT>();
    let shape = x.shape();
    let d = shape.as_slice().last().copied().unwrap_or(0);
    let dtype = x.dtype();
    let fits = (plain || tracked)
        && d > 0
        && weight.shape().as_slice() == [d]
        && weight.dtype() == dtype
        && bias
            .as_ref()
            .is_none_or(|b| b.shape().as_slice() == [d] && b.dtype() == dtype)
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    if !fits {
        return Err((x, weight, bias));
    }
    let device: R::Device = give(B::float_device(&x));
    if !R::client(&device)
        .properties()
        .supports_type(StorageType::from(dtype))
    {
        return Err((x, weight, bias));
    }
    let cfg = NormConfig {
        rows: shape.num_elements() / d,
        d,
        eps: eps as f32,
        rms,
    };
    if plain {
        let (x, w): (CubeTensor<R>, CubeTensor<R>) = (give(x), give(weight));
        let b: Option<CubeTensor<R>> = bias.map(give);
        let (y, _, _) = norm_forward(&cfg, x, w, b);
        return Ok(give(y));
    }
    type Tracked<R, F, I, BT> = FloatTensor<Autodiff<Inner<R, F, I, BT>>>;
    let (x, w): (Tracked<R, F, I, BT>, Tracked<R, F, I, BT>) = (give(x), give(weight));
    let b: Option<Tracked<R, F, I, BT>> = bias.map(give);
    let xp = into_contiguous(x.primitive);
    let wp = into_contiguous(w.primitive);
    let bp = b.as_ref().map(|b| into_contiguous(b.primitive.clone()));
    let (y, mean, rstd) = norm_forward(&cfg, xp.clone(), wp.clone(), bp);
    let state = NormState {
        cfg,
        x: xp,
        weight: wp,
        mean,
        rstd,
    };
    let out =
        match b {
            Some(b) => {
                let prep = <NormBackward as Backward<Inner<R, F, I, BT>, 3>>::prepare::<
                    NoCheckpointing,
                >(NormBackward, [x.node, w.node, b.node]);
                match prep.compute_bound().stateful() {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
            None => {
                let prep = <NormBackward as Backward<Inner<R, F, I, BT>, 2>>::prepare::<
                    NoCheckpointing,
                >(NormBackward, [x.node, w.node]);
                match prep.compute_bound().stateful() {
                    OpsKind::Tracked(prep) => prep.finish(state, y),
                    OpsKind::UnTracked(prep) => prep.finish(y),
                }
            }
        };
    Ok(give(out))
}

/// Runs the forward kernel: `y` (`x`'s shape and dtype) and the per-row mean and
/// `1/sqrt(var + eps)` (`[rows]`, f32).
fn norm_forward<R: CubeRuntime>(
    cfg: &NormConfig,
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let x = into_contiguous(x);
    let weight = into_contiguous(weight);
    let has_bias = bias.is_some();
    // Without a bias the kernel never reads this argument.
    let bias = bias.map_or_else(|| weight.clone(), into_contiguous);
    let (client, device) = (x.client.clone(), x.device.clone());
    let y = empty_device_dtype(client.clone(), device.clone(), x.shape(), x.dtype);
    let per_row = burn::tensor::Shape::new([cfg.rows]);
    let mean = empty_device_dtype(client.clone(), device.clone(), per_row.clone(), DType::F32);
    let rstd = empty_device_dtype(client.clone(), device, per_row, DType::F32);
    let dtype = StorageType::from(x.dtype);
    norm_kernels::norm_forward::launch::<R>(
        &client,
        row_grid(cfg.rows),
        CubeDim::new_1d(UNITS as u32),
        x.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        cfg.rows,
        cfg.d,
        cfg.eps,
        UNITS,
        cfg.rms,
        has_bias,
        dtype,
    );
    (y, mean, rstd)
}

/// What the backward keeps: the input, the weight and two f32 values per row.
#[derive(Clone, Debug)]
struct NormState<R: CubeRuntime> {
    cfg: NormConfig,
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    mean: CubeTensor<R>,
    rstd: CubeTensor<R>,
}

#[derive(Debug)]
struct NormBackward;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement, const N: usize>
    Backward<CubeBackend<R, F, I, BT>, N> for NormBackward
{
    type State = NormState<R>;

    fn backward(self, ops: Ops<NormState<R>, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        type Inner<R, F, I, BT> = CubeBackend<R, F, I, BT>;
        let s = &ops.state;
        let dy = grads.consume::<Inner<R, F, I, BT>>(&ops.node);
        let dy = into_contiguous(if dy.dtype == s.x.dtype {
            dy
        } else {
            burn_cubecl::kernel::cast(dy, s.x.dtype)
        });
        let (client, device) = (s.x.client.clone(), s.x.device.clone());
        let dtype = StorageType::from(s.x.dtype);
        let arg = |t: &CubeTensor<R>| t.clone().into_tensor_arg();
        let (x_node, params) = ops.parents.split_first().expect("x is the first parent");
        if let Some(node) = x_node {
            let dx = empty_device_dtype(client.clone(), device.clone(), s.x.shape(), s.x.dtype);
            norm_kernels::norm_backward_x::launch::<R>(
                &client,
                row_grid(s.cfg.rows),
                CubeDim::new_1d(UNITS as u32),
                arg(&s.x),
                arg(&s.weight),
                arg(&dy),
                arg(&s.mean),
                arg(&s.rstd),
                arg(&dx),
                s.cfg.rows,
                s.cfg.d,
                UNITS,
                s.cfg.rms,
                dtype,
            );
            grads.register::<Inner<R, F, I, BT>>(node.id, dx);
        }
        if params.iter().all(Option::is_none) {
            return;
        }
        let chunks = s.cfg.rows.div_ceil(CHUNK).max(1);
        let parts = burn::tensor::Shape::new([chunks, s.cfg.d]);
        let dw = empty_device_dtype(client.clone(), device.clone(), parts.clone(), DType::F32);
        let db = empty_device_dtype(client.clone(), device, parts, DType::F32);
        norm_kernels::norm_backward_params::launch::<R>(
            &client,
            CubeCount::Static(s.cfg.d.div_ceil(UNITS) as u32, chunks as u32, 1),
            CubeDim::new_1d(UNITS as u32),
            arg(&s.x),
            arg(&dy),
            arg(&s.mean),
            arg(&s.rstd),
            arg(&dw),
            arg(&db),
            s.cfg.rows,
            s.cfg.d,
            UNITS,
            CHUNK,
            dtype,
        );
        // The chunks' partial sums, added in order, in the weight's dtype.
        let total = |t: CubeTensor<R>| -> CubeTensor<R> {
            let t = Tensor::<Inner<R, F, I, BT>, 2>::from_primitive(TensorPrimitive::Float(t))
                .sum_dim(0)
                .reshape([s.cfg.d])
                .cast(burn::tensor::FloatDType::from(s.weight.dtype));
            t.into_primitive().tensor()
        };
        for (node, g) in params.iter().zip([dw, db]) {
            if let Some(node) = node {
                grads.register::<Inner<R, F, I, BT>>(node.id, total(g));
            }
        }
    }
}

/// [`crate::kernels::cross_entropy_rows`] on a CubeCL backend (plain, or its autodiff with the
/// logits as a constant: that function builds no graph); `Err` with the inputs elsewhere, or
/// for logits that are not f32.
#[allow(clippy::type_complexity)]
pub(crate) fn cross_entropy<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    grad: bool,
) -> Result<(FloatTensor<B>, Option<FloatTensor<B>>), (FloatTensor<B>, IntTensor<B>)> {
    #[cfg(feature = "wgpu")]
    let (logits, targets) =
        match cross_entropy_on::<B, burn::backend::wgpu::WgpuRuntime, f32, i32, u32>(
            logits, targets, grad,
        ) {
            Ok(out) => return Ok(out),
            Err(inputs) => inputs,
        };
    #[cfg(feature = "cuda")]
    let (logits, targets) =
        match cross_entropy_on::<B, cubecl::cuda::CudaRuntime, f32, i32, u8>(logits, targets, grad)
        {
            Ok(out) => return Ok(out),
            Err(inputs) => inputs,
        };
    Err((logits, targets))
}

#[allow(clippy::type_complexity)]
fn cross_entropy_on<B: Backend, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    grad: bool,
) -> Result<(FloatTensor<B>, Option<FloatTensor<B>>), (FloatTensor<B>, IntTensor<B>)> {
    type Inner<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    type Tracked<R, F, I, BT> = Autodiff<Inner<R, F, I, BT>>;
    let (plain, tracked) = is_cube::<B, R, F, I, BT>();
    let dims = logits.shape().to_vec();
    let fits = (plain || tracked)
        && dims.len() == 2
        && dims[1] > 0
        && targets.shape().as_slice() == [dims[0], 1]
        && logits.dtype() == DType::F32;
    if !fits {
        return Err((logits, targets));
    }
    let (rows, v) = (dims[0], dims[1]);
    let x: CubeTensor<R> = if plain {
        give(logits)
    } else {
        Tracked::<R, F, I, BT>::inner(give(logits))
    };
    // Autodiff shares the inner backend's int primitive.
    let targets: IntTensor<Inner<R, F, I, BT>> = give(targets);
    let targets: CubeTensor<R> = Tensor::<Inner<R, F, I, BT>, 2, Int>::from_primitive(targets)
        .cast(IntDType::I32)
        .reshape([rows])
        .into_primitive();
    let x = into_contiguous(x);
    let (client, device) = (x.client.clone(), x.device.clone());
    let loss = empty_device_dtype(
        client.clone(),
        device.clone(),
        burn::tensor::Shape::new([rows, 1]),
        DType::F32,
    );
    // Without `grad` the kernel writes no gradient; a one-value placeholder stands in.
    let g_shape = burn::tensor::Shape::new(if grad { [rows, v] } else { [1, 1] });
    let g = empty_device_dtype(client.clone(), device, g_shape, DType::F32);
    norm_kernels::cross_entropy_rows::launch::<R>(
        &client,
        row_grid(rows),
        CubeDim::new_1d(UNITS as u32),
        x.into_tensor_arg(),
        into_contiguous(targets).into_tensor_arg(),
        loss.clone().into_tensor_arg(),
        g.clone().into_tensor_arg(),
        rows,
        v,
        UNITS,
        grad,
    );
    let out = |t: CubeTensor<R>| -> FloatTensor<B> {
        if plain {
            give(t)
        } else {
            give(Tracked::<R, F, I, BT>::from_inner(t))
        }
    };
    Ok((out(loss), grad.then(|| out(g))))
}
