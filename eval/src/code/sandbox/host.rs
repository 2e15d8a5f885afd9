//! The parent's resources for one run: the host folder, pipes, the program memfd, and the
//! handle on the supervisor process. Each cleans up on drop, so an early return never leaks a
//! folder or a sandbox.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SandboxError;
use super::spawn::IdMaps;

pub(super) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
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
pub(super) fn memfd(program: &str) -> Result<OwnedFd, SandboxError> {
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
pub(super) struct Folder {
    pub(super) path: PathBuf,
    must_stay_empty: bool,
    done: bool,
}

impl Folder {
    pub(super) fn create(
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

    pub(super) fn finish(mut self) -> Result<(), SandboxError> {
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
pub(super) struct Tree {
    pub(super) pid: libc::pid_t,
    /// Without a PID namespace, kill the process group too.
    pub(super) group: bool,
    pub(super) reaped: Option<libc::c_int>,
}

impl Tree {
    pub(super) fn kill(&self) {
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

    pub(super) fn reap(&mut self) -> libc::c_int {
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

pub(super) fn write_maps(pid: libc::pid_t, maps: &IdMaps) -> Result<(), SandboxError> {
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

pub(super) fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: flag change on our own descriptor.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// Reads what is available; `false` at end of file.
pub(super) fn read_some(fd: &OwnedFd, buf: &mut Vec<u8>, cap: usize) -> bool {
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
pub(super) fn poll(fds: &[&OwnedFd], timeout: Duration) {
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
    fn memfd_holds_the_program_from_its_start() {
        let fd = memfd("print(1)\n").unwrap();
        assert_eq!(read_all(std::fs::File::from(fd)), b"print(1)\n");
    }
}
