//! Tagged sentences for token classification: CoNLL-style files (one word per line, its tag
//! the last whitespace-separated field, a blank line between sentences, `-DOCSTART-` lines
//! skipped) or JSONL (a list of words and a list of tags per line); and their encoding into
//! sub-word tokens, each word's tag carried by its first sub-word (as Hugging Face's examples
//! do). Every error names the file and the line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokenizers::{TruncationParams, TruncationStrategy};

use super::padded::Encoded;
use super::tokenizer::TextTokenizer;
use crate::entity_metrics::Scheme;

/// The JSONL keys of the words and the tags.
#[derive(Debug, Clone, PartialEq)]
pub struct TagColumns {
    pub tokens: String,
    pub tags: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    /// One per word; None when reading inputs to tag (`require_tags = false`) without tags.
    pub tags: Option<Vec<String>>,
    /// 1-based line of the file where the sentence starts.
    pub line: usize,
}

/// Reads every sentence of `path` (`.conll`, `.iob`, `.bio`, `.txt`: CoNLL style; `.jsonl`).
/// Tags must be `scheme`'s. Without `require_tags` (inputs to tag), tags are read when every
/// word of a sentence has one.
pub fn read_tagged(
    path: &Path,
    columns: &TagColumns,
    scheme: Scheme,
    require_tags: bool,
) -> Result<Vec<TaggedSentence>> {
    if !path.is_file() {
        bail!("data file {} does not exist", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let sentences = match extension.as_str() {
        "conll" | "iob" | "bio" | "txt" => read_conll(&text, path, require_tags)?,
        "jsonl" => read_jsonl(&text, columns, path, require_tags)?,
        other => bail!(
            "{}: unknown tagged-data format `.{other}` (use .conll, .iob, .bio or .txt with a word and its tag per \
             line, or .jsonl with `{}` and `{}` lists)",
            path.display(),
            columns.tokens,
            columns.tags
        ),
    };
    if sentences.is_empty() {
        bail!("data file {} has no sentences", path.display());
    }
    for sentence in &sentences {
        for (i, tag) in sentence.tags.iter().flatten().enumerate() {
            let line = if extension == "jsonl" { sentence.line } else { sentence.line + i };
            scheme.check(tag).with_context(|| format!("{}:{line}", path.display()))?;
        }
    }
    Ok(sentences)
}

/// A CoNLL sentence being read: its first line, words, and each word's tag if it has one.
#[derive(Default)]
struct Reading {
    line: usize,
    words: Vec<String>,
    tags: Vec<Option<String>>,
}

impl Reading {
    fn finish(self, sentences: &mut Vec<TaggedSentence>) {
        if !self.words.is_empty() {
            let tags = self.tags.into_iter().collect::<Option<Vec<String>>>();
            sentences.push(TaggedSentence { words: self.words, tags, line: self.line });
        }
    }
}

/// CoNLL style: `word [other fields ...] tag` per line.
fn read_conll(text: &str, path: &Path, require_tags: bool) -> Result<Vec<TaggedSentence>> {
    let (mut sentences, mut current) = (Vec::new(), Reading::default());
    for (i, raw) in text.lines().enumerate() {
        let fields: Vec<&str> = raw.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            std::mem::take(&mut current).finish(&mut sentences);
            continue;
        }
        let tag = match fields.len() {
            1 if require_tags => bail!(
                "{}:{}: `{raw}` has no tag: each line holds a word and its tag (the last field), a blank line \
                 between sentences",
                path.display(),
                i + 1
            ),
            1 => None,
            _ => fields.last().map(|t| t.to_string()),
        };
        if current.words.is_empty() {
            current.line = i + 1;
        }
        current.words.push(fields[0].to_string());
        current.tags.push(tag);
    }
    current.finish(&mut sentences);
    Ok(sentences)
}

/// JSONL: `{"tokens": [...], "tags": [...]}` per line (keys as `columns`).
fn read_jsonl(text: &str, columns: &TagColumns, path: &Path, require_tags: bool) -> Result<Vec<TaggedSentence>> {
    let mut sentences = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(raw).with_context(|| format!("{}:{line}: not a JSON object", path.display()))?;
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                        other => bail!(
                            "{}:{line}: `{key}` holds {other}: it must be a list of non-empty strings (tag names, \
                             not their ids)",
                            path.display()
                        ),
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(other) => bail!("{}:{line}: `{key}` is {other}, not a list", path.display()),
            }
        };
        let words = strings(&columns.tokens)?
            .filter(|w| !w.is_empty())
            .with_context(|| format!("{}:{line}: no words (key `{}`)", path.display(), columns.tokens))?;
        let tags = strings(&columns.tags)?;
        match &tags {
            None if require_tags => bail!("{}:{line}: no tags (key `{}`)", path.display(), columns.tags),
            Some(tags) if tags.len() != words.len() => bail!(
                "{}:{line}: {} words but {} tags: each word needs one tag",
                path.display(),
                words.len(),
                tags.len()
            ),
            _ => {}
        }
        sentences.push(TaggedSentence { words, tags, line });
    }
    Ok(sentences)
}

/// A sentence as sub-word tokens, and where each word's first sub-word is (None: the word was
/// cut off by the maximum length, or the tokenizer made no token of it).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedWords {
    pub encoded: Encoded,
    pub first_token: Vec<Option<usize>>,
}

impl EncodedWords {
    /// The words that reach the model (have a first sub-word), in order.
    pub fn scored_words(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.first_token.iter().enumerate().filter_map(|(w, t)| t.map(|t| (w, t)))
    }
}

/// Encodes every sentence's words (pre-tokenized input, special tokens added), truncated to
/// `max_len` tokens.
pub fn encode_words(
    tokenizer: &TextTokenizer,
    sentences: &[TaggedSentence],
    max_len: usize,
    source: &Path,
) -> Result<Vec<EncodedWords>> {
    let mut tokenizer = tokenizer.inner().clone();
    let truncation =
        TruncationParams { max_length: max_len, strategy: TruncationStrategy::LongestFirst, ..Default::default() };
    tokenizer.with_truncation(Some(truncation)).map_err(anyhow::Error::msg)?;
    sentences
        .iter()
        .map(|sentence| {
            let words: Vec<&str> = sentence.words.iter().map(String::as_str).collect();
            let encoding = tokenizer
                .encode(&words[..], true)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}:{}: cannot tokenize the sentence", source.display(), sentence.line))?;
            let mut first_token = vec![None; words.len()];
            for (t, word) in encoding.get_word_ids().iter().enumerate() {
                if let Some(slot) = word.and_then(|w| first_token.get_mut(w as usize)) {
                    slot.get_or_insert(t);
                }
            }
            let encoded = Encoded { ids: encoding.get_ids().to_vec(), type_ids: encoding.get_type_ids().to_vec() };
            Ok(EncodedWords { encoded, first_token })
        })
        .collect()
}
