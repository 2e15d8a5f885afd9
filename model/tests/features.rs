//! Behaviour that is not a single forward: dropout only in training, the embedding-fraction
//! gradient, backend-independent init, and cached decoding for RoPE / learned positions / GQA
//! with left padding.

mod common;

use burn::module::AutodiffModule;
use burn::prelude::*;
use common::*;
use tessera_model::config::{AttnType, FfnType};
use tessera_model::generate::{GenerationConfig, generate};
use tessera_model::loss::{IGNORE_INDEX, mean_cross_entropy, next_token_targets};
use tessera_model::{MptConfig, MptInput, hf};

fn small() -> MptConfig {
    let mut c = MptConfig::preset("tiny").unwrap();
    c.vocab_size = 80;
    c.max_seq_len = 32;
    c
}

fn batch<Bk: Backend>() -> Tensor<Bk, 2, Int> {
    Tensor::from_ints(
        [[3, 9, 27, 1, 4, 15, 9, 2], [5, 6, 7, 8, 9, 10, 11, 12]],
        &Default::default(),
    )
}

#[test]
fn dropout_acts_only_on_autodiff_backends() {
    let mut c = small();
    c.emb_pdrop = 0.2;
    c.resid_pdrop = 0.2;
    c.attn_config.attn_pdrop = 0.2;
    let model = c.init::<AD>(&Default::default(), 1);
    let a = to_vec(model.forward(MptInput::new(batch())));
    let b = to_vec(model.forward(MptInput::new(batch())));
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "training forwards should differ"
    );
    let inner = model.valid();
    let x = to_vec(inner.forward(MptInput::new(batch())));
    let y = to_vec(inner.forward(MptInput::new(batch())));
    assert_eq!(x, y);
    // Without dropout the inner model equals the same weights with all dropouts at zero.
    let plain = small().init::<B>(&Default::default(), 1);
    assert_eq!(to_vec(plain.forward(MptInput::new(batch()))), x);
}

#[test]
fn embedding_fraction_scales_only_the_embedding_gradient() {
    let mut c = small();
    c.tie_word_embeddings = false; // so wte's gradient comes only through the embedding
    let grads_for = |fraction: f64| {
        let mut c = c.clone();
        c.embedding_fraction = fraction;
        let model = c.init::<AD>(&Default::default(), 4);
        let ids = batch::<AD>();
        let logits = model.forward(MptInput::new(ids.clone()));
        let loss = mean_cross_entropy(logits.clone(), next_token_targets(ids, None), IGNORE_INDEX);
        let g = loss.backward();
        (to_vec(logits), named_grads(&model, &g))
    };
    let (l1, g1) = grads_for(1.0);
    let (l2, g2) = grads_for(0.25);
    assert_eq!(l1, l2, "forward must not change");
    let wte1 = &g1["transformer.wte.weight"];
    let wte2 = &g2["transformer.wte.weight"];
    let norm1: f32 = wte1.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(norm1 > 0.0);
    assert!(
        wte1.iter()
            .zip(wte2)
            .all(|(a, b)| (a * 0.25 - b).abs() <= 1e-6 * (1.0 + a.abs()))
    );
    assert_eq!(g1["lm_head.weight"], g2["lm_head.weight"]);
}

#[test]
fn init_is_identical_on_every_backend_and_seed_dependent() {
    let c = small();
    let a = hf::named_parameters(&c.init::<B>(&Default::default(), 9));
    let b = hf::named_parameters(&c.init::<AD>(&Default::default(), 9).valid());
    let c2 = hf::named_parameters(&c.init::<B>(&Default::default(), 10));
    let bits = |m: &std::collections::BTreeMap<String, TensorData>| -> Vec<Vec<u32>> {
        m.values()
            .map(|d| {
                d.clone()
                    .into_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_ne!(bits(&a), bits(&c2));
}

fn positional_variants() -> Vec<(&'static str, MptConfig)> {
    let mut rope = small();
    rope.attn_config.alibi = false;
    rope.attn_config.rope = true;
    rope.attn_config.attn_type = AttnType::GroupedQuery;
    rope.attn_config.kv_n_heads = 2;
    rope.ffn_config.ffn_type = FfnType::MptGlu;
    let mut wpe = small();
    wpe.attn_config.alibi = false;
    wpe.learned_pos_emb = true;
    wpe.attn_config.attn_type = AttnType::MultiQuery;
    wpe.attn_config.kv_n_heads = 1;
    wpe.attn_config.qk_ln = true;
    vec![
        ("rope+gqa+glu", rope),
        ("wpe+mqa+qk_ln", wpe),
        ("alibi", small()),
    ]
}

#[test]
fn cached_decoding_matches_full_forward_for_every_position_scheme() {
    for (label, c) in positional_variants() {
        let model = c.init::<B>(&Default::default(), 2);
        let ids = batch::<B>();
        let full = to_vec(model.forward(MptInput::new(ids.clone())));
        let mut cache = model.new_cache();
        let mut got = Vec::new();
        let prefill = to_vec(model.forward_cached(ids.clone().narrow(1, 0, 3), None, &mut cache));
        let mut steps = vec![prefill];
        for t in 3..8 {
            steps.push(to_vec(model.forward_cached(
                ids.clone().narrow(1, t, 1),
                None,
                &mut cache,
            )));
        }
        // Reassemble [2, 8, v] from per-step [2, s, v] chunks.
        let v = c.vocab_size;
        for r in 0..2 {
            for (i, chunk) in steps.iter().enumerate() {
                let s = if i == 0 { 3 } else { 1 };
                got.extend_from_slice(&chunk[r * s * v..(r + 1) * s * v]);
            }
        }
        assert!(
            max_abs_diff(&got, &full) <= 2e-5,
            "{label}: {}",
            max_abs_diff(&got, &full)
        );
    }
}

#[test]
fn left_padding_changes_no_real_row_for_every_position_scheme() {
    for (label, c) in positional_variants() {
        let model = c.init::<B>(&Default::default(), 5);
        let prompts = vec![vec![3u32, 9, 27], vec![5, 6, 7, 8, 9, 10, 11]];
        for use_cache in [true, false] {
            let cfg = GenerationConfig {
                max_new_tokens: 6,
                use_cache,
                ..Default::default()
            };
            let together = generate(&model, &prompts, &cfg, None, &Default::default()).unwrap();
            for (r, p) in prompts.iter().enumerate() {
                let alone = generate(
                    &model,
                    std::slice::from_ref(p),
                    &cfg,
                    None,
                    &Default::default(),
                )
                .unwrap();
                assert_eq!(together[r], alone[0], "{label} row {r} cache {use_cache}");
            }
        }
        // And the padded row's logits equal its unpadded logits.
        let padded = MptInput {
            input_ids: Tensor::from_ints([[0, 0, 0, 0, 3, 9, 27]], &Default::default()),
            attention_mask: Some(Tensor::from_data(
                [[false, false, false, false, true, true, true]],
                &Default::default(),
            )),
            sequence_id: None,
        };
        let a = to_vec(model.forward(padded));
        let b = to_vec(model.forward(MptInput::new(Tensor::from_ints(
            [[3, 9, 27]],
            &Default::default(),
        ))));
        let v = c.vocab_size;
        assert!(
            max_abs_diff(&a[4 * v..], &b) <= 1e-5,
            "{label}: {}",
            max_abs_diff(&a[4 * v..], &b)
        );
    }
}
