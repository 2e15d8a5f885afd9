//! A self-check for one GPU: every collective through NCCL at world size 1, on burn-cuda
//! tensors, compared bit for bit with the host path, and timed against it.
//!
//! World size 1 is what a single lent GPU can run. It proves the device path end to end
//! (library loading, unique id, communicator init, cubecl pointers, stream ordering, dtypes,
//! in-place and out-of-place buffers); it cannot prove the multi-rank sums, which NCCL computes.

use std::time::Instant;

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::{DType, Tensor, TensorData};

use crate::communicator::Communicator;
use crate::env::RankEnv;
use crate::error::{DistError, Op};
use crate::rendezvous::RendezvousConfig;
use crate::tensor::TensorPath;

/// One collective checked on one dtype.
#[derive(Debug, Clone)]
pub struct OpCheck {
    pub op: Op,
    pub dtype: DType,
    /// Whether the output buffer was the input's (the input had no other owner).
    pub in_place: bool,
    /// Whether it ran on a communicator made by [`Communicator::split`] (`ncclCommSplit`, as
    /// `HYBRID_SHARD`'s groups are).
    pub via_split: bool,
    /// The device result equals the host result bit for bit.
    pub bit_exact: bool,
    /// Wall time of the device (NCCL) path: sync, collective, wait.
    pub device_ms: f64,
    /// Wall time of the host path for the same tensor (read, host collective, write back).
    pub host_ms: f64,
}

/// The outcome of [`gpu_self_check`].
#[derive(Debug, Clone)]
pub struct SelfCheckReport {
    /// The CUDA device index checked.
    pub device: usize,
    /// Elements in each buffer the collectives ran on.
    pub elements: usize,
    /// One line per collective: device result against the host path.
    pub checks: Vec<OpCheck>,
}

impl SelfCheckReport {
    /// True when every check was bit-exact.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.bit_exact)
    }
}

/// Runs all_reduce, reduce_scatter, all_gather and broadcast through NCCL at world size 1 on
/// CUDA device `ordinal`, on f32 and bf16 tensors of `elements` values, in place and out of
/// place, then on f32 through a split communicator, and compares each with the host path. The
/// hidden `tessera dist-check` runs it on a GPU machine.
pub fn gpu_self_check(ordinal: usize, elements: usize) -> Result<SelfCheckReport, DistError> {
    let device = CudaDevice::new(ordinal);
    let cfg = RendezvousConfig::new("gpu-self-check");
    let mut nccl = Communicator::connect_nccl(&RankEnv::single(), &cfg, ordinal)?;
    if nccl.tensor_path::<Cuda>() != TensorPath::Device {
        return Err(DistError::Nccl {
            detail:
                "burn's Cuda tensors are not CubeTensor<CudaRuntime> in this build (burn-cuda's \
                     `fusion` feature on?): collectives would take the host path"
                    .into(),
            culprit: None,
        });
    }
    let mut host = Communicator::single();

    // Values with every mantissa bit in play, and negative zero: a copy that rounds, or reads the
    // wrong bytes, changes them.
    let values: Vec<f32> = (0..elements)
        .map(|i| match i % 7 {
            0 => -0.0,
            _ => ((i as f32) * 0.618_034).sin() * 1e3 / (1.0 + (i % 13) as f32),
        })
        .collect();
    let mut checks = Vec::new();
    let mut split = nccl.split(0)?;
    let cases = [DType::F32, DType::BF16]
        .into_iter()
        .flat_map(|dtype| [(dtype, true, false), (dtype, false, false)])
        .chain([(DType::F32, true, true)]);
    for (dtype, in_place, via_split) in cases {
        for op in [
            Op::AllReduce,
            Op::ReduceScatter,
            Op::AllGather,
            Op::Broadcast,
        ] {
            let make = || {
                Tensor::<Cuda, 1>::from_data(
                    TensorData::new(values.clone(), [elements]),
                    (&device, dtype),
                )
            };
            let input = make();
            // An extra owner forces the out-of-place path.
            let keep = (!in_place).then(|| input.clone());
            let start = Instant::now();
            let comm = if via_split { &mut split } else { &mut nccl };
            let on_device = run(comm, op, input)?.into_data();
            let device_ms = start.elapsed().as_secs_f64() * 1e3;
            drop(keep);

            let start = Instant::now();
            let on_host = run_host(&mut host, op, make())?.into_data();
            let host_ms = start.elapsed().as_secs_f64() * 1e3;

            checks.push(OpCheck {
                op,
                dtype,
                in_place,
                via_split,
                bit_exact: on_device.as_bytes() == on_host.as_bytes()
                    && on_device.dtype == on_host.dtype,
                device_ms,
                host_ms,
            });
        }
    }
    Ok(SelfCheckReport {
        device: ordinal,
        elements,
        checks,
    })
}

fn run(comm: &mut Communicator, op: Op, t: Tensor<Cuda, 1>) -> Result<Tensor<Cuda, 1>, DistError> {
    match op {
        Op::AllReduce => comm.all_reduce_tensor(t),
        Op::ReduceScatter => comm.reduce_scatter_tensor(t),
        Op::AllGather => comm.all_gather_tensor(t),
        Op::Broadcast => comm.broadcast_tensor(t, 0),
        Op::Barrier | Op::AllGatherBytes => unreachable!("not a tensor collective"),
    }
}

/// The host path at world size 1: the tensor goes to the host and back, as the TCP backend
/// moves it (the identity collective in between).
fn run_host(
    comm: &mut Communicator,
    op: Op,
    t: Tensor<Cuda, 1>,
) -> Result<Tensor<Cuda, 1>, DistError> {
    let device = t.device();
    let data = t.into_data();
    let dtype = data.dtype;
    let back = Tensor::<Cuda, 1>::from_data(data, (&device, dtype));
    run(comm, op, back)
}
