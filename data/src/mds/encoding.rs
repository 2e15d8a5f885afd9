//! Column encodings: the names mosaicml-streaming writes into `column_encodings`, parsed once.
//!
//! Follows `streaming/base/format/mds/encodings.py` (`_encodings`, `_get_coder`, `NDArray.from_str`):
//! a name, optionally `name:config`. Only `ndarray` takes a config (`ndarray:dtype[:d0,d1,..]`);
//! `ndarray:` (empty config) means the same as `ndarray`. Image and image-list encodings are kept
//! as raw bytes: tessera never decodes pictures. `pkl` is refused (see [`Encoding::parse`]).

use std::fmt;

/// An element type of an `ndarray` column or a scalar column, with streaming's one-byte dtype
/// code (`NDArray._int2value_dtype`): the high bits give the width, the low bits signed/float.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// `uint8`.
    U8,
    /// `int8`.
    I8,
    /// `uint16`.
    U16,
    /// `int16`.
    I16,
    /// `float16`.
    F16,
    /// `uint32`.
    U32,
    /// `int32`.
    I32,
    /// `float32`.
    F32,
    /// `uint64`.
    U64,
    /// `int64`.
    I64,
    /// `float64`.
    F64,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 11] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::F16,
        DType::U32,
        DType::I32,
        DType::F32,
        DType::U64,
        DType::I64,
        DType::F64,
    ];

    /// NumPy's name (`uint8`, `float32`...), which is also the scalar encoding's name.
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::U16 => "uint16",
            DType::I16 => "int16",
            DType::F16 => "float16",
            DType::U32 => "uint32",
            DType::I32 => "int32",
            DType::F32 => "float32",
            DType::U64 => "uint64",
            DType::I64 => "int64",
            DType::F64 => "float64",
        }
    }

    /// The dtype NumPy calls `name`, if streaming supports it.
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Streaming's one-byte code for a dynamic-dtype `ndarray` column.
    pub fn code(self) -> u8 {
        match self {
            DType::U8 => 8,
            DType::I8 => 9,
            DType::U16 => 16,
            DType::I16 => 17,
            DType::F16 => 18,
            DType::U32 => 32,
            DType::I32 => 33,
            DType::F32 => 34,
            DType::U64 => 64,
            DType::I64 => 65,
            DType::F64 => 66,
        }
    }

    /// The dtype with streaming code `code`.
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 | DType::F16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one column's payload is laid out, parsed from its encoding string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `bytes`: the payload itself.
    Bytes,
    /// `str`: UTF-8 text.
    Str,
    /// `int`: one little-endian int64 (fixed 8 bytes).
    Int,
    /// `uint8` ... `float64`: one little-endian scalar (fixed size).
    Scalar(DType),
    /// `str_int`: an integer as decimal text.
    StrInt,
    /// `str_float`: a float as Python `repr` text.
    StrFloat,
    /// `str_decimal`: a `decimal.Decimal` as text (kept as text).
    StrDecimal,
    /// `json`: UTF-8 JSON text.
    Json,
    /// `ndarray[:dtype[:d0,d1,..]]`: C-order values, with the dtype code and/or shape header in
    /// the payload when the encoding does not fix them.
    NdArray {
        /// The element type, when the encoding fixes it (else read from the payload).
        dtype: Option<DType>,
        /// The shape, when the encoding fixes it (else read from the payload).
        shape: Option<Vec<u64>>,
    },
    /// Image encodings (`jpeg`, `png`, `pil`, `jpeg_array`, `jpegarray`, `list[pil]`,
    /// `list[jpeg]`, `list[png]`): kept as the raw payload bytes; the string is the name.
    Opaque(String),
}

/// The image-like encodings tessera passes through as raw bytes.
const OPAQUE: [&str; 8] = [
    "pil",
    "jpeg",
    "jpeg_array",
    "jpegarray",
    "png",
    "list[pil]",
    "list[jpeg]",
    "list[png]",
];

/// Why an encoding string was rejected (turned into an `MdsError` by the caller, who knows the
/// column and file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodingError {
    /// `pkl`: never decoded.
    Unsafe,
    /// Not an encoding streaming defines, or a malformed `ndarray` config.
    Unknown(String),
}

impl Encoding {
    /// Parses a `column_encodings` entry.
    ///
    /// `pkl` gives [`EncodingError::Unsafe`]: unpickling runs arbitrary code, and streaming
    /// itself refuses it unless `allow_unsafe_types=True`.
    pub fn parse(text: &str) -> Result<Encoding, EncodingError> {
        let unknown = |why: &str| EncodingError::Unknown(why.to_string());
        let (name, config) = match text.find(':') {
            Some(i) => (&text[..i], Some(&text[i + 1..])),
            None => (text, None),
        };
        if name == "ndarray" {
            return parse_ndarray(config.unwrap_or(""));
        }
        if config.is_some() {
            return Err(unknown("only `ndarray` takes a `:` configuration"));
        }
        Ok(match name {
            "bytes" => Encoding::Bytes,
            "str" => Encoding::Str,
            "int" => Encoding::Int,
            "str_int" => Encoding::StrInt,
            "str_float" => Encoding::StrFloat,
            "str_decimal" => Encoding::StrDecimal,
            "json" => Encoding::Json,
            "pkl" => return Err(EncodingError::Unsafe),
            other => {
                if let Some(d) = DType::from_name(other) {
                    Encoding::Scalar(d)
                } else if OPAQUE.contains(&other) {
                    Encoding::Opaque(other.to_string())
                } else {
                    return Err(unknown("not an MDS encoding"));
                }
            }
        })
    }

    /// Bytes every payload of this encoding takes, or `None` for variable size (then each sample
    /// carries a u32 size). Equals streaming's `get_mds_encoded_size`.
    pub fn fixed_size(&self) -> Option<u64> {
        match self {
            Encoding::Int => Some(8),
            Encoding::Scalar(d) => Some(d.size() as u64),
            Encoding::NdArray {
                dtype: Some(d),
                shape: Some(shape),
            } => {
                // Dims are >= 1 and parsed from text, so overflow only on absurd encodings;
                // saturating keeps it a size mismatch error rather than a panic.
                Some(
                    shape
                        .iter()
                        .fold(d.size() as u64, |acc, &x| acc.saturating_mul(x)),
                )
            }
            _ => None,
        }
    }
}

/// `NDArray.from_str`: `""`, `"dtype"` or `"dtype:d0,d1,.."`.
fn parse_ndarray(config: &str) -> Result<Encoding, EncodingError> {
    let unknown = |why: String| EncodingError::Unknown(why);
    if config.is_empty() {
        return Ok(Encoding::NdArray {
            dtype: None,
            shape: None,
        });
    }
    let mut parts = config.split(':');
    let dtype_text = parts.next().unwrap_or("");
    let dtype = DType::from_name(dtype_text)
        .ok_or_else(|| unknown(format!("`{dtype_text}` is not an ndarray dtype")))?;
    let shape = match parts.next() {
        None => None,
        Some(dims) => {
            let mut shape = Vec::new();
            for d in dims.split(',') {
                let v: u64 = d
                    .trim()
                    .parse()
                    .map_err(|_| unknown(format!("shape entry `{d}` is not a positive integer")))?;
                if v == 0 {
                    return Err(unknown("shape entries must be >= 1".into()));
                }
                shape.push(v);
            }
            Some(shape)
        }
    };
    if parts.next().is_some() {
        return Err(unknown("expected ndarray[:dtype[:d0,d1,..]]".into()));
    }
    Ok(Encoding::NdArray {
        dtype: Some(dtype),
        shape,
    })
}

impl fmt::Display for Encoding {
    /// The canonical encoding string (what streaming would be given to produce this column).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::Bytes => f.write_str("bytes"),
            Encoding::Str => f.write_str("str"),
            Encoding::Int => f.write_str("int"),
            Encoding::Scalar(d) => f.write_str(d.name()),
            Encoding::StrInt => f.write_str("str_int"),
            Encoding::StrFloat => f.write_str("str_float"),
            Encoding::StrDecimal => f.write_str("str_decimal"),
            Encoding::Json => f.write_str("json"),
            Encoding::NdArray { dtype: None, .. } => f.write_str("ndarray"),
            Encoding::NdArray {
                dtype: Some(d),
                shape: None,
            } => write!(f, "ndarray:{d}"),
            Encoding::NdArray {
                dtype: Some(d),
                shape: Some(s),
            } => {
                let dims: Vec<String> = s.iter().map(u64::to_string).collect();
                write!(f, "ndarray:{d}:{}", dims.join(","))
            }
            Encoding::Opaque(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_streaming_encoding_parses_and_round_trips_to_its_name() {
        let names = [
            "bytes",
            "str",
            "int",
            "uint8",
            "uint16",
            "uint32",
            "uint64",
            "int8",
            "int16",
            "int32",
            "int64",
            "float16",
            "float32",
            "float64",
            "str_int",
            "str_float",
            "str_decimal",
            "pil",
            "jpeg",
            "jpeg_array",
            "jpegarray",
            "png",
            "list[pil]",
            "list[jpeg]",
            "list[png]",
            "json",
            "ndarray",
            "ndarray:int32",
            "ndarray:float32:2,3",
        ];
        for n in names {
            let e = Encoding::parse(n).unwrap_or_else(|err| panic!("{n}: {err:?}"));
            assert_eq!(e.to_string(), n);
        }
    }

    #[test]
    fn pkl_is_refused_as_unsafe() {
        assert_eq!(Encoding::parse("pkl"), Err(EncodingError::Unsafe));
    }

    #[test]
    fn malformed_ndarray_configs_are_rejected() {
        for bad in [
            "ndarray:int33",
            "ndarray:int32:0",
            "ndarray:int32:2,x",
            "ndarray:int32:2:3",
            "ndarray:bool",
            "str:3",
            "float128",
            "Bytes",
        ] {
            assert!(
                matches!(Encoding::parse(bad), Err(EncodingError::Unknown(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn fixed_sizes_match_streaming() {
        let size = |s: &str| Encoding::parse(s).unwrap().fixed_size();
        assert_eq!(size("int"), Some(8));
        assert_eq!(size("uint8"), Some(1));
        assert_eq!(size("float16"), Some(2));
        assert_eq!(size("ndarray:float32:2,3"), Some(24));
        assert_eq!(size("ndarray:int16"), None);
        assert_eq!(size("ndarray"), None);
        assert_eq!(size("str_int"), None);
        assert_eq!(size("jpeg"), None);
        // `ndarray:` is streaming's NDArray.from_str("") = dynamic dtype and shape.
        assert_eq!(
            Encoding::parse("ndarray:").unwrap(),
            Encoding::NdArray {
                dtype: None,
                shape: None
            }
        );
    }

    #[test]
    fn dtype_codes_match_streaming_table() {
        let expect = [
            (8, "uint8"),
            (9, "int8"),
            (16, "uint16"),
            (17, "int16"),
            (18, "float16"),
            (32, "uint32"),
            (33, "int32"),
            (34, "float32"),
            (64, "uint64"),
            (65, "int64"),
            (66, "float64"),
        ];
        for (code, name) in expect {
            let d = DType::from_code(code).unwrap();
            assert_eq!(d.name(), name);
            assert_eq!(DType::from_name(name), Some(d));
        }
        assert_eq!(DType::from_code(0), None);
    }
}
