//! Texts (or text pairs) encoded with the tokenizer's own template ([CLS] a [SEP] b [SEP]),
//! truncated to a maximum length, and batched padded to the longest in the batch, with the
//! attention mask and token-type ids an encoder takes.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use tokenizers::{TruncationParams, TruncationStrategy};

use super::labelled::Example;
use super::tokenizer::TextTokenizer;

#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// Encodes every example with special tokens, truncating the longer text first (as Hugging
/// Face does) so that no input exceeds `max_len` tokens. Errors name the example's line.
pub fn encode_examples(
    tokenizer: &TextTokenizer,
    examples: &[Example],
    max_len: usize,
    source: &std::path::Path,
) -> Result<Vec<Encoded>> {
    let mut tokenizer = tokenizer.inner().clone();
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        }))
        .map_err(anyhow::Error::msg)?;
    examples
        .iter()
        .map(|example| {
            let encoding = match &example.text_pair {
                Some(pair) => tokenizer.encode((example.text.as_str(), pair.as_str()), true),
                None => tokenizer.encode(example.text.as_str(), true),
            }
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}:{}: cannot tokenize the text", source.display(), example.line))?;
            Ok(Encoded { ids: encoding.get_ids().to_vec(), type_ids: encoding.get_type_ids().to_vec() })
        })
        .collect()
}

/// A padded batch: ids, token types and attention mask (1 real, 0 padding), each (B, T) u32.
pub struct PaddedBatch {
    pub ids: Tensor,
    pub type_ids: Tensor,
    pub mask: Tensor,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

/// Pads `rows` with `pad_id` to the longest of them.
pub fn pad_batch<'a>(
    rows: impl Iterator<Item = &'a Encoded> + Clone,
    pad_id: u32,
    device: &Device,
) -> Result<PaddedBatch> {
    let longest = rows.clone().map(|r| r.ids.len()).max().context("an empty batch")?;
    let (mut ids, mut types, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    let mut count = 0;
    for row in rows {
        let pad = longest - row.ids.len();
        ids.extend(row.ids.iter().copied().chain(std::iter::repeat_n(pad_id, pad)));
        types.extend(row.type_ids.iter().copied().chain(std::iter::repeat_n(0, pad)));
        mask.extend(std::iter::repeat_n(1u32, row.ids.len()).chain(std::iter::repeat_n(0, pad)));
        count += 1;
    }
    let tokens = mask.iter().filter(|&&m| m == 1).count();
    Ok(PaddedBatch {
        ids: Tensor::from_vec(ids, (count, longest), device)?,
        type_ids: Tensor::from_vec(types, (count, longest), device)?,
        mask: Tensor::from_vec(mask, (count, longest), device)?,
        tokens,
    })
}
