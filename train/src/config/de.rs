//! A serde `Deserializer` over a resolved YAML tree whose error type remembers *which* field was
//! unknown and which were expected, so an unknown key can be reported with its full path and the
//! nearest valid key. serde's stock errors flatten that into a sentence; overriding
//! `de::Error::unknown_field` keeps it structured. `serde_path_to_error` supplies the path.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::Value;

/// What went wrong while mapping the tree onto the typed config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeError {
    /// A map key that the target struct does not have.
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    /// A string that is not one of an enum's names.
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    /// A required key is absent.
    MissingField { field: &'static str },
    /// Anything else (wrong type, bad duration…), already phrased.
    Custom(String),
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::UnknownField { field, .. } => write!(f, "unknown key `{field}`"),
            DeError::UnknownVariant { variant, expected } => {
                write!(f, "{variant:?} is not one of {}", quoted_list(expected))
            }
            DeError::MissingField { field } => write!(f, "required key `{field}` is missing"),
            DeError::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Custom(msg.to_string())
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownField {
            field: field.to_string(),
            expected,
        }
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::UnknownVariant {
            variant: variant.to_string(),
            expected,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        DeError::MissingField { field }
    }
}

/// `a, b or c` with each name in backticks.
pub(crate) fn quoted_list(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match q.len() {
        0 => "nothing".to_string(),
        1 => q[0].clone(),
        n => format!("{} or {}", q[..n - 1].join(", "), q[n - 1]),
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a plausible typo
/// (at most a third of the longer word's length, and never more than 3 edits).
pub(crate) fn nearest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 3 && *d * 3 <= word.len().max(c.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Deserializes `T` from a tree, returning the path (`optimizer.betas[1]`) with the error.
pub(crate) fn from_tree<T: DeserializeOwned>(tree: &Value) -> Result<T, (String, DeError)> {
    serde_path_to_error::deserialize(Tree(tree)).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            e.into_inner(),
        )
    })
}

/// The field names of a `#[derive(Deserialize)]` struct, read from what its derived impl asks
/// for, so the schema's key list is never written twice.
pub(crate) fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Grab<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Grab<'_> {
        type Error = DeError;
        fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, DeError> {
            Err(DeError::Custom("not a struct".into()))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _v: V,
        ) -> Result<V::Value, DeError> {
            *self.0 = fields;
            Err(DeError::Custom("fields read".into()))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Grab(&mut fields));
    fields
}

/// Borrowed view of one node.
#[derive(Clone, Copy)]
pub(crate) struct Tree<'a>(pub(crate) &'a Value);

impl<'de> IntoDeserializer<'de, DeError> for Tree<'_> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Tree<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    v.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    v.visit_i64(i)
                } else {
                    v.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => v.visit_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Tree));
                let out = v.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => {
                let mut m = MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Tree(v))));
                let out = v.visit_map(&mut m)?;
                m.end()?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match self.0 {
            // Unit variants only: `precision: amp_bf16`.
            Value::String(s) => v.visit_enum(s.as_str().into_deserializer()),
            other => Err(DeError::Custom(format!(
                "expected a name, found {}",
                describe(other)
            ))),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// A short description of a node for "found …" messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        lr: f64,
        #[serde(default)]
        betas: Option<[f64; 2]>,
    }
    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        optimizer: Inner,
        #[serde(default)]
        name: Option<String>,
    }

    #[test]
    fn unknown_field_keeps_path_and_expected_names() {
        let (path, err) = from_tree::<Outer>(&json!({"optimizer": {"lrr": 1.0}})).unwrap_err();
        assert_eq!(path, "optimizer.lrr");
        match err {
            DeError::UnknownField { field, expected } => {
                assert_eq!(field, "lrr");
                assert_eq!(nearest(&field, expected.iter().copied()), Some("lr"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn type_errors_name_the_list_index() {
        let (path, err) =
            from_tree::<Outer>(&json!({"optimizer": {"lr": 1.0, "betas": [0.9, "x"]}}))
                .unwrap_err();
        assert_eq!(path, "optimizer.betas[1]");
        assert!(err.to_string().contains("string \"x\""), "{err}");
    }

    #[test]
    fn missing_field_is_structured() {
        let (path, err) = from_tree::<Outer>(&json!({"optimizer": {}})).unwrap_err();
        assert_eq!(path, "optimizer");
        assert_eq!(err, DeError::MissingField { field: "lr" });
    }

    #[test]
    fn null_is_none_and_numbers_widen() {
        let o: Outer =
            from_tree(&json!({"optimizer": {"lr": 1, "betas": null}, "name": null})).unwrap();
        assert_eq!(
            o,
            Outer {
                optimizer: Inner {
                    lr: 1.0,
                    betas: None
                },
                name: None
            }
        );
    }

    #[test]
    fn struct_fields_lists_the_derived_keys() {
        assert_eq!(struct_fields::<Outer>(), &["optimizer", "name"]);
    }

    #[test]
    fn nearest_refuses_wild_guesses() {
        assert_eq!(
            nearest("max_duraton", ["max_duration", "max_seq_len"]),
            Some("max_duration")
        );
        assert_eq!(nearest("zzzzzz", ["max_duration", "seed"]), None);
        assert_eq!(nearest("sed", ["seed", "save_folder"]), Some("seed"));
    }
}
