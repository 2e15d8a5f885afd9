//! Token ids to text, incrementally, with stop strings: what a choice's client may be sent
//! after each token.
//!
//! - **Incremental decoding** (TGI's `decode_token`): the new text is the decoding of a short
//!   window of recent ids minus the decoding of the same window without the newest ids. Text
//!   is released only when it does not end in U+FFFD, since a byte-level token can hold half
//!   of a UTF-8 character that the next token completes. Each token costs a few-token decode.
//! - **Stop strings**: the text stops before the first occurrence of any stop string (OpenAI
//!   leaves it out). Text that could be the start of a stop string is held back until the
//!   next tokens prove otherwise, so a stream never sends text it later has to take back.

use tessera_data::tokenizer::Tokenizer;

/// One choice's text as it grows.
#[derive(Debug)]
pub struct ChoiceText {
    ids: Vec<u32>,
    /// The window `ids[prefix..]` is decoded; `ids[prefix..read]` was already turned into text.
    prefix: usize,
    read: usize,
    /// All text decoded so far (cut at a stop string once one is seen).
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stop: Vec<String>,
    stopped: bool,
}

/// What one token changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Text that can be sent now.
    pub delta: String,
    /// Byte offset in the choice's text where this token's text starts.
    pub offset: usize,
    /// A stop string was found: the choice is over (its finish reason is `stop`).
    pub stopped: bool,
}

impl ChoiceText {
    /// A choice that stops at any of `stop` (empty strings are ignored).
    pub fn new(stop: &[String]) -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            sent: 0,
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            stopped: false,
        }
    }

    /// Adds a generated token (special tokens such as EOS add no text).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Step {
        let offset = self.text.len();
        if self.stopped {
            return Step {
                offset,
                stopped: true,
                ..Step::default()
            };
        }
        self.ids.push(id);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let before = decode(&self.ids[self.prefix..self.read]);
        let after = decode(&self.ids[self.prefix..]);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            let new = after.get(before.len()..).unwrap_or_default();
            self.text.push_str(new);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        if let Some(at) = self.find_stop(offset) {
            self.text.truncate(at);
            self.stopped = true;
            let delta = self.take(self.text.len());
            return Step {
                delta,
                offset,
                stopped: true,
            };
        }
        let safe = self.text.len() - self.held_back();
        Step {
            delta: self.take(safe),
            offset,
            stopped: false,
        }
    }

    /// Everything not yet sent, once no token will follow (a held-back partial stop string
    /// is then plain text).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> String {
        if !self.stopped && self.read < self.ids.len() {
            // Bytes of an unfinished character: decode them as they are (U+FFFD).
            let before = tokenizer
                .decode(&self.ids[self.prefix..self.read], true)
                .unwrap_or_default();
            let after = tokenizer
                .decode(&self.ids[self.prefix..], true)
                .unwrap_or_default();
            if let Some(new) = after.get(before.len()..) {
                self.text.push_str(new);
            }
            self.read = self.ids.len();
        }
        self.take(self.text.len())
    }

    /// The whole text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True once a stop string ended the choice.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Hands out `text[sent..end]`.
    fn take(&mut self, end: usize) -> String {
        if end <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// The first stop string occurrence that ends after `from` (new text), if any.
    fn find_stop(&self, from: usize) -> Option<usize> {
        self.stop
            .iter()
            .filter_map(|s| {
                // A match may start up to len(s) - 1 bytes before the new text.
                let mut start = from.saturating_sub(s.len() - 1);
                while !self.text.is_char_boundary(start) {
                    start -= 1;
                }
                self.text[start..].find(s.as_str()).map(|i| start + i)
            })
            .min()
            .map(|at| at.max(self.sent))
    }

    /// Bytes at the end of the text that could begin a stop string.
    fn held_back(&self) -> usize {
        let text = self.text.as_str();
        self.stop
            .iter()
            .map(|s| {
                (1..s.len().min(text.len() + 1))
                    .rev()
                    .find(|&n| {
                        text.is_char_boundary(text.len() - n)
                            && s.is_char_boundary(n)
                            && text.ends_with(&s[..n])
                    })
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_data::tokenizer::{BpeTrainConfig, train_bpe};

    /// A byte-level BPE trained on a few lines (ids of single bytes exist for any text).
    fn tokenizer() -> Tokenizer {
        let docs = [
            "hello world, the end. héllo wörld ✓ stop here",
            "the theme of the end",
        ];
        let cfg = BpeTrainConfig {
            vocab_size: 300,
            ..BpeTrainConfig::default()
        };
        train_bpe(docs.iter(), &cfg)
            .expect("training a tokenizer")
            .0
    }

    fn stream(tok: &Tokenizer, text: &str, stop: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut choice = ChoiceText::new(&stop);
        let mut deltas = Vec::new();
        let mut stopped = false;
        // One byte-level token per byte: the hardest case for partial characters.
        for b in text.bytes() {
            let id = tok
                .token_to_id(&byte_token(b))
                .expect("every byte has a token");
            let step = choice.push(tok, id);
            deltas.push(step.delta);
            if step.stopped {
                stopped = true;
                break;
            }
        }
        if !stopped {
            deltas.push(choice.finish(tok));
        }
        (deltas, choice.text().to_string(), stopped)
    }

    /// The byte-level alphabet's symbol for byte `b` (GPT-2's bytes_to_unicode).
    fn byte_token(b: u8) -> String {
        let printable =
            |c: u8| (b'!'..=b'~').contains(&c) || (0xA1..=0xAC).contains(&c) || c >= 0xAE;
        if printable(b) {
            return char::from(b).to_string();
        }
        let mut n = 0u32;
        for c in 0..=255u8 {
            if c == b {
                return char::from_u32(256 + n).unwrap().to_string();
            }
            if !printable(c) {
                n += 1;
            }
        }
        unreachable!()
    }

    #[test]
    fn the_deltas_add_up_to_the_text_and_never_split_a_character() {
        let tok = tokenizer();
        let (deltas, text, stopped) = stream(&tok, "héllo wörld ✓", &[]);
        assert!(!stopped);
        assert_eq!(text, "héllo wörld ✓");
        assert_eq!(deltas.concat(), text);
        assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    }

    #[test]
    fn a_stop_string_ends_the_text_before_it_even_across_tokens() {
        let tok = tokenizer();
        let (deltas, text, stopped) = stream(&tok, "the end. stop here", &["end."]);
        assert!(stopped);
        assert_eq!(text, "the ");
        assert_eq!(
            deltas.concat(),
            "the ",
            "nothing of the stop string is sent"
        );
    }

    #[test]
    fn a_partial_stop_string_is_held_back_then_released() {
        let tok = tokenizer();
        // "the" could start "theme?" until the "m" becomes "x".
        let (deltas, text, stopped) = stream(&tok, "the thex", &["theme?"]);
        assert!(!stopped);
        assert_eq!(text, "the thex");
        assert_eq!(deltas.concat(), "the thex");
        let held: Vec<&String> = deltas.iter().filter(|d| d.is_empty()).collect();
        assert!(held.len() >= 3, "t, h, e were held back: {deltas:?}");
    }

    #[test]
    fn a_stop_string_of_a_multibyte_character_is_found() {
        let tok = tokenizer();
        let (_, text, stopped) = stream(&tok, "wörld ✓ end", &["✓"]);
        assert!(stopped);
        assert_eq!(text, "wörld ");
    }
}
