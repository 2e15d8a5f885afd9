//! The parent's side of one run: `clone`, id maps, the deadline, the kill, and the verdict.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::child::{self, ChildConfig, ChildRun, TAG_EXIT, TAG_FAIL, TAG_READY, step};
use super::host::{
    Folder, Tree, io_err, memfd, pipe, poll, read_some, set_nonblocking, write_maps,
};
use super::rootfs::{SANDBOX_DIR, cstr};
use super::{Outcome, SandboxError, Status};

/// Which namespaces the supervisor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// User + PID + network + mount + IPC/UTS/cgroup namespaces; needs no host privilege.
    UserNamespace,
    /// The same without a user namespace (host root only, where user namespaces are refused).
    RootNamespaces,
    /// No namespaces: process group, Landlock, seccomp and rlimits only.
    Plain,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::UserNamespace => "user namespace",
            Mode::RootNamespaces => "namespaces as root (no user namespace)",
            Mode::Plain => "no namespaces",
        }
    }
    pub fn namespaces(self) -> bool {
        self != Mode::Plain
    }
}

/// Which uid/gid a run gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ids {
    /// The same ids every run (the user-namespace mode, where `RLIMIT_NPROC` is counted per
    /// namespace anyway, and unprivileged callers, who have only their own ids).
    Fixed(u32, u32),
    /// Host root without a user namespace: each run gets its own unused uid/gid from
    /// `PER_RUN_ID_BASE`, so that `RLIMIT_NPROC` budgets and `kill(-1)` stay within one run.
    PerRun,
}

/// First uid/gid of the per-run range (4096 ids, far above any allocated range).
pub(crate) const PER_RUN_ID_BASE: u32 = 2_100_000_000;
const PER_RUN_ID_COUNT: u64 = 4096;

impl Ids {
    fn for_run(self, n: u64) -> (u32, u32) {
        match self {
            Ids::Fixed(u, g) => (u, g),
            Ids::PerRun => {
                let id = PER_RUN_ID_BASE + (n % PER_RUN_ID_COUNT) as u32;
                (id, id)
            }
        }
    }
}

/// `/proc/<pid>/{setgroups,uid_map,gid_map}` contents for the user-namespace mode.
#[derive(Debug, Clone)]
pub(crate) struct IdMaps {
    pub uid_map: String,
    pub gid_map: String,
    /// Unprivileged callers must deny `setgroups` before writing `gid_map`.
    pub deny_setgroups: bool,
}

/// Everything a run needs that does not change between runs.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub child: ChildConfig,
    pub mode: Mode,
    pub id_maps: Option<IdMaps>,
    pub scratch: PathBuf,
    /// The ids programs run as.
    pub ids: Ids,
    /// Without namespaces, a non-root caller's `RLIMIT_NPROC` counts all of its processes:
    /// each run then gets (the caller's current task count + this budget).
    pub nproc_above_caller: Option<u64>,
    /// Without a mount namespace the folder is the host directory: hand it to the run's ids.
    pub chown_folder: bool,
    pub timeout: Duration,
    pub driver: CString,
    pub guard_arg: CString,
    /// The interpreter's `sys.path`, one argument each.
    pub sys_path_args: Vec<CString>,
}

/// One run's outcome plus what the probe wants to see.
#[derive(Debug)]
pub(crate) struct RawRun {
    pub outcome: Outcome,
    pub stderr: String,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);
/// Caps on what the parent reads back; a program cannot make the harness hoard memory.
const MAX_RESULT_BYTES: usize = 1 << 20;
const MAX_STDERR_BYTES: usize = 64 << 10;
const MAX_STATUS_BYTES: usize = 4 << 10;

/// Runs one program in a fresh sandbox.
pub(crate) fn run_program(
    p: &Prepared,
    program: &str,
    capture_stderr: bool,
) -> Result<RawRun, SandboxError> {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let me = std::process::id();
    let run_id = format!("tessera-run-{me}-{n}");
    let ids = p.ids.for_run(n);
    // The time component keeps names unique when a later process reuses this pid and finds
    // a folder left by one that crashed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let folder = Folder::create(
        p.scratch
            .join(format!("tessera-sandbox-{me}-{n}-{nanos:x}")),
        p.chown_folder.then_some(ids),
        p.mode.namespaces(),
    )?;
    let program_fd = memfd(program)?;
    let (status_r, status_w) = pipe()?;
    let (result_r, result_w) = pipe()?;
    let sync = if p.id_maps.is_some() {
        Some(pipe()?)
    } else {
        None
    };
    let stderr_pipe = if capture_stderr { Some(pipe()?) } else { None };
    let devnull: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io_err("opening", Path::new("/dev/null")))?
        .into();

    let dir = cstr(&folder.path);
    let workdir = if p.child.root.is_some() {
        SANDBOX_DIR.to_string()
    } else {
        folder.path.display().to_string()
    };
    let c = |s: String| CString::new(s).unwrap_or_default();
    let mut argv_store = vec![
        p.child.exe.clone(),
        c("-I".into()),
        c("-S".into()),
        c("-c".into()),
        p.driver.clone(),
        p.guard_arg.clone(),
    ];
    argv_store.extend(p.sys_path_args.iter().cloned());
    argv_store.push(c(run_id.clone()));
    let env_store = [
        c("PATH=/usr/local/bin:/usr/bin:/bin".into()),
        c("LANG=C.UTF-8".into()),
        c(format!("HOME={workdir}")),
        c(format!("TMPDIR={workdir}")),
    ];
    let mut argv: Vec<*const libc::c_char> = argv_store.iter().map(|s| s.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_store.iter().map(|s| s.as_ptr()).collect();
    envp.push(std::ptr::null());
    let stderr_w = stderr_pipe
        .as_ref()
        .map_or(devnull.as_raw_fd(), |(_, w)| w.as_raw_fd());
    let sync_r = sync.as_ref().map_or(-1, |(r, _)| r.as_raw_fd());
    let mut keep_sorted = [
        program_fd.as_raw_fd(),
        result_w.as_raw_fd(),
        status_w.as_raw_fd(),
        devnull.as_raw_fd(),
        sync_r,
        stderr_w,
    ];
    keep_sorted.sort_unstable();
    let run = ChildRun {
        cfg: &p.child,
        dir: &dir,
        program_fd: program_fd.as_raw_fd(),
        result_w: result_w.as_raw_fd(),
        status_w: status_w.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
        sync_r,
        stderr_w,
        ids,
        nproc: p
            .nproc_above_caller
            .map(|budget| tasks_of_uid(ids.0) + budget),
        keep_sorted,
        argv: &argv,
        envp: &envp,
    };

    let start = Instant::now();
    let flags = (p.child.clone_flags | libc::SIGCHLD) as libc::c_ulong;
    let mut attempts = 0;
    let pid = loop {
        // SAFETY: a fork-like clone (no CLONE_VM, no new stack). The child only runs
        // `supervisor_main`, which makes raw system calls on memory prepared above and never
        // returns; the parent continues normally.
        let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
        if r == 0 {
            // SAFETY: we are the freshly cloned child.
            unsafe { child::supervisor_main(&run) }
        }
        if r > 0 {
            break r as libc::pid_t;
        }
        let e = std::io::Error::last_os_error();
        attempts += 1;
        if e.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 {
            std::thread::sleep(Duration::from_millis(10 * attempts));
            continue;
        }
        return Err(SandboxError::Spawn { source: e });
    };
    let mut tree = Tree {
        pid,
        group: !p.mode.namespaces(),
        reaped: None,
    };
    drop((program_fd, status_w, result_w, devnull));
    let stderr_r = stderr_pipe.map(|(r, _w)| r);
    let sync_w = sync.map(|(_r, w)| w);
    if let (Some(maps), Some(w)) = (&p.id_maps, &sync_w) {
        write_maps(pid, maps)?;
        // SAFETY: one byte to our own pipe.
        unsafe { libc::write(w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
    drop(sync_w);

    let mut streams = Streams::new(status_r, result_r, stderr_r);
    let timed_out = streams.wait(start + p.timeout);
    let wall = start.elapsed();
    tree.kill();
    streams.drain_after_kill();
    let supervisor_status = tree.reap();
    drop(tree);
    folder.finish()?;
    interpret(&streams, timed_out, supervisor_status, wall, run_id)
}

/// The three pipes the parent reads, and what came through them.
struct Streams {
    status: OwnedFd,
    result: OwnedFd,
    stderr: Option<OwnedFd>,
    status_buf: Vec<u8>,
    result_buf: Vec<u8>,
    stderr_buf: Vec<u8>,
    status_open: bool,
}

impl Streams {
    fn new(status: OwnedFd, result: OwnedFd, stderr: Option<OwnedFd>) -> Self {
        for fd in [&status, &result].into_iter().chain(stderr.as_ref()) {
            set_nonblocking(fd);
        }
        Self {
            status,
            result,
            stderr,
            status_buf: Vec::new(),
            result_buf: Vec::new(),
            stderr_buf: Vec::new(),
            status_open: true,
        }
    }

    /// Waits for a complete verdict, the supervisor's end, or `deadline`; true on the deadline.
    fn wait(&mut self, deadline: Instant) -> bool {
        let (mut result_open, mut stderr_open) = (true, self.stderr.is_some());
        loop {
            if verdict(&self.result_buf).is_some() || self.result_buf.len() >= MAX_RESULT_BYTES {
                return false;
            }
            if !self.status_open {
                // The supervisor is gone; whatever verdict the program wrote is in the pipe.
                if result_open {
                    read_some(&self.result, &mut self.result_buf, MAX_RESULT_BYTES);
                }
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            let mut watch: Vec<&OwnedFd> = vec![&self.status];
            if result_open {
                watch.push(&self.result);
            }
            if let (true, Some(e)) = (stderr_open, self.stderr.as_ref()) {
                watch.push(e);
            }
            poll(&watch, deadline - now);
            self.status_open = read_some(&self.status, &mut self.status_buf, MAX_STATUS_BYTES);
            if result_open {
                result_open = read_some(&self.result, &mut self.result_buf, MAX_RESULT_BYTES);
            }
            if let (true, Some(e)) = (stderr_open, self.stderr.as_ref()) {
                stderr_open = read_some(e, &mut self.stderr_buf, MAX_STDERR_BYTES);
            }
        }
    }

    /// After the kill: the supervisor's records up to its death are in the pipe until EOF.
    fn drain_after_kill(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while self.status_open && Instant::now() < until {
            poll(&[&self.status], Duration::from_millis(50));
            self.status_open = read_some(&self.status, &mut self.status_buf, MAX_STATUS_BYTES);
        }
        if let Some(e) = self.stderr.as_ref() {
            read_some(e, &mut self.stderr_buf, MAX_STDERR_BYTES);
        }
    }

    /// The status records: `[tag, a, b]`.
    fn records(&self) -> Vec<[u32; 3]> {
        self.status_buf
            .chunks_exact(12)
            .map(|r| {
                let w = |i: usize| u32::from_ne_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
                [w(0), w(4), w(8)]
            })
            .collect()
    }
}

/// Turns what the pipes said into a verdict, in order of precedence: the driver's verdict, a
/// setup failure (an error, not a verdict), the deadline, how the program ended, how the
/// supervisor ended.
fn interpret(
    s: &Streams,
    timed_out: bool,
    supervisor_status: libc::c_int,
    wall: Duration,
    run_id: String,
) -> Result<RawRun, SandboxError> {
    let stderr = String::from_utf8_lossy(&s.stderr_buf).into_owned();
    let done = |status, result: String| {
        Ok(RawRun {
            outcome: Outcome {
                status,
                result,
                wall,
                run_id: run_id.clone(),
            },
            stderr: stderr.clone(),
        })
    };
    let records = s.records();
    if let Some(v) = verdict(&s.result_buf) {
        let result =
            v.unwrap_or_else(|| "failed: the program corrupted the verdict channel".to_string());
        let status = match result.as_str() {
            "passed" => Status::Passed,
            "timed out" => Status::TimedOut,
            _ => Status::Failed,
        };
        return done(status, result);
    }
    if s.result_buf.len() >= MAX_RESULT_BYTES {
        return done(
            Status::Failed,
            format!("failed: the verdict is longer than {MAX_RESULT_BYTES} bytes"),
        );
    }
    if let Some(f) = records.iter().find(|r| r[0] == TAG_FAIL) {
        return Err(SandboxError::Setup {
            step: step::name(f[1]),
            code: f[1],
            source: std::io::Error::from_raw_os_error(f[2] as i32),
            stderr,
        });
    }
    if timed_out {
        return done(Status::TimedOut, "timed out".into());
    }
    if let Some(r) = records.iter().find(|r| r[0] == TAG_EXIT) {
        let ws = r[1] as libc::c_int;
        if libc::WIFSIGNALED(ws) && libc::WTERMSIG(ws) == libc::SIGXCPU {
            // The CPU-time limit is a timeout by another clock.
            return done(Status::TimedOut, "timed out".into());
        }
        return done(
            Status::Failed,
            format!(
                "failed: the program {} before reporting a result",
                describe_wait(ws)
            ),
        );
    }
    if !records.iter().any(|r| r[0] == TAG_READY) {
        return Err(SandboxError::SupervisorDied {
            status: describe_wait(supervisor_status),
            stderr,
        });
    }
    done(
        Status::Failed,
        format!(
            "failed: the sandbox supervisor {}",
            describe_wait(supervisor_status)
        ),
    )
}

/// Tasks (threads included, as `RLIMIT_NPROC` counts them) whose real uid is `uid`.
fn tasks_of_uid(uid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let real_uid = field("Uid:")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        if real_uid == Some(uid) {
            n += field("Threads:")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
        }
    }
    n
}

/// The driver's verdict, `"<byte length>\n<utf-8 text>"`: `None` while incomplete,
/// `Some(None)` when malformed.
fn verdict(buf: &[u8]) -> Option<Option<String>> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let Some(len) = std::str::from_utf8(&buf[..nl])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return Some(None);
    };
    let body = buf.get(nl + 1..nl + 1 + len)?;
    Some(Some(String::from_utf8_lossy(body).into_owned()))
}

/// "exited with status 3", "was killed by signal 11 (SIGSEGV)".
pub(crate) fn describe_wait(ws: libc::c_int) -> String {
    if libc::WIFEXITED(ws) {
        format!("exited with status {}", libc::WEXITSTATUS(ws))
    } else if libc::WIFSIGNALED(ws) {
        let s = libc::WTERMSIG(ws);
        let name = match s {
            libc::SIGKILL => "SIGKILL",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGILL => "SIGILL",
            libc::SIGSYS => "SIGSYS",
            libc::SIGTERM => "SIGTERM",
            libc::SIGXCPU => "SIGXCPU",
            libc::SIGXFSZ => "SIGXFSZ",
            _ => "signal",
        };
        format!("was killed by signal {s} ({name})")
    } else {
        format!("ended with wait status {ws:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_are_described_with_signal_names() {
        assert_eq!(describe_wait(3 << 8), "exited with status 3");
        assert_eq!(
            describe_wait(libc::SIGSEGV),
            "was killed by signal 11 (SIGSEGV)"
        );
    }

    #[test]
    fn verdicts_are_length_prefixed_and_may_span_lines() {
        assert_eq!(verdict(b"6\npassed"), Some(Some("passed".into())));
        assert_eq!(
            verdict(b"11\nfailed: a\nb"),
            Some(Some("failed: a\nb".into()))
        );
        assert_eq!(verdict(b"20\nfailed"), None);
        assert_eq!(verdict(b"12"), None);
        assert_eq!(verdict(b"x\n"), Some(None));
    }
}
