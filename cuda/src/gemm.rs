//! A row-major GEMM, and the column-major problem cuBLASLt is given for it. Host-side only
//! (no CUDA), so the mapping is tested on the CPU against a naive triple loop.
//!
//! burn's tensors are row-major; cuBLAS(Lt) is column-major. A row-major `[r, c]` matrix with
//! row stride `ld` is, byte for byte, the column-major `[c, r]` matrix with leading dimension
//! `ld`: its transpose. So the row-major product `C = op(A) · op(B)` is computed as the
//! column-major `Cᵀ = op(B)ᵀ · op(A)ᵀ`: the operands swap places, each keeps its transpose
//! flag, and every matrix is described by its row-major shape read backwards.
//!
//! A linear layer `y = x · wᵀ` (`x`: `[rows, d_in]`, `w`: `[d_out, d_in]`) needs three such
//! products ([`RowMajorGemm::linear_forward`], [`RowMajorGemm::linear_input_grad`],
//! [`RowMajorGemm::linear_weight_grad`]).

/// The element type of a GEMM's inputs and output, which fixes how it is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmType {
    /// bf16 matrices, f32 accumulation (`CUBLAS_COMPUTE_32F`).
    Bf16,
    /// f16 matrices, f32 accumulation (`CUBLAS_COMPUTE_32F`).
    F16,
    /// f32 matrices, products rounded through TF32 (`CUBLAS_COMPUTE_32F_FAST_TF32`): only when
    /// the user opted in, since it rounds the inputs' mantissas to 10 bits.
    Tf32,
}

impl GemmType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            GemmType::Bf16 | GemmType::F16 => 2,
            GemmType::Tf32 => 4,
        }
    }
}

/// `C = op(A) · op(B)` on row-major matrices: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is
/// `[m, n]`. `A` is stored `[m, k]` (or `[k, m]` when `trans_a`), `B` `[k, n]` (or `[n, k]`
/// when `trans_b`); each matrix's rows are `ld_*` elements apart (at least its width).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowMajorGemm {
    /// Rows of `C`.
    pub m: usize,
    /// Columns of `C`.
    pub n: usize,
    /// The contracted axis.
    pub k: usize,
    /// `A` is stored transposed (`[k, m]`).
    pub trans_a: bool,
    /// `B` is stored transposed (`[n, k]`).
    pub trans_b: bool,
    /// Row stride of `A` as stored, in elements.
    pub ld_a: usize,
    /// Row stride of `B` as stored, in elements.
    pub ld_b: usize,
    /// Row stride of `C`, in elements.
    pub ld_c: usize,
}

impl RowMajorGemm {
    /// A product of contiguous matrices (each row stride is the stored width).
    pub fn contiguous(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Self {
            m,
            n,
            k,
            trans_a,
            trans_b,
            ld_a: if trans_a { m } else { k },
            ld_b: if trans_b { k } else { n },
            ld_c: n,
        }
    }

    /// A linear layer's forward `y = x · wᵀ`: `A = x` `[rows, d_in]`, `B = w` `[d_out, d_in]`
    /// stored transposed; `y` is `[rows, d_out]`.
    pub fn linear_forward(rows: usize, d_in: usize, d_out: usize) -> Self {
        Self::contiguous(rows, d_out, d_in, false, true)
    }

    /// The input gradient `∂x = g · w`: `A = g` `[rows, d_out]`, `B = w` `[d_out, d_in]`;
    /// `∂x` is `[rows, d_in]`.
    pub fn linear_input_grad(rows: usize, d_in: usize, d_out: usize) -> Self {
        Self::contiguous(rows, d_in, d_out, false, false)
    }

    /// The weight gradient `∂w = gᵀ · x`: `A = g` stored `[rows, d_out]` (transposed),
    /// `B = x` `[rows, d_in]`; `∂w` is `[d_out, d_in]`.
    pub fn linear_weight_grad(rows: usize, d_in: usize, d_out: usize) -> Self {
        Self::contiguous(d_out, d_in, rows, true, false)
    }

    /// The stored (row-major) shapes of `A` and `B`.
    pub fn stored_shapes(&self) -> ([usize; 2], [usize; 2]) {
        let a = if self.trans_a {
            [self.k, self.m]
        } else {
            [self.m, self.k]
        };
        let b = if self.trans_b {
            [self.n, self.k]
        } else {
            [self.k, self.n]
        };
        (a, b)
    }

    /// Whether cuBLASLt can take it: nothing empty, every row stride at least its row's width,
    /// and every size within cuBLASLt's `int32`/`int64` fields.
    pub fn is_valid(&self) -> bool {
        let (a, b) = self.stored_shapes();
        let fits = |x: usize| x <= i32::MAX as usize;
        [self.m, self.n, self.k].iter().all(|&x| x > 0 && fits(x))
            && self.ld_a >= a[1]
            && self.ld_b >= b[1]
            && self.ld_c >= self.n
            && [self.ld_a, self.ld_b, self.ld_c].iter().all(|&x| fits(x))
    }

    /// The column-major problem cuBLASLt computes for it (see the module docs): its `A` is
    /// this `B`, its `B` is this `A`, its `D` is `Cᵀ`.
    pub fn column_major(&self) -> ColumnMajorGemm {
        // A row-major [r, c] matrix read column-major is [c, r] with the same row stride as
        // leading dimension. cuBLASLt describes each operand as stored, before its transpose.
        let stored = |[r, c]: [usize; 2], trans: bool, ld: usize| Operand {
            trans,
            rows: c as u64,
            cols: r as u64,
            ld: ld as i64,
        };
        let (a, b) = self.stored_shapes();
        ColumnMajorGemm {
            m: self.n as u64,
            n: self.m as u64,
            k: self.k as u64,
            a: stored(b, self.trans_b, self.ld_b),
            b: stored(a, self.trans_a, self.ld_a),
            d: stored([self.m, self.n], false, self.ld_c),
        }
    }
}

/// One matrix of a column-major GEMM as cuBLASLt describes it: its stored shape (before the
/// transpose `trans` is applied) and leading dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operand {
    /// `CUBLAS_OP_T` rather than `CUBLAS_OP_N`.
    pub trans: bool,
    /// Rows as stored (`cublasLtMatrixLayoutCreate`'s `rows`).
    pub rows: u64,
    /// Columns as stored.
    pub cols: u64,
    /// Elements between the starts of two columns.
    pub ld: i64,
}

/// `D = op(A) · op(B)` in cuBLAS's column-major terms: `op(A)` is `[m, k]`, `op(B)` `[k, n]`,
/// `D` `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColumnMajorGemm {
    /// Rows of `D`.
    pub m: u64,
    /// Columns of `D`.
    pub n: u64,
    /// The contracted axis.
    pub k: u64,
    /// The first operand.
    pub a: Operand,
    /// The second operand.
    pub b: Operand,
    /// The output (and `C`, which `beta = 0` never reads).
    pub d: Operand,
}

/// The largest power of two (at most 256) that divides a device address: the alignment
/// cuBLASLt's heuristic is told (`CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES`), so it never
/// picks a kernel that needs more than a tensor's slice offset gives.
pub fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        return 256;
    }
    1u32 << ptr.trailing_zeros().min(8)
}

/// What a cached cuBLASLt plan (matmul descriptor, layouts, chosen algorithm) depends on: the
/// device, the problem, the element type and the operands' alignments (`A`, `B`, `C` of the
/// row-major problem, in bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmKey {
    /// The CUDA device ordinal.
    pub device: usize,
    /// The row-major problem.
    pub gemm: RowMajorGemm,
    /// Element type and compute mode.
    pub ty: GemmType,
    /// [`alignment`] of `A`, `B` and `C`.
    pub align: [u32; 3],
}

/// cuBLAS's column-major `D = op(A) · op(B)` on the host, reading `a` and `b` through their
/// stored shapes and leading dimensions: the reference [`RowMajorGemm::column_major`] is tested
/// with (and a readable statement of what cuBLASLt is asked to do). `D`'s padding is zero.
pub fn column_major_reference(g: &ColumnMajorGemm, a: &[f32], b: &[f32]) -> Vec<f32> {
    // Element (i, j) of op(X), for X stored column-major with leading dimension ld.
    let at = |x: &[f32], o: &Operand, i: usize, j: usize| {
        let (r, c) = if o.trans { (j, i) } else { (i, j) };
        x[r + c * o.ld as usize]
    };
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let mut d = vec![0.0f32; g.d.ld as usize * n];
    for j in 0..n {
        for i in 0..m {
            let s: f32 = (0..k).map(|p| at(a, &g.a, i, p) * at(b, &g.b, p, j)).sum();
            d[i + j * g.d.ld as usize] = s;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic small values.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u64 * 7919 + seed * 104_729) % 23) as f32 / 4.0 - 2.75)
            .collect()
    }

    /// A row-major `[r, c]` matrix padded to row stride `ld` (padding holds NaN, so a read of
    /// it shows).
    fn padded(v: &[f32], [r, c]: [usize; 2], ld: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; r * ld];
        for i in 0..r {
            out[i * ld..i * ld + c].copy_from_slice(&v[i * c..(i + 1) * c]);
        }
        out
    }

    /// `op(A) · op(B)` by the definition, on unpadded row-major matrices.
    fn naive(g: &RowMajorGemm, a: &[f32], b: &[f32]) -> Vec<f32> {
        let (sa, sb) = g.stored_shapes();
        let a_at = |i: usize, p: usize| match g.trans_a {
            false => a[i * sa[1] + p],
            true => a[p * sa[1] + i],
        };
        let b_at = |p: usize, j: usize| match g.trans_b {
            false => b[p * sb[1] + j],
            true => b[j * sb[1] + p],
        };
        let mut c = vec![0.0f32; g.m * g.n];
        for i in 0..g.m {
            for j in 0..g.n {
                c[i * g.n + j] = (0..g.k).map(|p| a_at(i, p) * b_at(p, j)).sum();
            }
        }
        c
    }

    /// Runs `g` through the column-major mapping and the reference, and compares with the
    /// naive row-major product.
    fn agrees(g: RowMajorGemm) {
        assert!(g.is_valid(), "{g:?}");
        let (sa, sb) = g.stored_shapes();
        let (a, b) = (values(sa[0] * sa[1], 1), values(sb[0] * sb[1], 2));
        let want = naive(&g, &a, &b);
        let cm = g.column_major();
        let d = column_major_reference(&cm, &padded(&b, sb, g.ld_b), &padded(&a, sa, g.ld_a));
        // D is Cᵀ column-major, i.e. C row-major with row stride ld_c.
        for i in 0..g.m {
            for j in 0..g.n {
                let got = d[i * g.ld_c + j];
                assert_eq!(got, want[i * g.n + j], "{g:?} at ({i}, {j})");
            }
        }
    }

    #[test]
    fn every_transpose_combination_matches_the_row_major_product() {
        for (m, n, k) in [(1, 1, 1), (3, 5, 7), (7, 2, 4), (5, 9, 1)] {
            for trans_a in [false, true] {
                for trans_b in [false, true] {
                    agrees(RowMajorGemm::contiguous(m, n, k, trans_a, trans_b));
                }
            }
        }
    }

    #[test]
    fn padded_row_strides_are_read_as_leading_dimensions() {
        let mut g = RowMajorGemm::contiguous(4, 3, 5, false, true);
        g.ld_a += 2;
        g.ld_b += 3;
        g.ld_c += 1;
        agrees(g);
        let mut g = RowMajorGemm::contiguous(4, 3, 5, true, false);
        g.ld_a += 1;
        agrees(g);
    }

    #[test]
    fn the_three_linear_products_are_the_layers_forward_and_gradients() {
        // Sizes that are all different, so a swapped axis shows.
        let (rows, d_in, d_out) = (7, 6, 5);
        let x = values(rows * d_in, 3);
        let w = values(d_out * d_in, 4);
        let g = values(rows * d_out, 5);
        let run = |p: RowMajorGemm, a: &[f32], b: &[f32]| {
            let (sa, sb) = p.stored_shapes();
            column_major_reference(
                &p.column_major(),
                &padded(b, sb, p.ld_b),
                &padded(a, sa, p.ld_a),
            )
        };
        let y = run(RowMajorGemm::linear_forward(rows, d_in, d_out), &x, &w);
        let dx = run(RowMajorGemm::linear_input_grad(rows, d_in, d_out), &g, &w);
        let dw = run(RowMajorGemm::linear_weight_grad(rows, d_in, d_out), &g, &x);
        for r in 0..rows {
            for o in 0..d_out {
                let want: f32 = (0..d_in).map(|i| x[r * d_in + i] * w[o * d_in + i]).sum();
                assert_eq!(y[r * d_out + o], want, "y[{r}, {o}]");
            }
            for i in 0..d_in {
                let want: f32 = (0..d_out).map(|o| g[r * d_out + o] * w[o * d_in + i]).sum();
                assert_eq!(dx[r * d_in + i], want, "dx[{r}, {i}]");
            }
        }
        for o in 0..d_out {
            for i in 0..d_in {
                let want: f32 = (0..rows).map(|r| g[r * d_out + o] * x[r * d_in + i]).sum();
                assert_eq!(dw[o * d_in + i], want, "dw[{o}, {i}]");
            }
        }
    }

    #[test]
    fn the_column_major_problem_swaps_the_operands() {
        // y = x · wᵀ, x [4, 3], w [2, 3]: cuBLASLt computes yᵀ [2, 4] = w · xᵀ, i.e. its A is
        // w's memory read as the column-major [3, 2] matrix (wᵀ) with op T.
        let cm = RowMajorGemm::linear_forward(4, 3, 2).column_major();
        assert_eq!((cm.m, cm.n, cm.k), (2, 4, 3));
        let op = |trans, rows, cols, ld| Operand {
            trans,
            rows,
            cols,
            ld,
        };
        assert_eq!(cm.a, op(true, 3, 2, 3));
        assert_eq!(cm.b, op(false, 3, 4, 3));
        assert_eq!(cm.d, op(false, 2, 4, 2));
    }

    #[test]
    fn empty_or_overlapping_products_are_refused() {
        assert!(!RowMajorGemm::contiguous(0, 3, 4, false, false).is_valid());
        let mut g = RowMajorGemm::contiguous(2, 3, 4, false, false);
        g.ld_a = 3; // rows of A (width 4) would overlap
        assert!(!g.is_valid());
        let mut g = RowMajorGemm::contiguous(2, 3, 4, false, false);
        g.ld_c = 2;
        assert!(!g.is_valid());
    }

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0102), 2);
        assert_eq!(alignment(0x7f00_0000_0110), 16);
        assert_eq!(alignment(0x7f00_0000_0180), 128);
    }

    #[test]
    fn cache_keys_differ_in_everything_a_plan_depends_on() {
        use std::collections::HashSet;
        let base = GemmKey {
            device: 0,
            gemm: RowMajorGemm::linear_forward(8, 4, 2),
            ty: GemmType::Bf16,
            align: [256; 3],
        };
        let variants = [
            base,
            GemmKey { device: 1, ..base },
            GemmKey {
                gemm: RowMajorGemm::linear_input_grad(8, 4, 2),
                ..base
            },
            GemmKey {
                gemm: RowMajorGemm::linear_forward(8, 2, 4),
                ..base
            },
            GemmKey {
                ty: GemmType::F16,
                ..base
            },
            GemmKey {
                ty: GemmType::Tf32,
                ..base
            },
            GemmKey {
                align: [256, 16, 256],
                ..base
            },
        ];
        let set: HashSet<_> = variants.iter().collect();
        assert_eq!(set.len(), variants.len());
        assert!(set.contains(&GemmKey { ..base }));
    }
}
