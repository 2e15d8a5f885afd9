//! Collectives on burn tensors, for any backend.
//!
//! - World size 1: the tensor comes back untouched (no copy, no host round trip).
//! - burn-cuda tensors with the NCCL backend (feature `cuda`): NCCL runs on the tensor's device
//!   memory (see `nccl/device.rs`).
//! - Everything else: the tensor is read to the host, the host collective runs, and the result
//!   is written back to the tensor's device with its dtype. f32, f64, bf16 and f16 tensors are
//!   carried; the sums follow [`crate::Element`].
//!
//! The tensors are flat (`Tensor<B, 1>`): the trainer flattens and concatenates gradients or
//! parameter shards into one buffer per collective, which is also what makes them fast.

use burn::prelude::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::communicator::{Backend as CommBackend, Communicator};
use crate::element::Element;
use crate::error::{DistError, Op};

/// Where a backend's tensors go for a collective on this communicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorPath {
    /// World size 1: nothing moves.
    Identity,
    /// Device memory, through NCCL.
    Device,
    /// Through host memory and the TCP mesh.
    Host,
}

/// Runs `$body` with `$T` bound to the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            other => Err(DistError::Tensor(format!(
                "collectives carry f32, f64, bf16 and f16 tensors, not {other:?}"
            ))),
        }
    };
}

impl Communicator {
    /// How [`Communicator::all_reduce_tensor`] and friends move `B`'s tensors.
    pub fn tensor_path<B: Backend>(&self) -> TensorPath {
        match &self.backend {
            CommBackend::Single => TensorPath::Identity,
            CommBackend::Tcp(_) => TensorPath::Host,
            #[cfg(feature = "cuda")]
            CommBackend::Nccl { .. } => {
                if crate::nccl::device::is_cuda_backend::<B>() {
                    TensorPath::Device
                } else {
                    TensorPath::Host
                }
            }
        }
    }

    /// Sums `t` over all ranks ([`Communicator::all_reduce`] on a tensor).
    pub fn all_reduce_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        match self.tensor_path::<B>() {
            TensorPath::Identity => Ok(t),
            #[cfg(feature = "cuda")]
            TensorPath::Device => {
                let result = self.nccl_mut().all_reduce_tensor(t);
                result.map_err(|e| self.blame_after_nccl_failure(e))
            }
            _ => {
                let device = t.device();
                let mut data = read(t)?;
                by_dtype!(data.dtype, T => self.all_reduce(slice_mut::<T>(&mut data)?))?;
                Ok(write(data, &device))
            }
        }
    }

    /// This rank's shard of the sum of `t` over all ranks ([`Communicator::reduce_scatter`]):
    /// `t` has `world_size × s` elements, the result `s`.
    pub fn reduce_scatter_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        let len = t.dims()[0];
        self.check_sharded(
            Op::ReduceScatter,
            len,
            len / self.world_size(),
            "input",
            "output",
        )?;
        match self.tensor_path::<B>() {
            TensorPath::Identity => Ok(t),
            #[cfg(feature = "cuda")]
            TensorPath::Device => {
                let result = self.nccl_mut().reduce_scatter_tensor(t);
                result.map_err(|e| self.blame_after_nccl_failure(e))
            }
            _ => {
                let device = t.device();
                let data = read(t)?;
                let shard = len / self.world_size();
                let out = by_dtype!(data.dtype, T => {
                    let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); shard];
                    self.reduce_scatter(slice::<T>(&data)?, &mut out)?;
                    Ok(TensorData::new(out, [shard]))
                })?;
                Ok(write(out, &device))
            }
        }
    }

    /// Every rank's `t` concatenated in rank order ([`Communicator::all_gather`]).
    pub fn all_gather_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, DistError> {
        match self.tensor_path::<B>() {
            TensorPath::Identity => Ok(t),
            #[cfg(feature = "cuda")]
            TensorPath::Device => {
                let result = self.nccl_mut().all_gather_tensor(t);
                result.map_err(|e| self.blame_after_nccl_failure(e))
            }
            _ => {
                let device = t.device();
                let data = read(t)?;
                let world = self.world_size();
                let out = by_dtype!(data.dtype, T => {
                    let input = slice::<T>(&data)?;
                    let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); input.len() * world];
                    self.all_gather(input, &mut out)?;
                    let len = out.len();
                    Ok(TensorData::new(out, [len]))
                })?;
                Ok(write(out, &device))
            }
        }
    }

    /// `root`'s `t` on every rank ([`Communicator::broadcast`]).
    pub fn broadcast_tensor<B: Backend>(
        &mut self,
        t: Tensor<B, 1>,
        root: usize,
    ) -> Result<Tensor<B, 1>, DistError> {
        self.check_root(root)?;
        match self.tensor_path::<B>() {
            TensorPath::Identity => Ok(t),
            #[cfg(feature = "cuda")]
            TensorPath::Device => {
                let result = self.nccl_mut().broadcast_tensor(t, root);
                result.map_err(|e| self.blame_after_nccl_failure(e))
            }
            _ => {
                let device = t.device();
                let mut data = read(t)?;
                by_dtype!(data.dtype, T => self.broadcast(slice_mut::<T>(&mut data)?, root))?;
                Ok(write(data, &device))
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn nccl_mut(&mut self) -> &mut crate::nccl::NcclComm {
        match &mut self.backend {
            CommBackend::Nccl { nccl, .. } => nccl,
            _ => unreachable!("TensorPath::Device only with the NCCL backend"),
        }
    }
}

/// Reads a tensor to the host (a device sync on GPU backends).
fn read<B: Backend>(t: Tensor<B, 1>) -> Result<TensorData, DistError> {
    t.try_into_data()
        .map_err(|e| DistError::Tensor(format!("reading the tensor to the host failed: {e:?}")))
}

/// Writes host data back to `device`, keeping its dtype.
fn write<B: Backend>(data: TensorData, device: &B::Device) -> Tensor<B, 1> {
    let dtype = data.dtype;
    Tensor::from_data(data, (device, dtype))
}

fn slice<T: Element + burn::tensor::Element>(data: &TensorData) -> Result<&[T], DistError> {
    data.as_slice::<T>()
        .map_err(|e| DistError::Tensor(format!("tensor data is not {}: {e:?}", T::NAME)))
}

fn slice_mut<T: Element + burn::tensor::Element>(
    data: &mut TensorData,
) -> Result<&mut [T], DistError> {
    data.as_mut_slice::<T>().map_err(|e| {
        DistError::Tensor(format!(
            "tensor data is not {}: {e:?}",
            <T as Element>::NAME
        ))
    })
}
