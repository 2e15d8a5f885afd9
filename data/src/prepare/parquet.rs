//! Reading one string column of a Parquet file, row group by row group, with the `parquet`
//! crate's low-level column reader (no Arrow: the text bytes go straight into the batch).

use std::fs::File;
use std::path::Path;

use parquet::basic::Type as PhysicalType;
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::PrepareError;

/// Rows decoded per call into the column reader.
const CHUNK: usize = 1024;

/// Calls `each(row, value)` for every row of the column named `field` (a dotted path for nested
/// columns), in file order; `value` is `None` for a null. `each` returns false to stop.
///
/// A missing column, a non-string column or a repeated (list) column is an error naming the file
/// and the columns it does have.
pub fn read_text_column(
    path: &Path,
    field: &str,
    mut each: impl FnMut(u64, Option<&[u8]>) -> bool,
) -> Result<(), PrepareError> {
    let err = |message: String| PrepareError::Parquet {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| PrepareError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let reader = SerializedFileReader::new(file).map_err(|e| err(e.to_string()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let columns = schema.columns();
    let index = columns
        .iter()
        .position(|c| c.path().string() == field)
        .ok_or_else(|| {
            let names: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
            err(format!(
                "no column {field:?} (columns: {})",
                names.join(", ")
            ))
        })?;
    let descr = &columns[index];
    if descr.physical_type() != PhysicalType::BYTE_ARRAY {
        return Err(err(format!(
            "column {field:?} is {}, expected a string (BYTE_ARRAY)",
            descr.physical_type()
        )));
    }
    if descr.max_rep_level() > 0 {
        return Err(err(format!(
            "column {field:?} is a repeated (list) column, expected one string per row"
        )));
    }
    let max_def = descr.max_def_level();
    let mut row = 0u64;
    let mut values: Vec<ByteArray> = Vec::with_capacity(CHUNK);
    let mut defs: Vec<i16> = Vec::with_capacity(CHUNK);
    for g in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| err(format!("row group {g}: {e}")))?;
        let column = group
            .get_column_reader(index)
            .map_err(|e| err(format!("row group {g}: {e}")))?;
        let ColumnReader::ByteArrayColumnReader(mut column) = column else {
            return Err(err(format!(
                "column {field:?} did not decode as byte arrays"
            )));
        };
        loop {
            values.clear();
            defs.clear();
            let (records, _, _) = column
                .read_records(CHUNK, Some(&mut defs), None, &mut values)
                .map_err(|e| err(format!("row group {g}, row {}: {e}", row + 1)))?;
            if records == 0 {
                break;
            }
            let mut next_value = values.iter();
            for r in 0..records {
                row += 1;
                let present = max_def == 0 || defs.get(r).is_some_and(|&d| d == max_def);
                let value = if present {
                    next_value.next().map(|v| v.data())
                } else {
                    None
                };
                if !each(row, value) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Writes a one-column (optional string) Parquet file: test support, and a way for tests in
/// other modules to build Parquet inputs without Python.
#[cfg(test)]
pub(crate) fn write_test_parquet(path: &Path, column: &str, rows: &[Option<&str>]) {
    use parquet::data_type::ByteArrayType;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let schema = Arc::new(
        parse_message_type(&format!(
            "message doc {{ OPTIONAL BYTE_ARRAY {column} (UTF8); REQUIRED INT64 id; }}"
        ))
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_max_row_group_row_count(Some(3))
            .build(),
    );
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    for chunk in rows.chunks(3) {
        let mut group = writer.next_row_group().unwrap();
        let values: Vec<ByteArray> = chunk
            .iter()
            .flatten()
            .map(|s| ByteArray::from(*s))
            .collect();
        let defs: Vec<i16> = chunk.iter().map(|r| r.is_some() as i16).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        let ids: Vec<i64> = (0..chunk.len() as i64).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<parquet::data_type::Int64Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
    }
    writer.close().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_and_nulls_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let rows = [
            Some("alpha"),
            None,
            Some("gamma é"),
            Some(""),
            Some("epsilon"),
            Some("zeta"),
            Some("eta"),
        ];
        write_test_parquet(&path, "content", &rows);
        let mut got = Vec::new();
        read_text_column(&path, "content", |row, v| {
            got.push((row, v.map(|b| String::from_utf8(b.to_vec()).unwrap())));
            true
        })
        .unwrap();
        let want: Vec<(u64, Option<String>)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 1, r.map(String::from)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wrong_column_names_the_file_and_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        write_test_parquet(&path, "content", &[Some("a")]);
        let err = read_text_column(&path, "text", |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d.parquet") && err.contains("content") && err.contains("id"),
            "{err}"
        );
        let err = read_text_column(&path, "id", |_, _| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("INT64"), "{err}");
        std::fs::write(&path, b"not parquet").unwrap();
        assert!(read_text_column(&path, "text", |_, _| true).is_err());
    }
}
