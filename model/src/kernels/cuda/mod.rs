//! Linear layers through cuBLASLt on burn's CUDA backend (feature `cuda`): `x · wᵀ` and both
//! of its gradients, one autodiff graph node, wired as the CubeCL kernels are (`../cube`).
//!
//! **Unverified, and off by default.** This code has been compiled, never run on a GPU. It is
//! used only with `TESSERA_CUBLASLT=1` ([`super::switches::CUBLASLT`]), until `tessera
//! kernel-check --linear` (step `linear_check` of `xtask/scripts/gpu-check.sh`) has passed.
//!
//! What it takes: `CubeBackend<CudaRuntime, f32, i32, u8>` (burn-cuda without fusion, which
//! is how tessera builds it) and its default `Autodiff`, 2-D bf16 or f16 matrices (the model's
//! mixed-precision products, cast to the compute dtype before [`super::linear`]), and f32 ones
//! only with `TESSERA_TF32=1` (computed in TF32). Anything else, and any failure (libcublasLt
//! not loadable, a cuBLASLt error), hands the inputs back and the caller runs burn's matmul.
//! A failure is reported on stderr once per process, never as a panic.
//!
//! The GEMMs themselves, their plan cache and their stream ordering (a sync of cubecl's stream
//! before each, of ours after) are `tessera_cuda::lt`.
//!
//! Epilogues: none are fused. MPT's linear layers have no bias (`no_bias: true`), and where a
//! config has one, [`crate::linear::Linear`] adds it after the product, as LoRA's update; the
//! GELU sits in `ffn.rs` between two calls. Fusing either would change those call sites.

mod linear;

pub(crate) use linear::{fallbacks, linear, linear_backward};

use tessera_cuda::CudaError;

/// Writes `e` to stderr if it is the first fault of its kind in this process: a library that
/// does not load, or any later failure. Refusals of an input (dtype, shape) are not faults and
/// are not reported.
fn report(e: &CudaError) {
    use std::sync::Once;
    static UNAVAILABLE: Once = Once::new();
    static FAILED: Once = Once::new();
    match e {
        CudaError::Unsupported(_) => {}
        CudaError::Unavailable { .. } => UNAVAILABLE.call_once(|| {
            eprintln!("tessera: linear layers stay on burn's matmul: {e}");
        }),
        _ => FAILED.call_once(|| {
            eprintln!(
                "tessera: a cuBLASLt GEMM failed, that product ran on burn's matmul (further \
                 failures are not reported): {e}"
            );
        }),
    }
}
