//! `[data]` and `[tokenizer]`: where the training data is and how it becomes tokens.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training data, relative to the working directory: a plain UTF-8 corpus (language
    /// models), or a labelled .csv/.tsv/.jsonl file (sequence classification).
    pub path: PathBuf,
    /// A separate validation file (sequence classification); without it, `val_fraction` of
    /// the training data is held out.
    pub val_path: Option<PathBuf>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
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
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { kind: default_tokenizer_kind(), vocab_size: None, path: None }
    }
}

fn default_val_fraction() -> f64 {
    0.1
}
fn default_tokenizer_kind() -> TokenizerKind {
    TokenizerKind::Char
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_fraction) || self.val_fraction == 0.0 {
            bail!("`data.val_fraction` must be in (0, 1), got {}", self.val_fraction);
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
