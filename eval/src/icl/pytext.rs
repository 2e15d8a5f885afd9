//! Python `str` whitespace semantics, which llm-foundry's prompt building relies on.
//!
//! `str.strip()`, `rstrip()` and `split()` treat as whitespace every character for which
//! `str.isspace()` is true: Unicode `White_Space` (what Rust's `char::is_whitespace` tests)
//! plus the four ASCII information separators U+001C..U+001F (bidi class B/S). Using Rust's
//! `trim` instead would keep those four and build a different prompt.

/// Python's `str.isspace()` for one character.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Python's `s.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_isspace)
}

/// Python's `s.split()` (runs of whitespace separate, no empty pieces).
pub fn py_split_whitespace(s: &str) -> impl Iterator<Item = &str> {
    s.split(py_isspace).filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_python_only_separators_too() {
        assert_eq!(py_strip("\u{1f} a b\u{3000}\n"), "a b");
        assert_eq!(
            "\u{1f} a".trim(),
            "\u{1f} a",
            "Rust's trim differs, which is why this exists"
        );
    }

    #[test]
    fn rstrip_keeps_leading_whitespace() {
        assert_eq!(py_rstrip("\nAnswer: "), "\nAnswer:");
    }

    #[test]
    fn split_drops_empty_pieces() {
        let parts: Vec<&str> = py_split_whitespace("  a \t\n b  ").collect();
        assert_eq!(parts, vec!["a", "b"]);
    }
}
