//! Pulling the text field out of one JSON line without building a `serde_json::Value`: the other
//! fields are skipped (`IgnoredAny`) and the text is borrowed from the line when it has no escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// Why a line yielded no text: these are "bad lines", counted and reported with file:line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadLineReason {
    /// Not valid JSON (the parser's message).
    InvalidJson(String),
    /// Valid JSON but not an object.
    NotAnObject,
    /// The object has no such field.
    MissingField,
    /// The field is there but holds another JSON type (named).
    NotAString(&'static str),
}

impl fmt::Display for BadLineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson(m) => write!(f, "invalid JSON: {m}"),
            Self::NotAnObject => write!(f, "not a JSON object"),
            Self::MissingField => write!(f, "missing text field"),
            Self::NotAString(t) => write!(f, "text field is {t}, expected a string"),
        }
    }
}

/// The string value of `field` in the JSON object `line`.
pub fn extract_text<'a>(line: &'a [u8], field: &str) -> Result<Cow<'a, str>, BadLineReason> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let found = FieldSeed { field }.deserialize(&mut de).map_err(|e| {
        if e.is_data() && e.to_string().starts_with("not an object") {
            BadLineReason::NotAnObject
        } else {
            BadLineReason::InvalidJson(e.to_string())
        }
    })?;
    de.end()
        .map_err(|e| BadLineReason::InvalidJson(e.to_string()))?;
    match found {
        Found::Text(t) => Ok(t),
        Found::Missing => Err(BadLineReason::MissingField),
        Found::Other(kind) => Err(BadLineReason::NotAString(kind)),
    }
}

enum Found<'a> {
    Text(Cow<'a, str>),
    Missing,
    Other(&'static str),
}

struct FieldSeed<'f> {
    field: &'f str,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Found<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Found<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Found::Missing;
        while let Some(is_field) = map.next_key_seed(KeyIs(self.field))? {
            if is_field && matches!(found, Found::Missing) {
                found = map.next_value_seed(TextSeed)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    // Anything but an object: report a recognisable error.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom("not an object"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom("not an object"))
    }
}

/// Compares a key with the wanted field name without allocating.
struct KeyIs<'f>(&'f str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// The field's value: a string (borrowed when possible) or the name of its type.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Found<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextSeed {
    type Value = Found<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Found::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Found::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Found::Text(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::Other("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::Other("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Found::Other("null"))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::Other("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Found::Other("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_unescapes_others() {
        let t = extract_text(
            br#"{"id": 3, "text": "hello", "meta": {"a": [1, 2]}}"#,
            "text",
        )
        .unwrap();
        assert!(matches!(t, Cow::Borrowed("hello")));
        let t = extract_text(br#"{"text": "a\nb \u00e9 \ud83d\ude00"}"#, "text").unwrap();
        assert_eq!(t, "a\nb é 😀");
    }

    #[test]
    fn custom_field_and_first_duplicate_wins() {
        let line = br#"{"text": 1, "content": "x", "content": "y"}"#;
        assert_eq!(extract_text(line, "content").unwrap(), "x");
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(matches!(
            extract_text(b"{\"text\": \"x\"", "text"),
            Err(BadLineReason::InvalidJson(_))
        ));
        assert!(matches!(
            extract_text(b"{\"text\": \"x\"} junk", "text"),
            Err(BadLineReason::InvalidJson(_))
        ));
        assert_eq!(
            extract_text(b"[1, 2]", "text"),
            Err(BadLineReason::NotAnObject)
        );
        assert_eq!(
            extract_text(b"\"text\"", "text"),
            Err(BadLineReason::NotAnObject)
        );
        assert_eq!(
            extract_text(br#"{"body": "x"}"#, "text"),
            Err(BadLineReason::MissingField)
        );
        assert_eq!(
            extract_text(br#"{"text": null}"#, "text"),
            Err(BadLineReason::NotAString("null"))
        );
        assert_eq!(
            extract_text(br#"{"text": [1]}"#, "text"),
            Err(BadLineReason::NotAString("an array"))
        );
        assert_eq!(
            extract_text(br#"{"text": 2.5}"#, "text"),
            Err(BadLineReason::NotAString("a number"))
        );
    }
}
