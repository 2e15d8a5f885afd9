//! GEMMs through cuBLASLt on burn-cuda tensors: bf16 and f16 with f32 accumulation, and f32
//! through TF32 when the caller asks for it.
//!
//! Why: burn 0.21's CUDA matmul (cubek-matmul) has no Hopper (`wgmma`) kernels; cuBLASLt picks
//! NVIDIA's own kernels for the card.
//!
//! What is kept per device, created on first use and never freed (a process trains on a fixed
//! set of devices): a cudarc context on the device's primary context (the one cubecl uses), a
//! stream of our own, one cuBLASLt handle, a 32 MiB workspace (NVIDIA's recommendation for
//! Hopper, enough below it), and a cache of plans: for each [`GemmKey`] (problem, transposes,
//! row strides, element type, operand alignments) the matmul descriptor, the three matrix
//! layouts and the algorithm cuBLASLt's heuristic chose. A training step repeats a handful of
//! shapes, so after the first step no descriptor is created and no heuristic runs.
//!
//! The workspace is a cudarc allocation on our stream, not a cubecl one: only our stream ever
//! touches it, cudarc's allocation is ordered on that stream, and cubecl's memory pool neither
//! sees nor reuses it.
//!
//! Stream order (see [`crate::memory`]): cubecl's stream is private. Each GEMM synchronises
//! cubecl's stream (`client.sync()`), enqueues `cublasLtMatmul` on our stream, and waits for
//! our stream before returning. That costs two host round trips per GEMM, and the GPU idles
//! between burn's kernels and ours. The alternative, a `[patch]` of cubecl-cuda that exposes
//! its stream so the GEMM is enqueued behind burn's kernels with no wait, was not built or
//! measured: no GPU was lent while this was written.
//!
//! Unverified: this module has been compiled, never run. It is reached only through
//! `tessera-model`'s linear layers with `TESSERA_CUBLASLT=1`, until `tessera kernel-check`
//! (step `linear_check` of `xtask/scripts/gpu-check.sh`) passes on a GPU.

use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{DType, Shape, TensorMetadata};
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DriverError};

use crate::CudaError;
use crate::gemm::{GemmKey, GemmType, Operand, RowMajorGemm, alignment};
use crate::memory::{self, CudaTensor};

/// Bytes of cuBLASLt workspace per device.
const WORKSPACE_BYTES: usize = 32 << 20;

/// The GEMM type for tensors of `dtype`: bf16 and f16 always, f32 only with `tf32` (the caller
/// opted in to TF32 rounding); `None` for the rest.
pub fn gemm_type(dtype: DType, tf32: bool) -> Option<GemmType> {
    match dtype {
        DType::BF16 => Some(GemmType::Bf16),
        DType::F16 => Some(GemmType::F16),
        DType::F32 if tf32 => Some(GemmType::Tf32),
        _ => None,
    }
}

/// Whether libcuda and libcublasLt can be loaded (checked once per process). cudarc panics on
/// the first call into a library it cannot find; this is the check that keeps it from trying.
pub fn available() -> Result<(), CudaError> {
    static LOADED: OnceLock<Result<(), CudaError>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: both only try to open the shared libraries.
            let (driver, cublaslt) = unsafe {
                (
                    cudarc::driver::sys::is_culib_present(),
                    sys::is_culib_present(),
                )
            };
            match (driver, cublaslt) {
                (true, true) => Ok(()),
                (false, _) => Err(CudaError::Unavailable {
                    library: "libcuda",
                    hint: "no NVIDIA driver on the loader path",
                }),
                (true, false) => Err(CudaError::Unavailable {
                    library: "libcublasLt",
                    hint: "put the folder holding libcublasLt.so.12 or .so.13 (the CUDA \
                           toolkit's lib64, or the PyPI wheel nvidia-cublas-cu12's \
                           nvidia/cublas/lib) on LD_LIBRARY_PATH",
                }),
            }
        })
        .clone()
}

/// `C = op(A) · op(B)` for row-major 2-D burn-cuda tensors of one dtype (see
/// [`RowMajorGemm`]): `A` is `[m, k]` (`[k, m]` when `trans_a`), `B` is `[k, n]` (`[n, k]`
/// when `trans_b`); returns `C` `[m, n]`, contiguous, in the inputs' dtype.
///
/// `Err` (inputs untouched) for a dtype [`gemm_type`] refuses, mismatched or empty shapes,
/// tensors on different devices, a library that does not load, or any CUDA/cuBLASLt failure.
/// Synchronises cubecl's stream before and our stream after (module docs).
pub fn matmul(
    a: &CudaTensor,
    trans_a: bool,
    b: &CudaTensor,
    trans_b: bool,
    tf32: bool,
) -> Result<CudaTensor, CudaError> {
    let dtype = a.dtype;
    let Some(ty) = gemm_type(dtype, tf32).filter(|_| b.dtype == dtype) else {
        return Err(CudaError::Unsupported(format!(
            "dtypes {:?} and {:?} (bf16 and f16 always, f32 with TF32 opted in)",
            a.dtype, b.dtype
        )));
    };
    let (sa, sb) = (a.shape(), b.shape());
    if sa.num_dims() != 2 || sb.num_dims() != 2 || a.device != b.device {
        return Err(CudaError::Unsupported(format!(
            "shapes {sa:?} and {sb:?} on {:?} and {:?} (two matrices on one device)",
            a.device, b.device
        )));
    }
    let (m, k) = if trans_a {
        (sa[1], sa[0])
    } else {
        (sa[0], sa[1])
    };
    let (k_b, n) = if trans_b {
        (sb[1], sb[0])
    } else {
        (sb[0], sb[1])
    };
    let gemm = RowMajorGemm::contiguous(m, n, k, trans_a, trans_b);
    if k_b != k || !gemm.is_valid() {
        return Err(CudaError::Unsupported(format!(
            "shapes {sa:?} and {sb:?} (transposed: {trans_a}, {trans_b}) do not multiply"
        )));
    }
    available()?;

    let (a, b) = (memory::contiguous(a.clone()), memory::contiguous(b.clone()));
    let c = memory::empty(&a, Shape::new([m, n]), dtype);
    let (a_ptr, _a_guard) = memory::device_ptr(&a)?;
    let (b_ptr, _b_guard) = memory::device_ptr(&b)?;
    let (c_ptr, _c_guard) = memory::device_ptr(&c)?;
    // cubecl has written `a` and `b` (and allocated `c`) before our stream reads them.
    memory::sync(&a)?;

    let key = GemmKey {
        device: memory::ordinal(&a),
        gemm,
        ty,
        align: [alignment(a_ptr), alignment(b_ptr), alignment(c_ptr)],
    };
    let state = device(key.device)?;
    // A panic while the lock was held cannot leave a half-built plan behind (plans are inserted
    // whole), so a poisoned lock is still usable.
    let mut state = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // SAFETY: the three addresses hold the matrices `key.gemm` describes (contiguous, of
    // `dtype`, checked above), and the guards keep them alive until `run` has waited for the
    // GEMM to finish.
    unsafe { state.run(&key, a_ptr, b_ptr, c_ptr)? };
    Ok(c)
}

/// The per-device state, shared by every thread (each GEMM holds the lock while it runs).
fn device(ordinal: usize) -> Result<Arc<Mutex<DeviceLt>>, CudaError> {
    /// Each device's state, or why it could not be set up (not retried).
    type Devices = BTreeMap<usize, Result<Arc<Mutex<DeviceLt>>, CudaError>>;
    static DEVICES: Mutex<Devices> = Mutex::new(BTreeMap::new());
    let mut devices = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    devices
        .entry(ordinal)
        .or_insert_with(|| DeviceLt::new(ordinal).map(|d| Arc::new(Mutex::new(d))))
        .clone()
}

/// One device's stream, cuBLASLt handle, workspace and plan cache.
struct DeviceLt {
    stream: Arc<CudaStream>,
    handle: Handle,
    workspace: CudaSlice<u8>,
    plans: HashMap<GemmKey, Plan>,
}

impl DeviceLt {
    fn new(ordinal: usize) -> Result<Self, CudaError> {
        // Retains the primary context, which cubecl uses too, and binds it to this thread.
        let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain", ordinal))?;
        let stream = ctx
            .new_stream()
            .map_err(driver("cuStreamCreate", ordinal))?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(driver("cuMemAllocAsync", ordinal))?;
        let handle = Handle(lt::create_handle().map_err(cublas("cublasLtCreate"))?);
        Ok(Self {
            stream,
            handle,
            workspace,
            plans: HashMap::new(),
        })
    }

    /// Runs the GEMM `key` describes on our stream and waits for it.
    ///
    /// # Safety
    /// `a`, `b` and `c` must be the device addresses of `key.gemm`'s row-major `A`, `B` and
    /// `C` (of `key.ty`), alive until this returns.
    unsafe fn run(&mut self, key: &GemmKey, a: u64, b: u64, c: u64) -> Result<(), CudaError> {
        let ordinal = key.device;
        self.stream
            .context()
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent", ordinal))?;
        if !self.plans.contains_key(key) {
            let plan = Plan::new(self.handle.0, key)?;
            self.plans.insert(*key, plan);
        }
        let plan = &self.plans[key];
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (workspace, _workspace_guard) = self.workspace.device_ptr(&self.stream);
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's first
        // operand is our B, its second our A (gemm.rs). beta = 0, so C is never read; it is
        // given D's address and layout.
        // SAFETY: the plan's descriptors are alive (owned by `self.plans`); the caller
        // guarantees the matrices; the workspace holds WORKSPACE_BYTES, the most the
        // heuristic was allowed to plan for.
        unsafe {
            lt::matmul(
                self.handle.0,
                plan.desc.0,
                (&alpha as *const f32).cast::<c_void>(),
                (&beta as *const f32).cast::<c_void>(),
                b as *const c_void,
                plan.a.0,
                a as *const c_void,
                plan.b.0,
                c as *const c_void,
                plan.d.0,
                c as *mut c_void,
                plan.d.0,
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(cublas("cublasLtMatmul"))?;
        // The output is complete before burn's next kernel (queued on cubecl's stream) reads it.
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize", ordinal))
    }
}

/// The cuBLASLt objects for one [`GemmKey`].
struct Plan {
    desc: MatmulDesc,
    /// cuBLASLt's first operand (our `B`), its second (our `A`), and the output.
    a: Layout,
    b: Layout,
    d: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    fn new(handle: sys::cublasLtHandle_t, key: &GemmKey) -> Result<Self, CudaError> {
        use sys::cublasComputeType_t::{CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_FAST_TF32};
        use sys::cudaDataType_t::{CUDA_R_16BF, CUDA_R_16F, CUDA_R_32F};
        let (data, compute) = match key.ty {
            GemmType::Bf16 => (CUDA_R_16BF, CUBLAS_COMPUTE_32F),
            GemmType::F16 => (CUDA_R_16F, CUBLAS_COMPUTE_32F),
            GemmType::Tf32 => (CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32),
        };
        let cm = key.gemm.column_major();
        // alpha and beta are f32 (the scale type) for all three compute modes.
        let desc = MatmulDesc(
            lt::create_matmul_desc(compute, CUDA_R_32F)
                .map_err(cublas("cublasLtMatmulDescCreate"))?,
        );
        use sys::cublasLtMatmulDescAttributes_t::{
            CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB,
        };
        for (attr, trans) in [
            (CUBLASLT_MATMUL_DESC_TRANSA, cm.a.trans),
            (CUBLASLT_MATMUL_DESC_TRANSB, cm.b.trans),
        ] {
            // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (an int32).
            let op = trans as i32;
            // SAFETY: `desc` is alive; the attribute is an int32, `op` is one.
            unsafe { set_desc(desc.0, attr, &op) }?;
        }
        let layout = |o: &Operand| {
            lt::create_matrix_layout(data, o.rows, o.cols, o.ld)
                .map(Layout)
                .map_err(cublas("cublasLtMatrixLayoutCreate"))
        };
        let (a, b, d) = (layout(&cm.a)?, layout(&cm.b)?, layout(&cm.d)?);

        let pref =
            Preference(lt::create_matmul_pref().map_err(cublas("cublasLtMatmulPreferenceCreate"))?);
        use sys::cublasLtMatmulPreferenceAttributes_t::*;
        // SAFETY: `pref` is alive; each attribute has the type of the value given (uint64 for
        // the workspace, uint32 for the alignments).
        unsafe {
            set_pref(
                pref.0,
                CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &(WORKSPACE_BYTES as u64),
            )?;
            // cuBLASLt's A is our B, its B our A, its C and D our C.
            let [our_a, our_b, our_c] = key.align;
            set_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &our_b)?;
            set_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &our_a)?;
            set_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &our_c)?;
            set_pref(pref.0, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &our_c)?;
        }
        // SAFETY: every descriptor is alive and describes this problem.
        let heuristic =
            unsafe { lt::get_matmul_algo_heuristic(handle, desc.0, a.0, b.0, d.0, d.0, pref.0) }
                .map_err(cublas("cublasLtMatmulAlgoGetHeuristic"))?;
        Ok(Plan {
            desc,
            a,
            b,
            d,
            algo: heuristic.algo,
        })
    }
}

/// Maps a driver error to [`CudaError::Driver`] naming the call and the device.
fn driver(call: &'static str, ordinal: usize) -> impl Fn(DriverError) -> CudaError {
    move |e| CudaError::Driver {
        call,
        detail: format!("device {ordinal}: {e:?}"),
    }
}

/// Maps a cuBLAS status to [`CudaError::Cublas`] naming the call.
fn cublas(call: &'static str) -> impl Fn(CublasError) -> CudaError {
    move |e| CudaError::Cublas {
        call,
        status: format!("{:?}", e.0),
    }
}

/// Sets one matmul-descriptor attribute.
///
/// # Safety
/// `desc` must be alive, and `T` the attribute's type.
unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<(), CudaError> {
    // SAFETY: as the caller guarantees; cuBLASLt copies `size_of::<T>()` bytes.
    unsafe { lt::set_matmul_desc_attribute(desc, attr, (value as *const T).cast(), size_of::<T>()) }
        .map_err(cublas("cublasLtMatmulDescSetAttribute"))
}

/// Sets one heuristic-preference attribute.
///
/// # Safety
/// `pref` must be alive, and `T` the attribute's type.
unsafe fn set_pref<T>(
    pref: sys::cublasLtMatmulPreference_t,
    attr: sys::cublasLtMatmulPreferenceAttributes_t,
    value: &T,
) -> Result<(), CudaError> {
    // SAFETY: as the caller guarantees; cuBLASLt copies `size_of::<T>()` bytes.
    unsafe { lt::set_matmul_pref_attribute(pref, attr, (value as *const T).cast(), size_of::<T>()) }
        .map_err(cublas("cublasLtMatmulPreferenceSetAttribute"))
}

// Owners of the cuBLASLt objects: each is destroyed when dropped (errors on destruction are
// ignored: there is nothing left to do with the object). cuBLASLt's handles and descriptors are
// host-side objects that any thread may use, one at a time; the device's mutex ensures that.

struct Handle(sys::cublasLtHandle_t);
struct MatmulDesc(sys::cublasLtMatmulDesc_t);
struct Layout(sys::cublasLtMatrixLayout_t);
struct Preference(sys::cublasLtMatmulPreference_t);

// SAFETY: see above; all use goes through `DeviceLt`, behind a mutex.
unsafe impl Send for Handle {}
// SAFETY: as for `Handle`.
unsafe impl Send for MatmulDesc {}
// SAFETY: as for `Handle`.
unsafe impl Send for Layout {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtCreate, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}
