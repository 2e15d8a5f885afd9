//! HF checkpoint import/export: bit-exact round trips, F16/BF16, shards, composer prefixes, and
//! errors that list every bad tensor.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::prelude::*;
use common::*;
use tessera_model::hf::{self, HfDtype, HfError, SaveOptions, TensorProblem};
use tessera_model::{MptConfig, MptInput};

fn bits(data: &BTreeMap<String, TensorData>) -> BTreeMap<String, Vec<u32>> {
    data.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect()
}

fn write_safetensors(path: &Path, tensors: &BTreeMap<String, (Vec<f32>, Vec<usize>)>) {
    let owned: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, (v, s))| {
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                s.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(
        views,
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
    )
    .unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn copy_config(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("config.json"), to.join("config.json")).unwrap();
}

#[test]
fn export_then_import_round_trips_bit_for_bit() {
    for name in FIXTURES {
        let (config, model) = hf::load::<B>(dir(name), &Default::default()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        hf::save(&model, &config, tmp.path(), HfDtype::F32).unwrap();
        let (config2, model2) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
        assert_eq!(config2, config, "{name}");
        assert_eq!(
            bits(&hf::named_parameters(&model2)),
            bits(&hf::named_parameters(&model)),
            "{name}"
        );
        // Same tensor names, shapes and values as transformers' own file.
        let theirs = read_safetensors(dir(name).join("model.safetensors"));
        let ours = read_safetensors(tmp.path().join("model.safetensors"));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>()
        );
        for (k, (v, s)) in &theirs {
            assert_eq!(&ours[k].1, s, "{k}");
            assert!(
                ours[k]
                    .0
                    .iter()
                    .zip(v)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{k}"
            );
        }
    }
}

#[test]
fn exported_files_look_like_transformers_output() {
    let (config, model) = hf::load::<B>(dir("clip_scale"), &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    hf::save(&model, &config, tmp.path(), HfDtype::F32).unwrap();
    // transformers refuses safetensors without `format: pt` metadata.
    let bytes = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    // Every key transformers wrote is written, with its value where tessera has an opinion.
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir("clip_scale").join("config.json")).unwrap(),
    )
    .unwrap();
    let ours: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap())
            .unwrap();
    for key in theirs.as_object().unwrap().keys() {
        if [
            "transformers_version",
            "dtype",
            "initializer_range",
            "verbose",
        ]
        .contains(&key.as_str())
        {
            continue;
        }
        assert!(ours.get(key).is_some(), "missing top-level key {key}");
    }
    for key in [
        "d_model",
        "n_heads",
        "n_layers",
        "expansion_ratio",
        "max_seq_len",
        "vocab_size",
        "no_bias",
        "layer_norm_epsilon",
        "norm_type",
        "learned_pos_emb",
        "logit_scale",
        "model_type",
        "architectures",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for key in theirs["attn_config"].as_object().unwrap().keys() {
        if key == "model_type" {
            continue;
        }
        assert_eq!(
            ours["attn_config"][key], theirs["attn_config"][key],
            "attn_config.{key}"
        );
    }
}

#[test]
fn random_init_round_trips_through_every_layout_feature() {
    // Biases, GQA, qk_ln, GLU, untied head, learned positions: all tensors transformers lacks.
    let mut c = MptConfig::preset("tiny").unwrap();
    c.vocab_size = 96;
    c.max_seq_len = 32;
    c.no_bias = false;
    c.attention_bias = true;
    c.attn_config.alibi = false;
    c.learned_pos_emb = true;
    c.attn_config.attn_type = tessera_model::config::AttnType::GroupedQuery;
    c.attn_config.kv_n_heads = 2;
    c.attn_config.qk_ln = true;
    c.ffn_config.ffn_type = tessera_model::config::FfnType::MptGlu;
    c.tie_word_embeddings = false;
    c.validate().unwrap();
    let model = c.init::<B>(&Default::default(), 3);
    let tmp = tempfile::tempdir().unwrap();
    hf::save(&model, &c, tmp.path(), HfDtype::F32).unwrap();
    let (c2, model2) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
    assert_eq!(c2, c);
    let before = hf::named_parameters(&model);
    assert!(before.contains_key("transformer.wpe.weight") && before.contains_key("lm_head.weight"));
    assert!(before.contains_key("transformer.blocks.1.ffn.gate_proj.bias"));
    assert!(before.contains_key("transformer.blocks.0.attn.k_ln.bias"));
    assert_eq!(bits(&hf::named_parameters(&model2)), bits(&before));
}

#[test]
fn half_precision_exports_load_to_rounded_values() {
    let (config, model) = hf::load::<B>(dir("tiny_alibi_h4"), &Default::default()).unwrap();
    let orig = hf::named_parameters(&model);
    for (dtype, round) in [
        (
            HfDtype::F16,
            (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (HfDtype::Bf16, |x: f32| half::bf16::from_f32(x).to_f32()),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        hf::save(&model, &config, tmp.path(), dtype).unwrap();
        let (_, loaded) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
        let got = hf::named_parameters(&loaded);
        for (k, v) in &orig {
            let want: Vec<u32> = v
                .clone()
                .into_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(|x| round(x).to_bits())
                .collect();
            let have: Vec<u32> = got[k]
                .clone()
                .into_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect();
            assert_eq!(have, want, "{dtype:?} {k}");
        }
        // Saving the loaded half model again in the same dtype is lossless.
        let tmp2 = tempfile::tempdir().unwrap();
        hf::save(&loaded, &config, tmp2.path(), dtype).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("model.safetensors")).unwrap(),
            std::fs::read(tmp2.path().join("model.safetensors")).unwrap()
        );
    }
}

#[test]
fn sharded_checkpoints_save_and_load() {
    let (config, model) = hf::load::<B>(dir("h6_ffn3"), &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    hf::save_with(
        &model,
        &config,
        tmp.path(),
        SaveOptions {
            dtype: HfDtype::F32,
            max_shard_bytes: 400_000,
        },
    )
    .unwrap();
    assert!(tmp.path().join("model.safetensors.index.json").is_file());
    assert!(!tmp.path().join("model.safetensors").exists());
    let shards: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with("model-").then_some(n)
        })
        .collect();
    assert!(shards.len() >= 3, "{shards:?}");
    let (_, loaded) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
    assert_eq!(
        bits(&hf::named_parameters(&loaded)),
        bits(&hf::named_parameters(&model))
    );
    // Saving unsharded into the same folder removes the stale index and shards.
    hf::save(&model, &config, tmp.path(), HfDtype::F32).unwrap();
    assert!(!tmp.path().join("model.safetensors.index.json").exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

#[test]
fn composer_model_prefix_is_accepted() {
    let src = dir("tiny_alibi_h4");
    let tmp = tempfile::tempdir().unwrap();
    copy_config(&src, tmp.path());
    let prefixed: BTreeMap<String, _> = read_safetensors(src.join("model.safetensors"))
        .into_iter()
        .map(|(k, v)| (format!("model.{k}"), v))
        .collect();
    write_safetensors(&tmp.path().join("model.safetensors"), &prefixed);
    let (_, model) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
    let (_, reference) = hf::load::<B>(&src, &Default::default()).unwrap();
    assert_eq!(
        bits(&hf::named_parameters(&model)),
        bits(&hf::named_parameters(&reference))
    );
}

#[test]
fn tensor_problems_are_reported_together() {
    let src = dir("tiny_alibi_h4");
    let tmp = tempfile::tempdir().unwrap();
    copy_config(&src, tmp.path());
    let mut t = read_safetensors(src.join("model.safetensors"));
    t.remove("transformer.norm_f.weight");
    t.remove("transformer.blocks.1.ffn.up_proj.weight");
    t.insert(
        "transformer.blocks.7.attn.Wqkv.weight".into(),
        (vec![0.0; 4], vec![2, 2]),
    );
    t.get_mut("transformer.blocks.0.attn.out_proj.weight")
        .unwrap()
        .1 = vec![32, 128];
    write_safetensors(&tmp.path().join("model.safetensors"), &t);
    let err = hf::load::<B>(tmp.path(), &Default::default()).unwrap_err();
    let HfError::Tensors { problems, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problems.len(), 4, "{err}");
    assert!(problems.contains(&TensorProblem::Missing {
        name: "transformer.norm_f.weight".into(),
        shape: vec![64]
    }));
    assert!(problems.contains(&TensorProblem::Missing {
        name: "transformer.blocks.1.ffn.up_proj.weight".into(),
        shape: vec![256, 64]
    }));
    assert!(problems.iter().any(|p| matches!(p, TensorProblem::Unexpected { name, .. } if name == "transformer.blocks.7.attn.Wqkv.weight")));
    assert!(problems.contains(&TensorProblem::Shape {
        name: "transformer.blocks.0.attn.out_proj.weight".into(),
        expected: vec![64, 64],
        found: vec![32, 128],
    }));
    let msg = err.to_string();
    assert!(
        msg.contains("4 tensor problem(s)") && msg.contains("norm_f") && msg.contains("blocks.7"),
        "{msg}"
    );
}

#[test]
fn bad_files_are_errors_not_panics() {
    let src = dir("tiny_alibi_h4");
    let tmp = tempfile::tempdir().unwrap();
    // No weights.
    copy_config(&src, tmp.path());
    assert!(matches!(
        hf::load::<B>(tmp.path(), &Default::default()),
        Err(HfError::NoWeights { .. })
    ));
    // Garbage, a header length past the end, and a truncated real file.
    let good = std::fs::read(src.join("model.safetensors")).unwrap();
    let mut huge = 1_000_000u64.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    for bytes in [
        b"not a safetensors file".to_vec(),
        huge,
        good[..good.len() - 10].to_vec(),
        vec![],
    ] {
        std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
        let err = hf::load::<B>(tmp.path(), &Default::default()).unwrap_err();
        assert!(matches!(err, HfError::Safetensors { .. }), "{err}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
    // A broken index.
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        "{\"weight_map\": 3}",
    )
    .unwrap();
    let err = hf::load::<B>(tmp.path(), &Default::default()).unwrap_err();
    assert!(err.to_string().contains("weight_map"), "{err}");
    // A config error names the file and the field.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("config.json"),
        "{\"d_model\": 64, \"n_heads\": 5}",
    )
    .unwrap();
    let err = hf::load::<B>(bad.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("n_heads"),
        "{err}"
    );
}

#[test]
fn save_rejects_a_config_that_does_not_describe_the_model() {
    let (mut config, model) = hf::load::<B>(dir("tiny_alibi_h4"), &Default::default()).unwrap();
    config.vocab_size = 600;
    let tmp = tempfile::tempdir().unwrap();
    let err = hf::save(&model, &config, tmp.path(), HfDtype::F32).unwrap_err();
    assert!(err.to_string().contains("transformer.wte.weight"), "{err}");
    assert!(!tmp.path().join("model.safetensors").exists());
}

#[test]
fn loaded_half_model_still_generates_sensibly() {
    // A bf16 export of a fixture keeps logits close (weights rounded to 8 mantissa bits).
    let (config, model) = hf::load::<B>(dir("clip_scale"), &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    hf::save(&model, &config, tmp.path(), HfDtype::Bf16).unwrap();
    let (_, half) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
    let x = || {
        MptInput::new(Tensor::<B, 2, Int>::from_ints(
            [[1, 2, 3, 4, 5]],
            &Default::default(),
        ))
    };
    let a = to_vec(model.forward(x()));
    let b = to_vec(half.forward(x()));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&a, &b) < 0.05 * scale,
        "{} vs scale {scale}",
        max_abs_diff(&a, &b)
    );
}
