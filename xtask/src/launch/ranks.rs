//! The rank processes of one attempt: spawned in their own process groups, their output
//! forwarded line by line with a `[rank r]` prefix, and stopped together.
//!
//! Each rank leads its own process group, so stopping a rank also stops anything it started,
//! and a Ctrl-C in the launcher's terminal reaches only the launcher (which then stops the
//! ranks in order). Each rank also gets `PR_SET_PDEATHSIG = SIGKILL`: if the launcher itself is
//! killed with SIGKILL, the kernel kills the ranks, so no rank outlives it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::exit::RankEnd;

/// One running (or ended) rank.
struct Rank {
    child: Child,
    /// The process group it leads (= its pid).
    pgid: libc::pid_t,
    forwarders: Vec<JoinHandle<()>>,
    ended: Option<RankEnd>,
}

/// Every rank of one attempt. Dropping it kills whatever is still running.
pub struct Ranks {
    ranks: Vec<Rank>,
}

impl Ranks {
    /// Starts `program args` once per entry of `envs` (rank `r` gets `envs[r]` on top of the
    /// launcher's environment).
    pub fn spawn(
        program: &Path,
        args: &[String],
        envs: &[Vec<(String, String)>],
    ) -> anyhow::Result<Self> {
        let mut ranks = Ranks { ranks: Vec::new() };
        let launcher = unsafe { libc::getpid() };
        for (r, env) in envs.iter().enumerate() {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The launcher died between fork and prctl: die now, as the signal would.
                    if libc::getppid() != launcher {
                        libc::_exit(137);
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("starting rank {r}: {}", program.display()))?;
            let pgid = child.id() as libc::pid_t;
            let mut forwarders = Vec::new();
            if let Some(out) = child.stdout.take() {
                forwarders.push(forward(r, out, false));
            }
            if let Some(err) = child.stderr.take() {
                forwarders.push(forward(r, err, true));
            }
            ranks.ranks.push(Rank {
                child,
                pgid,
                forwarders,
                ended: None,
            });
        }
        Ok(ranks)
    }

    /// The ranks' process ids, in rank order.
    pub fn pids(&self) -> Vec<u32> {
        self.ranks.iter().map(|r| r.child.id()).collect()
    }

    /// Reaps the ranks that ended since the last call: `(rank, how)` in rank order.
    pub fn reap(&mut self) -> anyhow::Result<Vec<(usize, RankEnd)>> {
        let mut out = Vec::new();
        for (i, r) in self.ranks.iter_mut().enumerate() {
            if r.ended.is_none()
                && let Some(status) = r.child.try_wait().context("waiting for a rank")?
            {
                let end = RankEnd::from_status(status);
                r.ended = Some(end);
                out.push((i, end));
            }
        }
        Ok(out)
    }

    /// Whether every rank has ended.
    pub fn all_ended(&self) -> bool {
        self.ranks.iter().all(|r| r.ended.is_some())
    }

    /// The ranks that are stopped (state `T`, e.g. by SIGSTOP) right now.
    pub fn stopped(&self) -> Vec<usize> {
        self.ranks
            .iter()
            .enumerate()
            .filter(|(_, r)| r.ended.is_none() && is_stopped(r.child.id()))
            .map(|(i, _)| i)
            .collect()
    }

    /// Stops every rank: SIGCONT (a stopped process cannot act on SIGTERM) and SIGTERM to each
    /// rank's process group, up to `grace` for them to exit, then SIGKILL. Returns when every
    /// rank is reaped and its output forwarded.
    pub fn stop(&mut self, grace: Duration) {
        for r in self.ranks.iter().filter(|r| r.ended.is_none()) {
            signal_group(r.pgid, libc::SIGCONT);
            signal_group(r.pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while !self.all_ended() && Instant::now() < deadline {
            let _ = self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_all();
    }

    /// SIGKILL to every process group (also after a clean exit: a rank's own children must not
    /// outlive it), then reaps the ranks and waits for their output.
    fn kill_all(&mut self) {
        for r in &mut self.ranks {
            signal_group(r.pgid, libc::SIGCONT);
            signal_group(r.pgid, libc::SIGKILL);
            if r.ended.is_none()
                && let Ok(status) = r.child.wait()
            {
                r.ended = Some(RankEnd::from_status(status));
            }
            for f in r.forwarders.drain(..) {
                let _ = f.join();
            }
        }
    }

    /// Ends the attempt after every rank exited by itself: clears stragglers and flushes output.
    pub fn finish(mut self) {
        self.kill_all();
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    // ESRCH (the group is gone) is the expected case after an exit.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// Whether `/proc/<pid>/stat` says the process is stopped (`T`) or traced (`t`).
fn is_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state == "T" || state == "t")
}

/// Copies `stream` to the launcher's stdout (or stderr), each line prefixed with `[rank r]`.
fn forward(rank: usize, stream: impl Read + Send + 'static, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let prefix = format!("[rank {rank}] ");
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    // One write per line under the stream's lock, so lines never interleave.
                    let mut buf = prefix.clone().into_bytes();
                    buf.extend_from_slice(&line);
                    let _ = if to_stderr {
                        std::io::stderr().lock().write_all(&buf)
                    } else {
                        std::io::stdout().lock().write_all(&buf)
                    };
                }
            }
        }
    })
}
