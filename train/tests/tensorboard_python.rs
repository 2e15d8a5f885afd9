//! The event files tessera writes, read back by TensorBoard itself (the `tensorboard` Python
//! package's `EventAccumulator`, which is what `tensorboard --logdir` loads runs with).
//!
//! Ignored by default because it needs Python and `pip install tensorboard`; CI runs it with
//! `--include-ignored`. When run, a missing interpreter or package FAILS the test. The
//! interpreter is `$TESSERA_PYTHON`, else `python3`.

use std::process::Command;

use tessera_train::metrics::tensorboard::EventWriter;

const READ: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
out = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
print(json.dumps(out, sort_keys=True))
"#;

#[test]
#[ignore = "needs python with the tensorboard package"]
fn tensorboard_reads_every_scalar_back() {
    let dir = tempfile::tempdir().unwrap();
    let logdir = dir.path().join("tb");
    let mut w = EventWriter::create(&logdir).unwrap();
    for step in 1..=5u64 {
        w.add_scalars(
            &[
                ("train/loss", 10.0 - step as f64 * 0.5),
                ("train/lr", step as f64 * 1e-4),
            ],
            step,
        )
        .unwrap();
    }
    w.add_scalar("eval/loss", 7.25, 5).unwrap();
    drop(w);

    let python = std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-c", READ])
        .arg(&logdir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}` (set TESSERA_PYTHON): {e}"));
    assert!(
        out.status.success(),
        "TensorBoard could not read {}:\n{}",
        logdir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let series = |tag: &str| -> Vec<(u64, f64)> {
        got[tag]
            .as_array()
            .unwrap_or_else(|| panic!("tag {tag} missing from {got}"))
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect()
    };
    let loss = series("train/loss");
    assert_eq!(loss.len(), 5, "{got}");
    for (i, (step, value)) in loss.iter().enumerate() {
        assert_eq!(*step, i as u64 + 1);
        assert_eq!(
            *value,
            10.0 - *step as f64 * 0.5,
            "scalars are f32: these are exact"
        );
    }
    let lr = series("train/lr");
    assert_eq!(lr.len(), 5);
    assert!((lr[2].1 - 3e-4).abs() < 1e-9, "{lr:?}");
    assert_eq!(series("eval/loss"), vec![(5, 7.25)]);
    assert_eq!(got.as_object().unwrap().len(), 3, "no other tags: {got}");
}
