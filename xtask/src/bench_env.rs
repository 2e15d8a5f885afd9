//! What a benchmark runs on, for the suites that compare against Python tools: the shared
//! fixtures folder, a scratch folder, and how busy the machine was (the CI machine has 2 cores
//! shared with other builds, and a table must say when its figures are noisy).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::util;

/// The shared fixtures folder: `$TESSERA_FIXTURES`, else `../shared/fixtures` beside the
/// workspace. Fails naming both places when neither holds `needed`.
pub fn shared_fixtures(needed: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("TESSERA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root().join("../shared/fixtures"));
    for rel in needed {
        if !dir.join(rel).exists() {
            bail!(
                "shared fixture {} not found (set TESSERA_FIXTURES to the shared fixtures folder; \
                 default ../shared/fixtures beside the workspace)",
                dir.join(rel).display()
            );
        }
    }
    Ok(dir)
}

/// A scratch folder under the target dir, emptied on creation and removed on drop (a crashed
/// run's leftovers are cleared by the next one).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Scratch> {
        let path = util::target_dir().join("xtask-bench").join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path })
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The 1-minute load average (None where /proc/loadavg is unreadable).
pub fn load_average() -> Option<f64> {
    parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The sentence a table carries about noise: always on a machine with few cores (it is shared
/// with other builds), and with the load averages seen before and after the run.
pub fn noise_note(cores: usize, before: Option<f64>, after: Option<f64>) -> String {
    let load = match (before, after) {
        (Some(b), Some(a)) => {
            format!(" 1-minute load average {b:.1} before and {a:.1} after the run.")
        }
        _ => String::new(),
    };
    let busy = before
        .into_iter()
        .chain(after)
        .any(|l| l > cores as f64 * 0.5);
    if cores <= 4 || busy {
        format!(
            "This {cores}-core machine is shared with other builds and tests, so the figures are \
             noisy.{load}"
        )
    } else {
        load.trim_start().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_takes_the_first_field() {
        assert_eq!(parse_loadavg("7.88 7.56 7.01 8/146 12820\n"), Some(7.88));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("x 1 2"), None);
    }

    #[test]
    fn small_or_busy_machines_are_called_noisy() {
        let small = noise_note(2, Some(0.1), Some(0.2));
        assert!(small.contains("2-core machine is shared"), "{small}");
        assert!(small.contains("0.1 before and 0.2 after"), "{small}");
        let busy = noise_note(32, Some(30.0), Some(1.0));
        assert!(busy.contains("noisy"), "{busy}");
        let quiet = noise_note(32, Some(1.0), Some(1.0));
        assert!(!quiet.contains("noisy"), "{quiet}");
        assert!(quiet.starts_with("1-minute load average 1.0"), "{quiet}");
        assert_eq!(noise_note(32, None, None), "");
    }

    #[test]
    fn scratch_is_emptied_and_removed() {
        let s = Scratch::new(&format!("test-scratch-{}", std::process::id())).unwrap();
        std::fs::write(s.join("f"), b"x").unwrap();
        let again = Scratch::new(s.path.file_name().unwrap().to_str().unwrap()).unwrap();
        assert!(!again.join("f").exists(), "a new scratch starts empty");
        let p = again.path.clone();
        drop(again);
        drop(s);
        assert!(!p.exists());
    }
}
