//! The code that runs between `clone` and `execve`.
//!
//! The parent is multi-threaded and the child is made with a raw `clone` system call (glibc's
//! `fork` cannot create namespaces, and `std::process` cannot either). Until `execve` the child
//! may therefore only make system calls: another thread may have held the allocator's or
//! glibc's locks at the instant of the clone, and glibc still believes those threads exist (so
//! even `setresuid`, which glibc broadcasts to "all threads", must be the raw system call). Every
//! string, path, mask and BPF program is prepared by the parent in [`ChildConfig`] and
//! [`ChildRun`]; nothing here allocates, formats or panics.
//!
//! Two processes run this code. The **supervisor** (the clone; PID 1 of the new PID namespace
//! when there is one) builds the sandbox, drops privileges, then clones the **program** process,
//! which arranges its file descriptors and `execve`s Python. The supervisor waits for it and
//! reports its wait status. When a PID namespace exists the supervisor's exit makes the kernel
//! kill everything left inside, setsid'd grandchildren included.
//!
//! Progress goes to the parent on the status pipe as fixed 12-byte records (atomic pipe writes):
//! `READY`, `FAIL(step, errno)` or `EXIT(wait status)`.

use std::ffi::{CStr, CString};

use super::landlock::LandlockPlan;

/// Record tags on the status pipe.
pub(crate) const TAG_READY: u32 = 1;
pub(crate) const TAG_FAIL: u32 = 2;
pub(crate) const TAG_EXIT: u32 = 3;

/// Setup steps, as reported in `FAIL` records (`step | index << 8`).
pub(crate) mod step {
    pub const SYNC: u32 = 1;
    pub const PROCESS_GROUP: u32 = 2;
    pub const MAKE_PRIVATE: u32 = 3;
    pub const ROOT_TMPFS: u32 = 4;
    pub const CHDIR_ROOT: u32 = 5;
    pub const ROOT_OP: u32 = 6;
    pub const PIVOT_ROOT: u32 = 7;
    pub const DETACH_OLD_ROOT: u32 = 8;
    pub const READ_ONLY: u32 = 9;
    pub const WRITABLE_WORKDIR: u32 = 10;
    pub const CHDIR_WORKDIR: u32 = 11;
    pub const SETGROUPS: u32 = 12;
    pub const SETGID: u32 = 13;
    pub const SETUID: u32 = 14;
    pub const NO_NEW_PRIVS: u32 = 15;
    pub const DUMPABLE: u32 = 16;
    pub const RLIMIT: u32 = 17;
    pub const LANDLOCK: u32 = 18;
    pub const SECCOMP: u32 = 19;
    pub const FORK_PROGRAM: u32 = 20;
    pub const PROGRAM_FDS: u32 = 21;
    pub const EXEC: u32 = 22;
    pub const PDEATHSIG: u32 = 23;

    /// A readable name for a step code, for error messages.
    pub fn name(code: u32) -> String {
        let (s, i) = (code & 0xff, code >> 8);
        let base = match s {
            SYNC => "waiting for the parent's id maps",
            PROCESS_GROUP => "setpgid",
            MAKE_PRIVATE => "making mounts private",
            ROOT_TMPFS => "mounting the new root tmpfs",
            CHDIR_ROOT => "entering the new root",
            ROOT_OP => "building the new root",
            PIVOT_ROOT => "pivot_root",
            DETACH_OLD_ROOT => "detaching the old root",
            READ_ONLY => "mount_setattr(read-only)",
            WRITABLE_WORKDIR => "making the sandbox folder writable",
            CHDIR_WORKDIR => "entering the sandbox folder",
            SETGROUPS => "setgroups",
            SETGID => "setresgid",
            SETUID => "setresuid",
            NO_NEW_PRIVS => "PR_SET_NO_NEW_PRIVS",
            DUMPABLE => "PR_SET_DUMPABLE",
            RLIMIT => "setrlimit",
            LANDLOCK => "Landlock",
            SECCOMP => "seccomp",
            FORK_PROGRAM => "starting the program process",
            PROGRAM_FDS => "arranging the program's file descriptors",
            EXEC => "execve of the Python interpreter",
            PDEATHSIG => "PR_SET_PDEATHSIG",
            _ => "unknown step",
        };
        if matches!(s, ROOT_OP | RLIMIT | LANDLOCK) {
            format!("{base} (#{i})")
        } else {
            base.to_string()
        }
    }
}

/// One operation building the new root, on paths relative to it.
#[derive(Debug, Clone)]
pub(crate) enum RootOp {
    Mkdir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// An empty file, used as the mount point of a file bind (device nodes).
    Touch(CString),
    Bind {
        src: CString,
        dst: CString,
        recursive: bool,
    },
    /// A fresh procfs of the new PID namespace.
    Proc(CString),
    /// The sandbox folder: a size-limited tmpfs, then handed to the run's ids.
    Tmpfs {
        dst: CString,
        data: CString,
    },
}

/// How to build the private root file system (mount namespace modes).
#[derive(Debug, Clone)]
pub(crate) struct RootPlan {
    pub root_tmpfs_data: CString,
    pub ops: Vec<RootOp>,
    /// Remount everything read-only except the sandbox folder (`mount_setattr`, Linux 5.12).
    pub read_only: bool,
    /// The sandbox folder inside the new root, absolute.
    pub workdir: CString,
}

/// Everything fixed for the life of a [`super::Sandbox`].
#[derive(Debug)]
pub(crate) struct ChildConfig {
    /// `CLONE_NEW*` flags for the supervisor.
    pub clone_flags: libc::c_int,
    pub root: Option<RootPlan>,
    /// Switch to the run's ids ([`ChildRun::ids`]) before running anything.
    pub drop_privileges: bool,
    /// Clear supplementary groups (impossible after an unprivileged `setgroups` "deny").
    pub clear_groups: bool,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub landlock: Option<LandlockPlan>,
    pub seccomp: Option<Vec<libc::sock_filter>>,
    pub exe: CString,
    /// `[start, end)` address ranges of the parent's argv and environment strings, zeroed in
    /// the supervisor so that `/proc/1/cmdline` shows nothing of the harness.
    pub scrub: Vec<(usize, usize)>,
}

/// Per-run file descriptors and strings. All fds are `O_CLOEXEC` in the parent.
pub(crate) struct ChildRun<'a> {
    pub cfg: &'a ChildConfig,
    /// The new root's mount point (namespace modes) or the sandbox folder (no mount namespace).
    pub dir: &'a CStr,
    pub program_fd: libc::c_int,
    pub result_w: libc::c_int,
    pub status_w: libc::c_int,
    pub devnull: libc::c_int,
    /// Read end of the id-map handshake, `-1` without a user namespace.
    pub sync_r: libc::c_int,
    /// Where the program's stderr goes; `devnull` unless the probe captures it.
    pub stderr_w: libc::c_int,
    /// The uid/gid the program runs as (inside the user namespace, if any).
    pub ids: (libc::uid_t, libc::gid_t),
    /// A per-run `RLIMIT_NPROC`, applied after [`ChildConfig::rlimits`].
    pub nproc: Option<u64>,
    /// The fds above, sorted, for closing everything else.
    pub keep_sorted: [libc::c_int; 6],
    pub argv: &'a [*const libc::c_char],
    pub envp: &'a [*const libc::c_char],
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(fd: libc::c_int, tag: u32, a: u32, b: u32) {
    let mut rec = [0u8; 12];
    rec[0..4].copy_from_slice(&tag.to_ne_bytes());
    rec[4..8].copy_from_slice(&a.to_ne_bytes());
    rec[8..12].copy_from_slice(&b.to_ne_bytes());
    // SAFETY: writing a stack buffer to our own pipe; 12 bytes < PIPE_BUF is atomic.
    unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

fn fail(fd: libc::c_int, step: u32, errno: i32) -> ! {
    report(fd, TAG_FAIL, step, errno as u32);
    // SAFETY: terminating the child without running any destructor or atexit handler.
    unsafe { libc::_exit(126) }
}

fn check(r: libc::c_long, fd: libc::c_int, step: u32) {
    if r < 0 {
        fail(fd, step, errno());
    }
}

/// Closes every fd from 3 up except those in `keep` (sorted; negatives ignored).
fn close_all_but(keep: &[libc::c_int]) {
    let mut lo: libc::c_uint = 3;
    for &fd in keep {
        if fd < 0 || (fd as libc::c_uint) < lo {
            continue;
        }
        if fd as libc::c_uint > lo {
            close_range(lo, fd as libc::c_uint - 1);
        }
        lo = fd as libc::c_uint + 1;
    }
    close_range(lo, libc::c_uint::MAX);
}

fn close_range(lo: libc::c_uint, hi: libc::c_uint) {
    // SAFETY: closing fds in our own (child) table.
    let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
    if r < 0 {
        // Kernels before 5.9: close one by one up to a bound no real fd table reaches here.
        for fd in lo..=hi.min(65_535) {
            unsafe { libc::close(fd as libc::c_int) };
        }
    }
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;

fn mount_setattr(path: &CStr, recursive: bool, set: u64, clr: u64) -> libc::c_long {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 } as libc::c_uint;
    // SAFETY: `attr` is a valid uapi struct of the size passed; `path` is NUL-terminated.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    }
}

const DOT: &CStr = c".";
const SLASH: &CStr = c"/";
const PROC: &CStr = c"proc";
const TMPFS: &CStr = c"tmpfs";

/// Builds the private root described by `plan` in `dir` and enters it.
fn build_root(plan: &RootPlan, dir: &CStr, ids: (libc::uid_t, libc::gid_t), st: libc::c_int) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY (whole function): every pointer is a NUL-terminated string owned by the plan or a
    // constant, and every call only changes this child's own mount namespace.
    unsafe {
        check(
            libc::mount(
                null,
                SLASH.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as _,
            st,
            step::MAKE_PRIVATE,
        );
        check(
            libc::mount(
                TMPFS.as_ptr(),
                dir.as_ptr(),
                TMPFS.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                plan.root_tmpfs_data.as_ptr().cast(),
            ) as _,
            st,
            step::ROOT_TMPFS,
        );
        check(libc::chdir(dir.as_ptr()) as _, st, step::CHDIR_ROOT);
        for (i, op) in plan.ops.iter().enumerate() {
            let code = step::ROOT_OP | ((i as u32) << 8);
            let r = match op {
                RootOp::Mkdir(p) => libc::mkdir(p.as_ptr(), 0o755),
                RootOp::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()),
                RootOp::Touch(p) => {
                    let fd = libc::open(
                        p.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644 as libc::c_uint,
                    );
                    if fd >= 0 {
                        libc::close(fd);
                    }
                    fd.min(0)
                }
                RootOp::Bind {
                    src,
                    dst,
                    recursive,
                } => {
                    let rec = if *recursive { libc::MS_REC } else { 0 };
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | rec,
                        std::ptr::null(),
                    )
                }
                RootOp::Proc(p) => libc::mount(
                    PROC.as_ptr(),
                    p.as_ptr(),
                    PROC.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ),
                RootOp::Tmpfs { dst, data } => {
                    let r = libc::mount(
                        TMPFS.as_ptr(),
                        dst.as_ptr(),
                        TMPFS.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        data.as_ptr().cast(),
                    );
                    if r == 0 {
                        libc::chown(dst.as_ptr(), ids.0, ids.1)
                    } else {
                        r
                    }
                }
            };
            check(r as _, st, code);
        }
        // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
        // only the new root (the runc idiom, which needs no spare directory).
        check(
            libc::syscall(libc::SYS_pivot_root, DOT.as_ptr(), DOT.as_ptr()),
            st,
            step::PIVOT_ROOT,
        );
        check(
            libc::umount2(DOT.as_ptr(), libc::MNT_DETACH) as _,
            st,
            step::DETACH_OLD_ROOT,
        );
        check(libc::chdir(SLASH.as_ptr()) as _, st, step::CHDIR_ROOT);
        if plan.read_only {
            check(
                mount_setattr(SLASH, true, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0),
                st,
                step::READ_ONLY,
            );
            check(
                mount_setattr(&plan.workdir, false, 0, MOUNT_ATTR_RDONLY),
                st,
                step::WRITABLE_WORKDIR,
            );
        }
        check(
            libc::chdir(plan.workdir.as_ptr()) as _,
            st,
            step::CHDIR_WORKDIR,
        );
    }
}

/// The supervisor: runs in the clone, never returns.
///
/// # Safety
/// Must only be called in a child just created by a raw `clone` (or `fork`), with `run`
/// pointing into memory that the parent prepared before the clone.
pub(crate) unsafe fn supervisor_main(run: &ChildRun<'_>) -> ! {
    let st = run.status_w;
    close_all_but(&run.keep_sorted);
    for &(start, end) in &run.cfg.scrub {
        // SAFETY: the parent checked that the range lies in one writable mapping of its own
        // (the initial stack); this is our private copy-on-write copy of it.
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
    // SAFETY (whole block): plain system calls on this process.
    unsafe {
        // If the worker thread that spawned us goes away, so do we (and with us the namespace).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        check(libc::setpgid(0, 0) as _, st, step::PROCESS_GROUP);
        if run.sync_r >= 0 {
            let mut b = 0u8;
            loop {
                let n = libc::read(run.sync_r, (&mut b as *mut u8).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && errno() == libc::EINTR {
                    continue;
                }
                // The parent gave up (its end closed without the go byte).
                libc::_exit(125);
            }
            libc::close(run.sync_r);
        }
        let cfg = run.cfg;
        match &cfg.root {
            Some(plan) => build_root(plan, run.dir, run.ids, st),
            None => check(libc::chdir(run.dir.as_ptr()) as _, st, step::CHDIR_WORKDIR),
        }
        if cfg.drop_privileges {
            let (uid, gid) = run.ids;
            if cfg.clear_groups {
                check(
                    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()),
                    st,
                    step::SETGROUPS,
                );
            }
            check(
                libc::syscall(libc::SYS_setresgid, gid, gid, gid),
                st,
                step::SETGID,
            );
            check(
                libc::syscall(libc::SYS_setresuid, uid, uid, uid),
                st,
                step::SETUID,
            );
        }
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) as _,
            st,
            step::NO_NEW_PRIVS,
        );
        // Not dumpable: the program, running as the same user, cannot read this process's
        // memory or /proc/1/environ (it is a copy of the parent's, environment included).
        check(
            libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) as _,
            st,
            step::DUMPABLE,
        );
        // A credential change cleared the death signal; set it again.
        check(
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) as _,
            st,
            step::PDEATHSIG,
        );
        for (i, &(res, soft, hard)) in cfg.rlimits.iter().enumerate() {
            let lim = libc::rlimit64 {
                rlim_cur: soft,
                rlim_max: hard,
            };
            let r = libc::syscall(
                libc::SYS_prlimit64,
                0,
                res,
                &lim as *const libc::rlimit64,
                std::ptr::null::<libc::rlimit64>(),
            );
            check(r, st, step::RLIMIT | ((i as u32) << 8));
        }
        if let Some(n) = run.nproc {
            let lim = libc::rlimit64 {
                rlim_cur: n,
                rlim_max: n,
            };
            let r = libc::syscall(
                libc::SYS_prlimit64,
                0,
                libc::RLIMIT_NPROC,
                &lim as *const libc::rlimit64,
                std::ptr::null::<libc::rlimit64>(),
            );
            check(r, st, step::RLIMIT | (0xff << 8));
        }
        if let Some(ll) = &cfg.landlock
            && let Err((i, e)) = ll.apply_in_child()
        {
            fail(st, step::LANDLOCK | (i.min(0xff_ffff) << 8), e);
        }
        if let Some(filter) = &cfg.seccomp
            && let Err(e) = super::seccomp::install_in_child(filter)
        {
            fail(st, step::SECCOMP, e);
        }
        report(st, TAG_READY, 0, 0);

        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid == 0 {
            program_main(run);
        }
        check(pid, st, step::FORK_PROGRAM);
        let pid = pid as libc::pid_t;
        libc::close(run.result_w);
        libc::close(run.program_fd);
        libc::close(run.devnull);
        if run.stderr_w != run.devnull {
            libc::close(run.stderr_w);
        }
        // Reap until the program itself exits (as PID 1 we also reap orphans).
        let mut status: libc::c_int = 0;
        loop {
            let mut s: libc::c_int = 0;
            let r = libc::waitpid(-1, &mut s, 0);
            if r == pid {
                status = s;
                break;
            }
            if r < 0 && errno() != libc::EINTR {
                break;
            }
        }
        report(st, TAG_EXIT, status as u32, 0);
        libc::_exit(0)
    }
}

/// The program process: fds 0 = program text, 1 = /dev/null, 2 = stderr sink, 3 = verdict pipe,
/// 4 = status pipe (close-on-exec, for reporting a failed `execve`); then Python.
fn program_main(run: &ChildRun<'_>) -> ! {
    // SAFETY (whole function): system calls on this freshly cloned, single-threaded process.
    unsafe {
        let mut src = [
            run.program_fd,
            run.devnull,
            run.stderr_w,
            run.result_w,
            run.status_w,
        ];
        // Move any source that sits in the target range out of the way first.
        for fd in src.iter_mut() {
            if *fd <= 4 {
                let moved = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if moved < 0 {
                    fail(run.status_w, step::PROGRAM_FDS, errno());
                }
                *fd = moved;
            }
        }
        let st = src[4];
        for (target, &fd) in src.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                fail(st, step::PROGRAM_FDS, errno());
            }
        }
        let st = 4;
        libc::fcntl(st, libc::F_SETFD, libc::FD_CLOEXEC);
        close_range(5, libc::c_uint::MAX);
        // Signal dispositions set to "ignore" survive execve; give Python the defaults, and an
        // empty signal mask.
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::execve(run.cfg.exe.as_ptr(), run.argv.as_ptr(), run.envp.as_ptr());
        fail(st, step::EXEC, errno())
    }
}
