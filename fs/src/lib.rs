//! Durable writes, shared by every tessera crate.
//!
//! A reader must see a file's old bytes or its new bytes, never a mix, and a crash right after a
//! write returns must not lose it. [`atomic_write`] gives both: the bytes go to a uniquely named
//! temporary file in the destination's folder, which is fsynced, renamed over the destination,
//! and then the folder is fsynced so that the rename itself survives a power cut.
//!
//! The temporary name comes from `tempfile` (random, created with `O_EXCL`), so two writers of
//! the same path, or a stale temporary from a crashed process, never collide with it.

#![warn(missing_docs)]

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably (see the crate docs).
///
/// # Errors
/// Any I/O error, with the path it concerns in the message.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes))
}

/// Like [`atomic_write`], with the content produced by `fill` writing into the temporary file
/// (so a large file need not be held in memory first).
///
/// # Errors
/// Any I/O error from `fill` or the file system, with the path it concerns in the message.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = parent_of(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| with_path(e, dir))?;
    fill(tmp.as_file_mut()).map_err(|e| with_path(e, tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| with_path(e, tmp.path()))?;
    tmp.persist(path).map_err(|e| with_path(e.error, path))?;
    sync_dir(dir)
}

/// Whether `name` is a temporary file of an unfinished [`atomic_write`] (`.<name>.<random>.tmp`),
/// so that cleanups can recognise a crashed writer's leftovers.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// fsyncs a folder, making renames and creations inside it durable (a no-op where folders
/// cannot be opened, as on Windows).
///
/// # Errors
/// The I/O error, naming the folder.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Renames `from` to `to` and fsyncs the folder of `to` (and of `from`, when it differs).
///
/// # Errors
/// The I/O error, naming the paths.
pub fn durable_rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("renaming {} to {}: {e}", from.display(), to.display()),
        )
    })?;
    sync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        sync_dir(parent_of(from))?;
    }
    Ok(())
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The same error kind, with the path in front of the message.
fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    let text = e.to_string();
    if text.contains(&*path.to_string_lossy()) {
        return e;
    }
    std::io::Error::new(e.kind(), format!("{}: {text}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(names(dir.path()), vec!["a.json"]);
    }

    #[test]
    fn a_crashed_writers_temporary_is_recognisable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.00000.mds");
        let tmp = tempfile::Builder::new()
            .prefix(".shard.00000.mds.")
            .suffix(".tmp")
            .tempfile_in(dir.path())
            .unwrap();
        let name = tmp
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(is_temporary(&name), "{name}");
        assert!(!is_temporary("shard.00000.mds"));
        atomic_write(&path, b"x").unwrap();
    }

    #[test]
    fn a_file_named_like_a_temporary_is_not_touched() {
        // The quickstart once wrote `x.tmp` for `x.json`, clobbering a user's `x.tmp`.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.tmp"), b"mine").unwrap();
        std::fs::write(dir.path().join(".x.json.tmp"), b"mine too").unwrap();
        atomic_write(&dir.path().join("x.json"), b"new").unwrap();
        assert_eq!(std::fs::read(dir.path().join("x.tmp")).unwrap(), b"mine");
        assert_eq!(
            std::fs::read(dir.path().join(".x.json.tmp")).unwrap(),
            b"mine too"
        );
    }

    #[test]
    fn a_failed_fill_keeps_the_old_bytes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        atomic_write(&path, b"old").unwrap();
        let err = atomic_write_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), vec!["a.bin"]);
    }

    #[test]
    fn errors_name_the_path() {
        let err = atomic_write(Path::new("/nonexistent-tessera/dir/a.json"), b"x").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-tessera/dir"),
            "{err}"
        );
    }

    #[test]
    fn durable_rename_moves_across_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("a/f"), b"x").unwrap();
        durable_rename(&dir.path().join("a/f"), &dir.path().join("b/f")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("b/f")).unwrap(), b"x");
        let err = durable_rename(&dir.path().join("a/f"), &dir.path().join("b/g")).unwrap_err();
        assert!(err.to_string().contains("a/f"), "{err}");
    }
}
