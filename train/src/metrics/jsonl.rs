//! `metrics.jsonl` and `incidents.jsonl`: one JSON object per line, appended and flushed line by
//! line so a SIGKILL loses at most the line being written.
//!
//! Opening repairs a torn last line (a crash mid-write) by cutting the file back to its last
//! newline. On resume, [`JsonlWriter::open_resumed`] also drops metrics lines past the resumed
//! step, so the file reads as one uninterrupted run (the incidents file keeps its history: the
//! resume itself is an incident).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{MetricsError, atomic_write};

/// JSON has no NaN or infinity: serde_json writes a non-finite number as `null`, and this reads
/// `null` back as NaN, so every record the trainer writes it can read again.
fn nullable_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One training step's numbers (a `metrics.jsonl` line with `"kind": "train"`). A value that
/// is not finite, or was not computed (the gradient norm of a step a guard skipped), is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Optimizer steps completed (1 after the first step).
    pub step: u64,
    /// Training tokens consumed so far.
    pub tokens: u64,
    /// Mean loss per loss-generating token of this step.
    #[serde(deserialize_with = "nullable_f64")]
    pub loss: f64,
    /// Learning rate used by this step.
    #[serde(deserialize_with = "nullable_f64")]
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "nullable_f64")]
    pub grad_norm: f64,
    /// Training throughput over the recent window; `null` for the first step of a run, a
    /// resume or after an eval, when no window exists yet (never a made-up 0).
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    /// Model FLOPs utilisation, if the device's peak is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Seconds of the step spent in collectives (gradient sync, gathers), on rank 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
    /// Seconds since the run (or resume) started.
    #[serde(default)]
    pub elapsed_s: f64,
}

/// One evaluation's numbers (`"kind": "eval"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The step after which it ran.
    pub step: u64,
    /// Training tokens consumed by then.
    pub tokens: u64,
    /// Which eval set (`eval` when there is one).
    pub label: String,
    /// Mean loss per token.
    #[serde(deserialize_with = "nullable_f64")]
    pub loss: f64,
    /// `exp(loss)`.
    #[serde(deserialize_with = "nullable_f64")]
    pub perplexity: f64,
}

/// A `metrics.jsonl` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsRecord {
    /// A training step.
    Train(TrainRecord),
    /// An evaluation.
    Eval(EvalRecord),
}

impl MetricsRecord {
    /// The step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Train(r) => r.step,
            MetricsRecord::Eval(r) => r.step,
        }
    }
}

/// What happened, for `incidents.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// The run resumed from a checkpoint.
    Resume,
    /// A step was skipped (non-finite loss or gradient).
    SkippedStep,
    /// A loss spike was detected (and acted on as configured).
    LossSpike,
    /// The run rolled back to a checkpoint.
    Rollback,
    /// A checkpoint failed verification and was skipped.
    CorruptCheckpoint,
    /// The watchdog saw no progress and stopped the run.
    Stall,
    /// The run stopped on an unrecoverable error.
    Abort,
    /// The guards gave up: the loss stayed non-finite or far above its recent mean through
    /// every rollback allowed.
    Diverged,
    /// A stale lock on the run folder (its holder had died) was taken over.
    LockTakeover,
    /// A rank failed (written by the trainer, or by a launcher when a rank exits).
    RankFailure,
    /// A launcher saw a rank make no progress and stopped the job (`cargo xtask launch`, the
    /// Slurm script).
    Hang,
    /// A launcher restarted the job.
    Restart,
    /// The restarted job trained its first step again (the line says how long it took).
    Recovered,
    /// The launcher itself was stopped (SIGINT/SIGTERM) and stopped the job.
    LauncherStopped,
    /// A kind this version does not know (written by a newer tessera or another tool): kept
    /// readable so that one line never stops a report or a resume.
    #[serde(other)]
    Other,
}

/// An `incidents.jsonl` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The step at which it was noticed.
    pub step: u64,
    /// What kind.
    pub kind: IncidentKind,
    /// Human-readable detail (a checkpoint path, the loss and window mean…).
    pub detail: String,
    /// Optimizer steps of work lost (e.g. redone after a resume).
    #[serde(default)]
    pub lost_steps: u64,
    /// Tokens of work lost.
    #[serde(default)]
    pub lost_tokens: u64,
    /// The rank it concerns, when it concerns one (a failed or hung rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u64>,
    /// Unix time in seconds.
    pub unix_time: f64,
}

impl Incident {
    /// An incident stamped with the current time.
    pub fn now(step: u64, kind: IncidentKind, detail: impl Into<String>) -> Self {
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Incident {
            step,
            kind,
            detail: detail.into(),
            lost_steps: 0,
            lost_tokens: 0,
            rank: None,
            unix_time,
        }
    }
}

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
}

impl JsonlWriter {
    /// Opens (creating) `path` for appending, first cutting off a torn last line.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MetricsError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| MetricsError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len > 0 {
            // Find the last newline; anything after it is a torn write.
            let mut buf = Vec::new();
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.read_to_end(&mut buf).map_err(io)?;
            let keep = buf
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0) as u64;
            if keep < len {
                file.set_len(keep).map_err(io)?;
            }
        }
        Ok(JsonlWriter { path, file })
    }

    /// Opens `path` for a resumed run: lines with a `step` greater than `step` (written after the
    /// checkpoint the run resumes from) are dropped, atomically, then the file is opened.
    pub fn open_resumed(path: impl AsRef<Path>, step: u64) -> Result<Self, MetricsError> {
        let path = path.as_ref();
        if path.exists() {
            let text = std::fs::read(path).map_err(|source| MetricsError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let mut kept = Vec::with_capacity(text.len());
            for line in text.split_inclusive(|b| *b == b'\n') {
                if !line.ends_with(b"\n") {
                    continue; // torn
                }
                let later = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s > step);
                if !later {
                    kept.extend_from_slice(line);
                }
            }
            if kept.len() != text.len() {
                atomic_write(path, &kept)?;
            }
        }
        Self::open(path)
    }

    /// Appends one record as a single line and flushes it to the OS.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), MetricsError> {
        let mut line = serde_json::to_vec(record).map_err(|e| MetricsError::Encode {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        // One write call per line: with O_APPEND, concurrent writers never interleave within it.
        self.file
            .write_all(&line)
            .map_err(|source| MetricsError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.file.flush().map_err(|source| MetricsError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Forces the file to stable storage (at checkpoints).
    pub fn sync(&self) -> Result<(), MetricsError> {
        self.file.sync_data().map_err(|source| MetricsError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every line of a JSON-lines file; a bad line is an error naming its number. A torn last
/// line (no newline) is ignored, as the writer would cut it.
pub fn read_jsonl<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<Vec<T>, MetricsError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| MetricsError::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_with_non_finite_or_missing_values_read_back() {
        // A step a guard skipped: its loss was NaN and its gradient norm never computed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let mut w = JsonlWriter::open(&path).unwrap();
        let skipped = MetricsRecord::Train(TrainRecord {
            step: 7,
            tokens: 7,
            loss: f64::NAN,
            lr: 1e-3,
            grad_norm: f64::NAN,
            tokens_per_s: None,
            mfu: None,
            comm_s: None,
            elapsed_s: 1.0,
        });
        let eval = MetricsRecord::Eval(EvalRecord {
            step: 7,
            tokens: 7,
            label: "eval".into(),
            loss: 800.0,
            perplexity: f64::INFINITY,
        });
        w.append(&skipped).unwrap();
        w.append(&eval).unwrap();
        let back: Vec<MetricsRecord> = read_jsonl(&path).unwrap();
        match &back[..] {
            [MetricsRecord::Train(t), MetricsRecord::Eval(e)] => {
                assert!(t.loss.is_nan() && t.grad_norm.is_nan() && t.lr == 1e-3);
                assert!(e.perplexity.is_nan() && e.loss == 800.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incidents_of_unknown_kinds_and_extra_fields_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"step":3,"kind":"restart","detail":"attempt 2","rank":1,"exit_code":137,"unix_time":1.0}"#,
                "\n",
                r#"{"step":4,"kind":"from_the_future","detail":"x","unix_time":2.0}"#,
                "\n"
            ),
        )
        .unwrap();
        let back: Vec<Incident> = read_jsonl(&path).unwrap();
        assert_eq!(back[0].kind, IncidentKind::Restart);
        assert_eq!(back[0].rank, Some(1));
        assert_eq!(back[1].kind, IncidentKind::Other);
    }

    fn train(step: u64) -> MetricsRecord {
        MetricsRecord::Train(TrainRecord {
            step,
            tokens: step * 1024,
            loss: 10.0 / step as f64,
            lr: 1e-3,
            grad_norm: 0.5,
            tokens_per_s: Some(2048.0),
            mfu: Some(0.41),
            comm_s: None,
            elapsed_s: step as f64,
        })
    }

    #[test]
    fn each_line_is_on_disk_as_soon_as_it_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        w.append(&train(1)).unwrap();
        // Read through a separate handle without closing the writer.
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(
            text.starts_with("{\"kind\":\"train\",\"step\":1,"),
            "{text}"
        );
        w.append(&MetricsRecord::Eval(EvalRecord {
            step: 1,
            tokens: 1024,
            label: "eval".into(),
            loss: 2.0,
            perplexity: 2f64.exp(),
        }))
        .unwrap();
        let back: Vec<MetricsRecord> = read_jsonl(&p).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], train(1));
    }

    #[test]
    fn an_unknown_throughput_is_null_not_zero() {
        let MetricsRecord::Train(mut r) = train(1) else {
            unreachable!()
        };
        r.tokens_per_s = None;
        r.mfu = None;
        let line = serde_json::to_string(&MetricsRecord::Train(r.clone())).unwrap();
        assert!(line.contains("\"tokens_per_s\":null"), "{line}");
        assert!(!line.contains("mfu"), "{line}");
        let back: MetricsRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, MetricsRecord::Train(r));
    }

    #[test]
    fn reopening_appends_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        JsonlWriter::open(&p).unwrap().append(&train(1)).unwrap();
        // A crash mid-line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"kind\":\"train\",\"st").unwrap();
        let mut w = JsonlWriter::open(&p).unwrap();
        w.append(&train(2)).unwrap();
        let back: Vec<MetricsRecord> = read_jsonl(&p).unwrap();
        assert_eq!(back, vec![train(1), train(2)]);
    }

    #[test]
    fn resume_drops_lines_after_the_checkpoint_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        for s in 1..=5 {
            w.append(&train(s)).unwrap();
        }
        drop(w);
        let mut w = JsonlWriter::open_resumed(&p, 3).unwrap();
        w.append(&train(4)).unwrap();
        let steps: Vec<u64> = read_jsonl::<MetricsRecord>(&p)
            .unwrap()
            .iter()
            .map(|r| r.step())
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("incidents.jsonl");
        let mut w = JsonlWriter::open(&p).unwrap();
        w.append(&Incident::now(3, IncidentKind::Resume, "from ba3"))
            .unwrap();
        drop(w);
        std::fs::write(
            &p,
            format!("{}not json\n", std::fs::read_to_string(&p).unwrap()),
        )
        .unwrap();
        let e = read_jsonl::<Incident>(&p).unwrap_err();
        assert!(matches!(e, MetricsError::BadLine { line: 2, .. }), "{e}");
    }

    #[test]
    fn incidents_serialize_with_snake_case_kinds() {
        let mut i = Incident::now(
            7,
            IncidentKind::CorruptCheckpoint,
            "ba6: sha256 mismatch in model.safetensors",
        );
        i.lost_steps = 1;
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["kind"], "corrupt_checkpoint");
        assert_eq!(v["lost_steps"], 1);
        assert!(v["unix_time"].as_f64().unwrap() > 1.6e9);
    }
}
