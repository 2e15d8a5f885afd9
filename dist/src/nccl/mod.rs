//! The NCCL backend (feature `cuda`): one process per GPU, collectives on device memory.
//!
//! NCCL comes through cudarc 0.19 (the copy burn-cuda already builds), which loads `libcuda`
//! and `libnccl.so` at run time: this compiles without CUDA, and a machine without NCCL gets an
//! error, not a crash. (The PyPI wheel `nvidia-nccl-cu12` ships only `libnccl.so.2`; cudarc
//! needs a `libnccl.so` symlink to it on the loader path.)
//!
//! Rank 0 creates the unique id and the rendezvous hands it to every rank. Each collective is
//! enqueued on this communicator's own stream and then waited for: the host polls the stream and
//! NCCL's asynchronous error until the deadline, and on a timeout aborts the NCCL communicator
//! (which frees its kernels) and fails. NCCL cannot say which peer stalled, so after a failure
//! the TCP mesh runs a short barrier, and the rank it names (one that is gone or stuck) is
//! the rank this error blames.
//!
//! Ordering against burn: see `device.rs` (synchronise cubecl's stream before, wait for ours
//! after).

pub(crate) mod device;
mod self_check;

pub use device::is_cuda_backend;
pub use self_check::{SelfCheckReport, gpu_self_check};

use std::ffi::CStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{result as nccl, sys};

use crate::communicator::{Backend, Communicator, DEFAULT_TIMEOUT};
use crate::env::RankEnv;
use crate::error::{DistError, Op};
use crate::rendezvous::{RendezvousConfig, rendezvous};
use crate::tcp::TcpComm;

/// How long the post-failure barrier on the TCP mesh may take to find the culprit.
const BLAME_BARRIER: Duration = Duration::from_secs(10);

/// An NCCL communicator with its own CUDA stream.
pub struct NcclComm {
    comm: RawComm,
    stream: Arc<CudaStream>,
    world_size: usize,
    timeout: Duration,
    /// The first failure; NCCL communicators cannot recover from one.
    poisoned: Option<String>,
}

/// `ncclComm_t` is a pointer NCCL lets any one thread use at a time; the communicator owns it.
struct RawComm(sys::ncclComm_t);
// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap;
// `NcclComm` takes `&mut self` for every call.
unsafe impl Send for RawComm {}

impl Communicator {
    /// Joins the run with NCCL on CUDA device `ordinal` (usually `env.local_rank`): rank 0
    /// creates the NCCL unique id, the rendezvous hands it out (and checks config hash and
    /// version as for TCP), every rank builds the TCP mesh (for host buffers and metadata) and
    /// then the NCCL communicator, within `cfg.timeout`.
    ///
    /// At world size 1 there is no rendezvous, but NCCL still runs the device collectives (what
    /// one GPU can test).
    pub fn connect_nccl(
        env: &RankEnv,
        cfg: &RendezvousConfig,
        ordinal: usize,
    ) -> Result<Communicator, DistError> {
        let id = if env.rank == 0 {
            unique_id()?
        } else {
            Vec::new()
        };
        let (tcp, id) = if env.world_size == 1 {
            (None, id)
        } else {
            let cfg = RendezvousConfig {
                blob: id,
                ..cfg.clone()
            };
            let rdv = rendezvous(env, &cfg)?;
            let tcp = TcpComm::connect(&rdv, cfg.timeout, DEFAULT_TIMEOUT)?;
            (Some(tcp), rdv.blob)
        };
        let nccl = NcclComm::init(ordinal, env.rank, env.world_size, &id, cfg.timeout)?;
        Ok(Communicator::from_backend(
            Backend::Nccl { nccl, tcp },
            env.rank,
            env.world_size,
        ))
    }
}

/// Creates an NCCL unique id (rank 0 only), as the bytes the rendezvous carries.
fn unique_id() -> Result<Vec<u8>, DistError> {
    check_libraries()?;
    let id = nccl::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", &e))?;
    Ok(id.internal.iter().map(|c| *c as u8).collect())
}

/// Fails cleanly where cudarc would panic: no driver, or no `libnccl.so`.
fn check_libraries() -> Result<(), DistError> {
    // SAFETY: both only try to open the shared libraries.
    let (driver, nccl) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            sys::is_culib_present(),
        )
    };
    let missing = match (driver, nccl) {
        (true, true) => return Ok(()),
        (false, _) => "the CUDA driver (libcuda.so) is not loadable",
        (true, false) => {
            "libnccl.so is not loadable (with the PyPI wheel nvidia-nccl-cu12, add a libnccl.so \
             symlink to its libnccl.so.2 on LD_LIBRARY_PATH)"
        }
    };
    Err(DistError::Nccl {
        detail: missing.into(),
        culprit: None,
    })
}

fn nccl_error(call: &str, e: &nccl::NcclError) -> DistError {
    // SAFETY: NCCL returns a static, NUL-terminated string for every result code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(e.0)) }
        .to_string_lossy()
        .into_owned();
    DistError::Nccl {
        detail: format!("{call} failed: {text} ({:?})", e.0),
        culprit: None,
    }
}

impl NcclComm {
    /// Creates this rank's NCCL communicator on device `ordinal`. `ncclCommInitRank` blocks until
    /// every rank has called it, so it runs on a helper thread that is abandoned if `timeout`
    /// passes first (the process is then expected to exit; nothing else waits on that thread).
    fn init(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        id: &[u8],
        timeout: Duration,
    ) -> Result<NcclComm, DistError> {
        check_libraries()?;
        let internal: [std::ffi::c_char; 128] = id
            .iter()
            .map(|b| *b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| DistError::Nccl {
                detail: format!(
                    "the NCCL unique id from rank 0 has {} bytes, not 128",
                    id.len()
                ),
                culprit: Some(0),
            })?;
        let ctx = CudaContext::new(ordinal).map_err(|e| DistError::Nccl {
            detail: format!("cannot open CUDA device {ordinal}: {e:?}"),
            culprit: None,
        })?;
        let stream = ctx.new_stream().map_err(|e| DistError::Nccl {
            detail: format!("cannot create a CUDA stream on device {ordinal}: {e:?}"),
            culprit: None,
        })?;

        let (tx, rx) = std::sync::mpsc::channel();
        let thread_ctx = ctx.clone();
        std::thread::spawn(move || {
            let result = thread_ctx
                .bind_to_thread()
                .map_err(|e| format!("{e:?}"))
                .and_then(|()| {
                    let mut comm = std::mem::MaybeUninit::uninit();
                    // SAFETY: `comm` is written by NCCL before it is read; the id is 128 bytes.
                    unsafe {
                        nccl::comm_init_rank(
                            comm.as_mut_ptr(),
                            world_size as i32,
                            sys::ncclUniqueId { internal },
                            rank as i32,
                        )
                        .map(|_| RawComm(comm.assume_init()))
                        .map_err(|e| format!("{:?}", e.0))
                    }
                });
            let _ = tx.send(result);
        });
        let comm = match rx.recv_timeout(timeout) {
            Ok(Ok(comm)) => comm,
            Ok(Err(e)) => {
                return Err(DistError::Nccl {
                    detail: format!("ncclCommInitRank on rank {rank} failed: {e}"),
                    culprit: None,
                });
            }
            Err(_) => {
                return Err(DistError::Nccl {
                    detail: format!(
                        "ncclCommInitRank on rank {rank} did not finish within {timeout:?} \
                         (a rank never joined NCCL)"
                    ),
                    culprit: None,
                });
            }
        };
        Ok(NcclComm {
            comm,
            stream,
            world_size,
            timeout,
            poisoned: None,
        })
    }

    /// `ncclCommSplit`: this rank's communicator among the ranks that pass the same `color`,
    /// ordered by `key` (the rank in this communicator), with its own stream on the same
    /// device. It blocks until every rank of this communicator has called it, so like
    /// [`NcclComm::init`] it runs on a helper thread abandoned if the timeout passes first.
    pub(crate) fn split(
        &mut self,
        color: usize,
        key: usize,
        group_size: usize,
    ) -> Result<NcclComm, DistError> {
        if let Some(first) = &self.poisoned {
            return Err(DistError::Poisoned {
                first: first.clone(),
                culprit: None,
            });
        }
        let ctx = self.stream.context().clone();
        let stream = ctx.new_stream().map_err(|e| DistError::Nccl {
            detail: format!("cannot create a CUDA stream for a split communicator: {e:?}"),
            culprit: None,
        })?;
        let parent = RawComm(self.comm.0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let parent = parent;
            let result = ctx
                .bind_to_thread()
                .map_err(|e| format!("{e:?}"))
                .and_then(|()| {
                    let mut comm = std::mem::MaybeUninit::uninit();
                    // SAFETY: the parent communicator is alive (its owner waits for this
                    // thread's answer or exits); `comm` is written by NCCL before it is read; a
                    // null config asks for the parent's settings.
                    // (cudarc's safe wrapper is gated on older CUDA versions; the symbol is
                    // loaded the same way.)
                    match unsafe {
                        sys::ncclCommSplit(
                            parent.0,
                            color as i32,
                            key as i32,
                            comm.as_mut_ptr(),
                            std::ptr::null_mut(),
                        )
                    } {
                        // SAFETY: NCCL wrote the communicator.
                        sys::ncclResult_t::ncclSuccess => {
                            Ok(RawComm(unsafe { comm.assume_init() }))
                        }
                        other => Err(format!("{other:?}")),
                    }
                });
            let _ = tx.send(result);
        });
        let comm = match rx.recv_timeout(self.timeout) {
            Ok(Ok(comm)) => comm,
            Ok(Err(e)) => {
                return Err(DistError::Nccl {
                    detail: format!("ncclCommSplit (color {color}) failed: {e}"),
                    culprit: None,
                });
            }
            Err(_) => {
                return Err(DistError::Nccl {
                    detail: format!(
                        "ncclCommSplit (color {color}) did not finish within {:?} (a rank never \
                         called it)",
                        self.timeout
                    ),
                    culprit: None,
                });
            }
        };
        Ok(NcclComm {
            comm,
            stream,
            world_size: group_size,
            timeout: self.timeout,
            poisoned: None,
        })
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    pub(crate) fn world_size(&self) -> usize {
        self.world_size
    }

    /// Enqueues one NCCL call on this communicator's stream and waits for it, until the
    /// deadline. `launch` gets the communicator and the stream.
    ///
    /// # Safety
    /// `launch` must pass NCCL device pointers that stay valid until this returns.
    pub(crate) unsafe fn run(
        &mut self,
        op: Op,
        launch: impl FnOnce(
            sys::ncclComm_t,
            sys::cudaStream_t,
        ) -> Result<nccl::NcclStatus, nccl::NcclError>,
    ) -> Result<(), DistError> {
        if let Some(first) = &self.poisoned {
            return Err(DistError::Poisoned {
                first: first.clone(),
                culprit: None,
            });
        }
        let result = self.launch_and_wait(op, launch);
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result
    }

    fn launch_and_wait(
        &mut self,
        op: Op,
        launch: impl FnOnce(
            sys::ncclComm_t,
            sys::cudaStream_t,
        ) -> Result<nccl::NcclStatus, nccl::NcclError>,
    ) -> Result<(), DistError> {
        let deadline = Instant::now() + self.timeout;
        let stream = self.stream.cu_stream();
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| DistError::Nccl {
                detail: format!("{op}: cannot bind the CUDA context: {e:?}"),
                culprit: None,
            })?;
        launch(self.comm.0, stream as sys::cudaStream_t)
            .map_err(|e| nccl_error(&format!("{op}"), &e))?;
        let mut pause = Duration::from_micros(20);
        loop {
            // SAFETY: the stream is alive (we hold it); the query does not block.
            let state = unsafe { cudarc::driver::sys::cuStreamQuery(stream) };
            match state {
                cudarc::driver::sys::CUresult::CUDA_SUCCESS => return Ok(()),
                cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY => {}
                other => {
                    return Err(DistError::Nccl {
                        detail: format!("{op}: the CUDA stream failed: {other:?}"),
                        culprit: None,
                    });
                }
            }
            let mut async_error = sys::ncclResult_t::ncclSuccess;
            // SAFETY: the communicator is alive; NCCL writes one result code.
            unsafe { sys::ncclCommGetAsyncError(self.comm.0, &mut async_error) };
            if !matches!(
                async_error,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            ) {
                self.abort();
                return Err(nccl_error(
                    &format!("{op} (asynchronous)"),
                    &nccl::NcclError(async_error),
                ));
            }
            if Instant::now() >= deadline {
                self.abort();
                return Err(DistError::Nccl {
                    detail: format!(
                        "{op} did not finish within {:?} (a peer rank stalled or died)",
                        self.timeout
                    ),
                    culprit: None,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Aborts the NCCL communicator: its kernels return, and it is unusable afterwards.
    fn abort(&mut self) {
        if !self.comm.0.is_null() {
            // SAFETY: the communicator is alive and is not used again (we null it).
            let _ = unsafe { nccl::comm_abort(self.comm.0) };
            self.comm.0 = std::ptr::null_mut();
        }
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if self.comm.0.is_null() {
            return;
        }
        // SAFETY: the communicator is alive; `run` waited for every call it enqueued.
        unsafe {
            if self.poisoned.is_some() {
                let _ = nccl::comm_abort(self.comm.0);
            } else {
                let _ = nccl::comm_destroy(self.comm.0);
            }
        }
    }
}

impl Communicator {
    /// After an NCCL failure, asks the TCP mesh who is gone: a short barrier names the rank that
    /// closed or stalled, and that rank goes into the error. Other errors pass through.
    pub(crate) fn blame_after_nccl_failure(&mut self, err: DistError) -> DistError {
        if !matches!(err, DistError::Nccl { culprit: None, .. }) {
            return err;
        }
        let Backend::Nccl { tcp: Some(tcp), .. } = &mut self.backend else {
            return err;
        };
        let timeout = tcp.timeout();
        tcp.set_timeout(BLAME_BARRIER.min(timeout));
        let culprit = tcp.barrier().err().and_then(|e| e.failed_rank());
        tcp.set_timeout(timeout);
        match err {
            DistError::Nccl {
                detail,
                culprit: None,
            } if culprit.is_some() => DistError::Nccl {
                detail: format!(
                    "{detail}; the TCP mesh finds rank {} unresponsive",
                    culprit.expect("checked")
                ),
                culprit,
            },
            other => other,
        }
    }
}
