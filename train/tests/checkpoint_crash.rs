//! A trainer killed (SIGKILL) inside each window of a checkpoint save loses nothing: afterwards
//! the store recovers to a state where every checkpoint published before the save still
//! verifies with its old bytes, the one being saved either verifies with its new bytes or is
//! absent, and the next save succeeds and leaves no debris.
//!
//! Each kill needs its own process, so this test has its own `main` (`harness = false`): it
//! re-runs its own executable as the child that saves and dies.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tessera_train::checkpoint::{CheckpointStore, Manifest, Payload, SaveWindow};

const CHILD_DIR: &str = "TESSERA_CRASH_DIR";
const CHILD_WINDOW: &str = "TESSERA_CRASH_WINDOW";
const CHILD_REPLACE: &str = "TESSERA_CRASH_REPLACE";

fn payload(step: u64, fill: u8) -> Payload {
    Payload {
        step,
        files: vec![
            ("model.safetensors".into(), vec![fill; 4096]),
            (
                "state.json".into(),
                format!("{{\"step\":{step}}}").into_bytes(),
            ),
        ],
    }
}

/// The child: saves (step 20 fresh, or step 10 again as a replacement) and SIGKILLs itself at
/// the requested window.
fn child(dir: &Path, window: usize, replace: bool) {
    let target = SaveWindow::ALL[window];
    let store = CheckpointStore::new(dir, Some(3)).with_failpoint(Arc::new(move |w| {
        if w == target {
            // SAFETY: kill(2) on our own pid with a valid signal has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }));
    let step = if replace { 10 } else { 20 };
    let _ = store.write(&payload(step, 9));
    // Only windows that a save of this kind never reaches get here (MovedAside without a
    // replacement): exit with a code the parent recognises.
    std::process::exit(3);
}

fn model_bytes(dir: &Path, step: u64) -> Option<Vec<u8>> {
    std::fs::read(dir.join(format!("ba{step}/model.safetensors"))).ok()
}

fn parent() {
    let exe = std::env::current_exe().expect("own executable");
    let mut checked = 0;
    for replace in [false, true] {
        for (i, window) in SaveWindow::ALL.iter().enumerate() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("checkpoints");
            let store = CheckpointStore::new(&dir, Some(3));
            store.write(&payload(10, 1)).unwrap();
            let status = Command::new(&exe)
                .env(CHILD_DIR, &dir)
                .env(CHILD_WINDOW, i.to_string())
                .env(CHILD_REPLACE, if replace { "1" } else { "0" })
                .status()
                .expect("spawning the child");
            if status.code() == Some(3) {
                // This kind of save has no such window (nothing to move aside).
                assert!(!replace && *window == SaveWindow::MovedAside, "{window:?}");
                continue;
            }
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "the child should die at {window:?} (replace {replace}): {status}"
            );
            checked += 1;

            // A new trainer opens the folder.
            let recovered = store.recover(None).unwrap();
            let what = format!("killed at {window:?} (replace {replace}), recovered {recovered:?}");
            let (newest, corrupt) = store.newest_verified().unwrap();
            assert!(corrupt.is_empty(), "{what}: corrupt {corrupt:?}");
            let newest = newest.unwrap_or_else(|| panic!("{what}: no checkpoint left"));
            for (step, dir) in store.list().unwrap() {
                Manifest::read(&dir)
                    .and_then(|m| m.verify(&dir))
                    .unwrap_or_else(|e| panic!("{what}: ba{step} does not verify: {e}"));
            }
            if replace {
                // ba10 holds the old bytes or the new ones, never nothing.
                let bytes = model_bytes(&dir, 10).unwrap_or_else(|| panic!("{what}: ba10 lost"));
                assert!(
                    bytes == vec![1u8; 4096] || bytes == vec![9u8; 4096],
                    "{what}"
                );
                assert_eq!(newest.step, 10, "{what}");
            } else {
                assert_eq!(model_bytes(&dir, 10), Some(vec![1u8; 4096]), "{what}");
                if let Some(b) = model_bytes(&dir, 20) {
                    assert_eq!(b, vec![9u8; 4096], "{what}");
                }
            }
            // The next save works and leaves only published checkpoints and `latest`.
            store.write(&payload(30, 3)).unwrap();
            for entry in std::fs::read_dir(&dir).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    name == "latest" || name.starts_with("ba"),
                    "{what}: {name} left behind"
                );
            }
        }
    }
    assert_eq!(checked, 2 * SaveWindow::ALL.len() - 1);
    println!("checkpoint crash test: {checked} kills, nothing lost");
}

fn main() {
    match std::env::var_os(CHILD_DIR) {
        Some(dir) => {
            let window = std::env::var(CHILD_WINDOW).unwrap().parse().unwrap();
            let replace = std::env::var(CHILD_REPLACE).unwrap() == "1";
            child(Path::new(&dir), window, replace)
        }
        None => parent(),
    }
}
