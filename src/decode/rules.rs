//! Rules on what an output may contain, applied to a step's scores before a token is chosen:
//! transformers' logits processors of the same names, with its semantics (the decoder start
//! token counts in the prefix), so that greedy and beam decoding give `generate`'s outputs.

use super::DecodeLimits;

/// What the rules may say (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutputRules {
    /// No n-gram of this many tokens occurs twice in an output, BOS included (0: no such rule):
    /// `no_repeat_ngram_size`.
    pub no_repeat_ngram_size: usize,
    /// EOS is forbidden before this many output tokens: `min_new_tokens`, or `min_length` - 1.
    pub min_len: usize,
    /// The first output token, whatever the model says: `forced_bos_token_id` (mBART's target
    /// language code).
    pub forced_first: Option<u32>,
    /// The last token the length allows is EOS: `forced_eos_token_id`.
    pub forced_eos: bool,
}

impl OutputRules {
    /// No rule at all (the default, as a constant).
    pub const NONE: Self = Self { no_repeat_ngram_size: 0, min_len: 0, forced_first: None, forced_eos: false };
}

/// The tokens that would complete an n-gram `prefix` already holds (n = `size`): those that
/// followed each earlier occurrence of the prefix's last n - 1 tokens.
pub(crate) fn repeated_ngram_tokens(prefix: &[u32], size: usize) -> Vec<u32> {
    if size == 0 || prefix.len() + 1 < size {
        return Vec::new();
    }
    let tail = &prefix[prefix.len() + 1 - size..];
    prefix.windows(size).filter(|w| &w[..size - 1] == tail).map(|w| w[size - 1]).collect()
}

/// Applies `limits.rules` to `scores` (logits or log-probabilities over the vocabulary) of the
/// token after `prefix` (BOS first): a forbidden token gets minus infinity; a forced one gets 0
/// and every other minus infinity. `max_len` is the output length this decode allows.
pub(crate) fn apply(scores: &mut [f64], prefix: &[u32], limits: &DecodeLimits, max_len: usize) {
    let rules = limits.rules;
    for token in repeated_ngram_tokens(prefix, rules.no_repeat_ngram_size) {
        scores[token as usize] = f64::NEG_INFINITY;
    }
    let produced = prefix.len() - 1;
    if produced < rules.min_len {
        if let Some(eos) = scores.get_mut(limits.eos as usize) {
            *eos = f64::NEG_INFINITY;
        }
    }
    let forced = match rules.forced_first {
        Some(token) if produced == 0 => Some(token),
        _ if rules.forced_eos && produced + 1 == max_len => Some(limits.eos),
        _ => None,
    };
    if let Some(token) = forced.filter(|&t| (t as usize) < scores.len()) {
        scores.fill(f64::NEG_INFINITY);
        scores[token as usize] = 0.0;
    }
}
