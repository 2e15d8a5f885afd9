//! Hidden `tessera kernel-check`: the fused attention (the CubeCL flash kernel on wgpu and CUDA,
//! the CPU flash kernel on Flex) against the composed path, values and gradients, on a few
//! shapes (head_dim 64 and 128, causal with ALiBi, GQA, a padded row) in f32, f16 and bf16,
//! then the row kernels (LayerNorm, RMSNorm, the cross-entropy over a 50,432 vocabulary), for
//! `xtask/scripts/gpu-check.sh`. Fails when an error is outside its dtype's tolerance, or when
//! the kernel refuses an f32 case on wgpu/CUDA (or any case on CUDA).
//!
//! `--linear` runs only the linear layers' cuBLASLt path (`TESSERA_CUBLASLT=1`): `x · wᵀ` and
//! both gradients against burn's matmul on the same device, in bf16 and f16, and in f32 (TF32)
//! with `TESSERA_TF32=1`; on CUDA it fails if cuBLASLt refuses any case.

use anyhow::bail;
use burn::tensor::FloatDType;
use burn::tensor::backend::AutodiffBackend;
use tessera::device::{DeviceSpec, Job};
use tessera::model::kernels::{
    AttentionCase, AttentionCheck, LinearCheck, RowsCheck, check_attention, check_cross_entropy,
    check_linear, check_norm, switches,
};

#[derive(clap::Args)]
pub struct Args {
    /// Queries (and keys) per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Also f16 and bf16 (the default on CUDA; wgpu devices mostly lack them, lavapipe does).
    #[arg(long)]
    half: bool,
    /// One JSON line per case instead of a table.
    #[arg(long)]
    json: bool,
    /// Only the linear layers' cuBLASLt GEMMs (needs TESSERA_CUBLASLT=1 on CUDA; f32 cases
    /// need TESSERA_TF32=1 too).
    #[arg(long)]
    linear: bool,
}

pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    if args.linear {
        return run_linear(&args, device);
    }
    let half = args.half || matches!(device, DeviceSpec::Cuda(_));
    let (reports, rows) = device.run(CheckJob { args: &args, half })?;
    let mut failed = Vec::new();
    if !args.json {
        println!("fused attention against the composed path on {device}");
        println!(
            "{:<5} {:>3} {:>5} {:>2}/{:<2} {:>4} {:>5} {:>5}  {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}  ok",
            "dtype",
            "b",
            "seq",
            "h",
            "kv",
            "hd",
            "alibi",
            "fused",
            "out",
            "dq",
            "dk",
            "dv",
            "fused ms",
            "composed ms"
        );
    }
    for r in &reports {
        let c = &r.case;
        // A refused half-precision case is a device without the type, except on CUDA.
        let must_fuse = !matches!(device, DeviceSpec::Cpu)
            && (c.dtype == FloatDType::F32 || matches!(device, DeviceSpec::Cuda(_)));
        let ok = r.passed() && (r.fused || !must_fuse);
        if !ok {
            failed.push(format!("{c:?}"));
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "device": device.to_string(), "dtype": format!("{:?}", c.dtype),
                    "batch": c.batch, "seq": c.seq, "heads": c.heads, "kv_heads": c.kv_heads,
                    "head_dim": c.head_dim, "alibi": c.alibi, "padding": c.padding,
                    "fused": r.fused, "errors": r.errors, "tolerance": r.tolerance(),
                    "fused_ms": r.fused_ms, "composed_ms": r.composed_ms, "ok": ok,
                })
            );
        } else {
            let e = r.errors;
            println!(
                "{:<5} {:>3} {:>5} {:>2}/{:<2} {:>4} {:>5} {:>5}  {:>9.2e} {:>9.2e} {:>9.2e} {:>9.2e} {:>10.1} {:>11.1}  {}",
                format!("{:?}", c.dtype),
                c.batch,
                c.seq,
                c.heads,
                c.kv_heads,
                c.head_dim,
                c.alibi,
                r.fused,
                e[0],
                e[1],
                e[2],
                e[3],
                r.fused_ms,
                r.composed_ms,
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    if !args.json {
        println!("\nrow kernels (norms, cross-entropy) against the composed path on {device}");
        println!("{:<30} {:<5} {:>5}  errors", "kernel", "dtype", "fused");
    }
    for r in &rows {
        let must_fuse = !matches!(device, DeviceSpec::Cpu)
            && (r.dtype == FloatDType::F32 || matches!(device, DeviceSpec::Cuda(_)));
        let ok = r.passed() && (r.fused || !must_fuse);
        if !ok {
            failed.push(format!("{} {:?}", r.what, r.dtype));
        }
        let errors: Vec<String> = r
            .errors
            .iter()
            .map(|(name, e)| format!("{name} {e:.2e}"))
            .collect();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "device": device.to_string(), "kernel": r.what,
                    "dtype": format!("{:?}", r.dtype), "fused": r.fused,
                    "errors": r.errors.iter().map(|(n, e)| (n.to_string(), *e)).collect::<std::collections::BTreeMap<_, _>>(),
                    "tolerance": r.tolerance(), "ok": ok,
                })
            );
        } else {
            println!(
                "{:<30} {:<5} {:>5}  {}  {}",
                r.what,
                format!("{:?}", r.dtype),
                r.fused,
                errors.join(", "),
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    if !failed.is_empty() {
        bail!(
            "kernel-check on {device}: {} of {} cases failed: {}",
            failed.len(),
            reports.len() + rows.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

struct CheckJob<'a> {
    args: &'a Args,
    /// Whether f16 and bf16 are checked too.
    half: bool,
}

impl Job for CheckJob<'_> {
    type Output = anyhow::Result<(Vec<AttentionCheck>, Vec<RowsCheck>)>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Self::Output {
        let dtypes: &[FloatDType] = if self.half {
            &[FloatDType::F32, FloatDType::F16, FloatDType::BF16]
        } else {
            &[FloatDType::F32]
        };
        let seq = self.args.seq;
        let mut reports = Vec::new();
        for &dtype in dtypes {
            // head_dim 64: GQA (8 query heads over 2), ALiBi, causal, a padded first element;
            // head_dim 128: 6 heads (non-power-of-two ALiBi slopes), multi-query.
            let cases = [
                AttentionCase {
                    batch: 2,
                    seq,
                    heads: 8,
                    kv_heads: 2,
                    head_dim: 64,
                    dtype,
                    alibi: true,
                    padding: true,
                },
                AttentionCase {
                    batch: 1,
                    seq,
                    heads: 6,
                    kv_heads: 1,
                    head_dim: 128,
                    dtype,
                    alibi: true,
                    padding: false,
                },
            ];
            for case in cases {
                reports.push(check_attention::<B>(case, &device));
            }
        }
        // LayerNorm with a bias and RMSNorm without, at a 1B model's width (2048) and a
        // width no multiple of the kernels' 128 units; the cross-entropy over MPT's vocabulary.
        let mut rows = Vec::new();
        for &dtype in dtypes {
            rows.push(check_norm::<B>(seq, 2048, dtype, false, true, &device));
            rows.push(check_norm::<B>(seq, 300, dtype, true, false, &device));
        }
        rows.push(check_cross_entropy::<B>(seq.min(256), 50_432, &device));
        Ok((reports, rows))
    }
}

/// `kernel-check --linear`: the cuBLASLt linear path against burn's matmul.
fn run_linear(args: &Args, device: DeviceSpec) -> anyhow::Result<()> {
    let cuda = matches!(device, DeviceSpec::Cuda(_));
    if cuda && !switches::cublaslt() {
        bail!(
            "kernel-check --linear checks the cuBLASLt path, which is off: set {}=1",
            switches::CUBLASLT
        );
    }
    let reports = device.run(LinearJob)?;
    if !args.json {
        println!("linear layers (x · wᵀ and both gradients) against burn's matmul on {device}");
        if !switches::tf32() {
            println!(
                "(f32 skipped: set {}=1 to check it in TF32)",
                switches::TF32
            );
        }
        println!(
            "{:<5} {:>5} {:>5} {:>5} {:>5}  {:>9} {:>9} {:>9} {:>9} {:>10} {:>11}  ok",
            "dtype",
            "rows",
            "d_in",
            "d_out",
            "fused",
            "y",
            "dx",
            "dw",
            "tolerance",
            "fused ms",
            "composed ms"
        );
    }
    let mut failed = Vec::new();
    for r in &reports {
        // On CUDA every case must go through cuBLASLt; elsewhere only the errors are checked.
        let ok = r.passed() && (r.fused || !cuda);
        if !ok {
            failed.push(format!("{}x{}x{} {:?}", r.rows, r.d_in, r.d_out, r.dtype));
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "device": device.to_string(), "kernel": "linear",
                    "dtype": format!("{:?}", r.dtype), "rows": r.rows, "d_in": r.d_in,
                    "d_out": r.d_out, "fused": r.fused, "errors": r.errors,
                    "tolerance": r.tolerance(), "fused_ms": r.fused_ms,
                    "composed_ms": r.composed_ms, "ok": ok,
                })
            );
        } else {
            let e = r.errors;
            println!(
                "{:<5} {:>5} {:>5} {:>5} {:>5}  {:>9.2e} {:>9.2e} {:>9.2e} {:>9.1e} {:>10.1} {:>11.1}  {}",
                format!("{:?}", r.dtype),
                r.rows,
                r.d_in,
                r.d_out,
                r.fused,
                e[0],
                e[1],
                e[2],
                r.tolerance(),
                r.fused_ms,
                r.composed_ms,
                if ok { "ok" } else { "FAIL" }
            );
        }
    }
    if !failed.is_empty() {
        bail!(
            "kernel-check --linear on {device}: {} of {} cases failed: {}",
            failed.len(),
            reports.len(),
            failed.join("; ")
        );
    }
    Ok(())
}

struct LinearJob;

impl Job for LinearJob {
    type Output = anyhow::Result<Vec<LinearCheck>>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Self::Output {
        let mut dtypes = vec![FloatDType::BF16, FloatDType::F16];
        if switches::tf32() {
            dtypes.push(FloatDType::F32);
        }
        // A 350m-wide MLP product ([4096, 1024] · [1024, 4096]) and an odd one ([77, 96] ·
        // [96, 200]: 77 rows, so ∂w's contraction and x's row count are not multiples of 8).
        let shapes = [(4096, 1024, 4096), (77, 96, 200)];
        let mut reports = Vec::new();
        for &dtype in &dtypes {
            for (rows, d_in, d_out) in shapes {
                reports.push(check_linear::<B>(rows, d_in, d_out, dtype, &device));
            }
        }
        Ok(reports)
    }
}
