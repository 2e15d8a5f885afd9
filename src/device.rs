//! `--device cpu|wgpu[:N]|cuda[:N]`: the one place where tessera picks a burn backend.
//!
//! Library code is generic over `B: Backend`; the binary names concrete backends only here. A
//! command is written once as a [`Job`] and [`DeviceSpec::run`] instantiates it for the backend
//! the user asked for. Backends whose cargo feature is off give a clear error naming the feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::AutodiffBackend;

/// The CPU backend: burn's Flex (pure Rust, SIMD, multi-threaded), chosen by measurement (see
/// BENCHMARKS.md, "CPU backends").
pub type Cpu = burn::backend::Flex;

/// Where to run, as given by `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (`cpu`), through [`Cpu`].
    #[default]
    Cpu,
    /// A wgpu adapter: `wgpu` is the default adapter, `wgpu:N` the N-th discrete GPU.
    Wgpu(Option<usize>),
    /// A CUDA device by index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => {
                let n = i
                    .parse::<usize>()
                    .map_err(|_| format!("--device {s:?}: {i:?} is not a device index"))?;
                (k, Some(n))
            }
            None => (s, None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("cpu", Some(_)) => Err(format!("--device {s:?}: the CPU takes no index")),
            ("wgpu", i) => Ok(Self::Wgpu(i)),
            ("cuda", i) => Ok(Self::Cuda(i.unwrap_or(0))),
            _ => Err(format!(
                "--device {s:?}: expected cpu, wgpu[:N] or cuda[:N]"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Bytes of memory available for training on this device, when the machine says:
    /// `MemAvailable` of `/proc/meminfo` for the CPU. GPU backends do not report theirs
    /// through burn 0.21, so `None` there (`device_train_microbatch_size: auto` then asks for a
    /// number).
    pub fn memory_bytes(&self) -> Option<u64> {
        match self {
            Self::Cpu => {
                let text = std::fs::read_to_string("/proc/meminfo").ok()?;
                let kib: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("MemAvailable:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kib * 1024)
            }
            Self::Wgpu(_) | Self::Cuda(_) => None,
        }
    }
}

/// A command that runs on any training-capable backend. Inference-only work uses
/// `B::InnerBackend` (or `model.valid()`).
pub trait Job {
    /// What the command returns.
    type Output;
    /// Runs the command on backend `B`'s `device` (`spec` says which one, for messages).
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Self::Output;
}

impl DeviceSpec {
    /// Runs `job` on this device's backend.
    pub fn run<J: Job<Output = anyhow::Result<T>>, T>(self, job: J) -> anyhow::Result<T> {
        match self {
            Self::Cpu => job.run::<burn::backend::Autodiff<Cpu>>(Default::default(), self),
            Self::Wgpu(index) => run_wgpu(job, index, self),
            Self::Cuda(index) => run_cuda(job, index, self),
        }
    }
}

#[cfg(feature = "wgpu")]
fn run_wgpu<J: Job<Output = anyhow::Result<T>>, T>(
    job: J,
    index: Option<usize>,
    spec: DeviceSpec,
) -> anyhow::Result<T> {
    use burn::backend::wgpu::WgpuDevice;
    let device = match index {
        None => WgpuDevice::DefaultDevice,
        Some(i) => WgpuDevice::DiscreteGpu(i),
    };
    probe::<burn::backend::Wgpu>(&device, spec)?;
    job.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(device, spec)
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: Job<Output = anyhow::Result<T>>, T>(
    _job: J,
    _index: Option<usize>,
    spec: DeviceSpec,
) -> anyhow::Result<T> {
    anyhow::bail!(
        "--device {spec}: this tessera was built without the `wgpu` feature (cargo build --features wgpu)"
    )
}

#[cfg(feature = "cuda")]
fn run_cuda<J: Job<Output = anyhow::Result<T>>, T>(
    job: J,
    index: usize,
    spec: DeviceSpec,
) -> anyhow::Result<T> {
    let device = burn::backend::cuda::CudaDevice { index };
    probe::<burn::backend::Cuda>(&device, spec)?;
    job.run::<burn::backend::Autodiff<burn::backend::Cuda>>(device, spec)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: Job<Output = anyhow::Result<T>>, T>(
    _job: J,
    _index: usize,
    spec: DeviceSpec,
) -> anyhow::Result<T> {
    anyhow::bail!(
        "--device {spec}: this tessera was built without the `cuda` feature (cargo build --features cuda)"
    )
}

/// Touches the device once, so that a missing driver or adapter is an error naming the device.
///
/// cubecl reports those by panicking in its device thread (the main thread then panics on a
/// closed channel). The probe runs under a panic hook that keeps the first message instead of
/// printing it, and turns it into the error.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe<B: burn::tensor::backend::Backend>(
    device: &B::Device,
    spec: DeviceSpec,
) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    let first: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = first.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let mut slot = seen.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            *slot = Some(msg);
        }
    }));
    let touched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data()
    }));
    std::panic::set_hook(previous);
    match touched {
        Ok(_) => Ok(()),
        Err(_) => {
            let why = first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            anyhow::bail!("--device {spec}: the device could not be used: {why}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_device_form() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("wgpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Wgpu(None)));
        assert_eq!(
            "wgpu:1".parse::<DeviceSpec>(),
            Ok(DeviceSpec::Wgpu(Some(1)))
        );
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
    }

    #[test]
    fn rejects_unknown_devices_with_the_flag_named() {
        for bad in ["gpu", "cuda:x", "cpu:1", "tpu:0", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.starts_with("--device"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["cpu", "wgpu", "wgpu:2", "cuda:1"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
    }
}
