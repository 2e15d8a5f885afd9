//! A burn-cuda tensor's device memory: the one way tessera reaches it (NCCL in `tessera-dist`,
//! cuBLASLt in [`crate::lt`]).
//!
//! tessera builds burn-cuda without its `fusion` feature, so `burn::backend::Cuda`'s float
//! primitive is a `CubeTensor<CudaRuntime>`: a compute client, a memory handle and a layout. A
//! generic tensor is recognised as one at run time (its primitive's `TypeId`), so callers need
//! no extra trait bound. Autodiff and fusion tensors are other types: callers unwrap autodiff
//! themselves (its `primitive` field), and fusion is not built.
//!
//! Ordering. cubecl runs kernels on its own CUDA stream, which it does not expose. Before other
//! code reads a tensor on another stream, [`sync`] waits for every kernel cubecl queued on the
//! calling thread's stream (so the input is written); that code then runs on its own stream
//! and must wait for it before handing results back (so kernels cubecl queues next see them).
//! Both share the device's primary context (cubecl and cudarc each retain it), so cubecl's
//! device pointers are valid there.

use std::any::{Any, TypeId};

use burn::prelude::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

use crate::CudaError;

/// A burn-cuda float tensor's primitive.
pub type CudaTensor = CubeTensor<CudaRuntime>;

/// True when `B`'s float tensors are burn-cuda's (`CubeTensor<CudaRuntime>`).
pub fn is_cuda_backend<B: Backend>() -> bool {
    TypeId::of::<B::FloatTensorPrimitive>() == TypeId::of::<CudaTensor>()
}

/// `t`'s primitive, burn-cuda's.
///
/// # Panics
/// If `B` is not burn-cuda: check [`is_cuda_backend`] first.
pub fn into_cuda<B: Backend, const D: usize>(t: Tensor<B, D>) -> CudaTensor {
    let primitive: Box<dyn Any> = Box::new(t.into_primitive().tensor());
    *primitive
        .downcast::<CudaTensor>()
        .unwrap_or_else(|_| panic!("into_cuda: not a burn-cuda tensor (check is_cuda_backend)"))
}

/// A burn-cuda primitive as a tensor of `B`.
///
/// # Panics
/// If `B` is not burn-cuda: check [`is_cuda_backend`] first.
pub fn from_cuda<B: Backend, const D: usize>(t: CudaTensor) -> Tensor<B, D> {
    let primitive: Box<dyn Any> = Box::new(t);
    let primitive = *primitive
        .downcast::<B::FloatTensorPrimitive>()
        .unwrap_or_else(|_| panic!("from_cuda: not a burn-cuda backend (check is_cuda_backend)"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// `t` with a contiguous row-major layout (a copy kernel, queued on cubecl's stream, only when
/// it is a strided view).
pub fn contiguous(t: CudaTensor) -> CudaTensor {
    if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// Waits until every kernel cubecl queued for `t`'s device on this thread has finished.
pub fn sync(t: &CudaTensor) -> Result<(), CudaError> {
    cubecl::future::block_on(t.client.sync())
        .map_err(|e| CudaError::Cubecl(format!("synchronising burn's CUDA stream failed: {e:?}")))
}

/// The tensor, contiguous, after cubecl finished writing it: [`contiguous`], then [`sync`].
pub fn ready(t: CudaTensor) -> Result<CudaTensor, CudaError> {
    let t = contiguous(t);
    sync(&t)?;
    Ok(t)
}

/// The device address of `t`'s first element (cubecl's slice offset included). The guard keeps
/// the memory alive: hold it until the work that uses the address has finished.
pub fn device_ptr(t: &CudaTensor) -> Result<(u64, impl Sized + use<>), CudaError> {
    let resource = t.client.get_resource(t.handle.clone()).map_err(|e| {
        CudaError::Cubecl(format!("cannot reach the tensor's device memory: {e:?}"))
    })?;
    Ok((resource.resource().ptr, resource))
}

/// A new contiguous tensor of `shape` and `dtype` on `like`'s device, uninitialised, allocated
/// by cubecl (so burn owns and frees it).
pub fn empty(like: &CudaTensor, shape: Shape, dtype: DType) -> CudaTensor {
    let handle = like.client.empty(shape.num_elements() * dtype.size());
    CudaTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        dtype,
    )
}

/// The CUDA device ordinal of `t`.
pub fn ordinal(t: &CudaTensor) -> usize {
    t.device.index
}
