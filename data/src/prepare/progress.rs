//! The progress bar: input bytes read (so the ETA is real), documents/s and tokens/s.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, or nothing when disabled (indicatif also stays silent when stderr
/// is not a terminal).
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    /// A bar over `total_bytes` of input, if `enabled`.
    pub fn new(enabled: bool, total_bytes: u64) -> Self {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {binary_bytes}/{binary_total_bytes} (eta {eta}) {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            bar,
            started: Instant::now(),
        }
    }

    /// Moves the bar to `bytes` read and shows the rates so far.
    pub fn update(&self, bytes: u64, docs: u64, tokens: u64) {
        if let Some(bar) = &self.bar {
            let s = self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(bytes);
            bar.set_message(format!(
                "{docs} docs ({:.0}/s), {} tokens ({}/s)",
                docs as f64 / s,
                human(tokens as f64),
                human(tokens as f64 / s)
            ));
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// 1234567 → "1.23M".
fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_humanized() {
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_560_000.0), "4.56M");
        assert_eq!(human(7.1e9), "7.10G");
        let p = Progress::new(false, 10);
        p.update(5, 1, 2);
        p.finish();
    }
}
