//! Decoding an encoder-decoder: greedy (a batch at a time, with or without the KV-cache) and
//! beam search (beam.rs: one source at a time, beams as the batch, as transformers' `generate`
//! does it). The encoder runs once per source; cross-attention keys and values are computed on
//! the first step and cached.

mod beam;
mod generation_config;
mod rules;

pub use beam::{beam_search, BeamOptions, EarlyStopping, Hypothesis};
pub use generation_config::GenerationConfig;
pub use rules::OutputRules;

use anyhow::Result;
use candle_core::Tensor;

use crate::model::seq2seq::{Memory, Seq2Seq};
use crate::model::Mode;

/// The decoder's special tokens and how long an output may be.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub bos: u32,
    pub eos: u32,
    /// The most tokens an output may have, EOS included (transformers' `max_new_tokens`).
    pub max_len: usize,
    /// What an output may contain (none of the rules by default).
    pub rules: OutputRules,
}

/// What a caller may set of `DecodeLimits` (the rest comes from the run).
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputLimits {
    pub max_len: Option<usize>,
    pub rules: OutputRules,
}

impl OutputLimits {
    /// `run`'s limits with these set; `vocab`: the target vocabulary, which a forced token
    /// must be in.
    pub fn over(self, run: DecodeLimits, vocab: usize) -> Result<DecodeLimits> {
        if self.max_len == Some(0) {
            anyhow::bail!("the output length (--max-len, or max_new_tokens / max_length) must be at least 1");
        }
        if let Some(token) = self.rules.forced_first.filter(|&t| t as usize >= vocab) {
            anyhow::bail!(
                "the forced first token (forced_bos_token_id) {token} is past the target vocabulary ({vocab} tokens)"
            );
        }
        Ok(DecodeLimits { max_len: self.max_len.unwrap_or(run.max_len), rules: self.rules, ..run })
    }
}

fn argmax<T: PartialOrd>(row: &[T]) -> u32 {
    let mut best = 0;
    for (i, x) in row.iter().enumerate() {
        if *x > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The best next token after `prefix` (BOS first) that `limits` allow.
fn best_allowed(row: &[f32], prefix: &[u32], limits: &DecodeLimits, max_len: usize) -> u32 {
    if limits.rules == OutputRules::NONE {
        return argmax(row);
    }
    let mut row: Vec<f64> = row.iter().map(|&x| x as f64).collect();
    rules::apply(&mut row, prefix, limits, max_len);
    argmax(&row)
}

/// Greedy decoding of every source in `memory` (B rows). Returns each output without BOS and
/// without its EOS. `use_cache = false` recomputes the whole prefix at each step (for tests).
pub fn greedy(model: &Seq2Seq, memory: &Memory, limits: DecodeLimits, use_cache: bool) -> Result<Vec<Vec<u32>>> {
    let batch = memory.hidden.dim(0)?;
    let device = memory.hidden.device().clone();
    let max_len = limits.max_len.min(model.block_size() - 1);
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    let mut caches = model.new_caches();
    let mut prefix: Vec<Vec<u32>> = vec![vec![limits.bos]; batch];
    let mut next: Vec<u32> = vec![limits.bos; batch];
    for _ in 0..max_len {
        let logits = if use_cache {
            model.decode_step(&Tensor::from_vec(next.clone(), (batch, 1), &device)?, memory, &mut caches)?
        } else {
            let flat: Vec<u32> = prefix.iter().flatten().copied().collect();
            let tgt = Tensor::from_vec(flat, (batch, prefix[0].len()), &device)?;
            let all = model.forward(&tgt, memory, &mut Mode::eval())?;
            let t = all.dim(1)?;
            all.narrow(1, t - 1, 1)?.squeeze(1)?.to_dtype(candle_core::DType::F32)?
        };
        let rows = crate::host::vec2::<f32>(&logits)?;
        for (i, row) in rows.iter().enumerate() {
            // A finished row keeps feeding EOS so the batch stays rectangular; it is not read.
            let token = if done[i] { limits.eos } else { best_allowed(row, &prefix[i], &limits, max_len) };
            if !done[i] {
                if token == limits.eos {
                    done[i] = true;
                } else {
                    outputs[i].push(token);
                }
            }
            next[i] = token;
            prefix[i].push(token);
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(outputs)
}
