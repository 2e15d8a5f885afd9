//! Partitioning and resumption of a real (synthetic) MDS dataset across world sizes: every
//! world reads the same global order, the ranks' union is the epoch, and a state taken after
//! any batch resumes with exactly the samples that remain, even on a different world size.

use std::path::Path;

use tessera_data::mds::{MdsWriter, WriterOptions};
use tessera_data::stream::{ShuffleAlgo, StreamState, StreamingConfig, StreamingDataset, World};

const N: u64 = 1000;

/// Sample `i` holds tokens `[i, i+1, …]` (length 3 + i % 5): its id is its first token.
fn write_dataset(dir: &Path) {
    let opts = WriterOptions {
        size_limit: Some(2000),
        ..Default::default()
    };
    let mut w = MdsWriter::create(dir, &[("tokens", "ndarray:int32")], opts).unwrap();
    for i in 0..N as u32 {
        let toks: Vec<u32> = (i..i + 3 + i % 5).collect();
        w.write_tokens(&toks).unwrap();
    }
    let index = w.finish().unwrap();
    assert!(
        index.shards.len() > 10,
        "want many shards, got {}",
        index.shards.len()
    );
}

fn config(dir: &Path, batch_size: u64) -> StreamingConfig {
    let mut c = StreamingConfig::local(dir);
    c.shuffle = true;
    c.shuffle_algo = ShuffleAlgo::Py1e;
    c.shuffle_block_size = Some(64);
    c.num_canonical_nodes = Some(8);
    c.batch_size = batch_size;
    c
}

/// (world_size, ranks_per_node) pairs whose node counts divide 8 canonical nodes.
const WORLDS: [(u64, u64); 6] = [(1, 1), (2, 1), (2, 2), (4, 2), (8, 4), (8, 1)];

/// Read `steps` batches on every rank of a world from `state`; returns, per step, the global
/// batch laid out by global position (rank (p, l)'s j-th sample at `(j·R + l)·P + p`), and the
/// common state afterwards.
fn run_world(
    dir: &Path,
    ws: u64,
    rpn: u64,
    bs: u64,
    state: StreamState,
    steps: usize,
) -> (Vec<i64>, StreamState) {
    let p = ws / rpn;
    let mut per_rank = Vec::new();
    let mut states = Vec::new();
    for rank in 0..ws {
        let ds =
            StreamingDataset::new(config(dir, bs), World::new(rank, ws, rpn).unwrap()).unwrap();
        let mut loader = ds.loader(state).unwrap();
        let mut ids = Vec::new();
        for _ in 0..steps {
            let mut toks = Vec::new();
            let mut lens = Vec::new();
            loader.next_batch_into(&mut toks, &mut lens).unwrap();
            let mut at = 0;
            for n in lens {
                ids.push(toks[at] as i64);
                at += n;
            }
        }
        per_rank.push(ids);
        states.push(loader.state());
    }
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "ranks disagree on the state: {states:?}"
    );
    let mut global = vec![-1; steps * (ws * bs) as usize];
    for (rank, ids) in per_rank.iter().enumerate() {
        let (node, l) = (rank as u64 / rpn, rank as u64 % rpn);
        for (m, &id) in ids.iter().enumerate() {
            let (step, j) = (m as u64 / bs, m as u64 % bs);
            global[(step * ws * bs + (j * rpn + l) * p + node) as usize] = id;
        }
    }
    (global, states[0])
}

#[test]
fn stream_every_world_reads_the_same_global_order_and_the_whole_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path());
    let reference = StreamingDataset::new(config(tmp.path(), 1), World::SINGLE)
        .unwrap()
        .global_order(0)
        .unwrap();
    let mut sorted = reference.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..N as i64).collect::<Vec<_>>(),
        "the epoch is a permutation"
    );
    for (ws, rpn) in WORLDS {
        let bs = 5;
        let steps = (N / (ws * bs)) as usize;
        let start = StreamingDataset::new(config(tmp.path(), bs), World::new(0, ws, rpn).unwrap())
            .unwrap()
            .initial_state();
        let (global, _) = run_world(tmp.path(), ws, rpn, bs, start, steps);
        assert_eq!(global, reference[..global.len()], "world {ws}x{rpn}");
    }
}

#[test]
fn stream_resume_yields_exactly_the_remaining_samples_on_any_world() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path());
    let single = StreamingDataset::new(config(tmp.path(), 1), World::SINGLE).unwrap();
    let epoch0 = single.global_order(0).unwrap();
    let epoch1 = single.global_order(1).unwrap();
    assert_ne!(epoch0, epoch1);

    for (ws_a, rpn_a) in WORLDS {
        for (ws_b, rpn_b) in [(1, 1), (4, 2), (8, 4)] {
            // World A reads 7 batches of 4, then world B continues with batches of 2 for the
            // rest of the epoch and into the next one.
            let start =
                StreamingDataset::new(config(tmp.path(), 4), World::new(0, ws_a, rpn_a).unwrap())
                    .unwrap()
                    .initial_state();
            let (first, state) = run_world(tmp.path(), ws_a, rpn_a, 4, start, 7);
            assert_eq!(state.sample_in_epoch, 7 * 4 * ws_a);
            assert_eq!(first, epoch0[..first.len()]);

            let bs_b = 2;
            let steps_left = ((N - state.sample_in_epoch) / (ws_b * bs_b)) as usize;
            let (rest, end_state) = run_world(tmp.path(), ws_b, rpn_b, bs_b, state, steps_left);
            let from = state.sample_in_epoch as usize;
            assert_eq!(
                rest,
                epoch0[from..from + rest.len()],
                "{ws_a}x{rpn_a} -> {ws_b}x{rpn_b}"
            );

            // Padding may leave one more (partly repeated) batch in epoch 0; after that the
            // next batch starts epoch 1 from its beginning.
            let mut state = end_state;
            let next = loop {
                let (next, s) = run_world(tmp.path(), ws_b, rpn_b, bs_b, state, 1);
                if s.epoch == 1 {
                    break next;
                }
                assert!(next.iter().all(|id| epoch0.contains(id)));
                assert!(
                    state.sample_in_epoch < N,
                    "no batch may start past the epoch"
                );
                state = s;
            };
            assert_eq!(next, epoch1[..next.len()]);
        }
    }
}

#[test]
fn stream_resume_state_survives_json_and_rejects_a_point_past_the_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    write_dataset(tmp.path());
    let ds = StreamingDataset::new(config(tmp.path(), 4), World::SINGLE).unwrap();
    let mut loader = ds.loader(ds.initial_state()).unwrap();
    for _ in 0..3 {
        loader.next_batch().unwrap();
    }
    let json = serde_json::to_string(&loader.state()).unwrap();
    let state: StreamState = serde_json::from_str(&json).unwrap();
    let expect: Vec<Vec<Vec<u32>>> = (0..3).map(|_| loader.next_batch().unwrap()).collect();
    let mut resumed = ds.loader(state).unwrap();
    let got: Vec<Vec<Vec<u32>>> = (0..3).map(|_| resumed.next_batch().unwrap()).collect();
    assert_eq!(got, expect);

    let past = StreamState {
        sample_in_epoch: 10 * N,
        ..state
    };
    let err = ds
        .loader(past)
        .err()
        .expect("a resume point past the epoch must fail")
        .to_string();
    assert!(err.contains("past the epoch"), "{err}");
}
