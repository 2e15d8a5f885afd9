//! The LayerNorm/RMSNorm and cross-entropy kernels: one cube per row, its units striding over
//! the row, and the row's sums reduced in shared memory ([`cube_sum`], [`cube_max`]) in a fixed
//! tree order, so the results do not depend on timing.
//!
//! Rows are spread over a two-dimensional grid (`CUBE_POS_Y · CUBE_COUNT_X + CUBE_POS_X`),
//! because one grid axis holds at most 65,535 cubes on some APIs (a 1B model's microbatch of
//! 8 × 2048 tokens is 16,384 rows, 64 × 2048 would not fit one axis).

use cubecl::prelude::*;

/// The row this cube works on.
#[cube]
pub(super) fn row_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

/// `value` combined over the cube's `units` units (a power of two): summed, or with `max` the
/// largest; returned to every unit.
#[cube]
fn cube_reduce(
    value: f32,
    shared: &mut SharedMemory<f32>,
    #[comptime] units: usize,
    #[comptime] max: bool,
) -> f32 {
    let u = UNIT_POS_X as usize;
    shared[u] = value;
    sync_cube();
    let mut active = units.runtime();
    while active > 1 {
        active /= 2;
        if u < active {
            let other = shared[u + active];
            if max {
                if other > shared[u] {
                    shared[u] = other;
                }
            } else {
                shared[u] += other;
            }
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// `value` summed over the cube's units.
#[cube]
pub(super) fn cube_sum(
    value: f32,
    shared: &mut SharedMemory<f32>,
    #[comptime] units: usize,
) -> f32 {
    cube_reduce(value, shared, units, false)
}

/// The largest `value` over the cube's units.
#[cube]
pub(super) fn cube_max(
    value: f32,
    shared: &mut SharedMemory<f32>,
    #[comptime] units: usize,
) -> f32 {
    cube_reduce(value, shared, units, true)
}

/// LayerNorm (two-pass: the mean, then the biased variance of the centred row) or RMSNorm over
/// each row of `x` (`[rows, d]`, contiguous), times `weight`, plus `bias` (read only with
/// `has_bias`). Writes `y` and each row's mean (0 under RMSNorm) and `1 / sqrt(var + eps)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_forward<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    y: &mut Tensor<F>,
    mean: &mut Tensor<f32>,
    rstd: &mut Tensor<f32>,
    rows: usize,
    d: usize,
    eps: f32,
    #[comptime] units: usize,
    #[comptime] rms: bool,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = row_index();
    // Every unit of a cube takes the same branch: the row is the cube's.
    if row < rows {
        let base = row * d;
        let u = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<f32>::new(units);
        let n = f32::cast_from(d);

        let mut mu = 0.0f32;
        if !rms {
            let mut part = 0.0f32;
            let mut c = u;
            while c < d {
                part += f32::cast_from(x[base + c]);
                c += units;
            }
            mu = cube_sum(part, &mut shared, units) / n;
        }
        let mut part = 0.0f32;
        let mut c = u;
        while c < d {
            let centred = f32::cast_from(x[base + c]) - mu;
            part += centred * centred;
            c += units;
        }
        let var = cube_sum(part, &mut shared, units) / n;
        let r = 1.0f32 / f32::sqrt(var + eps);

        let mut c = u;
        while c < d {
            let mut out = (f32::cast_from(x[base + c]) - mu) * r * f32::cast_from(weight[c]);
            if has_bias {
                out += f32::cast_from(bias[c]);
            }
            y[base + c] = F::cast_from(out);
            c += units;
        }
        if u == 0 {
            mean[row] = mu;
            rstd[row] = r;
        }
    }
}

/// The gradient of [`norm_forward`] with respect to `x`, for the upstream gradient `dy`: with
/// `x̂ = (x − mean)·rstd` and `g = dy·weight`, `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`
/// (RMSNorm: without the `mean(g)` term).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_backward_x<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    dy: &Tensor<F>,
    mean: &Tensor<f32>,
    rstd: &Tensor<f32>,
    dx: &mut Tensor<F>,
    rows: usize,
    d: usize,
    #[comptime] units: usize,
    #[comptime] rms: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = row_index();
    if row < rows {
        let base = row * d;
        let u = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<f32>::new(units);
        let n = f32::cast_from(d);
        let mu = mean[row];
        let r = rstd[row];

        let mut g_part = 0.0f32;
        let mut gx_part = 0.0f32;
        let mut c = u;
        while c < d {
            let g = f32::cast_from(dy[base + c]) * f32::cast_from(weight[c]);
            let xhat = (f32::cast_from(x[base + c]) - mu) * r;
            g_part += g;
            gx_part += g * xhat;
            c += units;
        }
        let mut g_mean = 0.0f32;
        if !rms {
            g_mean = cube_sum(g_part, &mut shared, units) / n;
        }
        let gx_mean = cube_sum(gx_part, &mut shared, units) / n;

        let mut c = u;
        while c < d {
            let g = f32::cast_from(dy[base + c]) * f32::cast_from(weight[c]);
            let xhat = (f32::cast_from(x[base + c]) - mu) * r;
            dx[base + c] = F::cast_from(r * (g - g_mean - xhat * gx_mean));
            c += units;
        }
    }
}

/// Per chunk of `chunk` rows, the column sums `Σ dy·x̂` (the weight's gradient) and `Σ dy` (the
/// bias's): one unit per column, rows in order, written to row `CUBE_POS_Y` of `dw_part` and
/// `db_part` (`[chunks, d]`, f32). The chunks are then summed in order on the device.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_backward_params<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    mean: &Tensor<f32>,
    rstd: &Tensor<f32>,
    dw_part: &mut Tensor<f32>,
    db_part: &mut Tensor<f32>,
    rows: usize,
    d: usize,
    #[comptime] units: usize,
    #[comptime] chunk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let col = CUBE_POS_X as usize * units + UNIT_POS_X as usize;
    let part = CUBE_POS_Y as usize;
    if col < d {
        let first = part * chunk;
        let mut last = first + chunk;
        if last > rows {
            last = rows;
        }
        let mut dw = 0.0f32;
        let mut db = 0.0f32;
        let mut row = first;
        while row < last {
            let g = f32::cast_from(dy[row * d + col]);
            dw += g * (f32::cast_from(x[row * d + col]) - mean[row]) * rstd[row];
            db += g;
            row += 1;
        }
        dw_part[part * d + col] = dw;
        db_part[part * d + col] = db;
    }
}

/// Per row of `logits` (`[rows, v]`, f32, contiguous) against `targets` (`[rows]`, i32;
/// negative: ignored), the loss `logsumexp(x) − x[target]` (0 where ignored; NaN for a target
/// of `v` or more, which no vocabulary has), and with `grad` the gradient
/// `softmax(x) − onehot(target)` (a zero row where ignored).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy_rows(
    logits: &Tensor<f32>,
    targets: &Tensor<i32>,
    loss: &mut Tensor<f32>,
    grad_out: &mut Tensor<f32>,
    rows: usize,
    v: usize,
    #[comptime] units: usize,
    #[comptime] grad: bool,
) {
    let row = row_index();
    if row < rows {
        let base = row * v;
        let u = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<f32>::new(units);
        let target = targets[row];
        let valid = target >= 0;

        let mut part = f32::new(-3.0e38);
        let mut c = u;
        while c < v {
            let x = logits[base + c];
            if x > part {
                part = x;
            }
            c += units;
        }
        let max = cube_max(part, &mut shared, units);
        let mut part = 0.0f32;
        let mut c = u;
        while c < v {
            part += f32::exp(logits[base + c] - max);
            c += units;
        }
        let sum = cube_sum(part, &mut shared, units);
        let lse = max + f32::ln(sum);

        if u == 0 {
            let mut l = 0.0f32;
            if valid {
                let t = usize::cast_from(target);
                if t < v {
                    l = lse - logits[base + t];
                } else {
                    // NaN, from a run-time value (WGSL has no NaN literal and rejects a
                    // constant 0/0).
                    l = f32::sqrt(-1.0 - f32::cast_from(t));
                }
            }
            loss[row] = l;
        }
        if grad {
            let mut c = u;
            while c < v {
                let mut g = 0.0f32;
                if valid {
                    g = f32::exp(logits[base + c] - lse);
                    if usize::cast_from(target) == c {
                        g -= 1.0;
                    }
                }
                grad_out[base + c] = g;
                c += units;
            }
        }
    }
}
