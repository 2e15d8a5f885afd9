//! LoRA on the fixture models: adapters attached, merged, saved in PEFT's format and read back,
//! trained (gradients only for the adapters, checked against finite differences), held over a
//! bf16 base, and served per batch row.
//!
//! The PEFT interop itself (Python's `peft` reading tessera's adapters and the reverse) is in
//! `tests/peft_python.rs`.

mod common;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use common::{AD, B, dir, max_abs_diff, to_vec};
use tessera_model::hf;
use tessera_model::lora::{
    self, Adapter, AdapterBank, LoraConfig, LoraInit, RowAdapters, TargetModule, peft,
};
use tessera_model::loss::IGNORE_INDEX;
use tessera_model::{Mpt, MptConfig, MptInput};

fn fixture<Bk: Backend>() -> (MptConfig, Mpt<Bk>) {
    hf::load::<Bk>(dir("tiny_alibi_h4"), &Default::default()).unwrap()
}

/// A GLU model (the fixtures are MLP), so gate_proj is covered too.
fn glu<Bk: Backend>() -> Mpt<Bk> {
    MptConfig::from_json_str(
        r#"{"d_model": 48, "n_heads": 4, "n_layers": 2, "vocab_size": 512, "max_seq_len": 32,
            "expansion_ratio": 2, "ffn_config": {"ffn_type": "mptglu"}, "no_bias": false,
            "attn_config": {"alibi": true}}"#,
        "glu",
    )
    .unwrap()
    .init::<Bk>(&Default::default(), 11)
}

fn lora_cfg(targets: &[TargetModule], init: LoraInit) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: targets.to_vec(),
        use_rslora: false,
        init_lora_weights: init,
    }
}

fn random_adapter<Bk: Backend>(
    model: &MptConfig,
    targets: &[TargetModule],
    seed: u64,
) -> Adapter<Bk> {
    Adapter::init(
        &lora_cfg(targets, LoraInit::Random),
        model,
        seed,
        &Default::default(),
    )
    .unwrap()
}

fn ids<Bk: Backend>(rows: &[&[i64]]) -> Tensor<Bk, 2, Int> {
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(
        TensorData::new(flat, [rows.len(), rows[0].len()]),
        &Default::default(),
    )
}

const ROW: [i64; 8] = [219, 482, 459, 7, 301, 88, 15, 400];

fn logits<Bk: Backend>(model: &Mpt<Bk>, rows: &[&[i64]]) -> Vec<f32> {
    to_vec(model.forward(MptInput::new(ids(rows))))
}

/// Merged weights round differently (`W + s B A` is one f32 sum, the adapter path two
/// products): within 1e-5, or 1e-6 of the logits' largest magnitude when that exceeds 10 (the
/// random adapters here push logits to ~18).
fn merged_close(diff: f32, logits: &[f32]) -> bool {
    let scale = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    diff < 1e-5f32.max(1e-6 * scale)
}

#[test]
fn a_new_peft_initialised_adapter_changes_nothing() {
    let (cfg, base) = fixture::<B>();
    let want = logits(&base, &[&ROW]);
    let adapter = Adapter::init(
        &lora_cfg(&TargetModule::ALL, LoraInit::Standard),
        &cfg,
        3,
        &Default::default(),
    )
    .unwrap();
    let adapted = base.with_adapter(adapter).unwrap();
    assert_eq!(
        logits(&adapted, &[&ROW]),
        want,
        "B = 0 must leave the output exactly"
    );
}

#[test]
fn adapted_and_merged_models_agree() {
    let clip = hf::load::<B>(dir("clip_scale"), &Default::default())
        .unwrap()
        .1;
    for (name, base) in [
        ("mlp", fixture::<B>().1),
        ("glu", glu::<B>()),
        ("clip_qkv", clip),
    ] {
        let cfg = base.config().clone();
        let adapter = random_adapter::<B>(&cfg, &TargetModule::ALL, 5);
        let plain = logits(&base, &[&ROW]);
        let merged = lora::merge(base.clone(), &adapter).unwrap();
        let adapted = base.with_adapter(adapter).unwrap();
        let (a, m) = (logits(&adapted, &[&ROW]), logits(&merged, &[&ROW]));
        assert!(
            max_abs_diff(&a, &plain) > 1e-2,
            "{name}: the adapter must matter"
        );
        let diff = max_abs_diff(&a, &m);
        assert!(merged_close(diff, &a), "{name}: adapted vs merged {diff}");
        // Merging the attached adapter gives the same model.
        let again = logits(&adapted.clone().merge_adapter(), &[&ROW]);
        assert!(max_abs_diff(&again, &m) < 1e-6);
        assert!(!adapted.merge_adapter().has_adapter());
    }
}

#[test]
fn attaching_checks_the_model_and_detaching_returns_the_adapter() {
    let (cfg, base) = fixture::<B>();
    let adapter = random_adapter::<B>(&cfg, &[TargetModule::Wqkv], 1);
    let adapted = base.clone().with_adapter(adapter.clone()).unwrap();
    let again = adapted.clone().with_adapter(adapter.clone()).unwrap_err();
    assert!(again.to_string().contains("already carries"), "{again}");
    let (plain, back) = adapted.without_adapter();
    assert!(!plain.has_adapter());
    assert_eq!(logits(&plain, &[&ROW]), logits(&base, &[&ROW]));
    let back = back.unwrap();
    assert_eq!(
        peft::adapter_tensors(&back),
        peft::adapter_tensors(&adapter)
    );
    // An adapter for another shape is refused with the layer named.
    let other = glu::<B>();
    let e = other.with_adapter(adapter).unwrap_err().to_string();
    assert!(e.contains("attn.Wqkv") || e.contains("blocks"), "{e}");
    // A model carrying an adapter is not silently exported without it.
    let dirx = tempfile::tempdir().unwrap();
    let adapted = base
        .with_adapter(random_adapter::<B>(&cfg, &[TargetModule::Wqkv], 1))
        .unwrap();
    let e = hf::save(&adapted, &cfg, dirx.path(), hf::HfDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("LoRA adapter"), "{e}");
}

#[test]
fn peft_files_round_trip() {
    let (cfg, base) = fixture::<B>();
    let mut c = lora_cfg(
        &[TargetModule::Wqkv, TargetModule::DownProj],
        LoraInit::Random,
    );
    c.use_rslora = true;
    let adapter = Adapter::<B>::init(&c, &cfg, 9, &Default::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    peft::save(&adapter, out.path(), Some("fixtures/mpt/tiny_alibi_h4")).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join(peft::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["Wqkv", "down_proj"])
    );
    let bytes = std::fs::read(out.path().join(peft::WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names.len(), 2 * 2 * 2);
    assert_eq!(
        names[0],
        "base_model.model.transformer.blocks.0.attn.Wqkv.lora_A.weight"
    );
    assert_eq!(
        st.tensor("base_model.model.transformer.blocks.1.ffn.down_proj.lora_B.weight")
            .unwrap()
            .shape(),
        &[64, 4]
    );
    let back = peft::load::<B>(out.path(), &cfg, &Default::default()).unwrap();
    assert_eq!(back.config, c);
    assert_eq!(
        peft::adapter_tensors(&back),
        peft::adapter_tensors(&adapter)
    );
    let a = logits(&base.clone().with_adapter(adapter).unwrap(), &[&ROW]);
    let b = logits(&base.with_adapter(back).unwrap(), &[&ROW]);
    assert_eq!(a, b);
}

/// Writes an adapter folder with the given tensors and config.
fn write_adapter(
    dir: &std::path::Path,
    config: &serde_json::Value,
    tensors: &BTreeMap<String, TensorData>,
) {
    std::fs::write(dir.join(peft::CONFIG_FILE), config.to_string()).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    d.shape.to_vec(),
                    d.as_bytes(),
                )
                .unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join(peft::WEIGHTS_FILE), bytes).unwrap();
}

#[test]
fn loading_names_the_file_and_every_bad_tensor() {
    let (cfg, _) = fixture::<B>();
    let c = lora_cfg(&[TargetModule::Wqkv], LoraInit::Random);
    let adapter = Adapter::<B>::init(&c, &cfg, 2, &Default::default()).unwrap();
    let mut tensors = peft::adapter_tensors(&adapter);
    let a0 = "base_model.model.transformer.blocks.0.attn.Wqkv.lora_A.weight";
    let b1 = "base_model.model.transformer.blocks.1.attn.Wqkv.lora_B.weight";
    tensors.remove(a0);
    tensors.insert(b1.into(), TensorData::new(vec![0f32; 12], [3, 4]));
    tensors.insert(
        "base_model.model.transformer.blocks.0.attn.out_proj.lora_A.weight".into(),
        TensorData::new(vec![0f32; 4 * 64], [4, 64]),
    );
    let out = tempfile::tempdir().unwrap();
    write_adapter(out.path(), &c.to_adapter_config(None), &tensors);
    let e = peft::load::<B>(out.path(), &cfg, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains(peft::WEIGHTS_FILE), "{e}");
    assert!(e.contains("3 tensor problem(s)"), "{e}");
    assert!(e.contains(&format!("missing {a0}")), "{e}");
    assert!(
        e.contains(&format!("{b1}: shape [3, 4], expected [192, 4]")),
        "{e}"
    );
    assert!(
        e.contains("unexpected base_model.model.transformer.blocks.0.attn.out_proj"),
        "{e}"
    );

    // A config field tessera does not implement is refused by name, with the file.
    let mut bad = c.to_adapter_config(None);
    bad["use_dora"] = serde_json::json!(true);
    write_adapter(out.path(), &bad, &peft::adapter_tensors(&adapter));
    let e = peft::load::<B>(out.path(), &cfg, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(peft::CONFIG_FILE) && e.contains("use_dora"),
        "{e}"
    );

    // An adapter for a deeper model.
    let mut deeper = cfg.clone();
    deeper.n_layers = 3;
    write_adapter(
        out.path(),
        &c.to_adapter_config(None),
        &peft::adapter_tensors(&adapter),
    );
    let e = peft::load::<B>(out.path(), &deeper, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing base_model.model.transformer.blocks.2.attn.Wqkv.lora_A.weight"),
        "{e}"
    );
}

/// Every float parameter's dtype, whether it has a gradient, and its size, by module path.
struct Inspect<'a> {
    path: Vec<String>,
    grads: Option<&'a <AD as burn::tensor::backend::AutodiffBackend>::Gradients>,
    out: BTreeMap<String, (DType, bool, usize)>,
}

impl ModuleVisitor<AD> for Inspect<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        let has = self.grads.is_some_and(|g| param.val().grad(g).is_some());
        let numel = param.val().shape().num_elements();
        self.out
            .insert(self.path.join("."), (param.val().dtype(), has, numel));
    }
}

fn inspect(
    model: &Mpt<AD>,
    grads: Option<&<AD as burn::tensor::backend::AutodiffBackend>::Gradients>,
) -> BTreeMap<String, (DType, bool, usize)> {
    let mut v = Inspect {
        path: Vec::new(),
        grads,
        out: BTreeMap::new(),
    };
    model.visit(&mut v);
    v.out
}

fn targets<Bk: Backend>() -> Tensor<Bk, 2, Int> {
    let mut t: Vec<i64> = ROW[1..].to_vec();
    t.push(IGNORE_INDEX);
    ids(&[&t])
}

#[test]
fn only_the_adapter_gets_gradients() {
    let (cfg, base) = fixture::<AD>();
    let adapter = random_adapter::<AD>(&cfg, &[TargetModule::Wqkv, TargetModule::UpProj], 4);
    let model = base.with_adapter(adapter).unwrap();
    let loss = model.loss_sum(MptInput::new(ids(&[&ROW])), targets());
    let grads = loss.backward();
    let params = inspect(&model, Some(&grads));
    let with_grad: Vec<&String> = params.iter().filter(|(_, v)| v.1).map(|(k, _)| k).collect();
    assert_eq!(with_grad.len(), 2 * 2 * 2, "{with_grad:?}");
    assert!(
        with_grad.iter().all(|p| p.contains(".lora.")),
        "{with_grad:?}"
    );
    let trainable: Vec<String> = lora::trainable_params(&model)
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert_eq!(
        trainable,
        with_grad.into_iter().cloned().collect::<Vec<_>>()
    );
    // A plain model trains everything.
    assert_eq!(
        lora::trainable_params(&fixture::<B>().1).len(),
        params.len() - 8
    );
}

/// All adapter parameters of a model, flattened in visiting order.
fn adapter_values(model: &Mpt<B>) -> Vec<Vec<f32>> {
    let a = model.adapter().unwrap();
    a.layers()
        .flat_map(|(_, _, l)| [to_vec(l.lora_a.val()), to_vec(l.lora_b.val())])
        .collect()
}

/// `model` with its adapter's parameters replaced by `values` (same order as `adapter_values`).
fn with_adapter_values(model: &Mpt<B>, values: &[Vec<f32>]) -> Mpt<B> {
    let (base, adapter) = model.clone().without_adapter();
    let mut adapter = adapter.unwrap();
    let mut k = 0;
    for block in adapter.blocks.iter_mut() {
        for t in TargetModule::ALL {
            if let Some(l) = block.slot(t).as_mut() {
                for p in [&mut l.lora_a, &mut l.lora_b] {
                    let shape = p.dims();
                    *p = Param::from_tensor(Tensor::from_data(
                        TensorData::new(values[k].clone(), shape),
                        &Default::default(),
                    ));
                    k += 1;
                }
            }
        }
    }
    base.with_adapter(adapter).unwrap()
}

/// A random adapter on every layer scaled as a trained one might be (`alpha / r` = 1/4), so
/// that the loss is smooth enough for finite differences.
fn small_adapter<Bk: Backend>(cfg: &MptConfig) -> Adapter<Bk> {
    let mut c = lora_cfg(&TargetModule::ALL, LoraInit::Random);
    c.lora_alpha = 1.0;
    Adapter::init(&c, cfg, 8, &Default::default()).unwrap()
}

#[test]
fn adapter_gradients_match_finite_differences() {
    // The fused CPU kernels (linear, attention, the unembedding loss) carry the gradient to
    // the adapters on Autodiff<Flex>; a central difference of the loss along a random
    // direction of all adapter parameters must agree with it.
    for (name, base_ad, base) in [
        ("mlp", fixture::<AD>().1, fixture::<B>().1),
        ("glu", glu::<AD>(), glu::<B>()),
    ] {
        let cfg = base.config().clone();
        let row: Vec<i64> = ROW.iter().map(|&t| t % cfg.vocab_size as i64).collect();
        let tgt: Vec<i64> = row[1..].iter().copied().chain([IGNORE_INDEX]).collect();
        let model_ad = base_ad.with_adapter(small_adapter::<AD>(&cfg)).unwrap();
        let loss = model_ad.loss_sum(MptInput::new(ids(&[&row])), ids(&[&tgt]));
        let grads = loss.backward();
        let adapter = model_ad.adapter().unwrap();
        let g: Vec<Vec<f32>> = adapter
            .layers()
            .flat_map(|(_, _, l)| {
                [&l.lora_a, &l.lora_b].map(|p| {
                    p.val()
                        .grad(&grads)
                        .expect("adapter gradient")
                        .into_data()
                        .to_vec::<f32>()
                        .unwrap()
                })
            })
            .collect();

        let model = base.with_adapter(small_adapter::<B>(&cfg)).unwrap();
        let theta = adapter_values(&model);
        // A fixed pseudo-random direction.
        let mut state = 12345u64;
        let dir: Vec<Vec<f32>> = theta
            .iter()
            .map(|t| {
                t.iter()
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                    })
                    .collect()
            })
            .collect();
        let analytic: f64 = g
            .iter()
            .zip(&dir)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64))
            .sum();
        let loss_at = |eps: f32| -> f64 {
            let values: Vec<Vec<f32>> = theta
                .iter()
                .zip(&dir)
                .map(|(t, d)| t.iter().zip(d).map(|(x, v)| x + eps * v).collect())
                .collect();
            let m = with_adapter_values(&model, &values);
            m.loss_sum(MptInput::new(ids(&[&row])), ids(&[&tgt]))
                .into_scalar() as f64
        };
        // Central differences at h and h/2, Richardson-extrapolated (error O(h⁴), not O(h²)).
        let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
        let h = 4e-3;
        let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let rel = (numeric - analytic).abs() / analytic.abs().max(1e-3);
        assert!(
            analytic.abs() > 1e-2 && rel < 5e-3,
            "{name}: directional derivative {analytic} vs finite difference {numeric} (rel {rel})"
        );
    }
}

#[test]
fn a_bf16_base_halves_its_matrices_and_keeps_adapters_f32() {
    let (cfg, base) = fixture::<AD>();
    let adapter = random_adapter::<AD>(&cfg, &TargetModule::ALL, 6);
    let f32_model = base.with_adapter(adapter).unwrap();
    let bf16_model = f32_model.clone().with_base_dtype(FloatDType::BF16).unwrap();
    let params = inspect(&bf16_model, None);
    for (path, (dtype, _, _)) in &params {
        // Matrices of the base: linear weights and the embedding; norms stay f32.
        let base_matrix =
            !path.contains(".lora.") && path.ends_with("weight") && !path.contains("norm");
        let want = if base_matrix { DType::BF16 } else { DType::F32 };
        assert_eq!(*dtype, want, "{path}");
    }
    let bytes = |m: &Mpt<AD>| -> usize {
        inspect(m, None)
            .into_iter()
            .filter(|(p, _)| !p.contains(".lora."))
            .map(|(_, (d, _, n))| d.size() * n)
            .sum()
    };
    // The fixture has no biases and its norms are 1/300 of the weights.
    let ratio = bytes(&bf16_model) as f64 / bytes(&f32_model) as f64;
    assert!((0.5..0.51).contains(&ratio), "base bytes ratio {ratio}");
    // lora::training_memory's arithmetic counts exactly these bytes.
    let all: usize = params.values().map(|(d, _, n)| d.size() * n).sum();
    let lora_cfg = bf16_model.adapter().unwrap().config;
    let est = lora::training_memory(&cfg, Some(&lora_cfg), FloatDType::BF16).unwrap();
    assert_eq!(est.weight_bytes, all as u64);
    let trainable: usize = params
        .iter()
        .filter(|(p, _)| p.contains(".lora."))
        .map(|(_, (_, _, n))| n)
        .sum();
    assert_eq!(est.trainable_params, trainable as u64);
    // Forward within bf16 rounding of the f32 base; gradients for the adapters only.
    let input = || MptInput::new(ids::<AD>(&[&ROW]));
    let a = to_vec(f32_model.forward(input()));
    let b = to_vec(bf16_model.forward(input()));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&a, &b);
    assert!(
        diff > 0.0 && diff < 0.05 * scale,
        "bf16 base off by {diff} (scale {scale})"
    );
    for model in [&f32_model, &bf16_model] {
        let grads = model.loss_sum(input(), targets()).backward();
        let params = inspect(model, Some(&grads));
        assert!(
            params
                .iter()
                .all(|(p, (_, g, _))| *g == p.contains(".lora."))
        );
    }
    assert!(fixture::<AD>().1.with_base_dtype(FloatDType::BF16).is_err());
    // Merging a bf16 base keeps bf16 storage.
    let merged = bf16_model.merge_adapter();
    assert_eq!(merged.blocks[0].attn.wqkv.weight.val().dtype(), DType::BF16);
}

#[test]
fn rows_of_one_batch_each_get_their_own_adapter() {
    let (cfg, base) = fixture::<B>();
    let first = random_adapter::<B>(&cfg, &TargetModule::ALL, 21);
    let second = random_adapter::<B>(&cfg, &[TargetModule::Wqkv, TargetModule::DownProj], 22);
    let mut bank = AdapterBank::new();
    let k1 = bank.add("first", first.clone());
    let k2 = bank.add("second", second.clone());
    let rows: [[i64; 8]; 3] = [
        ROW,
        [5, 6, 7, 8, 9, 10, 11, 12],
        [300, 200, 100, 50, 25, 12, 6, 3],
    ];
    let selection = [Some(k1), None, Some(k2)];
    let solo = [
        base.clone().with_adapter(first.clone()).unwrap(),
        base.clone(),
        base.clone().with_adapter(second.clone()).unwrap(),
    ];
    let merged = [
        lora::merge(base.clone(), &first).unwrap(),
        base.clone(),
        lora::merge(base.clone(), &second).unwrap(),
    ];
    let dev = Default::default();
    let select = RowAdapters::new(&bank, &selection, &dev).unwrap();
    let batch: Vec<&[i64]> = rows.iter().map(|r| r.as_slice()).collect();
    let full = model_rows(base.forward_with_adapters(MptInput::new(ids(&batch)), &select));
    for i in 0..3 {
        let alone = logits(&solo[i], &[&rows[i]]);
        let diff = max_abs_diff(&full[i], &alone);
        assert!(diff < 1e-5, "row {i}: batch vs alone {diff}");
        let diff = max_abs_diff(&full[i], &logits(&merged[i], &[&rows[i]]));
        assert!(
            merged_close(diff, &full[i]),
            "row {i}: batch vs merged {diff}"
        );
    }
    // The adapters really differ per row.
    assert!(max_abs_diff(&full[0], &logits(&base, &[&rows[0]])) > 1e-2);

    // Cached decoding: a prefill of 5 tokens, then 3 one-token steps, per-row adapters all
    // the way, against each row decoded alone with its adapter attached.
    let mut cache = base.new_cache();
    let mut solo_caches: Vec<_> = solo.iter().map(|m| m.new_cache()).collect();
    for (start, len) in [(0, 5), (5, 1), (6, 1), (7, 1)] {
        let part: Vec<&[i64]> = rows.iter().map(|r| &r[start..start + len]).collect();
        let out =
            model_rows(base.forward_cached_with_adapters(ids(&part), None, &mut cache, &select));
        for i in 0..3 {
            let alone = to_vec(solo[i].forward_cached(ids(&[part[i]]), None, &mut solo_caches[i]));
            let diff = max_abs_diff(&out[i], &alone);
            assert!(
                diff < 1e-5,
                "row {i}, tokens {start}..{}: {diff}",
                start + len
            );
        }
        if start + len == 8 {
            // The last step equals the full forward's last position.
            let v = cfg.vocab_size;
            for i in 0..3 {
                let last = &full[i][7 * v..8 * v];
                assert!(
                    max_abs_diff(&out[i], last) < 1e-5,
                    "row {i}: cached vs full"
                );
            }
        }
    }

    // Every row on one adapter (no gather), and a selection the bank cannot serve.
    let all = RowAdapters::new(&bank, &[Some(k2), Some(k2)], &dev).unwrap();
    let two: Vec<&[i64]> = vec![&rows[0], &rows[2]];
    let out = model_rows(base.forward_with_adapters(MptInput::new(ids(&two)), &all));
    assert!(max_abs_diff(&out[1], &logits(&solo[2], &[&rows[2]])) < 1e-5);
    let e = RowAdapters::new(&bank, &[None, Some(2)], &dev).unwrap_err();
    assert!(e.to_string().contains("row 1 selects adapter 2"), "{e}");
}

/// Logits `[batch, s, v]` split per row.
fn model_rows(t: Tensor<B, 3>) -> Vec<Vec<f32>> {
    let [b, s, v] = t.dims();
    let flat = to_vec(t);
    (0..b)
        .map(|i| flat[i * s * v..(i + 1) * s * v].to_vec())
        .collect()
}

#[test]
fn checkpoint_names_of_adapter_parameters_map_to_peft_names() {
    let model = glu::<AD>();
    let cfg = model.config().clone();
    let adapter = random_adapter::<AD>(&cfg, &TargetModule::ALL, 3);
    let peft_names: Vec<String> = peft::adapter_tensors(&adapter).into_keys().collect();
    let model = model.with_adapter(adapter).unwrap();
    let mut mapped: Vec<String> = lora::trainable_params(&model)
        .iter()
        .map(|p| {
            let name = tessera_model::spec::hf_name(&p.path);
            peft::peft_name_of(&name).unwrap_or_else(|| panic!("{name} has no PEFT name"))
        })
        .collect();
    mapped.sort();
    assert_eq!(mapped, peft_names);
    assert_eq!(
        peft::peft_name_of("transformer.blocks.0.attn.Wqkv.weight"),
        None
    );
}
