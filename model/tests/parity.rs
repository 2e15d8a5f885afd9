//! Parity with transformers' `MptForCausalLM` on the three fixture checkpoints
//! (`fixtures/mpt/`, produced by `gen_mpt.py`; see the shared fixtures README): logits, hidden states,
//! loss, every gradient, one SGD step, greedy generation with and without a KV cache.

mod common;

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use common::*;
use tessera_model::generate::{GenerationConfig, generate};
use tessera_model::loss::{IGNORE_INDEX, mean_cross_entropy, token_cross_entropy};
use tessera_model::{Mpt, MptInput, hf};

/// The shared fixtures README: logits within 1e-4 absolute (values reach |22|).
const LOGITS_TOL: f32 = 1e-4;

fn load<Bk: Backend>(name: &str) -> Mpt<Bk> {
    hf::load::<Bk>(dir(name), &Default::default()).unwrap().1
}

#[test]
fn per_sequence_logits_match_transformers() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (ids, shape) = npy_i64(name, "input_ids.npy");
        let (m, _) = npy_i64(name, "attention_mask.npy");
        for row in 0..2 {
            let len = m[row * shape[1]..(row + 1) * shape[1]].iter().sum::<i64>() as usize;
            let row_ids = &ids[row * shape[1]..row * shape[1] + len];
            let logits = to_vec(model.forward(MptInput::new(common::ids::<B>(row_ids, [1, len]))));
            let (want, wshape) = npy_f32(name, &format!("logits_seq{row}.npy"));
            assert_eq!(wshape, vec![len, model.config().vocab_size]);
            let diff = max_abs_diff(&logits, &want);
            assert!(diff <= LOGITS_TOL, "{name} seq{row}: max |diff| {diff}");
        }
    }
}

#[test]
fn batched_masked_logits_match_transformers_at_real_positions() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (ids, shape) = npy_i64(name, "input_ids.npy");
        let (m, _) = npy_i64(name, "attention_mask.npy");
        let input = MptInput {
            input_ids: common::ids::<B>(&ids, [shape[0], shape[1]]),
            attention_mask: Some(mask::<B>(&m, [shape[0], shape[1]])),
            sequence_id: None,
        };
        let got = to_vec(model.forward(input));
        let (want, _) = npy_f32(name, "logits.npy");
        let v = model.config().vocab_size;
        let mut worst = 0f32;
        for (pos, &real) in m.iter().enumerate() {
            if real == 1 {
                worst = worst.max(max_abs_diff(
                    &got[pos * v..(pos + 1) * v],
                    &want[pos * v..(pos + 1) * v],
                ));
            }
        }
        assert!(worst <= LOGITS_TOL, "{name}: max |diff| {worst}");
    }
}

#[test]
fn hidden_states_match_transformers() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (ids, shape) = npy_i64(name, "input_ids.npy");
        let row = &ids[shape[1]..2 * shape[1]];
        let hidden =
            model.forward_hidden_states(MptInput::new(common::ids::<B>(row, [1, shape[1]])));
        let (want, wshape) = npy_f32(name, "hidden_states_seq1.npy");
        assert_eq!(wshape[0], hidden.len());
        let per = wshape[1] * wshape[2];
        for (i, h) in hidden.into_iter().enumerate() {
            let diff = max_abs_diff(&to_vec(h), &want[i * per..(i + 1) * per]);
            assert!(diff <= 2e-5, "{name} hidden[{i}]: {diff}");
        }
    }
}

/// Batched forward + per-token loss of a fixture, on any backend.
fn batch_loss<Bk: Backend>(model: &Mpt<Bk>, name: &str) -> (Tensor<Bk, 2>, Tensor<Bk, 1>) {
    let (ids, shape) = npy_i64(name, "input_ids.npy");
    let (m, _) = npy_i64(name, "attention_mask.npy");
    let (t, tshape) = npy_i64(name, "target_ids.npy");
    let logits = model.forward(MptInput {
        input_ids: common::ids::<Bk>(&ids, [shape[0], shape[1]]),
        attention_mask: Some(mask::<Bk>(&m, [shape[0], shape[1]])),
        sequence_id: None,
    });
    // Targets are input_ids[:, 1:]; the last position has none.
    let logits = logits.narrow(1, 0, tshape[1]);
    let targets = common::ids::<Bk>(&t, [tshape[0], tshape[1]]);
    (
        token_cross_entropy(logits.clone(), targets.clone(), IGNORE_INDEX),
        mean_cross_entropy(logits, targets, IGNORE_INDEX),
    )
}

#[test]
fn per_token_and_mean_loss_match_transformers() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (per_token, mean) = batch_loss(&model, name);
        let (want, _) = npy_f32(name, "per_token_loss.npy");
        let diff = max_abs_diff(&to_vec(per_token), &want);
        assert!(diff <= 1e-5, "{name} per-token loss: {diff}");
        let want_mean = index(name)["mean_loss"].as_f64().unwrap();
        let got = mean.into_scalar() as f64;
        assert!(
            (got - want_mean).abs() <= 1e-5,
            "{name}: mean loss {got} vs {want_mean}"
        );
    }
}

#[test]
fn every_gradient_matches_transformers_and_one_sgd_step_reproduces_the_loss() {
    for name in FIXTURES {
        let model = load::<AD>(name);
        let (_, mean) = batch_loss(&model, name);
        let grads = mean.backward();
        let got = named_grads(&model, &grads);
        let want = read_safetensors(dir(name).join("grads.safetensors"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{name}: parameter sets"
        );
        assert_gradients_match(name, &got, &want);

        let stepped = model.map(&mut Sgd {
            grads: &grads,
            lr: 0.1,
        });
        let (_, after) = batch_loss(&stepped.valid(), name);
        let want_after = index(name)["sgd"]["loss_after_one_step"].as_f64().unwrap();
        let got_after = after.into_scalar() as f64;
        assert!(
            (got_after - want_after).abs() <= 1e-4,
            "{name}: loss after SGD {got_after} vs {want_after}"
        );
    }
}

#[test]
fn fused_loss_sum_matches_transformers_loss_and_every_gradient() {
    // `Mpt::loss_sum` (the trainer's loss: unembedding and cross-entropy fused, see
    // `lm_loss`) against the same fixtures as the unfused path above, at the same tolerances.
    for name in FIXTURES {
        let model = load::<AD>(name);
        let (ids, shape) = npy_i64(name, "input_ids.npy");
        let (m, _) = npy_i64(name, "attention_mask.npy");
        let (t, tshape) = npy_i64(name, "target_ids.npy");
        // Targets cover seq - 1 positions; the last position predicts nothing.
        let mut full = vec![IGNORE_INDEX; shape[0] * shape[1]];
        for r in 0..tshape[0] {
            full[r * shape[1]..r * shape[1] + tshape[1]]
                .copy_from_slice(&t[r * tshape[1]..(r + 1) * tshape[1]]);
        }
        let n_tokens = t.iter().filter(|&&x| x != IGNORE_INDEX).count() as f64;
        let input = MptInput {
            input_ids: common::ids::<AD>(&ids, [shape[0], shape[1]]),
            attention_mask: Some(mask::<AD>(&m, [shape[0], shape[1]])),
            sequence_id: None,
        };
        let sum = model.loss_sum(input, common::ids::<AD>(&full, [shape[0], shape[1]]));
        let mean = sum / n_tokens;
        let want_mean = index(name)["mean_loss"].as_f64().unwrap();
        let got = mean.clone().into_scalar() as f64;
        assert!(
            (got - want_mean).abs() <= 1e-5,
            "{name}: mean loss {got} vs {want_mean}"
        );
        let got = named_grads(&model, &mean.backward());
        let want = read_safetensors(dir(name).join("grads.safetensors"));
        assert_gradients_match(name, &got, &want);
    }
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_cache() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (prompt, _) = npy_i64(name, "prompt_ids.npy");
        let (want, _) = npy_i64(name, "generated_ids.npy");
        let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
        let want: Vec<u32> = want.iter().map(|&x| x as u32).collect();
        for use_cache in [true, false] {
            let cfg = GenerationConfig {
                max_new_tokens: want.len(),
                use_cache,
                ..Default::default()
            };
            let got = generate(
                &model,
                std::slice::from_ref(&prompt),
                &cfg,
                None,
                &Default::default(),
            )
            .unwrap();
            assert_eq!(got[0].ids, want, "{name} use_cache={use_cache}");
        }
    }
}

#[test]
fn incremental_decoding_matches_full_forward() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (ids, shape) = npy_i64(name, "input_ids.npy");
        let row = &ids[shape[1]..2 * shape[1]]; // 33 real tokens
        let full = to_vec(model.forward(MptInput::new(common::ids::<B>(row, [1, shape[1]]))));
        let v = model.config().vocab_size;
        // A 10-token prefill, or a single token, then one token at a time.
        for prefill in [10, 1] {
            let mut cache = model.new_cache();
            let mut got = to_vec(model.forward_cached(
                common::ids::<B>(&row[..prefill], [1, prefill]),
                None,
                &mut cache,
            ));
            for t in prefill..row.len() {
                got.extend(to_vec(model.forward_cached(
                    common::ids::<B>(&row[t..t + 1], [1, 1]),
                    None,
                    &mut cache,
                )));
            }
            assert_eq!(cache.len(), row.len());
            // Issue 2 asks for 1e-5 (logits reach |24| here). Measured: 0, bit for bit, since
            // every CPU product takes gemm's packed kernel whatever its row count and the fused
            // softmax sums a masked row like its unmasked prefix (`kernels::matmul`,
            // `sum` in `kernels/rows.rs`). Before those two, 1.2e-5.
            let diff = max_abs_diff(&got, &full);
            assert!(
                diff <= 1e-5,
                "{name}, prefill {prefill}: cached vs full logits {diff} (vocab {v})"
            );
        }
    }
}

#[test]
fn left_padded_batch_generation_equals_per_row_generation() {
    for name in FIXTURES {
        let model = load::<B>(name);
        let (ids, shape) = npy_i64(name, "input_ids.npy");
        let prompts: Vec<Vec<u32>> = vec![
            ids[..5].iter().map(|&x| x as u32).collect(),
            ids[shape[1]..shape[1] + 12]
                .iter()
                .map(|&x| x as u32)
                .collect(),
            ids[3..4].iter().map(|&x| x as u32).collect(),
        ];
        for use_cache in [true, false] {
            let cfg = GenerationConfig {
                max_new_tokens: 10,
                use_cache,
                ..Default::default()
            };
            let batch = generate(&model, &prompts, &cfg, None, &Default::default()).unwrap();
            for (r, p) in prompts.iter().enumerate() {
                let alone = generate(
                    &model,
                    std::slice::from_ref(p),
                    &cfg,
                    None,
                    &Default::default(),
                )
                .unwrap();
                assert_eq!(batch[r], alone[0], "{name} row {r} use_cache={use_cache}");
            }
        }
    }
}

#[test]
#[ignore = "needs shared fixtures"]
fn icl_model_with_full_vocab_matches_transformers() {
    let dir = tessera_testkit::shared_fixture("icl_model");
    let (config, model) = hf::load::<B>(&dir, &Default::default()).unwrap();
    assert_eq!(config.vocab_size, 50432);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(config.num_params(), index["n_params"].as_u64().unwrap());
    let (ids, shape) = tessera_testkit::read_npy_i64(dir.join("check_input_ids.npy"));
    let len = *shape.last().unwrap();
    let logits = model.forward(MptInput::new(common::ids::<B>(&ids, [1, len])));
    let last = to_vec(logits.narrow(1, len - 1, 1));
    let (want, _) = tessera_testkit::read_npy_f32(dir.join("check_logits_last.npy"));
    let diff = max_abs_diff(&last, &want);
    assert!(diff <= LOGITS_TOL, "max |diff| {diff}");
}

/// Every parameter's gradient within 1e-4 relative (`max |got - want| / max |want|`) of
/// transformers'. Aim 1e-4 (issue 2); the shared fixtures README suggests 1e-3.
fn assert_gradients_match(
    name: &str,
    got: &std::collections::BTreeMap<String, Vec<f32>>,
    want: &std::collections::BTreeMap<String, (Vec<f32>, Vec<usize>)>,
) {
    let mut worst = (0f32, String::new());
    for (pname, (w, _)) in want {
        let scale = w.iter().map(|x| x.abs()).fold(0f32, f32::max).max(1e-12);
        let rel = max_abs_diff(&got[pname], w) / scale;
        if rel > worst.0 {
            worst = (rel, pname.clone());
        }
    }
    assert!(
        worst.0 <= 1e-4,
        "{name}: worst relative gradient error {} at {}",
        worst.0,
        worst.1
    );
}
