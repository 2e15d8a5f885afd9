//! A bit-exact port of the parts of NumPy's `np.random.default_rng` that mosaicml-streaming's
//! shuffles, sampling and stream weighting call.
//!
//! Why port NumPy at all: streaming's sample order is a pure function of
//! `(seed, epoch, num_canonical_nodes, shard sizes)`, computed with `default_rng`. Matching it
//! draw for draw means a run moved from streaming to tessera (or compared against it) sees the
//! very same samples in the very same order.
//!
//! What is reproduced (NumPy 2.x, `numpy/random/{bit_generator.pyx, _pcg64.pyx,
//! _generator.pyx, src/pcg64/pcg64.h, src/distributions/distributions.c}`):
//! - `SeedSequence(int)` with the default pool of four 32-bit words, and
//!   `generate_state(4, uint64)`;
//! - `PCG64` (128-bit LCG, XSL-RR output), including its one-word buffer that serves
//!   `next_uint32` from the upper half of a 64-bit draw;
//! - `Generator.shuffle` and `permutation(n)` (Fisher–Yates from the end, indices drawn by
//!   masked rejection, `random_interval`);
//! - `Generator.integers(low, high[, size])` (Lemire's bounded integers, the 32-bit variant when
//!   the range fits);
//! - `Generator.uniform(low, high, size)` and `random()` (53-bit doubles);
//! - `Generator.choice(n, size, replace=False)` (Floyd's algorithm or a tail shuffle, then a
//!   shuffle of the result, exactly as NumPy picks between them).

/// 128-bit multiplier of PCG64 (`PCG_DEFAULT_MULTIPLIER_128`).
const PCG_MULT: u128 = (2549297995355413924u128 << 64) | 4865540595714422341u128;

// SeedSequence hashing constants (numpy/random/bit_generator.pyx).
const POOL_SIZE: usize = 4;
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> XSHIFT)
}

/// `SeedSequence(seed).generate_state(4, np.uint64)`: the 256 bits that seed a PCG64.
fn seed_sequence_state(seed: u64) -> [u64; 4] {
    // `_int_to_uint32_array`: little-endian 32-bit words, `[0]` for zero.
    let mut entropy = vec![seed as u32];
    if seed >> 32 != 0 {
        entropy.push((seed >> 32) as u32);
    }
    let mut pool = [0u32; POOL_SIZE];
    let mut hash_const = INIT_A;
    for (i, slot) in pool.iter_mut().enumerate() {
        *slot = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
    }
    for i_src in 0..POOL_SIZE {
        for i_dst in 0..POOL_SIZE {
            if i_src != i_dst {
                let h = hashmix(pool[i_src], &mut hash_const);
                pool[i_dst] = mix(pool[i_dst], h);
            }
        }
    }
    // Entropy words beyond the pool size (none for a u64 seed) would be mixed in here.
    let mut words = [0u32; 8];
    let mut hash_const = INIT_B;
    for (i, word) in words.iter_mut().enumerate() {
        let mut v = pool[i % POOL_SIZE] ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_B);
        v = v.wrapping_mul(hash_const);
        *word = v ^ (v >> XSHIFT);
    }
    let mut out = [0u64; 4];
    for (i, o) in out.iter_mut().enumerate() {
        *o = words[2 * i] as u64 | ((words[2 * i + 1] as u64) << 32);
    }
    out
}

/// NumPy's `Generator(PCG64(seed))`, i.e. `np.random.default_rng(seed)`.
#[derive(Clone, Debug)]
pub struct NumpyRng {
    state: u128,
    inc: u128,
    /// PCG64 serves 32-bit requests from halves of one 64-bit draw; this is the spare half.
    spare_u32: Option<u32>,
}

impl NumpyRng {
    /// `np.random.default_rng(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let s = seed_sequence_state(seed);
        let init_state = ((s[0] as u128) << 64) | s[1] as u128;
        let init_seq = ((s[2] as u128) << 64) | s[3] as u128;
        let mut rng = NumpyRng {
            state: 0,
            inc: (init_seq << 1) | 1,
            spare_u32: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(init_state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// `next_uint64` (the bit generator's `random_raw`).
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let high = (self.state >> 64) as u64;
        let low = self.state as u64;
        (high ^ low).rotate_right((self.state >> 122) as u32)
    }

    /// `next_uint32`: the low half of a fresh 64-bit draw, then its high half.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.spare_u32.take() {
            return v;
        }
        let next = self.next_u64();
        self.spare_u32 = Some((next >> 32) as u32);
        next as u32
    }

    /// `next_double`: 53 random bits scaled into [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9007199254740992.0)
    }

    /// `random_interval(max)`: uniform in `[0, max]` by masked rejection (used by `shuffle`).
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = gen_mask(max);
        if max <= u32::MAX as u64 {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `random_bounded_uint64(off=0, rng, use_masked=False)`: uniform in `[0, rng]`, Lemire.
    pub fn bounded_u64(&mut self, rng: u64) -> u64 {
        if rng == 0 {
            0
        } else if rng < u32::MAX as u64 {
            self.lemire_u32(rng as u32) as u64
        } else if rng == u32::MAX as u64 {
            self.next_u32() as u64
        } else if rng == u64::MAX {
            self.next_u64()
        } else {
            self.lemire_u64(rng)
        }
    }

    fn lemire_u32(&mut self, rng: u32) -> u32 {
        let rng_excl = rng + 1;
        let mut m = self.next_u32() as u64 * rng_excl as u64;
        let mut leftover = m as u32;
        if leftover < rng_excl {
            let threshold = (u32::MAX - rng) % rng_excl;
            while leftover < threshold {
                m = self.next_u32() as u64 * rng_excl as u64;
                leftover = m as u32;
            }
        }
        (m >> 32) as u32
    }

    fn lemire_u64(&mut self, rng: u64) -> u64 {
        let rng_excl = rng + 1;
        let mut m = self.next_u64() as u128 * rng_excl as u128;
        let mut leftover = m as u64;
        if leftover < rng_excl {
            let threshold = (u64::MAX - rng) % rng_excl;
            while leftover < threshold {
                m = self.next_u64() as u128 * rng_excl as u128;
                leftover = m as u64;
            }
        }
        (m >> 64) as u64
    }

    /// `Generator.shuffle(x)` for a list or a 1-d array: Fisher–Yates from the back.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.random_interval(i as u64) as usize;
            xs.swap(i, j);
        }
    }

    /// `Generator.permutation(n)`.
    pub fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut out: Vec<i64> = (0..n as i64).collect();
        self.shuffle(&mut out);
        out
    }

    /// `Generator.integers(low, high)` (int64, `high` exclusive), or `None` when `low >= high`
    /// (where NumPy raises `ValueError: low >= high`).
    pub fn integers(&mut self, low: i64, high: i64) -> Option<i64> {
        if low >= high {
            return None;
        }
        let rng = (high - 1).wrapping_sub(low) as u64;
        Some(low.wrapping_add(self.bounded_u64(rng) as i64))
    }

    /// `Generator.integers(low, high, size=count)`. NumPy's array filler
    /// (`random_bounded_uint64_fill`) makes the same draws as `count` scalar calls.
    pub fn integers_n(&mut self, low: i64, high: i64, count: usize) -> Option<Vec<i64>> {
        if count == 0 {
            // NumPy returns an empty array before validating the bounds.
            return Some(Vec::new());
        }
        (0..count).map(|_| self.integers(low, high)).collect()
    }

    /// `Generator.uniform(low, high, size=out.len())`: `low + (high - low) * next_double`.
    pub fn uniform_into(&mut self, low: f64, high: f64, out: &mut [f64]) {
        let range = high - low;
        for o in out.iter_mut() {
            *o = low + range * self.next_f64();
        }
    }

    /// `Generator.random()`.
    pub fn random(&mut self) -> f64 {
        self.next_f64()
    }

    /// `Generator.choice(pop_size, size, replace=False)` (with the default `shuffle=True`), or
    /// `None` when `size > pop_size` (NumPy raises).
    pub fn choice_without_replacement(&mut self, pop_size: u64, size: u64) -> Option<Vec<i64>> {
        if size > pop_size {
            return None;
        }
        // NumPy's heuristic: a tail shuffle of the whole range when the sample is a sizable
        // fraction of a big population, else Floyd's algorithm with an open-addressing set.
        const CUTOFF: u64 = 50;
        if pop_size > 10_000 && size > pop_size / CUTOFF {
            let mut idx: Vec<i64> = (0..pop_size as i64).collect();
            let first = (pop_size - size).max(1);
            for i in (first..pop_size).rev() {
                let j = self.bounded_u64(i) as usize;
                idx.swap(i as usize, j);
            }
            return Some(idx.split_off((pop_size - size) as usize));
        }
        let mut out = vec![0i64; size as usize];
        let mask = gen_mask((1.2 * size as f64) as u64);
        let empty = u64::MAX;
        let mut set = vec![empty; (mask + 1) as usize];
        for j in (pop_size - size)..pop_size {
            let val = self.bounded_u64(j);
            let mut loc = (val & mask) as usize;
            while set[loc] != empty && set[loc] != val {
                loc = (loc + 1) & mask as usize;
            }
            let chosen = if set[loc] == empty {
                set[loc] = val;
                val
            } else {
                let mut loc = (j & mask) as usize;
                while set[loc] != empty {
                    loc = (loc + 1) & mask as usize;
                }
                set[loc] = j;
                j
            };
            out[(j + size - pop_size) as usize] = chosen as i64;
        }
        // `_shuffle_int(size, 1, idx)`: like `shuffle`, but indices drawn with Lemire.
        for i in (1..out.len()).rev() {
            let j = self.bounded_u64(i as u64) as usize;
            out.swap(i, j);
        }
        Some(out)
    }
}

/// Smallest all-ones bit mask `>= max`.
fn gen_mask(max: u64) -> u64 {
    let mut mask = max;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    mask |= mask >> 32;
    mask
}

#[cfg(test)]
mod tests {
    //! Reference values were printed by NumPy 2.1.3 (the version that produced
    //! `fixtures/mds/shuffle_orders.json`); each test names the Python that printed them.
    use super::*;

    #[test]
    fn seed_sequence_matches_numpy_generate_state() {
        // [hex(x) for x in SeedSequence(s).generate_state(4, np.uint64)]
        assert_eq!(
            seed_sequence_state(0),
            [
                0xdb2cd7e7b0f478be,
                0xabf4641a2c71ba49,
                0x20c6ed6d9d7b8d41,
                0x2c4099de223c39d4
            ]
        );
        assert_eq!(
            seed_sequence_state(9176),
            [
                0x843c62eb0dd64448,
                0xfd951d81e345305f,
                0x81ddf06a9fa2424c,
                0x015c41789371fd9b
            ]
        );
        // A seed wider than 32 bits feeds two entropy words.
        assert_eq!(
            seed_sequence_state((1 << 32) + 5),
            [
                0xf9c15bd6e249d9ac,
                0xb2021b4036320ed7,
                0x9388b47fe6dcf739,
                0x5eeba8d9ad6439e1
            ]
        );
    }

    #[test]
    fn pcg64_raw_stream_matches_numpy() {
        // [hex(PCG64(s).random_raw()) for _ in range(3)] on one generator
        let mut g = NumpyRng::new(9176);
        let got: Vec<u64> = (0..3).map(|_| g.next_u64()).collect();
        assert_eq!(
            got,
            [0xce488e5ff4c10304, 0x233a25e3fe3960b0, 0xbc04ca4c34b5a59c]
        );
        let mut g = NumpyRng::new(0);
        assert_eq!(g.next_u64(), 0xa30febcfd9c2825f);
    }

    #[test]
    fn generator_calls_match_numpy_in_sequence() {
        // g = np.random.default_rng(17), then these calls in this order on the same g.
        let mut g = NumpyRng::new(17);
        assert_eq!(g.permutation(10), [4, 0, 1, 7, 8, 6, 2, 9, 5, 3]);
        let ints: Vec<i64> = (0..5).map(|_| g.integers(12, 20).unwrap()).collect();
        assert_eq!(ints, [15, 15, 19, 15, 17]);
        let big: Vec<i64> = (0..3)
            .map(|_| g.integers(3_000_000, 5_000_000).unwrap())
            .collect();
        assert_eq!(big, [4222686, 3182113, 4472771]);
        let mut u = [0.0; 3];
        g.uniform_into(-3.5, 2.25, &mut u);
        assert_eq!(
            u,
            [
                -3.4120844745689087,
                -2.039264745692324,
                -0.026161336257402024
            ]
        );
        let mut l: Vec<i64> = (0..7).collect();
        g.shuffle(&mut l);
        assert_eq!(l, [3, 6, 0, 2, 4, 5, 1]);
        assert_eq!(g.integers_n(0, 12, 4).unwrap(), [4, 0, 7, 6]);
    }

    #[test]
    fn choice_without_replacement_matches_numpy_on_both_paths() {
        // g = np.random.default_rng(5); g.choice(3, 2, False); g.choice(100, 7, False);
        // g.choice(20000, 5000, False)[:8]   (the last takes NumPy's tail-shuffle path)
        let mut g = NumpyRng::new(5);
        assert_eq!(g.choice_without_replacement(3, 2).unwrap(), [2, 1]);
        assert_eq!(
            g.choice_without_replacement(100, 7).unwrap(),
            [61, 28, 75, 5, 96, 49, 44]
        );
        let tail = g.choice_without_replacement(20000, 5000).unwrap();
        assert_eq!(tail.len(), 5000);
        assert_eq!(
            &tail[..8],
            [10124, 1671, 8770, 5441, 19487, 10073, 123, 1532]
        );
        assert!(g.choice_without_replacement(3, 4).is_none());
    }

    #[test]
    fn random_doubles_match_numpy() {
        // np.random.default_rng(5).random(3)
        let mut g = NumpyRng::new(5);
        let got: Vec<f64> = (0..3).map(|_| g.random()).collect();
        assert_eq!(
            got,
            [0.8050029237453802, 0.8079407897364937, 0.515325561042142]
        );
    }

    #[test]
    fn integers_rejects_empty_range_and_skips_draws_for_single_value() {
        let mut a = NumpyRng::new(1);
        let mut b = NumpyRng::new(1);
        assert_eq!(a.integers(3, 3), None);
        // A one-value range returns it without consuming randomness, as NumPy does.
        assert_eq!(a.integers(0, 1), Some(0));
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
