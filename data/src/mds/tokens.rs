//! Token ids from a sample's token column, without per-sample allocation.
//!
//! llm-foundry's text dataset (`llmfoundry/data/text_data.py`, `StreamingTextDataset`) reads
//! `tokens` either as `ndarray:<int dtype>` (current `convert_dataset_*`) or as `bytes` holding raw
//! little-endian ints of `token_encoding_type` (older datasets; default `int64`). Both land here
//! as `u32` ids appended to a caller-owned buffer; a negative id or one above `u32::MAX` is an
//! error, never a silent wrap.

use super::codec::{parse_ndarray_header, write_ndarray_header};
use super::encoding::{DType, Encoding};
use super::error::{MdsError, Result};
use super::shard::Shard;

/// Which column holds the tokens, and how a `bytes` token column is typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    /// Column name; llm-foundry uses `tokens`.
    pub column: String,
    /// Element type of a `bytes` column (llm-foundry's `token_encoding_type`, default `int64`).
    /// Ignored for `ndarray` columns, which carry their dtype.
    pub bytes_dtype: DType,
}

impl Default for TokenSpec {
    fn default() -> Self {
        TokenSpec {
            column: "tokens".into(),
            bytes_dtype: DType::I64,
        }
    }
}

impl TokenSpec {
    /// A spec for `column` with llm-foundry's `token_encoding_type` name (`int64`, `uint16`...).
    pub fn new(column: &str, token_encoding_type: &str) -> Result<TokenSpec> {
        let dtype = DType::from_name(token_encoding_type)
            .filter(|d| !d.is_float())
            .ok_or_else(|| MdsError::InvalidOption {
                option: "token_encoding_type",
                found: token_encoding_type.to_string(),
                expected: "an integer dtype: int8..int64, uint8..uint64".into(),
            })?;
        Ok(TokenSpec {
            column: column.to_string(),
            bytes_dtype: dtype,
        })
    }
}

/// Appends the token ids in one column payload to `out`; returns how many were appended.
/// On error `out` is restored to its previous length.
pub fn tokens_from_payload(
    encoding: &Encoding,
    bytes_dtype: DType,
    payload: &[u8],
    out: &mut Vec<u32>,
) -> Result<usize, String> {
    let (dtype, values) = match encoding {
        Encoding::Bytes => (bytes_dtype, payload),
        Encoding::NdArray { dtype, shape } => {
            // Dims are only needed to validate the payload; nothing is allocated.
            let h = parse_ndarray_header(*dtype, shape.as_deref(), payload, None)?;
            (h.dtype, &payload[h.values_at..])
        }
        other => return Err(format!("a `{other}` column does not hold token ids")),
    };
    if dtype.is_float() {
        return Err(format!("{dtype} values are not token ids"));
    }
    let size = dtype.size();
    if values.len() % size != 0 {
        return Err(format!(
            "{} bytes is not a whole number of {dtype} values",
            values.len()
        ));
    }
    let start = out.len();
    let n = values.len() / size;
    let ok = match dtype {
        // 4-byte ids: on little-endian machines the payload bytes already are the u32 values, so
        // copy them in one memcpy and range-check with a branch-free OR over the sign bits.
        DType::I32 | DType::U32 if cfg!(target_endian = "little") => {
            out.resize(start + n, 0);
            let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut out[start..]);
            dst.copy_from_slice(values);
            dtype == DType::U32 || out[start..].iter().fold(0u32, |acc, &v| acc | v) >> 31 == 0
        }
        _ => extend_converted(dtype, values, out),
    };
    if !ok {
        let bad = first_bad(dtype, values);
        out.truncate(start);
        return Err(format!("token id {bad} is outside 0..=4294967295"));
    }
    Ok(n)
}

/// Appends `values` (little-endian `dtype` elements) as u32; false if any is out of range.
fn extend_converted(dtype: DType, values: &[u8], out: &mut Vec<u32>) -> bool {
    out.reserve(values.len() / dtype.size());
    match dtype {
        DType::U8 => {
            out.extend(values.iter().map(|&b| b as u32));
            true
        }
        DType::I8 => extend_checked(out, values.iter().map(|&b| b as i8 as i64)),
        DType::U16 => {
            out.extend(
                values
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
            );
            true
        }
        DType::I16 => extend_checked(
            out,
            values
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64),
        ),
        DType::U32 => {
            out.extend(
                values
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            true
        }
        DType::I32 => extend_checked(
            out,
            values
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
        ),
        DType::U64 => {
            let mut ok = true;
            out.extend(values.chunks_exact(8).map(|c| {
                let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                ok &= v <= u32::MAX as u64;
                v as u32
            }));
            ok
        }
        DType::I64 => extend_checked(
            out,
            values
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
        ),
        DType::F16 | DType::F32 | DType::F64 => false,
    }
}

fn extend_checked(out: &mut Vec<u32>, it: impl Iterator<Item = i64>) -> bool {
    let mut ok = true;
    out.extend(it.map(|v| {
        ok &= (0..=u32::MAX as i64).contains(&v);
        v as u32
    }));
    ok
}

/// The first out-of-range value, for the error message.
fn first_bad(dtype: DType, values: &[u8]) -> String {
    let size = dtype.size();
    for c in values.chunks_exact(size) {
        let v: i128 = match dtype {
            DType::U64 => u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as i128,
            _ => super::value::element_i64(dtype, c).unwrap_or(0) as i128,
        };
        if !(0..=u32::MAX as i128).contains(&v) {
            return v.to_string();
        }
    }
    "?".into()
}

/// Appends the payload of `tokens` for a token column of `encoding` (`ndarray[:int dtype]` or
/// `bytes` of `bytes_dtype`), byte-identical to what llm-foundry's converters write. Ids that do
/// not fit the dtype are an error.
pub fn encode_tokens(
    encoding: &Encoding,
    bytes_dtype: DType,
    tokens: &[u32],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let dtype = match encoding {
        Encoding::Bytes => bytes_dtype,
        Encoding::NdArray { dtype, shape } => {
            let d = dtype.unwrap_or(DType::I32);
            write_ndarray_header(*dtype, shape.as_deref(), d, &[tokens.len() as u64], out)?;
            d
        }
        other => return Err(format!("a `{other}` column does not hold token ids")),
    };
    let max: u64 = match dtype {
        DType::U8 => u8::MAX as u64,
        DType::I8 => i8::MAX as u64,
        DType::U16 => u16::MAX as u64,
        DType::I16 => i16::MAX as u64,
        DType::I32 => i32::MAX as u64,
        DType::U32 | DType::U64 | DType::I64 => u32::MAX as u64,
        DType::F16 | DType::F32 | DType::F64 => {
            return Err(format!("{dtype} cannot hold token ids"));
        }
    };
    if let Some(&bad) = tokens.iter().find(|&&t| t as u64 > max) {
        return Err(format!("token id {bad} does not fit {dtype}"));
    }
    if matches!(dtype, DType::I32 | DType::U32) && cfg!(target_endian = "little") {
        // Ids were range-checked above, so their u32 bytes are the int32/uint32 encoding.
        out.extend_from_slice(bytemuck::cast_slice(tokens));
        return Ok(());
    }
    let size = dtype.size();
    out.reserve(tokens.len() * size);
    for &t in tokens {
        out.extend_from_slice(&(t as u64).to_le_bytes()[..size]);
    }
    Ok(())
}

impl Shard {
    /// Appends sample `i`'s token ids to `out`; returns how many were appended.
    pub fn tokens_into(&self, i: usize, spec: &TokenSpec, out: &mut Vec<u32>) -> Result<usize> {
        let col = self
            .columns()
            .position(&spec.column)
            .ok_or_else(|| MdsError::MissingColumn {
                origin: self.path().display().to_string(),
                column: spec.column.clone(),
                available: self.columns().names_list(),
            })?;
        let payload = self.field(i, col)?;
        let encoding = &self.columns().iter().as_slice()[col].encoding;
        tokens_from_payload(encoding, spec.bytes_dtype, payload, out).map_err(|reason| {
            MdsError::Tokens {
                path: self.path().to_path_buf(),
                sample: i,
                column: spec.column.clone(),
                reason,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> Encoding {
        Encoding::parse(s).unwrap()
    }

    #[test]
    fn tokens_round_trip_through_every_integer_layout() {
        let toks = [0u32, 1, 127, 50367];
        for (e, d) in [
            ("ndarray:int32", DType::I64),
            ("ndarray:uint16", DType::I64),
            ("ndarray", DType::I64),
            ("ndarray:int64", DType::I64),
            ("bytes", DType::I64),
            ("bytes", DType::I32),
            ("bytes", DType::U16),
            ("ndarray:uint32", DType::I64),
            ("ndarray:uint64", DType::I64),
        ] {
            let mut payload = Vec::new();
            encode_tokens(&enc(e), d, &toks, &mut payload).unwrap();
            let mut out = vec![9];
            assert_eq!(
                tokens_from_payload(&enc(e), d, &payload, &mut out).unwrap(),
                4,
                "{e}"
            );
            assert_eq!(out, [9, 0, 1, 127, 50367], "{e} {d}");
        }
    }

    #[test]
    fn negative_or_oversized_ids_are_errors_and_leave_the_buffer_unchanged() {
        let payload: Vec<u8> = [5i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![7];
        let err = tokens_from_payload(&enc("bytes"), DType::I64, &payload, &mut out).unwrap_err();
        assert!(err.contains("-1"), "{err}");
        assert_eq!(out, [7]);
        let big: Vec<u8> = (1u64 << 33).to_le_bytes().to_vec();
        assert!(tokens_from_payload(&enc("bytes"), DType::U64, &big, &mut out).is_err());
        assert!(tokens_from_payload(&enc("bytes"), DType::I64, &[0; 7], &mut out).is_err());
        assert!(
            tokens_from_payload(
                &enc("ndarray:float32"),
                DType::I64,
                &[4, 1, 0, 0, 0, 0],
                &mut out
            )
            .is_err()
        );
        assert!(tokens_from_payload(&enc("str"), DType::I64, b"12", &mut out).is_err());
        let mut p = Vec::new();
        assert!(encode_tokens(&enc("ndarray:uint16"), DType::I64, &[70000], &mut p).is_err());
    }

    #[test]
    fn token_spec_takes_llm_foundry_encoding_names() {
        assert_eq!(
            TokenSpec::new("tokens", "uint16").unwrap().bytes_dtype,
            DType::U16
        );
        assert!(TokenSpec::new("tokens", "float32").is_err());
        assert_eq!(TokenSpec::default().bytes_dtype, DType::I64);
    }
}
