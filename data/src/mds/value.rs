//! Decoded column values and samples.
//!
//! One [`Value`] variant per family of encodings. Numbers widen to `i64`/`u64`/`f64` the way
//! NumPy's `.item()` does, so a value compares equal to what streaming returns in Python.

use std::sync::Arc;

use super::columns::Columns;
use super::encoding::DType;

/// One decoded column value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `bytes`, and image encodings (`jpeg`, `png`, `pil`, `jpeg_array`, `list[..]`) passed
    /// through undecoded.
    Bytes(Vec<u8>),
    /// `str`.
    Str(String),
    /// `int`, `int8`..`int64`, `str_int`.
    Int(i64),
    /// `uint8`..`uint64`.
    UInt(u64),
    /// `float16`/`float32`/`float64` (widened exactly), `str_float`.
    Float(f64),
    /// `str_decimal`: the decimal's text, exactly as stored.
    Decimal(String),
    /// `json`.
    Json(serde_json::Value),
    /// `ndarray[...]`.
    NdArray(NdArray),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Bytes(_) => "bytes",
            Value::Str(_) => "str",
            Value::Int(_) => "int",
            Value::UInt(_) => "uint",
            Value::Float(_) => "float",
            Value::Decimal(_) => "decimal",
            Value::Json(_) => "json",
            Value::NdArray(_) => "ndarray",
        }
    }
}

/// An n-dimensional array: dtype, shape and little-endian C-order element bytes.
///
/// Elements stay as bytes so that decoding is one copy and any dtype fits one type; use
/// [`NdArray::to_f64_vec`]/[`NdArray::to_i64_vec`] or the typed constructors to convert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NdArray {
    /// The element type.
    pub dtype: DType,
    /// Dimensions, each >= 1 (streaming refuses empty arrays and scalars).
    pub shape: Vec<u64>,
    /// `product(shape) * dtype.size()` bytes, little-endian, C order.
    pub data: Vec<u8>,
}

impl NdArray {
    /// Builds an array, checking that `data` holds exactly `product(shape)` elements.
    pub fn new(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Result<NdArray, String> {
        let elems = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let want = elems.and_then(|e| e.checked_mul(dtype.size() as u64));
        match want {
            Some(n) if n == data.len() as u64 => Ok(NdArray { dtype, shape, data }),
            _ => Err(format!(
                "{} data bytes do not fill shape {:?} of {}",
                data.len(),
                shape,
                dtype.name()
            )),
        }
    }

    /// A 1-d `int32` array (the layout llm-foundry writes for `tokens`).
    pub fn from_i32(values: &[i32]) -> NdArray {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        NdArray {
            dtype: DType::I32,
            shape: vec![values.len() as u64],
            data,
        }
    }

    /// A 1-d `int64` array.
    pub fn from_i64(values: &[i64]) -> NdArray {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        NdArray {
            dtype: DType::I64,
            shape: vec![values.len() as u64],
            data,
        }
    }

    /// A 1-d `float32` array.
    pub fn from_f32(values: &[f32]) -> NdArray {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        NdArray {
            dtype: DType::F32,
            shape: vec![values.len() as u64],
            data,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the array has no elements (never true for arrays read from MDS).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Element `i` widened to `f64` (exact for every dtype except 64-bit ints above 2^53).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get_f64(&self, i: usize) -> f64 {
        let n = self.dtype.size();
        element_f64(self.dtype, &self.data[i * n..(i + 1) * n])
    }

    /// Every element widened to `f64`, in C order.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let n = self.dtype.size();
        self.data
            .chunks_exact(n)
            .map(|c| element_f64(self.dtype, c))
            .collect()
    }

    /// Every element as `i64`, or `None` for float dtypes and `uint64` values above `i64::MAX`.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        if self.dtype.is_float() {
            return None;
        }
        let n = self.dtype.size();
        self.data
            .chunks_exact(n)
            .map(|c| element_i64(self.dtype, c))
            .collect()
    }
}

/// One little-endian element as `f64`.
fn element_f64(dtype: DType, b: &[u8]) -> f64 {
    match dtype {
        DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        DType::F64 => f64::from_le_bytes(arr8(b)),
        DType::U64 => u64::from_le_bytes(arr8(b)) as f64,
        _ => element_i64(dtype, b).map(|v| v as f64).unwrap_or(f64::NAN),
    }
}

/// One little-endian integer element as `i64` (`None` for floats or u64 > i64::MAX).
pub(crate) fn element_i64(dtype: DType, b: &[u8]) -> Option<i64> {
    Some(match dtype {
        DType::U8 => b[0] as i64,
        DType::I8 => b[0] as i8 as i64,
        DType::U16 => u16::from_le_bytes([b[0], b[1]]) as i64,
        DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
        DType::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        DType::U64 => i64::try_from(u64::from_le_bytes(arr8(b))).ok()?,
        DType::I64 => i64::from_le_bytes(arr8(b)),
        DType::F16 | DType::F32 | DType::F64 => return None,
    })
}

fn arr8(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// One decoded sample: a value per column, in the shard's (sorted) column order.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    columns: Arc<Columns>,
    values: Vec<Value>,
}

impl Sample {
    pub(crate) fn new(columns: Arc<Columns>, values: Vec<Value>) -> Sample {
        Sample { columns, values }
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.columns.position(name).map(|i| &self.values[i])
    }

    /// `(column name, value)` pairs in on-disk (sorted) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.columns
            .iter()
            .map(|c| c.name.as_str())
            .zip(self.values.iter())
    }

    /// The columns this sample was decoded with.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The values, in column order, by value.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndarray_new_rejects_data_that_does_not_fill_the_shape() {
        assert!(NdArray::new(DType::I16, vec![2, 3], vec![0; 12]).is_ok());
        assert!(NdArray::new(DType::I16, vec![2, 3], vec![0; 11]).is_err());
        assert!(NdArray::new(DType::U8, vec![u64::MAX, 3], vec![]).is_err());
    }

    #[test]
    fn ndarray_elements_widen_like_numpy_item() {
        let a = NdArray::new(DType::I8, vec![3], vec![0xff, 0x7f, 0x80]).unwrap();
        assert_eq!(a.to_i64_vec(), Some(vec![-1, 127, -128]));
        let h = NdArray::new(
            DType::F16,
            vec![1],
            half::f16::from_f32(0.5).to_le_bytes().to_vec(),
        )
        .unwrap();
        assert_eq!(h.to_f64_vec(), vec![0.5]);
        assert_eq!(h.to_i64_vec(), None);
        let big = NdArray::new(DType::U64, vec![1], u64::MAX.to_le_bytes().to_vec()).unwrap();
        assert_eq!(big.to_i64_vec(), None);
        assert_eq!(big.get_f64(0), u64::MAX as f64);
    }
}
