//! YAML loading shared by the task, gauntlet and eval configs: parse into a JSON tree, resolve
//! OmegaConf-style `${a.b}` interpolations, and check keys against a known list.
//!
//! llm-foundry's YAMLs go through OmegaConf, so `max_seq_len: ${variables.max_seq_len}` is
//! common in them. A tree (`serde_json::Value`) is parsed first so that interpolation and the
//! "unknown key" checks can name the exact key before typed deserialisation.

use std::path::Path;

use serde_json::Value;

use super::IclError;

/// Parses a YAML document (`origin` names it in errors).
pub fn parse_yaml(text: &str, origin: &Path) -> Result<Value, IclError> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| IclError::Yaml {
        path: origin.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses a YAML file, then resolves its interpolations.
pub fn load_yaml_file(path: &Path) -> Result<Value, IclError> {
    let text = std::fs::read_to_string(path).map_err(|source| IclError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let tree = parse_yaml(&text, path)?;
    interpolate(&tree, path)
}

/// Replaces every `${dotted.path}` in string values by the value at that path of the same
/// document (OmegaConf's absolute interpolation). A string that is exactly one interpolation
/// takes the referenced value with its type (`${variables.max_seq_len}` stays an integer);
/// interpolations inside longer strings are substituted as text.
pub fn interpolate(root: &Value, origin: &Path) -> Result<Value, IclError> {
    resolve(root, root, origin, 0)
}

const MAX_DEPTH: usize = 16;

fn resolve(v: &Value, root: &Value, origin: &Path, depth: usize) -> Result<Value, IclError> {
    Ok(match v {
        Value::String(s) if s.contains("${") => resolve_string(s, root, origin, depth)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|x| resolve(x, root, origin, depth))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| Ok((k.clone(), resolve(x, root, origin, depth)?)))
                .collect::<Result<_, IclError>>()?,
        ),
        other => other.clone(),
    })
}

fn lookup<'a>(root: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(root, |node, key| match node {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn resolve_string(s: &str, root: &Value, origin: &Path, depth: usize) -> Result<Value, IclError> {
    let err = |message: String| IclError::Yaml {
        path: origin.to_path_buf(),
        message,
    };
    if depth >= MAX_DEPTH {
        return Err(err(format!(
            "interpolation `{s}` nests deeper than {MAX_DEPTH} (a cycle?)"
        )));
    }
    let target = |name: &str| -> Result<Value, IclError> {
        let found = lookup(root, name.trim()).ok_or_else(|| {
            err(format!(
                "interpolation `${{{name}}}` names no key of the file"
            ))
        })?;
        resolve(found, root, origin, depth + 1)
    };
    if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
        && !inner.contains("${")
        && !inner.contains('}')
    {
        return target(inner);
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| err(format!("unclosed `${{` in `{s}`")))?;
        match target(&after[..end])? {
            Value::String(t) => out.push_str(&t),
            Value::Null => out.push_str("None"),
            v @ (Value::Bool(_) | Value::Number(_)) => out.push_str(&v.to_string()),
            _ => {
                return Err(err(format!(
                    "`${{{}}}` inside `{s}` is a list or mapping, not text",
                    &after[..end]
                )));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Checks that every key of `map` is in `known`; the error names the first unknown key, where
/// it is (`context`), and the known keys.
pub fn check_keys(
    map: &serde_json::Map<String, Value>,
    known: &[&str],
    context: &str,
    origin: &Path,
) -> Result<(), IclError> {
    if let Some(bad) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(IclError::Config {
            origin: origin.to_path_buf(),
            context: context.to_string(),
            message: format!("unknown key `{bad}` (known keys: {})", known.join(", ")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Result<Value, IclError> {
        let p = Path::new("test.yaml");
        interpolate(&parse_yaml(s, p)?, p)
    }

    #[test]
    fn whole_string_interpolation_keeps_the_type() {
        let v =
            yaml("variables:\n  n: 64\nmax_seq_len: ${variables.n}\nname: run-${variables.n}\n")
                .unwrap();
        assert_eq!(v["max_seq_len"], Value::from(64));
        assert_eq!(v["name"], Value::from("run-64"));
    }

    #[test]
    fn missing_interpolation_target_is_named() {
        let e = yaml("a: ${variables.nope}\n").unwrap_err().to_string();
        assert!(e.contains("variables.nope"), "{e}");
    }

    #[test]
    fn cyclic_interpolation_is_an_error_not_a_hang() {
        let e = yaml("a: ${b}\nb: ${a}\n").unwrap_err().to_string();
        assert!(e.contains("deeper"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named_with_context() {
        let v = yaml("label: x\nbogus: 1\n").unwrap();
        let e = check_keys(
            v.as_object().unwrap(),
            &["label"],
            "icl_tasks[0]",
            Path::new("t.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`bogus`") && e.contains("icl_tasks[0]") && e.contains("t.yaml"),
            "{e}"
        );
    }
}
