//! The backward kernels (FlashAttention-2's split): the probabilities of each tile are
//! recomputed from the forward's log-sum-exp, so no `[batch, heads, s_q, s_k]` tensor exists.
//!
//! - [`flash_backward_dq`]: one cube per (query block, head, batch element), one unit per query
//!   row, as the forward. It computes the row's `D = rowsum(dO ⊙ O)` first (written out for
//!   the other kernel), then walks the key tiles: `dQ = scale · Σ dS k` with
//!   `dS = P ⊙ (dO vᵀ − D)`.
//! - [`flash_backward_dkv`]: one cube per (key block, key/value head, batch element), one unit
//!   per key row. It walks the query heads of its group and their query tiles (those wholly
//!   before the key block are skipped under the causal mask): `dV = Σ Pᵀ dO`,
//!   `dK = scale · Σ dSᵀ q`. Each gradient value has one writer, so no atomics are needed
//!   (wgpu has no float atomics).
//!
//! A row whose keys are all masked (log-sum-exp [`UNIFORM`]) has probability `1 / s_k` for
//! every key, masked or not, as in the forward.

// Kernel code: a comptime flag must be its own `if` (it selects code, it is not a run-time
// condition), and `div_ceil` is not among CubeCL's intrinsics.
#![allow(clippy::collapsible_if, clippy::manual_div_ceil)]

use cubecl::prelude::*;

use super::flash_fwd::{UNIFORM_ABOVE, key_end, load_tile, score, visible};

/// The query gradient, and `D = rowsum(dO ⊙ O)` into `delta` `[batch, heads, s_q]` (f32).
/// Shapes as [`super::flash_fwd::flash_forward`]'s; `d_out` and `dq` are `q`'s.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn flash_backward_dq<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    out: &Tensor<F>,
    d_out: &Tensor<F>,
    lse: &Tensor<f32>,
    slopes: &Tensor<f32>,
    key_mask: &Tensor<i32>,
    sequence_id: &Tensor<i32>,
    dq: &mut Tensor<F>,
    delta: &mut Tensor<f32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] chunk: usize,
    #[comptime] block: usize,
    #[comptime] causal: bool,
    #[comptime] alibi: bool,
    #[comptime] has_key_mask: bool,
    #[comptime] has_sequence_id: bool,
    #[define(F)] _dtype: StorageType,
) {
    let s_q = q.shape(1);
    let heads = q.shape(2);
    let s_k = k.shape(1);
    let kv_heads = k.shape(2);
    let b = CUBE_POS_Z as usize;
    let j = CUBE_POS_Y as usize;
    let q0 = CUBE_POS_X as usize * block;
    let i = q0 + UNIT_POS_X as usize;
    let g = j / (heads / kv_heads);
    let active = i < s_q;
    let mut slope = 0.0f32;
    if alibi {
        slope = slopes[j];
    }
    let offset = s_k - s_q;

    let q_at = ((b * s_q + i) * heads + j) * head_dim;
    let row_at = (b * heads + j) * s_q + i;
    let mut q_row = Array::<f32>::new(head_dim);
    let mut do_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let mut d = 0.0f32;
    let mut row_lse = 0.0f32;
    for c0 in 0..head_dim / chunk {
        #[unroll]
        for u in 0..chunk {
            let c = c0 * chunk + u;
            let mut x = 0.0f32;
            let mut dy = 0.0f32;
            if active {
                x = f32::cast_from(q[q_at + c]);
                dy = f32::cast_from(d_out[q_at + c]);
                d += dy * f32::cast_from(out[q_at + c]);
            }
            q_row[c] = x;
            do_row[c] = dy;
            acc[c] = 0.0;
        }
    }
    if active {
        row_lse = lse[row_at];
        delta[row_at] = d;
    }
    let uniform = row_lse > UNIFORM_ABOVE;

    let mut k_tile = SharedMemory::<f32>::new(block * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(block * head_dim);
    let end = key_end(q0, block, s_q, s_k, causal);
    let tiles = (end + block - 1) / block;
    for tile in 0..tiles {
        let k0 = tile * block;
        let mut kc = end - k0;
        if kc > block {
            kc = block;
        }
        load_tile::<F>(k, &mut k_tile, b, k0, g, block, head_dim, chunk);
        load_tile::<F>(v, &mut v_tile, b, k0, g, block, head_dim, chunk);
        sync_cube();
        if active && !uniform {
            for kk in 0..kc {
                let t = k0 + kk;
                if visible(
                    key_mask,
                    sequence_id,
                    b,
                    i,
                    t,
                    offset,
                    s_q,
                    s_k,
                    causal,
                    has_key_mask,
                    has_sequence_id,
                ) {
                    let mut dot = 0.0f32;
                    let mut dp = 0.0f32;
                    for c0 in 0..head_dim / chunk {
                        #[unroll]
                        for u in 0..chunk {
                            let c = c0 * chunk + u;
                            dot += q_row[c] * k_tile[kk * head_dim + c];
                            dp += do_row[c] * v_tile[kk * head_dim + c];
                        }
                    }
                    let p = f32::exp(score(dot, t, i, offset, scale, slope) - row_lse);
                    let ds = p * (dp - d);
                    for c0 in 0..head_dim / chunk {
                        #[unroll]
                        for u in 0..chunk {
                            let c = c0 * chunk + u;
                            acc[c] += ds * k_tile[kk * head_dim + c];
                        }
                    }
                }
            }
        }
        sync_cube();
    }
    if active && uniform {
        // Every key at probability 1 / s_k, read straight from global memory.
        let p = 1.0f32 / f32::cast_from(s_k);
        for t in 0..s_k {
            let at = ((b * s_k + t) * kv_heads + g) * head_dim;
            let mut dp = 0.0f32;
            for c0 in 0..head_dim / chunk {
                #[unroll]
                for u in 0..chunk {
                    let c = c0 * chunk + u;
                    dp += do_row[c] * f32::cast_from(v[at + c]);
                }
            }
            let ds = p * (dp - d);
            for c0 in 0..head_dim / chunk {
                #[unroll]
                for u in 0..chunk {
                    let c = c0 * chunk + u;
                    acc[c] += ds * f32::cast_from(k[at + c]);
                }
            }
        }
    }
    if active {
        for c0 in 0..head_dim / chunk {
            #[unroll]
            for u in 0..chunk {
                let c = c0 * chunk + u;
                dq[q_at + c] = F::cast_from(acc[c] * scale);
            }
        }
    }
}

/// The key and value gradients (`k`'s shape), from the inputs, the output gradient, the
/// log-sum-exps and [`flash_backward_dq`]'s `delta`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn flash_backward_dkv<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    d_out: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    slopes: &Tensor<f32>,
    key_mask: &Tensor<i32>,
    sequence_id: &Tensor<i32>,
    dk: &mut Tensor<F>,
    dv: &mut Tensor<F>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] chunk: usize,
    #[comptime] block: usize,
    #[comptime] causal: bool,
    #[comptime] alibi: bool,
    #[comptime] has_key_mask: bool,
    #[comptime] has_sequence_id: bool,
    #[define(F)] _dtype: StorageType,
) {
    let s_q = q.shape(1);
    let heads = q.shape(2);
    let s_k = k.shape(1);
    let kv_heads = k.shape(2);
    let group = heads / kv_heads;
    let b = CUBE_POS_Z as usize;
    let g = CUBE_POS_Y as usize;
    let k0 = CUBE_POS_X as usize * block;
    let t = k0 + UNIT_POS_X as usize;
    let active = t < s_k;
    let offset = s_k - s_q;
    let p_uniform = 1.0f32 / f32::cast_from(s_k);

    let k_at = ((b * s_k + t) * kv_heads + g) * head_dim;
    let mut k_row = Array::<f32>::new(head_dim);
    let mut v_row = Array::<f32>::new(head_dim);
    let mut dk_acc = Array::<f32>::new(head_dim);
    let mut dv_acc = Array::<f32>::new(head_dim);
    for c0 in 0..head_dim / chunk {
        #[unroll]
        for u in 0..chunk {
            let c = c0 * chunk + u;
            let mut x = 0.0f32;
            let mut y = 0.0f32;
            if active {
                x = f32::cast_from(k[k_at + c]);
                y = f32::cast_from(v[k_at + c]);
            }
            k_row[c] = x;
            v_row[c] = y;
            dk_acc[c] = 0.0;
            dv_acc[c] = 0.0;
        }
    }
    let mut q_tile = SharedMemory::<f32>::new(block * head_dim);
    let mut do_tile = SharedMemory::<f32>::new(block * head_dim);
    let mut lse_tile = SharedMemory::<f32>::new(block);
    let mut delta_tile = SharedMemory::<f32>::new(block);

    // Under the causal mask, queries before `first` see none of this block's keys.
    let mut first = 0usize;
    if causal {
        if k0 > offset {
            first = k0 - offset;
        }
    }
    let first_tile = first / block;
    let tiles = (s_q + block - 1) / block;
    for jj in 0..group {
        let j = g * group + jj;
        let mut slope = 0.0f32;
        if alibi {
            slope = slopes[j];
        }
        let rows_at = (b * heads + j) * s_q;
        for tile in first_tile..tiles {
            let q0 = tile * block;
            let mut qc = s_q - q0;
            if qc > block {
                qc = block;
            }
            load_tile::<F>(q, &mut q_tile, b, q0, j, block, head_dim, chunk);
            load_tile::<F>(d_out, &mut do_tile, b, q0, j, block, head_dim, chunk);
            let r = UNIT_POS_X as usize;
            let mut l = 0.0f32;
            let mut dd = 0.0f32;
            if q0 + r < s_q {
                l = lse[rows_at + q0 + r];
                dd = delta[rows_at + q0 + r];
            }
            lse_tile[r] = l;
            delta_tile[r] = dd;
            sync_cube();
            if active {
                for rr in 0..qc {
                    let i = q0 + rr;
                    if i < s_q {
                        let row_lse = lse_tile[rr];
                        let mut p = 0.0f32;
                        if row_lse > UNIFORM_ABOVE {
                            p = p_uniform;
                        } else if visible(
                            key_mask,
                            sequence_id,
                            b,
                            i,
                            t,
                            offset,
                            s_q,
                            s_k,
                            causal,
                            has_key_mask,
                            has_sequence_id,
                        ) {
                            let mut dot = 0.0f32;
                            for c0 in 0..head_dim / chunk {
                                #[unroll]
                                for u in 0..chunk {
                                    let c = c0 * chunk + u;
                                    dot += q_tile[rr * head_dim + c] * k_row[c];
                                }
                            }
                            p = f32::exp(score(dot, t, i, offset, scale, slope) - row_lse);
                        }
                        if p != 0.0 {
                            let mut dp = 0.0f32;
                            for c0 in 0..head_dim / chunk {
                                #[unroll]
                                for u in 0..chunk {
                                    let c = c0 * chunk + u;
                                    dp += do_tile[rr * head_dim + c] * v_row[c];
                                }
                            }
                            let ds = p * (dp - delta_tile[rr]);
                            for c0 in 0..head_dim / chunk {
                                #[unroll]
                                for u in 0..chunk {
                                    let c = c0 * chunk + u;
                                    dv_acc[c] += p * do_tile[rr * head_dim + c];
                                    dk_acc[c] += ds * q_tile[rr * head_dim + c];
                                }
                            }
                        }
                    }
                }
            }
            sync_cube();
        }
        // Wholly masked rows among the skipped queries still see this key (uniformly).
        if active {
            for i in 0..first_tile * block {
                if lse[rows_at + i] > UNIFORM_ABOVE {
                    let at = ((b * s_q + i) * heads + j) * head_dim;
                    let mut dp = 0.0f32;
                    for c0 in 0..head_dim / chunk {
                        #[unroll]
                        for u in 0..chunk {
                            let c = c0 * chunk + u;
                            dp += f32::cast_from(d_out[at + c]) * v_row[c];
                        }
                    }
                    let ds = p_uniform * (dp - delta[rows_at + i]);
                    for c0 in 0..head_dim / chunk {
                        #[unroll]
                        for u in 0..chunk {
                            let c = c0 * chunk + u;
                            dv_acc[c] += p_uniform * f32::cast_from(d_out[at + c]);
                            dk_acc[c] += ds * f32::cast_from(q[at + c]);
                        }
                    }
                }
            }
        }
    }
    if active {
        for c0 in 0..head_dim / chunk {
            #[unroll]
            for u in 0..chunk {
                let c = c0 * chunk + u;
                dk[k_at + c] = F::cast_from(dk_acc[c] * scale);
                dv[k_at + c] = F::cast_from(dv_acc[c]);
            }
        }
    }
}
