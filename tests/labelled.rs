//! Labelled data files: CSV (with quoting), TSV and JSONL; label sets; errors with file and line.

use std::path::{Path, PathBuf};

use taper::data::labelled::{read_labelled, Columns, LabelSet};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn csv_with_quotes_tsv_and_jsonl_read_the_same_examples() {
    let dir = tempfile::tempdir().unwrap();
    let csv =
        write(dir.path(), "a.csv", "label,text\npos,\"Good, very \"\"good\"\"\"\nneg,\"two\nlines\"\r\npos,plain\n");
    let tsv = write(dir.path(), "a.tsv", "text\tlabel\nGood, very \"good\"\tpos\n");
    let jsonl = write(
        dir.path(),
        "a.jsonl",
        "{\"text\": \"Good, very \\\"good\\\"\", \"label\": \"pos\"}\n\n{\"text\": \"x\", \"label\": 3}\n",
    );
    let rows = read_labelled(&csv, &Columns::default(), true).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].text, "Good, very \"good\"");
    assert_eq!(rows[1].text, "two\nlines");
    assert_eq!((rows[2].line, rows[2].label.as_deref()), (5, Some("pos")), "line numbers count the embedded newline");
    assert_eq!(read_labelled(&tsv, &Columns::default(), true).unwrap()[0].text, rows[0].text);
    let from_json = read_labelled(&jsonl, &Columns::default(), true).unwrap();
    assert_eq!(from_json[0].text, rows[0].text);
    assert_eq!((from_json[1].line, from_json[1].label.as_deref()), (3, Some("3")), "numeric labels become names");
}

#[test]
fn text_pairs_and_custom_column_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.csv", "premise,hypothesis,gold\nA man sleeps.,Nobody sleeps.,contradiction\n");
    let columns = Columns { text: "premise".into(), text_pair: Some("hypothesis".into()), label: "gold".into() };
    let rows = read_labelled(&path, &columns, true).unwrap();
    assert_eq!(rows[0].text_pair.as_deref(), Some("Nobody sleeps."));
    assert_eq!(rows[0].label.as_deref(), Some("contradiction"));
}

#[test]
fn bad_files_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.csv", None, "does not exist"),
        ("empty.csv", Some(""), "empty"),
        ("header.csv", Some("text,label\n"), "no examples"),
        ("nolabel.csv", Some("text,label\nfine,pos\nno label here,\n"), "nolabel.csv:3: the row has no label"),
        ("notext.jsonl", Some("{\"label\": \"pos\"}\n"), "notext.jsonl:1: the row has no text"),
        ("badjson.jsonl", Some("{\"text\": \"a\", \"label\": \"b\"}\n{oops\n"), "badjson.jsonl:2: not a JSON object"),
        ("cols.csv", Some("sentence,label\na,b\n"), "no column `text` in the header (columns: sentence, label)"),
        ("quote.csv", Some("text,label\n\"never closed,pos\n"), "never closed"),
        // An unquoted comma in a text: a field too many, never a silently cut row.
        (
            "comma.csv",
            Some("text,label\nfine,pos\ngreat, really,pos\n"),
            "comma.csv:3: the row has 3 fields, the header 2",
        ),
        ("short.tsv", Some("text\tlabel\nonly text\n"), "short.tsv:2: the row has 1 fields, the header 2"),
        ("data.xlsx", Some("x"), "unknown data format"),
    ];
    for (name, body, want) in cases {
        let path = match body {
            Some(body) => write(dir.path(), name, body),
            None => dir.path().join(name),
        };
        let err = format!("{:#}", read_labelled(&path, &Columns::default(), true).unwrap_err());
        assert!(err.contains(want), "{name}: {err}");
    }
}

#[test]
fn inputs_to_predict_need_no_label() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "in.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\", \"label\": \"pos\"}\n");
    let rows = read_labelled(&path, &Columns::default(), false).unwrap();
    assert_eq!((rows[0].label.as_deref(), rows[1].label.as_deref()), (None, Some("pos")));
}

#[test]
fn label_sets_are_sorted_and_refuse_unknown_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "t.csv", "text,label\na,pos\nb,neg\nc,pos\n");
    let rows = read_labelled(&path, &Columns::default(), true).unwrap();
    let labels = LabelSet::from_examples(&rows).unwrap();
    assert_eq!(labels.names, vec!["neg", "pos"]);
    assert_eq!(labels.id("pos", &path, 2).unwrap(), 1);
    let err = labels.id("neutral", &path, 7).unwrap_err().to_string();
    assert!(err.contains("t.csv:7") && err.contains("neutral") && err.contains("neg, pos"), "{err}");
    let one = write(dir.path(), "one.csv", "text,label\na,pos\n");
    assert!(LabelSet::from_examples(&read_labelled(&one, &Columns::default(), true).unwrap()).is_err());
}

/// A Parquet file written by pyarrow (scripts/make-corpus-fixtures.py) reads as the same
/// examples as its rows written out as JSONL; a missing column names the ones it has.
#[test]
fn parquet_labelled_files_read_as_their_jsonl() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/corpus/labelled.parquet");
    let rows = read_labelled(&fixture, &Columns::default(), true).unwrap();
    assert_eq!(rows.len(), 40);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("same.jsonl");
    let lines: String =
        rows.iter().map(|r| serde_json::json!({"text": r.text, "label": r.label}).to_string() + "\n").collect();
    std::fs::write(&jsonl, lines).unwrap();
    let again = read_labelled(&jsonl, &Columns::default(), true).unwrap();
    assert_eq!(rows, again, "rows and lines are both numbered from 1");
    assert_eq!(rows[1].label.as_deref(), Some("pos"));
    assert!(rows[0].text.starts_with("Anna helps fred"));
    let columns = Columns { label: "stars".into(), ..Columns::default() };
    let err = format!("{:#}", read_labelled(&fixture, &columns, true).unwrap_err());
    assert!(err.contains("has no column `stars` (its columns: text, label)"), "{err}");
    // Inputs to predict: a missing label column is fine.
    assert!(read_labelled(&fixture, &columns, false).unwrap().iter().all(|r| r.label.is_none()));
}
