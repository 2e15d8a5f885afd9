//! Prompt construction against llm-foundry's own output, with no model: few-shot indices,
//! prompt strings, token ids and lengths, truncation, and each metric's decision applied to
//! the model outputs llm-foundry recorded.

mod icl_reference;

use icl_reference::*;
use tessera_eval::icl::decide::{lm_correct, select_lowest_perplexity};
use tessera_eval::icl::{EncodedExample, PromptContext};

#[test]
#[ignore = "needs shared fixtures"]
fn prompts_tokens_and_decisions_match_llm_foundry_on_every_reference_row() {
    let res = reference_results();
    let prompts = reference_prompts();
    let tok = tokenizer();
    let mut bad = Mismatches::default();
    let mut rows = 0;
    let mut fewshot_rows = 0;
    for t in res["tasks"].as_array().unwrap() {
        let label = t["label"].as_str().unwrap().to_string();
        let task = prepare(t, &tok);
        let s = &t["effective_settings"];
        bad.check(
            || format!("{label} padding_size"),
            task.padding_size as u64,
            s["padding_size"].as_u64().unwrap(),
        );
        bad.check(
            || format!("{label} prefix_space"),
            task.prefix_space,
            s["prefix_space"].as_bool().unwrap(),
        );
        let examples = t["examples"].as_array().unwrap();
        bad.check(|| format!("{label} n_examples"), task.len(), examples.len());
        let mut n_truncated = 0;
        for (i, row) in examples.iter().enumerate() {
            rows += 1;
            let at = |f: &str| format!("{label} #{i} {f}");
            bad.check(
                || at("line"),
                task.dataset.lines[i] as u64,
                row["line"].as_u64().unwrap(),
            );
            let want_fs = if row.get("fewshot_idxs").is_some() {
                usizes(&row["fewshot_idxs"])
            } else {
                vec![]
            };
            fewshot_rows += usize::from(!want_fs.is_empty());
            bad.check(
                || at("fewshot_idxs"),
                &task.prompts[i].fewshot_idxs,
                &want_fs,
            );

            let p = &prompts[&(label.clone(), i)];
            bad.check(
                || at("preamble"),
                task.prompts[i].preamble.as_str(),
                p["preamble"].as_str().unwrap(),
            );
            let want_ctx = match &p["context"] {
                serde_json::Value::Array(_) => PromptContext::PerOption(strings(&p["context"])),
                v => PromptContext::Single(v.as_str().unwrap().to_string()),
            };
            bad.check(|| at("context"), &task.prompts[i].context, &want_ctx);

            match &task.encoded[i] {
                EncodedExample::LanguageModeling(seq) => {
                    bad.check(
                        || at("context_len"),
                        seq.context_len,
                        row["context_len"].as_u64().unwrap() as usize,
                    );
                    bad.check(
                        || at("continuation_ids"),
                        seq.continuation().to_vec(),
                        u32s(&row["continuation_ids"]),
                    );
                    bad.check(
                        || at("truncated"),
                        seq.truncated,
                        row["truncated_tokens"].as_u64().unwrap() as usize,
                    );
                    n_truncated += usize::from(seq.truncated > 0);
                    let decided =
                        lm_correct(&u32s(&row["argmax_ids"]), &u32s(&row["continuation_ids"]));
                    bad.check(|| at("LM decision"), decided, row["correct"] == 1);
                }
                EncodedExample::Choices { sequences, gold } => {
                    bad.check(|| at("gold"), *gold, row["gold"].as_u64().unwrap() as usize);
                    let lens: Vec<usize> =
                        sequences.iter().map(|q| q.continuation().len()).collect();
                    bad.check(
                        || at("choice_cont_len"),
                        lens,
                        usizes(&row["choice_cont_len"]),
                    );
                    let ctx: Vec<usize> = sequences.iter().map(|q| q.context_len).collect();
                    bad.check(
                        || at("choice_context_len"),
                        ctx,
                        usizes(&row["choice_context_len"]),
                    );
                    let tr: Vec<usize> = sequences.iter().map(|q| q.truncated).collect();
                    n_truncated += usize::from(tr.iter().any(|&x| x > 0));
                    bad.check(
                        || at("choice_truncated_tokens"),
                        tr,
                        usizes(&row["choice_truncated_tokens"]),
                    );
                    let selected = select_lowest_perplexity(&f64s(&row["choice_mean_ce"]));
                    bad.check(
                        || at("selected"),
                        selected,
                        row["selected"].as_u64().unwrap() as usize,
                    );
                    bad.check(|| at("MC decision"), selected == *gold, row["correct"] == 1);
                }
                EncodedExample::Generation {
                    prompt,
                    truncated,
                    labels,
                } => {
                    bad.check(
                        || at("input_len"),
                        prompt.len(),
                        row["input_len"].as_u64().unwrap() as usize,
                    );
                    bad.check(
                        || at("truncated"),
                        *truncated,
                        row["truncated_tokens"].as_u64().unwrap() as usize,
                    );
                    n_truncated += usize::from(*truncated > 0);
                    bad.check(|| at("labels"), labels.clone(), strings(&row["labels"]));
                    let g = task.generation.as_ref().unwrap();
                    bad.check(
                        || at("max_new_tokens"),
                        g.max_new_tokens,
                        row["max_new_tokens"].as_u64().unwrap() as usize,
                    );
                    let v = g.scoring.score(row["output"].as_str().unwrap(), labels);
                    bad.check(
                        || at("cleaned_output"),
                        v.cleaned_output.as_str(),
                        row["cleaned_output"].as_str().unwrap(),
                    );
                    bad.check(|| at("generation decision"), v.correct, row["correct"] == 1);
                }
            }
        }
        bad.check(
            || format!("{label} n_truncated"),
            n_truncated as u64,
            t["n_truncated"].as_u64().unwrap(),
        );
    }
    bad.assert_none();
    assert_eq!(rows, 2200, "every reference row was checked");
    assert_eq!(fewshot_rows, 1000, "every few-shot row was checked");
}
