//! tessera's shuffles against mosaicml-streaming's own orders (`fixtures/mds/shuffle_orders.json`,
//! produced by streaming 0.13 / NumPy 2.1.3): both the raw `get_shuffle` permutation and the order
//! `StreamingDataset` yields when iterated in one process, for every algorithm, seed, block size
//! and epoch recorded there.

use serde_json::Value as Json;
use tessera_data::stream::{ShuffleAlgo, StreamingConfig, StreamingDataset, World};

fn ids(v: &Json) -> Vec<i64> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_i64().expect("an integer id"))
        .collect()
}

/// The fixture's closed-form tokens: `arange(7i, 7i + 5 + (37i mod 91)) mod 50368`.
fn expected_tokens(i: i64) -> Vec<u32> {
    let len = 5 + (37 * i) % 91;
    (7 * i..7 * i + len).map(|t| (t % 50368) as u32).collect()
}

#[test]
fn stream_shuffle_orders_match_streaming() {
    let path = tessera_testkit::repo_fixture("mds/shuffle_orders.json");
    let fixture: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut checked = 0;
    for (name, dataset) in fixture["datasets"].as_object().unwrap() {
        let shard_sizes: Vec<u64> = dataset["shard_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let dir = tessera_testkit::repo_fixture(format!("mds/{name}"));
        for run in dataset["runs"].as_array().unwrap() {
            let algo = ShuffleAlgo::from_name(run["algo"].as_str().unwrap()).unwrap();
            let seed = run["seed"].as_u64().unwrap();
            let block = run["shuffle_block_size"].as_u64();
            let batch_size = run["batch_size"].as_u64().unwrap();

            let mut cfg = StreamingConfig::local(&dir);
            cfg.shuffle = true;
            cfg.shuffle_algo = algo;
            cfg.shuffle_seed = seed;
            cfg.shuffle_block_size = block;
            cfg.num_canonical_nodes = Some(1);
            cfg.batch_size = batch_size;
            cfg.token_encoding_type = "int64".into();
            let ds = StreamingDataset::new(cfg, World::SINGLE).unwrap();
            let mut loader = ds.loader(ds.initial_state()).unwrap();

            for (k, epoch) in run["epochs"].as_array().unwrap().iter().enumerate() {
                let e = epoch["epoch"].as_u64().unwrap();
                let what = format!("{name} {algo:?} seed {seed} block {block:?} epoch {e}");
                let raw = algo
                    .shuffle(&shard_sizes, 1, seed, e, block.unwrap_or(4_000_000))
                    .unwrap();
                assert_eq!(raw, ids(&epoch["get_shuffle"]), "get_shuffle: {what}");

                if k > 0 {
                    loader.next_epoch().unwrap();
                }
                assert_eq!(loader.state().epoch, e);
                let mut got = Vec::new();
                let mut tokens = Vec::new();
                while let Some(id) = loader.next_sample_into(&mut tokens).unwrap() {
                    assert_eq!(tokens, expected_tokens(id), "tokens of sample {id}: {what}");
                    tokens.clear();
                    got.push(id);
                }
                assert_eq!(got, ids(&epoch["order"]), "dataset order: {what}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 80, "every recorded epoch was compared");
}
