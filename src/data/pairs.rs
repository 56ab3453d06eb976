//! Source/target pairs for sequence-to-sequence training: TSV files with a header naming the
//! columns, or JSONL objects; encoded with BOS/EOS and truncated; batched with padding.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use super::labelled::{read_labelled, Columns};
use super::tokenizer::TextTokenizer;

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub source: String,
    pub target: String,
    pub line: usize,
}

/// Reads every pair of `path` (`.tsv`, `.csv` or `.jsonl`); a row without either text is an
/// error naming the file and line.
pub fn read_pairs(path: &Path, source: &str, target: &str) -> Result<Vec<Pair>> {
    let columns = Columns { text: source.into(), text_pair: Some(target.into()), label: String::new() };
    let examples = read_labelled(path, &columns, false)?;
    Ok(examples
        .into_iter()
        .map(|e| Pair { source: e.text, target: e.text_pair.unwrap_or_default(), line: e.line })
        .collect())
}

/// The padding, decoder-start and end ids of a sequence-to-sequence vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub bos: u32,
    pub eos: u32,
}

/// The names of the special tokens, as T5's tokenizer (and taper's exports) spell them.
pub const SPECIAL_NAMES: [&str; 3] = ["<pad>", "<s>", "</s>"];

impl Specials {
    /// The tokenizer's own specials when it holds `<pad>` and `</s>` as special tokens (T5's,
    /// or a taper export's), the decoder starting from `<s>` or else from `<pad>` (as T5's);
    /// otherwise three ids taper adds after its vocabulary.
    pub fn of(tokenizer: &TextTokenizer) -> Self {
        let [pad, bos, eos] = SPECIAL_NAMES.map(|name| tokenizer.special_token_id(name));
        match (pad, eos) {
            (Some(pad), Some(eos)) => Self { pad, bos: bos.unwrap_or(pad), eos },
            _ => {
                let v = tokenizer.vocab_size() as u32;
                Self { pad: v, bos: v + 1, eos: v + 2 }
            }
        }
    }

    /// Embedding rows a vocabulary needs: the tokenizer's tokens and these ids.
    pub fn rows(self, tokenizer: &TextTokenizer) -> usize {
        tokenizer.vocab_size().max(self.pad.max(self.bos).max(self.eos) as usize + 1)
    }

    /// Whether `id` is one of these.
    pub fn contains(self, id: u32) -> bool {
        id == self.pad || id == self.bos || id == self.eos
    }
}

/// A pair as ids: the source ending in EOS, and the target tokens (no specials).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPair {
    pub source: Vec<u32>,
    pub target: Vec<u32>,
}

/// Encodes `text` as a source: tokens, truncated to `max_len - 1`, then EOS.
pub fn encode_source(tokenizer: &TextTokenizer, text: &str, eos: u32, max_len: usize) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(text)?;
    ids.truncate(max_len - 1);
    ids.push(eos);
    Ok(ids)
}

/// Encodes pairs; targets keep at most `max_target_len - 1` tokens (room for BOS / EOS).
pub fn encode_pairs(
    pairs: &[Pair],
    source_tokenizer: &TextTokenizer,
    target_tokenizer: &TextTokenizer,
    source_eos: u32,
    max_len: usize,
    max_target_len: usize,
    path: &Path,
) -> Result<Vec<EncodedPair>> {
    pairs
        .iter()
        .map(|pair| {
            let at = || format!("{}:{}", path.display(), pair.line);
            let source = encode_source(source_tokenizer, &pair.source, source_eos, max_len).with_context(at)?;
            let mut target = target_tokenizer.encode(&pair.target).with_context(at)?;
            target.truncate(max_target_len - 1);
            Ok(EncodedPair { source, target })
        })
        .collect()
}

/// A padded teacher-forcing batch.
pub struct PairBatch {
    /// (B, S) sources, padded; `source_keep` (B, S) is 1 on real tokens.
    pub source: Tensor,
    pub source_keep: Tensor,
    /// (B, T) BOS + target, padded.
    pub target_in: Tensor,
    /// Flat (B * T) positions of the real target tokens, and those tokens (target + EOS).
    pub positions: Tensor,
    pub target_out: Tensor,
    /// Real source and target tokens.
    pub tokens: usize,
}

pub fn pad_pairs<'a>(
    rows: impl Iterator<Item = &'a EncodedPair> + Clone,
    source_pad: u32,
    target: Specials,
    device: &Device,
) -> Result<PairBatch> {
    let batch = rows.clone().count();
    let s = rows.clone().map(|r| r.source.len()).max().context("an empty batch")?;
    let t = rows.clone().map(|r| r.target.len() + 1).max().context("an empty batch")?;
    let (mut source, mut keep, mut target_in) = (Vec::new(), Vec::new(), Vec::new());
    let (mut positions, mut target_out) = (Vec::new(), Vec::new());
    let mut tokens = 0;
    for (row, pair) in rows.enumerate() {
        source.extend(pair.source.iter().copied().chain(std::iter::repeat_n(source_pad, s - pair.source.len())));
        keep.extend((0..s).map(|i| (i < pair.source.len()) as u32));
        let n = pair.target.len() + 1;
        target_in.extend(std::iter::once(target.bos).chain(pair.target.iter().copied()));
        target_in.extend(std::iter::repeat_n(target.pad, t - n));
        positions.extend((0..n).map(|i| (row * t + i) as u32));
        target_out.extend(pair.target.iter().copied().chain(std::iter::once(target.eos)));
        tokens += pair.source.len() + n;
    }
    let n = positions.len();
    Ok(PairBatch {
        source: Tensor::from_vec(source, (batch, s), device)?,
        source_keep: Tensor::from_vec(keep, (batch, s), device)?,
        target_in: Tensor::from_vec(target_in, (batch, t), device)?,
        positions: Tensor::from_vec(positions, n, device)?,
        target_out: Tensor::from_vec(target_out, n, device)?,
        tokens,
    })
}
