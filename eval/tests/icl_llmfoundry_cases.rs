//! Cases from llm-foundry's own test suite (`tests/eval/test_in_context_learning_datasets.py`)
//! on its small data files (`icl/llmfoundry_tests/`, byte-identical copies): chain-of-thought
//! few-shot prompts, question/answer prompts with a prelimiter and a prompt string, and
//! `has_categories`. The expected strings are llm-foundry's assertions.

mod icl_reference;

use icl_reference::tokenizer;
use tessera_eval::icl::{
    EncodedExample, IclTaskConfig, IclTaskType, PreparedTask, TaskDefaults, prepare_task,
};

fn file(name: &str) -> String {
    tessera_testkit::shared_fixture(format!("icl/llmfoundry_tests/{name}"))
        .to_string_lossy()
        .into_owned()
}

/// What the model is fed for example `i`, as text: preamble + right-stripped context.
fn prompt_text(task: &PreparedTask, i: usize) -> String {
    let p = &task.prompts[i];
    match &p.context {
        tessera_eval::icl::PromptContext::Single(c) => format!("{}{}", p.preamble, c.trim_end()),
        other => panic!("unexpected {other:?}"),
    }
}

fn prepare(cfg: &IclTaskConfig, max_seq_len: usize) -> Vec<PreparedTask> {
    prepare_task(
        cfg,
        &tokenizer(),
        &TaskDefaults {
            max_seq_len,
            batch_size: 4,
        },
        &[],
    )
    .unwrap()
}

#[test]
#[ignore = "needs shared fixtures"]
fn chain_of_thought_fewshot_prompts_match_llm_foundrys_test() {
    // test_qa_task_with_cot_dataloader, num_fewshot = 2.
    let mut cfg = IclTaskConfig::new(
        "gsm8k",
        &file("gsm8k_small.jsonl"),
        IclTaskType::GenerationTaskWithAnswers,
        vec![2],
    );
    cfg.prelimiter = "Q: ".into();
    cfg.continuation_delimiter = "\nA: Let's think step by step. ".into();
    cfg.cot_delimiter = " #### ".into();
    let task = prepare(&cfg, 512).remove(0);
    let janet = "Q: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\nA: Let's think step by step.";
    let josh = "Q: Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 in repairs.  This increased the value of the house by 150%.  How much profit did he make?\nA: Let's think step by step. The cost of the house and repairs came out to 80,000+50,000=$<<80000+50000=130000>>130,000\nHe increased the value of the house by 80,000*1.5=<<80000*1.5=120000>>120,000\nSo the new value of the house is 120,000+80,000=$<<120000+80000=200000>>200,000\nSo he made a profit of 200,000-130,000=$<<200000-130000=70000>>70,000 #### 70000";
    let james = "Q: James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  How many total meters does he run a week?\nA: Let's think step by step. He sprints 3*3=<<3*3=9>>9 times\nSo he runs 9*60=<<9*60=540>>540 meters #### 540";
    let janet_answered = "Q: Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\nA: Let's think step by step. Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market. #### 18";
    let robe = "Q: A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?\nA: Let's think step by step.";
    assert!(
        prompt_text(&task, 0).ends_with(&format!("{josh}\n{james}\n{janet}")),
        "{}",
        prompt_text(&task, 0)
    );
    assert!(
        prompt_text(&task, 1).ends_with(&format!("{janet_answered}\n{josh}\n{robe}")),
        "{}",
        prompt_text(&task, 1)
    );
    let EncodedExample::Generation { labels, .. } = &task.encoded[0] else {
        panic!()
    };
    assert_eq!(labels, &vec!["18".to_string()]);
    // The answer budget includes llm-foundry's 10-token CoT slack.
    let g = task.generation.as_ref().unwrap();
    assert_eq!(g.max_new_tokens, g.max_answer_length);
    assert_eq!(task.padding_size, 512 - g.max_answer_length);
    assert!(task.dataset.has_cot);
}

#[test]
#[ignore = "needs shared fixtures"]
fn qa_prompts_with_prelimiter_and_prompt_string_match_llm_foundrys_test() {
    // test_qa_task_dataloader.
    for (shots, prompt_string) in [(0, ""), (1, "I am a prompt"), (2, "")] {
        let mut cfg = IclTaskConfig::new(
            "tqa",
            &file("triviaqa_small.jsonl"),
            IclTaskType::GenerationTaskWithAnswers,
            vec![shots],
        );
        cfg.prelimiter = "Q: ".into();
        cfg.continuation_delimiter = "\nA:".into();
        cfg.prompt_string = prompt_string.into();
        let task = prepare(&cfg, 512).remove(0);
        for i in 0..task.len() {
            let text = prompt_text(&task, i);
            assert_eq!(text.matches("Q: ").count(), shots + 1, "{text}");
            assert_eq!(text.matches("\nA:").count(), shots + 1, "{text}");
            assert_eq!(
                text.matches("I am a prompt").count(),
                usize::from(!prompt_string.is_empty())
            );
        }
        assert!(prompt_text(&task, 0).ends_with("Q: Who was the man behind The Chipmunks?\nA:"));
        assert!(prompt_text(&task, 1).ends_with("Q: What star sign is Jamie Lee Curtis?\nA:"));
        let EncodedExample::Generation { labels, .. } = &task.encoded[1] else {
            panic!()
        };
        assert_eq!(labels, &vec!["Scorpio".to_string(), "Skorpio".to_string()]);
    }
}

#[test]
#[ignore = "needs shared fixtures"]
fn subcategories_become_separate_evaluators_like_llm_foundrys_test() {
    // test_mc_task_dataloader_subcategories.
    let mut cfg = IclTaskConfig::new(
        "mmlu",
        &file("mmlu_small.jsonl"),
        IclTaskType::MultipleChoice,
        vec![2],
    );
    cfg.has_categories = true;
    cfg.prompt_string = "The following are multiple choice questions (with answers).\n".into();
    cfg.continuation_delimiter = "Answer: ".into();
    let tasks = prepare(&cfg, 64);
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(t.label, "mmlu/2-shot/computer_security");
    assert_eq!(t.category.as_deref(), Some("computer_security"));
    let EncodedExample::Choices { sequences, .. } = &t.encoded[0] else {
        panic!()
    };
    let tok = tokenizer();
    assert_eq!(
        tok.decode(sequences[0].continuation(), false).unwrap(),
        " A"
    );
    assert!(sequences.iter().all(|s| s.tokens.len() <= 64));
    for (i, p) in t.prompts.iter().enumerate() {
        assert_eq!(p.fewshot_idxs.len(), 2);
        assert!(!p.fewshot_idxs.contains(&i) && p.fewshot_idxs.iter().all(|&j| j < 4));
        assert!(
            p.preamble
                .starts_with("The following are multiple choice questions (with answers).\n")
        );
    }
}
