//! The documents of one corpus file, streamed: plain text (the whole file, or each run of
//! lines between blank lines), JSONL with a text key (plain, gzip or zstd), or Parquet with a
//! text column. Nothing holds more than one document (or one 8 MiB block of a whole-file
//! document) at a time. Errors name the file and the line, or the columns a file has.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::config::TextDocuments;
use super::sources::{Format, Source};

/// Where a file's documents go, piece by piece.
pub trait DocumentSink {
    /// More text of the current document.
    fn text(&mut self, piece: &str) -> Result<()>;
    /// The current document is complete (only called after some text).
    fn end_document(&mut self) -> Result<()>;
    /// A new file's documents follow.
    fn begin_file(&mut self, _path: &std::path::Path) {}
    /// True once the sink wants no more text: the reader stops early.
    fn full(&self) -> bool {
        false
    }
}

/// How documents are found in a file.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions<'a> {
    pub text_column: &'a str,
    pub documents: TextDocuments,
}

/// A reader that counts the bytes it has read from the file (progress is in file bytes, also
/// for compressed files).
struct Counted<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Streams `source`'s documents into `sink`, calling `progress` with the file bytes read.
pub fn read_documents(
    source: &Source,
    options: &ReadOptions,
    sink: &mut dyn DocumentSink,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let path = &source.path;
    sink.begin_file(path);
    let file = File::open(path).with_context(|| format!("cannot open corpus file {}", path.display()))?;
    let count = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = Counted { inner: file, count: count.clone() };
    let tick = move || count.get();
    let reading = match source.format {
        Format::Text => match options.documents {
            TextDocuments::File => read_whole_text(counted, sink, &mut || progress(tick())),
            TextDocuments::BlankLine => read_paragraphs(BufReader::new(counted), sink, &mut || progress(tick())),
        },
        Format::Jsonl => read_jsonl(BufReader::new(counted), options.text_column, sink, &mut || progress(tick())),
        Format::JsonlGz => {
            let decoder = BufReader::new(flate2::read::MultiGzDecoder::new(counted));
            read_jsonl(decoder, options.text_column, sink, &mut || progress(tick()))
        }
        Format::JsonlZst => {
            let decoder = BufReader::new(zstd::stream::read::Decoder::new(counted)?);
            read_jsonl(decoder, options.text_column, sink, &mut || progress(tick()))
        }
        Format::Parquet => {
            drop(counted);
            read_parquet(source, options.text_column, sink)?;
            progress(source.size);
            Ok(())
        }
    };
    reading.with_context(|| format!("in corpus file {}", path.display()))
}

/// The file as one document, in blocks cut at UTF-8 character boundaries.
fn read_whole_text(mut reader: impl Read, sink: &mut dyn DocumentSink, progress: &mut dyn FnMut()) -> Result<()> {
    const BLOCK: usize = 8 << 20;
    let mut buf = vec![0u8; BLOCK];
    let (mut filled, mut offset, mut any) = (0, 0u64, false);
    loop {
        let n = reader.read(&mut buf[filled..])?;
        filled += n;
        let eof = n == 0;
        let valid = match std::str::from_utf8(&buf[..filled]) {
            Ok(text) => text.len(),
            // An incomplete character at the block's end waits for the next read.
            Err(e) if e.error_len().is_none() && !eof => e.valid_up_to(),
            Err(e) => bail!("byte {} is not UTF-8: corpus text files must be UTF-8", offset + e.valid_up_to() as u64),
        };
        if valid > 0 {
            // Valid up to `valid` (checked above; checking again costs a fraction of reading).
            let text = std::str::from_utf8(&buf[..valid])?;
            any |= !text.trim().is_empty();
            sink.text(text)?;
            buf.copy_within(valid..filled, 0);
            filled -= valid;
            offset += valid as u64;
        }
        progress();
        if eof || sink.full() {
            break;
        }
    }
    if any {
        sink.end_document()?;
    }
    Ok(())
}

/// Each run of non-blank lines is a document (its lines keep their newlines).
fn read_paragraphs(mut reader: impl BufRead, sink: &mut dyn DocumentSink, progress: &mut dyn FnMut()) -> Result<()> {
    let (mut line, mut number, mut open) = (String::new(), 0usize, false);
    loop {
        line.clear();
        number += 1;
        let n = reader.read_line(&mut line).with_context(|| format!("line {number} is not UTF-8 text"))?;
        if n == 0 || sink.full() {
            break;
        }
        if line.trim().is_empty() {
            if open {
                sink.end_document()?;
                open = false;
            }
        } else {
            sink.text(&line)?;
            open = true;
        }
        if number % 4096 == 0 {
            progress();
        }
    }
    if open {
        sink.end_document()?;
    }
    progress();
    Ok(())
}

/// One document per line: the string under `column`. Blank lines are skipped.
fn read_jsonl(
    mut reader: impl BufRead,
    column: &str,
    sink: &mut dyn DocumentSink,
    progress: &mut dyn FnMut(),
) -> Result<()> {
    let (mut line, mut number) = (String::new(), 0usize);
    loop {
        line.clear();
        number += 1;
        if reader.read_line(&mut line).with_context(|| format!("line {number} is not UTF-8 text"))? == 0 || sink.full()
        {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).with_context(|| format!("line {number} is not a JSON object"))?;
        let text = match value.get(column) {
            Some(Value::String(text)) => text,
            Some(Value::Null) => continue,
            Some(other) => bail!("line {number}: `{column}` holds {other}, not a string"),
            None => {
                let keys: Vec<&String> = value.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                bail!("line {number} has no key `{column}` (it has {keys:?}): set `data.text_column`")
            }
        };
        if !text.is_empty() {
            sink.text(text)?;
            sink.end_document()?;
        }
        if number % 1024 == 0 {
            progress();
        }
    }
    progress();
    Ok(())
}

#[cfg(feature = "parquet")]
fn read_parquet(source: &Source, column: &str, sink: &mut dyn DocumentSink) -> Result<()> {
    for text in super::parquet_columns::read_strings(&source.path, &[column])? {
        let text = text?;
        if sink.full() {
            break;
        }
        if let Some(Some(text)) = text.into_iter().next() {
            if !text.is_empty() {
                sink.text(&text)?;
                sink.end_document()?;
            }
        }
    }
    Ok(())
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(source: &Source, _column: &str, _sink: &mut dyn DocumentSink) -> Result<()> {
    bail!("{} is Parquet, and this taper was built without its `parquet` feature", source.path.display())
}
