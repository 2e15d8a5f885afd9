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

/// This CPU's f32 peak from its datasheet quantities: cores × clock × SIMD lanes × 2 (an FMA
/// is a multiply and an add) × FMA units per core. The clock and the vector width are read from
/// `/proc/cpuinfo`; the FMA units per core are not visible there, so they are an assumption
/// that the table states.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuPeak {
    /// Cores the benchmark uses.
    pub cores: usize,
    /// The clock, in GHz (`cpu MHz`: the nominal clock under a hypervisor).
    pub ghz: f64,
    /// f32 lanes of the widest vector FMA the CPU has (16 with AVX-512, 8 with AVX2 + FMA).
    pub lanes: usize,
    /// The instruction set behind `lanes`.
    pub isa: &'static str,
    /// FMA units per core (assumed: 2, as on Xeon Scalable Gold/Platinum and recent EPYC).
    pub fma_units: usize,
}

impl CpuPeak {
    /// The peak of `cores` cores of this machine's CPU; `None` where `/proc/cpuinfo` does not
    /// give the clock.
    pub fn detect(cores: usize) -> Option<CpuPeak> {
        let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        Self::from_cpuinfo(&info, cores)
    }

    /// [`CpuPeak::detect`] from the text of `/proc/cpuinfo`.
    pub fn from_cpuinfo(info: &str, cores: usize) -> Option<CpuPeak> {
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let mhz: f64 = field("cpu MHz")?.parse().ok()?;
        let flags = field("flags").unwrap_or_default();
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        let (lanes, isa) = if has("avx512f") {
            (16, "AVX-512")
        } else if has("avx2") && has("fma") {
            (8, "AVX2 + FMA")
        } else {
            (4, "SSE")
        };
        Some(CpuPeak {
            cores,
            ghz: mhz / 1000.0,
            lanes,
            isa,
            fma_units: 2,
        })
    }

    /// FLOP/s.
    pub fn flops(&self) -> f64 {
        self.cores as f64 * self.ghz * 1e9 * self.lanes as f64 * 2.0 * self.fma_units as f64
    }

    /// The arithmetic, for the table.
    pub fn arithmetic(&self) -> String {
        format!(
            "{} cores × {:.2} GHz × {} f32 lanes ({}) × 2 FLOPs per FMA × {} FMA units per core \
             (assumed; `/proc/cpuinfo` does not say) = {:.1} GFLOP/s",
            self.cores,
            self.ghz,
            self.lanes,
            self.isa,
            self.fma_units,
            self.flops() / 1e9
        )
    }
}

#[cfg(test)]
mod cpu_peak_tests {
    use super::CpuPeak;

    #[test]
    fn the_peak_is_cores_clock_lanes_and_fma() {
        let info = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu sse avx2 fma avx512f\n";
        let p = CpuPeak::from_cpuinfo(info, 2).unwrap();
        assert_eq!((p.lanes, p.isa, p.fma_units), (16, "AVX-512", 2));
        // 2 × 2.6e9 × 16 × 2 × 2
        assert!((p.flops() - 332.8e9).abs() < 1.0, "{}", p.flops());
        assert!(
            p.arithmetic().ends_with("= 332.8 GFLOP/s"),
            "{}",
            p.arithmetic()
        );
        let avx2 = CpuPeak::from_cpuinfo("cpu MHz : 3000\nflags : avx2 fma\n", 1).unwrap();
        assert_eq!(avx2.lanes, 8);
        assert!(CpuPeak::from_cpuinfo("flags : avx2\n", 1).is_none());
    }
}
