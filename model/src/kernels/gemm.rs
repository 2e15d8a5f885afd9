//! Strided f32 matrix views over plain slices, and one checked entry point into the `gemm`
//! crate (the matmul library behind burn's Flex backend) for the fused kernels.
//!
//! Why views: the fused kernels multiply blocks that sit inside larger buffers (one head's
//! queries are every `heads · head_dim`-th run of `head_dim` values of a `[seq, heads ·
//! head_dim]` activation), and gemm reads and writes such strided blocks directly, so nothing is
//! copied into place first. Each view checks on construction that all its elements lie inside
//! its slice, which is what makes the one `unsafe` call below sound.

/// Where a `rows × cols` matrix lies in a slice: element `(i, j)` at `offset + i·rs + j·cs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Why a view was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LayoutError {
    /// The last element's offset does not fit in a `usize`.
    Overflow,
    /// A stride does not fit in an `isize` (gemm takes signed strides).
    Stride,
    /// The last element lies at or past the end of the slice.
    Overrun,
}

impl Layout {
    /// The layout, checked to lie inside a slice of `len` values.
    ///
    /// The offsets are computed with checked arithmetic: this crate is built without overflow
    /// checks, and a wrapped-around "last element" could pass the bounds check while gemm
    /// writes far outside the slice. Strides must fit in an `isize`, which gemm takes.
    fn inside(
        len: usize,
        offset: usize,
        [rows, cols]: [usize; 2],
        [rs, cs]: [usize; 2],
    ) -> Result<Self, LayoutError> {
        if rs > isize::MAX as usize || cs > isize::MAX as usize {
            return Err(LayoutError::Stride);
        }
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(rs)
                .and_then(|r| (cols - 1).checked_mul(cs)?.checked_add(r))
                .and_then(|rc| rc.checked_add(offset))
                .ok_or(LayoutError::Overflow)?;
            if last >= len {
                return Err(LayoutError::Overrun);
            }
        }
        Ok(Self {
            offset,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// [`Layout::inside`], panicking with the view's description when it is refused.
    fn inside_or_panic(len: usize, offset: usize, shape: [usize; 2], strides: [usize; 2]) -> Self {
        let [rows, cols] = shape;
        let [rs, cs] = strides;
        match Self::inside(len, offset, shape, strides) {
            Ok(at) => at,
            Err(why) => {
                let why = match why {
                    LayoutError::Overflow => "overflows usize",
                    LayoutError::Stride => "has a stride past isize::MAX",
                    LayoutError::Overrun => "overruns",
                };
                panic!(
                    "a {rows}×{cols} matrix view at {offset} with strides ({rs}, {cs}) {why} ({len} values)"
                )
            }
        }
    }

    /// Whether no two elements share a place: rows, or columns, kept apart by the strides.
    /// (No product here overflows: each is at most the last element's offset, which
    /// [`Layout::inside`] computed without overflow.)
    fn distinct(&self) -> bool {
        let Self {
            rows, cols, rs, cs, ..
        } = *self;
        if rows == 0 || cols == 0 {
            return true;
        }
        let rows_apart = rows == 1 || rs > (cols - 1) * cs;
        let cols_apart = cols == 1 || cs > (rows - 1) * rs;
        (rows_apart && (cols == 1 || cs > 0)) || (cols_apart && (rows == 1 || rs > 0))
    }

    fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// A read-only strided matrix inside a slice.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    at: Layout,
}

/// A writable strided matrix inside a slice.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    at: Layout,
}

impl<'a> MatRef<'a> {
    /// The `rows × cols` matrix whose element `(i, j)` is `data[offset + i·rs + j·cs]`.
    ///
    /// # Panics
    /// If an element would lie outside `data` (or its offset overflow `usize`), or a stride
    /// exceed `isize::MAX`.
    pub fn new(data: &'a [f32], offset: usize, shape: [usize; 2], strides: [usize; 2]) -> Self {
        let at = Layout::inside_or_panic(data.len(), offset, shape, strides);
        Self { data, at }
    }

    /// A contiguous row-major `rows × cols` matrix (all of `data`).
    ///
    /// # Panics
    /// If `data` does not hold exactly `rows · cols` values.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            Some(data.len()),
            rows.checked_mul(cols),
            "MatRef::rows: length"
        );
        Self::new(data, 0, [rows, cols], [cols, 1])
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.at.rows, self.at.cols]
    }

    /// The transpose (a view of the same values).
    pub fn t(self) -> Self {
        Self {
            at: self.at.transposed(),
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// The writable `rows × cols` matrix whose element `(i, j)` is
    /// `data[offset + i·rs + j·cs]`.
    ///
    /// # Panics
    /// If an element would lie outside `data` (or its offset overflow `usize`), if a stride
    /// exceeds `isize::MAX`, or if two elements would share a place.
    pub fn new(data: &'a mut [f32], offset: usize, shape: [usize; 2], strides: [usize; 2]) -> Self {
        let at = Layout::inside_or_panic(data.len(), offset, shape, strides);
        assert!(
            at.distinct(),
            "MatMut: strides {strides:?} overlap in a {shape:?} view"
        );
        Self { data, at }
    }

    /// A contiguous row-major `rows × cols` matrix (all of `data`).
    ///
    /// # Panics
    /// If `data` does not hold exactly `rows · cols` values.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(
            Some(data.len()),
            rows.checked_mul(cols),
            "MatMut::rows: length"
        );
        Self::new(data, 0, [rows, cols], [cols, 1])
    }
}

/// How gemm may spread one product over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// On the calling thread (the caller already runs products in parallel).
    One,
    /// On rayon's pool, when the product is large enough to gain from it.
    Pool,
}

/// `dst ← c · lhs · rhs`, or with `accumulate`, `dst ← dst + c · lhs · rhs`.
///
/// # Panics
/// If the shapes do not chain: `lhs` is `m × k`, `rhs` `k × n`, `dst` `m × n`.
pub fn gemm(dst: MatMut, lhs: MatRef, rhs: MatRef, c: f32, accumulate: bool, threads: Threads) {
    assert!(
        dst.at.rows == lhs.at.rows && dst.at.cols == rhs.at.cols,
        "gemm: a {}×{} product into {}×{}",
        lhs.at.rows,
        rhs.at.cols,
        dst.at.rows,
        dst.at.cols
    );
    let ptr = dst.data.as_mut_ptr().wrapping_add(dst.at.offset);
    // SAFETY: `dst` was checked on construction to lie inside its slice and not to overlap
    // itself, and it is borrowed mutably, so it aliases neither input; its values are
    // initialised, so gemm may read them.
    unsafe {
        call(
            ptr,
            [dst.at.rs, dst.at.cs],
            lhs,
            rhs,
            c,
            accumulate,
            threads,
        )
    }
}

/// `c · lhs · rhs` as a new row-major `m × n` buffer.
///
/// Large products are written straight into fresh memory, with no zero-fill first: that fill
/// was a serial pass over every output on the calling thread while the others waited (~5% of a
/// CPU training step of the quickstart model).
///
/// # Panics
/// If the shapes do not chain, or the product has more than `usize::MAX` values (a view may
/// repeat a row with stride 0, so its row count is not bounded by its slice).
pub fn product(lhs: MatRef, rhs: MatRef, c: f32, threads: Threads) -> Vec<f32> {
    let (m, k, n) = (lhs.at.rows, lhs.at.cols, rhs.at.cols);
    let Some(len) = m.checked_mul(n) else {
        panic!("gemm: a {m}×{n} product overflows usize");
    };
    // Small products, empty contractions and vectors take gemm's special kernels; those are not
    // worth auditing for whether they read the destination, so they get a zeroed one.
    if len <= 16 * 16 || m <= 1 || n <= 1 || k == 0 {
        let mut out = vec![0.0f32; len];
        gemm(MatMut::rows(&mut out, m, n), lhs, rhs, c, false, threads);
        return out;
    }
    let mut out = Vec::<f32>::with_capacity(len);
    // SAFETY: `out` has room for the `m × n` row-major destination (`len` values, counted
    // without overflow above), which aliases nothing.
    // Without `accumulate` (read_dst = false), gemm 0.19.0 (pinned in model/Cargo.toml) sets its
    // alpha to zero and its packed kernel's stores for alpha status 0 only write, full tiles and
    // edge tiles alike (gemm-common `microkernel!`), and every output belongs to one tile, so
    // afterwards all `m · n` values are initialised and none was read before being written.
    unsafe {
        call(out.as_mut_ptr(), [n, 1], lhs, rhs, c, false, threads);
        out.set_len(len);
    }
    out
}

/// The one call into the gemm crate.
///
/// # Safety
/// `dst` must point at an `lhs.rows × rhs.cols` matrix with strides `[rs, cs]` that is valid
/// for writes (and for reads when `accumulate`), overlaps neither input, and has no two
/// elements in one place.
unsafe fn call(
    dst: *mut f32,
    [rs, cs]: [usize; 2],
    lhs: MatRef,
    rhs: MatRef,
    c: f32,
    accumulate: bool,
    threads: Threads,
) {
    let (m, k, n) = (lhs.at.rows, lhs.at.cols, rhs.at.cols);
    assert_eq!(rhs.at.rows, k, "gemm: {m}×{k} · {}×{n}", rhs.at.rows);
    if m == 0 || n == 0 {
        return;
    }
    // Flex's rule: threads only from about 192³ multiply-adds.
    let parallelism = match threads {
        Threads::Pool if m.saturating_mul(n).saturating_mul(k) >= 192 * 192 * 192 => {
            gemm::Parallelism::Rayon(0)
        }
        _ => gemm::Parallelism::None,
    };
    // Strides were checked to fit in an isize when the views were built.
    let st = |s: usize| s as isize;
    // SAFETY: the inputs were checked on construction to lie inside their slices (with k = 0
    // gemm reads none of them); the destination is the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            st(cs),
            st(rs),
            accumulate,
            lhs.data.as_ptr().wrapping_add(lhs.at.offset),
            st(lhs.at.cs),
            st(lhs.at.rs),
            rhs.data.as_ptr().wrapping_add(rhs.at.offset),
            st(rhs.at.cs),
            st(rhs.at.rs),
            1.0,
            c,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook triple loop over the same views.
    fn naive(a: &[f32], [m, k]: [usize; 2], b: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 97) as f32 / 48.0 - 1.0)
            .collect()
    }

    #[test]
    fn strided_views_multiply_like_the_triple_loop() {
        let (m, k, n) = (70, 33, 9);
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        let want = naive(&a, [m, k], &b, n);
        // a as the first head of a [m, 2k] buffer, b stored transposed, dst strided too.
        let mut a2 = vec![9.0f32; m * 2 * k];
        for i in 0..m {
            a2[i * 2 * k..i * 2 * k + k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        let mut bt = vec![0.0f32; n * k];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        let mut out = vec![5.0f32; m * 3 * n];
        gemm(
            MatMut::new(&mut out, n, [m, n], [3 * n, 1]),
            MatRef::new(&a2, 0, [m, k], [2 * k, 1]),
            MatRef::rows(&bt, n, k).t(),
            2.0,
            false,
            Threads::Pool,
        );
        for i in 0..m {
            for j in 0..n {
                let got = out[i * 3 * n + n + j];
                assert!((got - 2.0 * want[i * n + j]).abs() < 1e-4, "({i}, {j})");
                assert_eq!(out[i * 3 * n + j], 5.0, "outside the view");
            }
        }
        // Accumulating adds to what is there.
        let mut acc = vec![1.0f32; m * n];
        gemm(
            MatMut::rows(&mut acc, m, n),
            MatRef::rows(&a, m, k),
            MatRef::rows(&b, k, n),
            1.0,
            true,
            Threads::One,
        );
        for (g, w) in acc.iter().zip(&want) {
            assert!((g - (1.0 + w)).abs() < 1e-4);
        }
    }

    #[test]
    fn a_product_into_fresh_memory_equals_one_into_zeros() {
        // Shapes with edge tiles in both directions, a vector and a tiny one.
        for (m, k, n) in [
            (130, 70, 13),
            (64, 256, 6),
            (1, 5, 40),
            (3, 4, 5),
            (200, 0, 30),
        ] {
            let a = values(m * k, 3);
            let b = values(k * n, 4);
            let (lhs, rhs) = (MatRef::rows(&a, m, k), MatRef::rows(&b, k, n).t().t());
            let mut want = vec![0.0f32; m * n];
            gemm(
                MatMut::rows(&mut want, m, n),
                lhs,
                rhs,
                0.5,
                false,
                Threads::Pool,
            );
            assert_eq!(product(lhs, rhs, 0.5, Threads::Pool), want, "{m}×{k}×{n}");
        }
    }

    #[test]
    #[should_panic(expected = "overruns")]
    fn a_view_past_the_end_is_refused() {
        let v = vec![0.0f32; 10];
        MatRef::new(&v, 2, [3, 3], [3, 1]);
    }

    #[test]
    fn offsets_that_overflow_are_refused_not_wrapped() {
        // Each of these wraps around to a small "last element" without checked arithmetic.
        let len = 10;
        let refused = |offset, shape, strides| Layout::inside(len, offset, shape, strides);
        assert_eq!(
            refused(0, [5, 1], [1 << 62, 1]),
            Err(LayoutError::Overflow),
            "rows · row stride"
        );
        assert_eq!(
            refused(0, [1, 5], [1, (usize::MAX / 4) + 1]),
            Err(LayoutError::Overflow),
            "cols · col stride"
        );
        assert_eq!(
            refused(usize::MAX, [2, 1], [1, 1]),
            Err(LayoutError::Overflow),
            "offset + extent"
        );
        assert_eq!(
            refused(3 << 62, [1, 2], [1, 1 << 62]),
            Err(LayoutError::Overflow),
            "the two terms each fit, their sum does not"
        );
        assert_eq!(
            refused(0, [1, 2], [usize::MAX, 1]),
            Err(LayoutError::Stride),
            "an unused row stride still reaches gemm as an isize"
        );
        assert_eq!(
            refused(0, [2, 5], [5, 1]),
            Ok(Layout {
                offset: 0,
                rows: 2,
                cols: 5,
                rs: 5,
                cs: 1
            })
        );
        assert_eq!(refused(1, [2, 5], [5, 1]), Err(LayoutError::Overrun));
        // Empty views lie nowhere, whatever their offset.
        assert!(refused(usize::MAX, [0, 5], [5, 1]).is_ok());
    }

    #[test]
    #[should_panic(expected = "overflows usize")]
    fn a_view_whose_rows_wrap_around_is_refused() {
        let v = vec![0.0f32; 10];
        MatRef::new(&v, 0, [5, 1], [1 << 62, 1]);
    }

    #[test]
    #[should_panic(expected = "overflows usize")]
    fn a_destination_whose_offset_wraps_around_is_refused() {
        let mut v = vec![0.0f32; 10];
        MatMut::new(&mut v, usize::MAX, [2, 1], [1, 1]);
    }

    #[test]
    #[should_panic(expected = "product overflows usize")]
    fn a_product_too_large_to_count_is_refused() {
        // Row stride 0 repeats one row 2^62 + 1 times: a valid view of 1 value whose product
        // with a 1×4 matrix has 2^64 + 4 values (4, wrapped).
        let a = vec![1.0f32; 1];
        let b = vec![1.0f32; 4];
        let lhs = MatRef::new(&a, 0, [(1 << 62) + 1, 1], [0, 1]);
        product(lhs, MatRef::rows(&b, 1, 4), 1.0, Threads::One);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn an_overlapping_destination_is_refused() {
        let mut v = vec![0.0f32; 10];
        MatMut::new(&mut v, 0, [3, 3], [1, 1]);
    }
}
