//! The forward kernel: one cube per (query block, head, batch element), one unit per query row.
//!
//! The block's units load each key/value tile into shared memory together; then every unit
//! scores its row against the tile's keys (the bias computed from its parts, [`score`]), and
//! folds the tile into its running maximum, sum and unnormalised output (the online softmax).
//! Key tiles wholly after the block's last query are never loaded under the causal mask.

// Kernel code: a comptime flag must be its own `if` (it selects code, it is not a run-time
// condition), and `div_ceil` is not among CubeCL's intrinsics.
#![allow(clippy::collapsible_if, clippy::manual_div_ceil)]

use cubecl::prelude::*;

// Every loop over `head_dim` runs `head_dim / chunk` times over an unrolled body of `chunk`
// steps: llvmpipe (lavapipe) ends an invocation's loops silently once they have iterated 65535
// times in all, and unrolling wholly makes its shader compiles far too slow.

/// The score that marks a masked key (its probability is 0). Finite, because WGSL has no
/// infinity literal.
pub(super) const MASKED: f32 = -3.0e38;
/// Scores below this are masked ones.
pub(super) const MASKED_BELOW: f32 = -1.0e38;
/// The log-sum-exp written for a row whose keys are all masked (its softmax is uniform over
/// every key, as the materialised formulation gives it).
pub(super) const UNIFORM: f32 = 3.0e38;
/// Log-sum-exps above this mark such rows.
pub(super) const UNIFORM_ABOVE: f32 = 1.0e38;

/// Whether query `i` of batch element `b` sees key `t` (`t < s_k` is checked here too).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn visible(
    key_mask: &Tensor<i32>,
    sequence_id: &Tensor<i32>,
    b: usize,
    i: usize,
    t: usize,
    offset: usize,
    s_q: usize,
    s_k: usize,
    #[comptime] causal: bool,
    #[comptime] has_key_mask: bool,
    #[comptime] has_sequence_id: bool,
) -> bool {
    let mut seen = t < s_k;
    if causal {
        if t > i + offset {
            seen = false;
        }
    }
    if has_key_mask {
        if seen {
            if key_mask[b * s_k + t] == 0 {
                seen = false;
            }
        }
    }
    if has_sequence_id {
        if seen {
            if sequence_id[b * s_q + i] != sequence_id[b * s_q + t] {
                seen = false;
            }
        }
    }
    seen
}

/// `scale · dot + slope · (t − position)`: the scaled score of query `i` (at position
/// `i + offset`) against key `t` with its ALiBi term, rounded as the materialised path rounds it
/// (one product each, then the sum).
#[cube]
pub(super) fn score(dot: f32, t: usize, i: usize, offset: usize, scale: f32, slope: f32) -> f32 {
    let dist = f32::cast_from(t) - f32::cast_from(i + offset);
    dot * scale + slope * dist
}

/// The keys the block's queries `q0..q0 + block` may see lie before this one.
#[cube]
pub(super) fn key_end(
    q0: usize,
    block: usize,
    s_q: usize,
    s_k: usize,
    #[comptime] causal: bool,
) -> usize {
    let mut end = s_k;
    if causal {
        let mut last = q0 + block;
        if last > s_q {
            last = s_q;
        }
        // The last query sits at position (last - 1) + (s_k - s_q).
        end = last + s_k - s_q;
    }
    end
}

/// Copies `block` rows of `head_dim` values, rows `row0..` of head `head` of batch element `b`
/// of `x` (`[batch, rows, heads, head_dim]`), into `tile` as f32, zeros past the last row.
/// Every unit of the cube takes part (`block` of them, `head_dim` values each).
#[cube]
pub(super) fn load_tile<F: Float>(
    x: &Tensor<F>,
    tile: &mut SharedMemory<f32>,
    b: usize,
    row0: usize,
    head: usize,
    #[comptime] block: usize,
    #[comptime] head_dim: usize,
    #[comptime] chunk: usize,
) {
    let rows = x.shape(1);
    let heads = x.shape(2);
    for n0 in 0..head_dim / chunk {
        #[unroll]
        for u in 0..chunk {
            let n = n0 * chunk + u;
            let at = n * block + UNIT_POS_X as usize;
            let row = row0 + at / head_dim;
            let c = at % head_dim;
            let mut value = 0.0f32;
            if row < rows {
                value = f32::cast_from(x[((b * rows + row) * heads + head) * head_dim + c]);
            }
            tile[at] = value;
        }
    }
}

/// The forward. `q` `[batch, s_q, heads, head_dim]`, `k` and `v` `[batch, s_k, kv_heads,
/// head_dim]`, contiguous; writes `out` (`q`'s shape) and `lse` `[batch, heads, s_q]` (f32).
/// `slopes` `[heads]` (f32), `key_mask` `[batch, s_k]` and `sequence_id` `[batch, s_q]` (i32)
/// are read only when the matching comptime flag is set.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn flash_forward<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    slopes: &Tensor<f32>,
    key_mask: &Tensor<i32>,
    sequence_id: &Tensor<i32>,
    out: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
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
    let mut q_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    for c0 in 0..head_dim / chunk {
        #[unroll]
        for u in 0..chunk {
            let c = c0 * chunk + u;
            let mut x = 0.0f32;
            if active {
                x = f32::cast_from(q[q_at + c]);
            }
            q_row[c] = x;
            acc[c] = 0.0;
        }
    }
    let mut k_tile = SharedMemory::<f32>::new(block * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(block * head_dim);
    let mut scores = Array::<f32>::new(block);

    let end = key_end(q0, block, s_q, s_k, causal);
    let tiles = (end + block - 1) / block;
    // The running maximum and sum of exponentials of the row's scores.
    let mut max = f32::new(MASKED);
    let mut sum = 0.0f32;
    for tile in 0..tiles {
        let k0 = tile * block;
        // A runtime bound: LLVM would unroll a constant one (lavapipe then compiles for minutes).
        let mut kc = end - k0;
        if kc > block {
            kc = block;
        }
        load_tile::<F>(k, &mut k_tile, b, k0, g, block, head_dim, chunk);
        load_tile::<F>(v, &mut v_tile, b, k0, g, block, head_dim, chunk);
        sync_cube();
        if active {
            let mut tile_max = f32::new(MASKED);
            for kk in 0..kc {
                let t = k0 + kk;
                let mut s = f32::new(MASKED);
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
                    for c0 in 0..head_dim / chunk {
                        #[unroll]
                        for u in 0..chunk {
                            let c = c0 * chunk + u;
                            dot += q_row[c] * k_tile[kk * head_dim + c];
                        }
                    }
                    s = score(dot, t, i, offset, scale, slope);
                    if s > tile_max {
                        tile_max = s;
                    }
                }
                scores[kk] = s;
            }
            // A tile with no visible key leaves the row as it is.
            if tile_max > MASKED_BELOW {
                let mut new_max = max;
                if tile_max > max {
                    new_max = tile_max;
                }
                // 0 while the row is still empty (max = MASKED).
                let rescale = f32::exp(max - new_max);
                sum *= rescale;
                for c0 in 0..head_dim / chunk {
                    #[unroll]
                    for u in 0..chunk {
                        let c = c0 * chunk + u;
                        acc[c] *= rescale;
                    }
                }
                for kk in 0..kc {
                    let s = scores[kk];
                    if s > MASKED_BELOW {
                        let p = f32::exp(s - new_max);
                        sum += p;
                        for c0 in 0..head_dim / chunk {
                            #[unroll]
                            for u in 0..chunk {
                                let c = c0 * chunk + u;
                                acc[c] += p * v_tile[kk * head_dim + c];
                            }
                        }
                    }
                }
                max = new_max;
            }
        }
        sync_cube();
    }

    if active {
        let lse_at = (b * heads + j) * s_q + i;
        if sum > 0.0 {
            let inv = 1.0f32 / sum;
            for c0 in 0..head_dim / chunk {
                #[unroll]
                for u in 0..chunk {
                    let c = c0 * chunk + u;
                    out[q_at + c] = F::cast_from(acc[c] * inv);
                }
            }
            lse[lse_at] = max + f32::ln(sum);
        } else {
            // Every key masked: the uniform average of all values, read straight from global
            // memory (no barrier: other units may have left the loop).
            let p = 1.0f32 / f32::cast_from(s_k);
            for c0 in 0..head_dim / chunk {
                #[unroll]
                for u in 0..chunk {
                    let c = c0 * chunk + u;
                    acc[c] = 0.0;
                }
            }
            for t in 0..s_k {
                let at = ((b * s_k + t) * kv_heads + g) * head_dim;
                for c0 in 0..head_dim / chunk {
                    #[unroll]
                    for u in 0..chunk {
                        let c = c0 * chunk + u;
                        acc[c] += p * f32::cast_from(v[at + c]);
                    }
                }
            }
            for c0 in 0..head_dim / chunk {
                #[unroll]
                for u in 0..chunk {
                    let c = c0 * chunk + u;
                    out[q_at + c] = F::cast_from(acc[c]);
                }
            }
            lse[lse_at] = UNIFORM;
        }
    }
}
