//! The one error type of `tessera_cuda`.

/// What went wrong while reaching a tensor's device memory or running a cuBLASLt GEMM. Every
/// variant leaves the caller's tensors untouched, so it can fall back to burn's own kernels.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CudaError {
    /// A shared library could not be loaded (cudarc looks for it by name on the loader path).
    #[error("{library} is not loadable: {hint}")]
    Unavailable {
        /// The library, e.g. `libcublasLt`.
        library: &'static str,
        /// How to make it loadable.
        hint: &'static str,
    },

    /// cubecl could not synchronise its stream, or hand out a tensor's memory.
    #[error("cubecl: {0}")]
    Cubecl(String),

    /// A CUDA driver call failed (opening the device, a stream, an allocation, a sync).
    #[error("CUDA driver: {call} failed: {detail}")]
    Driver {
        /// The call, e.g. `cuStreamSynchronize`.
        call: &'static str,
        /// The driver's error.
        detail: String,
    },

    /// A cuBLASLt call failed.
    #[error("cuBLASLt: {call} failed: {status}")]
    Cublas {
        /// The call, e.g. `cublasLtMatmul`.
        call: &'static str,
        /// cuBLAS's status code.
        status: String,
    },

    /// The inputs are not something this path takes (dtype, rank, shapes): a normal refusal,
    /// not a fault.
    #[error("not taken: {0}")]
    Unsupported(String),
}
