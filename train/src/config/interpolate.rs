//! OmegaConf-style `${…}` interpolation over a parsed YAML tree.
//!
//! llm-foundry's YAMLs put shared values under `variables:` and refer to them as
//! `${variables.max_seq_len}`; older ones keep them at the top level (`${max_seq_len}`). Both are
//! absolute paths from the root, which is how OmegaConf reads them. Also supported, as OmegaConf
//! does: relative paths (`${.sibling}`, `${..uncle}`), list indices (`${a.b[0]}` or `${a.b.0}`),
//! `${oc.env:NAME}` / `${oc.env:NAME,default}` (the value is decoded as a YAML scalar, like
//! `oc.decode`, so `seed: ${oc.env:SEED}` stays an integer), chains, and `\${` for a literal.
//!
//! A value that is exactly one `${…}` keeps the referenced node's type (an integer stays an
//! integer, `null` stays null, a mapping is copied); text around an interpolation makes a string.

use serde_json::Value;

/// Why an interpolation could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: cannot resolve `{expr}`: {reason}")]
pub struct InterpolationError {
    /// Where the interpolation is written (`model.max_seq_len`).
    pub key: String,
    /// The expression inside `${…}`.
    pub expr: String,
    /// What went wrong, with a suggestion where one exists.
    pub reason: String,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Resolves every interpolation in `root`, returning a tree with none left.
pub fn resolve(root: &Value) -> Result<Value, InterpolationError> {
    let mut stack = Vec::new();
    resolve_at(root, &[], &mut stack)
}

fn node_at<'a>(root: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = root;
    for seg in path {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            // `a.b.0` addresses a list element, as OmegaConf allows.
            (Seg::Key(k), Value::Array(a)) => a.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn resolve_at(
    root: &Value,
    path: &[Seg],
    stack: &mut Vec<String>,
) -> Result<Value, InterpolationError> {
    let Some(node) = node_at(root, path) else {
        // Callers only pass paths that exist.
        return Ok(Value::Null);
    };
    match node {
        Value::String(s) if s.contains("${") => {
            let key = path_string(path);
            if stack.contains(&key) {
                stack.push(key.clone());
                let chain = stack.join(" -> ");
                return Err(InterpolationError {
                    key,
                    expr: s.clone(),
                    reason: format!("interpolation cycle: {chain}"),
                });
            }
            stack.push(key);
            let out = resolve_string(root, path, s, stack);
            stack.pop();
            out
        }
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for k in m.keys() {
                let mut p = path.to_vec();
                p.push(Seg::Key(k.clone()));
                out.insert(k.clone(), resolve_at(root, &p, stack)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for i in 0..a.len() {
                let mut p = path.to_vec();
                p.push(Seg::Index(i));
                out.push(resolve_at(root, &p, stack)?);
            }
            Ok(Value::Array(out))
        }
        other => Ok(other.clone()),
    }
}

/// Pieces of a string: literal text and `${…}` expressions.
enum Piece {
    Text(String),
    Expr(String),
}

fn split_pieces(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with("\\${") {
            text.push_str("${");
            i += 3;
        } else if s[i..].starts_with("${") {
            let start = i + 2;
            let mut depth = 1;
            let mut j = start;
            while j < s.len() && depth > 0 {
                match bytes[j] {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            if depth != 0 {
                return Err("unclosed `${`".into());
            }
            let expr = &s[start..j - 1];
            if expr.contains("${") {
                return Err("nested interpolation is not supported".into());
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Expr(expr.trim().to_string()));
            i = j;
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            text.push(ch);
            i += ch.len_utf8();
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn resolve_string(
    root: &Value,
    path: &[Seg],
    s: &str,
    stack: &mut Vec<String>,
) -> Result<Value, InterpolationError> {
    let key = path_string(path);
    let err = |expr: &str, reason: String| InterpolationError {
        key: key.clone(),
        expr: expr.to_string(),
        reason,
    };
    let pieces = split_pieces(s).map_err(|r| err(s, r))?;
    let mut values = Vec::with_capacity(pieces.len());
    for p in &pieces {
        values.push(match p {
            Piece::Text(t) => Value::String(t.clone()),
            Piece::Expr(e) => evaluate(root, path, e, stack).map_err(|r| err(e, r))?,
        });
    }
    if let [Piece::Expr(_)] = pieces.as_slice() {
        return Ok(values.pop().unwrap_or(Value::Null));
    }
    let mut out = String::new();
    for (p, v) in pieces.iter().zip(&values) {
        match v {
            Value::String(t) => out.push_str(t),
            Value::Number(n) => out.push_str(&n.to_string()),
            // Python's str(), which is what OmegaConf writes.
            Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            Value::Null => out.push_str("None"),
            Value::Array(_) | Value::Object(_) => {
                let expr = match p {
                    Piece::Expr(e) => e.as_str(),
                    Piece::Text(t) => t.as_str(),
                };
                return Err(err(
                    expr,
                    "a list or mapping cannot be embedded in a string".into(),
                ));
            }
        }
    }
    Ok(Value::String(out))
}

/// Evaluates one expression, returning a fully resolved value.
fn evaluate(
    root: &Value,
    here: &[Seg],
    expr: &str,
    stack: &mut Vec<String>,
) -> Result<Value, String> {
    if let Some(rest) = expr.strip_prefix("oc.env:") {
        let (name, default) = match rest.split_once(',') {
            Some((n, d)) => (n.trim(), Some(unquote(d.trim()))),
            None => (rest.trim(), None),
        };
        let raw = match (std::env::var(name), default) {
            (Ok(v), _) => v,
            (Err(_), Some(d)) => d.to_string(),
            (Err(_), None) => {
                return Err(format!(
                    "environment variable {name} is not set and no default is given"
                ));
            }
        };
        return Ok(decode_scalar(&raw));
    }
    if let Some((resolver, _)) = expr.split_once(':') {
        return Err(format!(
            "resolver `{resolver}` is not supported (only `oc.env`)"
        ));
    }
    let target = parse_path(here, expr)?;
    if node_at(root, &target).is_none() {
        return Err(missing_reason(root, &target));
    }
    resolve_at(root, &target, stack).map_err(|e| e.to_string())
}

/// The first path segment of every absolute `${…}` reference in the tree (`variables`,
/// `max_seq_len`…): top-level keys used as variables in pre-`variables:` llm-foundry YAMLs.
pub fn referenced_roots(tree: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::String(s) => {
                if let Ok(pieces) = split_pieces(s) {
                    for p in pieces {
                        if let Piece::Expr(e) = p
                            && !e.starts_with('.')
                            && !e.contains(':')
                        {
                            let root = e.split(['.', '[']).next().unwrap_or("");
                            out.insert(root.to_string());
                        }
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(m) => m.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(tree, &mut out);
    out
}

fn unquote(s: &str) -> &str {
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// A YAML scalar's typed value (`17` → integer, `true` → bool), else the text itself.
pub(crate) fn decode_scalar(raw: &str) -> Value {
    match serde_saphyr::from_str::<Value>(raw) {
        Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)))
            if !raw.trim().is_empty() =>
        {
            v
        }
        _ => Value::String(raw.to_string()),
    }
}

/// `variables.x` (absolute), `.x` (sibling), `..x` (parent's sibling); `a[0]` and `a.0` index lists.
fn parse_path(here: &[Seg], expr: &str) -> Result<Vec<Seg>, String> {
    let dots = expr.chars().take_while(|c| *c == '.').count();
    let mut out: Vec<Seg> = if dots == 0 {
        Vec::new()
    } else {
        // `.x` is relative to the node holding the interpolation, i.e. its parent container.
        let up = dots;
        if up > here.len() {
            return Err(format!("`{expr}` climbs above the root"));
        }
        here[..here.len() - up].to_vec()
    };
    let body = &expr[dots..];
    if body.is_empty() {
        return Err("empty interpolation".into());
    }
    for part in body.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() && rest.is_empty() {
            return Err(format!("`{expr}` has an empty path segment"));
        }
        if !name.is_empty() {
            out.push(Seg::Key(name.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let close = r
                .find(']')
                .ok_or_else(|| format!("`{expr}`: unclosed `[`"))?;
            let idx: usize = r[..close]
                .trim()
                .parse()
                .map_err(|_| format!("`{expr}`: bad list index"))?;
            out.push(Seg::Index(idx));
            rest = &r[close + 1..];
        }
        if !rest.is_empty() {
            return Err(format!("`{expr}`: unexpected `{rest}`"));
        }
    }
    Ok(out)
}

/// "no key `variables.max_seqlen` (did you mean `variables.max_seq_len`?)".
fn missing_reason(root: &Value, target: &[Seg]) -> String {
    let full = path_string(target);
    // Find the deepest existing prefix and suggest among its keys.
    for cut in (0..target.len()).rev() {
        if let (Some(Value::Object(m)), Seg::Key(k)) = (node_at(root, &target[..cut]), &target[cut])
        {
            let mut msg = format!("no key `{full}`");
            if let Some(s) = super::de::nearest(k, m.keys().map(String::as_str)) {
                let mut p = target[..cut].to_vec();
                p.push(Seg::Key(s.to_string()));
                msg.push_str(&format!(" (did you mean `{}`?)", path_string(&p)));
            }
            return msg;
        }
    }
    format!("no key `{full}`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_block_keeps_types() {
        let t = json!({
            "variables": {"max_seq_len": 2048, "remote": null, "seed": 17},
            "max_seq_len": "${variables.max_seq_len}",
            "model": {"max_seq_len": "${variables.max_seq_len}"},
            "loader": {"remote": "${variables.remote}", "seed": "${variables.seed}"}
        });
        let r = resolve(&t).unwrap();
        assert_eq!(r["max_seq_len"], json!(2048));
        assert_eq!(r["model"]["max_seq_len"], json!(2048));
        assert_eq!(r["loader"]["remote"], Value::Null);
        assert_eq!(r["loader"]["seed"], json!(17));
    }

    #[test]
    fn top_level_style_and_chains_resolve() {
        let t = json!({"a": 5, "b": "${a}", "c": "${b}", "d": {"e": "${c}"}});
        let r = resolve(&t).unwrap();
        assert_eq!(r["d"]["e"], json!(5));
    }

    #[test]
    fn embedded_interpolation_makes_a_string() {
        let t = json!({"run": "mpt", "n": 3, "f": true, "x": null, "s": "./${run}/ckpt-${n}-${f}-${x}"});
        assert_eq!(resolve(&t).unwrap()["s"], json!("./mpt/ckpt-3-True-None"));
    }

    #[test]
    fn relative_paths_and_list_indices() {
        let t = json!({"opt": {"betas": [0.9, 0.95], "b2": "${.betas[1]}", "b1": "${opt.betas.0}", "up": "${..top}"}, "top": 1});
        let r = resolve(&t).unwrap();
        assert_eq!(r["opt"]["b2"], json!(0.95));
        assert_eq!(r["opt"]["b1"], json!(0.9));
        assert_eq!(r["opt"]["up"], json!(1));
    }

    #[test]
    fn missing_reference_names_key_and_suggests() {
        let t = json!({"variables": {"max_seq_len": 8}, "model": {"max_seq_len": "${variables.max_seqlen}"}});
        let e = resolve(&t).unwrap_err();
        assert_eq!(e.key, "model.max_seq_len");
        assert!(
            e.reason.contains("did you mean `variables.max_seq_len`"),
            "{e}"
        );
    }

    #[test]
    fn cycles_are_reported_not_looped() {
        let t = json!({"a": "${b}", "b": "${a}"});
        let e = resolve(&t).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn env_resolver_decodes_scalars_and_defaults() {
        // A name no environment will have, so the default path is exercised deterministically.
        let t = json!({"seed": "${oc.env:TESSERA_TEST_UNSET_VAR_31337,42}", "p": "${oc.env:TESSERA_TEST_UNSET_VAR_31337,'x y'}"});
        let r = resolve(&t).unwrap();
        assert_eq!(r["seed"], json!(42));
        assert_eq!(r["p"], json!("x y"));
        let e = resolve(&json!({"s": "${oc.env:TESSERA_TEST_UNSET_VAR_31337}"})).unwrap_err();
        assert!(e.reason.contains("not set"), "{e}");
    }

    #[test]
    fn referenced_roots_lists_absolute_heads() {
        let t = json!({"a": "${variables.x}", "b": ["${seq_len}-${.rel}", "${oc.env:HOME}"], "c": "${run[0]}"});
        let roots: Vec<String> = referenced_roots(&t).into_iter().collect();
        assert_eq!(roots, vec!["run", "seq_len", "variables"]);
    }

    #[test]
    fn escapes_unknown_resolvers_and_unclosed_braces() {
        assert_eq!(
            resolve(&json!({"s": "\\${x}"})).unwrap()["s"],
            json!("${x}")
        );
        assert!(
            resolve(&json!({"s": "${now:%Y}"}))
                .unwrap_err()
                .reason
                .contains("not supported")
        );
        assert!(
            resolve(&json!({"s": "${a"}))
                .unwrap_err()
                .reason
                .contains("unclosed")
        );
    }
}
