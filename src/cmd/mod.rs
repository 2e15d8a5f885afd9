pub mod bench_code;
pub mod bench_icl;
pub mod bench_lora;
pub mod bench_step;
pub mod bench_stream;
pub mod convert;
pub mod data;
pub mod dist_check;
pub mod eval;
pub mod generate;
pub mod init_lora;
pub mod inspect;
pub mod kernel_check;
pub mod parity;
pub mod plan;
pub mod preflight;
pub mod quickstart;
pub mod serve;
pub mod train;

use tessera::device::DeviceSpec;

/// How a device is named in reports: the backend behind it too.
pub fn device_label(spec: DeviceSpec) -> String {
    match spec {
        DeviceSpec::Cpu => format!(
            "CPU (burn flex), {} threads",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        ),
        DeviceSpec::Wgpu(_) => format!("{spec} (burn wgpu)"),
        DeviceSpec::Cuda(_) => format!("{spec} (burn cuda)"),
    }
}
