//! Payload bytes <-> [`Value`], per encoding, exactly as streaming's `mds_encode`/`mds_decode`.
//!
//! Errors are plain reasons; the caller adds the file, sample and column. Decoding is strict where
//! streaming would raise (bad UTF-8, wrong fixed size, an ndarray whose bytes do not fill its
//! shape), so corrupt data is an error rather than a silently wrong value.

use super::encoding::{DType, Encoding};
use super::pyjson;
use super::value::{NdArray, Value};

/// Decodes one column payload.
pub fn decode(encoding: &Encoding, payload: &[u8]) -> Result<Value, String> {
    Ok(match encoding {
        Encoding::Bytes | Encoding::Opaque(_) => Value::Bytes(payload.to_vec()),
        Encoding::Str => Value::Str(utf8(payload)?.to_string()),
        Encoding::Int => Value::Int(scalar_int(DType::I64, payload)?),
        Encoding::Scalar(d) => decode_scalar(*d, payload)?,
        Encoding::StrInt => {
            let t = utf8(payload)?;
            Value::Int(parse_py_int(t).ok_or_else(|| format!("`{t}` is not an int64 integer"))?)
        }
        Encoding::StrFloat => {
            let t = utf8(payload)?;
            Value::Float(
                t.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("`{t}` is not a float"))?,
            )
        }
        Encoding::StrDecimal => {
            let t = utf8(payload)?;
            if !is_decimal_text(t) {
                return Err(format!("`{t}` is not a decimal"));
            }
            Value::Decimal(t.to_string())
        }
        Encoding::Json => {
            Value::Json(serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?)
        }
        Encoding::NdArray { dtype, shape } => {
            Value::NdArray(decode_ndarray(*dtype, shape.as_deref(), payload)?)
        }
    })
}

/// Where an ndarray payload's values start, and their dtype and shape.
pub struct NdHeader {
    pub dtype: DType,
    /// Byte offset of the first value in the payload.
    pub values_at: usize,
    /// The number of elements the shape holds.
    pub elements: u64,
}

/// Parses an ndarray payload's optional dtype byte and shape header, pushing the dims into
/// `shape_out` when given (cleared first). Checks that the values exactly fill the shape.
/// Allocates nothing itself, so the token fast path can call it per sample.
pub fn parse_ndarray_header(
    dtype: Option<DType>,
    shape: Option<&[u64]>,
    payload: &[u8],
    mut shape_out: Option<&mut Vec<u64>>,
) -> Result<NdHeader, String> {
    if let Some(out) = shape_out.as_deref_mut() {
        out.clear();
    }
    let mut at = 0usize;
    let dtype = match dtype {
        Some(d) => d,
        None => {
            let code = *payload
                .first()
                .ok_or("empty payload, expected a dtype byte")?;
            at = 1;
            DType::from_code(code).ok_or_else(|| format!("unknown ndarray dtype code {code}"))?
        }
    };
    let mut elements: Option<u64> = Some(1);
    match shape {
        Some(s) => {
            for &d in s {
                elements = elements.and_then(|e| e.checked_mul(d));
            }
            if let Some(out) = shape_out.as_deref_mut() {
                out.extend_from_slice(s);
            }
        }
        None => {
            let byte = *payload
                .get(at)
                .ok_or("payload ends before the shape byte")?;
            at += 1;
            let ndim = (byte >> 2) as usize;
            let width = 1usize << (byte & 3);
            let need = ndim * width;
            let dims = payload
                .get(at..at + need)
                .ok_or_else(|| format!("payload ends inside the {ndim}-dim shape"))?;
            for d in dims.chunks_exact(width) {
                let mut b = [0u8; 8];
                b[..width].copy_from_slice(d);
                let d = u64::from_le_bytes(b);
                elements = elements.and_then(|e| e.checked_mul(d));
                if let Some(out) = shape_out.as_deref_mut() {
                    out.push(d);
                }
            }
            at += need;
        }
    }
    let elements = elements.ok_or("the shape's element count overflows")?;
    let have = (payload.len() - at) as u64;
    if elements.checked_mul(dtype.size() as u64) != Some(have) {
        return Err(format!(
            "{have} value bytes do not fill {elements} elements of {} ({} bytes each)",
            dtype.name(),
            dtype.size()
        ));
    }
    Ok(NdHeader {
        dtype,
        values_at: at,
        elements,
    })
}

fn decode_ndarray(
    dtype: Option<DType>,
    shape: Option<&[u64]>,
    payload: &[u8],
) -> Result<NdArray, String> {
    let mut dims = Vec::new();
    let h = parse_ndarray_header(dtype, shape, payload, Some(&mut dims))?;
    Ok(NdArray {
        dtype: h.dtype,
        shape: dims,
        data: payload[h.values_at..].to_vec(),
    })
}

fn utf8(payload: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(payload).map_err(|e| format!("invalid UTF-8: {e}"))
}

fn fixed<const N: usize>(payload: &[u8], what: &str) -> Result<[u8; N], String> {
    payload
        .try_into()
        .map_err(|_| format!("{what} takes {N} bytes, found {}", payload.len()))
}

fn scalar_int(d: DType, p: &[u8]) -> Result<i64, String> {
    Ok(match d {
        DType::U8 => fixed::<1>(p, "uint8")?[0] as i64,
        DType::I8 => fixed::<1>(p, "int8")?[0] as i8 as i64,
        DType::U16 => u16::from_le_bytes(fixed(p, "uint16")?) as i64,
        DType::I16 => i16::from_le_bytes(fixed(p, "int16")?) as i64,
        DType::U32 => u32::from_le_bytes(fixed(p, "uint32")?) as i64,
        DType::I32 => i32::from_le_bytes(fixed(p, "int32")?) as i64,
        DType::I64 => i64::from_le_bytes(fixed(p, "int64")?),
        other => return Err(format!("{other} is not a signed-safe integer scalar")),
    })
}

fn decode_scalar(d: DType, p: &[u8]) -> Result<Value, String> {
    Ok(match d {
        DType::F16 | DType::F32 | DType::F64 => Value::Float(scalar_float(d, p)?),
        DType::U64 => Value::UInt(u64::from_le_bytes(fixed(p, "uint64")?)),
        DType::U8 | DType::U16 | DType::U32 => Value::UInt(scalar_int(d, p)? as u64),
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => Value::Int(scalar_int(d, p)?),
    })
}

fn scalar_float(d: DType, p: &[u8]) -> Result<f64, String> {
    Ok(match d {
        DType::F16 => half::f16::from_le_bytes(fixed(p, "float16")?).to_f64(),
        DType::F32 => f32::from_le_bytes(fixed(p, "float32")?) as f64,
        _ => f64::from_le_bytes(fixed(p, "float64")?),
    })
}

/// Python `int(text)` for values that fit i64: surrounding whitespace, a sign, and single
/// underscores between digits are allowed.
fn parse_py_int(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        return None;
    }
    let cleaned: String = t.chars().filter(|&c| c != '_').collect();
    cleaned.parse().ok()
}

/// Whether `t` is text `decimal.Decimal` accepts: `[sign] digits [. digits] [e [sign] digits]`,
/// or `Infinity`/`Inf`/`NaN`/`sNaN` (any case).
fn is_decimal_text(t: &str) -> bool {
    let t = t.trim();
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = t.to_ascii_lowercase();
    if ["infinity", "inf", "nan", "snan"].contains(&lower.as_str()) {
        return true;
    }
    let (mantissa, exp) = match lower.split_once('e') {
        Some((m, e)) => (m, Some(e)),
        None => (lower.as_str(), None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// Appends the payload of `value` encoded as `encoding`, byte-identical to streaming's
/// `mds_encode`. Type mismatches and out-of-range numbers are errors (NumPy would often wrap).
pub fn encode_into(encoding: &Encoding, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let mismatch = || format!("cannot encode a {} value", value.kind());
    match (encoding, value) {
        (Encoding::Bytes | Encoding::Opaque(_), Value::Bytes(b)) => out.extend_from_slice(b),
        (Encoding::Str, Value::Str(s)) => out.extend_from_slice(s.as_bytes()),
        (Encoding::Int, _) => {
            out.extend_from_slice(&as_i64(value).ok_or_else(mismatch)?.to_le_bytes())
        }
        (Encoding::Scalar(d), _) => encode_scalar(*d, value, out)?,
        (Encoding::StrInt, Value::Int(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (Encoding::StrInt, Value::UInt(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (Encoding::StrFloat, Value::Float(v)) => {
            let mut s = String::new();
            pyjson::write_float_repr(&mut s, *v);
            out.extend_from_slice(s.as_bytes());
        }
        (Encoding::StrDecimal, Value::Decimal(t) | Value::Str(t)) => {
            if !is_decimal_text(t) {
                return Err(format!("`{t}` is not a decimal"));
            }
            out.extend_from_slice(t.as_bytes());
        }
        (Encoding::Json, Value::Json(v)) => out.extend_from_slice(pyjson::dumps(v).as_bytes()),
        // Already-serialized JSON text is written verbatim (after checking it parses), so callers
        // can keep Python's key order, which `serde_json::Value` does not preserve.
        (Encoding::Json, Value::Str(text)) => {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| format!("text given for a json column is not JSON: {e}"))?;
            out.extend_from_slice(text.as_bytes());
        }
        (Encoding::NdArray { dtype, shape }, Value::NdArray(a)) => {
            encode_ndarray(*dtype, shape.as_deref(), a, out)?
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        _ => None,
    }
}

fn encode_scalar(d: DType, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let range = |v: &dyn std::fmt::Display| format!("{v} does not fit {}", d.name());
    if d.is_float() {
        let x = match value {
            Value::Float(f) => *f,
            Value::Int(i) => *i as f64,
            Value::UInt(u) => *u as f64,
            _ => {
                return Err(format!(
                    "cannot encode a {} value as {}",
                    value.kind(),
                    d.name()
                ));
            }
        };
        match d {
            DType::F16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
            _ => out.extend_from_slice(&x.to_le_bytes()),
        }
        return Ok(());
    }
    if d == DType::U64 {
        let u = match value {
            Value::UInt(u) => *u,
            Value::Int(i) => u64::try_from(*i).map_err(|_| range(i))?,
            _ => return Err(format!("cannot encode a {} value as uint64", value.kind())),
        };
        out.extend_from_slice(&u.to_le_bytes());
        return Ok(());
    }
    let v = match value {
        Value::Int(i) => *i,
        Value::UInt(u) => i64::try_from(*u).map_err(|_| range(u))?,
        _ => {
            return Err(format!(
                "cannot encode a {} value as {}",
                value.kind(),
                d.name()
            ));
        }
    };
    match d {
        DType::U8 => out.push(u8::try_from(v).map_err(|_| range(&v))?),
        DType::I8 => out.extend_from_slice(&i8::try_from(v).map_err(|_| range(&v))?.to_le_bytes()),
        DType::U16 => {
            out.extend_from_slice(&u16::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        DType::I16 => {
            out.extend_from_slice(&i16::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        DType::U32 => {
            out.extend_from_slice(&u32::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        DType::I32 => {
            out.extend_from_slice(&i32::try_from(v).map_err(|_| range(&v))?.to_le_bytes())
        }
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
    Ok(())
}

/// Writes an ndarray header per `NDArray.encode`: the dtype byte if the encoding leaves it
/// open, then `(ndim << 2) | width code` and the dims in the smallest uint that holds the largest.
pub fn write_ndarray_header(
    fixed_dtype: Option<DType>,
    fixed_shape: Option<&[u64]>,
    dtype: DType,
    shape: &[u64],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match fixed_dtype {
        None => out.push(dtype.code()),
        Some(want) if want != dtype => {
            return Err(format!("wrong dtype: expected {want}, got {dtype}"));
        }
        Some(_) => {}
    }
    if shape.is_empty() {
        return Err("a 0-dim array is a scalar: use a scalar encoding".into());
    }
    if shape.contains(&0) {
        return Err(format!(
            "shape {shape:?} has no elements; streaming refuses empty arrays"
        ));
    }
    match fixed_shape {
        Some(want) if want != shape => {
            return Err(format!("wrong shape: expected {want:?}, got {shape:?}"));
        }
        Some(_) => {}
        None => {
            if shape.len() >= 64 {
                return Err(format!("array has {} axes, the maximum is 63", shape.len()));
            }
            let max = shape.iter().copied().max().unwrap_or(1);
            let code: u8 = match max {
                0..=0xff => 0,
                0x100..=0xffff => 1,
                0x1_0000..=0xffff_ffff => 2,
                _ => 3,
            };
            out.push(((shape.len() as u8) << 2) | code);
            let width = 1usize << code;
            for &d in shape {
                out.extend_from_slice(&d.to_le_bytes()[..width]);
            }
        }
    }
    Ok(())
}

fn encode_ndarray(
    dtype: Option<DType>,
    shape: Option<&[u64]>,
    a: &NdArray,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    // Re-check the array's own consistency: its fields are public.
    let elems = a.shape.iter().try_fold(1u64, |x, &d| x.checked_mul(d));
    if elems.and_then(|e| e.checked_mul(a.dtype.size() as u64)) != Some(a.data.len() as u64) {
        return Err(format!(
            "array data ({} bytes) does not fill shape {:?}",
            a.data.len(),
            a.shape
        ));
    }
    write_ndarray_header(dtype, shape, a.dtype, &a.shape, out)?;
    out.extend_from_slice(&a.data);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(e: &str) -> Encoding {
        Encoding::parse(e).unwrap()
    }

    fn round_trip(e: &str, v: Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&enc(e), &v, &mut out).unwrap();
        assert_eq!(decode(&enc(e), &out).unwrap(), v, "{e}");
        out
    }

    #[test]
    fn values_round_trip_through_every_encoding() {
        round_trip("bytes", Value::Bytes(vec![0, 255, 7]));
        round_trip("jpeg", Value::Bytes(vec![0xff, 0xd8]));
        round_trip("str", Value::Str("héllo".into()));
        assert_eq!(round_trip("int", Value::Int(-5)), (-5i64).to_le_bytes());
        round_trip("int8", Value::Int(-128));
        round_trip("uint16", Value::UInt(65535));
        round_trip("uint64", Value::UInt(u64::MAX));
        round_trip("float16", Value::Float(0.5));
        round_trip("float32", Value::Float(1.25));
        round_trip("float64", Value::Float(-1e-300));
        assert_eq!(round_trip("str_int", Value::Int(-130105)), b"-130105");
        assert_eq!(round_trip("str_float", Value::Float(1e-7)), b"1e-07");
        round_trip("str_decimal", Value::Decimal("-12.50E+3".into()));
        round_trip(
            "json",
            Value::Json(serde_json::json!({"a": [1, 2.5, null]})),
        );
        round_trip(
            "ndarray:int32",
            Value::NdArray(NdArray::from_i32(&[1, -2, 3])),
        );
        round_trip("ndarray", Value::NdArray(NdArray::from_f32(&[1.0; 300])));
        round_trip(
            "ndarray:int16:2,2",
            Value::NdArray(NdArray::new(DType::I16, vec![2, 2], vec![1; 8]).unwrap()),
        );
    }

    #[test]
    fn ndarray_header_uses_the_smallest_shape_width() {
        let mut out = Vec::new();
        write_ndarray_header(None, None, DType::U8, &[2, 300], &mut out).unwrap();
        // dtype code 8, then ndim 2 << 2 | code 1 (u16 dims), then 2 and 300 as u16.
        assert_eq!(out, vec![8, (2 << 2) | 1, 2, 0, 44, 1]);
    }

    #[test]
    fn encoder_rejects_values_that_do_not_fit_the_column() {
        let mut out = Vec::new();
        assert!(encode_into(&enc("uint8"), &Value::Int(256), &mut out).is_err());
        assert!(encode_into(&enc("int"), &Value::Str("1".into()), &mut out).is_err());
        assert!(encode_into(&enc("json"), &Value::Str("{not json".into()), &mut out).is_err());
        let wrong = Value::NdArray(NdArray::from_i64(&[1]));
        assert!(encode_into(&enc("ndarray:int32"), &wrong, &mut out).is_err());
        let shape = Value::NdArray(NdArray::from_i32(&[1, 2, 3]));
        assert!(encode_into(&enc("ndarray:int32:2"), &shape, &mut out).is_err());
        assert!(encode_into(&enc("str_decimal"), &Value::Str("1.2.3".into()), &mut out).is_err());
    }

    #[test]
    fn decoder_rejects_payloads_that_do_not_fill_their_type() {
        assert!(decode(&enc("int"), &[0; 7]).is_err());
        assert!(decode(&enc("str"), &[0xff]).is_err());
        assert!(decode(&enc("ndarray:int32"), &[4, 3, 0, 0]).is_err()); // 1 dim of 3 needs 12 bytes
        assert!(decode(&enc("ndarray"), &[99, 4, 1, 0]).is_err()); // unknown dtype code
        assert!(decode(&enc("ndarray"), &[]).is_err());
        assert!(decode(&enc("str_int"), b"12x").is_err());
        assert_eq!(
            decode(&enc("str_int"), b" 1_000 ").unwrap(),
            Value::Int(1000)
        );
    }
}
