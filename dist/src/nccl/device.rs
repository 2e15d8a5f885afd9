//! NCCL on the device memory of burn-cuda tensors.
//!
//! tessera builds burn-cuda without its `fusion` feature, so `burn::backend::Cuda`'s float
//! primitive is a `CubeTensor<CudaRuntime>`: a compute client, a memory handle and a layout. A
//! generic `Tensor<B, 1>` is recognised as one at run time (its primitive's `TypeId`), so the
//! tensor layer needs no extra trait bound. Autodiff and fusion tensors are other types: they
//! take the host path ([`crate::tensor::TensorPath::Host`]).
//!
//! Ordering. cubecl runs kernels on its own CUDA stream, which it does not expose. Before NCCL
//! touches a tensor, `client.sync()` waits for every kernel cubecl queued (so the input is
//! written); NCCL then runs on this communicator's stream, and [`NcclComm::run`] waits for it
//! before returning (so kernels cubecl queues next see the result). Both share the device's
//! primary context, so cubecl's device pointers are valid for NCCL. The other design, running
//! NCCL on cubecl's stream, needs a patched cubecl-cuda; which costs less was not measured (no
//! GPU here; see the README).

use std::any::Any;

use burn::prelude::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::nccl::{result as nccl, sys};

use super::NcclComm;
use crate::error::{DistError, Op};

type CudaTensor = CubeTensor<CudaRuntime>;

/// True when `B`'s float tensors are burn-cuda's (`CubeTensor<CudaRuntime>`).
pub fn is_cuda_backend<B: Backend>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<CudaTensor>()
}

fn to_cuda<B: Backend>(t: Tensor<B, 1>) -> CudaTensor {
    let primitive: Box<dyn Any> = Box::new(t.into_primitive().tensor());
    *primitive
        .downcast::<CudaTensor>()
        .expect("callers check is_cuda_backend first")
}

fn from_cuda<B: Backend>(t: CudaTensor) -> Tensor<B, 1> {
    let primitive: Box<dyn Any> = Box::new(t);
    let primitive = *primitive
        .downcast::<B::FloatTensorPrimitive>()
        .expect("callers check is_cuda_backend first");
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// NCCL's name for a dtype, and its size in bytes.
fn nccl_dtype(dtype: DType) -> Result<(sys::ncclDataType_t, usize), DistError> {
    Ok(match dtype {
        DType::F32 => (sys::ncclDataType_t::ncclFloat32, 4),
        DType::F64 => (sys::ncclDataType_t::ncclFloat64, 8),
        DType::BF16 => (sys::ncclDataType_t::ncclBfloat16, 2),
        DType::F16 => (sys::ncclDataType_t::ncclFloat16, 2),
        other => {
            return Err(DistError::Tensor(format!(
                "NCCL collectives carry f32, f64, bf16 and f16 tensors, not {other:?}"
            )));
        }
    })
}

/// A new contiguous tensor of `len` elements on `like`'s device (uninitialised).
fn empty_like(like: &CudaTensor, len: usize, elem_bytes: usize) -> CudaTensor {
    let handle = like.client.empty(len * elem_bytes);
    CudaTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        [len].into(),
        handle,
        like.dtype,
    )
}

/// The tensor, contiguous, after cubecl finished writing it.
fn ready(t: CudaTensor, op: Op) -> Result<CudaTensor, DistError> {
    let t = if t.is_contiguous() {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    };
    cubecl::future::block_on(t.client.sync()).map_err(|e| DistError::Nccl {
        detail: format!("{op}: synchronising burn's CUDA stream failed: {e:?}"),
        culprit: None,
    })?;
    Ok(t)
}

/// The device address of `t`'s first element. The guard keeps the memory alive.
fn device_ptr(t: &CudaTensor, op: Op) -> Result<(u64, impl Sized + use<>), DistError> {
    let resource = t
        .client
        .get_resource(t.handle.clone())
        .map_err(|e| DistError::Nccl {
            detail: format!("{op}: cannot reach the tensor's device memory: {e:?}"),
            culprit: None,
        })?;
    Ok((resource.resource().ptr, resource))
}

impl NcclComm {
    pub(crate) fn all_reduce_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        let op = Op::AllReduce;
        let input = ready(to_cuda(t), op)?;
        let (dtype, elem) = nccl_dtype(input.dtype)?;
        let len = input.meta.shape().num_elements();
        // In place when nothing else holds the buffer; else into a fresh one.
        let output = if input.can_mut() {
            input.clone()
        } else {
            empty_like(&input, len, elem)
        };
        let (src, _src_guard) = device_ptr(&input, op)?;
        let (dst, _dst_guard) = device_ptr(&output, op)?;
        // SAFETY: both pointers address `len` elements of `dtype` and stay alive (guards) until
        // `run` has waited for the call.
        unsafe {
            self.run(op, |comm, stream| {
                nccl::all_reduce(
                    src as *const _,
                    dst as *mut _,
                    len,
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            })?;
        }
        Ok(from_cuda(output))
    }

    pub(crate) fn reduce_scatter_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        let op = Op::ReduceScatter;
        let input = ready(to_cuda(t), op)?;
        let (dtype, elem) = nccl_dtype(input.dtype)?;
        let shard = input.meta.shape().num_elements() / self.world_size();
        let output = empty_like(&input, shard, elem);
        let (src, _src_guard) = device_ptr(&input, op)?;
        let (dst, _dst_guard) = device_ptr(&output, op)?;
        // SAFETY: as in all_reduce_tensor; the input holds world × shard elements.
        unsafe {
            self.run(op, |comm, stream| {
                nccl::reduce_scatter(
                    src as *const _,
                    dst as *mut _,
                    shard,
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            })?;
        }
        Ok(from_cuda(output))
    }

    pub(crate) fn all_gather_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        let op = Op::AllGather;
        let input = ready(to_cuda(t), op)?;
        let (dtype, elem) = nccl_dtype(input.dtype)?;
        let len = input.meta.shape().num_elements();
        let output = empty_like(&input, len * self.world_size(), elem);
        let (src, _src_guard) = device_ptr(&input, op)?;
        let (dst, _dst_guard) = device_ptr(&output, op)?;
        // SAFETY: as in all_reduce_tensor; the output holds world × len elements.
        unsafe {
            self.run(op, |comm, stream| {
                nccl::all_gather(src as *const _, dst as *mut _, len, dtype, comm, stream)
            })?;
        }
        Ok(from_cuda(output))
    }

    pub(crate) fn broadcast_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
        root: usize,
    ) -> Result<Tensor<B, 1>, DistError> {
        let op = Op::Broadcast;
        let input = ready(to_cuda(t), op)?;
        let (dtype, elem) = nccl_dtype(input.dtype)?;
        let len = input.meta.shape().num_elements();
        let output = if input.can_mut() {
            input.clone()
        } else {
            empty_like(&input, len, elem)
        };
        let (src, _src_guard) = device_ptr(&input, op)?;
        let (dst, _dst_guard) = device_ptr(&output, op)?;
        // SAFETY: as in all_reduce_tensor.
        unsafe {
            self.run(op, |comm, stream| {
                nccl::broadcast(
                    src as *const _,
                    dst as *mut _,
                    len,
                    dtype,
                    root as i32,
                    comm,
                    stream,
                )
            })?;
        }
        Ok(from_cuda(output))
    }
}
