//! The engine: one thread owns the model and runs continuous batching; HTTP handlers talk to
//! it only through [`Engine::submit`], which returns a [`Ticket`] whose channel yields each
//! sequence's tokens as they are sampled (TGI's shape: the router never touches the model).
//!
//! Every loop of the model thread
//! 1. takes new submissions, and drops sequences whose client went away or asked to stop;
//! 2. admits waiting sequences while fewer than `max_batch` are running ([`scheduler`]);
//! 3. runs at most one prefill forward of at most `prefill_chunk` tokens (a long prompt is
//!    prefilled a chunk per loop, so it never stalls the running batch for longer than that);
//!    sequences whose prompt is done sample their first token and join the decode batch;
//! 4. runs one decode step for the whole running batch: every row feeds its last token,
//!    attends over its own KV cache rows, and samples its next token ([`batch`]).
//!
//! Sequences join and leave the decode batch at any step. Each carries an optional adapter;
//! [`batch::forward_rows`] is where per-row adapters plug in.

mod batch;
pub mod scheduler;
mod sequence;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use burn::prelude::*;
use tessera_model::Mpt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Limits of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences running at once (being prefilled or decoded): the decode batch's size limit.
    pub max_batch: usize,
    /// Sequences waiting for admission; a submission past it is refused
    /// ([`SubmitError::QueueFull`]).
    pub max_queue: usize,
    /// Token budget of one prefill forward (padding included). Longer prompts are prefilled
    /// in chunks of this size, between decode steps.
    pub prefill_chunk: usize,
    /// A sequence stops after sampling one of these (generation_config.json's
    /// `eos_token_id`, else the tokenizer's end-of-text token).
    pub eos_ids: Vec<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_queue: 256,
            prefill_chunk: 256,
            eos_ids: Vec::new(),
        }
    }
}

/// Which adapter a sequence runs with (an index into the server's adapter list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdapterId(pub usize);

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (argmax), as `tessera generate`.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// With `stream`, keys the sequence's random stream exactly as `tessera generate` keys
    /// row `stream` under `--seed seed`, so seeded results are reproducible and match it.
    pub seed: u64,
    /// See `seed`: the choice's number within its prompt.
    pub stream: usize,
}

/// One sequence to generate.
#[derive(Clone, Debug)]
pub struct SequenceSpec {
    /// Prompt token ids (non-empty, shorter than the model's `max_seq_len`).
    pub prompt: Vec<u32>,
    /// New tokens at most (the sequence also stops at `max_seq_len`).
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// `Some(k)`: report each sampled token's log-probability and the `k` most likely tokens.
    pub logprobs: Option<usize>,
    /// The adapter, or `None` for the base model.
    pub adapter: Option<AdapterId>,
}

/// Log-probabilities reported with a token (natural log, temperature 1).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// Of the sampled token.
    pub logprob: f32,
    /// The most likely tokens, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why the engine ended a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It sampled an end-of-sequence id (which is reported as its last token).
    Eos,
    /// It reached `max_new_tokens` or the model's `max_seq_len`.
    Length,
}

/// What a ticket's channel yields. `seq` is the sequence's index in the submission.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A sampled token.
    Token {
        /// Which sequence.
        seq: usize,
        /// The token id.
        token: u32,
        /// Present when the sequence asked for log-probabilities.
        logprobs: Option<TokenLogprobs>,
    },
    /// The sequence ended; no more events come for it.
    Finished {
        /// Which sequence.
        seq: usize,
        /// Why.
        reason: FinishReason,
    },
}

/// Why a submission was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The wait queue is full.
    #[error("the server is busy: {waiting} sequences are waiting (limit {max_queue})")]
    QueueFull {
        /// Sequences waiting now.
        waiting: usize,
        /// The limit.
        max_queue: usize,
    },
    /// The engine is shutting down or its thread has stopped.
    #[error("the engine is not accepting requests (shutting down or stopped)")]
    Stopped,
}

/// The receiving end of a submission.
#[derive(Debug)]
pub struct Ticket {
    /// Token and finish events of every sequence, in order per sequence.
    pub events: UnboundedReceiver<Event>,
    cancels: Vec<Arc<AtomicBool>>,
}

impl Ticket {
    /// Ends sequence `seq` at the engine's next step (its row leaves the batch). Dropping the
    /// ticket ends every sequence of the submission the same way.
    pub fn cancel(&self, seq: usize) {
        if let Some(flag) = self.cancels.get(seq) {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Counters the engine keeps up to date (read by `/metrics` and `/health`).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Sequences submitted and not yet admitted.
    pub waiting: AtomicUsize,
    /// Sequences being prefilled or decoded.
    pub running: AtomicUsize,
    /// Rows of the last decode step.
    pub last_batch: AtomicUsize,
    /// Decode steps so far.
    pub decode_steps: AtomicU64,
    /// Prefill forwards so far.
    pub prefill_forwards: AtomicU64,
    /// Sequences ended early because their client went away or asked to stop.
    pub cancelled: AtomicU64,
    /// True while the model thread runs.
    pub alive: AtomicBool,
}

/// A submission travelling to the model thread.
struct Submission {
    specs: Vec<SequenceSpec>,
    events: UnboundedSender<Event>,
    cancels: Vec<Arc<AtomicBool>>,
}

/// The handle HTTP handlers share.
pub struct Engine {
    inbox: Mutex<Option<mpsc::Sender<Submission>>>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the model thread. The model moves onto it; nothing else ever touches it.
    ///
    /// # Panics
    /// If `config.max_batch`, `max_queue` or `prefill_chunk` is 0 (checked by the CLI first).
    pub fn start<B: Backend>(model: Mpt<B>, device: B::Device, config: EngineConfig) -> Self
    where
        Mpt<B>: Send + 'static,
    {
        assert!(
            config.max_batch > 0 && config.max_queue > 0 && config.prefill_chunk > 0,
            "engine limits must be positive: {config:?}"
        );
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        stats.alive.store(true, Ordering::Relaxed);
        let thread = {
            let stats = stats.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("tessera-engine".into())
                .spawn(move || {
                    // Marks the engine dead however the loop ends (a panic included), so
                    // /health reports it and waiting clients see their channel close.
                    struct Alive(Arc<EngineStats>);
                    impl Drop for Alive {
                        fn drop(&mut self) {
                            self.0.alive.store(false, Ordering::Relaxed);
                        }
                    }
                    let _alive = Alive(stats.clone());
                    worker::run(model, device, config, rx, stats);
                })
                .expect("spawning the engine thread")
        };
        Self {
            inbox: Mutex::new(Some(tx)),
            stats,
            config,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Queues `specs` (one request's sequences) and returns their event channel, or refuses
    /// at once when the queue is full or the engine is stopping.
    pub fn submit(&self, specs: Vec<SequenceSpec>) -> Result<Ticket, SubmitError> {
        let n = specs.len();
        let max_queue = self.config.max_queue;
        self.stats
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w + n <= max_queue).then_some(w + n)
            })
            .map_err(|waiting| SubmitError::QueueFull { waiting, max_queue })?;
        let (events, rx) = unbounded_channel();
        let cancels: Vec<Arc<AtomicBool>> = (0..n).map(|_| Arc::default()).collect();
        let submission = Submission {
            specs,
            events,
            cancels: cancels.clone(),
        };
        let sent = match &*self.inbox.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(submission).is_ok(),
            None => false,
        };
        if !sent {
            self.stats.waiting.fetch_sub(n, Ordering::AcqRel);
            return Err(SubmitError::Stopped);
        }
        Ok(Ticket {
            events: rx,
            cancels,
        })
    }

    /// The engine's counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The limits it runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// True while the model thread runs and accepts work.
    pub fn is_alive(&self) -> bool {
        self.stats.alive.load(Ordering::Relaxed)
    }

    /// Stops accepting submissions, lets every queued and running sequence finish, and waits
    /// for the model thread to exit. Idempotent.
    pub fn shutdown(&self) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            // A panic on the model thread has already been reported by the panic hook, and
            // its clients have seen their channels close.
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
