//! YAML text to a tree, and `--set a.b=value` overrides applied to that tree.
//!
//! The tree is a `serde_json::Value`: YAML configs only ever use string keys, and a JSON-shaped
//! tree is what interpolation, overrides and the typed deserializer all walk. Parsing uses
//! `serde-saphyr` (pure Rust, panic-free; serde_yaml is archived). Duplicate keys are an error,
//! as they are in OmegaConf.

use serde_json::{Map, Value};

use super::interpolate::decode_scalar;

/// Why a YAML text or an override could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum YamlError {
    /// The text is not valid YAML (the message carries line and column).
    #[error("{origin}: invalid YAML: {message}")]
    Syntax {
        /// The file name, or `<string>`.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The document is not a mapping at the top.
    #[error("{origin}: the top level must be a mapping of keys, found {found}")]
    NotAMapping {
        /// The file name, or `<string>`.
        origin: String,
        /// What was found instead.
        found: String,
    },
    /// A `--set` argument that cannot be applied.
    #[error("--set {arg:?}: {reason}")]
    BadOverride {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Parses one YAML document whose top level is a mapping. An empty document is an empty mapping.
pub fn parse(text: &str, origin: &str) -> Result<Value, YamlError> {
    let v: Value = serde_saphyr::from_str(text).map_err(|e| YamlError::Syntax {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        other => Err(YamlError::NotAMapping {
            origin: origin.to_string(),
            found: super::de::describe(&other),
        }),
    }
}

/// Applies `key.path=value` overrides in order. The value is read as a YAML scalar or flow
/// collection (`0.1`, `true`, `null`, `100ba`, `[0.9, 0.95]`); missing parent mappings are created;
/// a numeric segment indexes an existing list (`optimizer.betas.1=0.99`).
pub fn apply_overrides(tree: &mut Value, overrides: &[String]) -> Result<(), YamlError> {
    for arg in overrides {
        let bad = |reason: String| YamlError::BadOverride {
            arg: arg.clone(),
            reason,
        };
        let (key, raw) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE".into()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(bad(format!(
                "`{key}` is not a dotted key path like optimizer.lr"
            )));
        }
        let value = parse_override_value(raw).map_err(bad)?;
        let segs: Vec<&str> = key.split('.').collect();
        set_path(tree, &segs, value).map_err(bad)?;
    }
    Ok(())
}

fn parse_override_value(raw: &str) -> Result<Value, String> {
    let t = raw.trim();
    if t.starts_with('[') || t.starts_with('{') {
        return serde_saphyr::from_str::<Value>(t)
            .map_err(|e| format!("value is not valid YAML: {e}"));
    }
    Ok(decode_scalar(raw.trim()))
}

fn set_path(node: &mut Value, segs: &[&str], value: Value) -> Result<(), String> {
    let Some((first, rest)) = segs.split_first() else {
        *node = value;
        return Ok(());
    };
    match node {
        Value::Object(m) => {
            if rest.is_empty() {
                m.insert(first.to_string(), value);
                return Ok(());
            }
            let child = m
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if child.is_null() {
                *child = Value::Object(Map::new());
            }
            set_path(child, rest, value)
        }
        Value::Array(a) => {
            let i: usize = first
                .parse()
                .map_err(|_| format!("`{first}` indexes a list, so it must be a number"))?;
            let len = a.len();
            let slot = a
                .get_mut(i)
                .ok_or_else(|| format!("index {i} is past the end of a list of {len}"))?;
            set_path(slot, rest, value)
        }
        other => Err(format!(
            "`{first}` is below a {}, which has no keys",
            super::de::describe(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_llm_foundry_scalars() {
        let v = parse(
            "lr: 6.0e-4\neps: 1.0e-08\nremote:\nflag: true\nd: 100ba\nb: [0.9, 0.95]\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"lr": 0.0006, "eps": 1e-8, "remote": null, "flag": true, "d": "100ba", "b": [0.9, 0.95]})
        );
    }

    #[test]
    fn syntax_errors_carry_origin_and_line() {
        let e = parse("a: 1\nb: [unclosed\n", "cfg.yaml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("cfg.yaml: invalid YAML"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn duplicate_keys_and_non_mappings_are_rejected() {
        assert!(matches!(
            parse("a: 1\na: 2\n", "t"),
            Err(YamlError::Syntax { .. })
        ));
        assert!(matches!(
            parse("- 1\n- 2\n", "t"),
            Err(YamlError::NotAMapping { .. })
        ));
        assert_eq!(parse("", "t").unwrap(), json!({}));
    }

    #[test]
    fn overrides_set_nested_keys_with_yaml_types() {
        let mut t = json!({"optimizer": {"lr": 1.0, "betas": [0.9, 0.95]}, "run_name": null});
        let sets: Vec<String> = [
            "optimizer.lr=3e-4",
            "optimizer.betas.1=0.99",
            "max_duration=10ba",
            "tokenizer.name=./tok.json",
            "eval_first=true",
            "run_name.sub=x",
            "scheduler={name: constant_with_warmup, t_warmup: 0ba}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        apply_overrides(&mut t, &sets).unwrap();
        assert_eq!(t["optimizer"]["lr"], json!(0.0003));
        assert_eq!(t["optimizer"]["betas"], json!([0.9, 0.99]));
        assert_eq!(t["max_duration"], json!("10ba"));
        assert_eq!(t["tokenizer"]["name"], json!("./tok.json"));
        assert_eq!(t["eval_first"], json!(true));
        assert_eq!(t["run_name"]["sub"], json!("x"));
        assert_eq!(t["scheduler"]["name"], json!("constant_with_warmup"));
    }

    #[test]
    fn bad_overrides_say_why() {
        let mut t = json!({"optimizer": {"betas": [0.9, 0.95]}, "seed": 1});
        for (arg, needle) in [
            ("noequals", "KEY=VALUE"),
            ("a..b=1", "dotted key"),
            ("optimizer.betas.5=1", "past the end"),
            ("optimizer.betas.x=1", "must be a number"),
            ("seed.x=1", "no keys"),
        ] {
            let e = apply_overrides(&mut t, &[arg.to_string()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{arg}: {e}");
        }
    }
}
