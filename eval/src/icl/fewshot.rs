//! Few-shot example selection, exactly as llm-foundry's `get_fewshot_sample_idxs`.
//!
//! One [`PyRandom`] per dataset (per category with `has_categories`), seeded with
//! `fewshot_random_seed`, is consumed in example order `0..n`. For example `i`:
//! `s = set(rng.sample(range(n), min(n - 1, k)))`; if `i` is in `s` it is removed and, unless
//! every other example is already in `s`, replaced by `rng.choice(range(n))` redrawn until it
//! is neither in `s` nor `i`. The prompt lists the examples in the *set's* iteration order,
//! reproduced by [`PySmallIntSet`].

use super::pyrandom::PyRandom;
use super::pyset::PySmallIntSet;

/// The few-shot indices for test example `example_idx` of a dataset of `n` examples, in prompt
/// order. Draws from `rng` exactly as llm-foundry does (nothing when `k == 0` or `n <= 1`).
pub fn fewshot_indices(n: usize, k: usize, example_idx: usize, rng: &mut PyRandom) -> Vec<usize> {
    let k = k.min(n.saturating_sub(1));
    // k <= n - 1 < n, so sampling cannot fail.
    let sampled = rng.sample_range(n, k).unwrap_or_default();
    let mut set = PySmallIntSet::from_items(sampled);
    if set.remove(example_idx) {
        if set.len() >= n.saturating_sub(1) {
            return set.iter_order();
        }
        loop {
            // n >= 2 here (the set held example_idx and fewer than n - 1 others).
            let r = rng.choice_range(n).unwrap_or(example_idx);
            if r != example_idx && !set.contains(r) {
                set.add(r);
                break;
            }
        }
    }
    set.iter_order()
}

/// Few-shot indices for every example of a dataset of `n` examples, in example order (the
/// order llm-foundry consumes its generator in).
pub fn fewshot_indices_for_dataset(n: usize, k: usize, seed: i64) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new(); n];
    }
    let mut rng = PyRandom::new(seed);
    (0..n).map(|i| fewshot_indices(n, k, i, &mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11.7 running llm-foundry's get_fewshot_sample_idxs
    // (`list(...)` of the returned set), seed 1234.

    #[test]
    fn three_shot_over_200_matches_llm_foundry_first_rows() {
        let rows = fewshot_indices_for_dataset(200, 3, 1234);
        assert_eq!(rows[0], vec![112, 29, 199]);
        assert_eq!(rows[1], EXPECTED_ROW1);
    }

    #[test]
    fn never_includes_the_test_example_and_has_k_distinct_entries() {
        for (i, row) in fewshot_indices_for_dataset(30, 5, 7).iter().enumerate() {
            assert_eq!(row.len(), 5);
            assert!(!row.contains(&i));
            let mut sorted = row.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 5);
        }
    }

    #[test]
    fn k_is_capped_at_n_minus_one() {
        let rows = fewshot_indices_for_dataset(3, 10, 1234);
        for (i, row) in rows.iter().enumerate() {
            let mut want: Vec<usize> = (0..3).filter(|&j| j != i).collect();
            let mut got = row.clone();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
        }
        assert_eq!(
            fewshot_indices_for_dataset(1, 3, 1),
            vec![Vec::<usize>::new()]
        );
    }

    #[test]
    fn replacement_path_matches_python() {
        // Small dataset so the sampled set often holds the test example.
        let got = fewshot_indices_for_dataset(6, 2, 1234);
        let want: Vec<Vec<usize>> = EXPECTED_SMALL.iter().map(|r| r.to_vec()).collect();
        assert_eq!(got, want);
    }

    const EXPECTED_ROW1: [usize; 3] = [8, 149, 23];
    const EXPECTED_SMALL: [[usize; 2]; 6] = [[3, 4], [0, 5], [0, 1], [0, 5], [0, 2], [3, 4]];
}
