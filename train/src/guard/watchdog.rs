//! The stall watchdog: a thread that notices when training stops making progress.
//!
//! A hung collective, a wedged storage mount or a driver fault can freeze a run without killing
//! it; on a cluster that burns GPU-hours until someone notices. The loop calls
//! [`WatchdogHandle::heartbeat`] after every step (and it is armed before setup, so a stuck
//! start or data fetch counts too); if none arrives for `timeout`, the watchdog marks the run
//! stalled and calls the `on_stall` callback once (the trainer dumps its state and an incident
//! there). The library never ends the process: the loop sees [`WatchdogHandle::stalled`] at its
//! next check and returns an error, which the `tessera` binary turns into
//! [`WATCHDOG_EXIT_CODE`] so that a launcher (`cargo xtask launch`, Slurm `--requeue`, a k8s
//! restart policy) restarts the run from its last checkpoint. A program that embeds the trainer
//! decides for itself what a stall means.
//! Long operations that are not steps (evaluation, a blocking save) bracket themselves with
//! [`WatchdogHandle::pause`] / [`WatchdogHandle::resume`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The exit status the `tessera` binary uses after a stall (and any other transient failure):
/// `EX_TEMPFAIL` from sysexits.h ("temporary failure, retry"), so a launcher can restart on
/// exactly this code.
pub const WATCHDOG_EXIT_CODE: i32 = 75;

/// `guards.watchdog`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Seconds without a completed step before the run is declared stalled.
    pub timeout_s: f64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        // Generous: the first step may compile kernels, and checkpoints pause the watchdog.
        WatchdogConfig { timeout_s: 1800.0 }
    }
}

impl WatchdogConfig {
    /// `(key, message)` for a bad timeout.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0) {
            return Err((
                "timeout_s".into(),
                format!("{} must be a positive number of seconds", self.timeout_s),
            ));
        }
        Ok(())
    }
}

/// What the callback is told about the stall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallReport {
    /// The step of the last heartbeat (`None` if there was none yet).
    pub last_step: Option<u64>,
    /// How long since that heartbeat (or since the watchdog started).
    pub stalled_for: Duration,
    /// The configured limit.
    pub timeout: Duration,
}

struct Shared {
    start: Instant,
    /// Milliseconds since `start` of the last heartbeat.
    last_beat_ms: AtomicU64,
    /// `u64::MAX` until the first heartbeat.
    last_step: AtomicU64,
    paused: AtomicBool,
    /// Set once, by the watchdog thread, when it declares a stall.
    stalled: Mutex<Option<StallReport>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// Cheap, cloneable access for the loop (and any thread that makes progress).
#[derive(Clone)]
pub struct WatchdogHandle(Arc<Shared>);

impl WatchdogHandle {
    /// Records progress: step `step` has completed.
    pub fn heartbeat(&self, step: u64) {
        let s = &self.0;
        s.last_beat_ms
            .store(s.start.elapsed().as_millis() as u64, Ordering::SeqCst);
        s.last_step.store(step, Ordering::SeqCst);
    }

    /// Suspends stall detection (for evaluation or a blocking checkpoint write).
    pub fn pause(&self) {
        self.0.paused.store(true, Ordering::SeqCst);
    }

    /// Resumes stall detection; the clock restarts now.
    pub fn resume(&self) {
        let s = &self.0;
        s.last_beat_ms
            .store(s.start.elapsed().as_millis() as u64, Ordering::SeqCst);
        s.paused.store(false, Ordering::SeqCst);
    }

    /// The stall, once the watchdog has declared one (it stays declared).
    pub fn stalled(&self) -> Option<StallReport> {
        match self.0.stalled.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

/// The running watchdog thread. Dropping it (or [`Watchdog::stop`]) ends the thread.
pub struct Watchdog {
    handle: WatchdogHandle,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching. On a stall the watchdog records it (see [`WatchdogHandle::stalled`]),
    /// calls `on_stall` once on its own thread, and stops watching.
    pub fn spawn(timeout: Duration, on_stall: impl FnOnce(StallReport) + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            last_step: AtomicU64::new(u64::MAX),
            paused: AtomicBool::new(false),
            stalled: Mutex::new(None),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        // Poll often enough to fire within ~5% of the timeout, and at least every second.
        let poll = (timeout / 20).clamp(Duration::from_millis(1), Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name("tessera-watchdog".into())
            .spawn(move || {
                let mut stopped = match s.stop.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                loop {
                    if *stopped {
                        return;
                    }
                    if !s.paused.load(Ordering::SeqCst) {
                        let now_ms = s.start.elapsed().as_millis() as u64;
                        let since = Duration::from_millis(
                            now_ms.saturating_sub(s.last_beat_ms.load(Ordering::SeqCst)),
                        );
                        if since >= timeout {
                            drop(stopped);
                            let step = s.last_step.load(Ordering::SeqCst);
                            let report = StallReport {
                                last_step: (step != u64::MAX).then_some(step),
                                stalled_for: since,
                                timeout,
                            };
                            match s.stalled.lock() {
                                Ok(mut g) => *g = Some(report),
                                Err(p) => *p.into_inner() = Some(report),
                            }
                            on_stall(report);
                            return;
                        }
                    }
                    stopped = match s.wake.wait_timeout(stopped, poll) {
                        Ok((g, _)) => g,
                        Err(p) => p.into_inner().0,
                    };
                }
            })
            .ok();
        Watchdog {
            handle: WatchdogHandle(shared),
            thread,
        }
    }

    /// A handle for heartbeats.
    pub fn handle(&self) -> WatchdogHandle {
        self.handle.clone()
    }

    /// Stops the thread and waits for it (the run finished normally).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Ok(mut g) = self.handle.0.stop.lock() {
            *g = true;
        }
        self.handle.0.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Spawns a watchdog whose callback sends the report down a channel.
    fn watch(timeout_ms: u64) -> (Watchdog, mpsc::Receiver<StallReport>) {
        let (tx, rx) = mpsc::channel();
        let w = Watchdog::spawn(Duration::from_millis(timeout_ms), move |r| {
            let _ = tx.send(r);
        });
        (w, rx)
    }

    #[test]
    fn a_stall_is_reported_to_the_callback_and_to_the_loop_without_exiting() {
        let (w, rx) = watch(50);
        let h = w.handle();
        h.heartbeat(7);
        assert_eq!(h.stalled(), None);
        let report = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("watchdog fired");
        assert_eq!(report.last_step, Some(7));
        assert!(report.stalled_for >= Duration::from_millis(50));
        // The loop sees it too, and the process is still here to see it.
        assert_eq!(h.stalled(), Some(report));
        // It fires once.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn heartbeats_keep_it_quiet() {
        let (w, rx) = watch(200);
        let h = w.handle();
        for step in 0..8 {
            std::thread::sleep(Duration::from_millis(40));
            h.heartbeat(step);
        }
        assert!(rx.try_recv().is_err(), "fired despite progress");
        w.stop();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "fired after stop"
        );
    }

    #[test]
    fn pause_suspends_detection() {
        let (w, rx) = watch(60);
        let h = w.handle();
        h.pause();
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "fired while paused");
        h.resume();
        let report = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("fires after resume");
        assert_eq!(report.last_step, None);
    }

    #[test]
    fn config_requires_a_positive_timeout() {
        assert!(WatchdogConfig::default().validate().is_ok());
        assert!(WatchdogConfig { timeout_s: 0.0 }.validate().is_err());
        assert!(
            WatchdogConfig {
                timeout_s: f64::NAN
            }
            .validate()
            .is_err()
        );
    }
}
