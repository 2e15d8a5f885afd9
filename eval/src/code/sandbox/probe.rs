//! Finding the strongest sandbox this kernel allows, by trying it.
//!
//! The ladder, strongest first: a user namespace (with PID, network, mount, IPC, UTS and cgroup
//! namespaces); the same namespaces as host root when user namespaces are refused; no
//! namespaces at all. Within a mode, a layer whose setup step fails (a fresh `/proc`, read-only
//! remounts, Landlock, seccomp, `setgroups`) is dropped and the probe program runs again; any
//! other failure moves down the ladder. Every drop is written into the report's notes, and
//! [`Isolation::Strict`] then checks that each essential threat is still blocked by something.

use std::ffi::CString;
use std::path::Path;

use super::child::{ChildConfig, RootOp, step};
use super::report::IsolationReport;
use super::rootfs::{FsAllowList, PythonInstall};
use super::seccomp::Filter;
use super::spawn::{self, IdMaps, Ids, Mode, Prepared};
use super::{Isolation, SandboxConfig, SandboxError, Status, describe, landlock};

/// The uid/gid programs run as when the caller is root: `nobody`, which owns nothing.
pub(crate) const NOBODY: u32 = 65534;
const DRIVER: &str = include_str!("driver.py");

/// The choices a probe attempt makes.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub mode: Mode,
    pub fresh_proc: bool,
    pub read_only: bool,
    pub landlock: Option<u32>,
    pub seccomp: bool,
    pub clear_groups: bool,
}

pub(crate) struct Caller {
    pub root: bool,
    pub uid: u32,
    pub gid: u32,
}

impl Setup {
    fn initial(mode: Mode, abi: Option<u32>, caller: &Caller) -> Self {
        let ns = mode.namespaces();
        Self {
            mode,
            fresh_proc: ns,
            read_only: ns,
            landlock: abi,
            seccomp: Filter::new(false).is_some(),
            // An unprivileged user-namespace creator must deny setgroups; a non-root caller
            // without namespaces cannot drop its groups either.
            clear_groups: caller.root,
        }
    }

    /// The ids programs run as (inside the user namespace, if any).
    pub fn ids(&self, c: &Caller) -> Ids {
        match (self.mode, c.root) {
            (_, false) => Ids::Fixed(c.uid, c.gid),
            (Mode::UserNamespace, true) => Ids::Fixed(NOBODY, NOBODY),
            (_, true) => Ids::PerRun,
        }
    }
}

/// The parts of the config that do not depend on the ladder.
pub(crate) struct Fixed<'a> {
    pub cfg: &'a SandboxConfig,
    pub python: PythonInstall,
    pub allow: FsAllowList,
    pub caller: Caller,
    pub scratch: std::path::PathBuf,
    pub scrub: Vec<(usize, usize)>,
}

pub(crate) fn nproc_limit(f: &Fixed<'_>, setup: &Setup) -> Option<u64> {
    let per_sandbox = u64::from(f.cfg.max_processes) + 1; // + the supervisor
    match setup.mode {
        // Counted per user namespace: each sandbox has its own budget.
        Mode::UserNamespace => Some(per_sandbox),
        // Host root: each run has its own uid, hence its own count.
        Mode::RootNamespaces | Mode::Plain if f.caller.root => Some(per_sandbox),
        Mode::RootNamespaces => None,
        // The caller's own processes count too: the limit is set per run above their number.
        Mode::Plain => None,
    }
}

fn build(f: &Fixed<'_>, setup: &Setup) -> Prepared {
    let cfg = f.cfg;
    let ns = setup.mode.namespaces();
    let mut clone_flags = 0;
    if ns {
        clone_flags = libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
    }
    if setup.mode == Mode::UserNamespace {
        clone_flags |= libc::CLONE_NEWUSER;
    }
    let id_maps = (setup.mode == Mode::UserNamespace).then(|| {
        if f.caller.root {
            // Root inside (to build the new root) and nobody (to run the program); nothing else
            // of the host's ids exists in there.
            let m = format!("0 0 1\n{NOBODY} {NOBODY} 1\n");
            IdMaps {
                uid_map: m.clone(),
                gid_map: m,
                deny_setgroups: false,
            }
        } else {
            IdMaps {
                uid_map: format!("{0} {0} 1\n", f.caller.uid),
                gid_map: format!("{0} {0} 1\n", f.caller.gid),
                deny_setgroups: true,
            }
        }
    });
    let root = ns.then(|| {
        f.allow
            .root_plan(setup.fresh_proc, setup.read_only, cfg.disk_quota_bytes)
    });
    let cpu = cfg.timeout.as_secs_f64().ceil() as u64 + 1;
    // RLIMIT_* are `c_uint` on glibc but `c_int` on musl.
    #[allow(clippy::unnecessary_cast)]
    let mut rlimits = vec![
        (libc::RLIMIT_CPU as u32, cpu, cpu + 1),
        (
            libc::RLIMIT_AS as u32,
            cfg.address_space_bytes,
            cfg.address_space_bytes,
        ),
        (
            libc::RLIMIT_FSIZE as u32,
            cfg.file_size_bytes,
            cfg.file_size_bytes,
        ),
        (
            libc::RLIMIT_NOFILE as u32,
            cfg.max_open_files,
            cfg.max_open_files,
        ),
        (libc::RLIMIT_CORE as u32, 0, 0),
    ];
    if let Some(n) = nproc_limit(f, setup) {
        #[allow(clippy::unnecessary_cast)]
        rlimits.push((libc::RLIMIT_NPROC as u32, n, n));
    }
    let landlock = setup.landlock.map(|abi| {
        if ns {
            f.allow.landlock_in_root(abi)
        } else {
            f.allow.landlock_on_host(abi, Path::new("."))
        }
    });
    let seccomp = if setup.seccomp {
        Filter::new(!ns).map(|f| f.instructions().to_vec())
    } else {
        None
    };
    let exe = super::rootfs::cstr(&f.python.executable);
    Prepared {
        child: ChildConfig {
            clone_flags,
            root,
            drop_privileges: ns || f.caller.root,
            clear_groups: setup.clear_groups,
            rlimits,
            landlock,
            seccomp,
            exe,
            scrub: f.scrub.clone(),
        },
        mode: setup.mode,
        id_maps,
        scratch: f.scratch.clone(),
        ids: setup.ids(&f.caller),
        // Slack for processes the caller starts between the count and the clone.
        nproc_above_caller: (nproc_limit(f, setup).is_none())
            .then_some(u64::from(cfg.max_processes) + 1 + 8),
        chown_folder: !ns && f.caller.root,
        timeout: cfg
            .timeout
            .max(std::time::Duration::from_secs(10))
            .min(cfg.timeout * 10),
        driver: CString::new(DRIVER).unwrap_or_default(),
        guard_arg: CString::new(if cfg.humaneval_guard {
            "guard"
        } else {
            "noguard"
        })
        .unwrap_or_default(),
        sys_path_args: f
            .python
            .sys_path
            .iter()
            .map(|p| CString::new(p.as_str()).unwrap_or_default())
            .collect(),
    }
}

/// Probes the ladder and returns the working setup with its report.
pub(crate) fn probe(cfg: &SandboxConfig) -> Result<(Prepared, IsolationReport), SandboxError> {
    let python = PythonInstall::discover(&cfg.python)?;
    let allow = FsAllowList::new(&python);
    // SAFETY: plain id queries.
    let caller = unsafe {
        Caller {
            root: libc::geteuid() == 0,
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    };
    let scratch = cfg.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let abi = landlock::abi_version();
    let f = Fixed {
        cfg,
        python,
        allow,
        caller,
        scratch,
        scrub: scrub_ranges(),
    };

    let mut modes = Vec::new();
    if cfg.use_namespaces {
        modes.push(Mode::UserNamespace);
        if f.caller.root {
            modes.push(Mode::RootNamespaces);
        }
    }
    modes.push(Mode::Plain);
    let mut notes: Vec<String> = Vec::new();
    if abi.is_none() {
        notes.push("Landlock: not available in this kernel".into());
    }
    let mut last_error: Option<SandboxError> = None;
    for mode in modes {
        let mut setup = Setup::initial(mode, abi, &f.caller);
        for _attempt in 0..8 {
            let mut prepared = build(&f, &setup);
            match spawn::run_program(&prepared, "pass\n", true) {
                Ok(run) if run.outcome.status == Status::Passed => {
                    prepared.timeout = cfg.timeout;
                    let report = describe::report(&f, &setup, &prepared, &notes);
                    check_strict(cfg, &report, &notes)?;
                    return Ok((prepared, report));
                }
                Ok(run) => {
                    notes.push(format!(
                        "{}: probe program got {:?}",
                        mode.name(),
                        run.outcome.result
                    ));
                    last_error = Some(SandboxError::Probe {
                        mode: mode.name().into(),
                        result: run.outcome.result,
                        stderr: run.stderr,
                    });
                    break;
                }
                Err(SandboxError::Setup {
                    step: name,
                    code,
                    source,
                    stderr,
                }) => {
                    let s = code & 0xff;
                    let op = (code >> 8) as usize;
                    let is_proc = prepared
                        .child
                        .root
                        .as_ref()
                        .and_then(|r| r.ops.get(op))
                        .is_some_and(|o| matches!(o, RootOp::Proc(_)));
                    let why = format!("{name} failed ({source})");
                    if s == step::ROOT_OP && is_proc && setup.fresh_proc {
                        setup.fresh_proc = false;
                        notes.push(format!("fresh /proc: {why}; /proc is empty inside"));
                    } else if (s == step::READ_ONLY || s == step::WRITABLE_WORKDIR)
                        && setup.read_only
                    {
                        setup.read_only = false;
                        notes.push(format!("read-only mounts: {why}"));
                    } else if s == step::LANDLOCK && setup.landlock.is_some() {
                        setup.landlock = None;
                        notes.push(format!("Landlock: {why}"));
                    } else if s == step::SECCOMP && setup.seccomp {
                        setup.seccomp = false;
                        notes.push(format!("seccomp: {why}"));
                    } else if s == step::SETGROUPS && setup.clear_groups {
                        setup.clear_groups = false;
                        notes.push(format!("setgroups: {why}; supplementary groups kept"));
                    } else {
                        notes.push(format!("{}: {why}", mode.name()));
                        last_error = Some(SandboxError::Setup {
                            step: name,
                            code,
                            source,
                            stderr,
                        });
                        break;
                    }
                }
                Err(
                    e @ (SandboxError::Spawn { .. }
                    | SandboxError::IdMap { .. }
                    | SandboxError::SupervisorDied { .. }),
                ) => {
                    notes.push(format!("{}: {e}", mode.name()));
                    last_error = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(last_error.unwrap_or(SandboxError::Insufficient {
        missing: vec!["every mode failed"],
        notes: notes.join("; "),
    }))
}

/// This process's argv and environment string areas (`/proc/self/stat` fields 48–51), each
/// kept only if it lies inside one writable mapping, so that zeroing it cannot fault.
fn scrub_ranges() -> Vec<(usize, usize)> {
    let (Ok(stat), Ok(maps)) = (
        std::fs::read_to_string("/proc/self/stat"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return Vec::new();
    };
    // Fields after the command name, which is in parentheses and may contain anything.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Vec::new();
    };
    // `rest` starts at field 3 (state); fields 48..=51 are at indices 45..=48.
    let all: Vec<&str> = rest.split_whitespace().collect();
    if all.len() < 49 {
        return Vec::new();
    }
    let num = |i: usize| all.get(i).and_then(|f| f.parse::<usize>().ok());
    let writable: Vec<(usize, usize)> = maps
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (range, perms) = (parts.next()?, parts.next()?);
            let (a, b) = range.split_once('-')?;
            perms.starts_with("rw").then_some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    [(num(45), num(46)), (num(47), num(48))]
        .into_iter()
        .filter_map(|(a, b)| Some((a?, b?)))
        .filter(|&(a, b)| a < b && writable.iter().any(|&(lo, hi)| lo <= a && b <= hi))
        .collect()
}

/// The threats [`Isolation::Strict`] insists on.
const ESSENTIAL: &[&str] = &[describe::NETWORK, describe::WRITES, describe::LEFTOVERS];

fn check_strict(
    cfg: &SandboxConfig,
    report: &IsolationReport,
    notes: &[String],
) -> Result<(), SandboxError> {
    if cfg.isolation == Isolation::BestEffort {
        return Ok(());
    }
    let missing: Vec<&'static str> = report
        .guarantees
        .iter()
        .filter(|g| ESSENTIAL.contains(&g.threat) && g.blocked_by.is_empty())
        .map(|g| g.threat)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SandboxError::Insufficient {
            missing,
            notes: notes.join("; "),
        })
    }
}
