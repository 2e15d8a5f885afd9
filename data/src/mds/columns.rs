//! A shard's column list: names, parsed encodings and fixed sizes, in on-disk order.

use std::path::Path;

use super::encoding::{Encoding, EncodingError};
use super::error::{MdsError, Result};

/// One column of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column name.
    pub name: String,
    /// Its encoding, parsed.
    pub encoding: Encoding,
    /// The encoding string exactly as the index (or writer) gave it.
    pub encoding_text: String,
    /// Fixed payload size in bytes, or `None` when each sample stores a u32 size.
    pub size: Option<u64>,
}

/// The columns of a shard, in on-disk order (streaming sorts them by name when writing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    cols: Vec<Column>,
    num_variable: usize,
    fixed_total: u64,
}

impl Columns {
    /// Parses and checks `(name, encoding)` pairs in on-disk order. `origin` names the index
    /// file (or `writer`) in errors. `pkl` is refused; duplicate names are refused.
    pub fn new<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        origin: &Path,
    ) -> Result<Columns> {
        let mut cols: Vec<Column> = Vec::new();
        for (name, text) in pairs {
            let encoding = Encoding::parse(text).map_err(|e| match e {
                EncodingError::Unsafe => MdsError::UnsafeEncoding {
                    path: origin.to_path_buf(),
                    column: name.to_string(),
                    encoding: text.to_string(),
                },
                EncodingError::Unknown(reason) => MdsError::UnknownEncoding {
                    origin: origin.display().to_string(),
                    column: name.to_string(),
                    encoding: text.to_string(),
                    reason,
                },
            })?;
            if cols.iter().any(|c| c.name == name) {
                return Err(MdsError::InvalidIndex {
                    path: origin.to_path_buf(),
                    field: "column_names".into(),
                    found: format!("`{name}` twice"),
                    expected: "unique column names".into(),
                });
            }
            let size = encoding.fixed_size();
            cols.push(Column {
                name: name.to_string(),
                encoding,
                encoding_text: text.to_string(),
                size,
            });
        }
        let num_variable = cols.iter().filter(|c| c.size.is_none()).count();
        let fixed_total = cols
            .iter()
            .filter_map(|c| c.size)
            .fold(0u64, u64::saturating_add);
        Ok(Columns {
            cols,
            num_variable,
            fixed_total,
        })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether there are no columns.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// Column `i` in on-disk order.
    pub fn get(&self, i: usize) -> Option<&Column> {
        self.cols.get(i)
    }

    /// The columns in on-disk order.
    pub fn iter(&self) -> std::slice::Iter<'_, Column> {
        self.cols.iter()
    }

    /// The position of column `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| c.name == name)
    }

    /// Number of variable-size columns (each sample starts with this many u32 sizes).
    pub fn num_variable(&self) -> usize {
        self.num_variable
    }

    /// Sum of the fixed-size columns' sizes.
    pub fn fixed_total(&self) -> u64 {
        self.fixed_total
    }

    /// Comma-separated names, for error messages.
    pub fn names_list(&self) -> String {
        self.cols
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The byte range of column `col` within one sample's bytes, checking that the sizes in the
    /// sample header exactly account for the sample's length.
    pub fn field_range(&self, sample: &[u8], col: usize) -> Result<std::ops::Range<usize>, String> {
        let head = 4 * self.num_variable;
        if sample.len() < head {
            return Err(format!(
                "{} bytes cannot hold {} u32 column sizes",
                sample.len(),
                self.num_variable
            ));
        }
        let mut var_i = 0usize;
        let mut pos = head as u64;
        let mut found = 0..0;
        for (i, c) in self.cols.iter().enumerate() {
            let size = match c.size {
                Some(s) => s,
                None => {
                    let b = &sample[4 * var_i..4 * var_i + 4];
                    var_i += 1;
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64
                }
            };
            let end = pos + size;
            if i == col {
                found = pos as usize..end.min(usize::MAX as u64) as usize;
            }
            pos = end;
        }
        if pos != sample.len() as u64 {
            return Err(format!(
                "column sizes add up to {pos} bytes but the sample has {}",
                sample.len()
            ));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_ranges_follow_the_size_header() {
        let cols =
            Columns::new([("a", "bytes"), ("b", "int"), ("c", "str")], Path::new("t")).unwrap();
        assert_eq!((cols.num_variable(), cols.fixed_total()), (2, 8));
        // sizes: a = 2, c = 3; payloads: a(2) b(8) c(3)
        let mut s = vec![2, 0, 0, 0, 3, 0, 0, 0, 9, 9];
        s.extend_from_slice(&7i64.to_le_bytes());
        s.extend_from_slice(b"xyz");
        assert_eq!(cols.field_range(&s, 0).unwrap(), 8..10);
        assert_eq!(cols.field_range(&s, 1).unwrap(), 10..18);
        assert_eq!(cols.field_range(&s, 2).unwrap(), 18..21);
        assert!(cols.field_range(&s[..20], 2).is_err());
        s.push(0);
        assert!(cols.field_range(&s, 0).is_err());
        assert!(cols.field_range(&[1, 2], 0).is_err());
    }

    #[test]
    fn pkl_and_duplicate_columns_are_refused_naming_the_column() {
        let err = Columns::new([("obj", "pkl")], Path::new("d/index.json")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`obj`") && msg.contains("pkl") && msg.contains("d/index.json"),
            "{msg}"
        );
        assert!(Columns::new([("a", "str"), ("a", "int")], Path::new("t")).is_err());
    }
}
