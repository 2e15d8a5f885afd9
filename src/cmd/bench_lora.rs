//! Hidden `tessera bench-lora`: the memory of training steps (forward, backward, AdamW update)
//! on the CPU, full fine-tuning against LoRA (f32 or bf16 base), on one MPT shape (the
//! quickstart's by default). Prints what it measured — parameter bytes, the parameters that got
//! gradients, the parameters AdamW keeps state for, the process's peak RSS — beside
//! `lora::training_memory`'s arithmetic for the same setup. Run each mode in its own process
//! (peak RSS is per process).

use std::time::Instant;

use anyhow::{bail, ensure};
use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use tessera::model::lora::{self, Adapter, LoraConfig, TargetModule};
use tessera::model::{Mpt, MptConfig, MptInput};

type B = Autodiff<Flex>;

#[derive(clap::Args)]
pub struct Args {
    /// full (every weight trains), lora (f32 base) or lora-bf16 (base matrices in bf16).
    #[arg(long, default_value = "lora")]
    mode: String,
    /// LoRA rank, on Wqkv, out_proj, up_proj and down_proj.
    #[arg(long, default_value_t = 8)]
    r: usize,
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    #[arg(long, default_value_t = 6)]
    n_layers: usize,
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
}

/// Sums `dtype size × elements` over the parameters, and the elements of those in `ids`.
struct Sizes<'a> {
    ids: &'a dyn Fn(ParamId) -> bool,
    bytes: u64,
    selected: u64,
}

impl<Bk: Backend> ModuleVisitor<Bk> for Sizes<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let t = param.val();
        let n = t.shape().num_elements() as u64;
        self.bytes += t.dtype().size() as u64 * n;
        if (self.ids)(param.id) {
            self.selected += n;
        }
    }
}

fn sizes(model: &Mpt<B>, ids: &dyn Fn(ParamId) -> bool) -> (u64, u64) {
    let mut s = Sizes {
        ids,
        bytes: 0,
        selected: 0,
    };
    model.visit(&mut s);
    (s.bytes, s.selected)
}

/// The process's peak resident set, in bytes.
fn peak_rss() -> u64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as u64 * 1024
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (lora_on, base_dtype) = match a.mode.as_str() {
        "full" => (false, FloatDType::F32),
        "lora" => (true, FloatDType::F32),
        "lora-bf16" => (true, FloatDType::BF16),
        other => bail!("--mode {other}: expected full, lora or lora-bf16"),
    };
    ensure!(
        a.steps > 0 && a.batch > 0 && a.seq > 1,
        "--steps, --batch and --seq must be positive"
    );
    let device = Default::default();
    let json = serde_json::json!({
        "d_model": a.d_model, "n_layers": a.n_layers, "n_heads": a.n_heads,
        "vocab_size": a.vocab_size, "max_seq_len": a.seq, "no_bias": true,
    });
    let config = MptConfig::from_json_str(&json.to_string(), "bench-lora")?;
    let lora_config = LoraConfig {
        r: a.r,
        lora_alpha: 2.0 * a.r as f64,
        target_modules: vec![
            TargetModule::Wqkv,
            TargetModule::OutProj,
            TargetModule::UpProj,
            TargetModule::DownProj,
        ],
        ..Default::default()
    };
    let mut model = config.init::<B>(&device, 0);
    if lora_on {
        model = model.with_adapter(Adapter::init(&lora_config, &config, 1, &device)?)?;
        if base_dtype != FloatDType::F32 {
            model = model.with_base_dtype(base_dtype)?;
        }
    }
    let estimate = lora::training_memory(&config, lora_on.then_some(&lora_config), base_dtype)?;

    // Deterministic pseudo-random tokens.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let ids: Vec<i64> = (0..a.batch * (a.seq + 1))
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % a.vocab_size as u64) as i64
        })
        .collect();
    let all = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [a.batch, a.seq + 1]), &device);
    let inputs = all.clone().slice([0..a.batch, 0..a.seq]);
    let targets = all.slice([0..a.batch, 1..a.seq + 1]);

    let mut optim = AdamWConfig::new().init::<B, Mpt<B>>();
    let mut with_grad = 0;
    let start = Instant::now();
    for _ in 0..a.steps {
        let loss = model.loss_sum(MptInput::new(inputs.clone()), targets.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Gradients are stored for the inner backend; the rank does not matter for presence.
        let (_, n) = sizes(&model, &|id| grads.get::<Flex, 1>(id).is_some());
        with_grad = n;
        model = optim.step(1e-4, model, grads);
    }
    let step_s = start.elapsed().as_secs_f64() / a.steps as f64;
    let record = optim.to_record();
    let (param_bytes, with_state) = sizes(&model, &|id| record.contains_key(&id));
    println!(
        "{}",
        serde_json::json!({
            "mode": a.mode, "r": a.r, "d_model": a.d_model, "n_layers": a.n_layers,
            "vocab_size": a.vocab_size, "batch": a.batch, "seq": a.seq,
            "measured": {
                "param_bytes": param_bytes,
                "params_with_gradient": with_grad,
                "params_with_adamw_state": with_state,
                "adamw_state_bytes": 8 * with_state,
                "peak_rss_bytes": peak_rss(),
                "step_ms": step_s * 1e3,
            },
            "estimate": {
                "base_params": estimate.base_params,
                "trainable_params": estimate.trainable_params,
                "weight_bytes": estimate.weight_bytes,
                "grad_bytes": estimate.grad_bytes,
                "optimizer_bytes": estimate.optimizer_bytes,
            },
        })
    );
    Ok(())
}
