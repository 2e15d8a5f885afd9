//! Vibe checks: sampled answers to a handful of prompts, written as a markdown report that a
//! person reads. Metrics miss things that one look at the text shows (a model that repeats
//! itself, ignores the question or never stops).
//!
//! Each (prompt, sample) pair is generated alone with a seed derived from the run seed, the
//! purpose (`"vibes"`) and its position, so a report does not change when prompts are added
//! or removed around it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::{FinishReason, GenerationConfig, Mpt, generate};

/// Errors of the vibe check.
#[derive(Debug, thiserror::Error)]
pub enum VibesError {
    /// Reading the prompts file failed.
    #[error("{path}: {source}")]
    Io {
        /// The prompts file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON Lines prompts file has a bad line.
    #[error("{path}:{line}: {message}")]
    Prompts {
        /// The prompts file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// The tokenizer could not be loaded, or failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The prompt list is empty.
    #[error("no prompts to run")]
    NoPrompts,
    /// Generation failed.
    #[error("generation: {0}")]
    Generate(String),
    /// The model could not be loaded.
    #[error("model: {0}")]
    Model(String),
    /// Writing the markdown report failed.
    #[error("writing the report: {0}")]
    Write(String),
}

/// The built-in prompts: a self-description question, a recipe, and a few everyday tasks.
pub const BUILTIN_PROMPTS: &[&str] = &[
    "If you were an AI model, what would you name yourself?",
    "Write a recipe for banana bread.",
    "Explain why the sky is blue to a five-year-old.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "What are three tips for a good night's sleep?",
    "Tell me a short story about a lighthouse keeper.",
];

/// Sampling settings for the vibe check.
#[derive(Clone, Debug, PartialEq)]
pub struct VibesConfig {
    /// Length limit of each answer, in tokens.
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    /// Sample only among the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
    /// Run seed; each (prompt, sample) pair's seed is derived from it.
    pub seed: u64,
    /// Answers per prompt.
    pub samples_per_prompt: usize,
}

impl Default for VibesConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.8,
            top_k: Some(50),
            top_p: Some(0.95),
            seed: 17,
            samples_per_prompt: 2,
        }
    }
}

/// Reads prompts from a file: JSON Lines with a `prompt` field when the first non-blank line
/// starts with `{`, otherwise one prompt per non-blank line.
pub fn load_prompts(path: &Path) -> Result<Vec<String>, VibesError> {
    let text = std::fs::read_to_string(path).map_err(|source| VibesError::Io {
        path: path.into(),
        source,
    })?;
    parse_prompts(&text, path)
}

/// [`load_prompts`] on text already read (`origin` names it in errors).
pub fn parse_prompts(text: &str, origin: &Path) -> Result<Vec<String>, VibesError> {
    let jsonl = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_start().starts_with('{'));
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !jsonl {
            prompts.push(line.trim_end().to_string());
            continue;
        }
        let err = |message: String| VibesError::Prompts {
            path: origin.into(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        match v.get("prompt") {
            Some(serde_json::Value::String(p)) => prompts.push(p.clone()),
            Some(other) => return Err(err(format!("`prompt` should be a string, found {other}"))),
            None => return Err(err("missing `prompt`".into())),
        }
    }
    if prompts.is_empty() {
        return Err(VibesError::NoPrompts);
    }
    Ok(prompts)
}

/// One sampled answer.
#[derive(Clone, Debug, PartialEq)]
pub struct VibeSample {
    /// Index of the prompt in the prompt list.
    pub prompt_index: usize,
    /// Which of the prompt's samples this is.
    pub sample_index: usize,
    /// The decoded answer, special tokens skipped.
    pub text: String,
    /// Tokens generated.
    pub new_tokens: usize,
    /// Whether the model ended the answer itself (EOS) rather than hitting the length limit.
    pub stopped: bool,
}

/// Seed for one (prompt, sample) pair: SplitMix64 over (seed, purpose, position).
fn sample_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    let mut z = seed ^ 0x7669_6265_735f_7631; // "vibes_v1"
    for x in [prompt as u64, sample as u64] {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(x);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
    }
    z
}

/// Samples every prompt `samples_per_prompt` times.
pub fn sample<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    prompts: &[String],
    cfg: &VibesConfig,
    device: &B::Device,
) -> Result<Vec<VibeSample>, VibesError> {
    if prompts.is_empty() {
        return Err(VibesError::NoPrompts);
    }
    let eos = tok.eos_id();
    let mut out = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        let ids = tok
            .encode(prompt)
            .map_err(|e| VibesError::Tokenizer(e.to_string()))?;
        let ids = if ids.is_empty() {
            eos.into_iter().collect()
        } else {
            ids
        };
        for s in 0..cfg.samples_per_prompt {
            let gen_cfg = GenerationConfig {
                max_new_tokens: cfg.max_new_tokens,
                temperature: cfg.temperature,
                top_k: cfg.top_k,
                top_p: cfg.top_p,
                seed: sample_seed(cfg.seed, p, s),
                eos_ids: eos.into_iter().collect(),
                use_cache: true,
                pad_id: eos.unwrap_or(0),
            };
            let g = generate(model, std::slice::from_ref(&ids), &gen_cfg, None, device)
                .map_err(|e| VibesError::Generate(e.to_string()))?
                .into_iter()
                .next()
                .unwrap_or(tessera_model::Generation {
                    ids: Vec::new(),
                    finish: FinishReason::MaxNewTokens,
                });
            let text = tok
                .decode(&g.ids, true)
                .map_err(|e| VibesError::Tokenizer(e.to_string()))?;
            out.push(VibeSample {
                prompt_index: p,
                sample_index: s,
                text,
                new_tokens: g.ids.len(),
                stopped: matches!(g.finish, FinishReason::Eos),
            });
        }
    }
    Ok(out)
}

/// A fence longer than any run of backticks in `text`, so answers cannot break the markdown.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// The markdown report of `samples` (see [`sample`]); `model_name` heads it.
pub fn render_markdown(
    model_name: &str,
    prompts: &[String],
    samples: &[VibeSample],
    cfg: &VibesConfig,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Vibe check: {model_name}\n");
    let _ = writeln!(
        md,
        "temperature {}, top_k {}, top_p {}, max_new_tokens {}, seed {}, {} sample(s) per prompt\n",
        cfg.temperature,
        cfg.top_k.map_or("off".into(), |k| k.to_string()),
        cfg.top_p.map_or("off".into(), |p| p.to_string()),
        cfg.max_new_tokens,
        cfg.seed,
        cfg.samples_per_prompt
    );
    for (p, prompt) in prompts.iter().enumerate() {
        let _ = writeln!(
            md,
            "## {}. {}\n",
            p + 1,
            prompt.lines().next().unwrap_or("")
        );
        if prompt.lines().count() > 1 {
            let f = fence_for(prompt);
            let _ = writeln!(md, "Prompt:\n\n{f}\n{prompt}\n{f}\n");
        }
        for s in samples.iter().filter(|s| s.prompt_index == p) {
            let f = fence_for(&s.text);
            let end = if s.stopped {
                "stopped"
            } else {
                "hit max_new_tokens"
            };
            let _ = writeln!(
                md,
                "**Sample {}** ({} tokens, {end})\n\n{f}text\n{}\n{f}\n",
                s.sample_index + 1,
                s.new_tokens,
                s.text
            );
        }
    }
    md
}

/// Samples the prompts and returns the markdown report (`vibes::run`).
pub fn run<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    model_name: &str,
    prompts: &[String],
    cfg: &VibesConfig,
    device: &B::Device,
) -> Result<String, VibesError> {
    let samples = sample(model, tok, prompts, cfg, device)?;
    Ok(render_markdown(model_name, prompts, &samples, cfg))
}

/// `tessera eval vibes --model DIR [--prompts FILE]`: loads an HF-layout checkpoint (and its
/// `tokenizer.json` unless `tokenizer` is given), samples the prompts (the built-in ones
/// without a file) and writes the markdown report to `out` atomically. Returns the report.
pub fn run_from_dir<B: Backend>(
    model_dir: &Path,
    tokenizer: Option<&Path>,
    prompts_file: Option<&Path>,
    cfg: &VibesConfig,
    out: &Path,
    device: &B::Device,
) -> Result<String, VibesError> {
    let (_, model) = tessera_model::hf::load::<B>(model_dir, device)
        .map_err(|e| VibesError::Model(format!("{}: {e}", model_dir.display())))?;
    let tok_path = tokenizer
        .map(Path::to_path_buf)
        .unwrap_or_else(|| model_dir.join("tokenizer.json"));
    let tok = Tokenizer::from_file(&tok_path).map_err(|e| VibesError::Tokenizer(e.to_string()))?;
    let prompts = match prompts_file {
        Some(p) => load_prompts(p)?,
        None => builtin_prompts(),
    };
    let name = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let md = run(&model, &tok, &name, &prompts, cfg, device)?;
    crate::report::write_atomic(out, md.as_bytes())
        .map_err(|e| VibesError::Write(e.to_string()))?;
    Ok(md)
}

/// The built-in prompts as owned strings.
pub fn builtin_prompts() -> Vec<String> {
    BUILTIN_PROMPTS.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_prompts_include_the_required_two() {
        assert!(
            BUILTIN_PROMPTS.contains(&"If you were an AI model, what would you name yourself?")
        );
        assert!(
            BUILTIN_PROMPTS
                .iter()
                .any(|p| p.to_lowercase().contains("banana bread"))
        );
    }

    #[test]
    fn plain_files_hold_one_prompt_per_line() {
        let p = parse_prompts("first prompt\n\n  second {x}\n", Path::new("p.txt")).unwrap();
        assert_eq!(
            p,
            vec!["first prompt".to_string(), "  second {x}".to_string()]
        );
    }

    #[test]
    fn jsonl_files_need_a_prompt_string() {
        let p = parse_prompts(
            "{\"prompt\": \"a\\nb\"}\n{\"prompt\": \"c\", \"id\": 2}\n",
            Path::new("p.jsonl"),
        )
        .unwrap();
        assert_eq!(p, vec!["a\nb".to_string(), "c".to_string()]);
        let e = parse_prompts(
            "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n",
            Path::new("p.jsonl"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("p.jsonl:2") && e.contains("prompt"), "{e}");
        assert!(matches!(
            parse_prompts("\n \n", Path::new("e")),
            Err(VibesError::NoPrompts)
        ));
    }

    #[test]
    fn seeds_differ_by_position_and_are_stable() {
        assert_ne!(sample_seed(1, 0, 0), sample_seed(1, 0, 1));
        assert_ne!(sample_seed(1, 0, 1), sample_seed(1, 1, 0));
        assert_eq!(sample_seed(1, 2, 3), sample_seed(1, 2, 3));
    }

    /// A word-level tokenizer (`<|endoftext|>` = 0, then `w0`..`w29`) and a tiny random model.
    fn tiny() -> (Tokenizer, Mpt<burn::backend::Flex>) {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<|endoftext|>".into(), 0.into());
        for i in 0..30 {
            vocab.insert(format!("w{i}"), (i + 1).into());
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"}
        });
        let tok = Tokenizer::from_bytes(json.to_string().as_bytes(), "test").unwrap();
        let mut cfg = tessera_model::MptConfig::preset("tiny").unwrap();
        cfg.vocab_size = 31;
        cfg.max_seq_len = 64;
        (tok, cfg.init(&Default::default(), 3))
    }

    #[test]
    fn sampling_is_seeded_and_the_report_has_every_prompt() {
        let (tok, model) = tiny();
        let prompts = vec!["w1 w2 w3".to_string(), "w4".to_string()];
        let cfg = VibesConfig {
            max_new_tokens: 6,
            samples_per_prompt: 2,
            ..Default::default()
        };
        let dev = Default::default();
        let a = sample(&model, &tok, &prompts, &cfg, &dev).unwrap();
        let b = sample(&model, &tok, &prompts, &cfg, &dev).unwrap();
        assert_eq!(a, b, "same seed, same answers");
        assert_eq!(a.len(), 4);
        assert!(
            a.iter()
                .all(|s| s.new_tokens <= 6 && (s.stopped || s.new_tokens == 6))
        );
        let other = sample(
            &model,
            &tok,
            &prompts,
            &VibesConfig {
                seed: 99,
                ..cfg.clone()
            },
            &dev,
        )
        .unwrap();
        assert_ne!(a, other, "another seed samples differently");
        let md = run(&model, &tok, "tiny", &prompts, &cfg, &dev).unwrap();
        assert!(
            md.contains("## 1. w1 w2 w3") && md.contains("## 2. w4") && md.contains("**Sample 2**"),
            "{md}"
        );
    }

    #[test]
    fn report_fences_survive_backticks_in_answers() {
        let prompts = vec!["Q?".to_string()];
        let samples = vec![VibeSample {
            prompt_index: 0,
            sample_index: 0,
            text: "a ```` b".into(),
            new_tokens: 3,
            stopped: true,
        }];
        let md = render_markdown("m", &prompts, &samples, &VibesConfig::default());
        assert!(md.contains("`````text\na ```` b\n`````"), "{md}");
        assert!(md.contains("## 1. Q?") && md.contains("stopped"));
    }
}
