//! `[data]` and `[tokenizer]`: where the training data is and how it becomes tokens.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training data, relative to the working directory. Language models: a corpus of one or
    /// more files, folders or glob patterns (a list for several) of plain text (.txt and any
    /// other name), JSONL (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet (.parquet). Labelled tasks:
    /// one .csv/.tsv/.jsonl file.
    pub path: CorpusPaths,
    /// A separate validation file (labelled tasks) or corpus (language models); without it,
    /// `val_fraction` of the training data is held out.
    pub val_path: Option<PathBuf>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// JSONL key or Parquet column that holds a corpus document's text.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// What one document of a plain text file is: the whole file, or each run of lines
    /// between blank lines.
    #[serde(default)]
    pub documents: TextDocuments,
    /// Skip a corpus file that cannot be read (saying which) instead of stopping.
    #[serde(default)]
    pub skip_unreadable: bool,
    /// Where tokenized corpora are kept, keyed by their files and tokenizer (default:
    /// `$TAPER_CACHE`, else `$XDG_CACHE_HOME/taper`, else `~/.cache/taper`).
    pub cache_dir: Option<PathBuf>,
    /// Token ids per shard file of a tokenized corpus.
    #[serde(default = "default_shard_tokens")]
    pub shard_tokens: usize,
}

/// `data.path`: one path or a list, each a file, a folder (its corpus files, recursively, in
/// name order) or a glob pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a path (a file, a folder or a glob pattern, as a string) or a list of them")]
pub enum CorpusPaths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl CorpusPaths {
    pub fn all(&self) -> &[PathBuf] {
        match self {
            Self::One(path) => std::slice::from_ref(path),
            Self::Many(paths) => paths,
        }
    }

    /// The one file a labelled task reads.
    pub fn file(&self) -> Result<&Path> {
        match self.all() {
            [one] => Ok(one),
            _ => bail!("`data.path` is a list, which only language-model corpora take; give one labelled file"),
        }
    }
}

impl std::fmt::Display for CorpusPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.all().iter().map(|p| p.display().to_string()).collect();
        f.write_str(&shown.join(", "))
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TextDocuments {
    /// Each plain text file is one document.
    #[default]
    File,
    /// Runs of lines separated by blank lines are documents.
    BlankLine,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// One token per Unicode character seen in the corpus.
    Char,
    /// BPE over Metaspace pre-tokens (SentencePiece style; whitespace round-trips).
    Bpe,
    /// GPT-2's byte-level BPE.
    ByteLevelBpe,
    /// BERT's WordPiece.
    Wordpiece,
    /// SentencePiece's Unigram.
    Unigram,
    /// A `tokenizer.json` file given by `path`.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    #[serde(default = "default_tokenizer_kind")]
    pub kind: TokenizerKind,
    /// Target vocabulary size for the trained kinds (bpe, byte-level-bpe, wordpiece, unigram).
    pub vocab_size: Option<usize>,
    /// The `tokenizer.json` to load, for `kind = "file"`.
    pub path: Option<PathBuf>,
    /// The trained kinds learn from the corpus's first `sample_bytes` of text (whole lines,
    /// in corpus order); a corpus of one text file no larger is read whole, as before.
    #[serde(default = "default_sample_bytes")]
    pub sample_bytes: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { kind: default_tokenizer_kind(), vocab_size: None, path: None, sample_bytes: default_sample_bytes() }
    }
}

fn default_val_fraction() -> f64 {
    0.1
}
fn default_text_column() -> String {
    "text".into()
}
fn default_shard_tokens() -> usize {
    1 << 27
}
fn default_sample_bytes() -> usize {
    100_000_000
}
fn default_tokenizer_kind() -> TokenizerKind {
    TokenizerKind::Char
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_fraction) || self.val_fraction == 0.0 {
            bail!("`data.val_fraction` must be in (0, 1), got {}", self.val_fraction);
        }
        if self.shard_tokens < 1024 {
            bail!("`data.shard_tokens` must be at least 1024, got {}", self.shard_tokens);
        }
        if self.text_column.is_empty() {
            bail!("`data.text_column` is empty: name the JSONL key or Parquet column that holds the text");
        }
        Ok(())
    }
}

impl TokenizerConfig {
    /// Said at start-up when a trained tokenizer reached fewer tokens than `vocab_size` (a
    /// small corpus runs out of merges): the model is then smaller than the preset claims.
    pub fn shortfall(&self, reached: usize) -> Option<String> {
        let wanted = self.vocab_size.filter(|&v| v > reached)?;
        Some(format!(
            "; the tokenizer reached {reached} of tokenizer.vocab_size = {wanted} tokens (the corpus yields no more), \
             so the embedding has {} fewer rows than the config's vocabulary and the parameter count above is the real one",
            wanted - reached
        ))
    }

    /// Which keys each tokenizer kind takes.
    pub fn validate(&self) -> Result<()> {
        match self.kind {
            TokenizerKind::Char => {
                if self.vocab_size.is_some() {
                    bail!("`tokenizer.vocab_size` does not apply to `kind = \"char\"` (its vocabulary is the corpus's characters); remove it");
                }
            }
            TokenizerKind::File => {
                if self.path.is_none() {
                    bail!("`tokenizer.kind = \"file\"` needs `tokenizer.path` (a tokenizer.json)");
                }
                if self.vocab_size.is_some() {
                    bail!("`tokenizer.vocab_size` does not apply to `kind = \"file\"` (the file fixes the vocabulary); remove it");
                }
            }
            _ => match self.vocab_size {
                None => bail!(
                    "`tokenizer.kind = \"{:?}\"` is trained on the corpus and needs `tokenizer.vocab_size`",
                    self.kind
                ),
                Some(v) if v < 32 => bail!("`tokenizer.vocab_size` must be at least 32, got {v}"),
                _ => {}
            },
        }
        if self.kind != TokenizerKind::File && self.path.is_some() {
            bail!("`tokenizer.path` only applies to `kind = \"file\"`");
        }
        Ok(())
    }
}
