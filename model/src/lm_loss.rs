//! The language-model loss fused with the unembedding: `Σ CE(h Wᵀ · scale, targets)` computed in
//! blocks of rows, so the `[tokens, vocab]` logits never exist at once and their gradient is
//! never built by autodiff.
//!
//! Why: with a large vocabulary the logits dominate a small model's step. Unfused, autodiff keeps
//! the full `[b·s, v]` logits, runs `log_softmax` as six graph nodes and scatters the target
//! gradient into a fresh `[b·s, v]` tensor; for llm-foundry's `mpt-small-cpu` (vocab 50368,
//! d_model 16) that is ~400 MB per tensor and most of the step.
//!
//! How: per block of rows, `logits = h_blk Wᵀ`, then [`crate::kernels::cross_entropy_rows`]
//! gives each row's loss and `G = softmax - onehot`. The two gradient products the unembedding
//! backward would compute, `∂/∂h = G W` and `∂/∂W = Gᵀ h`, are accumulated right there (as
//! constants, scaled by `logit_scale`). [`attach_gradients`] then returns the loss as a graph
//! node whose gradient with respect to `h` and `W` is exactly those products (one node on Flex;
//! the surrogate `loss + (s - detach(s))`, `s = Σ h ⊙ ∂h + Σ W ⊙ ∂W`, elsewhere). This holds for
//! any use of the returned scalar (the chain rule multiplies it by one upstream scalar), which
//! is why the function returns the sum rather than per-token values.
//!
//! The same FLOPs as the unfused path (three `tokens × vocab × d_model` products). On the CPU in
//! f32 the loop is one kernel ([`crate::kernels::fused_unembed_cross_entropy`]), which reuses
//! one logits buffer and accumulates `∂/∂W` in place; elsewhere it is the tensor ops below.

use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::kernels::{
    attach_gradients, block_rows, cross_entropy_rows, fused_unembed_cross_entropy, is_tracked,
    linear, linear_backward, matmul, reads_back_for_free,
};

/// Logits per block: 2²⁵ f32 values, 128 MiB (`plan --memory` counts it).
///
/// Why this large: every block also makes three passes over `W`-sized memory (two products
/// read all of `W`, and `∂W` is read and written), so small blocks are slow. With the released
/// MPT vocabulary (50432), `d_model` 256 and 2048 rows on a 2-core Xeon, the loss and its
/// gradients took 1.05 s in blocks of 2²² values (83 rows), 0.87 s in 2²⁴ and 0.80 s in 2²⁵;
/// larger blocks gained nothing more (BENCHMARKS.md).
pub const LOGITS_BLOCK_ELEMENTS: usize = 1 << 25;

/// Rows per block of [`unembed_cross_entropy_sum`] for `n` rows and a vocabulary of `v`.
pub fn logits_block_rows(n: usize, v: usize) -> usize {
    block_rows(n, v, LOGITS_BLOCK_ELEMENTS)
}

/// `Σ` over non-ignored targets of `-log softmax(scale · h Wᵀ)[target]`, with a gradient for `h`
/// and `W` when the backend tracks them.
///
/// - `h`: the final hidden states (`norm_f` output), `W`: the unembedding `[vocab, d]` (the
///   tied `wte` or `lm_head`), `targets`: token ids or `ignore_index`.
/// - `compute`: the matmuls' dtype under mixed precision (`None`: the tensors' own, f32); the
///   softmax and the loss are always f32, as under PyTorch autocast.
///
/// # Shapes
/// - `h`: `[batch, seq, d]`, `w`: `[vocab, d]`, `targets`: `[batch, seq]` -> `[1]`
///
/// # Panics
/// If the shapes disagree, or on the CPU (Flex) if a target is `>= vocab` or negative but not
/// `ignore_index`. On other backends such targets make the loss NaN: refusing them there
/// would read a value back inside the training step.
pub fn unembed_cross_entropy_sum<B: Backend>(
    h: Tensor<B, 3>,
    w: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    ignore_index: i64,
    logit_scale: f64,
    compute: Option<FloatDType>,
) -> Tensor<B, 1> {
    let how = Blocks {
        elements: LOGITS_BLOCK_ELEMENTS,
        fused: true,
        check_on_host: reads_back_for_free::<B>(),
    };
    in_blocks(h, w, targets, ignore_index, logit_scale, compute, how)
}

/// How [`in_blocks`] cuts and computes: at most `elements` logits per block; whether the
/// fused CPU kernel may take the call; whether stray targets are counted on the host (a panic)
/// or flagged on the device (a NaN loss). Tests choose each on Flex.
#[derive(Clone, Copy, Debug)]
struct Blocks {
    elements: usize,
    fused: bool,
    check_on_host: bool,
}

fn in_blocks<B: Backend>(
    h: Tensor<B, 3>,
    w: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    ignore_index: i64,
    logit_scale: f64,
    compute: Option<FloatDType>,
    how: Blocks,
) -> Tensor<B, 1> {
    let [b, s, d] = h.dims();
    let dw = w.dims()[1];
    assert_eq!(d, dw, "hidden width {d} vs unembedding width {dw}");
    assert_eq!(targets.dims(), [b, s], "targets must be [batch, seq]");
    let n = b * s;
    let device = h.device();
    if n == 0 {
        return Tensor::zeros([1], &device);
    }
    let ignored = targets.clone().equal_elem(ignore_index);
    // Below, every negative target counts as ignored: any other negative id is bad data,
    // which the unfused loss would reject too, so it must not quietly lower the loss. On the
    // CPU the count is read and refused at once. On a GPU reading it back would wait for
    // every kernel queued so far, inside the step, so the loss becomes NaN instead, which the
    // trainer's NaN judge refuses.
    let stray = targets
        .clone()
        .lower_elem(0)
        .bool_and(ignored.clone().bool_not())
        .int()
        .sum(); // [1]
    let stray = if how.check_on_host {
        let stray: i64 = stray.into_scalar().elem();
        assert!(
            stray == 0,
            "targets hold {stray} negative id(s) other than ignore_index {ignore_index}"
        );
        None
    } else {
        Some(stray.greater_elem(0))
    };
    let targets = targets.mask_fill(ignored, -1).reshape([n, 1]);
    let loss = loss_and_gradients(h, w, targets, logit_scale, compute, how);
    match stray {
        Some(bad) => loss.mask_fill(bad, f32::NAN),
        None => loss,
    }
}

/// The loss of `targets` (`[n, 1]`, negative = ignored) and its gradients, block by block.
fn loss_and_gradients<B: Backend>(
    h: Tensor<B, 3>,
    w: Tensor<B, 2>,
    targets: Tensor<B, 2, Int>,
    logit_scale: f64,
    compute: Option<FloatDType>,
    how: Blocks,
) -> Tensor<B, 1> {
    let [b, s, d] = h.dims();
    let v = w.dims()[0];
    let n = b * s;
    // Gradients only when autodiff tracks `h` or `W` (not, say, in an eval loop on an
    // autodiff backend). A frozen `W` (LoRA: only adapters train) gets none, and its product
    // is skipped.
    let (grad_h, grad_w) = (is_tracked(&h), is_tracked(&w));
    let grad = grad_h || grad_w;
    let cast = |t: Tensor<B, 2>| match compute {
        Some(dt) => t.cast(dt),
        None => t,
    };
    let f32 = |t: Tensor<B, 2>| {
        if compute.is_some() {
            t.cast(FloatDType::F32)
        } else {
            t
        }
    };

    // Constants: no graph is built inside the loop.
    let hc = h.clone().reshape([n, d]).set_require_grad(false);
    let wc = cast(w.clone().set_require_grad(false));

    // On the CPU in f32, the whole loop below is one kernel.
    let (hc, wc, targets) = match compute {
        None if how.fused => match fused_unembed_cross_entropy(
            (hc, wc, targets),
            logit_scale,
            [grad_h, grad_w],
            how.elements,
        ) {
            Ok((losses, dh, dw)) => {
                return with_gradients(losses.sum(), h.reshape([n, d]), dh, w, dw);
            }
            Err(inputs) => inputs,
        },
        _ => (hc, wc, targets),
    };

    let rows = block_rows(n, v, how.elements);
    let mut losses = Vec::with_capacity(n.div_ceil(rows));
    let mut dh = Vec::with_capacity(n.div_ceil(rows));
    let mut dw_acc: Option<Tensor<B, 2>> = None;
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        let hb = hc.clone().narrow(0, start, len); // [len, d]
        let mut logits = f32(linear(cast(hb.clone()), wc.clone())); // [len, v]
        if logit_scale != 1.0 {
            logits = logits * logit_scale;
        }
        let (loss, g) = cross_entropy_rows(logits, targets.clone().narrow(0, start, len), grad);
        losses.push(loss);
        if let Some(g) = g {
            // The unembedding's backward: [len, d] and [v, d] (or only the first, for a
            // frozen W).
            let (gh, gw) = if grad_w {
                let (gh, gw) = linear_backward(cast(hb), wc.clone(), cast(g));
                (f32(gh), Some(f32(gw)))
            } else {
                (f32(matmul(cast(g), wc.clone())), None)
            };
            let scaled = |t: Tensor<B, 2>| {
                if logit_scale != 1.0 {
                    t * logit_scale
                } else {
                    t
                }
            };
            dh.push(scaled(gh));
            if let Some(gw) = gw {
                let gw = scaled(gw);
                dw_acc = Some(match dw_acc {
                    Some(acc) => acc + gw,
                    None => gw,
                });
            }
        }
    }
    let loss = Tensor::cat(losses, 0).sum(); // [1]
    let dh = (!dh.is_empty()).then(|| Tensor::cat(dh, 0)); // [n, d]
    with_gradients(loss, h.reshape([n, d]), dh, w, dw_acc)
}

/// `loss` as a function of `h` and `w` whose gradients are `dh` and `dw` (those given).
fn with_gradients<B: Backend>(
    loss: Tensor<B, 1>,
    h: Tensor<B, 2>,
    dh: Option<Tensor<B, 2>>,
    w: Tensor<B, 2>,
    dw: Option<Tensor<B, 2>>,
) -> Tensor<B, 1> {
    match (dh, dw) {
        (Some(dh), Some(dw)) => attach_gradients(loss, h, dh, w, dw),
        // Only `h` needs its gradient: the surrogate `loss + (s - detach(s))`, s = Σ h ⊙ ∂h.
        (Some(dh), None) => {
            let s = (h * dh).sum();
            loss.detach() + (s.clone() - s.detach())
        }
        (None, Some(dw)) => {
            let s = (w * dw).sum();
            loss.detach() + (s.clone() - s.detach())
        }
        (None, None) => loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::token_cross_entropy;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type AD = Autodiff<Flex>;

    fn inputs(
        b: usize,
        s: usize,
        d: usize,
        v: usize,
    ) -> (Tensor<AD, 3>, Tensor<AD, 2>, Tensor<AD, 2, Int>) {
        let dev = Default::default();
        <AD as Backend>::seed(&dev, 11);
        let h =
            Tensor::<AD, 3>::random([b, s, d], Distribution::Normal(0.0, 1.0), &dev).require_grad();
        let w =
            Tensor::<AD, 2>::random([v, d], Distribution::Normal(0.0, 0.5), &dev).require_grad();
        let ids: Vec<i64> = (0..b * s)
            .map(|i| {
                if i % 7 == 3 {
                    -100
                } else {
                    (i * 13 % v) as i64
                }
            })
            .collect();
        let t = Tensor::<AD, 2, Int>::from_data(TensorData::new(ids, [b, s]), &dev);
        (h, w, t)
    }

    /// The unfused reference: full logits, `token_cross_entropy`, autodiff through everything.
    fn reference(
        h: Tensor<AD, 3>,
        w: Tensor<AD, 2>,
        t: Tensor<AD, 2, Int>,
        scale: f64,
    ) -> Tensor<AD, 1> {
        let [b, s, d] = h.dims();
        let v = w.dims()[0];
        let logits = h
            .reshape([b * s, d])
            .matmul(w.transpose())
            .reshape([b, s, v])
            * scale;
        token_cross_entropy(logits, t, -100).sum()
    }

    /// Both ways of computing the loss (the CPU kernel, the tensor ops) against the reference,
    /// in blocks of at most `elements` logits.
    fn check(b: usize, s: usize, d: usize, v: usize, scale: f64, elements: usize) {
        // The CPU kernel takes Autodiff<Flex>'s f32 tensors (so `fused: true` below runs it).
        let (h, w, t) = inputs(b, s, d, v);
        let inputs = (h.reshape([b * s, d]), w, t.reshape([b * s, 1]));
        assert!(fused_unembed_cross_entropy(inputs, scale, [true, true], elements).is_ok());
        for fused in [true, false] {
            let how = Blocks {
                elements,
                fused,
                check_on_host: true,
            };
            check_one(b, s, d, v, scale, how);
        }
    }

    fn check_one(b: usize, s: usize, d: usize, v: usize, scale: f64, how: Blocks) {
        let (h, w, t) = inputs(b, s, d, v);
        let fused = in_blocks(h.clone(), w.clone(), t.clone(), -100, scale, None, how);
        let want = reference(h.clone(), w.clone(), t, scale);
        let (f, r) = (fused.clone().into_scalar(), want.clone().into_scalar());
        assert!((f - r).abs() <= 1e-5 * r.abs().max(1.0), "loss {f} vs {r}");
        // A nonlinear use of the scalar: the gradient must still follow the chain rule.
        let gf = (fused.clone() * fused).backward();
        let gr = (want.clone() * want).backward();
        let tol = Tolerance::absolute(1e-4).set_relative(1e-4);
        h.grad(&gf)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&h.grad(&gr).unwrap().into_data(), tol);
        w.grad(&gf)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&w.grad(&gr).unwrap().into_data(), tol);
    }

    #[test]
    fn fused_loss_and_gradients_match_the_unfused_ones() {
        check(2, 9, 8, 37, 1.0, LOGITS_BLOCK_ELEMENTS);
    }

    #[test]
    fn fused_loss_handles_several_blocks_and_a_logit_scale() {
        // 1000 / 37 = 27 rows per block, so 70 rows make three blocks, the last one short.
        check(2, 35, 4, 37, 0.5, 1000);
        // One row per block.
        check(1, 5, 4, 37, 2.0, 10);
    }

    #[test]
    fn a_frozen_input_gets_no_gradient_and_the_other_its_own() {
        let tol = Tolerance::absolute(1e-5).set_relative(1e-4);
        for (fused, freeze_w) in [(true, true), (true, false), (false, true), (false, false)] {
            let (h, w, t) = inputs(2, 7, 8, 37);
            let (h, w) = match freeze_w {
                true => (h, w.set_require_grad(false)),
                false => (h.set_require_grad(false), w),
            };
            let how = Blocks {
                elements: 100,
                fused,
                check_on_host: true,
            };
            let got = in_blocks(h.clone(), w.clone(), t.clone(), -100, 1.5, None, how);
            let want = reference(h.clone(), w.clone(), t, 1.5);
            let (gg, gr) = (got.backward(), want.backward());
            let what = format!("fused {fused}, frozen W {freeze_w}");
            let (frozen, got, want) = match freeze_w {
                true => (w.grad(&gg).is_none(), h.grad(&gg), h.grad(&gr)),
                false => {
                    let flat = |g: Tensor<Flex, 2>| g.reshape([1, 37, 8]);
                    (
                        h.grad(&gg).is_none(),
                        w.grad(&gg).map(flat),
                        w.grad(&gr).map(flat),
                    )
                }
            };
            assert!(frozen, "{what}: the frozen input has a gradient");
            got.expect(&what)
                .into_data()
                .assert_approx_eq::<f32>(&want.expect(&what).into_data(), tol);
        }
    }

    #[test]
    fn without_autodiff_only_the_loss_is_computed() {
        let (h, w, t) = inputs(1, 6, 8, 21);
        let want = reference(h.clone(), w.clone(), t.clone(), 1.0).into_scalar();
        let got = unembed_cross_entropy_sum(h.inner(), w.inner(), t.inner(), -100, 1.0, None)
            .into_scalar();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn an_empty_batch_has_zero_loss() {
        let (_, w, _) = inputs(1, 6, 8, 21);
        let h = Tensor::<AD, 3>::zeros([1, 0, 8], &Default::default()).require_grad();
        let t = Tensor::<AD, 2, Int>::zeros([1, 0], &Default::default());
        let got = unembed_cross_entropy_sum(h, w, t, -100, 1.0, None).into_scalar();
        assert_eq!(got, 0.0);
    }

    #[test]
    #[should_panic(expected = "1 negative id(s) other than ignore_index -100")]
    fn a_negative_target_other_than_ignore_index_is_refused() {
        let (h, w, t) = inputs(1, 6, 8, 21);
        let t = t.slice_assign(
            [0..1, 2..3],
            Tensor::from_data([[-1i64]], &Default::default()),
        );
        let _ = unembed_cross_entropy_sum(h, w, t, -100, 1.0, None);
    }

    #[test]
    fn without_a_host_check_a_stray_negative_target_makes_the_loss_nan() {
        let (h, w, t) = inputs(1, 6, 8, 21);
        let bad = t.clone().slice_assign(
            [0..1, 2..3],
            Tensor::from_data([[-1i64]], &Default::default()),
        );
        let how = Blocks {
            elements: LOGITS_BLOCK_ELEMENTS,
            fused: true,
            check_on_host: false,
        };
        let loss = |t| in_blocks(h.clone(), w.clone(), t, -100, 1.0, None, how).into_scalar();
        assert!(loss(bad).is_nan(), "a stray target must not pass silently");
        // ignore_index itself is no stray target.
        let want = reference(h.clone(), w.clone(), t.clone(), 1.0).into_scalar();
        assert!((loss(t) - want).abs() < 1e-5);
    }

    #[test]
    fn untracked_inputs_on_an_autodiff_backend_give_the_same_loss() {
        let (h, w, t) = inputs(1, 6, 8, 21);
        let want = reference(h.clone(), w.clone(), t.clone(), 1.0).into_scalar();
        let got = unembed_cross_entropy_sum(
            h.set_require_grad(false),
            w.set_require_grad(false),
            t,
            -100,
            1.0,
            None,
        )
        .into_scalar();
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
