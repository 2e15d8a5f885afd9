//! Mixing streams with `proportion`, `repeat` and `choose`: the epoch holds exactly the chosen
//! number of samples from each stream, each read back with the right tokens.

use tessera_data::stream::{StreamConfig, StreamingConfig, StreamingDataset, World};

fn fixture_tokens(i: i64) -> Vec<u32> {
    let len = 5 + (37 * i) % 91;
    (7 * i..7 * i + len).map(|t| (t % 50368) as u32).collect()
}

/// Two fixture streams with the same 120 samples, stored differently (ndarray:int32 and raw
/// int64 bytes): global ids 0..120 are stream 0, 120..240 stream 1.
fn two_streams(
    weights: [(Option<f64>, Option<f64>, Option<u64>); 2],
    epoch_size: Option<u64>,
) -> StreamingConfig {
    let dirs = ["mds/tokens_ndarray_int32", "mds/tokens_bytes_int64"];
    let streams = dirs
        .iter()
        .zip(weights)
        .map(|(d, (proportion, repeat, choose))| StreamConfig {
            proportion,
            repeat,
            choose,
            ..StreamConfig::local(tessera_testkit::repo_fixture(d))
        })
        .collect();
    let mut c = StreamingConfig::from_streams(streams);
    c.epoch_size = epoch_size;
    c.shuffle = true;
    c.token_encoding_type = "int64".into();
    c
}

/// Per-stream sample counts of one epoch, checking every sample's tokens.
fn epoch_counts(ds: &StreamingDataset, epoch: u64) -> [u64; 2] {
    let mut loader = ds.loader(ds.initial_state()).unwrap();
    for _ in 0..epoch {
        loader.next_epoch().unwrap();
    }
    let mut counts = [0u64; 2];
    let mut toks = Vec::new();
    while let Some(id) = loader.next_sample_into(&mut toks).unwrap() {
        assert_eq!(toks, fixture_tokens(id % 120), "sample {id}");
        toks.clear();
        counts[(id / 120) as usize] += 1;
    }
    counts
}

#[test]
fn stream_proportions_fill_the_epoch_size() {
    let ds = StreamingDataset::new(
        two_streams(
            [(Some(1.0), None, None), (Some(3.0), None, None)],
            Some(200),
        ),
        World::SINGLE,
    )
    .unwrap();
    assert_eq!(ds.epoch_size(), 200);
    assert_eq!(ds.choose_per_stream(), &[50, 150]);
    assert_eq!(epoch_counts(&ds, 0), [50, 150]);
    assert_eq!(epoch_counts(&ds, 1), [50, 150]);
}

#[test]
fn stream_repeat_and_choose_up_and_downsample() {
    let ds = StreamingDataset::new(
        two_streams([(None, Some(0.5), None), (None, Some(2.25), None)], None),
        World::SINGLE,
    )
    .unwrap();
    assert_eq!(ds.choose_per_stream(), &[60, 270]);
    assert_eq!(epoch_counts(&ds, 0), [60, 270]);

    let ds = StreamingDataset::new(
        two_streams([(None, None, Some(10)), (None, None, Some(300))], None),
        World::SINGLE,
    )
    .unwrap();
    assert_eq!(epoch_counts(&ds, 0), [10, 300]);
    // Balanced sampling draws a different 10 of stream 0 in another epoch.
    let pick = |epoch| {
        let mut l = ds.loader(ds.initial_state()).unwrap();
        for _ in 0..epoch {
            l.next_epoch().unwrap();
        }
        let mut ids: Vec<i64> = l
            .remaining_ids()
            .iter()
            .copied()
            .filter(|&i| i < 120)
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_ne!(pick(0), pick(1));
}

#[test]
fn stream_mixing_rejects_mixed_kinds_of_weights() {
    let err = StreamingDataset::new(
        two_streams([(Some(1.0), None, None), (None, Some(2.0), None)], None),
        World::SINGLE,
    )
    .err()
    .expect("proportion with repeat must fail")
    .to_string();
    assert!(err.contains("streams[1]"), "{err}");
}
