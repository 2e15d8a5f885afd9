use proptest::prelude::*;
use serde_json::json;
use tessera_data::tokenizer::{BpeTrainConfig, train_bpe};

use super::*;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

struct Fixture {
    models: ServedModels,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

fn fixture() -> Fixture {
    let docs = [
        "hello world, the quick brown fox",
        "jumps over the lazy dog",
    ];
    let cfg = BpeTrainConfig {
        vocab_size: 300,
        ..BpeTrainConfig::default()
    };
    Fixture {
        models: ServedModels {
            base: "tiny".into(),
            adapters: vec!["sql".into()],
        },
        tokenizer: train_bpe(docs.iter(), &cfg).unwrap().0,
        template: ChatTemplate::new(CHATML.into(), String::new(), String::new(), "t".into())
            .unwrap(),
    }
}

impl Fixture {
    fn ctx(&self, with_template: bool) -> Context<'_> {
        Context {
            models: &self.models,
            tokenizer: &self.tokenizer,
            chat_template: with_template.then_some(&self.template),
            max_seq_len: 256,
            vocab_size: 300,
            max_sequences: 8,
        }
    }

    fn completion(&self, body: serde_json::Value) -> Result<Job, ApiError> {
        completion(body.to_string().as_bytes(), &self.ctx(true))
    }

    fn chat(&self, body: serde_json::Value) -> Result<Job, ApiError> {
        chat(body.to_string().as_bytes(), &self.ctx(true))
    }
}

fn status(e: &ApiError) -> u16 {
    e.status.as_u16()
}

#[test]
fn every_prompt_form_is_accepted() {
    let f = fixture();
    let one = f
        .completion(json!({"model": "tiny", "prompt": "hello"}))
        .unwrap();
    assert_eq!(one.prompts, vec![f.tokenizer.encode("hello").unwrap()]);
    assert_eq!(one.max_tokens, vec![16], "OpenAI's default max_tokens");
    assert_eq!((one.n, one.temperature, one.stream), (1, 1.0, false));
    let many = f
        .completion(json!({"model": "tiny", "prompt": ["hello", "dog"], "n": 2}))
        .unwrap();
    assert_eq!(many.prompts.len(), 2);
    assert_eq!(many.sequences(7).len(), 4, "prompt-major, n per prompt");
    let ids = f
        .completion(json!({"model": "tiny", "prompt": [1, 2, 3]}))
        .unwrap();
    assert_eq!(ids.prompts, vec![vec![1, 2, 3]]);
    let lists = f
        .completion(json!({"model": "tiny", "prompt": [[1], [2, 3]]}))
        .unwrap();
    assert_eq!(lists.prompts, vec![vec![1], vec![2, 3]]);
}

#[test]
fn the_model_field_selects_the_base_or_an_adapter_and_unknown_names_are_404() {
    let f = fixture();
    let base = f
        .completion(json!({"model": "tiny", "prompt": "x"}))
        .unwrap();
    assert_eq!(base.adapter, None);
    let sql = f
        .completion(json!({"model": "sql", "prompt": "x"}))
        .unwrap();
    assert_eq!(sql.adapter, Some(AdapterId(0)));
    let e = f
        .completion(json!({"model": "gpt-4", "prompt": "x"}))
        .unwrap_err();
    assert_eq!((status(&e), e.code), (404, Some("model_not_found")));
    assert!(
        e.message.contains("gpt-4") && e.message.contains("tiny, sql"),
        "{e}"
    );
}

#[test]
fn bad_json_and_unknown_or_mistyped_fields_name_what_is_wrong() {
    let f = fixture();
    let ctx = f.ctx(true);
    let e = completion(b"{\"model\": ", &ctx).unwrap_err();
    assert_eq!((status(&e), e.code), (400, Some("invalid_json")));
    let e = completion(b"{\"model\": \"tiny\", \"prompt\": \"x\"} trailing", &ctx).unwrap_err();
    assert_eq!(e.code, Some("invalid_json"));
    let e = f
        .completion(json!({"model": "tiny", "prompt": "x", "top_k": 4}))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("top_k"));
    assert!(
        e.message
            .contains("Unrecognized request argument supplied: top_k")
    );
    let e = f
        .chat(json!({"model": "tiny", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls"), "{e}");
    let e = f.completion(json!({"prompt": "x"})).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("model"));
    let e = f
        .completion(json!({"model": "tiny", "prompt": "x", "n": "two"}))
        .unwrap_err();
    assert_eq!((status(&e), e.param.as_deref()), (400, Some("n")));
}

#[test]
fn out_of_range_settings_are_400_naming_the_field() {
    let f = fixture();
    let cases = [
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -5}), "max_tokens"),
        (json!({"max_tokens": 1000}), "max_tokens"),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 0.0}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"n": 9}), "n"),
        (json!({"logprobs": 6}), "logprobs"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": 3}), "stop"),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"logit_bias": {"1": 5}}), "logit_bias"),
        (json!({"echo": true}), "echo"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"prompt": [99999]}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [1, "a"]}), "prompt"),
    ];
    for (extra, param) in cases {
        let mut body = json!({"model": "tiny", "prompt": "hello"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let e = f.completion(body.clone()).unwrap_err();
        assert_eq!(status(&e), 400, "{body}: {e}");
        assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
    }
}

#[test]
fn a_prompt_over_the_context_is_refused_with_openais_code() {
    let f = fixture();
    let long: Vec<u32> = (0..256).map(|i| i % 200).collect();
    let e = f
        .completion(json!({"model": "tiny", "prompt": long}))
        .unwrap_err();
    assert_eq!((status(&e), e.code), (400, Some("context_length_exceeded")));
    assert!(e.message.contains("maximum context length is 256"), "{e}");
    // Without max_tokens, the default shrinks to what fits.
    let fits: Vec<u32> = (0..252).map(|i| i % 200).collect();
    let job = f
        .completion(json!({"model": "tiny", "prompt": fits}))
        .unwrap();
    assert_eq!(job.max_tokens, vec![4]);
}

#[test]
fn chat_renders_the_template_and_needs_one() {
    let f = fixture();
    let job = f
        .chat(json!({
            "model": "tiny",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " dog"}]}
            ],
            "max_completion_tokens": 5,
            "logprobs": true,
            "top_logprobs": 2,
            "seed": -1
        }))
        .unwrap();
    let text = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello dog<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(job.prompts, vec![f.tokenizer.encode(text).unwrap()]);
    assert_eq!((job.max_tokens[0], job.logprobs), (5, Some(2)));
    assert_eq!(job.seed, Some(u64::MAX), "a negative seed keeps its bits");

    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]});
    let e = chat(body.to_string().as_bytes(), &f.ctx(false)).unwrap_err();
    assert_eq!(status(&e), 400);
    assert!(e.message.contains("`tiny` has no chat template"), "{e}");

    let e = f
        .chat(json!({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    let e = f
        .chat(json!({"model": "tiny", "messages": []}))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"));
    let e = f
        .chat(json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}))
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("top_logprobs"));
}

/// Field names the parser knows, so the fuzzer reaches the checks behind parsing too.
const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "suffix",
    "user",
    "response_format",
    "role",
    "content",
    "include_usage",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|v| json!(v)),
        (-1e6f64..1e6).prop_map(|v| json!(v)),
        prop_oneof![Just("tiny".to_string()), Just("sql".to_string()), ".{0,12}"]
            .prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|pairs| {
                serde_json::Value::Object(
                    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The request parser's fuzz test: arbitrary bytes and arbitrary JSON (built from the
    /// real field names) never panic, and every refusal is a 4xx.
    #[test]
    fn arbitrary_bodies_never_panic_and_errors_are_4xx(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        value in json_value(),
    ) {
        let f = fixture_cached();
        let ctx = f.ctx(true);
        let mut with_model = value.clone();
        if let Some(obj) = with_model.as_object_mut() {
            obj.insert("model".into(), json!("tiny"));
        }
        let bodies = [bytes, value.to_string().into_bytes(), with_model.to_string().into_bytes()];
        for body in &bodies {
            for result in [completion(body, &ctx), chat(body, &ctx)] {
                if let Err(e) = result {
                    prop_assert!((400..500).contains(&e.status.as_u16()), "{e}");
                }
            }
        }
    }
}

/// Training the tokenizer once for all fuzz cases.
fn fixture_cached() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}
