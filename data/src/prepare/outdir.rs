//! The output folder: where each run (or slice) writes, and how a re-run decides between
//! "already done", "redo" and "refuse".
//!
//! Layout of `--out DIR`:
//! - whole run: `DIR/train/`, `DIR/val/` (MDS datasets) and `DIR/prepare.json`;
//! - slice `i/N`: `DIR/train/part-i-of-N/`, `DIR/val/part-i-of-N/` and
//!   `DIR/prepare-part-i-of-N.json`; `merge` then writes `DIR/train/index.json` (streaming's
//!   merged index) and `DIR/prepare.json`.
//!
//! Resume is per unit (the whole run, or one slice): the unit's report is its completion marker,
//! written after its `index.json` files. Re-running a unit:
//! - report present with the same fingerprint: nothing to do, the stored report is returned;
//! - report present with another fingerprint: refused unless `overwrite`;
//! - no report, but a start marker with the same fingerprint: an interrupted run of the same
//!   settings; its partial folders are removed and the unit is redone;
//! - no report and non-empty folders of unknown origin: refused unless `overwrite`.
//!
//! So a Slurm array re-submitted after a failure redoes exactly the slices that did not finish.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PrepareError;
use super::config::Slice;
use super::report::{PrepareReport, write_atomic};

/// The split folder names (llm-foundry's `split` values).
pub const TRAIN: &str = "train";
/// The validation split's folder.
pub const VAL: &str = "val";

/// Where one unit writes.
#[derive(Debug, Clone)]
pub struct UnitLayout {
    pub out: PathBuf,
    pub slice: Option<Slice>,
}

impl UnitLayout {
    pub fn new(out: &Path, slice: Option<Slice>) -> Self {
        Self {
            out: out.to_path_buf(),
            slice,
        }
    }

    /// The MDS folder of `split` for this unit.
    pub fn split_dir(&self, split: &str) -> PathBuf {
        match self.slice {
            Some(s) => self.out.join(split).join(s.name()),
            None => self.out.join(split),
        }
    }

    /// The unit's report (its completion marker).
    pub fn report_path(&self) -> PathBuf {
        match self.slice {
            Some(s) => self.out.join(format!("prepare-{}.json", s.name())),
            None => self.out.join("prepare.json"),
        }
    }

    /// The marker written when the unit starts, holding its fingerprint.
    pub fn start_marker(&self) -> PathBuf {
        let unit = self.slice.map(|s| s.name()).unwrap_or_else(|| "all".into());
        self.out.join(format!(".prepare-{unit}.started"))
    }
}

/// What to do with a unit.
#[derive(Debug)]
pub enum Start {
    /// Write it.
    Fresh,
    /// It is complete with the same settings.
    Done(Box<PrepareReport>),
}

fn is_nonempty_dir(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

fn remove_dir(p: &Path) -> Result<(), PrepareError> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PrepareError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
    }
}

fn remove_file(p: &Path) -> Result<(), PrepareError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PrepareError::Io {
            path: p.to_path_buf(),
            source: e,
        }),
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    fingerprint: String,
}

/// Decides what to do with `unit` and prepares its folders (removing what must be redone), then
/// writes its start marker.
pub fn claim(unit: &UnitLayout, fingerprint: &str, overwrite: bool) -> Result<Start, PrepareError> {
    std::fs::create_dir_all(&unit.out).map_err(PrepareError::io(&unit.out))?;
    let report_path = unit.report_path();
    let dirs = [unit.split_dir(TRAIN), unit.split_dir(VAL)];
    let refuse = |message: String| PrepareError::OutDir {
        path: unit.out.clone(),
        message,
    };
    let whole = unit.out.join("prepare.json");
    if unit.slice.is_some()
        && whole.exists()
        && !overwrite
        && PrepareReport::load(&whole)?.merged_slices == 0
    {
        return Err(refuse("holds a finished non-sliced run (prepare.json); slices need their own --out, or pass --overwrite".into()));
    }
    let mut clear = overwrite;
    if report_path.exists() {
        let report = PrepareReport::load(&report_path)?;
        if report.fingerprint == fingerprint && !overwrite {
            return Ok(Start::Done(Box::new(report)));
        }
        if !overwrite {
            return Err(refuse(format!(
                "holds a finished run with different settings or inputs ({}); pass --overwrite to replace it",
                report_path.display()
            )));
        }
    } else if dirs.iter().any(|d| is_nonempty_dir(d)) {
        let marker: Option<Marker> = std::fs::read(unit.start_marker())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if marker.is_some_and(|m| m.fingerprint == fingerprint) {
            clear = true; // an interrupted run of the same settings: redo it
        } else if !overwrite {
            return Err(refuse(format!(
                "{} is not empty and holds no finished run of these settings; pass --overwrite to replace it",
                dirs.iter()
                    .find(|d| is_nonempty_dir(d))
                    .unwrap_or(&dirs[0])
                    .display()
            )));
        }
    }
    if clear {
        remove_file(&report_path)?;
        for d in &dirs {
            remove_dir(d)?;
        }
        if unit.slice.is_some() {
            // A non-sliced run being replaced by slices: its top-level files go too.
            remove_file(&unit.out.join("prepare.json"))?;
            for split in [TRAIN, VAL] {
                remove_file(&unit.out.join(split).join(crate::mds::INDEX_BASENAME))?;
            }
        } else {
            for entry in std::fs::read_dir(&unit.out)
                .map_err(PrepareError::io(&unit.out))?
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("prepare-part-") && name.ends_with(".json") {
                    remove_file(&entry.path())?;
                }
            }
        }
    }
    let marker = serde_json::to_vec(&Marker {
        fingerprint: fingerprint.to_string(),
    })
    .map_err(|e| refuse(e.to_string()))?;
    write_atomic(&unit.start_marker(), &marker)?;
    Ok(Start::Fresh)
}

/// Marks the unit complete: writes its report (atomically, after every index) and removes the
/// start marker.
pub fn complete(unit: &UnitLayout, report: &PrepareReport) -> Result<(), PrepareError> {
    report.save(&unit.report_path())?;
    remove_file(&unit.start_marker())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(fp: &str) -> PrepareReport {
        PrepareReport {
            fingerprint: fp.into(),
            docs_in: 3,
            ..Default::default()
        }
    }

    #[test]
    fn finished_unit_with_same_settings_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let unit = UnitLayout::new(dir.path(), None);
        assert!(matches!(claim(&unit, "fp1", false).unwrap(), Start::Fresh));
        std::fs::create_dir_all(unit.split_dir(TRAIN)).unwrap();
        std::fs::write(unit.split_dir(TRAIN).join("shard.00000.mds"), b"x").unwrap();
        complete(&unit, &report("fp1")).unwrap();
        assert!(!unit.start_marker().exists());
        match claim(&unit, "fp1", false).unwrap() {
            Start::Done(r) => assert_eq!(r.docs_in, 3),
            Start::Fresh => panic!("must be done"),
        }
        let err = claim(&unit, "fp2", false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        assert!(matches!(claim(&unit, "fp2", true).unwrap(), Start::Fresh));
        assert!(!unit.split_dir(TRAIN).exists() && !unit.report_path().exists());
    }

    #[test]
    fn interrupted_unit_is_redone_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let unit = UnitLayout::new(dir.path(), Some(Slice { index: 1, count: 3 }));
        assert!(matches!(claim(&unit, "fp", false).unwrap(), Start::Fresh));
        std::fs::create_dir_all(unit.split_dir(TRAIN)).unwrap();
        std::fs::write(unit.split_dir(TRAIN).join("shard.00000.mds"), b"partial").unwrap();
        // Same settings, no report: the partial slice is cleared and redone.
        assert!(matches!(claim(&unit, "fp", false).unwrap(), Start::Fresh));
        assert!(!unit.split_dir(TRAIN).exists());
        // Unknown files with another fingerprint: refused.
        std::fs::create_dir_all(unit.split_dir(TRAIN)).unwrap();
        std::fs::write(unit.split_dir(TRAIN).join("mine.txt"), b"user data").unwrap();
        let err = claim(&unit, "other", false).unwrap_err().to_string();
        assert!(err.contains("part-00001-of-00003"), "{err}");
        assert!(unit.split_dir(TRAIN).join("mine.txt").exists());
    }

    #[test]
    fn slices_have_their_own_folders_and_reports() {
        let unit = UnitLayout::new(Path::new("/o"), Some(Slice { index: 0, count: 2 }));
        assert_eq!(unit.split_dir(VAL), Path::new("/o/val/part-00000-of-00002"));
        assert_eq!(
            unit.report_path(),
            Path::new("/o/prepare-part-00000-of-00002.json")
        );
        assert_eq!(
            UnitLayout::new(Path::new("/o"), None).split_dir(TRAIN),
            Path::new("/o/train")
        );
    }
}
