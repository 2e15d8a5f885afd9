//! Landlock, applied with raw system calls.
//!
//! Landlock lets an unprivileged process drop its own rights to the file system, to TCP, and
//! (ABI 6) to signal or connect to anything outside its domain. The `landlock` crate builds
//! rulesets with heap allocations and `std::fs`, but the sandbox applies its rules in a child
//! created by a raw `clone` of a multi-threaded parent, where only async-signal-safe system calls
//! are allowed: so the parent computes every mask here, and the child only calls
//! `landlock_create_ruleset`, `open`, `landlock_add_rule` and `landlock_restrict_self`.
//!
//! Rights are "best effort" the same way the crate does it: the ABI version is asked once, and
//! only the rights that version knows are handled.

use std::ffi::CString;

/// Rights on files and directories (uapi `LANDLOCK_ACCESS_FS_*`).
pub(crate) mod fs {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    /// ABI 2.
    pub const REFER: u64 = 1 << 13;
    /// ABI 3.
    pub const TRUNCATE: u64 = 1 << 14;
    /// ABI 5.
    pub const IOCTL_DEV: u64 = 1 << 15;

    /// Every right of ABI 1.
    pub const V1: u64 = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    /// The only rights a rule on a non-directory may carry.
    pub const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
    /// Reading and running, nothing that changes anything.
    pub const READ_EXECUTE: u64 = EXECUTE | READ_FILE | READ_DIR;
}

/// uapi `LANDLOCK_ACCESS_NET_*` (ABI 4).
const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
/// uapi `LANDLOCK_SCOPE_*` (ABI 6).
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

// The three Landlock system calls have the same numbers on every architecture (generic table).
const SYS_CREATE_RULESET: libc::c_long = 444;
const SYS_ADD_RULE: libc::c_long = 445;
const SYS_RESTRICT_SELF: libc::c_long = 446;

/// uapi `struct landlock_ruleset_attr`. Older kernels take a prefix of it: a larger struct whose
/// extra fields are zero is accepted (`copy_struct_from_user`).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// uapi `struct landlock_path_beneath_attr`, which is packed.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel, or `None` when Landlock is absent or off.
pub(crate) fn abi_version() -> Option<u32> {
    // SAFETY: with a null attribute and the VERSION flag the call only returns a number.
    let v = unsafe {
        libc::syscall(
            SYS_CREATE_RULESET,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    (v >= 1).then_some(v as u32)
}

/// Everything the child needs to restrict itself, computed in the parent.
#[derive(Debug, Clone)]
pub(crate) struct LandlockPlan {
    pub abi: u32,
    handled_fs: u64,
    handled_net: u64,
    scoped: u64,
    /// `(path, rights)`; rights are masked to `handled_fs` here and to [`fs::FILE_RIGHTS`] in the
    /// child when the path turns out not to be a directory. Missing paths are skipped.
    rules: Vec<(CString, u64)>,
}

impl LandlockPlan {
    /// A plan that handles every right `abi` knows, so that whatever no rule grants is denied:
    /// all file access outside the rules, every TCP bind and connect (ABI 4), and signals and
    /// abstract unix sockets that leave the sandbox (ABI 6).
    pub fn new(abi: u32) -> Self {
        let mut handled_fs = fs::V1;
        if abi >= 2 {
            handled_fs |= fs::REFER;
        }
        if abi >= 3 {
            handled_fs |= fs::TRUNCATE;
        }
        if abi >= 5 {
            handled_fs |= fs::IOCTL_DEV;
        }
        let handled_net = if abi >= 4 {
            NET_BIND_TCP | NET_CONNECT_TCP
        } else {
            0
        };
        let scoped = if abi >= 6 {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        };
        Self {
            abi,
            handled_fs,
            handled_net,
            scoped,
            rules: Vec::new(),
        }
    }

    /// Grants `rights` beneath `path` (a directory) or on it (a file).
    pub fn allow(&mut self, path: CString, rights: u64) {
        let rights = rights & self.handled_fs;
        self.rules.push((path, rights));
    }

    /// Every right this plan handles on the file system: what the sandbox folder is given.
    pub fn all_fs(&self) -> u64 {
        self.handled_fs
    }

    /// What the report says this plan blocks.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!(
            "ABI {}: file access outside {} allowed paths",
            self.abi,
            self.rules.len()
        )];
        if self.handled_net != 0 {
            parts.push("all TCP bind/connect".into());
        }
        if self.scoped != 0 {
            parts.push("signals and abstract unix sockets leaving the sandbox".into());
        }
        parts.join("; ")
    }

    /// Restricts the calling process and all its future children.
    ///
    /// Runs in the sandbox's child after `clone`: system calls only, no allocation. Returns the
    /// failing step (`0` create, `1 + i` rule `i`, `u32::MAX` restrict) and errno on error.
    /// `no_new_privs` must already be set.
    pub fn apply_in_child(&self) -> Result<(), (u32, i32)> {
        let attr = RulesetAttr {
            handled_access_fs: self.handled_fs,
            handled_access_net: self.handled_net,
            scoped: self.scoped,
        };
        // SAFETY: `attr` is a valid, fully initialised uapi struct of the size passed.
        let ruleset = unsafe {
            libc::syscall(
                SYS_CREATE_RULESET,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if ruleset < 0 {
            return Err((0, errno()));
        }
        let ruleset = ruleset as libc::c_int;
        for (i, (path, rights)) in self.rules.iter().enumerate() {
            // SAFETY: `path` is a NUL-terminated string owned by the plan.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                // A path that does not exist in this view grants nothing; that is not an error.
                continue;
            }
            // SAFETY: `stat` is plain old data; fstat fills it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let is_dir = unsafe { libc::fstat(fd, &mut st) } == 0
                && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
            let allowed = if is_dir {
                *rights
            } else {
                *rights & fs::FILE_RIGHTS
            };
            let rule = PathBeneathAttr {
                allowed_access: allowed,
                parent_fd: fd,
            };
            // SAFETY: `rule` is a valid packed uapi struct; `ruleset` is our fd.
            let r = unsafe {
                libc::syscall(
                    SYS_ADD_RULE,
                    ruleset,
                    RULE_PATH_BENEATH,
                    &rule as *const PathBeneathAttr,
                    0u32,
                )
            };
            let e = errno();
            unsafe { libc::close(fd) };
            if r < 0 && allowed != 0 {
                unsafe { libc::close(ruleset) };
                return Err((1 + i as u32, e));
            }
        }
        // SAFETY: restricts only the calling thread (the child is single-threaded).
        let r = unsafe { libc::syscall(SYS_RESTRICT_SELF, ruleset, 0u32) };
        let e = errno();
        unsafe { libc::close(ruleset) };
        if r < 0 {
            return Err((u32::MAX, e));
        }
        Ok(())
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_handles_only_rights_the_abi_knows() {
        let v1 = LandlockPlan::new(1);
        assert_eq!(v1.all_fs() & (fs::REFER | fs::TRUNCATE | fs::IOCTL_DEV), 0);
        assert_eq!(v1.handled_net, 0);
        assert_eq!(v1.scoped, 0);
        let v6 = LandlockPlan::new(6);
        assert_ne!(v6.all_fs() & fs::IOCTL_DEV, 0);
        assert_eq!(v6.handled_net, NET_BIND_TCP | NET_CONNECT_TCP);
        assert_eq!(v6.scoped, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL);
    }

    #[test]
    fn rules_are_masked_to_handled_rights() {
        let mut p = LandlockPlan::new(1);
        p.allow(CString::new("/").unwrap_or_default(), u64::MAX);
        assert_eq!(p.rules[0].1, p.all_fs());
    }

    #[test]
    fn path_beneath_attr_is_packed_like_the_uapi() {
        assert_eq!(std::mem::size_of::<PathBeneathAttr>(), 12);
        assert_eq!(std::mem::size_of::<RulesetAttr>(), 24);
    }
}
