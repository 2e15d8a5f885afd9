//! Hidden `tessera bench-step`: times forward and forward+backward of an MPT shape on one
//! backend. `cargo xtask bench backends` builds tessera with each CPU backend's feature and runs
//! this; on a GPU (`--device cuda`) it gives fwd+bwd tokens/s and achieved TFLOP/s of a real
//! shape, f32 or bf16 (`xtask/scripts/gpu-check.sh`).

use std::time::Instant;

use anyhow::bail;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{FloatDType, Int, Tensor, TensorData};
use tessera::device::{DeviceSpec, Job};
use tessera::model::{MptConfig, MptInput, loss};

#[derive(clap::Args)]
pub struct Args {
    /// With --device cpu: flex (default build) or ndarray (needs the bench-ndarray or
    /// bench-blas feature). Other devices use their own backend.
    #[arg(long, default_value = "flex")]
    backend: String,
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 128)]
    seq: usize,
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    n_layers: usize,
    #[arg(long, default_value_t = 4)]
    n_heads: usize,
    #[arg(long, default_value_t = 8192)]
    vocab_size: usize,
    #[arg(long, default_value_t = 4)]
    expansion_ratio: usize,
    /// The dtype matmuls run in: f32, or bf16/f16 with f32 master weights.
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long)]
    json: bool,
    /// Instead of a step: measure the backend's f32 matmul FLOP/s (`--peak-n`³ products), the
    /// CPU "peak" MFU is reported against (`cargo xtask bench train`).
    #[arg(long)]
    peak_flops: bool,
    /// The matrix size of --peak-flops.
    #[arg(long, default_value_t = 1024)]
    peak_n: usize,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    if device != DeviceSpec::Cpu {
        return device.run(BenchJob(args));
    }
    if args.peak_flops {
        anyhow::ensure!(
            args.backend == "flex",
            "--peak-flops measures the flex backend only"
        );
        return peak::<burn::backend::Flex>(&args, "flex", &Default::default());
    }
    match args.backend.as_str() {
        "flex" => bench::<burn::backend::Autodiff<burn::backend::Flex>>(
            &args,
            "flex",
            &Default::default(),
        ),
        #[cfg(feature = "bench-ndarray")]
        "ndarray" => bench::<burn::backend::Autodiff<burn::backend::NdArray>>(
            &args,
            "ndarray",
            &Default::default(),
        ),
        other => bail!(
            "--backend {other}: not compiled in (flex always; ndarray with --features bench-ndarray)"
        ),
    }
}

struct BenchJob(Args);

impl Job for BenchJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> anyhow::Result<()> {
        if self.0.peak_flops {
            return peak::<B::InnerBackend>(&self.0, &spec.to_string(), &device);
        }
        bench::<B>(&self.0, &spec.to_string(), &device)
    }
}

/// The backend's f32 matmul FLOP/s on `peak_n`³ products (on CUDA these run on the tensor cores
/// in TF32).
fn peak<B: Backend>(args: &Args, name: &str, device: &B::Device) -> anyhow::Result<()> {
    let (n, reps) = (args.peak_n, 10);
    let flops = tessera::train::metrics::measure_matmul_flops::<B>(device, n, reps);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "{}",
        serde_json::json!({ "backend": name, "peak_flops": flops, "n": n, "reps": reps, "threads": threads })
    );
    Ok(())
}

fn bench<B: AutodiffBackend>(args: &Args, name: &str, device: &B::Device) -> anyhow::Result<()> {
    let device = device.clone();
    let compute = match args.dtype.as_str() {
        "f32" => None,
        "bf16" => Some(FloatDType::BF16),
        "f16" => Some(FloatDType::F16),
        other => bail!("--dtype {other}: expected f32, bf16 or f16"),
    };
    let json = serde_json::json!({
        "d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads,
        "vocab_size": args.vocab_size, "max_seq_len": args.seq,
        "expansion_ratio": args.expansion_ratio,
    });
    let config = MptConfig::from_json_str(&json.to_string(), "bench-step")?;
    config.validate()?;
    let model = config.init::<B>(&device, 0).with_compute_dtype(compute);

    // Deterministic pseudo-random tokens (an LCG is enough for timing).
    let n = args.batch * (args.seq + 1);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let ids: Vec<i64> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % args.vocab_size as u64) as i64
        })
        .collect();
    let all =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [args.batch, args.seq + 1]), &device);
    let inputs = all.clone().slice([0..args.batch, 0..args.seq]);
    let targets = all.slice([0..args.batch, 1..args.seq + 1]);

    let step = |timed: bool| -> anyhow::Result<f64> {
        let t = Instant::now();
        let logits = model.forward(MptInput {
            input_ids: inputs.clone(),
            attention_mask: None,
            sequence_id: None,
        });
        let ce = loss::token_cross_entropy(logits, targets.clone(), -100);
        let grads = ce.mean().backward();
        drop(grads);
        B::sync(&device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
        Ok(if timed {
            t.elapsed().as_secs_f64()
        } else {
            0.0
        })
    };
    let inner = model.valid();
    let inner_inputs = inputs.clone().inner();
    let forward = || -> f64 {
        let t = Instant::now();
        let logits = inner.forward(MptInput {
            input_ids: inner_inputs.clone(),
            attention_mask: None,
            sequence_id: None,
        });
        drop(logits);
        let _ = <B::InnerBackend as Backend>::sync(&device);
        t.elapsed().as_secs_f64()
    };
    step(false)?;
    step(false)?;
    let mut total = 0.0;
    for _ in 0..args.steps {
        total += step(true)?;
    }
    let step_s = total / args.steps as f64;
    let fwd_s = (0..args.steps.min(5)).map(|_| forward()).sum::<f64>() / args.steps.min(5) as f64;
    let tokens = (args.batch * args.seq) as f64;
    // Model FLOPs of forward+backward (6N per token plus attention), as MFU counts them.
    let tflops = config.flops_per_token(args.seq, true) * tokens / step_s / 1e12;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backend": name, "model": "bench-step", "d_model": args.d_model, "n_layers": args.n_layers,
                "n_heads": args.n_heads, "vocab_size": args.vocab_size, "batch": args.batch, "seq": args.seq,
                "expansion_ratio": args.expansion_ratio, "dtype": args.dtype,
                "step_ms": step_s * 1e3, "forward_ms": fwd_s * 1e3, "tokens_per_s": tokens / step_s,
                "model_tflops": tflops,
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            })
        );
    } else {
        println!(
            "{name} {}: {:.1} ms/step fwd+bwd, {:.0} tokens/s, {:.1} model TFLOP/s, forward {:.1} ms",
            args.dtype,
            step_s * 1e3,
            tokens / step_s,
            tflops,
            fwd_s * 1e3
        );
    }
    let _ = <B as Backend>::name(&device);
    Ok(())
}
