//! The cleaning stages end to end: what they drop or change shows in the shards and is counted
//! in the report; bad lines are reported with file:line and are fatal only with `strict`.

mod prepare_common;

use prepare_common::*;
use tessera_data::prepare::{self, CleanConfig, PiiConfig, PrepareError, TRAIN};

#[test]
fn bad_lines_are_counted_with_file_and_line_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path(), &corpus_docs(3));
    let input = dir.path().join("d.jsonl");
    let body = [
        r#"{"text": "first good document"}"#,
        r#"{"text": "unterminated"#,
        r#"{"body": "no text field"}"#,
        r#"{"text": 42}"#,
        "",
        r#"{"text": "second good document"}"#,
    ];
    std::fs::write(&input, body.join("\n")).unwrap();
    let out = dir.path().join("out");
    let report = prepare::run(&config(vec![input.clone()], &tok, &out, 4, 2)).unwrap();
    assert_eq!(report.bad_lines, 3);
    assert_eq!(report.docs_in, 2);
    let ex = &report.bad_line_examples;
    assert!(ex[0].contains("d.jsonl:2: invalid JSON"), "{ex:?}");
    assert!(ex[1].contains("d.jsonl:3: missing text field"), "{ex:?}");
    assert!(
        ex[2].contains("d.jsonl:4: text field is a number"),
        "{ex:?}"
    );
    let want = expected_samples(
        &tok,
        &["first good document".into(), "second good document".into()],
        4,
        0,
    );
    assert_eq!(read_samples(&out.join(TRAIN)), want);

    let mut strict = config(vec![input], &tok, &dir.path().join("strict"), 4, 2);
    strict.strict = true;
    match prepare::run(&strict) {
        Err(PrepareError::BadLine { path, line, .. }) => {
            assert!(path.ends_with("d.jsonl"));
            assert_eq!(line, 2);
        }
        other => panic!("strict must fail on line 2, got {other:?}"),
    }
}

#[test]
fn invalid_utf8_is_repaired_or_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path(), &corpus_docs(3));
    let input = dir.path().join("d.jsonl");
    let mut body = b"{\"text\": \"caf\xe9 bar\"}\n".to_vec();
    body.extend_from_slice(b"{\"text\": \"clean\"}\n");
    std::fs::write(&input, &body).unwrap();

    let out = dir.path().join("repair");
    let report = prepare::run(&config(vec![input.clone()], &tok, &out, 2, 1)).unwrap();
    assert_eq!((report.utf8_repaired, report.docs_out), (1, 2));
    let want = expected_samples(&tok, &["caf\u{fffd} bar".into(), "clean".into()], 2, 0);
    assert_eq!(read_samples(&out.join(TRAIN)), want);

    let mut drop = config(vec![input], &tok, &dir.path().join("drop"), 2, 1);
    drop.clean.utf8 = prepare::Utf8Mode::Drop;
    let report = prepare::run(&drop).unwrap();
    assert_eq!(report.dropped["invalid_utf8"], 1);
    assert_eq!(report.docs_out, 1);
}

#[test]
fn pii_control_chars_and_duplicates_are_cleaned_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path(), &corpus_docs(3));
    let docs: Vec<String> = vec![
        "write to jane@example.com or call 555-123-4567\u{7}".into(),
        "server at 10.1.2.3 is up".into(),
        "Server  AT 10.1.2.3 is UP".into(), // exact duplicate after normalization
        "plain text stays".into(),
    ];
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let out = dir.path().join("out");
    let mut cfg = config(vec![input], &tok, &out, 1, 3);
    cfg.clean = CleanConfig {
        strip_control: true,
        exact_dedup: true,
        pii: Some(PiiConfig::default()),
        ..CleanConfig::default()
    };
    let report = prepare::run(&cfg).unwrap();
    assert_eq!(report.dropped["exact_dup"], 1);
    assert_eq!(report.control_stripped, 1);
    assert_eq!(
        (report.pii.emails, report.pii.phones, report.pii.ips),
        (1, 1, 1)
    );
    assert_eq!(report.pii_docs, 2);
    let cleaned: Vec<String> = vec![
        "write to |||EMAIL||| or call |||PHONE_NUMBER|||".into(),
        "server at |||IP_ADDRESS||| is up".into(),
        "plain text stays".into(),
    ];
    assert_eq!(
        read_samples(&out.join(TRAIN)),
        expected_samples(&tok, &cleaned, 1, 0)
    );
}

#[test]
fn quality_filter_drops_by_named_rule() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(dir.path(), &corpus_docs(3));
    let prose: String = (0..30)
        .map(|i| format!("The river {i} flows to the sea with the tide and the wind.\n"))
        .collect();
    let docs = vec![prose, "too short".to_string(), "#### ## # ### ".repeat(40)];
    let input = dir.path().join("d.jsonl");
    write_jsonl(&input, &docs);
    let mut cfg = config(vec![input], &tok, &dir.path().join("out"), 8, 2);
    cfg.clean.quality = Some(prepare::QualityConfig {
        max_dup_ngram_chars: vec![],
        max_top_ngram_chars: vec![],
        ..Default::default()
    });
    let report = prepare::run(&cfg).unwrap();
    assert_eq!(report.docs_out, 1);
    assert_eq!(report.dropped["quality_too_few_words"], 1);
    assert_eq!(report.dropped.values().sum::<u64>(), 2);
}
