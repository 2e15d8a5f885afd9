//! JSON text byte-identical to Python's `json.dumps` with default options.
//!
//! Streaming embeds `json.dumps(config, sort_keys=True)` in every shard and writes `index.json`
//! with `json.dump(obj, f, sort_keys=True)`; `json` columns are `json.dumps(value)`. Matching those
//! bytes (separators `", "`/`": "`, `ensure_ascii=True`, floats as `repr`) is what makes a shard
//! tessera writes identical to one streaming writes.

use serde_json::Value as Json;

/// `json.dumps(v)`: objects in the map's own order (sorted, since tessera does not enable
/// serde_json's `preserve_order`).
pub fn dumps(v: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, v, false);
    out
}

/// `json.dumps(v, sort_keys=True)`: keys sorted by code point whatever the map's order.
pub fn dumps_sorted(v: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, v, true);
    out
}

/// Appends `v` as Python would; `sort` forces sorted keys.
pub fn write_value(out: &mut String, v: &Json, sort: bool) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else {
                write_json_float(out, n.as_f64().unwrap_or(f64::NAN));
            }
        }
        Json::String(s) => write_str(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item, sort);
            }
            out.push(']');
        }
        Json::Object(map) => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if sort {
                // Python sorts str keys by code point, which is UTF-8 byte order.
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str(out, k);
                out.push_str(": ");
                write_value(out, item, sort);
            }
            out.push('}');
        }
    }
}

/// A JSON string with `ensure_ascii=True`: `"` and `\` escaped, `\n \r \t \b \f` by name, every
/// other character outside `' '..='~'` as `\uXXXX` (UTF-16 surrogate pairs above U+FFFF).
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// A float as `json.dumps` writes it: `repr`, with `NaN`, `Infinity`, `-Infinity`.
fn write_json_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        write_float_repr(out, x);
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in `-4..16` (always with a `.0` or fraction), else `d.ddde±XX`.
pub fn write_float_repr(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("nan");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
        return;
    }
    // Rust's `{:e}` without precision prints the shortest round-trip digits, like Python.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    // Position of the decimal point relative to the digit string (Python's `decpt`).
    let decpt = exp + 1;
    if neg {
        out.push('-');
    }
    if (-4 < decpt) && (decpt <= 16) {
        if decpt <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-decpt) as usize));
            out.push_str(&digits);
        } else if decpt < n {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - n) as usize));
            out.push_str(".0");
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        out.push('e');
        out.push(if e < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", e.abs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repr(x: f64) -> String {
        let mut s = String::new();
        write_float_repr(&mut s, x);
        s
    }

    #[test]
    fn float_repr_matches_python() {
        // Each right-hand side is what CPython 3.11 prints for repr(x).
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (123.0, "123.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e-7, "1e-07"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789.125, "123456789.125"),
            (1.6000190889991115, "1.6000190889991115"),
            (1e300, "1e+300"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
        ];
        for (x, want) in cases {
            assert_eq!(repr(x), want, "{x}");
        }
    }

    #[test]
    fn dumps_uses_python_separators_and_ascii_escapes() {
        let v = json!({"b": [1, 2.5, null, true], "a": "é\n\"\\\u{1F600}\u{7f}", "c": {}});
        assert_eq!(
            dumps_sorted(&v),
            r#"{"a": "\u00e9\n\"\\\ud83d\ude00\u007f", "b": [1, 2.5, null, true], "c": {}}"#
        );
    }
}
