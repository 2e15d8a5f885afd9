//! PII scrubbing: e-mail addresses, phone numbers, IPv4/IPv6 addresses and card-like numbers are
//! replaced with placeholders (`|||EMAIL|||`, `|||PHONE_NUMBER|||`, `|||IP_ADDRESS|||`,
//! `|||CARD_NUMBER|||`, the convention of datatrove and the BigScience PII pipeline).
//!
//! Regexes find candidates; each candidate is then validated in code (octet ranges, a real IPv6
//! parse with at least three groups, Luhn for cards, digit counts and word boundaries for phones),
//! because the `regex` crate has no look-around and patterns alone over-match code and version
//! strings. Kinds run in a fixed order (email, card, IP, phone) so a card number is never
//! half-eaten by the phone pattern.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Which kinds of PII the stage replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    /// E-mail addresses → `|||EMAIL|||`.
    pub emails: bool,
    /// Phone numbers (10–15 digits with common separators) → `|||PHONE_NUMBER|||`.
    pub phones: bool,
    /// IPv4 and IPv6 addresses → `|||IP_ADDRESS|||`.
    pub ips: bool,
    /// 13–19 digit numbers that pass the Luhn check → `|||CARD_NUMBER|||`.
    pub cards: bool,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            emails: true,
            phones: true,
            ips: true,
            cards: true,
        }
    }
}

/// How many replacements of each kind were made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiCounts {
    /// Email addresses.
    pub emails: u64,
    /// Phone numbers.
    pub phones: u64,
    /// IP addresses.
    pub ips: u64,
    /// Payment card numbers.
    pub cards: u64,
}

impl PiiCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &PiiCounts) {
        self.emails += other.emails;
        self.phones += other.phones;
        self.ips += other.ips;
        self.cards += other.cards;
    }

    /// The total number of replacements.
    pub fn total(&self) -> u64 {
        self.emails + self.phones + self.ips + self.cards
    }
}

pub const EMAIL: &str = "|||EMAIL|||";
pub const PHONE: &str = "|||PHONE_NUMBER|||";
pub const IP: &str = "|||IP_ADDRESS|||";
pub const CARD: &str = "|||CARD_NUMBER|||";

/// The compiled scrubber (build once, share across threads).
#[derive(Debug, Clone)]
pub struct PiiScrubber {
    cfg: PiiConfig,
    email: Regex,
    card: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
}

impl PiiScrubber {
    /// Compiles the patterns for `cfg`.
    ///
    /// # Panics
    /// Never for the fixed patterns below (a failure would be a programmer error caught by tests).
    pub fn new(cfg: &PiiConfig) -> Self {
        let re = |p: &str| Regex::new(p).expect("fixed PII pattern compiles");
        Self {
            cfg: cfg.clone(),
            email: re(
                r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}",
            ),
            card: re(r"\d(?:[ -]?\d){12,18}"),
            ipv4: re(r"(?:\d{1,3}\.){3}\d{1,3}"),
            ipv6: re(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*"),
            phone: re(r"\+?\(?\d[\d ().-]{8,22}\d"),
        }
    }

    /// `text` with PII replaced, and the counts. Borrowed when nothing matched.
    pub fn scrub<'a>(&self, text: &'a str) -> (Cow<'a, str>, PiiCounts) {
        let mut counts = PiiCounts::default();
        let mut out = Cow::Borrowed(text);
        if self.cfg.emails && text.contains('@') {
            out = replace_valid(out, &self.email, EMAIL, &mut counts.emails, |_, _, _| true);
        }
        if self.cfg.cards {
            out = replace_valid(out, &self.card, CARD, &mut counts.cards, |t, s, e| {
                digit_bounded(t, s, e) && is_card(&t[s..e])
            });
        }
        if self.cfg.ips {
            out = replace_valid(out, &self.ipv4, IP, &mut counts.ips, |t, s, e| {
                is_ipv4_bounded(t, s, e) && t[s..e].split('.').all(|o| o.parse::<u8>().is_ok())
            });
            if out.contains(':') {
                out = replace_valid(out, &self.ipv6, IP, &mut counts.ips, |t, s, e| {
                    is_ipv6(t[s..e].trim_end_matches('.'))
                        && !t[..s].ends_with(|c: char| c.is_alphanumeric())
                        && !t[e..].starts_with(|c: char| c.is_alphanumeric())
                });
            }
        }
        if self.cfg.phones {
            out = replace_valid(out, &self.phone, PHONE, &mut counts.phones, |t, s, e| {
                digit_bounded(t, s, e) && is_phone(&t[s..e])
            });
        }
        (out, counts)
    }
}

/// Replaces every match of `re` in `text` that `valid(text, start, end)` accepts.
fn replace_valid<'a>(
    text: Cow<'a, str>,
    re: &Regex,
    placeholder: &str,
    count: &mut u64,
    valid: impl Fn(&str, usize, usize) -> bool,
) -> Cow<'a, str> {
    let t: &str = &text;
    let mut out: Option<String> = None;
    let mut last = 0;
    for m in re.find_iter(t) {
        let (s, mut e) = (m.start(), m.end());
        // The IPv6 candidate may swallow a sentence's final dot.
        if placeholder == IP && t[s..e].ends_with('.') && t[s..e].contains(':') {
            e -= 1;
        }
        if !valid(t, s, e) {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(t.len()));
        o.push_str(&t[last..s]);
        o.push_str(placeholder);
        last = e;
        *count += 1;
    }
    match out {
        None => text,
        Some(mut o) => {
            o.push_str(&t[last..]);
            Cow::Owned(o)
        }
    }
}

/// True when the match is not glued to more digits or letters (e.g. inside a hash or a longer
/// number).
fn digit_bounded(t: &str, s: usize, e: usize) -> bool {
    let glued_before =
        t[..s].ends_with(|c: char| c.is_alphanumeric() || c == '.' || c == '-' || c == '+');
    !(glued_before || glued_after(t, e))
}

/// True when more letters or digits (or a dot and a digit) follow position `e`.
fn glued_after(t: &str, e: usize) -> bool {
    t[e..].starts_with(|c: char| c.is_alphanumeric())
        || (t[e..].starts_with('.') && t[e + 1..].starts_with(|c: char| c.is_ascii_digit()))
}

/// IPv4 boundaries: not part of a longer dotted number (`1.2.3.4.5`, version strings).
fn is_ipv4_bounded(t: &str, s: usize, e: usize) -> bool {
    !(t[..s].ends_with(|c: char| c.is_alphanumeric() || c == '.') || glued_after(t, e))
}

/// A real IPv6 address with at least three non-empty groups (so `::`, `::1` and Python slices
/// such as `a[::2]` are left alone).
fn is_ipv6(s: &str) -> bool {
    s.parse::<Ipv6Addr>().is_ok() && s.split(':').filter(|g| !g.is_empty()).count() >= 3
}

/// 13–19 digits passing the Luhn checksum, and not one repeated digit.
fn is_card(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|&d| d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A phone number: 10–15 digits, with separators (space, dot, dash, parentheses) that are used
/// the way phone numbers use them: no two separators in a row except ") ", and not a plain run
/// of digits with dots only (that is a decimal or a version).
fn is_phone(s: &str) -> bool {
    let digits = s.chars().filter(|c| c.is_ascii_digit()).count();
    if !(10..=15).contains(&digits) {
        return false;
    }
    let seps: String = s
        .chars()
        .filter(|c| !c.is_ascii_digit() && *c != '+')
        .collect();
    if seps.is_empty() {
        // Bare digit runs count only with an international prefix.
        return s.starts_with('+');
    }
    if seps.chars().all(|c| c == '.') && seps.len() < 2 {
        return false;
    }
    // Phone numbers come in a few groups of 2+ digits (a country code may be one digit);
    // "1 2 3 4 5 6 7 8 9 10" is a list, not a number.
    let groups: Vec<&str> = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    if groups.len() > 5 || groups.iter().filter(|g| g.len() == 1).count() > 1 {
        return false;
    }
    let opens = s.matches('(').count();
    if opens != s.matches(')').count() || opens > 1 {
        return false;
    }
    !s.contains("  ") && !s.contains("..") && !s.contains("--") && !s.contains(". ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub(text: &str) -> (String, PiiCounts) {
        let (out, counts) = PiiScrubber::new(&PiiConfig::default()).scrub(text);
        (out.into_owned(), counts)
    }

    #[test]
    fn emails_are_replaced() {
        let (out, c) = scrub("mail jane.doe+tag@example.co.uk or bob@x.org now");
        assert_eq!(out, "mail |||EMAIL||| or |||EMAIL||| now");
        assert_eq!(c.emails, 2);
        assert_eq!(
            scrub("@property\ndef f(self): ...").0,
            "@property\ndef f(self): ..."
        );
    }

    #[test]
    fn card_numbers_need_luhn() {
        let (out, c) = scrub("visa 4111 1111 1111 1111, fake 4111 1111 1111 1112.");
        assert_eq!(out, "visa |||CARD_NUMBER|||, fake 4111 1111 1111 1112.");
        assert_eq!(c.cards, 1);
        assert_eq!(scrub("id 0000000000000000 x").1.cards, 0);
    }

    #[test]
    fn ipv4_checks_octets_and_boundaries() {
        let (out, c) = scrub("host 192.168.1.20 and 10.0.0.1. bad 300.1.1.1 ver 1.2.3.4.5");
        assert_eq!(
            out,
            "host |||IP_ADDRESS||| and |||IP_ADDRESS|||. bad 300.1.1.1 ver 1.2.3.4.5"
        );
        assert_eq!(c.ips, 2);
    }

    #[test]
    fn ipv6_needs_a_real_address_not_a_slice() {
        let (out, c) = scrub("addr 2001:db8:85a3::8a2e:370:7334 and fe80::1:2 but x[::2] and ::1");
        assert_eq!(
            out,
            "addr |||IP_ADDRESS||| and |||IP_ADDRESS||| but x[::2] and ::1"
        );
        assert_eq!(c.ips, 2);
        assert_eq!(scrub("time 12:30:45 ok").1.ips, 0);
    }

    #[test]
    fn phone_numbers_in_common_formats() {
        for p in [
            "(555) 123-4567",
            "555-123-4567",
            "+44 20 7946 0958",
            "555.123.4567",
            "+14155552671",
        ] {
            let (out, c) = scrub(&format!("call {p} now"));
            assert_eq!(out, "call |||PHONE_NUMBER||| now", "{p}");
            assert_eq!(c.phones, 1, "{p}");
        }
        for not in [
            "x = 1234567890",
            "pi 3.14159265358979",
            "v1.2.3-4567890123",
            "0x1234567890ab",
            "range 1 2 3 4 5 6 7 8 9 10 11",
        ] {
            assert_eq!(scrub(not).0, not, "{not} must be left alone");
        }
    }

    #[test]
    fn disabled_kinds_are_kept_and_text_borrowed_when_clean() {
        let cfg = PiiConfig {
            emails: false,
            ..Default::default()
        };
        let s = PiiScrubber::new(&cfg);
        let (out, c) = s.scrub("a@b.com 10.0.0.1");
        assert_eq!(out, "a@b.com |||IP_ADDRESS|||");
        assert_eq!(c.total(), 1);
        assert!(matches!(s.scrub("nothing here").0, Cow::Borrowed(_)));
    }
}
