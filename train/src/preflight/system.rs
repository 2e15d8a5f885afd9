//! What the operating system can tell about the machine: free disk, total RAM, this process's
//! peak memory, and whether a folder accepts files. Each returns `None`/`Err` rather than
//! guessing when the platform does not say.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Free bytes available to an unprivileged user on the filesystem holding `path` (or its
/// nearest existing ancestor): `statvfs`'s `f_bavail × f_frsize`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = nearest_existing(path)?;
    statvfs_free(&existing)
}

#[cfg(unix)]
fn statvfs_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized, writable
    // `statvfs` that the call fills in; nothing is read from it unless the call succeeded.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn statvfs_free(_path: &Path) -> Option<u64> {
    None
}

/// Total RAM (`MemTotal` of `/proc/meminfo`).
pub fn total_memory() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// This process's peak resident set so far (`VmHWM` of `/proc/self/status`).
pub fn peak_rss() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmHWM:",
    )
}

/// A `Name:   1234 kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut parts = line[name.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(value * 1024)
}

fn nearest_existing(path: &Path) -> Option<PathBuf> {
    let mut p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    Some(p)
}

/// Creates `dir` if needed, writes and syncs a probe file in it, and removes the probe and any
/// folders this call created, leaving the disk as it was.
pub fn probe_writable(dir: &Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err("it exists and is not a folder".into());
    }
    let mut missing = Vec::new();
    let mut p = dir.to_path_buf();
    while !p.as_os_str().is_empty() && !p.exists() {
        missing.push(p.clone());
        match p.parent() {
            Some(parent) => p = parent.to_path_buf(),
            None => break,
        }
    }
    let result = std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create it: {e}"))
        .and_then(|()| {
            let probe = dir.join(format!(".tessera-preflight-{}", std::process::id()));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&probe)?;
                f.write_all(b"tessera preflight probe\n")?;
                f.sync_all()
            };
            let r = write().map_err(|e| format!("cannot write a file there: {e}"));
            let _ = std::fs::remove_file(&probe);
            r
        });
    // Deepest first; `remove_dir` only removes empty folders, so nothing of anyone else's goes.
    for d in &missing {
        let _ = std::fs::remove_dir(d);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_in_bytes() {
        let status = "Name:\ttessera\nVmPeak:\t  2000 kB\nVmHWM:\t  1536 kB\n";
        assert_eq!(kib_field(status, "VmHWM:"), Some(1536 * 1024));
        assert_eq!(kib_field(status, "VmRSS:"), None);
        assert_eq!(kib_field("VmHWM: 12 MB\n", "VmHWM:"), None);
    }

    #[test]
    fn probing_leaves_no_trace_and_reports_what_blocks_it() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        probe_writable(&deep).unwrap();
        assert!(
            !tmp.path().join("a").exists(),
            "created folders must be removed again"
        );
        let file = tmp.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(probe_writable(&file).unwrap_err().contains("not a folder"));
        assert!(
            probe_writable(&file.join("sub"))
                .unwrap_err()
                .contains("cannot create")
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn linux_reports_disk_ram_and_peak_memory() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(free_bytes(&tmp.path().join("not/yet")).is_some_and(|b| b > 0));
        let (ram, peak) = (total_memory().unwrap(), peak_rss().unwrap());
        assert!(peak > 0 && peak < ram, "peak {peak} of {ram}");
    }
}
