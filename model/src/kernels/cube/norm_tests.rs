//! The norm and cross-entropy kernels on burn's wgpu backend (Mesa's lavapipe where there is no
//! GPU) against the composed path, through the model's entry points
//! ([`crate::kernels::norm`], [`crate::kernels::cross_entropy_rows`]): on wgpu they take the
//! CubeCL kernels, on the reference backend the composed tensor ops. Values and gradients must
//! agree within [`TOLERANCE`] of the reference's largest magnitude.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::prelude::*;

use crate::kernels::check::{relative_error, values};
use crate::kernels::{cross_entropy_rows, norm};

type AW = Autodiff<Wgpu>;
/// The composed path: no fused CPU kernel specialises Flex's autodiff with checkpointing.
type Reference = Autodiff<Flex, BalancedCheckpointing>;

/// Largest allowed `|fused − composed|` relative to `max(1, max |composed|)`, f32 throughout
/// (the two sum in different orders).
const TOLERANCE: f32 = 2e-5;

fn assert_close(what: &str, a: TensorData, b: TensorData) {
    let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let err = relative_error(&a, &b);
    assert!(
        err <= TOLERANCE,
        "{what}: relative error {err:e} over {TOLERANCE:e}"
    );
}

/// The norm of `[2, rows, d]` values with and without a bias, as LayerNorm and RMSNorm, and
/// the gradients of `Σ y ⊙ r` for a fixed `r`, on wgpu and on the reference.
fn norm_matches(rows: usize, d: usize, rms: bool, with_bias: bool, seed: u64) {
    let what = format!("rows {rows}, d {d}, rms {rms}, bias {with_bias}");
    let shape = [2, rows, d];
    let x = TensorData::new(values(2 * rows * d, seed), shape);
    let w = TensorData::new(values(d, seed + 1), [d]);
    let b = TensorData::new(values(d, seed + 2), [d]);
    let r = TensorData::new(values(2 * rows * d, seed + 3), shape);
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        x: &TensorData,
        w: &TensorData,
        b: Option<&TensorData>,
        r: &TensorData,
        rms: bool,
    ) -> [Option<TensorData>; 4] {
        let dev = Default::default();
        let x = Tensor::<B, 3>::from_data(x.clone(), &dev).require_grad();
        let w = Tensor::<B, 1>::from_data(w.clone(), &dev).require_grad();
        let b = b.map(|b| Tensor::<B, 1>::from_data(b.clone(), &dev).require_grad());
        let y = norm(x.clone(), w.clone(), b.clone(), 1e-5, rms);
        let g = (y.clone() * Tensor::from_data(r.clone(), &dev))
            .sum()
            .backward();
        [
            Some(y.into_data()),
            x.grad(&g).map(|t| t.into_data()),
            w.grad(&g).map(|t| t.into_data()),
            b.and_then(|b| b.grad(&g)).map(|t| t.into_data()),
        ]
    }
    let bias = with_bias.then_some(&b);
    let fused = run::<AW>(&x, &w, bias, &r, rms);
    let composed = run::<Reference>(&x, &w, bias, &r, rms);
    for (name, f, c) in ["y", "dx", "dw", "db"]
        .iter()
        .zip(fused)
        .zip(composed)
        .map(|((n, f), c)| (n, f, c))
    {
        match (f, c) {
            (Some(f), Some(c)) => assert_close(&format!("{name}, {what}"), f, c),
            (None, None) => assert!(!with_bias && *name == "db", "{name}: no gradient, {what}"),
            (f, c) => panic!(
                "{name}: fused {} vs composed {}, {what}",
                f.is_some(),
                c.is_some()
            ),
        }
    }
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_layer_norm_and_rms_norm_match_the_composed_ones_with_gradients() {
    // d below, at and above the cube's 128 units, and not a multiple of it; more rows than
    // one chunk of the weight's gradient (256).
    for (i, (rows, d)) in [(3, 8), (37, 100), (300, 128), (5, 300)]
        .into_iter()
        .enumerate()
    {
        for rms in [false, true] {
            for bias in [false, true] {
                norm_matches(rows, d, rms, bias, 10 * i as u64 + 1);
            }
        }
    }
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_norm_spreads_more_rows_than_one_grid_axis_holds() {
    // 2 × 33,000 rows: over the 65,535 cubes of one axis.
    norm_matches(33_000, 4, false, true, 7);
}

/// `cross_entropy_rows` on wgpu (plain, and under autodiff) against the reference.
fn cross_entropy_matches(rows: usize, v: usize, seed: u64) {
    let logits = TensorData::new(
        values(rows * v, seed).iter().map(|x| 4.0 * x).collect(),
        [rows, v],
    );
    // Every fifth target ignored (-100), the others spread over the vocabulary.
    let targets: Vec<i64> = (0..rows)
        .map(|i| {
            if i % 5 == 3 {
                -100
            } else {
                ((i * 7919 + seed as usize) % v) as i64
            }
        })
        .collect();
    let targets = TensorData::new(targets, [rows, 1]);
    fn run<B: Backend>(logits: &TensorData, targets: &TensorData) -> (TensorData, TensorData) {
        let dev = Default::default();
        let (loss, g) = cross_entropy_rows(
            Tensor::<B, 2>::from_data(logits.clone(), &dev),
            Tensor::<B, 2, Int>::from_data(targets.clone(), &dev),
            true,
        );
        (
            loss.into_data(),
            g.expect("asked for the gradient").into_data(),
        )
    }
    let (loss_c, g_c) = run::<Reference>(&logits, &targets);
    for (name, (loss, g)) in [
        ("autodiff", run::<AW>(&logits, &targets)),
        ("plain", run::<Wgpu>(&logits, &targets)),
    ] {
        assert_close(&format!("loss ({name}, v {v})"), loss, loss_c.clone());
        assert_close(&format!("gradient ({name}, v {v})"), g, g_c.clone());
    }
    // Without the gradient, the same losses.
    let dev = Default::default();
    let (loss, g) = cross_entropy_rows(
        Tensor::<Wgpu, 2>::from_data(logits, &dev),
        Tensor::<Wgpu, 2, Int>::from_data(targets, &dev),
        false,
    );
    assert!(g.is_none());
    assert_close("loss without the gradient", loss.into_data(), loss_c);
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_cross_entropy_matches_the_composed_one() {
    cross_entropy_matches(37, 5, 1);
    cross_entropy_matches(20, 1000, 2);
    cross_entropy_matches(6, 50_432, 3);
}

/// The comparisons above go through the model's entry points, which fall back to the composed
/// path when a kernel refuses: here the kernels themselves must take the calls.
#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn the_cube_kernels_take_norm_and_cross_entropy_on_wgpu() {
    let dev = Default::default();
    let p = |t: Tensor<AW, 1>| t.into_primitive().tensor();
    let x = Tensor::<AW, 2>::from_data(TensorData::new(values(12, 1), [3, 4]), &dev);
    let w = Tensor::<AW, 1>::from_data(TensorData::new(values(4, 2), [4]), &dev);
    let b = Tensor::<AW, 1>::from_data(TensorData::new(values(4, 3), [4]), &dev);
    let taken = super::norm::<AW>(
        x.clone().into_primitive().tensor(),
        p(w.clone()),
        Some(p(b)),
        1e-5,
        false,
    );
    assert!(
        taken.is_ok(),
        "the norm kernel refused an f32 call on Autodiff<Wgpu>"
    );
    let plain = super::norm::<Wgpu>(
        Tensor::<Wgpu, 2>::from_data(TensorData::new(values(12, 1), [3, 4]), &dev)
            .into_primitive()
            .tensor(),
        Tensor::<Wgpu, 1>::from_data(TensorData::new(values(4, 2), [4]), &dev)
            .into_primitive()
            .tensor(),
        None,
        1e-5,
        true,
    );
    assert!(plain.is_ok(), "the norm kernel refused an f32 call on Wgpu");
    // A weight of the wrong width is refused, not run.
    let narrow = Tensor::<AW, 1>::from_data(TensorData::new(values(3, 2), [3]), &dev);
    assert!(super::norm::<AW>(x.into_primitive().tensor(), p(narrow), None, 1e-5, false).is_err());

    let logits = Tensor::<AW, 2>::from_data(TensorData::new(values(12, 4), [3, 4]), &dev);
    let targets =
        Tensor::<AW, 2, Int>::from_data(TensorData::new(vec![0i64, -100, 3], [3, 1]), &dev);
    let taken = super::cross_entropy::<AW>(
        logits.into_primitive().tensor(),
        targets.into_primitive(),
        true,
    );
    assert!(
        taken.is_ok(),
        "the cross-entropy kernel refused an f32 call on Autodiff<Wgpu>"
    );
}
