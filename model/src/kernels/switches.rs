//! The environment switches of the GPU kernels, named in one place. Each is read once per
//! process.
//!
//! They are independent: [`CUBE_KERNELS`] is about tessera's own CubeCL kernels (attention,
//! norms, cross-entropy; on by default, tested on lavapipe), [`CUBLASLT`] about the linear
//! layers' GEMMs through cuBLASLt (off by default: never yet run on a GPU), [`TF32`] about
//! whether those GEMMs may take f32 inputs and round them through TF32.

use std::sync::OnceLock;

/// `0` turns tessera's CubeCL kernels off (wgpu and CUDA): attention, the norms and the
/// cross-entropy then run the composed path (to compare, or to bisect a suspected kernel
/// fault). Anything else, or unset, leaves them on.
pub const CUBE_KERNELS: &str = "TESSERA_CUBE_KERNELS";

/// `1` sends the linear layers' GEMMs on burn's CUDA backend through cuBLASLt (bf16 and f16;
/// f32 only with [`TF32`] too). Unset or anything else keeps burn's matmul. Off by default
/// until `tessera kernel-check` has passed on a GPU (`xtask/scripts/gpu-check.sh`).
pub const CUBLASLT: &str = "TESSERA_CUBLASLT";

/// `1` lets the cuBLASLt path take f32 linear layers, computed in TF32 (10-bit mantissas, as
/// PyTorch's `allow_tf32`). Without it f32 stays on burn's matmul.
pub const TF32: &str = "TESSERA_TF32";

/// A switch that is on unless set to `0` (surrounding spaces ignored).
pub fn on_unless_zero(value: Option<&str>) -> bool {
    value.is_none_or(|v| v.trim() != "0")
}

/// A switch that is off unless set to `1` (surrounding spaces ignored).
pub fn off_unless_one(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim() == "1")
}

/// `parse` of the variable `name`, read once into `cell`.
fn read(cell: &OnceLock<bool>, name: &str, parse: fn(Option<&str>) -> bool) -> bool {
    *cell.get_or_init(|| parse(std::env::var(name).ok().as_deref()))
}

/// Whether tessera's CubeCL kernels run ([`CUBE_KERNELS`]).
pub fn cube_kernels() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    read(&ON, CUBE_KERNELS, on_unless_zero)
}

/// Whether linear layers on burn's CUDA backend go through cuBLASLt ([`CUBLASLT`]).
pub fn cublaslt() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    read(&ON, CUBLASLT, off_unless_one)
}

/// Whether the cuBLASLt path takes f32 inputs, in TF32 ([`TF32`]).
pub fn tf32() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    read(&ON, TF32, off_unless_one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cube_kernels_stay_on_unless_set_to_zero() {
        assert!(on_unless_zero(None));
        assert!(on_unless_zero(Some("1")));
        assert!(on_unless_zero(Some("")));
        assert!(on_unless_zero(Some("off")));
        assert!(!on_unless_zero(Some("0")));
        assert!(!on_unless_zero(Some(" 0\n")));
    }

    #[test]
    fn cublaslt_and_tf32_stay_off_unless_set_to_one() {
        assert!(!off_unless_one(None));
        assert!(!off_unless_one(Some("")));
        assert!(!off_unless_one(Some("0")));
        assert!(!off_unless_one(Some("true")));
        assert!(off_unless_one(Some("1")));
        assert!(off_unless_one(Some(" 1 ")));
    }

    #[test]
    fn the_switches_have_distinct_names() {
        assert_ne!(CUBE_KERNELS, CUBLASLT);
        assert_ne!(CUBLASLT, TF32);
        assert_ne!(CUBE_KERNELS, TF32);
    }
}
