//! `tessera parity`: checks this build, on this device, against transformers' `MptForCausalLM`.
//!
//! The `mpt/` fixtures (written by `gen_mpt.py`, see `shared/fixtures/README.md`) hold transformers'
//! logits, loss, every gradient and a greedy generation for small MPT checkpoints. Run this once
//! on a new machine or backend (`--device cuda`) before trusting a training run there: it
//! recomputes all of them with tessera and fails if any is outside its tolerance. The model
//! tests do the same on the CPU; this command is how a GPU gets the same check
//! (`xtask/scripts/gpu-check.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Int, Tensor, TensorData};
use tessera::device::{DeviceSpec, Job};
use tessera::model::generate::{GenerationConfig, generate};
use tessera::model::loss::{IGNORE_INDEX, mean_cross_entropy};
use tessera::model::{MptInput, hf};

#[derive(clap::Args)]
pub struct Args {
    /// The fixtures folder (holding `mpt/`). Default: $TESSERA_FIXTURES, else ./fixtures.
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Largest allowed |logit - transformers' logit|. Default: 1e-4 on the CPU, 5e-2 on a GPU.
    #[arg(long)]
    logits_tol: Option<f32>,
    /// Largest allowed |mean loss - transformers'|. Default: 1e-5 on the CPU, 2e-3 on a GPU.
    #[arg(long)]
    loss_tol: Option<f32>,
    /// Largest allowed gradient error, relative to the largest |gradient| of that parameter.
    /// Default: 1e-4 on the CPU, 1e-1 on a GPU.
    #[arg(long)]
    grad_tol: Option<f32>,
    /// Print one JSON object per checkpoint instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    let root = match &args.fixtures {
        Some(dir) => dir.clone(),
        None => std::env::var_os("TESSERA_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("fixtures")),
    };
    let mpt = root.join("mpt");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&mpt)
        .with_context(|| format!("reading {} (pass --fixtures DIR)", mpt.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("index.json").is_file() && p.join("grads.safetensors").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!(
            "{}: no fixture checkpoints (folders with index.json and grads.safetensors)",
            mpt.display()
        );
    }
    device.run(ParityJob { args, dirs })
}

struct ParityJob {
    args: Args,
    dirs: Vec<PathBuf>,
}

/// What one checkpoint's comparison found.
struct Report {
    name: String,
    logits: f32,
    loss: f32,
    grad: f32,
    grad_worst_param: String,
    generation_equal: bool,
}

/// Tolerances: (logits, loss, relative gradient).
///
/// On the CPU, the model tests' own. burn's CUDA matmuls round f32 inputs through TF32 (cubek
/// picks TF32 tensor-core kernels for f32 whenever the card has them), so a GPU gets the spread
/// transformers itself shows on an H200 with TF32 on (BENCHMARKS.md, "GPU"): logits 1.6e-2,
/// loss 5.6e-4, gradients 3.5e-2, with about 3x headroom. Generation must match either way.
fn tolerances(args: &Args, spec: DeviceSpec) -> (f32, f32, f32) {
    let (logits, loss, grad) = match spec {
        DeviceSpec::Cpu => (1e-4, 1e-5, 1e-4),
        DeviceSpec::Wgpu(_) | DeviceSpec::Cuda(_) => (5e-2, 2e-3, 1e-1),
    };
    (
        args.logits_tol.unwrap_or(logits),
        args.loss_tol.unwrap_or(loss),
        args.grad_tol.unwrap_or(grad),
    )
}

impl Job for ParityJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        let a = &self.args;
        let (logits_tol, loss_tol, grad_tol) = tolerances(a, spec);
        if !a.json {
            println!("parity with transformers' MptForCausalLM on {spec}");
            println!(
                "{:<16} {:>12} {:>12} {:>12}  generation",
                "checkpoint", "logits", "loss", "grad (rel)"
            );
        }
        let mut failures = Vec::new();
        for dir in &self.dirs {
            let r = check::<B>(dir, &device).with_context(|| dir.display().to_string())?;
            let ok = r.logits <= logits_tol
                && r.loss <= loss_tol
                && r.grad <= grad_tol
                && r.generation_equal;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "checkpoint": r.name, "device": spec.to_string(),
                        "logits_max_abs_diff": r.logits, "loss_abs_diff": r.loss,
                        "grad_max_rel_diff": r.grad, "grad_worst_param": r.grad_worst_param,
                        "greedy_generation_equal": r.generation_equal, "ok": ok,
                        "tolerances": [logits_tol, loss_tol, grad_tol],
                    })
                );
            } else {
                println!(
                    "{:<16} {:>12.3e} {:>12.3e} {:>12.3e}  {}",
                    r.name,
                    r.logits,
                    r.loss,
                    r.grad,
                    if r.generation_equal {
                        "equal"
                    } else {
                        "DIFFERS"
                    }
                );
            }
            if !ok {
                failures.push(r.name);
            }
        }
        if !failures.is_empty() {
            bail!(
                "outside tolerance (logits {logits_tol:e}, loss {loss_tol:e}, grad {grad_tol:e}, \
                 generation exact): {}",
                failures.join(", ")
            );
        }
        Ok(())
    }
}

fn check<B: AutodiffBackend>(dir: &Path, device: &B::Device) -> anyhow::Result<Report> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("index.json")).context("reading index.json")?,
    )
    .context("index.json")?;
    let (_, model) = hf::load::<B>(dir, device)?;
    let inference = model.valid();

    // Logits of each sequence alone, as transformers computed them (no padding).
    let (ids, shape) = read_npy::<i64>(&dir.join("input_ids.npy"))?;
    let (mask, _) = read_npy::<i64>(&dir.join("attention_mask.npy"))?;
    let (batch, seq) = (shape[0], shape[1]);
    let mut logits = 0f32;
    for row in 0..batch {
        let file = dir.join(format!("logits_seq{row}.npy"));
        if !file.is_file() {
            continue;
        }
        let len = mask[row * seq..(row + 1) * seq].iter().sum::<i64>() as usize;
        let row_ids = &ids[row * seq..row * seq + len];
        let got = inference.forward(MptInput::new(int_tensor(row_ids, [1, len], device)));
        let (want, _) = read_npy::<f32>(&file)?;
        logits = logits.max(max_abs_diff(&to_vec(got), &want)?);
    }

    // The padded batch: mean loss, then every gradient of it.
    let (targets, tshape) = read_npy::<i64>(&dir.join("target_ids.npy"))?;
    let out = model.forward(MptInput {
        input_ids: int_tensor(&ids, [batch, seq], device),
        attention_mask: Some(bool_tensor(&mask, [batch, seq], device)),
        sequence_id: None,
    });
    // Targets cover the first seq - 1 positions; the last predicts nothing.
    let mean = mean_cross_entropy(
        out.narrow(1, 0, tshape[1]),
        int_tensor(&targets, [tshape[0], tshape[1]], device),
        IGNORE_INDEX,
    );
    let want_loss = index["mean_loss"]
        .as_f64()
        .context("index.json: mean_loss")?;
    let loss = (mean.clone().into_scalar().elem::<f64>() - want_loss).abs() as f32;
    let got = hf::named_gradients(&model, &mean.backward());
    let want = read_safetensors(&dir.join("grads.safetensors"))?;
    let mut grad = (0f32, String::new());
    for (param, w) in &want {
        let g = got
            .get(param)
            .with_context(|| format!("grads.safetensors names {param}, which the model lacks"))?;
        let g = values(g.clone());
        let scale = w.iter().map(|x| x.abs()).fold(0f32, f32::max).max(1e-12);
        let rel = max_abs_diff(&g, w)? / scale;
        if rel > grad.0 {
            grad = (rel, param.clone());
        }
    }

    // Greedy generation with the KV cache: every token equal.
    let (prompt, _) = read_npy::<i64>(&dir.join("prompt_ids.npy"))?;
    let (want_ids, _) = read_npy::<i64>(&dir.join("generated_ids.npy"))?;
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    let want_ids: Vec<u32> = want_ids.iter().map(|&x| x as u32).collect();
    let cfg = GenerationConfig {
        max_new_tokens: want_ids.len(),
        use_cache: true,
        ..Default::default()
    };
    let generated = generate(&inference, &[prompt], &cfg, None, device)?;

    Ok(Report {
        name,
        logits,
        loss,
        grad: grad.0,
        grad_worst_param: grad.1,
        generation_equal: generated[0].ids == want_ids,
    })
}

fn int_tensor<B: Backend>(
    values: &[i64],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

fn bool_tensor<B: Backend>(
    values: &[i64],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let v: Vec<bool> = values.iter().map(|&x| x != 0).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    values(t.into_data())
}

fn values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().to_vec::<f32>().unwrap_or_default()
}

fn max_abs_diff(got: &[f32], want: &[f32]) -> anyhow::Result<f32> {
    if got.len() != want.len() {
        bail!(
            "{} values computed, {} in the fixture",
            got.len(),
            want.len()
        );
    }
    // NaN never passes: f32::max would drop it, so map it to infinity.
    Ok(got.iter().zip(want).fold(0f32, |m, (g, w)| {
        let d = (g - w).abs();
        m.max(if d.is_nan() { f32::INFINITY } else { d })
    }))
}

/// A `.npy` array of `T` (the fixtures' float32 and int64 arrays) and its shape.
fn read_npy<T: npyz::Deserialize>(path: &Path) -> anyhow::Result<(Vec<T>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| path.display().to_string())?;
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let values = npy.into_vec::<T>().with_context(|| {
        format!(
            "{}: expected {}",
            path.display(),
            std::any::type_name::<T>()
        )
    })?;
    Ok((values, shape))
}

fn read_safetensors(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| path.display().to_string())?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != safetensors::Dtype::F32 {
                bail!(
                    "{}: {name} is {:?}, expected F32",
                    path.display(),
                    view.dtype()
                );
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((name, values))
        })
        .collect()
}
