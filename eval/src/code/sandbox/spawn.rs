//! The parent's side of one run: folder, pipes, `clone`, id maps, deadline, kill, verdict.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::child::{self, ChildConfig, ChildRun, TAG_EXIT, TAG_FAIL, TAG_READY, step};
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

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io_err("creating a pipe", Path::new("pipe2"))(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The program text as an in-memory file: the program reads it on stdin, and no pipe has to
/// be fed while the clock runs.
fn memfd(program: &str) -> Result<OwnedFd, SandboxError> {
    let err = io_err("creating the program memfd", Path::new("memfd"));
    // SAFETY: the name is a NUL-terminated constant.
    let fd = unsafe { libc::memfd_create(c"tessera-program".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is fresh and ours.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let r = f
        .write_all(program.as_bytes())
        .and_then(|_| f.seek(SeekFrom::Start(0)).map(|_| ()));
    r.map_err(io_err("writing the program memfd", Path::new("memfd")))?;
    Ok(f.into())
}

/// The per-run host folder. Inside the namespaces it is only the new root's mount point and
/// must still be empty afterwards; without them it is the program's folder.
struct Folder {
    path: PathBuf,
    must_stay_empty: bool,
    done: bool,
}

impl Folder {
    fn create(
        path: PathBuf,
        chown: Option<(u32, u32)>,
        must_stay_empty: bool,
    ) -> Result<Self, SandboxError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_err("creating the sandbox folder", &path))?;
        let folder = Self {
            path,
            must_stay_empty,
            done: false,
        };
        if let Some((uid, gid)) = chown {
            std::os::unix::fs::chown(&folder.path, Some(uid), Some(gid)).map_err(io_err(
                "handing the sandbox folder to the sandbox user",
                &folder.path,
            ))?;
        }
        Ok(folder)
    }

    fn finish(mut self) -> Result<(), SandboxError> {
        self.done = true;
        if !self.must_stay_empty {
            return force_remove(&self.path)
                .map_err(io_err("removing the sandbox folder", &self.path));
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOTEMPTY)
                    || e.raw_os_error() == Some(libc::EEXIST) =>
            {
                let _ = force_remove(&self.path);
                Err(SandboxError::HostFolderWritten {
                    path: self.path.clone(),
                })
            }
            Err(e) => Err(io_err("removing the sandbox folder", &self.path)(e)),
        }
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        if !self.done {
            let _ = force_remove(&self.path);
        }
    }
}

/// `remove_dir_all`, after making directories writable again if the program locked them.
fn force_remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            unlock_dirs(path);
            std::fs::remove_dir_all(path)
        }
        Err(_) => Ok(()),
        Ok(()) => Ok(()),
    }
}

fn unlock_dirs(path: &Path) {
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.is_dir()
    {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                unlock_dirs(&e.path());
            }
        }
    }
}

/// The supervisor process; killed and reaped on drop, so no early return leaks a sandbox.
struct Tree {
    pid: libc::pid_t,
    /// Without a PID namespace, kill the process group too.
    group: bool,
    reaped: Option<libc::c_int>,
}

impl Tree {
    fn kill(&self) {
        if self.reaped.is_some() {
            return;
        }
        // SAFETY: the supervisor is our unreaped child, so its pid (and, as a zombie at worst,
        // its process group id) cannot have been reused.
        unsafe {
            if self.group {
                libc::killpg(self.pid, libc::SIGKILL);
            }
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    fn reap(&mut self) -> libc::c_int {
        if let Some(s) = self.reaped {
            return s;
        }
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid
                || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
            {
                break;
            }
        }
        self.reaped = Some(status);
        status
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill();
        self.reap();
    }
}

fn write_maps(pid: libc::pid_t, maps: &IdMaps) -> Result<(), SandboxError> {
    let write = |name: &str, content: &str| -> Result<(), SandboxError> {
        let path = PathBuf::from(format!("/proc/{pid}/{name}"));
        // One write(2): the kernel takes a map in a single write.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(content.as_bytes()))
            .map_err(|source| SandboxError::IdMap { path, source })
    };
    if maps.deny_setgroups {
        write("setgroups", "deny")?;
    }
    write("uid_map", &maps.uid_map)?;
    write("gid_map", &maps.gid_map)
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: flag change on our own descriptor.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Reads what is available; `false` at end of file.
fn read_some(fd: &OwnedFd, buf: &mut Vec<u8>, cap: usize) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n > 0 {
            let room = cap.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..(n as usize).min(room)]);
            continue;
        }
        if n == 0 {
            return false;
        }
        let e = std::io::Error::last_os_error().raw_os_error();
        if e == Some(libc::EINTR) {
            continue;
        }
        // EAGAIN: nothing more for now. Any other error ends the stream.
        return e == Some(libc::EAGAIN);
    }
}

/// Polls `fds` until one is readable or `timeout` passes.
fn poll(fds: &[&OwnedFd], timeout: Duration) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|f| libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout
        .as_micros()
        .div_ceil(1000)
        .clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `p` is a valid array of pollfd of the length passed.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
}

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
    let folder = Folder::create(
        p.scratch.join(format!("tessera-sandbox-{me}-{n}")),
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

    // Wait for a verdict line, the supervisor's end, or the deadline.
    for fd in [&status_r, &result_r].into_iter().chain(stderr_r.as_ref()) {
        set_nonblocking(fd);
    }
    let deadline = start + p.timeout;
    let (mut status_buf, mut result_buf, mut stderr_buf) = (Vec::new(), Vec::new(), Vec::new());
    let (mut status_open, mut result_open, mut stderr_open) = (true, true, stderr_r.is_some());
    let mut timed_out = false;
    loop {
        if verdict(&result_buf).is_some() || result_buf.len() >= MAX_RESULT_BYTES {
            break;
        }
        if !status_open {
            if result_open {
                read_some(&result_r, &mut result_buf, MAX_RESULT_BYTES);
            }
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        let mut watch: Vec<&OwnedFd> = vec![&status_r];
        if result_open {
            watch.push(&result_r);
        }
        if let (true, Some(e)) = (stderr_open, stderr_r.as_ref()) {
            watch.push(e);
        }
        poll(&watch, deadline - now);
        status_open = read_some(&status_r, &mut status_buf, MAX_STATUS_BYTES);
        if result_open {
            result_open = read_some(&result_r, &mut result_buf, MAX_RESULT_BYTES);
        }
        if let (true, Some(e)) = (stderr_open, stderr_r.as_ref()) {
            stderr_open = read_some(e, &mut stderr_buf, MAX_STDERR_BYTES);
        }
    }
    let wall = start.elapsed();
    tree.kill();
    // The supervisor is dying; its records up to now are in the pipe until end of file.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while status_open && Instant::now() < drain_until {
        poll(&[&status_r], Duration::from_millis(50));
        status_open = read_some(&status_r, &mut status_buf, MAX_STATUS_BYTES);
    }
    if let Some(e) = stderr_r.as_ref() {
        read_some(e, &mut stderr_buf, MAX_STDERR_BYTES);
    }
    let supervisor_status = tree.reap();
    drop(tree);
    folder.finish()?;

    let stderr = String::from_utf8_lossy(&stderr_buf).into_owned();
    let outcome = |status, result: String| Outcome {
        status,
        result,
        wall,
        run_id: run_id.clone(),
    };
    let records: Vec<[u32; 3]> = status_buf
        .chunks_exact(12)
        .map(|r| {
            let w = |i: usize| u32::from_ne_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
            [w(0), w(4), w(8)]
        })
        .collect();
    let ready = records.iter().any(|r| r[0] == TAG_READY);
    let failure = records.iter().find(|r| r[0] == TAG_FAIL);
    let exit = records
        .iter()
        .find(|r| r[0] == TAG_EXIT)
        .map(|r| r[1] as libc::c_int);

    if let Some(v) = verdict(&result_buf) {
        let result = v.unwrap_or_else(|| "failed: the program corrupted the verdict channel".to_string());
        let status = match result.as_str() {
            "passed" => Status::Passed,
            "timed out" => Status::TimedOut,
            _ => Status::Failed,
        };
        return Ok(RawRun {
            outcome: outcome(status, result),
            stderr,
        });
    }
    if result_buf.len() >= MAX_RESULT_BYTES {
        let result = format!("failed: the verdict is longer than {MAX_RESULT_BYTES} bytes");
        return Ok(RawRun {
            outcome: outcome(Status::Failed, result),
            stderr,
        });
    }
    if let Some(f) = failure {
        return Err(SandboxError::Setup {
            step: step::name(f[1]),
            code: f[1],
            source: std::io::Error::from_raw_os_error(f[2] as i32),
            stderr,
        });
    }
    if timed_out {
        return Ok(RawRun {
            outcome: outcome(Status::TimedOut, "timed out".into()),
            stderr,
        });
    }
    if let Some(ws) = exit {
        let o = if libc::WIFSIGNALED(ws) && libc::WTERMSIG(ws) == libc::SIGXCPU {
            // The CPU-time limit is a timeout by another clock.
            outcome(Status::TimedOut, "timed out".into())
        } else {
            outcome(
                Status::Failed,
                format!(
                    "failed: the program {} before reporting a result",
                    describe_wait(ws)
                ),
            )
        };
        return Ok(RawRun { outcome: o, stderr });
    }
    if !ready {
        return Err(SandboxError::SupervisorDied {
            status: describe_wait(supervisor_status),
            stderr,
        });
    }
    let result = format!(
        "failed: the sandbox supervisor {}",
        describe_wait(supervisor_status)
    );
    Ok(RawRun {
        outcome: outcome(Status::Failed, result),
        stderr,
    })
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
    let Some(len) = std::str::from_utf8(&buf[..nl]).ok().and_then(|s| s.parse::<usize>().ok()) else {
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
    use std::io::Read;

    fn read_all(mut r: impl Read) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    }

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
        assert_eq!(verdict(b"11\nfailed: a\nb"), Some(Some("failed: a\nb".into())));
        assert_eq!(verdict(b"20\nfailed"), None);
        assert_eq!(verdict(b"12"), None);
        assert_eq!(verdict(b"x\n"), Some(None));
    }

    #[test]
    fn memfd_holds_the_program_from_its_start() {
        let fd = memfd("print(1)\n").unwrap();
        assert_eq!(read_all(std::fs::File::from(fd)), b"print(1)\n");
    }
}
