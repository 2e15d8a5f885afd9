//! An exact fast path for encoding with byte-level BPE tokenizers (GPT-2, GPT-NeoX/MPT and
//! tessera-trained ones), used by `prepare` where tokenization is the whole cost.
//!
//! The `tokenizers` crate builds, per call, a `NormalizedString` with per-byte alignments, one
//! `String` per token and an `Encoding` with offsets; on the gpt-neox tokenizer that caps it near
//! 0.3–0.5 M tokens/s per core. This encoder computes only the ids, with the same steps:
//!
//! 1. split out added tokens that match the raw text (aho-corasick, leftmost-longest);
//! 2. NFC-normalize the remaining pieces (the same `unicode-normalization-alignments` crate), then
//!    split out added tokens that match normalized text;
//! 3. pre-tokenize each piece with the GPT-2 pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, implemented by
//!    hand (Unicode classes from `regex-syntax`'s tables) because the lookahead needs Oniguruma;
//! 4. BPE each pre-token (lowest merge rank first, leftmost on ties — what `Word::merge_all`
//!    computes), memoized in a per-thread cache.
//!
//! [`FastBpe::from_tokenizer`] accepts only the configurations it reproduces exactly (no
//! truncation or padding, NFC or no normalizer, ByteLevel pre-tokenizer, BPE without dropout,
//! prefixes or byte fallback, every byte that UTF-8 can contain in the vocabulary, added tokens without
//! strip/single-word flags); anything else returns `None` and callers use `tokenizers`. Tests
//! compare both paths on the fixtures and on random Unicode text. One known gap: characters first
//! assigned in a Unicode version newer than Oniguruma's tables could be classed differently.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use unicode_normalization_alignments::UnicodeNormalization;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// Pre-tokens cached per thread before the cache is cleared (bounds memory on long-tailed text).
const CACHE_LIMIT: usize = 1 << 19;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Pre-token bytes → ids.
type WordCache = HashMap<Box<[u8]>, Box<[u32]>, Xxh3DefaultBuilder>;

thread_local! {
    /// (encoder id, pre-token bytes → ids). One cache per thread, reset when another encoder
    /// uses the thread.
    static CACHE: RefCell<(u64, WordCache)> = RefCell::new((0, HashMap::default()));
}

/// A multiplicative hasher for the `u64` merge-pair keys.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    }
}

type MergeMap = HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>;

/// The exact fast encoder (see the module docs).
pub struct FastBpe {
    id: u64,
    byte_ids: [u32; 256],
    /// `(left << 32) | right` → (rank, merged id).
    merges: MergeMap,
    /// With `ignore_merges`: byte-level word → id, checked before merging.
    whole_words: Option<HashMap<String, u32>>,
    nfc: bool,
    add_prefix_space: bool,
    use_regex: bool,
    raw_added: Option<(AhoCorasick, Vec<u32>)>,
    norm_added: Option<(AhoCorasick, Vec<u32>)>,
    letters: Vec<(u32, u32)>,
    numbers: Vec<(u32, u32)>,
}

impl std::fmt::Debug for FastBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastBpe")
            .field("merges", &self.merges.len())
            .finish()
    }
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
pub(crate) fn byte_char(b: u8) -> char {
    let printable = |b: u8| {
        (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('\u{fffd}')
}

/// The ranges of a Unicode class, from `regex-syntax` (the `regex` crate's own tables).
fn class_ranges(pattern: &str) -> Option<Vec<(u32, u32)>> {
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    match hir.kind() {
        regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(c)) => Some(
            c.ranges()
                .iter()
                .map(|r| (r.start() as u32, r.end() as u32))
                .collect(),
        ),
        _ => None,
    }
}

fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

impl FastBpe {
    /// The fast encoder for `t`, or `None` when `t` uses a feature this encoder does not
    /// reproduce exactly.
    pub fn from_tokenizer(t: &tokenizers::Tokenizer) -> Option<Self> {
        let json: serde_json::Value = serde_json::from_str(&t.to_string(false).ok()?).ok()?;
        if !json["truncation"].is_null() || !json["padding"].is_null() {
            return None;
        }
        let nfc = match &json["normalizer"] {
            serde_json::Value::Null => false,
            n if n["type"] == "NFC" => true,
            _ => return None,
        };
        let pre = &json["pre_tokenizer"];
        if pre["type"] != "ByteLevel" {
            return None;
        }
        let add_prefix_space = pre["add_prefix_space"].as_bool().unwrap_or(true);
        let use_regex = pre["use_regex"].as_bool().unwrap_or(true);
        let model = &json["model"];
        if model["type"] != "BPE"
            || !model["dropout"].is_null() && model["dropout"].as_f64() != Some(0.0)
            || !model["continuing_subword_prefix"].is_null()
            || !model["end_of_word_suffix"].is_null()
            || model["byte_fallback"].as_bool().unwrap_or(false)
        {
            return None;
        }
        let vocab: HashMap<&str, u32> = model["vocab"]
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.as_str(), v.as_u64()? as u32)))
            .collect::<Option<_>>()?;
        // Bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5..=0xFF) may be absent, as in
        // gpt-neox; input is always a `&str`, so they can never be looked up.
        let mut byte_ids = [u32::MAX; 256];
        for b in 0..=255u8 {
            match vocab.get(byte_char(b).to_string().as_str()) {
                Some(&id) => byte_ids[b as usize] = id,
                None if matches!(b, 0xC0 | 0xC1 | 0xF5..=0xFF) => {}
                None => return None,
            }
        }
        let mut merges = MergeMap::default();
        for (rank, m) in model["merges"].as_array()?.iter().enumerate() {
            let (a, b) = match m {
                serde_json::Value::String(s) => s.split_once(' ')?,
                serde_json::Value::Array(p) if p.len() == 2 => (p[0].as_str()?, p[1].as_str()?),
                _ => return None,
            };
            let new = *vocab.get(format!("{a}{b}").as_str())?;
            let key = ((*vocab.get(a)? as u64) << 32) | *vocab.get(b)? as u64;
            merges.insert(key, (rank as u32, new));
        }
        let whole_words = model["ignore_merges"]
            .as_bool()
            .unwrap_or(false)
            .then(|| vocab.iter().map(|(k, v)| (k.to_string(), *v)).collect());
        let (mut raw, mut norm) = (Vec::new(), Vec::new());
        for tok in json["added_tokens"].as_array()? {
            if tok["single_word"] == true || tok["lstrip"] == true || tok["rstrip"] == true {
                return None;
            }
            let content = tok["content"].as_str()?.to_string();
            let id = tok["id"].as_u64()? as u32;
            if content.is_empty() {
                continue;
            }
            if tok["normalized"] == true {
                let content = if nfc {
                    content.nfc().map(|(c, _)| c).collect()
                } else {
                    content
                };
                norm.push((content, id));
            } else {
                raw.push((content, id));
            }
        }
        let build = |list: Vec<(String, u32)>| -> Option<Option<(AhoCorasick, Vec<u32>)>> {
            if list.is_empty() {
                return Some(None);
            }
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(list.iter().map(|(c, _)| c))
                .ok()?;
            Some(Some((ac, list.into_iter().map(|(_, id)| id).collect())))
        };
        Some(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            byte_ids,
            merges,
            whole_words,
            nfc,
            add_prefix_space,
            use_regex,
            raw_added: build(raw)?,
            norm_added: build(norm)?,
            letters: class_ranges(r"\p{L}")?,
            numbers: class_ranges(r"\p{N}")?,
        })
    }

    /// Appends the ids of `text` (no special tokens added) to `out`.
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        CACHE.with(|cell| {
            let mut guard = cell.borrow_mut();
            let (owner, cache) = &mut *guard;
            if *owner != self.id {
                cache.clear();
                *owner = self.id;
            }
            split_added(text, self.raw_added.as_ref(), out, &mut |piece, out| {
                if self.nfc && !piece.is_ascii() {
                    let normalized: String = piece.nfc().map(|(c, _)| c).collect();
                    split_added(&normalized, self.norm_added.as_ref(), out, &mut |p, out| {
                        self.pre_tokenize(p, out, cache)
                    });
                } else {
                    split_added(piece, self.norm_added.as_ref(), out, &mut |p, out| {
                        self.pre_tokenize(p, out, cache)
                    });
                }
            });
        });
    }

    /// The ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out);
        out
    }

    fn class(&self, c: char) -> Class {
        if c.is_ascii() {
            return if c.is_ascii_alphabetic() {
                Class::Letter
            } else if c.is_ascii_digit() {
                Class::Number
            } else if c.is_ascii_whitespace() || c == '\x0b' {
                Class::Space
            } else {
                Class::Other
            };
        }
        if c.is_whitespace() {
            Class::Space
        } else if in_ranges(&self.letters, c) {
            Class::Letter
        } else if in_ranges(&self.numbers, c) {
            Class::Number
        } else {
            Class::Other
        }
    }

    fn pre_tokenize(&self, piece: &str, out: &mut Vec<u32>, cache: &mut WordCache) {
        if piece.is_empty() {
            return;
        }
        let prefixed;
        let piece = if self.add_prefix_space && !piece.starts_with(' ') {
            prefixed = format!(" {piece}");
            prefixed.as_str()
        } else {
            piece
        };
        if !self.use_regex {
            self.bpe_cached(piece.as_bytes(), out, cache);
            return;
        }
        let mut i = 0;
        while i < piece.len() {
            let end = self.next_pretoken(piece, i);
            self.bpe_cached(&piece.as_bytes()[i..end], out, cache);
            i = end;
        }
    }

    /// End of the GPT-2 pattern's match starting at `i` (see the module docs for the pattern).
    fn next_pretoken(&self, s: &str, i: usize) -> usize {
        let b = &s.as_bytes()[i..];
        if b[0] == b'\'' && b.len() >= 2 {
            match (b[1], b.get(2)) {
                (b's' | b't' | b'm' | b'd', _) => return i + 2,
                (b'r' | b'v', Some(b'e')) | (b'l', Some(b'l')) => return i + 3,
                _ => {}
            }
        }
        let mut chars = s[i..].char_indices();
        let Some((_, c0)) = chars.next() else {
            return s.len();
        };
        // ` ?X+` for X in letters, numbers, other: the optional space is taken when the next
        // character starts a run (a space itself cannot).
        let run_start = if c0 == ' ' {
            match chars.clone().next() {
                Some((_, c1)) if self.class(c1) != Class::Space => Some((i + 1, self.class(c1))),
                _ => None,
            }
        } else {
            let k = self.class(c0);
            (k != Class::Space).then_some((i, k))
        };
        if let Some((start, class)) = run_start {
            let mut end = s.len();
            for (j, c) in s[start..].char_indices() {
                if self.class(c) != class {
                    end = start + j;
                    break;
                }
            }
            return end;
        }
        // `\s+(?!\S)|\s+`: a whitespace run; when a non-space follows, its last character is
        // left to prefix the next token, unless it is the only one.
        let mut end = s.len();
        let mut last_len = 0;
        for (j, c) in s[i..].char_indices() {
            if self.class(c) != Class::Space {
                end = i + j;
                break;
            }
            last_len = c.len_utf8();
        }
        if end < s.len() && end - i > last_len {
            end - last_len
        } else {
            end
        }
    }

    fn bpe_cached(&self, word: &[u8], out: &mut Vec<u32>, cache: &mut WordCache) {
        if word.len() == 1 {
            out.push(self.byte_ids[word[0] as usize]);
            return;
        }
        if let Some(ids) = cache.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.bpe(word, out);
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.into(), out[start..].into());
    }

    /// Merges the byte symbols of `word`: repeatedly the lowest-rank adjacent pair, leftmost on
    /// ties.
    fn bpe(&self, word: &[u8], out: &mut Vec<u32>) {
        if let Some(whole) = &self.whole_words {
            let s: String = word.iter().map(|&b| byte_char(b)).collect();
            if let Some(&id) = whole.get(&s) {
                out.push(id);
                return;
            }
        }
        let mut syms: Vec<u32> = word.iter().map(|&b| self.byte_ids[b as usize]).collect();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for (p, w) in syms.windows(2).enumerate() {
                if let Some(&(rank, new)) = self.merges.get(&(((w[0] as u64) << 32) | w[1] as u64))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, p, new));
                }
            }
            let Some((_, p, new)) = best else { break };
            syms[p] = new;
            syms.remove(p + 1);
        }
        out.extend_from_slice(&syms);
    }
}

/// Splits `text` around the matches of `added` (pushing their ids) and hands the pieces between
/// them, in order, to `piece`.
fn split_added(
    text: &str,
    added: Option<&(AhoCorasick, Vec<u32>)>,
    out: &mut Vec<u32>,
    piece: &mut dyn FnMut(&str, &mut Vec<u32>),
) {
    let Some((ac, ids)) = added else {
        piece(text, out);
        return;
    };
    let mut last = 0;
    for m in ac.find_iter(text) {
        if m.start() > last {
            piece(&text[last..m.start()], out);
        }
        out.push(ids[m.pattern().as_usize()]);
        last = m.end();
    }
    if last < text.len() {
        piece(&text[last..], out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{BpeTrainConfig, train_bpe};

    fn hf_ids(t: &tokenizers::Tokenizer, s: &str) -> Vec<u32> {
        t.encode_fast(s, false).unwrap().get_ids().to_vec()
    }

    /// A pool of characters that exercises every branch: contractions, the optional space,
    /// letters/numbers/other runs in several scripts, Unicode spaces, newlines, combining marks
    /// (NFC), emoji, control characters and the added tokens.
    const POOL: &[&str] = &[
        "a",
        "Z",
        "é",
        "e\u{301}",
        "ß",
        "ж",
        "字",
        "한",
        "١",
        "²",
        "Ⅻ",
        "7",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "'",
        "'s",
        "'re",
        "'ll",
        "'x",
        "-",
        "...",
        "😀",
        "👨\u{200d}👩",
        "#",
        "\u{0}",
        "\u{85}",
        "<|endoftext|>",
        "<|reserved_0|>",
        "def",
        " the",
        "ing",
        "\u{300}",
        "ﬁ",
        "Å",
        "A\u{30a}",
    ];

    fn random_text(seed: u64, len: usize) -> String {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                POOL[(x % POOL.len() as u64) as usize]
            })
            .collect()
    }

    #[test]
    fn matches_hf_on_random_unicode_text_with_a_trained_tokenizer() {
        let corpus: Vec<String> = (0..300).map(|i| random_text(i, 60)).collect();
        let cfg = BpeTrainConfig {
            vocab_size: 600,
            pad_to_multiple_of: Some(128),
            min_frequency: 1,
            ..Default::default()
        };
        let (tok, _) = train_bpe(corpus.iter(), &cfg).unwrap();
        let fast = FastBpe::from_tokenizer(tok.inner())
            .expect("a tessera-trained tokenizer has a fast path");
        for seed in 1000..1600 {
            let text = random_text(seed, 1 + (seed % 80) as usize);
            assert_eq!(
                fast.encode(&text),
                hf_ids(tok.inner(), &text),
                "text {text:?}"
            );
        }
        assert_eq!(fast.encode(""), Vec::<u32>::new());
    }

    #[test]
    fn matches_hf_with_added_whitespace_tokens_and_prefix_space() {
        let corpus: Vec<String> = (0..200).map(|i| random_text(i, 40)).collect();
        let cfg = BpeTrainConfig {
            vocab_size: 500,
            min_frequency: 1,
            ..Default::default()
        };
        let (tok, _) = train_bpe(corpus.iter(), &cfg).unwrap();
        let mut inner = tok.inner().clone();
        // gpt-neox style: normalized (non-special) whitespace-run tokens, matched after NFC.
        let runs: Vec<tokenizers::AddedToken> = (2..6)
            .map(|n| tokenizers::AddedToken::from(" ".repeat(n), false).normalized(true))
            .collect();
        inner.add_tokens(&runs);
        inner.add_special_tokens(&[tokenizers::AddedToken::from("e\u{301}x", true)]);
        let fast = FastBpe::from_tokenizer(&inner).unwrap();
        for seed in 0..400 {
            let text = random_text(seed + 77, 50);
            assert_eq!(fast.encode(&text), hf_ids(&inner, &text), "text {text:?}");
        }
        // add_prefix_space = true.
        let mut json: serde_json::Value =
            serde_json::from_str(&inner.to_string(false).unwrap()).unwrap();
        json["pre_tokenizer"]["add_prefix_space"] = true.into();
        let prefixed: tokenizers::Tokenizer = json.to_string().parse().unwrap();
        let fast = FastBpe::from_tokenizer(&prefixed).unwrap();
        for seed in 0..200 {
            let text = random_text(seed + 5000, 30);
            assert_eq!(
                fast.encode(&text),
                hf_ids(&prefixed, &text),
                "text {text:?}"
            );
        }
    }

    #[test]
    fn unsupported_configurations_have_no_fast_path() {
        let corpus: Vec<String> = (0..50).map(|i| random_text(i, 30)).collect();
        let (tok, _) = train_bpe(
            corpus.iter(),
            &BpeTrainConfig {
                vocab_size: 300,
                ..Default::default()
            },
        )
        .unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&tok.inner().to_string(false).unwrap()).unwrap();
        json["normalizer"] = serde_json::json!({"type": "Lowercase"});
        let t: tokenizers::Tokenizer = json.to_string().parse().unwrap();
        assert!(FastBpe::from_tokenizer(&t).is_none());
        let mut inner = tok.inner().clone();
        inner.add_special_tokens(&[tokenizers::AddedToken::from("<x>", true).lstrip(true)]);
        assert!(FastBpe::from_tokenizer(&inner).is_none());
    }

    #[test]
    fn byte_chars_follow_gpt2() {
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'A'), 'A');
        assert_eq!(byte_char(0), 'Ā');
        let all: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
        assert_eq!(all.len(), 256);
    }
}
