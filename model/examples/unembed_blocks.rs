//! The CPU unembedding loss (`kernels::fused_unembed_cross_entropy`: logits, cross-entropy and
//! both gradients) at several block sizes, on the seq-256 bench shape: 2048 rows, d_model 256,
//! the released MPT vocabulary (50432). The figures behind `lm_loss::LOGITS_BLOCK_ELEMENTS`
//! (BENCHMARKS.md, "CPU training").
//!
//! `RAYON_NUM_THREADS=2 cargo run --release -p tessera-model --example unembed_blocks`

use std::time::Instant;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use tessera_model::kernels::fused_unembed_cross_entropy;

fn main() {
    let (n, d, v) = (2048, 256, 50432);
    let device = Default::default();
    <Flex as Backend>::seed(&device, 7);
    let h = Tensor::<Flex, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<Flex, 2>::random([v, d], Distribution::Normal(0.0, 0.02), &device);
    let ids: Vec<i64> = (0..n).map(|i| (i * 7919 % v) as i64).collect();
    let targets = Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &device);
    let (rounds, warmup) = (5, 1);
    println!("rows {n}, d_model {d}, vocab {v}: median of {rounds} after {warmup} warm-up");
    for log2 in [22, 23, 24, 25, 26, 27] {
        let elements = 1usize << log2;
        let mut times = Vec::new();
        for round in 0..warmup + rounds {
            let inputs = (h.clone(), w.clone(), targets.clone());
            let t0 = Instant::now();
            // Flex is eager: the outputs are complete when the call returns.
            let out = fused_unembed_cross_entropy(inputs, 1.0, [true, true], elements);
            let elapsed = t0.elapsed().as_secs_f64();
            let (_, dh, dw) = out.unwrap_or_else(|_| panic!("the CPU kernel refused f32 Flex"));
            assert!(
                dh.is_some() && dw.is_some(),
                "both gradients were asked for"
            );
            if round >= warmup {
                times.push(elapsed);
            }
        }
        times.sort_by(f64::total_cmp);
        let rows = (elements / v).clamp(1, n);
        let s = times[times.len() / 2];
        let gflop = 3.0 * 2.0 * (n * d * v) as f64 / 1e9;
        println!(
            "2^{log2} logits per block ({rows} rows, {:.0} MiB): {s:.3} s, {:.1} GFLOP/s",
            (rows * v * 4) as f64 / (1u64 << 20) as f64,
            gflop / s
        );
    }
}
