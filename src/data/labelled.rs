//! Labelled text for classification: CSV, TSV or JSONL files with a text column, an optional
//! second text (`text_pair`), and a label; the label set of a training file. Every error names
//! the file and the line.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Which columns (CSV/TSV header names, or JSONL keys) hold what.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self { text: "text".into(), text_pair: None, label: "label".into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub text_pair: Option<String>,
    /// None when reading inputs to predict (`require_label = false`) and the file has none.
    pub label: Option<String>,
    /// 1-based line of the file where the example starts.
    pub line: usize,
}

/// CSV/TSV records with the line each starts on (RFC 4180 quoting: fields in double quotes may
/// hold the delimiter, newlines and doubled quotes; blank lines skipped), read by the csv crate.
/// A row whose field count is not the header's is an error naming its line: an unquoted
/// delimiter inside a text would otherwise shift or cut its fields.
fn read_records(text: &str, delimiter: u8, path: &Path) -> Result<Vec<(usize, Vec<String>)>> {
    let mut reader = csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).from_reader(text.as_bytes());
    // The file's line at a record's byte offset (the csv crate's own line count skips newlines
    // inside quoted fields; after a CRLF its offset is that of the LF, hence `<=`).
    let newlines: Vec<usize> = text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect();
    let line_at = |byte: u64| newlines.partition_point(|&n| (n as u64) <= byte) + 1;
    let mut records = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|err| match err.kind() {
            csv::ErrorKind::UnequalLengths { pos, expected_len, len } => anyhow::anyhow!(
                "{}:{}: the row has {len} fields, the header {expected_len}: quote a text that holds the delimiter \
                 (\"like, this\"){}",
                path.display(),
                pos.as_ref().map_or(0, |p| line_at(p.byte())),
                // An unclosed quote swallows the rest of the file into one field.
                if text.matches('"').count() % 2 == 1 { "; or a quoted field is never closed" } else { "" }
            ),
            _ => anyhow::anyhow!("{}: {err}", path.display()),
        })?;
        let line = record.position().map_or(0, |p| line_at(p.byte()));
        records.push((line, record.iter().map(String::from).collect()));
    }
    Ok(records)
}

fn need(value: Option<String>, what: &str, column: &str, path: &Path, line: usize) -> Result<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => bail!("{}:{line}: the row has no {what} (column `{column}`)", path.display()),
    }
}

/// Reads every example of `path` (`.csv`, `.tsv` or `.jsonl`). With `require_label`, a row
/// without a label is an error; without it (inputs to predict), labels are read when present.
pub fn read_labelled(path: &Path, columns: &Columns, require_label: bool) -> Result<Vec<Example>> {
    if !path.is_file() {
        bail!("data file {} does not exist", path.display());
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet")) {
        return read_parquet(path, columns, require_label);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    if text.trim().is_empty() {
        bail!("data file {} is empty", path.display());
    }
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut examples = Vec::new();
    match extension.as_str() {
        "csv" | "tsv" => {
            let delimiter = if extension == "csv" { b',' } else { b'\t' };
            let records = read_records(&text, delimiter, path)?;
            let (_, header) = &records[0];
            let find = |name: &str| header.iter().position(|h| h.trim() == name);
            let column = |name: &str| {
                find(name).with_context(|| {
                    format!("{}: no column `{name}` in the header (columns: {})", path.display(), header.join(", "))
                })
            };
            let text_at = column(&columns.text)?;
            let pair_at = columns.text_pair.as_deref().map(column).transpose()?;
            let label_at = if require_label { Some(column(&columns.label)?) } else { find(&columns.label) };
            for (line, fields) in &records[1..] {
                let get = |i: usize| fields.get(i).cloned();
                let text = need(get(text_at), "text", &columns.text, path, *line)?;
                let text_pair = match (pair_at, &columns.text_pair) {
                    (Some(i), Some(name)) => Some(need(get(i), "second text", name, path, *line)?),
                    _ => None,
                };
                let label = match label_at {
                    Some(i) if require_label => Some(need(get(i), "label", &columns.label, path, *line)?),
                    Some(i) => get(i).filter(|l| !l.trim().is_empty()),
                    None => None,
                };
                examples.push(Example { text, text_pair, label, line: *line });
            }
        }
        "jsonl" => {
            for (i, raw) in text.lines().enumerate() {
                let line = i + 1;
                if raw.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(raw)
                    .with_context(|| format!("{}:{line}: not a JSON object", path.display()))?;
                let field = |name: &str| match value.get(name) {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                };
                let text = need(field(&columns.text), "text", &columns.text, path, line)?;
                let text_pair =
                    columns.text_pair.as_deref().map(|n| need(field(n), "second text", n, path, line)).transpose()?;
                let label = if require_label {
                    Some(need(field(&columns.label), "label", &columns.label, path, line)?)
                } else {
                    field(&columns.label)
                };
                examples.push(Example { text, text_pair, label, line });
            }
        }
        other => bail!("{}: unknown data format `.{other}` (use .csv, .tsv, .jsonl or .parquet)", path.display()),
    }
    if examples.is_empty() {
        bail!("data file {} has a header but no examples", path.display());
    }
    Ok(examples)
}

/// The examples of a Parquet file, one per row (`line` is the 1-based row); the label column
/// is optional without `require_label`.
#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, columns: &Columns, require_label: bool) -> Result<Vec<Example>> {
    let mut names = vec![columns.text.as_str()];
    names.extend(columns.text_pair.as_deref());
    let with_label = [names.clone(), vec![columns.label.as_str()]].concat();
    let (rows, labelled) = match super::parquet_columns::read_strings(path, &with_label) {
        Ok(rows) => (Box::new(rows) as Box<dyn Iterator<Item = Result<Vec<Option<String>>>>>, true),
        Err(_) if !require_label => (Box::new(super::parquet_columns::read_strings(path, &names)?) as Box<_>, false),
        Err(err) => return Err(err),
    };
    let mut examples = Vec::new();
    for (i, row) in rows.enumerate() {
        let (mut row, line) = (row?, i + 1);
        let label = if labelled { row.pop().flatten() } else { None };
        let text_pair = match &columns.text_pair {
            Some(name) => Some(need(row.pop().flatten(), "second text", name, path, line)?),
            None => None,
        };
        let text = need(row.pop().flatten(), "text", &columns.text, path, line)?;
        let label = match label {
            _ if !require_label => label.filter(|l| !l.trim().is_empty()),
            label => Some(need(label, "label", &columns.label, path, line)?),
        };
        examples.push(Example { text, text_pair, label, line });
    }
    if examples.is_empty() {
        bail!("data file {} has no rows", path.display());
    }
    Ok(examples)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _columns: &Columns, _require_label: bool) -> Result<Vec<Example>> {
    bail!("{} is Parquet, and this taper was built without its `parquet` feature", path.display())
}

/// The labels a classifier knows, in a fixed (sorted) order: label i is output i.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    pub names: Vec<String>,
}

impl LabelSet {
    /// The labels that occur in the training examples.
    pub fn from_examples(examples: &[Example]) -> Result<Self> {
        let names: BTreeSet<String> = examples.iter().filter_map(|e| e.label.clone()).collect();
        if names.len() < 2 {
            bail!("a classifier needs at least two labels; the training data has {}", names.len());
        }
        Ok(Self { names: names.into_iter().collect() })
    }

    /// The id of `label`, or an error naming the file, line and the known labels.
    pub fn id(&self, label: &str, path: &Path, line: usize) -> Result<u32> {
        match self.names.iter().position(|n| n == label) {
            Some(i) => Ok(i as u32),
            None => bail!(
                "{}:{line}: label `{label}` is not one the model was trained with (known: {})",
                path.display(),
                self.names.join(", ")
            ),
        }
    }
}
