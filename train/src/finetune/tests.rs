//! Loader behaviour end to end: JSON lines on disk in, examples out.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};
use tessera_data::tokenizer::Tokenizer;

use super::*;
use crate::config::DatasetConfig;

/// A word-level `tokenizer.json`: `<|endoftext|>` = 0, `<unk>` = 1, `w2` … `w49` = 2 … 49, then
/// `extra` (added as special tokens when they look like `<|…|>`) from 50.
pub(crate) fn tokenizer_json(extra: &[&str]) -> String {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), json!(0));
    vocab.insert("<unk>".into(), json!(1));
    for i in 2..50 {
        vocab.insert(format!("w{i}"), json!(i));
    }
    let mut added = vec![
        json!({"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                                "rstrip": false, "normalized": false, "special": true}),
    ];
    for (k, w) in extra.iter().enumerate() {
        vocab.insert((*w).into(), json!(50 + k));
        if w.starts_with("<|") {
            added.push(
                json!({"id": 50 + k, "content": w, "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

pub(crate) fn word_tokenizer() -> FinetuneTokenizer {
    FinetuneTokenizer::new(Tokenizer::from_bytes(tokenizer_json(&[]).as_bytes(), "test").unwrap())
}

fn words(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `n` rows of 1–6 prompt words and 1–5 response words (ids 2–49), from a fixed recurrence.
pub(crate) fn sample_rows(n: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |m: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % m
    };
    (0..n)
        .map(|_| {
            let p = 1 + next(6) as usize;
            let r = 1 + next(5) as usize;
            let mut draw = |k| (0..k).map(|_| 2 + next(48) as u32).collect::<Vec<u32>>();
            (draw(p), draw(r))
        })
        .collect()
}

pub(crate) fn write_rows(dir: &Path, rows: &[(Vec<u32>, Vec<u32>)]) -> PathBuf {
    let path = dir.join("train.jsonl");
    let text: String = rows
        .iter()
        .map(|(p, r)| format!("{}\n", json!({"prompt": words(p), "response": words(r)})))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn loader(path: &Path, packing: Option<Value>, shuffle: bool) -> LoaderConfig {
    LoaderConfig {
        name: LoaderKind::Finetuning,
        dataset: DatasetConfig {
            hf_name: Some(path.display().to_string()),
            shuffle,
            shuffle_seed: 11,
            packing_ratio: packing,
            ..Default::default()
        },
        drop_last: false,
        label: None,
    }
}

fn open(
    cfg: &LoaderConfig,
    seq: usize,
    batch: usize,
    world: World,
    state: Option<StreamState>,
) -> FinetuneData {
    FinetuneData::open(
        "train_loader",
        cfg,
        &word_tokenizer(),
        seq,
        batch,
        world,
        state,
    )
    .unwrap()
}

/// The tokens and the targets (next token where it is a response token or the EOS) that an
/// example should produce, computed from the row alone.
fn expected(prompt: &[u32], response: &[u32], prompts_too: bool) -> (Vec<u32>, Vec<i64>) {
    let full: Vec<u32> = prompt.iter().chain(response).copied().chain([0]).collect();
    let targets = (0..full.len())
        .map(|i| match full.get(i + 1) {
            Some(&t) if prompts_too || i + 1 >= prompt.len() => i64::from(t),
            _ => IGNORE,
        })
        .collect();
    (full, targets)
}

/// A packed sequence split at its `sequence_id` changes: (ids, targets) per example.
fn blocks(e: &Example) -> Vec<(Vec<u32>, Vec<i64>)> {
    let sid = e.sequence_id.as_ref().unwrap();
    let mut out: Vec<(Vec<u32>, Vec<i64>)> = Vec::new();
    for i in 0..e.input_ids.len() {
        if sid[i] < 0 {
            assert!(
                !e.attention.as_ref().unwrap()[i] && e.targets[i] == IGNORE,
                "padding at {i} is not masked"
            );
            continue;
        }
        assert!(e.attention.as_ref().unwrap()[i]);
        if sid[i] as usize == out.len() {
            out.push((Vec::new(), Vec::new()));
        }
        assert_eq!(
            sid[i] as usize,
            out.len() - 1,
            "sequence ids must count up from 0: {sid:?}"
        );
        let b = out.last_mut().unwrap();
        b.0.push(e.input_ids[i]);
        b.1.push(e.targets[i]);
    }
    out
}

#[test]
fn targets_are_exactly_the_response_tokens_and_eos() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_rows(12, 1);
    let path = write_rows(dir.path(), &rows);
    for prompts_too in [false, true] {
        let mut cfg = loader(&path, None, false);
        cfg.dataset.target_prompts = prompts_too.then(|| "all".into());
        let mut data = open(&cfg, 16, 4, World::SINGLE, None);
        let got: Vec<Example> = (0..3).flat_map(|_| data.next_batch().unwrap()).collect();
        for ((p, r), e) in rows.iter().zip(&got) {
            let (ids, mut targets) = expected(p, r, prompts_too);
            let real = ids.len();
            let mut padded = ids.clone();
            padded.resize(16, 0);
            targets.resize(16, IGNORE);
            assert_eq!(e.input_ids, padded);
            assert_eq!(e.targets, targets, "prompt {p:?} response {r:?}");
            assert_eq!(
                e.attention.as_ref().unwrap().iter().filter(|&&a| a).count(),
                real
            );
            assert_eq!(
                e.sequence_id.as_ref().unwrap()[real..],
                vec![-1; 16 - real][..]
            );
        }
    }
}

#[test]
fn long_prompts_are_truncated_or_dropped_like_llm_foundry() {
    let dir = tempfile::tempdir().unwrap();
    let rows = vec![
        ((2..10).collect::<Vec<u32>>(), vec![20]), // prompt fills all 8 tokens: dropped
        ((2..7).collect(), (20..25).collect()),    // 5 + 5 + EOS: cut to 8, 3 response tokens left
        (vec![3], vec![4]),                        // fits
    ];
    let path = write_rows(dir.path(), &rows);
    std::fs::write(
        &path,
        format!(
            "{}{}\n",
            std::fs::read_to_string(&path).unwrap(),
            json!({"prompt": "", "response": "w3"})
        ),
    )
    .unwrap();
    let mut data = open(&loader(&path, None, false), 8, 1, World::SINGLE, None);
    let s = data.stats().clone();
    assert_eq!(
        (
            s.rows,
            s.examples,
            s.dropped_no_targets,
            s.dropped_empty,
            s.truncated
        ),
        (4, 2, 1, 1, 1)
    );
    let e = &data.next_batch().unwrap()[0];
    assert_eq!(e.input_ids, vec![2, 3, 4, 5, 6, 20, 21, 22]);
    assert_eq!(
        e.targets,
        vec![IGNORE, IGNORE, IGNORE, IGNORE, 20, 21, 22, IGNORE]
    );

    let only_long = write_rows(dir.path(), &rows[..1]);
    let err = FinetuneData::open(
        "train_loader",
        &loader(&only_long, None, false),
        &word_tokenizer(),
        8,
        1,
        World::SINGLE,
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("no trainable examples")
            && err.contains("1 whose prompt fills max_seq_len (8)"),
        "{err}"
    );
}

#[test]
fn packing_keeps_examples_apart_with_sequence_ids() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_rows(40, 2);
    let path = write_rows(dir.path(), &rows);
    let mut data = open(
        &loader(&path, Some(json!(3)), false),
        32,
        2,
        World::SINGLE,
        None,
    );
    assert_eq!(
        data.packing(),
        Packing::Packed {
            ratio: 3.0,
            per_batch: 6
        }
    );
    assert_eq!(data.epoch_size(), 12);
    let mut seen = BTreeSet::new();
    let mut shared = 0;
    for _ in 0..6 {
        for e in data.next_batch().unwrap() {
            let b = blocks(&e);
            shared += usize::from(b.len() > 1);
            for (ids, targets) in b {
                let j = rows
                    .iter()
                    .position(|(p, r)| expected(p, r, false).0 == ids)
                    .expect("a block is one whole example");
                assert!(seen.insert(j), "example {j} packed twice in one epoch");
                let (_, mut want) = expected(&rows[j].0, &rows[j].1, false);
                // The last token of a block predicts nothing (not the next example's first).
                *want.last_mut().unwrap() = IGNORE;
                assert_eq!(targets, want);
            }
        }
    }
    assert!(shared > 0, "nothing was packed");
    assert_eq!(seen.len() + data.unused_in_epoch(), 40);
    assert_eq!(
        data.state(),
        StreamState {
            epoch: 0,
            sample_in_epoch: 12,
            seed: 11,
            num_canonical_nodes: 1,
            initial_physical_nodes: None
        }
    );
}

#[test]
fn resume_state_reproduces_the_remaining_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), &sample_rows(30, 3));
    let mut trimmed = loader(&path, None, true);
    trimmed.dataset.allow_pad_trimming = Some(true);
    for cfg in [loader(&path, Some(json!(2.5)), true), trimmed] {
        let mut whole = open(&cfg, 32, 2, World::SINGLE, None);
        let all: Vec<Vec<Example>> = (0..40).map(|_| whole.next_batch().unwrap()).collect();
        assert!(whole.state().epoch >= 2, "the test must cross epochs");
        let per_epoch = whole.epoch_size() as usize / 2;
        assert_ne!(
            all[1],
            all[per_epoch + 1],
            "epochs should be shuffled differently"
        );
        for cut in [1, 5, 17] {
            let mut first = open(&cfg, 32, 2, World::SINGLE, None);
            for b in &all[..cut] {
                assert_eq!(&first.next_batch().unwrap(), b);
            }
            let saved: StreamState =
                serde_json::from_str(&serde_json::to_string(&first.state()).unwrap()).unwrap();
            let mut resumed = open(&cfg, 32, 2, World::SINGLE, Some(saved));
            for (i, b) in all[cut..].iter().enumerate() {
                assert_eq!(
                    &resumed.next_batch().unwrap(),
                    b,
                    "batch {} after resuming at {cut}",
                    cut + i
                );
            }
        }
    }
    let cfg = loader(&path, None, true);
    let wrong_seed = StreamState::start(12, 1);
    let err = FinetuneData::open(
        "train_loader",
        &cfg,
        &word_tokenizer(),
        32,
        2,
        World::SINGLE,
        Some(wrong_seed),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("shuffle_seed 11"), "{err}");
}

#[test]
fn trimming_shortens_every_batch_but_the_runs_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), &sample_rows(8, 4));
    let mut cfg = loader(&path, None, false);
    cfg.dataset.allow_pad_trimming = Some(true);
    let mut data = open(&cfg, 64, 2, World::SINGLE, None);
    assert_eq!(data.next_batch().unwrap()[0].input_ids.len(), 64);
    let b = data.next_batch().unwrap();
    let longest = b
        .iter()
        .map(|e| e.attention.as_ref().unwrap().iter().filter(|&&a| a).count())
        .max()
        .unwrap();
    assert_eq!(b[0].input_ids.len(), longest.div_ceil(8) * 8);
    assert!(b.iter().all(|e| e.input_ids.len() == b[0].input_ids.len()));
}

#[test]
fn padded_and_packed_give_the_same_loss_per_example() {
    type B = burn::backend::Flex;
    let device = Default::default();
    // ALiBi, no learned positions (MPT's usual setup): positions are relative, so an example's
    // offset in a packed sequence cannot matter. With llm-foundry's default learned positions,
    // packing shifts every later example's positions, there as here, and the loss moves.
    let json = r#"{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 64, "max_seq_len": 32,
                   "learned_pos_emb": false, "attn_config": {"alibi": true, "attn_uses_sequence_id": true}}"#;
    let model = tessera_model::MptConfig::from_json_str(json, "test")
        .unwrap()
        .init::<B>(&device, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), &sample_rows(24, 5));
    let padded = open(&loader(&path, None, false), 32, 2, World::SINGLE, None);
    let packed = open(
        &loader(&path, Some(json!(3)), false),
        32,
        2,
        World::SINGLE,
        None,
    );
    let mut multi = 0;
    for row in &packed.rows {
        let (sum, n) = crate::step::eval_loss(&model, &[packed.example(row, 32)], &device);
        let (mut want, mut want_n) = (0.0, 0);
        for &i in row {
            let (s, k) = crate::step::eval_loss(&model, &[padded.example(&[i], 32)], &device);
            want += s;
            want_n += k;
        }
        assert_eq!(n, want_n);
        assert!(
            (sum - want).abs() < 1e-4 * want.abs().max(1.0),
            "row {row:?}: packed {sum} vs padded {want}"
        );
        if row.len() > 1 {
            multi += 1;
            // Control: without sequence ids the examples see each other and the loss moves.
            let mut leaky = packed.example(row, 32);
            leaky.sequence_id = None;
            let (s, _) = crate::step::eval_loss(&model, &[leaky], &device);
            assert!(
                (s - want).abs() > 1e-3,
                "sequence ids made no difference for {row:?}"
            );
        }
    }
    assert!(multi > 0, "no sequence held two examples");
}

#[test]
fn evaluation_scores_every_example_once_across_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample_rows(23, 6);
    let path = write_rows(dir.path(), &rows);
    let cfg = loader(&path, Some(json!(3)), true);
    let mut seen = Vec::new();
    let mut loss_tokens = 0;
    for rank in 0..2 {
        let mut data = open(&cfg, 32, 2, World::new(rank, 2, 2).unwrap(), None);
        data.next_batch().unwrap();
        data.rewind().unwrap();
        while data.remaining_in_epoch() > 0 {
            let before = data.remaining_in_epoch();
            let batch = data.next_eval_batch().unwrap();
            assert!(!batch.is_empty() && data.remaining_in_epoch() == before - batch.len());
            for e in batch {
                loss_tokens += e.loss_tokens();
                seen.extend(blocks(&e).into_iter().map(|(ids, _)| {
                    rows.iter()
                        .position(|(p, r)| expected(p, r, false).0 == ids)
                        .unwrap()
                }));
            }
        }
        // The eval set is fixed: the per-example counts add up to the whole dataset.
        assert_eq!(data.stats().examples, 23);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..23).collect::<Vec<_>>());
    let per_example: usize = rows
        .iter()
        .map(|(p, r)| {
            expected(p, r, false)
                .1
                .iter()
                .filter(|&&t| t != IGNORE)
                .count()
        })
        .sum();
    assert_eq!(loss_tokens, per_example);
}

#[test]
fn ranks_read_disjoint_slices_of_each_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), &sample_rows(20, 7));
    for packing in [None, Some(json!(2))] {
        let cfg = loader(&path, packing, true);
        let mut one = open(&cfg, 32, 4, World::SINGLE, None);
        let mut r0 = open(&cfg, 32, 2, World::new(0, 2, 2).unwrap(), None);
        let mut r1 = open(&cfg, 32, 2, World::new(1, 2, 2).unwrap(), None);
        for _ in 0..7 {
            let mut both = r0.next_batch().unwrap();
            both.extend(r1.next_batch().unwrap());
            assert_eq!(both, one.next_batch().unwrap());
            assert_eq!(r0.state(), one.state());
        }
    }
}

#[test]
fn packing_ratio_one_or_auto_on_short_sequences_means_padded_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), &sample_rows(10, 8));
    for r in [json!(1), json!(1.0), json!("auto"), Value::Null] {
        let data = open(
            &loader(&path, Some(r.clone()), false),
            32,
            2,
            World::SINGLE,
            None,
        );
        assert_eq!(data.packing(), Packing::Padded { trim: false }, "{r}");
    }
    for r in [json!(0.5), json!("most"), json!([2])] {
        let err = FinetuneData::open(
            "train_loader",
            &loader(&path, Some(r.clone()), false),
            &word_tokenizer(),
            32,
            2,
            World::SINGLE,
            None,
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("train_loader.dataset.packing_ratio:"),
            "{err}"
        );
    }
}

#[test]
fn chat_rows_use_the_default_template_without_one_of_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["<|im_start|>", "<|im_end|>", "user", "assistant"];
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer_json(&extra)).unwrap();
    let tok = FinetuneTokenizer::load(dir.path().to_str().unwrap()).unwrap();
    assert!(matches!(tok.chat_template, ChatTemplate::DefaultChatMl));
    let chat = json!({"messages": [{"role": "user", "content": "w5 w6"}, {"role": "assistant", "content": "w7"}]});
    let path = dir.path().join("chat.jsonl");
    std::fs::write(
        &path,
        format!("{}\n{chat}\n", json!({"prompt": "w2", "response": "w3"})),
    )
    .unwrap();
    let mut data = FinetuneData::open(
        "train_loader",
        &loader(&path, None, false),
        &tok,
        16,
        2,
        World::SINGLE,
        None,
    )
    .unwrap();
    let e = &data.next_batch().unwrap()[1];
    let (start, end, user, assistant) = (50, 51, 52, 53);
    // "<|im_start|>user\nw5 w6<|im_end|>\n<|im_start|>assistant\n" then "w7<|im_end|>\n" and EOS.
    let ids = [start, user, 5, 6, end, start, assistant, 7, end, 0];
    assert_eq!(e.input_ids[..10], ids);
    let want: Vec<i64> = [vec![IGNORE; 6], vec![7, i64::from(end), 0], vec![IGNORE; 7]].concat();
    assert_eq!(e.targets, want);
    assert!(tokenizer_file(dir.path().join("nope").to_str().unwrap()).is_err());
}

/// A ChatML template that adds a default system message when the conversation has none (the
/// shape of Qwen2-Instruct's `chat_template`), with a system prompt the word tokenizer knows.
const CHATML_WITH_SYSTEM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nw40 w41<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A folder with the word tokenizer (plus ChatML's tokens) and `tokenizer_config.json`.
fn chat_tokenizer(dir: &Path, template: &str) -> FinetuneTokenizer {
    let extra = ["<|im_start|>", "<|im_end|>", "user", "assistant", "system"];
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(&extra)).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"chat_template": template, "eos_token": "<|endoftext|>"}).to_string(),
    )
    .unwrap();
    FinetuneTokenizer::load(dir.to_str().unwrap()).unwrap()
}

#[test]
fn chat_rows_render_with_the_tokenizers_template_and_train_on_assistant_turns() {
    let dir = tempfile::tempdir().unwrap();
    let tok = chat_tokenizer(dir.path(), CHATML_WITH_SYSTEM);
    assert!(matches!(tok.chat_template, ChatTemplate::Jinja(_)));
    let chat = json!({"messages": [
        {"role": "user", "content": "w5 w6"}, {"role": "assistant", "content": "w7"},
        {"role": "user", "content": "w8"}, {"role": "assistant", "content": "w9 w10"}]});
    let path = dir.path().join("chat.jsonl");
    std::fs::write(&path, format!("{chat}\n")).unwrap();
    let (start, end, user, assistant, system) = (50, 51, 52, 53, 54);
    // Turn 1: the template's system message, the user message, the generation prompt; "w7".
    // Turn 2: the user message and the generation prompt; "w9 w10"; then EOS.
    let ids = [
        start, system, 40, 41, end, start, user, 5, 6, end, start, assistant, 7, end, start, user,
        8, end, start, assistant, 9, 10, end, 0,
    ];
    for (responses, trained) in [
        ("last", vec![20, 21, 22, 23]),
        ("all", vec![12, 13, 20, 21, 22, 23]),
    ] {
        let mut cfg = loader(&path, None, false);
        cfg.dataset.target_responses = Some(responses.into());
        let mut data =
            FinetuneData::open("train_loader", &cfg, &tok, 32, 1, World::SINGLE, None).unwrap();
        let e = &data.next_batch().unwrap()[0];
        assert_eq!(e.input_ids[..ids.len()], ids);
        // Targets are the labels shifted left: position p predicts ids[p + 1].
        let want: Vec<i64> = (0..32)
            .map(|p| {
                if trained.contains(&(p + 1)) {
                    i64::from(ids[p + 1])
                } else {
                    IGNORE
                }
            })
            .collect();
        assert_eq!(e.targets, want, "target_responses: {responses}");
    }
}

#[test]
fn chat_template_errors_name_the_row_and_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let chat = json!({"messages": [{"role": "user", "content": "w5"}, {"role": "assistant", "content": "w7"}]});
    let path = dir.path().join("chat.jsonl");
    std::fs::write(
        &path,
        format!("{}\n{chat}\n", json!({"prompt": "w2", "response": "w3"})),
    )
    .unwrap();
    let open_with = |template: &str| {
        let tok = chat_tokenizer(dir.path(), template);
        FinetuneData::open(
            "train_loader",
            &loader(&path, None, false),
            &tok,
            16,
            1,
            World::SINGLE,
            None,
        )
        .err()
        .unwrap()
        .to_string()
    };
    let config = dir.path().join("tokenizer_config.json");
    // The template refuses the conversation.
    let err = open_with("{{ raise_exception('Conversation roles must alternate') }}");
    assert!(
        err.starts_with(&format!(
            "{}:2: chat template ({}): ",
            path.display(),
            config.display()
        )),
        "{err}"
    );
    assert!(err.contains("Conversation roles must alternate"), "{err}");
    // The generation prompt is not how the template starts an assistant message, so the
    // turns cannot be cut apart (llm-foundry's InvalidConversationError).
    let err = open_with(
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}",
    );
    assert!(err.starts_with(&format!("{}:2: ", path.display())), "{err}");
    assert!(
        err.contains("is not the start of the conversation"),
        "{err}"
    );
    // A template that does not compile fails when the tokenizer loads.
    std::fs::write(&config, json!({"chat_template": "{% if %}"}).to_string()).unwrap();
    let err = FinetuneTokenizer::load(dir.path().to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("chat_template: not a valid Jinja template"),
        "{err}"
    );
}

#[test]
fn a_text_loader_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_rows(dir.path(), &sample_rows(4, 9));
    let mut cfg = loader(&path, None, false);
    cfg.name = LoaderKind::Text;
    let err = FinetuneData::open(
        "eval_loader",
        &cfg,
        &word_tokenizer(),
        16,
        1,
        World::SINGLE,
        None,
    )
    .err()
    .unwrap();
    assert!(err.to_string().starts_with("eval_loader.name:"), "{err}");
}
