//! `GET /metrics` in Prometheus' text format (0.0.4), through the `prometheus-client` crate:
//! requests by endpoint and status, prompt and generated tokens, the queue depth and running
//! sequences, and histograms of time to first token, time per output token and request
//! duration.
//!
//! Handlers record request-level figures as requests end; the engine's own counters
//! ([`EngineStats`]) are copied in at each scrape.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::EngineStats;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of `tessera_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    time_to_first_token: Histogram,
    time_per_output_token: Histogram,
    request_duration: Histogram,
    queue_depth: Gauge,
    running: Gauge,
    decode_batch: Gauge,
    decode_steps: Counter,
    cancelled: Counter,
    /// One scrape at a time copies the engine's counters.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status code",
            requests.clone(),
        );
        let prompt_tokens = Counter::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens of answered requests",
            prompt_tokens.clone(),
        );
        let generation_tokens = Counter::default();
        registry.register(
            "generation_tokens",
            "Tokens generated for answered requests",
            generation_tokens.clone(),
        );
        // 1 ms to 32 s.
        let time_to_first_token = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "time_to_first_token_seconds",
            "From the request's arrival to its first generated token",
            time_to_first_token.clone(),
        );
        // 0.25 ms to 4 s.
        let time_per_output_token = Histogram::new(exponential_buckets(0.00025, 2.0, 15));
        registry.register(
            "time_per_output_token_seconds",
            "Mean time between a choice's tokens after the first",
            time_per_output_token.clone(),
        );
        let request_duration = Histogram::new(exponential_buckets(0.005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "From a generation request's arrival to its last byte",
            request_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Sequences waiting for a place in the running batch",
            queue_depth.clone(),
        );
        let running = Gauge::default();
        registry.register(
            "running_sequences",
            "Sequences being prefilled or decoded",
            running.clone(),
        );
        let decode_batch = Gauge::default();
        registry.register(
            "decode_batch_size",
            "Rows of the last decode step",
            decode_batch.clone(),
        );
        let decode_steps = Counter::default();
        registry.register("decode_steps", "Decode steps run", decode_steps.clone());
        let cancelled = Counter::default();
        registry.register(
            "cancelled_sequences",
            "Sequences ended early: client gone, stop string, or time limit",
            cancelled.clone(),
        );
        Self {
            registry,
            requests,
            prompt_tokens,
            generation_tokens,
            time_to_first_token,
            time_per_output_token,
            request_duration,
            queue_depth,
            running,
            decode_batch,
            decode_steps,
            cancelled,
            scrape: Mutex::new(()),
        }
    }

    /// Counts an answered request.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    /// Records a generation request's token counts and timings (seconds).
    pub fn generation(&self, prompt_tokens: usize, generated_tokens: usize, duration: f64) {
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.generation_tokens.inc_by(generated_tokens as u64);
        self.request_duration.observe(duration);
    }

    /// Records a request's time to first token (seconds).
    pub fn first_token(&self, seconds: f64) {
        self.time_to_first_token.observe(seconds);
    }

    /// Records one choice's mean time per output token after the first (seconds).
    pub fn per_output_token(&self, seconds: f64) {
        self.time_per_output_token.observe(seconds);
    }

    /// The exposition text, with the engine's counters as they are now.
    pub fn render(&self, engine: &EngineStats) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let gauge = |g: &Gauge, v: usize| {
            g.set(v as i64);
        };
        gauge(&self.queue_depth, engine.waiting.load(Ordering::Relaxed));
        gauge(&self.running, engine.running.load(Ordering::Relaxed));
        gauge(
            &self.decode_batch,
            engine.last_batch.load(Ordering::Relaxed),
        );
        let catch_up = |c: &Counter, now: u64| {
            let seen = c.get();
            if now > seen {
                c.inc_by(now - seen);
            }
        };
        catch_up(
            &self.decode_steps,
            engine.decode_steps.load(Ordering::Relaxed),
        );
        catch_up(&self.cancelled, engine.cancelled.load(Ordering::Relaxed));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_with_its_value() {
        let m = Metrics::new();
        m.request("completions", 200);
        m.request("completions", 200);
        m.request("chat_completions", 400);
        m.generation(12, 30, 0.5);
        m.first_token(0.02);
        m.per_output_token(0.004);
        let stats = EngineStats::default();
        stats.waiting.store(3, Ordering::Relaxed);
        stats.decode_steps.store(7, Ordering::Relaxed);
        let text = m.render(&stats);
        for line in [
            "tessera_requests_total{endpoint=\"completions\",status=\"200\"} 2",
            "tessera_requests_total{endpoint=\"chat_completions\",status=\"400\"} 1",
            "tessera_prompt_tokens_total 12",
            "tessera_generation_tokens_total 30",
            "tessera_queue_depth 3",
            "tessera_decode_steps_total 7",
            "tessera_time_to_first_token_seconds_count 1",
            "tessera_time_per_output_token_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // Counters copied from the engine never double-count across scrapes.
        let again = m.render(&stats);
        assert!(again.contains("tessera_decode_steps_total 7"), "{again}");
    }
}
