//! This rank's share of the training state: the f32 master weights and the optimizer moments of
//! its shard of every unit, and the update that runs on them.
//!
//! The update is element-wise, so updating a shard gives the same bits as updating the whole
//! vector: the state can be split any number of ways (ZeRO's insight), and a run can resume on
//! another number of ranks.

use burn::optim::SimpleOptimizer;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::layout::{CHUNK, FlatLayout};
use crate::optim::{Optim, OptimState};

/// One rank's shard of every unit.
pub struct ShardState<B: Backend> {
    /// Per unit: the master weights of this rank's shard.
    pub master: Vec<Tensor<B, 1>>,
    /// Per unit: the optimizer state of that shard (`None` before the first update).
    pub optim: Vec<Option<OptimState<B, 1>>>,
}

impl<B: Backend> Clone for ShardState<B> {
    fn clone(&self) -> Self {
        ShardState {
            master: self.master.clone(),
            optim: self.optim.clone(),
        }
    }
}

impl<B: Backend> ShardState<B> {
    /// Takes shard `rank` of each unit's full (padded) vector; no optimizer state yet.
    pub fn from_units(layout: &FlatLayout, rank: usize, units: Vec<Tensor<B, 1>>) -> Self {
        let master = units
            .into_iter()
            .enumerate()
            .map(|(u, full)| full.slice([layout.shard(u, rank)]))
            .collect::<Vec<_>>();
        let optim = master.iter().map(|_| None).collect();
        ShardState { master, optim }
    }

    /// One optimizer step on every unit's shard with its (reduced, clipped) gradient shard.
    pub fn step(&mut self, optim: &Optim, lr: f64, grads: Vec<Tensor<B, 1>>) {
        for (u, grad) in grads.into_iter().enumerate() {
            let param = self.master[u].clone();
            let state = self.optim[u].take();
            let (param, state) = SimpleOptimizer::<B>::step(optim, lr, param, grad, state);
            self.master[u] = param;
            self.optim[u] = state;
        }
    }
}

/// `Σ g²` of each [`CHUNK`] of a shard (whose length is a multiple of it), in order. The
/// global norm sums these over every rank's shards in unit and chunk order, which is the same
/// order at any world size.
pub fn chunk_sumsq<B: Backend>(g: &Tensor<B, 1>) -> Vec<f64> {
    let [n] = g.dims();
    if n == 0 {
        return Vec::new();
    }
    debug_assert_eq!(n % CHUNK, 0);
    // Host sync: one f32 per chunk.
    let sums = g.clone().square().reshape([n / CHUNK, CHUNK]).sum_dim(1);
    sums.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map(|v| v.into_iter().map(f64::from).collect())
        .unwrap_or_else(|_| vec![f64::NAN; n / CHUNK])
}

/// The L2 norm from every chunk's `Σ g²`, summed in order in f64.
pub fn norm_of(chunk_sums: &[f64]) -> f64 {
    chunk_sums.iter().sum::<f64>().sqrt()
}

/// `torch.nn.utils.clip_grad_norm_`'s factor: `min(1, max / (norm + 1e-6))`.
pub fn clip_coefficient(norm: f64, max: f64) -> f64 {
    (max / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    fn vector(values: Vec<f32>) -> Tensor<Flex, 1> {
        let n = values.len();
        Tensor::from_data(TensorData::new(values, [n]), &Default::default())
    }

    #[test]
    fn updating_shards_equals_updating_the_whole_vector_bit_for_bit() {
        let n = 4 * CHUNK;
        let p: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|t| {
                (0..n)
                    .map(|i| ((i * 13 + t * 7) % 89) as f32 / 40.0 - 1.1)
                    .collect()
            })
            .collect();
        let optim = crate::optim::OptimizerConfig {
            name: crate::optim::OptimizerName::DecoupledAdamw,
            lr: Some(1e-2),
            betas: None,
            eps: None,
            weight_decay: Some(0.1),
        }
        .build();
        let run = |shards: usize| -> Vec<f32> {
            let mut out = Vec::new();
            for r in 0..shards {
                let range = r * n / shards..(r + 1) * n / shards;
                let mut s = ShardState::<Flex> {
                    master: vec![vector(p[range.clone()].to_vec())],
                    optim: vec![None],
                };
                for (t, g) in grads.iter().enumerate() {
                    s.step(
                        &optim,
                        1e-2 / (t + 1) as f64,
                        vec![vector(g[range.clone()].to_vec())],
                    );
                }
                out.extend(s.master[0].clone().into_data().to_vec::<f32>().unwrap());
            }
            out
        };
        let whole = run(1);
        assert_ne!(whole, p);
        assert!(run(2) == whole && run(4) == whole);
    }

    #[test]
    fn the_norm_is_the_same_however_the_chunks_are_split() {
        let n = 8 * CHUNK;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let all = chunk_sumsq(&vector(g.clone()));
        let mut halves = chunk_sumsq(&vector(g[..n / 2].to_vec()));
        halves.extend(chunk_sumsq(&vector(g[n / 2..].to_vec())));
        assert!(all == halves);
        let want: f64 = g
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        assert!((norm_of(&all) - want).abs() < 1e-4 * want);
        assert_eq!(clip_coefficient(2.0, 1.0), 1.0 / (2.0 + 1e-6));
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    }
}
