use super::*;

fn payload(step: u64, fill: u8) -> Payload {
    Payload {
        step,
        files: vec![
            ("model.safetensors".into(), vec![fill; 64]),
            (
                STATE_FILE.into(),
                format!("{{\"step\":{step}}}").into_bytes(),
            ),
        ],
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_is_verified_and_latest_points_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path().join("ck"), None);
    let p = store.write(&payload(10, 1)).unwrap();
    assert_eq!(p, dir.path().join("ck/ba10"));
    assert_eq!(store.latest_pointer().as_deref(), Some("ba10"));
    let (res, corrupt) = store.newest_verified().unwrap();
    assert_eq!(res.unwrap().step, 10);
    assert!(corrupt.is_empty());
    // No temporary folders or part lists are left behind.
    assert_eq!(names(store.root()), vec!["ba10", "latest"]);
    assert_eq!(
        names(&p),
        vec!["manifest.json", "model.safetensors", "state.json"]
    );
}

#[test]
fn corrupt_newest_checkpoint_is_named_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    store.write(&payload(10, 1)).unwrap();
    let newest = store.write(&payload(20, 2)).unwrap();
    std::fs::write(newest.join("model.safetensors"), vec![9u8; 64]).unwrap();
    let (res, corrupt) = store.newest_verified().unwrap();
    assert_eq!(res.unwrap().step, 10);
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0].0, newest);
    assert!(corrupt[0].1.to_string().contains("model.safetensors"));
}

#[test]
fn a_crashed_attempts_staging_is_invisible_and_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    store.write(&payload(10, 1)).unwrap();
    // What a kill in the middle of writing ba20 leaves: a staging folder without a manifest.
    let stale = store.staging(20, "crashed").unwrap();
    stale.write_file("model.safetensors", b"partial").unwrap();
    assert_eq!(store.newest_verified().unwrap().0.unwrap().step, 10);
    store.write(&payload(30, 3)).unwrap();
    assert!(!stale.dir().exists());
}

#[test]
fn keep_prunes_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), Some(2));
    for s in [5, 10, 15, 20] {
        store.write(&payload(s, s as u8)).unwrap();
    }
    let steps: Vec<u64> = store.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![15, 20]);
}

#[test]
fn rewriting_a_step_replaces_the_old_folder() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    store.write(&payload(10, 1)).unwrap();
    store.write(&payload(10, 7)).unwrap();
    let bytes = std::fs::read(dir.path().join("ba10/model.safetensors")).unwrap();
    assert_eq!(bytes, vec![7u8; 64]);
    store.newest_verified().unwrap().0.unwrap();
    assert_eq!(names(store.root()), vec!["ba10", "latest"]);
}

#[test]
fn missing_folder_lists_nothing() {
    let store = CheckpointStore::new("/nonexistent/tessera/ck", None);
    assert!(store.list().unwrap().is_empty());
    assert!(store.newest_verified().unwrap().0.is_none());
    assert!(store.recover(None).unwrap().is_empty());
}

#[test]
fn every_writers_part_lands_in_one_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    // Three ranks write their shards concurrently; rank 0 commits once all are there.
    let handles: Vec<_> = (1..3)
        .map(|rank| {
            let store = store.clone();
            std::thread::spawn(move || {
                let s = store.staging(40, "job7").unwrap();
                std::thread::sleep(Duration::from_millis(30 * rank as u64));
                let e = s
                    .write_file(&format!("rank{rank}.safetensors"), &[rank as u8; 10])
                    .unwrap();
                s.finish_part(rank, vec![e]).unwrap();
            })
        })
        .collect();
    let s = store.staging(40, "job7").unwrap();
    let e = s.write_file("rank0.safetensors", &[0u8; 10]).unwrap();
    let meta = s
        .write_file_with("meta.json", |w| w.write_all(b"{\"world\":3}"))
        .unwrap();
    s.finish_part(0, vec![e, meta]).unwrap();
    let dest = store.commit(&s, 3, Duration::from_secs(10)).unwrap();
    for h in handles {
        h.join().unwrap();
    }
    let m = Manifest::read(&dest).unwrap();
    assert_eq!(
        m.files.keys().cloned().collect::<Vec<_>>(),
        vec![
            "meta.json",
            "rank0.safetensors",
            "rank1.safetensors",
            "rank2.safetensors"
        ]
    );
    m.verify(&dest).unwrap();
    assert_eq!(store.latest_pointer().as_deref(), Some("ba40"));
}

#[test]
fn a_writer_that_never_finishes_is_named_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    let s = store.staging(5, "job1").unwrap();
    let e = s.write_file("rank0.safetensors", b"x").unwrap();
    s.finish_part(0, vec![e]).unwrap();
    let t = Instant::now();
    let err = store
        .commit(&s, 3, Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(err.contains("[1, 2]") && err.contains("ba5"), "{err}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn two_writers_claiming_one_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    let s = store.staging(5, "job1").unwrap();
    let e = s.write_file("model.safetensors", b"x").unwrap();
    s.finish_part(0, vec![e.clone()]).unwrap();
    s.finish_part(1, vec![e]).unwrap();
    let err = store.commit(&s, 2, Duration::ZERO).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn bad_file_names_and_attempts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    assert!(store.staging(1, "../x").is_err());
    assert!(store.staging(1, "").is_err());
    let s = store.staging(1, "a").unwrap();
    for bad in ["", "a/b", MANIFEST_FILE, "part-0.json", ".hidden"] {
        assert!(s.write_file(bad, b"x").is_err(), "{bad:?} accepted");
    }
}

#[test]
fn recover_puts_back_a_checkpoint_whose_replacement_never_landed() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    store.write(&payload(10, 1)).unwrap();
    // A crash between "move aside" and "rename in": ba10 is only under its set-aside name.
    std::fs::rename(
        dir.path().join("ba10"),
        dir.path().join(".replaced-ba10-p1"),
    )
    .unwrap();
    assert!(store.newest_verified().unwrap().0.is_none());
    let done = store.recover(None).unwrap();
    assert_eq!(done, vec![Recovered::Restored(dir.path().join("ba10"))]);
    assert_eq!(store.newest_verified().unwrap().0.unwrap().step, 10);
    assert_eq!(
        std::fs::read(dir.path().join("ba10/model.safetensors")).unwrap(),
        vec![1u8; 64]
    );
}

#[test]
fn recover_drops_a_set_aside_copy_once_its_replacement_landed() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::new(dir.path(), None);
    store.write(&payload(10, 1)).unwrap();
    let aside = dir.path().join(".replaced-ba10-p1");
    std::fs::create_dir(&aside).unwrap();
    std::fs::write(aside.join("model.safetensors"), b"old").unwrap();
    let done = store.recover(Some("p1")).unwrap();
    assert_eq!(done, vec![Recovered::DroppedReplaced(aside)]);
    assert_eq!(names(store.root()), vec!["ba10", "latest"]);
}
