//! A language-model corpus: its resolved files (and a separate val corpus's), how their
//! documents are read, and the two passes a tokenizer may need before tokenizing: the
//! characters of the whole corpus (char-level), or a bounded sample of its text (trained kinds).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Result};

use super::config::{DataConfig, TextDocuments};
use super::documents::{read_documents, DocumentSink, ReadOptions};
use super::sources::{fingerprint, resolve, Format, Source};

pub struct Corpus {
    pub sources: Vec<Source>,
    /// `data.val_path`'s files; empty when the val split is held out of `sources`.
    pub val_sources: Vec<Source>,
    pub text_column: String,
    pub documents: TextDocuments,
    pub skip_unreadable: bool,
}

impl Corpus {
    pub fn resolve(data: &DataConfig) -> Result<Self> {
        let skip = data.skip_unreadable;
        let sources = resolve(data.path.all(), "data.path", skip)?;
        let val_sources = match &data.val_path {
            Some(path) => resolve(std::slice::from_ref(path), "data.val_path", skip)?,
            None => Vec::new(),
        };
        Ok(Self {
            sources,
            val_sources,
            text_column: data.text_column.clone(),
            documents: data.documents,
            skip_unreadable: data.skip_unreadable,
        })
    }

    /// A corpus of one plain text file, read as one document.
    pub fn text_file(path: &Path) -> Result<Self> {
        let mut sources = resolve(&[path.to_path_buf()], "data.path", false)?;
        sources.iter_mut().for_each(|s| s.format = Format::Text);
        let (text_column, documents) = (String::new(), TextDocuments::File);
        Ok(Self { sources, val_sources: Vec::new(), text_column, documents, skip_unreadable: false })
    }

    /// The file, when the corpus is one plain text file read as one document (split by tokens,
    /// as nanoGPT's: the last `val_fraction` is val).
    pub fn single_text(&self) -> Option<&Path> {
        match (self.sources.as_slice(), self.val_sources.is_empty(), self.documents) {
            ([one], true, TextDocuments::File) if one.format == Format::Text => Some(&one.path),
            _ => None,
        }
    }

    pub fn options(&self) -> ReadOptions<'_> {
        ReadOptions { text_column: &self.text_column, documents: self.documents }
    }

    /// Streams every document of `sources` into `sink`; `progress` gets the bytes of all files
    /// read so far. An unreadable file stops it, or with `data.skip_unreadable` is skipped and
    /// named.
    pub fn read(&self, sources: &[Source], sink: &mut dyn DocumentSink, progress: &mut dyn FnMut(u64)) -> Result<()> {
        let mut done = 0;
        for source in sources {
            match read_documents(source, &self.options(), sink, &mut |n| progress(done + n)) {
                Ok(()) => {}
                Err(err) if self.skip_unreadable && is_unreadable(&err) => {
                    crate::console::say(format!(
                        "taper: skipping corpus file {} (`data.skip_unreadable`): {err:#}",
                        source.path.display()
                    ));
                }
                Err(err) => {
                    let hint =
                        if is_unreadable(&err) { " (or set `data.skip_unreadable = true` to skip it)" } else { "" };
                    return Err(err.context(format!("cannot read the corpus{hint}")));
                }
            }
            done += source.size;
        }
        Ok(())
    }

    /// Every character of the corpus (train and val files), for a char-level vocabulary.
    pub fn chars(&self) -> Result<BTreeSet<char>> {
        /// ASCII in a table, the rest in a set: one byte-wise pass over the corpus.
        struct Chars {
            ascii: [bool; 128],
            other: BTreeSet<char>,
        }
        impl DocumentSink for Chars {
            fn text(&mut self, piece: &str) -> Result<()> {
                for (i, b) in piece.bytes().enumerate() {
                    if b < 128 {
                        self.ascii[b as usize] = true;
                    } else if b >= 0xC0 {
                        // A character's leading byte: `i` is a char boundary.
                        self.other.extend(piece[i..].chars().next());
                    }
                }
                Ok(())
            }
            fn end_document(&mut self) -> Result<()> {
                Ok(())
            }
        }
        let mut chars = Chars { ascii: [false; 128], other: BTreeSet::new() };
        let all: Vec<Source> = self.sources.iter().chain(&self.val_sources).cloned().collect();
        self.read(&all, &mut chars, &mut |_| {})?;
        let ascii = (0u8..128).filter(|&b| chars.ascii[b as usize]).map(char::from);
        Ok(ascii.chain(chars.other).collect())
    }

    /// The lines of the first `bytes` of training text (whole lines, in corpus order).
    pub fn sample_lines(&self, bytes: usize) -> Result<Vec<String>> {
        struct Sample {
            lines: Vec<String>,
            partial: String,
            left: usize,
        }
        impl DocumentSink for Sample {
            fn text(&mut self, piece: &str) -> Result<()> {
                if self.left == 0 {
                    return Ok(());
                }
                for line in piece.split_inclusive('\n') {
                    self.partial.push_str(line);
                    if self.partial.ends_with('\n') {
                        self.end_document()?;
                    }
                }
                Ok(())
            }
            fn end_document(&mut self) -> Result<()> {
                let line = std::mem::take(&mut self.partial);
                self.left = self.left.saturating_sub(line.len());
                if !line.trim().is_empty() {
                    self.lines.push(line);
                }
                Ok(())
            }
            fn full(&self) -> bool {
                self.left == 0
            }
        }
        let mut sample = Sample { lines: Vec::new(), partial: String::new(), left: bytes };
        for source in &self.sources {
            if sample.left == 0 {
                break;
            }
            self.read(std::slice::from_ref(source), &mut sample, &mut |_| {})?;
        }
        if sample.lines.is_empty() {
            bail!("the corpus ({}) holds no text to train the tokenizer on", self.describe());
        }
        Ok(sample.lines)
    }

    /// What the corpus is, for cache keys: each file's canonical path, size and modification
    /// time (train, then val), and how documents are read from them.
    pub fn identity(&self) -> String {
        let (train, val) = (fingerprint(&self.sources), fingerprint(&self.val_sources));
        format!("{train}\n{val}\n{}\n{:?}", self.text_column, self.documents)
    }

    /// The corpus's files, for messages: the one file, or how many and the first.
    pub fn describe(&self) -> String {
        match self.sources.as_slice() {
            [one] => one.path.display().to_string(),
            [first, ..] => format!("{} files from {}", self.sources.len(), first.path.display()),
            [] => "no files".to_string(),
        }
    }
}

/// Whether `err` is about reaching a file's bytes at all (not about what they hold).
fn is_unreadable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() != std::io::ErrorKind::InvalidData)
    })
}
