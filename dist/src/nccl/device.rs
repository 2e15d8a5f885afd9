//! NCCL on the device memory of burn-cuda tensors.
//!
//! The tensor side (recognising a burn-cuda tensor by its primitive's `TypeId`, making it
//! contiguous, synchronising cubecl's stream, reaching its device pointer, allocating outputs)
//! is `tessera_cuda::memory`, shared with the model's cuBLASLt GEMMs. Autodiff and fusion
//! tensors are other types: they take the host path ([`crate::tensor::TensorPath::Host`]).
//!
//! Ordering. cubecl runs kernels on its own CUDA stream, which it does not expose. Before NCCL
//! touches a tensor, `ready` synchronises that stream (so the input is written); NCCL then runs
//! on this communicator's stream, and [`NcclComm::run`] waits for it before returning (so
//! kernels cubecl queues next see the result). Both share the device's primary context, so
//! cubecl's device pointers are valid for NCCL. The other design, running NCCL on cubecl's
//! stream, needs a patched cubecl-cuda; which costs less was not measured (no GPU here; see the
//! README).

use burn::prelude::Backend;
use burn::tensor::{DType, Shape, Tensor};
use cudarc::nccl::{result as nccl, sys};
use tessera_cuda::CudaError;
use tessera_cuda::memory::{self, CudaTensor};

use super::NcclComm;
use crate::error::{DistError, Op};

pub use tessera_cuda::memory::is_cuda_backend;

// Callers check `is_cuda_backend` first (`TensorPath::Device`).
fn to_cuda<B: Backend>(t: Tensor<B, 1>) -> CudaTensor {
    memory::into_cuda(t)
}

fn from_cuda<B: Backend>(t: CudaTensor) -> Tensor<B, 1> {
    memory::from_cuda(t)
}

/// NCCL's name for a dtype.
fn nccl_dtype(dtype: DType) -> Result<sys::ncclDataType_t, DistError> {
    Ok(match dtype {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::F64 => sys::ncclDataType_t::ncclFloat64,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        other => {
            return Err(DistError::Tensor(format!(
                "NCCL collectives carry f32, f64, bf16 and f16 tensors, not {other:?}"
            )));
        }
    })
}

/// A new contiguous tensor of `len` elements on `like`'s device, of its dtype (uninitialised).
fn empty_like(like: &CudaTensor, len: usize) -> CudaTensor {
    memory::empty(like, Shape::new([len]), like.dtype)
}

fn nccl_err(op: Op) -> impl Fn(CudaError) -> DistError {
    move |e| DistError::Nccl {
        detail: format!("{op}: {e}"),
        culprit: None,
    }
}

/// The tensor, contiguous, after cubecl finished writing it.
fn ready(t: CudaTensor, op: Op) -> Result<CudaTensor, DistError> {
    memory::ready(t).map_err(nccl_err(op))
}

/// The device address of `t`'s first element. The guard keeps the memory alive.
fn device_ptr(t: &CudaTensor, op: Op) -> Result<(u64, impl Sized + use<>), DistError> {
    memory::device_ptr(t).map_err(nccl_err(op))
}

impl NcclComm {
    pub(crate) fn all_reduce_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        let op = Op::AllReduce;
        let input = ready(to_cuda(t), op)?;
        let dtype = nccl_dtype(input.dtype)?;
        let len = input.meta.shape().num_elements();
        // In place when nothing else holds the buffer; else into a fresh one.
        let output = if input.can_mut() {
            input.clone()
        } else {
            empty_like(&input, len)
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
        let dtype = nccl_dtype(input.dtype)?;
        let shard = input.meta.shape().num_elements() / self.world_size();
        let output = empty_like(&input, shard);
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
        let dtype = nccl_dtype(input.dtype)?;
        let len = input.meta.shape().num_elements();
        let output = empty_like(&input, len * self.world_size());
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
        let dtype = nccl_dtype(input.dtype)?;
        let len = input.meta.shape().num_elements();
        let output = if input.can_mut() {
            input.clone()
        } else {
            empty_like(&input, len)
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
