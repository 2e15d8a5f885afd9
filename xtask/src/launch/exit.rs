//! What a rank's end means for the job: done, never retry, or restart.
//!
//! The contract with `tessera train` (the same table is written into the Slurm script and the
//! Kubernetes podFailurePolicy):
//!
//! | how the rank ended | meaning | the launcher |
//! |---|---|---|
//! | exit 0 | finished | waits for the other ranks |
//! | exit 2 | bad config or input | stops every rank, never retries |
//! | exit 3 | the run diverged or a guard aborted it | stops every rank, never retries |
//! | exit 75 (`EX_TEMPFAIL`) | stall, lost or hung peer, remote timeout | restarts |
//! | exit 1, 101 (panic), any other code | other error | restarts |
//! | killed by a signal | crash, OOM killer, operator | restarts |

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Bad config or input: a restart would fail the same way.
pub const CONFIG_ERROR: i32 = 2;
/// The run diverged or a guard aborted it: restarting would repeat it.
pub const DIVERGED: i32 = 3;
/// A transient failure the trainer detected (its watchdog's code).
pub const STALL: i32 = 75;
/// Rust's exit code after a panic.
pub const PANIC: i32 = 101;

/// How a rank process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankEnd {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl RankEnd {
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => RankEnd::Code(code),
            (None, Some(sig)) => RankEnd::Signal(sig),
            // Neither a code nor a signal cannot happen for a reaped child on Unix.
            (None, None) => RankEnd::Code(1),
        }
    }

    pub fn succeeded(self) -> bool {
        self == RankEnd::Code(0)
    }

    /// Whether restarting the job can help.
    pub fn retryable(self) -> bool {
        !matches!(self, RankEnd::Code(0 | CONFIG_ERROR | DIVERGED))
    }

    /// A short name for `incidents.jsonl`'s `cause`.
    pub fn cause(self) -> &'static str {
        match self {
            RankEnd::Code(0) => "done",
            RankEnd::Code(CONFIG_ERROR) => "config_error",
            RankEnd::Code(DIVERGED) => "diverged",
            RankEnd::Code(STALL) => "stall",
            RankEnd::Code(PANIC) => "panic",
            RankEnd::Code(_) => "error",
            RankEnd::Signal(_) => "signal",
        }
    }

    /// The exit code a shell would report for it (128 + signal for a signal).
    pub fn shell_code(self) -> i32 {
        match self {
            RankEnd::Code(c) => c,
            RankEnd::Signal(s) => 128 + s,
        }
    }

    pub fn describe(self) -> String {
        match self {
            RankEnd::Code(c) => format!("exit code {c} ({})", self.cause()),
            RankEnd::Signal(s) => format!("killed by signal {s} ({})", signal_name(s)),
        }
    }
}

/// `SIGKILL` for 9 and so on (the signals a launcher meets).
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_and_divergence_are_never_retried() {
        assert!(!RankEnd::Code(CONFIG_ERROR).retryable());
        assert!(!RankEnd::Code(DIVERGED).retryable());
        assert!(!RankEnd::Code(0).retryable());
    }

    #[test]
    fn stalls_crashes_panics_and_kills_are_retried() {
        for end in [
            RankEnd::Code(STALL),
            RankEnd::Code(1),
            RankEnd::Code(PANIC),
            RankEnd::Signal(libc::SIGKILL),
            RankEnd::Signal(libc::SIGSEGV),
        ] {
            assert!(end.retryable(), "{end:?}");
        }
        assert_eq!(RankEnd::Signal(9).shell_code(), 137);
        assert_eq!(
            RankEnd::Signal(9).describe(),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
