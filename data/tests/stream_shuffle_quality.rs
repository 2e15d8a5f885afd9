//! Shuffle quality: how well each algorithm mixes shards into batches, the cause of "wavy" loss
//! curves when it is poor. Measured on a synthetic 200-shard epoch with batches of 256: the mean
//! number of distinct source shards per batch, and the share of a batch taken by its most common
//! shard (1.0 = the whole batch from one shard). py1e must be far better than no shuffle and close to
//! the all-to-all `naive` shuffle.

use tessera_data::stream::ShuffleAlgo;

const SHARDS: usize = 200;
const PER_SHARD: u64 = 500;
const BATCH: usize = 256;

struct Quality {
    distinct: f64,
    top_share: f64,
}

fn quality(order: &[i64]) -> Quality {
    let (mut distinct, mut top_share, mut n) = (0.0, 0.0, 0.0);
    let mut counts = vec![0u32; SHARDS];
    for batch in order.chunks_exact(BATCH) {
        counts.iter_mut().for_each(|c| *c = 0);
        for &id in batch {
            counts[(id as u64 / PER_SHARD) as usize] += 1;
        }
        distinct += counts.iter().filter(|&&c| c > 0).count() as f64;
        top_share += *counts.iter().max().unwrap_or(&0) as f64 / BATCH as f64;
        n += 1.0;
    }
    Quality {
        distinct: distinct / n,
        top_share: top_share / n,
    }
}

#[test]
fn stream_shuffle_quality_py1e_is_close_to_naive_and_far_from_unshuffled() {
    let sizes = vec![PER_SHARD; SHARDS];
    let total = PER_SHARD as i64 * SHARDS as i64;
    let unshuffled: Vec<i64> = (0..total).collect();
    let q_none = quality(&unshuffled);
    let q_naive = quality(&ShuffleAlgo::Naive.shuffle(&sizes, 1, 9176, 0, 0).unwrap());
    // streaming's default block size for one canonical node.
    let q_py1e = quality(
        &ShuffleAlgo::Py1e
            .shuffle(&sizes, 1, 9176, 0, 4_000_000)
            .unwrap(),
    );
    // A block of 40 shards' worth: bounded download window, still well mixed.
    let q_py1e_small = quality(
        &ShuffleAlgo::Py1e
            .shuffle(&sizes, 1, 9176, 0, 20_000)
            .unwrap(),
    );
    let q_py1s = quality(&ShuffleAlgo::Py1s.shuffle(&sizes, 1, 9176, 0, 0).unwrap());
    let report = |name: &str, q: &Quality| {
        eprintln!(
            "{name:>12}: {:6.1} distinct shards/batch, top shard {:.3} of a batch",
            q.distinct, q.top_share
        )
    };
    report("unshuffled", &q_none);
    report("naive", &q_naive);
    report("py1e", &q_py1e);
    report("py1e 20k", &q_py1e_small);
    report("py1s", &q_py1s);

    // 256 uniform draws over 200 shards hit about 200·(1 − e^(−1.28)) ≈ 144 distinct shards.
    assert!(
        (130.0..160.0).contains(&q_naive.distinct),
        "naive {}",
        q_naive.distinct
    );
    assert!(q_none.distinct < 2.0);
    assert!(
        q_py1e.distinct > 0.9 * q_naive.distinct,
        "py1e {} vs naive {}",
        q_py1e.distinct,
        q_naive.distinct
    );
    assert!(
        q_py1e.top_share < 1.5 * q_naive.top_share,
        "py1e top {} vs naive {}",
        q_py1e.top_share,
        q_naive.top_share
    );
    assert!(q_none.top_share > 0.5 && q_py1e.top_share < 0.05);
    assert!(q_py1e.distinct > 50.0 * q_none.distinct);
    assert!(
        q_py1e_small.distinct > 20.0 * q_none.distinct,
        "py1e 20k {}",
        q_py1e_small.distinct
    );
    // py1s only shuffles within shards: a batch comes from one or two shards, like no shuffle.
    assert!(q_py1s.distinct < 3.0, "py1s {}", q_py1s.distinct);
}
