//! Parquet input: the same documents as Parquet rows and as JSONL lines give byte-identical
//! shards; a null row is a bad line.

mod prepare_common;

use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use prepare_common::*;
use tessera_data::prepare::{self, TRAIN};

fn write_parquet(path: &std::path::Path, rows: &[Option<&str>]) {
    let schema = Arc::new(
        parse_message_type("message doc { OPTIONAL BYTE_ARRAY content (UTF8); }").unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    for chunk in rows.chunks(2) {
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
        group.close().unwrap();
    }
    writer.close().unwrap();
}

#[test]
fn parquet_rows_and_jsonl_lines_give_identical_shards() {
    let dir = tempfile::tempdir().unwrap();
    let docs = corpus_docs(5);
    let tok = tiny_tokenizer(dir.path(), &docs);
    let pq = dir.path().join("d.parquet");
    let mut rows: Vec<Option<&str>> = docs.iter().map(|d| Some(d.as_str())).collect();
    rows.insert(2, None);
    write_parquet(&pq, &rows);
    let jsonl = dir.path().join("d.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .map(|d| serde_json::json!({ "content": d }).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();

    let mut outs = Vec::new();
    for (name, input) in [("pq", pq), ("jsonl", jsonl)] {
        let out = dir.path().join(name);
        let mut cfg = config(vec![input], &tok, &out, 50, 2);
        cfg.text_field = "content".into();
        let report = prepare::run(&cfg).unwrap();
        assert_eq!(report.docs_out, 5, "{name}");
        if name == "pq" {
            assert_eq!(report.bad_lines, 1);
            assert!(
                report.bad_line_examples[0].contains("d.parquet:3: text is null"),
                "{:?}",
                report.bad_line_examples
            );
        }
        outs.push(dir_files(&out.join(TRAIN)));
    }
    assert_eq!(outs[0], outs[1]);
    assert_eq!(
        read_samples(&dir.path().join("pq").join(TRAIN)),
        expected_samples(&tok, &docs, 50, 0)
    );
}

#[test]
fn a_missing_parquet_column_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path(), &corpus_docs(2));
    let pq = dir.path().join("d.parquet");
    write_parquet(&pq, &[Some("a")]);
    let err = prepare::run(&config(vec![pq], &tok, &dir.path().join("out"), 8, 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("d.parquet") && err.contains("content"),
        "{err}"
    );
}
