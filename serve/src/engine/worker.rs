//! The model thread's loop (see the module docs of [`super`] for its four phases).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};

use burn::prelude::*;
use tessera_model::{KvCache, Mpt};

use super::batch::{DecodeBatch, prefill_chunk, prefill_group};
use super::scheduler::{Pending, PrefillPlan, admissions, plan_prefill};
use super::sequence::Sequence;
use super::{EngineConfig, EngineStats, Submission};

/// Runs until the inbox is closed and every sequence has finished.
pub(super) fn run<B: Backend>(
    model: Mpt<B>,
    device: B::Device,
    config: EngineConfig,
    inbox: Receiver<Submission>,
    stats: Arc<EngineStats>,
) {
    let max_seq_len = model.config().max_seq_len;
    let mut waiting: VecDeque<Sequence<B>> = VecDeque::new();
    let mut prefilling: VecDeque<Sequence<B>> = VecDeque::new();
    let mut batch = DecodeBatch::new(&model);
    let mut open = true;
    loop {
        // 1. Intake: block while there is nothing to do, else take what has arrived.
        let idle = |w: &VecDeque<_>, p: &VecDeque<_>, b: &DecodeBatch<B>| {
            w.is_empty() && p.is_empty() && b.len() == 0
        };
        if open && idle(&waiting, &prefilling, &batch) {
            match inbox.recv() {
                Ok(s) => enqueue(&mut waiting, s),
                Err(_) => open = false,
            }
        }
        while open {
            match inbox.try_recv() {
                Ok(s) => enqueue(&mut waiting, s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !open && idle(&waiting, &prefilling, &batch) {
            return;
        }

        // Cancelled sequences leave wherever they are.
        let before = waiting.len();
        waiting.retain(|s| !s.is_cancelled());
        let dropped_waiting = before - waiting.len();
        stats.waiting.fetch_sub(dropped_waiting, Ordering::AcqRel);
        let before = prefilling.len();
        prefilling.retain(|s| !s.is_cancelled());
        let mut cancelled = dropped_waiting + before - prefilling.len();
        let keep: Vec<bool> = batch.rows.iter().map(|s| !s.is_cancelled()).collect();
        cancelled += batch.retain(&keep);
        stats
            .cancelled
            .fetch_add(cancelled as u64, Ordering::Relaxed);

        // 2. Admission.
        let admit = admissions(
            prefilling.len() + batch.len(),
            waiting.len(),
            config.max_batch,
        );
        prefilling.extend(waiting.drain(..admit));
        stats.waiting.fetch_sub(admit, Ordering::AcqRel);

        // 3. At most one prefill forward.
        let pending: Vec<Pending> = prefilling
            .iter()
            .map(|s| Pending {
                remaining: s.remaining_prompt(),
                started: s.prefilled > 0,
            })
            .collect();
        match plan_prefill(&pending, config.prefill_chunk) {
            Some(PrefillPlan::Chunk { tokens }) => {
                let head = prefilling.front_mut().expect("a plan implies a sequence");
                if let Some(logits) = prefill_chunk(&model, head, tokens, &device) {
                    let mut seq = prefilling.pop_front().expect("the head exists");
                    let cache = seq.cache.take().expect("a prefilled sequence has a cache");
                    start_decoding(&mut batch, vec![seq], cache, &logits, &config, max_seq_len);
                }
                stats.prefill_forwards.fetch_add(1, Ordering::Relaxed);
            }
            Some(PrefillPlan::Group { count, width }) => {
                let mut seqs: Vec<Sequence<B>> = prefilling.drain(..count).collect();
                let (cache, logits) = prefill_group(&model, &seqs, width, &device);
                for s in &mut seqs {
                    s.prefilled = s.prompt.len();
                }
                start_decoding(&mut batch, seqs, cache, &logits, &config, max_seq_len);
                stats.prefill_forwards.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }

        // 4. One decode step for every running row.
        if batch.len() > 0 {
            let rows = batch.len();
            let logits = batch.step(&model, &device);
            let vocab = logits.len() / rows;
            let keep: Vec<bool> = batch
                .rows
                .iter_mut()
                .enumerate()
                .map(|(r, s)| {
                    s.accept(
                        &logits[r * vocab..(r + 1) * vocab],
                        &config.eos_ids,
                        max_seq_len,
                    )
                    .is_none()
                })
                .collect();
            batch.retain(&keep);
            stats.last_batch.store(rows, Ordering::Relaxed);
            stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        }
        stats
            .running
            .store(prefilling.len() + batch.len(), Ordering::Relaxed);
    }
}

/// Queues a submission's sequences (the submitter already counted them as waiting).
fn enqueue<B: Backend>(waiting: &mut VecDeque<Sequence<B>>, submission: Submission) {
    let Submission {
        specs,
        events,
        cancels,
    } = submission;
    for (index, (spec, cancel)) in specs.into_iter().zip(cancels).enumerate() {
        waiting.push_back(Sequence::new(index, spec, events.clone(), cancel));
    }
}

/// Samples the first token of freshly prefilled sequences (`logits`: one row each, matching
/// the rows of `cache`); those that go on join the decode batch with their cache rows.
fn start_decoding<B: Backend>(
    batch: &mut DecodeBatch<B>,
    seqs: Vec<Sequence<B>>,
    mut cache: KvCache<B>,
    logits: &[f32],
    config: &EngineConfig,
    max_seq_len: usize,
) {
    let vocab = logits.len() / seqs.len();
    let mut rows = Vec::with_capacity(seqs.len());
    let mut going_on = Vec::with_capacity(seqs.len());
    for (r, mut seq) in seqs.into_iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        if seq.accept(row, &config.eos_ids, max_seq_len).is_none() {
            rows.push(r);
            going_on.push(seq);
        }
    }
    if going_on.is_empty() {
        return;
    }
    cache.retain_rows(&rows);
    batch.join(going_on, cache);
}
