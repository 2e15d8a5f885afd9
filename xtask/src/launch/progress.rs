//! Hang detection: the job is hung when the run's `metrics.jsonl` gets no new line for longer
//! than `max(floor, 2 × median step time)`.
//!
//! Rank 0 appends one line per optimizer step (and one per evaluation), and in a data-parallel
//! job every step waits for every rank, so a rank that is stopped (SIGSTOP), wedged in a
//! collective or on a dead node stops rank 0's lines too. Reading the file the trainer already
//! writes needs nothing from the trainer and works for any world size.
//!
//! What the window must allow for:
//! - **The floor** (default 300 s) covers the gaps that are not steps and write no line until
//!   they end: an evaluation and a blocking checkpoint save. Raise it (`--hang-floor-s`) when an
//!   evaluation (an ICL gauntlet on a large model) takes longer. The trainer's own watchdog
//!   (`guards.watchdog`), which pauses during evals and saves, is the fine-grained detector;
//!   this one is the backstop that also catches a trainer too stuck to run its watchdog.
//! - **The start** of an attempt (loading, resuming, compiling kernels, rendezvous) has its own
//!   limit (`--start-timeout-s`, default 1800 s, the watchdog's default) until the attempt's
//!   first new line.
//!
//! The step time is measured by the launcher: the time between polls that saw new train lines,
//! divided by the number of lines. It is kept across attempts (a restart does not change it).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The limits of [`Progress::hung`].
#[derive(Debug, Clone, Copy)]
pub struct HangPolicy {
    /// The shortest window, whatever the step time.
    pub floor: Duration,
    /// The limit before an attempt's first new line.
    pub start_timeout: Duration,
}

/// Step samples kept for the median (the most recent ones).
const SAMPLES: usize = 256;

/// Watches one `metrics.jsonl`.
pub struct Progress {
    path: PathBuf,
    /// The checkpoint folder's `latest` pointer: after the trainer's resume rewrote the file,
    /// lines past that step are new.
    latest: Option<PathBuf>,
    /// Bytes of the file already read, and the file they belong to (dev, inode).
    offset: u64,
    file_id: Option<(u64, u64)>,
    /// Seconds per step, most recent last.
    samples: Vec<f64>,
    /// When the attempt started, and when the last new line was seen in it.
    attempt_start: Instant,
    last_line: Option<Instant>,
    /// When the last new *train* line was seen in this attempt (for step-time samples).
    last_train: Option<Instant>,
    /// The highest train step seen in this attempt.
    pub last_step: Option<u64>,
}

impl Progress {
    pub fn new(path: PathBuf, latest: Option<PathBuf>) -> Self {
        let mut p = Progress {
            path,
            latest,
            offset: 0,
            file_id: None,
            samples: Vec::new(),
            attempt_start: Instant::now(),
            last_line: None,
            last_train: None,
            last_step: None,
        };
        p.begin_attempt(Instant::now());
        p
    }

    /// Starts watching a new attempt: what is in the file now is the past.
    pub fn begin_attempt(&mut self, now: Instant) {
        let (id, len) = self.stat().unwrap_or((None, 0));
        self.file_id = id;
        self.offset = self.complete_len(len);
        self.attempt_start = now;
        self.last_line = None;
        self.last_train = None;
        self.last_step = None;
    }

    /// Reads what was appended since the last poll. Returns how many train lines were new.
    pub fn poll(&mut self, now: Instant) -> usize {
        let Some((id, len)) = self.stat() else {
            return 0;
        };
        if id != self.file_id || len < self.offset {
            // Rewritten: on resume the trainer drops the lines past its checkpoint and renames a
            // new file into place. That is activity; train lines past the checkpoint (`latest`)
            // are steps the resumed run has already logged. No step-time sample spans it.
            self.file_id = id;
            self.offset = self.complete_len(len);
            self.last_line = Some(now);
            self.last_train = None;
            let checkpoint = self
                .latest
                .as_ref()
                .and_then(|l| std::fs::read_to_string(l).ok())
                .and_then(|s| s.trim().strip_prefix("ba")?.parse::<u64>().ok());
            let Some(checkpoint) = checkpoint else {
                return 0;
            };
            let bytes = self.read_from(0, self.offset).unwrap_or_default();
            let steps: Vec<u64> = train_steps(&bytes)
                .into_iter()
                .filter(|s| *s > checkpoint)
                .collect();
            if let Some(&max) = steps.iter().max() {
                self.last_step = Some(self.last_step.map_or(max, |s| s.max(max)));
                self.last_train = Some(now);
            }
            return steps.len();
        }
        if len == self.offset {
            return 0;
        }
        let Ok(bytes) = self.read_from(self.offset, len) else {
            return 0;
        };
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return 0; // only part of a line so far
        };
        self.offset += end as u64 + 1;
        let steps = train_steps(&bytes[..end]);
        let train = steps.len();
        if let Some(&max) = steps.iter().max() {
            self.last_step = Some(self.last_step.map_or(max, |s| s.max(max)));
        }
        self.last_line = Some(now);
        if train > 0 {
            if let Some(prev) = self.last_train {
                let per_step = (now - prev).as_secs_f64() / train as f64;
                if self.samples.len() == SAMPLES {
                    self.samples.remove(0);
                }
                self.samples.push(per_step);
            }
            self.last_train = Some(now);
        }
        train
    }

    /// The median seconds per step measured so far.
    pub fn median_step(&self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        Some(Duration::from_secs_f64(s[s.len() / 2]))
    }

    /// The current window: `max(floor, 2 × median step)`, or the start timeout before the
    /// attempt's first line.
    pub fn window(&self, policy: &HangPolicy) -> Duration {
        if self.last_line.is_none() {
            return policy.start_timeout;
        }
        let twice_median = self.median_step().map_or(Duration::ZERO, |m| m * 2);
        policy.floor.max(twice_median)
    }

    /// `Some(silence)` when the job has been silent for longer than its window.
    pub fn hung(&self, now: Instant, policy: &HangPolicy) -> Option<Duration> {
        let since = self.last_line.unwrap_or(self.attempt_start);
        let silent = now.saturating_duration_since(since);
        (silent > self.window(policy)).then_some(silent)
    }

    fn stat(&self) -> Option<(Option<(u64, u64)>, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((Some((m.dev(), m.ino())), m.len()))
    }

    /// The length of the file up to its last newline (a torn last line is not yet a line).
    fn complete_len(&self, len: u64) -> u64 {
        self.read_from(0, len)
            .ok()
            .and_then(|b| b.iter().rposition(|c| *c == b'\n'))
            .map_or(0, |i| i as u64 + 1)
    }

    fn read_from(&self, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::with_capacity((end - start) as usize);
        f.take(end - start).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// The `step` of every `"kind": "train"` line in `bytes`.
fn train_steps(bytes: &[u8]) -> Vec<u64> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("train"))
        .filter_map(|v| v.get("step").and_then(|s| s.as_u64()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &std::path::Path, line: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }

    fn train(step: u64) -> String {
        format!("{{\"kind\":\"train\",\"step\":{step},\"loss\":1.0}}\n")
    }

    #[test]
    fn the_window_is_twice_the_median_step_with_a_floor() {
        let dir = std::env::temp_dir().join(format!("xtask-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        append(&path, &train(1)); // before the attempt: ignored
        let t0 = Instant::now();
        let latest = dir.join("latest");
        let mut p = Progress::new(path.clone(), Some(latest.clone()));
        p.begin_attempt(t0);
        let policy = HangPolicy {
            floor: Duration::from_secs(1),
            start_timeout: Duration::from_secs(60),
        };
        assert_eq!(p.window(&policy), Duration::from_secs(60));
        assert_eq!(p.hung(t0 + Duration::from_secs(59), &policy), None);
        assert!(p.hung(t0 + Duration::from_secs(61), &policy).is_some());

        // Steps every 2 s: the median is 2 s, the window 4 s (above the 1 s floor).
        for (i, step) in (2..=6).enumerate() {
            append(&path, &train(step));
            assert_eq!(p.poll(t0 + Duration::from_secs(2 * i as u64)), 1);
        }
        assert_eq!(p.last_step, Some(6));
        assert_eq!(p.median_step(), Some(Duration::from_secs(2)));
        assert_eq!(p.window(&policy), Duration::from_secs(4));
        let last = t0 + Duration::from_secs(8);
        assert_eq!(p.hung(last + Duration::from_secs(3), &policy), None);
        assert_eq!(
            p.hung(last + Duration::from_secs(5), &policy),
            Some(Duration::from_secs(5))
        );

        // A torn line is not progress until its newline arrives.
        append(&path, "{\"kind\":\"train\",");
        assert_eq!(p.poll(last + Duration::from_secs(5)), 0);
        assert!(p.hung(last + Duration::from_secs(5), &policy).is_some());
        append(&path, "\"step\":7}\n");
        assert_eq!(p.poll(last + Duration::from_secs(6)), 1);
        assert_eq!(p.last_step, Some(7));

        // A rewrite (the trainer's resume from ba3) is activity, then appends count again.
        std::fs::write(&latest, "ba3\n").unwrap();
        std::fs::write(dir.join("new"), train(3)).unwrap();
        std::fs::rename(dir.join("new"), &path).unwrap();
        assert_eq!(p.poll(last + Duration::from_secs(20)), 0);
        assert_eq!(p.hung(last + Duration::from_secs(23), &policy), None);
        append(&path, &train(4));
        assert_eq!(p.poll(last + Duration::from_secs(24)), 1);

        // A resume that logged steps before the poll saw the rewrite: they are not lost.
        std::fs::write(
            dir.join("new"),
            format!("{}{}{}", train(3), train(4), train(5)),
        )
        .unwrap();
        std::fs::rename(dir.join("new"), &path).unwrap();
        assert_eq!(p.poll(last + Duration::from_secs(25)), 2);
        assert_eq!(p.last_step, Some(7));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
