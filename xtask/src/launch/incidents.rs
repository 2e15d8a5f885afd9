//! The launcher's lines in the run's `incidents.jsonl`, and the position a failure lost.
//!
//! The trainer writes the same file (resumes, stalls, spikes). A launcher line has the trainer's
//! fields (`step`, `kind`, `detail`, `lost_steps`, `lost_tokens`, `unix_time`) plus its own, and
//! `"source": "launcher"`. Its kinds:
//! - `rank_failure`: a rank ended the attempt (its rank, cause, exit code or signal, the step
//!   reached and the checkpoint the job falls back to, and whether it restarts);
//! - `hang`: no progress for longer than the window (see `progress.rs`); the ranks found stopped;
//! - `restart`: attempt N starts (the checkpoint it resumes from);
//! - `recovered`: the restarted job logged its first step, `recovery_s` after the failure;
//! - `launcher_stopped`: the launcher was told to stop (SIGINT, SIGTERM, SIGHUP).
//!
//! Each line is one `write` on a file opened with `O_APPEND`, so it never interleaves with the
//! trainer's. Lines are written only while no rank runs, so a torn last line left by a killed
//! rank can be cut first, exactly as the trainer would cut it when it reopens the file.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::run_paths::RunPaths;

/// One launcher line of `incidents.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchIncident {
    /// The step reached (the last train step in `metrics.jsonl`).
    pub step: u64,
    pub kind: &'static str,
    pub detail: String,
    /// Steps done since the checkpoint the job restarts from, which it will redo.
    pub lost_steps: u64,
    pub lost_tokens: u64,
    pub unix_time: f64,
    pub source: &'static str,
    /// 0 for the first attempt.
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The step of the `latest` checkpoint when the line was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub will_restart: Option<bool>,
    /// Seconds from the failure to the first step after the restart (`recovered` lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_s: Option<f64>,
}

impl LaunchIncident {
    /// A line of `kind` at `position`, stamped now. Only the line of the failure itself carries
    /// the work lost (a `restart` or `recovered` line after it has 0), so summing `lost_steps`
    /// over the file counts each loss once.
    pub fn new(kind: &'static str, attempt: u32, position: &Position, detail: String) -> Self {
        let failure = matches!(kind, "rank_failure" | "hang" | "launcher_stopped");
        LaunchIncident {
            step: position.reached_step,
            kind,
            detail,
            lost_steps: if failure { position.lost_steps() } else { 0 },
            lost_tokens: if failure { position.lost_tokens() } else { 0 },
            unix_time: unix_now(),
            source: "launcher",
            attempt,
            rank: None,
            cause: None,
            exit_code: None,
            signal: None,
            checkpoint_step: position.checkpoint_step,
            will_restart: None,
            recovery_s: None,
        }
    }
}

/// Where the run stood when a failure stopped it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    /// The last train step in `metrics.jsonl` and its token count.
    pub reached_step: u64,
    pub reached_tokens: u64,
    /// The step `latest` points at (none before the first checkpoint), and its token count.
    pub checkpoint_step: Option<u64>,
    pub checkpoint_tokens: Option<u64>,
}

impl Position {
    /// Reads `metrics.jsonl` and the `latest` pointer. Missing files mean "nothing yet".
    pub fn read(paths: &RunPaths) -> Self {
        let metrics = std::fs::read_to_string(paths.metrics()).unwrap_or_default();
        let train: Vec<(u64, u64)> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "train")
            .filter_map(|v| Some((v["step"].as_u64()?, v["tokens"].as_u64().unwrap_or(0))))
            .collect();
        let (reached_step, reached_tokens) = train.last().copied().unwrap_or((0, 0));
        let checkpoint_step = std::fs::read_to_string(paths.latest())
            .ok()
            .and_then(|s| s.trim().strip_prefix("ba")?.parse::<u64>().ok());
        let checkpoint_tokens = checkpoint_step
            .and_then(|c| train.iter().rev().find(|(s, _)| *s == c).map(|(_, t)| *t));
        Position {
            reached_step,
            reached_tokens,
            checkpoint_step,
            checkpoint_tokens,
        }
    }

    pub fn lost_steps(&self) -> u64 {
        self.reached_step
            .saturating_sub(self.checkpoint_step.unwrap_or(0))
    }

    pub fn lost_tokens(&self) -> u64 {
        self.reached_tokens
            .saturating_sub(self.checkpoint_tokens.unwrap_or(0))
    }
}

/// Appends `incident` as one line to `path` (cutting a torn last line first).
pub fn append(path: &Path, incident: &LaunchIncident) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if !text.is_empty() && !text.ends_with(b"\n") {
        let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        file.set_len(keep as u64)
            .with_context(|| format!("cutting a torn line off {}", path.display()))?;
    }
    let mut line = serde_json::to_vec(incident).context("encoding an incident")?;
    line.push(b'\n');
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending to {}", path.display()))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_count_from_the_latest_checkpoint_and_lines_survive_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("xtask-incidents-{}", std::process::id()));
        let paths = RunPaths {
            run_dir: dir.join("run"),
            save_folder: dir.join("ck"),
        };
        std::fs::create_dir_all(&paths.run_dir).unwrap();
        std::fs::create_dir_all(&paths.save_folder).unwrap();
        let mut metrics = String::new();
        for s in 1..=7 {
            metrics.push_str(&format!(
                "{{\"kind\":\"train\",\"step\":{s},\"tokens\":{}}}\n",
                s * 100
            ));
        }
        metrics.push_str("{\"kind\":\"eval\",\"step\":7,\"label\":\"eval\"}\n");
        std::fs::write(paths.metrics(), metrics).unwrap();
        std::fs::write(paths.latest(), "ba5\n").unwrap();
        let pos = Position::read(&paths);
        assert_eq!(pos.reached_step, 7);
        assert_eq!(pos.checkpoint_step, Some(5));
        assert_eq!((pos.lost_steps(), pos.lost_tokens()), (2, 200));

        // The trainer was killed mid-line.
        std::fs::write(
            paths.incidents(),
            "{\"step\":3,\"kind\":\"resume\"}\n{\"step\":7,\"ki",
        )
        .unwrap();
        assert_eq!(
            LaunchIncident::new("restart", 1, &pos, String::new()).lost_steps,
            0
        );
        let mut i = LaunchIncident::new("rank_failure", 0, &pos, "rank 1 died".into());
        i.rank = Some(1);
        append(&paths.incidents(), &i).unwrap();
        let text = std::fs::read_to_string(paths.incidents()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[1]["kind"], "rank_failure");
        assert_eq!(lines[1]["lost_steps"], 2);
        assert_eq!(lines[1]["rank"], 1);
        assert_eq!(lines[1]["source"], "launcher");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn before_any_checkpoint_everything_since_step_zero_is_lost() {
        let pos = Position {
            reached_step: 4,
            reached_tokens: 400,
            checkpoint_step: None,
            checkpoint_tokens: None,
        };
        assert_eq!((pos.lost_steps(), pos.lost_tokens()), (4, 400));
    }
}
