//! Packing several short examples into each sequence, as llm-foundry's `BinPackCollator`
//! (`llmfoundry/data/packing.py`) does, and its `auto_packing_ratio` profile.
//!
//! Each call takes `⌊bins × packing_ratio⌋` examples plus the bins left over by the previous
//! call and runs first-fit decreasing: examples longest first (ties in arrival order), each into
//! the first bin with room, where a bin that receives one moves to the back of the list; once the
//! examples left are just enough to fill the bins still missing, each gets its own bin. The
//! `bins` fullest bins are emitted (ties in list order) and the rest are kept for the next call.
//! All of this is a pure function of the example sizes in order, so a loader can rebuild any
//! epoch's packing from its seed alone.

/// A sequence being filled: total tokens and the examples in it, in the order they were added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bin {
    /// Tokens in the bin.
    pub size: usize,
    /// The ids of the examples in it.
    pub items: Vec<u32>,
}

/// The packing state across calls: the bins not yet emitted.
#[derive(Debug, Clone, Default)]
pub struct Packer {
    bins: usize,
    max_len: usize,
    leftover: Vec<Bin>,
}

impl Packer {
    /// Emits `bins` sequences per call, each at most `max_len` tokens.
    pub fn new(bins: usize, max_len: usize) -> Self {
        Self {
            bins,
            max_len,
            leftover: Vec::new(),
        }
    }

    /// Packs `items` (`(size, id)`, each `size ≤ max_len`) with the leftovers; returns up to
    /// `bins` bins, fullest first (fewer only if examples and leftovers together are fewer).
    pub fn pack(&mut self, items: &[(usize, u32)]) -> Vec<Bin> {
        let mut bins = std::mem::take(&mut self.leftover);
        let mut sorted = items.to_vec();
        // Stable: equal sizes keep their arrival order, as Python's `sorted(reverse=True)`.
        sorted.sort_by_key(|&(size, _)| std::cmp::Reverse(size));
        let n = sorted.len();
        for (i, &(size, id)) in sorted.iter().enumerate() {
            let required = self.bins.saturating_sub(bins.len());
            if n - i <= required {
                bins.push(Bin {
                    size,
                    items: vec![id],
                });
                continue;
            }
            match bins.iter().position(|b| b.size + size <= self.max_len) {
                Some(at) => {
                    let mut b = bins.remove(at);
                    b.size += size;
                    b.items.push(id);
                    bins.push(b);
                }
                None => bins.push(Bin {
                    size,
                    items: vec![id],
                }),
            }
        }
        bins.sort_by_key(|b| std::cmp::Reverse(b.size));
        self.leftover = bins.split_off(self.bins.min(bins.len()));
        bins
    }

    /// The bins still waiting, fullest first.
    pub fn leftover(&self) -> &[Bin] {
        &self.leftover
    }

    /// Takes the waiting bins out (fullest first).
    pub fn drain(&mut self) -> Vec<Bin> {
        std::mem::take(&mut self.leftover)
    }
}

/// llm-foundry's `auto_packing_ratio`: profile packing ratios from 1 to `max_seq_len / 100`
/// (20 values, rounded to 0.1 half-to-even as NumPy does, one per distinct examples-per-call
/// count) on the first `100 ×` the largest call's examples of `sizes`, and keep the largest
/// ratio before the first that wastes any tokens (leaves them in bins never emitted). Sequences
/// of at most 100 tokens are not packed (ratio 1).
pub fn auto_ratio(sizes: &[usize], bins: usize, max_seq_len: usize) -> f64 {
    if max_seq_len <= 100 || bins == 0 {
        return 1.0;
    }
    const RATIOS: usize = 20;
    let (lo, hi) = (1.0f64, max_seq_len as f64 / 100.0);
    let step = (hi - lo) / (RATIOS - 1) as f64;
    let mut candidates: Vec<(f64, usize)> = Vec::new();
    for i in 0..RATIOS {
        let raw = if i + 1 == RATIOS {
            hi
        } else {
            lo + step * i as f64
        };
        let ratio = (10.0 * raw).round_ties_even() / 10.0;
        let per_call = (ratio * bins as f64) as usize;
        if !candidates.iter().any(|&(_, n)| n == per_call) {
            candidates.push((ratio, per_call));
        }
    }
    let largest = candidates.iter().map(|&(_, n)| n).max().unwrap_or(bins);
    let profile = &sizes[..sizes.len().min(largest * 100)];
    let mut chosen = 1.0;
    for (ratio, per_call) in candidates {
        match waste(profile, per_call, bins, max_seq_len) {
            Some(w) if w <= 0.0 => chosen = ratio,
            _ => break,
        }
    }
    chosen
}

/// The share of tokens a packer leaves behind on `sizes`, fed `per_call` at a time (calls with
/// fewer than `bins` examples skipped, as llm-foundry's `profile_packing`); `None` when no call
/// ran.
fn waste(sizes: &[usize], per_call: usize, bins: usize, max_len: usize) -> Option<f64> {
    let mut packer = Packer::new(bins, max_len);
    let (mut packed, mut total, mut calls) = (0usize, 0usize, 0usize);
    for chunk in sizes.chunks(per_call.max(1)) {
        if chunk.len() < bins {
            continue;
        }
        let items: Vec<(usize, u32)> = chunk.iter().map(|&s| (s, 0)).collect();
        packed += packer.pack(&items).iter().map(|b| b.size).sum::<usize>();
        total += chunk.iter().sum::<usize>();
        calls += 1;
    }
    (calls > 0 && total > 0).then(|| 1.0 - packed as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(sizes: &[usize]) -> Vec<(usize, u32)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u32))
            .collect()
    }

    #[test]
    fn first_fit_decreasing_fills_bins_and_keeps_the_rest() {
        // max 10, 2 bins: 7 → A; 6 → B (A full at 7+6); 3 → A (10); 3 → B (9); 2 → own bin C.
        let mut p = Packer::new(2, 10);
        let out = p.pack(&items(&[3, 7, 2, 6, 3]));
        assert_eq!(
            out,
            vec![
                Bin {
                    size: 10,
                    items: vec![1, 0]
                },
                Bin {
                    size: 9,
                    items: vec![3, 4]
                }
            ]
        );
        assert_eq!(
            p.leftover(),
            &[Bin {
                size: 2,
                items: vec![2]
            }]
        );
        // The leftover bin is filled first on the next call.
        let out = p.pack(&[(8, 10), (1, 11)]);
        assert_eq!(
            out,
            vec![
                Bin {
                    size: 10,
                    items: vec![2, 10]
                },
                Bin {
                    size: 1,
                    items: vec![11]
                }
            ]
        );
        assert!(p.leftover().is_empty());
    }

    #[test]
    fn every_example_lands_in_exactly_one_bin_within_the_limit() {
        let sizes: Vec<usize> = (0..97).map(|i| 1 + (i * 37 % 29)).collect();
        let mut p = Packer::new(4, 32);
        let mut seen = Vec::new();
        for (c, chunk) in items(&sizes).chunks(10).enumerate() {
            let out = p.pack(chunk);
            assert!(out.len() == 4 || c == 9, "call {c} emitted {}", out.len());
            for b in out.iter().chain(p.leftover()) {
                assert!(b.size <= 32);
                assert_eq!(
                    b.size,
                    b.items.iter().map(|&i| sizes[i as usize]).sum::<usize>()
                );
            }
            seen.extend(out.into_iter().flat_map(|b| b.items));
        }
        seen.extend(p.drain().into_iter().flat_map(|b| b.items));
        seen.sort_unstable();
        assert_eq!(seen, (0..97).collect::<Vec<u32>>());
    }

    #[test]
    fn when_examples_run_short_each_gets_its_own_bin() {
        let mut p = Packer::new(3, 100);
        let out = p.pack(&items(&[5, 6, 7]));
        assert_eq!(
            out.iter().map(|b| b.items.len()).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn auto_ratio_picks_the_largest_ratio_without_waste() {
        assert_eq!(auto_ratio(&[10; 1000], 4, 100), 1.0);
        // 20-token examples in 400-token sequences: up to 20 fit a bin, and the largest profiled
        // ratio (4.0, 16 examples per call for 4 bins) never leaves a token behind.
        assert_eq!(auto_ratio(&vec![20; 10_000], 4, 400), 4.0);
        // Examples longer than half a sequence cannot share one: any ratio above 1 wastes.
        assert_eq!(auto_ratio(&vec![300; 10_000], 4, 400), 1.0);
    }
}
