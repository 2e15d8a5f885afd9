//! Python's `random.Random`, bit for bit, for the calls llm-foundry's few-shot sampling makes.
//!
//! llm-foundry draws few-shot examples with `random.Random(fewshot_random_seed)` and
//! `rng.sample(range(n), k)` / `rng.choice(range(n))`
//! (`llmfoundry/eval/datasets/utils.py:get_fewshot_sample_idxs`). Reproducing its prompts, and
//! so its accuracies, needs the same stream: CPython's MT19937 (`Modules/_randommodule.c`),
//! seeded from an int through `init_by_array`, with `getrandbits`, `_randbelow` and `sample`
//! as `Lib/random.py` (CPython 3.11, the version the reference results were produced with)
//! defines them.

/// MT19937 state size.
const N: usize = 624;
/// MT19937 shift size.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// A `random.Random` seeded from a Python int.
#[derive(Clone)]
pub struct PyRandom {
    mt: Box<[u32; N]>,
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyRandom")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl PyRandom {
    /// `random.Random(seed)`. Python seeds with `abs(seed)`, split into little-endian 32-bit
    /// words (at least one), so `-5` and `5` give the same stream, as in CPython.
    pub fn new(seed: i64) -> Self {
        let n = seed.unsigned_abs();
        let key: Vec<u32> = if n >> 32 == 0 {
            vec![n as u32]
        } else {
            vec![n as u32, (n >> 32) as u32]
        };
        let mut rng = Self {
            mt: Box::new([0; N]),
            index: N,
        };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.mt[i - 1];
            self.mt[i] = (self.mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941))
                .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    /// Regenerates the whole state block (the standard MT19937 twist).
    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 1 { MATRIX_A } else { 0 };
        for kk in 0..N {
            let y = (self.mt[kk] & UPPER_MASK) | (self.mt[(kk + 1) % N] & LOWER_MASK);
            self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ mag(y);
        }
        self.index = 0;
    }

    /// `genrand_uint32`: the next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// `getrandbits(k)` for `k <= 64`: whole 32-bit words fill the number from its least
    /// significant end; the last word keeps only its top `k mod 32` bits, as CPython does.
    ///
    /// # Panics
    /// If `k > 64` (a programmer error: indices never need more).
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports at most 64 bits, got {k}");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let low = u64::from(self.next_u32());
        let high = u64::from(self.next_u32() >> (64 - k));
        low | (high << 32)
    }

    /// `_randbelow(n)` (`_randbelow_with_getrandbits`): rejection sampling on
    /// `n.bit_length()` bits. Returns 0 for `n == 0` without drawing.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let k = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `choice(range(n))`, or `None` when `n == 0` (Python raises `IndexError`).
    pub fn choice_range(&mut self, n: usize) -> Option<usize> {
        (n > 0).then(|| self.randbelow(n as u64) as usize)
    }

    /// `sample(range(n), k)`, in sampling order, or `None` when `k > n` (Python raises
    /// `ValueError`). Python switches between a pool (partial Fisher–Yates) and a rejection set
    /// depending on `n` and `k`; both paths are reproduced because they consume the stream
    /// differently.
    pub fn sample_range(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if k > n {
            return None;
        }
        // setsize = 21, plus 4 ** ceil(log(3k, 4)) when k > 5 (Lib/random.py).
        let mut setsize = 21usize;
        if k > 5 {
            let exp = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exp.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values below were printed by CPython 3.11.7:
    //   r = random.Random(SEED); [r.getrandbits(32) for _ in range(3)]
    // and so on. They are reference outputs of the implementation being ported, not results
    // of this code.

    #[test]
    fn first_words_match_cpython_for_seed_1234() {
        let mut r = PyRandom::new(1234);
        let got: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(got, vec![4150886329, 3342196574, 1892932127]);
    }

    #[test]
    fn seed_zero_and_negative_seeds_follow_python() {
        let mut zero = PyRandom::new(0);
        assert_eq!(zero.next_u32(), 3626764237);
        let (mut a, mut b) = (PyRandom::new(-7), PyRandom::new(7));
        assert_eq!(a.next_u32(), b.next_u32());
    }

    #[test]
    fn large_seeds_use_two_key_words() {
        // random.Random(2**40 + 3).getrandbits(32)
        let mut r = PyRandom::new((1i64 << 40) + 3);
        assert_eq!(r.next_u32(), 943978446);
    }

    #[test]
    fn getrandbits_wider_than_32_is_little_endian_words() {
        // random.Random(99).getrandbits(40)
        let mut r = PyRandom::new(99);
        assert_eq!(r.getrandbits(40), 418346900329);
    }

    #[test]
    fn sample_uses_set_path_for_large_populations() {
        // random.Random(1234).sample(range(200), 3)
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample_range(200, 3), Some(vec![199, 112, 29]));
    }

    #[test]
    fn sample_uses_pool_path_for_small_populations() {
        // random.Random(1234).sample(range(10), 4); then .choice(range(10))
        let mut r = PyRandom::new(1234);
        assert_eq!(r.sample_range(10, 4), Some(vec![7, 1, 0, 9]));
        assert_eq!(r.choice_range(10), Some(9));
    }

    #[test]
    fn sample_with_k_above_five_grows_the_set_threshold() {
        // random.Random(5).sample(range(40), 8): setsize = 21 + 4**ceil(log(24, 4)) = 85 > 40,
        // so the pool path runs.
        let mut r = PyRandom::new(5);
        assert_eq!(
            r.sample_range(40, 8),
            Some(vec![39, 16, 22, 33, 1, 29, 15, 3])
        );
    }

    #[test]
    fn impossible_requests_are_none_not_panics() {
        let mut r = PyRandom::new(1);
        assert_eq!(r.sample_range(3, 4), None);
        assert_eq!(r.choice_range(0), None);
        assert_eq!(r.randbelow(0), 0);
    }
}
