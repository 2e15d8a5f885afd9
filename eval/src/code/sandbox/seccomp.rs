//! A seccomp-BPF filter: no network sockets, no kernel attack surface the tests never need.
//!
//! Written as raw classic BPF rather than with `seccompiler` for two reasons: the filter must be
//! installed in a child created by a raw `clone` (no allocation there, so the program is built
//! in the parent and the child only calls `seccomp(2)`), and on x86_64 the x32 system call range
//! (`nr | 0x4000_0000`) must be refused as a whole, or `socket` could be reached through it.
//!
//! What the filter does, in order:
//! 1. any other architecture (e.g. i386 `int 0x80` on x86_64) kills the process;
//! 2. x32 system calls fail with `ENOSYS`;
//! 3. the deny list fails with `EPERM` (ptrace, bpf, io_uring, mount, namespaces, keyrings…);
//! 4. `clone3` fails with `ENOSYS` (its flags are behind a pointer BPF cannot read; glibc then
//!    falls back to `clone`), and `clone` with any namespace flag fails with `EPERM`;
//! 5. `socket`/`socketpair` with any family but `AF_UNIX` fail with `EACCES`, so no TCP, UDP,
//!    raw, netlink, vsock or `AF_ALG` socket exists, even where no network namespace does;
//! 6. optionally `setsid`/`setpgid` fail with `EPERM`: without a PID namespace this keeps every
//!    descendant in the process group that the timeout kills.

/// The `seccomp_data` offsets classic BPF loads from.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Low 32 bits of `args[0]` (little-endian; both supported targets are).
const OFF_ARG0_LO: u32 = 16;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const fn ret_errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Namespace flags `clone` may not carry inside the sandbox.
const CLONE_NS_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// System calls refused with `EPERM`: debugging other processes, loading kernel code, changing
/// mounts or namespaces, keyrings, and the io_uring/userfaultfd/perf/bpf interfaces behind most
/// recent local privilege escalations. Python's standard library needs none of them.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
];

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug)]
pub(crate) struct Filter {
    program: Vec<libc::sock_filter>,
    deny_new_session: bool,
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl Filter {
    /// Builds the filter for this architecture, or `None` where the sandbox has no syscall table
    /// for it (the report then says seccomp is off).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn new(deny_new_session: bool) -> Option<Self> {
        let mut p = vec![
            stmt(BPF_LD_W_ABS, OFF_ARCH),
            jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
            stmt(BPF_RET_K, RET_KILL),
            stmt(BPF_LD_W_ABS, OFF_NR),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            p.push(jump(BPF_JGE_K, 0x4000_0000, 0, 1));
            p.push(stmt(BPF_RET_K, ret_errno(libc::ENOSYS)));
        }
        let mut deny: Vec<libc::c_long> = DENIED.to_vec();
        if deny_new_session {
            deny.push(libc::SYS_setsid);
            deny.push(libc::SYS_setpgid);
        }
        for nr in deny {
            p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
            p.push(stmt(BPF_RET_K, ret_errno(libc::EPERM)));
        }
        p.push(jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
        p.push(stmt(BPF_RET_K, ret_errno(libc::ENOSYS)));
        // clone: [nr == clone?] [load flags] [any namespace flag?] [EPERM] [ALLOW]
        p.push(jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 4));
        p.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(BPF_JSET_K, CLONE_NS_FLAGS, 0, 1));
        p.push(stmt(BPF_RET_K, ret_errno(libc::EPERM)));
        p.push(stmt(BPF_RET_K, RET_ALLOW));
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            // [nr == socket?] [load family] [family == AF_UNIX?] [ALLOW] [EACCES]
            p.push(jump(BPF_JEQ_K, nr as u32, 0, 4));
            p.push(stmt(BPF_LD_W_ABS, OFF_ARG0_LO));
            p.push(jump(BPF_JEQ_K, libc::AF_UNIX as u32, 0, 1));
            p.push(stmt(BPF_RET_K, RET_ALLOW));
            p.push(stmt(BPF_RET_K, ret_errno(libc::EACCES)));
        }
        p.push(stmt(BPF_RET_K, RET_ALLOW));
        Some(Self {
            program: p,
            deny_new_session,
        })
    }

    /// No syscall table for this architecture: seccomp stays off and the report says so.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn new(_deny_new_session: bool) -> Option<Self> {
        None
    }

    /// What the report says this filter blocks.
    pub fn describe(&self) -> String {
        let mut s = String::from(
            "socket()/socketpair() of every family but AF_UNIX; ptrace, bpf, io_uring, userfaultfd, \
             perf, keyrings, module loading, mount and namespace calls; foreign-arch and x32 calls",
        );
        if self.deny_new_session {
            s.push_str("; setsid/setpgid (keeps descendants in the killed process group)");
        }
        s
    }

    /// The program, for `sock_fprog`. The parent keeps it alive while the child installs it.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.program
    }
}

/// Installs `filter` on the calling thread. Runs in the child after `clone`: no allocation.
/// `no_new_privs` must already be set. Returns errno on failure.
pub(crate) fn install_in_child(filter: &[libc::sock_filter]) -> Result<(), i32> {
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at a valid BPF program that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// A tiny classic-BPF interpreter for the instructions this file emits, so the filter's
    /// decisions can be checked without installing it.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LO => arg0,
                        k => panic!("unexpected load offset {k}"),
                    };
                    pc += 1;
                }
                BPF_RET_K => return i.k,
                c => {
                    let taken = match c {
                        BPF_JEQ_K => acc == i.k,
                        BPF_JGE_K => acc >= i.k,
                        BPF_JSET_K => acc & i.k != 0,
                        c => panic!("unexpected opcode {c:#x}"),
                    };
                    pc += 1 + if taken { i.jt as usize } else { i.jf as usize };
                }
            }
        }
    }

    #[test]
    fn filter_allows_unix_sockets_and_refuses_inet() {
        let f = Filter::new(false).unwrap();
        let p = f.instructions();
        let sock = libc::SYS_socket as u32;
        assert_eq!(run(p, AUDIT_ARCH, sock, libc::AF_UNIX as u32), RET_ALLOW);
        assert_eq!(
            run(p, AUDIT_ARCH, sock, libc::AF_INET as u32),
            ret_errno(libc::EACCES)
        );
        assert_eq!(
            run(p, AUDIT_ARCH, sock, libc::AF_INET6 as u32),
            ret_errno(libc::EACCES)
        );
        assert_eq!(
            run(p, AUDIT_ARCH, sock, libc::AF_NETLINK as u32),
            ret_errno(libc::EACCES)
        );
        assert_eq!(
            run(
                p,
                AUDIT_ARCH,
                libc::SYS_socketpair as u32,
                libc::AF_INET as u32
            ),
            ret_errno(libc::EACCES)
        );
    }

    #[test]
    fn filter_denies_listed_calls_and_foreign_arches() {
        let f = Filter::new(false).unwrap();
        let p = f.instructions();
        assert_eq!(
            run(p, AUDIT_ARCH, libc::SYS_ptrace as u32, 0),
            ret_errno(libc::EPERM)
        );
        assert_eq!(
            run(p, AUDIT_ARCH, libc::SYS_io_uring_setup as u32, 0),
            ret_errno(libc::EPERM)
        );
        assert_eq!(
            run(p, AUDIT_ARCH, libc::SYS_clone3 as u32, 0),
            ret_errno(libc::ENOSYS)
        );
        assert_eq!(run(p, 0x4000_0003, libc::SYS_read as u32, 0), RET_KILL);
        assert_eq!(run(p, AUDIT_ARCH, libc::SYS_read as u32, 0), RET_ALLOW);
        assert_eq!(run(p, AUDIT_ARCH, libc::SYS_setsid as u32, 0), RET_ALLOW);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            run(p, AUDIT_ARCH, 0x4000_0000 | libc::SYS_socket as u32, 2),
            ret_errno(libc::ENOSYS)
        );
    }

    #[test]
    fn filter_refuses_namespace_clones_but_allows_fork() {
        let f = Filter::new(true).unwrap();
        let p = f.instructions();
        let clone = libc::SYS_clone as u32;
        assert_eq!(run(p, AUDIT_ARCH, clone, libc::SIGCHLD as u32), RET_ALLOW);
        assert_eq!(
            run(
                p,
                AUDIT_ARCH,
                clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as u32
            ),
            ret_errno(libc::EPERM)
        );
        assert_eq!(
            run(p, AUDIT_ARCH, clone, libc::CLONE_NEWNET as u32),
            ret_errno(libc::EPERM)
        );
        assert_eq!(
            run(p, AUDIT_ARCH, libc::SYS_setsid as u32, 0),
            ret_errno(libc::EPERM)
        );
    }
}
