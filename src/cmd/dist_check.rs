//! Hidden `tessera dist-check`: NCCL on one GPU at world size 1 (every collective, f32 and bf16,
//! in place and out of place, compared bit for bit with the host path), for
//! `xtask/scripts/gpu-check.sh`. Only a binary built with the `cuda` feature has NCCL.

use anyhow::bail;
use tessera::device::DeviceSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Values per checked tensor.
    #[arg(long, default_value_t = 1 << 20)]
    elements: usize,
    /// One JSON line per check instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the self check on `--device cuda[:N]`; an error if any check is not bit-exact.
pub fn run(args: Args, device: DeviceSpec) -> anyhow::Result<()> {
    let ordinal = match device {
        DeviceSpec::Cuda(i) => i,
        other => {
            bail!("dist-check runs NCCL on a GPU: pass --device cuda[:N] (got --device {other})")
        }
    };
    check(ordinal, &args)
}

#[cfg(feature = "cuda")]
fn check(ordinal: usize, args: &Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let report = tessera_dist::nccl::gpu_self_check(ordinal, args.elements)
        .with_context(|| format!("NCCL self check on cuda:{ordinal}"))?;
    if !args.json {
        println!(
            "NCCL at world size 1 on cuda:{}, {} values per tensor",
            report.device, report.elements
        );
        println!(
            "{:<24} {:<6} {:<9} {:>10} {:>10}  bit-exact",
            "op", "dtype", "in place", "nccl ms", "host ms"
        );
    }
    for c in &report.checks {
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "op": format!("{:?}", c.op), "dtype": format!("{:?}", c.dtype),
                    "in_place": c.in_place, "via_split": c.via_split,
                    "bit_exact": c.bit_exact,
                    "device_ms": c.device_ms, "host_ms": c.host_ms,
                })
            );
        } else {
            println!(
                "{:<24} {:<6} {:<9} {:>10.3} {:>10.3}  {}",
                format!("{:?}{}", c.op, if c.via_split { " (split)" } else { "" }),
                format!("{:?}", c.dtype),
                c.in_place,
                c.device_ms,
                c.host_ms,
                if c.bit_exact { "yes" } else { "NO" }
            );
        }
    }
    if !report.passed() {
        bail!("NCCL self check failed: a collective differs from the host path (or none ran)");
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn check(_ordinal: usize, _args: &Args) -> anyhow::Result<()> {
    bail!(
        "dist-check: this tessera was built without the `cuda` feature, so it has no NCCL \
         (cargo build --features cuda)"
    )
}
