//! `cargo xtask launch --nproc N [--max-restarts K] -- tessera train CONFIG …`: N ranks of a
//! training job on this host, restarted together after a retryable failure, as torchrun and
//! composer's launcher do.
//!
//! One attempt: start every rank with composer's environment (`rank_env.rs`), forward its output
//! with a `[rank r]` prefix, and watch. It ends when
//! - every rank exited 0: the job is done;
//! - a rank failed: every other rank is stopped (SIGCONT, SIGTERM, `--grace-s`, SIGKILL);
//! - the run made no progress for `max(floor, 2 × median step)` (`progress.rs`): the same;
//! - the launcher got SIGINT, SIGTERM or SIGHUP: the same, then it exits.
//!
//! A failure that a restart can fix (`exit.rs`) starts the next attempt, which autoresumes from
//! the run's `latest` checkpoint, until `--max-restarts` are used. Each attempt leaves lines in
//! the run's `incidents.jsonl` (`incidents.rs`).

pub mod exit;
mod incidents;
mod progress;
mod rank_env;
mod ranks;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use exit::RankEnd;
use incidents::{LaunchIncident, Position};
use progress::{HangPolicy, Progress};
use rank_env::RankEnv;
use ranks::Ranks;

use crate::run_paths::{RunPaths, TrainArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Ranks to start on this host (one per GPU on a GPU node).
    #[arg(long)]
    nproc: usize,
    /// Restarts of the whole job after retryable failures (crashes, kills, stalls, hangs).
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Rank 0's rendezvous port (MASTER_PORT); default: a free port, picked per attempt.
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds a rank gets to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 10.0)]
    grace_s: f64,
    /// The shortest hang window: no new metrics.jsonl line for max(this, 2 × median step time)
    /// is a hang. It must exceed your longest evaluation or blocking save.
    #[arg(long, default_value_t = 300.0)]
    hang_floor_s: f64,
    /// Seconds an attempt may take to log its first line (load, resume, compile, rendezvous).
    #[arg(long, default_value_t = 1800.0)]
    start_timeout_s: f64,
    /// The run folder to watch and log to (default: worked out from the train command).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The rank command: `tessera train CONFIG …` (`tessera` is resolved to the built binary,
    /// or $TESSERA_BIN); any other program runs as given.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// The signal (SIGINT, SIGTERM or SIGHUP) that asked the launcher to stop; 0 for none.
static STOP_SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// How one attempt ended.
enum AttemptEnd {
    Done,
    Failed {
        rank: usize,
        end: RankEnd,
    },
    Hung {
        silent: Duration,
        stopped: Vec<usize>,
    },
    Interrupted {
        signal: i32,
    },
}

/// Runs the job; returns the launcher's exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register_usize(sig, &STOP_SIGNAL, sig as usize)
            .context("installing the launcher's signal handlers")?;
    }
    let program = resolve_program(&args.command[0])?;
    let rank_args = &args.command[1..];
    let paths = match &args.run_dir {
        Some(dir) => Some(RunPaths {
            run_dir: dir.clone(),
            save_folder: dir.join("checkpoints"),
        }),
        None => match TrainArgs::parse(rank_args)? {
            Some(train) => Some(train.paths()?),
            None => None,
        },
    };
    match &paths {
        Some(p) => eprintln!(
            "launch: {} × {} (run folder {}, checkpoints {})",
            args.nproc,
            program.display(),
            p.run_dir.display(),
            p.save_folder.display()
        ),
        None => eprintln!(
            "launch: {} × {}: not a `tessera train` command, so no hang detection and no \
             incidents.jsonl (pass --run-dir for them)",
            args.nproc,
            program.display()
        ),
    }
    let policy = HangPolicy {
        floor: Duration::from_secs_f64(args.hang_floor_s),
        start_timeout: Duration::from_secs_f64(args.start_timeout_s),
    };
    let grace = Duration::from_secs_f64(args.grace_s);
    let mut progress = paths
        .as_ref()
        .map(|p| Progress::new(p.metrics(), Some(p.latest())));
    let log = |incident: LaunchIncident| {
        if let Some(p) = &paths
            && let Err(e) = incidents::append(&p.incidents(), &incident)
        {
            eprintln!("launch: warning: {e:#}");
        }
    };
    let position = || paths.as_ref().map(Position::read).unwrap_or_default();

    // When the last failure was seen, until the next attempt logs a step.
    let mut failed_at: Option<Instant> = None;
    for attempt in 0..=args.max_restarts {
        if attempt > 0 {
            let pos = position();
            let from = pos
                .checkpoint_step
                .map_or("the start (no checkpoint yet)".to_string(), |s| {
                    format!("checkpoint ba{s}")
                });
            eprintln!(
                "launch: restart {attempt} of {} from {from}",
                args.max_restarts
            );
            log(LaunchIncident::new(
                "restart",
                attempt,
                &pos,
                format!(
                    "attempt {attempt} (restart {attempt} of {}) resumes from {from}",
                    args.max_restarts
                ),
            ));
        }
        let port = match args.master_port {
            Some(p) => p,
            None => free_port()?,
        };
        let envs: Vec<_> = RankEnv::single_node(args.nproc, port)
            .iter()
            .map(RankEnv::vars)
            .collect();
        if let Some(p) = progress.as_mut() {
            p.begin_attempt(Instant::now());
        }
        let mut ranks = Ranks::spawn(&program, rank_args, &envs)?;
        eprintln!(
            "launch: attempt {attempt}: ranks started (pids {:?}, MASTER_PORT {port})",
            ranks.pids()
        );
        let end = supervise(
            &mut ranks,
            progress.as_mut(),
            &policy,
            &mut failed_at,
            |recovery_s| {
                let mut i = LaunchIncident::new(
                    "recovered",
                    attempt,
                    &position(),
                    format!("first step {recovery_s:.1} s after the failure"),
                );
                i.recovery_s = Some(recovery_s);
                log(i);
            },
        )?;
        let restarts_left = attempt < args.max_restarts;
        match end {
            AttemptEnd::Done => {
                ranks.finish();
                eprintln!("launch: all {} ranks finished", args.nproc);
                return Ok(0);
            }
            AttemptEnd::Interrupted { signal } => {
                ranks.stop(grace);
                let name = exit::signal_name(signal);
                eprintln!("launch: {name} received; every rank stopped");
                let mut i = LaunchIncident::new(
                    "launcher_stopped",
                    attempt,
                    &position(),
                    format!("the launcher got {name} and stopped every rank"),
                );
                i.signal = Some(signal);
                i.will_restart = Some(false);
                log(i);
                return Ok(128 + signal);
            }
            AttemptEnd::Failed { rank, end } => {
                ranks.stop(grace);
                failed_at = Some(Instant::now());
                let retry = end.retryable() && restarts_left;
                let pos = position();
                let what = format!(
                    "rank {rank} failed: {}; step {} reached, latest checkpoint {}; {}",
                    end.describe(),
                    pos.reached_step,
                    pos.checkpoint_step
                        .map_or("none".to_string(), |s| format!("ba{s}")),
                    if retry {
                        "restarting every rank".to_string()
                    } else if end.retryable() {
                        format!("no restarts left ({} used)", args.max_restarts)
                    } else {
                        "not retryable".to_string()
                    }
                );
                eprintln!("launch: {what}");
                let mut i = LaunchIncident::new("rank_failure", attempt, &pos, what);
                i.rank = Some(rank);
                i.cause = Some(end.cause().to_string());
                match end {
                    RankEnd::Code(c) => i.exit_code = Some(c),
                    RankEnd::Signal(s) => i.signal = Some(s),
                }
                i.will_restart = Some(retry);
                log(i);
                if !retry {
                    return Ok(end.shell_code());
                }
            }
            AttemptEnd::Hung { silent, stopped } => {
                let window = progress.as_ref().map(|p| p.window(&policy));
                ranks.stop(grace);
                failed_at = Some(Instant::now());
                let retry = restarts_left;
                let pos = position();
                let what = format!(
                    "no progress in metrics.jsonl for {:.1} s (window {:.1} s = max(floor {:.0} s, \
                     2 × median step)); stopped ranks: {stopped:?}; step {} reached; {}",
                    silent.as_secs_f64(),
                    window.unwrap_or_default().as_secs_f64(),
                    args.hang_floor_s,
                    pos.reached_step,
                    if retry {
                        "restarting every rank"
                    } else {
                        "no restarts left"
                    }
                );
                eprintln!("launch: {what}");
                let mut i = LaunchIncident::new("hang", attempt, &pos, what);
                i.rank = stopped.first().copied();
                i.cause = Some("hang".into());
                i.will_restart = Some(retry);
                log(i);
                if !retry {
                    return Ok(exit::STALL);
                }
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Watches one attempt until it ends. `on_recovered(seconds)` is called when the attempt logs
/// its first step after a failure.
fn supervise(
    ranks: &mut Ranks,
    mut progress: Option<&mut Progress>,
    policy: &HangPolicy,
    failed_at: &mut Option<Instant>,
    mut on_recovered: impl FnMut(f64),
) -> anyhow::Result<AttemptEnd> {
    let mut next_progress_poll = Instant::now();
    loop {
        let signal = STOP_SIGNAL.load(Ordering::SeqCst);
        if signal != 0 {
            return Ok(AttemptEnd::Interrupted {
                signal: signal as i32,
            });
        }
        let failed: Vec<(usize, RankEnd)> = failures(ranks)?;
        if !failed.is_empty() {
            let (rank, end) = root_cause(ranks, failed)?;
            return Ok(AttemptEnd::Failed { rank, end });
        }
        if ranks.all_ended() {
            return Ok(AttemptEnd::Done);
        }
        let now = Instant::now();
        if let Some(p) = progress.as_deref_mut()
            && now >= next_progress_poll
        {
            next_progress_poll = now + Duration::from_millis(100);
            if p.poll(now) > 0
                && let Some(t) = failed_at.take()
            {
                on_recovered(now.duration_since(t).as_secs_f64());
            }
            if let Some(silent) = p.hung(now, policy) {
                return Ok(AttemptEnd::Hung {
                    silent,
                    stopped: ranks.stopped(),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ranks that ended with a failure since the last look.
fn failures(ranks: &mut Ranks) -> anyhow::Result<Vec<(usize, RankEnd)>> {
    Ok(ranks
        .reap()?
        .into_iter()
        .filter(|(_, end)| !end.succeeded())
        .collect())
}

/// The failure to blame among `failed`. A rank whose collective broke because a peer died exits
/// with the stall code, often before the dead peer is reaped (the killed process is still being
/// torn down): while every failure seen is a stall, wait a moment for another rank's own end,
/// and blame that one.
fn root_cause(
    ranks: &mut Ranks,
    mut failed: Vec<(usize, RankEnd)>,
) -> anyhow::Result<(usize, RankEnd)> {
    let deadline = Instant::now() + Duration::from_millis(500);
    while failed
        .iter()
        .all(|(_, end)| *end == RankEnd::Code(exit::STALL))
        && !ranks.all_ended()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
        failed.extend(failures(ranks)?);
    }
    Ok(failed
        .iter()
        .find(|(_, end)| *end != RankEnd::Code(exit::STALL))
        .copied()
        .unwrap_or(failed[0]))
}

/// `tessera` → the built binary ($TESSERA_BIN, else the newest `tessera` in the target dir's
/// release or debug folder, else one on PATH); any other program is used as given.
pub fn resolve_program(name: &str) -> anyhow::Result<PathBuf> {
    if name != "tessera" {
        return Ok(PathBuf::from(name));
    }
    if let Some(bin) = std::env::var_os("TESSERA_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("TESSERA_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let target = crate::util::target_dir();
    let built = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("tessera"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, bin)) = built {
        return Ok(bin);
    }
    if let Some(on_path) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("tessera"))
            .find(|p| p.is_file())
    }) {
        return Ok(on_path);
    }
    bail!(
        "no tessera binary: build it (`cargo build --release`), or set TESSERA_BIN (looked in {})",
        target.display()
    )
}

/// A port that is free right now on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free MASTER_PORT")?;
    Ok(listener.local_addr()?.port())
}
