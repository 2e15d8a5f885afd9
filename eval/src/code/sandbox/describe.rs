//! Building the [`IsolationReport`] from the setup the probe settled on: each layer with what
//! it does (or why it is off), and for each threat the active layers that block it.

use super::probe::{Fixed, NOBODY, Setup, nproc_limit};
use super::report::{Guarantee, IsolationReport, Layer, LayerStatus};
use super::rootfs::SANDBOX_DIR;
use super::seccomp::Filter;
use super::spawn::{Ids, Mode, PER_RUN_ID_BASE, Prepared};

pub(crate) const NETWORK: &str = "network access";
pub(crate) const WRITES: &str = "writes outside the sandbox folder";
pub(crate) const READS: &str = "reading host files (~/.ssh, the repository)";
pub(crate) const SECRETS: &str = "secrets in the harness's environment";
pub(crate) const LEFTOVERS: &str = "processes outliving the timeout (setsid'd grandchildren)";
pub(crate) const FORK_BOMB: &str = "fork bomb";
pub(crate) const MEMORY: &str = "memory exhaustion";
pub(crate) const DISK: &str = "filling the disk";
pub(crate) const SIGNALS: &str = "signalling or killing the harness";

pub(crate) fn report(
    f: &Fixed<'_>,
    setup: &Setup,
    p: &Prepared,
    notes: &[String],
) -> IsolationReport {
    let cfg = f.cfg;
    let ns = setup.mode.namespaces();
    let ids = setup.ids(&f.caller);
    let note_for = |key: &str, default: &str| -> String {
        notes
            .iter()
            .find(|n| n.starts_with(key))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let why_no_ns = if cfg.use_namespaces {
        notes
            .iter()
            .filter(|n| n.starts_with(Mode::UserNamespace.name()) || n.starts_with("namespaces"))
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        "namespaces switched off in SandboxConfig".to_string()
    };
    let not_ns = |what: &str| {
        if what.is_empty() {
            format!("not used ({why_no_ns})")
        } else {
            format!("not used ({why_no_ns}); {what}")
        }
    };
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let nproc = nproc_limit(f, setup);
    let nproc_how = match (setup.mode, nproc) {
        (Mode::UserNamespace, _) => "counted per sandbox (own user namespace)".to_string(),
        (_, Some(_)) => "counted per sandbox (each run has its own uid)".to_string(),
        (_, None) => format!(
            "counted with all of host uid {}'s processes: each run may add {} to their number at its start",
            f.caller.uid,
            cfg.max_processes + 9
        ),
    };
    let landlock_detail = match &p.child.landlock {
        Some(plan) => plan.describe(),
        None => note_for("Landlock", "off"),
    };
    let seccomp_detail = if setup.seccomp {
        Filter::new(!ns).map(|f| f.describe()).unwrap_or_default()
    } else {
        note_for("seccomp", "no syscall table for this architecture")
    };
    let binds: Vec<String> = f
        .allow
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let (uid_text, host_uid_text, unprivileged) = match ids {
        Ids::Fixed(u, _) if setup.mode == Mode::UserNamespace && f.caller.root => {
            (u.to_string(), format!("host uid {NOBODY}"), true)
        }
        Ids::Fixed(u, _) => (u.to_string(), format!("host uid {u}"), u != 0),
        Ids::PerRun => (
            format!("{PER_RUN_ID_BASE}+n"),
            format!("a distinct unused host uid per concurrent run ({PER_RUN_ID_BASE}..+4096)"),
            true,
        ),
    };
    let layers = vec![
        st(
            Layer::ProcessGroup,
            true,
            "each program leads its own process group".into(),
        ),
        st(
            Layer::UserNamespace,
            setup.mode == Mode::UserNamespace,
            if setup.mode == Mode::UserNamespace {
                format!("program uid {uid_text} is {host_uid_text}; no host privilege is used")
            } else {
                not_ns("")
            },
        ),
        st(
            Layer::PidNamespace,
            ns,
            if ns {
                "the supervisor is PID 1; when it exits the kernel kills every descendant, setsid'd ones included".into()
            } else {
                not_ns("the timeout kills the process group")
            },
        ),
        st(
            Layer::NetworkNamespace,
            ns,
            if ns {
                "only a loopback interface, and it is down".into()
            } else {
                not_ns("")
            },
        ),
        st(
            Layer::MountNamespace,
            ns,
            if ns {
                format!(
                    "private root with only {} bound in, a minimal /dev, and a tmpfs {SANDBOX_DIR} (cwd, HOME, \
                     TMPDIR; /tmp links to it); nothing else of the host exists inside",
                    binds.join(", ")
                )
            } else {
                not_ns("the program's folder is a host directory")
            },
        ),
        st(
            Layer::ReadOnlyMounts,
            ns && setup.read_only,
            if ns && setup.read_only {
                format!("everything but {SANDBOX_DIR} is read-only and nosuid")
            } else {
                note_for("read-only mounts", "needs a mount namespace")
            },
        ),
        st(
            Layer::FreshProc,
            ns && setup.fresh_proc,
            if ns && setup.fresh_proc {
                "/proc shows only the sandbox's processes".into()
            } else {
                note_for("fresh /proc", "needs PID and mount namespaces")
            },
        ),
        st(
            Layer::IpcUtsCgroupNamespaces,
            ns,
            if ns {
                "own SysV IPC, hostname and cgroup view".into()
            } else {
                not_ns("")
            },
        ),
        st(
            Layer::UnprivilegedUser,
            unprivileged,
            format!(
                "runs as {host_uid_text}{}",
                if setup.clear_groups {
                    " with no supplementary groups"
                } else {
                    ""
                }
            ),
        ),
        st(Layer::Landlock, p.child.landlock.is_some(), landlock_detail),
        st(Layer::Seccomp, p.child.seccomp.is_some(), seccomp_detail),
        st(
            Layer::Rlimits,
            true,
            format!(
                "CPU {} s, address space {:.0} MiB, file size {:.0} MiB, {} processes ({nproc_how}), {} open files, \
                 no core dumps",
                cfg.timeout.as_secs_f64().ceil() as u64 + 1,
                mib(cfg.address_space_bytes),
                mib(cfg.file_size_bytes),
                cfg.max_processes,
                cfg.max_open_files
            ),
        ),
        st(
            Layer::DiskQuota,
            ns,
            if ns {
                format!(
                    "{SANDBOX_DIR} is a {:.0} MiB tmpfs, gone when the sandbox ends",
                    mib(cfg.disk_quota_bytes)
                )
            } else {
                "no quota without a mount namespace; only the file-size limit".into()
            },
        ),
        st(
            Layer::EmptyEnvironment,
            true,
            "only PATH, LANG, HOME and TMPDIR; nothing inherited".into(),
        ),
        st(
            Layer::WallClockTimeout,
            true,
            format!(
                "{:.1} s; then {}",
                cfg.timeout.as_secs_f64(),
                if ns {
                    "the PID namespace is killed"
                } else {
                    "the process group is killed"
                }
            ),
        ),
    ];
    let on = |l: Layer| layers.iter().any(|s| s.layer == l && s.active);
    let pick = |ls: &[Layer]| -> Vec<Layer> { ls.iter().copied().filter(|l| on(*l)).collect() };
    let landlock_net = p.child.landlock.as_ref().is_some_and(|l| l.abi >= 4);
    let landlock_signals = p.child.landlock.as_ref().is_some_and(|l| l.abi >= 6);
    let mut network = pick(&[Layer::NetworkNamespace, Layer::Seccomp]);
    let network_note = if network.is_empty() && landlock_net {
        "Landlock alone blocks only TCP".to_string()
    } else {
        if landlock_net {
            network.push(Layer::Landlock);
        }
        String::new()
    };
    let mut writes = Vec::new();
    if on(Layer::MountNamespace) && on(Layer::ReadOnlyMounts) {
        writes.extend([Layer::MountNamespace, Layer::ReadOnlyMounts]);
    }
    writes.extend(pick(&[Layer::Landlock]));
    let leftovers = if on(Layer::PidNamespace) {
        vec![Layer::PidNamespace]
    } else if on(Layer::Seccomp) {
        vec![Layer::ProcessGroup, Layer::Seccomp]
    } else {
        vec![]
    };
    let mut signals = pick(&[Layer::PidNamespace, Layer::UnprivilegedUser]);
    if landlock_signals {
        signals.push(Layer::Landlock);
    }
    let g = |threat, blocked_by, note: String| Guarantee {
        threat,
        blocked_by,
        note,
    };
    let guarantees = vec![
        g(NETWORK, network, network_note),
        g(WRITES, writes, String::new()),
        g(
            READS,
            pick(&[Layer::MountNamespace, Layer::Landlock]),
            String::new(),
        ),
        g(
            SECRETS,
            pick(&[Layer::EmptyEnvironment]),
            format!(
                "the supervisor, a copy of the harness, is not dumpable (/proc/1/environ and its memory are \
                 unreadable){}",
                if f.scrub.is_empty() {
                    ""
                } else {
                    " and its argv/environment memory is zeroed"
                }
            ),
        ),
        g(LEFTOVERS, leftovers, String::new()),
        g(FORK_BOMB, pick(&[Layer::Rlimits]), nproc_how),
        g(
            MEMORY,
            pick(&[Layer::Rlimits]),
            format!(
                "address space per process; at most {} processes",
                cfg.max_processes
            ),
        ),
        g(
            DISK,
            pick(&[Layer::DiskQuota, Layer::Rlimits]),
            String::new(),
        ),
        g(SIGNALS, signals, String::new()),
    ];
    IsolationReport {
        layers,
        guarantees,
        python: format!("{} ({})", f.python.executable.display(), f.python.version),
    }
}

fn st(layer: Layer, active: bool, detail: String) -> LayerStatus {
    LayerStatus {
        layer,
        active,
        detail,
    }
}
