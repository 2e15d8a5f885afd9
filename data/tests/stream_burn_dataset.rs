//! `StreamingDataset` as a burn `Dataset<Vec<u32>>`: item `i` is this rank's `i`-th sample of
//! epoch 0, the same order the loader reads.

use burn_dataset::Dataset;
use tessera_data::stream::{StreamingConfig, StreamingDataset, World};

#[test]
fn stream_burn_dataset_serves_the_rank_order() {
    let mut cfg = StreamingConfig::local(tessera_testkit::repo_fixture("mds/tokens_bytes_int64"));
    cfg.shuffle = true;
    cfg.num_canonical_nodes = Some(2);
    cfg.token_encoding_type = "int64".into();
    let world = World::new(1, 2, 1).unwrap();
    let ds = StreamingDataset::new(cfg, world).unwrap();
    let mut loader = ds.loader(ds.initial_state()).unwrap();
    let expected: Vec<Vec<u32>> = loader.epoch_samples().collect::<Result<_, _>>().unwrap();
    assert_eq!(Dataset::len(&ds), expected.len());
    assert_eq!(Dataset::len(&ds), 60, "120 samples over 2 ranks");
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(ds.get(i).as_ref(), Some(want), "item {i}");
    }
    assert!(ds.get(expected.len()).is_none());
    // burn's own iterator walks the same items.
    assert_eq!(ds.iter().count(), expected.len());
}
