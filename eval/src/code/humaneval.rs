//! HumanEval generation conventions: prompts, stop sequences, seeds, and turning raw model
//! output into samples.
//!
//! `tessera eval humaneval --model DIR --problems HumanEval.jsonl.gz --n 20 --temperature 0.2
//! --k 1,10` generates `n` completions per problem and scores them with
//! [`super::evaluate_samples`]. The model side lives with the CLI; this file holds the
//! conventions both halves must agree on.

use super::problems::{Problems, Sample};

/// Stop sequences of the Codex paper (Chen et al. 2021, §3.3): generation ends at the first
/// line that starts a new top-level statement, so a completion is exactly one function body.
pub const STOP_SEQUENCES: &[&str] = &["\nclass", "\ndef", "\n#", "\nif", "\nprint"];

/// The text the model is conditioned on: the problem's prompt verbatim. Stripping its trailing
/// newline would change both tokenisation and the program (`prompt + completion`), so it is kept.
pub fn prompt(problems: &Problems, task_id: &str) -> Option<String> {
    problems.get(task_id).map(|p| p.prompt.clone())
}

/// Cuts generated text at the earliest stop sequence (the stop sequence itself is dropped).
pub fn truncate_at_stop(generated: &str) -> &str {
    let cut = STOP_SEQUENCES
        .iter()
        .filter_map(|s| generated.find(s))
        .min()
        .unwrap_or(generated.len());
    &generated[..cut]
}

/// A problem's prompt tokens made to fit the model's context, and the generation budget left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FittedPrompt {
    /// The prompt's last tokens: all of them when they fit.
    pub ids: Vec<u32>,
    /// Tokens cut from the left (0 when the prompt fits).
    pub truncated: usize,
    /// New tokens the context still holds after the prompt, at most the requested number.
    pub max_new_tokens: usize,
}

/// Fits a prompt of `ids` into a context of `max_seq_len` tokens, leaving room for
/// `max_new_tokens` new ones (or for half the context, when that is less): a prompt too long
/// for that keeps its last tokens, as the ICL generation tasks do (llm-foundry left-truncates
/// to `max_seq_len - max_new_tokens`). The end of a HumanEval prompt is the signature and
/// docstring being completed; the program run in the sandbox is still the whole prompt plus
/// the completion. `None` when the context holds no prompt and answer at all
/// (`max_seq_len < 2`) or nothing is asked for.
pub fn fit_prompt(
    mut ids: Vec<u32>,
    max_seq_len: usize,
    max_new_tokens: usize,
) -> Option<FittedPrompt> {
    if max_seq_len < 2 || max_new_tokens == 0 || ids.is_empty() {
        return None;
    }
    let reserve = max_new_tokens.min(max_seq_len / 2);
    let keep = max_seq_len - reserve;
    let truncated = ids.len().saturating_sub(keep);
    ids.drain(..truncated);
    let max_new_tokens = max_new_tokens.min(max_seq_len - ids.len());
    Some(FittedPrompt {
        ids,
        truncated,
        max_new_tokens,
    })
}

/// One generation request: which problem, which of its `n` samples, and the seed to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRequest {
    /// The problem's `task_id`.
    pub task_id: String,
    /// The problem's prompt, which the model continues.
    pub prompt: String,
    /// 0..n within the task.
    pub sample_index: usize,
    /// Seeded from (run seed, "humaneval", problem position, sample index): the same request
    /// gets the same seed however requests are batched or ordered.
    pub seed: u64,
}

/// All `n` requests per problem, in problem order then sample order.
pub fn generation_requests(problems: &Problems, n: usize, run_seed: u64) -> Vec<GenerationRequest> {
    let mut out = Vec::with_capacity(problems.len() * n);
    for (pi, p) in problems.iter().enumerate() {
        for si in 0..n {
            out.push(GenerationRequest {
                task_id: p.task_id.clone(),
                prompt: p.prompt.clone(),
                sample_index: si,
                seed: sample_seed(run_seed, pi as u64, si as u64),
            });
        }
    }
    out
}

/// The seed of sample `sample` of problem `problem`: SplitMix64 over (run seed, purpose tag,
/// position), so streams of different purposes or positions never coincide.
pub fn sample_seed(run_seed: u64, problem: u64, sample: u64) -> u64 {
    // "humaneval" as a purpose tag.
    const PURPOSE: u64 = 0x6875_6d61_6e65_7661;
    let mut x = run_seed;
    for v in [PURPOSE, problem, sample] {
        x = splitmix64(x ^ v);
    }
    x
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Samples from raw generations (`(request, generated text)`), truncated at the stop sequences.
pub fn samples_from_generations<'a>(
    generations: impl IntoIterator<Item = (&'a GenerationRequest, &'a str)>,
) -> Vec<Sample> {
    generations
        .into_iter()
        .map(|(r, text)| Sample::new(r.task_id.clone(), truncate_at_stop(text)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::problems::Problem;

    fn problems() -> Problems {
        let p = |id: &str| Problem {
            task_id: id.into(),
            prompt: format!("def {}():\n", id.replace('/', "_")),
            canonical_solution: String::new(),
            test: String::new(),
            entry_point: "f".into(),
        };
        Problems::from_vec(vec![p("T/0"), p("T/1")]).unwrap()
    }

    #[test]
    fn truncation_cuts_at_the_earliest_stop_sequence() {
        assert_eq!(
            truncate_at_stop("    return 1\n\ndef g():\n    pass\nprint(1)"),
            "    return 1\n"
        );
        assert_eq!(
            truncate_at_stop("    x = 1\n    # inner comment\n    return x\n#tail"),
            "    x = 1\n    # inner comment\n    return x"
        );
        assert_eq!(truncate_at_stop("    return 2"), "    return 2");
    }

    #[test]
    fn a_prompt_longer_than_the_context_keeps_its_last_tokens() {
        // The quickstart case: a 135-token prompt and a 128-token model.
        let ids: Vec<u32> = (0..135).collect();
        let fit = fit_prompt(ids.clone(), 128, 512).unwrap();
        assert_eq!(fit.truncated, 135 - 64);
        assert_eq!(fit.ids, (71..135).collect::<Vec<u32>>());
        assert_eq!(fit.max_new_tokens, 64);
        // A short answer leaves more of the prompt.
        let fit = fit_prompt(ids.clone(), 128, 8).unwrap();
        assert_eq!(
            (fit.ids.len(), fit.truncated, fit.max_new_tokens),
            (120, 15, 8)
        );
        assert_eq!(fit.ids[0], 15);
    }

    #[test]
    fn a_prompt_that_fits_is_kept_whole_and_the_budget_capped_by_the_context() {
        let fit = fit_prompt(vec![5; 40], 128, 512).unwrap();
        assert_eq!(
            (fit.ids.len(), fit.truncated, fit.max_new_tokens),
            (40, 0, 88)
        );
        let fit = fit_prompt(vec![5; 40], 2048, 512).unwrap();
        assert_eq!(
            (fit.ids.len(), fit.truncated, fit.max_new_tokens),
            (40, 0, 512)
        );
        assert_eq!(fit_prompt(vec![5; 4], 1, 8), None);
        assert_eq!(fit_prompt(vec![5; 4], 16, 0), None);
        assert_eq!(fit_prompt(vec![], 16, 4), None);
    }

    #[test]
    fn requests_cover_every_problem_n_times_with_distinct_stable_seeds() {
        let r = generation_requests(&problems(), 3, 7);
        assert_eq!(r.len(), 6);
        assert_eq!((r[4].task_id.as_str(), r[4].sample_index), ("T/1", 1));
        let mut seeds: Vec<u64> = r.iter().map(|x| x.seed).collect();
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), 6);
        assert_eq!(generation_requests(&problems(), 3, 7), r);
        assert_ne!(generation_requests(&problems(), 3, 8)[0].seed, r[0].seed);
    }

    #[test]
    fn samples_from_generations_truncates_and_keeps_task_ids() {
        let r = generation_requests(&problems(), 1, 0);
        let s = samples_from_generations([
            (&r[0], "    return 0\nif __name__:"),
            (&r[1], "    return 1\n"),
        ]);
        assert_eq!(s[0], Sample::new("T/0", "    return 0"));
        assert_eq!(s[1].task_id, "T/1");
        assert_eq!(prompt(&problems(), "T/1").as_deref(), Some("def T_1():\n"));
    }
}
