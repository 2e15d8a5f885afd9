//! The CubeCL kernels on burn's wgpu backend (Mesa's lavapipe where there is no GPU) against
//! the composed path ([`composed_attention`]: head transposes, the grouped-query expansion and
//! [`crate::attention::attention`]) with the dense bias ([`AttnBias::dense`], or, without the
//! causal mask, the same bias written out by hand), run on the CPU by a backend no fused kernel
//! specialises. Outputs and the gradients of `q`, `k` and `v` must agree within
//! [`TOLERANCE`] of the reference's largest magnitude.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::prelude::*;

use crate::kernels::check::{composed_attention, relative_error, values};
use burn::tensor::TensorPrimitive;

use super::{Masks, attention};
use crate::mask::AttnBias;

type W = Wgpu;
type AW = Autodiff<Wgpu>;
/// The reference: Flex's autodiff with a checkpointing strategy, which no fused CPU kernel
/// specialises, so every op is the composed one.
type Reference = Autodiff<Flex, BalancedCheckpointing>;

/// Largest allowed `|fused − composed|`, relative to `max(1, max |composed|)` of each compared
/// tensor (f32 throughout; the two sum in different orders).
const TOLERANCE: f32 = 1e-4;

/// One attention call's sizes and bias parts.
#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    s_q: usize,
    /// Cached keys before the queries (forward-only cases).
    past: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    alibi: bool,
    causal: bool,
    /// `[batch, past + s_q]`, `true` for real tokens.
    key_mask: Option<Vec<bool>>,
    /// `[batch, s_q]`.
    sequence_id: Option<Vec<i64>>,
    scale: f64,
}

impl Case {
    fn new(batch: usize, s_q: usize, heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self {
            batch,
            s_q,
            past: 0,
            heads,
            kv_heads,
            head_dim,
            alibi: true,
            causal: true,
            key_mask: None,
            sequence_id: None,
            scale: 1.0 / (head_dim as f64).sqrt(),
        }
    }

    fn s_k(&self) -> usize {
        self.past + self.s_q
    }

    fn slopes(&self) -> Option<Vec<f64>> {
        self.alibi
            .then(|| crate::alibi::gen_slopes(self.heads, 8.0))
    }

    fn masks<B: Backend>(&self, dev: &B::Device) -> Masks<B> {
        let shape_k = [self.batch, self.s_k()];
        let shape_q = [self.batch, self.s_q];
        Masks {
            slopes: self.slopes(),
            causal: self.causal,
            key_mask: self
                .key_mask
                .clone()
                .map(|m| Tensor::from_data(TensorData::new(m, shape_k), dev)),
            sequence_id: self
                .sequence_id
                .clone()
                .map(|s| Tensor::from_data(TensorData::new(s, shape_q), dev)),
        }
    }

    /// The dense bias `[batch, heads, s_q, s_k]` of the composed path: [`AttnBias::dense`]
    /// under the causal mask (the model's bias), else written out from the definition.
    fn dense<B: Backend>(&self, dev: &B::Device) -> Tensor<B, 4> {
        let masks = self.masks::<B>(dev);
        if self.causal {
            let bias = AttnBias::new(
                self.heads,
                masks.slopes,
                self.s_q,
                self.past,
                masks.key_mask,
                masks.sequence_id,
                dev,
            );
            let dense = bias.dense().expect("a causal bias over several queries");
            return dense.expand([self.batch, self.heads, self.s_q, self.s_k()]);
        }
        let (b, h, sq, sk) = (self.batch, self.heads, self.s_q, self.s_k());
        let slopes = self.slopes().unwrap_or_else(|| vec![0.0; h]);
        let fill = crate::mask::mask_value(burn::tensor::DType::F32) as f32;
        let mut bias = Vec::with_capacity(b * h * sq * sk);
        for bi in 0..b {
            for &slope in &slopes {
                for i in 0..sq {
                    for t in 0..sk {
                        let real = self.key_mask.as_ref().is_none_or(|m| m[bi * sk + t]);
                        let same = self
                            .sequence_id
                            .as_ref()
                            .is_none_or(|s| s[bi * sq + i] == s[bi * sq + t]);
                        bias.push(if real && same {
                            slope as f32 * (t as f32 - (i + self.past) as f32)
                        } else {
                            fill
                        });
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(bias, [b, h, sq, sk]), dev)
    }

    fn inputs(&self, seed: u64) -> [TensorData; 3] {
        let q = [self.batch, self.s_q, self.heads, self.head_dim];
        let kv = [self.batch, self.s_k(), self.kv_heads, self.head_dim];
        let n = |s: [usize; 4]| s.iter().product::<usize>();
        [
            TensorData::new(values(n(q), seed), q),
            TensorData::new(values(n(kv), seed + 1), kv),
            TensorData::new(values(n(kv), seed + 2), kv),
        ]
    }
}

/// The kernel on backend `B` (wgpu, with or without autodiff).
fn fused<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    case: &Case,
) -> Tensor<B, 4> {
    let p = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let masks = case.masks::<B>(&q.device());
    let out = attention::<B>(p(q), p(k), p(v), &masks, case.scale)
        .unwrap_or_else(|_| panic!("{case:?}: the CubeCL kernel refused the call"));
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

fn assert_close(what: &str, case: &Case, a: TensorData, b: TensorData) -> f32 {
    let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let err = relative_error(&a, &b);
    assert!(
        err <= TOLERANCE,
        "{what}: relative error {err:e} over {TOLERANCE:e}, {case:?}"
    );
    err
}

/// The kernel under autodiff against the composed path: the output and the three gradients
/// for a fixed cotangent. Returns the largest relative error seen.
fn matches_composed(case: &Case, seed: u64) -> f32 {
    let wdev = Default::default();
    let cdev = Default::default();
    let [q, k, v] = case.inputs(seed);
    let on_w = |d: &TensorData| Tensor::<AW, 4>::from_data(d.clone(), &wdev).require_grad();
    let on_c = |d: &TensorData| Tensor::<Reference, 4>::from_data(d.clone(), &cdev).require_grad();
    let (qw, kw, vw) = (on_w(&q), on_w(&k), on_w(&v));
    let (qc, kc, vc) = (on_c(&q), on_c(&k), on_c(&v));
    let out_w = fused(qw.clone(), kw.clone(), vw.clone(), case);
    let out_c = composed_attention(
        qc.clone(),
        kc.clone(),
        vc.clone(),
        Some(case.dense(&cdev)),
        case.scale,
    );
    let cot = TensorData::new(
        values(out_c.dims().iter().product(), seed + 3),
        out_c.dims(),
    );
    let gw = (out_w.clone() * Tensor::from_data(cot.clone(), &wdev))
        .sum()
        .backward();
    let gc = (out_c.clone() * Tensor::from_data(cot, &cdev))
        .sum()
        .backward();
    let mut worst = assert_close("output", case, out_w.into_data(), out_c.into_data());
    for (name, tw, tc) in [("dq", qw, qc), ("dk", kw, kc), ("dv", vw, vc)] {
        let dw = tw.grad(&gw).expect("a gradient on wgpu").into_data();
        let dc = tc
            .grad(&gc)
            .expect("a gradient on the reference")
            .into_data();
        worst = worst.max(assert_close(name, case, dw, dc));
    }
    eprintln!("worst relative error {worst:.2e}: {case:?}");
    worst
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_attention_with_alibi_and_grouped_heads_matches_the_composed_one() {
    // 6 heads: a non-power-of-two count (llm-foundry's interleaved slopes); 70 queries: two
    // whole 32-row blocks and a partial one; key/value heads 6 and 2 (GQA).
    let case = Case::new(2, 70, 6, 6, 16);
    matches_composed(&case, 1);
    matches_composed(
        &Case {
            kv_heads: 2,
            ..case
        },
        11,
    );
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_attention_without_the_causal_mask_matches_the_composed_one() {
    // 3 heads over one key/value head, a scale other than 1/sqrt(head_dim), 40 queries.
    let case = Case {
        causal: false,
        scale: 0.3,
        ..Case::new(1, 40, 3, 1, 8)
    };
    matches_composed(&case, 21);
    // Neither ALiBi nor a causal mask: nothing biased at all.
    matches_composed(
        &Case {
            alibi: false,
            ..case
        },
        31,
    );
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_attention_with_padding_and_documents_matches_the_composed_one() {
    let (b, s) = (2, 50);
    // Element 0 is left-padded (its first 4 queries see no key: uniform rows, whose gradient
    // reaches keys of later blocks too); element 1 is right-padded with a hole in the middle.
    let key_mask = (0..b * s)
        .map(|x| match (x / s, x % s) {
            (0, t) => t >= 4,
            (_, t) => t < 45 && t != 20,
        })
        .collect();
    let case = Case {
        key_mask: Some(key_mask),
        ..Case::new(b, s, 4, 2, 32)
    };
    matches_composed(&case, 41);
    // The same without the causal mask: a left-padding row now sees real keys.
    matches_composed(
        &Case {
            causal: false,
            ..case.clone()
        },
        45,
    );
    // Packed documents, boundaries inside and at the edge of a block.
    let ids = (0..b * s)
        .map(|x| [0, 13, 32, 40].iter().filter(|&&at| x % s >= at).count() as i64)
        .collect();
    let case = Case {
        key_mask: None,
        sequence_id: Some(ids),
        ..case
    };
    matches_composed(&case, 51);
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_attention_with_head_dims_64_and_128_matches_the_composed_one() {
    matches_composed(&Case::new(1, 37, 2, 1, 64), 61);
    matches_composed(&Case::new(1, 20, 2, 2, 128), 71);
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_attention_forward_with_a_cached_prefix_matches_the_composed_one() {
    // Inference on plain wgpu: 5 new queries after 9 cached keys, one of them padding.
    let (b, past, s_q) = (2, 9, 5);
    let key_mask = (0..b * (past + s_q)).map(|x| x != 2).collect();
    let case = Case {
        past,
        key_mask: Some(key_mask),
        ..Case::new(b, s_q, 3, 3, 16)
    };
    let [q, k, v] = case.inputs(81);
    let wdev = Default::default();
    let cdev = Default::default();
    let on_w = |d: &TensorData| Tensor::<W, 4>::from_data(d.clone(), &wdev);
    let on_c = |d: &TensorData| Tensor::<Flex, 4>::from_data(d.clone(), &cdev);
    let out_w = fused(on_w(&q), on_w(&k), on_w(&v), &case);
    let out_c = composed_attention(
        on_c(&q),
        on_c(&k),
        on_c(&v),
        Some(case.dense(&cdev)),
        case.scale,
    );
    assert_close("output", &case, out_w.into_data(), out_c.into_data());
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn model_attention_takes_the_cube_kernel_on_wgpu_without_a_dense_bias() {
    let case = Case::new(1, 6, 2, 1, 8);
    let dev = Default::default();
    let [q, k, v] = case.inputs(91);
    let t = |d: TensorData| Tensor::<AW, 4>::from_data(d, &dev);
    let masks = case.masks::<AW>(&dev);
    let bias = AttnBias::new(2, masks.slopes, 6, 0, None, None, &dev);
    let out = crate::kernels::attention(
        t(q.clone()),
        t(k.clone()),
        t(v.clone()),
        &bias,
        case.scale,
        None,
    );
    assert!(out.is_ok(), "Autodiff<Wgpu> takes the fused path");
    assert!(
        !bias.dense_is_built(),
        "the fused path built the dense bias"
    );
    // A bias whose parts do not fit the shapes is left to the composed path.
    let wrong = AttnBias::new(3, None, 6, 0, None, None, &dev);
    assert!(crate::kernels::attention(t(q), t(k), t(v), &wrong, 1.0, None).is_err());
}

#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn cube_attention_over_long_loops_matches_the_composed_one() {
    // 800 query rows for each key unit of the dK/dV kernel: past lavapipe's 65535 loop
    // iterations per invocation if the head_dim loops were not partly unrolled (it then stops
    // the loops silently and the gradients come out partial).
    matches_composed(&Case::new(1, 400, 2, 1, 64), 101);
}

/// Mixed precision: the model's attention hands the kernels `q`, `k`, `v` in the compute dtype
/// and gets the output back in f32. lavapipe has f16 (not bf16): the result must be the
/// composed path's, computed from the same f16-rounded inputs, within f16's rounding.
#[test]
#[ignore = "needs Mesa lavapipe (wgpu)"]
fn mixed_precision_attention_runs_the_kernel_in_the_compute_dtype() {
    use burn::tensor::FloatDType;
    let case = Case::new(1, 20, 2, 1, 16);
    let dev = Default::default();
    let [q, k, v] = case.inputs(77);
    let t = |d: &TensorData| Tensor::<AW, 4>::from_data(d.clone(), &dev);
    let masks = case.masks::<AW>(&dev);
    let bias = AttnBias::new(2, masks.slopes.clone(), 20, 0, None, None, &dev);
    let out = crate::kernels::attention(
        t(&q),
        t(&k),
        t(&v),
        &bias,
        case.scale,
        Some(FloatDType::F16),
    )
    .expect("lavapipe runs the kernel in f16");
    assert_eq!(
        FloatDType::from(out.dtype()),
        FloatDType::F32,
        "back in f32"
    );
    // The composed path on the CPU from the f16-rounded inputs.
    let cdev = Default::default();
    let r = |d: &TensorData| {
        Tensor::<Flex, 4>::from_data(d.clone(), &cdev)
            .cast(FloatDType::F16)
            .cast(FloatDType::F32)
    };
    let want = composed_attention(r(&q), r(&k), r(&v), Some(case.dense(&cdev)), case.scale);
    let (got, want) = (
        out.into_data().to_vec::<f32>().unwrap(),
        want.into_data().to_vec::<f32>().unwrap(),
    );
    let err = relative_error(&got, &want);
    assert!(err <= 4e-3, "f16 attention off by {err:e}");
}
