//! The engine against `tessera_model::generate`, the oracle: every sequence of a continuous
//! batch must produce exactly the tokens it produces alone.

use std::time::{Duration, Instant};

use burn::backend::Flex;
use tessera_model::{FinishReason as GenFinish, GenerationConfig, Mpt, MptConfig, generate};

use super::*;

fn tiny(max_seq_len: usize) -> Mpt<Flex> {
    let mut c = MptConfig::preset("tiny").unwrap();
    c.vocab_size = 96;
    c.max_seq_len = max_seq_len;
    c.init::<Flex>(&Default::default(), 11)
}

fn spec(prompt: Vec<u32>, max_new_tokens: usize) -> SequenceSpec {
    SequenceSpec {
        prompt,
        max_new_tokens,
        sampling: Sampling {
            temperature: 0.0,
            top_p: None,
            seed: 0,
            stream: 0,
        },
        logprobs: None,
        adapter: None,
    }
}

/// Every token and the finish reason of each sequence of a ticket.
fn collect(ticket: &mut Ticket, seqs: usize) -> Vec<(Vec<u32>, FinishReason)> {
    let mut tokens = vec![Vec::new(); seqs];
    let mut finish = vec![None; seqs];
    let deadline = Instant::now() + Duration::from_secs(60);
    while finish.iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "the engine stalled");
        match ticket.events.blocking_recv().expect("the engine is alive") {
            Event::Token { seq, token, .. } => tokens[seq].push(token),
            Event::Finished { seq, reason } => finish[seq] = Some(reason),
        }
    }
    tokens
        .into_iter()
        .zip(finish.into_iter().map(Option::unwrap))
        .collect()
}

fn oracle(model: &Mpt<Flex>, prompt: &[u32], cfg: &GenerationConfig) -> Vec<u32> {
    generate(model, &[prompt.to_vec()], cfg, None, &Default::default()).unwrap()[0]
        .ids
        .clone()
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7 + salt * 13) % 90 + 1)
        .collect()
}

#[test]
fn a_continuous_batch_decodes_every_sequence_like_generate_alone() {
    let model = tiny(96);
    let engine = Engine::start(
        model.clone(),
        Default::default(),
        EngineConfig {
            // 3 running at most, so sequences wait, join and leave mid-decode; a budget of
            // 16 tokens, so the long prompts are prefilled in chunks between decode steps.
            max_batch: 3,
            max_queue: 64,
            prefill_chunk: 16,
            eos_ids: Vec::new(),
        },
    );
    let lens = [5, 40, 1, 12, 33, 7, 2, 20];
    let budgets = [9, 4, 12, 1, 6, 10, 3, 8];
    let mut tickets: Vec<(Ticket, usize)> = Vec::new();
    for (i, (&len, &budget)) in lens.iter().zip(&budgets).enumerate() {
        let t = engine
            .submit(vec![spec(prompt(len, i as u32), budget)])
            .unwrap();
        tickets.push((t, i));
        if i == 3 {
            // Later arrivals join a batch that is already decoding.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (mut ticket, i) in tickets {
        let out = collect(&mut ticket, 1);
        let cfg = GenerationConfig {
            max_new_tokens: budgets[i],
            ..GenerationConfig::default()
        };
        let want = oracle(&model, &prompt(lens[i], i as u32), &cfg);
        assert_eq!(
            out[0].0, want,
            "sequence {i} (prompt of {} tokens)",
            lens[i]
        );
        assert_eq!(out[0].1, FinishReason::Length);
    }
    assert!(engine.stats().prefill_forwards.load(Ordering::Relaxed) >= 4);
    engine.shutdown();
    assert!(!engine.is_alive());
}

#[test]
fn seeded_sampling_matches_generate_rows_and_repeats() {
    let model = tiny(64);
    let engine = Engine::start(model.clone(), Default::default(), EngineConfig::default());
    let p = prompt(6, 3);
    let sampled = |engine: &Engine| {
        let specs = (0..2)
            .map(|stream| SequenceSpec {
                sampling: Sampling {
                    temperature: 0.9,
                    top_p: Some(0.95),
                    seed: 42,
                    stream,
                },
                ..spec(p.clone(), 12)
            })
            .collect();
        let mut t = engine.submit(specs).unwrap();
        collect(&mut t, 2)
    };
    let first = sampled(&engine);
    assert_eq!(
        first,
        sampled(&engine),
        "the same seed gives the same tokens"
    );
    // `generate` with the same seed: row r draws from the same stream as choice r.
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        temperature: 0.9,
        top_p: Some(0.95),
        seed: 42,
        ..GenerationConfig::default()
    };
    let rows = generate(
        &model,
        &[p.clone(), p.clone()],
        &cfg,
        None,
        &Default::default(),
    )
    .unwrap();
    for r in 0..2 {
        assert_eq!(first[r].0, rows[r].ids, "choice {r}");
    }
    assert_ne!(first[0].0, first[1].0, "two choices draw from two streams");
}

#[test]
fn eos_ends_a_sequence_and_the_context_length_caps_it() {
    let model = tiny(16);
    let p = prompt(4, 1);
    let greedy = oracle(
        &model,
        &p,
        &GenerationConfig {
            max_new_tokens: 3,
            ..GenerationConfig::default()
        },
    );
    let engine = Engine::start(
        model.clone(),
        Default::default(),
        EngineConfig {
            eos_ids: vec![greedy[1]],
            ..EngineConfig::default()
        },
    );
    let mut t = engine.submit(vec![spec(p.clone(), 10)]).unwrap();
    let out = collect(&mut t, 1);
    let first_eos = greedy.iter().position(|&t| t == greedy[1]).unwrap();
    assert_eq!(out[0], (greedy[..=first_eos].to_vec(), FinishReason::Eos));

    // 14 prompt tokens and max_seq_len 16: two tokens, as `generate` stops too.
    let long = prompt(14, 2);
    let mut t = engine.submit(vec![spec(long.clone(), 10)]).unwrap();
    let out = collect(&mut t, 1);
    let want = generate(
        &model,
        &[long],
        &GenerationConfig {
            max_new_tokens: 10,
            ..GenerationConfig::default()
        },
        None,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(want[0].finish, GenFinish::MaxSeqLen);
    assert_eq!(out[0], (want[0].ids.clone(), FinishReason::Length));
}

#[test]
fn a_dropped_ticket_or_a_cancel_takes_the_sequence_out_of_the_batch() {
    let model = tiny(512);
    let engine = Engine::start(model, Default::default(), EngineConfig::default());
    let mut dropped = engine.submit(vec![spec(prompt(4, 0), 500)]).unwrap();
    let mut cancelled = engine.submit(vec![spec(prompt(4, 1), 500)]).unwrap();
    // Both are decoding once their first tokens arrive.
    assert!(matches!(
        dropped.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    assert!(matches!(
        cancelled.events.blocking_recv(),
        Some(Event::Token { .. })
    ));
    drop(dropped);
    cancelled.cancel(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.stats().cancelled.load(Ordering::Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "the sequences were not cancelled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let steps = engine.stats().decode_steps.load(Ordering::Relaxed);
    assert!(
        steps < 400,
        "cancelled long before 500 tokens ({steps} steps)"
    );
    // The cancelled sequence never finishes: its channel just goes quiet and closes at
    // shutdown.
    engine.shutdown();
    while let Some(e) = cancelled.events.blocking_recv() {
        assert!(
            matches!(e, Event::Token { .. }),
            "no Finished after a cancel: {e:?}"
        );
    }
    assert_eq!(engine.stats().running.load(Ordering::Relaxed), 0);
}

#[test]
fn a_full_queue_refuses_and_a_stopped_engine_refuses() {
    let engine = Engine::start(
        tiny(32),
        Default::default(),
        EngineConfig {
            max_queue: 2,
            ..EngineConfig::default()
        },
    );
    let three = (0..3).map(|i| spec(prompt(3, i), 2)).collect();
    assert_eq!(
        engine.submit(three).unwrap_err(),
        SubmitError::QueueFull {
            waiting: 0,
            max_queue: 2
        }
    );
    assert_eq!(engine.stats().waiting.load(Ordering::Relaxed), 0);
    engine.shutdown();
    assert_eq!(
        engine.submit(vec![spec(prompt(3, 0), 2)]).unwrap_err(),
        SubmitError::Stopped
    );
}

#[test]
fn shutdown_lets_queued_and_running_sequences_finish() {
    let model = tiny(64);
    let engine = Engine::start(
        model.clone(),
        Default::default(),
        EngineConfig {
            max_batch: 1,
            ..EngineConfig::default()
        },
    );
    let mut tickets: Vec<Ticket> = (0..3)
        .map(|i| engine.submit(vec![spec(prompt(5, i), 6)]).unwrap())
        .collect();
    engine.shutdown();
    for (i, t) in tickets.iter_mut().enumerate() {
        let out = collect(t, 1);
        let cfg = GenerationConfig {
            max_new_tokens: 6,
            ..GenerationConfig::default()
        };
        assert_eq!(out[0].0, oracle(&model, &prompt(5, i as u32), &cfg));
    }
}

#[test]
fn logprobs_come_with_the_tokens_when_asked() {
    let engine = Engine::start(tiny(32), Default::default(), EngineConfig::default());
    let mut t = engine
        .submit(vec![SequenceSpec {
            logprobs: Some(3),
            ..spec(prompt(3, 0), 2)
        }])
        .unwrap();
    match t.events.blocking_recv() {
        Some(Event::Token {
            token,
            logprobs: Some(lp),
            ..
        }) => {
            assert_eq!(lp.top.len(), 3);
            assert_eq!(lp.top[0].0, token, "greedy picks the most likely token");
            assert!((lp.top[0].1 - lp.logprob).abs() < 1e-6 && lp.logprob <= 0.0);
        }
        other => panic!("expected a token with logprobs, got {other:?}"),
    }
}
