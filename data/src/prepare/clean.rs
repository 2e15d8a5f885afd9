//! The first cleaning stage: make every document valid UTF-8 (repair or drop), strip control
//! characters, and compute the normalized-text key that exact dedup, slicing and the validation
//! split all route on.
//!
//! Why one key for all three: documents that are equal up to case and whitespace then always land
//! in the same slice and the same split, so exact dedup stays global across `--slice` jobs and no
//! duplicate leaks from train into val.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_64_with_seed};

/// What to do with bytes that are not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Utf8Mode {
    /// Replace each invalid sequence with U+FFFD (Python's `errors="replace"`), count the doc as
    /// repaired and keep it.
    #[default]
    Repair,
    /// Drop the document (counted under `invalid_utf8`).
    Drop,
}

/// The outcome of UTF-8 decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Utf8Outcome<'a> {
    /// The bytes were valid: borrowed as is.
    Valid(&'a str),
    /// The bytes were invalid and were repaired lossily.
    Repaired(String),
    /// The bytes were invalid and the mode is [`Utf8Mode::Drop`].
    Invalid,
}

/// Decodes `bytes` as UTF-8 under `mode`.
pub fn decode_utf8(bytes: &[u8], mode: Utf8Mode) -> Utf8Outcome<'_> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Utf8Outcome::Valid(s),
        Err(_) => match mode {
            Utf8Mode::Repair => Utf8Outcome::Repaired(String::from_utf8_lossy(bytes).into_owned()),
            Utf8Mode::Drop => Utf8Outcome::Invalid,
        },
    }
}

/// True for the characters the control stage removes: Unicode `Cc` (C0, DEL, C1) except tab,
/// newline and carriage return, which carry layout that code and prose need.
fn is_stripped_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// `text` without control characters; borrowed when there were none.
pub fn strip_control(text: &str) -> Cow<'_, str> {
    // Fast scan: C1 controls are two-byte sequences starting 0xC2 0x80..0x9F; C0/DEL are bytes.
    let has_control = text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2)
        && text.chars().any(is_stripped_control);
    if !has_control {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|&c| !is_stripped_control(c)).collect())
}

/// The 128-bit key of `text` after normalization: lowercased, every whitespace run collapsed to
/// one space, leading and trailing whitespace removed. Equal keys mean "the same document" for
/// exact dedup.
pub fn normalized_key(text: &str) -> u128 {
    let mut hasher = Xxh3::new();
    // Normalize into a small stack buffer and stream it into the hasher: no allocation per doc.
    let mut buf = [0u8; 4096];
    let mut len = 0usize;
    let mut pending_space = false;
    let mut started = false;
    let push = |bytes: &[u8], buf: &mut [u8; 4096], len: &mut usize, h: &mut Xxh3| {
        if *len + bytes.len() > buf.len() {
            h.update(&buf[..*len]);
            *len = 0;
        }
        buf[*len..*len + bytes.len()].copy_from_slice(bytes);
        *len += bytes.len();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = started;
            continue;
        }
        if pending_space {
            push(b" ", &mut buf, &mut len, &mut hasher);
            pending_space = false;
        }
        started = true;
        if c.is_ascii() {
            push(
                &[c.to_ascii_lowercase() as u8],
                &mut buf,
                &mut len,
                &mut hasher,
            );
        } else {
            for l in c.to_lowercase() {
                let mut tmp = [0u8; 4];
                push(
                    l.encode_utf8(&mut tmp).as_bytes(),
                    &mut buf,
                    &mut len,
                    &mut hasher,
                );
            }
        }
    }
    hasher.update(&buf[..len]);
    hasher.digest128()
}

/// A 64-bit value derived from a document key for one routing purpose (slice, split): each
/// purpose gets its own seed so the decisions are independent of each other.
pub fn route_hash(key: u128, seed: u64, purpose: u64) -> u64 {
    xxh3_64_with_seed(
        &key.to_le_bytes(),
        seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

/// Purpose tags for [`route_hash`].
pub const PURPOSE_SLICE: u64 = 1;
/// Purpose tag for the validation split.
pub const PURPOSE_VAL: u64 = 2;

/// True when the document with `key` belongs to the validation split: a pure function of the
/// normalized text, the seed and the fraction, so it never depends on order or worker count.
pub fn is_val(key: u128, seed: u64, val_fraction: f64) -> bool {
    if val_fraction <= 0.0 {
        return false;
    }
    let u = (route_hash(key, seed, PURPOSE_VAL) >> 11) as f64 / (1u64 << 53) as f64;
    u < val_fraction
}

/// The slice (0-based, of `count`) that the document with `key` belongs to.
pub fn slice_of(key: u128, seed: u64, count: u32) -> u32 {
    (route_hash(key, seed, PURPOSE_SLICE) % count as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_replaces_invalid_bytes_and_drop_refuses_them() {
        let bad = b"caf\xe9 ok";
        match decode_utf8(bad, Utf8Mode::Repair) {
            Utf8Outcome::Repaired(s) => assert_eq!(s, "caf\u{fffd} ok"),
            other => panic!("expected repaired, got {other:?}"),
        }
        assert_eq!(decode_utf8(bad, Utf8Mode::Drop), Utf8Outcome::Invalid);
        assert_eq!(
            decode_utf8("café".as_bytes(), Utf8Mode::Drop),
            Utf8Outcome::Valid("café")
        );
    }

    #[test]
    fn strip_control_keeps_layout_whitespace_and_removes_c0_del_c1() {
        let text = "a\tb\nc\r\n\u{0}d\u{7}e\u{7f}f\u{85}g\u{9f}h\u{0c}i";
        assert_eq!(strip_control(text), "a\tb\nc\r\ndefghi");
        assert!(matches!(strip_control("plain é text\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn normalized_key_ignores_case_and_whitespace_runs_but_not_words() {
        let a = normalized_key("Hello   World\n\n Foo ");
        assert_eq!(a, normalized_key("  hello world foo"));
        assert_eq!(normalized_key("ÉCOLE"), normalized_key("école"));
        assert_ne!(a, normalized_key("hello world fo"));
        assert_ne!(a, normalized_key("helloworld foo"));
    }

    #[test]
    fn normalized_key_handles_text_longer_than_its_buffer() {
        let long: String = "word ".repeat(5000);
        let upper = long.to_uppercase().replace(' ', "\t\t");
        assert_eq!(normalized_key(&long), normalized_key(&upper));
        assert_ne!(
            normalized_key(&long),
            normalized_key(&long[..long.len() - 6])
        );
    }

    #[test]
    fn val_routing_follows_the_fraction_and_is_stable() {
        let keys: Vec<u128> = (0..20_000u32)
            .map(|i| normalized_key(&format!("doc {i}")))
            .collect();
        let val = keys.iter().filter(|&&k| is_val(k, 7, 0.1)).count();
        assert!(
            (1700..2300).contains(&val),
            "{val} of 20000 routed to val at 10%"
        );
        assert!(keys.iter().all(|&k| !is_val(k, 7, 0.0)));
        assert!(keys.iter().all(|&k| is_val(k, 7, 1.0)));
        let again = keys.iter().filter(|&&k| is_val(k, 7, 0.1)).count();
        assert_eq!(val, again);
        let seed7: Vec<bool> = keys.iter().map(|&k| is_val(k, 7, 0.1)).collect();
        let seed8: Vec<bool> = keys.iter().map(|&k| is_val(k, 8, 0.1)).collect();
        assert_ne!(seed7, seed8, "the seed must change the routing");
    }

    #[test]
    fn slices_partition_documents_evenly() {
        let mut counts = [0usize; 4];
        for i in 0..8000u32 {
            counts[slice_of(normalized_key(&format!("d{i}")), 0, 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1700..2300).contains(&c)),
            "{counts:?}"
        );
    }
}
