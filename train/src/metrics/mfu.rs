//! Throughput and model FLOPs utilisation.
//!
//! MFU = (model FLOPs per token × tokens per second) ÷ (peak FLOP/s per device × devices), where
//! the model FLOPs come from `MptConfig::flops_per_token(seq_len, training = true)` (PaLM's
//! accounting, 6N + attention, no recomputation counted). Peaks are dense (no 2:4 sparsity),
//! as composer's `SpeedMonitor` table: the mixed-precision figure for `amp_bf16`/`amp_fp16`, the
//! plain fp32 figure for `fp32`. A CPU has no datasheet number that means anything, so its
//! peak is measured at run time ([`measure_matmul_flops`]) and passed in.

use std::collections::VecDeque;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::config::Precision;

/// A device kind with a known peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accelerator {
    /// NVIDIA H100 SXM.
    H100Sxm,
    /// NVIDIA H100 PCIe.
    H100Pcie,
    /// NVIDIA H200 (same compute as the H100 SXM; more and faster memory).
    H200,
    /// NVIDIA A100 (SXM and PCIe have the same peaks).
    A100,
    /// A CPU or any device whose peak was measured, in FLOP/s.
    Measured(f64),
}

impl Accelerator {
    /// Parses `h100`, `h100-sxm`, `h100-pcie`, `h200`, `a100` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "h100" | "h100-sxm" | "h100sxm" => Some(Accelerator::H100Sxm),
            "h100-pcie" | "h100pcie" => Some(Accelerator::H100Pcie),
            "h200" | "h200-sxm" => Some(Accelerator::H200),
            "a100" | "a100-sxm" | "a100-pcie" => Some(Accelerator::A100),
            _ => None,
        }
    }

    /// A human name (`H100 SXM`).
    pub fn display_name(&self) -> String {
        match self {
            Accelerator::H100Sxm => "H100 SXM".into(),
            Accelerator::H100Pcie => "H100 PCIe".into(),
            Accelerator::H200 => "H200".into(),
            Accelerator::A100 => "A100".into(),
            Accelerator::Measured(f) => format!("device measured at {:.1} TFLOP/s", f / 1e12),
        }
    }

    /// The names [`Accelerator::from_name`] accepts, for error messages.
    pub const NAMES: &'static str = "h100 (= h100-sxm), h100-pcie, h200, a100";

    /// Dense peak FLOP/s of one device at `precision`.
    pub fn peak_flops(&self, precision: Precision) -> f64 {
        let mixed = !matches!(precision, Precision::Fp32);
        match self {
            // composer speed_monitor: 1.979e15 / 2 (datasheets quote 2:4 sparsity).
            Accelerator::H100Sxm | Accelerator::H200 => {
                if mixed {
                    989.5e12
                } else {
                    67e12
                }
            }
            Accelerator::H100Pcie => {
                if mixed {
                    756.5e12
                } else {
                    51e12
                }
            }
            Accelerator::A100 => {
                if mixed {
                    312e12
                } else {
                    19.5e12
                }
            }
            Accelerator::Measured(f) => *f,
        }
    }
}

/// Model FLOPs utilisation: achieved model FLOP/s over the peak of all devices.
pub fn mfu(flops_per_token: f64, tokens_per_s: f64, peak_per_device: f64, devices: usize) -> f64 {
    if peak_per_device <= 0.0 || devices == 0 {
        return 0.0;
    }
    flops_per_token * tokens_per_s / (peak_per_device * devices as f64)
}

/// Tokens per second over the last `window` steps (a sliding window, as composer's SpeedMonitor,
/// so a slow first step or an eval pause does not skew the figure for long).
#[derive(Debug, Clone)]
pub struct Throughput {
    window: usize,
    /// (time, cumulative tokens) at each recorded step, oldest first.
    marks: VecDeque<(Instant, u64)>,
}

impl Throughput {
    /// A meter averaging over `window` steps (at least 1).
    pub fn new(window: usize) -> Self {
        Throughput {
            window: window.max(1),
            marks: VecDeque::new(),
        }
    }

    /// Records that `total_tokens` have been consumed by `at`.
    pub fn record(&mut self, at: Instant, total_tokens: u64) {
        self.marks.push_back((at, total_tokens));
        while self.marks.len() > self.window + 1 {
            self.marks.pop_front();
        }
    }

    /// Forgets history (after a pause such as an evaluation, which is not training time).
    pub fn reset(&mut self) {
        self.marks.clear();
    }

    /// Tokens per second across the window, once two marks exist.
    pub fn tokens_per_s(&self) -> Option<f64> {
        let (t0, n0) = self.marks.front()?;
        let (t1, n1) = self.marks.back()?;
        let dt = t1.duration_since(*t0).as_secs_f64();
        (dt > 0.0 && n1 > n0).then(|| (n1 - n0) as f64 / dt)
    }
}

/// Measures a device's matmul FLOP/s: the fastest of `reps` products of two `n × n` f32
/// matrices, after one warm-up, counting `2n³` FLOPs each. This is the CPU "peak" for MFU (what
/// the backend can actually reach on this machine), and a sanity check elsewhere.
pub fn measure_matmul_flops<B: Backend>(device: &B::Device, n: usize, reps: usize) -> f64 {
    let n = n.max(8);
    let reps = reps.max(1);
    let a = Tensor::<B, 2>::random([n, n], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Uniform(-1.0, 1.0), device);
    // Warm-up (kernel selection, allocation, thread start-up), then a sync so it is not timed.
    let _ = a.clone().matmul(b.clone()).sum().into_scalar();
    // The fastest of `reps` timed products: a peak is what the machine can do, and on a shared
    // machine the other repetitions measure the neighbours.
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        let _ = a
            .clone()
            .matmul(b.clone())
            .slice([0..1, 0..1])
            .into_scalar(); // host sync
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn peak_table_matches_the_datasheets() {
        assert_eq!(Accelerator::from_name("H100"), Some(Accelerator::H100Sxm));
        assert_eq!(
            Accelerator::from_name("h100_pcie"),
            Some(Accelerator::H100Pcie)
        );
        assert_eq!(Accelerator::from_name("tpu"), None);
        assert_eq!(
            Accelerator::H100Sxm.peak_flops(Precision::AmpBf16),
            989.5e12
        );
        assert_eq!(Accelerator::H200.peak_flops(Precision::AmpBf16), 989.5e12);
        assert_eq!(Accelerator::A100.peak_flops(Precision::AmpBf16), 312e12);
        assert_eq!(Accelerator::A100.peak_flops(Precision::Fp32), 19.5e12);
        assert_eq!(
            Accelerator::Measured(1e11).peak_flops(Precision::Fp32),
            1e11
        );
    }

    #[test]
    fn mfu_is_achieved_over_peak() {
        // 7B model, ~6·7e9 FLOPs/token, 3000 tok/s per GPU on 8 H100s → 8·3000·42e9 / (8·989.5e12).
        let m = mfu(6.0 * 7e9, 8.0 * 3000.0, 989.5e12, 8);
        assert!((m - 3000.0 * 42e9 / 989.5e12).abs() < 1e-12);
        assert_eq!(mfu(1.0, 1.0, 0.0, 1), 0.0);
    }

    #[test]
    fn throughput_uses_a_sliding_window() {
        let t0 = Instant::now();
        let mut t = Throughput::new(2);
        assert_eq!(t.tokens_per_s(), None);
        t.record(t0, 0);
        // A slow first step: 1000 tokens in 10 s.
        t.record(t0 + Duration::from_secs(10), 1000);
        assert!((t.tokens_per_s().unwrap() - 100.0).abs() < 1e-9);
        // Then two fast steps: 1000 tokens per second each; the slow step leaves the window.
        t.record(t0 + Duration::from_secs(11), 2000);
        t.record(t0 + Duration::from_secs(12), 3000);
        assert!((t.tokens_per_s().unwrap() - 1000.0).abs() < 1e-9);
        t.reset();
        assert_eq!(t.tokens_per_s(), None);
    }

    #[test]
    fn matmul_bench_returns_a_plausible_rate() {
        let f = measure_matmul_flops::<burn::backend::Flex>(&Default::default(), 64, 2);
        assert!(f.is_finite() && f > 1e6, "{f}");
    }
}
