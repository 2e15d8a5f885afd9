//! What the sandboxed program may see: the Python install, the system libraries, and its folder.
//!
//! The same allow-list drives both file-system layers. With a mount namespace it becomes a new
//! root (a small tmpfs holding read-only bind mounts of exactly these paths, a minimal `/dev`, a
//! fresh `/proc` and a size-limited tmpfs sandbox folder), so that `~/.ssh`, the repository and
//! every other file on the host simply do not exist inside. Without one it becomes Landlock
//! rules on the host paths.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::SandboxError;
use super::child::{RootOp, RootPlan};
use super::landlock::{LandlockPlan, fs};

/// System directories Python and its shared libraries live in. `/etc` holds `ld.so.cache` and
/// time zone links; files in it that matter are not world-readable.
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];
/// Device nodes bound into the sandbox's `/dev`, with whether the program may write them.
const DEVICES: &[(&str, bool)] = &[
    ("null", true),
    ("zero", true),
    ("full", true),
    ("random", false),
    ("urandom", false),
];
/// The sandbox folder inside the new root: cwd, `HOME` and `TMPDIR` of the program.
pub(crate) const SANDBOX_DIR: &str = "/sandbox";

/// Prints what the sandbox needs to know about an interpreter, as JSON.
const DISCOVER: &str = "import sys, json; print(json.dumps({'executable': sys.executable, \
'version': sys.version.split()[0], 'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, \
sys.base_exec_prefix], 'path': sys.path}))";

/// A Python interpreter as the sandbox runs it.
#[derive(Debug, Clone)]
pub struct PythonInstall {
    /// The path that is `execve`d: the canonical directory of `sys.executable` plus its file
    /// name (a venv's `bin/python` symlink is kept, so that `pyvenv.cfg` is still found).
    pub executable: PathBuf,
    /// `sys.version`'s first word, e.g. `3.11.7`.
    pub version: String,
    /// `sys.path` as `site` computes it under `-I`; the sandbox runs Python with `-S` and sets
    /// this path itself, so `.pth` hooks never run there.
    pub sys_path: Vec<String>,
    /// Canonical directories (and files) the interpreter reads: its prefixes and `sys.path`.
    pub read_paths: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Discovered {
    executable: String,
    version: String,
    prefixes: Vec<String>,
    path: Vec<String>,
}

impl PythonInstall {
    /// Asks `python` (a name on `PATH` or a path; wrappers such as pyenv shims are fine, this runs
    /// with the caller's environment and no untrusted code) where it really lives.
    pub fn discover(python: &Path) -> Result<Self, SandboxError> {
        let out = Command::new(python)
            .args(["-I", "-c", DISCOVER])
            .output()
            .map_err(|source| SandboxError::Python {
                python: python.to_path_buf(),
                detail: format!("cannot run it: {source}"),
            })?;
        let bad = |detail: String| SandboxError::Python {
            python: python.to_path_buf(),
            detail,
        };
        if !out.status.success() {
            return Err(bad(format!(
                "discovery script exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let d: Discovered = serde_json::from_slice(&out.stdout).map_err(|e| {
            bad(format!(
                "unexpected discovery output ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })?;
        if d.executable.is_empty() {
            return Err(bad("sys.executable is empty".into()));
        }
        let exe = PathBuf::from(&d.executable);
        let (Some(dir), Some(name)) = (exe.parent(), exe.file_name()) else {
            return Err(bad(format!("sys.executable {exe:?} has no directory")));
        };
        let dir = dir
            .canonicalize()
            .map_err(|e| bad(format!("cannot resolve {dir:?}: {e}")))?;
        let executable = dir.join(name);
        let real = executable
            .canonicalize()
            .map_err(|e| bad(format!("cannot resolve {executable:?}: {e}")))?;
        let mut read_paths = vec![dir];
        if let Some(real_dir) = real.parent() {
            read_paths.push(real_dir.to_path_buf());
        }
        for p in d
            .prefixes
            .iter()
            .chain(d.path.iter())
            .filter(|p| !p.is_empty())
        {
            if let Ok(c) = Path::new(p).canonicalize() {
                read_paths.push(c);
            }
        }
        read_paths.sort();
        read_paths.dedup();
        Ok(Self {
            executable,
            version: d.version,
            sys_path: d.path,
            read_paths,
        })
    }
}

/// One allow-listed path and what it is on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    Dir(PathBuf),
    File(PathBuf),
    Symlink(PathBuf, PathBuf),
}

impl Entry {
    fn path(&self) -> &Path {
        match self {
            Entry::Dir(p) | Entry::File(p) | Entry::Symlink(p, _) => p,
        }
    }
}

/// The allow-list: system paths as they are (symlinks kept as symlinks) plus the interpreter's.
#[derive(Debug, Clone)]
pub(crate) struct FsAllowList {
    entries: Vec<Entry>,
}

impl FsAllowList {
    pub fn new(python: &PythonInstall) -> Self {
        let mut found = BTreeSet::new();
        let add_canonical = |p: &Path, found: &mut BTreeSet<Entry>| match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {
                found.insert(Entry::Dir(p.to_path_buf()));
            }
            Ok(_) => {
                found.insert(Entry::File(p.to_path_buf()));
            }
            Err(_) => {}
        };
        for s in SYSTEM_PATHS {
            let p = Path::new(s);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    if let (Ok(target), Ok(real)) = (std::fs::read_link(p), p.canonicalize()) {
                        found.insert(Entry::Symlink(p.to_path_buf(), target));
                        add_canonical(&real, &mut found);
                    }
                }
                Ok(_) => add_canonical(p, &mut found),
                Err(_) => {}
            }
        }
        for p in &python.read_paths {
            add_canonical(p, &mut found);
        }
        // Drop everything beneath a directory that is already bound whole.
        let mut entries: Vec<Entry> = Vec::new();
        let mut sorted: Vec<Entry> = found.into_iter().collect();
        sorted.sort_by(|a, b| a.path().cmp(b.path()));
        for e in sorted {
            let covered = entries
                .iter()
                .any(|k| matches!(k, Entry::Dir(d) if e.path().starts_with(d)));
            let same_path = entries.iter().any(|k| k.path() == e.path());
            if !covered && !same_path {
                entries.push(e);
            }
        }
        Self { entries }
    }

    /// Host paths the program may read, for Landlock rules and the report.
    pub fn paths(&self) -> Vec<&Path> {
        self.entries.iter().map(Entry::path).collect()
    }

    /// The new root for the mount-namespace modes.
    pub fn root_plan(&self, fresh_proc: bool, read_only: bool, quota_bytes: u64) -> RootPlan {
        let mut ops = Vec::new();
        let mut made: BTreeSet<PathBuf> = BTreeSet::new();
        let mut mkdir_all = |rel: &Path, ops: &mut Vec<RootOp>| {
            let mut cur = PathBuf::new();
            for c in rel.components() {
                cur.push(c);
                if made.insert(cur.clone()) {
                    ops.push(RootOp::Mkdir(cstr(&cur)));
                }
            }
        };
        let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
        for e in &self.entries {
            let r = rel(e.path());
            match e {
                Entry::Dir(src) => {
                    mkdir_all(&r, &mut ops);
                    ops.push(RootOp::Bind {
                        src: cstr(src),
                        dst: cstr(&r),
                        recursive: true,
                    });
                }
                Entry::File(src) => {
                    if let Some(parent) = r.parent() {
                        mkdir_all(parent, &mut ops);
                    }
                    ops.push(RootOp::Touch(cstr(&r)));
                    ops.push(RootOp::Bind {
                        src: cstr(src),
                        dst: cstr(&r),
                        recursive: false,
                    });
                }
                Entry::Symlink(_, target) => {
                    if let Some(parent) = r.parent() {
                        mkdir_all(parent, &mut ops);
                    }
                    ops.push(RootOp::Symlink {
                        target: cstr(target),
                        link: cstr(&r),
                    });
                }
            }
        }
        mkdir_all(Path::new("dev"), &mut ops);
        for (name, _) in DEVICES {
            let host = Path::new("/dev").join(name);
            if host.exists() {
                let r = Path::new("dev").join(name);
                ops.push(RootOp::Touch(cstr(&r)));
                ops.push(RootOp::Bind {
                    src: cstr(&host),
                    dst: cstr(&r),
                    recursive: false,
                });
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(RootOp::Symlink {
                target: cstr(Path::new(target)),
                link: cstr(&Path::new("dev").join(link)),
            });
        }
        mkdir_all(Path::new("proc"), &mut ops);
        if fresh_proc {
            ops.push(RootOp::Proc(cstr(Path::new("proc"))));
        }
        let sandbox = rel(Path::new(SANDBOX_DIR));
        mkdir_all(&sandbox, &mut ops);
        // Owned by root(-in-namespace) at first; the supervisor chowns it to the run's ids.
        let data = format!("size={quota_bytes},nr_inodes=4096,mode=0700");
        ops.push(RootOp::Tmpfs {
            dst: cstr(&sandbox),
            data: CString::new(data).unwrap_or_default(),
        });
        // `/tmp` leads into the sandbox folder, so code that writes to /tmp directly still works
        // (and still counts against the quota).
        if !made.contains(Path::new("tmp")) {
            ops.push(RootOp::Symlink {
                target: cstr(Path::new(SANDBOX_DIR)),
                link: cstr(Path::new("tmp")),
            });
        }
        RootPlan {
            root_tmpfs_data: CString::new("size=4m,nr_inodes=8192,mode=0755").unwrap_or_default(),
            ops,
            read_only,
            workdir: cstr(Path::new(SANDBOX_DIR)),
        }
    }

    /// Landlock rules inside a private root: read everything there is, write only the folder.
    pub fn landlock_in_root(&self, abi: u32) -> LandlockPlan {
        let mut p = LandlockPlan::new(abi);
        p.allow(cstr(Path::new("/")), fs::READ_EXECUTE);
        let all = p.all_fs();
        p.allow(cstr(Path::new(SANDBOX_DIR)), all);
        add_devices(&mut p, Path::new("/dev"));
        p
    }

    /// Landlock rules on the host: read the allow-list, write only `workdir`.
    pub fn landlock_on_host(&self, abi: u32, workdir_placeholder: &Path) -> LandlockPlan {
        let mut p = LandlockPlan::new(abi);
        for path in self.paths() {
            p.allow(cstr(path), fs::READ_EXECUTE);
        }
        let all = p.all_fs();
        p.allow(cstr(workdir_placeholder), all);
        add_devices(&mut p, Path::new("/dev"));
        p
    }
}

fn add_devices(p: &mut LandlockPlan, dev: &Path) {
    for (name, writable) in DEVICES {
        let rights = if *writable {
            fs::READ_FILE | fs::WRITE_FILE | fs::TRUNCATE | fs::IOCTL_DEV
        } else {
            fs::READ_FILE | fs::IOCTL_DEV
        };
        p.allow(cstr(&dev.join(name)), rights);
    }
}

/// A path as a C string. Paths come from the file system and cannot hold NUL bytes.
pub(crate) fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: Vec<Entry>) -> FsAllowList {
        FsAllowList { entries }
    }

    #[test]
    fn root_plan_creates_parents_before_binding_nested_interpreters() {
        let l = list(vec![
            Entry::Symlink("/bin".into(), "usr/bin".into()),
            Entry::Dir("/root/.pyenv/versions/3.11.7".into()),
            Entry::Dir("/usr".into()),
        ]);
        let plan = l.root_plan(true, true, 1 << 20);
        let names: Vec<String> = plan.ops.iter().map(|o| format!("{o:?}")).collect();
        let pos = |needle: &str| {
            names
                .iter()
                .position(|n| n.contains(needle))
                .unwrap_or(usize::MAX)
        };
        assert!(pos("Mkdir(\"root\")") < pos("Mkdir(\"root/.pyenv\")"));
        assert!(
            pos("Mkdir(\"root/.pyenv/versions/3.11.7\")")
                < pos("dst: \"root/.pyenv/versions/3.11.7\"")
        );
        assert!(
            names.iter().any(|n| n.contains("Symlink")
                && n.contains("\"usr/bin\"")
                && n.contains("\"bin\""))
        );
        assert!(names.iter().any(|n| n.starts_with("Proc(")));
        assert!(
            names
                .iter()
                .any(|n| n.contains("Tmpfs") && n.contains("size=1048576,"))
        );
    }

    #[test]
    fn root_plan_without_fresh_proc_leaves_proc_empty() {
        let plan = list(vec![Entry::Dir("/usr".into())]).root_plan(false, true, 1 << 20);
        assert!(!plan.ops.iter().any(|o| matches!(o, RootOp::Proc(_))));
    }

    #[test]
    fn allow_list_drops_paths_under_bound_directories() {
        let install = PythonInstall {
            executable: "/usr/bin/python3".into(),
            version: "3".into(),
            sys_path: vec![],
            read_paths: vec!["/usr/lib".into(), "/usr".into()],
        };
        let l = FsAllowList::new(&install);
        assert!(l.paths().contains(&Path::new("/usr")));
        assert!(!l.paths().contains(&Path::new("/usr/lib")));
    }
}
