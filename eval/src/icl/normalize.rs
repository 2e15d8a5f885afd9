//! Scoring of generated answers: TriviaQA normalisation and llm-foundry's prefix match.
//!
//! Follows `InContextLearningGenerationExactMatchAccuracy.update` in
//! `llmfoundry/eval/metrics/nlp.py`: cut the output at the first stop sequence, keep what
//! follows the last chain-of-thought delimiter, normalise (or only strip) output and labels,
//! and count the example correct when the output *starts with* any label.

use super::pytext::{py_split_whitespace, py_strip};

/// Python's `string.punctuation` plus the quote marks llm-foundry adds (‘ ’ ´ `).
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u{2018}\u{2019}\u{b4}";

/// `\w` in Python's `re` for `str` patterns: alphanumeric (`str.isalnum`) or `_`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// TriviaQA's `normalize_answer`: `_` → space, lowercase, punctuation → space, drop the whole
/// words `a`, `an`, `the`, collapse whitespace, strip.
pub fn normalize_answer(answer: &str) -> String {
    let lowered = answer.replace('_', " ").to_lowercase();
    let depunct: String = lowered
        .chars()
        .map(|c| if PUNCTUATION.contains(c) { ' ' } else { c })
        .collect();
    // `re.sub(r'\b(a|an|the)\b', ' ', text)`: a match needs word boundaries on both sides, so
    // it is exactly a maximal run of word characters equal to one of the three articles.
    let mut without_articles = String::with_capacity(depunct.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if matches!(run.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in depunct.chars() {
        if is_word_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut without_articles);
            without_articles.push(c);
        }
    }
    flush(&mut run, &mut without_articles);
    py_split_whitespace(&without_articles)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a generated answer is compared with its labels (a task's settings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerScoring {
    /// Stop sequences: the answer is the text before the first occurrence of any of them.
    pub stop_sequences: Vec<String>,
    /// Chain-of-thought delimiter: when non-empty the answer is what follows its last
    /// occurrence.
    pub cot_delimiter: String,
    /// TriviaQA normalisation (`do_normalization`); when off, only surrounding whitespace is
    /// stripped.
    pub do_normalization: bool,
}

/// The verdict on one generated answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerVerdict {
    /// The output after stop-sequence cut, chain-of-thought split and normalisation.
    pub cleaned_output: String,
    /// Whether `cleaned_output` starts with a cleaned label.
    pub correct: bool,
}

impl AnswerScoring {
    /// The answer part of a raw output: cut at the first stop sequence, then keep the text
    /// after the last chain-of-thought delimiter.
    ///
    /// llm-foundry splits on `'|'.join(stop_sequences)` used as a *regular expression*; this
    /// matches the stop strings literally, which agrees whenever they hold no regex
    /// metacharacters (true of every stop sequence in llm-foundry's task files) and avoids
    /// silently misreading those that do.
    pub fn extract<'a>(&self, output: &'a str) -> &'a str {
        let cut = self
            .stop_sequences
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| output.find(s.as_str()))
            .min()
            .unwrap_or(output.len());
        let answer = &output[..cut];
        if self.cot_delimiter.is_empty() {
            answer
        } else {
            answer
                .rsplit(self.cot_delimiter.as_str())
                .next()
                .unwrap_or(answer)
        }
    }

    fn clean(&self, s: &str) -> String {
        if self.do_normalization {
            normalize_answer(s)
        } else {
            py_strip(s).to_string()
        }
    }

    /// Scores `output` against `labels` (the answer and its aliases).
    pub fn score(&self, output: &str, labels: &[String]) -> AnswerVerdict {
        let cleaned_output = self.clean(self.extract(output));
        let correct = labels
            .iter()
            .any(|l| cleaned_output.starts_with(&self.clean(l)));
        AnswerVerdict {
            cleaned_output,
            correct,
        }
    }
}

/// Whether any stop sequence occurs in `text` (used to end a row's generation early; the
/// verdict is unchanged because [`AnswerScoring::extract`] cuts at the first occurrence).
pub fn contains_stop(text: &str, stop_sequences: &[String]) -> bool {
    stop_sequences
        .iter()
        .any(|s| !s.is_empty() && text.contains(s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalisation_drops_articles_punctuation_and_case() {
        assert_eq!(
            normalize_answer("  The Beatles'  (band)_X "),
            "beatles band x"
        );
        assert_eq!(
            normalize_answer("An apple, a day; THE end"),
            "apple day end"
        );
        // Articles only as whole words: "another", "theme", "a1" stay.
        assert_eq!(
            normalize_answer("another theme a1 a_b"),
            "another theme a1 b"
        );
        assert_eq!(normalize_answer("‘Quoted’ ´tick` x"), "quoted tick x");
    }

    #[test]
    fn normalisation_matches_reference_cleaned_outputs() {
        // Rows of icl/reference_results.json (cleaned_output as llm-foundry computed it).
        assert_eq!(
            normalize_answer(
                " insulinOtherwiseOtherwiseOtherwise there there there there there tent"
            ),
            "insulinotherwiseotherwiseotherwise there there there there there tent"
        );
    }

    #[test]
    fn output_must_start_with_a_label() {
        let s = AnswerScoring {
            do_normalization: true,
            ..Default::default()
        };
        assert!(
            s.score(" the Onion skins are", &labels(&["Onion", "Bulb onion"]))
                .correct
        );
        assert!(!s.score(" a red onion", &labels(&["Onion"])).correct);
    }

    #[test]
    fn stop_sequences_and_cot_delimiter_select_the_answer() {
        let s = AnswerScoring {
            stop_sequences: labels(&["\n\n", "Question:"]),
            cot_delimiter: "The answer is ".into(),
            do_normalization: false,
        };
        let out = " 3 + 4 = 7. The answer is 7\n\nQuestion: The answer is 9";
        assert_eq!(s.extract(out), "7");
        assert!(s.score(out, &labels(&["7"])).correct);
        assert!(!s.score(out, &labels(&["9"])).correct);
    }

    #[test]
    fn without_normalisation_only_whitespace_is_stripped() {
        let s = AnswerScoring::default();
        let v = s.score("  Paris.", &labels(&[" Paris "]));
        assert_eq!(v.cleaned_output, "Paris.");
        assert!(v.correct);
        assert!(!s.score("paris", &labels(&["Paris"])).correct);
    }

    #[test]
    fn contains_stop_ignores_empty_sequences() {
        assert!(!contains_stop("abc", &labels(&[""])));
        assert!(contains_stop("a\n\nb", &labels(&["\n\n"])));
    }
}
