//! Gopher-style quality and repetition filters (Rae et al. 2021, "Scaling Language Models:
//! Methods, Analysis & Insights from Training Gopher", appendix A).
//!
//! Every rule is optional (`None` switches it off) and a failing document is dropped under the
//! name of the first rule it fails, so the report says why. Words are whitespace-separated tokens;
//! character fractions are over the characters of words, as the paper defines them. These rules
//! were tuned for web prose: on source code most of them fire, which is why the stage is off by
//! default.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Thresholds of the quality stage (defaults: the Gopher paper's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityConfig {
    /// Keep documents with at least this many words (50).
    pub min_words: Option<usize>,
    /// … and at most this many (100 000).
    pub max_words: Option<usize>,
    /// Mean word length bounds in characters (3 and 10).
    pub min_mean_word_len: Option<f64>,
    /// See `min_mean_word_len`.
    pub max_mean_word_len: Option<f64>,
    /// Largest ratio of `#` plus ellipses (`...`, `…`) to words (0.1).
    pub max_symbol_word_ratio: Option<f64>,
    /// Largest fraction of lines starting with a bullet (0.9).
    pub max_bullet_lines: Option<f64>,
    /// Largest fraction of lines ending with an ellipsis (0.3).
    pub max_ellipsis_lines: Option<f64>,
    /// Smallest fraction of words with an alphabetic character (0.8).
    pub min_alpha_words: Option<f64>,
    /// Smallest number of English stop words (the, be, to, of, and, that, have, with) (2).
    pub min_stop_words: Option<usize>,
    /// Largest fraction of lines that repeat an earlier line (0.3), and of characters in them (0.2).
    pub max_dup_lines: Option<f64>,
    /// See `max_dup_lines`.
    pub max_dup_line_chars: Option<f64>,
    /// The same for paragraphs (blank-line separated): 0.3 and 0.2.
    pub max_dup_paragraphs: Option<f64>,
    /// See `max_dup_paragraphs`.
    pub max_dup_paragraph_chars: Option<f64>,
    /// `(n, max)`: largest character fraction of the most frequent word n-gram
    /// ((2, 0.2), (3, 0.18), (4, 0.16)).
    pub max_top_ngram_chars: Vec<(usize, f64)>,
    /// `(n, max)`: largest character fraction covered by repeated word n-grams
    /// ((5, 0.15) … (10, 0.10)).
    pub max_dup_ngram_chars: Vec<(usize, f64)>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self {
            min_words: Some(50),
            max_words: Some(100_000),
            min_mean_word_len: Some(3.0),
            max_mean_word_len: Some(10.0),
            max_symbol_word_ratio: Some(0.1),
            max_bullet_lines: Some(0.9),
            max_ellipsis_lines: Some(0.3),
            min_alpha_words: Some(0.8),
            min_stop_words: Some(2),
            max_dup_lines: Some(0.3),
            max_dup_line_chars: Some(0.2),
            max_dup_paragraphs: Some(0.3),
            max_dup_paragraph_chars: Some(0.2),
            max_top_ngram_chars: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            max_dup_ngram_chars: vec![
                (5, 0.15),
                (6, 0.14),
                (7, 0.13),
                (8, 0.12),
                (9, 0.11),
                (10, 0.10),
            ],
        }
    }
}

/// The rule a document failed; its name is the drop reason in `prepare.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityFailure {
    /// `min_words`.
    TooFewWords,
    /// `max_words`.
    TooManyWords,
    /// `min_mean_word_len` or `max_mean_word_len`.
    MeanWordLength,
    /// `max_symbol_word_ratio`.
    SymbolRatio,
    /// `max_bullet_lines`.
    BulletLines,
    /// `max_ellipsis_lines`.
    EllipsisLines,
    /// `min_alpha_words`.
    AlphaWords,
    /// `min_stop_words`.
    StopWords,
    /// `max_dup_lines`.
    DupLines,
    /// `max_dup_line_chars`.
    DupLineChars,
    /// `max_dup_paragraphs`.
    DupParagraphs,
    /// `max_dup_paragraph_chars`.
    DupParagraphChars,
    /// `max_top_ngram_chars`.
    TopNgram,
    /// `max_dup_ngram_chars`.
    DupNgram,
}

impl QualityFailure {
    /// The reason name used in reports.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooFewWords => "quality_too_few_words",
            Self::TooManyWords => "quality_too_many_words",
            Self::MeanWordLength => "quality_mean_word_length",
            Self::SymbolRatio => "quality_symbol_ratio",
            Self::BulletLines => "quality_bullet_lines",
            Self::EllipsisLines => "quality_ellipsis_lines",
            Self::AlphaWords => "quality_alpha_words",
            Self::StopWords => "quality_stop_words",
            Self::DupLines => "quality_dup_lines",
            Self::DupLineChars => "quality_dup_line_chars",
            Self::DupParagraphs => "quality_dup_paragraphs",
            Self::DupParagraphChars => "quality_dup_paragraph_chars",
            Self::TopNgram => "quality_top_ngram",
            Self::DupNgram => "quality_dup_ngram",
        }
    }
}

const STOP_WORDS: [&str; 8] = ["the", "be", "to", "of", "and", "that", "have", "with"];
const BULLETS: [char; 5] = ['•', '●', '○', '▪', '-'];

/// `Err(first failed rule)` or `Ok(())`.
pub fn check(text: &str, cfg: &QualityConfig) -> Result<(), QualityFailure> {
    use QualityFailure::*;
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = words.len();
    if cfg.min_words.is_some_and(|m| n < m) {
        return Err(TooFewWords);
    }
    if cfg.max_words.is_some_and(|m| n > m) {
        return Err(TooManyWords);
    }
    let word_chars: Vec<usize> = words.iter().map(|w| w.chars().count()).collect();
    let total_chars: usize = word_chars.iter().sum();
    let nf = n.max(1) as f64;
    let mean = total_chars as f64 / nf;
    if cfg.min_mean_word_len.is_some_and(|m| n > 0 && mean < m)
        || cfg.max_mean_word_len.is_some_and(|m| mean > m)
    {
        return Err(MeanWordLength);
    }
    if let Some(max) = cfg.max_symbol_word_ratio {
        let symbols =
            text.matches('#').count() + text.matches("...").count() + text.matches('…').count();
        if n > 0 && symbols as f64 / nf > max {
            return Err(SymbolRatio);
        }
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let lf = lines.len().max(1) as f64;
    if let Some(max) = cfg.max_bullet_lines {
        let bullets = lines
            .iter()
            .filter(|l| l.trim_start().starts_with(BULLETS))
            .count();
        if bullets as f64 / lf > max {
            return Err(BulletLines);
        }
    }
    if let Some(max) = cfg.max_ellipsis_lines {
        let ell = lines.iter().filter(|l| {
            let t = l.trim_end();
            t.ends_with("...") || t.ends_with('…')
        });
        if ell.count() as f64 / lf > max {
            return Err(EllipsisLines);
        }
    }
    if let Some(min) = cfg.min_alpha_words {
        let alpha = words
            .iter()
            .filter(|w| w.chars().any(char::is_alphabetic))
            .count();
        if n > 0 && (alpha as f64 / nf) < min {
            return Err(AlphaWords);
        }
    }
    if let Some(min) = cfg.min_stop_words {
        let stops = words
            .iter()
            .filter(|w| {
                let w = w.trim_matches(|c: char| !c.is_alphanumeric());
                STOP_WORDS.iter().any(|s| s.eq_ignore_ascii_case(w))
            })
            .take(min)
            .count();
        if stops < min {
            return Err(StopWords);
        }
    }
    if cfg.max_dup_lines.is_some() || cfg.max_dup_line_chars.is_some() {
        let all_lines: Vec<&str> = text.split('\n').collect();
        let (frac, char_frac) = dup_fractions(&all_lines, text.len());
        if cfg.max_dup_lines.is_some_and(|m| frac > m) {
            return Err(DupLines);
        }
        if cfg.max_dup_line_chars.is_some_and(|m| char_frac > m) {
            return Err(DupLineChars);
        }
    }
    if cfg.max_dup_paragraphs.is_some() || cfg.max_dup_paragraph_chars.is_some() {
        let paras: Vec<&str> = split_paragraphs(text);
        let (frac, char_frac) = dup_fractions(&paras, text.len());
        if cfg.max_dup_paragraphs.is_some_and(|m| frac > m) {
            return Err(DupParagraphs);
        }
        if cfg.max_dup_paragraph_chars.is_some_and(|m| char_frac > m) {
            return Err(DupParagraphChars);
        }
    }
    if total_chars == 0
        || (cfg.max_top_ngram_chars.is_empty() && cfg.max_dup_ngram_chars.is_empty())
    {
        return Ok(());
    }
    let hashes: Vec<u64> = words.iter().map(|w| xxh3_64(w.as_bytes())).collect();
    for &(k, max) in &cfg.max_top_ngram_chars {
        if top_ngram_char_fraction(&hashes, &word_chars, k, total_chars) > max {
            return Err(TopNgram);
        }
    }
    for &(k, max) in &cfg.max_dup_ngram_chars {
        if dup_ngram_char_fraction(&hashes, &word_chars, k, total_chars) > max {
            return Err(DupNgram);
        }
    }
    Ok(())
}

/// Paragraphs: text separated by two or more newlines.
fn split_paragraphs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("\n\n") {
        out.push(&rest[..i]);
        rest = rest[i..].trim_start_matches('\n');
    }
    out.push(rest);
    out
}

/// (fraction of items equal to an earlier item, fraction of `total_len` bytes in such items).
fn dup_fractions(items: &[&str], total_len: usize) -> (f64, f64) {
    let mut seen = HashSet::with_capacity(items.len());
    let (mut dups, mut dup_len) = (0usize, 0usize);
    for item in items {
        if !seen.insert(*item) {
            dups += 1;
            dup_len += item.len();
        }
    }
    (
        dups as f64 / items.len().max(1) as f64,
        dup_len as f64 / total_len.max(1) as f64,
    )
}

fn ngram_key(hashes: &[u64]) -> u64 {
    xxh3_64(bytemuck::cast_slice(hashes))
}

/// Characters in all occurrences of the most frequent n-gram (when it occurs more than once),
/// over all word characters.
fn top_ngram_char_fraction(hashes: &[u64], chars: &[usize], n: usize, total: usize) -> f64 {
    if hashes.len() < n || n == 0 {
        return 0.0;
    }
    let mut counts: HashMap<u64, (usize, usize)> = HashMap::new();
    for i in 0..=hashes.len() - n {
        let e = counts.entry(ngram_key(&hashes[i..i + n])).or_insert((0, i));
        e.0 += 1;
    }
    // Ties go to the n-gram that appeared first, so the result never depends on map order.
    let best = counts
        .values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    match best {
        Some(&(count, first)) if count > 1 => {
            let len: usize = chars[first..first + n].iter().sum();
            (len * count) as f64 / total as f64
        }
        _ => 0.0,
    }
}

/// Fraction of word characters covered by n-grams that repeat an earlier n-gram (each word
/// counted once, however many repeats cover it).
fn dup_ngram_char_fraction(hashes: &[u64], chars: &[usize], n: usize, total: usize) -> f64 {
    if hashes.len() < n || n == 0 {
        return 0.0;
    }
    let mut seen = HashSet::with_capacity(hashes.len());
    let mut covered = vec![false; hashes.len()];
    for i in 0..=hashes.len() - n {
        if !seen.insert(ngram_key(&hashes[i..i + n])) {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    let dup: usize = covered
        .iter()
        .zip(chars)
        .filter(|(c, _)| **c)
        .map(|(_, n)| n)
        .sum();
    dup as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Varied English prose that passes every default rule: words drawn pseudo-randomly from a
    /// small vocabulary, so no n-gram repeats much.
    fn good_prose() -> String {
        const WORDS: [&str; 24] = [
            "river", "engineer", "measure", "careful", "number", "valley", "bright", "morning",
            "station", "history", "garden", "window", "quietly", "travel", "market", "silver",
            "the", "and", "with", "of", "to", "that", "have", "be",
        ];
        let mut s = String::new();
        let mut x = 12345u64;
        for i in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
            s.push(if i % 15 == 14 { '\n' } else { ' ' });
        }
        s
    }

    #[test]
    fn good_prose_passes_the_default_rules() {
        assert_eq!(check(&good_prose(), &QualityConfig::default()), Ok(()));
    }

    #[test]
    fn word_count_bounds() {
        let cfg = QualityConfig::default();
        assert_eq!(
            check("the cat and the dog", &cfg),
            Err(QualityFailure::TooFewWords)
        );
        let cfg = QualityConfig {
            max_words: Some(10),
            ..Default::default()
        };
        assert_eq!(
            check(&good_prose(), &cfg),
            Err(QualityFailure::TooManyWords)
        );
    }

    #[test]
    fn mean_word_length_and_symbols() {
        let only = |f: fn(&mut QualityConfig)| {
            let mut c = QualityConfig {
                min_words: None,
                max_words: None,
                min_mean_word_len: None,
                max_mean_word_len: None,
                max_symbol_word_ratio: None,
                max_bullet_lines: None,
                max_ellipsis_lines: None,
                min_alpha_words: None,
                min_stop_words: None,
                max_dup_lines: None,
                max_dup_line_chars: None,
                max_dup_paragraphs: None,
                max_dup_paragraph_chars: None,
                max_top_ngram_chars: vec![],
                max_dup_ngram_chars: vec![],
            };
            f(&mut c);
            c
        };
        let long = only(|c| c.max_mean_word_len = Some(10.0));
        assert_eq!(
            check("supercalifragilistic antidisestablishment", &long),
            Err(QualityFailure::MeanWordLength)
        );
        let sym = only(|c| c.max_symbol_word_ratio = Some(0.1));
        assert_eq!(
            check("# a # b ... c d e f", &sym),
            Err(QualityFailure::SymbolRatio)
        );
        assert_eq!(check("# a b c d e f g h i j k", &sym), Ok(()));
        let alpha = only(|c| c.min_alpha_words = Some(0.8));
        assert_eq!(check("1 2 3 a b", &alpha), Err(QualityFailure::AlphaWords));
        let stop = only(|c| c.min_stop_words = Some(2));
        assert_eq!(
            check("cats eat fish", &stop),
            Err(QualityFailure::StopWords)
        );
        assert_eq!(check("The cat, and fish.", &stop), Ok(()));
        let bullets = only(|c| c.max_bullet_lines = Some(0.5));
        assert_eq!(
            check("• a\n• b\nc\n- d", &bullets),
            Err(QualityFailure::BulletLines)
        );
        let ell = only(|c| c.max_ellipsis_lines = Some(0.3));
        assert_eq!(
            check("a...\nb…\nc", &ell),
            Err(QualityFailure::EllipsisLines)
        );
    }

    #[test]
    fn repeated_lines_and_paragraphs_are_caught() {
        let cfg = QualityConfig {
            min_words: None,
            min_stop_words: None,
            ..Default::default()
        };
        let text = "buy now today\nbuy now today\nbuy now today\nsomething else entirely here";
        assert_eq!(check(text, &cfg), Err(QualityFailure::DupLines));
        let (frac, chars) = dup_fractions(&["a", "bb", "a", "bb", "c"], 8);
        assert!((frac - 0.4).abs() < 1e-12 && (chars - 3.0 / 8.0).abs() < 1e-12);
        assert_eq!(split_paragraphs("a\n\n\nb\nc\n\nd"), vec!["a", "b\nc", "d"]);
    }

    #[test]
    fn ngram_repetition_fractions_match_hand_counts() {
        let words = ["ab", "cd", "ab", "cd", "ab", "ef"];
        let hashes: Vec<u64> = words.iter().map(|w| xxh3_64(w.as_bytes())).collect();
        let chars = vec![2; 6];
        // "ab cd" occurs twice (4 chars each) out of 12 characters; "cd ab" also twice but later.
        assert!((top_ngram_char_fraction(&hashes, &chars, 2, 12) - 8.0 / 12.0).abs() < 1e-12);
        // Repeated bigrams: "ab cd" at 2 and "cd ab" at 3 cover words 2..=4 → 6 of 12 chars.
        assert!((dup_ngram_char_fraction(&hashes, &chars, 2, 12) - 6.0 / 12.0).abs() < 1e-12);
        assert_eq!(dup_ngram_char_fraction(&hashes, &chars, 5, 12), 0.0);
    }
}
