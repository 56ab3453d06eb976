//! Decoding an encoder-decoder: greedy (a batch at a time, with or without the KV-cache) and
//! beam search (one source at a time, beams as the batch). The encoder runs once per source;
//! cross-attention keys and values are computed on the first step and cached.

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::model::seq2seq::{Memory, Seq2Seq};
use crate::model::Mode;

/// The decoder's special tokens and how long an output may be.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub bos: u32,
    pub eos: u32,
    /// The most tokens an output may have, EOS included.
    pub max_len: usize,
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
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
            let token = if done[i] { limits.eos } else { argmax(row) };
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

/// Beam-search settings.
#[derive(Debug, Clone, Copy)]
pub struct BeamOptions {
    pub beam_size: usize,
    /// Finished hypotheses are ranked by log p / length^length_penalty (Hugging Face's rule):
    /// above 1 favours longer outputs, below 1 shorter ones, 0 ranks by log p alone.
    pub length_penalty: f64,
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_total = total.ln() + max;
    row.iter().map(|&x| x as f64 - log_total).collect()
}

/// Beam search over one source (`memory` with one row, no padding). Each step ranks the
/// 2 * beam_size best continuations; an EOS among the top beam_size ends that hypothesis,
/// the best non-EOS ones continue. Ends when beam_size hypotheses have finished or at
/// `limits.max_len`. Returns the best output by length-normalised score, without BOS/EOS.
/// With beam_size 1 this is exactly greedy decoding.
pub fn beam_search(model: &Seq2Seq, memory: &Memory, limits: DecodeLimits, options: BeamOptions) -> Result<Vec<u32>> {
    let k = options.beam_size.max(1);
    let device: Device = memory.hidden.device().clone();
    let max_len = limits.max_len.min(model.block_size() - 1);
    let normalise = |score: f64, len: usize| score / (len as f64).powf(options.length_penalty);
    // Alive hypotheses: (tokens after BOS, summed log p). Finished: (tokens, normalised score).
    let mut alive: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
    let mut caches = model.new_caches();
    let mut last: Vec<u32> = vec![limits.bos];
    for step in 0..max_len {
        let logits =
            model.decode_step(&Tensor::from_vec(last.clone(), (alive.len(), 1), &device)?, memory, &mut caches)?;
        let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
        for (beam, row) in crate::host::vec2::<f32>(&logits)?.iter().enumerate() {
            let lp = log_softmax(row);
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            order.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
            for &token in order.iter().take(2 * k) {
                candidates.push((alive[beam].1 + lp[token as usize], beam, token));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut next: Vec<(Vec<u32>, f64)> = Vec::new();
        let mut parents: Vec<u32> = Vec::new();
        let mut next_tokens: Vec<u32> = Vec::new();
        for (rank, &(score, beam, token)) in candidates.iter().enumerate() {
            if token == limits.eos {
                if rank < k {
                    finished.push((alive[beam].0.clone(), normalise(score, step + 1)));
                }
            } else if next.len() < k {
                let mut tokens = alive[beam].0.clone();
                tokens.push(token);
                next_tokens.push(token);
                next.push((tokens, score));
                parents.push(beam as u32);
            }
        }
        if finished.len() >= k || next.is_empty() {
            break;
        }
        // Every cache row follows its hypothesis to the next step.
        let index = Tensor::from_vec(parents.clone(), parents.len(), &device)?;
        for cache in caches.iter_mut() {
            for kv in [&mut cache.self_attn, &mut cache.cross_attn] {
                kv.keys = kv.keys.as_ref().map(|t| t.index_select(&index, 0)).transpose()?;
                kv.values = kv.values.as_ref().map(|t| t.index_select(&index, 0)).transpose()?;
            }
        }
        last = next_tokens;
        alive = next;
    }
    if finished.is_empty() {
        finished = alive
            .into_iter()
            .map(|(tokens, score)| {
                let n = tokens.len().max(1);
                (tokens, normalise(score, n))
            })
            .collect();
    }
    let best = finished.into_iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|(tokens, _)| tokens).unwrap_or_default();
    Ok(best)
}
