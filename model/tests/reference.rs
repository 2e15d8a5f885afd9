//! The features transformers' MPT lacks (GQA/MQA, RoPE, qk_ln/qk_gn, GLU, logit_scale, learned
//! position embeddings, biases, sequence_id masking, RMSNorm, softcapping, left padding with
//! positions), checked against an independent float64 forward written here from llm-foundry's
//! semantics (`modeling_mpt.py`, `attention.py`, `blocks.py`, `ffn.py`, `norm.py`). It uses plain
//! `Vec<f64>` loops and only the config's plain fields and the checkpoint tensors; it calls none
//! of the crate's modules.

// Index loops mirror the formulas; iterator chains would obscure the reference.
#![allow(clippy::needless_range_loop)]

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;
use tessera_model::config::{
    Activation, AttnType, FfnType, LogitScale, MptConfig, NormType, RopeImpl,
};
use tessera_model::{MptInput, hf};

type Weights = HashMap<String, (Vec<f64>, Vec<usize>)>;

/// Deterministic pseudo-random numbers in [-1, 1) (xorshift64*), independent of the crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        x as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Random checkpoint tensors for a config: Linear ~ U(±1.5/sqrt(in)), norms 1 ± 0.3,
/// biases ± 0.2, embeddings U(±1). Names and shapes come from the crate's table (that is the
/// layout under test); values from the test's own generator.
fn random_weights(cfg: &MptConfig, seed: u64) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut out = BTreeMap::new();
    for s in tessera_model::spec::param_specs(cfg) {
        let n: usize = s.shape.iter().product();
        let name = s.name.as_str();
        let draw = |rng: &mut Rng| -> f64 {
            if name.ends_with("wte.weight") || name.ends_with("wpe.weight") {
                rng.next()
            } else if name.contains("_ln.") || name.contains("norm_") {
                if name.ends_with(".weight") {
                    1.0 + 0.3 * rng.next()
                } else {
                    0.2 * rng.next()
                }
            } else if name.ends_with(".bias") {
                0.2 * rng.next()
            } else {
                1.5 * rng.next() / (s.shape[1] as f64).sqrt()
            }
        };
        let v: Vec<f32> = (0..n).map(|_| draw(&mut rng) as f32).collect();
        out.insert(s.name.clone(), (v, s.shape.clone()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The float64 reference.

fn matvec(w: &(Vec<f64>, Vec<usize>), b: Option<&(Vec<f64>, Vec<usize>)>, x: &[f64]) -> Vec<f64> {
    let (rows, cols) = (w.1[0], w.1[1]);
    assert_eq!(cols, x.len());
    (0..rows)
        .map(|r| {
            let dot: f64 = (0..cols).map(|c| w.0[r * cols + c] * x[c]).sum();
            dot + b.map_or(0.0, |b| b.0[r])
        })
        .collect()
}

fn norm(cfg: &MptConfig, w: &Weights, prefix: &str, x: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let weight = &w[&format!("{prefix}.weight")].0;
    let bias = w.get(&format!("{prefix}.bias")).map(|b| &b.0);
    let rms = matches!(
        cfg.norm_type,
        NormType::RmsNorm | NormType::LowPrecisionRmsNorm
    );
    let (center, denom) = if rms {
        (
            0.0,
            (x.iter().map(|v| v * v).sum::<f64>() / n + cfg.norm_eps).sqrt(),
        )
    } else {
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        (mean, (var + cfg.norm_eps).sqrt())
    };
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - center) / denom * weight[i] + bias.map_or(0.0, |b| b[i]))
        .collect()
}

fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; use the series / continued fraction split.
    if x.abs() < 3.0 {
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz) for large |x|.
        let ax = x.abs();
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for k in 1..200 {
            let a = k as f64 / 2.0;
            d = 1.0 / (ax + a * d);
            c = ax + a / c;
            f *= c * d;
        }
        let erfc = (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt());
        x.signum() * (1.0 - erfc)
    }
}

fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Relu => x.max(0.0),
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

/// llm-foundry `gen_slopes`, written out again.
fn slopes(n_heads: usize, max: f64) -> Vec<f64> {
    let mut n = 1;
    while n < n_heads {
        n *= 2;
    }
    let s: Vec<f64> = (1..=n)
        .map(|i| 0.5f64.powf(i as f64 * max / n as f64))
        .collect();
    if n == n_heads {
        return s;
    }
    let mut out: Vec<f64> = s.iter().skip(1).step_by(2).copied().collect();
    out.extend(s.iter().step_by(2).copied());
    out.truncate(n_heads);
    out
}

fn rope(x: &mut [f64], pos: f64, theta: f64, scaling: f64) {
    let d = x.len();
    let half = d / 2;
    for i in 0..half {
        let angle = pos / scaling * theta.powf(-((2 * i) as f64) / d as f64);
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * angle.cos() - b * angle.sin();
        x[i + half] = b * angle.cos() + a * angle.sin();
    }
}

/// Logits `[t][vocab]` of one row. `real[t]` = not padding; `seq` = document ids.
fn reference_row(
    cfg: &MptConfig,
    w: &Weights,
    ids: &[usize],
    real: &[bool],
    seq: Option<&[i64]>,
) -> Vec<Vec<f64>> {
    let t_len = ids.len();
    let d = cfg.d_model;
    let h = cfg.n_heads;
    let hd = d / h;
    let a = &cfg.attn_config;
    let kv = a.kv_n_heads;
    let wte = &w["transformer.wte.weight"].0;
    // Position of a token = number of real tokens before it.
    let pos: Vec<usize> = (0..t_len)
        .map(|t| real[..t].iter().filter(|&&r| r).count())
        .collect();
    let mut x: Vec<Vec<f64>> = (0..t_len)
        .map(|t| wte[ids[t] * d..(ids[t] + 1) * d].to_vec())
        .collect();
    if let Some(wpe) = w.get("transformer.wpe.weight") {
        for t in 0..t_len {
            for i in 0..d {
                x[t][i] += wpe.0[pos[t] * d + i];
            }
        }
    }
    let alibi = a.alibi.then(|| slopes(h, a.alibi_bias_max));
    let scale = a.softmax_scale.unwrap_or(1.0 / (hd as f64).sqrt());
    for l in 0..cfg.n_layers {
        let p = format!("transformer.blocks.{l}");
        let get = |n: &str| w.get(&format!("{p}.{n}"));
        let mut q_all = Vec::new();
        let mut k_all = Vec::new();
        let mut v_all = Vec::new();
        for t in 0..t_len {
            let hn = norm(cfg, w, &format!("{p}.norm_1"), &x[t]);
            let mut qkv = matvec(get("attn.Wqkv.weight").unwrap(), get("attn.Wqkv.bias"), &hn);
            if let Some(c) = a.clip_qkv {
                qkv.iter_mut().for_each(|v| *v = v.clamp(-c, c));
            }
            let mut q = qkv[..d].to_vec();
            let mut k = qkv[d..d + kv * hd].to_vec();
            let v = qkv[d + kv * hd..].to_vec();
            if a.qk_ln {
                q = norm(cfg, w, &format!("{p}.attn.q_ln"), &q);
                k = norm(cfg, w, &format!("{p}.attn.k_ln"), &k);
            }
            if a.qk_gn {
                q = q
                    .chunks(hd)
                    .flat_map(|c| norm(cfg, w, &format!("{p}.attn.q_ln"), c))
                    .collect();
                k = k
                    .chunks(hd)
                    .flat_map(|c| norm(cfg, w, &format!("{p}.attn.k_ln"), c))
                    .collect();
            }
            if a.rope {
                q.chunks_mut(hd)
                    .for_each(|c| rope(c, pos[t] as f64, a.rope_theta, a.rope_scaling_factor));
                k.chunks_mut(hd)
                    .for_each(|c| rope(c, pos[t] as f64, a.rope_theta, a.rope_scaling_factor));
            }
            q_all.push(q);
            k_all.push(k);
            v_all.push(v);
        }
        for t in 0..t_len {
            let mut o = vec![0.0; d];
            for head in 0..h {
                let kvh = head / (h / kv);
                let allowed: Vec<usize> = (0..=t)
                    .filter(|&s| real[s] && seq.is_none_or(|sq| sq[s] == sq[t]))
                    .collect();
                if allowed.is_empty() {
                    continue; // a padding query: its output is never compared
                }
                let scores: Vec<f64> = allowed
                    .iter()
                    .map(|&s| {
                        let qk: f64 = (0..hd)
                            .map(|i| q_all[t][head * hd + i] * k_all[s][kvh * hd + i])
                            .sum();
                        let mut sc = qk * scale;
                        if let Some(c) = a.attn_logit_softcapping {
                            sc = c * (sc / c).tanh();
                        }
                        if let Some(sl) = &alibi {
                            sc += sl[head] * (s as f64 - t as f64);
                        }
                        sc
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, &s) in allowed.iter().enumerate() {
                    for i in 0..hd {
                        o[head * hd + i] += e[j] / z * v_all[s][kvh * hd + i];
                    }
                }
            }
            let out = matvec(
                get("attn.out_proj.weight").unwrap(),
                get("attn.out_proj.bias"),
                &o,
            );
            for i in 0..d {
                x[t][i] += out[i];
            }
            let m = norm(cfg, w, &format!("{p}.norm_2"), &x[t]);
            let up = matvec(
                get("ffn.up_proj.weight").unwrap(),
                get("ffn.up_proj.bias"),
                &m,
            );
            let hidden: Vec<f64> = match cfg.ffn_config.ffn_type {
                FfnType::MptMlp => up
                    .iter()
                    .map(|&u| act(cfg.ffn_config.activation, u))
                    .collect(),
                FfnType::MptGlu => {
                    let gate = matvec(
                        get("ffn.gate_proj.weight").unwrap(),
                        get("ffn.gate_proj.bias"),
                        &m,
                    );
                    gate.iter()
                        .zip(&up)
                        .map(|(&g, &u)| act(cfg.ffn_config.activation, g) * u)
                        .collect()
                }
            };
            let down = matvec(
                get("ffn.down_proj.weight").unwrap(),
                get("ffn.down_proj.bias"),
                &hidden,
            );
            for i in 0..d {
                x[t][i] += down[i];
            }
        }
    }
    let unembed = w
        .get("lm_head.weight")
        .unwrap_or(&w["transformer.wte.weight"]);
    let logit_scale = match cfg.logit_scale {
        None => 1.0,
        Some(LogitScale::Value(v)) => v,
        Some(LogitScale::InvSqrtDModel) => 1.0 / (d as f64).sqrt(),
    };
    (0..t_len)
        .map(|t| {
            let f = norm(cfg, w, "transformer.norm_f", &x[t]);
            matvec(unembed, None, &f)
                .into_iter()
                .map(|l| {
                    let l = l * logit_scale;
                    match cfg.final_logit_softcapping {
                        Some(c) => c * (l / c).tanh(),
                        None => l,
                    }
                })
                .collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

fn base() -> MptConfig {
    let mut c = MptConfig::preset("tiny").unwrap();
    c.d_model = 48;
    c.n_heads = 4;
    c.attn_config.kv_n_heads = 4;
    c.n_layers = 2;
    c.vocab_size = 61;
    c.max_seq_len = 24;
    c.ffn_config.hidden_size = 96;
    c.expansion_ratio = 2.0;
    c
}

/// Builds the crate's model from random weights via an HF directory, runs a left-padded batch
/// (optionally with sequence ids), and compares every real position with the reference.
fn check(label: &str, cfg: MptConfig, seq_ids: bool) {
    cfg.validate().unwrap_or_else(|e| panic!("{label}: {e}"));
    let weights = random_weights(&cfg, 17);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        serde_json::to_string(&cfg.to_hf_json()).unwrap(),
    )
    .unwrap();
    let owned: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .iter()
        .map(|(k, (v, s))| {
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                s.clone(),
            )
        })
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        tmp.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let (loaded_cfg, model) = hf::load::<B>(tmp.path(), &Default::default()).unwrap();
    assert_eq!(loaded_cfg, cfg, "{label}");
    let w: Weights = weights
        .into_iter()
        .map(|(k, (v, s))| (k, (v.into_iter().map(f64::from).collect(), s)))
        .collect();

    // Row 0: 3 left pads then 9 tokens; row 1: 12 tokens (two documents when seq_ids).
    let t_len = 12;
    let rows: Vec<Vec<usize>> = vec![
        (0..t_len)
            .map(|i| {
                if i < 3 {
                    0
                } else {
                    (i * 7 + 3) % cfg.vocab_size
                }
            })
            .collect(),
        (0..t_len).map(|i| (i * 13 + 5) % cfg.vocab_size).collect(),
    ];
    let real: Vec<Vec<bool>> = vec![(0..t_len).map(|i| i >= 3).collect(), vec![true; t_len]];
    let seq: Vec<Vec<i64>> = vec![
        vec![0; t_len],
        (0..t_len).map(|i| if i < 5 { 0 } else { 1 }).collect(),
    ];

    let flat_ids: Vec<i64> = rows.iter().flatten().map(|&x| x as i64).collect();
    let flat_mask: Vec<i64> = real.iter().flatten().map(|&r| r as i64).collect();
    let flat_seq: Vec<i64> = seq.iter().flatten().copied().collect();
    let input = MptInput {
        input_ids: ids::<B>(&flat_ids, [2, t_len]),
        attention_mask: Some(mask::<B>(&flat_mask, [2, t_len])),
        sequence_id: seq_ids.then(|| ids::<B>(&flat_seq, [2, t_len])),
    };
    let got = to_vec(model.forward(input));
    let v = cfg.vocab_size;
    let mut worst = 0f64;
    let mut scale = 0f64;
    for r in 0..2 {
        let want = reference_row(
            &cfg,
            &w,
            &rows[r],
            &real[r],
            seq_ids.then_some(seq[r].as_slice()),
        );
        for t in 0..t_len {
            if !real[r][t] {
                continue;
            }
            for j in 0..v {
                let g = got[(r * t_len + t) * v + j] as f64;
                worst = worst.max((g - want[t][j]).abs());
                scale = scale.max(want[t][j].abs());
            }
        }
    }
    assert!(scale > 0.5, "{label}: degenerate logits (max {scale})");
    assert!(
        worst <= 2e-5 * scale.max(1.0),
        "{label}: max |f32 - f64| = {worst:e} (logits up to {scale:.2})"
    );
}

#[test]
fn gqa_rope_qk_ln_glu_logit_scale_and_biases_match_reference() {
    let mut c = base();
    c.no_bias = false;
    c.attention_bias = true;
    c.attn_config.alibi = false;
    c.attn_config.rope = true;
    c.attn_config.attn_type = AttnType::GroupedQuery;
    c.attn_config.kv_n_heads = 2;
    c.attn_config.qk_ln = true;
    c.ffn_config.ffn_type = FfnType::MptGlu;
    c.ffn_config.activation = Activation::Silu;
    c.logit_scale = Some(LogitScale::InvSqrtDModel);
    check("gqa+rope+qk_ln+swiglu+logit_scale+bias", c, false);
}

#[test]
fn mqa_learned_positions_qk_gn_rmsnorm_untied_and_sequence_ids_match_reference() {
    let mut c = base();
    c.attn_config.alibi = false;
    c.learned_pos_emb = true;
    c.attn_config.attn_type = AttnType::MultiQuery;
    c.attn_config.kv_n_heads = 1;
    c.attn_config.qk_gn = true;
    c.norm_type = NormType::RmsNorm;
    c.tie_word_embeddings = false;
    c.attn_config.attn_uses_sequence_id = true;
    c.ffn_config.activation = Activation::Relu;
    check("mqa+wpe+qk_gn+rmsnorm+untied+sequence_id", c, true);
}

#[test]
fn alibi_six_heads_with_gqa_clip_scale_softcaps_and_layernorm_bias_match_reference() {
    let mut c = base();
    c.n_heads = 6;
    c.attn_config.attn_type = AttnType::GroupedQuery;
    c.attn_config.kv_n_heads = 3;
    c.no_bias = false;
    c.attention_bias = false;
    c.norm_type = NormType::LayerNorm;
    c.attn_config.clip_qkv = Some(0.8);
    c.attn_config.softmax_scale = Some(0.3);
    c.attn_config.attn_logit_softcapping = Some(2.0);
    c.final_logit_softcapping = Some(5.0);
    c.ffn_config.activation = Activation::GeluTanh;
    c.logit_scale = Some(LogitScale::Value(1.7));
    c.attn_config.alibi_bias_max = 6.0;
    check("alibi6+gqa+clip+scale+softcap+ln_bias", c, false);
}

#[test]
fn hf_rope_with_linear_scaling_and_left_padding_matches_reference() {
    let mut c = base();
    c.attn_config.alibi = false;
    c.attn_config.rope = true;
    c.attn_config.rope_impl = RopeImpl::Hf;
    c.attn_config.rope_scaling_factor = 2.5;
    c.attn_config.rope_theta = 500.0;
    c.ffn_config.activation = Activation::QuickGelu;
    check("rope_hf_linear+padding", c, false);
}

#[test]
fn default_alibi_model_with_exact_gelu_matches_reference() {
    // The fixture architecture on random weights, as a control for the reference itself.
    check("alibi default", base(), false);
}
